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

mod batch;
mod collect;
mod health;
mod index;
mod ingest;
mod layout;
pub mod limits;
pub mod lock;
mod retire;
mod settings;
mod store;
mod uses;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::format::clock;
use crate::format::digest::Digest;
use crate::format::reference::Reference;
use crate::testhook;
use index::{Index, IndexWriter};
use lock::LockOptions;
use store::{Staged, Store, StoreError};
use uses::UseMarkers;

pub use batch::{AddItem, BatchName, DEFAULT_ADD_BATCH};
pub use collect::{Snapshot, Victims};
pub use health::Repaired;
pub use index::{
    BlobRecord, IndexError, IndexStats, JournalStatus, LAST_USE_RESOLUTION, Named, Rebuilt,
    Recovered, RefRecord, SCHEMA_VERSION, decode_blob, decode_ref, panic_is_caught, recovered_name,
};
pub use ingest::{Ingest, IngestError, Ingested, Scratch, Tap};
pub use settings::{Settings, SettingsError};
pub use store::{BLOB_MODE, CopyProgress, Found, TmpFile, remove_unfinished};
pub use writer::release_all as release_writer_locks;

/// Environment variable naming the cache root.
pub const CACHE_ENV: &str = "SREGISTRY_CACHE";
/// Directory of the current on-disk format (a format change means a new directory).
pub const FORMAT_DIR: &str = "v1";

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by sregistry.\n\
# For information about cache directory tags, see https://bford.info/cachedir/\n";

/// Cache failures. Each names the image or path involved and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "no image `{name}` in the cache `{cache}` (see `sregistry list`, or add it with `sregistry add FILE --name {name}`)"
    )]
    NotFound { name: String, cache: PathBuf },
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
        "image `{name}` was quarantined by verify because its content no longer matches its digest (now at `{path}`); run `sregistry verify --repair`, or add it again"
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
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl CacheError {
    /// True for errors that mean "no such image" (exit code 3).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            CacheError::NotFound { .. }
                | CacheError::DigestNotFound { .. }
                | CacheError::DigestMismatch { .. }
        )
    }

    /// True for a request that can never succeed as given (exit code 2): a reference with
    /// a digest where a name is written, a `--move` from inside the cache.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            CacheError::DigestOnTarget { .. }
                | CacheError::MoveFromCache { .. }
                | CacheError::Reentered { .. }
        )
    }

    /// True for content that failed verification (exit code 4).
    pub fn is_verify_problem(&self) -> bool {
        matches!(
            self,
            CacheError::Corrupt { .. }
                | CacheError::Quarantined { .. }
                | CacheError::WrongSize { .. }
        )
    }
}

/// One cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    v1: PathBuf,
    store: Store,
    index: Index,
    uses: UseMarkers,
    settings: Settings,
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
}

/// Where content came from, recorded with its name.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    pub source: String,
    pub labels: BTreeMap<String, String>,
    pub media_type: Option<String>,
    pub remote_digest: Option<String>,
}

/// A part of an image, opened by [`Cache::open_parts`]: `record` and `file` are `None`
/// when gc has dropped it.
pub struct OpenPart {
    pub digest: Digest,
    pub record: Option<BlobRecord>,
    pub file: Option<fs::File>,
    /// Where the blob lives in the store (for a hard link; read through `file`).
    pub path: PathBuf,
}

/// A blob a converted image was made from: one of its layers, or its config.
pub enum Part {
    /// Downloaded for this image: committed with it.
    New {
        content: Ingested,
        media_type: String,
        /// The registry's digest of it (`sha256:...`).
        remote_digest: String,
    },
    /// Already in the cache (see [`Cache::open_by_remote_digest`]).
    Known(Digest),
}

/// What a write does when it would point a pinned name at other content.
///
/// A pin protects the content its name points to; re-pointing the name silently would
/// leave that content unprotected for gc. Re-pointing to the same content is no change
/// and always allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Repoint {
    /// Refuse with [`CacheError::PinnedRepoint`], changing nothing (the default).
    #[default]
    RefuseIfPinned,
    /// Re-point it (`--force`): the name stays pinned, now to the new content; the old
    /// content loses its protection and goes as usual once no name uses it.
    Force,
}

impl Repoint {
    /// [`Repoint::Force`] when `--force` was given.
    pub fn from_force(force: bool) -> Repoint {
        if force {
            Repoint::Force
        } else {
            Repoint::RefuseIfPinned
        }
    }
}

/// Options of [`Cache::add`].
#[derive(Clone, Debug, Default)]
pub struct AddOptions {
    /// Rename the file in when it is on the cache's filesystem.
    pub move_file: bool,
    /// Whether a pinned name may be re-pointed.
    pub repoint: Repoint,
    pub labels: BTreeMap<String, String>,
    /// What to record as the source (defaults to the absolute source path).
    pub source: Option<String>,
    pub media_type: Option<String>,
    /// Told how the copy advances, and can stop it; `None` tells nobody. A file moved in
    /// by hard link is not copied, and tells nothing.
    pub progress: Option<CopyProgress>,
    /// With `move_file`: told when the name is committed but the file's path could not be
    /// removed (its directory not writable, a read-only filesystem). The image is in the
    /// cache and the user's file is still at its path; `None` tells nobody.
    pub not_removed: Option<NotRemoved>,
}

/// Told `(path, why)` when a moved file's name is committed but its path could not be
/// removed ([`AddOptions::not_removed`]).
#[derive(Clone)]
pub struct NotRemoved(pub std::sync::Arc<NotRemovedFn>);

