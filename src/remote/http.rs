//! A plain `https://` (or loopback/`--insecure` `http://`) URL.
//!
//! The body streams through the verifying [`Sink`] into `tmp/`. `Content-Length`, when
//! given, is the size limit and must be met exactly; a connection that drops mid-body is
//! resumed with `Range: bytes=N-` (a server that answers `200` instead of `206` makes the
//! download start over). `ETag` and `Last-Modified` are recorded with the name. There is
//! no digest to check against (a URL names no content), so the BLAKE3 digest computed on
//! the way in becomes the content's identity from then on.

use reqwest::header::CONTENT_LENGTH;

use super::oci::{Session, Validators, header_str};
use super::sink::Sink;
use super::transport::Transport;
use super::{Fetched, RemoteError, RemoteOptions};
use crate::cache::Cache;
use crate::cache::Ingested;

/// Download `url` into `tmp/`, verified and resumable.
pub async fn pull(
    t: &Transport,
    cache: &Cache,
    url: &str,
    opts: &RemoteOptions,
) -> Result<(Ingested, Fetched), RemoteError> {
    t.check_url(url)?;
    // Messages and records name the URL without its user-info.
    let shown = super::transport::shown(url);
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    // Ask for the headers first: size limit, ETag, Last-Modified.
    let client = t.client().clone();
    let head = t.send(url, &|| client.head(url)).await?;
    let (mut size, mut known) = (None, Validators::default());
    if head.status().is_success() {
        size = header_str(&head, CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        known = Validators::of(&head);
    } else if head.status().as_u16() == 404 {
        return Err(RemoteError::NotFound { host, what: shown });
    }
    let mut sink = Sink::new(cache, &shown, size, &opts.limits)?;
    let mut s = Session::new(t, &host, None);
    let used = super::oci::download(&mut s, "", url, &mut sink, opts, known).await?;
    let (ingested, sha) = sink.finish(size, None)?;
    Ok((
        ingested,
        Fetched {
            media_type: None,
            remote_digest: Some(sha),
            etag: used.etag,
            last_modified: used.last_modified,
        },
    ))
}
