//! Pull, push, search and login against a real registry (Debian's docker-registry):
//! anonymous, htpasswd and token auth; concurrent gets that must download once.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::common::*;
use crate::registry::Registry;
use crate::support::{inspect, sha256_of_file};

fn login(env: &Env, reg: &Registry, user: &str, password: &str) -> std::process::Output {
    env.cmd()
        .args(["login", &reg.addr, "-u", user, "--password-stdin"])
        .write_stdin(password)
        .output()
        .unwrap()
}

#[test]
fn oras_push_then_pull_round_trip_is_byte_identical() {
    let reg = Registry::anonymous();
    let env = Env::new();
    let sif = env.sif("tool.sif", "round trip");
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&sif)
            .args(["--name", "lab/tool:1.0"]),
    );
    stdout_of(
        env.cmd()
            .args(["push", "lab/tool:1.0", &reg.oras("lab/tool:1.0")]),
    );
    // A fresh cache pulls it back.
    let other = Env::new();
    let path = stdout_of(other.cmd().args(["pull", &reg.oras("lab/tool:1.0")]));
    assert_eq!(fs::read(&path).unwrap(), fs::read(&sif).unwrap());
    let v: serde_json::Value = serde_json::from_str(&stdout_of(other.cmd().args([
        "inspect",
        "--json",
        &format!("{}/lab/tool:1.0", reg.addr),
    ])))
    .unwrap();
    assert_eq!(v["source"], reg.oras("lab/tool:1.0"));
    assert_eq!(v["media_type"], "application/vnd.sylabs.sif.layer.v1.sif");
    assert_eq!(v["sif"]["header"]["arch"], "amd64");
    other.assert_blobs_verify();
    assert!(other.tmp_entries().is_empty());
    // `search` lists the tag and the repository.
    assert_eq!(
        stdout_of(
            other
                .cmd()
                .args(["search", &format!("oras://{}/lab/tool", reg.addr)])
        ),
        "1.0"
    );
    assert_eq!(
        stdout_of(
            other
                .cmd()
                .args(["search", &format!("oras://{}", reg.addr)])
        ),
        "lab/tool"
    );
}

#[test]
fn push_skips_blobs_the_registry_already_has() {
    let reg = Registry::anonymous();
    let env = Env::new();
    let sif = env.sif("tool.sif", "pushed twice");
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/tool"]));
    stdout_of(
        env.cmd()
            .args(["push", "lab/tool", &reg.oras("lab/tool:a")]),
    );
    let uploads = |log: &str| {
        log.lines()
            .filter(|l| l.contains("POST /v2/lab/tool/blobs/uploads"))
            .count()
    };
    assert_eq!(uploads(&reg.log()), 2, "config and layer");
    stdout_of(
        env.cmd()
            .args(["push", "lab/tool", &reg.oras("lab/tool:b")]),
    );
    assert_eq!(
        uploads(&reg.log()),
        2,
        "a second push uploaded again:\n{}",
        reg.log()
    );
    let other = Env::new();
    let path =
        stdout_of(
            other
                .cmd()
                .args(["pull", &reg.oras("lab/tool:b"), "--name", "mine/tool:b"]),
        );
    assert_eq!(fs::read(path).unwrap(), fs::read(&sif).unwrap());
    assert_eq!(other.names(), ["mine/tool:b"]);
}

