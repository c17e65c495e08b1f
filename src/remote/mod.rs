//! Remotes: where images come from and go to. OCI registries (`oras://`, SIF artifacts
//! as Apptainer pushes them), plain `https://` URLs, and S3-compatible stores (`s3://`).
//!
//! # Layers
//!
//! ```text
//! mod.rs (RemoteRef, pull/push orchestration, per-pull lock)
//!   ├─ oci.rs   distribution protocol: manifests, blobs, uploads, tags, catalog
//!   ├─ docker.rs docker:// images: platform, layers shared as parts, converted to SIF
//!   ├─ http.rs  a plain URL, resumable with Range
//!   └─ s3.rs    object_store over S3
//! transport.rs (one HTTP client, retries with backoff on 5xx/429/dropped connections)
//! auth.rs      (credentials from `sregistry login` and ~/.docker/config.json; challenges; tokens)
//! runtime.rs   (one tokio runtime and HTTP client per process)
//! sink.rs      (the sink every remote byte passes through: size limit and sha256, into the
//!              cache's Ingest, which hashes BLAKE3 into tmp/; only the cache commits it)
//! ```
//!
//! # What it promises
//!
//! * Every byte from a remote passes through a [`sink::Sink`] before it is in the cache:
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
pub mod http;
pub mod oci;
pub mod oci_layout;
mod runtime;
pub mod s3;
pub mod sink;
pub mod transport;

pub use error::RemoteError;

use std::fmt;
use std::path::PathBuf;

use crate::cache::{Cache, CacheError, Entry};
use crate::format::reference::Reference;

/// A parsed remote reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteRef {
    /// `oras://host[:port]/repo[:tag|@sha256:<hex>]`
    Oras(oci::OciRef),
    /// `docker://[host[:port]/]repo[:tag|@sha256:<hex>]`
    Docker(docker::DockerRef),
    /// `https://...` or `http://...`
    Http(String),
    /// `s3://bucket/key`
    S3 { bucket: String, key: String },
}

pub(crate) fn bad_ref(input: &str, reason: impl Into<String>) -> RemoteError {
    RemoteError::BadRef {
        shown: crate::format::reference::shown(&transport::shown(input)),
        reason: reason.into(),
    }
}

/// True when `s` names a remote (has a scheme).
pub fn is_remote(s: &str) -> bool {
    s.contains("://")
}

