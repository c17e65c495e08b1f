//! The `sregistry` binary: parse arguments, run the command, map errors to exit codes.

use std::process::ExitCode;

mod cli;

use cli::exit::{self, ExitStatus};
use cli::{Cli, Command};

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
    // Only commands that write into `tmp/` need the signal thread; `get NAME`, the hot
    // path, starts none.
    if writes_tmp(&cli.command) {
        clean_up_on_signals();
    }
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
    let json = cli.global.json;
    let outcome = std::panic::catch_unwind(|| cli::commands::run(cli));
    // The command's `tmp/` files are committed or removed by now.
    sregistry::cache::wait_for_placers();
    sregistry::cache::release_writer_locks();
    let Ok(outcome) = outcome else {
        return ExitStatus::Failure.into();
    };
    match outcome {
        Ok(()) => ExitStatus::Success.into(),
        Err(e) if exit::is_broken_pipe(&e) => ExitStatus::Success.into(),
        Err(e) => {
            let status = exit::status_of(&e);
            if e.downcast_ref::<exit::Reported>().is_none() {
                let line = one_line(&e);
                eprintln!("error: {line}");
                // A script reading `--json` output gets the failure as JSON too.
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "error": line, "exit_code": status as u8 })
                    );
                }
            }
            status.into()
        }
    }
}

/// Whether `command` writes files into the cache's `tmp/` that a signal could leave behind,
/// or uploads parts to S3 that a signal must not leave on the server.
fn writes_tmp(command: &Command) -> bool {
    match command {
        Command::Add(_) | Command::Pull(_) | Command::Verify(_) | Command::Migrate(_) => true,
        Command::Get(a) => sregistry::remote::is_remote(&a.reference),
        Command::Push(a) => a.remote.starts_with("s3://"),
        _ => false,
    }
}

/// Ctrl-C, a batch system's time limit (SIGTERM) or a closed terminal (SIGHUP) must not
/// leave a partial download or copy in the cache's `tmp/` (gc would only clear it after
/// its grace period), nor the parts of an `s3://` upload on the server: these signals are
/// blocked in every thread and taken by one that aborts the uploads in flight (waiting at
/// most [`ABORT_WAIT`] for the server's answers, or until a second signal), removes this
/// process's unfinished files, then ends the process by the first signal, as if it had
/// not been caught. Called right after the arguments are parsed, before any
/// thread exists, so every thread inherits the mask; child processes get an empty mask
/// from `std::process`.
fn clean_up_on_signals() {
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only changes this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        set
    };
    let spawned = std::thread::Builder::new()
        .name("sregistry-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is initialised; sigwait writes the signal number into `sig`.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
            if sregistry::remote::s3::abort_uploads() > 0 {
                let deadline = std::time::Instant::now() + ABORT_WAIT;
                let tick = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                while sregistry::remote::s3::uploads_in_flight() > 0
                    && std::time::Instant::now() < deadline
                {
                    // SAFETY: `set` is initialised; a null info pointer is allowed. A
                    // second signal (the user insists) ends the wait.
                    if unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &tick) } > 0 {
                        break;
                    }
                }
            }
            sregistry::cache::remove_unfinished();
            sregistry::cache::release_writer_locks();
            // SAFETY: restore the default action and unblock the signal in this thread
            // only, then send it to this thread: the process ends by that signal.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                let mut one: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut one);
                libc::sigaddset(&mut one, sig);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
                libc::raise(sig);
            }
            std::process::exit(128 + sig);
        });
    if spawned.is_err() {
        // Without the thread nobody would take the signals: leave them as they were.
        // SAFETY: as above, on this (the only) thread.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

/// How long a signal waits for the server to answer the aborts of the `s3://` uploads in
/// flight before the process ends anyway.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The error and its causes on one line, each cause once. A cause whose message is
/// already on the line was told by the error that carries it, and so were its own causes
/// (a library error keeps its cause as a source and says in its message what of it
/// matters): the walk stops there.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            break;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}
