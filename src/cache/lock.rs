//! File locks that work across processes and nodes, with bounded, announced waits.
//!
//! # Protocol
//!
//! A lock file is opened read-write (NFS needs that for write locks; a reader that may
//! not write it opens it read-only, which suffices for shared locks) and locked with
//! open-file-description (OFD) `fcntl` locks, which the kernel and the cluster
//! filesystems treat as POSIX byte-range locks: coherent across nodes on NFSv4, Lustre
//! (with `flock` or `localflock` off) and GPFS, unlike `flock`, which GPFS keeps per node.
//! OFD locks belong to the open file, not the process, so two opens in one process
//! exclude each other like two processes do, and closing another descriptor of the same
//! file does not drop them.
//!
//! Two bytes of each lock file are used:
//!
//! * byte 0, the *turnstile*: a writer takes it exclusive before waiting for byte 1;
//!   a reader passes through it (shared, released at once) before taking byte 1. So a
//!   queued writer stops new readers from entering and cannot be starved by a steady
//!   stream of them.
//! * byte 1, the *lock proper*: shared for readers, exclusive for the writer.
//!
//! A reader whose way is clear (neither byte held exclusive) takes both bytes shared in
//! one call, which the kernel grants whole or not at all, and gives the turnstile back
//! at once: two calls where the steps take three, and the same bytes held after. When
//! that call is refused it goes step by step, waiting as above.
//!
//! Every wait is bounded by `SREGISTRY_LOCK_TIMEOUT` (seconds, or with a unit: `90s`,
//! `5m`; default 5 minutes). After one second of waiting, "waiting for lock on `PATH`"
//! goes to stderr (unless the caller asked for quiet). A timeout is an error that names
//! the lock file and the variable that raises the bound.
//!
//! `SREGISTRY_LOCK=flock` switches to whole-file `flock(2)` locks (no turnstile) for
//! filesystems without working `fcntl` locks; `sregistry doctor` says when that is needed.
//!
//! # Letting go, and `fork`
//!
//! A lock is released explicitly (an unlock of the whole file, then the close), never by
//! the close alone: an OFD or `flock` lock belongs to the open file description, which a
//! child made by `fork` shares with its parent, and a close releases it only when the last
//! descriptor of the description closes. Unlocked explicitly, the lock is gone when the
//! guard drops, whatever children hold a copy. Every descriptor that carries a lock (the
//! lock file, the twin a waiting thread uses, a fenced file) is registered with
//! `crate::fork` from before it is locked until after it is unlocked, so that a child
//! closes its copy at once (without unlocking it, which would release the parent's lock):
//! a parent that dies leaves no lock behind in its children. A caller that takes one lock
//! again and again may keep the descriptor between times ([`LockGuard::into_file`]: the
//! lock released, the descriptor open and still registered) and lock it again
//! ([`lock_file`]); it holds no lock between times.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Environment variable bounding every lock wait.
pub const TIMEOUT_ENV: &str = crate::settings::LOCK_TIMEOUT.var;
/// Environment variable choosing the lock primitive (`ofd`, the default, or `flock`).
pub const KIND_ENV: &str = crate::settings::LOCK.var;
/// Default bound on a lock wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a wait goes on before [`LockOptions::on_wait`] hears of it.
const ANNOUNCE_AFTER: Duration = Duration::from_secs(1);

const TURNSTILE: i64 = 0;
const MAIN: i64 = 1;

/// Shared (many readers) or exclusive (one writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// The locking primitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `fcntl(F_OFD_SETLK[W])` byte-range locks (default).
    Ofd,
    /// `flock(2)` whole-file locks.
    Flock,
}

/// Called once when a lock wait passes a second, with the lock file's path: the library
/// prints nothing itself; the command line says "waiting for lock on ..." through it.
#[derive(Clone)]
pub struct OnWait(pub std::sync::Arc<dyn Fn(&Path) + Send + Sync>);

impl std::fmt::Debug for OnWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnWait(..)")
    }
}

/// How locks are taken: primitive, bound and who hears of a long wait.
#[derive(Clone, Debug)]
pub struct LockOptions {
    pub kind: Kind,
    pub timeout: Duration,
    /// Told when a wait passes a second; `None` tells nobody.
    pub on_wait: Option<OnWait>,
    /// Mode bits for lock files this process creates (applied whatever the umask).
    pub file_mode: u32,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            kind: Kind::Ofd,
            timeout: DEFAULT_TIMEOUT,
            on_wait: None,
            file_mode: 0o644,
        }
    }
}

