//! The one tokio runtime of a process, shared by every remote call (a child made by
//! `fork` makes its own: see `PerProcess`, which keeps the HTTP clients of
//! [`super::transport`] per process too). It imports nothing of `remote/` but the error.
//!
//! The library's remote API is blocking, so that the command line, a Python binding and
//! a plain Rust program can call it alike. Each call ships its work, as a `Send +
//! 'static` future, to a runtime that runs on threads of its own for the life of the
//! process (started at the first remote call), and waits for the answer on a channel.
//! The caller's thread never runs a runtime itself, so a caller that already runs tokio
//! can call in too (from async code, through `spawn_blocking`, as any blocking call), and
//! nothing builds a runtime per call. The HTTP client (connection pool, TLS roots) is
//! made once by the transport and cloned (a handle) into each
//! [`super::transport::Transport`], always used from this runtime. A panic inside the work (a bug, here or in a library it calls) is
//! caught on the runtime and answered as [`RemoteError::Panicked`] with its message; the
//! runtime goes on serving other calls.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;

use super::error::RemoteError;

/// Something made once per process: kept with the id of the process that made it. A
/// child made by `fork` (a Python program's `multiprocessing`, say) inherits the parent's
/// memory but none of its threads: the parent's runtime would never run the child's work,
/// and the parent's connections are not the child's to use. So a child makes its own. The
/// mutex is held only inside [`crate::fork::gate`], so no fork finds it held by a thread
/// the child does not have.
pub(super) struct PerProcess<T>(Mutex<Option<(u32, T)>>);

impl<T: Clone> PerProcess<T> {
    pub(super) const fn new() -> Self {
        PerProcess(Mutex::new(None))
    }

    pub(super) fn get_or_make(&self, make: impl FnOnce() -> T) -> T {
        crate::fork::gate(|| self.get_or_make_gated(make))
    }

    fn get_or_make_gated(&self, make: impl FnOnce() -> T) -> T {
        let pid = std::process::id();
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*held {
            Some((p, v)) if *p == pid => v.clone(),
            _ => {
                let v = make();
                // The parent's value (its runtime's threads are not in this process) is
                // forgotten, not dropped: dropping a runtime waits for its threads.
                if let Some(old) = held.replace((pid, v.clone())) {
                    std::mem::forget(old);
                }
                v
            }
        }
    }
}

/// The runtime's handle, or why it could not start (kept, so every call says so).
static RUNTIME: PerProcess<Result<tokio::runtime::Handle, String>> = PerProcess::new();

fn handle() -> Result<tokio::runtime::Handle, RemoteError> {
    let started = RUNTIME.get_or_make(|| {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("sregistry-remote")
            .enable_all()
            .build()
            .map(|rt| {
                let handle = rt.handle().clone();
                // The runtime lives as long as the process: its worker threads are
                // detached, and dropping it here would shut them down.
                std::mem::forget(rt);
                handle
            })
            .map_err(|e| e.to_string())
    });
    started.map_err(|e| RemoteError::Io {
        path: PathBuf::from("(tokio runtime)"),
        source: std::io::Error::other(e),
    })
}

/// Run `work` on the shared runtime and wait for its result.
///
/// Called on one of the runtime's own threads (a progress hook runs there, and an
/// embedding program's hook may call into the library again: a Python callback that pulls
/// another remote), the wait is made with [`tokio::task::block_in_place`]: the thread
/// hands its queue of tasks to a new worker before it blocks, so the work is spawned onto
/// the shared queue and runs, and the runtime keeps its number of workers. Spawned from a
/// worker and waited for there, the work would sit in that worker's own slot, which no
/// other worker takes, for ever.
pub(super) fn run<T: Send + 'static>(
    work: impl Future<Output = Result<T, RemoteError>> + Send + 'static,
) -> Result<T, RemoteError> {
    let handle = handle()?;
    let on_ours = tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == handle.id());
    if on_ours {
        tokio::task::block_in_place(|| spawn_and_wait(&handle, work))
    } else {
        spawn_and_wait(&handle, work)
    }
}

fn spawn_and_wait<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    work: impl Future<Output = Result<T, RemoteError>> + Send + 'static,
) -> Result<T, RemoteError> {
    use futures_util::FutureExt;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        // A panic inside the work (a bug here or in a library it calls) is its answer
        // too, said as what it is.
        let answer = std::panic::AssertUnwindSafe(work)
            .catch_unwind()
            .await
            .unwrap_or_else(|payload| {
                Err(RemoteError::Panicked {
                    detail: panic_message(payload.as_ref()),
                })
            });
        let _ = tx.send(answer);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(RemoteError::Panicked {
            detail: "the remote operation ended without an answer".into(),
        })
    })
}

/// The text a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn calls_reuse_one_runtime_and_work_from_inside_another() {
        let first = run(async { Ok(tokio::runtime::Handle::current().id()) }).unwrap();
        let second = run(async { Ok(tokio::runtime::Handle::current().id()) }).unwrap();
        assert_eq!(first, second, "a runtime per call");
        // A caller that runs tokio itself (here, a current-thread runtime of its own).
        let outer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let inner = outer.block_on(async {
            tokio::task::spawn_blocking(|| {
                run(async { Ok(tokio::runtime::Handle::current().id()) })
            })
            .await
            .unwrap()
        });
        assert_eq!(inner.unwrap(), first);
        // Even called straight from async code, it answers (it blocks that thread).
        let direct = outer.block_on(async { run(async { Ok(41 + 1) }) }).unwrap();
        assert_eq!(direct, 42);
    }

    #[test]
    fn a_panicking_remote_operation_is_reported_as_a_bug_not_as_a_lost_answer() {
        let err = run::<()>(async { panic!("request valid: InvalidUri") })
            .expect_err("a panic answered Ok");
        let text = err.to_string();
        assert!(matches!(err, RemoteError::Panicked { .. }), "{err:?}");
        assert!(text.contains("request valid: InvalidUri"), "{text}");
        assert!(text.contains("this is a bug"), "{text}");
        assert!(!text.contains("tokio runtime"), "{text}");
        // The runtime is still there for the next call.
        assert_eq!(run(async { Ok(7) }).unwrap(), 7);
    }

    #[test]
    fn a_call_from_inside_the_runtimes_own_work_answers() {
        // What a progress hook that pulls does: `run` from a task of the runtime itself,
        // nested deeper than it has workers, each level blocking its worker thread.
        fn nest(depth: u32) -> Result<u32, RemoteError> {
            if depth == 0 {
                return Ok(0);
            }
            run(async move { nest(depth - 1).map(|d| d + 1) })
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(nest(8)));
        let got = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a nested call never answered");
        assert_eq!(got.unwrap(), 8);
    }
}
