//! Which cache a pull lands in, when the cache given is shared (issue 23, "private images
//! stay private"; docs/shared-cache.md, "Private images").
//!
//! An image that needed credentials to pull goes to the puller's private cache
//! ([`crate::cache::Cache::make_own_private`]), never into the shared one, unless the
//! configuration's `shared_remotes` lists its remote. "Needed credentials" is judged
//! conservatively ([`route`]):
//!
//! * `oras://`, `docker://`: the pull into the shared cache is made **anonymously**
//!   ([`RemoteOptions::anonymous`]). If the registry refuses it (`401`, `403`, a token
//!   service that gives no token or too little) and the caller has credentials for that
//!   registry, the pull is made again, with them, into the private cache. Nothing of a
//!   refused attempt is committed: what it wrote in `tmp/` was served anonymously.
//! * `https://`: a URL that carries user-info or a query (a pre-signed URL's signature is
//!   a credential; any query is taken as one) goes to the private cache; the request sends
//!   no other credential.
//! * `s3://`: requests signed with keys (any AWS credential in the environment) go to the
//!   private cache; unsigned ones to the shared cache.
//!
//! A cache that keeps no private images (`Cache::keeps_private_images`: not shared, no
//! `private/`, no group layout; never the settings alone, which any member can replace)
//! is untouched: everything goes where it went before.

use super::error::RemoteError;
use super::remote_ref::RemoteRef;
use super::types::RemoteOptions;
use super::{auth, s3};
use crate::cache::Cache;

/// Where a pull goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// Into the cache given, credentials sent as the remote asks: a cache that is not
    /// shared, or a remote the configuration lists in `shared_remotes`, or a request that
    /// carries none.
    Given,
    /// Into the cache given, anonymously; if refused, and the caller has credentials for
    /// the registry, into the caller's private cache with them.
    AnonymousFirst,
    /// Into the caller's private cache: the request itself carries credentials.
    Private,
}

/// Where a pull of `remote` into `cache` goes.
pub(super) fn route(cache: &Cache, remote: &RemoteRef, opts: &RemoteOptions) -> Route {
    if !cache.keeps_private_images() || is_shared_remote(remote, &opts.shared_remotes) {
        return Route::Given;
    }
    match remote {
        RemoteRef::Oras(_) | RemoteRef::Docker(_) => Route::AnonymousFirst,
        RemoteRef::Http(url) if carries_credentials(url) => Route::Private,
        RemoteRef::Http(_) => Route::Given,
        RemoteRef::S3 { .. } if s3::anonymous() => Route::Given,
        RemoteRef::S3 { .. } => Route::Private,
    }
}

/// Run `pull` against the cache [`route`] names: the cache given, or the caller's private
/// cache inside it.
pub(super) fn routed<T>(
    cache: &Cache,
    remote: &RemoteRef,
    opts: &RemoteOptions,
    pull: impl Fn(&Cache, &RemoteOptions) -> Result<T, RemoteError>,
) -> Result<T, RemoteError> {
    let private = || -> Result<Cache, RemoteError> {
        Ok(cache
            .make_own_private()?
            .expect("only a shared cache routes to a private one"))
    };
    match route(cache, remote, opts) {
        Route::Given => pull(cache, opts),
        Route::Private => pull(&private()?, opts),
        Route::AnonymousFirst => {
            let anonymous = RemoteOptions {
                anonymous: true,
                ..opts.clone()
            };
            match pull(cache, &anonymous) {
                Err(e) if e.is_about_credentials() && has_credentials(remote)? => {
                    pull(&private()?, opts)
                }
                other => other,
            }
        }
    }
}

/// Whether the caller has stored credentials for the registry of `remote`.
fn has_credentials(remote: &RemoteRef) -> Result<bool, RemoteError> {
    Ok(match remote {
        RemoteRef::Oras(r) => auth::credentials_for(&r.host)?.is_some(),
        RemoteRef::Docker(r) => auth::credentials_for(&r.host)?.is_some(),
        _ => false,
    })
}

/// Whether a URL carries credentials: user-info, or a query (taken as a signature).
fn carries_credentials(url: &str) -> bool {
    let after = url.split_once("://").map_or(url, |x| x.1);
    let authority = after.split(['/', '?', '#']).next().unwrap_or("");
    authority.contains('@') || after.contains('?')
}

