//! [`RemoteRef`]: a remote reference parsed (`oras://`, `docker://`, `https://`,
//! `http://`, `s3://`), the local name a pull gives it ([`RemoteRef::default_name`]) and
//! the source it is recorded as ([`RemoteRef::source`]): never a password or a query
//! value. It holds the protocols' own references (`OciRef`, `DockerRef`), so it sits
//! above the protocols and below the dispatcher (`remote/mod.rs`); no protocol imports it.

use std::fmt;

use super::error::RemoteError;
use super::transport::{self, bad_ref};
use super::types::RemoteOptions;
use super::{docker, oci, s3};
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
    /// (`is_signature_param`) are left out, so every new signature of one URL is the
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

/// The platform a `docker://` pull asks for: `--platform`, else this machine's.
pub(super) fn docker_platform_of(opts: &RemoteOptions) -> Result<docker::Platform, String> {
    match &opts.platform {
        Some(p) => docker::Platform::parse(p),
        None => Ok(docker::Platform::host()),
    }
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
