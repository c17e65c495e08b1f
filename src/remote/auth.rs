//! Credentials and registry authentication.
//!
//! # Where credentials come from (first match wins)
//!
//! 1. `sregistry login HOST`: `${SREGISTRY_CONFIG_DIR:-${XDG_CONFIG_HOME:-~/.config}/sregistry}/credentials.json`,
//!    written with mode 0600 (read, changed and replaced under an exclusive lock of
//!    `.credentials.json.lock` beside it, through a temporary file of the writer's own, so
//!    concurrent logins keep each other's entries); refused (with the `chmod` to run) if
//!    group or others have any access to it. A relative `XDG_CONFIG_HOME` or `HOME` is
//!    ignored, as the XDG specification says. An empty user name or password is never sent.
//! 2. `${DOCKER_CONFIG:-~/.docker}/config.json`, as `docker login` and `oras login` write
//!    it, in Docker's order: the helper named for the host in `credHelpers`, else the one
//!    in `credsStore`, else `auths.HOST.auth` (base64 `user:password`). A helper is the
//!    program `docker-credential-NAME` on `PATH`, run as `docker-credential-NAME get` with
//!    the host on stdin, answering `{"Username": ..., "Secret": ...}` (bounded to
//!    `HELPER_TIMEOUT`, 30 s). A helper that is not installed, or has nothing for the host,
//!    counts as no credentials, so anonymous pulls work wherever the config came from.
//!    An identity token (`auths.HOST.identitytoken`, or a helper answering with the user
//!    name `<token>`) is an OAuth2 refresh token: see `Credentials::identity_token`.
//!
//! # Challenges
//!
//! A `401` carries `WWW-Authenticate`: `Basic realm="..."` (send the credentials) or
//! `Bearer realm="...",service="...",scope="..."` (ask the realm for a token for that scope,
//! with the credentials if there are any, then retry with the token). With an identity
//! token the request is the OAuth2 form `POST` (`grant_type=refresh_token`), as Docker
//! makes it; otherwise a `GET` with the credentials as Basic auth. Tokens are kept per
//! scope for the life of the command and fetched again on a `401`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::error::RemoteError;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// The user name Docker records with an identity token (an OAuth2 refresh token), in
/// `config.json` and in credential helpers' answers.
pub(super) const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credentials {
    /// An identity token (an OAuth2 refresh token, as `docker login` keeps for registries
    /// with OAuth2 token services): the password, when the user name is Docker's marker.
    /// It is exchanged at the token service with `grant_type=refresh_token`, never sent
    /// as a password.
    pub(super) fn identity_token(&self) -> Option<&str> {
        (self.username == IDENTITY_TOKEN_USER).then_some(self.password.as_str())
    }

    /// The `Authorization: Basic` value.
    pub(super) fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer` (lower-cased).
    pub scheme: String,
    /// Parameters with lower-cased names.
    pub params: BTreeMap<String, String>,
}

/// Parse a `WWW-Authenticate` header value (one challenge; the first if several).
/// Returns `None` for anything that is not `scheme [param=value, ...]`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let h = header.trim();
    let (scheme, rest) = match h.find(char::is_whitespace) {
        Some(i) => (&h[..i], h[i..].trim_start()),
        None => (h, ""),
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let mut params = BTreeMap::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = rest[start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            // A token68 or a bare word: not a parameter we use.
            if key.is_empty() {
                return None;
            }
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        // The escaped character may be multi-byte: take it whole.
                        let ch = rest.get(i + 1..)?.chars().next()?;
                        value.push(ch);
                        i += 1 + ch.len_utf8();
                    }
                    b'"' => {
                        i += 1;
                        closed = true;
                        break;
                    }
                    _ => {
                        // Copy one UTF-8 character.
                        let ch = rest[i..].chars().next()?;
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            if !closed {
                return None;
            }
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            value = rest[vs..i].to_string();
        }
        if key.is_empty() {
            return None;
        }
        params.insert(key, value);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Store {
    #[serde(default)]
    auths: BTreeMap<String, StoredAuth>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredAuth {
    username: String,
    password: String,
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

/// How long a credential helper may take to answer.
pub(super) const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `HOME` or `XDG_CONFIG_HOME` when set to an absolute path. A relative one is ignored, as
/// the XDG Base Directory specification says: it would name another file in every
/// directory the command runs from.
fn absolute_env(k: &str) -> Option<PathBuf> {
    std::env::var_os(k)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// The configuration's `config_dir` (a configuration that cannot be read has been
/// refused before: the command line and the Python package load it first), else the XDG
/// default.
fn config_dir() -> Option<PathBuf> {
    crate::settings::current()
        .ok()
        .and_then(|c| c.config_dir.clone())
        .or_else(|| absolute_env("XDG_CONFIG_HOME").map(|p| p.join("sregistry")))
        .or_else(|| absolute_env("HOME").map(|h| h.join(".config").join("sregistry")))
}

/// The file `sregistry login` writes.
pub fn credentials_path() -> Option<PathBuf> {
    config_dir().map(|d| d.join("credentials.json"))
}

fn docker_config_path() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("DOCKER_CONFIG")
        .map(|d| d.join("config.json"))
        .or_else(|| absolute_env("HOME").map(|h| h.join(".docker").join("config.json")))
}

fn read_store(path: &PathBuf) -> Result<Store, RemoteError> {
    let cred_err = |detail: String| RemoteError::Credentials {
        path: path.clone(),
        detail,
        source: None,
    };
    // Read for every remote, with credentials or not: say what to do with it.
    let unreadable = |e: std::io::Error| {
        cred_err(format!(
            "cannot read it ({e}); it holds the logins `sregistry login` stores: make it a file you can read, or move it away to go on without them"
        ))
    };
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(unreadable(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Store::default()),
        Err(e) => return Err(unreadable(e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(cred_err(format!(
            "{} it (mode {mode:o}), and it holds passwords; run `chmod 600 {}`",
            who_else_can(mode),
            path.display()
        )));
    }
    let bytes = fs::read(path).map_err(unreadable)?;
    serde_json::from_slice(&bytes).map_err(|e| cred_err(format!("not valid JSON: {e}")))
}

/// What a file's `mode` lets its group and others do: `the group can read and write,
/// others can read`.
fn who_else_can(mode: u32) -> String {
    let can = |bits: u32| {
        [(4, "read"), (2, "write"), (1, "execute")]
            .iter()
            .filter(|(b, _)| bits & b != 0)
            .map(|(_, w)| *w)
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let mut parts = Vec::new();
    if mode & 0o070 != 0 {
        parts.push(format!("the group can {}", can((mode >> 3) & 7)));
    }
    if mode & 0o007 != 0 {
        parts.push(format!("others can {}", can(mode & 7)));
    }
    parts.join(", ")
}

/// Credentials for `host` (`host[:port]`), if any are stored. An empty user name or
/// password counts as none: it is never sent.
pub(super) fn credentials_for(host: &str) -> Result<Option<Credentials>, RemoteError> {
    Ok(stored_credentials_for(host)?.filter(|c| !c.username.is_empty() && !c.password.is_empty()))
}

fn stored_credentials_for(host: &str) -> Result<Option<Credentials>, RemoteError> {
    if let Some(path) = credentials_path()
        && let Some(a) = read_store(&path)?.auths.get(host)
    {
        return Ok(Some(Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
        }));
    }
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    let Ok(bytes) = fs::read(&path) else {
        return Ok(None);
    };
    let cfg: DockerConfig =
        serde_json::from_slice(&bytes).map_err(|e| RemoteError::Credentials {
            path: path.clone(),
            detail: format!("not valid JSON: {e}"),
            source: Some(Box::new(e)),
        })?;
    let keys = [
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
    ];
    let helper = keys
        .iter()
        .find_map(|k| cfg.cred_helpers.get(k).map(|h| (k, h, "credHelpers")))
        .or_else(|| {
            cfg.creds_store
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| (&keys[0], h, "credsStore"))
        });
    if let Some((key, name, field)) = helper {
        let found = run_helper(name, key).map_err(|detail| RemoteError::Credentials {
            path: path.clone(),
            detail: format!("{field} helper `docker-credential-{name}`: {detail}"),
            source: None,
        })?;
        if found.is_some() {
            return Ok(found);
        }
    }
    for k in keys {
        if let Some(a) = cfg.auths.get(&k) {
            if let Some(t) = a.identity_token.as_ref().filter(|t| !t.is_empty()) {
                return Ok(Some(Credentials {
                    username: IDENTITY_TOKEN_USER.to_string(),
                    password: t.clone(),
                }));
            }
            if let (Some(u), Some(p)) = (&a.username, &a.password) {
                return Ok(Some(Credentials {
                    username: u.clone(),
                    password: p.clone(),
                }));
            }
            if let Some(enc) = &a.auth {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(enc.trim())
                    .map_err(|e| RemoteError::Credentials {
                        path: path.clone(),
                        detail: format!("auths.{k}.auth is not base64: {e}"),
                        source: Some(Box::new(e)),
                    })?;
                let raw = String::from_utf8_lossy(&raw);
                if let Some((u, p)) = raw.split_once(':') {
                    return Ok(Some(Credentials {
                        username: u.to_string(),
                        password: p.to_string(),
                    }));
                }
            }
        }
    }
    Ok(None)
}

