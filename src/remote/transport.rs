//! The HTTP leaf of `remote/`: one HTTP client for every remote (made once per process,
//! kept in `runtime`'s per-process cell), its time-outs, redirect, loopback and TLS rules,
//! and retries; how a URL is shown; a transfer's progress report ([`Report`]). It imports
//! nothing of `remote/` but the error, the shared types and `runtime`.
//!
//! Requests that fail with a dropped or refused connection, a timeout, `429 Too Many
//! Requests` or a `5xx` answer are retried with exponential backoff (0.2 s, 0.4 s,
//! 0.8 s; `Retry-After` is honoured up to 10 s), four attempts in all
//! (`SREGISTRY_RETRIES` changes the count). A connection that stays silent for
//! `SREGISTRY_TIMEOUT` (default 30 s) times out, and a request that times out twice is
//! given up ([`RemoteError::Stalled`]): a server that accepts connections and never
//! answers costs about a minute, not four times two. After a few seconds of silence the
//! caller's [`super::Progress`] hook hears what is awaited. Redirects are followed up to
//! 10 hops, and credentials are not carried to another host. TLS is rustls with the
//! platform's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` naming nothing readable is refused);
//! a failed handshake (unknown CA, another name, expired) is said in words and never
//! retried ([`RemoteError::Tls`]); plain HTTP is allowed only to loopback hosts or with `--insecure`, on
//! every hop: the first URL, each redirect, a token realm and an upload `Location`. The
//! host is the URL's host, never its user-info, and neither user-info nor a query value
//! is ever printed ([`shown`]).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};

use super::error::RemoteError;
use super::runtime::PerProcess;
use super::types::{Progress, ProgressHook, RemoteOptions};

/// Silence longer than this is announced to the progress hook.
const ANNOUNCE_AFTER: Duration = Duration::from_secs(3);
/// Time-outs of one request before it is given up.
const MAX_TIMEOUTS: u32 = 2;

/// Retries of a remote request: the configuration's `retries` (`SREGISTRY_RETRIES`,
/// default 3).
pub(super) fn retries() -> Result<u32, crate::settings::ConfigError> {
    Ok(crate::settings::current()?.retries)
}

/// Longest wait for a TCP (and TLS) connection to be set up.
const CONNECT: Duration = Duration::from_secs(10);

/// How long a connection may stay silent (no answer, no body bytes): the configuration's
/// `timeout` (`SREGISTRY_TIMEOUT`, default 30 s).
pub(super) fn idle_timeout() -> Result<Duration, crate::settings::ConfigError> {
    Ok(crate::settings::current()?.timeout)
}

/// Clients without and with `--insecure`.
static CLIENTS: [PerProcess<Result<reqwest::Client, String>>; 2] =
    [PerProcess::new(), PerProcess::new()];

/// The process's HTTP client: connect and idle-read time-outs, at most 10 redirects, and
/// no redirect to plain HTTP on a host that is not loopback unless `insecure`.
pub(super) fn client(insecure: bool) -> Result<reqwest::Client, RemoteError> {
    check_cert_paths()?;
    let idle = idle_timeout()?;
    let made = CLIENTS[usize::from(insecure)].get_or_make(|| {
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error(TooManyRedirects);
            }
            let url = attempt.url();
            let host = url.host_str().unwrap_or("");
            if url.scheme() == "http" && !insecure && !is_loopback(host) {
                let host = host.to_string();
                return attempt.error(PlainRedirect(host));
            }
            attempt.follow()
        });
        reqwest::Client::builder()
            .user_agent(concat!("sregistry/", env!("CARGO_PKG_VERSION")))
            .redirect(policy)
            .connect_timeout(CONNECT.min(idle))
            .read_timeout(idle)
            .build()
            .map_err(|e| error_chain(&e))
    });
    made.map_err(|detail| RemoteError::ClientSetup { detail })
}

/// Refuse an `SSL_CERT_FILE` that is not a readable file, or an `SSL_CERT_DIR` entry that
/// is not a directory: the TLS roots are read from them alone when set, and a typo would
/// otherwise surface only as "unknown certificate authority" at the first request.
fn check_cert_paths() -> Result<(), RemoteError> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(file);
        let detail = match std::fs::File::open(&path).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => None,
            Ok(_) => Some("is not a file".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("does not exist".to_string())
            }
            Err(e) => Some(format!("cannot be read: {e}")),
        };
        if let Some(detail) = detail {
            return Err(RemoteError::CertPath {
                var: "SSL_CERT_FILE",
                path,
                detail,
            });
        }
    }
    if let Some(dirs) = std::env::var_os("SSL_CERT_DIR") {
        for path in std::env::split_paths(&dirs).filter(|p| !p.as_os_str().is_empty()) {
            if std::fs::read_dir(&path).is_err() {
                return Err(RemoteError::CertPath {
                    var: "SSL_CERT_DIR",
                    detail: "is not a readable directory".into(),
                    path,
                });
            }
        }
    }
    Ok(())
}

