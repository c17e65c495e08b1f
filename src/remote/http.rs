//! A plain `https://` (or loopback/`--insecure` `http://`) URL.
//!
//! The body streams through the verifying [`Sink`] into `tmp/`. `Content-Length`, when
//! given, is the size limit and must be met exactly; a connection that drops mid-body is
//! resumed with `Range: bytes=N-` (a server that answers `200` instead of `206` makes the
//! download start over). `ETag` and `Last-Modified` are recorded with the name, and the
//! next pull's `HEAD` is conditional on them (`If-None-Match`, else `If-Modified-Since`):
//! `304 Not Modified`, or the same `ETag`, means nothing is downloaded; a server that
//! refuses the `HEAD` (a pre-signed URL is signed for `GET` only) is asked the same with a
//! conditional `GET`, whose body is read only when the content changed. A `HEAD` that says
//! `Content-Length: 0` declares no size: the `GET`'s own length holds. There is
//! no digest to check against (a URL names no content), so the BLAKE3 digest computed on
//! the way in becomes the content's identity from then on.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, IF_MODIFIED_SINCE, IF_NONE_MATCH};

use super::error::RemoteError;
use super::registry::{Session, Validators, header_str};
use super::sink::Sink;
use super::transport::Transport;
use super::types::{Fetched, Known, Pulled, RemoteOptions};
use crate::cache::Cache;

/// Download `url` into `tmp/`, verified and resumable; nothing when the server says the
/// content the cache holds from it (`known`) is current.
pub(super) async fn pull(
    t: &Transport,
    cache: &Cache,
    url: &str,
    opts: &RemoteOptions,
    known: Option<&Known>,
) -> Result<Pulled, RemoteError> {
    t.check_url(url)?;
    // Messages and records name the URL without its user-info.
    let shown = super::transport::shown(url);
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    // Ask for the headers first: size limit, ETag, Last-Modified; conditional on what the
    // cache holds from here, so an unchanged file answers 304 and is not downloaded.
    let client = t.client().clone();
    let (etag, modified) =
        known.map_or((None, None), |k| (k.etag.clone(), k.last_modified.clone()));
    let head = t
        .send(url, &|| {
            let rb = client.head(url);
            match (&etag, &modified) {
                (Some(e), _) => rb.header(IF_NONE_MATCH, e.as_str()),
                (None, Some(m)) => rb.header(IF_MODIFIED_SINCE, m.as_str()),
                (None, None) => rb,
            }
        })
        .await?;
    if head.status() == StatusCode::NOT_MODIFIED {
        return Ok(Pulled::Unchanged);
    }
    let (mut size, mut validators) = (None, Validators::default());
    if head.status().is_success() {
        // `Content-Length: 0` on a HEAD is what some servers say when they do not know
        // (an image is never empty): the GET's own length is trusted instead.
        size = header_str(&head, CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&n| n > 0);
        validators = Validators::of(&head);
        // A server that ignores conditional HEADs still names its version.
        if etag.is_some() && validators.etag == etag {
            return Ok(Pulled::Unchanged);
        }
    } else if head.status().as_u16() == 404 {
        return Err(RemoteError::NotFound { host, what: shown });
    } else if etag.is_some() || modified.is_some() {
        // A HEAD refused (a pre-signed URL is signed for GET only): ask with a
        // conditional GET whether the content changed, and read its body only if so.
        let get = t
            .send(url, &|| {
                let rb = client.get(url);
                match (&etag, &modified) {
                    (Some(e), _) => rb.header(IF_NONE_MATCH, e.as_str()),
                    (None, Some(m)) => rb.header(IF_MODIFIED_SINCE, m.as_str()),
                    (None, None) => rb,
                }
            })
            .await?;
        if get.status() == StatusCode::NOT_MODIFIED
            || (get.status().is_success() && etag.is_some() && Validators::of(&get).etag == etag)
        {
            return Ok(Pulled::Unchanged);
        }
        // Changed: downloaded below, resumable (this answer's body is not read).
    }
    let mut sink = Sink::new(cache, &shown, size, &opts.limits)?;
    let mut s = Session::new(t, &host, None);
    let used = super::registry::download(&mut s, "", url, &mut sink, opts, validators).await?;
    let (ingested, sha) = sink.finish(size, None)?;
    Ok(Pulled::Fresh(
        ingested,
        Fetched {
            media_type: None,
            remote_digest: Some(sha),
            etag: used.etag,
            last_modified: used.last_modified,
        },
    ))
}