/// Ask the credential helper `docker-credential-NAME` for `server`'s credentials.
/// `Ok(None)` when the helper is not installed or knows nothing of the server.
fn run_helper(name: &str, server: &str) -> Result<Option<Credentials>, String> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    if name.is_empty() || name.contains('/') {
        return Err("not a helper name".into());
    }
    let program = format!("docker-credential-{name}");
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is answered by its exit status below.
        let _ = stdin.write_all(server.as_bytes());
    }
    // Both pipes are read while the helper runs (the first MiB of its answer and 64 KiB
    // of its messages kept, the rest drained): a helper that talks a lot must not block
    // on a full pipe and be taken for one that does not answer.
    fn drain<R: Read + Send + 'static>(
        pipe: Option<R>,
        keep: u64,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = (&mut pipe).take(keep).read_to_end(&mut out);
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            }
            out
        })
    }
    let reader = drain(child.stdout.take(), 1 << 20);
    let err_reader = drain(child.stderr.take(), 64 << 10);
    let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", HELPER_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let out = reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    if !status.success() {
        // The protocol's answer for an unknown server.
        if text.contains("credentials not found") {
            return Ok(None);
        }
        let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
        let why = [text.trim(), err.trim()]
            .into_iter()
            .find(|t| !t.is_empty())
            .and_then(|t| t.lines().next())
            .unwrap_or("no message")
            .to_string();
        return Err(format!("failed ({status}): {why}"));
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(&out)
        .map_err(|e| format!("answered something other than its JSON: {e}"))?;
    Ok(Some(Credentials {
        username: a.username,
        password: a.secret,
    }))
}

