//! Remotes: where images come from and go to. OCI registries (`oras://`, SIF artifacts
//! as Apptainer pushes them), plain `https://` URLs, and S3-compatible stores (`s3://`).
//!
//! # Layers
//!
//! Each file imports only files below it (`grep -n 'super::' src/remote/*.rs`); no circle.
//!
//! ```text
//! mod.rs        the dispatcher: pull, get, push, search, login, logout; the per-pull lock
//! remote_ref.rs RemoteRef: parse, default name, recorded source   (-> docker, oci, s3)
//! ─ protocols ───────────────────────────────────────────────────────────────────────────
//! oci.rs        oras://: SIF artifacts; tags, catalog               (-> registry)
//! docker.rs     docker://: platform, layers shared as parts, SIF    (-> registry, runtime)
//! http.rs       a plain URL, resumable with Range                   (-> registry)
//! s3.rs         object_store over S3                                (-> transport)
//! oci_layout.rs export into an OCI image layout (no network)
//! privacy.rs    which cache a pull lands in: the shared one, or the puller's private one
//! ─ registry layer ──────────────────────────────────────────────────────────────────────
//! registry.rs   Session (auth handshake, tokens), download, upload_blob, OciRef
//! auth.rs       credentials (`sregistry login`, ~/.docker/config.json); challenges
//! sink.rs       the sink every remote byte passes through: size limit and sha256, into
//!               the cache's Ingest (BLAKE3 into tmp/); only the cache commits it
//! ─ HTTP leaf ───────────────────────────────────────────────────────────────────────────
//! transport.rs  one HTTP client: time-outs, redirects, loopback/insecure, TLS; retries
//!               with backoff on 5xx/429/dropped connections; URLs as shown
//! runtime.rs    one tokio runtime per process
//! ─ shared by all ───────────────────────────────────────────────────────────────────────
//! types.rs      RemoteOptions, Progress, what a pull brings and answers
//! error.rs      RemoteError and its kind()
//! ```
//!
//! The imports in full: `privacy` -> auth, s3, remote_ref; `remote_ref` -> docker, oci,
//! s3, transport; `oci`, `docker` -> registry, auth, sink, transport (`docker` also
//! runtime); `http` -> registry, sink, transport; `s3` -> sink, transport; `registry` ->
//! auth, sink, transport;
//! `transport` -> runtime; `auth`, `sink`, `runtime` -> error only; and each
//! of them -> error and types where it needs them.
//!
//! # What it promises
//!
//! * Every byte from a remote passes through a `sink::Sink` before it is in the cache:
//!   the registry's sha256 and the declared size are checked and the BLAKE3 digest computed
//!   in the same pass, straight into `tmp/` through [`crate::cache::Cache::ingest`]; the
//!   content is named only by [`crate::cache::Cache::commit_ingested`]. A blob that fails any check never reaches
//!   `blobs/`, and its temporary file is removed.
//! * `get REMOTE` and `pull REMOTE` take a per-pull lock (`v1/locks/<hash>.lock`,
//!   exclusive for the whole download) before contacting the remote: N concurrent calls
//!   for one image download it once; the others wait, then find it in the index.
//! * The remote source is recorded with the name (`inspect`, `list --json`): never a
//!   password or a query value, and for `https://` without the parameters that sign the
//!   request, so every new signature of a URL is the same image ([`RemoteRef::source`]).

pub mod auth;
pub mod docker;
mod error;
mod http;
pub mod oci;
pub mod oci_layout;
mod privacy;
mod registry;
mod remote_ref;
mod runtime;
pub mod s3;
mod sink;
mod transport;
mod types;

pub use error::{Need, RemoteError};
pub use remote_ref::{RemoteRef, is_remote, shown_source};
pub use types::{Progress, ProgressHook, PullOutcome, RemoteOptions, Unreached};

use std::path::PathBuf;

use crate::cache::{Cache, CacheError, Caches};
use crate::format::reference::Reference;
use remote_ref::docker_platform_of;
use transport::bad_ref;
use types::{Known, Pulled};

/// A pull's progress hook, each call marked as made on behalf of the pull lock's holder
/// (see `under_pull_lock`).
struct InsidePull {
    hook: std::sync::Arc<dyn Progress>,
    reentry: crate::cache::lock::Reentry,
}

