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
//! A command that ends normally removes its writer lock files itself ([`release_all`],
//! called by the command line after the command and on SIGINT, SIGTERM and SIGHUP),
//! so only a killed process leaves one for gc.
//!
//! A process that cannot take a writer lock (no `locks/` yet, a cache it may only read)
//! names its files without one; gc gives those the grace period only.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::lock::{self, Kind, LockGuard, LockOptions, Mode};

/// Prefix of writer lock files in `locks/`.
pub(super) const PREFIX: &str = "writer-";

struct Held {
    pid: u32,
    locks: PathBuf,
    token: String,
    _guard: LockGuard,
}

/// The writer locks this process holds, one per cache (`locks/` directory).
static HELD: Mutex<Vec<Held>> = Mutex::new(Vec::new());

/// Attempts to make a writer lock in this process, so that two threads making one at the
/// same instant (`add_many` stages on several) never pick the same name: one would wait
/// for the other's exclusive lock until its lock timeout.
static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The token (`<pid>-<salt>`) of this process's writer lock in `locks`, taking the lock
/// first if this process holds none there; `None` when it cannot be taken.
///
/// `HELD` is entered only inside [`crate::fork::gate`] (a child made by `fork` while
/// another thread is in here must find it free), and the lock is taken outside it (taking
/// a lock enters the gate itself, and the gate does not nest).
pub(super) fn token(locks: &Path, opts: &LockOptions, host: &str) -> Option<String> {
    let pid = std::process::id();
    let (found, inherited) = crate::fork::gate(|| {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        // A forked child lets go of what it inherited (the parent keeps its lock):
        // dropped outside the gate, below.
        let inherited: Vec<Held> = held.extract_if(.., |h| h.pid != pid).collect();
        let found = held
            .iter()
            .find(|h| h.locks == locks)
            .map(|h| h.token.clone());
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
        let guard = lock::lock(&lock_path(locks, &token, host), Mode::Exclusive, &opts).ok()?;
        if guard.still_at_path() {
            // Another thread of this process may have taken one meanwhile: use the first.
            let held = Held {
                pid,
                locks: locks.to_path_buf(),
                token: token.clone(),
                _guard: guard,
            };
            let (chosen, spare) = crate::fork::gate(|| {
                let mut all = HELD.lock().unwrap_or_else(|p| p.into_inner());
                match all.iter().find(|h| h.pid == pid && h.locks == locks) {
                    Some(h) => (h.token.clone(), Some(held)),
                    None => {
                        all.push(held);
                        (token, None)
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

/// Done writing: remove this process's writer lock files (each while still holding it)
/// and let the locks go, so that a command leaves none behind. For a process about to
/// end (the command line calls it once its command has finished, and on a signal after
/// removing its unfinished files); a later write takes a new lock. Never waits: if
/// another thread is in the list just now, nothing is removed (gc will).
pub fn release_all() {
    let pid = std::process::id();
    let taken: Vec<Held> = crate::fork::gate(|| match HELD.try_lock() {
        Ok(mut held) => held.drain(..).collect(),
        Err(_) => Vec::new(),
    });
    // Outside the gate: letting a lock go unregisters its descriptor, through the gate.
    for h in taken {
        if h.pid == pid {
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
                            token(dir.path(), &opts, "h").unwrap()
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
        let token = token(dir.path(), &opts, "h").unwrap();
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
        let token = token(dir.path(), &opts, "h").unwrap();
        let path = lock_path(dir.path(), &token, "h");
        assert!(is_live(&path, Kind::Flock));
        assert_eq!(remove_dead(dir.path(), &[], Kind::Flock), 0);
        assert!(path.exists());
    }
}
