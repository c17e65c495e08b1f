//! The registry layer: the OCI distribution protocol's generic part, shared by the
//! registry protocols (`oras://` in `oci.rs`, `docker://` in `docker.rs`) and by a plain
//! `https://` download (`http.rs`, which resumes as a blob does).
//!
//! A [`Session`] talks to one registry: its base URL, the credentials ([`super::auth`]),
//! the `401` challenge answered (basic, or a bearer token for the scope asked, kept per
//! scope for the session) and a `403` or a token service's refusal said as
//! [`RemoteError::Denied`] or [`RemoteError::Unauthorized`]. On it: [`download`] streams a
//! blob into a verifying [`Sink`] and resumes a dropped connection with `Range` and
//! `If-Range` (content replaced in between starts over instead of splicing two
//! versions); [`upload_blob`] sends a blob the registry lacks (`HEAD`, then `POST` and
//! `PUT <Location>&digest=`, the `Location` held to the same plain-HTTP rule). Also here:
//! a repository reference on a registry ([`OciRef`]), descriptors, the manifest media
//! types and the bounded body reads. Built on the HTTP leaf ([`Transport`]); it knows
//! nothing of SIF or of any one protocol.

use std::collections::HashMap;
use std::fmt;

use futures_util::StreamExt;
use reqwest::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::auth::{self, Challenge, Credentials};
use super::error::RemoteError;
use super::sink::Sink;
use super::transport::Transport;
use super::types::RemoteOptions;

pub(super) const MANIFEST_OCI: &str = "application/vnd.oci.image.manifest.v1+json";

pub(super) const MANIFEST_DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub(super) const INDEX_OCI: &str = "application/vnd.oci.image.index.v1+json";

/// Largest manifest accepted.
pub(super) const MAX_MANIFEST: u64 = 4 << 20;

