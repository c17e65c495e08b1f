//! The storage backend under redb: its file locks left to `index.lock`, flushes that
//! make nothing visible early, or only say that a durable commit was closed cleanly, left
//! out, and a writer's last work before its commit is named run before the first flush or
//! header write that could name it (see [`UnderOurLock`] and [`Hook`]).

use std::ops::Bound;
use std::path::Path;

use redb::BackendError;

/// redb's file backend with redb's own file locks granted without asking the kernel.
///
/// redb guards its file with byte-range locks of its own: about 18 lock calls to open,
/// read and close it, each a round trip to the server on NFS, for every `get`. The index
/// is only ever opened under `index.lock` (shared to read, exclusive to write; see the
/// protocol above), which gives exactly the exclusion those locks would, so they are
/// granted here as taken and no other process is ever reported holding one. This also
/// keeps the index usable with `SREGISTRY_LOCK=flock` on filesystems without `fcntl`
/// locks, where redb's would fail.
///
/// # Flushes
///
/// A write opens the database, commits once and closes it. redb flushes six times on that
/// path; two reach the disk here (the two phases of the commit), and the four left out
/// make nothing visible early and lose no commit:
///
/// * **Length changes.** redb grows the file (the last close trimmed it) and flushes, then,
///   closing, trims it and flushes again before its last header write. A flush with only a
///   length change behind it is left to the next flush, which always follows (the commit;
///   the clean-shutdown header). A crash in between leaves a file whose length and header
///   disagree, which redb checks on every open and repairs.
/// * **The recovery flag.** Opening for writing, redb sets the header's "recovery
///   required" flag and flushes it, so that no commit can become durable while the header
///   still vouches for the allocator state recorded at the last clean close. When the file
///   was closed cleanly (the header read at open says so: [`header_is_clean`]), that flush
///   is left to the commit's first flush. Until then redb writes only pages the durable
///   commit does not use (pages a commit may still need are never reused before a durable
///   commit: redb's own guarantee for non-durable commits) and the header, whose every
///   write carries the flag. After a power loss the header is either the old one, clean,
///   describing the old commit and its allocator state, the new pages being unused
///   garbage, or a new one with the flag set, which redb repairs from. A flush so owed is
///   paid before any trim and at close at the latest.
///
///   The header read at open is the page cache's. A clean one there may be newer than the
///   disk's only when the last writer died between its clean-shutdown header write and
///   that write's flush; both headers then name the same, already durable commit. An
///   unclean header (a writer died mid-write) or one this code does not know keeps every
///   flush: the first then makes the dead writer's pages durable before anything is built
///   on them, as redb's recovery expects.
/// * **The clean-shutdown header.** Closing, redb commits (both phases flushed: the commit
///   is durable, its header with the recovery flag set), trims the file, then writes the
///   same header with the flag cleared and flushes it. That flush (and the trim's length
///   change with it) only tells the next opener it need not repair: a flush with nothing but a clean header
///   ([`header_is_clean`]) behind it, after a flush reached the disk in this open, is left
///   to the kernel's writeback, and is not owed at close. A power loss before writeback
///   leaves the commit's own header, the flag set: the next opener repairs (quickly: the
///   commit recorded its allocator state), and no commit is lost. redb writes a clean
///   header nowhere else but after a repair, whose own commit is durable the same way, and
///   when it creates a file, which is the first flush of its open and so always reaches
///   the disk (and a new index is synced whole before it is renamed into place). A clean
///   header newer in the page cache than on the disk is the case the recovery flag's
///   deferral above already allows for: both name the same durable commit. On NFS the
///   header reaches the server anyway when the fence is unlocked, still under the fence
///   (the client flushes a file's writes before it lets go of a lock on it).
///
/// The file's length is kept here rather than asked of the filesystem each time redb
/// wants it (about six times per write, each a `statx`, on NFS a round trip): while we
/// hold `index.lock` nobody else changes the file.
#[derive(Debug)]
pub(super) struct UnderOurLock {
    /// A writer's fence on the file, or a reader's registration; let go as this drops,
    /// before the file closes (field order).
    _held: Hold,
    file: redb::backends::FileBackend,
    /// What may be unflushed: [`NOTHING`], [`LENGTH`], [`HEADER`] or [`PAGES`].
    unflushed: std::sync::atomic::AtomicU8,
    /// Until the first flush that reaches the disk, a flush with only the header (and
    /// lengths) behind it may wait for the next: the file was opened for writing and had
    /// been closed cleanly.
    defer_header: std::sync::atomic::AtomicBool,
    /// A flush was left for later and must happen before a trim or the close.
    owed: std::sync::atomic::AtomicBool,
    /// The last header written says the file was closed cleanly ([`header_is_clean`]).
    clean_header: std::sync::atomic::AtomicBool,
    len: std::sync::atomic::AtomicU64,
    /// Flushes that reached the file (none yet: the next one is the first of this open).
    flushes: std::sync::atomic::AtomicU32,
    /// Run before the next flush that reaches the disk ([`BeforeFlush`]), or, when that
    /// flush cannot publish a commit, before the header write that can ([`UnderOurLock::flush`]).
    before_flush: BeforeFlush,
    /// The hook was let past a flush that published nothing: it runs before the next
    /// header write or flush.
    hook_waits: std::sync::atomic::AtomicBool,
    /// The god byte ([`god_byte`], or [`UNKNOWN_GOD`]) of the header the last flush that
    /// reached the disk made durable (at first, of the header read at open), and of the
    /// last header written.
    flushed_god: std::sync::atomic::AtomicU8,
    last_god: std::sync::atomic::AtomicU8,
}

