//! S3-compatible object stores, through the `object_store` crate.
//!
//! Bucket and key come from `s3://BUCKET/KEY`; endpoint, region and credentials from the
//! usual AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`), and
//! `--endpoint URL` (which wins). Path-style requests; plain HTTP only to loopback or with
//! `--insecure`. A pull whose object has the ETag the cache holds from it downloads
//! nothing (one `HEAD`). Downloads stream through the verifying `Sink` with the object's size as
//! the limit; uploads are multipart, 16 MiB at a time.
//!
//! An upload that fails, or that its progress hook stops, is aborted: the parts already
//! sent are deleted on the server, and nothing is left under the key. A process about to
//! end on a signal calls [`abort_uploads`] (the command line does, from its signal
//! thread): every upload in flight is aborted the same way, and the process ends once the
//! server has answered the aborts (see [`abort_uploads`] for the bound on that wait).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ObjectStore, ObjectStoreExt};

use super::error::RemoteError;
use super::sink::Sink;
use super::types::{Fetched, Known, Pulled, RemoteOptions};
use crate::cache::Cache;

/// The endpoint an `s3://` remote is reached through: `--endpoint`, else
/// `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`); `None` for AWS itself. It is part of the image's
/// name and recorded source (see `RemoteRef::default_name`). Not checked: see
/// [`checked_endpoint`].
pub(super) fn endpoint(opts: &RemoteOptions) -> Option<String> {
    endpoint_and_origin(opts).map(|(ep, _)| ep)
}

/// The endpoint and where it was given.
fn endpoint_and_origin(opts: &RemoteOptions) -> Option<(String, &'static str)> {
    opts.endpoint
        .clone()
        .filter(|e| !e.is_empty())
        .map(|e| (e, "--endpoint"))
        .or_else(|| {
            ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"].iter().find_map(|k| {
                std::env::var(k)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| (v, *k))
            })
        })
}

/// [`endpoint`], refused (a usage error, [`RemoteError::BadEndpoint`]) unless it is an
/// `http://` or `https://` URL with a host, an optional port from 1 to 65535 and an
/// optional path, written in the characters a URL allows: no user or password (S3 signs
/// with the AWS credentials), no query or fragment. Checked before any request, so a typo
/// never reaches the S3 client.
pub(super) fn checked_endpoint(opts: &RemoteOptions) -> Result<Option<String>, RemoteError> {
    let Some((ep, from)) = endpoint_and_origin(opts) else {
        return Ok(None);
    };
    match endpoint_problem(&ep) {
        None => Ok(Some(ep)),
        Some(reason) => Err(RemoteError::BadEndpoint {
            shown: super::transport::shown(&ep),
            from,
            reason,
        }),
    }
}