/// The function behind [`NotRemoved`].
pub type NotRemovedFn = dyn Fn(&Path, &io::Error) + Send + Sync;

impl std::fmt::Debug for NotRemoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NotRemoved(..)")
    }
}

/// A file checked and staged in `tmp/` for a name, not yet committed (the first half of
/// [`Cache::add`]). Dropped, it removes the staged file and gives a moved file its mode
/// back.
struct PreparedAdd {
    staged: Staged,
    /// The name, without a digest.
    name: Reference,
    prov: Provenance,
    repoint: Repoint,
    moved: Option<MovedFile>,
}

/// The user's file of an `add --move`, removed only once its name is committed.
struct MovedFile {
    src: PathBuf,
    dev: u64,
    ino: u64,
    claim: Option<MoveClaim>,
    /// Told when the path cannot be removed.
    not_removed: Option<NotRemoved>,
}

impl MovedFile {
    /// The name is committed: the file is the cache's. Leave its inode read-only (when it
    /// was handed over) and remove the user's path, but only if it still holds the file
    /// that was added, not one put there since. A path that cannot be removed is told to
    /// [`AddOptions::not_removed`].
    fn release(self) {
        if let Some(c) = self.claim {
            c.keep();
        }
        if fs::symlink_metadata(&self.src).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
        {
            match fs::remove_file(&self.src) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    if let Some(told) = &self.not_removed {
                        (told.0)(&self.src, &e);
                    }
                }
                _ => {}
            }
        }
    }
}

/// What [`Cache::remove`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Removed {
    pub names: Vec<String>,
    pub blobs: Vec<Digest>,
    pub bytes_freed: u64,
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

/// The right to hand a user's file to the cache by hard link (`add --move`), taken only
/// when nobody else can change the file afterwards: it has no other hard link, it is on
/// the cache's filesystem, it is now read-only (mode 0444, set here, which needs the
/// caller to own it), and no process has it open for writing (a read lease, which the
/// kernel grants only then, is taken and released at once; where a filesystem grants no
/// leases, as NFS often does not, the file is copied instead). Dropping the claim gives
/// the file its mode back; [`MoveClaim::keep`] leaves it read-only, as a blob is.
struct MoveClaim {
    file: fs::File,
    /// The mode to give back on drop; `None` once kept.
    mode: Option<u32>,
}

impl MoveClaim {
    fn take(
        src: &Path,
        file: &fs::File,
        meta: &fs::Metadata,
        store: &Store,
        settings: &Settings,
    ) -> Option<MoveClaim> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;
        let same_fs = fs::metadata(store.tmp_dir()).is_ok_and(|t| t.dev() == meta.dev());
        // A shared cache's blobs belong to its group; a file of another group is copied
        // (which gives the copy the cache's group) rather than re-grouped.
        let group_ok = !settings.shared || settings.gid.is_none_or(|g| g == meta.gid());
        if meta.nlink() != 1 || !same_fs || !group_ok {
            return None;
        }
        // A path that could not be removed after the commit would stay a second link to
        // the blob, which its owner could make writable again: a file whose directory we
        // cannot write is copied.
        let dir = match src.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: access reads a NUL-terminated string that outlives the call.
        if unsafe { libc::access(dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return None;
        }
        let file = file.try_clone().ok()?;
        let claim = MoveClaim {
            mode: Some(meta.mode() & 0o7777),
            file,
        };
        claim
            .file
            .set_permissions(fs::Permissions::from_mode(store::BLOB_MODE))
            .ok()?;
        let fd = claim.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this function owns; no pointers are passed.
        if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
            return None;
        }
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        // A link made before the mode changed would still let its owner in.
        claim.file.metadata().ok().filter(|m| m.nlink() == 1)?;
        Some(claim)
    }

    /// The file is the cache's now: leave it read-only.
    fn keep(mut self) {
        self.mode = None;
    }
}

impl Drop for MoveClaim {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(mode) = self.mode {
            let _ = self.file.set_permissions(fs::Permissions::from_mode(mode));
        }
    }
}

impl Cache {
    /// The cache root from `--cache`, else `$SREGISTRY_CACHE`, else
    /// `${XDG_CACHE_HOME:-~/.cache}/sregistry`.
    pub fn resolve_root(explicit: Option<&Path>) -> Result<PathBuf, CacheError> {
        let nonempty = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = if let Some(p) = explicit {
            p.to_path_buf()
        } else if let Some(p) = nonempty(CACHE_ENV) {
            p
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
    /// [`crate::cache::settings`]). Changes nothing on disk; writing operations create the
    /// layout when they first need it.
    pub fn open(root: &Path, lock_opts: LockOptions) -> Result<Cache, CacheError> {
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
            index: Index::new(&v1, lock_opts, settings.file_mode),
            uses: UseMarkers::new(&v1, settings.file_mode, settings.dir_mode),
            v1,
            settings,
        }
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
        }
    }

    /// Add the file at `src` under `name`; returns the new entry. The copy (or rename)
    /// and the hashing happen before the index lock is taken.
    pub fn add(
        &self,
        src: &Path,
        name: &Reference,
        opts: &AddOptions,
    ) -> Result<Entry, CacheError> {
        let p = self.prepare_add(src, name, opts)?;
        // On an error from here on, `staged` removes its file in `tmp/` and the move's
        // claim gives the user's file its mode back.
        let entry = self.commit_staged(p.staged, Vec::new(), &p.name, p.prov, p.repoint)?;
        if let Some(moved) = p.moved {
            testhook::pause("add-move-committed");
            moved.release();
        }
        Ok(entry)
    }