/// What a pattern of `shared_remotes` is compared with: `SCHEME://HOST/REPOSITORY` (no
/// tag or digest) for a registry, the URL without user-info, query or fragment, or
/// `s3://BUCKET/KEY`. `None` for a URL whose path the request would not send as written
/// (a `.` or `..` segment, a percent-encoding, a backslash): what it reaches is not what a
/// pattern can be compared with, so it is never taken as shared.
fn matched_as(remote: &RemoteRef) -> Option<String> {
    Some(match remote {
        RemoteRef::Oras(r) => format!("oras://{}/{}", r.host, r.repository),
        RemoteRef::Docker(r) => format!("docker://{}/{}", r.host, r.repository),
        RemoteRef::Http(url) => {
            let (scheme, after) = url.split_once("://").unwrap_or(("https", url));
            let after = after.split(['?', '#']).next().unwrap_or(after);
            let (authority, path) = after.split_at(after.find('/').unwrap_or(after.len()));
            if path.contains(['%', '\\']) || path.split('/').any(|s| s == "." || s == "..") {
                return None;
            }
            let host = authority.rsplit_once('@').map_or(authority, |x| x.1);
            format!("{scheme}://{}{path}", host.to_ascii_lowercase())
        }
        RemoteRef::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
    })
}

/// Whether `remote` is listed in `patterns`: a pattern ending in `/*` takes everything
/// under it, any other the very repository (or URL, or object).
pub(super) fn is_shared_remote(remote: &RemoteRef, patterns: &[String]) -> bool {
    if patterns.is_empty() {
        return false;
    }
    let Some(id) = matched_as(remote) else {
        return false;
    };
    patterns.iter().any(|p| match p.strip_suffix("/*") {
        Some(prefix) => id
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/')),
        None => id == *p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(remote: &str, patterns: &[&str]) -> bool {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        is_shared_remote(&RemoteRef::parse(remote).unwrap(), &patterns)
    }

    #[test]
    fn a_pattern_takes_its_repository_or_what_is_under_it_and_nothing_else() {
        let lab = ["docker://reg.example.org:5000/lab/*"];
        assert!(shared("docker://reg.example.org:5000/lab/app:1", &lab));
        assert!(shared(
            "docker://reg.example.org:5000/lab/x/y@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            &lab
        ));
        assert!(!shared("docker://reg.example.org:5000/labs/app:1", &lab));
        assert!(!shared("docker://reg.example.org:5000/lab", &lab));
        assert!(!shared("oras://reg.example.org:5000/lab/app:1", &lab));
        assert!(!shared("docker://reg.example.org/lab/app:1", &lab));
        let one = ["oras://reg.example.org/base"];
        assert!(shared("oras://reg.example.org/base:1", &one));
        assert!(!shared("oras://reg.example.org/base/x:1", &one));
        assert!(shared(
            "docker://ubuntu:24.04",
            &["docker://docker.io/library/*"]
        ));
        assert!(shared(
            "https://u:p@files.example.org/img/a.sif?sig=1",
            &["https://files.example.org/img/*"]
        ));
        assert!(!shared("oras://reg.example.org/base:1", &[]));
        // What the request would reach is not the text: never shared (found by a hostile
        // test: `img/../secret/s.sif?sig=2` went to the shared cache under `img/*`).
        let img = ["http://127.0.0.1:5066/img/*"];
        assert!(shared("http://127.0.0.1:5066/img/s.sif?sig=2", &img));
        for sneaky in [
            "http://127.0.0.1:5066/img/../secret/s.sif?sig=2",
            "http://127.0.0.1:5066/img/%2e%2e/secret/s.sif",
            "http://127.0.0.1:5066/img/%2E%2E/secret/s.sif",
            "http://127.0.0.1:5066/img/./../secret/s.sif",
            "http://127.0.0.1:5066/img/..\\secret/s.sif",
        ] {
            let r = RemoteRef::parse(sneaky).unwrap();
            assert!(!is_shared_remote(&r, &img.map(String::from)), "{sneaky}");
        }
    }

    #[test]
    fn a_url_with_user_info_or_a_query_carries_credentials() {
        assert!(carries_credentials("https://u:p@h/x.sif"));
        assert!(carries_credentials("https://h/x.sif?X-Amz-Signature=1"));
        assert!(carries_credentials("https://h/x.sif?v=2"));
        assert!(!carries_credentials("https://h/x.sif"));
        assert!(!carries_credentials("https://h/a@b.sif"));
    }
}
