//! The cache: the one door through which commands, library users, gc, verify, doctor, the
//! shared-cache set-up and the remotes reach the index and the store.
//!
//! Its parts are private, so nothing outside `src/cache/` can name them: `index` (redb,
//! names, with its journal), `store` (blobs and `tmp/`), `uses` (use markers), and the
//! taking of `lock` files. Its protocol, in one place: [`Cache::add`] and
//! [`Cache::ingest`]/[`Cache::commit_ingested`] (`ingest.rs`) bring content in;
//! `collect.rs` holds the one removal routine ([`Cache::collect`] for gc,
//! [`Cache::quarantine`] for verify); `batch.rs` names many images at once; `health.rs`
//! checks and rebuilds the index and probes the locks for doctor; `layout.rs` creates the
//! directories and lists the cache's own entries for `init --shared` and doctor.
//! [`Cache`] itself and its opening are here; `add.rs` checks and stages a file for
//! [`Cache::add`]; `commit.rs` is the one commit path of `add` and every pull;
//! `get.rs` holds [`Cache::get`] and the other lookups; `names.rs` `tag`, `rm`, `pin` and
//! the checks on names; `pull.rs` the per-pull lock; `error.rs` the error types;
//! `progress.rs` the one progress type every task above reports through.
//!
//! # What each operation locks
//!
//! | operation        | index lock | outside the lock                         |
//! |------------------|------------|------------------------------------------|
//! | `get`, `list`, `inspect`, `info` | shared, milliseconds | stat of the blob          |
//! | `add`            | exclusive, milliseconds | copy and hash into `tmp/` before it |
//! | `tag`, `pin`     | exclusive  |                                          |
//! | `rm`             | exclusive  | unlink of blobs moved aside under the lock |
//! | last-use update  | shared (the `get`'s own), then exclusive only if free within 50 ms | the use marker, written under the shared lock |
//! | `add --move`     | exclusive, milliseconds | hard link and hash before it; the user's path unlinked after the commit |
//!
//! # A `get` that printed a path has made its use count
//!
//! When the index's last use of a name is older than 10 minutes, `get` writes the time
//! into the name's use marker (`crate::cache::uses`) **before it releases its shared lock**,
//! then tries to fold it into the index without waiting. gc, under the exclusive lock,
//! counts every marker; so no gc can evict a name between a `get`'s lookup and the
//! record of its use, however busy the lock is, and no `get` waits for a writer to
//! record it.
//!
//! # `add --move` never loses or shares the user's file
//!
//! The file is hard-linked into `tmp/` (never renamed away) and its path is unlinked only
//! after the name is committed: a failure or a kill at any instant leaves it at its path.
//! Its inode is handed over only when nobody else can write it and its directory is ours
//! to write (`MoveClaim`: a path that could not be unlinked would stay a second link to
//! the blob); otherwise it is copied. A kill before the commit may leave it read-only
//! (mode 0444), never changed; a failure gives its mode back. A path that cannot be
//! unlinked after the commit (a read-only filesystem, say) keeps its copied file and is
//! told to `AddOptions::not_removed`; the name stays committed.
//!
//! # Invariants kept here
//!
//! * A blob is complete in `blobs/` before the name that refers to it is committed: it is
//!   linked into place before the lock is taken, and checked (and, if gc collected the
//!   unreferenced link meanwhile, put back) under the exclusive lock, the lock gc needs
//!   too, so a committed name never points to a missing or partial blob.
//! * A blob is removed only under the exclusive lock, after the index shows no name uses
//!   it: its record goes in the transaction, its file is moved to `tmp/` after the commit
//!   (still under the lock) and unlinked after the lock is released, so a kill leaves at
//!   most an unreferenced file, never a name without its file. One routine does it, for
//!   `rm` and gc alike (`Cache::drop_blobs` and `move_aside` in `collect.rs`).
//! * `get` never prints a path it has not just seen exist.
//! * A pinned name is pointed at other content only when the caller says so
//!   ([`Repoint::Force`]), checked under the exclusive lock, so a pin taken while an `add`
//!   copied its file still counts. A reference with a digest (`name@blake3:...`) acts
//!   only if its name points to that digest: every operation taking one checks it (under
//!   the lock it then writes under), and a name to be written cannot carry one.
//! * Nothing here reads the time except through [`crate::format::clock::now`].

mod add;
mod batch;
mod collect;
mod commit;
mod dirs;
mod error;
mod get;
mod health;
mod index;
mod ingest;
mod layout;
pub mod limits;
pub mod lock;
mod names;
mod private;
mod progress;
mod publish;
mod pull;
mod retire;
mod settings;
mod store;
pub mod tiers;
mod uses;
mod writer;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::format::digest::Digest;
use crate::format::reference::Reference;
use commit::unknown_to;
use index::Index;
use lock::LockOptions;
use names::refuse_repoint;
use store::Store;
use uses::UseMarkers;