impl RemoteRef {
    /// Parse `oras://`, `https://`, `http://` and `s3://` references.
    pub fn parse(s: &str) -> Result<RemoteRef, RemoteError> {
        // An S3 key may hold spaces, as any other object store client writes them.
        let space_ok = s.starts_with("s3://");
        if s.chars()
            .any(|c| c.is_ascii_control() || (c == ' ' && !space_ok))
        {
            return Err(bad_ref(s, "it contains spaces or control characters"));
        }
        if let Some(rest) = s.strip_prefix("oras://") {
            return oci::OciRef::parse(rest)
                .map(RemoteRef::Oras)
                .map_err(|r| bad_ref(s, r));
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return docker::DockerRef::parse(rest)
                .map(RemoteRef::Docker)
                .map_err(|r| bad_ref(s, r));
        }
        if s.starts_with("https://") || s.starts_with("http://") {
            let after = s.split_once("://").map(|x| x.1).unwrap_or("");
            let host = after.split(['/', '?', '#']).next().unwrap_or("");
            if host.is_empty() {
                return Err(bad_ref(s, "the URL has no host"));
            }
            return Ok(RemoteRef::Http(s.to_string()));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, key) = rest
                .split_once('/')
                .ok_or_else(|| bad_ref(s, "expected s3://BUCKET/KEY"))?;
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !bucket_ok {
                return Err(bad_ref(
                    s,
                    "a bucket name is 3-63 lower-case letters, digits, `-` or `.`",
                ));
            }
            if key.is_empty() || key.split('/').any(|c| c == ".." || c == ".") {
                return Err(bad_ref(s, "the key is empty or has `.`/`..` parts"));
            }
            // The S3 client (object_store) cannot send such a key as written: it would
            // drop the empty part and read or write another object (`dir/` as `dir`).
            if key.split('/').any(str::is_empty) {
                return Err(bad_ref(
                    s,
                    "the key has an empty part (a leading or trailing `/`, or `//`), which sregistry cannot send as written; copy the object to a key without one",
                ));
            }
            return Ok(RemoteRef::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        let scheme = s.split("://").next().unwrap_or("");
        Err(bad_ref(
            s,
            format!(
                "unknown scheme `{scheme}://` (use docker://, oras://, https://, http:// or s3://)"
            ),
        ))
    }

    /// The local name a pulled image gets unless `--name` says otherwise: the reference
    /// without its scheme, made to fit the local grammar. Two remotes never share one
    /// (docs/remotes.md, "Names"):
    ///
    /// * `docker://`: `HOST/REPOSITORY:TAG` for linux/amd64, and for any other platform
    ///   the platform added to the tag (`HOST/REPOSITORY:TAG-linux-arm64`), so every
    ///   platform is its own image, named the same on every node whatever its own
    ///   platform;
    /// * `https://`, `s3://`: the host (or `s3/BUCKET`) and the path, lower-cased and
    ///   reduced to the grammar (see `sanitize_path`; cut to 255 characters); when that
    ///   lost anything (case, characters, a query, the `..` of a file name, length), the
    ///   last part ends with `-` and 12 hex digits of a hash of the whole reference, so
    ///   two URLs that reduce alike keep apart names. Every `s3://` key gives a valid
    ///   name;
    /// * `s3://` through an endpoint (`--endpoint`, `AWS_ENDPOINT_URL`): the endpoint's
    ///   host and port first (`127.0.0.1:9000/s3/BUCKET/KEY`), so one bucket and key on two
    ///   stores are two images.
    pub fn default_name(&self, opts: &RemoteOptions) -> Result<Reference, RemoteError> {
        let text = match self {
            RemoteRef::Oras(r) => r.local_name(),
            RemoteRef::Docker(r) => {
                let platform = docker_platform_of(opts).map_err(|reason| {
                    bad_ref(opts.platform.as_deref().unwrap_or_default(), reason)
                })?;
                docker::platform_name(&r.local_name(), &platform)
            }
            RemoteRef::Http(url) => {
                let after = url.split_once("://").map(|x| x.1).unwrap_or(url);
                // Without user-info: a password never becomes part of a name.
                let after = match after.find(['/', '?', '#']) {
                    Some(end) => match after[..end].rfind('@') {
                        Some(at) => &after[at + 1..],
                        None => after,
                    },
                    None => after.rsplit_once('@').map_or(after, |x| x.1),
                };
                // Neither the fragment (never sent) nor a signature tells two objects
                // apart; the other query parameters name another object as much as a
                // path does, and their values never become part of a name: they always
                // count as lost, and are hashed with the rest.
                let no_query = after.split(['?', '#']).next().unwrap_or(after);
                let (host, path) = no_query.split_at(no_query.find('/').unwrap_or(no_query.len()));
                let kept = object_params(url);
                let (plain, exact) = match kept.is_empty() {
                    true => (
                        format!("{}{path}", host.to_ascii_lowercase()),
                        no_query.to_string(),
                    ),
                    false => (String::new(), format!("{no_query}?{}", kept.join("&"))),
                };
                unique_name(sanitize_path(no_query), &plain, &exact)
            }
            RemoteRef::S3 { bucket, key } => {
                let plain = format!("s3/{bucket}/{key}");
                match s3::checked_endpoint(opts)? {
                    None => unique_name(sanitize_path(&plain), &plain, &plain),
                    Some(ep) => {
                        let (host, lossless) = endpoint_host(&ep);
                        let exact = format!("{ep} {plain}");
                        let named = format!("{host}/{plain}");
                        // A path on the endpoint is lost from the name: always hashed.
                        let plain = if lossless { named.as_str() } else { "" };
                        unique_name(sanitize_path(&named), plain, &exact)
                    }
                }
            }
        };
        Reference::parse(&text).map_err(|e| {
            bad_ref(
                &self.to_string(),
                format!("it gives no valid default name ({e}); pull it under a name of its own with `--name NAME`"),
            )
        })
    }

    /// What a pull from here records as the image's source (and what a later pull
    /// compares with): the reference as shown, and for `s3://` through an endpoint the
    /// endpoint too (`s3://BUCKET/KEY (endpoint URL)`), without user-info. For `https://`,
    /// never a query value: the parameters that sign or authorize the request
    /// ([`is_signature_param`]) are left out, so every new signature of one URL is the
    /// same source, and the others are shown as `NAME=***` followed by 12 hex digits of a
    /// hash of them (`https://h/f.sif?version=*** (query 0123456789ab)`), so URLs that
    /// differ only in them are sources of their own.
    pub fn source(&self, opts: &RemoteOptions) -> String {
        match (self, s3::endpoint(opts)) {
            (RemoteRef::S3 { .. }, Some(ep)) => {
                format!("{self} (endpoint {})", transport::shown(&ep))
            }
            _ => self.to_string(),
        }
    }

    /// Whether `held`, a source recorded in the index, is this remote's: its
    /// [`RemoteRef::source`], or for an `https://` URL with a query the form earlier
    /// versions recorded (the URL as given, user-info hidden, query values kept), so that a
    /// cache filled before query values were hidden still finds its images and its names
    /// are not taken for another remote's.
    pub fn is_source(&self, held: &str, opts: &RemoteOptions) -> bool {
        held == self.source(opts)
            || matches!(self, RemoteRef::Http(u) if u.contains('?') && held == legacy_http_source(u))
    }
}

/// The source earlier versions recorded for an `https://` URL: user-info as `***@`, the
/// rest as given (query values too, which is why it is no longer recorded).
fn legacy_http_source(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A recorded source as `list` and `inspect` show it: one recorded by an earlier version
/// with an `https://` URL's user-info, query values or fragment has them hidden, as every
/// source recorded now has; others as recorded.
pub fn shown_source(held: &str) -> String {
    let url = held.starts_with("https://") || held.starts_with("http://");
    if url && !held.contains(" (query ") {
        transport::shown(held)
    } else {
        held.to_string()
    }
}

/// `reduced` (a name [`sanitize_path`] made), kept as it is when it is exactly `plain`
/// (nothing was lost), else with `-` and 12 hex digits of the BLAKE3 hash of `exact` (the
/// whole reference) after its last part: references that reduce to the same text keep
/// names of their own.
fn unique_name(mut reduced: String, plain: &str, exact: &str) -> String {
    use crate::format::reference::MAX_NAME_LEN;
    if reduced == plain && reduced.len() <= MAX_NAME_LEN {
        return reduced;
    }
    // Too long with the hash: cut (the hash keeps it apart), at a letter or digit.
    if reduced.len() > MAX_NAME_LEN - 13 {
        reduced.truncate(MAX_NAME_LEN - 13);
        let end = reduced
            .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
            .len();
        reduced.truncate(end);
    }
    let h = blake3::hash(exact.as_bytes()).to_hex();
    format!("{reduced}-{}", &h.as_str()[..12])
}

/// Whether the query parameter `name` (lower-case) signs or authorizes one request rather
/// than naming the object: AWS (`X-Amz-*`, and `AWSAccessKeyId`, `Signature`, `Expires`
/// of the older signature), Google Cloud Storage (`X-Goog-*`, `GoogleAccessId`), a bare
/// `token` or `access_token`, and when the query has `sig` an Azure shared access
/// signature (`sig`, `se`, `st`, `sv`, `sp`, `sr`, `spr`, `srt`, `ss`, `si`, `sip`, `skoid`,
/// `sktid`, `skt`, `ske`, `sks`, `skv`).
fn is_signature_param(name: &str, azure: bool) -> bool {
    const ALWAYS: [&str; 6] = [
        "awsaccesskeyid",
        "signature",
        "expires",
        "googleaccessid",
        "token",
        "access_token",
    ];
    const AZURE: [&str; 17] = [
        "sig", "se", "st", "sv", "sp", "sr", "spr", "srt", "ss", "si", "sip", "skoid", "sktid",
        "skt", "ske", "sks", "skv",
    ];
    name.starts_with("x-amz-")
        || name.starts_with("x-goog-")
        || ALWAYS.contains(&name)
        || (azure && AZURE.contains(&name))
}

/// The query parameters of `url` that name the object (all but those that sign or
/// authorize the request), as given, in order.
fn object_params(url: &str) -> Vec<&str> {
    let url = url.split('#').next().unwrap_or(url);
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let name = |p: &str| p.split('=').next().unwrap_or(p).to_ascii_lowercase();
    let azure = params.iter().any(|p| name(p) == "sig");
    params
        .into_iter()
        .filter(|p| !is_signature_param(&name(p), azure))
        .collect()
}

/// The source an `https://` URL is recorded and shown as (see [`RemoteRef::source`]).
fn http_source(url: &str) -> String {
    let base = transport::shown(url.split(['?', '#']).next().unwrap_or(url));
    let kept = object_params(url);
    if kept.is_empty() {
        return base;
    }
    let h = blake3::hash(kept.join("&").as_bytes()).to_hex();
    format!(
        "{base}?{} (query {})",
        transport::hide_values(kept.iter().copied()),
        &h.as_str()[..12]
    )
}

/// The `HOST[:PORT]` of an S3 endpoint URL, lower-case, without user-info; and whether
/// that is all the URL says (no path), so the name loses nothing of it.
fn endpoint_host(ep: &str) -> (String, bool) {
    let rest = ep.split_once("://").map_or(ep, |x| x.1);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |x| x.1);
    let tail = rest[end..].trim_end_matches('/');
    (
        host.to_ascii_lowercase(),
        tail.is_empty() && host == authority,
    )
}

impl fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteRef::Oras(r) => write!(f, "oras://{r}"),
            RemoteRef::Docker(r) => write!(f, "docker://{r}"),
            RemoteRef::Http(u) => f.write_str(&http_source(u)),
            RemoteRef::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// Turn a URL path (`host:port/a/b/File.sif`) into a valid local name: lower-case, each
/// part reduced to the OCI grammar (other characters become `-`; a run of separators
/// that the grammar does not allow, such as `-.` or `_-`, becomes one `-`; `..` becomes
/// `.` and `___` becomes `__`; separators at either end are dropped).
fn sanitize_path(p: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (i, part) in p.split('/').filter(|x| !x.is_empty()).enumerate() {
        if i == 0 {
            // The host keeps its port.
            parts.push(part.to_ascii_lowercase());
            continue;
        }
        let mapped: String = part
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let mut s = String::with_capacity(mapped.len());
        let mut run = String::new();
        for c in mapped.chars().chain(std::iter::once('a')) {
            if c.is_ascii_alphanumeric() {
                s.push_str(&separator(&run));
                run.clear();
                s.push(c);
            } else {
                run.push(c);
            }
        }
        s.pop();
        let s = s
            .trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string();
        if !s.is_empty() {
            parts.push(s);
        }
    }
    if parts.len() == 1 {
        parts.push("image".into());
    }
    parts.join("/")
}

/// A run of `.`, `_` and `-` between two letters or digits, as the name grammar allows it:
/// only dots, one `.`; only underscores, `_` or `__`; only dashes, as it is; a mix, `-`.
fn separator(run: &str) -> String {
    if run.is_empty() || run.bytes().all(|b| b == b'-') {
        run.to_string()
    } else if run.bytes().all(|b| b == b'.') {
        ".".into()
    } else if run.bytes().all(|b| b == b'_') {
        if run.len() == 1 { "_" } else { "__" }.into()
    } else {
        "-".into()
    }
}

/// How a download (or an `oras://` upload) advances, for a caller that shows it. The
/// library prints nothing.
pub trait Progress: Send + Sync {
    /// A download starts (or resumes at `at` bytes); `total` is its size when known.
    fn start(&self, total: Option<u64>, at: u64);
    /// `done` bytes are in.
    fn advance(&self, done: u64);
    /// The download is over (done or failed).
    fn finish(&self);
    /// Nothing has come for a few seconds: `what` says what is awaited ("an answer from
    /// `URL`"). Told once per wait.
    fn waiting(&self, what: &str) {
        let _ = what;
    }
    /// Asked after each [`Progress::advance`]: true stops the transfer with
    /// [`RemoteError::Stopped`], and nothing is stored (a download commits nothing; an
    /// upload stops before a manifest names it). An embedding program's progress callback
    /// failed, or its user cancelled.
    fn stop(&self) -> bool {
        false
    }
}

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

/// A shared [`Progress`] receiver in [`RemoteOptions`].
#[derive(Clone)]
pub struct ProgressHook(pub std::sync::Arc<dyn Progress>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook(..)")
    }
}

