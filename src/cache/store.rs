//! The blob store: image files named by their BLAKE3 digest.
//!
//! # Layout
//!
//! ```text
//! <cache>/v1/blobs/blake3/<first 2 hex>/<64 hex>   complete blobs, mode 0444
//! <cache>/v1/tmp/                                   files being ingested or deleted
//! ```
//!
//! # What it promises
//!
//! * A file under `blobs/` is complete and its content hashes to its name. Content goes
//!   to a new file in `tmp/` (same filesystem), is hashed in the same pass that writes it
//!   (a large file copied inside the kernel is hashed from the staged file's own pages,
//!   chunk by chunk, right behind the copy), is made read-only and fsynced; only then is
//!   it linked into place, and the directory is fsynced; both before the index names it.
//!   A crash at any instant leaves at most a file in `tmp/` or a blob nothing names (gc
//!   takes it). `add` leaves the fsyncs to a thread that runs them, in the same order,
//!   while it takes the index lock and writes its transaction
//!   ([`Staged::place_in_background`]); the commit waits for it before the index's header
//!   names it.
//! * [`Staged::place_in_background`] and [`Staged::place_unsynced`] (before the lock,
//!   best effort: a hard link) and [`Staged::commit`] (under the exclusive index lock:
//!   makes sure the blob is there) are the only ways into `blobs/`, and each first makes
//!   the staged file durable. When the blob already exists, the staged copy is dropped:
//!   content is stored once.
//! * Deleting a blob ([`Store::unlink_later`]) renames it into `tmp/` first (under the
//!   index lock) and unlinks it after the lock is released; a process that has the file
//!   open keeps reading it.
//!
//! # Spare files
//!
//! Making a file costs an inode, which ext4 can take up to a millisecond to find (it
//! passes over recently deleted ones), more than the rest of an `add`'s file work. Where
//! the host's writers recycle their lock files (`super::writer`: a local filesystem), the
//! thread that placed an `add`'s blob makes an empty `tmp/spare-<uid>-<k>@<host>`
//! (mode 0600, `O_EXCL`, in the first of [`SPARE_SLOTS`] free) once the commit is about to
//! name the blob (a refused or failed `add` makes none), while the commit's last flush
//! runs; the next staging of that user on that host renames it to its own name
//! instead of making a file, and checks that what it renamed is a plain empty file of its
//! own with one link and mode 0600 that no other descriptor has open (a write lease,
//! granted only then: any member of the group can rename a file another command of the
//! user is writing to a spare's name), else removes it and makes one. A spare is nobody's and holds nothing:
//! gc removes it after the grace period, and a rename racing that removal leaves either
//! the spare or nothing, never half of one.
//!
//! The store never takes locks itself; [`crate::cache`] does.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::index::{BlobRecord, PlacedFile, file_id};
use super::progress::ProgressHook;
use crate::format::digest::{Digest, HashingWriter};

/// Mode of every blob file.
pub const BLOB_MODE: u32 = 0o444;
/// Prefix of ingest files in `tmp/`.
pub(super) const INGEST_PREFIX: &str = "ingest-";
/// Prefix of blobs waiting to be unlinked in `tmp/`.
pub(super) const DELETE_PREFIX: &str = "delete-";
/// Prefix of spare files in `tmp/`: empty files an `add` makes for the next staging on its
/// host (see "Spare files" in [`Store`]).
pub(super) const SPARE_PREFIX: &str = "spare-";
/// Spare files a user keeps per host.
const SPARE_SLOTS: u32 = 2;

/// What the Linux NFS client renames a file to when it is unlinked while open on the same
/// node ("silly rename"): the data lives on until the last close there, when the client
/// removes it. Such a file is in use, not a leftover: scans skip it, so neither gc deletes
/// it nor verify reports it. (Deleting it takes the file from under the reader wherever
/// the server does not keep it for an open; Linux's NFSv4 server does keep it.)
pub(super) const NFS_SILLY_PREFIX: &str = ".nfs";
/// Size of the copy buffer.
const COPY_BUF: usize = 4 << 20;

pub(super) use super::error::StoreError;

/// The blob store under `<cache>/v1`.
#[derive(Clone, Debug)]
pub(super) struct Store {
    blobs: PathBuf,
    tmp: PathBuf,
    dir_mode: u32,
    /// `locks/`, where the writer locks are (`super::writer`).
    locks: PathBuf,
    /// How writer locks are taken; `None` names `tmp/` files without one.
    writer: Option<super::lock::LockOptions>,
}

/// A file in `tmp/` whose digest and size are known, not yet in `blobs/`. Dropping it
/// removes the file.
#[derive(Debug)]
pub(super) struct Staged {
    path: Option<PathBuf>,
    digest: Digest,
    size: u64,
    /// The file that was written and hashed, as its own descriptor saw it: device, inode
    /// number and birth time. `tmp/` is writable by the cache's group, so another member
    /// can rename a file of theirs over a staged path; every link or rename of the path
    /// into `blobs/` is checked against this, and the record names this file
    /// ([`Staged::file_id`]). `None` where nothing could be asked (then the path is trusted).
    id: Option<StagedId>,
    /// Whether the file is durable yet: `add` stages without the fsync and leaves it to
    /// [`Staged::place_in_background`], so that it overlaps the wait for the index lock.
    /// Nothing links a file into `blobs/` before it is durable.
    sync: Sync,
}

/// Who a staged file is: device, inode number, birth time.
type StagedId = (u64, u64, Option<u64>);

/// [`StagedId`] of the file `f` has open.
fn staged_id(f: &File) -> Option<StagedId> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().ok()?;
    let (ino, born) = file_id(&m);
    Some((m.dev(), ino, born))
}

/// Whether `dest`, just linked or renamed from a staged path, is the staged file `id`
/// (always, without an id).
fn is_staged(dest: &Path, id: Option<StagedId>) -> bool {
    use std::os::unix::fs::MetadataExt;
    id.is_none_or(|(dev, ino, _)| {
        fs::symlink_metadata(dest).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    })
}

/// After a link of a staged path to `dest` was made: whether it is the staged file `id`;
/// if not (another file was renamed over the staged path), the link goes again.
fn linked_staged(dest: &Path, id: Option<StagedId>) -> bool {
    is_staged(dest, id) || {
        let _ = fs::remove_file(dest);
        false
    }
}

/// Hash the file `f` has open (which was opened at `path`): through `/proc/self/fd`, so
/// the bytes are the descriptor's file's even if `path` names another file now; by `path`
/// where there is no `/proc`.
pub(super) fn hash_open_file(f: &File, path: &Path) -> io::Result<(Digest, u64)> {
    use std::os::fd::AsRawFd;
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    match crate::format::digest::hash_file(&by_fd) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/self").exists() => {
            crate::format::digest::hash_file(path)
        }
        other => other,
    }
}

/// Whether a staged file has reached the disk.
#[derive(Debug)]
enum Sync {
    /// It has (or the staging synced it).
    Done,
    /// Not yet: the file, read-only already, to fsync.
    Pending(File),
    /// Its fsync failed: it must not be committed (a second fsync after a failed one may
    /// report success for pages the kernel dropped).
    Failed(io::ErrorKind),
}

/// A staged file on its way into `blobs/` on a thread of its own
/// ([`Staged::place_in_background`]); [`Staged::settle`] waits for it.
#[must_use]
pub(super) struct Placing(Run);

/// Dropped unsettled (a panic on the way), it still waits for its thread's placing:
/// nothing links the blob after the staged file is gone.
impl Drop for Placing {
    fn drop(&mut self) {
        if let Run::Running(done, _) = std::mem::replace(&mut self.0, Run::Refused) {
            let _ = done.recv();
        }
    }
}

enum Run {
    /// On its thread, which sends what it did, then waits to be told whether the commit
    /// goes on to name the blob: only then does it make a spare file (not waited for).
    Running(
        std::sync::mpsc::Receiver<Placed>,
        std::sync::mpsc::SyncSender<bool>,
    ),
    /// Run on the caller's thread (no thread could be made).
    Done(Placed),
    /// Nothing to run: the staged file's fsync had failed already.
    Refused,
}

/// The work of a [`Placing`]: fsync the staged file (when it is not yet durable), then
/// hard-link it into `blobs/` and fsync the directory.
struct Place {
    pending: Option<File>,
    src: Option<PathBuf>,
    id: Option<StagedId>,
    dest: PathBuf,
    store: Store,
}

