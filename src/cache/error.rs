//! The cache's error types, in one place: [`CacheError`] (what [`super::Cache`] returns),
//! [`IndexError`] (the index), [`LockError`] (lock files) and [`StoreError`] (the blob
//! store). Each message names the file or image involved and says what to do.
//!
//! Definitions, and each type's [`ErrorKind`] (one exhaustive match; a wrapping variant
//! answers its inner error's kind), from which the command line's exit codes and the
//! Python classes are mapped (see [`crate::error`]). The modules that raise them
//! re-export them where they were (`cache::lock::LockError`, `cache::IndexError`, ...).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::CACHE_ENV;
use super::index::{SCHEMA_VERSION, VERSION};
use super::settings::SettingsError;
use crate::error::ErrorKind;
use crate::format::digest::Digest;

/// The settings the lock messages name (`cache::lock` takes its constants from the same place).
const TIMEOUT_ENV: &str = crate::settings::LOCK_TIMEOUT.var;
const KIND_ENV: &str = crate::settings::LOCK.var;

/// The tiers a lookup also looked in, as "no image" names them: each when there are at
/// most three, else how many (`sregistry config` lists them).
struct NotIn<'a>(&'a [PathBuf]);

impl std::fmt::Display for NotIn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            [] => Ok(()),
            [one] => write!(f, " nor in its tier `{}`", one.display()),
            few if few.len() <= 3 => {
                write!(f, " nor in its {} tiers ", few.len())?;
                for (i, t) in few.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}`{}`", t.display())?;
                }
                Ok(())
            }
            many => write!(
                f,
                " nor in its {} tiers (`sregistry config` lists them)",
                many.len()
            ),
        }
    }
}

