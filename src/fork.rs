//! What a child made by `fork` inherits from the library, and how it lets go of it.
//!
//! # Protocol
//!
//! A program that embeds the library (the Python package, a Rust program) may call
//! `fork` while other threads are inside it: `multiprocessing`, or `os.fork` with children
//! that never touch sregistry. The child gets a copy of every descriptor and of all memory,
//! but only the forking thread. Two kinds of state would hurt it, and others:
//!
//! * **Descriptors that carry a lock of ours** (`index.lock`, a per-pull lock, the fences
//!   on `index.redb` and `index.journal`; see [`crate::cache::lock`]). An OFD or `flock`
//!   lock belongs to the open file description, which lives until its *last* descriptor
//!   closes: a child holding a copy would keep the lock for as long as it lives if its
//!   parent closed without unlocking or died (every other process, on every node, then
//!   waits on the cache), and a child that uses the cache would wait on its own copy. So
//!   the lock module unlocks explicitly before it closes (the parent's unlock releases the
//!   lock whatever copies exist), and every such descriptor is registered here while open
//!   ([`Registration`]). The child handler puts `/dev/null` over each registered descriptor
//!   (`dup3`): the child's copy of the description is closed, *not unlocked* (an unlock
//!   through the child's copy would release the parent's lock), and the number stays
//!   taken, so whoever owned it in the parent (only the forking thread runs on in the
//!   child) closes `/dev/null` rather than a descriptor the child opened since.
//!   Every descriptor of `index.redb` is registered too, a reader's (which carries no
//!   lock) included: a child has no use for the parent's. Descriptors are opened
//!   `O_CLOEXEC` (std does so always), so a program `exec`ed by a child keeps none of
//!   them either.
//!   A descriptor is registered in the same gated step that opens it ([`open`]), so no
//!   fork falls between the two.
//! * **In-process locks.** A mutex held by another thread at the instant of the fork stays
//!   held in the child for ever. Every critical section of the library's process-wide
//!   mutexes (this registry, the list of unfinished `tmp/` files, the runtime of
//!   `remote::runtime` and the HTTP clients of `remote::transport`, the host name cache) runs inside [`gate`], a shared hold
//!   on one read-write lock; a `fork` handler takes it exclusively before the fork (so no
//!   thread is inside any of them at that instant) and the parent and the child each
//!   release it after. Sections inside the gate are short, never wait for a lock file or
//!   another thread, never call back into the embedding program, and never nest.
//!
//! The handlers are installed with `pthread_atfork` the first time the gate is used; a
//! fork before that has nothing of ours to hand down.

use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockWriteGuard};

/// Shared by every critical section of a process-wide mutex; exclusive across a fork.
static GATE: RwLock<()> = RwLock::new(());

/// Descriptors that carry (or may carry) a lock of ours, open now.
static REGISTERED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Forks this process descends from since the handlers were installed (see [`generation`]).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The gate held exclusively between the prepare handler and the parent or child
/// handler. Only the forking thread touches it, while it holds the gate: concurrent
/// forks take turns on the gate itself.
struct Held(UnsafeCell<Option<RwLockWriteGuard<'static, ()>>>);
// SAFETY: accessed only by the thread that holds `GATE` exclusively (see above).
unsafe impl Sync for Held {}
static HELD: Held = Held(UnsafeCell::new(None));

/// Run `f`, a short critical section of a process-wide mutex, so that no `fork` happens
/// while it runs. `f` must not call `gate` again, nor wait for anything but that mutex.
pub(crate) fn gate<T>(f: impl FnOnce() -> T) -> T {
    install();
    let _shared = GATE.read().unwrap_or_else(|p| p.into_inner());
    f()
}

fn install() {
    if INSTALLED.load(Ordering::Acquire) || INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the handlers are `extern "C"` functions without arguments that live as long
    // as the program; pthread_atfork is thread-safe.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(after_in_parent), Some(after_in_child));
    }
}

extern "C" fn prepare() {
    let held = GATE.write().unwrap_or_else(|p| p.into_inner());
    // SAFETY: this thread now holds the gate exclusively (see `Held`).
    unsafe { *HELD.0.get() = Some(held) };
}

extern "C" fn after_in_parent() {
    // SAFETY: called on the thread that ran `prepare`, which holds the gate.
    drop(unsafe { (*HELD.0.get()).take() });
}

extern "C" fn after_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
    {
        // Nobody else is in the child; the mutex was free at the fork (gated).
        let mut fds = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: open, dup3 and close are async-signal-safe; `fds` are descriptors of
        // this process (copied by the fork) and `null` is one we just opened.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            for &fd in fds.iter() {
                if null < 0 || libc::dup3(null, fd, libc::O_CLOEXEC) < 0 {
                    // Without /dev/null, closing is the next best way to let go.
                    libc::close(fd);
                }
            }
            if null >= 0 {
                libc::close(null);
            }
        }
        // Forgotten, not unregistered one by one: their owners are threads the child
        // does not have, or the forking thread, whose later drop finds nothing to remove.
        fds.clear();
    }
    // SAFETY: the child's only thread is the copy of the one that ran `prepare`.
    drop(unsafe { (*HELD.0.get()).take() });
}

/// A number that changes in a child made by `fork`: equal to one read earlier means the
/// same process (without a system call, as `getpid` is one). It installs the handlers
/// that count, so a value read here is compared with later ones.
pub(crate) fn generation() -> u64 {
    install();
    FORKS.load(Ordering::Relaxed)
}

/// A descriptor that carries, or may come to carry, a lock of ours: registered while this
/// value lives, so that a child made by `fork` lets go of its copy. Made by [`open`]
/// together with the descriptor; drop it before the descriptor is closed.
#[derive(Debug)]
pub(crate) struct Registration(RawFd);

/// Open a descriptor with `open` and register it, with no fork in between: a lock taken
/// later on a descriptor that a child got unregistered would be the child's too.
pub(crate) fn open<F: AsRawFd, E>(
    open: impl FnOnce() -> Result<F, E>,
) -> Result<(F, Registration), E> {
    gate(|| {
        let f = open()?;
        let fd = f.as_raw_fd();
        REGISTERED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fd);
        Ok((f, Registration(fd)))
    })
}

impl Drop for Registration {
    fn drop(&mut self) {
        let fd = self.0;
        gate(|| {
            let mut v = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = v.iter().rposition(|&f| f == fd) {
                v.swap_remove(i);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_fork_while_other_threads_are_inside_the_gate_leaves_the_child_free_to_enter_it() {
        // Threads register and unregister descriptors without a pause (each a pass
        // through the registry's mutex) while this thread forks; every child must be able
        // to take that mutex itself at once. A child that found it held by a thread it
        // does not have would hang for ever.
        let stop = Arc::new(AtomicBool::new(false));
        let busy: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let opened = open(|| std::fs::File::open("/dev/null"));
                        drop(opened);
                    }
                })
            })
            .collect();
        let mut hung = None;
        for n in 1..=200 {
            // SAFETY: the child runs the library's registry code (what a forked Python
            // child does), then leaves with _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let ok = open(|| std::fs::File::open("/dev/null")).is_ok();
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            // A bounded wait: a child that hangs (in the fork handler itself, which takes
            // the registry's mutex) is killed and counted.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut status = 0;
            loop {
                // SAFETY: our own child.
                if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    // SAFETY: our own child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, &mut status, 0);
                    }
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                hung = Some(n);
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in busy {
            t.join().unwrap();
        }
        assert_eq!(hung, None, "a child hung on a mutex it inherited held");
    }
}