/// A redirect chain longer than 10 hops.
#[derive(Debug, thiserror::Error)]
#[error("too many redirects (more than 10)")]
struct TooManyRedirects;

/// A redirect to plain HTTP on a host that is not loopback, without `--insecure`.
#[derive(Debug, thiserror::Error)]
#[error("redirect to plain HTTP on `{0}`")]
struct PlainRedirect(String);

/// The shared client and retry policy.
pub(super) struct Transport {
    client: reqwest::Client,
    attempts: u32,
    insecure: bool,
    progress: Option<ProgressHook>,
}

impl Transport {
    pub(super) fn new(opts: &RemoteOptions) -> Result<Transport, RemoteError> {
        let insecure = opts.insecure;
        let client = client(insecure)?;
        let attempts = retries()? + 1;
        Ok(Transport {
            client,
            attempts,
            insecure,
            progress: opts.progress.clone(),
        })
    }

    /// Await `fut`; if it takes more than a few seconds, tell the progress hook what is
    /// awaited (`what()`), once.
    pub(super) async fn announced<F: Future>(
        &self,
        fut: F,
        what: impl FnOnce() -> String,
    ) -> F::Output {
        let Some(hook) = &self.progress else {
            return fut.await;
        };
        let mut fut = std::pin::pin!(fut);
        match tokio::time::timeout(ANNOUNCE_AFTER, &mut fut).await {
            Ok(v) => v,
            Err(_) => {
                hook.0.waiting(&what());
                fut.await
            }
        }
    }

    /// The error for a request that timed out [`MAX_TIMEOUTS`] times.
    pub(super) fn stalled(&self, url: &str, attempts: u32) -> RemoteError {
        RemoteError::Stalled {
            url: shown(url),
            waited: idle_timeout().unwrap_or_default(),
            attempts,
        }
    }

    /// Whether a request that has timed out `n` times is given up.
    pub(super) fn give_up_after_timeouts(n: u32) -> bool {
        n >= MAX_TIMEOUTS
    }