/// One download's progress: tells the hook, if any, and that it ended when dropped.
pub(crate) struct Report {
    hook: Option<std::sync::Arc<dyn Progress>>,
    /// The download, as shown in an error.
    url: String,
}

impl Report {
    pub(crate) fn start(opts: &RemoteOptions, url: &str, total: Option<u64>, at: u64) -> Report {
        let hook = opts.progress.as_ref().map(|h| h.0.clone());
        if let Some(h) = &hook {
            h.start(total, at);
        }
        Report {
            hook,
            url: transport::shown(url),
        }
    }

    /// Whether the hook asked to stop.
    pub(crate) fn stopped(&self) -> bool {
        self.hook.as_ref().is_some_and(|h| h.stop())
    }

    /// Tell the hook `done` bytes are in (or out); an error when it asks to stop.
    pub(crate) fn advance(&self, done: u64) -> Result<(), RemoteError> {
        if let Some(h) = &self.hook {
            h.advance(done);
            if h.stop() {
                return Err(RemoteError::Stopped {
                    url: self.url.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(h) = &self.hook {
            h.finish();
        }
    }
}

/// Options for pulls and pushes.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// Allow plain HTTP to hosts that are not loopback.
    pub insecure: bool,
    /// S3 endpoint (else `AWS_ENDPOINT_URL`, else AWS).
    pub endpoint: Option<String>,
    /// Told how a download advances (the command line draws a bar on a terminal); `None`
    /// tells nobody.
    pub progress: Option<ProgressHook>,
    /// Labels to record.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Whether a pull may re-point a pinned name (`pull --force`).
    pub repoint: crate::cache::Repoint,
    /// How much a download may write, and the free space it must leave.
    pub limits: crate::cache::limits::Limits,
    /// Download again even when the remote says its content is what the name already
    /// holds (`pull --force`).
    pub refetch: bool,
    /// `docker://`: the platform to pull, `os/arch[/variant]` (default: this machine's).
    pub platform: Option<String>,
    /// `docker://`: the squashfs compression of the SIF (default gzip).
    pub squashfs_comp: Option<String>,
}

/// What the cache holds from an earlier pull of the same remote under the same name: a
/// pull compares it with the remote before downloading anything.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// The remote's digest of the content (`sha256:...`; oras:// compares the layer).
    pub remote_digest: Option<String>,
    /// The `ETag` it was served with (https:// and s3://).
    pub etag: Option<String>,
    /// The `Last-Modified` it was served with (https://).
    pub last_modified: Option<String>,
}

/// What a protocol's pull brought: new content, or word that the name's content is
/// current.
pub enum Pulled {
    Fresh(crate::cache::Ingested, Fetched),
    Unchanged,
}

/// The outcome of [`pull`]: the name's entry, and whether anything was downloaded.
#[derive(Clone, Debug)]
pub struct PullOutcome {
    pub entry: Entry,
    /// False when the remote was unchanged and the cached content was kept.
    pub downloaded: bool,
}

/// What a finished pull knows about the remote content, recorded in the index.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    pub media_type: Option<String>,
    pub remote_digest: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// `get REMOTE`: the cached path if this remote was pulled under its name before,
/// otherwise pull it first (once, however many processes ask at the same moment).
pub fn get_or_pull(
    cache: &Cache,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> Result<PathBuf, RemoteError> {
    let name = remote.default_name(opts)?;
    if let Some(p) = cached_from(cache, &name, remote, opts)? {
        return Ok(p);
    }
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

/// The platform a `docker://` pull asks for: `--platform`, else this machine's.
fn docker_platform_of(opts: &RemoteOptions) -> Result<docker::Platform, String> {
    match &opts.platform {
        Some(p) => docker::Platform::parse(p),
        None => Ok(docker::Platform::host()),
    }
}

/// Whether `rec` was pulled from `remote` (for `docker://`, for the platform asked for).
fn pulled_from(rec: &crate::cache::RefRecord, remote: &RemoteRef, opts: &RemoteOptions) -> bool {
    if !rec
        .source
        .as_deref()
        .is_some_and(|s| remote.is_source(s, opts))
    {
        return false;
    }
    match (remote, docker_platform_of(opts)) {
        (RemoteRef::Docker(_), Ok(asked)) => rec
            .labels
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
    match cache.get_where(name, pulled_from_here) {
        Ok(p) => Ok(p),
        Err(CacheError::BlobMissing { .. }) | Err(CacheError::Quarantined { .. }) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `pull REMOTE [--name REF]`: download, unless the name already holds what the remote
/// offers (unless `opts.refetch`), and name it.
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
        Pulled::Unchanged => {
            // One lookup: the file is checked in place and the use recorded, for the entry
            // reported. A name re-pointed away from this remote meanwhile is not reported as
            // its content.
            let source = remote.source(opts);
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
    if let Some(sha) = sha {
        cache.record_remote_digest(&entry.digest, &sha)?;
    }
    Ok(where_)
}

/// `search REMOTE`: tags of a repository, or the registry's catalog.
pub fn search(remote: &str, opts: &RemoteOptions) -> Result<Vec<String>, RemoteError> {
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

/// The sha256 of what `f` reads (`path` names it in errors), as a remote knows a blob:
/// `sha256:<hex>`.
pub fn sha256_of(
    f: &mut impl std::io::Read,
    path: &std::path::Path,
) -> Result<String, RemoteError> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| RemoteError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(&h.finalize())))
}

/// `file` opened again, with a read position of its own at the start: each attempt of an
/// upload reads it whole, and never shares an offset with an earlier attempt's reader. The
/// open file is reached through `/proc/self/fd`, so this works after the path was removed
/// or re-pointed; where `/proc` is not mounted, a duplicate rewound to the start.
pub(crate) fn reopen(file: &std::fs::File) -> std::io::Result<std::fs::File> {
    use std::io::Seek;
    use std::os::fd::AsRawFd;
    match std::fs::File::open(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(f) => Ok(f),
        Err(_) => {
            let mut f = file.try_clone()?;
            f.rewind()?;
            Ok(f)
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_references_parse_and_name_themselves() {
        let r = RemoteRef::parse("oras://127.0.0.1:5000/lab/tool:1.2").unwrap();
        assert_eq!(r.to_string(), "oras://127.0.0.1:5000/lab/tool:1.2");
        assert_eq!(
            r.default_name(&RemoteOptions::default()).unwrap().key(),
            "127.0.0.1:5000/lab/tool:1.2"
        );
        let r = RemoteRef::parse("https://example.org/Files/My%20Tool.sif?x=1").unwrap();
        let lossy = r.default_name(&RemoteOptions::default()).unwrap().key();
        assert!(
            lossy.starts_with("example.org/files/my-20tool.sif-") && lossy.ends_with(":latest"),
            "{lossy}"
        );
        let r = RemoteRef::parse("https://u:pw@example.org/files/tool.sif").unwrap();
        assert_eq!(
            r.default_name(&RemoteOptions::default()).unwrap().key(),
            "example.org/files/tool.sif:latest"
        );
        let r = RemoteRef::parse("s3://bucket-1/images/tool.sif").unwrap();
        assert_eq!(
            r.default_name(&RemoteOptions::default()).unwrap().key(),
            "s3/bucket-1/images/tool.sif:latest"
        );
        let through = RemoteOptions {
            endpoint: Some("http://u:secret@127.0.0.1:9000".into()),
            ..RemoteOptions::default()
        };
        // An endpoint with user-info is refused, and the refusal does not show the secret.
        let refused = r.default_name(&through).unwrap_err().to_string();
        assert!(refused.contains("user or password"), "{refused}");
        assert!(!refused.contains("secret"), "{refused}");
        assert_eq!(
            r.source(&through),
            "s3://bucket-1/images/tool.sif (endpoint http://***@127.0.0.1:9000)"
        );
        let plain = RemoteOptions {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..RemoteOptions::default()
        };
        assert_eq!(
            r.default_name(&plain).unwrap().key(),
            "127.0.0.1:9000/s3/bucket-1/images/tool.sif:latest"
        );
        for bad in [
            "ftp://x/y",
            "oras://",
            "oras://host",
            "s3://b/",
            "s3://UP/x",
            "https:///x",
            "oras://h/a b",
        ] {
            assert!(RemoteRef::parse(bad).is_err(), "{bad}");
        }
    }

    /// The keys the issue found naming nothing, and names valid keys gave before, kept.
    #[test]
    fn every_s3_key_gives_a_valid_default_name_and_valid_ones_keep_theirs() {
        let opts = RemoteOptions::default();
        let name = |key: &str| {
            RemoteRef::parse(&format!("s3://bucket/{key}"))
                .unwrap()
                .default_name(&opts)
                .map(|r| r.key())
        };
        let long = "k".repeat(300) + ".sif";
        for key in [
            "n/x-.sif",
            "x_-y",
            "a._b",
            "uni/ñandú 𝄞.sif",
            "-_-/.-.",
            "𝄞",
            long.as_str(),
        ] {
            let n = name(key).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert!(n.len() <= 255 + ":latest".len(), "{key}: {n}");
        }
        // Names valid keys gave before this change.
        for (key, was) in [
            ("images/tool.sif", "s3/bucket/images/tool.sif:latest"),
            ("a/b--c.sif", "s3/bucket/a/b--c.sif:latest"),
            ("a/b__c.sif", "s3/bucket/a/b__c.sif:latest"),
            ("Tool.sif", "s3/bucket/tool.sif-"),
            ("a..b.sif", "s3/bucket/a.b.sif-"),
            ("a___b", "s3/bucket/a__b-"),
            ("x y.sif", "s3/bucket/x-y.sif-"),
        ] {
            let n = name(key).unwrap();
            assert!(n.starts_with(was), "{key}: {n}, was {was}");
        }
    }

    proptest::proptest! {
        /// Any key `s3://` accepts gives a valid default name, through an endpoint or not.
        #[test]
        fn any_s3_key_gives_a_valid_default_name(
            key in "[a-zA-Z0-9._~ /%?#{}+!$'()*,;=@:ñ𝄞-]{1,300}",
            through in proptest::bool::ANY,
        ) {
            let opts = RemoteOptions {
                endpoint: through.then(|| "http://127.0.0.1:9000".to_string()),
                ..RemoteOptions::default()
            };
            if let Ok(r) = RemoteRef::parse(&format!("s3://bucket/{key}")) {
                let named = r.default_name(&opts);
                proptest::prop_assert!(named.is_ok(), "{key:?}: {:?}", named.err());
            }
        }
    }
}
