//! Exit codes, and the mapping from errors to them.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | error (I/O, permissions, damaged cache, lock timeout, `--move` that could not remove a file, ...) |
//! | 2 | usage: bad arguments or a malformed name |
//! | 3 | not found: the image is not in the cache, or its name does not point to the digest given; `migrate`: no old database |
//! | 4 | verify found a problem; `migrate`: some row was not imported |

use sregistry::cache::CacheError;
use sregistry::format::reference::ReferenceError;

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

/// The exit status an error maps to: the first cause in the chain that has one.
pub fn status_of(err: &anyhow::Error) -> ExitStatus {
    for cause in err.chain() {
        if let Some(r) = cause.downcast_ref::<Reported>() {
            return r.status;
        }
        if cause.downcast_ref::<ReferenceError>().is_some()
            || cause.downcast_ref::<UsageError>().is_some()
        {
            return ExitStatus::Usage;
        }
        if let Some(r) = cause.downcast_ref::<sregistry::remote::RemoteError>() {
            if r.is_not_found() {
                return ExitStatus::NotFound;
            }
            if r.is_usage() {
                return ExitStatus::Usage;
            }
        }
        if let Some(m) = cause.downcast_ref::<sregistry::maintain::migrate::MigrateError>()
            && m.is_not_found()
        {
            return ExitStatus::NotFound;
        }
        if let Some(c) = cause.downcast_ref::<CacheError>() {
            if c.is_not_found() {
                return ExitStatus::NotFound;
            }
            if c.is_usage() {
                return ExitStatus::Usage;
            }
            if c.is_verify_problem() {
                return ExitStatus::Problem;
            }
        }
    }
    ExitStatus::Failure
}

/// True when the error is a closed stdout (`sregistry list | head`), which is not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
