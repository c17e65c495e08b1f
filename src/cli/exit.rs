//! Exit codes, and the mapping from errors to them.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | error (I/O, permissions, damaged cache, lock timeout, a pinned name, the remote's failure, `--move` that could not remove a file, ...) |
//! | 2 | usage: bad arguments, a malformed name, a file that cannot be added, plain HTTP without `--insecure` |
//! | 3 | not found: the image is not in the cache, or its name does not point to the digest given; `migrate`: no old database |
//! | 4 | a check found a problem; `migrate`: some row was not imported |
//!
//! A library error's code is one match on its [`ErrorKind`] ([`status_of_kind`]); the
//! table in docs/commands.md lists the kinds of each code, and a test holds the two
//! together.

use sregistry::ErrorKind;
use sregistry::cache::lock::LockError;
use sregistry::cache::{
    CacheError, IndexError, IngestError, ReplayError, SettingsError, StoreError,
};
use sregistry::convert::ConvertError;
use sregistry::format::digest::DigestError;
use sregistry::format::reference::ReferenceError;
use sregistry::format::sif::SifError;
use sregistry::format::units::UnitError;
use sregistry::maintain::group::GroupError;
use sregistry::maintain::migrate::{MigrateError, OldDbError};
use sregistry::maintain::shared::SharedError;
use sregistry::remote::RemoteError;
use sregistry::settings::{ConfigError, SettingError};

/// The documented exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    Success = 0,
    Failure = 1,
    Usage = 2,
    NotFound = 3,
    Problem = 4,
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> Self {
        std::process::ExitCode::from(s as u8)
    }
}

/// A usage error raised after argument parsing (a bad `--label`, say).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// An error whose message was already printed; only the exit status remains.
#[derive(Debug, thiserror::Error)]
#[error("{status:?}")]
pub struct Reported {
    pub status: ExitStatus,
}

/// The exit status an error maps to: the first cause in the chain that is the CLI's own
/// ([`Reported`], [`UsageError`]) or the library's (by its kind).
pub fn status_of(err: &anyhow::Error) -> ExitStatus {
    for cause in err.chain() {
        if let Some(r) = cause.downcast_ref::<Reported>() {
            return r.status;
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return ExitStatus::Usage;
        }
        if let Some(kind) = kind_of(cause) {
            return status_of_kind(kind);
        }
    }
    ExitStatus::Failure
}

/// The exit status of each kind of library error.
pub fn status_of_kind(kind: ErrorKind) -> ExitStatus {
    match kind {
        ErrorKind::NotFound => ExitStatus::NotFound,
        ErrorKind::InvalidName
        | ErrorKind::InvalidInput
        | ErrorKind::NoSuchFile
        | ErrorKind::Insecure => ExitStatus::Usage,
        ErrorKind::Corrupt => ExitStatus::Problem,
        ErrorKind::Pinned
        | ErrorKind::Conflict
        | ErrorKind::Damaged
        | ErrorKind::LockTimeout
        | ErrorKind::RemoteRefused
        | ErrorKind::RemoteFailed
        | ErrorKind::Unconvertible
        | ErrorKind::NoSpace
        | ErrorKind::PermissionDenied
        | ErrorKind::Unsupported
        | ErrorKind::Io
        | ErrorKind::Stopped
        | ErrorKind::Reentered
        | ErrorKind::Internal => ExitStatus::Failure,
    }
}

/// The kind of `e` when it is one of the library's public errors.
fn kind_of(e: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    macro_rules! first_of {
        ($($t:ty),* $(,)?) => {
            $(if let Some(e) = e.downcast_ref::<$t>() {
                return Some(e.kind());
            })*
        };
    }
    first_of!(
        CacheError,
        RemoteError,
        IndexError,
        LockError,
        StoreError,
        IngestError,
        SettingsError,
        ReplayError,
        ReferenceError,
        DigestError,
        UnitError,
        SettingError,
        ConfigError,
        SifError,
        ConvertError,
        MigrateError,
        OldDbError,
        SharedError,
        GroupError,
    );
    None
}

/// True when the error is a closed stdout (`sregistry list | head`), which is not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kinds each exit code's row of the table in docs/commands.md names.
    fn documented() -> Vec<(u8, Vec<String>)> {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/commands.md"))
            .unwrap();
        let table = doc
            .split("## Exit codes\n")
            .nth(1)
            .expect("docs/commands.md has an `## Exit codes` section");
        let mut rows = Vec::new();
        for line in table.lines().skip_while(|l| !l.starts_with('|')) {
            if !line.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let Ok(code) = cells[1].parse::<u8>() else {
                continue; // the header and its rule
            };
            let kinds = cells[2]
                .split(',')
                .map(|k| k.trim().trim_matches('`').to_string())
                .filter(|k| !k.is_empty())
                .collect();
            rows.push((code, kinds));
        }
        rows
    }

    /// Danger: the exit code of an error drifting from what docs/commands.md promises
    /// scripts, or a kind the table does not place.
    #[test]
    fn every_kind_exits_with_the_code_docs_commands_md_gives_it() {
        let rows = documented();
        let codes: Vec<u8> = rows.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4], "the table's codes");
        for &kind in ErrorKind::ALL {
            let listed: Vec<u8> = rows
                .iter()
                .filter(|(_, kinds)| kinds.iter().any(|k| k == kind.name()))
                .map(|(c, _)| *c)
                .collect();
            assert_eq!(
                listed,
                [status_of_kind(kind) as u8],
                "{kind}: docs/commands.md lists it under {listed:?}"
            );
        }
        let known: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        for (code, kinds) in &rows {
            for k in kinds {
                assert!(known.contains(&k.as_str()), "code {code}: no kind `{k}`");
            }
        }
    }

    /// The chain is walked to the first error that has a status: the library's, through
    /// context, and the CLI's own.
    #[test]
    fn the_first_error_with_a_status_in_the_chain_decides() {
        let e = anyhow::Error::new(sregistry::maintain::group::GroupError::NotFound(
            "nogroup".into(),
        ))
        .context("cannot initialise");
        assert_eq!(status_of(&e), ExitStatus::Usage);
        let e = anyhow::Error::new(UsageError("x".into())).context("y");
        assert_eq!(status_of(&e), ExitStatus::Usage);
        let e = anyhow::anyhow!("plain");
        assert_eq!(status_of(&e), ExitStatus::Failure);
    }
}