    /// The first half of [`Cache::add`] and of [`Cache::add_many`]: every check of the
    /// file and the name, then the copy (or, for `--move`, the hard link) into `tmp/` and
    /// the hashing, all before the index lock. Nothing is committed; dropping the result
    /// removes the staged file and gives a moved file its mode back.
    fn prepare_add(
        &self,
        src: &Path,
        name: &Reference,
        opts: &AddOptions,
    ) -> Result<PreparedAdd, CacheError> {
        refuse_digest_on_target(name)?;
        let name = name.without_digest();
        let open_err = |source| CacheError::Open {
            path: src.to_path_buf(),
            source,
        };
        if opts.move_file
            && fs::symlink_metadata(src)
                .map_err(open_err)?
                .file_type()
                .is_symlink()
        {
            return Err(CacheError::MoveSymlink {
                path: src.to_path_buf(),
            });
        }
        // O_NONBLOCK: opening a FIFO must not hang waiting for a writer.
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(src)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let what = if ft.is_dir() {
                "a directory"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() || ft.is_char_device() {
                "a device"
            } else {
                "not a file"
            };
            return Err(CacheError::NotAFile {
                path: src.to_path_buf(),
                what,
            });
        }
        if meta.len() == 0 {
            return Err(CacheError::Empty {
                path: src.to_path_buf(),
            });
        }
        if opts.move_file && self.contains(src) {
            return Err(CacheError::MoveFromCache {
                path: src.to_path_buf(),
                cache: self.root.clone(),
            });
        }
        self.ensure_layout()?;
        let abs_src = std::path::absolute(src).unwrap_or_else(|_| src.to_path_buf());
        // --move hands the file's inode to the cache only when nobody else can write it
        // ([`MoveClaim`]); otherwise it copies. Either way the user's path keeps the file
        // until the name is committed, and is removed only after that.
        let mut claim = None;
        let staged = match opts
            .move_file
            .then(|| MoveClaim::take(src, &file, &meta, &self.store, &self.settings))
        {
            Some(Some(c)) => match self.store.stage_link(src) {
                Ok(s) => {
                    claim = Some(c);
                    s
                }
                Err(StoreError::CrossDevice { .. } | StoreError::NoLink { .. }) => {
                    drop(c);
                    self.store.stage_file(
                        &mut file,
                        src,
                        Some(meta.len()),
                        opts.progress.as_ref(),
                    )?
                }
                Err(e) => return Err(e.into()),
            },
            _ => self
                .store
                .stage_file(&mut file, src, Some(meta.len()), opts.progress.as_ref())?,
        };
        let source = opts
            .source
            .clone()
            .unwrap_or_else(|| abs_src.display().to_string());
        Ok(PreparedAdd {
            staged,
            name,
            prov: Provenance {
                source,
                labels: opts.labels.clone(),
                media_type: opts.media_type.clone(),
                remote_digest: None,
            },
            repoint: opts.repoint,
            moved: opts.move_file.then(|| MovedFile {
                src: src.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
                claim,
                not_removed: opts.not_removed.clone(),
            }),
        })
    }

    /// Whether `path` lies inside this cache's directory (after resolving links).
    fn contains(&self, path: &Path) -> bool {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match (fs::canonicalize(&self.root), fs::canonicalize(parent)) {
            (Ok(root), Ok(dir)) => dir.starts_with(root),
            _ => false,
        }
    }

    /// A new file in `tmp/` for content the caller writes (a download), hashed as it is
    /// written; `tap` computes a second hash of the same bytes on the same thread (use
    /// `()` for none). See [`Ingest`].
    pub fn ingest<T: Tap>(&self, tap: T) -> Result<Ingest<T>, IngestError> {
        Ingest::new(&self.store, tap)
    }

    /// An empty file in `tmp/` for a tool that writes content by path (see [`Scratch`]).
    pub fn scratch(&self) -> Result<Scratch, IngestError> {
        Scratch::new(&self.store)
    }

    /// Commit ingested content under `name`: `Cache::commit_staged`, the one commit
    /// path of `add` and of every pull.
    pub fn commit_ingested(
        &self,
        ingested: Ingested,
        name: &Reference,
        prov: Provenance,
        repoint: Repoint,
    ) -> Result<Entry, CacheError> {
        self.commit_staged(ingested.staged, Vec::new(), name, prov, repoint)
    }

    /// Commit a converted image under `name` together with the blobs it was made from
    /// (its layers and config, in that order), in one transaction: new parts go into
    /// `blobs/` with their remote digests; known parts are listed whether or not gc has
    /// collected them meanwhile (they are only a cache: the image is complete without
    /// them, and [`Cache::open_parts`] says which are missing).
    pub fn commit_image(
        &self,
        image: Ingested,
        parts: Vec<Part>,
        name: &Reference,
        prov: Provenance,
        repoint: Repoint,
    ) -> Result<Entry, CacheError> {
        self.commit_staged(image.staged, parts, name, prov, repoint)
    }

    /// The blobs already in the cache whose remote digest (`sha256:...`) is one of
    /// `wanted`, opened under the shared lock: the open files stay readable whatever gc
    /// does next. Reads every blob record (not a hot path: once per image pull).
    pub fn open_by_remote_digest(
        &self,
        wanted: &[&str],
    ) -> Result<HashMap<String, (Digest, fs::File)>, CacheError> {
        let mut out = HashMap::new();
        if wanted.is_empty() || !self.exists() {
            return Ok(out);
        }
        let rd = self.index.read()?;
        for (d, b) in rd.blobs()? {
            let Some(remote) = b.remote_digest.as_deref() else {
                continue;
            };
            if wanted.contains(&remote)
                && !out.contains_key(remote)
                && let Ok(f) = fs::File::open(self.store.blob_path(&d))
                && f.metadata().is_ok_and(|m| m.len() == b.size)
            {
                out.insert(remote.to_string(), (d, f));
            }
        }
        Ok(out)
    }