impl LockOptions {
    /// Defaults, with the primitive and the bound of the configuration (`lock`,
    /// `lock_timeout`: files, `SREGISTRY_LOCK`, `SREGISTRY_LOCK_TIMEOUT`).
    pub fn from_config(c: &crate::settings::Config) -> LockOptions {
        LockOptions {
            timeout: c.lock_timeout,
            kind: if c.lock == "flock" {
                Kind::Flock
            } else {
                Kind::Ofd
            },
            ..LockOptions::default()
        }
    }
}

pub use super::error::LockError;

/// A held lock; released when dropped (unlocked, then the file closed).
#[derive(Debug)]
pub struct LockGuard {
    // Dropped before the file: unlocks and unregisters while the descriptor is open.
    _held: Held,
    _file: File,
    path: PathBuf,
    mode: Mode,
}

impl LockGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The calls a callback run on behalf of this lock's holder would be nested in: this
    /// lock, and those the current thread is already inside (see [`Reentry`]).
    pub fn reentry(&self) -> Reentry {
        let mut held = INSIDE
            .with(|c| c.borrow().as_ref().map(|r| r.0.to_vec()))
            .unwrap_or_default();
        held.push(self.path.clone());
        Reentry(std::sync::Arc::from(held))
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the locked file still has a name (one `fstat`): a lock taken through a
    /// descriptor kept from earlier ([`lock_file`]) on a file someone has removed since
    /// excludes nobody who opens the path now.
    pub(super) fn linked(&self) -> bool {
        linked(&self._file)
    }

    /// Release the lock (the explicit unlock [`LockGuard`]'s drop makes) and keep the
    /// descriptor open, still registered with [`crate::fork`], to lock again with
    /// [`lock_file`].
    pub(super) fn into_file(self) -> LockFile {
        let LockGuard { _held, _file, .. } = self;
        LockFile {
            registration: _held.release(),
            file: _file,
        }
    }

    /// Whether the lock file's path still names the file this guard locked (a lock file
    /// that [`remove_if_free`] unlinked before the lock was taken does not).
    pub(super) fn still_at_path(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._file.metadata(), std::fs::metadata(&self.path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

/// The lock files held by calls that wait for this thread to return: this thread runs a
/// callback (a progress hook) on their behalf. A lock of this process on another
/// descriptor excludes this one like another process's would, so taking one of these
/// here would wait for the caller that waits for us: see `held_by_caller`.
///
/// Set around each hook call by whoever holds the lock ([`Reentry::enter`]); the chain
/// carries over to calls nested deeper (a hook that pulls another remote, whose hook
/// pulls again).
#[derive(Clone, Debug)]
pub struct Reentry(std::sync::Arc<[PathBuf]>);

thread_local! {
    static INSIDE: std::cell::RefCell<Option<Reentry>> = const { std::cell::RefCell::new(None) };
}

/// While the returned value lives, this thread counts as running a callback for the
/// holders of [`Reentry`]'s locks.
pub struct Entered(Option<Reentry>);

impl Reentry {
    pub fn enter(&self) -> Entered {
        Entered(INSIDE.with(|c| c.replace(Some(self.clone()))))
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let before = self.0.take();
        INSIDE.with(|c| *c.borrow_mut() = before);
    }
}

/// Whether `path` is held by a call that waits for this thread (see [`Reentry`]).
pub(super) fn held_by_caller(path: &Path) -> bool {
    INSIDE.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|r| r.0.iter().any(|p| p == path))
    })
}

/// Take `mode` on the lock file at `path`, creating it if needed, waiting at most
/// `opts.timeout`.
pub(super) fn lock(path: &Path, mode: Mode, opts: &LockOptions) -> Result<LockGuard, LockError> {
    let (file, registration) = crate::fork::open(|| open_lock_file(path, opts, mode))?;
    lock_file(LockFile { file, registration }, path, mode, opts)
}

/// A lock file's descriptor, open and registered with [`crate::fork`], carrying no lock:
/// what [`LockGuard::into_file`] gives back, for a caller that takes the same lock again
/// and again (`get` through a kept `Cache`, `crate::cache::index`'s `kept`) to lock it
/// again with [`lock_file`] instead of opening the file each time.
#[derive(Debug)]
pub(super) struct LockFile {
    file: File,
    registration: crate::fork::Registration,
}

impl LockFile {
    /// Whether the file still has a name: a lock file someone removed (`rm`, or the
    /// cache's directory removed and made again) has none, and its lock excludes nobody
    /// who opens the path now.
    #[cfg(test)]
    fn linked(&self) -> bool {
        linked(&self.file)
    }
}

fn linked(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().is_ok_and(|m| m.nlink() > 0)
}

