//! Private images stay private (issue 23): in a shared cache, an image that needed
//! credentials to pull goes to the puller's private cache (`<cache>/private/<uid>/`, 0700),
//! and no other member reaches it through the cache: not by name, not by digest, not by
//! path, not through a shared layer, not in `list`. Real users of one group
//! (`sregtest-alice`, `sregtest-bob`), a real registry with htpasswd authentication.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::*;
use crate::images;
use crate::registry::Registry;
use crate::shared::{USERS, ok, shared_cache_for_the_users};
use crate::support::sha256_of;

const PASSWORD: &str = "correct-horse";

/// A user's own configuration directory (credentials), mode 0700.
fn config_dir_of(env: &Env, user: &str) -> PathBuf {
    let dir = env.path(&format!("config-{user}"));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    run(Command::new("chown").arg(user).arg(&dir));
    dir
}

/// The binary as `user` (umask 077) on `cache`, with `config` as its configuration
/// directory (its credentials), `stdin` given.
fn as_user(user: &str, bin: &Path, cache: &Path, config: &Path, args: &[&str]) -> Output {
    as_user_in(user, bin, cache, config, args, "")
}

fn as_user_in(
    user: &str,
    bin: &Path,
    cache: &Path,
    config: &Path,
    args: &[&str],
    stdin: &str,
) -> Output {
    as_user_with(user, bin, cache, config, args, stdin, &[])
}

/// [`as_user_in`] with variables `envs` set too.
fn as_user_with(
    user: &str,
    bin: &Path,
    cache: &Path,
    config: &Path,
    args: &[&str],
    stdin: &str,
    envs: &[(&str, &str)],
) -> Output {
    use std::io::Write;
    let mut child = Command::new("setpriv")
        .args(["--reuid", user, "--regid", "users", "--init-groups", "--"])
        .args(["sh", "-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(bin)
        .args(args)
        .env("SREGISTRY_CACHE", cache)
        .env("SREGISTRY_CONFIG_DIR", config)
        .env("HOME", "/nonexistent")
        .env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("SREGISTRY_NOW")
        .env_remove("SREGISTRY_CONFIG")
        .env_remove("SREGISTRY_SHARED_REMOTES")
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `script` run by `sh` as `user`.
fn sh_as(user: &str, script: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid", user, "--regid", "users", "--init-groups", "--"])
        .args(["sh", "-c", script])
        .output()
        .unwrap()
}

/// `user` logs in to `reg` as `login` with `password`.
fn login(user: &str, bin: &Path, cache: &Path, config: &Path, reg: &Registry, login: &str) {
    ok(as_user_in(
        user,
        bin,
        cache,
        config,
        &["login", &reg.addr, "-u", login, "--password-stdin"],
        PASSWORD,
    ));
}

/// `out` failed with `code`, its stderr holding `needle`; nothing on stdout.
fn refused(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
}

/// Every regular file under the shared cache's own `v1/` (not the private caches).
fn shared_files(cache: &Path) -> Vec<PathBuf> {
    walk(&cache.join("v1"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
}

/// No file of the shared cache holds `content`.
fn shared_holds_none_of(cache: &Path, content: &[u8]) {
    for f in shared_files(cache) {
        assert_ne!(
            fs::read(&f).unwrap_or_default(),
            content,
            "the shared cache holds the private image at `{}`",
            f.display()
        );
    }
}

/// The requests the registry served, and the bytes of blobs it sent, since `from` lines.
fn served_since(reg: &Registry, from: usize) -> (usize, u64) {
    let log = reg.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" HTTP/1.1\" ")).collect();
    let mut bytes = 0;
    for l in &lines[from.min(lines.len())..] {
        if l.contains("/blobs/") && (l.contains("\" 200 ") || l.contains("\" 206 ")) {
            let after = l.split("HTTP/1.1\" ").nth(1).unwrap_or("");
            bytes += after
                .split(' ')
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (lines.len().saturating_sub(from), bytes)
}

fn requests_so_far(reg: &Registry) -> usize {
    served_since(reg, 0).0
}

/// A SIF artifact needing credentials (`lab/secret:1`), pulled by alice into a shared
/// cache, is in her private cache only. Bob without credentials gets the registry's
/// refusal, and cannot reach it by name, by digest (ours or the registry's), by path or
/// in `list`. Bob with valid credentials pulls it from the registry himself, into his
/// own private cache.
#[test]
fn an_image_that_needed_credentials_stays_with_the_user_who_pulled_it() {
    if skip_unless_root(
        "an_image_that_needed_credentials_stays_with_the_user_who_pulled_it",
        "needs root to create users",
    ) {
        return;
    }
    let (reg, content) = registry_with_secret();
    let (env, bin, cache) = shared_cache_for_the_users();
    let [alice, bob] = USERS;
    let remote = reg.oras("lab/secret:1");
    let name = format!("{}/lab/secret:1", reg.addr);

    // Alice pulls with her credentials: the file is in her private cache, 0700 all the way
    // (--verify: the lookup after the pull finds the private cache the pull made).
    let alice_config = config_dir_of(&env, alice);
    login(alice, &bin, &cache, &alice_config, &reg, "alice");
    let path = ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["get", "--verify", &remote],
    ));
    let own = cache.join("private").join(uid_of(alice).to_string());
    assert!(
        Path::new(&path).starts_with(&own),
        "{path} is not under {}",
        own.display()
    );
    assert_eq!(fs::read(&path).unwrap(), content);
    let m = fs::metadata(&own).unwrap();
    assert_eq!(m.uid(), uid_of(alice));
    assert_eq!(m.mode() & 0o777, 0o700);
    // Her own get by name, and her list, find it.
    assert_eq!(
        ok(as_user(alice, &bin, &cache, &alice_config, &["get", &name])),
        path
    );
    let listed = ok(as_user(alice, &bin, &cache, &alice_config, &["list"]));
    assert!(listed.contains("lab/secret:1 (private)"), "{listed}");
    // Nothing of it in the shared cache: no name, no blob, no tmp file.
    shared_holds_none_of(&cache, &content);
    let entry: serde_json::Value = serde_json::from_str(&ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["inspect", "--json", &name],
    )))
    .unwrap();
    assert_eq!(entry["private"], true);
    let blake3 = entry["digest"].as_str().unwrap().to_string();

    // Bob, without credentials: the registry's refusal, as from any cache.
    let bob_config = config_dir_of(&env, bob);
    let out = as_user(bob, &bin, &cache, &bob_config, &["get", &remote]);
    refused(&out, 1, "credentials are required");
    // He sent none, and is told so (it said "refused the credentials").
    refused(&out, 1, "asks for credentials, and none were sent");
    // The very message a cache of his own (not shared) gives.
    let own_cache = env.path("bob-own");
    fs::create_dir_all(&own_cache).unwrap();
    run(Command::new("chown").arg(bob).arg(&own_cache));
    let alone = as_user(bob, &bin, &own_cache, &bob_config, &["get", &remote]);
    assert_eq!(alone.status.code(), out.status.code());
    assert_eq!(
        String::from_utf8_lossy(&alone.stderr),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_user(bob, &bin, &cache, &bob_config, &["pull", &remote]);
    refused(&out, 1, "credentials are required");
    // ... by the registry's digest of the manifest: refused by the registry too.
    let manifest_digest = Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%header{docker-content-digest}",
        ])
        .args(["-u", &format!("alice:{PASSWORD}")])
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!("http://{}/v2/lab/secret/manifests/1", reg.addr))
        .output()
        .unwrap();
    let manifest_digest = String::from_utf8(manifest_digest.stdout).unwrap();
    assert!(manifest_digest.starts_with("sha256:"), "{manifest_digest}");
    let by_digest = reg.oras(&format!("lab/secret@{manifest_digest}"));
    let out = as_user(bob, &bin, &cache, &bob_config, &["get", &by_digest]);
    refused(&out, 1, "credentials are required");
    // ... by name, and by name with our digest: not in the cache he can see.
    let out = as_user(bob, &bin, &cache, &bob_config, &["get", &name]);
    refused(&out, 3, "no image");
    let out = as_user(
        bob,
        &bin,
        &cache,
        &bob_config,
        &["get", &format!("{name}@{blake3}")],
    );
    refused(&out, 3, "no image");
    let out = as_user(bob, &bin, &cache, &bob_config, &["inspect", &name]);
    refused(&out, 3, "no image");
    // ... by path: neither the file nor the directories that lead to it.
    let out = sh_as(bob, &format!("cat '{path}'"));
    assert!(!out.status.success(), "bob read the file: {out:?}");
    let out = sh_as(bob, &format!("ls '{}'", cache.join("private").display()));
    assert!(!out.status.success(), "bob listed private/: {out:?}");
    // ... in list: not shown.
    let listed = ok(as_user(bob, &bin, &cache, &bob_config, &["list", "--json"]));
    assert!(!listed.contains("secret"), "{listed}");
    // His refused attempts left nothing of it anywhere he can read.
    shared_holds_none_of(&cache, &content);
    assert!(!cache.join("private").join(uid_of(bob).to_string()).exists());

    // Bob with valid credentials (alice's password, given to him): he asks the registry
    // and gets the image, into his own private cache; the figure is reported.
    login(bob, &bin, &cache, &bob_config, &reg, "alice");
    let before = requests_so_far(&reg);
    let t = std::time::Instant::now();
    let bob_path = ok(as_user(bob, &bin, &cache, &bob_config, &["get", &remote]));
    let took = t.elapsed();
    let (requests, bytes) = served_since(&reg, before);
    eprintln!(
        "a third user with valid credentials: {requests} requests, {bytes} blob bytes downloaded ({} bytes image), {took:?}",
        content.len()
    );
    assert!(Path::new(&bob_path).starts_with(cache.join("private").join(uid_of(bob).to_string())));
    assert_eq!(fs::read(&bob_path).unwrap(), content);
    assert_eq!(
        bytes,
        content.len() as u64,
        "bob downloaded it himself, once"
    );
    // Each sees only their own copy.
    let out = sh_as(alice, &format!("cat '{bob_path}'"));
    assert!(!out.status.success(), "alice read bob's file: {out:?}");
    shared_holds_none_of(&cache, &content);
}

