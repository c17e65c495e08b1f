//! A read-only open of the index kept across lookups ([`Index::read_kept`], for
//! `Cache::get`): a program that keeps a `Cache` and asks it again and again (the Python
//! package, a Rust embedder) pays for redb's open once, not on every call.
//!
//! # Protocol
//!
//! Every lookup still takes `index.lock` shared, as [`Index::read`] does, and holds it
//! until it is done: the lock, not the open, is what keeps writers out, and what a `get`
//! records its use under. What is kept is the database redb opened (its descriptor, its
//! header and allocator state, its page cache), together with the *stamp* of the file it
//! opened: device, inode and the first 512 bytes (redb's header, 320 bytes).
//!
//! Under the shared lock, before each lookup, the file at `index.redb` is stamped again.
//! The kept open is used only if the stamps are equal; otherwise it is dropped and the
//! index opened as [`Index::read`] opens it, and that open (with the new stamp) is kept
//! instead. The stamp changes whenever a lookup could see something else:
//!
//! * every commit writes a new header (a new transaction id in a commit slot); so does
//!   every open for writing (the "recovery required" flag) and every repair. A writer
//!   commits and closes before it lets go of the exclusive lock, so a lookup under the
//!   shared lock sees either no change since the kept open or a new header. Pages the
//!   kept header's commit uses are never rewritten while it is the last commit (redb's
//!   copy-on-write), so equal headers mean the same tables;
//! * a rebuilt, restored or re-created index is another file (`doctor --repair-index`
//!   moves the old one aside and renames the new one into place): another inode, while
//!   the kept descriptor keeps the old one from being reused;
//!
//! How it is stamped again depends on the filesystem, told once by `fstatfs` when the open
//! is kept. On a local one (ext2/3/4, XFS, Btrfs, tmpfs), where every descriptor of a file
//! reads the one page cache, a `stat` of the path (is it still the same file?) and one read
//! of 512 bytes through a descriptor kept for it. On any other (NFS above all, where data
//! read through a descriptor kept open may come from the client's cache), the file is
//! opened afresh, which revalidates it with the server (close-to-open) as the open of
//! every [`Index::read`] does, then `fstat`, the read, and the close.
//!
//! Since equal stamps mean the same tables, the open keeps more than redb's state: the
//! read transaction of its first lookup through it, the tables a `get` reads (`refs`,
//! `blobs`, `last_use`), and the records read through them (a few hundred names' and
//! blobs'; [`super::read::Snapshot`]). They go with the open, at the first lookup that
//! finds the stamp changed.
//!
//! On a local filesystem the open also keeps `index.lock`'s descriptor between lookups,
//! unlocked: the next lookup locks it again (`lock::lock_file`) instead of opening the
//! file, then checks with an `fstat` that the file still has a name. One that has none
//! (the lock file or the whole cache removed meanwhile) locks out no writer who opens the
//! path now: the descriptor is let go and the lock taken on the file at the path, as
//! [`Index::read`] takes it. A lookup that goes by all it kept (the lock through the kept
//! descriptor, the stamp unchanged) does not ask whether the cache exists (`Cache::exists`
//! looks at `v1/`): the named lock file and the index at its path, the file it opened,
//! say so; any other lookup asks first, as before. On other filesystems the lock file is
//! opened for every lookup, as [`Index::read`] opens it.
//!
//! A handle's first lookup keeps nothing (a command line `get` makes one lookup and would
//! gain nothing). Between lookups a handle holds the kept descriptors of `index.redb`
//! (redb's, and on a local filesystem the stamp's) and of `index.lock`, never a lock.
//!
//! A missing index, one that cannot be stamped, or an open that redb refuses
//! (`RepairAborted`) is left to [`Index::read`], which refuses, repairs or reports as it
//! always does. A reader of the kept open that meets any error drops it, so the next
//! lookup opens afresh, as a new process would.
//!
//! # Threads and `fork`
//!
//! The kept open sits behind a mutex that is only ever *tried*: a thread that finds it
//! busy (another thread is looking up) reads as [`Index::read`] does, so no thread waits
//! for another, and a child made by `fork` while a thread held it never waits for a
//! thread it does not have. The records it keeps sit behind one too, likewise only tried.
//! The kept lock descriptor is taken out of the slot for a lookup and put back when its
//! lock is released ([`give_back`]; closed instead if the slot is busy or already has
//! one), so no two lookups ever lock through one descriptor (an OFD lock belongs to the
//! descriptor's open file, and one lookup's unlock would release the other's lock). Its
//! descriptors are registered with [`crate::fork`] like every descriptor of the index,
//! so a child's copies are closed at the fork. A child made by `fork` never keeps an open
//! on a handle it inherited: its first lookup drops the copy (and the lock descriptor),
//! and every lookup reads as [`Index::read`] does, so a child holds no descriptor of the
//! index between calls (a handle the child makes itself keeps one as usual).