impl Place {
    fn run(self) -> Placed {
        let synced = self
            .pending
            .map(|f| match crate::testhook::fails("staged-fsync") {
                true => Err(io::Error::from_raw_os_error(libc::EIO)),
                false => f.sync_all(),
            });
        if let Some(Err(e)) = synced {
            return Placed {
                failed: Some(e.kind()),
                linked: false,
            };
        }
        let id = self.id;
        let linked = self.src.is_some_and(|src| {
            let dir = self.dest.parent().unwrap_or(&self.store.blobs);
            link_or_make_dir(&src, &self.dest, dir, &self.store).is_ok()
                && linked_staged(&self.dest, id)
                && {
                    let _ = sync_dir(dir);
                    true
                }
        });
        Placed {
            failed: None,
            linked,
        }
    }
}

/// What a [`Placing`] did.
struct Placed {
    /// The file's fsync failed: nothing was linked.
    failed: Option<io::ErrorKind>,
    /// The link was made (the blob was not there before).
    linked: bool,
}

impl Staged {
    pub(super) fn digest(&self) -> Digest {
        self.digest
    }
    /// The staged file (empty once committed).
    pub(super) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Best effort, before the index lock is taken: make the staged file durable if it is
    /// not yet, hard-link it into place and fsync the directory, so that
    /// [`Staged::commit`] under the lock usually finds the blob there and only has to drop
    /// the staged copy (the lock is then held for the index transaction alone). Until the
    /// name is committed the blob is unreferenced, and gc may remove it; `commit` then puts
    /// it back from the staged file, which is kept until then.
    ///
    /// It runs on a thread of its own, while the caller takes the index lock and writes its
    /// transaction: the two fsyncs overlap that work instead of preceding it. The caller
    /// must [`Staged::settle`] it before the commit that names the blob reaches the disk
    /// (and before it looks for the blob in `blobs/`), and before it drops the staged
    /// file.
    pub(super) fn place_in_background(&mut self, store: &Store) -> Placing {
        let pending = match std::mem::replace(&mut self.sync, Sync::Done) {
            Sync::Pending(file) => Some(file),
            Sync::Done => None,
            failed @ Sync::Failed(_) => {
                self.sync = failed;
                return Placing(Run::Refused);
            }
        };
        let job = Place {
            pending,
            src: self.path.clone(),
            id: self.id,
            dest: store.blob_path(&self.digest),
            store: store.clone(),
        };
        // The job is handed over once the thread exists: where no thread can be made (a
        // batch system's limit on processes), it runs here instead, without a spare.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Place>(1);
        let (done_tx, done) = std::sync::mpsc::sync_channel::<Placed>(1);
        let (go, go_rx) = std::sync::mpsc::sync_channel::<bool>(1);
        let spawned = std::thread::Builder::new().spawn(move || {
            let Ok(job) = rx.recv() else { return };
            let store = job.store.clone();
            let placed = job.run();
            let ok = placed.failed.is_none();
            let _ = done_tx.send(placed);
            // Told by `settle`; a placing dropped unsettled tells nothing.
            if ok && go_rx.recv() == Ok(true) && store.recycles() {
                store.make_spare();
            }
        });
        match spawned {
            Ok(thread) => match tx.send(job) {
                Ok(()) => {
                    keep_placer(thread);
                    Placing(Run::Running(done, go))
                }
                Err(std::sync::mpsc::SendError(job)) => Placing(Run::Done(job.run())),
            },
            Err(_) => Placing(Run::Done(job.run())),
        }
    }

    /// Wait for [`Staged::place_in_background`]: whether it made the link. A failed fsync
    /// is kept, for [`Staged::commit`] to refuse.
    pub(super) fn settle(&mut self, placing: Placing) -> bool {
        self.settle_then(placing, false)
    }

    /// [`Staged::settle`] by a commit that goes on to name the blob: the thread then makes
    /// a spare file for the next staging (see "Spare files" above), while the commit
    /// finishes. A command that fails or is refused leaves none.
    pub(super) fn settle_committing(&mut self, placing: Placing) -> bool {
        self.settle_then(placing, true)
    }

    fn settle_then(&mut self, mut placing: Placing, committing: bool) -> bool {
        let lost = Placed {
            failed: Some(io::ErrorKind::Other),
            linked: false,
        };
        let placed = match std::mem::replace(&mut placing.0, Run::Refused) {
            Run::Running(done, go) => {
                let placed = done.recv().unwrap_or(lost);
                let _ = go.send(committing);
                placed
            }
            Run::Done(placed) => placed,
            Run::Refused => return false,
        };
        if let Some(kind) = placed.failed {
            self.sync = Sync::Failed(kind);
        }
        placed.linked
    }

    /// Make the staged file durable if it is not yet.
    fn make_durable(&mut self) -> Result<(), StoreError> {
        let result = match std::mem::replace(&mut self.sync, Sync::Done) {
            Sync::Done => Ok(()),
            Sync::Pending(file) => file.sync_all(),
            Sync::Failed(kind) => Err(io::Error::new(kind, "fsync of the staged copy failed")),
        };
        result.map_err(|source| {
            self.sync = Sync::Failed(source.kind());
            StoreError::Write {
                path: self.path().to_path_buf(),
                source,
            }
        })
    }

    /// [`Staged::place_in_background`] done here, without the directory sync: the
    /// directory to sync when a link was made, so that a caller placing many blobs syncs
    /// each directory once.
    pub(super) fn place_unsynced(&mut self, store: &Store) -> Option<PathBuf> {
        self.make_durable().ok()?;
        let src = self.path.as_ref()?;
        let dest = store.blob_path(&self.digest);
        let dir = dest.parent().unwrap_or(&store.blobs).to_path_buf();
        // The link itself asks whether the blob is there (refused as existing) and whether
        // its fan-out directory is (not found: made, then linked again).
        match link_or_make_dir(src, &dest, &dir, store) {
            Ok(()) if linked_staged(&dest, self.id) => Some(dir),
            _ => None,
        }
    }