/// Cache failures. Each names the image or path involved and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No cache looked in has the name: the writable cache `cache` and, when a lookup
    /// went on to them, the `tiers` (empty when it did not).
    #[error(
        "no image `{name}` in the cache `{cache}`{} (see `sregistry list`, or add it with `sregistry add FILE --name {name}`)",
        NotIn(.tiers)
    )]
    NotFound {
        name: String,
        cache: PathBuf,
        tiers: Vec<PathBuf>,
    },
    #[error(
        "image `{name}` now points to {current}, and blob {wanted} is not in the cache `{cache}`"
    )]
    DigestNotFound {
        name: String,
        wanted: Digest,
        current: Digest,
        cache: PathBuf,
    },
    #[error(
        "image `{name}` is in the index but its file `{path}` is missing (removed from outside sregistry); run `sregistry verify`, then add or pull it again"
    )]
    BlobMissing { name: String, path: PathBuf },
    #[error(
        "image `{name}` was quarantined by verify: its content no longer matched its digest, or its file was not the one sregistry put there (now at `{path}`); run `sregistry verify --repair`, or add it again"
    )]
    Quarantined { name: String, path: PathBuf },
    #[error(
        "image `{name}` is damaged: `{path}` has {size} bytes, not the {recorded} recorded (changed from outside sregistry); run `sregistry verify` to quarantine it"
    )]
    WrongSize {
        name: String,
        path: PathBuf,
        size: u64,
        recorded: u64,
    },
    #[error(
        "image `{name}` is damaged: `{path}` is not the file sregistry put there (another file was renamed or copied over it from outside sregistry); run `sregistry verify` to quarantine it, then add or pull it again (or `sregistry verify --repair`)"
    )]
    Replaced { name: String, path: PathBuf },
    #[error(
        "image `{name}` is corrupt: `{path}` hashes to {actual}, not its name; run `sregistry verify` to quarantine it"
    )]
    Corrupt {
        name: String,
        path: PathBuf,
        actual: Digest,
    },
    #[error("image `{name}` is pinned; run `sregistry unpin {name}` first")]
    Pinned { name: String },
    #[error(
        "image `{name}` is pinned to {pinned}; it was not re-pointed to {new} (give `add`, `tag` or `pull` --force to re-point it, which leaves the old content unprotected, or run `sregistry unpin {name}` first)"
    )]
    PinnedRepoint {
        name: String,
        pinned: Digest,
        new: Digest,
    },
    #[error(
        "image `{name}` points to {current}, not to the {wanted} given; nothing was done (see `sregistry inspect {name}`)"
    )]
    DigestMismatch {
        name: String,
        wanted: Digest,
        current: Digest,
    },
    #[error(
        "`{name}@{digest}`: the name to write cannot carry a digest (a digest only selects existing content); give `{name}` without `@{digest}`"
    )]
    DigestOnTarget { name: String, digest: Digest },
    #[error("`{path}` is {what}, not a regular file; give the path of an image file")]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("`{path}` is empty; an image file has content")]
    Empty { path: PathBuf },
    #[error(
        "`{path}` is a symbolic link; --move would move the link, not the image (add it without --move)"
    )]
    MoveSymlink { path: PathBuf },
    #[error(
        "`{path}` is inside the cache `{cache}`; --move takes files from outside it (to give a cached image another name, use `sregistry tag`)"
    )]
    MoveFromCache { path: PathBuf, cache: PathBuf },
    #[error("cannot open `{path}`: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot prepare the cache at `{path}`: {source}")]
    Layout { path: PathBuf, source: io::Error },
    #[error("cannot remove a blob from the cache: {source} (at `{path}`)")]
    Remove { path: PathBuf, source: io::Error },
    #[error("no cache directory given: set {CACHE_ENV}, pass --cache DIR, or set HOME")]
    NoRoot,
    /// The cache root (or its `v1/`) is a file, or lies under one.
    #[error(
        "the cache `{root}` cannot be used: `{path}` is not a directory; give a directory (--cache DIR or {CACHE_ENV})"
    )]
    NotADirectory { root: PathBuf, path: PathBuf },
    #[error("{what} was stopped by its progress receiver before it changed anything")]
    Stopped { what: &'static str },
    #[error(
        "`{remote}` is being pulled by the call whose progress callback made this call: that pull holds `{path}` and waits for the callback to return, so this call would wait for itself; make it after that pull returns"
    )]
    Reentered { remote: String, path: PathBuf },
    /// The caller's private cache in a shared cache is not the caller's own.
    #[error(
        "refusing your private cache `{path}`: {detail}; no image is pulled into it or read from it (ask the cache's admin to look at who made or changed it)"
    )]
    NotOwnPrivate { path: PathBuf, detail: String },
    /// A directory between a shared cache's root and the private caches may be changed by
    /// other members (private.rs, "The chain of directories").
    #[error(
        "private images are not safe in this shared cache: `{path}` {why}; no image is pulled into a private cache here or read from one ({fix})"
    )]
    PrivateUnsafe {
        path: PathBuf,
        why: String,
        fix: String,
    },
    /// A change asked of a name that only a read-only tier holds.
    #[error(
        "image `{name}` is in the read-only tier `{tier}`, not in the writable cache `{cache}`: sregistry never changes a tier (its admin publishes it); `sregistry pull` or `add` the image into the writable cache to change it there"
    )]
    InTier {
        name: String,
        tier: PathBuf,
        cache: PathBuf,
    },
    /// A published version of a tier given as the writable cache.
    #[error(
        "`{root}` is a published version of a tier (read-only, never changed in place): give its tier with --tier or `tiers`, and a writable cache of your own with --cache or SREGISTRY_CACHE"
    )]
    PublishedVersion { root: PathBuf },
    /// A configured tier that cannot be read at all.
    #[error(
        "the tier `{tier}` cannot be used: {why}; sregistry does not look past a configured tier it cannot read (remove it from `tiers`, SREGISTRY_TIERS or --tier to go on without it)"
    )]
    TierUnusable { tier: PathBuf, why: String },
    /// A tier's file found damaged by a reader (`get`, `get --verify`).
    #[error(
        "image `{name}` in the read-only tier `{tier}` is damaged: `{path}` {what}; sregistry never changes a tier: tell its admin (`sregistry --tier {tier} verify --tiers` checks it; `sregistry tier publish --copy SRC {tier}` from a good source replaces it)"
    )]
    TierDamaged {
        name: String,
        path: PathBuf,
        tier: PathBuf,
        what: String,
        corrupt: bool,
    },
    /// `tier publish` could not write the tier (a read-only DEST, no space, ...).
    #[error("cannot write the tier at `{path}`: {source}")]
    PublishWrite { path: PathBuf, source: io::Error },
    /// `tier publish` could not take a blob of its source.
    #[error(
        "cannot publish `{cache}`: the file of {names} (`{path}`) is unusable: {why}; nothing was published (run `sregistry --cache {cache} verify`, then add or pull that image again)"
    )]
    PublishSource {
        path: PathBuf,
        names: String,
        cache: PathBuf,
        why: String,
    },
    /// `tier publish` into a place it must not write (see `publish.rs`).
    #[error("refusing to publish into `{dest}`: {why}")]
    PublishRefused { dest: PathBuf, why: String },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl CacheError {
    /// What went wrong, for the front ends' exit codes and exception classes.
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
            | CacheError::Replaced { .. }
            | CacheError::Corrupt { .. } => ErrorKind::Corrupt,
            CacheError::Pinned { .. } | CacheError::PinnedRepoint { .. } => ErrorKind::Pinned,
            CacheError::DigestOnTarget { .. } => ErrorKind::InvalidName,
            CacheError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NoSuchFile
            }
            CacheError::Open { source, .. }
            | CacheError::Layout { source, .. }
            | CacheError::PublishWrite { source, .. }
            | CacheError::Remove { source, .. } => ErrorKind::of_io(source),
            CacheError::NotAFile { .. }
            | CacheError::Empty { .. }
            | CacheError::MoveSymlink { .. }
            | CacheError::MoveFromCache { .. }
            | CacheError::PublishRefused { .. } => ErrorKind::InvalidInput,
            CacheError::PublishSource { .. } => ErrorKind::Damaged,
            CacheError::TierDamaged { corrupt: true, .. } => ErrorKind::Corrupt,
            CacheError::TierDamaged { .. } => ErrorKind::Damaged,
            CacheError::TierUnusable { .. } => ErrorKind::Io,
            CacheError::PublishedVersion { .. } => ErrorKind::InvalidInput,
            CacheError::NoRoot | CacheError::NotADirectory { .. } => ErrorKind::Unsupported,
            CacheError::Stopped { .. } => ErrorKind::Stopped,
            CacheError::NotOwnPrivate { .. } | CacheError::PrivateUnsafe { .. } => {
                ErrorKind::PermissionDenied
            }
            CacheError::Reentered { .. } => ErrorKind::Reentered,
            CacheError::InTier { .. } => ErrorKind::PermissionDenied,
            CacheError::Settings(e) => e.kind(),
            CacheError::Store(e) => e.kind(),
            CacheError::Index(e) => e.kind(),
        }
    }

    /// True for errors that mean "no such image" (exit code 3).
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }
}

