//! `sregistry._native`: the sregistry library as a Python extension.
//!
//! A thin layer: each method parses its arguments into the library's types, releases the
//! GIL while the library does the work (so other Python threads run, and threads pull in
//! parallel), and turns the answer or the error into Python objects. The exception classes
//! are defined in Python (`sregistry/_errors.py`, where `NotFound` can also be a
//! `KeyError`); [`raise`] looks them up by name.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyType};

use sregistry::cache::limits::Limits;
use sregistry::cache::lock::LockOptions;
use sregistry::cache::{
    AddItem, AddOptions, CacheError, DEFAULT_ADD_BATCH, Entry, ProgressFn, Repoint,
};
use sregistry::format::sif;
use sregistry::format::units::{self, UnitError};
use sregistry::maintain::{gc, verify};
use sregistry::remote::{self, Progress, ProgressHook, RemoteError, RemoteOptions, RemoteRef};
use sregistry::{Cache, ErrorKind, Reference};

// ---------------------------------------------------------------------------------------
// Errors

/// The Python exception class of each kind of library error (`sregistry/_errors.py`): one
/// exhaustive match, so that a new kind is a compile error here until someone decides
/// which class it raises. The classes never contradict the command line's exit codes
/// (`src/cli/exit.rs`): `NotFound` is exit code 3, `InvalidName`, `InvalidInput` and
/// `NoSuchFile` exit code 2.
fn class_of(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "NotFound",
        ErrorKind::InvalidName => "InvalidName",
        ErrorKind::InvalidInput | ErrorKind::Insecure => "InvalidInput",
        // The file to add is not there: also a `FileNotFoundError`.
        ErrorKind::NoSuchFile => "NoSuchFile",
        ErrorKind::Pinned => "Pinned",
        ErrorKind::Conflict => "Conflict",
        // Content that does not match, a damaged index, a missing file: `verify` and
        // `doctor` find and mend these.
        ErrorKind::Corrupt | ErrorKind::Damaged => "Corrupt",
        ErrorKind::LockTimeout => "LockTimeout",
        ErrorKind::RemoteRefused | ErrorKind::RemoteFailed | ErrorKind::Unconvertible => {
            "RemoteError"
        }
        ErrorKind::NoSpace
        | ErrorKind::PermissionDenied
        | ErrorKind::Unsupported
        | ErrorKind::Io
        | ErrorKind::Stopped
        | ErrorKind::Reentered
        | ErrorKind::Internal => "Error",
    }
}

/// `{kind name: class}` for every kind of library error (for the tests that hold the
/// mapping to docs/python.md's table).
#[pyfunction]
fn _error_classes(py: Python<'_>) -> PyResult<BTreeMap<&'static str, Bound<'_, PyType>>> {
    let module = py.import("sregistry._errors")?;
    ErrorKind::ALL
        .iter()
        .map(|&k| {
            let class = module.getattr(class_of(k))?.cast_into::<PyType>()?;
            Ok((k.name(), class))
        })
        .collect()
}

/// The files a `move=True` add put into the cache but could not remove from their paths
/// (a directory the caller cannot write, a read-only filesystem): each becomes a
/// `UserWarning` naming it, since the image is in the cache and nothing failed, but the
/// file was copied, not moved.
#[derive(Clone, Default)]
struct KeptFiles(Arc<Mutex<Vec<String>>>);

impl KeptFiles {
    fn hook(&self) -> sregistry::cache::NotRemoved {
        let kept = self.0.clone();
        sregistry::cache::NotRemoved(Arc::new(move |path, why| {
            if let Ok(mut k) = kept.lock() {
                k.push(format!(
                    "`{}` was copied into the cache, not moved: it could not be removed from its path ({why}); remove it yourself",
                    path.display()
                ));
            }
        }))
    }

    /// Issue a warning for each file told so far, and forget them.
    fn warn(&self, py: Python<'_>) -> PyResult<()> {
        let told = match self.0.lock() {
            Ok(mut k) => std::mem::take(&mut *k),
            Err(_) => Vec::new(),
        };
        for msg in told {
            user_warning(py, msg)?;
        }
        Ok(())
    }
}

/// Issue a `UserWarning` carrying `msg`.
fn user_warning(py: Python<'_>, msg: String) -> PyResult<()> {
    let msg = std::ffi::CString::new(msg.replace('\0', ""))
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    PyErr::warn(
        py,
        &py.get_type::<pyo3::exceptions::PyUserWarning>(),
        &msg,
        1,
    )
}

