//! One HTTP client for every remote, with retries.
//!
//! Requests that fail with a dropped or refused connection, a timeout, `429 Too Many
//! Requests` or a `5xx` answer are retried with exponential backoff (0.2 s, 0.4 s,
//! 0.8 s; `Retry-After` is honoured up to 10 s), four attempts in all
//! (`SREGISTRY_RETRIES` changes the count). Redirects are followed up to 10 hops, and
//! credentials are not carried to another host. TLS is rustls with the platform's roots;
//! plain HTTP is allowed only to loopback hosts or with `--insecure`.

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};

use super::RemoteError;

/// The shared client and retry policy.
pub struct Transport {
    client: reqwest::Client,
    attempts: u32,
    insecure: bool,
}

impl Transport {
    pub fn new(insecure: bool) -> Result<Transport, RemoteError> {
        let client = super::runtime::client()?;
        let attempts = std::env::var("SREGISTRY_RETRIES")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .map(|n| n + 1)
            .unwrap_or(4)
            .clamp(1, 20);
        Ok(Transport {
            client,
            attempts,
            insecure,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The scheme to use for a registry host: `http` for loopback or with --insecure,
    /// `https` otherwise.
    pub fn scheme_for(&self, host: &str) -> &'static str {
        if is_loopback(host) || self.insecure {
            "http"
        } else {
            "https"
        }
    }

    /// Refuse a plain `http://` URL to a non-loopback host unless --insecure.
    pub fn check_url(&self, url: &str) -> Result<(), RemoteError> {
        if let Some(rest) = url.strip_prefix("http://") {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            if !is_loopback(host) && !self.insecure {
                return Err(RemoteError::Insecure {
                    host: host.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Send a request built by `make` (called again for each attempt), retrying what is
    /// worth retrying. Other answers, success or not, are returned to the caller.
    pub async fn send(
        &self,
        url: &str,
        make: &(dyn Fn() -> RequestBuilder + Sync),
    ) -> Result<Response, RemoteError> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match make().send().await {
                Ok(resp) => {
                    let s = resp.status();
                    let retryable = s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error();
                    if !retryable || attempt == self.attempts {
                        return Ok(resp);
                    }
                    let wait = retry_after(&resp).unwrap_or(delay);
                    last = format!("{s}");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    if e.is_redirect() {
                        return Err(RemoteError::Protocol {
                            url: url.to_string(),
                            detail: "too many redirects (more than 10)".into(),
                        });
                    }
                    last = error_chain(&e);
                    if attempt == self.attempts || e.is_builder() {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
            delay *= 2;
        }
        Err(RemoteError::Network {
            url: url.to_string(),
            detail: last,
            attempts: self.attempts,
        })
    }
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
pub fn error_chain(e: &dyn std::error::Error) -> String {
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
pub fn is_loopback(host: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