/// A registry the site lists in `shared_remotes` keeps today's behaviour: the image that
/// needed credentials goes to the shared cache, and every member gets it by name.
#[test]
fn a_remote_the_site_marks_shared_goes_to_the_shared_cache() {
    if skip_unless_root(
        "a_remote_the_site_marks_shared_goes_to_the_shared_cache",
        "needs root to create users",
    ) {
        return;
    }
    let (reg, _) = registry_with_secret();
    let (env, bin, cache) = shared_cache_for_the_users();
    let [alice, bob] = USERS;
    let alice_config = config_dir_of(&env, alice);
    login(alice, &bin, &cache, &alice_config, &reg, "alice");
    let site = format!("shared_remotes = [\"oras://{}/lab/*\"]\n", reg.addr);
    let site_file = env.file("site.toml", site.as_bytes());
    fs::set_permissions(&site_file, fs::Permissions::from_mode(0o644)).unwrap();
    let remote = reg.oras("lab/secret:1");
    let path = ok(Command::new("setpriv")
        .args(["--reuid", alice, "--regid", "users", "--init-groups", "--"])
        .arg(&bin)
        .args(["get", &remote])
        .env("SREGISTRY_CACHE", &cache)
        .env("SREGISTRY_CONFIG_DIR", &alice_config)
        .env("SREGISTRY_CONFIG", &site_file)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap());
    assert!(Path::new(&path).starts_with(cache.join("v1")), "{path}");
    let bob_config = config_dir_of(&env, bob);
    let name = format!("{}/lab/secret:1", reg.addr);
    assert_eq!(
        ok(as_user(bob, &bin, &cache, &bob_config, &["get", &name])),
        path
    );
}