/// An instance of `sregistry._errors.<class>` carrying `message`.
fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    let found = py
        .import("sregistry._errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match found {
        Ok(ty) => PyErr::from_type(ty, message),
        Err(e) => e,
    }
}

fn cache_err(e: CacheError) -> PyErr {
    Python::attach(|py| raise(py, class_of(e.kind()), cache_message(&e)))
}

/// The library's message, with the command line's flags told as the Python arguments
/// that do the same (`--move`: `move=True`, `--force`: `force=True`, `--cache`: `root`).
fn cache_message(e: &CacheError) -> String {
    match e {
        CacheError::PinnedRepoint { name, pinned, new } => format!(
            "image `{name}` is pinned to {pinned}; it was not re-pointed to {new} (pass force=True to add, tag or pull to re-point it, which leaves the old content unprotected, or unpin it first)"
        ),
        CacheError::NoRoot => format!(
            "no cache directory given: set {}, give sregistry.Cache a root, or set HOME",
            sregistry::cache::CACHE_ENV
        ),
        CacheError::MoveSymlink { path } => format!(
            "`{}` is a symbolic link; move=True would move the link, not the image (add it with move=False)",
            path.display()
        ),
        CacheError::MoveFromCache { path, cache } => format!(
            "`{}` is inside the cache `{}`; move=True takes files from outside it (to give a cached image another name, use Cache.tag)",
            path.display(),
            cache.display()
        ),
        _ => e.to_string(),
    }
}

fn remote_err(e: RemoteError) -> PyErr {
    let message = match &e {
        RemoteError::Cache(c) => cache_message(c),
        RemoteError::Insecure { host } => format!(
            "plain HTTP to `{host}` is refused: use https (loopback addresses are allowed; only the command line's --insecure allows others)"
        ),
        _ => e.to_string(),
    };
    Python::attach(|py| raise(py, class_of(e.kind()), message))
}

fn unit_err(e: UnitError) -> PyErr {
    Python::attach(|py| raise(py, class_of(e.kind()), e.to_string()))
}

/// The configuration as the command line reads it (files, then `SREGISTRY_*`), read at
/// each call that needs it, so a change to the environment or a file between calls
/// counts; a fault in it raises the class of its kind (`InvalidInput` for a bad value).
fn config() -> PyResult<Arc<sregistry::settings::Config>> {
    sregistry::settings::current()
        .map_err(|e| Python::attach(|py| raise(py, class_of(e.kind()), e.to_string())))
}

/// A path as `str`, as `Path::display` writes it (the same text: a path that is not
/// UTF-8 gets U+FFFD where its bytes are not), without formatting one that is.
fn path_string(p: PathBuf) -> String {
    p.into_os_string()
        .into_string()
        .unwrap_or_else(|os| Path::new(&os).display().to_string())
}

fn parse_name(s: &str) -> PyResult<Reference> {
    Reference::parse(s).map_err(|e| remote_err(RemoteError::Reference(e)))
}

fn parse_remote(s: &str) -> PyResult<RemoteRef> {
    RemoteRef::parse(s).map_err(remote_err)
}

/// A path argument, taken as `open` takes one: `str`, `bytes`, or an `os.PathLike` of
/// either (bytes are the file name's bytes, whatever their encoding).
fn path_arg(v: &Bound<'_, PyAny>, what: &str) -> PyResult<PathBuf> {
    let py = v.py();
    let fspath = py
        .import("os")?
        .getattr("fspath")?
        .call1((v,))
        .map_err(|e| PyTypeError::new_err(format!("{what}: {}", e.value(py))))?;
    if let Ok(b) = fspath.cast::<PyBytes>() {
        return Ok(PathBuf::from(OsString::from_vec(b.as_bytes().to_vec())));
    }
    fspath.extract()
}

// ---------------------------------------------------------------------------------------
// Progress

/// A Python callable told how a transfer advances: `progress(done, total)`, `total` being
/// `None` when the size is not known. Called with the GIL held, from the library's worker
/// thread, at most once per MiB (and always at the start and at the end). When it raises,
/// the transfer stops, nothing is stored, and the call raises that exception.
struct PyProgress {
    callback: Py<PyAny>,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    total: Option<u64>,
    told: Option<u64>,
    failed: Option<PyErr>,
}

/// Bytes between two calls of a progress callback.
const PROGRESS_STEP: u64 = 1 << 20;

impl PyProgress {
    fn tell(&self, done: u64, force: bool) {
        let total = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let due = force
                || st.total == Some(done)
                || st
                    .told
                    .is_none_or(|t| done.saturating_sub(t) >= PROGRESS_STEP);
            if st.failed.is_some() || !due {
                return;
            }
            st.total
        };
        let outcome = Python::attach(|py| self.callback.call1(py, (done, total)).map(drop));
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.told = Some(done);
        if let Err(e) = outcome {
            st.failed = Some(e);
        }
    }

    fn take_failure(&self) -> Option<PyErr> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
            .take()
    }
}