impl Progress for InsidePull {
    fn start(&self, total: Option<u64>, at: u64) {
        let _inside = self.reentry.enter();
        self.hook.start(total, at);
    }
    fn advance(&self, done: u64) {
        let _inside = self.reentry.enter();
        self.hook.advance(done);
    }
    fn finish(&self) {
        let _inside = self.reentry.enter();
        self.hook.finish();
    }
    fn waiting(&self, what: &str) {
        let _inside = self.reentry.enter();
        self.hook.waiting(what);
    }
    fn stop(&self) -> bool {
        let _inside = self.reentry.enter();
        self.hook.stop()
    }
}

/// `get REMOTE`: the cached path if this remote was pulled under its name before,
/// otherwise pull it first (once, however many processes ask at the same moment): looks
/// in the one lookup order of `cache` and `opts.tiers` ([`get_or_pull_in`]).
pub fn get_or_pull(
    cache: &Cache,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> Result<PathBuf, RemoteError> {
    get_or_pull_in(&Caches::new(cache, &opts.tiers)?, remote, opts)
}

/// [`get_or_pull`] through the caches a lookup looks in (`crate::cache::tiers`): the image
/// an earlier pull of `remote` put under its default name in the caller's private cache,
/// else in the writable cache, else in the first tier that holds it (read-only: nothing
/// downloaded, converted or written); else pulled into the writable cache, or the
/// caller's private cache when it needed credentials (`privacy.rs`; offline:
/// [`RemoteError::Offline`]). A tier never holds a private image (`tier publish` copies
/// no `private/`), and the shared cache only what was pulled without credentials or
/// from a `shared_remotes` remote, so no cache here answers a user with another's
/// private image.
pub fn get_or_pull_in(
    caches: &Caches<'_>,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> Result<PathBuf, RemoteError> {
    let name = remote.default_name(opts)?;
    if let Some(p) = caches.find(|c| cached_from(c, &name, remote, opts))? {
        return Ok(p);
    }
    if opts.offline {
        return Err(RemoteError::Offline {
            remote: remote.source(opts),
            need: Need::Cached,
        });
    }
    let opts = &RemoteOptions {
        answer_from_tiers: true,
        ..opts.clone()
    };
    privacy::routed(caches.writable(), remote, opts, |cache, opts| {
        under_pull_lock(
            cache,
            lock_key(remote, opts),
            opts,
            || {
                // Whoever held the lock before us may have pulled it.
                cached_from(cache, &name, remote, opts)
            },
            |opts| {
                refuse_taken_name(cache, &name, remote, opts)?;
                Ok(pull_locked(cache, remote, &name, opts)?.entry.path)
            },
        )
    })
}

/// Take the per-pull lock `key` (see [`lock_key`]), then: `found()` (what an earlier holder left
/// ready, if anything); else, if a pull failed while this process waited, fail at once
/// with its message (a thousand jobs waiting on a dead remote do not each wait it out
/// again); else `pull()`, whose failure (the remote's: not the cache's refusal, nor a
/// refusal of this process's own credentials, [`RemoteError::is_about_credentials`]) is
/// recorded for the processes waiting now.
///
/// `pull` gets `opts` with its progress hook wrapped so that each call of the hook runs
/// marked as a callback of this lock's holder (`LockGuard::reentry`): a hook that calls
/// into the library for the same remote is refused at once (`CacheError::Reentered`)
/// instead of waiting for the lock its own caller holds.
fn under_pull_lock<T>(
    cache: &Cache,
    key: String,
    opts: &RemoteOptions,
    found: impl FnOnce() -> Result<Option<T>, RemoteError>,
    pull: impl FnOnce(&RemoteOptions) -> Result<T, RemoteError>,
) -> Result<T, RemoteError> {
    cache.ensure_layout()?;
    let (before, _) = cache.pull_failures(&key);
    let lock = cache.pull_lock(&key)?;
    crate::testhook::pause("pull-locked");
    let opts = RemoteOptions {
        progress: opts.progress.as_ref().map(|hook| {
            ProgressHook(std::sync::Arc::new(InsidePull {
                hook: hook.0.clone(),
                reentry: lock.reentry(),
            }))
        }),
        ..opts.clone()
    };
    if let Some(t) = found()? {
        return Ok(t);
    }
    let (after, detail) = cache.pull_failures(&key);
    if after != before {
        return Err(RemoteError::FailedElsewhere {
            remote: key,
            detail,
        });
    }
    let out = pull(&opts);
    if out.is_err() {
        crate::testhook::pause("pull-failed");
    }
    // The remote's failures only: a refusal by the cache (a pinned name) is each caller's,
    // and so is a refusal of this process's credentials (another user's may be good).
    if let Err(e) = &out
        && !e.is_usage()
        && !e.is_about_credentials()
        && !matches!(e, RemoteError::Cache(_) | RemoteError::NameTaken { .. })
    {
        cache.record_pull_failure(&key, &e.to_string());
    }
    out
}

/// What the per-pull lock of `remote` is named by: its source (for `s3://`, with the
/// endpoint), and for `docker://` the platform too (in its canonical form, so
/// `linux/arm64` and `linux/arm64/v8` share one lock, as they share one image).
fn lock_key(remote: &RemoteRef, opts: &RemoteOptions) -> String {
    match (remote, docker_platform_of(opts)) {
        (RemoteRef::Docker(_), Ok(p)) => format!("{remote} {}", p.canonical()),
        _ => remote.source(opts),
    }
}

/// Whether `rec` was pulled from `remote` (for `docker://`, for the platform asked for).
fn pulled_from(rec: &crate::cache::RefRecord, remote: &RemoteRef, opts: &RemoteOptions) -> bool {
    came_from(rec.source.as_deref(), &rec.labels, remote, opts)
}

/// Whether what was recorded with a name (its `source` and `labels`) says it was pulled
/// from `remote` (for `docker://`, for the platform asked for).
fn came_from(
    source: Option<&str>,
    labels: &std::collections::BTreeMap<String, String>,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> bool {
    if !source.is_some_and(|s| remote.is_source(s, opts)) {
        return false;
    }
    match (remote, docker_platform_of(opts)) {
        (RemoteRef::Docker(_), Ok(asked)) => labels
            .get(docker::LABEL_PLATFORM)
            .and_then(|p| docker::Platform::parse(p).ok())
            .is_some_and(|p| p.canonical() == asked.canonical()),
        _ => true,
    }
}

/// Refuse to pull `remote` under its default `name` when that name holds an image pulled
/// from another remote: two remotes never share a name silently (their names are made
/// apart, see [`RemoteRef::default_name`]; what can still meet is an odd real tag such as
/// `1.2-linux-arm64` beside the platform names, or a name kept from an older version).
/// The same `docker://` reference for another platform under a name an older version
/// gave it is re-pointed as before (the content it held keeps its protection: see
/// `Cache` on re-pointing). `--force` re-points whatever the name held.
fn refuse_taken_name(
    cache: &Cache,
    name: &Reference,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> Result<(), RemoteError> {
    if opts.refetch {
        return Ok(());
    }
    let entry = match cache.entry(name) {
        Ok(e) => e,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let Some(held) = entry.source.filter(|s| is_remote(s)) else {
        return Ok(());
    };
    if remote.is_source(&held, opts) {
        return Ok(());
    }
    let wanted = remote.source(opts);
    Err(RemoteError::NameTaken {
        name: name.key(),
        held,
        wanted,
    })
}

/// The path of `name` if it exists and was pulled from `remote` (for `docker://`, for
/// the platform asked for).
fn cached_from(
    cache: &Cache,
    name: &Reference,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> Result<Option<PathBuf>, RemoteError> {
    let pulled_from_here = |rec: &crate::cache::RefRecord| pulled_from(rec, remote, opts);
    none_if_not_cached(cache.get_where(name, pulled_from_here))
}

/// A cache lookup's answer, with a name that is not there, or whose file is missing or
/// quarantined, taken as nothing cached.
fn none_if_not_cached<T>(found: Result<Option<T>, CacheError>) -> Result<Option<T>, RemoteError> {
    match found {
        Ok(t) => Ok(t),
        Err(CacheError::BlobMissing { .. }) | Err(CacheError::Quarantined { .. }) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The entry of `name` if it exists, was pulled from `remote` (for `docker://`, for the
/// platform asked for) and its file is in place; its use is recorded.
fn cached_entry(
    cache: &Cache,
    name: &Reference,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> Result<Option<crate::cache::Entry>, RemoteError> {
    none_if_not_cached(cache.entry_in_use(name, |e| {
        came_from(e.source.as_deref(), &e.labels, remote, opts)
    }))
}

/// `pull REMOTE [--name REF]`: download, unless the name already holds what the remote
/// offers (unless `opts.refetch`), and name it.
///
/// Offline (`opts.offline`), the cache answers: the image an earlier pull of `remote` put
/// under the name, or [`RemoteError::Offline`]; `--force` is refused. Online, when the
/// remote cannot be reached at all ([`RemoteError::is_unreachable`]) and the name holds an
/// image pulled from it, that image answers, [`PullOutcome::unreached`] saying why
/// (`--force` still fails).
pub fn pull(
    cache: &Cache,
    remote: &RemoteRef,
    name: Option<&Reference>,
    opts: &RemoteOptions,
) -> Result<PullOutcome, RemoteError> {
    if let RemoteRef::S3 { .. } = remote {
        // Before the pull lock is named after it.
        s3::checked_endpoint(opts)?;
    }
    let (name, default) = match name {
        Some(n) => {
            crate::cache::refuse_digest_on_target(n)?;
            (n.clone(), false)
        }
        None => (remote.default_name(opts)?, true),
    };
    // The caller's private cache, then `cache` (a pull writes, so no tier answers it).
    let caches = Caches::new(cache, &[])?;
    let from_cache = |why: Unreached| -> Result<Option<PullOutcome>, RemoteError> {
        Ok(caches
            .find(|c| cached_entry(c, &name, remote, opts))?
            .map(|entry| PullOutcome {
                entry,
                downloaded: false,
                unreached: Some(why),
            }))
    };
    if opts.offline {
        if opts.refetch {
            return Err(RemoteError::Offline {
                remote: remote.source(opts),
                need: Need::Network("pull --force"),
            });
        }
        return from_cache(Unreached::Offline)?.ok_or_else(|| RemoteError::Offline {
            remote: remote.source(opts),
            need: Need::Cached,
        });
    }
    let pulled = privacy::routed(cache, remote, opts, |cache, opts| {
        under_pull_lock(
            cache,
            lock_key(remote, opts),
            opts,
            || Ok(None),
            |opts| {
                if default {
                    refuse_taken_name(cache, &name, remote, opts)?;
                }
                pull_locked(cache, remote, &name, opts)
            },
        )
    });
    match pulled {
        Err(e) if e.is_unreachable() && !opts.refetch => {
            from_cache(Unreached::Unreachable(e.to_string()))?.ok_or(e)
        }
        other => other,
    }
}

/// Refuse what needs the network when `opts.offline`.
fn refuse_offline(
    remote: &str,
    what: &'static str,
    opts: &RemoteOptions,
) -> Result<(), RemoteError> {
    if opts.offline {
        return Err(RemoteError::Offline {
            remote: remote.to_string(),
            need: Need::Network(what),
        });
    }
    Ok(())
}

fn pull_locked(
    cache: &Cache,
    remote: &RemoteRef,
    name: &Reference,
    opts: &RemoteOptions,
) -> Result<PullOutcome, RemoteError> {
    if let RemoteRef::Docker(r) = remote {
        // A converted image keeps its layers; an unchanged tag costs only the manifest.
        return docker::pull_locked(cache, r, &remote.source(opts), name, opts);
    }
    let known = if opts.refetch {
        None
    } else {
        known_from(cache, name, remote, opts)?
    };
    let (c, remote_, o) = (cache.clone(), remote.clone(), opts.clone());
    let pulled = runtime::run(async move {
        let (cache, opts, known) = (&c, &o, known.as_ref());
        let transport = transport::Transport::new(opts)?;
        match &remote_ {
            RemoteRef::Oras(r) => oci::pull(&transport, cache, r, opts, known).await,
            // Converted images take their own path (`docker::pull_locked`), above.
            RemoteRef::Docker(_) => Err(bad_ref(&remote_.to_string(), "not a single-file remote")),
            RemoteRef::Http(url) => http::pull(&transport, cache, url, opts, known).await,
            RemoteRef::S3 { bucket, key } => s3::pull(cache, bucket, key, opts, known).await,
        }
    })?;
    let (ingested, fetched) = match pulled {
        Pulled::Fresh(i, f) => (i, f),
        Pulled::InTier(entry) => {
            return Ok(PullOutcome {
                entry,
                downloaded: false,
                unreached: None,
            });
        }
        Pulled::Unchanged => {
            // One lookup: the file is checked in place and the use recorded, for the entry
            // reported. A name re-pointed away from this remote meanwhile is not reported as
            // its content.
            let source = remote.source(opts);
            crate::testhook::pause("pull-unchanged");
            let entry = cache
                .entry_in_use(name, |e| {
                    e.source
                        .as_deref()
                        .is_some_and(|s| remote.is_source(s, opts))
                })?
                .ok_or_else(|| RemoteError::Repointed {
                    name: name.key(),
                    remote: source.clone(),
                })?;
            return Ok(PullOutcome {
                entry,
                downloaded: false,
                unreached: None,
            });
        }
    };
    let mut labels = opts.labels.clone();
    if let Some(e) = &fetched.etag {
        labels.insert(ETAG_LABEL.into(), e.clone());
    }
    if let Some(l) = &fetched.last_modified {
        labels.insert(LAST_MODIFIED_LABEL.into(), l.clone());
    }
    let entry = cache.commit_ingested(
        ingested,
        name,
        crate::cache::Provenance {
            source: remote.source(opts),
            labels,
            media_type: fetched.media_type,
            remote_digest: fetched.remote_digest,
        },
        opts.repoint,
    )?;
    Ok(PullOutcome {
        entry,
        downloaded: true,
        unreached: None,
    })
}

/// What `name` holds from an earlier pull of `remote`, if it holds anything from there
/// and its file is in place.
fn known_from(
    cache: &Cache,
    name: &Reference,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> Result<Option<Known>, RemoteError> {
    let entry = match cache.entry(name) {
        Ok(e) => e,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !entry
        .source
        .as_deref()
        .is_some_and(|s| remote.is_source(s, opts))
        || !entry.path.is_file()
    {
        return Ok(None);
    }
    Ok(Some(Known {
        remote_digest: entry.remote_digest,
        etag: entry.labels.get(ETAG_LABEL).cloned(),
        last_modified: entry.labels.get(LAST_MODIFIED_LABEL).cloned(),
    }))
}

/// The label recording the `ETag` content was served with.
pub const ETAG_LABEL: &str = "org.sregistry.etag";
/// The label recording the `Last-Modified` content was served with.
pub const LAST_MODIFIED_LABEL: &str = "org.sregistry.last-modified";

/// `push REF REMOTE`: upload a cached image.
pub fn push(
    cache: &Cache,
    name: &Reference,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> Result<String, RemoteError> {
    if let RemoteRef::Oras(r) = remote
        && r.digest.is_some()
    {
        return Err(bad_ref(
            &remote.to_string(),
            "a push needs a tag (oras://HOST/REPOSITORY:TAG), not a digest: the registry names the pushed manifest by its own digest",
        ));
    }
    refuse_offline(&remote.to_string(), "push", opts)?;
    // One lookup: the entry and the open file are the same content, whatever happens to
    // the name or to the blob's path while the upload runs.
    let (entry, file) = cache.open_entry(name)?;
    crate::testhook::pause("push-opened");
    let (e, remote_, o) = (entry.clone(), remote.clone(), opts.clone());
    let (where_, sha) = runtime::run(async move {
        let (entry, opts) = (&e, &o);
        let transport = transport::Transport::new(opts)?;
        match &remote_ {
            RemoteRef::Oras(r) => oci::push(&transport, &file, entry, r, opts).await,
            RemoteRef::Docker(_) => Err(bad_ref(
                &remote_.to_string(),
                "pushing to docker:// is not supported; push the SIF to oras:// (Apptainer pulls it from there)",
            )),
            RemoteRef::Http(_) => Err(RemoteError::BadRef {
                shown: remote_.to_string(),
                reason: "pushing to a plain URL is not supported; push to oras:// or s3://".into(),
            }),
            RemoteRef::S3 { bucket, key } => s3::push(&file, &entry.path, bucket, key, opts).await,
        }
    })?;
    // A tier is never written: its blobs' digests stay as its admin published them.
    if let Some(sha) = sha
        && cache.tier().is_none()
    {
        cache.record_remote_digest(&entry.digest, &sha)?;
    }
    Ok(where_)
}

/// `search REMOTE`: tags of a repository, or the registry's catalog.
pub fn search(remote: &str, opts: &RemoteOptions) -> Result<Vec<String>, RemoteError> {
    refuse_offline(remote, "search", opts)?;
    let rest = remote
        .strip_prefix("oras://")
        .ok_or_else(|| bad_ref(remote, "search takes oras://HOST or oras://HOST/REPOSITORY"))?;
    let (rest, opts) = (rest.to_string(), opts.clone());
    runtime::run(async move {
        let transport = transport::Transport::new(&opts)?;
        oci::search(&transport, &rest, &opts).await
    })
}

/// The registry host `login` and `logout` are given: `HOST[:PORT]`, or the same with the
/// scheme of a reference to it (`oras://HOST`, `docker://HOST`, `https://HOST`), which is
/// dropped. A repository path, or another scheme, is a usage error.
pub fn registry_host(input: &str) -> Result<String, RemoteError> {
    let rest = match input.split_once("://") {
        Some(("oras" | "docker" | "https" | "http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(bad_ref(
                input,
                format!("`{scheme}://` is not a registry; give HOST[:PORT] (oras:// is accepted)"),
            ));
        }
        None => input,
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty()
        || host.contains('/')
        || host
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)))
    {
        return Err(bad_ref(
            input,
            "give the registry's HOST[:PORT] only (no repository, user or path)",
        ));
    }
    Ok(host.to_ascii_lowercase())
}

/// `logout HOST`: forget the stored credentials; the file, and whether there were any.
pub fn logout(host: &str) -> Result<(PathBuf, bool), RemoteError> {
    auth::remove_credentials(&registry_host(host)?)
}

/// `login HOST`: check the credentials against the registry, then store them. An empty
/// user name or password, or a user name with `:`, is refused before anything is sent.
pub fn login(
    host: &str,
    user: &str,
    password: &str,
    opts: &RemoteOptions,
) -> Result<PathBuf, RemoteError> {
    let host = &registry_host(host)?;
    refuse_offline(host, "login", opts)?;
    let refuse = |detail| {
        Err(RemoteError::BadLogin {
            host: host.clone(),
            detail,
        })
    };
    if user.is_empty() {
        return refuse("the user name is empty (give it with -u USER)");
    }
    if user.contains(':') {
        return refuse(
            "the user name contains `:`, which Basic authentication cannot carry (it separates the user from the password)",
        );
    }
    if password.is_empty() {
        return refuse(
            "the password is empty (give it on stdin with --password-stdin, or in SREGISTRY_PASSWORD)",
        );
    }
    let creds = auth::Credentials {
        username: user.to_string(),
        password: password.to_string(),
    };
    let (h, c, o) = (host.to_string(), creds.clone(), opts.clone());
    runtime::run(async move {
        let transport = transport::Transport::new(&o)?;
        oci::check_login(&transport, &h, &c, &o).await
    })?;
    auth::store_credentials(host, Some(&creds))
}

/// The first image a tier holds (under any name; tiers in order, names sorted) that
/// `same` takes for the content the remote names now, its file checked in place: for
/// [`RemoteOptions::answer_from_tiers`]. A tier's name whose file is missing or damaged
/// answers nothing (the pull goes on as without it); a tier that cannot be read is its
/// error, as for every lookup (`crate::cache::tiers`).
pub(super) fn held_by_a_tier(
    opts: &RemoteOptions,
    same: impl Fn(&crate::cache::Entry) -> bool,
) -> Result<Option<crate::cache::Entry>, RemoteError> {
    if !opts.answer_from_tiers || opts.refetch {
        return Ok(None);
    }
    for tier in &opts.tiers {
        let t = Cache::open_tier(tier)?;
        for e in t.list(None)? {
            if !same(&e) {
                continue;
            }
            let Ok(name) = Reference::parse(&e.name) else {
                continue;
            };
            if let Ok(Some(found)) = t.entry_in_use(&name, |x| x.digest == e.digest && same(x)) {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}