    /// Put the staged file in place as the blob for its digest (or drop it when that blob
    /// exists already). Returns the blob path and whether it was new. The caller must
    /// hold the exclusive index lock.
    ///
    /// With `own` (the inode number of the staged file, which the blob's record is about to
    /// name, see [`PlacedFile`]), a file found at the blob's path that is another one (a
    /// concurrent add's uncommitted link, a file renamed over the blob from outside, one
    /// an older build put there) is replaced by the staged file, renamed over it: the
    /// content is the same, checked by its hash, and the file is the one recorded.
    pub(super) fn commit(
        mut self,
        store: &Store,
        own: Option<u64>,
    ) -> Result<(PathBuf, bool), StoreError> {
        self.make_durable()?;
        let dest = store.blob_path(&self.digest);
        let Some(src) = self.path.take() else {
            return Ok((dest, false));
        };
        untrack(&src);
        let werr = |path: &Path, source| StoreError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = dest.parent().unwrap_or(&store.blobs);
        // Whether the blob is there is asked of the filesystem, not of a cache of it: on
        // NFS, `exists` may answer from what this node saw before another node's gc
        // removed the blob, while a hard link is made, or refused as existing, by the
        // server. (Where hard links are refused, `exists` and a rename.)
        let linked = match link_or_make_dir(&src, &dest, dir, store) {
            Err(LinkError::MakeDir(e)) => return Err(werr(dir, e)),
            Err(LinkError::Link(e)) => Err(e),
            Ok(()) => Ok(()),
        };
        let replaced = || StoreError::Replaced { path: src.clone() };
        match linked {
            Ok(()) if !linked_staged(&dest, self.id) => return Err(replaced()),
            Ok(()) => {
                let _ = fs::remove_file(&src);
                sync_dir(dir).map_err(|e| werr(dir, e))?;
                return Ok((dest, true));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !is_other(&dest, own) => {
                let _ = fs::remove_file(&src);
                return Ok((dest, false));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => {}
        }
        if dest.exists() && !is_other(&dest, own) {
            let _ = fs::remove_file(&src);
            return Ok((dest, false));
        }
        fs::rename(&src, &dest).map_err(|e| {
            let _ = fs::remove_file(&src);
            werr(&dest, e)
        })?;
        if !linked_staged(&dest, self.id) {
            return Err(replaced());
        }
        sync_dir(dir).map_err(|e| werr(dir, e))?;
        Ok((dest, true))
    }
}

/// Whether the file at `dest` is not the one whose inode number is `own` (never, without
/// `own`); a file that cannot be seen is another.
fn is_other(dest: &Path, own: Option<u64>) -> bool {
    use std::os::unix::fs::MetadataExt;
    own.is_some_and(|ino| opened_metadata(dest).map_or(true, |m| m.ino() != ino))
}

/// What `fstat` says of the file at `path`, opened (read-only, non-blocking: a FIFO
/// planted there must not hang us). Where a `stat` may answer from what an NFS client
/// cached of the name (a file another node renamed over it since), an NFSv4 open
/// resolves the name at the server.
fn opened_metadata(path: &Path) -> io::Result<fs::Metadata> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?
        .metadata()
}

/// Why [`link_or_make_dir`] made no link.
enum LinkError {
    /// The fan-out directory was missing and could not be made.
    MakeDir(io::Error),
    /// The link was refused (`AlreadyExists` when the blob is there).
    Link(io::Error),
}

/// Hard-link `src` to `dest`, making `dest`'s fan-out directory `dir` first when the link
/// finds it missing: one call where the directory exists (nearly always), instead of a
/// look at the directory before every link.
fn link_or_make_dir(src: &Path, dest: &Path, dir: &Path, store: &Store) -> Result<(), LinkError> {
    match fs::hard_link(src, dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => {
            store.make_fan_dir(dir).map_err(LinkError::MakeDir)?;
            fs::hard_link(src, dest).map_err(LinkError::Link)
        }
        other => other.map_err(LinkError::Link),
    }
}

impl Staged {
    /// Take over a complete, read-only, fsynced file in `tmp/` whose BLAKE3 digest and
    /// size the caller computed while writing it.
    /// `file` is the file written, open: links and renames of `path` into `blobs/` are
    /// checked to be that very file ([`Staged::id`]).
    pub(super) fn adopt(path: PathBuf, file: Option<&File>, digest: Digest, size: u64) -> Staged {
        Staged {
            path: Some(path),
            digest,
            size,
            id: file.and_then(staged_id),
            sync: Sync::Done,
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(&p);
            untrack(&p);
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The threads of [`Staged::place_in_background`] (with the pid that made them), which
/// may still be making a spare file after the commit has what it waits for. Touched only
/// inside [`crate::fork::gate`].
static PLACERS: std::sync::Mutex<Vec<(u32, std::thread::JoinHandle<()>)>> =
    std::sync::Mutex::new(Vec::new());

/// Keep `thread` for [`wait_for_placers`], first joining those that have ended (a program
/// that adds for days keeps a few, not one per add).
fn keep_placer(thread: std::thread::JoinHandle<()>) {
    let pid = std::process::id();
    let ended = crate::fork::gate(|| {
        let Ok(mut v) = PLACERS.lock() else {
            return Vec::new();
        };
        let ended = v
            .extract_if(.., |(p, t)| *p != pid || t.is_finished())
            .collect::<Vec<_>>();
        v.push((pid, thread));
        ended
    });
    own_threads(ended);
}

/// Join the threads of `threads` this process made; forget those a child made by `fork`
/// inherited (they are its parent's, not its own: joining one would wait for nothing).
fn own_threads(threads: Vec<(u32, std::thread::JoinHandle<()>)>) {
    let pid = std::process::id();
    for (p, t) in threads {
        if p == pid {
            let _ = t.join();
        } else {
            std::mem::forget(t);
        }
    }
}

/// Wait for this process's threads that placed blobs to end (making a spare file, at most
/// a file creation each): the command line calls it when its command is done, so that a
/// spare is there for the next command.
pub fn wait_for_placers() {
    let threads = crate::fork::gate(|| {
        PLACERS
            .lock()
            .map(|mut v| v.drain(..).collect::<Vec<_>>())
            .unwrap_or_default()
    });
    own_threads(threads);
}

/// Whether no other descriptor anywhere has `f`'s file open: the kernel grants a write
/// lease only then (taken and given back at once). A member of the group can rename
/// another command's file being written (`tmp/` is group-writable) to a spare's name; an
/// empty file of the user's, still open in that command, must not become this one's too.
/// Where leases are refused (switched off, a filesystem without them) nothing is proved,
/// and the spare is not used.
fn open_nowhere_else(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor open for the duration of the call; no pointers.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) } != 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    true
}

/// What [`Store::claim_spare`] found.
enum Claim {
    /// A spare, now at the caller's name, open for writing.
    Taken(File),
    /// No spare.
    None,
    /// Something that is no spare now holds the caller's name and could not be removed.
    Blocked,
}

/// The files this process is writing in `tmp/` and has not yet committed or removed, for
/// [`remove_unfinished`]. Touched only inside [`crate::fork::gate`], so a child made by
/// `fork` never finds it locked by a thread it does not have.
static UNFINISHED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn track(path: &Path) {
    crate::fork::gate(|| {
        if let Ok(mut v) = UNFINISHED.lock() {
            v.push(path.to_path_buf());
        }
    });
}

pub(super) fn untrack(path: &Path) {
    crate::fork::gate(|| {
        if let Ok(mut v) = UNFINISHED.lock()
            && let Some(i) = v.iter().rposition(|p| p == path)
        {
            v.swap_remove(i);
        }
    });
}

/// Remove every file this process is still writing or holding in `tmp/` (its partial
/// downloads and copies), for a process about to end on a signal. Safe at any instant: a
/// file already renamed into `blobs/` is no longer at its `tmp/` path, and a committed
/// blob that is also linked there keeps its other link.
pub fn remove_unfinished() {
    let paths = match crate::fork::gate(|| UNFINISHED.lock().map(|mut v| std::mem::take(&mut *v))) {
        Ok(paths) => paths,
        Err(_) => return,
    };
    for p in paths {
        let _ = fs::remove_file(p);
    }
}

/// A name in `tmp/` no other process or thread will pick:
/// `PREFIX<pid>-<salt>@<host>`, so that a later command on the same machine can tell a
/// file whose writer died ([`Store::remove_dead_tmp`]).
pub(super) fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let salt = Digest::of(format!("{}-{nanos}-{n}", std::process::id()).as_bytes());
    format!(
        "{prefix}{}-{}@{}",
        std::process::id(),
        &salt.hex()[..12],
        host_tag()
    )
}

/// This machine's name as `tmp/` names carry it: letters, digits, `.` and `-` only.
pub(super) fn host_tag() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    // Made inside the gate: a fork while another thread makes it would leave the child a
    // `OnceLock` for ever being made.
    crate::fork::gate(|| {
        HOST.get_or_init(|| {
            let mut buf = [0u8; 256];
            // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
            // or truncates, and we read up to the first NUL only.
            let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } == 0;
            let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
            let name: String = String::from_utf8_lossy(if ok { &buf[..end] } else { b"" })
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            if name.is_empty() {
                "host".to_string()
            } else {
                name
            }
        })
    })
}