impl Progress for PyProgress {
    fn start(&self, total: Option<u64>, at: u64) {
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.total = total;
            st.told = None;
        }
        self.tell(at, true);
    }
    fn advance(&self, done: u64) {
        self.tell(done, false);
    }
    fn finish(&self) {}
    fn stop(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
            .is_some()
    }
}

/// A progress function for the library's hooks that calls `progress(done, total)` with the
/// GIL held, and answers false (stop) once it raised; the exception is kept in the slot,
/// for [`raise_failed`].
type Told = Arc<dyn Fn(u64, Option<u64>) -> bool + Send + Sync>;

fn told_by(progress: Option<Py<PyAny>>) -> (Option<Told>, Arc<Mutex<Option<PyErr>>>) {
    let failed: Arc<Mutex<Option<PyErr>>> = Arc::default();
    let slot = failed.clone();
    let told = progress.map(|callback| -> Told {
        Arc::new(move |done, total| {
            let mut kept = slot.lock().unwrap_or_else(|p| p.into_inner());
            if kept.is_some() {
                return false;
            }
            match Python::attach(|py| callback.call1(py, (done, total)).map(drop)) {
                Ok(()) => true,
                Err(e) => {
                    *kept = Some(e);
                    false
                }
            }
        })
    });
    (told, failed)
}