/// The layers of a `docker://` image alice pulled with her credentials are hers: bob's
/// conversion of a public image made of the same layers downloads every layer itself
/// (the public registry serves each once) instead of reading hers.
#[test]
fn layers_pulled_privately_are_not_reused_for_another_user() {
    if skip_unless_root(
        "layers_pulled_privately_are_not_reused_for_another_user",
        "needs root to create users",
    ) {
        return;
    }
    let private_reg = Registry::htpasswd("alice", PASSWORD);
    let public_reg = Registry::anonymous();
    let (env, bin, cache) = shared_cache_for_the_users();
    let [alice, bob] = USERS;
    let work = env.path("img");
    fs::create_dir_all(&work).unwrap();
    let layout = images::app_image(&work);
    let creds = format!("alice:{PASSWORD}");
    layout.push(
        "app",
        &format!("docker://{}/lab/app:1", private_reg.addr),
        &["--dest-creds", &creds],
    );
    layout.push(
        "app",
        &format!("docker://{}/pub/app:1", public_reg.addr),
        &[],
    );
    let alice_config = config_dir_of(&env, alice);
    login(alice, &bin, &cache, &alice_config, &private_reg, "alice");
    let mine = ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["get", &format!("docker://{}/lab/app:1", private_reg.addr)],
    ));
    assert!(
        Path::new(&mine).starts_with(cache.join("private")),
        "{mine}"
    );
    let layers = layout.layers("app");
    for l in &layers {
        assert_eq!(private_reg.blob_gets(l), 1, "alice fetched {l}");
    }
    // Nothing of hers in the shared cache: no layer under its sha256.
    for f in shared_files(&cache) {
        let digest = sha256_of(&fs::read(&f).unwrap_or_default());
        assert!(
            !layers.contains(&digest),
            "layer {digest} at {}",
            f.display()
        );
    }
    let bob_config = config_dir_of(&env, bob);
    let theirs = ok(as_user(
        bob,
        &bin,
        &cache,
        &bob_config,
        &["get", &format!("docker://{}/pub/app:1", public_reg.addr)],
    ));
    assert!(Path::new(&theirs).starts_with(cache.join("v1")), "{theirs}");
    for l in &layers {
        assert_eq!(
            public_reg.blob_gets(l),
            1,
            "bob's conversion did not download {l}: it read a layer alice pulled privately"
        );
    }
    // The same conversion, the same SIF: his is built from his own download.
    assert_eq!(fs::read(&theirs).unwrap(), fs::read(&mine).unwrap());
}

/// A registry with htpasswd auth holding `lab/secret:1` (pushed by root); the image's
/// bytes.
fn registry_with_secret() -> (Registry, Vec<u8>) {
    let reg = Registry::htpasswd("alice", PASSWORD);
    let pusher = Env::new();
    let sif = pusher.sif("secret.sif", "the lab's secret");
    stdout_of(
        pusher
            .cmd()
            .arg("add")
            .arg(&sif)
            .args(["--name", "lab/secret:1"]),
    );
    let out = pusher
        .cmd()
        .args(["login", &reg.addr, "-u", "alice", "--password-stdin"])
        .write_stdin(PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    stdout_of(
        pusher
            .cmd()
            .args(["push", "lab/secret:1", &reg.oras("lab/secret:1")]),
    );
    (reg, fs::read(&sif).unwrap())
}

/// A directory another member made in advance at alice's `private/<uid>` (open to him)
/// is never used: alice's pull of an image that needs credentials is refused, one line
/// naming it, nothing is downloaded into it, and her `get`s of shared images still work.
#[test]
fn a_private_directory_another_member_planted_is_never_used() {
    if skip_unless_root(
        "a_private_directory_another_member_planted_is_never_used",
        "needs root to create users",
    ) {
        return;
    }
    let (reg, content, env, bin, cache) = bob_shares_a_tool();
    let [alice, bob] = USERS;
    let planted = cache.join("private").join(uid_of(alice).to_string());
    let out = sh_as(
        bob,
        &format!("mkdir '{0}' && chmod 777 '{0}'", planted.display(),),
    );
    assert!(out.status.success(), "{out:?}");
    let alice_config = config_dir_of(&env, alice);
    login(alice, &bin, &cache, &alice_config, &reg, "alice");
    let out = as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["get", &reg.oras("lab/secret:1")],
    );
    refused(&out, 1, "refusing your private cache");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
    assert!(walk(&planted).iter().all(|p| !p.is_file()), "written into");
    shared_holds_none_of(&cache, &content);
    ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["get", "lab/tool:1"],
    ));
}

/// A shared cache for the users, a registry holding alice's secret image, and a shared
/// image `lab/tool:1` bob added: the registry, the secret's content, the test's `Env`, the
/// binary and the cache.
fn bob_shares_a_tool() -> (Registry, Vec<u8>, Env, PathBuf, PathBuf) {
    let (reg, content) = registry_with_secret();
    let (env, bin, cache) = shared_cache_for_the_users();
    let bob = USERS[1];
    let input = env.file("tool.img", b"a shared tool");
    fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).unwrap();
    ok(as_user(
        bob,
        &bin,
        &cache,
        &config_dir_of(&env, bob),
        &["add", input.to_str().unwrap(), "--name", "lab/tool:1"],
    ));
    (reg, content, env, bin, cache)
}

/// In a cache shared before `init --shared` made `private/` (and the root sticky), a
/// member can put a file or a link at `private` itself (the cache root is
/// group-writable): a file made every command of every user fail, shared images
/// included, and a link made a private pull write wherever it pointed (found by a hostile
/// test). Lookups now pass it over; a private pull is refused naming it, and writes
/// nothing where the link points.
#[test]
fn a_file_or_a_link_at_private_stops_no_lookup_and_is_never_followed() {
    if skip_unless_root(
        "a_file_or_a_link_at_private_stops_no_lookup_and_is_never_followed",
        "needs root to create users",
    ) {
        return;
    }
    let (reg, content, env, bin, cache) = bob_shares_a_tool();
    let [alice, bob] = USERS;
    let alice_config = config_dir_of(&env, alice);
    login(alice, &bin, &cache, &alice_config, &reg, "alice");
    let private = cache.join("private");
    as_shared_by_an_earlier_version(&cache);
    let elsewhere = env.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o777)).unwrap();
    let plants = [
        ("a file", format!("touch '{}'", private.display())),
        (
            "a link",
            format!("ln -s '{}' '{}'", elsewhere.display(), private.display()),
        ),
    ];
    for (what, plant) in plants {
        let _ = fs::remove_file(&private);
        let out = sh_as(bob, &plant);
        assert!(out.status.success(), "{what}: {out:?}");
        for user in [alice, bob] {
            ok(as_user(
                user,
                &bin,
                &cache,
                &config_dir_of(&env, user),
                &["get", "lab/tool:1"],
            ));
        }
        let out = as_user(
            alice,
            &bin,
            &cache,
            &alice_config,
            &["get", &reg.oras("lab/secret:1")],
        );
        assert!(!out.status.success(), "{what}: {out:?}");
        assert!(
            walk(&elsewhere).iter().all(|p| p == &elsewhere),
            "{what}: written where the link points: {:?}",
            walk(&elsewhere)
        );
        shared_holds_none_of(&cache, &content);
        // Root's `init --shared` does not take it for `private/`: it says what to remove.
        let out = init_shared_as_root(&env, &cache);
        refused(&out, 1, "is not a directory");
        assert!(walk(&elsewhere).iter().all(|p| p == &elsewhere), "{what}");
    }
}