/// [`lock`] through `f`, a descriptor of the lock file at `path` opened before.
pub(super) fn lock_file(
    f: LockFile,
    path: &Path,
    mode: Mode,
    opts: &LockOptions,
) -> Result<LockGuard, LockError> {
    let LockFile { file, registration } = f;
    let held = Held::new(&file, opts.kind, None, registration);
    let guard = |held, file| LockGuard {
        _held: held,
        _file: file,
        path: path.to_path_buf(),
        mode,
    };
    // A reader's way through the turnstile in one call when neither byte is held against
    // it: both bytes shared at once (a lock of a range is taken whole or not at all), then
    // the turnstile given back; what it holds after is what the steps below give it.
    // Anything else (a writer waiting or writing, an error) takes the steps below.
    if opts.kind == Kind::Ofd
        && mode == Mode::Shared
        && ofd_fd(
            file.as_raw_fd(),
            libc::F_OFD_SETLK,
            libc::F_RDLCK as i16,
            TURNSTILE,
            2,
        )
        .is_ok()
    {
        ofd(&file, libc::F_OFD_SETLK, libc::F_UNLCK as i16, TURNSTILE).map_err(|source| {
            LockError::Lock {
                path: path.to_path_buf(),
                source,
            }
        })?;
        return Ok(guard(held, file));
    }
    let deadline = Instant::now() + opts.timeout;
    let start = Instant::now();
    let mut announced = false;
    let err = |source| LockError::Lock {
        path: path.to_path_buf(),
        source,
    };
    let mut take = |req| acquire(&file, req, path, opts, start, deadline, &mut announced);
    match opts.kind {
        Kind::Flock => take(Req::new(Kind::Flock, mode, MAIN))?,
        Kind::Ofd => {
            // The turnstile in the lock's own mode (a writer keeps new readers out while it
            // waits; a reader only passes through), then the lock proper; the turnstile is
            // given back whether or not the lock proper was taken.
            take(Req::new(Kind::Ofd, mode, TURNSTILE))?;
            let got = take(Req::new(Kind::Ofd, mode, MAIN));
            ofd(&file, libc::F_OFD_SETLK, libc::F_UNLCK as i16, TURNSTILE).map_err(err)?;
            got?;
        }
    }
    Ok(guard(held, file))
}

/// The byte a fence takes (see [`fence`]): far past the end of any file it is put on.
const FENCE: i64 = 1 << 62;

/// Fence `file`, a file written only under an exclusive lock (`index.redb`,
/// `index.journal`), through the very descriptor the writes will go through: an exclusive
/// lock on one byte far past its end (a whole-file `flock` with [`Kind::Flock`]), waited
/// for like any lock, held until the file is closed.
///
/// On a local disk a fence is never contended: only the holder of the exclusive lock
/// takes one. It matters on NFSv4, where a lock is state the server keeps. When the server
/// restarts and a client cannot reclaim its locks in the server's grace period (late,
/// or a server that forgot its clients), the client marks them lost but tells no one:
/// the process holding the lock on `index.lock` goes on as if it held it while another
/// node takes it. The Linux client refuses, with `EIO`, every later read and write made
/// through a descriptor whose own lock was lost; writes to a file through a descriptor
/// with no lock on it would still go through. So every write under the exclusive lock
/// goes through a fenced descriptor, fenced right after the lock was taken: a writer
/// whose lock the server forgot fails instead of writing over the next writer's work.
/// (And a fence the server did give back keeps the next writer waiting here until the
/// old one is done, even if its lock on `index.lock` was lost.)
///
/// `file` was opened with [`crate::fork::open`], which gave `registration`. The fence
/// lasts as long as the returned [`Held`], which must be dropped before `file` is closed
/// (it unlocks the fence; see "Letting go" above).
pub(super) fn fence(
    file: &File,
    registration: crate::fork::Registration,
    path: &Path,
    opts: &LockOptions,
) -> Result<Held, LockError> {
    let start = Instant::now();
    let req = Req::new(opts.kind, Mode::Exclusive, FENCE);
    let held = Held::new(file, opts.kind, Some(FENCE), registration);
    acquire(
        file,
        req,
        path,
        opts,
        start,
        start + opts.timeout,
        &mut false,
    )?;
    Ok(held)
}

/// Locks of ours on one descriptor, which something else owns and closes: registered
/// with [`crate::fork`] while this lives; dropped, it unlocks them (the byte `only`, else
/// the whole file) and unregisters the descriptor. Drop it before the descriptor closes.
#[derive(Debug)]
pub(crate) struct Held {
    fd: std::os::fd::RawFd,
    kind: Kind,
    only: Option<i64>,
    /// `None` once [`Held::release`] has unlocked and taken it.
    registration: Option<crate::fork::Registration>,
}