/// `host[:port]/repository[:tag|@sha256:<hex>]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciRef {
    pub host: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl OciRef {
    /// Parse the part after `oras://`.
    pub(super) fn parse(s: &str) -> Result<OciRef, String> {
        let (host, rest) = s
            .split_once('/')
            .ok_or("expected oras://HOST/REPOSITORY[:TAG]")?;
        if host.contains('@') {
            // Never echoed: what stands before `@` may be a password.
            return Err(
                "a user name or password does not belong in the reference; store them with `sregistry login HOST`"
                    .into(),
            );
        }
        if host.is_empty()
            || host
                .bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)))
        {
            return Err(format!("`{host}` is not a host name"));
        }
        let (path, digest) = match rest.split_once('@') {
            Some((p, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or("digests are sha256:<64 hex>")?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err("digests are sha256:<64 lower-case hex>".into());
                }
                (p, Some(d.to_string()))
            }
            None => (rest, None),
        };
        let (repo, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        if repo.is_empty() {
            return Err("the repository is empty".into());
        }
        if repo != repo.to_ascii_lowercase() {
            return Err(format!("repository `{repo}` must be lower-case"));
        }
        // Reuse the local grammar for path parts and tags.
        let probe = format!("x.invalid/{repo}:{}", tag.as_deref().unwrap_or("latest"));
        crate::format::reference::Reference::parse(&probe).map_err(|e| e.reason().to_string())?;
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(OciRef {
            host: host.to_ascii_lowercase(),
            repository: repo.to_string(),
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest if given, else the tag.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The local name: `host/repository:tag`, or `:sha256-<hex>` for a digest.
    pub fn local_name(&self) -> String {
        let tag = match (&self.tag, &self.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => d.replace(':', "-"),
            (None, None) => "latest".into(),
        };
        format!("{}/{}:{}", self.host, self.repository, tag)
    }
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// An OCI descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// A registry session: base URL, credentials, and the tokens obtained so far.
pub(super) struct Session<'t> {
    t: &'t Transport,
    host: String,
    base: String,
    creds: Option<Credentials>,
    basic: bool,
    tokens: HashMap<String, String>,
}

impl<'t> Session<'t> {
    pub(super) fn new(t: &'t Transport, host: &str, creds: Option<Credentials>) -> Session<'t> {
        Session {
            t,
            host: host.to_string(),
            base: format!("{}://{host}", t.scheme_for(host)),
            creds,
            basic: false,
            tokens: HashMap::new(),
        }
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The process's HTTP client, for building requests.
    pub(super) fn client(&self) -> reqwest::Client {
        self.t.client().clone()
    }

    fn with_auth(&self, rb: RequestBuilder, scope: &str) -> RequestBuilder {
        if let Some(tok) = self.tokens.get(scope) {
            rb.header(AUTHORIZATION, format!("Bearer {tok}"))
        } else if self.basic
            && let Some(c) = &self.creds
        {
            rb.header(AUTHORIZATION, c.basic())
        } else {
            rb
        }
    }

    /// Send with authentication: on a `401`, answer the challenge (basic or token for
    /// `scope`) and try once more.
    pub(super) async fn send(
        &mut self,
        scope: &str,
        url: &str,
        make: &(dyn Fn() -> RequestBuilder + Sync),
    ) -> Result<Response, RemoteError> {
        for round in 0..2 {
            let resp = {
                let this = &*self;
                self.t.send(url, &|| this.with_auth(make(), scope)).await?
            };
            if resp.status() != StatusCode::UNAUTHORIZED || round == 1 {
                return self.check_denied(resp, scope);
            }
            let header = header_str(&resp, WWW_AUTHENTICATE).unwrap_or_default();
            let challenge = auth::parse_challenge(&header)
                .ok_or_else(|| self.unauthorized(format!("no usable challenge in `{header}`")))?;
            self.answer(&challenge, scope).await?;
        }
        unreachable!("the loop returns on its second round")
    }

    fn unauthorized(&self, detail: String) -> RemoteError {
        RemoteError::Unauthorized {
            host: self.host.clone(),
            user: self.creds.as_ref().map(|c| c.username.clone()),
            detail,
        }
    }

    /// The registry refused the action named by a scope (`repository:NAME:ACTIONS`).
    fn denied(&self, scope: &str, detail: &str) -> RemoteError {
        RemoteError::Denied {
            host: self.host.clone(),
            repository: scope.split(':').nth(1).unwrap_or("").to_string(),
            action: if scope.is_empty() {
                "access"
            } else if scope.ends_with("push") {
                "push"
            } else {
                "pull"
            },
            detail: detail.to_string(),
            anonymous: self.creds.is_none(),
        }
    }

    fn check_denied(&self, resp: Response, scope: &str) -> Result<Response, RemoteError> {
        let insufficient = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(auth::parse_challenge)
            .is_some_and(|c| {
                c.params
                    .get("error")
                    .is_some_and(|e| e == "insufficient_scope")
            });
        match resp.status() {
            StatusCode::UNAUTHORIZED if insufficient && self.creds.is_some() => {
                Err(self.denied(scope, " (the token service granted less than was asked)"))
            }
            StatusCode::UNAUTHORIZED => Err(if self.creds.is_none() {
                self.unauthorized("credentials are required".into())
            } else {
                self.unauthorized("the registry did not accept them".into())
            }),
            StatusCode::FORBIDDEN => Err(self.denied(scope, "")),
            _ => Ok(resp),
        }
    }

    async fn answer(&mut self, c: &Challenge, scope: &str) -> Result<(), RemoteError> {
        match c.scheme.as_str() {
            "basic" => {
                if self.creds.is_none() {
                    return Err(self.unauthorized("credentials are required".into()));
                }
                if self.basic {
                    return Err(self.unauthorized("the registry did not accept them".into()));
                }
                self.basic = true;
                Ok(())
            }
            "bearer" => {
                let realm = c
                    .params
                    .get("realm")
                    .ok_or_else(|| self.unauthorized("the challenge has no realm".into()))?;
                self.t.check_url(realm)?;
                let mut q: Vec<(&str, &str)> = Vec::new();
                if let Some(s) = c.params.get("service") {
                    q.push(("service", s));
                }
                if !scope.is_empty() {
                    q.push(("scope", scope));
                }
                let creds = self.creds.clone();
                let client = self.t.client().clone();
                let make = || match creds.as_ref().map(|c| (c, c.identity_token())) {
                    // An identity token is a refresh token: the OAuth2 form, as Docker
                    // sends it (the service, the scope, a client id, the token).
                    Some((_, Some(refresh))) => {
                        let mut form = q.clone();
                        form.extend([
                            ("grant_type", "refresh_token"),
                            ("client_id", "sregistry"),
                            ("refresh_token", refresh),
                        ]);
                        client.post(realm.as_str()).form(&form)
                    }
                    Some((c, None)) => client
                        .get(realm.as_str())
                        .query(&q)
                        .header(AUTHORIZATION, c.basic()),
                    None => client.get(realm.as_str()).query(&q),
                };
                let resp = self.t.send(realm, &make).await?;
                if resp.status() == StatusCode::UNAUTHORIZED
                    || resp.status() == StatusCode::FORBIDDEN
                {
                    return Err(
                        self.unauthorized(format!("the token service `{realm}` refused them"))
                    );
                }
                let resp = ok_or_status(resp, realm).await?;
                let body = read_limited(resp, realm, 1 << 20).await?;
                #[derive(Deserialize)]
                struct Tok {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Tok = serde_json::from_slice(&body).map_err(|e| RemoteError::Protocol {
                    url: realm.clone(),
                    detail: format!("token answer is not JSON: {e}"),
                    source: Some(Box::new(e)),
                })?;
                let tok = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| RemoteError::Protocol {
                        url: realm.clone(),
                        detail: "token answer has no token".into(),
                        source: None,
                    })?;
                self.tokens.insert(scope.to_string(), tok);
                Ok(())
            }
            other => Err(self.unauthorized(format!("unsupported authentication scheme `{other}`"))),
        }
    }
}

pub(super) async fn ok_or_status(resp: Response, url: &str) -> Result<Response, RemoteError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = read_limited(resp, url, 64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let detail = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(|m| format!(": {m}")))
        .unwrap_or_default();
    Err(RemoteError::Status {
        url: super::transport::shown(url),
        status,
        detail,
    })
}

pub(super) async fn read_limited(
    resp: Response,
    url: &str,
    limit: u64,
) -> Result<Vec<u8>, RemoteError> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let e = e.without_url();
            RemoteError::Network {
                url: super::transport::shown(url),
                detail: super::transport::error_chain(&e),
                attempts: 1,
                source: Some(Box::new(e)),
            }
        })?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(RemoteError::TooLong {
                url: super::transport::shown(url),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub(super) fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

pub(super) fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// The validators of the response a download was completed from.
#[derive(Clone, Debug, Default)]
pub(super) struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// The ETag and Last-Modified of a response.
    pub(super) fn of(resp: &Response) -> Validators {
        Validators {
            etag: header_str(resp, reqwest::header::ETAG),
            last_modified: header_str(resp, reqwest::header::LAST_MODIFIED),
        }
    }
}

/// A header's value, when present and printable.
pub(super) fn header_str(resp: &Response, name: reqwest::header::HeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Stream `url` into `sink`, resuming with `Range` when the connection drops. A resume
/// carries `If-Range` with the content's validator (its ETag, else its Last-Modified), so
/// a file replaced in between comes back whole (`200`) and the download starts over
/// instead of splicing two versions; a `206` whose ETag differs starts over too.
pub(super) async fn download(
    s: &mut Session<'_>,
    scope: &str,
    url: &str,
    sink: &mut Sink,
    opts: &RemoteOptions,
    known: Validators,
) -> Result<Validators, RemoteError> {
    let report = super::transport::Report::start(opts, url, sink.limit(), sink.written());
    let client = s.t.client().clone();
    let mut seen = known;
    let mut failures = 0;
    let mut stalls = 0;
    loop {
        let from = sink.written();
        let if_range = seen.etag.clone().or_else(|| seen.last_modified.clone());
        let make = || {
            let rb = client.get(url);
            if from == 0 {
                return rb;
            }
            let rb = rb.header(RANGE, format!("bytes={from}-"));
            match &if_range {
                Some(v) => rb.header(reqwest::header::IF_RANGE, v.as_str()),
                None => rb,
            }
        };
        let resp = s.send(scope, url, &make).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(RemoteError::NotFound {
                host: s.host.clone(),
                what: super::transport::shown(url),
            });
        }
        let resp = ok_or_status(resp, url).await?;
        let got = Validators::of(&resp);
        if from > 0 {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            let changed = matches!((&seen.etag, &got.etag), (Some(a), Some(b)) if a != b);
            if resp.status() == StatusCode::PARTIAL_CONTENT && changed {
                // The server ignored If-Range and sent part of another version.
                sink.reset()?;
                seen = Validators::default();
                continue;
            }
            if resp.status() != StatusCode::PARTIAL_CONTENT || start != Some(from) {
                sink.reset()?;
            }
        }
        if sink.written() == 0 {
            seen = got;
        }
        let mut stream = resp.bytes_stream();
        let mut broke = false;
        let awaited = || format!("data from `{}`", super::transport::shown(url));
        while let Some(chunk) = s.t.announced(stream.next(), awaited).await {
            match chunk {
                Ok(c) => {
                    sink.write(c)?;
                    report.advance(sink.written())?;
                }
                Err(e) => {
                    stalls += u32::from(e.is_timeout());
                    broke = true;
                    break;
                }
            }
        }
        if !broke {
            break;
        }
        failures += 1;
        if Transport::give_up_after_timeouts(stalls) {
            return Err(s.t.stalled(url, failures));
        }
        if failures >= s.t.attempts() {
            return Err(RemoteError::BrokeOff {
                url: super::transport::shown(url),
                got: sink.written(),
                attempts: failures,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * failures as u64)).await;
    }
    drop(report);
    Ok(seen)
}

pub(super) enum Body<'a> {
    Bytes(Vec<u8>),
    /// An open file (read from its start by each attempt) and its size.
    File(&'a std::fs::File, u64),
}

/// `HEAD` the blob; if missing, `POST` an upload and `PUT` the content to its location.
/// A file's upload is told to the progress hook, which can stop it: the request then
/// fails, and no manifest names what was sent.
pub(super) async fn upload_blob(
    s: &mut Session<'_>,
    scope: &str,
    repo: &str,
    digest: &str,
    body: Body<'_>,
    opts: &RemoteOptions,
) -> Result<(), RemoteError> {
    let head_url = s.url(&format!("/v2/{repo}/blobs/{digest}"));
    let client = s.t.client().clone();
    let resp = s
        .send(scope, &head_url, &|| {
            client.request(Method::HEAD, head_url.as_str())
        })
        .await?;
    if resp.status().is_success() {
        return Ok(());
    }
    let post_url = s.url(&format!("/v2/{repo}/blobs/uploads/"));
    let resp = s
        .send(scope, &post_url, &|| {
            client.post(post_url.as_str()).header(CONTENT_LENGTH, 0)
        })
        .await?;
    let resp = ok_or_status(resp, &post_url).await?;
    let location = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RemoteError::Protocol {
            url: post_url.clone(),
            detail: "the upload answer has no Location".into(),
            source: None,
        })?
        .to_string();
    let mut put_url = if location.starts_with("http://") || location.starts_with("https://") {
        location
    } else {
        s.url(&location)
    };
    put_url.push(if put_url.contains('?') { '&' } else { '?' });
    put_url.push_str(&format!("digest={digest}"));
    // The registry chooses where the upload goes: the same rules hold there.
    s.t.check_url(&put_url)?;
    let report = match &body {
        Body::File(_, size) => Some(std::sync::Arc::new(super::transport::Report::start(
            opts,
            &put_url,
            Some(*size),
            0,
        ))),
        Body::Bytes(_) => None,
    };
    let make = || {
        let rb = client
            .put(put_url.as_str())
            .header(CONTENT_TYPE, "application/octet-stream");
        match &body {
            Body::Bytes(b) => rb.header(CONTENT_LENGTH, b.len()).body(b.clone()),
            Body::File(f, size) => match super::transport::reopen(f) {
                Ok(f) => {
                    let f = tokio::fs::File::from_std(f);
                    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
                    // Each attempt counts from the start of the file.
                    let (report, mut sent) = (report.clone(), 0u64);
                    let stream = stream.map(move |chunk| {
                        let chunk = chunk?;
                        sent += chunk.len() as u64;
                        match report.as_ref().map(|r| r.advance(sent)) {
                            Some(Err(e)) => Err(std::io::Error::other(e.to_string())),
                            _ => Ok(chunk),
                        }
                    });
                    rb.header(CONTENT_LENGTH, *size)
                        .body(reqwest::Body::wrap_stream(stream))
                }
                // Reported by the request itself failing below.
                Err(_) => rb.body(Vec::new()),
            },
        }
    };
    let sent = s.send(scope, &put_url, &make).await;
    if let Some(r) = &report
        && r.stopped()
    {
        return Err(RemoteError::Stopped {
            url: super::transport::shown(&put_url),
        });
    }
    ok_or_status(sent?, &put_url).await?;
    Ok(())
}