/// The writer of a `tmp/` file named by [`unique_name`], when it ran on this machine and
/// is no longer running.
fn written_by_dead_local_process(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(INGEST_PREFIX)
        .or_else(|| name.strip_prefix(DELETE_PREFIX))
    else {
        return false;
    };
    let Some((pid_salt, host)) = rest.rsplit_once('@') else {
        return false;
    };
    let Some(pid) = pid_salt
        .split('-')
        .next()
        .and_then(|p| p.parse::<libc::pid_t>().ok())
    else {
        return false;
    };
    if host != host_tag() || pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let status = unsafe { libc::kill(pid, 0) };
    status == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

impl Store {
    /// The store of the cache version directory `v1` (it need not exist yet).
    pub(super) fn new(v1: &Path, dir_mode: u32) -> Store {
        Store {
            blobs: v1.join("blobs").join(crate::format::digest::ALGORITHM),
            tmp: v1.join("tmp"),
            dir_mode,
            locks: v1.join("locks"),
            writer: None,
        }
    }

    /// The store, with the files it writes in `tmp/` covered by this process's writer
    /// lock, taken as `opts` says (see `super::writer`).
    pub(super) fn with_writer_locks(self, opts: super::lock::LockOptions) -> Store {
        Store {
            writer: Some(opts),
            ..self
        }
    }

    /// A new name in `tmp/` for a file this process writes: under its writer lock
    /// (`<prefix><pid>-<salt>.<n>@<host>`) when it can take one, else [`unique_name`].
    fn writer_name(&self, prefix: &str) -> String {
        self.writer_name_recycling(prefix).0
    }

    /// [`Store::writer_name`], and whether this host's writers recycle files here
    /// ([`Store::recycles`]).
    fn writer_name_recycling(&self, prefix: &str) -> (String, bool) {
        let token = self
            .writer
            .as_ref()
            .and_then(|o| super::writer::token(&self.locks, o, host_tag()));
        match token {
            Some((t, recycled)) => (
                format!(
                    "{prefix}{t}.{}@{}",
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    host_tag()
                ),
                recycled,
            ),
            None => (unique_name(prefix), false),
        }
    }

    /// Whether this process's writer lock here was a parked file: the filesystem renames
    /// without replacing (so it is local: NFS cannot), and a writer of this host ran here
    /// not long ago. Only then are spare files made and looked for.
    fn recycles(&self) -> bool {
        self.writer
            .as_ref()
            .and_then(|o| super::writer::token(&self.locks, o, host_tag()))
            .is_some_and(|(_, recycled)| recycled)
    }

    /// The path of this user's spare file `k` on this host.
    fn spare_path(&self, k: u32) -> PathBuf {
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        self.tmp
            .join(format!("{SPARE_PREFIX}{uid}-{k}@{}", host_tag()))
    }

    /// Make a spare file in the first free slot, if one is free (on the thread that
    /// placed a blob, after telling the commit: its cost overlaps the commit's last
    /// flush instead of the next command's staging).
    fn make_spare(&self) {
        for k in 0..SPARE_SLOTS {
            let made = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(self.spare_path(k));
            match made {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(_) => return,
            }
        }
    }

    /// Take a spare file as the new file `to`: renamed to it, then opened and checked to
    /// be what a spare is (a plain, empty file of this user's, mode 0600, one link), since
    /// any member of the group can put something at its known name. `None` when there is
    /// none; whatever fails the check is removed, and when it cannot be (a directory with
    /// something in it), `to` is left taken and the caller uses another name.
    fn claim_spare(&self, to: &Path) -> Claim {
        use std::os::unix::fs::MetadataExt;
        for k in 0..SPARE_SLOTS {
            match fs::rename(self.spare_path(k), to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Claim::None,
                Err(_) => continue,
            }
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(to);
            // SAFETY: geteuid cannot fail.
            let uid = unsafe { libc::geteuid() };
            if let Ok(f) = opened
                && f.metadata().is_ok_and(|m| {
                    m.file_type().is_file()
                        && m.uid() == uid
                        && m.nlink() == 1
                        && m.len() == 0
                        && m.mode() & 0o7777 == 0o600
                })
                && open_nowhere_else(&f)
            {
                return Claim::Taken(f);
            }
            if fs::remove_file(to).is_err() && fs::remove_dir(to).is_err() {
                return Claim::Blocked;
            }
        }
        Claim::None
    }

    fn lock_kind(&self) -> super::lock::Kind {
        self.writer
            .as_ref()
            .map_or(super::lock::Kind::Ofd, |o| o.kind)
    }

    /// Remove the writer locks of dead writers that no `tmp/` file names any more (after
    /// gc removed their leftovers); returns how many went.
    pub(super) fn remove_dead_writer_locks(&self) -> usize {
        if self.real_layout().is_err() {
            return 0;
        }
        let named: Vec<PathBuf> = read_dir_if_present(&self.tmp)
            .ok()
            .flatten()
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        super::writer::lock_of(&self.locks, &e.file_name().to_string_lossy())
                    })
                    .collect()
            })
            .unwrap_or_default();
        super::writer::remove_dead(&self.locks, &named, self.lock_kind())
    }

    /// Where the blob with this digest lives.
    pub(super) fn blob_path(&self, d: &Digest) -> PathBuf {
        // `blobs/ab/<hex>` in one allocation: every `get` asks for it.
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let hex = d.hex_bytes();
        let base = self.blobs.as_os_str().as_bytes();
        let mut p = Vec::with_capacity(base.len() + 2 + hex.len() + 2);
        p.extend_from_slice(base);
        if !base.ends_with(b"/") {
            p.push(b'/');
        }
        p.extend_from_slice(&hex[..2]);
        p.push(b'/');
        p.extend_from_slice(&hex);
        PathBuf::from(std::ffi::OsString::from_vec(p))
    }

    /// The blobs root (`v1/blobs/blake3`).
    pub(super) fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// What a blob record says of `file` (a staged file, or a blob) put in place now:
    /// its inode number and birth time, and those of the blobs root (see [`PlacedFile`]);
    /// `None` when either cannot be seen.
    pub(super) fn placed(&self, file: &Path) -> Option<PlacedFile> {
        self.placed_as(file_id(&fs::metadata(file).ok()?))
    }

    /// [`Store::placed`] of the staged file `s` (the file written, not whatever its
    /// path names now: [`Staged::id`]).
    pub(super) fn placed_staged(&self, s: &Staged) -> Option<PlacedFile> {
        match s.id {
            Some((_, ino, born)) => self.placed_as((ino, born)),
            None => self.placed(s.path()),
        }
    }

    fn placed_as(&self, (ino, born): (u64, Option<u64>)) -> Option<PlacedFile> {
        let (store_ino, store_born) = file_id(&fs::metadata(&self.blobs).ok()?);
        Some(PlacedFile {
            ino,
            born,
            store_ino,
            store_born,
        })
    }

    /// Whether the blob file at `path`, which `m` (a `stat` of it) shows, is not the one
    /// its record says was put in place, in this very store: a cache copied elsewhere (its
    /// records made with another blobs root) and a record without [`PlacedFile`] are not
    /// judged. Only when the `stat` shows another file are the blobs root looked at and
    /// the file opened to ask again ([`opened_metadata`]: an NFS client may have answered
    /// from its cache), so an unchanged blob costs no call.
    pub(super) fn replaced(&self, record: &BlobRecord, path: &Path, m: &fs::Metadata) -> bool {
        record.placed.is_some_and(|p| {
            !p.is(m)
                && fs::metadata(&self.blobs).is_ok_and(|dir| p.made_in(&dir))
                && !opened_metadata(path).is_ok_and(|m| p.is(&m))
        })
    }

    /// Whether the file at the blob path of `d` is the one `p` says was put in place, as
    /// the filesystem's server has it now (opened: for a writer under the exclusive
    /// lock), and `p` was made in this store.
    pub(super) fn holds(&self, d: &Digest, p: &PlacedFile) -> bool {
        opened_metadata(&self.blob_path(d)).is_ok_and(|m| p.is(&m))
            && fs::metadata(&self.blobs).is_ok_and(|dir| p.made_in(&dir))
    }

    /// The staging directory (`v1/tmp`).
    pub(super) fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Make `dir` with the settings' mode, never through a link (see `super::dirs`).
    fn make_dir(&self, dir: &Path) -> io::Result<()> {
        super::dirs::make_dir(dir, self.dir_mode)
    }

    /// Whether `blobs/`, `blobs/blake3/`, `tmp/` and `locks/` are there, each a directory
    /// itself; an error naming the first that is a link or not a directory (see
    /// `super::dirs`).
    pub(super) fn real_layout(&self) -> io::Result<bool> {
        let parent = self.blobs.parent().unwrap_or(&self.blobs);
        super::dirs::real_dirs(&[parent, &self.blobs, &self.tmp, &self.locks])
    }

    /// Create the fan-out directory `dir` of a first blob, and make its entry in
    /// `blobs/blake3` durable: the blob's own directory fsync covers the blob's entry, not
    /// the directory's.
    fn make_fan_dir(&self, dir: &Path) -> io::Result<()> {
        self.make_dir(dir)?;
        sync_dir(&self.blobs)
    }

    /// A new, empty ingest file in `tmp/` (mode 0600) for a caller that writes it itself
    /// (downloads); see [`Staged::adopt`].
    pub(super) fn new_ingest_file(&self) -> Result<(File, PathBuf), StoreError> {
        self.new_tmp_file()
    }

    fn new_tmp_file(&self) -> Result<(File, PathBuf), StoreError> {
        let (name, recycled) = self.writer_name_recycling(INGEST_PREFIX);
        let mut path = self.tmp.join(name);
        if recycled {
            match self.claim_spare(&path) {
                Claim::Taken(f) => {
                    track(&path);
                    return Ok((f, path));
                }
                Claim::Blocked => path = self.tmp.join(self.writer_name(INGEST_PREFIX)),
                Claim::None => {}
            }
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| StoreError::Write {
                path: path.clone(),
                source,
            })?;
        track(&path);
        Ok((f, path))
    }

    /// Copy `src` into `tmp/`, hashing in the same pass. `expected` is the size the
    /// source had when opened; a different count is [`StoreError::Changed`].
    pub(super) fn stage_copy(
        &self,
        src: &mut dyn Read,
        src_path: &Path,
        expected: Option<u64>,
    ) -> Result<Staged, StoreError> {
        self.stage_with(src_path, expected, false, |dst, pipelined| {
            copy_and_hash(src, dst, pipelined, MidCopyHook::new(None, expected))
        })
    }

    /// [`Store::stage_copy`] of a file: a large one is copied inside the kernel
    /// ([`copy_in_kernel_and_hash`]) where the filesystems allow it. `progress` is told
    /// after each chunk, and can stop the copy ([`StoreError::Stopped`]). With `defer_sync`
    /// the copy's fsync is left to [`Staged::place_in_background`].
    pub(super) fn stage_file(
        &self,
        src: &mut File,
        src_path: &Path,
        expected: Option<u64>,
        progress: Option<&ProgressHook>,
        defer_sync: bool,
    ) -> Result<Staged, StoreError> {
        self.stage_with(src_path, expected, defer_sync, |dst, pipelined| {
            if pipelined
                && let Some(copied) =
                    copy_in_kernel_and_hash(src, dst, MidCopyHook::new(progress, expected))
                        .transpose()
            {
                return copied;
            }
            copy_and_hash(src, dst, pipelined, MidCopyHook::new(progress, expected))
        })
    }

    /// Stage a new file in `tmp/` filled by `copy` (given the file and whether the copy
    /// is large enough to pipeline), which returns the digest and count of the bytes it
    /// wrote.
    fn stage_with(
        &self,
        src_path: &Path,
        expected: Option<u64>,
        defer_sync: bool,
        copy: impl FnOnce(&mut File, bool) -> Result<(Digest, u64), CopyFail>,
    ) -> Result<Staged, StoreError> {
        let (mut file, path) = self.new_tmp_file()?;
        // From here on the staged file is removed on every error path.
        let mut staged = Staged {
            path: Some(path.clone()),
            digest: Digest::from_bytes([0; 32]),
            size: 0,
            id: None,
            sync: Sync::Done,
        };
        let werr = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let pipelined = expected.is_some_and(|n| n >= PIPELINE_MIN);
        let (digest, size) = copy(&mut file, pipelined).map_err(|f| match f {
            CopyFail::Read(source) => StoreError::Read {
                path: src_path.to_path_buf(),
                source,
            },
            CopyFail::Write(source) => werr(source),
            CopyFail::Stopped => StoreError::Stopped {
                path: src_path.to_path_buf(),
            },
        })?;
        if let Some(before) = expected
            && before != size
        {
            return Err(StoreError::Changed {
                path: src_path.to_path_buf(),
                before,
                after: size,
            });
        }
        // The file holds what was hashed and nothing else (another writer of it would
        // have made it longer: see `Staged::id`).
        let meta = file.metadata().map_err(werr)?;
        if meta.len() != size {
            return Err(StoreError::Replaced { path });
        }
        staged.id = staged_id(&file);
        staged.sync = finish_file(file, defer_sync).map_err(werr)?;
        staged.digest = digest;
        staged.size = size;
        Ok(staged)
    }

    /// Hard-link `src` into `tmp/` (no copy), then hash it there and make it durable (or,
    /// with `defer_sync`, leave that to [`Staged::place_in_background`]). The
    /// source path keeps the file: the caller removes it only once the name is committed,
    /// so a failure or a kill at any instant leaves the file where the user had it.
    /// Fails with [`StoreError::CrossDevice`] when `src` is on another filesystem, and
    /// with [`StoreError::NoLink`] where the filesystem or its settings refuse a hard link
    /// (the caller copies instead). The caller makes sure nobody else can write the file.
    pub(super) fn stage_link(&self, src: &Path, defer_sync: bool) -> Result<Staged, StoreError> {
        let path = self.tmp.join(self.writer_name(INGEST_PREFIX));
        if let Err(e) = fs::hard_link(src, &path) {
            return Err(match e.raw_os_error() {
                Some(libc::EXDEV) => StoreError::CrossDevice {
                    path: src.to_path_buf(),
                },
                Some(libc::EPERM) | Some(libc::EMLINK) | Some(libc::EOPNOTSUPP) => {
                    StoreError::NoLink {
                        path: src.to_path_buf(),
                    }
                }
                _ => StoreError::Write { path, source: e },
            });
        }
        track(&path);
        let mut staged = Staged {
            path: Some(path.clone()),
            digest: Digest::from_bytes([0; 32]),
            size: 0,
            id: None,
            sync: Sync::Done,
        };
        let werr = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        // Opened first and hashed through that descriptor: what is hashed is the file
        // that is linked in, whatever is renamed over the path meanwhile.
        let file = OpenOptions::new().read(true).open(&path).map_err(werr)?;
        staged.id = staged_id(&file);
        let (digest, size) = hash_open_file(&file, &path).map_err(werr)?;
        staged.sync = finish_file(file, defer_sync).map_err(werr)?;
        staged.digest = digest;
        staged.size = size;
        Ok(staged)
    }

    /// Move a blob out of `blobs/` into `tmp/` (call under the exclusive index lock);
    /// returns the new path for [`unlink_now`] once the lock is released.
    pub(super) fn unlink_later(&self, d: &Digest) -> io::Result<Option<PathBuf>> {
        let from = self.blob_path(d);
        let name = format!("{DELETE_PREFIX}{}", unique_name(""));
        let to = self.tmp.join(&name);
        // From the blob's own directory into `tmp/`, each opened without following a link
        // anywhere below `v1/`: a member who swaps `blobs/blake3/`, a fan-out directory or
        // `tmp/` for a link while gc runs moves nothing of what the link names (found by a
        // hostile test: gc moved a user's private images into the shared `tmp/`).
        let (Some(fan), Some(file)) = (from.parent(), from.file_name()) else {
            return Ok(None);
        };
        let (fan_dir, tmp_dir) = match (self.pinned(fan), self.pinned(&self.tmp)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        match renameat(&fan_dir, Path::new(file), &tmp_dir, Path::new(&name)) {
            Ok(()) => Ok(Some(to)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory `dir` of the store (under `v1/`), opened without following a link
    /// anywhere below `v1/` (`super::dirs::open_beneath`); a link on the way is the error
    /// naming it.
    fn pinned(&self, dir: &Path) -> io::Result<File> {
        let v1 = self.tmp.parent().unwrap_or(Path::new("."));
        let rel = dir.strip_prefix(v1).map_err(io::Error::other)?;
        super::dirs::open_beneath(v1, rel, libc::O_DIRECTORY | libc::O_PATH).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EXDEV) => {
                    super::dirs::linked(dir)
                }
                _ => e,
            }
        })
    }

    /// Remove the entry `name` of `tmp/` (a directory with what it holds) through `tmp/`
    /// opened without following a link (see [`Store::unlink_later`]).
    pub(super) fn remove_tmp_entry(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let tmp = self.pinned(&self.tmp)?;
        // The opened directory itself, whatever its name now names.
        let at = through(&tmp).join(name);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&at),
            Ok(_) => fs::remove_file(&at),
            Err(e) => Err(e),
        }
    }

    /// Create the directories of the store with the configured mode (`blobs/` too, which
    /// `create_dir_all` of `blobs/blake3` would leave at the umask's mode).
    pub(super) fn create_dirs(&self) -> io::Result<()> {
        if let Some(blobs) = self.blobs.parent() {
            self.make_dir(blobs)?;
        }
        self.make_dir(&self.blobs)?;
        self.make_dir(&self.tmp)
    }
}