    /// The parts of the image `r` names (its layers, bottom first, then its config), each
    /// opened under the shared lock, so they stay readable whatever gc does next. A part
    /// gc has dropped (under size pressure) is `None`: the image needs a pull to export.
    pub fn open_parts(&self, r: &Reference) -> Result<Vec<OpenPart>, CacheError> {
        if !self.exists() {
            return Err(self.not_found(r));
        }
        let key = r.key();
        let rd = self.index.read()?;
        let rec = rd.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
        check_digest(r, &rec)?;
        let blob = rd.get_blob(&rec.digest)?.unwrap_or_default();
        let mut out = Vec::with_capacity(blob.parts.len());
        for d in blob.parts {
            let path = self.store.blob_path(&d);
            let file = rd.get_blob(&d)?.and_then(|b| {
                let f = fs::File::open(&path).ok()?;
                Some((b, f))
            });
            out.push(match file {
                Some((record, file)) => OpenPart {
                    digest: d,
                    record: Some(record),
                    file: Some(file),
                    path,
                },
                None => OpenPart {
                    digest: d,
                    record: None,
                    file: None,
                    path,
                },
            });
        }
        Ok(out)
    }

    /// Put staged content in place and point `name` at it, under the exclusive index lock
    /// (the one commit path of `add` and of every pull). A pinned name that points to
    /// other content is refused unless `repoint` says otherwise: checked under the lock,
    /// so a pin taken meanwhile counts; the refusal leaves the index and `blobs/` as they
    /// were. `parts` (a converted image's layers and config) are committed in the same
    /// transaction and listed in the blob's record.
    fn commit_staged(
        &self,
        staged: Staged,
        parts: Vec<Part>,
        name: &Reference,
        prov: Provenance,
        repoint: Repoint,
    ) -> Result<Entry, CacheError> {
        refuse_digest_on_target(name)?;
        let now = clock::now();
        let digest = staged.digest();
        let key = name.key();
        let fan_dir_existed = self
            .store
            .blob_path(&digest)
            .parent()
            .is_some_and(Path::is_dir);
        let linked = staged.place(&self.store);
        testhook::pause("add-staged");
        // The pin check reads the index in the open that checks this build may write it,
        // before the read-write open: a refusal leaves the index file as it was, and the
        // blob `place` linked in (and its new fan-out directory) go again, as gc would.
        let mut refused_aside = Vec::new();
        let written = self.index.write_checked(|rd| {
            refuse_repoint(&key, &digest, repoint, rd.get_ref(&key)?, || {
                rd.is_pinned(&key)
            })
            .inspect_err(|_| {
                if matches!(rd.get_blob(&digest), Ok(None)) {
                    let blob = self.store.blob_path(&digest);
                    refused_aside.extend(self.take_out(&[digest]));
                    if !fan_dir_existed && let Some(dir) = blob.parent() {
                        let _ = fs::remove_dir(dir);
                    }
                }
            })
        });
        let mut w = match written {
            Ok(w) => w,
            Err(e) => {
                store::unlink_now(&refused_aside);
                // The index refused the writer (damaged, missing, newer): the blob this
                // command linked in must not stay unknown to it (invariant 8).
                if linked
                    && matches!(&e, CacheError::Index(ie) if !matches!(ie, IndexError::Lock(_)))
                {
                    self.take_back(&[digest]);
                }
                return Err(e);
            }
        };
        let mut aside = Vec::new();
        let refused = self.refuse_under_lock(&w, &key, &digest, repoint, &mut aside);
        if let Err(e) = refused {
            drop(w);
            store::unlink_now(&aside);
            return Err(e);
        }
        let new_parts = parts.iter().filter_map(|p| match p {
            Part::New { content, .. } => Some(content.digest()),
            Part::Known(_) => None,
        });
        let fresh = unknown_to(&w, std::iter::once(digest).chain(new_parts))?;
        let entry = match self.put_staged(&mut w, staged, parts, key, prov, now) {
            Ok(entry) => entry,
            Err(e) => {
                let aside = self.take_out(&fresh);
                drop(w);
                store::unlink_now(&aside);
                return Err(e);
            }
        };
        testhook::pause("add-index-uncommitted");
        let mut aside = Vec::new();
        let committed = w.commit_then_else(|| (), || aside = self.take_out(&fresh));
        store::unlink_now(&aside);
        committed?;
        Ok(entry)
    }

    /// Move the files of `ds` out of `blobs/` into `tmp/` (the caller holds the exclusive
    /// lock, and its transaction, which alone knew them, failed): the paths to
    /// [`store::unlink_now`] once the lock is released.
    fn take_out(&self, ds: &[Digest]) -> Vec<PathBuf> {
        ds.iter()
            .filter_map(|d| self.store.unlink_later(d).ok().flatten())
            .collect()
    }