/// Index failures, each naming the index file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the index `{path}` cannot be read: {source} (run `sregistry doctor`)")]
    Db { path: PathBuf, source: redb::Error },
    #[error(
        "the index `{path}` has a damaged record for `{key}`: {detail}; run `sregistry doctor --repair-index` (names are rebuilt from `index.journal`; no image is lost)"
    )]
    Corrupt {
        path: PathBuf,
        key: String,
        detail: String,
    },
    #[error(
        "the index `{path}` is damaged; run `sregistry doctor --repair-index` (names are rebuilt from `{journal}`; no image is lost)"
    )]
    Damaged { path: PathBuf, journal: PathBuf },
    #[error(
        "the index `{path}` is missing or older than its journal `{journal}` (deleted, or restored from a copy); run `sregistry doctor --repair-index` to rebuild it from the journal"
    )]
    BehindJournal { path: PathBuf, journal: PathBuf },
    #[error(
        "the index `{path}` is missing, but `{blobs}` holds image files (the index was deleted, or part of the cache restored); run `sregistry doctor --repair-index` to rebuild it (every image is kept; names come back from the journal where it has them)"
    )]
    Missing { path: PathBuf, blobs: PathBuf },
    #[error(
        "I/O error on `{path}`: {source} (on NFS: the server restarted and did not give back this client's lock, so the write was refused; run the command again, then `sregistry verify`)"
    )]
    Refused {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write the index `{path}`: {source}; nothing was changed (free space on its filesystem: remove other files there, or run `sregistry gc`, which needs a little room for its own index write)"
    )]
    NoSpace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the index journal `{path}`: {source}")]
    Journal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the index `{path}` needs sregistry with index schema >= {need} to {access} it (it has schema {schema}, written by sregistry {by}); this is sregistry {VERSION} with schema {SCHEMA_VERSION}: upgrade sregistry"
    )]
    NeedsNewer {
        path: PathBuf,
        /// `read` or `change`.
        access: &'static str,
        need: u64,
        schema: u64,
        by: String,
    },
    #[error("cannot rebuild the index `{path}` from its journal: {detail}")]
    Rebuild { path: PathBuf, detail: String },
    /// A tier's index that redb would have to repair: copied while a writer had it open.
    #[error(
        "the index `{path}` of a read-only tier was not closed cleanly (copied while a writer had it open, or a live cache being written on a mount where its lock cannot be taken): sregistry never writes a tier; publish it again from its source (`sregistry tier publish`)"
    )]
    TierUnclean { path: PathBuf },
    /// A write asked of a tier's index (a bug: the tiers are only read).
    #[error("the index `{path}` belongs to a read-only tier: sregistry never writes a tier")]
    TierWrite { path: PathBuf },
}

