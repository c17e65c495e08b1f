//! The types every layer of `remote/` shares: what a caller asks for ([`RemoteOptions`],
//! with its [`Progress`] receiver, the cache's one progress type), what a protocol's pull brings back ([`Pulled`],
//! [`Fetched`]) against what the cache held ([`Known`]), and what a pull answers
//! ([`PullOutcome`]). Data only: it imports nothing of `remote/` but the error, so the
//! HTTP leaf, the registry layer, the protocols and the dispatcher all use it.

use crate::cache::Entry;

/// How a download (or an `oras://` upload) advances: the cache's one progress type.
pub use crate::cache::{Progress, ProgressHook};

/// Options for pulls and pushes.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// Allow plain HTTP to hosts that are not loopback.
    pub insecure: bool,
    /// S3 endpoint (else `AWS_ENDPOINT_URL`, else AWS).
    pub endpoint: Option<String>,
    /// Told how a download advances (the command line draws a bar on a terminal); `None`
    /// tells nobody.
    pub progress: Option<ProgressHook>,
    /// Labels to record.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Whether a pull may re-point a pinned name (`pull --force`).
    pub repoint: crate::cache::Repoint,
    /// How much a download may write, and the free space it must leave.
    pub limits: crate::cache::limits::Limits,
    /// Download again even when the remote says its content is what the name already
    /// holds (`pull --force`).
    pub refetch: bool,
    /// `docker://`: the platform to pull, `os/arch[/variant]` (default: this machine's).
    pub platform: Option<String>,
    /// `docker://`: the squashfs compression of the SIF (default gzip).
    pub squashfs_comp: Option<String>,
    /// Contact no remote (`--offline`, `SREGISTRY_OFFLINE`): `get` and `pull` answer from
    /// the cache, anything else that needs the network is refused.
    pub offline: bool,
    /// Remotes whose images go to a shared cache even when pulling them needed
    /// credentials (the configuration's `shared_remotes`; see `remote::privacy`).
    pub shared_remotes: Vec<String>,
    /// Send no stored credentials (set by `remote::privacy` for the first, anonymous,
    /// attempt of a pull into a shared cache).
    pub anonymous: bool,
    /// Read-only tiers (`tiers`): a `docker://` conversion reads a layer one of them holds
    /// instead of downloading it.
    pub tiers: Vec<std::path::PathBuf>,
    /// `get REMOTE` (set by [`super::get_or_pull_in`], never by `pull`, which names what it
    /// pulls in the writable cache): an image a tier holds under any name, from the same
    /// `docker://` manifest (and platform) or the same `oras://` layer digest the remote
    /// names now, answers as it is, nothing downloaded, converted or written.
    pub answer_from_tiers: bool,
}

/// What the cache holds from an earlier pull of the same remote under the same name: a
/// pull compares it with the remote before downloading anything.
#[derive(Clone, Debug, Default)]
pub(super) struct Known {
    /// The remote's digest of the content (`sha256:...`; oras:// compares the layer).
    pub remote_digest: Option<String>,
    /// The `ETag` it was served with (https:// and s3://).
    pub etag: Option<String>,
    /// The `Last-Modified` it was served with (https://).
    pub last_modified: Option<String>,
}

/// What a protocol's pull brought: new content, or word that the name's content is
/// current.
pub(super) enum Pulled {
    Fresh(crate::cache::Ingested, Fetched),
    Unchanged,
    /// A tier's image of the same content ([`RemoteOptions::answer_from_tiers`]).
    InTier(Entry),
}

/// The outcome of [`pull`](super::pull): the name's entry, and whether anything was downloaded.
#[derive(Clone, Debug)]
pub struct PullOutcome {
    pub entry: Entry,
    /// False when the remote was unchanged and the cached content was kept, or when the
    /// cache answered without the remote ([`PullOutcome::unreached`]).
    pub downloaded: bool,
    /// The cache answered without asking the remote: offline, or the remote could not be
    /// reached (its message). The entry is what an earlier pull of it brought.
    pub unreached: Option<Unreached>,
}

/// Why a pull answered from the cache without the remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreached {
    /// `--offline` or `SREGISTRY_OFFLINE`.
    Offline,
    /// The remote could not be reached: the error that said so.
    Unreachable(String),
}

/// What a finished pull knows about the remote content, recorded in the index.
#[derive(Clone, Debug, Default)]
pub(super) struct Fetched {
    pub media_type: Option<String>,
    pub remote_digest: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}