/// A file found under `blobs/` by `Store::scan`.
#[derive(Clone, Debug)]
pub struct Found {
    pub path: PathBuf,
    /// `None` when the file name is not a digest, or it sits in the wrong fan-out directory.
    pub digest: Option<Digest>,
    pub size: u64,
    /// Device and inode: a blob placed before its commit is a hard link of its writer's
    /// staged file in `tmp/` ([`TmpFile::inode`]).
    pub inode: (u64, u64),
}

/// A file found in `tmp/` by `Store::scan_tmp`.
#[derive(Clone, Debug)]
pub struct TmpFile {
    pub path: PathBuf,
    /// Seconds since the Unix epoch of the last modification or status change, whichever
    /// is later: a hard link into `tmp/` (`add --move`) changes the status, not the data,
    /// of a file that may be years old.
    pub mtime: u64,
    pub size: u64,
    /// A blob moved aside for deletion (always safe to unlink).
    pub deleting: bool,
    /// An empty spare file for a next staging (`spare-*`): no leftover of anything, but
    /// removed by gc after the grace period like one.
    pub spare: bool,
    /// Its writer holds its writer lock (`super::writer`): a file being written, never a
    /// leftover, whatever its age.
    pub live: bool,
    /// Device and inode (see [`Found::inode`]).
    pub inode: (u64, u64),
}

