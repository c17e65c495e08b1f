//! Writer locks: how gc and verify tell the files a live process is writing in `tmp/`
//! from the leftovers of a dead one, on this node or on another.
//!
//! # Protocol
//!
//! * A process that writes into `tmp/` (a download, a conversion's scratch file, a staged
//!   `add`) first takes, once per cache, an exclusive lock on a file of its own,
//!   `locks/writer-<pid>-<salt>@<host>.lock`, and holds it until it ends. It is the cache's
//!   lock primitive ([`super::lock`]: an OFD lock, or `flock` with `SREGISTRY_LOCK=flock`),
//!   so the kernel drops it when the process dies, and an NFSv4 server when the node's
//!   lease runs out; a pid alone would say nothing on another node.
//! * Every file it writes in `tmp/` carries that name: `ingest-<pid>-<salt>.<n>@<host>`.
//! * gc and verify look at a `tmp/` file's writer lock before they remove or report it,
//!   trying a shared lock without waiting: held, the writer lives and the file is left
//!   alone and not reported, however old it is; free, or no lock file, the writer is dead
//!   and the file is a leftover, removed by gc after `--tmp-grace` (as a `tmp/` file whose
//!   name names no writer is). A lock that cannot be tested counts as held.
//! * The blob an add or a pull links into `blobs/` before its commit is a hard link of its
//!   staged `tmp/` file: gc and verify skip a file under `blobs/` with the inode of a live
//!   writer's `tmp/` file (`TmpFile::inode`, `Found::inode`), so it is not an orphan.
//! * A writer lock goes when its writer is dead and no `tmp/` file names it any more: gc
//!   takes it exclusive without waiting and unlinks it while holding it. A writer that
//!   created its lock file just then checks, once it holds the lock, that the path still
//!   names the file it locked, and starts over with a new name if not.
//! * A forked child inherits the descriptor (the lock then holds while either lives); it
//!   takes a lock of its own, under its own pid, before it writes.
//!
//! A command that ends normally lets its writer locks go itself ([`release_all`], called
//! by the command line after the command and on SIGINT, SIGTERM and SIGHUP), so only a
//! killed process leaves one for gc. It parks each lock file for the next writer on its
//! host rather than removing it: renamed, still held, to a free slot
//! `locks/writer-parked-<k>@<host>.lock` ([`PARKED_SLOTS`] of them; renamed without
//! replacing, so a slot holds one file), and the next writer renames a parked file to its
//! own new name before it locks it, instead of creating one. Creating a file costs an
//! inode, and a file system that churns through inodes (ext4 passes over recently deleted
//! ones) makes that up to a millisecond, more than the rest of an `add`'s file work. A
//! parked file is no writer's: no `tmp/` file names it, so gc removes it like any dead
//! writer's lock, and a writer that renamed it away just as gc took it finds it locked,
//! or its path gone, and starts over with a new file. A writer also starts over when it
//! cannot lock a parked file at once (a child its last owner forked without `exec` still
//! holds the lock), leaving it to gc.
//!
//! A process that cannot take a writer lock (no `locks/` yet, a cache it may only read)
//! names its files without one; gc gives those the grace period only.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::lock::{self, Kind, LockGuard, LockOptions, Mode};

/// Prefix of writer lock files in `locks/`.
pub(super) const PREFIX: &str = "writer-";

/// Parked writer lock files a host keeps for its next writers (see the protocol above):
/// enough for the commands a job script runs one after another, and a few at once.
pub(super) const PARKED_SLOTS: u32 = 4;

/// The parking slot `k` of `host`'s writer lock files.
fn parked_path(locks: &Path, k: u32, host: &str) -> PathBuf {
    locks.join(format!("{PREFIX}parked-{k}@{host}.lock"))
}

