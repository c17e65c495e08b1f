//! The [`ErrorKind`] of each cache error: one exhaustive match per type, a wrapping variant
//! answering its inner error's kind. The command line's exit codes and the Python classes
//! are mapped from these (see [`crate::error`]).

use super::index::journal::ReplayError;
use super::lock::LockError;
use super::{CacheError, IndexError, IngestError, SettingsError, StoreError};
use crate::error::ErrorKind;

impl CacheError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CacheError::NotFound { .. }
            | CacheError::DigestNotFound { .. }
            | CacheError::DigestMismatch { .. } => ErrorKind::NotFound,
            // The index and the store disagree: `verify` finds it; the CLI's exit code 1.
            CacheError::BlobMissing { .. } => ErrorKind::Damaged,
            // Content found not to match what the index records: exit code 4.
            CacheError::Quarantined { .. }
            | CacheError::WrongSize { .. }
            | CacheError::Corrupt { .. } => ErrorKind::Corrupt,
            CacheError::Pinned { .. } | CacheError::PinnedRepoint { .. } => ErrorKind::Pinned,
            CacheError::DigestOnTarget { .. } => ErrorKind::InvalidName,
            CacheError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NoSuchFile
            }
            CacheError::Open { source, .. }
            | CacheError::Layout { source, .. }
            | CacheError::Remove { source, .. } => ErrorKind::of_io(source),
            CacheError::NotAFile { .. }
            | CacheError::Empty { .. }
            | CacheError::MoveSymlink { .. }
            | CacheError::MoveFromCache { .. } => ErrorKind::InvalidInput,
            CacheError::NoRoot | CacheError::NotADirectory { .. } => ErrorKind::Unsupported,
            CacheError::Stopped { .. } => ErrorKind::Stopped,
            CacheError::Reentered { .. } => ErrorKind::Reentered,
            CacheError::Settings(e) => e.kind(),
            CacheError::Store(e) => e.kind(),
            CacheError::Index(e) => e.kind(),
        }
    }
}

impl IndexError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            IndexError::Lock(e) => e.kind(),
            // A damaged (or missing) index: `sregistry doctor --repair-index` rebuilds it.
            IndexError::Corrupt { .. }
            | IndexError::Damaged { .. }
            | IndexError::BehindJournal { .. }
            | IndexError::Missing { .. }
            | IndexError::Rebuild { .. } => ErrorKind::Damaged,
            IndexError::Db { .. } => ErrorKind::Io,
            IndexError::NoSpace { .. } => ErrorKind::NoSpace,
            IndexError::Refused { source, .. } | IndexError::Journal { source, .. } => {
                ErrorKind::of_io(source)
            }
            IndexError::NeedsNewer { .. } => ErrorKind::Unsupported,
        }
    }
}

impl LockError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            LockError::Timeout { .. } => ErrorKind::LockTimeout,
            LockError::Open { source, .. } | LockError::Lock { source, .. } => {
                ErrorKind::of_io(source)
            }
            LockError::Setting(e) => e.kind(),
        }
    }
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Read { source, .. } | StoreError::Write { source, .. } => {
                ErrorKind::of_io(source)
            }
            StoreError::Changed { .. } => ErrorKind::Conflict,
            StoreError::CrossDevice { .. } | StoreError::NoLink { .. } => ErrorKind::Unsupported,
            StoreError::Stopped { .. } => ErrorKind::Stopped,
        }
    }
}

impl ReplayError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReplayError::Missing { .. } | ReplayError::NoSnapshot { .. } => ErrorKind::Damaged,
            ReplayError::Newer { .. } => ErrorKind::Unsupported,
            ReplayError::Io { source, .. } => ErrorKind::of_io(source),
        }
    }
}

impl IngestError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::of_io(&self.source)
    }
}

impl SettingsError {
    /// The cache's settings file cannot be read or does not parse.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Io
    }
}
