//! Remotes: where images come from and go to. OCI registries (`oras://`, SIF artifacts
//! as Apptainer pushes them), plain `https://` URLs, and S3-compatible stores (`s3://`).
//!
//! # Layers
//!
//! ```text
//! mod.rs (RemoteRef, pull/push orchestration, per-pull lock)
//!   ├─ oci.rs   distribution protocol: manifests, blobs, uploads, tags, catalog
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
//! * The remote source is recorded with the name (`inspect`, `list --json`).

pub mod auth;
pub mod http;
pub mod oci;
mod runtime;
pub mod s3;
pub mod sink;
pub mod transport;

use std::fmt;
use std::path::PathBuf;

use crate::cache::{Cache, CacheError, Entry};
use crate::format::reference::{Reference, ReferenceError};

/// A parsed remote reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteRef {
    /// `oras://host[:port]/repo[:tag|@sha256:<hex>]`
    Oras(oci::OciRef),
    /// `https://...` or `http://...`
    Http(String),
    /// `s3://bucket/key`
    S3 { bucket: String, key: String },
}

/// Why a string is not a remote reference, or cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("invalid remote reference `{shown}`: {reason}")]
    BadRef { shown: String, reason: String },
    #[error(
        "plain HTTP to `{host}` is refused: use https, or pass --insecure (loopback addresses are allowed)"
    )]
    Insecure { host: String },
    #[error(
        "cannot reach `{url}`: {detail} (check the address and the network; {attempts} attempts)"
    )]
    Network {
        url: String,
        detail: String,
        attempts: u32,
    },
    /// The HTTP client could not be made, before any request: on Linux, usually no CA
    /// certificates on the machine (rustls reads the system's roots).
    #[error(
        "cannot set up the HTTP client: {detail} (TLS needs the system's CA certificates: install the `ca-certificates` package, or point SSL_CERT_FILE at a bundle)"
    )]
    ClientSetup { detail: String },
    #[error("`{url}` answered {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("`{what}` was not found on `{host}`")]
    NotFound { host: String, what: String },
    #[error("`{host}` refused the credentials{user}: {detail} (run `sregistry login {host}`)", user = .user.as_ref().map(|u| format!(" of `{u}`")).unwrap_or_default())]
    Unauthorized {
        host: String,
        user: Option<String>,
        detail: String,
    },
    #[error("`{host}` denies {action} on `{repository}` with these credentials{detail}")]
    Denied {
        host: String,
        repository: String,
        action: &'static str,
        detail: String,
    },
    #[error(
        "`{url}` sent content that does not match {expected}: got {actual}; nothing was stored"
    )]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("`{url}` sent more than the {limit} bytes declared; nothing was stored")]
    TooLong { url: String, limit: u64 },
    #[error(
        "`{url}` ended after {got} bytes on each of {attempts} attempts (the connection broke off); nothing was stored"
    )]
    BrokeOff {
        url: String,
        got: u64,
        attempts: u32,
    },
    #[error("`{url}` ended after {got} of {expected} bytes; nothing was stored")]
    Truncated {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("`{url}` is not a SIF artifact: {detail}")]
    NotSif { url: String, detail: String },
    #[error("bad answer from `{url}`: {detail}")]
    Protocol { url: String, detail: String },
    #[error("S3 `{url}`: {detail}")]
    S3 { url: String, detail: String },
    #[error("credentials file `{path}`: {detail}")]
    Credentials { path: PathBuf, detail: String },
    #[error("cannot write the download into the cache at `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

impl RemoteError {
    /// Errors that mean "no such image" (exit code 3).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RemoteError::NotFound { .. })
            || matches!(self, RemoteError::Cache(c) if c.is_not_found())
    }

    /// Errors about what the user typed (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, RemoteError::BadRef { .. } | RemoteError::Reference(_))
            || matches!(self, RemoteError::Cache(c) if c.is_usage())
    }
}

