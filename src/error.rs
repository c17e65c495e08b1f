//! What went wrong, in one classification the front ends share.
//!
//! Every public error type of the library answers `kind()` with an [`ErrorKind`], by one
//! exhaustive match over its variants (a variant that wraps another error answers that
//! error's kind). The front ends map the kind once: the command line to its exit code
//! (`src/cli/exit.rs`, the table in docs/commands.md), the Python package to its exception
//! class (`python/src/lib.rs`, the table in docs/python.md). A new kind is a compile error
//! in both until someone decides what it means there.
//!
//! This module depends on nothing else in the crate.

use std::fmt;

/// The kind of a library error: what a program does about it, not where it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No such image: the name is not in the cache, a digest it does not point to, nothing
    /// at the remote, no old database to migrate.
    NotFound,
    /// A name or remote reference that does not parse, or a digest on a name to be written.
    InvalidName,
    /// Input that can never succeed as given: a bad setting, size, duration, endpoint or
    /// group; a directory, an empty file or a symbolic link given as an image to add.
    InvalidInput,
    /// The file to add is not there.
    NoSuchFile,
    /// Plain HTTP to a host that is not loopback, without leave to use it.
    Insecure,
    /// The name is pinned: it cannot be removed, or re-pointed without force.
    Pinned,
    /// The name, or the file, is not in the state the call expected: it holds an image from
    /// another remote, it was re-pointed meanwhile, the file changed while it was added.
    Conflict,
    /// A check found content that does not match its digest or its recorded size, or that
    /// was quarantined for it.
    Corrupt,
    /// The cache is damaged (an index to rebuild, an image file missing), or a remote sent
    /// content that does not match its digest.
    Damaged,
    /// Another process held a lock for longer than the lock timeout.
    LockTimeout,
    /// The remote refused the credentials, or their absence.
    RemoteRefused,
    /// The remote could not be reached, stalled, answered with an error, or sent short,
    /// too much, or something that is not an image.
    RemoteFailed,
    /// A container image that cannot be converted to SIF, or exported.
    Unconvertible,
    /// Not enough space on the filesystem.
    NoSpace,
    /// Not permitted: a file or a group that belongs to another user, a read-only
    /// filesystem.
    PermissionDenied,
    /// Something sregistry cannot work with here: no cache directory given, a file where a
    /// directory is meant, a missing tool or filesystem feature, a database that is not the
    /// old client's, an index or journal that needs a newer sregistry.
    Unsupported,
    /// Any other failure of the operating system (reading, writing, locking a file).
    Io,
    /// Stopped by its progress receiver.
    Stopped,
    /// A call made from inside a progress callback that would wait for the call that is
    /// waiting for the callback.
    Reentered,
    /// A bug in sregistry or a library it uses.
    Internal,
}

impl ErrorKind {
    /// Every kind, in the order of the docs' tables.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::NotFound,
        ErrorKind::InvalidName,
        ErrorKind::InvalidInput,
        ErrorKind::NoSuchFile,
        ErrorKind::Insecure,
        ErrorKind::Pinned,
        ErrorKind::Conflict,
        ErrorKind::Corrupt,
        ErrorKind::Damaged,
        ErrorKind::LockTimeout,
        ErrorKind::RemoteRefused,
        ErrorKind::RemoteFailed,
        ErrorKind::Unconvertible,
        ErrorKind::NoSpace,
        ErrorKind::PermissionDenied,
        ErrorKind::Unsupported,
        ErrorKind::Io,
        ErrorKind::Stopped,
        ErrorKind::Reentered,
        ErrorKind::Internal,
    ];

    /// The kind's name, as the docs' tables write it (`NotFound`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NotFound",
            ErrorKind::InvalidName => "InvalidName",
            ErrorKind::InvalidInput => "InvalidInput",
            ErrorKind::NoSuchFile => "NoSuchFile",
            ErrorKind::Insecure => "Insecure",
            ErrorKind::Pinned => "Pinned",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::Corrupt => "Corrupt",
            ErrorKind::Damaged => "Damaged",
            ErrorKind::LockTimeout => "LockTimeout",
            ErrorKind::RemoteRefused => "RemoteRefused",
            ErrorKind::RemoteFailed => "RemoteFailed",
            ErrorKind::Unconvertible => "Unconvertible",
            ErrorKind::NoSpace => "NoSpace",
            ErrorKind::PermissionDenied => "PermissionDenied",
            ErrorKind::Unsupported => "Unsupported",
            ErrorKind::Io => "Io",
            ErrorKind::Stopped => "Stopped",
            ErrorKind::Reentered => "Reentered",
            ErrorKind::Internal => "Internal",
        }
    }

    /// The kind of an operating-system error: space, permission, or plain I/O.
    pub fn of_io(e: &std::io::Error) -> ErrorKind {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                ErrorKind::PermissionDenied
            }
            _ => ErrorKind::Io,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` names every kind once (a kind added to the enum but not to `ALL` would be
    /// missing from the front ends' table tests).
    #[test]
    fn all_lists_every_kind_once() {
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        // One exhaustive match: a new variant fails to compile here until it is counted.
        let counted = |k: ErrorKind| match k {
            ErrorKind::NotFound
            | ErrorKind::InvalidName
            | ErrorKind::InvalidInput
            | ErrorKind::NoSuchFile
            | ErrorKind::Insecure
            | ErrorKind::Pinned
            | ErrorKind::Conflict
            | ErrorKind::Corrupt
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
            | ErrorKind::Internal => 1,
        };
        assert_eq!(
            ErrorKind::ALL.iter().map(|&k| counted(k)).sum::<usize>(),
            20
        );
    }
}