/// 32 jobs ask for the same uncached image at once: one download, one path. The first
/// is held just after taking the per-pull lock until each of the other 31 has said it
/// waits on that lock, so the single download is the lock's doing, not the timing's.
#[test]
fn concurrent_gets_of_one_uncached_image_download_once() {
    let reg = Registry::anonymous();
    let env = Env::new();
    let sif = env.sif("tool.sif", "wanted by many");
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/tool"]));
    stdout_of(
        env.cmd()
            .args(["push", "lab/tool", &reg.oras("lab/tool:1")]),
    );
    let jobs = Env::new();
    let remote = reg.oras("lab/tool:1");
    let resume = jobs.path("resume");
    let holder = jobs.spawn_paused(
        "pull-locked",
        Some(&resume),
        &["get".as_ref(), remote.as_ref()],
    );
    let started: Vec<_> = (0..31)
        .map(|_| PullWaiter::spawn(jobs.std_cmd().args(["get", &remote])))
        .collect();
    let waiters: Vec<_> = started.into_iter().map(PullWaiter::waiting).collect();
    assert_eq!(reg.blob_gets(&sha256_of_file(&sif)), 0, "{}", reg.log());
    fs::write(&resume, b"").unwrap();
    let out = holder.wait_with_output().unwrap();
    assert!(out.status.success(), "the holder: {:?}", out.status);
    let mut paths = std::collections::BTreeSet::new();
    paths.insert(String::from_utf8(out.stdout).unwrap().trim().to_string());
    for w in waiters {
        let (status, stdout, err) = w.finish();
        assert!(status.success(), "{err}");
        paths.insert(stdout.trim().to_string());
    }
    assert_eq!(paths.len(), 1, "different paths: {paths:?}");
    let path = paths.into_iter().next().unwrap();
    assert_eq!(fs::read(&path).unwrap(), fs::read(&sif).unwrap());
    assert_eq!(
        reg.blob_gets(&sha256_of_file(&sif)),
        1,
        "the blob was downloaded more than once:\n{}",
        reg.log()
    );
    assert!(jobs.tmp_entries().is_empty());
}

/// Once pulled, `get` of the remote answers from the cache, even with the registry gone.
#[test]
fn get_of_a_pulled_remote_needs_no_registry() {
    let env = Env::new();
    let sif = env.sif("tool.sif", "offline later");
    let remote;
    let path;
    {
        let reg = Registry::anonymous();
        stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/tool"]));
        stdout_of(
            env.cmd()
                .args(["push", "lab/tool", &reg.oras("lab/tool:1")]),
        );
        remote = reg.oras("lab/tool:1");
        path = stdout_of(env.cmd().args(["get", &remote]));
    }
    assert_eq!(stdout_of(env.cmd().args(["get", &remote])), path);
}

/// The progress bar goes to a terminal only: never into a batch job's log, never with `-q`.
#[test]
fn progress_bar_is_drawn_on_a_terminal_only_and_never_when_quiet() {
    let reg = Registry::anonymous();
    let env = Env::new();
    let sif = env.sif("tool.sif", &"progress ".repeat(100_000));
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/p:1"]));
    stdout_of(env.cmd().args(["push", "lab/p:1", &reg.oras("lab/p:1")]));

    // stderr not a terminal (a batch job's log): the one-line summary, no bar.
    let plain = Env::new();
    let out = plain
        .cmd()
        .args(["pull", &reg.oras("lab/p:1")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("iB/") && err.trim_end().lines().count() <= 1,
        "progress written to a file: {err:?}"
    );

    // On a pseudo-terminal (script(1)), as a user at a shell sees it.
    let on_terminal = |env: &Env, quiet: bool| -> String {
        let q = if quiet { "-q " } else { "" };
        let line = format!(
            "exec '{}' {q}pull '{}'",
            env!("CARGO_BIN_EXE_sregistry"),
            reg.oras("lab/p:1")
        );
        let out = std::process::Command::new("script")
            .args(["-q", "-e", "-c", &line, "/dev/null"])
            // A terminal has a TERM (CI's environment may have none).
            .env("TERM", "xterm")
            .env("SREGISTRY_CACHE", &env.cache)
            .env("SREGISTRY_CONFIG_DIR", env.path("config"))
            .env("DOCKER_CONFIG", env.path("docker"))
            .stdin(Stdio::null())
            .output()
            .expect("script(1) from util-linux");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        text
    };
    let size = fs::metadata(&sif).unwrap().len();
    let shown = on_terminal(&Env::new(), false);
    assert!(
        shown.contains("KiB/") || shown.contains("MiB/"),
        "no progress bar for a {size}-byte pull on a terminal: {shown:?}"
    );
    let quiet = on_terminal(&Env::new(), true);
    assert!(
        !quiet.contains("iB/"),
        "progress shown despite -q: {quiet:?}"
    );
    let lines: Vec<&str> = quiet.trim().lines().collect();
    assert!(
        lines.len() == 1 && lines[0].contains("/blobs/"),
        "with -q only the path: {quiet:?}"
    );
}

#[test]
fn unknown_remote_tag_exits_three_and_plain_http_elsewhere_is_refused() {
    let reg = Registry::anonymous();
    let env = Env::new();
    assert_fails(
        env.cmd().args(["pull", &reg.oras("lab/none:1")]),
        3,
        "lab/none:1",
    );
    assert_fails(
        env.cmd().args(["pull", "http://example.org/x.sif"]),
        2,
        "plain HTTP",
    );
    assert_fails(
        env.cmd().args(["pull", "ftp://example.org/x.sif"]),
        2,
        "unknown scheme",
    );
    assert!(env.blobs().is_empty());
}

#[test]
fn htpasswd_registry_needs_the_right_password() {
    let reg = Registry::htpasswd("alice", "correct-horse");
    let env = Env::new();
    let sif = env.sif("tool.sif", "private");
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/tool"]));
    // No credentials: a clear refusal.
    assert_fails(
        env.cmd()
            .args(["push", "lab/tool", &reg.oras("lab/tool:1")]),
        1,
        "sregistry login",
    );
    // A wrong password is refused at login and nothing is stored.
    let out = login(&env, &reg, "alice", "wrong");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the credentials of `alice`"));
    assert!(!env.path("config/credentials.json").exists());
    // The right one is stored 0600 and works for push and pull.
    let out = login(&env, &reg, "alice", "correct-horse");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds = env.path("config/credentials.json");
    assert_eq!(
        fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    push_and_pull_back(&env, &reg.oras("lab/tool:1"), &sif);
    // A credentials file others can read is refused, with the fix.
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o644)).unwrap();
    assert_fails(
        env.cmd().args(["pull", &reg.oras("lab/tool:1")]),
        1,
        "chmod 600",
    );
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
    env.cmd().args(["logout", &reg.addr]).assert().success();
    assert_fails(
        env.cmd().args(["pull", &reg.oras("lab/tool:1")]),
        1,
        "credentials are required",
    );
}

