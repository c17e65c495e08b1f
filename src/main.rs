//! The `sregistry` binary: parse arguments, run the command, map errors to exit codes.

use std::process::ExitCode;

mod cli;

use cli::Cli;
use cli::exit::{self, ExitStatus};

fn main() -> ExitCode {
    // Past RLIMIT_FSIZE a write must fail with EFBIG (reported, cleaned up), not kill us.
    // SAFETY: setting a signal to SIG_IGN at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = match Cli::parse_args() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitStatus::Success.into()
                }
                _ => ExitStatus::Usage.into(),
            };
        }
    };
    // A panic is a bug; still, the user gets one line and exit code 1, not a backtrace.
    // A panic inside redb on a damaged index is caught by the index module and reported
    // as damage with its fix, so it prints nothing here.
    std::panic::set_hook(Box::new(|info| {
        if sregistry::cache::panic_is_caught() {
            return;
        }
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error: {msg}{at} (this is a bug in sregistry; please report it)"
        );
    }));
    let outcome = std::panic::catch_unwind(|| cli::commands::run(cli));
    let Ok(outcome) = outcome else {
        return ExitStatus::Failure.into();
    };
    match outcome {
        Ok(()) => ExitStatus::Success.into(),
        Err(e) if exit::is_broken_pipe(&e) => ExitStatus::Success.into(),
        Err(e) => {
            let status = exit::status_of(&e);
            if e.downcast_ref::<exit::Reported>().is_none() {
                eprintln!("error: {}", one_line(&e));
            }
            status.into()
        }
    }
}

/// The error and its causes on one line, each cause once.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}