pub use add::{AddOptions, NotRemoved, NotRemovedFn};
pub use batch::{AddItem, BatchName, DEFAULT_ADD_BATCH};
pub use collect::{Snapshot, Victims};
pub use commit::Part;
pub use dirs::open_beneath;
pub use error::CacheError;
pub use error::StoreError;
pub use get::OpenPart;
pub use health::Repaired;
pub use index::journal::ReplayError;
pub use index::{
    BlobRecord, IndexError, IndexStats, JournalStatus, LAST_USE_RESOLUTION, Named, PlacedFile,
    Rebuilt, Recovered, RefRecord, Retired, SCHEMA_VERSION, decode_blob, decode_ref,
    panic_is_caught, recovered_name,
};
pub use ingest::{Ingest, IngestError, Ingested, Scratch, Tap};
pub(crate) use names::check_digest;
pub use names::{Removed, Repoint, Revealed, refuse_digest_on_target};
pub use private::{PRIVATE_DIR, PRIVATE_DIR_MODE};
pub use progress::{Progress, ProgressFn, ProgressFnBody, ProgressHook};
pub use publish::{DEFAULT_KEEP, Published};
pub use settings::{Settings, SettingsError};
pub use store::{BLOB_MODE, Found, TmpFile, remove_unfinished, wait_for_placers};
pub use tiers::{Caches, Listed};
pub use writer::release_all as release_writer_locks;

/// Environment variable naming the cache root (the configuration's `cache`).
pub const CACHE_ENV: &str = crate::settings::CACHE.var;
/// Directory of the current on-disk format (a format change means a new directory).
pub const FORMAT_DIR: &str = "v1";

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by sregistry.\n\
# For information about cache directory tags, see https://bford.info/cachedir/\n";

/// One cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    v1: PathBuf,
    store: Store,
    index: Index,
    uses: UseMarkers,
    settings: Settings,
    lock_opts: LockOptions,
    /// A read-only tier: the path it was configured as (see [`tiers`]).
    tier: Option<PathBuf>,
    /// The caller's private cache inside a shared one (see `private.rs`).
    private: bool,
}

/// A name and everything known about it, as `list`, `inspect` and `add` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub name: String,
    pub digest: Digest,
    pub size: Option<u64>,
    pub added: u64,
    pub last_used: Option<u64>,
    pub pinned: bool,
    pub source: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub media_type: Option<String>,
    /// The remote's digest of the content (`sha256:...`), when pulled or pushed.
    pub remote_digest: Option<String>,
    pub path: PathBuf,
    /// The read-only tier that holds the name, as configured; `None` for the writable
    /// cache.
    pub tier: Option<PathBuf>,
    /// Whether the name is in the caller's private cache inside a shared cache.
    pub private: bool,
}

/// Where content came from, recorded with its name.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    pub source: String,
    pub labels: BTreeMap<String, String>,
    pub media_type: Option<String>,
    pub remote_digest: Option<String>,
}

/// What `info` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    pub root: PathBuf,
    pub format: &'static str,
    pub index: PathBuf,
    #[serde(flatten)]
    pub stats: IndexStats,
    pub lock: &'static str,
}

impl Cache {
    /// The cache root: `explicit` (a program's own argument), else the configuration's
    /// `cache` (`--cache`, `$SREGISTRY_CACHE`, the files), else
    /// `${XDG_CACHE_HOME:-~/.cache}/sregistry`.
    pub fn resolve_root(
        explicit: Option<&Path>,
        config: &crate::settings::Config,
    ) -> Result<PathBuf, CacheError> {
        let nonempty = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = if let Some(p) = explicit.or(config.cache.as_deref()) {
            p.to_path_buf()
        } else if let Some(p) = nonempty("XDG_CACHE_HOME") {
            p.join("sregistry")
        } else if let Some(h) = nonempty("HOME") {
            h.join(".cache").join("sregistry")
        } else {
            return Err(CacheError::NoRoot);
        };
        Ok(std::path::absolute(&root).unwrap_or(root))
    }

    /// A handle on the cache at `root`, with the settings recorded in it (see
    /// `cache::settings`). Changes nothing on disk; writing operations create the
    /// layout when they first need it.
    pub fn open(root: &Path, lock_opts: LockOptions) -> Result<Cache, CacheError> {
        let cache = Cache::open_published(root, lock_opts)?;
        if cache.settings.published {
            return Err(CacheError::PublishedVersion {
                root: root.to_path_buf(),
            });
        }
        Ok(cache)
    }