/// What is wrong with `ep` as an S3 endpoint, if anything.
fn endpoint_problem(ep: &str) -> Option<String> {
    let Some((scheme, _)) = ep.split_once("://") else {
        return Some("it has no scheme (http:// or https://)".into());
    };
    if scheme != "http" && scheme != "https" {
        return Some(format!(
            "the scheme is `{scheme}://`, not http:// or https://"
        ));
    }
    const ALLOWED: &str = "-._~:/?#[]@!$&'()*+,;=%";
    if let Some(c) = ep
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !ALLOWED.contains(*c))
    {
        return Some(format!(
            "it contains {c:?}, which a URL cannot hold as written"
        ));
    }
    let url = match reqwest::Url::parse(ep) {
        Ok(u) => u,
        Err(e) => return Some(format!("it is not a URL ({e})")),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Some("it has no host".into());
    }
    if url.port() == Some(0) {
        return Some("its port is 0 (a port is 1 to 65535)".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some(
            "it carries a user or password (S3 requests are signed with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead)"
                .into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Some("it has a query (`?`) or fragment (`#`)".into());
    }
    None
}

/// The object's key as S3 knows it: the key exactly as given (`col/a?b.sif` is that key,
/// as every other S3 client reads and writes it), not percent-encoded the way
/// `Path::from` encodes characters some stores advise against. A key object_store cannot
/// hold as written (an empty part: `a//b`, `dir/`) is refused by `RemoteRef::parse`; the
/// fallback is never reached from there.
fn object_path(key: &str) -> object_store::path::Path {
    object_store::path::Path::parse(key).unwrap_or_else(|_| object_store::path::Path::from(key))
}

fn open(bucket: &str, opts: &RemoteOptions) -> Result<(Arc<dyn ObjectStore>, String), RemoteError> {
    // The `AWS_*` settings from the environment, as the S3 client's own `from_env` reads
    // them, except that an empty one counts as unset (an empty `AWS_ENDPOINT_URL` made
    // the client panic).
    let mut b = AmazonS3Builder::new();
    for (k, v) in std::env::vars_os() {
        if let (Some(k), Some(v)) = (k.to_str(), v.to_str())
            && k.starts_with("AWS_")
            && !v.is_empty()
            && let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            b = b.with_config(key, v);
        }
    }
    let mut b = b.with_bucket_name(bucket);
    // The same bounds as every other remote: a silent connection times out after
    // SREGISTRY_TIMEOUT and the request is given up after about two of them; no bound on
    // a whole transfer (object_store's default, 30 s per request, would cut off a large
    // image that is still streaming). Set before the endpoint, whose `allow_http` lives
    // in the same client options.
    let idle = super::transport::idle_timeout()?;
    let mut client = object_store::ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(idle.min(std::time::Duration::from_secs(10)))
        .with_read_timeout(idle);
    // Client settings from the environment (AWS_PROXY_URL, AWS_TIMEOUT, ...), which
    // `from_env` read into the options replaced here, still apply.
    for (k, v) in std::env::vars() {
        if let Some(rest) = k.strip_prefix("AWS_")
            && let Ok(AmazonS3ConfigKey::Client(key)) =
                format!("aws_{}", rest.to_ascii_lowercase()).parse::<AmazonS3ConfigKey>()
        {
            client = client.with_config(key, v);
        }
    }
    b = b
        .with_client_options(client)
        .with_retry(object_store::RetryConfig {
            backoff: Default::default(),
            // SREGISTRY_RETRIES, as for every other remote (it was 3 whatever was set).
            max_retries: super::transport::retries()? as usize,
            retry_timeout: idle * 2,
        });
    if let Some(ep) = &checked_endpoint(opts)? {
        let host = ep
            .split_once("://")
            .map(|x| x.1)
            .unwrap_or(ep)
            .split('/')
            .next()
            .unwrap_or("");
        let plain = ep.starts_with("http://");
        if plain && !opts.insecure && !super::transport::is_loopback(host) {
            return Err(RemoteError::Insecure {
                host: host.to_string(),
            });
        }
        b = b
            .with_endpoint(ep)
            .with_allow_http(plain)
            .with_virtual_hosted_style_request(false);
    }
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        b = b.with_region("us-east-1");
    }
    if anonymous() {
        // No credentials given: unsigned requests (a public bucket answers them), never
        // object_store's fallback to the EC2 instance metadata service, which off EC2 is
        // a stranger's address (or a wait). AWS_EC2_METADATA_DISABLED=false asks for it.
        b = b.with_skip_signature(true);
    }
    let url = format!("s3://{bucket}");
    let store = b.build().map_err(|e| RemoteError::S3 {
        url: url.clone(),
        detail: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    Ok((Arc::new(store), url))
}

/// Whether requests go unsigned: no access key, web identity or container credentials
/// in the environment, and the EC2 instance metadata service not asked for
/// (`AWS_EC2_METADATA_DISABLED=false`).
pub(super) fn anonymous() -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let credentials = [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|k| set(k));
    let metadata_asked = std::env::var("AWS_EC2_METADATA_DISABLED")
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("false"));
    !credentials && !metadata_asked
}