/// Docker's credential helpers are asked, in Docker's order: `credHelpers` for the host,
/// then `credsStore`; a helper that is missing or knows nothing means no credentials.
#[test]
fn docker_credential_helpers_are_asked_in_dockers_order() {
    let reg = Registry::htpasswd("alice", "correct-horse");
    let env = Env::new();
    let sif = env.sif("tool.sif", "helped");
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/tool"]));
    // Helpers speaking the protocol: `get`, the server on stdin, JSON on stdout, and
    // "credentials not found" (exit 1) for a server they do not know.
    let bin = env.path("helpers");
    fs::create_dir_all(&bin).unwrap();
    let helper = |name: &str, secret: &str| {
        let p = bin.join(format!("docker-credential-{name}"));
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n\
             if [ \"$server\" = \"{addr}\" ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"{secret}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            addr = reg.addr
        );
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    };
    helper("good", "correct-horse");
    helper("stale", "an-old-password");
    fs::create_dir_all(env.path("docker")).unwrap();
    let config = |v: serde_json::Value| {
        fs::write(env.path("docker/config.json"), v.to_string()).unwrap();
    };
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let run = |args: &[&str]| {
        let mut c = env.cmd();
        c.env("PATH", &path).args(args);
        c
    };
    let addr = reg.addr.clone();

    // credsStore answers for every host.
    config(serde_json::json!({ "credsStore": "good" }));
    stdout_of(&mut run(&["push", "lab/tool", &reg.oras("lab/tool:1")]));
    // credHelpers for this host comes first, even when its answer is wrong.
    config(serde_json::json!({ "credsStore": "good", "credHelpers": { addr.clone(): "stale" } }));
    assert_fails(
        &mut run(&["pull", &reg.oras("lab/tool:1")]),
        1,
        "did not accept",
    );
    // A helper that is not installed, or has nothing for this host: no credentials.
    config(serde_json::json!({ "credsStore": "not-installed" }));
    assert_fails(
        &mut run(&["pull", &reg.oras("lab/tool:1")]),
        1,
        "credentials are required",
    );
    config(
        serde_json::json!({ "credHelpers": { "elsewhere.example:5000": "good" }, "credsStore": "stale" }),
    );
    assert_fails(
        &mut run(&["pull", &reg.oras("lab/tool:1")]),
        1,
        "did not accept",
    );
    // A helper that fails for another reason is named, with its message.
    let broken = bin.join("docker-credential-broken");
    fs::write(
        &broken,
        "#!/bin/sh\necho 'the keychain is locked' >&2\nexit 1\n",
    )
    .unwrap();
    fs::set_permissions(&broken, fs::Permissions::from_mode(0o755)).unwrap();
    config(serde_json::json!({ "credsStore": "broken" }));
    let err = assert_fails(
        &mut run(&["pull", &reg.oras("lab/tool:1")]),
        1,
        "docker-credential-broken",
    );
    assert!(err.contains("the keychain is locked"), "{err}");
    // A helper that writes more to stderr than a pipe holds, then answers: heard out,
    // not left blocked until the helper timeout.
    let chatty = bin.join("docker-credential-chatty");
    fs::write(
        &chatty,
        "#!/bin/sh\nread -r server\nhead -c 300000 /dev/zero | tr '\\0' x >&2\n\
         printf '{\"Username\":\"alice\",\"Secret\":\"correct-horse\"}'\n",
    )
    .unwrap();
    fs::set_permissions(&chatty, fs::Permissions::from_mode(0o755)).unwrap();
    config(serde_json::json!({ "credsStore": "chatty" }));
    let started = std::time::Instant::now();
    let pulled = stdout_of(&mut run(&["pull", &reg.oras("lab/tool:1")]));
    assert_eq!(fs::read(pulled).unwrap(), fs::read(&sif).unwrap());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // The right helper for this host: the pull goes through, byte-identical.
    config(serde_json::json!({ "credHelpers": { addr.clone(): "good" } }));
    let pulled = stdout_of(&mut run(&["pull", &reg.oras("lab/tool:1")]));
    assert_eq!(fs::read(pulled).unwrap(), fs::read(&sif).unwrap());
}