    /// [`Cache::open`] of what may also be a published version (a tier's: read only).
    fn open_published(root: &Path, lock_opts: LockOptions) -> Result<Cache, CacheError> {
        let v1 = root.join(FORMAT_DIR);
        // Looked at only when the settings cannot be read, so a `get` pays nothing for it.
        let settings = Settings::load(&v1).map_err(|e| {
            match v1.ancestors().find(|p| p.exists()).filter(|p| !p.is_dir()) {
                Some(file) => CacheError::NotADirectory {
                    root: root.to_path_buf(),
                    path: file.to_path_buf(),
                },
                None => e.into(),
            }
        })?;
        Ok(Cache::with_settings(root, lock_opts, settings))
    }

    /// A handle with the given settings (used by `init` before they are recorded).
    pub fn with_settings(root: &Path, lock_opts: LockOptions, settings: Settings) -> Cache {
        let v1 = root.join(FORMAT_DIR);
        let lock_opts = LockOptions {
            file_mode: settings.file_mode,
            ..lock_opts
        };
        Cache {
            root: root.to_path_buf(),
            store: Store::new(&v1, settings.dir_mode).with_writer_locks(lock_opts.clone()),
            index: Index::new(&v1, lock_opts.clone(), settings.file_mode),
            uses: UseMarkers::new(&v1, settings.file_mode, settings.dir_mode),
            v1,
            settings,
            lock_opts,
            tier: None,
            private: false,
        }
    }

    /// A handle on the read-only tier configured as `configured` (see [`tiers`]): its
    /// root is the directory `configured` resolves to now (a symbolic link a publication
    /// moves is followed once, here, so one handle reads one version whole, and the paths
    /// it hands out stay on that version). Nothing is ever written through it: no lock, no
    /// use marker, no directory; its index is opened read-only without a lock.
    pub fn open_tier(configured: &Path) -> Result<Cache, CacheError> {
        // A published tier's `current` link (see `publish.rs`), else the directory itself.
        // A tier whose `current` does not resolve, or that is no directory, is an error
        // naming it: read as an empty cache, every name of it would be "not found". A tier
        // that does not exist reads as empty (a site's configuration lists it on nodes
        // without its mount too); the CLI warns of it (`Ctx::caches`).
        let unusable = |why: String| CacheError::TierUnusable {
            tier: configured.to_path_buf(),
            why,
        };
        let current = configured.join(publish::CURRENT);
        let root = match std::fs::canonicalize(&current) {
            Ok(root) => root,
            Err(e) if std::fs::symlink_metadata(&current).is_ok() => {
                return Err(unusable(format!(
                    "its `current` link does not resolve ({e}); its admin publishes it again"
                )));
            }
            Err(_) => match std::fs::metadata(configured) {
                Ok(m) if m.is_dir() => {
                    std::fs::canonicalize(configured).unwrap_or_else(|_| configured.to_path_buf())
                }
                Ok(_) => return Err(unusable("it is not a directory".into())),
                // Not there (a node without the mount): read as empty; the CLI warns.
                Err(e) if e.kind() == io::ErrorKind::NotFound => configured.to_path_buf(),
                Err(e) => return Err(unusable(e.to_string())),
            },
        };
        let mut cache = Cache::open_published(&root, LockOptions::default())?;
        cache.index = cache.index.read_only();
        if !cache.settings.published {
            // A plain cache as a tier: it may have writers (see `Index::locked_when_writable`).
            cache.index = cache.index.locked_when_writable();
        }
        cache.tier = Some(configured.to_path_buf());
        Ok(cache)
    }

    /// The path this cache was configured as, when it is a read-only tier.
    pub fn tier(&self) -> Option<&Path> {
        self.tier.as_deref()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Record `settings` in the cache (`v1/settings.json`), for every later command.
    pub fn save_settings(&self, settings: &Settings) -> io::Result<()> {
        settings.save(&self.v1)
    }

    /// Where the settings are recorded (`v1/settings.json`).
    pub fn settings_path(&self) -> PathBuf {
        self.v1.join(settings::FILE)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn not_found(&self, r: &Reference) -> CacheError {
        CacheError::NotFound {
            name: r.without_digest().to_string(),
            cache: self.root.clone(),
            tiers: Vec::new(),
        }
    }

    /// Where a quarantined copy of `d` is, if any (for `get`'s and `inspect`'s message).
    pub fn quarantined(&self, d: &Digest) -> Option<PathBuf> {
        let hex = d.hex();
        std::fs::read_dir(self.quarantine_dir())
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&hex))
            })
    }

    /// Cache root, counts and sizes.
    pub fn info(&self, lock_kind: lock::Kind) -> Result<Info, CacheError> {
        let stats = if self.exists() {
            self.index.read()?.stats()?
        } else {
            IndexStats::default()
        };
        Ok(Info {
            root: self.root.clone(),
            format: FORMAT_DIR,
            index: self.index.db_path().to_path_buf(),
            stats,
            lock: match lock_kind {
                lock::Kind::Ofd => "ofd",
                lock::Kind::Flock => "flock",
            },
        })
    }
}