fn inode_of(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

impl Store {
    /// Every file under `blobs/` but NFS's `.nfs*` files (no lock needed: the listing is a snapshot, and callers
    /// re-check against the index under the lock).
    pub(super) fn scan(&self) -> io::Result<Vec<Found>> {
        let mut out = Vec::new();
        // Never a listing through a link a member put at `blobs/`, `blobs/blake3/` or a
        // fan-out directory, nor one swapped in while the listing runs: each directory is
        // opened without following a link below `v1/` and listed through its descriptor;
        // the paths reported are the store's own.
        self.real_layout()?;
        let top = match self.pinned(&self.blobs) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for fan in fs::read_dir(through(&top))? {
            let fan = fan?;
            let fan_name = fan.file_name().to_string_lossy().into_owned();
            let fan_path = self.blobs.join(fan.file_name());
            let fan_dir = match fan.file_type()?.is_dir() {
                true => openat_dir(&top, &fan.file_name()),
                false => Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            };
            let fan_dir = match fan_dir {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // Not a directory (or a link put there since it was listed): a foreign
                // file, reported as such.
                Err(_) => {
                    let meta = fan.metadata().ok();
                    out.push(Found {
                        size: meta.as_ref().map_or(0, |m| m.len()),
                        inode: meta.as_ref().map_or((0, 0), inode_of),
                        path: fan_path,
                        digest: None,
                    });
                    continue;
                }
            };
            for f in fs::read_dir(through(&fan_dir))? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with(NFS_SILLY_PREFIX) {
                    continue;
                }
                let digest = Digest::from_hex(&name).filter(|_| name.starts_with(&fan_name));
                let meta = f.metadata().ok();
                out.push(Found {
                    path: fan_path.join(f.file_name()),
                    digest,
                    size: meta.as_ref().map_or(0, |m| m.len()),
                    inode: meta.as_ref().map_or((0, 0), inode_of),
                });
            }
        }
        Ok(out)
    }

    /// Remove the `tmp/` files whose writer ran on this machine and has died (a pull or
    /// an add killed mid-way); returns how many. Files of other machines, and of live
    /// processes, are left to gc's grace period. A reused pid keeps a file, never the
    /// reverse.
    pub(super) fn remove_dead_tmp(&self) -> usize {
        if self.real_layout().is_err() {
            return 0;
        }
        // Listed and removed through `tmp/` opened without following a link, as gc's
        // removals are ([`Store::remove_tmp_entry`]).
        let Ok(tmp) = self.pinned(&self.tmp) else {
            return 0;
        };
        let Ok(rd) = fs::read_dir(through(&tmp)) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            if written_by_dead_local_process(&e.file_name().to_string_lossy())
                && fs::remove_file(through(&tmp).join(e.file_name())).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Every entry of `tmp/` but NFS's `.nfs*` files of open unlinked images, each with
    /// whether its writer is alive (its writer lock held, tested once per writer).
    pub(super) fn scan_tmp(&self) -> io::Result<Vec<TmpFile>> {
        let mut out = Vec::new();
        let mut writers: std::collections::HashMap<PathBuf, bool> = Default::default();
        // Listed through `tmp/` opened without following a link (see [`Store::scan`]).
        self.real_layout()?;
        let tmp = match self.pinned(&self.tmp) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in fs::read_dir(through(&tmp))? {
            let e = e?;
            if e.file_name()
                .to_string_lossy()
                .starts_with(NFS_SILLY_PREFIX)
            {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let mtime = {
                use std::os::unix::fs::MetadataExt;
                meta.mtime().max(meta.ctime()).max(0) as u64
            };
            let name = e.file_name().to_string_lossy().into_owned();
            let live = super::writer::lock_of(&self.locks, &name).is_some_and(|lock| {
                *writers
                    .entry(lock)
                    .or_insert_with_key(|l| super::writer::is_live(l, self.lock_kind()))
            });
            out.push(TmpFile {
                live,
                inode: inode_of(&meta),
                deleting: name.starts_with(DELETE_PREFIX),
                spare: name.starts_with(SPARE_PREFIX),
                path: self.tmp.join(e.file_name()),
                mtime,
                size: meta.len(),
            });
        }
        Ok(out)
    }

    /// Move a file out of `blobs/` into `quarantine/` (call under the exclusive index
    /// lock). Returns where it went.
    pub(super) fn quarantine(&self, from: &Path, quarantine_dir: &Path) -> io::Result<PathBuf> {
        let name = from
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unknown".into());
        let to_name = format!("{name}.{}", unique_name(""));
        let to = quarantine_dir.join(&to_name);
        // Never into a link a member put at `quarantine/` (found by a hostile test: root's
        // verify moved a member's file into a directory of root's), nor out of a
        // directory swapped for a link since it was listed: both opened without following
        // a link below `v1/`, the file moved with `renameat`.
        if !super::dirs::real_dir(quarantine_dir)? {
            self.make_dir(quarantine_dir)?;
        }
        let (Some(dir), Some(file)) = (from.parent(), from.file_name()) else {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        };
        let (from_dir, q) = (self.pinned(dir)?, self.pinned(quarantine_dir)?);
        renameat(&from_dir, Path::new(file), &q, Path::new(&to_name))?;
        Ok(to)
    }
}

/// Files at least this large are copied with hashing on a second thread.
const PIPELINE_MIN: u64 = 8 << 20;

enum CopyFail {
    Read(io::Error),
    Write(io::Error),
    /// The progress receiver asked to stop.
    Stopped,
}

/// How far behind the copy the writeback of a large file may lag.
const WRITEBACK_LAG: u64 = 64 << 20;

/// Streaming writes: start writeback of the chunk just written, and wait for the one
/// [`WRITEBACK_LAG`] behind it, so the disk works while we copy and the final fsync finds
/// little left to do (and a large add does not fill memory with dirty pages). Advisory:
/// errors are left for the final fsync to report.
pub(crate) fn start_writeback(dst: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let fd = dst.as_raw_fd();
    // SAFETY: sync_file_range only reads its integer arguments; `fd` is open.
    unsafe {
        libc::sync_file_range(fd, offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
        if offset >= WRITEBACK_LAG {
            libc::sync_file_range(
                fd,
                (offset - WRITEBACK_LAG) as i64,
                len as i64,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
        }
    }
}

/// Fill `buf` from `src` until it is full or the source ends; returns the byte count.
fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Chunk of the in-kernel copy: the hashing thread maps and hashes one while the next is
/// copied.
const KERNEL_CHUNK: usize = 16 << 20;

/// Copy a large file with `copy_file_range` (inside the kernel, from page cache to page
/// cache, as `cp` does: one copy of the bytes instead of two through a user-space
/// buffer), while a second thread hashes each chunk of the *destination* as soon as it is
/// copied, through a read-only mapping of the page cache. The digest is that of the
/// staged file's own bytes, whatever the source does meanwhile; nobody else writes the
/// staged file (mode 0600, a name no other process picks). `Ok(None)`: the filesystems
/// cannot copy this way (nothing was copied; use [`copy_and_hash`]).
fn copy_in_kernel_and_hash(
    src: &File,
    dst: &File,
    mut hook: MidCopyHook<'_>,
) -> Result<Option<(Digest, u64)>, CopyFail> {
    use std::os::fd::AsRawFd;
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, usize)>(8);
    std::thread::scope(|s| {
        // No thread to spare (a batch system's cap on a user's processes): nothing was
        // copied yet, and the caller copies through a buffer on this thread.
        let Ok(hasher) =
            std::thread::Builder::new().spawn_scoped(s, move || -> io::Result<blake3::Hasher> {
                let mut h = blake3::Hasher::new();
                for (offset, len) in rx {
                    // SAFETY: a read-only mapping of the staged file, which no one else
                    // writes or truncates (mode 0600, a name no other process picks) while
                    // this chunk is hashed; all its pages are faulted in at once.
                    let chunk = unsafe {
                        memmap2::MmapOptions::new()
                            .offset(offset)
                            .len(len)
                            .populate()
                            .map(dst)?
                    };
                    h.update(&chunk);
                }
                Ok(h)
            })
        else {
            return Ok(None);
        };
        let mut total: u64 = 0;
        let mut outcome = Ok(());
        let mut unsupported = false;
        'copy: loop {
            let mut n = 0;
            while n < KERNEL_CHUNK {
                // SAFETY: two open descriptors; null offsets use and advance the files' own.
                let r = unsafe {
                    libc::copy_file_range(
                        src.as_raw_fd(),
                        std::ptr::null_mut(),
                        dst.as_raw_fd(),
                        std::ptr::null_mut(),
                        KERNEL_CHUNK - n,
                        0,
                    )
                };
                if r == 0 {
                    break;
                }
                if r < 0 {
                    let e = io::Error::last_os_error();
                    let errno = e.raw_os_error().unwrap_or(0);
                    if errno == libc::EINTR {
                        continue;
                    }
                    let cannot = [libc::EXDEV, libc::EINVAL, libc::ENOSYS, libc::EOPNOTSUPP];
                    if total == 0 && n == 0 && cannot.contains(&errno) {
                        unsupported = true;
                    } else if [libc::ENOSPC, libc::EDQUOT, libc::EFBIG, libc::EROFS]
                        .contains(&errno)
                    {
                        outcome = Err(CopyFail::Write(e));
                    } else {
                        outcome = Err(CopyFail::Read(e));
                    }
                    break 'copy;
                }
                n += r as usize;
            }
            if n == 0 {
                break;
            }
            start_writeback(dst, total, n as u64);
            if tx.send((total, n)).is_err() {
                break; // the hasher failed; its error is reported below
            }
            total += n as u64;
            if !hook.chunk_written(total) {
                outcome = Err(CopyFail::Stopped);
                break;
            }
            if n < KERNEL_CHUNK {
                break;
            }
        }
        drop(tx);
        let h = hasher
            .join()
            .map_err(|_| CopyFail::Write(io::Error::other("the hashing thread panicked")))?;
        if unsupported {
            return Ok(None);
        }
        outcome?;
        let h = h.map_err(CopyFail::Write)?;
        Ok(Some((Digest::from_bytes(*h.finalize().as_bytes()), total)))
    })
}

/// After each chunk of a copy: the progress receiver, if any (started, with the bytes
/// expected, at the first chunk; told the bytes copied after each; finished when the copy
/// ends; asking it to stop removes the copy in `tmp/` and stores nothing), and the
/// `add-mid-copy` test hook ([`crate::testhook`]), a pause after the first chunk, where
/// the crash tests kill `add`.
struct MidCopyHook<'a> {
    paused: bool,
    progress: Option<&'a ProgressHook>,
    expected: Option<u64>,
}

impl<'a> MidCopyHook<'a> {
    fn new(progress: Option<&'a ProgressHook>, expected: Option<u64>) -> Self {
        MidCopyHook {
            paused: false,
            progress,
            expected,
        }
    }

    /// `written` bytes are copied; false when the progress receiver asks to stop.
    fn chunk_written(&mut self, written: u64) -> bool {
        if !std::mem::replace(&mut self.paused, true) {
            crate::testhook::pause("add-mid-copy");
            if let Some(p) = self.progress {
                p.0.start(self.expected, 0);
            }
        }
        self.progress.is_none_or(|p| {
            p.0.advance(written);
            !p.0.stop()
        })
    }
}

impl Drop for MidCopyHook<'_> {
    fn drop(&mut self) {
        if self.paused
            && let Some(p) = self.progress
        {
            p.0.finish();
        }
    }
}

