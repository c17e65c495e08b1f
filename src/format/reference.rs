//! Local image references: `[host[:port]/][namespace/...]name[:tag][@blake3:<hex>]`.
//!
//! What it promises:
//! * Every [`Reference`] is canonical: path components lower-case and matching the OCI
//!   distribution grammar (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`), the tag matching
//!   `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (case kept), the whole name at most 255 bytes.
//! * Without a host, the namespace defaults to `library`; the tag defaults to `latest`
//!   (as in the Python client). With a host, the path is kept as written.
//! * `parse(display(r)) == r` for every reference that parses.
//! * No component can be empty, `.` or `..`, and nothing outside ASCII is accepted, so a
//!   name never becomes a filesystem path: blobs are found by digest, never by name.

use crate::error::ErrorKind;
use std::fmt;
use std::str::FromStr;

use crate::format::digest::Digest;

/// Namespace used when a reference names none (and has no host).
pub const DEFAULT_NAMESPACE: &str = "library";
/// Tag used when a reference names none.
pub const DEFAULT_TAG: &str = "latest";
/// Longest accepted name (host and path, without tag), as registries commonly limit it.
pub const MAX_NAME_LEN: usize = 255;
/// Longest accepted tag (OCI distribution spec).
pub const MAX_TAG_LEN: usize = 128;

/// A parsed, canonical local reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    host: Option<String>,
    /// Namespace components followed by the image name; never empty.
    path: Vec<String>,
    tag: String,
    digest: Option<Digest>,
}

/// Why a string is not a valid reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid image name `{shown}`: {reason} (names look like `lab/tool:1.2`: lower-case letters, digits and `._-`, `/` between parts)"
)]
pub struct ReferenceError {
    shown: String,
    reason: String,
}

impl ReferenceError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        ReferenceError {
            shown: shown(input),
            reason: reason.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidName
    }

    /// The reason alone, without the input and hint.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Make user input safe to print on one line: escape control characters, cut it short.
pub fn shown(input: &str) -> String {
    const MAX: usize = 80;
    let escaped: String = input.escape_debug().collect();
    if escaped.chars().count() > MAX {
        let cut: String = escaped.chars().take(MAX).collect();
        format!("{cut}… ({} bytes)", input.len())
    } else {
        escaped
    }
}