fn s3_err(url: &str, e: object_store::Error) -> RemoteError {
    match e {
        object_store::Error::NotFound { .. } => {
            let rest = url.strip_prefix("s3://").unwrap_or(url);
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            // S3 says which is missing in the body of its 404 (a HEAD has none: there
            // the key is blamed, as S3 itself cannot tell).
            if super::transport::error_chain(&e).contains("NoSuchBucket") {
                return RemoteError::NoSuchBucket {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                };
            }
            RemoteError::NotFound {
                host: format!("S3 bucket {bucket}"),
                what: key.to_string(),
            }
        }
        other => {
            let text = super::transport::error_chain(&other);
            let hint = if text.contains("SignatureDoesNotMatch")
                || text.contains("InvalidAccessKeyId")
                || text.contains("403")
            {
                if anonymous() {
                    " (no AWS credentials were given, so the request was sent unsigned: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or on EC2 AWS_EC2_METADATA_DISABLED=false for the instance role)"
                } else {
                    " (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                }
            } else {
                ""
            };
            RemoteError::S3 {
                url: url.to_string(),
                detail: format!("{text}{hint}"),
                source: Some(Box::new(other)),
            }
        }
    }
}

/// Download `s3://bucket/key` into `tmp/`, verified; nothing when the object's ETag is the
/// one the cache holds from it (`known`).
pub(super) async fn pull(
    cache: &Cache,
    bucket: &str,
    key: &str,
    opts: &RemoteOptions,
    known: Option<&Known>,
) -> Result<Pulled, RemoteError> {
    let (store, _) = open(bucket, opts)?;
    let url = format!("s3://{bucket}/{key}");
    let path = object_path(key);
    if let Some(etag) = known.and_then(|k| k.etag.as_deref()) {
        let meta = store.head(&path).await.map_err(|e| s3_err(&url, e))?;
        if meta.e_tag.as_deref() == Some(etag) {
            return Ok(Pulled::Unchanged);
        }
    }
    let res = store.get(&path).await.map_err(|e| s3_err(&url, e))?;
    let size = res.meta.size;
    let etag = res.meta.e_tag.clone();
    let modified = Some(res.meta.last_modified.to_rfc2822());
    let mut sink = Sink::new(cache, &url, Some(size), &opts.limits)?;
    let report = super::transport::Report::start(opts, &url, Some(size), 0);
    let mut stream = res.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| s3_err(&url, e))?;
        sink.write(chunk)?;
        report.advance(sink.written())?;
    }
    drop(report);
    let (ingested, sha) = sink.finish(Some(size), None)?;
    Ok(Pulled::Fresh(
        ingested,
        Fetched {
            media_type: None,
            remote_digest: Some(sha),
            etag,
            last_modified: modified,
        },
    ))
}

/// Multipart uploads in flight in this process (counted from before the upload is made
/// until its abort has been answered), and the token that tells them to abort.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static ABORT: LazyLock<tokio_util::sync::CancellationToken> =
    LazyLock::new(tokio_util::sync::CancellationToken::new);

/// One upload counted in [`IN_FLIGHT`] while it lives.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// For a process about to end on a signal: tell every `s3://` upload in flight (and any
/// that starts later) to abort its multipart upload, so that no part is left on the
/// server, and return how many have not yet finished aborting ([`uploads_in_flight`]
/// says when that reaches 0). An upload told so before all its parts are on the server
/// never returns to its caller: it lets the parts in flight finish, aborts, then waits for
/// the process to end; one told while the server completes it finishes. Not for a
/// process that means to go on.
pub fn abort_uploads() -> usize {
    ABORT.cancel();
    uploads_in_flight()
}