/// Copy `src` to `dst` and hash exactly the bytes written, in one pass over the data.
/// `pipelined`: one thread reads and writes while another hashes the chunks just written
/// (a few buffers circulate between them), so a large copy costs about max(copy, hash)
/// rather than their sum. `expected` (the size the source had) sizes the buffer of a small copy.
fn copy_and_hash(
    src: &mut dyn Read,
    dst: &mut File,
    pipelined: bool,
    mut hook: MidCopyHook<'_>,
) -> Result<(Digest, u64), CopyFail> {
    let expected = hook.expected;
    if !pipelined {
        let mut w = HashingWriter::new(dst);
        // A small file gets a small buffer: from the heap, without mapping 4 MiB for it.
        let size = expected.map_or(COPY_BUF, |n| {
            usize::try_from(n).map_or(COPY_BUF, |n| n.clamp(64 << 10, COPY_BUF))
        });
        let mut buf = vec![0u8; size];
        let mut written: u64 = 0;
        loop {
            let n = read_full(src, &mut buf).map_err(CopyFail::Read)?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).map_err(CopyFail::Write)?;
            written += n as u64;
            if !hook.chunk_written(written) {
                return Err(CopyFail::Stopped);
            }
            if n < buf.len() {
                break; // `read_full` stopped at the end of the source
            }
        }
        let (d, n, _) = w.finish();
        return Ok((d, n));
    }
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(2);
    let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..4 {
        let _ = free_tx.send(vec![0u8; COPY_BUF]);
    }
    let piped = std::thread::scope(|s| {
        let hasher = std::thread::Builder::new().spawn_scoped(s, move || {
            let mut h = blake3::Hasher::new();
            for (buf, n) in work_rx {
                h.update(&buf[..n]);
                let _ = free_tx.send(buf);
            }
            h
        });
        // No thread to spare: nothing was copied yet; copy on this thread (below).
        let Ok(hasher) = hasher else {
            return None;
        };
        let mut total: u64 = 0;
        let mut outcome = Ok(());
        while let Ok(mut buf) = free_rx.recv() {
            let n = match read_full(src, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    outcome = Err(CopyFail::Read(e));
                    break;
                }
            };
            if let Err(e) = dst.write_all(&buf[..n]) {
                outcome = Err(CopyFail::Write(e));
                break;
            }
            start_writeback(dst, total, n as u64);
            total += n as u64;
            if !hook.chunk_written(total) {
                outcome = Err(CopyFail::Stopped);
                break;
            }
            if work_tx.send((buf, n)).is_err() {
                break;
            }
        }
        drop(work_tx);
        Some((|| {
            let h = hasher
                .join()
                .map_err(|_| CopyFail::Write(io::Error::other("the hashing thread panicked")))?;
            outcome?;
            Ok((Digest::from_bytes(*h.finalize().as_bytes()), total))
        })())
    });
    match piped {
        Some(copied) => copied,
        None => copy_and_hash(src, dst, false, hook),
    }
}