/// Credentials written by `docker login` / `oras login` are used as they are.
#[test]
fn docker_config_credentials_are_honoured() {
    use base64::Engine as _;
    let reg = Registry::htpasswd("bob", "pw-bob");
    let env = Env::new();
    let sif = env.sif("tool.sif", "docker config");
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/tool"]));
    fs::create_dir_all(env.path("docker")).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw-bob");
    fs::write(
        env.path("docker/config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    stdout_of(
        env.cmd()
            .args(["push", "lab/tool", &reg.oras("lab/tool:1")]),
    );
    let bad = base64::engine::general_purpose::STANDARD.encode("bob:nope");
    fs::write(
        env.path("docker/config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{bad}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    assert_fails(
        env.cmd().args(["pull", &reg.oras("lab/tool:1")]),
        1,
        "refused the credentials of `bob`",
    );
}

/// Token auth: tokens are fetched per scope; a token for one repository cannot push to
/// another.
#[test]
fn token_auth_grants_push_only_where_the_token_allows() {
    let reg = Registry::token("carol", "tok-pass", "lab/allowed");
    let env = Env::new();
    let sif = env.sif("tool.sif", "token");
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/tool"]));
    let out = login(&env, &reg, "carol", "tok-pass");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(login(&env, &reg, "carol", "bad").status.code(), Some(1));
    // login with a bad password must not have overwritten the good one.
    push_and_pull_back(&env, &reg.oras("lab/allowed:1"), &sif);
    let err = assert_fails(
        env.cmd()
            .args(["push", "lab/tool", &reg.oras("lab/other:1")]),
        1,
        "lab/other",
    );
    assert!(err.contains("push"), "{err}");
}

/// An identity token from `docker login` (`identitytoken`, or a helper answering with the
/// user name `<token>`) is exchanged at the token service as an OAuth2 refresh token,
/// never sent as a password (the token service here refuses it as one).
#[test]
fn docker_identity_tokens_are_exchanged_as_refresh_tokens() {
    use base64::Engine as _;
    let reg = Registry::token("dave", "pw-dave", "lab/allowed");
    let env = Env::new();
    let sif = env.sif("tool.sif", "identity token");
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/tool"]));
    fs::create_dir_all(env.path("docker")).unwrap();
    let config = |v: serde_json::Value| {
        fs::write(env.path("docker/config.json"), v.to_string()).unwrap();
    };
    // As `docker login` writes it: `auth` holds "<token>:", the token beside it.
    let marker = base64::engine::general_purpose::STANDARD.encode("<token>:");
    let with_token = |t: &str| serde_json::json!({ "auths": { reg.addr.clone(): { "auth": marker, "identitytoken": t } } });
    config(with_token("identity-pw-dave"));
    push_and_pull_back(&env, &reg.oras("lab/allowed:1"), &sif);
    config(with_token("identity-stale"));
    assert_fails(
        env.cmd().args(["pull", &reg.oras("lab/allowed:1")]),
        1,
        "refused",
    );
    // A credential helper's answer with the same marker.
    let bin = env.path("helpers");
    fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-oauth");
    fs::write(
        &helper,
        "#!/bin/sh\nread -r server\n\
         printf '{\"Username\":\"<token>\",\"Secret\":\"identity-pw-dave\"}'\n",
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    config(serde_json::json!({ "credsStore": "oauth" }));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let pulled = stdout_of(env.cmd().env("PATH", &path).args([
        "pull",
        &reg.oras("lab/allowed:1"),
        "--name",
        "again",
    ]));
    assert_eq!(fs::read(pulled).unwrap(), fs::read(&sif).unwrap());
}

/// Push the local `lab/tool` to `target` (an `oras://` reference), pull it back as
/// `copy`, and check the bytes are the file's.
fn push_and_pull_back(env: &Env, target: &str, sif: &std::path::Path) {
    stdout_of(env.cmd().args(["push", "lab/tool", target]));
    let path = stdout_of(env.cmd().args(["pull", target, "--name", "copy"]));
    assert_eq!(fs::read(path).unwrap(), fs::read(sif).unwrap());
}

/// Two pulls of one unchanged `oras://` image made the registry serve the layer twice.
/// A pull compares the manifest's layer digest with what the name holds: unchanged, it
/// downloads nothing and prints the cached path; changed, it downloads the new layer and
/// re-points the name; `--force` downloads again. Counted in the registry's access log.
#[test]
fn a_second_pull_of_an_unchanged_oras_image_downloads_nothing() {
    let reg = Registry::anonymous();
    let env = Env::new();
    let v1 = env.sif("v1.sif", "version one");
    let v2 = env.sif("v2.sif", "version two");
    stdout_of(env.cmd().arg("add").arg(&v1).args(["--name", "lab/v:1"]));
    stdout_of(env.cmd().arg("add").arg(&v2).args(["--name", "lab/v:2"]));
    let remote = reg.oras("lab/tool:stable");
    stdout_of(env.cmd().args(["push", "lab/v:1", &remote]));

    let other = Env::new();
    let first = stdout_of(other.cmd().args(["pull", &remote]));
    let out = other.cmd().args(["pull", &remote]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), first);
    assert!(err.contains("unchanged"), "{err}");
    assert_eq!(reg.blob_gets(&sha256_of_file(&v1)), 1, "{}", reg.log());

    // The tag moves: the new layer is downloaded once and the name follows it.
    stdout_of(env.cmd().args(["push", "lab/v:2", &remote]));
    let second = stdout_of(other.cmd().args(["pull", &remote]));
    assert_eq!(fs::read(&second).unwrap(), fs::read(&v2).unwrap());
    assert_eq!(reg.blob_gets(&sha256_of_file(&v2)), 1, "{}", reg.log());
    stdout_of(other.cmd().args(["pull", &remote]));
    assert_eq!(reg.blob_gets(&sha256_of_file(&v2)), 1, "{}", reg.log());

    // --force downloads again.
    let forced = stdout_of(other.cmd().args(["pull", "--force", &remote]));
    assert_eq!(forced, second);
    assert_eq!(reg.blob_gets(&sha256_of_file(&v2)), 2, "{}", reg.log());
    assert_eq!(reg.blob_gets(&sha256_of_file(&v1)), 1, "{}", reg.log());
}

/// `search oras://HOST` listed the first page of the catalog and ignored the registry's
/// `Link: <...>; rel="next"`. Here a page holds 2 repositories and there are 5: all are
/// listed, each once.
#[test]
fn search_lists_every_page_of_the_catalog() {
    let reg = Registry::anonymous_with_catalog_pages_of(2);
    let env = env_with_lab_tool();
    let repos = ["lab/a", "lab/b", "lab/c", "lab/d", "lab/e"];
    for r in repos {
        stdout_of(
            env.cmd()
                .args(["push", "lab/tool:1", &reg.oras(&format!("{r}:1"))]),
        );
    }
    let listed = stdout_of(env.cmd().args(["search", &format!("oras://{}", reg.addr)]));
    assert_eq!(listed.lines().collect::<Vec<_>>(), repos, "{}", reg.log());
    let pages = reg
        .log()
        .lines()
        .filter(|l| l.contains("GET /v2/_catalog"))
        .count();
    assert!(
        pages >= 3,
        "{pages} catalog requests for 5 repositories in pages of 2"
    );
}

/// `push` looked the name up twice (its entry, then its path): a name re-pointed in
/// between sent the new content under the old content's digest, or recorded the registry's
/// digest of one content against the other. Now one lookup opens the file: re-pointed and
/// its old blob removed by gc while the push waits, the push still sends exactly the
/// content it looked up, and records its digest against that content only.
#[test]
fn push_sends_the_content_it_looked_up_though_the_name_moves_and_gc_runs() {
    let reg = Registry::anonymous();
    let env = Env::new();
    let first = env.sif("first.sif", "the content looked up");
    let second = env.sif("second.sif", "the content the name moved to");
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&first)
            .args(["--name", "lab/moving:1"]),
    );
    let first_blob = inspect(&env, "lab/moving:1")["path"]
        .as_str()
        .unwrap()
        .to_string();
    let go = env.path("go");
    let target = reg.oras("lab/moving:1");
    let paused = env.spawn_paused(
        "push-opened",
        Some(&go),
        &["push".as_ref(), "lab/moving:1".as_ref(), target.as_ref()],
    );
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&second)
            .args(["--name", "lab/moving:1"]),
    );
    stdout_of(env.cmd().args(["gc", "--max-size", "0", "--min-idle", "0"]));
    assert!(
        !std::path::Path::new(&first_blob).exists(),
        "gc did not remove the first content's blob: the test proves nothing"
    );
    fs::write(&go, b"").unwrap();
    let out = paused.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = Env::new();
    let path = stdout_of(other.cmd().args(["pull", &target]));
    assert_eq!(fs::read(&path).unwrap(), fs::read(&first).unwrap());
    // The name's current content (the second) was never sent, so it has no remote digest
    // of the first's.
    let now = inspect(&env, "lab/moving:1");
    assert_ne!(
        now["remote_digest"],
        sha256_of_file(&first).as_str(),
        "{now}"
    );
}