impl Reference {
    /// Parse a local reference, applying the defaults.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let err = |reason: &str| ReferenceError::new(input, reason);
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.contains("://") {
            return Err(err("it is a remote reference; local names have no scheme"));
        }
        if let Some(c) = input
            .chars()
            .find(|c| !c.is_ascii() || c.is_ascii_control())
        {
            return Err(err(&format!(
                "it contains {}, only printable ASCII is allowed",
                if c.is_ascii_control() {
                    format!("the control character {:?}", c)
                } else {
                    format!("the non-ASCII character `{c}`")
                }
            )));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = d.parse::<Digest>().map_err(|_| {
                    err("the part after `@` must be `blake3:` and 64 lower-case hex digits")
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag follows the last `:` after the last `/` (a `:` before it belongs to a port).
        let last_slash = rest.rfind('/');
        let (name_part, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        let tag = match tag {
            Some(t) => {
                check_tag(t).map_err(|r| err(&r))?;
                t.to_string()
            }
            None => DEFAULT_TAG.to_string(),
        };
        if name_part.is_empty() {
            return Err(err("the name before the tag is empty"));
        }
        if name_part.starts_with('/') || name_part.ends_with('/') {
            return Err(err("it starts or ends with `/`"));
        }
        let lowered = name_part.to_ascii_lowercase();
        let too_long = || {
            err(&format!(
                "the name is longer than {MAX_NAME_LEN} characters"
            ))
        };
        if lowered.len() > MAX_NAME_LEN {
            return Err(too_long());
        }
        let mut parts: Vec<&str> = lowered.split('/').collect();
        let host = if parts.len() > 1 && looks_like_host(parts[0]) {
            let h = parts.remove(0);
            check_host(h).map_err(|r| err(&r))?;
            Some(h.to_string())
        } else {
            None
        };
        for p in &parts {
            check_component(p).map_err(|r| err(&r))?;
        }
        let mut path: Vec<String> = parts.into_iter().map(str::to_string).collect();
        if host.is_none() && path.len() == 1 {
            path.insert(0, DEFAULT_NAMESPACE.to_string());
            // The limit is on the name as stored and printed, namespace included.
            if lowered.len() + DEFAULT_NAMESPACE.len() + 1 > MAX_NAME_LEN {
                return Err(too_long());
            }
        }
        Ok(Reference {
            host,
            path,
            tag,
            digest,
        })
    }

    /// The registry host (with port) this name carries, if any.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Namespace components (may be empty when a host is given).
    pub fn namespace(&self) -> &[String] {
        &self.path[..self.path.len() - 1]
    }

    /// The image name, the last path component.
    pub fn name(&self) -> &str {
        &self.path[self.path.len() - 1]
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same reference without its `@digest` part.
    pub fn without_digest(&self) -> Reference {
        Reference {
            digest: None,
            ..self.clone()
        }
    }

    /// The index key: `[host/]namespace/.../name:tag`, never with a digest.
    pub fn key(&self) -> String {
        let mut s = String::with_capacity(64);
        if let Some(h) = &self.host {
            s.push_str(h);
            s.push('/');
        }
        s.push_str(&self.path.join("/"));
        s.push(':');
        s.push_str(&self.tag);
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())?;
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Docker's rule: a first component is a host when it has a `.` or `:` or is `localhost`.
/// A component of only dots (`..`) is never a host: it is reported as a bad part.
fn looks_like_host(first: &str) -> bool {
    (first.contains('.') || first.contains(':') || first == "localhost")
        && first.bytes().any(|b| b.is_ascii_alphanumeric())
}

fn check_host(host: &str) -> Result<(), String> {
    let (domain, port) = match host.split_once(':') {
        Some((d, p)) => (d, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n));
        if !ok {
            return Err(format!(
                "the port of host `{host}` must be a number from 1 to 65535"
            ));
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || !domain.split('.').all(label_ok) {
        return Err(format!(
            "host `{host}` is not a valid host name (letters, digits, `-`, labels joined by `.`)"
        ));
    }
    Ok(())
}

/// OCI path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (input already lower-cased).
fn check_component(c: &str) -> Result<(), String> {
    let bad = || {
        if c.is_empty() {
            "a part between `/` is empty".to_string()
        } else if c == "." || c == ".." {
            format!("`{c}` is not allowed as a part of a name")
        } else {
            format!(
                "part `{c}` must be lower-case letters and digits, separated by single `.`, `_`, `__` or runs of `-`"
            )
        }
    };
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err(bad());
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or one or more `-`.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return Err(bad()),
        }
        if i == start || i >= b.len() || !b[i].is_ascii_alphanumeric() {
            return Err(bad());
        }
    }
    Ok(())
}

fn check_tag(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("the tag after `:` is empty".into());
    }
    if t.len() > MAX_TAG_LEN {
        return Err(format!("the tag is longer than {MAX_TAG_LEN} characters"));
    }
    let b = t.as_bytes();
    let first_ok = b[0].is_ascii_alphanumeric() || b[0] == b'_';
    let rest_ok = b[1..]
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if !first_ok || !rest_ok {
        return Err(format!(
            "tag `{t}` may hold only letters, digits and `._-`, and not start with `.` or `-`"
        ));
    }
    Ok(())
}

/// Does `name` (an index key) match a `list` pattern? A pattern with `*` or `?` is a glob
/// over the whole key; any other pattern matches as a substring.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return name.contains(pattern);
    }
    glob(pattern.as_bytes(), name.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(s: &str) -> String {
        Reference::parse(s).unwrap().key()
    }

    #[test]
    fn defaults_fill_namespace_and_tag() {
        assert_eq!(key("tool"), "library/tool:latest");
        assert_eq!(key("lab/tool:1.2"), "lab/tool:1.2");
        assert_eq!(key("Lab/Tool:V1"), "lab/tool:V1");
        assert_eq!(key("a/b/c/tool"), "a/b/c/tool:latest");
    }

    #[test]
    fn hosts_are_recognised_and_keep_their_path() {
        let r = Reference::parse("Registry.Example.org:5000/lab/tool:2").unwrap();
        assert_eq!(r.host(), Some("registry.example.org:5000"));
        assert_eq!(r.namespace(), ["lab".to_string()]);
        assert_eq!(r.name(), "tool");
        assert_eq!(key("localhost/tool"), "localhost/tool:latest");
        // A dotted single component is a name, not a host.
        assert_eq!(key("tool.v2"), "library/tool.v2:latest");
    }

    #[test]
    fn digests_are_kept_and_printed() {
        let d = Digest::of(b"image");
        let r = Reference::parse(&format!("lab/tool:1@{d}")).unwrap();
        assert_eq!(r.digest(), Some(&d));
        assert_eq!(r.to_string(), format!("lab/tool:1@{d}"));
        assert_eq!(r.key(), "lab/tool:1");
    }

    #[test]
    fn path_traversal_and_malformed_names_are_refused() {
        for bad in [
            "",
            "../../etc/passwd:1",
            "..",
            "lab/../tool",
            "./tool",
            "/abs/tool",
            "lab/tool/",
            "lab//tool",
            "tool:",
            ":tag",
            "tool:-x",
            "tool:.x",
            "tool:a/b",
            "tool@sha256:abcd",
            "tool@blake3:ABC",
            "la b/tool",
            "tool\0x",
            "tоol", // Cyrillic о
            "oras://host/repo:1",
            "lab/-tool",
            "lab/tool-",
            "lab/to..ol",
            "lab/to___ol",
            "host:99999/tool",
            "host:/tool",
            "-bad.host/tool",
        ] {
            assert!(Reference::parse(bad).is_err(), "accepted {bad:?}");
        }
        let long_tag = format!("tool:{}", "a".repeat(10_000));
        let e = Reference::parse(&long_tag).unwrap_err();
        assert!(e.to_string().len() < 400, "error message not cut short");
        let long_name = "a".repeat(MAX_NAME_LEN + 1);
        assert!(Reference::parse(&long_name).is_err());
    }

    /// Found by fuzzing: a 255-character name without a namespace became 263 characters
    /// with `library/`, and its printed form no longer parsed.
    #[test]
    fn a_name_at_the_length_limit_still_round_trips_with_its_default_namespace() {
        let at_limit = "a".repeat(MAX_NAME_LEN);
        assert!(
            Reference::parse(&at_limit).is_err(),
            "would print as an unparsable name"
        );
        let fits = "a".repeat(MAX_NAME_LEN - DEFAULT_NAMESPACE.len() - 1);
        let r = Reference::parse(&fits).unwrap();
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn separators_follow_the_oci_grammar() {
        for good in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2_c3__d4-e5"] {
            assert!(Reference::parse(good).is_ok(), "refused {good:?}");
        }
    }

    #[test]
    fn list_patterns_glob_or_match_substrings() {
        assert!(matches_pattern("lab/", "lab/tool:1"));
        assert!(matches_pattern("*/tool:*", "lab/tool:1"));
        assert!(!matches_pattern("*/tool:2", "lab/tool:1"));
        assert!(matches_pattern("lab/t??l:?", "lab/tool:1"));
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
    }

    proptest! {
        #[test]
        fn parse_display_round_trips(
            host in proptest::option::of(("[a-z][a-z0-9]{0,8}\\.[a-z]{2,5}", proptest::option::of(1u16..))),
            path in proptest::collection::vec(component(), 1..4),
            tag in "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}",
            with_digest in any::<bool>(),
        ) {
            // Without a host, a dotted first part of several would read as a host (as in Docker).
            prop_assume!(host.is_some() || path.len() == 1 || !path[0].contains('.'));
            let mut s = String::new();
            if let Some((h, port)) = &host {
                s.push_str(h);
                if let Some(p) = port { s.push_str(&format!(":{p}")); }
                s.push('/');
            }
            s.push_str(&path.join("/"));
            s.push(':');
            s.push_str(&tag);
            if with_digest { s.push_str(&format!("@{}", Digest::of(s.as_bytes()))); }
            let r = Reference::parse(&s).unwrap();
            let again = Reference::parse(&r.to_string()).unwrap();
            prop_assert_eq!(&again, &r);
            prop_assert_eq!(again.to_string(), r.to_string());
        }

        #[test]
        fn anything_that_parses_round_trips(s in "[ -~]{0,40}") {
            if let Ok(r) = Reference::parse(&s) {
                let again = Reference::parse(&r.to_string()).unwrap();
                prop_assert_eq!(again, r);
            }
        }
    }
}