    /// A command that linked `linked` into `blobs/` failed before it could open its write
    /// transaction (the index is damaged, missing or refuses this build): under the
    /// exclusive lock, take out each of them that the index does not know, or every one
    /// when the index cannot be read (no writer can name anything then). These links are
    /// this command's own (the blob was not there before), so nothing else was handed them;
    /// a concurrent add of the same content puts the blob back from its staged file as it
    /// commits ([`store::Staged::commit`]).
    fn take_back(&self, linked: &[Digest]) {
        let aside = self.index.view_exclusive(|view| {
            let gone: Vec<Digest> = linked
                .iter()
                .filter(|d| view.is_none_or(|v| !matches!(v.get_blob(d), Ok(Some(_)))))
                .copied()
                .collect();
            self.take_out(&gone)
        });
        if let Ok(aside) = aside {
            store::unlink_now(&aside);
        }
    }

    /// Under the exclusive lock, before `staged` is committed under `key`: refuse to
    /// re-point a pinned name (see [`Repoint`]). A refused blob that `Staged::place`
    /// linked in before the lock is nobody's unless the index knows it: it is moved aside
    /// into `aside` (for [`store::unlink_now`] once the lock is released), as gc would.
    fn refuse_under_lock(
        &self,
        w: &IndexWriter,
        key: &str,
        digest: &Digest,
        repoint: Repoint,
        aside: &mut Vec<PathBuf>,
    ) -> Result<(), CacheError> {
        let refused = refuse_repoint(key, digest, repoint, w.get_ref(key)?, || w.is_pinned(key));
        if refused.is_err() && w.get_blob(digest)?.is_none() {
            aside.extend(self.take_out(&[*digest]));
        }
        refused
    }