/// Work that must be done before the index names a commit, and may run until then: a
/// writer's blob on its way into `blobs/` (the commit that names it is made durable by the
/// flush after it). It runs before the first flush, or, when that flush cannot name the
/// commit, before the next header write ([`UnderOurLock::flush`]). Its error fails that
/// flush or write, and so the commit.
pub(super) type Hook = Box<dyn FnOnce() -> std::io::Result<()> + Send>;

/// The slot of a [`Hook`], shared by the backend and the writer that sets or clears it.
#[derive(Clone, Default)]
pub(super) struct BeforeFlush(std::sync::Arc<std::sync::Mutex<Option<Hook>>>);

impl std::fmt::Debug for BeforeFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeFlush(..)")
    }
}

impl BeforeFlush {
    pub(super) fn set(&self, hook: Hook) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }
    fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
    /// Take the hook out (to run it, or to drop it unrun).
    pub(super) fn take(&self) -> Option<Hook> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What ties the index's descriptor to [`crate::fork`]: a writer's fence (`lock::fence`,
/// which unlocks and unregisters), a reader's registration (a child made by `fork` closes
/// its copy of the index too: it carries no lock, but the child has no use for it), or
/// nothing (a new index being built under a temporary name).
#[derive(Debug)]
pub(super) enum Hold {
    Fence {
        _held: crate::cache::lock::Held,
    },
    Registered {
        _registration: crate::fork::Registration,
    },
    None,
}

impl From<crate::cache::lock::Held> for Hold {
    fn from(h: crate::cache::lock::Held) -> Hold {
        Hold::Fence { _held: h }
    }
}

impl From<crate::fork::Registration> for Hold {
    fn from(r: crate::fork::Registration) -> Hold {
        Hold::Registered { _registration: r }
    }
}

/// [`UnderOurLock::unflushed`]: nothing written since the last flush.
const NOTHING: u8 = 0;
/// Only the file's length changed.
const LENGTH: u8 = 1;
/// The header (and perhaps the length) changed, nothing else.
const HEADER: u8 = 2;
/// Pages beyond the header were written.
const PAGES: u8 = 3;
/// redb's header: 320 bytes at the start of the file; a write within the first sector is
/// a header write.
const HEADER_SECTOR: u64 = 512;

/// [`UnderOurLock::last_god`] when the last header write was not one [`god_byte`] reads.
const UNKNOWN_GOD: u8 = 0xFF;
/// The god byte's bits (redb's header layout, `tree_store/page_store/header.rs`): which
/// commit slot is the primary, "recovery required", "the primary was committed in two
/// phases", "primary unflushed".
const GOD_PRIMARY: u8 = 1;
const GOD_RECOVERY: u8 = 2;
const GOD_TWO_PHASE: u8 = 4;
const GOD_UNFLUSHED: u8 = 8;

/// The "god byte" of `head`, the first bytes of an index file, when it is a redb header
/// this code knows: redb's magic number, then a god byte with no flag this code does not
/// know.
fn god_byte(head: &[u8]) -> Option<u8> {
    const MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
    const KNOWN: u8 = GOD_PRIMARY | GOD_RECOVERY | GOD_TWO_PHASE | GOD_UNFLUSHED;
    let &god = head.get(MAGIC.len())?;
    (head.starts_with(&MAGIC) && god & !KNOWN == 0).then_some(god)
}

/// Whether `head`, the first bytes of an index file, is a redb header this code knows
/// ([`god_byte`]) that says the file was closed cleanly: neither "recovery required" nor
/// "primary unflushed" set, and the primary commit slot in file format 3. Anything else
/// keeps every flush.
fn header_is_clean(head: &[u8]) -> bool {
    let Some(god) = god_byte(head) else {
        return false;
    };
    let slot = 64 + 128 * usize::from(god & GOD_PRIMARY);
    god & (GOD_RECOVERY | GOD_UNFLUSHED) == 0 && head.get(slot) == Some(&3)
}

impl UnderOurLock {
    /// Open an existing index; `write` for the read-write open.
    pub(super) fn open(path: &Path, write: bool) -> Result<UnderOurLock, redb::StorageError> {
        let (file, registration) = crate::fork::open(|| {
            // Non-blocking: a FIFO put at the index's name (any member of a shared
            // cache's group can) must not hang the open; `wrap_fenced` refuses it.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(path)
        })
        .map_err(redb::StorageError::Io)?;
        Self::open_file(file, write, registration)
    }

    /// [`UnderOurLock::open`] for a file already open: a writer's fenced descriptor (its
    /// `fence` a `lock::Held`, see `lock::fence`), or one opened with `crate::fork::open`
    /// (its `Registration`); `write` when it is open read-write.
    pub(super) fn open_file(
        file: std::fs::File,
        write: bool,
        held: impl Into<Hold>,
    ) -> Result<UnderOurLock, redb::StorageError> {
        Self::open_file_with(file, write, held, BeforeFlush::default())
    }

    /// [`UnderOurLock::open_file`] whose flushes first run the hook `before_flush` holds
    /// when they are made.
    pub(super) fn open_file_with(
        file: std::fs::File,
        write: bool,
        held: impl Into<Hold>,
        before_flush: BeforeFlush,
    ) -> Result<UnderOurLock, redb::StorageError> {
        let mut backend = Self::wrap_fenced(file, held.into())?;
        backend.before_flush = before_flush;
        let len = backend.len.load(std::sync::atomic::Ordering::SeqCst);
        // `create_with_backend` would initialise an empty file as a new, empty index: an
        // empty `index.redb` is damage to report (as `open` does), not a cache to restart.
        if write && len == 0 {
            return Err(redb::StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the index file is empty, not a redb database",
            )));
        }
        if write {
            use std::sync::atomic::Ordering;
            let mut head = [0u8; 320];
            if len >= head.len() as u64
                && redb::StorageBackend::read(&backend.file, 0, &mut head).is_ok()
            {
                if header_is_clean(&head) {
                    backend.unflushed.store(NOTHING, Ordering::SeqCst);
                    backend.defer_header.store(true, Ordering::SeqCst);
                }
                let god = god_byte(&head).unwrap_or(UNKNOWN_GOD);
                backend.flushed_god.store(god, Ordering::SeqCst);
                backend.last_god.store(god, Ordering::SeqCst);
            }
        }
        Ok(backend)
    }

    /// Wrap an open file. Every flush reaches the disk until [`UnderOurLock::open`] finds
    /// the header clean.
    pub(super) fn wrap(file: std::fs::File) -> Result<UnderOurLock, redb::StorageError> {
        Self::wrap_fenced(file, Hold::None)
    }

    fn wrap_fenced(file: std::fs::File, held: Hold) -> Result<UnderOurLock, redb::StorageError> {
        let len = match file.metadata() {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => {
                drop(held);
                return Err(redb::StorageError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a regular file (something was put at the index's name)",
                )));
            }
            Err(e) => {
                // Let go of the fence while its descriptor is still open.
                drop(held);
                return Err(redb::StorageError::Io(e));
            }
        };
        match redb::backends::FileBackend::new(file) {
            Ok(file) => Ok(UnderOurLock {
                _held: held,
                file,
                unflushed: std::sync::atomic::AtomicU8::new(PAGES),
                defer_header: std::sync::atomic::AtomicBool::new(false),
                owed: std::sync::atomic::AtomicBool::new(false),
                clean_header: std::sync::atomic::AtomicBool::new(false),
                len: std::sync::atomic::AtomicU64::new(len),
                flushes: std::sync::atomic::AtomicU32::new(0),
                before_flush: BeforeFlush::default(),
                hook_waits: std::sync::atomic::AtomicBool::new(false),
                flushed_god: std::sync::atomic::AtomicU8::new(UNKNOWN_GOD),
                last_god: std::sync::atomic::AtomicU8::new(UNKNOWN_GOD),
            }),
            Err(redb::DatabaseError::Storage(e)) => Err(e),
            Err(e) => Err(redb::StorageError::Io(std::io::Error::other(e.to_string()))),
        }
    }

    /// Flush to the disk, whatever is pending.
    ///
    /// The hook runs first, unless this flush cannot publish a commit: the last header
    /// written names, as the primary, the slot the last flush left primary (so a commit
    /// already durable), and says it was committed in two phases. redb's recovery then keeps that primary and never
    /// looks at the other slot, so the pages and the slot of the commit being made are
    /// written and flushed here, but reach no reader, before or after a crash, until the
    /// header that swaps the slots is written; the hook runs before that write
    /// ([`UnderOurLock::write`]). This lets the commit's first phase reach the disk while
    /// the hook's work (a blob's own flushes) is still under way.
    fn flush(&self) -> Result<(), std::io::Error> {
        use std::sync::atomic::Ordering;
        if self.hook_waits.swap(false, Ordering::SeqCst) || !self.publishes_nothing() {
            self.run_hook()?;
        } else if self.before_flush.is_set() {
            self.hook_waits.store(true, Ordering::SeqCst);
        }
        redb::StorageBackend::sync_data(&self.file)?;
        self.flushed_god
            .store(self.last_god.load(Ordering::SeqCst), Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.unflushed.store(NOTHING, Ordering::SeqCst);
        self.owed.store(false, Ordering::SeqCst);
        self.defer_header.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Whether a flush now cannot publish a commit (see [`UnderOurLock::flush`]).
    fn publishes_nothing(&self) -> bool {
        use std::sync::atomic::Ordering;
        let (flushed, last) = (
            self.flushed_god.load(Ordering::SeqCst),
            self.last_god.load(Ordering::SeqCst),
        );
        flushed != UNKNOWN_GOD
            && last != UNKNOWN_GOD
            && last & GOD_TWO_PHASE != 0
            && last & GOD_PRIMARY == flushed & GOD_PRIMARY
    }

    fn run_hook(&self) -> Result<(), std::io::Error> {
        if let Some(hook) = self.before_flush.take() {
            hook()?;
        }
        Ok(())
    }

    /// Pay a flush left for later.
    fn pay_owed(&self) -> Result<(), std::io::Error> {
        if self.owed.load(std::sync::atomic::Ordering::SeqCst) {
            self.flush()?;
        }
        Ok(())
    }
}

impl redb::StorageBackend for UnderOurLock {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.len.load(std::sync::atomic::Ordering::SeqCst))
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        use std::sync::atomic::Ordering;
        if len < self.len.load(Ordering::SeqCst) {
            self.pay_owed()?; // a trim must not reach the disk before the header it follows
        }
        self.file.set_len(len)?;
        self.len.store(len, Ordering::SeqCst);
        self.unflushed.fetch_max(LENGTH, Ordering::SeqCst);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        use std::sync::atomic::Ordering;
        match self.unflushed.load(Ordering::SeqCst) {
            NOTHING | LENGTH => Ok(()), // at most a length change: left to the next flush
            HEADER if self.defer_header.load(Ordering::SeqCst) => {
                self.owed.store(true, Ordering::SeqCst); // the recovery flag: see above
                Ok(())
            }
            // The clean-shutdown header, after a durable commit: see above.
            HEADER
                if self.clean_header.load(Ordering::SeqCst)
                    && self.flushes.load(Ordering::SeqCst) > 0 =>
            {
                Ok(())
            }
            _ => self.flush(),
        }
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        use std::sync::atomic::Ordering;
        let end = offset + data.len() as u64;
        let what = if end <= HEADER_SECTOR { HEADER } else { PAGES };
        if offset < HEADER_SECTOR {
            // A header write may publish the commit: a hook let past the last flush runs
            // before it (see `flush`).
            if self.hook_waits.swap(false, Ordering::SeqCst) {
                self.run_hook()?;
            }
            let god = if offset == 0 { god_byte(data) } else { None };
            self.last_god
                .store(god.unwrap_or(UNKNOWN_GOD), Ordering::SeqCst);
        }
        if what == HEADER {
            self.clean_header
                .store(offset == 0 && header_is_clean(data), Ordering::SeqCst);
        }
        self.unflushed.fetch_max(what, Ordering::SeqCst);
        self.file.write(offset, data)?;
        self.len.fetch_max(end, Ordering::SeqCst);
        Ok(())
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.pay_owed()?;
        self.file.close()
    }
    fn try_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }
    fn try_lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }
    fn lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }
    fn lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }
    fn unlock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }
    fn query_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::index::tests::{record, written_index};

    fn flushes(b: &UnderOurLock) -> u32 {
        b.flushes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The header at the start of `b`'s file, with the recovery flag set as redb keeps it
    /// while a writer has the file open.
    fn flagged_header(b: &UnderOurLock) -> Vec<u8> {
        use redb::StorageBackend as _;
        let mut head = vec![0u8; 320];
        b.read(0, &mut head).unwrap();
        head[9] |= 2;
        head
    }

    /// Replay what redb does to the file around a commit: header write and flush (the
    /// recovery flag), grow and flush, pages and header and flush (the commit's first
    /// phase), header and flush (the second).
    fn replay_commit(b: &UnderOurLock) -> Vec<u32> {
        use redb::StorageBackend as _;
        let len = b.len().unwrap();
        let head = flagged_header(b);
        let mut seen = Vec::new();
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        seen.push(flushes(b));
        b.set_len(len + 8192).unwrap();
        b.sync_data().unwrap();
        seen.push(flushes(b));
        b.write(len, &[0u8; 4096]).unwrap();
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        seen.push(flushes(b));
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        seen.push(flushes(b));
        seen
    }

    #[test]
    fn a_cleanly_closed_index_has_a_header_this_code_reads_as_clean() {
        // If a redb upgrade changes its header, the flush of the recovery flag is never
        // deferred again (safe, but a flush more per write): this says so.
        let (_dir, idx) = written_index();
        let head = std::fs::read(idx.db_path()).unwrap();
        assert!(header_is_clean(&head[..320]));
        let mut dirty = head[..320].to_vec();
        dirty[9] |= 2; // recovery required
        assert!(!header_is_clean(&dirty));
        let mut unknown = head[..320].to_vec();
        unknown[9] |= 16;
        assert!(!header_is_clean(&unknown));
        assert!(!header_is_clean(&[]));
        assert!(!header_is_clean(b"not a redb file at all"));
    }

    #[test]
    fn the_recovery_flag_flush_waits_for_the_commit_only_after_a_clean_close() {
        // Deferred, the flag reaches the disk with the commit's first flush; the second
        // phase of the commit is never deferred.
        let (_dir, idx) = written_index();
        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        assert_eq!(replay_commit(&b), vec![0, 0, 1, 2]);
        assert!(!b.owed.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn the_first_flush_after_a_writer_died_mid_write_reaches_the_disk() {
        // The dead writer's pages may still be only in the page cache; redb's recovery
        // builds on them, so they must be durable before anything else is written.
        let (_dir, idx) = written_index();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(idx.db_path())
            .unwrap();
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut god = [0u8; 1];
        f.seek(SeekFrom::Start(9)).unwrap();
        f.read_exact(&mut god).unwrap();
        f.seek(SeekFrom::Start(9)).unwrap();
        f.write_all(&[god[0] | 2]).unwrap();
        drop(f);
        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        assert_eq!(replay_commit(&b), vec![1, 1, 2, 3]);
        // And redb recovers that file: the name is still there.
        drop(b);
        let r = idx.read().unwrap();
        assert_eq!(r.get_ref("lab/t:1").unwrap(), Some(record(1)));
    }

    #[test]
    fn a_deferred_flush_is_paid_before_a_trim_and_at_close() {
        use redb::StorageBackend as _;
        let (_dir, idx) = written_index();
        let mut head = vec![0u8; 320];
        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        b.read(0, &mut head).unwrap();
        let len = b.len().unwrap();
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        assert_eq!(flushes(&b), 0);
        b.set_len(len - 4096).unwrap();
        assert_eq!(
            flushes(&b),
            1,
            "trimmed before the header it follows was flushed"
        );
        b.set_len(len).unwrap();

        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        assert_eq!(flushes(&b), 0);
        b.close().unwrap();
        assert_eq!(flushes(&b), 1, "closed with a flush owed");
    }

    #[test]
    fn the_clean_shutdown_header_after_a_durable_commit_is_left_to_writeback() {
        // Closing, redb trims the file and writes the commit's header again with the
        // recovery flag cleared: losing that write costs the next opener a repair, never a
        // commit, so it is neither flushed nor owed at close.
        use redb::StorageBackend as _;
        let (_dir, idx) = written_index();
        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        let mut clean = vec![0u8; 320];
        b.read(0, &mut clean).unwrap();
        assert!(header_is_clean(&clean));
        let len = b.len().unwrap();
        assert_eq!(replay_commit(&b), vec![0, 0, 1, 2]);
        b.set_len(len).unwrap();
        b.sync_data().unwrap();
        b.write(0, &clean).unwrap();
        b.sync_data().unwrap();
        b.close().unwrap();
        assert_eq!(flushes(&b), 2, "the clean-shutdown header was flushed");
        // A header with the flag set after it (another commit) is flushed as before.
        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        assert_eq!(replay_commit(&b), vec![0, 0, 1, 2]);
        b.write(0, &clean).unwrap();
        b.sync_data().unwrap();
        b.write(0, &flagged_header(&b)).unwrap();
        b.sync_data().unwrap();
        assert_eq!(flushes(&b), 3);
    }

    #[test]
    fn a_clean_header_is_flushed_when_no_flush_reached_the_disk_before_it() {
        // A new file's first header, or a clean header written before any commit of this
        // open was made durable, vouches for nothing yet on the disk: it is flushed.
        use redb::StorageBackend as _;
        let (_dir, idx) = written_index();
        let mut clean = vec![0u8; 320];
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(idx.db_path())
            .unwrap();
        let b = UnderOurLock::wrap(file).unwrap();
        b.read(0, &mut clean).unwrap();
        b.write(0, &clean).unwrap();
        b.sync_data().unwrap();
        assert_eq!(flushes(&b), 1);
    }

    /// Replay a commit's two phases with a hook set that records how many flushes had
    /// reached the disk when it ran: the recovery flag's header, the pages and the header
    /// with the new commit in the secondary slot (`two_phase` in its god byte or not),
    /// a flush, the header that swaps the slots, a flush.
    fn hook_after_flushes(two_phase: bool) -> u32 {
        use redb::StorageBackend as _;
        use std::sync::atomic::{AtomicU32, Ordering};
        let (_dir, idx) = written_index();
        let before_flush = BeforeFlush::default();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(idx.db_path())
            .unwrap();
        let b = UnderOurLock::open_file_with(file, true, Hold::None, before_flush.clone()).unwrap();
        let ran_after = std::sync::Arc::new(AtomicU32::new(u32::MAX));
        let (seen, at) = (ran_after.clone(), std::sync::Arc::new(AtomicU32::new(0)));
        let count = at.clone();
        before_flush.set(Box::new(move || {
            seen.store(count.load(Ordering::SeqCst), Ordering::SeqCst);
            Ok(())
        }));
        let note = |b: &UnderOurLock| at.store(flushes(b), Ordering::SeqCst);
        let mut head = flagged_header(&b);
        assert_ne!(
            head[9] & GOD_TWO_PHASE,
            0,
            "a closed index's primary is two-phase"
        );
        let len = b.len().unwrap();
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        b.set_len(len + 4096).unwrap();
        b.write(len, &[0u8; 4096]).unwrap();
        if !two_phase {
            head[9] &= !GOD_TWO_PHASE;
        }
        b.write(0, &head).unwrap();
        note(&b);
        b.sync_data().unwrap();
        note(&b);
        head[9] ^= GOD_PRIMARY;
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        assert_eq!(flushes(&b), 2);
        ran_after.load(Ordering::SeqCst)
    }

    #[test]
    fn a_hook_may_run_after_the_first_phase_but_before_the_header_that_publishes_it() {
        // The first flush makes durable only pages and a secondary slot that redb's
        // recovery never reads while the primary says it was committed in two phases:
        // the hook (a blob's placement) may still be running, and runs before the slots
        // are swapped.
        assert_eq!(hook_after_flushes(true), 1);
    }

    #[test]
    fn a_hook_runs_before_the_first_flush_when_recovery_could_read_the_new_slot() {
        // A primary committed in one phase is checked against the other slot on
        // recovery, which takes the newer one: the first flush could publish the commit.
        assert_eq!(hook_after_flushes(false), 0);
    }

    #[test]
    fn a_read_only_open_never_defers() {
        let (_dir, idx) = written_index();
        let b = UnderOurLock::open(idx.db_path(), false).unwrap();
        assert!(!b.defer_header.load(std::sync::atomic::Ordering::SeqCst));
    }
}