impl Held {
    fn new(
        file: &File,
        kind: Kind,
        only: Option<i64>,
        registration: crate::fork::Registration,
    ) -> Held {
        Held {
            fd: file.as_raw_fd(),
            kind,
            only,
            registration: Some(registration),
        }
    }

    /// Unlock now, and hand back the registration (the descriptor stays registered).
    fn release(mut self) -> crate::fork::Registration {
        self.unlock();
        self.registration
            .take()
            .expect("a Held is released once, by value")
    }

    fn unlock(&self) {
        // Errors are ignored: there is nothing to do about them, and the close follows.
        match self.kind {
            Kind::Ofd => {
                let (start, len) = self.only.map_or((0, 0), |b| (b, 1));
                let _ = ofd_fd(self.fd, libc::F_OFD_SETLK, libc::F_UNLCK as i16, start, len);
            }
            Kind::Flock => {
                // SAFETY: the descriptor is open until after this value drops.
                unsafe { libc::flock(self.fd, libc::LOCK_UN) };
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.registration.is_some() {
            self.unlock();
        }
    }
}

/// Whether some open file description (another process's, on any node, or another open
/// in this one) holds a lock on the existing lock file `path`; `Ok(None)` when there is no
/// file there. It tries a shared lock on the byte a holder locks, without waiting, and
/// closes the file (which gives back what it got). Used to tell a live writer's files in
/// `tmp/` from a dead one's (`crate::cache::writer`).
pub(super) fn is_held(path: &Path, kind: Kind) -> io::Result<Option<bool>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(!try_once(&file, Req::new(kind, Mode::Shared, MAIN))?))
}