/// gc and verify: the owner's act on the shared cache and on their own private cache; a
/// cron gc and verify as another member never enter it and do not fail on it.
#[test]
fn gc_and_verify_act_on_the_callers_own_private_cache_only() {
    if skip_unless_root(
        "gc_and_verify_act_on_the_callers_own_private_cache_only",
        "needs root to create users",
    ) {
        return;
    }
    let (reg, _) = registry_with_secret();
    let (env, bin, cache) = shared_cache_for_the_users();
    let [alice, bob] = USERS;
    let alice_config = config_dir_of(&env, alice);
    let bob_config = config_dir_of(&env, bob);
    login(alice, &bin, &cache, &alice_config, &reg, "alice");
    let remote = reg.oras("lab/secret:1");
    let path = ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["get", &remote],
    ));
    let name = format!("{}/lab/secret:1", reg.addr);
    // Bob's cron jobs: clean, and alice's image untouched.
    for args in [
        &["gc", "--min-idle", "0s", "--max-age", "0s"][..],
        &["verify"][..],
    ] {
        let out = as_user(bob, &bin, &cache, &bob_config, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!said.contains("private"), "{args:?}: {said}");
    }
    assert!(Path::new(&path).is_file());
    // Alice's verify checks her private cache too, and finds it clean.
    let out = as_user(alice, &bin, &cache, &alice_config, &["verify", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["private"]["blobs_checked"], 1, "{v}");
    // Her tag and pin act in her private cache: the new name is private too.
    let other = format!("{}/lab/secret:kept", reg.addr);
    ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["tag", &name, &other],
    ));
    ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["pin", &other],
    ));
    let listed = ok(as_user(alice, &bin, &cache, &alice_config, &["list"]));
    assert!(
        listed.contains("lab/secret:kept (pinned) (private)"),
        "{listed}"
    );
    let listed = ok(as_user(bob, &bin, &cache, &bob_config, &["list"]));
    assert!(!listed.contains("secret"), "{listed}");
    ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["unpin", &other],
    ));
    ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["rm", "--keep-blob", &other],
    ));
    // Her rm removes the name from her private cache, and her gc collects it there.
    ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["rm", "--keep-blob", &name],
    ));
    assert!(Path::new(&path).is_file());
    let out = as_user(alice, &bin, &cache, &alice_config, &["gc", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["private"]["blobs"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    assert!(!Path::new(&path).exists());
}

/// `shared_remotes` is read from a file and from its variable, and a pattern that is not
/// one is refused naming the file, line and key (exit 2), as every bad value is.
#[test]
fn shared_remotes_are_read_and_a_bad_pattern_is_refused() {
    let env = Env::new();
    let good = env.file(
        "good.toml",
        b"shared_remotes = [\"docker://reg.example.org:5000/lab/*\", \"oras://reg.example.org/base\"]\n",
    );
    let out = stdout_of(env.cmd().args(["config", "--check"]).arg(&good));
    assert!(out.contains("docker://reg.example.org:5000/lab/*"), "{out}");
    let bad = env.file(
        "bad.toml",
        b"retries = 2\nshared_remotes = [\"ftp://reg.example.org/*\"]\n",
    );
    let err = assert_fails(env.cmd().args(["config", "--check"]).arg(&bad), 2, "line 2");
    assert!(err.contains("shared_remotes"), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["config", "--json"]).env(
            "SREGISTRY_SHARED_REMOTES",
            "oras://a.example.org/x/*, s3://bucket/k",
        )))
        .unwrap();
    assert_eq!(
        v["settings"]["shared_remotes"]["value"],
        serde_json::json!(["oras://a.example.org/x/*", "s3://bucket/k"])
    );
    assert_fails(
        env.cmd()
            .args(["get", "x"])
            .env("SREGISTRY_SHARED_REMOTES", "oras://a.example.org/x*"),
        2,
        "SREGISTRY_SHARED_REMOTES",
    );
}

/// A URL that carries credentials (user and password) and an `s3://` object read with
/// keys go to the puller's private cache; the same URL without them, to the shared cache.
#[test]
fn a_url_or_an_object_read_with_credentials_goes_to_the_private_cache() {
    if skip_unless_root(
        "a_url_or_an_object_read_with_credentials_goes_to_the_private_cache",
        "needs root to create users",
    ) {
        return;
    }
    use crate::support::fault_server::{FaultServer, Handler, Reply};
    use crate::support::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
    let (env, bin, cache) = shared_cache_for_the_users();
    let [alice, bob] = USERS;
    let alice_config = config_dir_of(&env, alice);
    let bob_config = config_dir_of(&env, bob);
    let content = fs::read(env.sif("img.sif", "served over http")).unwrap();
    let body = content.clone();
    let handler: Handler = Box::new(move |_, _| Reply::new(200).body(&body));
    let server = FaultServer::start(vec![("/img.sif".to_string(), handler)]);
    let with_password = format!("http://user:pw@{}/img.sif", server.addr);
    let path = ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["get", &with_password],
    ));
    let own = cache.join("private").join(uid_of(alice).to_string());
    assert!(Path::new(&path).starts_with(&own), "{path}");
    shared_holds_none_of(&cache, &content);
    let listed = ok(as_user(bob, &bin, &cache, &bob_config, &["list"]));
    assert!(!listed.contains("img.sif"), "{listed}");
    let plain = server.url("/img.sif");
    let path = ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["get", &plain],
    ));
    assert!(Path::new(&path).starts_with(cache.join("v1")), "{path}");

    let s3 = S3Server::start();
    let object = s3.object("lab/img.sif");
    fs::create_dir_all(object.parent().unwrap()).unwrap();
    let secret = fs::read(env.sif("s3.sif", "kept in a bucket")).unwrap();
    fs::write(&object, &secret).unwrap();
    let endpoint = s3.endpoint();
    let keys = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
    ];
    let args = ["get", "s3://sifs/lab/img.sif", "--endpoint", &endpoint];
    let path = ok(as_user_with(
        alice,
        &bin,
        &cache,
        &alice_config,
        &args,
        "",
        &keys,
    ));
    assert!(Path::new(&path).starts_with(&own), "{path}");
    assert_eq!(fs::read(&path).unwrap(), secret);
    shared_holds_none_of(&cache, &secret);
}

