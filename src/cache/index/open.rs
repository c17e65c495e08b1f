//! Opening the index (see "Protocol" in [`super`]): [`Index`], the handle, opens
//! `index.redb` only under `index.lock`: read-only under the shared lock
//! ([`Index::read`]), read-write under the exclusive one ([`Index::write`] and its
//! variants), after fencing the index and its journal (`lock::fence`) and checking that
//! this build may change the index's schema. A read-only open that finds a writer's crash
//! (`RepairAborted`) repairs under the exclusive lock and reads again. A missing index is
//! built complete under a temporary name and renamed into place, and never started empty
//! beside a journal or image files.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, WriteTransaction};

use super::backend::{BeforeFlush, UnderOurLock};
use super::damage::{caught, from_redb, guarded};
use super::kept::Slot;
use super::schema::{CACHE_BYTES, MIGRATIONS, stamp_schema};
use super::{IndexError, IndexReader, IndexWriter, journal};
use crate::cache::lock::{self, LockError, LockGuard, LockOptions, Mode};

/// The index and journal a writer opened and fenced as it took the lock (`None`: the
/// file did not exist).
pub(super) struct Fenced {
    pub(super) db: Option<FencedFile>,
    pub(super) journal: Option<FencedFile>,
}

/// A file and its fence (`lock::fence`). The fence drops first (the tuple's order): it is
/// unlocked while the descriptor is still open, then the file closes.
pub(super) type FencedFile = (lock::Held, std::fs::File);