/// Remove the lock file `path` if nobody holds it, taking it exclusive (without waiting)
/// while the file is unlinked, so that nobody can take it in between; `Ok(false)` when it
/// is held or already gone. A holder that opened the file just before must check that its
/// path still names the file it locked ([`LockGuard::still_at_path`]).
pub(super) fn remove_if_free(path: &Path, kind: Kind) -> io::Result<bool> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !try_once(&file, Req::new(kind, Mode::Exclusive, MAIN))? {
        return Ok(false);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Try once to take `mode` without waiting; `Ok(None)` when another process holds it.
#[cfg(test)]
pub(super) fn try_lock(
    path: &Path,
    mode: Mode,
    opts: &LockOptions,
) -> Result<Option<LockGuard>, LockError> {
    let quick = LockOptions {
        timeout: Duration::ZERO,
        on_wait: None,
        ..opts.clone()
    };
    match lock(path, mode, &quick) {
        Ok(g) => Ok(Some(g)),
        Err(LockError::Timeout { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Open (creating if needed) a lock file read-write. A shared lock needs only read
/// access, so where the file cannot be opened for writing (a read-only mount, or a user
/// outside the cache's group), a reader opens it read-only instead: everyone who can read
/// a cache can `get` from it.
fn open_lock_file(path: &Path, opts: &LockOptions, mode: Mode) -> Result<File, LockError> {
    match open_lock_file_rw(path, opts, mode == Mode::Shared) {
        Err(LockError::Open { source, .. })
            if mode == Mode::Shared
                && matches!(
                    source.raw_os_error(),
                    Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)
                ) =>
        {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(path)
                // Report the first refusal: it says why the file could not be written.
                .map_err(|_| LockError::Open {
                    path: path.to_path_buf(),
                    source,
                })
        }
        other => other,
    }
}

/// `existing_first` (a reader's shared lock, whose file is made once and then there for
/// every `get`): the file is opened as it is, and created only when that finds none, so
/// the hot path opens it in one call (on NFS, one round trip). Otherwise (a writer's lock,
/// often a file of its own made just now) it is created first, and opened as it is when
/// it exists.
fn open_lock_file_rw(
    path: &Path,
    opts: &LockOptions,
    existing_first: bool,
) -> Result<File, LockError> {
    let open_err = |source| LockError::Open {
        path: path.to_path_buf(),
        source,
    };
    let existing = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
    };
    if existing_first {
        match existing() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other.map_err(open_err),
        }
    }
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(opts.file_mode)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => {
            // Set the mode explicitly: the umask may have narrowed it.
            use std::os::unix::fs::PermissionsExt;
            let _ = f.set_permissions(std::fs::Permissions::from_mode(opts.file_mode));
            Ok(f)
        }
        // Made by another process just now.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => existing().map_err(open_err),
        Err(e) => Err(open_err(e)),
    }
}

/// A second descriptor of a lock file's open description, for a waiting thread: the lock
/// it takes is the caller's. Registered with [`crate::fork`] (a child's copy would hold
/// the description open), but never unlocked when dropped: that would release the
/// caller's lock.
struct Twin {
    _registration: crate::fork::Registration,
    file: File,
}

impl Twin {
    fn of(file: &File) -> io::Result<Twin> {
        let (file, registration) = crate::fork::open(|| file.try_clone())?;
        Ok(Twin {
            _registration: registration,
            file,
        })
    }
}

#[derive(Clone, Copy)]
enum Req {
    /// `fcntl` OFD lock of one byte: (type, offset).
    Ofd(i16, i64),
    /// `flock` operation.
    Flock(i32),
}

impl Req {
    /// `mode` with the primitive `kind`: on the one byte `byte` (OFD), or on the whole
    /// file (`flock`, which has no bytes).
    fn new(kind: Kind, mode: Mode, byte: i64) -> Req {
        match (kind, mode) {
            (Kind::Ofd, Mode::Shared) => Req::Ofd(libc::F_RDLCK as i16, byte),
            (Kind::Ofd, Mode::Exclusive) => Req::Ofd(libc::F_WRLCK as i16, byte),
            (Kind::Flock, Mode::Shared) => Req::Flock(libc::LOCK_SH),
            (Kind::Flock, Mode::Exclusive) => Req::Flock(libc::LOCK_EX),
        }
    }
}

/// Take one lock request: a non-blocking try, then (if contended) a blocking wait on a
/// helper thread so the wait can be bounded and announced.
fn acquire(
    file: &File,
    req: Req,
    path: &Path,
    opts: &LockOptions,
    start: Instant,
    deadline: Instant,
    announced: &mut bool,
) -> Result<(), LockError> {
    let lock_err = |source| LockError::Lock {
        path: path.to_path_buf(),
        source,
    };
    match try_once(file, req) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) => return Err(lock_err(e)),
    }
    if opts.timeout.is_zero() {
        return Err(LockError::Timeout {
            path: path.to_path_buf(),
            waited: Duration::ZERO,
        });
    }
    // The waiting thread gets its own descriptor of the same open file description, so
    // the lock it takes is ours. It hands the descriptor back with the result, so that
    // the only descriptors left open are the caller's: an OFD lock lasts until the last
    // descriptor of its description closes, and a twin closing late would hold the lock
    // past the guard's drop. If we give up, the thread releases what it got and closes
    // the twin itself. (It stays blocked until the lock frees; a process that exits after
    // a timeout takes the pending wait with it.)
    let twin = Twin::of(file).map_err(lock_err)?;
    let (tx, rx) = mpsc::channel::<(io::Result<()>, Twin)>();
    #[cfg(test)]
    let waiting = path.to_path_buf();
    let spawned = std::thread::Builder::new().spawn(move || {
        #[cfg(test)]
        tests::waits::started(&waiting);
        let res = wait_blocking(&twin.file, req);
        if let Err(mpsc::SendError((Ok(()), twin))) = tx.send((res, twin)) {
            // Nobody waits any more: undo the lock we were too late to hand over.
            let _ = undo(&twin.file, req);
        }
    });
    if spawned.is_err() {
        // No thread to spare (a batch system's cap on a user's processes): ask again
        // and again instead, until the lock is ours or the time is up.
        return poll(file, req, path, opts, start, deadline, announced);
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let mut step = deadline - now;
        if opts.on_wait.is_some() && !*announced {
            let until_announce = ANNOUNCE_AFTER.saturating_sub(now - start);
            step = step.min(until_announce.max(Duration::from_millis(1)));
        }
        match rx.recv_timeout(step) {
            Ok((Ok(()), _twin)) => return Ok(()),
            Ok((Err(e), _twin)) => return Err(lock_err(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => announce_when_due(opts, path, start, announced),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Last chance: the thread may have succeeded just now.
    if let Ok((Ok(()), _twin)) = rx.try_recv() {
        return Ok(());
    }
    Err(timed_out(path, opts))
}

/// Say once, after [`ANNOUNCE_AFTER`], that this wait goes on.
fn announce_when_due(opts: &LockOptions, path: &Path, start: Instant, announced: &mut bool) {
    if let Some(hook) = &opts.on_wait
        && !*announced
        && start.elapsed() >= ANNOUNCE_AFTER
    {
        (hook.0)(path);
        *announced = true;
    }
}

/// A wait that reached its bound: the bound the user set (`SREGISTRY_LOCK_TIMEOUT`), not
/// the time measured, which a busy machine makes a little longer.
fn timed_out(path: &Path, opts: &LockOptions) -> LockError {
    LockError::Timeout {
        path: path.to_path_buf(),
        waited: opts.timeout,
    }
}

/// [`acquire`]'s wait without a thread, after its first try: a non-blocking try every few
/// milliseconds, with the same bound and announcement.
fn poll(
    file: &File,
    req: Req,
    path: &Path,
    opts: &LockOptions,
    start: Instant,
    deadline: Instant,
    announced: &mut bool,
) -> Result<(), LockError> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(path, opts));
        }
        announce_when_due(opts, path, start, announced);
        std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
        match try_once(file, req) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(source) => {
                return Err(LockError::Lock {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn try_once(file: &File, req: Req) -> io::Result<bool> {
    let res = match req {
        Req::Ofd(ty, off) => ofd(file, libc::F_OFD_SETLK, ty, off),
        Req::Flock(op) => flock(file, op | libc::LOCK_NB),
    };
    match res {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn wait_blocking(file: &File, req: Req) -> io::Result<()> {
    loop {
        let res = match req {
            Req::Ofd(ty, off) => ofd(file, libc::F_OFD_SETLKW, ty, off),
            Req::Flock(op) => flock(file, op),
        };
        match res {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other,
        }
    }
}

fn undo(file: &File, req: Req) -> io::Result<()> {
    match req {
        Req::Ofd(_, off) => ofd(file, libc::F_OFD_SETLK, libc::F_UNLCK as i16, off),
        Req::Flock(_) => flock(file, libc::LOCK_UN),
    }
}

fn ofd(file: &File, cmd: libc::c_int, ty: i16, offset: i64) -> io::Result<()> {
    ofd_fd(file.as_raw_fd(), cmd, ty, offset, 1)
}

/// An OFD `fcntl` on `len` bytes from `offset` (0: to the end of the file).
fn ofd_fd(
    fd: std::os::fd::RawFd,
    cmd: libc::c_int,
    ty: i16,
    offset: i64,
    len: i64,
) -> io::Result<()> {
    // SAFETY: an all-zero `flock` struct is a valid value; the fields we need are set
    // below, and `l_pid` must stay 0 for OFD locks.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = offset;
    fl.l_len = len;
    // SAFETY: the caller keeps the descriptor open; `fl` is a valid flock.
    let rc = unsafe { libc::fcntl(fd, cmd, &mut fl as *mut libc::flock) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn flock(file: &File, op: i32) -> io::Result<()> {
    // SAFETY: the descriptor is open for the lifetime of `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether OFD locks work on the filesystem holding `dir`: two opens of one probe file
/// must exclude each other. Used by `doctor`.
pub(super) fn probe_ofd(dir: &Path) -> io::Result<bool> {
    let probe = dir.join(format!(".lock-probe-{}", std::process::id()));
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&probe)?;
    let b = OpenOptions::new().read(true).write(true).open(&probe);
    let _ = std::fs::remove_file(&probe);
    let b = b?;
    ofd(&a, libc::F_OFD_SETLK, libc::F_WRLCK as i16, MAIN)?;
    let excluded = !try_once(&b, Req::new(Kind::Ofd, Mode::Exclusive, MAIN))?;
    Ok(excluded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets a test release a lock only once another thread's wait for it has begun: the
    /// event itself, not a sleep that usually outlasts it.
    pub(super) mod waits {
        use std::collections::HashMap;
        use std::path::{Path, PathBuf};
        use std::sync::{Condvar, Mutex};
        use std::time::Duration;

        static STARTED: Mutex<Option<HashMap<PathBuf, usize>>> = Mutex::new(None);
        static CHANGED: Condvar = Condvar::new();

        /// Called by the helper thread just before it blocks waiting for `path`.
        pub fn started(path: &Path) {
            let mut m = STARTED.lock().unwrap();
            *m.get_or_insert_with(HashMap::new)
                .entry(path.to_path_buf())
                .or_default() += 1;
            CHANGED.notify_all();
        }

        /// Block until a wait for `path` has begun (and consume it); panics after 10 s.
        pub fn await_one(path: &Path) {
            let mut m = STARTED.lock().unwrap();
            loop {
                if let Some(n) = m.get_or_insert_with(HashMap::new).get_mut(path)
                    && *n > 0
                {
                    *n -= 1;
                    return;
                }
                let (g, t) = CHANGED.wait_timeout(m, Duration::from_secs(10)).unwrap();
                assert!(!t.timed_out(), "no wait for `{}` began", path.display());
                m = g;
            }
        }
    }

    fn opts(timeout_ms: u64) -> LockOptions {
        LockOptions {
            timeout: Duration::from_millis(timeout_ms),
            on_wait: None,
            ..LockOptions::default()
        }
    }

    #[test]
    fn readers_share_and_a_writer_excludes_them_within_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let o = opts(50);
        let r1 = lock(&p, Mode::Shared, &o).unwrap();
        let r2 = lock(&p, Mode::Shared, &o).unwrap();
        assert!(try_lock(&p, Mode::Exclusive, &o).unwrap().is_none());
        drop((r1, r2));
        let w = try_lock(&p, Mode::Exclusive, &o)
            .unwrap()
            .expect("free once readers left");
        assert!(try_lock(&p, Mode::Shared, &o).unwrap().is_none());
        drop(w);
        assert!(try_lock(&p, Mode::Shared, &o).unwrap().is_some());
    }

    #[test]
    fn a_lock_taken_after_waiting_is_free_as_soon_as_its_guard_drops() {
        // The wait runs on a helper thread holding a second descriptor; if that
        // descriptor outlived the guard, the lock would linger after drop.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        for _ in 0..50 {
            let r = lock(&p, Mode::Exclusive, &opts(50)).unwrap();
            let p2 = p.clone();
            let t = std::thread::spawn(move || {
                let w = lock(&p2, Mode::Exclusive, &opts(5_000)).unwrap();
                drop(w);
                try_lock(&p2, Mode::Exclusive, &opts(0)).unwrap().is_some()
            });
            // Release only once the thread waits for the lock on its helper thread.
            waits::await_one(&p);
            drop(r);
            assert!(
                t.join().unwrap(),
                "lock still held right after its guard dropped"
            );
        }
    }

    #[test]
    fn a_reader_holds_the_lock_proper_and_leaves_the_turnstile_free() {
        // However it got in (one call when nothing stood in its way, else step by step),
        // a reader holds byte 1 shared and not byte 0, so a writer can queue behind it.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let probe = |byte| {
            let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            try_once(&f, Req::Ofd(libc::F_WRLCK as i16, byte)).unwrap()
        };
        let r = lock(&p, Mode::Shared, &opts(50)).unwrap();
        assert!(probe(TURNSTILE), "the reader kept the turnstile");
        assert!(!probe(MAIN), "the reader does not hold the lock proper");
        // A writer queued on the turnstile keeps a new reader out, as before.
        let turnstile = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        assert!(try_once(&turnstile, Req::Ofd(libc::F_WRLCK as i16, TURNSTILE)).unwrap());
        assert!(try_lock(&p, Mode::Shared, &opts(0)).unwrap().is_none());
        drop(turnstile);
        drop(r);
    }

    #[test]
    fn a_kept_lock_file_locks_again_and_holds_nothing_between() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let o = opts(50);
        for kind in [Kind::Ofd, Kind::Flock] {
            let o = LockOptions { kind, ..o.clone() };
            let mut kept = lock(&p, Mode::Shared, &o).unwrap().into_file();
            for _ in 0..3 {
                assert!(
                    try_lock(&p, Mode::Exclusive, &o).unwrap().is_some(),
                    "{kind:?}: a kept descriptor held its lock between uses"
                );
                let g = lock_file(kept, &p, Mode::Shared, &o).unwrap();
                assert!(try_lock(&p, Mode::Exclusive, &o).unwrap().is_none());
                assert!(try_lock(&p, Mode::Shared, &o).unwrap().is_some());
                kept = g.into_file();
            }
            assert!(kept.linked());
            std::fs::remove_file(&p).unwrap();
            assert!(!kept.linked(), "a removed lock file still counts as named");
        }
    }

    #[test]
    fn a_timed_out_wait_leaves_no_lock_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let r = lock(&p, Mode::Shared, &opts(50)).unwrap();
        assert!(matches!(
            lock(&p, Mode::Exclusive, &opts(50)),
            Err(LockError::Timeout { .. })
        ));
        // The writer's turnstile was given back: new readers still get in.
        assert!(try_lock(&p, Mode::Shared, &opts(0)).unwrap().is_some());
        drop(r);
        // The abandoned wait may take the lock for a moment when it frees, then lets go.
        let deadline = Instant::now() + Duration::from_secs(5);
        while try_lock(&p, Mode::Exclusive, &opts(0)).unwrap().is_none() {
            assert!(Instant::now() < deadline, "abandoned wait kept the lock");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_waiting_writer_gets_the_lock_when_the_reader_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let r = lock(&p, Mode::Shared, &opts(50)).unwrap();
        let p2 = p.clone();
        let t = std::thread::spawn(move || lock(&p2, Mode::Exclusive, &opts(5_000)).map(|_| ()));
        // The writer queued behind the reader: its wait has begun, and it holds the
        // turnstile, so a new reader is turned away.
        waits::await_one(&p);
        assert!(try_lock(&p, Mode::Shared, &opts(0)).unwrap().is_none());
        drop(r);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn timeout_error_names_the_lock_file_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.lock");
        let _w = lock(&p, Mode::Exclusive, &opts(10)).unwrap();
        let e = lock(&p, Mode::Shared, &opts(100)).unwrap_err().to_string();
        assert!(e.contains("index.lock") && e.contains(TIMEOUT_ENV), "{e}");
    }

    #[test]
    fn flock_kind_also_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let o = LockOptions {
            kind: Kind::Flock,
            ..opts(20)
        };
        let _w = lock(&p, Mode::Exclusive, &o).unwrap();
        assert!(try_lock(&p, Mode::Shared, &o).unwrap().is_none());
    }

    #[test]
    fn a_lock_is_released_at_its_guards_drop_though_a_copy_of_its_descriptor_lives() {
        // A child made by fork holds such a copy; closing alone would leave the lock held
        // until the copy closes too.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        for kind in [Kind::Ofd, Kind::Flock] {
            let o = LockOptions { kind, ..opts(50) };
            for mode in [Mode::Shared, Mode::Exclusive] {
                let g = lock(&p, mode, &o).unwrap();
                // SAFETY: dup of a descriptor open for the guard's lifetime.
                let copy = unsafe { libc::dup(g._file.as_raw_fd()) };
                assert!(copy >= 0);
                drop(g);
                let free = try_lock(&p, Mode::Exclusive, &o).unwrap().is_some();
                // SAFETY: our own descriptor from dup.
                unsafe { libc::close(copy) };
                assert!(free, "{kind:?} {mode:?} lock outlived its guard");
            }
        }
    }

    #[test]
    fn a_forked_child_lets_go_of_the_locks_it_inherited() {
        // The parent takes a lock and forks; the child lives on (blocked on a pipe). The
        // parent then closes its descriptor without unlocking, as a parent that dies does:
        // the lock must be free, so the child must have closed its copy by itself.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let o = opts(50);
        let g = lock(&p, Mode::Exclusive, &o).unwrap();
        let (fence_file, registration) =
            crate::fork::open(|| File::create(dir.path().join("fenced"))).unwrap();
        let fence = fence(&fence_file, registration, &dir.path().join("fenced"), &o).unwrap();
        let (mut fds, mut ready) = ([0; 2], [0; 2]);
        // SAFETY: valid arrays of two descriptors for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
        // SAFETY: the child calls only async-signal-safe functions (close, read, _exit)
        // after the fork handlers have run.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut b = [0u8; 1];
            // SAFETY: our own descriptors; a valid buffer.
            unsafe {
                libc::close(fds[1]);
                // The fork handlers have run by now: say so, then live on.
                libc::write(ready[1], b.as_ptr().cast(), 1);
                libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        let mut b = [0u8; 1];
        // SAFETY: our own descriptors; a valid buffer.
        unsafe {
            libc::close(ready[1]);
            assert_eq!(libc::read(ready[0], b.as_mut_ptr().cast(), 1), 1);
            libc::close(ready[0]);
        }
        // The parent "dies": its descriptors close without an unlock.
        let (lock_fd, fenced_fd) = (g._file.as_raw_fd(), fence_file.as_raw_fd());
        std::mem::forget(g);
        std::mem::forget(fence);
        std::mem::forget(fence_file);
        // SAFETY: descriptors whose owners were forgotten above.
        unsafe {
            libc::close(lock_fd);
            libc::close(fenced_fd);
        }
        let lock_free = try_lock(&p, Mode::Exclusive, &o).unwrap().is_some();
        let probe = OpenOptions::new()
            .write(true)
            .open(dir.path().join("fenced"))
            .unwrap();
        let fence_free = try_once(&probe, Req::Ofd(libc::F_WRLCK as i16, FENCE)).unwrap();
        // SAFETY: our own descriptors; the child exits when the pipe closes.
        unsafe {
            libc::close(fds[1]);
            libc::close(fds[0]);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert!(lock_free, "the child kept the lock it inherited");
        assert!(fence_free, "the child kept the fence it inherited");
    }

    #[test]
    fn ofd_locks_work_here() {
        let dir = tempfile::tempdir().unwrap();
        assert!(probe_ofd(dir.path()).unwrap());
    }
}