/// The doctor's line for `check`, run as root on `cache`.
fn doctor_line(env: &Env, cache: &Path, check: &str) -> String {
    let out = env
        .cmd()
        .env("SREGISTRY_CACHE", cache)
        .arg("doctor")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.get(5..).is_some_and(|rest| rest.starts_with(check)))
        .unwrap_or_else(|| panic!("no `{check}` line: {out:?}"))
        .to_string()
}

/// A server of one image at `/img.sif`; a URL with a password to it goes to the private
/// cache.
fn serve_an_image(env: &Env) -> (crate::support::fault_server::FaultServer, Vec<u8>) {
    use crate::support::fault_server::{FaultServer, Handler, Reply};
    let content = fs::read(env.sif("img.sif", "alice's own image")).unwrap();
    let body = content.clone();
    let handler: Handler = Box::new(move |_, _| Reply::new(200).body(&body));
    (
        FaultServer::start(vec![("/img.sif".to_string(), handler)]),
        content,
    )
}

/// `init --shared` makes `private/` (3730, the cache owner's) and the cache's root sticky,
/// so no member can rename, remove or list `private/`, `v1/` or another member's private
/// cache: before, whoever pulled privately first owned `private/` and could move anyone's
/// private cache away, and any member could rename `private/` itself (found by a hostile
/// test), and the victim's names then answered with whatever the shared cache held.
#[test]
fn members_cannot_move_private_or_another_members_private_cache() {
    if skip_unless_root(
        "members_cannot_move_private_or_another_members_private_cache",
        "needs root to create users",
    ) {
        return;
    }
    let (env, bin, cache) = shared_cache_for_the_users();
    let [alice, bob] = USERS;
    let private = cache.join("private");
    let root_meta = fs::metadata(&cache).unwrap();
    let meta = fs::symlink_metadata(&private).unwrap();
    assert_eq!(root_meta.mode() & 0o1000, 0o1000, "the root is not sticky");
    assert_eq!(meta.mode() & 0o7777, 0o3730);
    assert_eq!(meta.uid(), root_meta.uid());
    assert_eq!(meta.gid(), root_meta.gid());
    let (server, content) = serve_an_image(&env);
    let url = format!("http://user:pw@{}/img.sif", server.addr);
    let alice_config = config_dir_of(&env, alice);
    let path = ok(as_user(alice, &bin, &cache, &alice_config, &["get", &url]));
    let own = private.join(uid_of(alice).to_string());
    assert!(Path::new(&path).starts_with(&own), "{path}");
    let c = cache.display();
    for attack in [
        format!("mv '{c}/private' '{c}/p2'"),
        format!("rm -rf '{c}/private'"),
        format!("mv '{c}/private/{}' '{c}/private/gone'", uid_of(alice)),
        format!("ls '{c}/private'"),
        format!("mv '{c}/v1' '{c}/v2'"),
        format!("chmod 777 '{c}/private'"),
    ] {
        let out = sh_as(bob, &attack);
        assert!(!out.status.success(), "bob could: {attack}");
    }
    assert_eq!(
        ok(as_user(alice, &bin, &cache, &alice_config, &["get", &url])),
        path
    );
    assert_eq!(fs::read(&path).unwrap(), content);
    shared_holds_none_of(&cache, &content);
    let line = doctor_line(&env, &cache, "private");
    assert!(line.starts_with("ok"), "{line}");
}