pub(crate) fn bad_ref(input: &str, reason: impl Into<String>) -> RemoteError {
    RemoteError::BadRef {
        shown: crate::format::reference::shown(input),
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
        if s.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(bad_ref(s, "it contains spaces or control characters"));
        }
        if let Some(rest) = s.strip_prefix("oras://") {
            return oci::OciRef::parse(rest)
                .map(RemoteRef::Oras)
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
            return Ok(RemoteRef::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        let scheme = s.split("://").next().unwrap_or("");
        Err(bad_ref(
            s,
            format!("unknown scheme `{scheme}://` (use oras://, https://, http:// or s3://)"),
        ))
    }

    /// The local name a pulled image gets unless `--name` says otherwise: the reference
    /// without its scheme, made to fit the local grammar.
    pub fn default_name(&self) -> Result<Reference, RemoteError> {
        let text = match self {
            RemoteRef::Oras(r) => r.local_name(),
            RemoteRef::Http(url) => {
                let after = url.split_once("://").map(|x| x.1).unwrap_or(url);
                let no_query = after.split(['?', '#']).next().unwrap_or(after);
                sanitize_path(no_query)
            }
            RemoteRef::S3 { bucket, key } => sanitize_path(&format!("s3/{bucket}/{key}")),
        };
        Ok(Reference::parse(&text)?)
    }
}

impl fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteRef::Oras(r) => write!(f, "oras://{r}"),
            RemoteRef::Http(u) => f.write_str(u),
            RemoteRef::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// Turn a URL path (`host:port/a/b/File.sif`) into a valid local name: lower-case, each
/// part reduced to the OCI grammar (other characters become `-`).
fn sanitize_path(p: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (i, part) in p.split('/').filter(|x| !x.is_empty()).enumerate() {
        if i == 0 {
            // The host keeps its port.
            parts.push(part.to_ascii_lowercase());
            continue;
        }
        let mut s: String = part
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
        while s.contains("..") {
            s = s.replace("..", ".");
        }
        while s.contains("___") {
            s = s.replace("___", "__");
        }
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

/// How a download advances, for a caller that shows it. The library prints nothing.
pub trait Progress: Send + Sync {
    /// A download starts (or resumes at `at` bytes); `total` is its size when known.
    fn start(&self, total: Option<u64>, at: u64);
    /// `done` bytes are in.
    fn advance(&self, done: u64);
    /// The download is over (done or failed).
    fn finish(&self);
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
pub(crate) struct Report(Option<std::sync::Arc<dyn Progress>>);

impl Report {
    pub(crate) fn start(opts: &RemoteOptions, total: Option<u64>, at: u64) -> Report {
        let hook = opts.progress.as_ref().map(|h| h.0.clone());
        if let Some(h) = &hook {
            h.start(total, at);
        }
        Report(hook)
    }

    pub(crate) fn advance(&self, done: u64) {
        if let Some(h) = &self.0 {
            h.advance(done);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
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
    let name = remote.default_name()?;
    if let Some(p) = cached_from(cache, &name, remote)? {
        return Ok(p);
    }
    cache.ensure_layout()?;
    let _lock = cache.pull_lock(&remote.to_string())?;
    // Whoever held the lock before us may have pulled it.
    if let Some(p) = cached_from(cache, &name, remote)? {
        return Ok(p);
    }
    Ok(pull_locked(cache, remote, &name, opts)?.path)
}

/// The path of `name` if it exists and was pulled from `remote`.
fn cached_from(
    cache: &Cache,
    name: &Reference,
    remote: &RemoteRef,
) -> Result<Option<PathBuf>, RemoteError> {
    match cache.entry(name) {
        Ok(e) if e.source.as_deref() == Some(remote.to_string().as_str()) => {
            match cache.get(name) {
                Ok(p) => Ok(Some(p)),
                Err(CacheError::BlobMissing { .. }) | Err(CacheError::Quarantined { .. }) => {
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        }
        Ok(_) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `pull REMOTE [--name REF]`: download (unless the recorded remote digest is current)
/// and name it.
pub fn pull(
    cache: &Cache,
    remote: &RemoteRef,
    name: Option<&Reference>,
    opts: &RemoteOptions,
) -> Result<Entry, RemoteError> {
    let name = match name {
        Some(n) => {
            crate::cache::refuse_digest_on_target(n)?;
            n.clone()
        }
        None => remote.default_name()?,
    };
    cache.ensure_layout()?;
    let _lock = cache.pull_lock(&remote.to_string())?;
    pull_locked(cache, remote, &name, opts)
}

fn pull_locked(
    cache: &Cache,
    remote: &RemoteRef,
    name: &Reference,
    opts: &RemoteOptions,
) -> Result<Entry, RemoteError> {
    let (c, remote_, o) = (cache.clone(), remote.clone(), opts.clone());
    let (ingested, fetched) = runtime::run(async move {
        let (cache, opts) = (&c, &o);
        let transport = transport::Transport::new(opts.insecure)?;
        match &remote_ {
            RemoteRef::Oras(r) => oci::pull(&transport, cache, r, opts).await,
            RemoteRef::Http(url) => http::pull(&transport, cache, url, opts).await,
            RemoteRef::S3 { bucket, key } => s3::pull(cache, bucket, key, opts).await,
        }
    })?;
    let mut labels = opts.labels.clone();
    if let Some(e) = &fetched.etag {
        labels.insert("org.sregistry.etag".into(), e.clone());
    }
    if let Some(l) = &fetched.last_modified {
        labels.insert("org.sregistry.last-modified".into(), l.clone());
    }
    let entry = cache.commit_ingested(
        ingested,
        name,
        crate::cache::Provenance {
            source: remote.to_string(),
            labels,
            media_type: fetched.media_type,
            remote_digest: fetched.remote_digest,
        },
        opts.repoint,
    )?;
    Ok(entry)
}

/// `push REF REMOTE`: upload a cached image.
pub fn push(
    cache: &Cache,
    name: &Reference,
    remote: &RemoteRef,
    opts: &RemoteOptions,
) -> Result<String, RemoteError> {
    let entry = cache.entry(name)?;
    let path = cache.get(name)?;
    let (e, remote_, o) = (entry.clone(), remote.clone(), opts.clone());
    let (where_, sha) = runtime::run(async move {
        let (entry, opts) = (&e, &o);
        let transport = transport::Transport::new(opts.insecure)?;
        match &remote_ {
            RemoteRef::Oras(r) => oci::push(&transport, &path, entry, r, opts).await,
            RemoteRef::Http(url) => Err(RemoteError::BadRef {
                shown: url.clone(),
                reason: "pushing to a plain URL is not supported; push to oras:// or s3://".into(),
            }),
            RemoteRef::S3 { bucket, key } => s3::push(&path, bucket, key, opts).await,
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
        let transport = transport::Transport::new(opts.insecure)?;
        oci::search(&transport, &rest, &opts).await
    })
}

/// `login HOST`: check the credentials against the registry, then store them.
pub fn login(
    host: &str,
    user: &str,
    password: &str,
    opts: &RemoteOptions,
) -> Result<PathBuf, RemoteError> {
    let creds = auth::Credentials {
        username: user.to_string(),
        password: password.to_string(),
    };
    let (h, c, o) = (host.to_string(), creds.clone(), opts.clone());
    runtime::run(async move {
        let transport = transport::Transport::new(o.insecure)?;
        oci::check_login(&transport, &h, &c, &o).await
    })?;
    auth::store_credentials(host, Some(&creds))
}

/// A blob digest as the remote knows it, e.g. `sha256:<hex>`.
pub fn sha256_of_file(path: &std::path::Path) -> Result<String, RemoteError> {
    use sha2::Digest as _;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|source| RemoteError::Io {
        path: path.to_path_buf(),
        source,
    })?;
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
            r.default_name().unwrap().key(),
            "127.0.0.1:5000/lab/tool:1.2"
        );
        let r = RemoteRef::parse("https://example.org/Files/My%20Tool.sif?x=1").unwrap();
        assert_eq!(
            r.default_name().unwrap().key(),
            "example.org/files/my-20tool.sif:latest"
        );
        let r = RemoteRef::parse("s3://bucket-1/images/tool.sif").unwrap();
        assert_eq!(
            r.default_name().unwrap().key(),
            "s3/bucket-1/images/tool.sif:latest"
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
}