/// A credentials file that cannot be read (here a directory, which even root cannot read
/// as a file) stops a pull that needs no credentials in one line that names the file, why,
/// and what to do, instead of a bare system error.
#[test]
fn an_unreadable_credentials_file_is_named_with_what_to_do() {
    let env = Env::new();
    let creds = env.path("config/credentials.json");
    fs::create_dir_all(&creds).unwrap();
    let err = assert_fails(
        env.cmd().args(["pull", "oras://127.0.0.1:9/lab/tool:1"]),
        1,
        &format!("credentials file `{}`", creds.display()),
    );
    assert!(err.contains("cannot read it"), "{err}");
    assert!(err.contains("move it away"), "{err}");
}

/// Danger: a download or a copy into the cache holds the index lock, so every other
/// user's `get`, `add` and `list` waits for it (minutes, for a large image).
/// docs/shared-cache.md: "Copying, hashing and downloading never hold it." A `get` of a
/// remote is held with its first bytes downloaded into `tmp/`, and an `add` with its copy
/// begun; meanwhile other processes add, get, list, tag, rm and gc, each without waiting
/// for a lock (none says it waits), and gc leaves both live files in `tmp/`; then both
/// finish with the right content.
#[test]
fn downloads_and_copies_never_hold_the_index_lock() {
    let reg = Registry::anonymous();
    let src = Env::new();
    let sif = src.sif("tool.sif", &"downloaded while others work ".repeat(100_000));
    stdout_of(src.cmd().arg("add").arg(&sif).args(["--name", "lab/tool"]));
    stdout_of(
        src.cmd()
            .args(["push", "lab/tool", &reg.oras("lab/tool:1")]),
    );
    let remote = reg.oras("lab/tool:1");

    let env = Env::new();
    let seed = env.file("seed.img", b"seed");
    stdout_of(env.cmd().arg("add").arg(&seed).args(["--name", "seed"]));
    let resume = env.path("resume");
    let download = env.spawn_paused(
        "download-started",
        Some(&resume),
        &["get".as_ref(), remote.as_ref()],
    );
    let data: Vec<u8> = (0..40usize << 20).map(|i| (i % 253) as u8).collect();
    let big = env.file("big.img", &data);
    let copy = env.spawn_paused(
        "add-mid-copy",
        Some(&resume),
        &[
            "add".as_ref(),
            big.as_os_str(),
            "--name".as_ref(),
            "big".as_ref(),
        ],
    );
    let live = env.tmp_entries();
    assert_eq!(live.len(), 2, "the download and the copy in tmp/: {live:?}");

    let meanwhile = |args: &[&std::ffi::OsStr]| -> String {
        let out = env
            .cmd()
            .env("SREGISTRY_LOCK_TIMEOUT", "60")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(!err.contains("waiting for"), "{args:?} waited: {err}");
        String::from_utf8(out.stdout).unwrap()
    };
    let small = env.file("small.img", b"added meanwhile");
    meanwhile(&[
        "add".as_ref(),
        small.as_os_str(),
        "--name".as_ref(),
        "meanwhile".as_ref(),
    ]);
    meanwhile(&["get".as_ref(), "seed".as_ref()]);
    meanwhile(&["tag".as_ref(), "seed".as_ref(), "seed2".as_ref()]);
    meanwhile(&["rm".as_ref(), "seed2".as_ref()]);
    meanwhile(&["gc".as_ref(), "--tmp-grace".as_ref(), "0".as_ref()]);
    let list = meanwhile(&["list".as_ref()]);
    assert!(list.contains("library/meanwhile:latest"), "{list}");
    assert!(!list.contains("big"), "{list}");
    let mut still = env.tmp_entries();
    still.sort();
    let mut live = live;
    live.sort();
    assert_eq!(still, live, "gc touched a live download or copy");

    fs::write(&resume, b"").unwrap();
    for (what, child, want) in [
        ("the download", download, fs::read(&sif).unwrap()),
        ("the copy", copy, data),
    ] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{what}: {:?}", out.status);
        let path = String::from_utf8(out.stdout).unwrap();
        assert_eq!(fs::read(path.trim()).unwrap(), want, "{what}");
    }
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
}