use std::cell::Cell;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redb::ReadOnlyDatabase;

use super::damage::guarded;
use super::read::Snapshot;
use super::{Index, IndexError, IndexReader};
use crate::cache::lock::{self, Mode};

/// How many of the file's first bytes a stamp holds: redb's header is 320 bytes.
const HEAD: usize = 512;

/// What [`Index::read_kept`] keeps: nothing for the first lookup (a command line `get`
/// makes one, and would gain nothing from a kept open), then the open of the second.
#[derive(Debug)]
pub(super) struct Slot {
    /// The process that made the handle ([`crate::fork::generation`]): only it keeps an
    /// open.
    owner: u64,
    looked_up: bool,
    open: Option<Kept>,
    /// `index.lock`'s descriptor between lookups, unlocked, kept with an open on a
    /// local filesystem: the next lookup locks it again instead of opening the file.
    lock: Option<lock::LockFile>,
}

impl Slot {
    pub(super) fn new() -> Slot {
        Slot {
            owner: crate::fork::generation(),
            looked_up: false,
            open: None,
            lock: None,
        }
    }
}

/// An open of the index kept by [`Index`] across lookups (see the module's protocol).
struct Kept {
    db: Arc<ReadOnlyDatabase>,
    stamp: Stamp,
    /// Set by a reader of this open that met an error: the next lookup opens afresh.
    failed: Arc<AtomicBool>,
    /// The descriptor it was stamped through, kept on a local filesystem to stamp it again
    /// (`None` elsewhere: every stamp is then taken through a fresh open).
    local: Option<Opened>,
    /// The read transaction and tables every lookup of this open reads, made by the
    /// first lookup through it (see the protocol).
    snap: Option<Arc<Snapshot>>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("dev", &self.stamp.dev)
            .field("ino", &self.stamp.ino)
            .finish_non_exhaustive()
    }
}

/// What identifies the state of an index file: the file, and its header.
#[derive(PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: usize,
    head: [u8; HEAD],
}

/// A descriptor of the index and its registration with [`crate::fork`], which goes
/// before the descriptor closes (field order).
struct Opened {
    _registration: crate::fork::Registration,
    file: File,
}

/// The file at `path` opened afresh and stamped, with its descriptor; `None` when it
/// cannot be (no file there, say).
fn open_stamped(path: &Path) -> Option<(Stamp, Opened)> {
    let (file, registration) = crate::fork::open(|| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(path)
    })
    .ok()?;
    let opened = Opened {
        _registration: registration,
        file,
    };
    let meta = opened.file.metadata().ok()?;
    let (len, head) = read_head(&opened.file)?;
    let stamp = Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len,
        head,
    };
    Some((stamp, opened))
}