/// A chain a member can change (a cache shared before `init --shared` made `private/`,
/// the root not sticky, `private/` made by a member) is refused, one line naming it, for
/// a private pull (nothing is written under it, nothing goes to the shared cache) and for
/// a lookup of a user who has a private cache there (passed over, her names would answer
/// with the shared cache's images under them, a member's for all she knows); `doctor`
/// names it; root's `init --shared` mends it and both work again.
#[test]
fn a_private_cache_a_member_could_move_is_refused_until_init_mends_the_chain() {
    if skip_unless_root(
        "a_private_cache_a_member_could_move_is_refused_until_init_mends_the_chain",
        "needs root to create users",
    ) {
        return;
    }
    let (env, bin, cache) = shared_cache_for_the_users();
    let [alice, bob] = USERS;
    let private = cache.join("private");
    // What a cache shared by the previous version looks like.
    let root_mode = as_shared_by_an_earlier_version(&cache);
    let bob_config = config_dir_of(&env, bob);
    let tool = env.file("tool.img", b"bob's tool");
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o644)).unwrap();
    ok(as_user(
        bob,
        &bin,
        &cache,
        &bob_config,
        &["add", tool.to_str().unwrap(), "--name", "lab/tool:1"],
    ));
    let out = sh_as(
        bob,
        &format!("mkdir '{0}' && chmod 777 '{0}'", private.display()),
    );
    assert!(out.status.success(), "{out:?}");
    let (server, content) = serve_an_image(&env);
    let url = format!("http://user:pw@{}/img.sif", server.addr);
    let alice_config = config_dir_of(&env, alice);
    let out = as_user(alice, &bin, &cache, &alice_config, &["get", &url]);
    refused(&out, 1, "private images are not safe in this shared cache");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not sticky"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(walk(&private).iter().all(|p| p == &private), "written into");
    shared_holds_none_of(&cache, &content);
    // The root sticky, `private/` still bob's: named for what it is.
    fs::set_permissions(&cache, fs::Permissions::from_mode(root_mode)).unwrap();
    let out = as_user(alice, &bin, &cache, &alice_config, &["get", &url]);
    refused(
        &out,
        1,
        &format!("belongs to uid {}, not to the cache's owner", uid_of(bob)),
    );
    // A private cache of alice's under bob's `private/`: her lookups stop, they do not
    // fall through to the shared cache.
    let own = private.join(uid_of(alice).to_string());
    let out = sh_as(alice, &format!("mkdir -m 700 '{}'", own.display()));
    assert!(out.status.success(), "{out:?}");
    let out = as_user(alice, &bin, &cache, &alice_config, &["get", "lab/tool:1"]);
    refused(&out, 1, "private images are not safe in this shared cache");
    let line = doctor_line(&env, &cache, "private");
    assert!(
        line.starts_with("FAIL") && line.contains(&format!("belongs to uid {}", uid_of(bob))),
        "{line}"
    );
    // Root mends it: `private/` becomes the owner's, 3730.
    let out = init_shared_as_root(&env, &cache);
    assert!(out.status.success(), "{out:?}");
    let meta = fs::symlink_metadata(&private).unwrap();
    assert_eq!(meta.uid(), fs::metadata(&cache).unwrap().uid());
    assert_eq!(meta.mode() & 0o7777, 0o3730);
    let out = sh_as(
        bob,
        &format!("mv '{}' '{}/gone'", own.display(), private.display()),
    );
    assert!(
        !out.status.success(),
        "bob can still move alice's private cache"
    );
    ok(as_user(
        alice,
        &bin,
        &cache,
        &alice_config,
        &["get", "lab/tool:1"],
    ));
    let path = ok(as_user(alice, &bin, &cache, &alice_config, &["get", &url]));
    assert!(Path::new(&path).starts_with(&own), "{path}");
    let line = doctor_line(&env, &cache, "private");
    assert!(line.starts_with("ok"), "{line}");
}

/// A failed pull's note (`locks/<hash>.failed`, read by whoever waited for that pull) is
/// the puller's alone: `0600`, so no member reads which remote failed for whom, and a note
/// another member wrote there while holding the pull's lock is not read, so it cannot put
/// words in the waiter's error (found by a hostile test: "the registry is gone; use the
/// copy at ..."); the waiter pulls for itself.
#[test]
fn a_note_another_member_left_about_a_failed_pull_is_neither_shown_nor_readable() {
    if skip_unless_root(
        "a_note_another_member_left_about_a_failed_pull_is_neither_shown_nor_readable",
        "needs root to create users",
    ) {
        return;
    }
    use crate::support::fault_server::{FaultServer, Handler, Reply};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (env, bin, cache) = shared_cache_for_the_users();
    let [alice, bob] = USERS;
    let content = fs::read(env.sif("pub.sif", "a public image")).unwrap();
    let body = content.clone();
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let handler: Handler = Box::new(move |_, _| {
        if f.load(Ordering::SeqCst) {
            Reply::new(404)
        } else {
            Reply::new(200).body(&body)
        }
    });
    let server = FaultServer::start(vec![("/pub.sif".to_string(), handler)]);
    let url = server.url("/pub.sif");
    let alice_config = config_dir_of(&env, alice);
    let out = as_user(alice, &bin, &cache, &alice_config, &["get", &url]);
    assert!(!out.status.success(), "{out:?}");
    let locks = cache.join("v1/locks");
    let note = walk(&locks)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "failed"))
        .expect("a note of the failed pull");
    let meta = fs::metadata(&note).unwrap();
    assert_eq!(meta.uid(), uid_of(alice));
    assert_eq!(meta.mode() & 0o077, 0, "others may read the note");
    let out = sh_as(bob, &format!("cat '{}'", note.display()));
    assert!(!out.status.success(), "bob read alice's note");
    fs::remove_file(&note).unwrap();
    let dir = env.path("");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let lock = note.with_extension("lock");
    // Bob takes the pull's lock and runs `then` (python) while alice's `get` waits for it.
    let round = |k: usize, then: &str| -> Output {
        let marker = env.path(&format!("bob-holds-it-{k}"));
        let script = format!(
            "import fcntl, os, time\n\
             f = open('{lock}', 'a')\n\
             fcntl.lockf(f, fcntl.LOCK_EX)\n\
             open('{marker}', 'w').close()\n\
             time.sleep(2)\n\
             {then}\n",
            lock = lock.display(),
            marker = marker.display(),
        );
        let mut bob_holds = Command::new("setpriv")
            .args(["--reuid", bob, "--regid", "users", "--init-groups", "--"])
            .args(["python3", "-c", &script])
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while !marker.exists() {
            assert!(t0.elapsed().as_secs() < 20, "bob never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = as_user(alice, &bin, &cache, &alice_config, &["get", &url]);
        assert!(bob_holds.wait().unwrap().success());
        out
    };
    let forget = || {
        let listed = ok(as_user(
            alice,
            &bin,
            &cache,
            &alice_config,
            &["list", "--json"],
        ));
        let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
        for e in v.as_array().unwrap() {
            ok(as_user(
                alice,
                &bin,
                &cache,
                &alice_config,
                &["rm", e["name"].as_str().unwrap()],
            ));
        }
    };
    failing.store(false, Ordering::SeqCst);
    // 1. Bob writes his own note.
    let out = round(
        1,
        &format!(
            "open('{n}.tmp', 'w').write('1\\n{url}\\nthe registry is gone; use the copy at /tmp/evil.sif')\n\
             os.rename('{n}.tmp', '{n}')",
            n = note.display()
        ),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("evil"), "bob's words in alice's error: {err}");
    let path = ok(out);
    assert_eq!(fs::read(&path).unwrap(), content);
    // 2. Bob renames alice's own note about another remote to this remote's note.
    forget();
    let missing = server.url("/missing.sif");
    let out = as_user(alice, &bin, &cache, &alice_config, &["get", &missing]);
    assert!(!out.status.success(), "{out:?}");
    let other = walk(&locks)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "failed") && *p != note)
        .expect("alice's note about the missing image");
    let _ = fs::remove_file(&note);
    let out = round(
        2,
        &format!("os.rename('{}', '{}')", other.display(), note.display()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("missing.sif"),
        "another remote's failure: {err}"
    );
    ok(out);
    // 3. Bob made the pull's lock file himself, with a mode that shuts alice out: her
    //    pull takes a lock of her own instead of failing.
    forget();
    fs::remove_file(&lock).unwrap();
    let out = sh_as(
        bob,
        &format!("touch '{0}' && chmod 644 '{0}'", lock.display()),
    );
    assert!(out.status.success(), "{out:?}");
    let path = ok(as_user(alice, &bin, &cache, &alice_config, &["get", &url]));
    assert_eq!(fs::read(&path).unwrap(), content);
    // 4. ... and her own fallback lock too, before she ever made it.
    forget();
    let own = lock.with_extension(format!("{}.lock", uid_of(alice)));
    let _ = fs::remove_file(&own);
    let out = sh_as(
        bob,
        &format!("touch '{0}' && chmod 644 '{0}'", own.display()),
    );
    assert!(out.status.success(), "{out:?}");
    let path = ok(as_user(alice, &bin, &cache, &alice_config, &["get", &url]));
    assert_eq!(fs::read(&path).unwrap(), content);
}

