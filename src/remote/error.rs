//! [`RemoteError`]: why a remote operation failed, one variant per cause, with the
//! message each one prints, and its [`ErrorKind`], from which the command line's exit codes
//! and the Python classes are mapped (see [`crate::error`]). `crate::remote::RemoteError`
//! names it.

use std::path::PathBuf;

use crate::cache::CacheError;
use crate::error::ErrorKind;
use crate::format::reference::ReferenceError;

/// The cause a variant carries as its [`std::error::Error::source`]: its message is already
/// in the variant's own (a program walking the chain can look at it; a front end printing
/// the chain skips what it has printed).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a string is not a remote reference, or cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("invalid remote reference `{shown}`: {reason}")]
    BadRef { shown: String, reason: String },
    #[error(
        "plain HTTP to `{host}` is refused: use https, or pass --insecure (loopback addresses are allowed)"
    )]
    Insecure { host: String },
    #[error(
        "cannot reach `{url}`: {detail} (check the address and the network; {})", tries(*.attempts)
    )]
    Network {
        url: String,
        detail: String,
        attempts: u32,
        /// The last attempt's failure (its messages are `detail`).
        #[source]
        source: Option<Cause>,
    },
    /// The HTTP client could not be made, before any request: on Linux, usually no CA
    /// certificates on the machine (rustls reads the system's roots).
    #[error(
        "cannot set up the HTTP client: {detail} (TLS needs the system's CA certificates: install the `ca-certificates` package, or point SSL_CERT_FILE at a bundle)"
    )]
    ClientSetup { detail: String },
    /// The TLS handshake failed: the server's certificate, or TLS itself. Not retried: the
    /// next attempt meets the same certificate.
    #[error("cannot connect securely to `{url}`: {problem} (not retried; {hint})")]
    Tls {
        url: String,
        problem: String,
        hint: &'static str,
    },
    /// `SSL_CERT_FILE` or `SSL_CERT_DIR` names what cannot be read: rustls would go on
    /// without it, and every certificate would then be "unknown".
    #[error("{var}=`{}` {detail} (point it at a readable PEM bundle of CA certificates, or unset it to use the system's)", .path.display())]
    CertPath {
        var: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("`{url}` answered {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("`{what}` was not found on `{host}`")]
    NotFound { host: String, what: String },
    #[error(
        "there is no S3 bucket `{bucket}` (so no `{key}` in it): check the bucket's name, and the endpoint (--endpoint, AWS_ENDPOINT_URL)"
    )]
    NoSuchBucket { bucket: String, key: String },
    #[error("`{host}` {}: {detail} (run `sregistry login {host}`)", match .user { Some(u) => format!("refused the credentials of `{u}`"), None => "asks for credentials, and none were sent (you have none stored for it)".to_string() })]
    Unauthorized {
        host: String,
        user: Option<String>,
        detail: String,
    },
    #[error(
        "`{host}` denies {action}{}{}{detail}",
        if .repository.is_empty() { String::new() } else { format!(" on `{}`", .repository) },
        if *.anonymous { format!(" without credentials (run `sregistry login {}`)", .host) } else { " with these credentials".to_string() }
    )]
    Denied {
        host: String,
        repository: String,
        action: &'static str,
        detail: String,
        /// No credentials were sent.
        anonymous: bool,
    },
    #[error(
        "`{url}` sent content that does not match {expected}: got {actual}; nothing was stored"
    )]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("`{url}` sent more than the {limit} bytes declared; nothing was stored")]
    TooLong { url: String, limit: u64 },
    #[error(
        "`{url}` sent more than {} without declaring its size; nothing was stored (set SREGISTRY_MAX_DOWNLOAD higher if the image is that large)",
        crate::format::units::format_size(*.max)
    )]
    TooLarge { url: String, max: u64 },
    #[error(
        "not enough space in `{}` for `{url}`: {} free, {} more would leave less than the {} the cache keeps free; nothing was stored (free space with `sregistry gc --max-size ...`, or set SREGISTRY_MIN_FREE lower)",
        .dir.display(),
        crate::format::units::format_size(*.free),
        crate::format::units::format_size(*.need),
        crate::format::units::format_size(*.min_free)
    )]
    NoSpace {
        url: String,
        dir: PathBuf,
        free: u64,
        need: u64,
        min_free: u64,
    },
    #[error(
        "not enough space in `{}` to convert `{image}`: the SIF would leave less than the {} the cache keeps free, so the conversion was stopped; nothing was stored (free space with `sregistry gc --max-size ...`, or set SREGISTRY_MIN_FREE lower)",
        .dir.display(),
        crate::format::units::format_size(*.min_free)
    )]
    NoSpaceConverting {
        image: String,
        dir: PathBuf,
        min_free: u64,
    },
    #[error("`{url}` sent an empty body; nothing was stored (an image is never empty)")]
    Empty { url: String },
    #[error(
        "`{url}` sent nothing for {waited}, {} (the server accepts connections but does not answer); nothing was stored (SREGISTRY_TIMEOUT sets the wait)", on_each(*.attempts), waited = crate::settings::format_duration(*.waited)
    )]
    Stalled {
        url: String,
        waited: std::time::Duration,
        attempts: u32,
    },
    #[error(transparent)]
    Setting(#[from] crate::settings::ConfigError),
    #[error(
        "`{name}` was pointed at other content while this pull of `{remote}` checked it; nothing was changed (run the pull again)"
    )]
    Repointed { name: String, remote: String },
    #[error(
        "another process's pull of `{remote}` failed while this one waited for it, so this one did not try again: {detail}"
    )]
    FailedElsewhere { remote: String, detail: String },
    #[error(
        "`{url}` ended after {got} bytes {} (the connection broke off); nothing was stored", on_each(*.attempts)
    )]
    BrokeOff {
        url: String,
        got: u64,
        attempts: u32,
    },
    #[error("`{url}` ended after {got} of {expected} bytes; nothing was stored")]
    Truncated {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("the transfer of `{url}` was stopped by its progress receiver; nothing was stored")]
    Stopped { url: String },
    #[error(
        "the name `{name}` holds the image pulled from `{held}`, not from `{wanted}`; nothing was pulled (pull this one under a name of its own with `--name NAME`, or `sregistry rm {name}` first)"
    )]
    NameTaken {
        name: String,
        held: String,
        wanted: String,
    },
    #[error("cannot export `{name}`: {detail}")]
    Export { name: String, detail: String },
    /// `export`'s DIR cannot hold an OCI image layout (a file, a directory of other
    /// files, a layout whose index cannot be read).
    #[error("cannot export into `{dir}`: {reason}")]
    ExportTarget { dir: PathBuf, reason: String },
    /// `export`'s tag is outside the OCI image layout's `ref.name` grammar.
    #[error(
        "invalid layout tag `{tag}`: {reason} (an OCI image layout's tag, `org.opencontainers.image.ref.name`, is letters and digits in parts separated by one of `-._:@+`, `--` or `/`, for example `1.0` or `v2-rc1`; give one with --tag)"
    )]
    ExportTag { tag: String, reason: String },
    /// Writing the OCI image layout failed.
    #[error("cannot write the OCI image layout at `{path}`: {source}")]
    ExportIo {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A `docker://` image that cannot be converted: `source` is the converter's
    /// [`crate::convert::ConvertError`] (or the config's JSON error) when there is one.
    #[error("cannot convert `{image}` to SIF: {detail}")]
    Convert {
        image: String,
        detail: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("`{url}` is not a SIF artifact: {detail}")]
    NotSif { url: String, detail: String },
    #[error("bad answer from `{url}`: {detail}")]
    Protocol {
        url: String,
        detail: String,
        /// What could not parse the answer, when something did.
        #[source]
        source: Option<Cause>,
    },
    #[error("S3 `{url}`: {detail}")]
    S3 {
        url: String,
        detail: String,
        /// The S3 client's error (its messages are `detail`).
        #[source]
        source: Option<Cause>,
    },
    #[error(
        "invalid S3 endpoint `{shown}` (from {from}): {reason}; give a URL such as `https://s3.example.org` or `http://127.0.0.1:9000`"
    )]
    BadEndpoint {
        shown: String,
        /// `--endpoint`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT`.
        from: &'static str,
        reason: String,
    },
    /// A remote operation panicked: a bug (here or in a library it uses), reported as one
    /// instead of as a lost answer.
    #[error(
        "internal error in a remote operation: {detail} (this is a bug in sregistry; please report it)"
    )]
    Panicked { detail: String },
    /// A user name or password `login` will not store.
    #[error("cannot log in to `{host}`: {detail}")]
    BadLogin { host: String, detail: &'static str },
    #[error("credentials file `{path}`: {detail}")]
    Credentials {
        path: PathBuf,
        detail: String,
        /// What could not read or parse the file, when something did.
        #[source]
        source: Option<Cause>,
    },
    #[error("cannot write the download into the cache at `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Offline (`--offline`, `SREGISTRY_OFFLINE`), and what was asked needs the remote.
    #[error("`{remote}` {}", match .need { Need::Cached => "is not in the cache (offline): pull it where the remote can be reached, or leave out --offline and SREGISTRY_OFFLINE".to_string(), Need::Network(what) => format!("cannot be reached offline: {what} needs the network (leave out --offline and SREGISTRY_OFFLINE)") })]
    Offline { remote: String, need: Need },
}