/// `read_dir`, with a missing directory as `None` (a cache not written to yet).
fn read_dir_if_present(dir: &Path) -> io::Result<Option<fs::ReadDir>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(Some(rd)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Unlink files moved aside by [`Store::unlink_later`].
pub(super) fn unlink_now(paths: &[PathBuf]) {
    for p in paths {
        let _ = fs::remove_file(p);
    }
}

/// Make a staged file read-only and durable, or with `defer_sync` only read-only (the
/// fsync still to do).
fn finish_file(file: File, defer_sync: bool) -> io::Result<Sync> {
    file.set_permissions(fs::Permissions::from_mode(BLOB_MODE))?;
    if defer_sync {
        return Ok(Sync::Pending(file));
    }
    file.sync_all()?;
    Ok(Sync::Done)
}

/// fsync a directory so a rename in it is durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The path that names the directory open at `dir` itself, whatever its name names now.
fn through(dir: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// The directory `name` in the directory open at `dir`, opened without following a link.
fn openat_dir(dir: &File, name: &std::ffi::OsStr) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let n = std::ffi::CString::new(name.as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            n.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat just returned, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `renameat(2)` of `from` in the directory `from_dir` to `to` in `to_dir`.
fn renameat(from_dir: &File, from: &Path, to_dir: &File, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let f = CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let t = CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid directory descriptors and NUL-terminated names.
    let rc = unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(&dir.path().join("v1"), 0o755);
        s.create_dirs().unwrap();
        (dir, s)
    }

    fn tmp_entries(s: &Store) -> usize {
        fs::read_dir(s.tmp_dir()).unwrap().count()
    }

    #[test]
    fn committed_blob_is_read_only_and_named_by_its_content() {
        let (_d, s) = store();
        let data = b"hello sif".repeat(1000);
        let staged = s
            .stage_copy(&mut &data[..], Path::new("src"), Some(data.len() as u64))
            .unwrap();
        let (path, new) = staged.commit(&s, None).unwrap();
        assert!(new);
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(path, s.blob_path(&Digest::of(&data)));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, BLOB_MODE);
        assert_eq!(tmp_entries(&s), 0);
    }

    /// `add`'s way in: staged without the fsync, which a thread runs before it links the
    /// blob; the blob is complete, read-only and linked once.
    #[test]
    fn a_copy_staged_without_its_fsync_is_placed_in_the_background_once() {
        let (_d, s) = store();
        let data = b"deferred".repeat(999);
        let stage = |name: &str| {
            let src = _d.path().join(name);
            fs::write(&src, &data).unwrap();
            let mut f = File::open(&src).unwrap();
            s.stage_file(&mut f, &src, Some(data.len() as u64), None, true)
                .unwrap()
        };
        let mut a = stage("a");
        assert!(matches!(a.sync, Sync::Pending(_)));
        let placing = a.place_in_background(&s);
        assert!(a.settle(placing), "the first copy makes the link");
        assert!(matches!(a.sync, Sync::Done));
        let blob = s.blob_path(&Digest::of(&data));
        assert_eq!(fs::read(&blob).unwrap(), data);
        assert_eq!(fs::metadata(&blob).unwrap().mode() & 0o777, BLOB_MODE);
        let mut b = stage("b");
        let placing = b.place_in_background(&s);
        assert!(!b.settle(placing), "the blob was there: no second link");
        assert_eq!(a.commit(&s, None).unwrap(), (blob.clone(), false));
        assert_eq!(b.commit(&s, None).unwrap(), (blob, false));
        assert_eq!(tmp_entries(&s), 0);
    }

    /// A staged file whose fsync failed is never linked into `blobs/` nor committed: a
    /// second fsync could report success for pages the kernel dropped.
    #[test]
    fn a_staged_file_whose_fsync_failed_never_reaches_blobs() {
        let (_d, s) = store();
        let data = b"lost".repeat(999);
        let mut staged = s
            .stage_copy(&mut &data[..], Path::new("src"), None)
            .unwrap();
        staged.sync = Sync::Failed(io::ErrorKind::Other);
        let placing = staged.place_in_background(&s);
        assert!(!staged.settle(placing));
        assert!(staged.place_unsynced(&s).is_none());
        let blob = s.blob_path(&Digest::of(&data));
        assert!(!blob.exists());
        assert!(matches!(
            staged.commit(&s, None),
            Err(StoreError::Write { .. })
        ));
        assert!(!blob.exists());
        assert_eq!(tmp_entries(&s), 0, "the staged copy is removed");
    }

    #[test]
    fn a_blob_path_is_its_fan_out_directory_then_its_hex_digest() {
        let (_d, s) = store();
        for data in [&b""[..], b"a", b"hello sif"] {
            let d = Digest::of(data);
            let hex = d.hex();
            assert_eq!(s.blob_path(&d), s.blobs.join(&hex[..2]).join(&hex));
        }
    }

    #[test]
    fn identical_content_is_stored_once() {
        let (_d, s) = store();
        let a = s
            .stage_copy(&mut &b"same"[..], Path::new("a"), None)
            .unwrap();
        let b = s
            .stage_copy(&mut &b"same"[..], Path::new("b"), None)
            .unwrap();
        let (pa, new_a) = a.commit(&s, None).unwrap();
        let (pb, new_b) = b.commit(&s, None).unwrap();
        assert_eq!(pa, pb);
        assert!(new_a && !new_b);
        assert_eq!(tmp_entries(&s), 0);
    }

    #[test]
    fn a_dropped_link_stage_keeps_the_source() {
        let (d, s) = store();
        let src = d.path().join("image.sif");
        fs::write(&src, b"kept").unwrap();
        drop(s.stage_link(&src, false).unwrap());
        assert_eq!(fs::read(&src).unwrap(), b"kept");
        assert_eq!(tmp_entries(&s), 0);
    }

    /// An image unlinked while open on an NFS client lives on as `.nfs*` (in `tmp/`, where
    /// gc unlinks its victims, or beside a blob). Listed, gc would delete it once past the
    /// tmp grace and verify would report it: the cluster tests saw gc delete one.
    #[test]
    fn nfs_silly_renamed_files_are_not_listed() {
        let (_d, s) = store();
        fs::write(s.tmp_dir().join(".nfs000000000002001000000001"), b"open").unwrap();
        fs::write(s.tmp_dir().join("leftover"), b"x").unwrap();
        let fan = s.blobs_dir().join("ab");
        fs::create_dir_all(&fan).unwrap();
        fs::write(fan.join(".nfs000000000002001000000002"), b"open").unwrap();
        fs::write(fan.join("stray"), b"x").unwrap();
        let tmp: Vec<_> = s.scan_tmp().unwrap().into_iter().map(|t| t.path).collect();
        assert_eq!(tmp, vec![s.tmp_dir().join("leftover")]);
        let blobs: Vec<_> = s.scan().unwrap().into_iter().map(|f| f.path).collect();
        assert_eq!(blobs, vec![fan.join("stray")]);
    }

    #[test]
    fn dropped_stage_leaves_nothing_in_tmp() {
        let (_d, s) = store();
        let staged = s
            .stage_copy(&mut &b"abandoned"[..], Path::new("x"), None)
            .unwrap();
        assert_eq!(tmp_entries(&s), 1);
        drop(staged);
        assert_eq!(tmp_entries(&s), 0);
        assert!(!s.blob_path(&Digest::of(b"abandoned")).exists());
    }

    /// Content of `len` bytes that differs from chunk to chunk.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / 4099 % 251) as u8).collect()
    }

    #[test]
    fn a_large_file_copied_in_the_kernel_is_named_by_what_was_written() {
        let (d, s) = store();
        // Two and a half chunks: the last one short.
        let data = pattern(KERNEL_CHUNK * 5 / 2);
        let src = d.path().join("big.img");
        fs::write(&src, &data).unwrap();
        let mut f = File::open(&src).unwrap();
        let st = s
            .stage_file(&mut f, &src, Some(data.len() as u64), None, false)
            .unwrap();
        assert_eq!(st.digest(), Digest::of(&data));
        assert_eq!(st.size(), data.len() as u64);
        let (path, _) = st.commit(&s, None).unwrap();
        assert_eq!(fs::read(path).unwrap(), data);
    }

    #[test]
    fn a_large_source_the_kernel_cannot_copy_from_goes_through_the_buffer() {
        // A pipe: copy_file_range refuses it, so the buffered copy takes over.
        let (_d, s) = store();
        let data = pattern((PIPELINE_MIN as usize) + 12345);
        let mut fds = [0; 2];
        // SAFETY: pipe fills two new descriptors, each owned by one File below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        use std::os::fd::FromRawFd;
        let (mut rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let feed = data.clone();
        let writer = std::thread::spawn(move || wr.write_all(&feed));
        let st = s
            .stage_file(
                &mut rd,
                Path::new("pipe"),
                Some(data.len() as u64),
                None,
                false,
            )
            .unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(st.digest(), Digest::of(&data));
        assert_eq!(st.size(), data.len() as u64);
    }

    #[test]
    fn size_change_during_copy_is_refused_and_cleaned_up() {
        let (_d, s) = store();
        let e = s
            .stage_copy(&mut &b"short"[..], Path::new("f"), Some(99))
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Changed {
                    before: 99,
                    after: 5,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(tmp_entries(&s), 0);
    }

    #[test]
    fn failing_reader_leaves_nothing_behind() {
        struct Broken(u32);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("device gone"));
                }
                self.0 -= 1;
                buf[0] = 7;
                Ok(1)
            }
        }
        let (_d, s) = store();
        let e = s
            .stage_copy(&mut Broken(3), Path::new("dev"), None)
            .unwrap_err();
        assert!(e.to_string().contains("device gone"));
        assert_eq!(tmp_entries(&s), 0);
    }

    #[test]
    fn link_stages_without_copying_and_leaves_the_source_in_place() {
        let (d, s) = store();
        let src = d.path().join("image.sif");
        fs::write(&src, b"moved content").unwrap();
        let ino = fs::metadata(&src).unwrap().ino();
        let (path, _) = s.stage_link(&src, false).unwrap().commit(&s, None).unwrap();
        assert!(src.exists(), "the source path is the caller's to remove");
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            ino,
            "content was copied"
        );
        assert_eq!(fs::read(&path).unwrap(), b"moved content");
    }

    #[test]
    fn unlink_later_moves_the_blob_aside_first() {
        let (_d, s) = store();
        let (path, _) = s
            .stage_copy(&mut &b"old"[..], Path::new("o"), None)
            .unwrap()
            .commit(&s, None)
            .unwrap();
        let open = File::open(&path).unwrap();
        let aside = s.unlink_later(&Digest::of(b"old")).unwrap().unwrap();
        assert!(!path.exists() && aside.starts_with(s.tmp_dir()));
        unlink_now(&[aside]);
        let mut still = String::new();
        (&open).read_to_string(&mut still).unwrap();
        assert_eq!(still, "old", "an open reader lost its data");
        assert_eq!(s.unlink_later(&Digest::of(b"old")).unwrap(), None);
    }
}