/// A pull that finds its remote unchanged reports the name's image; if the name was
/// pointed at other content in the meantime (here an `add --force` while the pull is
/// stopped right after its check), it says so and changes nothing: exit 1 (a conflict,
/// `sregistry.Conflict` in Python, see docs/commands.md), the name keeps the new content.
#[test]
fn a_name_repointed_while_a_pull_finds_its_remote_unchanged_is_a_conflict() {
    let reg = Registry::anonymous();
    let env = Env::new();
    let v1 = env.sif("v1.sif", "version one");
    let v2 = env.sif("v2.sif", "version two");
    stdout_of(env.cmd().arg("add").arg(&v1).args(["--name", "lab/v:1"]));
    let remote = reg.oras("lab/tool:stable");
    stdout_of(env.cmd().args(["push", "lab/v:1", &remote]));
    stdout_of(env.cmd().args(["pull", &remote, "--name", "lab/x:1"]));

    let go = env.path("go");
    let log = env.path("pull.err");
    let pull = env
        .std_cmd()
        .env("SREGISTRY_TEST_PAUSE", "pull-unchanged")
        .env("SREGISTRY_TEST_RESUME", &go)
        .args(["pull", &remote, "--name", "lab/x:1"])
        .stdout(std::process::Stdio::piped())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let paused = || {
        fs::read_to_string(&log)
            .unwrap()
            .contains("paused at pull-unchanged")
    };
    let start = std::time::Instant::now();
    while !paused() {
        assert!(start.elapsed().as_secs() < 60, "the pull never paused");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let added = stdout_of(
        env.cmd()
            .arg("add")
            .arg(&v2)
            .args(["--name", "lab/x:1", "--force"]),
    );
    fs::write(&go, b"").unwrap();
    let out = pull.wait_with_output().unwrap();
    let err = fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("was pointed at other content while this pull"),
        "{err}"
    );
    assert_eq!(stdout_of(env.cmd().args(["get", "lab/x:1"])), added);
    assert_eq!(fs::read(&added).unwrap(), fs::read(&v2).unwrap());
}