/// What an [`RemoteError::Offline`] call would have needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The image in the cache: nothing is there from that remote.
    Cached,
    /// The network, for this command (`push`, `search`, `login`, `pull --force`).
    Network(&'static str),
}

impl RemoteError {
    /// What went wrong, for the front ends' exit codes and exception classes: one
    /// exhaustive match, [`RemoteError::Cache`], [`RemoteError::Reference`] and
    /// [`RemoteError::Setting`] answering their inner error's kind.
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
            RemoteError::Offline {
                need: Need::Cached, ..
            } => ErrorKind::NotFound,
            RemoteError::Offline { .. } => ErrorKind::InvalidInput,
            RemoteError::Panicked { .. } => ErrorKind::Internal,
        }
    }

    /// The remote could not be reached at all (connection refused, no route, no such host,
    /// timed out), in this process or in the one whose pull this process waited for: a
    /// `pull` of an image the cache holds from it answers from the cache instead.
    pub fn is_unreachable(&self) -> bool {
        match self {
            RemoteError::Network { .. } => true,
            // The note the failed pull left is the message of its error.
            RemoteError::FailedElsewhere { detail, .. } => detail.starts_with(NETWORK_PREFIX),
            _ => false,
        }
    }

    /// Errors that mean "no such image" (exit code 3).
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// Errors about the credentials this process used, or their absence: the remote
    /// refused them (`401`, `403`, a refused S3 signature or key), or they could not be
    /// read. Another process, another user's, may succeed with its own: a waiter on the
    /// pull lock tries for itself after such a failure instead of failing with it.
    pub fn is_about_credentials(&self) -> bool {
        match self {
            RemoteError::Unauthorized { .. }
            | RemoteError::Denied { .. }
            | RemoteError::Credentials { .. } => true,
            RemoteError::Status { status, .. } => matches!(status, 401 | 403),
            RemoteError::S3 { detail, .. } => [
                "SignatureDoesNotMatch",
                "InvalidAccessKeyId",
                "AccessDenied",
                "403",
            ]
            .iter()
            .any(|w| detail.contains(w)),
            _ => false,
        }
    }

    /// Errors about what the user typed or set: a name, a reference, an endpoint, a
    /// setting, a login ([`ErrorKind::InvalidName`], [`ErrorKind::InvalidInput`]). Not
    /// plain HTTP ([`ErrorKind::Insecure`]), which a remote's redirect can cause too.
    pub fn is_usage(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::InvalidName | ErrorKind::InvalidInput
        )
    }
}