/// Store (or, with `None`, remove) the credentials for `host`; returns the file.
/// Forget the stored credentials for `host`: the file, and whether there were any (when
/// there were none, nothing is written).
pub(super) fn remove_credentials(host: &str) -> Result<(PathBuf, bool), RemoteError> {
    let had = credentials_path()
        .map(|p| read_store(&p).map(|s| s.auths.contains_key(host)))
        .transpose()?
        .unwrap_or(false);
    if had {
        return Ok((store_credentials(host, None)?, true));
    }
    let path =
        credentials_path().unwrap_or_else(|| PathBuf::from("~/.config/sregistry/credentials.json"));
    Ok((path, false))
}

pub(super) fn store_credentials(
    host: &str,
    creds: Option<&Credentials>,
) -> Result<PathBuf, RemoteError> {
    let path = credentials_path().ok_or_else(|| RemoteError::Credentials {
        path: PathBuf::from("~/.config/sregistry/credentials.json"),
        detail: "no home directory (HOME is unset or not an absolute path): set HOME or SREGISTRY_CONFIG_DIR".into(),
        source: None,
    })?;
    let cred_err = |detail: String| RemoteError::Credentials {
        path: path.clone(),
        detail,
        source: None,
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    fs::create_dir_all(dir).map_err(|e| cred_err(e.to_string()))?;
    // Read, change and replace under an exclusive lock of a file beside it: two logins at
    // once (to different hosts) each keep the other's entry.
    let lock = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(".credentials.json.lock"))
            .map_err(|e| cred_err(format!("cannot open its lock file: {e}")))?
    };
    lock.lock()
        .map_err(|e| cred_err(format!("cannot lock it: {e}")))?;
    let mut store = read_store(&path)?;
    match creds {
        Some(c) => {
            store.auths.insert(
                host.to_string(),
                StoredAuth {
                    username: c.username.clone(),
                    password: c.password.clone(),
                },
            );
        }
        None => {
            store.auths.remove(host);
        }
    }
    // A temporary name of this process's own: a process killed between writing and
    // renaming leaves it behind, never in another's way.
    let tmp = dir.join(format!(".credentials.json.{}.tmp", std::process::id()));
    let body = serde_json::to_vec_pretty(&store).map_err(|e| cred_err(e.to_string()))?;
    let written = (|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(cred_err(e.to_string()));
    }
    drop(lock);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_with_quoted_and_bare_values() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:lab/tool:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example.org/token");
        assert_eq!(c.params["scope"], "repository:lab/tool:pull,push");
        let c = parse_challenge("Basic realm=Registry").unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry");
        let c = parse_challenge(r#"Bearer realm="a\"b", error="invalid_token""#).unwrap();
        assert_eq!(c.params["realm"], "a\"b");
        assert_eq!(c.params["error"], "invalid_token");
    }

    #[test]
    fn malformed_challenges_are_refused_not_panicked_on() {
        for bad in [
            "",
            "   ",
            "Bearer realm=\"unterminated",
            "B@d x=y",
            "Bearer =x",
        ] {
            assert!(parse_challenge(bad).is_none(), "{bad:?}");
        }
    }

    /// Found by fuzzing: a backslash before a multi-byte character split the character
    /// and the next slice panicked.
    #[test]
    fn an_escaped_multibyte_character_does_not_split() {
        assert!(parse_challenge("e\u{b}=\"\\\u{a0}e\"").is_none());
        assert!(
            parse_challenge("Bearer realm=\"\\é").is_none(),
            "unterminated"
        );
        let c = parse_challenge("Bearer realm=\"a\\éb\"").unwrap();
        assert_eq!(c.params["realm"], "aéb");
    }

    #[test]
    fn basic_header_encodes_user_and_password() {
        let c = Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        assert_eq!(c.basic(), "Basic YWxpY2U6czNjcmV0");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