/// A shared cache for the users in which alice pulled `img.sif` with a password (so into
/// her private cache): the test's `Env`, the binary, the cache, the server (kept alive),
/// the URL, the image's content, alice's config and the path her pull printed.
struct AlicePulledPrivately {
    env: Env,
    bin: PathBuf,
    cache: PathBuf,
    _server: crate::support::fault_server::FaultServer,
    url: String,
    content: Vec<u8>,
    config: PathBuf,
    path: String,
}

fn alice_pulled_privately() -> AlicePulledPrivately {
    let (env, bin, cache) = shared_cache_for_the_users();
    let (server, content) = serve_an_image(&env);
    let url = format!("http://user:pw@{}/img.sif", server.addr);
    let config = config_dir_of(&env, USERS[0]);
    let path = ok(as_user(USERS[0], &bin, &cache, &config, &["get", &url]));
    let own = cache.join("private").join(uid_of(USERS[0]).to_string());
    assert!(Path::new(&path).starts_with(&own), "{path}");
    AlicePulledPrivately {
        env,
        bin,
        cache,
        _server: server,
        url,
        content,
        config,
        path,
    }
}

/// Whether a cache is shared is written in `v1/settings.json`, which any member can
/// replace: a member who rewrote it to say "not shared" hid alice's private cache (her
/// names then answered with his image of the same name in the shared cache), and her next
/// pull that needed credentials went into the shared cache, where he read it (found by a
/// hostile test). Her private cache is looked at and pulled into whatever the settings
/// say.
#[test]
fn settings_a_member_rewrote_neither_hide_a_private_cache_nor_send_a_private_pull_to_the_group() {
    if skip_unless_root("settings_a_member_rewrote", "needs root to create users") {
        return;
    }
    let a = alice_pulled_privately();
    let [alice, bob] = USERS;
    let settings = a.cache.join("v1/settings.json");
    let out = sh_as(
        bob,
        &format!(
            "printf '{{\"shared\":false,\"dir_mode\":1533,\"file_mode\":436}}' > '{0}.x' && mv '{0}.x' '{0}'",
            settings.display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_str(&ok(as_user(
        alice,
        &a.bin,
        &a.cache,
        &a.config,
        &["list", "--json"],
    )))
    .unwrap();
    let name = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["private"] == true)
        .expect("alice's private name")["name"]
        .as_str()
        .unwrap()
        .to_string();
    let trojan = a.env.file("trojan.img", b"bob's trojan");
    fs::set_permissions(&trojan, fs::Permissions::from_mode(0o644)).unwrap();
    let bob_config = config_dir_of(&a.env, bob);
    ok(as_user(
        bob,
        &a.bin,
        &a.cache,
        &bob_config,
        &["add", trojan.to_str().unwrap(), "--name", &name, "--force"],
    ));
    let got = ok(as_user(alice, &a.bin, &a.cache, &a.config, &["get", &name]));
    assert_eq!(got, a.path, "alice's name answered with another image");
    // A new private pull still goes to her private cache.
    let again = format!("{}?v=2", a.url);
    let path = ok(as_user(
        alice,
        &a.bin,
        &a.cache,
        &a.config,
        &["get", &again],
    ));
    let own = a.cache.join("private").join(uid_of(alice).to_string());
    assert!(Path::new(&path).starts_with(&own), "{path}");
    shared_holds_none_of(&a.cache, &a.content);
}

/// `v1/` is group-writable, so a member can put a link where the cache keeps a directory
/// (`tmp/`, `blobs/`) or its settings' temporary file. Root's `init --shared` made and
/// `chmod`ed what such links named (a user's home became 2775, a root file was
/// overwritten), and alice's own pull opened her private cache to the group (found by a
/// hostile test). Nothing is made, written or `chmod`ed through a link: the command
/// refuses naming it, and what it names is unchanged.
#[test]
fn nothing_is_made_written_or_chmoded_through_a_link_a_member_put_in_the_cache() {
    if skip_unless_root(
        "nothing_is_made_written_or_chmoded_through_a_link",
        "needs root to create users",
    ) {
        return;
    }
    let a = alice_pulled_privately();
    let [alice, bob] = USERS;
    let own = a.cache.join("private").join(uid_of(alice).to_string());
    let home = a.env.path("alice-home");
    fs::create_dir(&home).unwrap();
    run(Command::new("chown").arg(alice).arg(&home));
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    let victim = a.env.path("root-file");
    fs::write(&victim, "root's own").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let v1 = a.cache.join("v1");
    let out = sh_as(
        bob,
        &format!(
            "cd '{v1}' && mv tmp tmp.x && ln -s '{home}' tmp && mv blobs blobs.x && ln -s '{own}/v1' blobs && ln -s '{victim}' .settings.json.tmp",
            v1 = v1.display(),
            home = home.display(),
            own = own.display(),
            victim = victim.display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
    let modes = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    let (home_mode, own_mode, own_v1_mode) = (modes(&home), modes(&own), modes(&own.join("v1")));
    // Root's init: refused, naming the link.
    let out = init_shared_as_root(&a.env, &a.cache);
    refused(&out, 1, "is a symbolic link or not a directory");
    // Alice's own pull of a public image: refused, naming the link.
    let public = a.url.replace("user:pw@", "");
    let out = as_user(alice, &a.bin, &a.cache, &a.config, &["get", &public]);
    refused(&out, 1, "is a symbolic link or not a directory");
    assert_eq!(modes(&home), home_mode, "alice's home was chmoded");
    assert_eq!(modes(&own), own_mode, "alice's private cache was chmoded");
    assert_eq!(modes(&own.join("v1")), own_v1_mode);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root's own");
    assert_eq!(modes(&victim), 0o600);
    // Her private image is hers still, and gc as alice removes nothing of it.
    let _ = as_user(alice, &a.bin, &a.cache, &a.config, &["gc"]);
    assert_eq!(fs::read(&a.path).unwrap(), a.content);
    // Once the links are gone, root's init settles the cache again.
    let out = sh_as(
        bob,
        &format!(
            "cd '{}' && rm tmp blobs .settings.json.tmp && mv tmp.x tmp && mv blobs.x blobs",
            v1.display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
    let out = init_shared_as_root(&a.env, &a.cache);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        ok(as_user(
            alice,
            &a.bin,
            &a.cache,
            &a.config,
            &["get", &a.url]
        )),
        a.path
    );
}

/// A FIFO a member put at `v1/settings.json` hung every command of every user, `doctor`
/// and root's `init` too (found by a hostile test). They now fail at once, naming it.
#[test]
fn a_fifo_at_the_settings_hangs_no_command() {
    if skip_unless_root(
        "a_fifo_at_the_settings_hangs_no_command",
        "needs root to create users",
    ) {
        return;
    }
    let (env, bin, cache) = shared_cache_for_the_users();
    let settings = cache.join("v1/settings.json");
    fs::rename(&settings, cache.join("v1/settings.x")).unwrap();
    run(Command::new("mkfifo").arg(&settings));
    let config = config_dir_of(&env, USERS[0]);
    for args in [vec!["get", "lab/tool:1"], vec!["list"], vec!["doctor"]] {
        let t0 = std::time::Instant::now();
        let out = Command::new("timeout")
            .arg("20")
            .arg("setpriv")
            .args([
                "--reuid",
                USERS[0],
                "--regid",
                "users",
                "--init-groups",
                "--",
            ])
            .arg(&bin)
            .args(&args)
            .env("SREGISTRY_CACHE", &cache)
            .env("SREGISTRY_CONFIG_DIR", &config)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(124), "{args:?} hung");
        assert!(t0.elapsed().as_secs() < 15, "{args:?} waited");
        assert!(!out.status.success(), "{args:?}: {out:?}");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("not a regular file"), "{args:?}: {said}");
    }
}

/// A POSIX ACL (`system.posix_acl_*`) that lets `uid` read, write and enter, as the raw
/// extended attribute the kernel takes.
fn acl_letting_in(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    let undefined = u32::MAX;
    // USER_OBJ, USER(uid), GROUP_OBJ, MASK, OTHER
    for (tag, perm, id) in [
        (0x01u16, 7u16, undefined),
        (0x02, 7, uid),
        (0x04, 7, undefined),
        (0x10, 7, undefined),
        (0x20, 0, undefined),
    ] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// Set the extended attribute `name` of `path` to `value` (as root).
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of `value.len()` bytes.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// Whether `path` carries the extended attribute `name`.
fn has_xattr(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid strings; a null buffer of size 0 asks the size.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) > 0 }
}

/// An ACL on `private/` lets a member in whatever its mode says, and a default ACL is
/// inherited by every private cache made in it: a `private/` a member made with one kept
/// it when root's `init --shared` mended it (found by a hostile test). `init --shared`
/// removes it, and a `private/` that carries one is refused.
#[test]
fn an_acl_on_private_is_removed_by_init_and_refused_by_every_use() {
    if skip_unless_root("an_acl_on_private", "needs root to create users") {
        return;
    }
    let a = alice_pulled_privately();
    let [alice, bob] = USERS;
    let private = a.cache.join("private");
    for name in ["system.posix_acl_access", "system.posix_acl_default"] {
        set_xattr(&private, name, &acl_letting_in(uid_of(bob)));
        assert!(has_xattr(&private, name));
    }
    let out = as_user(alice, &a.bin, &a.cache, &a.config, &["get", &a.url]);
    refused(&out, 1, "has an access control list");
    let line = doctor_line(&a.env, &a.cache, "private");
    assert!(
        line.starts_with("FAIL") && line.contains("access control list"),
        "{line}"
    );
    let out = init_shared_as_root(&a.env, &a.cache);
    assert!(out.status.success(), "{out:?}");
    for name in ["system.posix_acl_access", "system.posix_acl_default"] {
        assert!(!has_xattr(&private, name), "{name} kept");
    }
    assert_eq!(
        ok(as_user(
            alice,
            &a.bin,
            &a.cache,
            &a.config,
            &["get", &a.url]
        )),
        a.path
    );
}

/// Root's `init --shared` of `cache` for the test's group.
fn init_shared_as_root(env: &Env, cache: &Path) -> Output {
    env.cmd()
        .args(["init", "--shared", "--group", crate::shared::GROUP])
        .arg(cache)
        .output()
        .unwrap()
}

/// Make the shared cache at `cache` look as one shared by the version before `init
/// --shared` made `private/`: no `private/`, the root not sticky. Returns the root's mode
/// as `init` left it.
fn as_shared_by_an_earlier_version(cache: &Path) -> u32 {
    fs::remove_dir(cache.join("private")).unwrap();
    let root_mode = fs::metadata(cache).unwrap().mode() & 0o7777;
    fs::set_permissions(cache, fs::Permissions::from_mode(root_mode & !0o1000)).unwrap();
    root_mode
}