/// How many `s3://` uploads of this process are in flight (or still aborting).
pub fn uploads_in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// Upload a file to `s3://bucket/key` (multipart), telling the progress hook as it goes
/// (a hook that asks to stop aborts the upload: nothing is left under the key; so does
/// any failure, and [`abort_uploads`]).
pub(super) async fn push(
    file: &std::fs::File,
    shown: &Path,
    bucket: &str,
    key: &str,
    opts: &RemoteOptions,
) -> Result<(String, Option<String>), RemoteError> {
    use futures_util::future::{Either, select};
    use tokio::io::AsyncReadExt;
    let in_flight = InFlight::enter();
    let (store, _) = open(bucket, opts)?;
    let url = format!("s3://{bucket}/{key}");
    let path = object_path(key);
    // Opened before the upload is made, so that a file that cannot be read leaves no
    // upload behind.
    let mut f = tokio::fs::File::from_std(super::transport::reopen(file).map_err(|source| {
        RemoteError::Io {
            path: shown.to_path_buf(),
            source,
        }
    })?);
    let size = f.metadata().await.ok().map(|m| m.len());
    let mut upload = store
        .put_multipart(&path)
        .await
        .map_err(|e| s3_err(&url, e))?;
    // The parts in flight, outside the work below, so that after a signal or a failure
    // they can be stopped and waited for before the abort: a part still arriving after
    // the abort would be left on the server.
    let mut parts: tokio::task::JoinSet<object_store::Result<()>> = tokio::task::JoinSet::new();
    let fed = async {
        let report = super::transport::Report::start(opts, &url, size, 0);
        let mut done = 0u64;
        let mut chunk: Vec<u8> = Vec::with_capacity(PART);
        let mut sent_parts = 0usize;
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = f.read(&mut buf).await.map_err(|source| RemoteError::Io {
                path: shown.to_path_buf(),
                source,
            })?;
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let take = rest.len().min(PART - chunk.len());
                chunk.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if chunk.len() == PART {
                    while parts.len() >= MAX_PARTS_IN_FLIGHT {
                        finished_part(&mut parts, &url).await?;
                    }
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(PART));
                    parts.spawn(upload.put_part(full.into()));
                    sent_parts += 1;
                    if sent_parts == 1 {
                        // The first part is on its way: the signal tests stop here (on a
                        // thread of its own, so that the part goes on and a signal is
                        // still heard).
                        #[cfg(feature = "test-hooks")]
                        let _ =
                            tokio::task::spawn_blocking(|| crate::testhook::pause("s3-push-part"))
                                .await;
                    }
                }
            }
            done += n as u64;
            report.advance(done)?;
            if n == 0 {
                break;
            }
        }
        // The last part (S3 takes an upload of one part, however small).
        if !chunk.is_empty() || sent_parts == 0 {
            parts.spawn(upload.put_part(chunk.into()));
        }
        // Every part is on its way, none waited for: the signal tests stop here too.
        #[cfg(feature = "test-hooks")]
        let _ = tokio::task::spawn_blocking(|| crate::testhook::pause("s3-push-last-part")).await;
        while !parts.is_empty() {
            finished_part(&mut parts, &url).await?;
        }
        Ok(())
    };
    // On any failure (or a progress hook asking to stop, or `abort_uploads`) before every
    // part is on the server, abort the multipart upload, so no part is left there. Once
    // they are, the upload is completed whatever comes: a completion cut off half way
    // could leave parts that no abort removes. A signal then is too late, and the object
    // is whole.
    let fed: Option<Result<(), RemoteError>> =
        match select(std::pin::pin!(fed), std::pin::pin!(ABORT.cancelled())).await {
            Either::Left((fed, _)) => Some(fed),
            Either::Right(_) => None,
        };
    if let Some(Ok(())) = fed {
        upload.complete().await.map_err(|e| s3_err(&url, e))?;
        return Ok((url, None));
    }
    // The parts in flight are let finish (the process's signal thread waits at most
    // `ABORT_WAIT` for this) before the abort: a part cut off on our side may still be
    // whole on the server and land there after the abort, left over for ever.
    while parts.join_next().await.is_some() {}
    let _ = upload.abort().await;
    match fed {
        Some(Err(e)) => Err(e),
        _ => {
            drop(in_flight);
            // The process is ending on a signal: its signal thread ends it.
            std::future::pending().await
        }
    }
}

/// Wait for one part of an upload to finish; its failure is the upload's.
async fn finished_part(
    parts: &mut tokio::task::JoinSet<object_store::Result<()>>,
    url: &str,
) -> Result<(), RemoteError> {
    match parts.join_next().await {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(s3_err(url, e)),
        Some(Err(e)) => Err(RemoteError::S3 {
            url: url.to_string(),
            detail: format!("a part's upload stopped: {e}"),
            source: Some(Box::new(e)),
        }),
    }
}

/// How many parts of one upload are sent at once.
const MAX_PARTS_IN_FLIGHT: usize = 4;

/// The size of each part of an upload.
const PART: usize = 16 << 20;