    pub(super) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub(super) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The scheme to use for a registry host: `http` for loopback or with --insecure,
    /// `https` otherwise.
    pub(super) fn scheme_for(&self, host: &str) -> &'static str {
        if is_loopback(host) || self.insecure {
            "http"
        } else {
            "https"
        }
    }

    /// Refuse a plain `http://` URL to a non-loopback host unless --insecure. The host is
    /// the URL's own (`http://localhost:x@elsewhere/` is `elsewhere`).
    pub(super) fn check_url(&self, url: &str) -> Result<(), RemoteError> {
        let Ok(u) = reqwest::Url::parse(url) else {
            return Err(bad_ref(&shown(url), "not a valid URL"));
        };
        if u.scheme() == "http" && !self.insecure {
            let host = u.host_str().unwrap_or("");
            if !is_loopback(host) {
                return Err(RemoteError::Insecure {
                    host: host.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Send a request built by `make` (called again for each attempt), retrying what is
    /// worth retrying. Other answers, success or not, are returned to the caller.
    pub(super) async fn send(
        &self,
        url: &str,
        make: &(dyn Fn() -> RequestBuilder + Sync),
    ) -> Result<Response, RemoteError> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        let mut last_error = None;
        let mut timeouts = 0;
        for attempt in 1..=self.attempts {
            let answer = self
                .announced(make().send(), || format!("an answer from `{}`", shown(url)))
                .await;
            match answer {
                Ok(resp) => {
                    let s = resp.status();
                    let retryable = s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error();
                    if !retryable || attempt == self.attempts {
                        return Ok(resp);
                    }
                    let wait = retry_after(&resp).unwrap_or(delay);
                    last = format!("{s}");
                    last_error = None;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    if let Some(host) = find_cause::<PlainRedirect>(&e) {
                        return Err(RemoteError::Insecure {
                            host: host.0.clone(),
                        });
                    }
                    if e.is_redirect() || find_cause::<TooManyRedirects>(&e).is_some() {
                        return Err(RemoteError::Protocol {
                            url: shown(url),
                            detail: "too many redirects (more than 10)".into(),
                            source: None,
                        });
                    }
                    if let Some(tls) = find_cause::<rustls::Error>(&e) {
                        return Err(tls_failure(url, tls));
                    }
                    if e.is_timeout() {
                        timeouts += 1;
                        if Self::give_up_after_timeouts(timeouts) {
                            return Err(self.stalled(url, attempt));
                        }
                    }
                    let e = e.without_url();
                    last = error_chain(&e);
                    let builder = e.is_builder();
                    last_error = Some(e);
                    if attempt == self.attempts || builder {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
            delay *= 2;
        }
        Err(RemoteError::Network {
            url: shown(url),
            detail: last,
            attempts: self.attempts,
            source: last_error.map(|e| Box::new(e) as super::error::Cause),
        })
    }
}

/// What a failed TLS handshake with `url` means, in words, with what to do.
fn tls_failure(url: &str, e: &rustls::Error) -> RemoteError {
    use rustls::CertificateError as C;
    let (problem, hint) = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => (
                "the server's certificate is signed by an unknown certificate authority",
                "if the server uses a private CA, point SSL_CERT_FILE at a bundle that holds it",
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => (
                "the server's certificate is for another name than the host in the address",
                "use the host name the certificate names",
            ),
            C::Expired | C::ExpiredContext { .. } => (
                "the server's certificate has expired",
                "its administrator must renew it; check this machine's clock",
            ),
            C::NotValidYet | C::NotValidYetContext { .. } => (
                "the server's certificate is not valid yet",
                "check this machine's clock",
            ),
            C::Revoked => (
                "the server's certificate has been revoked",
                "its administrator must replace it",
            ),
            _ => (
                "the server's certificate was refused",
                "its administrator must replace it",
            ),
        },
        _ => (
            "the TLS handshake failed",
            "the server may not speak TLS on this port, or no version or cipher is shared",
        ),
    };
    RemoteError::Tls {
        url: shown(url),
        problem: format!("{problem} ({e})"),
        hint,
    }
}

/// The first cause of `e` that is a `T`.
fn find_cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        // An `io::Error` holding another error (TLS under a connection does this, in two
        // layers) gives that error's source, not the error itself, as its own source.
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            cur = Some(inner);
            continue;
        }
        cur = c.source();
    }
    None
}

/// A URL as it may be printed or recorded: user-info (`user:password@`) becomes `***@`,
/// each query value `***` (a query may carry a signature or a token: `?X-Amz-Signature=***`),
/// and the fragment is dropped. Nothing else is changed.
pub(super) fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(&hide_values(q.split('&').filter(|p| !p.is_empty())));
    }
    out
}

/// Query parameters as `NAME=***`; a parameter without `=` as `***`.
pub(crate) fn hide_values<'a>(params: impl Iterator<Item = &'a str>) -> String {
    params
        .map(|p| match p.split_once('=') {
            Some((k, _)) => format!("{k}=***"),
            // A parameter without `=` may be a token itself (`?<token>`).
            None => "***".to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(10)))
}

/// An error with its causes, on one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// `localhost`, `127.x.y.z` and `[::1]`, with or without a port.
pub(super) fn is_loopback(host: &str) -> bool {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    h == "localhost"
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn bad_ref(input: &str, reason: impl Into<String>) -> RemoteError {
    RemoteError::BadRef {
        shown: crate::format::reference::shown(&shown(input)),
        reason: reason.into(),
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
            url: shown(url),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_never_shown() {
        assert_eq!(
            shown("https://alice:s3cret@example.org/a/b.sif?x=1&X-Amz-Signature=abc&flag#frag"),
            "https://***@example.org/a/b.sif?x=***&X-Amz-Signature=***&***"
        );
        assert_eq!(shown("https://h/a?=v&&k=v=w"), "https://h/a?=***&k=***");
        assert_eq!(shown("https://tok@h/x"), "https://***@h/x");
        assert_eq!(shown("https://h/x@y"), "https://h/x@y");
        assert_eq!(shown("s3://bucket/key"), "s3://bucket/key");
    }

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_ports() {
        for h in [
            "localhost",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:80",
            "localhost:8080",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "example.org",
            "10.0.0.1:5000",
            "127.example.org",
            "localhost.evil.org",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