    /// In the open transaction `w` (the caller checked the pin): put the staged blob in
    /// place with the blobs it was made from, record it, point `key` at it and mark its
    /// use. A store error leaves the transaction as it was; an index error means the
    /// transaction must be dropped.
    fn put_staged(
        &self,
        w: &mut IndexWriter,
        staged: Staged,
        parts: Vec<Part>,
        key: String,
        prov: Provenance,
        now: u64,
    ) -> Result<Entry, CacheError> {
        let digest = staged.digest();
        let size = staged.size();
        let record = RefRecord {
            digest,
            added: now,
            source: Some(prov.source),
            labels: prov.labels,
        };
        let (path, _new) = staged.commit(&self.store)?;
        testhook::pause("add-blob-committed");
        let mut part_digests = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                Part::New {
                    content,
                    media_type,
                    remote_digest,
                } => {
                    let (d, size) = (content.digest(), content.size());
                    content.staged.commit(&self.store)?;
                    w.put_blob(
                        &d,
                        &BlobRecord {
                            size,
                            added: now,
                            media_type: Some(media_type),
                            remote_digest: Some(remote_digest),
                            ..Default::default()
                        },
                    )?;
                    part_digests.push(d);
                }
                // Listed even if gc dropped it meanwhile: the list stays the image's
                // whole recipe, and `open_parts` reports what is missing.
                Part::Known(d) => part_digests.push(d),
            }
        }
        let blob_record = BlobRecord {
            size,
            added: now,
            media_type: prov.media_type,
            remote_digest: prov.remote_digest,
            parts: part_digests,
            retired: None,
        };
        match w.get_blob(&digest)? {
            Some(old) if !blob_record.parts.is_empty() && old.parts != blob_record.parts => {
                w.replace_blob(
                    &digest,
                    &BlobRecord {
                        parts: blob_record.parts,
                        ..old
                    },
                )?;
            }
            Some(_) => {}
            None => w.put_blob(&digest, &blob_record)?,
        }
        self.point_name(w, &key, &record, now)?;
        w.set_last_use(&key, now)?;
        let pinned = w.is_pinned(&key)?;
        let blob = w.get_blob(&digest)?;
        Ok(Entry {
            name: key,
            digest,
            size: Some(size),
            added: now,
            last_used: Some(now),
            pinned,
            source: record.source,
            labels: record.labels,
            media_type: blob.as_ref().and_then(|b| b.media_type.clone()),
            remote_digest: blob.and_then(|b| b.remote_digest),
            path,
        })
    }

    /// Record the remote's digest of a blob (after a push computed it), so later pushes
    /// need not hash the file again.
    pub fn record_remote_digest(&self, d: &Digest, remote: &str) -> Result<(), CacheError> {
        let mut w = self.index.write()?;
        if let Some(mut b) = w.get_blob(d)?
            && b.remote_digest.as_deref() != Some(remote)
        {
            b.remote_digest = Some(remote.to_string());
            w.replace_blob(d, &b)?;
            w.commit()?;
        }
        Ok(())
    }

    /// The per-pull lock of a remote reference (`v1/locks/<hash>.lock`), held exclusive for
    /// a whole download. Taken before the index lock, never while holding it.
    ///
    /// Once it holds the lock, it removes what killed pulls and adds on this machine left
    /// in `tmp/` (see `store::Store::remove_dead_tmp`), so a pull killed mid-way leaves
    /// nothing behind once the next one runs here.
    pub fn pull_lock(&self, remote: &str) -> Result<crate::cache::lock::LockGuard, CacheError> {
        let path = self.locks_dir().join(pull_lock_name(remote));
        if crate::cache::lock::held_by_caller(&path) {
            // A callback of the pull holding it (see `LockGuard::reentry`): waiting would
            // be waiting for ourselves, the whole lock timeout, then blaming another process.
            return Err(CacheError::Reentered {
                remote: remote.to_string(),
                path,
            });
        }
        let guard = crate::cache::lock::lock(
            &path,
            crate::cache::lock::Mode::Exclusive,
            self.index.lock_options(),
        )
        .map_err(IndexError::from)?;
        self.store.remove_dead_tmp();
        Ok(guard)
    }

    /// How many pulls of `remote` have failed so far, and the last one's message
    /// (`0, ""` when none has). Read before waiting for the pull lock and again once it is
    /// held, it tells a waiter whether the pull it waited for failed.
    pub fn pull_failures(&self, remote: &str) -> (u64, String) {
        let path = self.pull_failure_note(remote);
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let (count, detail) = text.split_once('\n').unwrap_or((&text, ""));
        (count.trim().parse().unwrap_or(0), detail.to_string())
    }

    /// Record that a pull of `remote` failed with `detail` (call holding its pull lock).
    /// Best effort: a note that cannot be written only makes waiters try for themselves.
    pub fn record_pull_failure(&self, remote: &str, detail: &str) {
        let (count, _) = self.pull_failures(remote);
        let path = self.pull_failure_note(remote);
        let tmp = path.with_extension(format!("failed.{}", std::process::id()));
        if std::fs::write(&tmp, format!("{}\n{detail}", count + 1)).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        let _ = std::fs::remove_file(&tmp);
    }

    fn pull_failure_note(&self, remote: &str) -> PathBuf {
        self.locks_dir()
            .join(pull_lock_name(remote))
            .with_extension("failed")
    }

    /// The path of the blob `r` names: the hot path. Takes the shared lock for a lookup,
    /// checks the file exists, and records the use when the stored time is stale.
    pub fn get(&self, r: &Reference) -> Result<PathBuf, CacheError> {
        self.get_where(r, |_| true)?
            .ok_or_else(|| self.not_found(r))
    }

    /// [`Cache::get`] when the name's record passes `check` (for example: it was pulled
    /// from this remote), in the same lookup; `Ok(None)` when it does not.
    pub fn get_where(
        &self,
        r: &Reference,
        check: impl FnOnce(&RefRecord) -> bool,
    ) -> Result<Option<PathBuf>, CacheError> {
        if !self.exists() {
            return Err(self.not_found(r));
        }
        let key = r.key();
        let (path, stale) = {
            let rd = self.index.read()?;
            let rec = rd.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
            if !check(&rec) {
                return Ok(None);
            }
            let digest = match r.digest() {
                Some(want) if *want != rec.digest => {
                    if rd.get_blob(want)?.is_none() {
                        return Err(CacheError::DigestNotFound {
                            name: key,
                            wanted: *want,
                            current: rec.digest,
                            cache: self.root.clone(),
                        });
                    }
                    *want
                }
                _ => rec.digest,
            };
            let path = self.checked_path(&rd, &key, &digest)?;
            let stale = self.note_use(&rd, &key)?;
            (path, stale)
        };
        if stale {
            testhook::pause("get-before-touch");
            self.touch(&key);
        }
        Ok(Some(path))
    }

    /// The path of `digest`'s blob for the name `key`, checked under the caller's shared
    /// lock: there, a regular file, of its recorded size (a file cut short or grown from
    /// outside is never handed out); else why not.
    fn checked_path(
        &self,
        rd: &index::IndexReader,
        key: &str,
        digest: &Digest,
    ) -> Result<PathBuf, CacheError> {
        let path = self.store.blob_path(digest);
        let Some(size) = std::fs::metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
        else {
            if let Some(q) = self.quarantined(digest) {
                return Err(CacheError::Quarantined {
                    name: key.to_string(),
                    path: q,
                });
            }
            return Err(CacheError::BlobMissing {
                name: key.to_string(),
                path,
            });
        };
        if let Some(b) = rd.get_blob(digest)?
            && b.size != size
        {
            return Err(CacheError::WrongSize {
                name: key.to_string(),
                path,
                size,
                recorded: b.size,
            });
        }
        Ok(path)
    }

    /// Record a use of `key` in its marker when the stored time is stale, under the
    /// caller's shared lock, so that no gc can choose the name between the lookup and the
    /// record of its use (see `crate::cache::uses`). True when the caller should then
    /// fold it into the index ([`Cache::touch`]).
    fn note_use(&self, rd: &index::IndexReader, key: &str) -> Result<bool, CacheError> {
        let now = clock::now();
        let stale = rd
            .last_use(key)?
            .is_none_or(|t| now.saturating_sub(t) >= LAST_USE_RESOLUTION);
        if stale {
            let _ = self.uses.record(key, now, LAST_USE_RESOLUTION);
        }
        Ok(stale)
    }

    /// [`Cache::get`], then re-hash the file before answering (`get --verify`).
    pub fn get_verified(&self, r: &Reference) -> Result<PathBuf, CacheError> {
        let path = self.get(r)?;
        let (actual, _) =
            crate::format::digest::hash_file(&path).map_err(|source| CacheError::Open {
                path: path.clone(),
                source,
            })?;
        let expected = path
            .file_name()
            .and_then(|n| Digest::from_hex(&n.to_string_lossy()));
        if expected != Some(actual) {
            return Err(CacheError::Corrupt {
                name: r.key(),
                path,
                actual,
            });
        }
        Ok(path)
    }

    /// Move a use of `key` from its marker into the index if the index lock is free within
    /// milliseconds; a busy index means someone else is writing, and the marker `get` left
    /// under the shared lock keeps the use until a writer folds it in.
    fn touch(&self, key: &str) {
        let Ok(Some(mut w)) = self.index.try_write(std::time::Duration::from_millis(50)) else {
            return;
        };
        let when = clock::now().max(self.uses.read(key).unwrap_or(0));
        if matches!(w.get_ref(key), Ok(Some(_))) && w.set_last_use(key, when).is_ok() {
            let _ = w.commit_then(|| self.uses.remove_folded(key, when));
        }
    }

    /// The later of the index's last use and the marker's, for each of `names`.
    fn with_marked_uses(&self, names: &mut [Named]) {
        collect::fold_marks(names, &self.uses.all());
    }

    fn entry_of(&self, n: Named) -> Entry {
        Entry {
            path: self.store.blob_path(&n.record.digest),
            digest: n.record.digest,
            size: n.blob.as_ref().map(|b| b.size),
            added: n.record.added,
            last_used: n.last_use,
            pinned: n.pinned,
            source: n.record.source,
            labels: n.record.labels,
            media_type: n.blob.as_ref().and_then(|b| b.media_type.clone()),
            remote_digest: n.blob.and_then(|b| b.remote_digest),
            name: n.name,
        }
    }

    /// Every name (sorted), or those matching `pattern` (a glob with `*`/`?`, else a
    /// substring).
    pub fn list(&self, pattern: Option<&str>) -> Result<Vec<Entry>, CacheError> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let mut all = self.index.read()?.all()?;
        self.with_marked_uses(&mut all);
        Ok(all
            .into_iter()
            .filter(|n| {
                pattern.is_none_or(|p| crate::format::reference::matches_pattern(p, &n.name))
            })
            .map(|n| self.entry_of(n))
            .collect())
    }

    /// Everything known about one name.
    pub fn entry(&self, r: &Reference) -> Result<Entry, CacheError> {
        if !self.exists() {
            return Err(self.not_found(r));
        }
        let rd = self.index.read()?;
        self.entry_under(&rd, r)
    }

    fn entry_under(&self, rd: &index::IndexReader, r: &Reference) -> Result<Entry, CacheError> {
        let key = r.key();
        let record = rd.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
        check_digest(r, &record)?;
        let blob = rd.get_blob(&record.digest)?;
        let last_use = match (rd.last_use(&key)?, self.uses.read(&key)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let pinned = rd.is_pinned(&key)?;
        Ok(self.entry_of(Named {
            name: key,
            record,
            blob,
            last_use,
            pinned,
        }))
    }

    /// The entry of `r` and its file, opened, from one lookup under the shared lock: the
    /// open file holds the content the entry describes, whatever re-points the name or gc
    /// removes next (an [`Cache::entry`] then a [`Cache::get`] could see two contents, and
    /// a path can vanish). A file that is missing, quarantined or not of its recorded size
    /// is the error [`Cache::get`] gives. For `push`, which reads the file and records the
    /// entry's digest.
    pub fn open_entry(&self, r: &Reference) -> Result<(Entry, fs::File), CacheError> {
        if !self.exists() {
            return Err(self.not_found(r));
        }
        let rd = self.index.read()?;
        let entry = self.entry_under(&rd, r)?;
        // There, a regular file, of its recorded size (the errors `get` gives), then
        // opened while the shared lock still holds.
        let path = self.checked_path(&rd, &entry.name, &entry.digest)?;
        let file = fs::File::open(&path).map_err(|source| CacheError::Open { path, source })?;
        Ok((entry, file))
    }

    /// [`Cache::entry`] and [`Cache::get`] in one lookup: the entry of `r` when it passes
    /// `check`, its file checked in place and its use recorded as `get` does; `Ok(None)`
    /// when it does not pass. What `check` saw is what the caller gets, even if the name
    /// is re-pointed the moment after.
    pub fn entry_in_use(
        &self,
        r: &Reference,
        check: impl FnOnce(&Entry) -> bool,
    ) -> Result<Option<Entry>, CacheError> {
        if !self.exists() {
            return Err(self.not_found(r));
        }
        let (entry, stale) = {
            let rd = self.index.read()?;
            let entry = self.entry_under(&rd, r)?;
            if !check(&entry) {
                return Ok(None);
            }
            self.checked_path(&rd, &entry.name, &entry.digest)?;
            let stale = self.note_use(&rd, &entry.name)?;
            (entry, stale)
        };
        if stale {
            self.touch(&entry.name);
        }
        Ok(Some(entry))
    }

    /// Fail with "not found" (or a digest the name does not point to, or "pinned") under
    /// the shared lock, before a write opens the index: a refused command leaves the index
    /// file byte-for-byte unchanged. The writer checks again under the exclusive lock.
    fn precheck(&self, names: &[Reference], refuse_pinned: bool) -> Result<(), CacheError> {
        if !self.exists() {
            return Err(self.not_found(&names[0]));
        }
        let rd = self.index.read()?;
        for r in names {
            let key = r.key();
            let rec = rd.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
            check_digest(r, &rec)?;
            if refuse_pinned && rd.is_pinned(&key)? {
                return Err(CacheError::Pinned { name: key });
            }
        }
        Ok(())
    }

    /// Point `dst` at the blob `src` points at (`src` with a digest only if it points
    /// there). A pinned `dst` that points elsewhere is refused unless `repoint` says
    /// otherwise (see [`Repoint`]).
    pub fn tag(
        &self,
        src: &Reference,
        dst: &Reference,
        repoint: Repoint,
    ) -> Result<Entry, CacheError> {
        refuse_digest_on_target(dst)?;
        if !self.exists() {
            return Err(self.not_found(src));
        }
        let key = dst.key();
        {
            // What the writer would refuse, refused under the shared lock first (see
            // `precheck`).
            let rd = self.index.read()?;
            let rec = rd.get_ref(&src.key())?.ok_or_else(|| self.not_found(src))?;
            check_digest(src, &rec)?;
            refuse_repoint(&key, &rec.digest, repoint, rd.get_ref(&key)?, || {
                rd.is_pinned(&key)
            })?;
        }
        let mut w = self.index.write()?;
        let rec = w.get_ref(&src.key())?.ok_or_else(|| self.not_found(src))?;
        check_digest(src, &rec)?;
        let path = self.store.blob_path(&rec.digest);
        if !path.is_file() {
            return Err(CacheError::BlobMissing {
                name: src.key(),
                path,
            });
        }
        refuse_repoint(&key, &rec.digest, repoint, w.get_ref(&key)?, || {
            w.is_pinned(&key)
        })?;
        let now = clock::now();
        let new = RefRecord { added: now, ..rec };
        self.point_name(&mut w, &key, &new, now)?;
        w.set_last_use(&key, now)?;
        let blob = w.get_blob(&new.digest)?;
        let pinned = w.is_pinned(&key)?;
        w.commit()?;
        Ok(self.entry_of(Named {
            name: key,
            record: new,
            blob,
            last_use: Some(now),
            pinned,
        }))
    }

    /// Remove names. All must exist and be unpinned, or nothing changes. A blob no name
    /// uses any more is deleted too, unless `keep_blobs`.
    pub fn remove(&self, names: &[Reference], keep_blobs: bool) -> Result<Removed, CacheError> {
        if names.is_empty() {
            return Ok(Removed::default());
        }
        self.precheck(names, true)?;
        let mut out = Removed::default();
        let mut aside = Vec::new();
        {
            let mut w = self.index.write()?;
            for r in names {
                let key = r.key();
                let rec = w.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
                check_digest(r, &rec)?;
                if w.is_pinned(&key)? {
                    return Err(CacheError::Pinned { name: key });
                }
            }
            let mut candidates = Vec::new();
            for r in names {
                let key = r.key();
                if let Some(rec) = w.remove_ref(&key)? {
                    out.names.push(key);
                    candidates.push(rec.digest);
                }
            }
            // What the names held before they were re-pointed goes with them.
            candidates.extend(self.retired_from(&w, &out.names)?);
            if keep_blobs {
                candidates.clear();
            }
            candidates.sort();
            candidates.dedup();
            let mut dropped = self.drop_blobs(&mut w, &candidates)?;
            // The files go after the commit, still under the lock (see `drop_blobs`).
            w.commit_then(|| self.move_aside(&candidates, &mut dropped, &mut aside))?;
            for (d, dropped) in candidates.into_iter().zip(dropped) {
                let Some(dropped) = dropped else { continue };
                if dropped.moved {
                    out.bytes_freed += dropped.size.unwrap_or(0);
                }
                out.blobs.push(d);
            }
        }
        store::unlink_now(&aside);
        Ok(out)
    }

    /// Pin or unpin a name; returns whether that changed anything.
    pub fn set_pin(&self, r: &Reference, pinned: bool) -> Result<bool, CacheError> {
        self.precheck(std::slice::from_ref(r), false)?;
        let key = r.key();
        let mut w = self.index.write()?;
        let rec = w.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
        check_digest(r, &rec)?;
        let changed = w.set_pin(&key, pinned, clock::now())?;
        w.commit()?;
        Ok(changed)
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

/// BLAKE3 of a remote reference's text: the name of its per-pull lock.
fn pull_lock_name(remote: &str) -> String {
    format!("{}.lock", &Digest::of(remote.as_bytes()).hex()[..32])
}

/// Of `ds`, those the open transaction `w` has no record of (each once): what it must take
/// out of `blobs/` again if it fails.
fn unknown_to(
    w: &IndexWriter,
    ds: impl IntoIterator<Item = Digest>,
) -> Result<Vec<Digest>, IndexError> {
    let mut out: Vec<Digest> = Vec::new();
    for d in ds {
        if !out.contains(&d) && w.get_blob(&d)?.is_none() {
            out.push(d);
        }
    }
    Ok(out)
}

/// Refuse `r` when it carries a digest and its name points to other content.
pub(crate) fn check_digest(r: &Reference, rec: &RefRecord) -> Result<(), CacheError> {
    match r.digest() {
        Some(want) if *want != rec.digest => Err(CacheError::DigestMismatch {
            name: r.key(),
            wanted: *want,
            current: rec.digest,
        }),
        _ => Ok(()),
    }
}

/// Refuse a name to be written that carries a digest: a digest selects content that
/// exists, it cannot say where a name will point.
pub fn refuse_digest_on_target(name: &Reference) -> Result<(), CacheError> {
    match name.digest() {
        Some(d) => Err(CacheError::DigestOnTarget {
            name: name.key(),
            digest: *d,
        }),
        None => Ok(()),
    }
}

/// Refuse to point the pinned `key` at `new` when it points to other content, unless
/// `repoint` is [`Repoint::Force`]. `current` is what `key` points to now; `pinned` asks
/// the index whether it is pinned (only when that matters).
fn refuse_repoint(
    key: &str,
    new: &Digest,
    repoint: Repoint,
    current: Option<RefRecord>,
    pinned: impl FnOnce() -> Result<bool, IndexError>,
) -> Result<(), CacheError> {
    match current {
        Some(cur) if repoint != Repoint::Force && cur.digest != *new && pinned()? => {
            Err(CacheError::PinnedRepoint {
                name: key.to_string(),
                pinned: cur.digest,
                new: *new,
            })
        }
        _ => Ok(()),
    }
}