/// Move a parked lock file of `host` to `to` (this writer's new name); whether one was
/// there to take. Slots fill from the first, so an empty one ends the search: where
/// nothing is ever parked (NFS has no `RENAME_NOREPLACE`), a writer pays one failed
/// rename.
///
/// The slots' names are known to every member of the cache's group: what was renamed must
/// be a plain file (not a symbolic link to a FIFO, which an open would wait on), or it is
/// removed and the search goes on.
fn claim_parked(locks: &Path, host: &str, to: &Path) -> bool {
    for k in 0..PARKED_SLOTS {
        match std::fs::rename(parked_path(locks, k, host), to) {
            Ok(()) if std::fs::symlink_metadata(to).is_ok_and(|m| m.file_type().is_file()) => {
                return true;
            }
            Ok(()) => {
                // A directory goes only if empty; whatever stays now holds this writer's
                // name, which it then leaves for a new one (`token`).
                if std::fs::remove_file(to).is_err() {
                    let _ = std::fs::remove_dir(to);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(_) => {}
        }
    }
    false
}

/// Park the lock file at `from` (held by this process, which is done writing) in a free
/// slot of `host`'s; false when none is free or the rename cannot be made without
/// replacing (a file system without `RENAME_NOREPLACE`).
fn park(locks: &Path, host: &str, from: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(from) = std::ffi::CString::new(from.as_os_str().as_bytes()) else {
        return false;
    };
    for k in 0..PARKED_SLOTS {
        let Ok(to) = std::ffi::CString::new(parked_path(locks, k, host).as_os_str().as_bytes())
        else {
            return false;
        };
        // SAFETY: two NUL-terminated paths that live across the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return true;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return false;
        }
    }
    false
}

struct Held {
    pid: u32,
    locks: PathBuf,
    host: String,
    token: String,
    /// The lock file was a parked one: this host's writers recycle files here (a local
    /// filesystem with `RENAME_NOREPLACE`, a writer not long ago).
    recycled: bool,
    _guard: LockGuard,
}

/// The writer locks this process holds, one per cache (`locks/` directory).
static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

/// Attempts to make a writer lock in this process, so that two threads making one at the
/// same instant (`add_many` stages on several) never pick the same name: one would wait
/// for the other's exclusive lock until its lock timeout.
static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The token (`<pid>-<salt>`) of this process's writer lock in `locks`, taking the lock
/// first if this process holds none there, and whether its file was a parked one
/// ([`Held::recycled`]); `None` when it cannot be taken.
///
/// `HELD` is entered only inside [`crate::fork::gate`] (a child made by `fork` while
/// another thread is in here must find it free), and the lock is taken outside it (taking
/// a lock enters the gate itself, and the gate does not nest).
pub(super) fn token(locks: &Path, opts: &LockOptions, host: &str) -> Option<(String, bool)> {
    let pid = std::process::id();
    let (found, inherited) = crate::fork::gate(|| {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        // A forked child lets go of what it inherited (the parent keeps its lock):
        // dropped outside the gate, below.
        let inherited: Vec<Held> = held.extract_if(.., |h| h.pid != pid).collect();
        let found = held
            .iter()
            .find(|h| h.locks == locks)
            .map(|h| (h.token.clone(), h.recycled));
        (found, inherited)
    });
    drop(inherited);
    if found.is_some() {
        return found;
    }
    // No `locks/` (yet): the lock file cannot be made, and the first attempt says so.
    let opts = LockOptions {
        on_wait: None,
        ..opts.clone()
    };
    for attempt in 0..4u32 {
        let nth = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let salt = crate::format::digest::Digest::of(
            format!("{pid}-{attempt}-{nth}-{:?}", std::time::SystemTime::now()).as_bytes(),
        );
        let token = format!("{pid}-{}", &salt.hex()[..12]);
        let path = lock_path(locks, &token, host);
        let claimed = attempt == 0 && claim_parked(locks, host, &path);
        if !claimed && std::fs::symlink_metadata(&path).is_ok() {
            // What a slot held (not a plain file, and not removable: a directory with
            // something in it) now has this name: take another.
            continue;
        }
        let guard = if claimed {
            let at_once = LockOptions {
                timeout: std::time::Duration::ZERO,
                ..opts.clone()
            };
            match lock::lock(&path, Mode::Exclusive, &at_once) {
                Ok(g) => g,
                Err(_) => continue, // still held (see the protocol): gc takes it
            }
        } else {
            lock::lock(&path, Mode::Exclusive, &opts).ok()?
        };
        if guard.still_at_path() {
            // Another thread of this process may have taken one meanwhile: use the first.
            let held = Held {
                pid,
                locks: locks.to_path_buf(),
                host: host.to_string(),
                token: token.clone(),
                recycled: claimed,
                _guard: guard,
            };
            let (chosen, spare) = crate::fork::gate(|| {
                let mut all = HELD.lock().unwrap_or_else(|p| p.into_inner());
                match all.iter().find(|h| h.pid == pid && h.locks == locks) {
                    Some(h) => ((h.token.clone(), h.recycled), Some(held)),
                    None => {
                        all.push(held);
                        ((token, claimed), None)
                    }
                }
            });
            if let Some(spare) = spare {
                let _ = std::fs::remove_file(spare._guard.path());
            }
            return Some(chosen);
        }
    }
    None
}

/// Done writing: park this process's writer lock files for the next writer on this host,
/// or remove them where no slot is free (each while still holding it), and let the locks
/// go, so that a command leaves none of its own behind. For a process about to end (the
/// command line calls it once its command has finished, and on a signal after removing
/// its unfinished files); a later write takes a new lock. Never waits: if another thread
/// is in the list just now, nothing is removed (gc will).
pub fn release_all() {
    let pid = std::process::id();
    let taken: Vec<Held> = crate::fork::gate(|| match HELD.try_lock() {
        Ok(mut held) => held.drain(..).collect(),
        Err(_) => Vec::new(),
    });
    // Outside the gate: letting a lock go unregisters its descriptor, through the gate.
    for h in taken {
        if h.pid == pid && !park(&h.locks, &h.host, h._guard.path()) {
            let _ = std::fs::remove_file(h._guard.path());
        }
    }
}

/// The lock file of the writer `token` on `host`.
fn lock_path(locks: &Path, token: &str, host: &str) -> PathBuf {
    locks.join(format!("{PREFIX}{token}@{host}.lock"))
}

/// The writer lock a `tmp/` file's name (`<prefix><token>.<n>@<host>`) names, if any.
pub(super) fn lock_of(locks: &Path, tmp_name: &str) -> Option<PathBuf> {
    let (body, host) = tmp_name.rsplit_once('@')?;
    let (front, n) = body.rsplit_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let token = front.split_once('-').map(|(_, t)| t)?;
    let (pid, salt) = token.split_once('-')?;
    if pid.parse::<u32>().is_err() || salt.is_empty() {
        return None;
    }
    Some(lock_path(locks, token, host))
}

/// Whether the writer whose lock file is `path` may still be writing (its lock is held,
/// or cannot be tested).
pub(super) fn is_live(path: &Path, kind: Kind) -> bool {
    !matches!(lock::is_held(path, kind), Ok(None) | Ok(Some(false)))
}

/// Remove the writer locks in `locks` whose writers are dead and that no name in
/// `named` (the writer locks `tmp/` files still name) refers to; returns how many went.
pub(super) fn remove_dead(locks: &Path, named: &[PathBuf], kind: Kind) -> usize {
    let Ok(rd) = std::fs::read_dir(locks) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
        .map(|e| e.path())
        .filter(|p| !named.contains(p))
        .filter(|p| lock::remove_if_free(p, kind).unwrap_or(false))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tmp_name_leads_to_its_writer_lock_and_old_names_to_none() {
        let locks = Path::new("/c/v1/locks");
        assert_eq!(
            lock_of(locks, "ingest-42-0123456789ab.7@node-1.lab"),
            Some(locks.join("writer-42-0123456789ab@node-1.lab.lock"))
        );
        assert_eq!(lock_of(locks, "ingest-42-0123456789ab@node1"), None);
        assert_eq!(lock_of(locks, "delete-42-0123456789ab@node1"), None);
        assert_eq!(lock_of(locks, "ingest-x-abc.1@node1"), None);
    }

    /// Threads of one process asking for its writer lock at the same instant all get the
    /// same one at once: none waits for a lock another thread made (a 30 s bound here,
    /// where the wait was the whole lock timeout).
    #[test]
    fn threads_taking_the_writer_lock_at_once_share_one_without_waiting() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let opts = LockOptions {
                timeout: std::time::Duration::from_secs(30),
                ..LockOptions::default()
            };
            let start = std::time::Instant::now();
            let barrier = std::sync::Barrier::new(8);
            let tokens: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            token(dir.path(), &opts, "h").unwrap().0
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
            let files = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(files, 1, "the spare lock files are removed");
            release_all();
        }
    }

    #[test]
    fn a_held_writer_lock_is_live_and_survives_removal_a_free_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LockOptions::default();
        let token = token(dir.path(), &opts, "h").unwrap().0;
        let path = lock_path(dir.path(), &token, "h");
        assert!(is_live(&path, Kind::Ofd));
        assert_eq!(remove_dead(dir.path(), &[], Kind::Ofd), 0);
        assert!(path.exists());
        // Another file, locked by nobody, goes; a missing one is dead.
        let other = lock_path(dir.path(), "1-abc", "h");
        std::fs::write(&other, b"").unwrap();
        assert!(!is_live(&other, Kind::Ofd));
        assert_eq!(
            remove_dead(dir.path(), std::slice::from_ref(&path), Kind::Ofd),
            1
        );
        assert!(!other.exists() && !is_live(&other, Kind::Ofd));
    }

    /// With `SREGISTRY_LOCK=flock` the writer lock is a `flock`, tested the same way.
    #[test]
    fn a_flock_writer_lock_is_live_too() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LockOptions {
            kind: Kind::Flock,
            ..LockOptions::default()
        };
        let token = token(dir.path(), &opts, "h").unwrap().0;
        let path = lock_path(dir.path(), &token, "h");
        assert!(is_live(&path, Kind::Flock));
        assert_eq!(remove_dead(dir.path(), &[], Kind::Flock), 0);
        assert!(path.exists());
    }

    fn ino(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    }

    /// A command's writer lock file outlives it, parked, and the next writer on the host
    /// takes that very file (no new inode) under a name of its own; gc still removes a
    /// parked file, which no `tmp/` file names.
    #[test]
    fn the_next_writer_takes_the_parked_lock_file_instead_of_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LockOptions::default();
        let first = token(dir.path(), &opts, "h").unwrap().0;
        let inode = ino(&lock_path(dir.path(), &first, "h"));
        release_all();
        let parked = parked_path(dir.path(), 0, "h");
        assert_eq!(ino(&parked), inode, "parked, not removed");
        assert!(!is_live(&parked, Kind::Ofd), "parked files are let go");
        let second = token(dir.path(), &opts, "h").unwrap().0;
        assert_ne!(
            first, second,
            "a name of its own: its tmp/ files never meet the last one's"
        );
        let path = lock_path(dir.path(), &second, "h");
        assert_eq!(ino(&path), inode);
        assert!(is_live(&path, Kind::Ofd) && !parked.exists());
        // Another host's writers do not take it.
        release_all();
        let other = token(dir.path(), &opts, "g").unwrap().0;
        assert_ne!(ino(&lock_path(dir.path(), &other, "g")), inode);
        release_all();
        assert_eq!(
            remove_dead(dir.path(), &[], Kind::Ofd),
            2,
            "gc takes parked files"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A parked file still locked by someone (a child its last owner forked without
    /// `exec` keeps the lock) is not waited for: the writer makes a new file at once.
    #[test]
    fn a_parked_lock_file_someone_still_holds_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LockOptions {
            timeout: std::time::Duration::from_secs(30),
            ..LockOptions::default()
        };
        let parked = parked_path(dir.path(), 0, "h");
        std::fs::write(&parked, b"").unwrap();
        let inode = ino(&parked);
        let holder = lock::lock(&parked, Mode::Exclusive, &opts).unwrap();
        let start = std::time::Instant::now();
        let t = token(dir.path(), &opts, "h").unwrap().0;
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert_ne!(ino(&lock_path(dir.path(), &t, "h")), inode);
        drop(holder);
        release_all();
    }

    /// Take the writer lock of host `h` in `locks`: it is a plain file, held; its path.
    fn own_plain_lock(locks: &Path) -> PathBuf {
        let t = token(locks, &LockOptions::default(), "h")
            .expect("a writer lock")
            .0;
        let path = lock_path(locks, &t, "h");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_file()
        );
        assert!(is_live(&path, Kind::Ofd));
        path
    }

    /// A member of the group can put anything at a slot's known name: a symbolic link
    /// (here to a FIFO, which an open would wait on forever) is thrown away, not opened.
    #[test]
    fn a_parking_slot_holding_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        std::os::unix::fs::symlink(&fifo, parked_path(dir.path(), 0, "h")).unwrap();
        own_plain_lock(dir.path());
        assert!(!parked_path(dir.path(), 0, "h").exists());
        release_all();
    }

    /// A directory planted at a slot (any member of the group can make one) left the
    /// writer with no lock at all: it took the directory's new name as its lock file,
    /// could not open it, and wrote unprotected, so a gc removed its staged file under it
    /// (found by a hostile test). It now takes a lock under a name of its own.
    #[test]
    fn a_parking_slot_holding_a_directory_leaves_the_writer_a_lock_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let planted = parked_path(dir.path(), 0, "h");
        std::fs::create_dir(&planted).unwrap();
        std::fs::write(planted.join("inside"), b"").unwrap();
        own_plain_lock(dir.path());
        release_all();
        // An empty one is removed.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(parked_path(dir.path(), 0, "h")).unwrap();
        let t = token(dir.path(), &LockOptions::default(), "h")
            .expect("a writer lock")
            .0;
        assert!(is_live(&lock_path(dir.path(), &t, "h"), Kind::Ofd));
        let dirs = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .count();
        assert_eq!(dirs, 0);
        release_all();
    }

    /// With every slot taken, a command's lock file is removed as before.
    #[test]
    fn with_every_parking_slot_taken_the_lock_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..PARKED_SLOTS {
            std::fs::write(parked_path(dir.path(), k, "h"), b"").unwrap();
        }
        // The writer takes one of them, and parks it again: all slots full once more.
        let t = token(dir.path(), &LockOptions::default(), "h").unwrap().0;
        std::fs::write(parked_path(dir.path(), 0, "h"), b"").unwrap();
        let path = lock_path(dir.path(), &t, "h");
        release_all();
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            PARKED_SLOTS as usize
        );
    }
}