/// The progress callback's exception, if it raised.
fn raise_failed(failed: &Mutex<Option<PyErr>>) -> PyResult<()> {
    match failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Remote options with `progress` installed, and the receiver to ask afterwards whether
/// the callback failed. The download limits and offline are the command line's, read at
/// each call: `max_download`, `min_free` and `offline` of the configuration files, or
/// `SREGISTRY_MAX_DOWNLOAD`, `SREGISTRY_MIN_FREE` and `SREGISTRY_OFFLINE` (a value of the
/// wrong form raises `InvalidInput`, naming the variable, or the file, line and key).
fn remote_opts(
    progress: Option<Py<PyAny>>,
    force: bool,
) -> PyResult<(RemoteOptions, Option<Arc<PyProgress>>)> {
    let config = config()?;
    let limits = Limits::from_config(&config);
    let offline = config.offline;
    let hook = progress.map(|callback| {
        Arc::new(PyProgress {
            callback,
            state: Mutex::new(ProgressState::default()),
        })
    });
    let opts = RemoteOptions {
        progress: hook.clone().map(|h| ProgressHook(h as Arc<dyn Progress>)),
        repoint: Repoint::from_force(force),
        refetch: force,
        limits,
        offline,
        shared_remotes: config.shared_remotes.clone(),
        ..RemoteOptions::default()
    };
    Ok((opts, hook))
}

/// The callback's own exception when it failed (the library then stopped with
/// `Stopped`), else the library's result.
fn finish_remote<T>(r: Result<T, RemoteError>, hook: &Option<Arc<PyProgress>>) -> PyResult<T> {
    if let Some(e) = hook.as_ref().and_then(|h| h.take_failure()) {
        return Err(e);
    }
    r.map_err(remote_err)
}

// ---------------------------------------------------------------------------------------
// Image

/// One name in the cache and everything known about it.
///
/// `added` and `last_used` are Unix times in seconds (`last_used` is `None` when the name
/// was never used); `size` is in bytes. `sif` is the SIF header and objects (a dict) when
/// the image came from `Cache.inspect` and is a SIF file, else `None`.
#[pyclass(frozen, module = "sregistry", name = "Image")]
struct Image {
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    digest: String,
    #[pyo3(get)]
    path: String,
    #[pyo3(get)]
    size: Option<u64>,
    #[pyo3(get)]
    added: u64,
    #[pyo3(get)]
    last_used: Option<u64>,
    #[pyo3(get)]
    pinned: bool,
    #[pyo3(get)]
    source: Option<String>,
    #[pyo3(get)]
    labels: BTreeMap<String, String>,
    #[pyo3(get)]
    media_type: Option<String>,
    #[pyo3(get)]
    remote_digest: Option<String>,
    /// The read-only tier that holds the name (as configured), `None` for the writable
    /// cache.
    #[pyo3(get)]
    tier: Option<String>,
    /// Whether the name is in the caller's private cache (inside a shared cache).
    #[pyo3(get)]
    private: bool,
    /// The SIF description as JSON, or why the file is not a readable SIF.
    sif_json: Option<String>,
}

impl Image {
    fn of(e: Entry) -> Image {
        Image {
            name: e.name,
            digest: e.digest.to_string(),
            path: e.path.display().to_string(),
            size: e.size,
            added: e.added,
            last_used: e.last_used,
            pinned: e.pinned,
            source: e.source.as_deref().map(sregistry::remote::shown_source),
            labels: e.labels,
            media_type: e.media_type,
            remote_digest: e.remote_digest,
            tier: e.tier.map(|t| t.display().to_string()),
            private: e.private,
            sif_json: None,
        }
    }
}

#[pymethods]
impl Image {
    /// The SIF global header and data objects (`{"header": {...}, "descriptors": [...]}`)
    /// when the image was inspected and is a SIF file; `{"error": "..."}` when it starts
    /// like a SIF file but does not parse; `None` otherwise.
    #[getter]
    fn sif(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.sif_json {
            Some(j) => Ok(py.import("json")?.call_method1("loads", (j,))?.unbind()),
            None => Ok(py.None()),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Image(name={:?}, digest={:?}, path={:?})",
            self.name, self.digest, self.path
        )
    }

    fn __fspath__(&self) -> String {
        self.path.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Cache

/// A handle on a cache directory. Cheap to make; safe to share between threads.
///
/// `root=None` is the command line's default: `$SREGISTRY_CACHE`, else
/// `${XDG_CACHE_HOME:-~/.cache}/sregistry`. `lock_timeout` (seconds) is how long a call
/// waits for another process's lock before raising `LockTimeout` (default:
/// `$SREGISTRY_LOCK_TIMEOUT`, else the command line's default). `tiers` are the read-only
/// caches `get`, `list` and `inspect` look in after this one, in order (default: the
/// configuration's `tiers`, `$SREGISTRY_TIERS`); they are never written, and `tag`,
/// `remove`, `pin` and `unpin` of a name only a tier holds raise `Error` naming the tier.
#[pyclass(frozen, module = "sregistry", name = "Cache")]
struct PyCache {
    inner: Cache,
    /// The tiers `get`, `list` and `inspect` look in after `inner`.
    tiers: Vec<std::path::PathBuf>,
    /// Whether the first lookup has looked for missing tiers ([`PyCache::warn_missing_tiers`]).
    tiers_checked: std::sync::atomic::AtomicBool,
}

fn json_to_py<T: serde::Serialize>(py: Python<'_>, v: &T) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// A report object (attribute access over a dict), made by `sregistry._errors.Report`.
fn report(py: Python<'_>, kind: &str, v: impl serde::Serialize) -> PyResult<Py<PyAny>> {
    let d = json_to_py(py, &v)?;
    Ok(py
        .import("sregistry._errors")?
        .getattr("Report")?
        .call1((kind, d))?
        .unbind())
}

/// A size (`int` bytes, or text such as `"500G"`) or a duration (`int` seconds, or text
/// such as `"30d"`), for the argument `what`.
fn size_arg(
    v: Option<&Bound<'_, PyAny>>,
    what: &str,
    parse: fn(&str) -> Result<u64, UnitError>,
) -> PyResult<Option<u64>> {
    let Some(v) = v else { return Ok(None) };
    if v.is_none() {
        return Ok(None);
    }
    if v.is_instance_of::<PyInt>() {
        return v.extract::<u64>().map(Some).map_err(|_| {
            raise(
                v.py(),
                "InvalidInput",
                format!("{what}={v}: give a whole number from 0 to {}, or text such as \"500G\" or \"30d\"", u64::MAX),
            )
        });
    }
    let s: String = v.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what}: give an int or text such as \"500G\" or \"30d\", not {}",
            v.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    parse(&s).map(Some).map_err(unit_err)
}

impl PyCache {
    /// The caches a lookup looks in: the caller's private cache (in a shared cache), this
    /// one, then each tier.
    fn caches(&self) -> Result<sregistry::cache::Caches<'_>, CacheError> {
        sregistry::cache::Caches::new(&self.inner, &self.tiers)
    }

    /// At this object's first lookup, a `UserWarning` for each configured tier that is not
    /// there (the lookup goes on without it), as the command line warns on stderr once per
    /// command: a job on a node whose mount is missing learns it. Once per `Cache`.
    fn warn_missing_tiers(&self, py: Python<'_>) -> PyResult<()> {
        use std::sync::atomic::Ordering;
        if self.tiers.is_empty() || self.tiers_checked.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        for t in sregistry::cache::tiers::missing_tiers(&self.tiers) {
            user_warning(py, sregistry::cache::tiers::MissingTier(t).to_string())?;
        }
        Ok(())
    }

    /// Pin or unpin `name` in the cache that holds it (the caller's private cache, else
    /// this one); a name only a tier holds is refused naming the tier.
    fn set_pin(&self, py: Python<'_>, name: &str, pin: bool) -> PyResult<bool> {
        self.warn_missing_tiers(py)?;
        let r = parse_name(name)?;
        py.detach(|| {
            let caches = self.caches()?;
            caches
                .holder(&r)
                .set_pin(&r, pin)
                .map_err(|e| caches.refuse_in_tier(e))
        })
        .map_err(cache_err)
    }
}

#[pymethods]
impl PyCache {
    #[new]
    #[pyo3(signature = (root=None, lock_timeout=None, tiers=None))]
    fn new(
        root: Option<&Bound<'_, PyAny>>,
        lock_timeout: Option<f64>,
        tiers: Option<Vec<Bound<'_, PyAny>>>,
    ) -> PyResult<PyCache> {
        let root = root
            .filter(|r| !r.is_none())
            .map(|r| path_arg(r, "root"))
            .transpose()?;
        let config = config()?;
        let root = Cache::resolve_root(root.as_deref(), &config).map_err(cache_err)?;
        let mut locks = LockOptions::from_config(&config);
        if let Some(t) = lock_timeout {
            locks.timeout = Duration::try_from_secs_f64(t).map_err(|e| {
                Python::attach(|py| raise(py, "InvalidInput", format!("lock_timeout {t}: {e}")))
            })?;
        }
        let inner = Cache::open(&root, locks).map_err(cache_err)?;
        let tiers = match tiers {
            Some(given) => given
                .iter()
                .map(|t| path_arg(t, "tiers").map(|p| std::path::absolute(&p).unwrap_or(p)))
                .collect::<PyResult<_>>()?,
            None => config.tiers.clone(),
        };
        Ok(PyCache {
            inner,
            tiers,
            tiers_checked: Default::default(),
        })
    }

    /// The cache's root directory.
    #[getter]
    fn root(&self) -> String {
        self.inner.root().display().to_string()
    }

    /// The index file (`v1/index.redb`): names, digests, labels, pins.
    #[getter]
    fn index_path(&self) -> String {
        self.inner.index_path().display().to_string()
    }

    /// Where the images are stored, one file per content (`v1/blobs/blake3`).
    #[getter]
    fn blobs_dir(&self) -> String {
        self.inner.blobs_dir().display().to_string()
    }

    /// Where adds and downloads are written before they are stored (`v1/tmp`).
    #[getter]
    fn tmp_dir(&self) -> String {
        self.inner.tmp_dir().display().to_string()
    }

    /// Add the file at `path` under `name` and return its `Image`. The file is copied,
    /// unless `move=True`, which hands the file itself to the cache where it can (same
    /// filesystem, no other link, nobody writing it) and removes it from `path`.
    /// `labels` are recorded with the name; `force=True` re-points a pinned name.
    /// `progress(done, total)` is told how the copy advances (a file moved in by hard
    /// link is not copied, and tells nothing); an exception in it stops the add, stores
    /// nothing, and is raised here.
    #[pyo3(signature = (path, name, r#move=false, labels=None, force=false, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        name: &str,
        r#move: bool,
        labels: Option<BTreeMap<String, String>>,
        force: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Image> {
        let path = path_arg(path, "path")?;
        let name = parse_name(name)?;
        let (told, failed) = told_by(progress);
        let kept = KeptFiles::default();
        let opts = AddOptions {
            move_file: r#move,
            repoint: Repoint::from_force(force),
            labels: labels.unwrap_or_default(),
            progress: told.map(ProgressFn::hook),
            not_removed: r#move.then(|| kept.hook()),
            ..AddOptions::default()
        };
        let entry = py.detach(|| self.inner.add(&path, &name, &opts));
        raise_failed(&failed)?;
        let image = Image::of(entry.map_err(cache_err)?);
        kept.warn(py)?;
        Ok(image)
    }

    /// Add many files at once: one index transaction per `batch` names (None or 0: the
    /// library's default, 500), with every check of `add`. `items` is any iterable of
    /// `(path, name)` or `(path, name, labels)`. Returns one result per item, in order:
    /// its `Image`, or the `sregistry.Error` that refused it (not raised: the others go
    /// on). Raises only for what stops everything (the index cannot be written); the
    /// batches before it stay.
    /// `progress(done, total)` is told the items done after each batch; an exception in
    /// it stops before the next batch (those done stay added) and is raised.
    #[pyo3(signature = (items, r#move=false, batch=None, progress=None))]
    fn add_many(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        r#move: bool,
        batch: Option<&Bound<'_, PyAny>>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let batch = match batch.filter(|b| !b.is_none()) {
            None => 0,
            Some(b) => match b.extract::<usize>() {
                Ok(n) => n,
                Err(_) if b.is_instance_of::<PyInt>() => {
                    return Err(raise(
                        py,
                        "InvalidInput",
                        format!(
                            "batch={b}: give the names per index transaction, 1 or more (0: 500)"
                        ),
                    ));
                }
                Err(e) => return Err(e),
            },
        };
        // Any iterable (a list, a generator), read once. An item whose name does not
        // parse is refused in its place, like the library's.
        let mut out: Vec<Option<Py<PyAny>>> = Vec::new();
        let kept = KeptFiles::default();
        let mut todo = Vec::new();
        for item in items.try_iter()? {
            let item = item?;
            let (path, name, labels): (Bound<'_, PyAny>, String, Option<BTreeMap<String, String>>) =
                match item.extract::<(Bound<'_, PyAny>, String)>() {
                    Ok((p, n)) => (p, n, None),
                    Err(_) => item.extract()?,
                };
            let path = path_arg(&path, "add_many item path")?;
            match parse_name(&name) {
                Ok(name) => {
                    out.push(None);
                    todo.push(AddItem {
                        path,
                        name,
                        opts: AddOptions {
                            move_file: r#move,
                            labels: labels.unwrap_or_default(),
                            not_removed: r#move.then(|| kept.hook()),
                            ..AddOptions::default()
                        },
                    });
                }
                Err(e) => out.push(Some(e.into_value(py).into_any())),
            }
        }
        // One library call per batch, so that progress can be told between them.
        let batch = if batch == 0 { DEFAULT_ADD_BATCH } else { batch };
        let total = todo.len();
        let mut results = Vec::with_capacity(total);
        let mut todo = todo.into_iter().peekable();
        while todo.peek().is_some() {
            let chunk: Vec<AddItem> = todo.by_ref().take(batch).collect();
            let done = py
                .detach(|| self.inner.add_many(chunk, batch))
                .map_err(cache_err)?;
            results.extend(done);
            kept.warn(py)?;
            if let Some(callback) = &progress {
                callback.call1(py, (results.len(), total))?;
            }
        }
        let mut results = results.into_iter();
        out.into_iter()
            .map(|slot| match slot {
                Some(refused) => Ok(refused),
                None => match results.next() {
                    Some(Ok(entry)) => Ok(Py::new(py, Image::of(entry))?.into_any()),
                    Some(Err(e)) => Ok(cache_err(e).into_value(py).into_any()),
                    None => Err(PyRuntimeError::new_err(
                        "add_many returned fewer results than items",
                    )),
                },
            })
            .collect()
    }

    /// The path of the image `name`. A remote reference (`oras://`, `docker://`,
    /// `https://`, `s3://`) is pulled the first time and then answered from the cache, as
    /// `sregistry get` does; `progress(done, total)` is told how its download advances.
    #[pyo3(signature = (name, progress=None))]
    fn get(&self, py: Python<'_>, name: &str, progress: Option<Py<PyAny>>) -> PyResult<String> {
        self.warn_missing_tiers(py)?;
        if remote::is_remote(name) {
            let remote = parse_remote(name)?;
            let (mut opts, hook) = remote_opts(progress, false)?;
            opts.tiers = self.tiers.clone();
            let r = py.detach(|| {
                let caches = self.caches()?;
                remote::get_or_pull_in(&caches, &remote, &opts)
            });
            return finish_remote(r, &hook).map(|p| p.display().to_string());
        }
        let r = parse_name(name)?;
        // The caller's private cache in a shared cache first, as `sregistry get` does.
        py.detach(|| self.caches()?.get(&r))
            .map(path_string)
            .map_err(cache_err)
    }

    /// Every image (sorted by name), or those whose name matches `pattern` (a glob with
    /// `*` and `?`, else a substring).
    #[pyo3(signature = (pattern=None))]
    fn list(&self, py: Python<'_>, pattern: Option<&str>) -> PyResult<Vec<Image>> {
        self.warn_missing_tiers(py)?;
        let all = py
            .detach(|| self.caches()?.list(pattern, false))
            .map_err(cache_err)?;
        Ok(all.into_iter().map(|l| Image::of(l.entry)).collect())
    }

    /// Everything known about `name`, with the SIF header and objects in `.sif` when the
    /// file is a SIF image (`sif=False` skips reading the file).
    #[pyo3(signature = (name, sif=true))]
    fn inspect(&self, py: Python<'_>, name: &str, sif: bool) -> PyResult<Image> {
        self.warn_missing_tiers(py)?;
        let r = parse_name(name)?;
        let (entry, sif_json) = py
            .detach(|| {
                let entry = self.caches()?.entry(&r)?;
                if !sif {
                    return Ok((entry, None));
                }
                let sif_json = match sif::read_if_sif(&entry.path) {
                    Some(Ok(info)) => serde_json::to_string(&info).ok(),
                    Some(Err(e)) => {
                        serde_json::to_string(&serde_json::json!({ "error": e.to_string() })).ok()
                    }
                    None => None,
                };
                Ok::<_, CacheError>((entry, sif_json))
            })
            .map_err(cache_err)?;
        Ok(Image {
            sif_json,
            ..Image::of(entry)
        })
    }

    /// Give the image `source` the name `target` too; returns the target's `Image`.
    /// `force=True` re-points a pinned target.
    #[pyo3(signature = (source, target, force=false))]
    fn tag(&self, py: Python<'_>, source: &str, target: &str, force: bool) -> PyResult<Image> {
        self.warn_missing_tiers(py)?;
        let (src, dst) = (parse_name(source)?, parse_name(target)?);
        py.detach(|| {
            let caches = self.caches()?;
            caches
                .holder(&src)
                .tag(&src, &dst, Repoint::from_force(force))
                .map_err(|e| caches.refuse_in_tier(e))
        })
        .map(Image::of)
        .map_err(cache_err)
    }

    /// Remove one name or a list of names: all exist and are unpinned, or nothing
    /// changes. Content no other name uses is deleted too, unless `keep_blobs=True`.
    /// Returns a report: `names`, `blobs`, `bytes_freed`, and `revealed`: the removed
    /// names another cache still answers (`name`, `tier`: a tier's path, or `None` for the
    /// shared cache).
    #[pyo3(signature = (names, keep_blobs=false))]
    fn remove(
        &self,
        py: Python<'_>,
        names: &Bound<'_, PyAny>,
        keep_blobs: bool,
    ) -> PyResult<Py<PyAny>> {
        let names: Vec<String> = match names.extract::<String>() {
            Ok(one) => vec![one],
            Err(_) => names.extract()?,
        };
        let refs = names
            .iter()
            .map(|n| parse_name(n))
            .collect::<PyResult<Vec<_>>>()?;
        self.warn_missing_tiers(py)?;
        let removed = py
            .detach(|| self.caches()?.remove(&refs, keep_blobs))
            .map_err(cache_err)?;
        report(py, "RemoveReport", removed)
    }

    /// Pin `name` (gc never removes it); returns whether that changed anything.
    fn pin(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        self.set_pin(py, name, true)
    }

    /// Unpin `name`; returns whether that changed anything.
    fn unpin(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        self.set_pin(py, name, false)
    }

    /// Download `remote` (`oras://`, `docker://`, `https://`, `s3://`) and name it `name`
    /// (default: the remote reference without its scheme). Downloads nothing when the
    /// name already holds what the remote offers, unless `force=True` (which also
    /// re-points a pinned name). `progress(done, total)` is told how the download
    /// advances; an exception in it stops the pull, stores nothing, and is raised here.
    #[pyo3(signature = (remote, name=None, force=false, progress=None))]
    fn pull(
        &self,
        py: Python<'_>,
        remote: &str,
        name: Option<&str>,
        force: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Image> {
        let remote = parse_remote(remote)?;
        let name = name.map(parse_name).transpose()?;
        let (mut opts, hook) = remote_opts(progress, force)?;
        opts.tiers = self.tiers.clone();
        self.warn_missing_tiers(py)?;
        let r = py.detach(|| remote::pull(&self.inner, &remote, name.as_ref(), &opts));
        finish_remote(r, &hook).map(|o| Image::of(o.entry))
    }

    /// Upload the image `name` to `remote` (`oras://HOST/REPO:TAG` or `s3://BUCKET/KEY`);
    /// returns where it went. `progress(done, total)` is told how the upload advances; an
    /// exception in it stops the push before any manifest names the upload (`oras://`) or
    /// aborts the multipart upload, leaving nothing under the key (`s3://`), and is raised
    /// here.
    #[pyo3(signature = (name, remote, progress=None))]
    fn push(
        &self,
        py: Python<'_>,
        name: &str,
        remote: &str,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let r = parse_name(name)?;
        let remote = parse_remote(remote)?;
        let (opts, hook) = remote_opts(progress, false)?;
        // The cache that holds the name: the caller's private one, this one, or a tier.
        let out = py.detach(|| -> Result<String, RemoteError> {
            let cache = self.caches()?.reader(&r)?;
            remote::push(&cache, &r, &remote, &opts)
        });
        finish_remote(out, &hook)
    }

    /// Remove what is not needed, as `sregistry gc` does: names unused for `max_age`,
    /// then the least recently used until the content fits in `max_size`; never a pinned
    /// name or one used within `min_idle`. Sizes are bytes or text (`"500G"`), durations
    /// seconds or text (`"30d"`). Returns a report (`names`, `blobs`, `bytes_freed`,
    /// `bytes_kept`, `over_budget`, ...). `progress(done, total)` is told the files
    /// removed after each one; an exception in it stops the removal of files (the names
    /// and records are already gone; the next gc removes the files left) and is raised.
    #[pyo3(signature = (max_size=None, max_age=None, min_idle=None, dry_run=false, progress=None))]
    fn gc(
        &self,
        py: Python<'_>,
        max_size: Option<&Bound<'_, PyAny>>,
        max_age: Option<&Bound<'_, PyAny>>,
        min_idle: Option<&Bound<'_, PyAny>>,
        dry_run: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (told, failed) = told_by(progress);
        let told = told.map(ProgressFn::hook);
        let defaults = gc::GcOptions::default();
        let opts = gc::GcOptions {
            max_size: size_arg(max_size, "max_size", units::parse_size)?,
            max_age: size_arg(max_age, "max_age", units::parse_duration)?,
            min_idle: size_arg(min_idle, "min_idle", units::parse_duration)?
                .unwrap_or(defaults.min_idle),
            dry_run,
            progress: told,
            ..defaults
        };
        let out = py.detach(|| gc::run(&self.inner, &opts));
        raise_failed(&failed)?;
        report(py, "GcReport", out.map_err(cache_err)?)
    }

    /// Re-hash the content of `names` (all images when `None`) and check the cache, as
    /// `sregistry verify` does; `repair=True` restores what it can. Returns a report
    /// (`problems`, `blobs_checked`, `repaired`, ...; `clean` is true when nothing was
    /// found). `progress(done, total)` is told the bytes hashed after each image; an
    /// exception in it stops verify before it moves or repairs anything, and is raised.
    #[pyo3(signature = (names=None, repair=false, progress=None))]
    fn verify(
        &self,
        py: Python<'_>,
        names: Option<Vec<String>>,
        repair: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let names = names
            .unwrap_or_default()
            .iter()
            .map(|n| parse_name(n))
            .collect::<PyResult<Vec<_>>>()?;
        let (told, failed) = told_by(progress);
        let told = told.map(ProgressFn::hook);
        let opts = verify::VerifyOptions {
            names,
            repair,
            tmp_grace: gc::DEFAULT_TMP_GRACE,
            progress: told,
        };
        let out = py.detach(|| verify::run(&self.inner, &opts));
        raise_failed(&failed)?;
        report(py, "VerifyReport", out.map_err(cache_err)?)
    }

    fn __repr__(&self) -> String {
        format!("Cache({:?})", self.inner.root().display().to_string())
    }
}

/// Whether `s` is a remote reference (has a scheme such as `oras://`).
#[pyfunction]
fn is_remote(s: &str) -> bool {
    remote::is_remote(s)
}

/// The file `sregistry login` keeps registry credentials in
/// (`$SREGISTRY_CONFIG_DIR/credentials.json`, else under `${XDG_CONFIG_HOME:-~/.config}/sregistry`),
/// or `None` when neither that nor `HOME` is set.
#[pyfunction]
fn credentials_path() -> PyResult<Option<String>> {
    config()?;
    Ok(remote::auth::credentials_path().map(|p| p.display().to_string()))
}

/// The name a pull of `remote` gives the image when no name is given (as `sregistry
/// pull` does; `s3://` through an endpoint includes the endpoint's host).
#[pyfunction]
fn default_name(remote: &str) -> PyResult<String> {
    let remote = parse_remote(remote)?;
    let (opts, _) = remote_opts(None, false)?;
    remote
        .default_name(&opts)
        .map(|r| r.to_string())
        .map_err(remote_err)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCache>()?;
    m.add_class::<Image>()?;
    m.add_function(wrap_pyfunction!(is_remote, m)?)?;
    m.add_function(wrap_pyfunction!(credentials_path, m)?)?;
    m.add_function(wrap_pyfunction!(default_name, m)?)?;
    m.add_function(wrap_pyfunction!(_error_classes, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