/// How [`RemoteError::Network`]'s message begins.
const NETWORK_PREFIX: &str = "cannot reach `";

/// `1 attempt`, `3 attempts`.
fn tries(n: u32) -> String {
    match n {
        1 => "1 attempt".into(),
        n => format!("{n} attempts"),
    }
}

/// `on its one attempt`, `on each of 3 attempts`.
fn on_each(n: u32) -> String {
    match n {
        1 => "on its one attempt".into(),
        n => format!("on each of {n} attempts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter on the pull lock learns why the pull it waited for failed only from the
    /// note it left, the error's message: an unreachable remote is told by how that begins.
    #[test]
    fn a_failure_noted_for_waiters_still_says_the_remote_was_unreachable() {
        let e = RemoteError::Network {
            url: "https://r.example/v2/".into(),
            detail: "connection refused".into(),
            attempts: 1,
            source: None,
        };
        assert!(e.is_unreachable());
        let noted = RemoteError::FailedElsewhere {
            remote: "oras://r.example/a:1".into(),
            detail: e.to_string(),
        };
        assert!(noted.is_unreachable());
        let other = RemoteError::FailedElsewhere {
            remote: "oras://r.example/a:1".into(),
            detail: RemoteError::NotFound {
                host: "r.example".into(),
                what: "a:1".into(),
            }
            .to_string(),
        };
        assert!(!other.is_unreachable());
    }
}
