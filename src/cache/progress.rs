//! The one progress type: how a long task advances, for a caller that shows it (the
//! command line's bar, a Python callback). The library prints nothing.
//!
//! Every task reports through [`Progress`], in bytes or files done of a total: a pull's
//! download and an `oras://` upload (the remotes), an `add`'s copy ([`super::AddOptions`]),
//! verify's hashing and gc's removals (the maintenance tasks). A task calls
//! [`Progress::start`] before its first [`Progress::advance`] (a download again when it
//! resumes), asks [`Progress::stop`] after each advance, and calls [`Progress::finish`]
//! when it is over (done or failed). What stopping leaves is the task's to say. [`ProgressFn`] makes one
//! from a single function told `(done, total)`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How a task advances.
pub trait Progress: Send + Sync {
    /// A task starts (or a download resumes at `at` bytes); `total` is its size when
    /// known.
    fn start(&self, total: Option<u64>, at: u64);
    /// `done` bytes (or files) are done. A task that runs on several threads may tell it
    /// from any of them.
    fn advance(&self, done: u64);
    /// The task is over (done or failed).
    fn finish(&self);
    /// Nothing has come for a few seconds: `what` says what is awaited ("an answer from
    /// `URL`"). Told once per wait.
    fn waiting(&self, what: &str) {
        let _ = what;
    }
    /// Asked after each [`Progress::advance`]: true stops the task (a download with the
    /// remotes' `Stopped` error and nothing stored, an upload before a manifest names it;
    /// the others say what stopping leaves). An
    /// embedding program's progress callback failed, or its user cancelled.
    fn stop(&self) -> bool {
        false
    }
}

/// A shared [`Progress`] receiver, as the options of every task hold it.
#[derive(Clone)]
pub struct ProgressHook(pub Arc<dyn Progress>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook(..)")
    }
}

/// The function behind a [`ProgressFn`]: told `(done, total)` at each advance; false asks
/// the task to stop.
pub type ProgressFnBody = dyn Fn(u64, Option<u64>) -> bool + Send + Sync;

/// A [`Progress`] made of one function, told `(done, total)` at each advance (`total` as
/// the task's start gave it); once it answered false, [`Progress::stop`] is true.
pub struct ProgressFn {
    f: Arc<ProgressFnBody>,
    total: Mutex<Option<u64>>,
    stopped: AtomicBool,
}

impl ProgressFn {
    /// A hook that tells `f`.
    pub fn hook(f: Arc<ProgressFnBody>) -> ProgressHook {
        ProgressHook(Arc::new(ProgressFn {
            f,
            total: Mutex::new(None),
            stopped: AtomicBool::new(false),
        }))
    }
}

impl Progress for ProgressFn {
    fn start(&self, total: Option<u64>, _at: u64) {
        *self.total.lock().unwrap_or_else(|p| p.into_inner()) = total;
    }
    fn advance(&self, done: u64) {
        let total = *self.total.lock().unwrap_or_else(|p| p.into_inner());
        if !(self.f)(done, total) {
            self.stopped.store(true, Ordering::Relaxed);
        }
    }
    fn finish(&self) {}
    fn stop(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a [`ProgressFn`] was told, call by call.
    type Told = Vec<(u64, Option<u64>)>;

    #[test]
    fn a_progress_fn_is_told_done_of_the_started_total_and_stops_once_it_said_so() {
        let seen: Arc<Mutex<Told>> = Arc::default();
        let log = seen.clone();
        let hook = ProgressFn::hook(Arc::new(move |done, total| {
            log.lock().unwrap().push((done, total));
            done < 2
        }));
        hook.0.start(Some(3), 0);
        hook.0.advance(1);
        assert!(!hook.0.stop());
        hook.0.advance(2);
        assert!(hook.0.stop());
        hook.0.finish();
        assert_eq!(*seen.lock().unwrap(), [(1, Some(3)), (2, Some(3))]);
    }

    /// The danger: an add whose progress never reaches the whole size, or one stopped by
    /// its progress that still stores or names its content or leaves a file in `tmp/`
    /// (the Python API's `add(progress=...)` relies on both), on the plain copy and on the
    /// pipelined one.
    #[test]
    fn an_add_tells_its_copy_up_to_the_size_and_one_stopped_stores_nothing() {
        use crate::cache::lock::LockOptions;
        use crate::cache::{AddOptions, Cache};
        use crate::format::reference::Reference;
        for size in [200usize << 10, 24 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let cache = Cache::open(&dir.path().join("c"), LockOptions::default()).unwrap();
            let file = dir.path().join("a.img");
            std::fs::write(
                &file,
                (0..size).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
            )
            .unwrap();
            let seen: Arc<Mutex<Told>> = Arc::default();
            let log = seen.clone();
            let opts = AddOptions {
                progress: Some(ProgressFn::hook(Arc::new(move |done, total| {
                    log.lock().unwrap().push((done, total));
                    true
                }))),
                ..AddOptions::default()
            };
            let name = Reference::parse("lab/p:1").unwrap();
            cache.add(&file, &name, &opts).unwrap();
            let seen = seen.lock().unwrap().clone();
            let size = size as u64;
            assert_eq!(seen.last(), Some(&(size, Some(size))), "{seen:?}");
            assert!(seen.iter().all(|&(_, t)| t == Some(size)), "{seen:?}");

            std::fs::write(&file, vec![7u8; size as usize]).unwrap();
            let opts = AddOptions {
                progress: Some(ProgressFn::hook(Arc::new(|_, _| false))),
                ..AddOptions::default()
            };
            let other = Reference::parse("lab/q:1").unwrap();
            assert!(cache.add(&file, &other, &opts).is_err());
            assert!(
                cache.get(&other).is_err(),
                "a stopped add named its content"
            );
            let left: Vec<_> = std::fs::read_dir(cache.tmp_dir())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| !n.to_string_lossy().starts_with('.'))
                .collect();
            assert!(left.is_empty(), "a stopped add left {left:?} in tmp/");
            assert_eq!(cache.blobs_on_disk().unwrap().len(), 1);
        }
    }
}