impl IndexError {
    /// True when the index must be rebuilt (`doctor --repair-index`).
    pub fn needs_repair(&self) -> bool {
        matches!(
            self,
            IndexError::Damaged { .. }
                | IndexError::Corrupt { .. }
                | IndexError::BehindJournal { .. }
                | IndexError::Missing { .. }
        )
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
            IndexError::TierUnclean { .. } => ErrorKind::Damaged,
            IndexError::TierWrite { .. } => ErrorKind::PermissionDenied,
        }
    }
}

/// Lock failures, each naming the lock file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("timed out after {waited} waiting for lock on `{path}` (another sregistry process holds it; raise {TIMEOUT_ENV} to wait longer)", waited = crate::settings::format_duration(*.waited))]
    Timeout { path: PathBuf, waited: Duration },
    #[error(
        "cannot open lock file `{path}`: {source} (see `sregistry doctor` for the cache's permissions)"
    )]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "cannot lock `{path}`: {source} (if this filesystem lacks fcntl locks, try {KIND_ENV}=flock; see `sregistry doctor`)"
    )]
    Lock { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Setting(#[from] crate::settings::ConfigError),
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

/// Store failures, each naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write into the cache at `{path}`: {source}{hint}", hint = space_hint(.source))]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "`{path}` changed size while it was being added ({before} bytes, then {after}); add it again when nothing writes to it"
    )]
    Changed {
        path: PathBuf,
        before: u64,
        after: u64,
    },
    #[error("`{path}` and the cache are on different filesystems, so it cannot be moved in")]
    CrossDevice { path: PathBuf },
    #[error("`{path}` cannot be hard-linked into the cache, so it cannot be moved in")]
    NoLink { path: PathBuf },
    #[error("the add of `{path}` was stopped by its progress receiver; nothing was stored")]
    Stopped { path: PathBuf },
    #[error(
        "the staged copy `{path}` was replaced while it was being added (another member of the cache's group renamed or wrote a file there); nothing was stored: add it again, and see docs/security.md"
    )]
    Replaced { path: PathBuf },
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
            StoreError::Replaced { .. } => ErrorKind::Conflict,
        }
    }
}

fn space_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => " (free space or quota, or run `sregistry gc`)",
        Some(libc::EFBIG) => " (the file is larger than this process may write)",
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            " (check the cache's permissions with `sregistry doctor`)"
        }
        _ => "",
    }
}