/// The first [`HEAD`] bytes of `file` (fewer if it is shorter).
fn read_head(file: &File) -> Option<(usize, [u8; HEAD])> {
    let mut head = [0u8; HEAD];
    let mut len = 0;
    while len < HEAD {
        match file.read_at(&mut head[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some((len, head))
}

/// Whether `file` is on a filesystem whose every descriptor of a file reads the same
/// page cache, so that a read through a descriptor kept open is as fresh as an open:
/// ext2/3/4, XFS, Btrfs, tmpfs (by `fstatfs` magic). Network and cluster filesystems,
/// FUSE, overlays and anything else are not.
fn is_local(file: &File) -> bool {
    // SAFETY: an all-zero statfs is a valid value; fstatfs fills it for an open descriptor.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is open for the duration of the call; `st` is a valid statfs.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    matches!(
        st.f_type as u64,
        0xEF53 | 0x5846_5342 | 0x9123_683E | 0x0102_1994
    )
}

impl Kept {
    /// Whether the file at `path` is still the one this open was made from, unchanged
    /// (the caller holds the shared lock).
    fn unchanged(&self, path: &Path) -> bool {
        match &self.local {
            Some(Opened { file, .. }) => {
                std::fs::metadata(path)
                    .is_ok_and(|m| m.dev() == self.stamp.dev && m.ino() == self.stamp.ino)
                    && read_head(file)
                        .is_some_and(|(len, head)| len == self.stamp.len && head == self.stamp.head)
            }
            None => open_stamped(path).is_some_and(|(stamp, ..)| stamp == self.stamp),
        }
    }
}

/// Put the lock file's descriptor of `guard`, unlocked, back into `slot` for the next
/// lookup to lock again; closed instead when another thread is in the slot, when it
/// already has one, or in a child made by `fork` since the handle was made.
pub(super) fn give_back(slot: &Mutex<Slot>, guard: lock::LockGuard) {
    let file = guard.into_file();
    if let Ok(mut slot) = slot.try_lock()
        && slot.owner == crate::fork::generation()
        && slot.lock.is_none()
    {
        slot.lock = Some(file);
    }
}

impl Index {
    /// [`Index::read`], through an open of the index kept across calls on this handle
    /// (and its clones) while no writer has changed the file: see [`super::kept`]. The
    /// lookup still holds the shared lock for as long as the reader lives. `Ok(None)`
    /// when `exists` says there is no cache, asked whenever the lookup cannot go by
    /// what it kept (the kept open unchanged under a lock taken through the kept
    /// descriptor of `index.lock`).
    pub(crate) fn read_kept(
        &self,
        exists: impl FnOnce() -> bool,
    ) -> Result<Option<IndexReader>, IndexError> {
        let read = |exists: &dyn Fn() -> bool| {
            if exists() {
                self.read().map(Some)
            } else {
                Ok(None)
            }
        };
        if self.read_only {
            // A tier keeps nothing: each lookup opens it afresh, without a lock.
            return read(&exists_once(exists));
        }
        let Ok(mut slot) = self.kept.try_lock() else {
            return read(&exists_once(exists));
        };
        if slot.owner != crate::fork::generation() {
            // A child made by `fork`: its copy of the parent's open goes (see above).
            slot.open = None;
            slot.lock = None;
            drop(slot);
            return read(&exists_once(exists));
        }
        if !std::mem::replace(&mut slot.looked_up, true) {
            drop(slot);
            return read(&exists_once(exists));
        }
        let slot = &mut *slot;
        // The lock, through the kept descriptor when there is one and the file it
        // locks still has a name; else opened afresh, as `read` does.
        let kept_lock = match slot.lock.take() {
            Some(file) => {
                let guard = lock::lock_file(file, &self.lock_path, Mode::Shared, &self.lock_opts)?;
                Some(guard).filter(|g| g.linked())
            }
            None => None,
        };
        let mut exists = Some(exists);
        let mut gone = || exists.take().is_some_and(|f| !f());
        let (guard, through_kept) = match kept_lock {
            Some(guard) => (guard, true),
            None => {
                if gone() {
                    return Ok(None);
                }
                let guard = lock::lock(&self.lock_path, Mode::Shared, &self.lock_opts)?;
                (guard, false)
            }
        };
        if slot
            .open
            .as_ref()
            .is_some_and(|k| k.failed.load(Ordering::Relaxed) || !k.unchanged(&self.db_path))
        {
            slot.open = None;
        }
        let kept = match slot.open.as_mut() {
            Some(k) => k,
            None => {
                if through_kept && gone() {
                    return Ok(None);
                }
                let Some((stamp, opened)) = open_stamped(&self.db_path) else {
                    drop(guard);
                    return self.read().map(Some);
                };
                let reader = match self.open_read_only(Cell::new(false))? {
                    Ok(reader) => reader,
                    // `read` repairs, or names what redb refused.
                    Err(_) => {
                        drop(guard);
                        return self.read().map(Some);
                    }
                };
                let mut reader = reader;
                reader.check_schema()?;
                reader._lock = Some(guard);
                if let Some(db) = reader._db.clone() {
                    let failed = Arc::new(AtomicBool::new(false));
                    reader.kept = Some(failed.clone());
                    let local = is_local(&opened.file).then_some(opened);
                    if local.is_some() {
                        reader.keep_lock = Some(self.kept.clone());
                    }
                    slot.open = Some(Kept {
                        db,
                        stamp,
                        failed,
                        local,
                        snap: None,
                    });
                }
                return Ok(Some(reader));
            }
        };
        let poisoned = Cell::new(false);
        let snap = match &kept.snap {
            Some(snap) => Ok(snap.clone()),
            None => guarded(&poisoned, &self.db_path, || {
                Snapshot::of(&kept.db, &self.db_path).map(Arc::new)
            }),
        };
        let snap = match snap {
            Ok(snap) => snap,
            Err(e) => {
                slot.open = None;
                return Err(e);
            }
        };
        kept.snap = Some(snap.clone());
        Ok(Some(IndexReader {
            txn: None,
            snap: Some(snap),
            _db: Some(kept.db.clone()),
            _lock: Some(guard),
            path: self.db_path.clone(),
            poisoned,
            kept: Some(kept.failed.clone()),
            keep_lock: kept.local.is_some().then(|| self.kept.clone()),
        }))
    }
}

/// `exists`, asked at most once.
fn exists_once(exists: impl FnOnce() -> bool) -> impl Fn() -> bool {
    let cell = std::cell::Cell::new(Some(exists));
    move || cell.take().is_some_and(|f| f())
}