/// Open the journal at `path` for appending and fence it; `None` when there is none.
pub(super) fn fence_journal(
    path: &Path,
    opts: &LockOptions,
) -> Result<Option<FencedFile>, IndexError> {
    let journal_err = |source| IndexError::Journal {
        path: path.to_path_buf(),
        source,
    };
    match crate::fork::open(|| journal::open_for_append(path)) {
        Ok((file, registration)) => {
            let fence = lock::fence(&file, registration, path, opts)?;
            Ok(Some((fence, file)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(journal_err(e)),
    }
}

/// Handle on the index of one cache.
#[derive(Clone, Debug)]
pub(crate) struct Index {
    pub(super) db_path: PathBuf,
    pub(super) lock_path: PathBuf,
    pub(super) journal_path: PathBuf,
    pub(super) lock_opts: LockOptions,
    pub(super) file_mode: u32,
    /// `v1/blobs`: an index is never started empty beside image files.
    pub(super) blobs_dir: PathBuf,
    /// The open [`Index::read_kept`] keeps across lookups, shared by clones.
    pub(super) kept: Arc<Mutex<Slot>>,
    /// A tier's index: read without a lock, never written ([`Index::read_only`]).
    pub(super) read_only: bool,
    /// A tier that is a plain cache (no `current`): read under the shared lock when its
    /// `index.lock` can be opened for writing ([`Index::locked_when_writable`]).
    pub(super) lock_if_writable: bool,
}

impl Index {
    /// The index of the cache version directory `v1`.
    pub(crate) fn new(v1: &Path, lock_opts: LockOptions, file_mode: u32) -> Index {
        Index {
            db_path: v1.join("index.redb"),
            lock_path: v1.join("index.lock"),
            journal_path: v1.join("index.journal"),
            lock_opts,
            file_mode,
            blobs_dir: v1.join("blobs"),
            kept: Arc::new(Mutex::new(Slot::new())),
            read_only: false,
            lock_if_writable: false,
        }
    }

    /// A tier's index that may have writers: a plain cache (not a published version)
    /// configured as a tier, such as a group's live cache. Its readers take the shared
    /// lock when `index.lock` is there and opens for writing (a writable filesystem), so
    /// they never open it while a writer commits; on a read-only mount there is no writer
    /// on this node to exclude, and no lock is taken (nothing is ever written there).
    pub(crate) fn locked_when_writable(mut self) -> Index {
        self.lock_if_writable = true;
        self
    }

    /// This index as a tier's (see "Tiers" in `crate::cache::tiers`): published whole and
    /// never changed in place, so it is read without `index.lock` (a tier's filesystem
    /// may be read-only, and no writer exists to exclude), opened read-only, and never
    /// written: a read-only open redb would have to repair (`RepairAborted`, an index
    /// copied while a writer had it open) is [`IndexError::TierUnclean`], and every write
    /// [`IndexError::TierWrite`].
    pub(crate) fn read_only(mut self) -> Index {
        self.read_only = true;
        self
    }

    /// [`Index::read`] of a tier's index: no lock, a read-only open.
    fn read_tier(&self) -> Result<IndexReader, IndexError> {
        // Asked with access(2), which opens nothing: on a read-only mount, no open for
        // writing is even tried.
        let writable = || {
            use std::os::unix::ffi::OsStrExt;
            std::ffi::CString::new(self.lock_path.as_os_str().as_bytes())
                // SAFETY: a valid NUL-terminated path; access(2) only reads it.
                .is_ok_and(|p| unsafe { libc::access(p.as_ptr(), libc::W_OK) } == 0)
        };
        let guard = match self.lock_if_writable && writable() {
            true => Some(lock::lock(&self.lock_path, Mode::Shared, &self.lock_opts)?),
            false => None,
        };
        let backend = match UnderOurLock::open(&self.db_path, false) {
            Err(redb::StorageError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(IndexReader {
                    txn: None,
                    snap: None,
                    keep_lock: None,
                    _db: None,
                    _lock: None,
                    path: self.db_path.clone(),
                    poisoned: Cell::new(false),
                    kept: None,
                });
            }
            opened => opened,
        };
        match self.open_read_only_with(Cell::new(false), backend)? {
            Ok(mut reader) => {
                reader._lock = guard;
                reader.check_schema()?;
                Ok(reader)
            }
            Err(redb::DatabaseError::RepairAborted) => Err(IndexError::TierUnclean {
                path: self.db_path.clone(),
            }),
            Err(e) => Err(self.db_err()(e.into())),
        }
    }

    fn refuse_tier_write(&self) -> Result<(), IndexError> {
        match self.read_only {
            true => Err(IndexError::TierWrite {
                path: self.db_path.clone(),
            }),
            false => Ok(()),
        }
    }

    pub(crate) fn lock_options(&self) -> &LockOptions {
        &self.lock_opts
    }

    pub(crate) fn db_path(&self) -> &Path {
        &self.db_path
    }

    pub(crate) fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    pub(crate) fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    fn db_err(&self) -> impl Fn(redb::Error) -> IndexError + '_ {
        move |source| from_redb(&self.db_path, source)
    }

    /// The journal exists with something in it.
    fn journal_exists(&self) -> bool {
        std::fs::metadata(&self.journal_path).is_ok_and(|m| m.len() > 0)
    }

    pub(super) fn behind_journal(&self) -> IndexError {
        IndexError::BehindJournal {
            path: self.db_path.clone(),
            journal: self.journal_path.clone(),
        }
    }

    /// Why there is no `index.redb` to use, if it must not be started empty: a journal
    /// holds names, or `blobs/` holds images (`blobs/<algorithm>/<fan-out>/<file>`) that
    /// an empty index would leave to the next gc. A blob with a second link is an add or
    /// pull in flight (its staged file in `tmp/` is that link; the first add of a new cache
    /// links its blob before it creates the index), so only files with one link count.
    /// Read only when the index is missing.
    fn refuse_missing(&self) -> Option<IndexError> {
        use std::os::unix::fs::MetadataExt;
        if self.journal_exists() {
            return Some(self.behind_journal());
        }
        let has_files = |dir: &Path| {
            std::fs::read_dir(dir).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.nlink() == 1))
            })
        };
        let holds_images = std::fs::read_dir(&self.blobs_dir).is_ok_and(|algos| {
            algos.flatten().any(|algo| {
                std::fs::read_dir(algo.path())
                    .is_ok_and(|fans| fans.flatten().any(|fan| has_files(&fan.path())))
            })
        });
        holds_images.then(|| IndexError::Missing {
            path: self.db_path.clone(),
            blobs: self.blobs_dir.clone(),
        })
    }

    /// Open for reading under the shared lock.
    pub(crate) fn read(&self) -> Result<IndexReader, IndexError> {
        if self.read_only {
            return self.read_tier();
        }
        let mut repaired = false;
        loop {
            let guard = lock::lock(&self.lock_path, Mode::Shared, &self.lock_opts)?;
            // The open says whether there is an index: no look at the path first.
            let backend = match UnderOurLock::open(&self.db_path, false) {
                Err(redb::StorageError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(e) = self.refuse_missing() {
                        return Err(e);
                    }
                    return Ok(IndexReader {
                        txn: None,
                        snap: None,
                        keep_lock: None,
                        _db: None,
                        _lock: Some(guard),
                        path: self.db_path.clone(),
                        poisoned: Cell::new(false),
                        kept: None,
                    });
                }
                opened => opened,
            };
            let poisoned = Cell::new(false);
            match self.open_read_only_with(poisoned, backend)? {
                Ok(mut reader) => {
                    reader._lock = Some(guard);
                    reader.check_schema()?;
                    return Ok(reader);
                }
                Err(redb::DatabaseError::RepairAborted) if !repaired => {
                    // A writer died mid-commit: repair under the exclusive lock, read again.
                    drop(guard);
                    self.repair()?;
                    repaired = true;
                }
                Err(e) => return Err(self.db_err()(e.into())),
            }
        }
    }

    pub(super) fn repair(&self) -> Result<(), IndexError> {
        self.refuse_tier_write()?;
        let _guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        let poisoned = Cell::new(false);
        guarded(&poisoned, &self.db_path, || {
            let db = self.open_rw(None, BeforeFlush::default())?;
            db.close().map_err(|e| self.db_err()(e.into()))
        })
    }

    /// Open read-write (caller holds the exclusive lock). A missing index is first built
    /// complete under a temporary name and renamed into place, so a crash during creation
    /// never leaves a half-written `index.redb` behind; but not beside a journal, which
    /// holds names a new, empty index would forget.
    ///
    /// Every write goes through a fenced descriptor (`lock::fence`): `fenced`, the one the
    /// writer fenced as it took the lock, or a new one fenced here.
    fn open_rw(
        &self,
        fenced: Option<FencedFile>,
        before_flush: BeforeFlush,
    ) -> Result<Database, IndexError> {
        let (fence, file) = match fenced {
            Some(file) => file,
            None => {
                if !self.db_path.exists() {
                    if let Some(e) = self.refuse_missing() {
                        return Err(e);
                    }
                    self.build_fresh(|_| Ok(()))?;
                }
                self.open_db_fenced()?
            }
        };
        let backend = UnderOurLock::open_file_with(file, true, fence, before_flush)
            .map_err(|e| self.db_err()(e.into()))?;
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| self.db_err()(e.into()))
    }

    /// `index.redb` opened read-write and fenced (`lock::fence`).
    fn open_db_fenced(&self) -> Result<FencedFile, IndexError> {
        self.open_db_fenced_if_there()?.ok_or_else(|| {
            self.db_err()(redb::StorageError::Io(std::io::ErrorKind::NotFound.into()).into())
        })
    }

    /// [`Index::open_db_fenced`], or `None` when there is no `index.redb` (the open says
    /// so: no look at the path first).
    fn open_db_fenced_if_there(&self) -> Result<Option<FencedFile>, IndexError> {
        let (file, registration) = match crate::fork::open(|| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(&self.db_path)
        }) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.db_err()(redb::StorageError::Io(e).into())),
        };
        let fence = lock::fence(&file, registration, &self.db_path, &self.lock_opts)?;
        Ok(Some((fence, file)))
    }

    /// Fence the index and its journal for a writer that has just taken the exclusive
    /// lock, before it reads anything of them (see `lock::fence`): a file that does not
    /// exist yet is fenced when it is made.
    pub(super) fn fence(&self) -> Result<Fenced, IndexError> {
        let db = self.open_db_fenced_if_there()?;
        let journal = fence_journal(&self.journal_path, &self.lock_opts)?;
        Ok(Fenced { db, journal })
    }

    /// Build a new index at this build's schema under a temporary name, let `fill` put
    /// content in it, and rename it to `index.redb` (the caller holds the exclusive lock).
    pub(super) fn build_fresh(
        &self,
        fill: impl FnOnce(&WriteTransaction) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let dir = self.db_path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".index.redb.new-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let io = |source: std::io::Error| self.db_err()(redb::StorageError::Io(source).into());
        let built = (|| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io)?;
            // Its mode, its sync and the check after the rename go through this
            // descriptor, never the name: in a shared cache a member can put a link at the
            // name meanwhile (found by a hostile test: root's repair made the file the
            // link named 0664, and renamed the link into place).
            let kept = file.try_clone().map_err(io)?;
            let backend = UnderOurLock::wrap(file).map_err(|e| self.db_err()(e.into()))?;
            let db = redb::Builder::new()
                .create_with_backend(backend)
                .map_err(|e| self.db_err()(e.into()))?;
            let txn = db.begin_write().map_err(|e| self.db_err()(e.into()))?;
            for m in MIGRATIONS {
                (m.up)(&txn).map_err(self.db_err())?;
            }
            stamp_schema(&txn).map_err(self.db_err())?;
            fill(&txn)?;
            txn.commit().map_err(|e| self.db_err()(e.into()))?;
            db.close().map_err(|e| self.db_err()(e.into()))?;
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            kept.set_permissions(std::fs::Permissions::from_mode(self.file_mode))
                .map_err(io)?;
            kept.sync_all().map_err(io)?;
            let ours = kept.metadata().map_err(io)?;
            std::fs::rename(&tmp, &self.db_path).map_err(io)?;
            let placed = std::fs::symlink_metadata(&self.db_path).map_err(io)?;
            if (placed.dev(), placed.ino()) != (ours.dev(), ours.ino()) {
                let _ = std::fs::remove_file(&self.db_path);
                return Err(io(std::io::Error::other(format!(
                    "`{}` was replaced by another file while it was built (a member may have put a link at its temporary name); nothing was rebuilt, run the command again",
                    tmp.display()
                ))));
            }
            crate::cache::store::sync_dir(dir).map_err(io)
        })();
        if built.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        built
    }

    /// Check every page's checksum and rebuild the allocator state, under the exclusive
    /// lock (`doctor`). `Ok(false)` means redb found damage and repaired what it could.
    pub(crate) fn check_integrity(&self) -> Result<bool, IndexError> {
        let _guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        if !self.db_path.exists() {
            return Ok(true);
        }
        let poisoned = Cell::new(false);
        guarded(&poisoned, &self.db_path, || {
            let mut db = self.open_rw(None, BeforeFlush::default())?;
            let ok = db.check_integrity().map_err(|e| self.db_err()(e.into()))?;
            db.close().map_err(|e| self.db_err()(e.into()))?;
            Ok(ok)
        })
    }

    /// Open for writing under the exclusive lock; changes land with [`IndexWriter::commit`].
    pub(crate) fn write(&self) -> Result<IndexWriter, IndexError> {
        self.refuse_tier_write()?;
        let guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        self.writer(guard)
    }

    /// Open for writing only if the exclusive lock is free within `wait`; `None` if not.
    pub(crate) fn try_write(
        &self,
        wait: std::time::Duration,
    ) -> Result<Option<IndexWriter>, IndexError> {
        self.refuse_tier_write()?;
        let opts = LockOptions {
            timeout: wait,
            on_wait: None,
            ..self.lock_opts.clone()
        };
        match lock::lock(&self.lock_path, Mode::Exclusive, &opts) {
            Ok(guard) => self.writer(guard).map(Some),
            Err(LockError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuse to write an index whose `write_compat` is above this build's before the
    /// read-write open, which would rewrite its header: a refused writer leaves the file
    /// byte for byte as it was. (The caller holds the exclusive lock.)
    fn check_writable_before_open(&self, fenced: &Fenced) -> Result<(), IndexError> {
        self.view_before_write(fenced).map(drop)
    }

    /// Open the index read-only and begin a read, as a reader without a lock of its own
    /// (the caller holds one). The outer error is damage; the inner one is redb's refusal
    /// to open (`RepairAborted` after a writer's crash), for the caller to handle.
    pub(super) fn open_read_only(
        &self,
        poisoned: Cell<bool>,
    ) -> Result<Result<IndexReader, redb::DatabaseError>, IndexError> {
        self.open_read_only_with(poisoned, UnderOurLock::open(&self.db_path, false))
    }

    /// [`Index::open_read_only`] on a backend the caller opened (on a descriptor it
    /// already has, or by path).
    fn open_read_only_with(
        &self,
        poisoned: Cell<bool>,
        backend: Result<UnderOurLock, redb::StorageError>,
    ) -> Result<Result<IndexReader, redb::DatabaseError>, IndexError> {
        let opened = guarded(&poisoned, &self.db_path, || {
            Ok(backend
                .map_err(redb::DatabaseError::Storage)
                .and_then(|backend| {
                    redb::Builder::new()
                        .set_cache_size(CACHE_BYTES)
                        .open_read_only_with_backend(backend)
                }))
        })?;
        let db = match opened {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let txn = match guarded(&poisoned, &self.db_path, || {
            db.begin_read().map_err(|e| self.db_err()(e.into()))
        }) {
            Ok(txn) => txn,
            Err(e) => {
                caught(move || drop(db));
                return Err(e);
            }
        };
        Ok(Ok(IndexReader {
            txn: Some(txn),
            snap: None,
            keep_lock: None,
            _db: Some(Arc::new(db)),
            _lock: None,
            path: self.db_path.clone(),
            poisoned,
            kept: None,
        }))
    }

    /// The index as it is, opened read-only under the writer's exclusive lock, after
    /// checking this build may change it; `None` when there is no index yet or a
    /// writer's crash left it needing the repair the read-write open does (the
    /// migration step checks the levels then).
    fn view_before_write(&self, fenced: &Fenced) -> Result<Option<IndexReader>, IndexError> {
        // Read through a second descriptor of the file the writer fenced (no open of the
        // path again); no fenced file, no index yet.
        let Some((_, file)) = &fenced.db else {
            return Ok(None);
        };
        let backend = crate::fork::open(|| file.try_clone())
            .map_err(redb::StorageError::Io)
            .and_then(|(dup, registration)| UnderOurLock::open_file(dup, false, registration));
        let view = match self.open_read_only_with(Cell::new(false), backend)? {
            Ok(view) => view,
            Err(redb::DatabaseError::RepairAborted) => return Ok(None),
            Err(e) => return Err(self.db_err()(e.into())),
        };
        let levels = view.levels()?;
        levels.require(&self.db_path, "read")?;
        levels.require(&self.db_path, "change")?;
        Ok(Some(view))
    }

    /// Open for writing under the exclusive lock, once `check` has accepted the index as
    /// it is: `check` reads it in the read-only open that also checks this build may
    /// change it, so a refusal costs no second open and leaves the file byte for byte as
    /// it was. (Where there is nothing to view, see [`Index::view_before_write`], `check`
    /// is not run: the writer checks again.)
    pub(crate) fn write_checked<E: From<IndexError>>(
        &self,
        check: impl FnOnce(&IndexReader) -> Result<(), E>,
    ) -> Result<IndexWriter, E> {
        let guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)
            .map_err(IndexError::from)?;
        let fenced = self.fence()?;
        if let Some(view) = self.view_before_write(&fenced)? {
            check(&view)?;
        }
        Ok(self.writer_checked(guard, fenced)?)
    }

    pub(super) fn writer(&self, guard: LockGuard) -> Result<IndexWriter, IndexError> {
        let fenced = self.fence()?;
        self.check_writable_before_open(&fenced)?;
        self.writer_checked(guard, fenced)
    }

    /// [`Index::writer`] once the levels were checked.
    fn writer_checked(&self, guard: LockGuard, fenced: Fenced) -> Result<IndexWriter, IndexError> {
        let poisoned = Cell::new(false);
        let Fenced { db, journal } = fenced;
        let before_flush = BeforeFlush::default();
        let (db, txn) = guarded(&poisoned, &self.db_path, || {
            let db = self.open_rw(db, before_flush.clone())?;
            let mut txn = db.begin_write().map_err(|e| self.db_err()(e.into()))?;
            // The commit itself need not reach the disk: `commit()` closes the database
            // right after, and redb's close makes a pending commit durable (with the
            // allocator state) in one go, saving three fsyncs per write. If the process
            // dies in between, the change is lost, but it was never reported done either.
            txn.set_durability(redb::Durability::None)
                .map_err(|e| IndexError::Corrupt {
                    path: self.db_path.clone(),
                    key: "durability".into(),
                    detail: e.to_string(),
                })?;
            Ok((db, txn))
        })?;
        let w = IndexWriter {
            txn: Some(txn),
            db: Some(db),
            journal_file: RefCell::new(journal),
            lock_opts: self.lock_opts.clone(),
            _lock: guard,
            path: self.db_path.clone(),
            journal: self.journal_path.clone(),
            file_mode: self.file_mode,
            poisoned,
            ops: RefCell::new(Vec::new()),
            seq: Cell::new(0),
            torn: Cell::new(false),
            before_flush,
        };
        w.guard(|| {
            w.migrate()?;
            w.check_journal()
        })?;
        Ok(w)
    }

    /// Take the exclusive lock and run `f` on the index as it is, opened read-only
    /// (`None` when it is missing, damaged or cannot be opened without a repair): for a
    /// command that failed before its write transaction to look, with no writer between,
    /// whether the index knows what it put in `blobs/`.
    pub(crate) fn view_exclusive<T>(
        &self,
        f: impl FnOnce(Option<&IndexReader>) -> T,
    ) -> Result<T, IndexError> {
        let _guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        let view = if self.db_path.exists() {
            self.open_read_only(Cell::new(false))
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        Ok(f(view.as_ref()))
    }
}
