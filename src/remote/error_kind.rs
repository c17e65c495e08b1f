//! The [`ErrorKind`] of [`RemoteError`]: one exhaustive match, [`RemoteError::Cache`] and
//! [`RemoteError::Reference`] answering their inner error's kind. The command line's exit
//! codes and the Python classes are mapped from it (see [`crate::error`]).

use super::RemoteError;
use crate::error::ErrorKind;

impl RemoteError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RemoteError::BadRef { .. } => ErrorKind::InvalidName,
            RemoteError::Reference(e) => e.kind(),
            RemoteError::Cache(e) => e.kind(),
            RemoteError::Setting(e) => e.kind(),
            RemoteError::Insecure { .. } => ErrorKind::Insecure,
            RemoteError::NotFound { .. } | RemoteError::NoSuchBucket { .. } => ErrorKind::NotFound,
            RemoteError::BadEndpoint { .. }
            | RemoteError::CertPath { .. }
            | RemoteError::BadLogin { .. }
            | RemoteError::ExportTarget { .. }
            | RemoteError::ExportTag { .. } => ErrorKind::InvalidInput,
            RemoteError::Unauthorized { .. }
            | RemoteError::Denied { .. }
            | RemoteError::Credentials { .. } => ErrorKind::RemoteRefused,
            RemoteError::Status {
                status: 401 | 403, ..
            } => ErrorKind::RemoteRefused,
            RemoteError::Network { .. }
            | RemoteError::ClientSetup { .. }
            | RemoteError::Tls { .. }
            | RemoteError::Status { .. }
            | RemoteError::TooLong { .. }
            | RemoteError::TooLarge { .. }
            | RemoteError::Empty { .. }
            | RemoteError::Stalled { .. }
            | RemoteError::FailedElsewhere { .. }
            | RemoteError::BrokeOff { .. }
            | RemoteError::Truncated { .. }
            | RemoteError::NotSif { .. }
            | RemoteError::Protocol { .. }
            | RemoteError::S3 { .. } => ErrorKind::RemoteFailed,
            // What came was not what was asked for; nothing was stored.
            RemoteError::DigestMismatch { .. } => ErrorKind::Damaged,
            RemoteError::NameTaken { .. } | RemoteError::Repointed { .. } => ErrorKind::Conflict,
            RemoteError::Convert { .. } | RemoteError::Export { .. } => ErrorKind::Unconvertible,
            RemoteError::NoSpace { .. } | RemoteError::NoSpaceConverting { .. } => {
                ErrorKind::NoSpace
            }
            RemoteError::Io { source, .. } | RemoteError::ExportIo { source, .. } => {
                ErrorKind::of_io(source)
            }
            RemoteError::Stopped { .. } => ErrorKind::Stopped,
            RemoteError::Panicked { .. } => ErrorKind::Internal,
        }
    }
}
