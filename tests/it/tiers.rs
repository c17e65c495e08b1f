//! Tiers: read-only caches looked in after the writable one (`tiers`, `$SREGISTRY_TIERS`,
//! `--tier`). The writable cache answers first, then each tier in order; a tier is never
//! written (tested on a real read-only bind mount, under strace); changes to a name only a
//! tier holds are refused; a remote a tier holds is answered without a download; a
//! publication is seen whole or not at all.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use crate::common::*;
use crate::registry::Registry;

/// A tier filled as a cache is (`add` into its own directory), and an `Env` whose writable
/// cache is separate.
fn with_tier(env: &Env, images: &[(&str, &str)]) -> PathBuf {
    let tier = env.path("tier");
    for (name, payload) in images {
        let f = env.file(&format!("{}.img", payload), payload.as_bytes());
        add_to(env, &tier, &f, name);
    }
    tier
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Danger: a tier's image handed out in place of the user's own, or a tier's name not
/// found at all. The writable cache answers first, a tier only what it lacks; `list` says
/// where each name is (a column; `tier` in --json, null for the writable cache) and shows
/// a shadowed name only with --all; `inspect` names the tier. The tiers come from the
/// flag, the variable or a configuration file alike.
#[test]
fn the_writable_cache_answers_first_and_a_tier_only_what_it_lacks() {
    let env = Env::new();
    let tier = with_tier(
        &env,
        &[
            ("lab/shared", "in the tier"),
            ("lab/only-tier", "tier only"),
        ],
    );
    let mine = env.file("mine.img", b"in the writable cache");
    let own = stdout_of(
        env.cmd()
            .arg("add")
            .arg(&mine)
            .args(["--name", "lab/shared"]),
    );
    let t = tier.to_str().unwrap();
    let config = env.path("xdg/sregistry/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    for how in ["flag", "variable", "file"] {
        let cmd = || {
            let mut c = env.cmd();
            match how {
                "flag" => {
                    c.args(["--tier", t]);
                }
                "variable" => {
                    c.env("SREGISTRY_TIERS", format!("/nonexistent/tier:{t}"));
                }
                _ => {
                    fs::write(&config, format!("tiers = [\"{t}\"]\n")).unwrap();
                }
            }
            c
        };
        assert_eq!(stdout_of(cmd().args(["get", "lab/shared"])), own, "{how}");
        let from_tier = stdout_of(cmd().args(["get", "lab/only-tier"]));
        assert!(from_tier.starts_with(t), "{how}: {from_tier}");
        assert_eq!(fs::read(&from_tier).unwrap(), b"tier only");
        let listed = json(&stdout_of(cmd().args(["--json", "list"])));
        let rows: Vec<(String, serde_json::Value)> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap().to_string(), r["tier"].clone()))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("lab/only-tier:latest".into(), serde_json::json!(t)),
                ("lab/shared:latest".into(), serde_json::Value::Null),
            ],
            "{how}"
        );
        let all = json(&stdout_of(cmd().args(["--json", "list", "--all"])));
        let shadowed: Vec<(&str, bool)> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["path"].as_str().unwrap(),
                    r["shadowed"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(shadowed.len(), 3, "{how}: {all}");
        assert_eq!(shadowed[1], (own.as_str(), false));
        assert!(shadowed[2].0.starts_with(t) && shadowed[2].1, "{all}");
        let table = stdout_of(cmd().args(["list", "--all"]));
        assert!(table.lines().next().unwrap().contains("TIER"), "{table}");
        assert!(table.contains("(shadowed)") && table.contains(t), "{table}");
        let inspected = stdout_of(cmd().args(["inspect", "lab/only-tier"]));
        assert!(
            inspected
                .lines()
                .any(|l| l.starts_with("tier:") && l.ends_with(&format!("{t} (read-only)"))),
            "{inspected}"
        );
        fs::remove_file(&config).ok();
    }
    // Without tiers, the tier's name is not found (exit 3), as before.
    assert_fails(env.cmd().args(["get", "lab/only-tier"]), 3, "no image");
}

/// Trace `sregistry` with `args` inside a mount namespace of its own, where `tier` is
/// bind-mounted read-only at `at`; the output and every call of the trace that could write.
fn on_read_only_mount(
    env: &Env,
    tier: &Path,
    at: &Path,
    args: &[&str],
) -> (std::process::Output, Vec<String>) {
    fs::create_dir_all(at).unwrap();
    let log = env.path(&format!("trace-{}.log", args.join("_").replace('/', "_")));
    let bin = env.std_cmd();
    let mut script = format!(
        "set -e; mount --bind '{}' '{}'; mount -o remount,bind,ro '{}'; exec strace -f -qq -o '{}' -e trace=open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,link,linkat,symlink,symlinkat,truncate,ftruncate,fcntl,flock,chmod,fchmod,fchmodat '{}'",
        tier.display(),
        at.display(),
        at.display(),
        log.display(),
        bin.get_program().to_string_lossy()
    );
    for a in args {
        script.push_str(&format!(" '{a}'"));
    }
    let mut c = StdCommand::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    for (k, v) in bin.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = c.output().expect("unshare");
    let trace = fs::read_to_string(&log).unwrap_or_default();
    let at_s = at.to_str().unwrap();
    let writes = trace
        .lines()
        .filter(|l| l.contains(at_s))
        .filter(|l| {
            l.contains("O_WRONLY")
                || l.contains("O_RDWR")
                || l.contains("O_CREAT")
                || l.contains("O_TRUNC")
                || [
                    "mkdir", "rename", "unlink", "rmdir", "link(", "linkat", "symlink", "truncate",
                    "chmod", "creat(",
                ]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(str::to_string)
        .collect::<Vec<_>>();
    // Locks: any F_SETLK/F_OFD_SETLK or flock in the trace (our locks are on files we
    // open read-write, which the filter above already catches; this catches a lock on a
    // read-only descriptor too).
    let locks = trace
        .lines()
        .filter(|l| l.contains("SETLK") || l.starts_with("flock") || l.contains(" flock("))
        .map(str::to_string);
    (out, writes.into_iter().chain(locks).collect())
}

/// Danger: a tier on CVMFS or a read-only export that fails because sregistry tries to
/// take a lock, record a use or make a directory there. On a real read-only bind mount,
/// `get`, `list`, `inspect` and `verify --tiers` of a tier's names succeed, and strace
/// shows no open for writing, no create, mkdir, rename, unlink, chmod and no lock under
/// the tier, and no lock at all (the writable cache is empty, so nothing else is locked).
/// The tier's files are byte for byte as before.
#[test]
fn a_tier_on_a_read_only_mount_is_read_without_any_write_or_lock() {
    if skip_unless_root("a_tier_on_a_read_only_mount", "bind mounts need root") {
        return;
    }
    let env = Env::new();
    let tier = with_tier(
        &env,
        &[("lab/tool:1", "tool one"), ("lab/tool:2", "tool two")],
    );
    let before = env.snapshot_of(&tier);
    let at = env.path("ro-tier");
    let t = at.to_str().unwrap();
    for args in [
        &["--tier", t, "get", "lab/tool:1"][..],
        &["--tier", t, "--json", "list"],
        &["--tier", t, "inspect", "lab/tool:2"],
        &["--tier", t, "get", "--verify", "lab/tool:2"],
        &["--tier", t, "verify", "--tiers"],
    ] {
        let (out, writes) = on_read_only_mount(&env, &tier, &at, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(writes.is_empty(), "{args:?} wrote or locked: {writes:#?}");
        if args[2] == "get" {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(path.starts_with(t), "{path}");
        }
    }
    assert_eq!(env.snapshot_of(&tier), before);
    assert!(!env.cache.exists(), "the writable cache was made by a read");
}

/// Danger: `rm`, `tag`, `pin` of a name only a tier holds reported as "no such image" (the
/// user sees it in `list`), or worse, changing the tier. Each is refused with one line
/// naming the name and the tier (exit 1), and the tier is unchanged; a name the writable
/// cache has too is changed there only, and the tier's then shows through.
#[test]
fn a_change_to_a_name_only_a_tier_holds_is_refused_naming_the_tier() {
    let env = Env::new();
    let tier = with_tier(
        &env,
        &[("lab/t", "tier content"), ("lab/both", "tier both")],
    );
    let both = env.file("both.img", b"writable both");
    stdout_of(env.cmd().arg("add").arg(&both).args(["--name", "lab/both"]));
    let before = env.snapshot_of(&tier);
    let t = tier.to_str().unwrap();
    for args in [
        &["rm", "lab/t"][..],
        &["tag", "lab/t", "lab/copy"],
        &["pin", "lab/t"],
        &["unpin", "lab/t"],
        &["rm", "lab/both", "lab/t"],
    ] {
        let mut c = env.cmd();
        c.args(["--tier", t]).args(args);
        let err = assert_fails(&mut c, 1, "`lab/t:latest`");
        assert!(
            err.contains(&format!("read-only tier `{t}`")),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // Unknown everywhere: still "not found", exit 3.
    assert_fails(
        env.cmd().args(["--tier", t, "rm", "lab/none"]),
        3,
        "no image",
    );
    // A name in both: removed from the writable cache; the tier's answers next.
    stdout_of(env.cmd().args(["--tier", t, "rm", "lab/both"]));
    let now = stdout_of(env.cmd().args(["--tier", t, "get", "lab/both"]));
    assert_eq!(fs::read(now).unwrap(), b"tier both");
    // gc acts on the writable cache only.
    stdout_of(
        env.cmd()
            .args(["--tier", t, "gc", "--max-age", "0s", "--min-idle", "0s"]),
    );
    assert_eq!(env.snapshot_of(&tier), before);
}

/// Danger: a node that downloads (or, offline, fails on) an image the site's tier
/// already holds. `get REMOTE` with the remote's image in a tier (pulled there by the
/// admin) answers the tier's file, with the registry gone and with --offline, and puts
/// nothing in the writable cache.
#[test]
fn get_of_a_remote_a_tier_holds_downloads_nothing() {
    let env = Env::new();
    let tier = env.path("tier");
    let remote = {
        let reg = Registry::anonymous();
        let sif = env.sif("tool.sif", "pulled into the tier");
        stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/seed"]));
        let remote = reg.oras("lab/tool:1");
        stdout_of(env.cmd().args(["push", "lab/seed", &remote]));
        stdout_of(env.cmd().arg("--cache").arg(&tier).args(["pull", &remote]));
        remote
    };
    stdout_of(env.cmd().args(["rm", "lab/seed"]));
    let t = tier.to_str().unwrap();
    let before = env.snapshot();
    for offline in [false, true] {
        let mut c = env.cmd();
        c.args(["--tier", t]);
        if offline {
            c.arg("--offline");
        }
        let path = stdout_of(c.args(["get", &remote]));
        assert!(path.starts_with(t), "{path}");
    }
    assert_eq!(env.snapshot(), before, "the writable cache changed");
    // Without the tier, offline: not cached.
    assert_fails(env.cmd().args(["--offline", "get", &remote]), 3, "offline");
}

/// Danger: a node that downloads and converts again an image the site's tier holds under
/// a name of the admin's choosing (`pull --name`), or answers a tier's image the remote no
/// longer names. `get REMOTE` answers the tier's file when the tier holds the very content
/// the remote names now (the same `docker://` manifest for this platform, the same
/// `oras://` layer digest), under any name: the registry serves the manifests and no blob,
/// and the writable cache is not written. Once the tag moves, the tier's old image does
/// not answer: the new one is pulled into the writable cache.
#[test]
fn get_of_a_remote_a_tier_holds_under_another_name_downloads_and_converts_nothing() {
    let env = Env::new();
    let (reg, mut l) = crate::docker::registry_with_busybox_base(&env);
    l.layer("bb", "one", |root| {
        fs::write(root.join("one"), "1").unwrap()
    });
    let docker = format!("docker://{}/lab/one:1", reg.addr);
    l.push("one", &docker, &[]);
    let sif = env.sif("tool.sif", "an oras artifact");
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/seed"]));
    let oras = reg.oras("lab/tool:1");
    stdout_of(env.cmd().args(["push", "lab/seed", &oras]));
    stdout_of(env.cmd().args(["rm", "lab/seed"]));
    let tier = env.path("tier");
    for (remote, name) in [(&docker, "site/one:1"), (&oras, "site/tool:1")] {
        stdout_of(
            env.cmd()
                .arg("--cache")
                .arg(&tier)
                .args(["pull", remote, "--name", name]),
        );
    }
    let t = tier.to_str().unwrap();
    let tier_path = |name: &str| stdout_of(env.cmd().arg("--cache").arg(&tier).args(["get", name]));
    let blobs_before: usize = l.layers("one").iter().map(|d| reg.blob_gets(d)).sum();
    let before = env.snapshot();
    for (remote, name) in [(&docker, "site/one:1"), (&oras, "site/tool:1")] {
        let path = stdout_of(env.cmd().args(["--tier", t, "get", remote]));
        assert_eq!(path, tier_path(name), "{remote}");
    }
    let blobs_after: usize = l.layers("one").iter().map(|d| reg.blob_gets(d)).sum();
    assert_eq!(blobs_after, blobs_before, "a layer was downloaded again");
    // Nothing but the per-pull lock files the questions to the registry were asked under.
    let locks = env.cache.join("v1/locks");
    let mut now = env.snapshot();
    now.retain(|p, _| {
        !(p.parent() == Some(locks.as_path())
            && p.file_name()
                .is_some_and(|n| n.len() == 37 && n.to_string_lossy().ends_with(".lock")))
    });
    assert_eq!(now, before, "the writable cache changed");
    // `pull` names what it pulls in the writable cache: not answered by the tier.
    stdout_of(env.cmd().args(["--tier", t, "pull", &oras]));
    assert_ne!(env.snapshot(), before);
    // The tag moves: the tier's image is no longer what the remote names.
    l.layer("one", "one-b", |root| {
        fs::write(root.join("b"), "b").unwrap()
    });
    l.push("one-b", &docker, &[]);
    let path = stdout_of(env.cmd().args(["--tier", t, "get", &docker]));
    assert!(path.starts_with(env.cache.to_str().unwrap()), "{path}");
    assert_ne!(path, tier_path("site/one:1"));
}

/// `add --force` of `file` as `name` into the cache at `cache`; the path it printed.
fn add_to(env: &Env, cache: &Path, file: &Path, name: &str) -> String {
    stdout_of(
        env.cmd()
            .arg("--cache")
            .arg(cache)
            .arg("add")
            .arg(file)
            .args(["--name", name, "--force"]),
    )
}

/// Publish `src` to `dest` after naming `payload` `lab/x` and `lab/y` in it: the new
/// version's directory, and the content both names hold there.
fn published(env: &Env, src: &Path, dest: &Path, payload: &str) -> (PathBuf, String) {
    let f = env.file(&format!("{payload}.img"), payload.as_bytes());
    add_to(env, src, &f, "lab/x");
    add_to(env, src, &f, "lab/y");
    let out = json(&stdout_of(
        env.cmd()
            .arg("--json")
            .args(["tier", "publish"])
            .arg(src)
            .arg(dest),
    ));
    let version = PathBuf::from(out["version"].as_str().unwrap());
    (version, payload.to_string())
}

/// Danger: a job that asks while the admin publishes gets an error, or an index of one
/// version with a blob of another (or a half-copied index). `get`s run in a loop while ten
/// versions are published one after the other; every one succeeds, and the file it names
/// is in one version's directory and holds that version's content for both names asked in
/// one `list`. Old versions stay (their paths may be in use) until --keep has passed since
/// their successor was published.
#[test]
fn gets_during_publishes_never_fail_and_never_see_a_mix_of_versions() {
    let env = Env::new();
    let src = env.path("staging");
    let dest = env.path("site/sregistry");
    let mut versions: BTreeMap<PathBuf, String> = BTreeMap::new();
    let (v, p) = published(&env, &src, &dest, "version-0");
    versions.insert(v, p);
    let stop = env.path("stop");
    let t = dest.to_str().unwrap().to_string();
    // One reader runs `get lab/x`, the other `list --all` (both names at once).
    let readers: Vec<_> = [&["get", "lab/x"][..], &["--json", "list", "--all"]]
        .into_iter()
        .map(|asked| {
            let mut get = env.std_cmd();
            get.args(["--tier", &t]).args(asked);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.exists() {
                    let out = get.output().unwrap();
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let paths: Vec<PathBuf> = match serde_json::from_slice(&out.stdout) {
                        Ok(serde_json::Value::Array(rows)) => rows
                            .iter()
                            .map(|r| PathBuf::from(r["path"].as_str().unwrap()))
                            .collect(),
                        _ => vec![PathBuf::from(
                            String::from_utf8_lossy(&out.stdout).trim().to_string(),
                        )],
                    };
                    // Read at once, as a job would: the content of every name.
                    let contents: Vec<Vec<u8>> =
                        paths.iter().map(|p| fs::read(p).unwrap()).collect();
                    seen.push((paths, contents));
                }
                seen
            })
        })
        .collect();
    let mut gets = env.std_cmd();
    gets.args(["--tier", &t, "get", "lab/x"]);
    for i in 1..=10 {
        let (v, p) = published(&env, &src, &dest, &format!("version-{i}"));
        versions.insert(v, p);
        let out = gets.output().unwrap();
        assert!(out.status.success());
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(fs::read(&path).unwrap(), format!("version-{i}").as_bytes());
    }
    fs::write(&stop, b"").unwrap();
    let mut looked = 0;
    for (r, names) in readers.into_iter().zip([1, 2]) {
        for (paths, contents) in r.join().unwrap() {
            looked += 1;
            assert_eq!(paths.len(), names, "{paths:?}");
            let version = paths[0].ancestors().nth(5).unwrap().to_path_buf();
            let want = &versions[&version];
            for (p, c) in paths.iter().zip(&contents) {
                assert!(p.starts_with(&version), "a mix: {paths:?}");
                assert_eq!(c, want.as_bytes(), "{p:?}");
            }
        }
    }
    assert!(looked > 5, "the readers ran {looked} times only");
    // Every version is still there (default --keep: 7 days) ...
    for v in versions.keys() {
        assert!(v.join("v1/index.redb").exists(), "{v:?}");
    }
    // ... until a publish more than a week later removes those replaced a week before.
    let later = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 8 * 24 * 3600)
        .to_string();
    let f = env.file("late.img", b"late");
    add_to(&env, &src, &f, "lab/x");
    stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", &later)
            .args(["tier", "publish"])
            .arg(&src)
            .arg(&dest),
    );
    // The version current until then stays (its paths were handed out a moment ago).
    let left: Vec<_> = fs::read_dir(dest.join("versions"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

/// Danger: a tier whose index was copied while a writer had it open (its header says
/// "recovery required") repaired in place by every reader, which on a read-only
/// filesystem fails in obscure ways and elsewhere changes the site's copy, or read as if
/// it were whole. Each reader refuses it with one line that says to publish it again, and
/// the file stays byte for byte as it was.
#[test]
fn a_tier_index_that_needs_repair_is_refused_never_repaired() {
    let env = Env::new();
    let tier = with_tier(&env, &[("lab/t", "tier content")]);
    let index = tier.join("v1/index.redb");
    let mut bytes = fs::read(&index).unwrap();
    assert_eq!(&bytes[..4], b"redb");
    bytes[9] |= 2; // redb's god byte: "recovery required"
    fs::write(&index, &bytes).unwrap();
    let t = tier.to_str().unwrap();
    for args in [&["get", "lab/t"][..], &["list"], &["inspect", "lab/t"]] {
        let mut c = env.cmd();
        c.args(["--tier", t]).args(args);
        let err = assert_fails(&mut c, 1, "was not closed cleanly");
        assert!(err.contains("publish it again"), "{err}");
    }
    assert_eq!(fs::read(&index).unwrap(), bytes);
}

/// Danger: a node downloading a base layer again that the site's tier already holds. A
/// `docker://` image pulled into the tier, then another image on the same base pulled into
/// the writable cache with the tier listed: the base layer is read from the tier (the
/// registry serves it once, to the tier's pull), only the new layer is downloaded, and the
/// writable cache's blobs verify.
#[test]
fn a_docker_conversion_reads_the_layers_a_tier_holds() {
    let env = Env::new();
    let (reg, mut l) = crate::docker::registry_with_busybox_base(&env);
    l.layer("bb", "one", |root| {
        fs::write(root.join("one"), "1").unwrap()
    });
    l.layer("bb", "two", |root| {
        fs::write(root.join("two"), "2").unwrap()
    });
    let image = |tag: &str| format!("docker://{}/{tag}", reg.addr);
    l.push("one", &image("lab/one:1"), &[]);
    l.push("two", &image("lab/two:1"), &[]);
    let (one, two) = (l.layers("one"), l.layers("two"));
    assert_eq!(one[0], two[0], "the images must share their base layer");
    let tier = env.path("tier");
    stdout_of(
        env.cmd()
            .arg("--cache")
            .arg(&tier)
            .args(["get", &image("lab/one:1")]),
    );
    let before = env.snapshot_of(&tier);
    let t = tier.to_str().unwrap();
    let path = stdout_of(env.cmd().args(["--tier", t, "get", &image("lab/two:1")]));
    assert!(path.starts_with(env.cache.to_str().unwrap()), "{path}");
    assert_eq!(
        reg.blob_gets(&one[0]),
        1,
        "the tier's base layer was downloaded again"
    );
    assert_eq!(reg.blob_gets(&two[1]), 1);
    assert_eq!(env.snapshot_of(&tier), before);
    env.assert_blobs_verify();
}

/// `env.cache` made a shared cache holding `shared` (name, payload), and the caller's
/// (root's) private cache in it, as a private pull makes it, holding `private`; returns
/// the private cache's directory.
fn shared_with_private(env: &Env, shared: &[(&str, &str)], private: (&str, &str)) -> PathBuf {
    stdout_of(
        env.cmd()
            .args(["init", "--shared", "--group", "0"])
            .arg(&env.cache),
    );
    for (name, payload) in shared {
        let f = env.file(&format!("{payload}.img"), payload.as_bytes());
        add_to(env, &env.cache, &f, name);
    }
    let own = env.cache.join("private").join("0");
    let (name, payload) = private;
    let f = env.file(&format!("{payload}.img"), payload.as_bytes());
    add_to(env, &own, &f, name);
    fs::set_permissions(&own, fs::Permissions::from_mode(0o700)).unwrap();
    own
}

/// Danger: the private cache, the shared cache and the tiers answering in different
/// orders for different commands, or a write landing in the wrong one. One order for
/// every reader: the caller's private cache, the shared (writable) cache, then each tier.
/// `list` shows each name once, from the first that has it, `(private)` and the TIER
/// column saying where; `--all` shows the shadowed copies of all three, and `--json`
/// carries `private` and `tier` on each row. `pin` of a name the private cache holds acts
/// there; `rm` of a name only a tier holds is refused naming the tier. `tier publish` of a
/// shared cache never publishes its `private/`.
#[test]
fn one_order_private_then_shared_then_each_tier() {
    let env = Env::new();
    let tier = with_tier(
        &env,
        &[
            ("lab/all", "tier all"),
            ("lab/two", "tier two"),
            ("lab/t", "tier only"),
        ],
    );
    let own = shared_with_private(
        &env,
        &[("lab/all", "shared all"), ("lab/two", "shared two")],
        ("lab/all", "private all"),
    );
    let t = tier.to_str().unwrap();
    let cmd = || {
        let mut c = env.cmd();
        c.args(["--tier", t]);
        c
    };
    for (name, want) in [
        ("lab/all", "private all"),
        ("lab/two", "shared two"),
        ("lab/t", "tier only"),
    ] {
        let path = stdout_of(cmd().args(["get", name]));
        assert_eq!(fs::read(&path).unwrap(), want.as_bytes(), "{name}");
        let v = json(&stdout_of(cmd().args(["--json", "inspect", name])));
        assert_eq!(v["private"], name == "lab/all", "{v}");
        assert_eq!(v["tier"].is_string(), name == "lab/t", "{v}");
    }
    let listed = stdout_of(cmd().arg("list"));
    assert!(listed.contains("lab/all:latest (private)"), "{listed}");
    assert_eq!(listed.matches("lab/all:latest").count(), 1, "{listed}");
    assert!(listed.contains("TIER"), "{listed}");
    let rows = json(&stdout_of(cmd().args(["--json", "list", "--all"])));
    let rows: Vec<(String, bool, bool, bool)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["private"].as_bool().unwrap(),
                r["tier"].is_string(),
                r["shadowed"].as_bool().unwrap(),
            )
        })
        .collect();
    let all = |n: &str| format!("lab/{n}:latest");
    assert_eq!(
        rows,
        vec![
            (all("all"), true, false, false),
            (all("all"), false, false, true),
            (all("all"), false, true, true),
            (all("t"), false, true, false),
            (all("two"), false, false, false),
            (all("two"), false, true, true),
        ]
    );
    let text = stdout_of(cmd().args(["list", "--all", "lab/all"]));
    assert_eq!(text.matches("(shadowed)").count(), 2, "{text}");
    // pin acts in the private cache, which holds the name; the shared copy stays unpinned.
    stdout_of(cmd().args(["pin", "lab/all"]));
    let v = json(&stdout_of(
        env.cmd()
            .arg("--cache")
            .arg(&own)
            .args(["--json", "inspect", "lab/all"]),
    ));
    assert_eq!(v["pinned"], true, "{v}");
    let shared = json(&stdout_of(
        env.cmd()
            .args(["--json", "--tier", "/nonexistent"])
            .args(["list", "--all", "lab/all"]),
    ));
    assert_eq!(shared[1]["pinned"], false, "{shared}");
    // A name only the tier holds: refused naming the tier.
    let err = assert_fails(cmd().args(["rm", "lab/t"]), 1, "`lab/t:latest`");
    assert!(err.contains(&format!("read-only tier `{t}`")), "{err}");
    // Published from the shared cache: its names, never the private cache's.
    let dest = env.path("published");
    let out = json(&stdout_of(
        env.cmd()
            .arg("--json")
            .args(["tier", "publish"])
            .arg(&env.cache)
            .arg(&dest),
    ));
    let version = PathBuf::from(out["version"].as_str().unwrap());
    assert!(!version.join("private").exists());
    for file in walk(&version) {
        if file.is_file() {
            assert_ne!(fs::read(&file).unwrap(), b"private all", "{file:?}");
        }
    }
    let d = dest.to_str().unwrap();
    let got = stdout_of(
        env.cmd()
            .args(["--cache"])
            .arg(env.path("empty"))
            .args(["--tier", d, "get", "lab/all"]),
    );
    assert_eq!(fs::read(got).unwrap(), b"shared all");
    // rm acts where the name is: the private copy, then the shared one; the tier's stays.
    stdout_of(cmd().args(["unpin", "lab/all"]));
    for next in ["shared all", "tier all"] {
        stdout_of(cmd().args(["rm", "lab/all"]));
        let path = stdout_of(cmd().args(["get", "lab/all"]));
        assert_eq!(fs::read(&path).unwrap(), next.as_bytes());
    }
}

/// A cache to publish (`staging`) holding `lab/a`.
fn staging_with_one_image(env: &Env) -> PathBuf {
    let src = env.path("staging");
    let f = env.file("a.img", b"a");
    add_to(env, &src, &f, "lab/a");
    src
}

/// The id a publish at `t` would give its version, as a killed publish leaves it.
fn version_dir_at(dest: &Path, t: u64) -> PathBuf {
    dest.join("versions").join(format!("{t:010}-4242"))
}

/// Danger: a publish that died after its version appeared but before `current` named it
/// (killed, or the link's write failed) made the next publish remove the version that was
/// current until that moment, under the jobs using its paths. A version's retirement is
/// when `current` stopped naming it; a version never current is a leftover.
#[test]
fn a_killed_publish_never_makes_the_next_remove_the_version_current_until_then() {
    let env = Env::new();
    let src = env.path("staging");
    let dest = env.path("site/tier");
    let t0: u64 = 1_796_000_000;
    let f = env.file("a.img", b"version zero");
    add_to(&env, &src, &f, "lab/a");
    let publish = |t: u64| {
        stdout_of(
            env.cmd()
                .env("SREGISTRY_NOW", t.to_string())
                .args(["tier", "publish"])
                .arg(&src)
                .arg(&dest),
        )
    };
    publish(t0);
    let held = stdout_of(env.cmd().env("SREGISTRY_NOW", t0.to_string()).args([
        "--tier",
        dest.to_str().unwrap(),
        "get",
        "lab/a",
    ]));
    let held = PathBuf::from(held.trim());
    // What a publish killed a day later leaves: a whole version `current` never named.
    let current = fs::canonicalize(dest.join("current")).unwrap();
    let leftover = version_dir_at(&dest, t0 + 86400);
    run(StdCommand::new("cp").arg("-a").arg(&current).arg(&leftover));
    publish(t0 + 9 * 86400);
    assert!(held.exists(), "the version current until now was removed");
    assert!(!leftover.exists(), "a never-current version is a leftover");
    // A week after it stopped being current, it goes.
    publish(t0 + 16 * 86400 + 1);
    assert!(!held.exists());
}

/// Danger: `tier publish` into a directory that is not a tier deleted the user's
/// `versions/2023-release` and `.partial/2022-draft` as old versions and opened a 0700 or
/// sticky directory to 0755; into a directory inside SRC (whose gc then removes the whole
/// tier as tmp files), or from a published version into its own tier. Each is refused
/// before anything is written, and an existing empty directory keeps its mode.
#[test]
fn publish_refuses_a_foreign_dest_and_one_inside_src_and_never_chmods_a_directory() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = staging_with_one_image(&env);
    let publish = |from: &Path, to: &Path| {
        let mut c = env.cmd();
        c.args(["tier", "publish"]).arg(from).arg(to);
        c
    };
    // A user's project directory.
    let proj = env.path("proj");
    fs::create_dir_all(proj.join("versions/2023-release")).unwrap();
    fs::create_dir_all(proj.join(".partial/2022-draft")).unwrap();
    fs::write(proj.join("versions/2023-release/data"), b"x").unwrap();
    let before = env.snapshot_of(&proj);
    assert_fails(&mut publish(&src, &proj), 2, "not a tier");
    assert_eq!(env.snapshot_of(&proj), before);
    assert!(proj.join("versions/2023-release/data").exists());
    // Existing empty directories keep their modes.
    for mode in [0o1777, 0o700] {
        let d = env.path(&format!("d{mode:o}"));
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        stdout_of(&mut publish(&src, &d));
        let got = fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(got, mode, "{d:?}");
    }
    // DEST inside SRC, and SRC inside DEST (through a link, too).
    for inside in ["v1/tmp/tierx", "v1/blobs/blake3", "."] {
        let dest = src.join(inside);
        assert_fails(&mut publish(&src, &dest), 2, "inside");
        assert!(!src.join("v1/tmp/tierx").exists());
    }
    let tier = env.path("tier");
    stdout_of(&mut publish(&src, &tier));
    let version = fs::canonicalize(tier.join("current")).unwrap();
    let snap = env.snapshot_of(&tier);
    for from in [tier.join("current"), version] {
        let err = assert_fails(&mut publish(&from, &tier), 2, "");
        assert!(
            err.contains("inside") || err.contains("published version"),
            "{err}"
        );
    }
    assert_eq!(env.snapshot_of(&tier), snap);
}

/// Danger: a FIFO at a blob's path in SRC made `tier publish` wait forever while holding
/// SRC's index lock (every add to SRC timed out) and `DEST/.publish.lock`; one in a tier
/// made `verify --tiers` wait forever. Publish refuses it at once, naming the image and
/// saying to verify SRC; `verify --tiers` reports it; SRC's writers were never held up.
#[test]
fn publish_and_verify_tiers_never_wait_on_a_fifo_at_a_blob_path() {
    let env = Env::new();
    let src = env.path("staging");
    let f = env.file("a.img", b"content a");
    let blob = PathBuf::from(add_to(&env, &src, &f, "lab/a").trim());
    let tier = env.path("tier");
    stdout_of(env.cmd().args(["tier", "publish"]).arg(&src).arg(&tier));
    // In the tier: verify --tiers reports it, at once.
    let current = fs::canonicalize(tier.join("current")).unwrap();
    let in_tier = current.join(blob.strip_prefix(&src).unwrap());
    fs::remove_file(&in_tier).unwrap();
    run(StdCommand::new("mkfifo").arg(&in_tier));
    let out = env
        .cmd()
        .args(["--tier", tier.to_str().unwrap(), "verify", "--tiers"])
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FIFO"),
        "{out:?}"
    );
    // In SRC: publish refuses at once, and leaves no partial version.
    fs::remove_file(&blob).unwrap();
    run(StdCommand::new("mkfifo").arg(&blob));
    let out = env
        .cmd()
        .args(["tier", "publish"])
        .arg(&src)
        .arg(&tier)
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("library/lab/a") || err.contains("lab/a"),
        "{err}"
    );
    assert!(err.contains("FIFO") && err.contains("verify"), "{err}");
    assert_eq!(fs::read_dir(tier.join(".partial")).unwrap().count(), 0);
    assert_eq!(fs::canonicalize(tier.join("current")).unwrap(), current);
}

/// Danger: a tier's file damaged in place survived every publish (each hard-linked the
/// damaged file from the version before), so the advice "publish it again" could not
/// repair it; and `get --verify` of it told the user to run `sregistry verify`, which
/// never touches a tier. `tier publish --copy` replaces it; the reader's message names the
/// tier and its admin's remedy.
#[test]
fn a_damaged_tier_file_is_replaced_by_publish_copy_and_readers_are_told_so() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.path("staging");
    let f = env.file("a.img", b"content of a, published");
    let blob = PathBuf::from(add_to(&env, &src, &f, "lab/a").trim());
    let tier = env.path("tier");
    let t = tier.to_str().unwrap().to_string();
    let publish = |copy: bool| {
        let mut c = env.cmd();
        c.args(["tier", "publish"]).arg(&src).arg(&tier);
        if copy {
            c.arg("--copy");
        }
        stdout_of(&mut c);
    };
    publish(false);
    let in_tier = fs::canonicalize(tier.join("current"))
        .unwrap()
        .join(blob.strip_prefix(&src).unwrap());
    fs::set_permissions(&in_tier, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&in_tier).unwrap();
    bytes[3] ^= 1;
    fs::write(&in_tier, &bytes).unwrap();
    let verify = || {
        env.cmd()
            .args(["--tier", &t, "verify", "--tiers"])
            .output()
            .unwrap()
    };
    let out = verify();
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--copy"),
        "{out:?}"
    );
    let err = assert_fails(
        env.cmd().args(["--tier", &t, "get", "--verify", "lab/a"]),
        4,
        "tier",
    );
    assert!(err.contains(&t) && err.contains("--copy"), "{err}");
    assert!(!err.contains("run `sregistry verify`"), "{err}");
    // A plain publish links what the tier holds (same size): still damaged ...
    publish(false);
    assert_eq!(verify().status.code(), Some(4));
    // ... --copy takes every file from SRC.
    publish(true);
    let out = verify();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    stdout_of(env.cmd().args(["--tier", &t, "get", "--verify", "lab/a"]));
}

/// Danger: a tier whose `current` does not resolve (dangling, a loop) or that does not
/// exist (a node whose CVMFS mount is missing) was read as an empty cache: every name of it
/// "not found ... add it", `list` silently without it. A tier that does not resolve is an
/// error naming it; one that does not exist, a one-line warning naming it (a site's
/// configuration lists it on nodes without the mount too), the lookup going on.
#[test]
fn a_tier_that_does_not_resolve_is_an_error_naming_it_never_silently_empty() {
    let env = Env::new();
    let src = staging_with_one_image(&env);
    let dangling = env.path("dangling");
    stdout_of(env.cmd().args(["tier", "publish"]).arg(&src).arg(&dangling));
    let link = |d: &Path, to: &str| {
        fs::remove_file(d.join("current")).unwrap();
        std::os::unix::fs::symlink(to, d.join("current")).unwrap();
    };
    link(&dangling, "versions/nothere");
    let looped = env.path("looped");
    stdout_of(env.cmd().args(["tier", "publish"]).arg(&src).arg(&looped));
    link(&looped, "current");
    let missing = env.path("not/mounted");
    let m = missing.to_str().unwrap();
    for (args, code) in [(&["get", "lab/a"][..], 3), (&["list"], 0)] {
        let out = env.cmd().args(["--tier", m]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        let warned: Vec<_> = err.lines().filter(|l| l.starts_with("warning")).collect();
        assert_eq!(warned.len(), 1, "{err}");
        assert!(warned[0].contains(m), "{err}");
    }
    for tier in [&dangling, &looped] {
        let t = tier.to_str().unwrap();
        for args in [&["get", "lab/a"][..], &["list"], &["get", "lab/zzz"]] {
            let out = env.cmd().args(["--tier", t]).args(args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?} {t}: {err}");
            assert!(err.contains(t) && err.contains("tier"), "{err}");
        }
    }
}

/// Danger: a published version given as the writable cache (`--cache DEST/current` or
/// `DEST/versions/<id>`) was changed in place: `add` and `rm` succeeded as root (the rm
/// unlinked a file under every job using it; every node then saw the new name). Every
/// command refuses it, saying to give it as a tier, and nothing in it changes.
#[test]
fn a_published_version_is_never_opened_as_a_writable_cache() {
    let env = Env::new();
    let src = staging_with_one_image(&env);
    let tier = env.path("tier");
    stdout_of(env.cmd().args(["tier", "publish"]).arg(&src).arg(&tier));
    let version = fs::canonicalize(tier.join("current")).unwrap();
    let snap = env.snapshot_of(&tier);
    let g = env.file("evil.img", b"evil");
    for root in [tier.join("current"), version] {
        for args in [
            &["add", g.to_str().unwrap(), "--name", "evil"][..],
            &["rm", "lab/a"],
            &["get", "lab/a"],
            &["gc"],
        ] {
            let mut c = env.cmd();
            c.arg("--cache").arg(&root).args(args);
            let err = assert_fails(&mut c, 2, "published version of a tier");
            assert!(err.contains("--tier"), "{err}");
        }
    }
    assert_eq!(env.snapshot_of(&tier), snap);
    // As a tier, it reads.
    stdout_of(
        env.cmd()
            .args(["--tier", tier.to_str().unwrap(), "get", "lab/a"]),
    );
}

/// Danger: a group's live cache configured as a tier (no `current`: not published) was
/// read without its lock, so a `get` racing one of its commits failed ("was not closed
/// cleanly ... publish it again") for a name never touched: half the jobs failed while
/// the group added. On a writable filesystem such a tier is read under its shared lock:
/// every `get` succeeds while adds and removals go on.
#[test]
fn a_live_cache_as_a_tier_is_read_under_its_lock_and_no_get_fails_while_it_is_written() {
    let env = Env::new();
    let live = env.path("live");
    let f = env.file("keep.img", b"kept");
    add_to(&env, &live, &f, "lab/keep");
    let stop = env.path("stop");
    let writer = {
        let files: Vec<PathBuf> = (0..20)
            .map(|i| env.file(&format!("w{i}.img"), format!("w{i}").as_bytes()))
            .collect();
        let live = live.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let cmd = |args: &[&std::ffi::OsStr]| {
                let out = StdCommand::new(env!("CARGO_BIN_EXE_sregistry"))
                    .env("SREGISTRY_CACHE", &live)
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
            };
            for (i, f) in files.iter().enumerate() {
                let name = format!("lab/w{i}");
                cmd(&[
                    "add".as_ref(),
                    f.as_os_str(),
                    "--name".as_ref(),
                    name.as_ref(),
                ]);
                cmd(&["rm".as_ref(), name.as_ref()]);
            }
            fs::write(&stop, b"").unwrap();
        })
    };
    let mut get = env.std_cmd();
    get.args(["--tier", live.to_str().unwrap(), "get", "lab/keep"]);
    let (mut ok, mut failed) = (0, Vec::new());
    while !stop.exists() {
        let out = get.output().unwrap();
        if out.status.success() {
            ok += 1;
        } else {
            failed.push(String::from_utf8_lossy(&out.stderr).to_string());
        }
    }
    writer.join().unwrap();
    assert!(
        failed.is_empty(),
        "{ok} ok, {} failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ok > 5, "{ok}");
}

/// Danger: `verify NAME` of a name only a tier holds said "no image ... add it" (exit 3)
/// though `list` shows it. It says the name is in the tier and to use `verify --tiers`.
#[test]
fn verify_of_a_name_only_a_tier_holds_points_to_verify_tiers() {
    let env = Env::new();
    let tier = with_tier(&env, &[("lab/t", "tier content")]);
    let t = tier.to_str().unwrap();
    for args in [&["verify", "lab/t"][..], &["verify", "--repair", "lab/t"]] {
        let mut c = env.cmd();
        c.args(["--tier", t]).args(args);
        let err = assert_fails(&mut c, 1, "verify --tiers");
        assert!(err.contains(t), "{err}");
    }
}

/// Danger: a publish that cannot write its DEST said "cannot prepare the cache at DEST",
/// as if the admin's writable cache were broken. It names the tier.
#[test]
fn a_publish_that_cannot_write_dest_names_the_tier_not_a_cache() {
    let env = Env::new();
    let src = staging_with_one_image(&env);
    let file = env.file("afile", b"not a directory");
    let mut c = env.cmd();
    c.args(["tier", "publish"]).arg(&src).arg(file.join("tier"));
    let err = assert_fails(&mut c, 1, "cannot write the tier at");
    assert!(!err.contains("cannot prepare the cache"), "{err}");
}

/// Danger: a member of a shared cache's group renames a file of the same size over a blob
/// (which `get` refuses there), or a link to a secret the publisher can read; a publish
/// then copied it into the tier, served on every node (found by a hostile test: a link to
/// `/etc/shadow` went out world-readable). Every blob is hashed as it is copied, and opened
/// without following links; the publish fails, naming the image, and no version appears.
#[test]
fn publish_never_carries_a_replaced_blob_or_a_link_into_the_tier() {
    let env = Env::new();
    let src = env.path("staging");
    let blob = PathBuf::from(add_to(
        &env,
        &src,
        &env.file("a.img", b"the real image"),
        "lab/a",
    ));
    let dest = env.path("site/tier");
    let secret = env.file("secret", b"root's secret!");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let planted = env.file("planted", b"not the image!");
    type Plant = fn(&Path, &Path, &Path);
    let plants: [(&str, Plant); 2] = [
        ("same-size file", |blob, planted, _| {
            fs::rename(planted, blob).unwrap()
        }),
        ("link to a secret", |blob, _, secret| {
            fs::remove_file(blob).unwrap();
            std::os::unix::fs::symlink(secret, blob).unwrap();
        }),
    ];
    for (what, plant) in plants {
        let kept = env.path("kept");
        fs::copy(&blob, &kept).unwrap();
        plant(&blob, &planted, &secret);
        let err = assert_fails(
            env.cmd().args(["tier", "publish"]).arg(&src).arg(&dest),
            1,
            "lab/a:latest",
        );
        assert!(
            !dest.join("current").exists(),
            "{what}: a version was published: {err}"
        );
        let copies: Vec<_> = walk(&dest)
            .into_iter()
            .filter(|p| {
                p.is_file()
                    && fs::read(p).is_ok_and(|b| b == b"not the image!" || b == b"root's secret!")
            })
            .collect();
        assert!(
            copies.is_empty(),
            "{what}: copied into the tier: {copies:?}"
        );
        // Put the real file back for the next plant.
        let _ = fs::remove_file(&blob);
        fs::rename(&kept, &blob).unwrap();
        if !planted.exists() {
            fs::write(&planted, b"not the image!").unwrap();
        }
    }
    // With the real file back, the publish goes through.
    stdout_of(env.cmd().args(["tier", "publish"]).arg(&src).arg(&dest));
    assert!(dest.join("current").exists());
}

/// Danger: a relative `--tier DIR` naming another directory for each directory a command
/// runs in, or passed on relative to code that changes directory. A flag is resolved once,
/// against the working directory it is given in (the variable and the files, which outlive
/// one command line, refuse a relative path); `list --json` shows the absolute path.
#[test]
fn a_relative_tier_flag_is_the_directory_it_names_where_it_is_given() {
    let env = Env::new();
    let tier = with_tier(&env, &[("lab/t", "tier only")]);
    let base = tier.parent().unwrap();
    let name = tier.file_name().unwrap().to_str().unwrap();
    let rows = json(&stdout_of(
        env.cmd()
            .current_dir(base)
            .args(["--json", "--tier", name, "list"]),
    ));
    assert_eq!(rows[0]["tier"], tier.to_str().unwrap(), "{rows}");
    let got = stdout_of(
        env.cmd()
            .current_dir(base)
            .args(["--tier", name, "get", "lab/t"]),
    );
    assert_eq!(fs::read(got).unwrap(), b"tier only");
    // The variable refuses a relative path.
    let out = env
        .cmd()
        .current_dir(base)
        .env("SREGISTRY_TIERS", name)
        .args(["list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Danger: a tier's path with a line break (or another control character) breaking
/// `list`'s table into rows that are not rows: a script reading it sees a name that is
/// not there. The TIER column shows the path escaped (`\n`), `--json` the path as it is.
#[test]
fn a_control_character_in_a_tier_path_never_breaks_the_list_table() {
    let env = Env::new();
    let made = with_tier(&env, &[("lab/t", "tier only")]);
    let tier = env.path("odd\ntier\u{1b}[31m");
    fs::rename(&made, &tier).unwrap();
    let t = tier.to_str().unwrap();
    let text = stdout_of(env.cmd().args(["--tier", t, "list"]));
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    let row = text.lines().nth(1).unwrap();
    assert!(row.ends_with("odd\\ntier\\u{1b}[31m"), "{row:?}");
    let rows = json(&stdout_of(env.cmd().args(["--json", "--tier", t, "list"])));
    assert_eq!(rows[0]["tier"], t, "{rows}");
}

/// Danger: `rm NAME` says "removed" while `get NAME` then silently answers a tier's
/// image of the same name (or the shared cache's, once the caller's private copy is gone):
/// a job runs another image than the one its user thinks is gone. `rm` says, on stderr,
/// which cache now answers the name, and `--json` gives it in `revealed`.
#[test]
fn rm_of_a_name_that_shadowed_another_says_what_the_name_answers_now() {
    let env = Env::new();
    let tier = with_tier(&env, &[("lab/both", "tier both")]);
    shared_with_private(
        &env,
        &[("lab/both", "shared both"), ("lab/only", "shared only")],
        ("lab/both", "private both"),
    );
    let t = tier.to_str().unwrap();
    let cmd = || {
        let mut c = env.cmd();
        c.args(["--tier", t]);
        c
    };
    // The private copy goes: the shared cache's answers now.
    let out = cmd().args(["rm", "lab/both"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "removed lab/both:latest"
    );
    assert!(
        err.contains("`lab/both:latest`") && err.contains("shared cache"),
        "{err}"
    );
    assert!(!err.contains(t), "{err}");
    // The shared copy goes: the tier's answers now, and says so in --json too.
    let v = json(&stdout_of(
        cmd().args(["--json", "rm", "lab/both", "lab/only"]),
    ));
    assert_eq!(
        v["revealed"],
        serde_json::json!([{"name": "lab/both:latest", "tier": t}]),
        "{v}"
    );
    assert_eq!(v["names"].as_array().unwrap().len(), 2, "{v}");
    let got = stdout_of(cmd().args(["get", "lab/both"]));
    assert_eq!(fs::read(got).unwrap(), b"tier both");
    // Nothing else answers a name removed from the only cache that had it.
    let f = env.file("again.img", b"again");
    add_to(&env, &env.cache, &f, "lab/only");
    let out = cmd().args(["rm", "lab/only"]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("now resolves"), "{err}");
    let f = env.file("again2.img", b"again2");
    add_to(&env, &env.cache, &f, "lab/only");
    let v = json(&stdout_of(cmd().args(["--json", "rm", "lab/only"])));
    assert_eq!(v["revealed"], serde_json::json!([]), "{v}");
}

/// Danger: "no image `NAME` in the cache `C`" when tiers were looked in too: the user
/// looks for the image in the wrong place, or thinks the tier was never read. The message
/// (still one line, exit 3) says the name was looked for in the writable cache and in each
/// tier, naming them when few, counting them when many.
#[test]
fn not_found_says_every_tier_was_looked_in_too() {
    let env = Env::new();
    let tier = with_tier(&env, &[("lab/t", "tier only")]);
    let t = tier.to_str().unwrap();
    let second = env.path("second");
    fs::create_dir_all(&second).unwrap();
    let s = second.to_str().unwrap();
    for args in [
        &["get", "lab/none"][..],
        &["inspect", "lab/none"],
        &["rm", "lab/none"],
    ] {
        let err = assert_fails(env.cmd().args(["--tier", t]).args(args), 3, "no image");
        assert!(err.contains(&format!("tier `{t}`")), "{args:?}: {err}");
        let err = assert_fails(
            env.cmd().args(["--tier", t, "--tier", s]).args(args),
            3,
            "no image",
        );
        assert!(
            err.contains(&format!("2 tiers `{t}`, `{s}`")),
            "{args:?}: {err}"
        );
    }
    let mut c = env.cmd();
    for i in 0..5 {
        c.arg("--tier").arg(env.path(&format!("many{i}")));
    }
    for i in 0..5 {
        fs::create_dir_all(env.path(&format!("many{i}"))).unwrap();
    }
    let err = assert_fails(c.args(["get", "lab/none"]), 3, "no image");
    assert!(err.contains("5 tiers"), "{err}");
    // Without tiers the message is as it was.
    let err = assert_fails(env.cmd().args(["get", "lab/none"]), 3, "no image");
    assert!(!err.contains("tier"), "{err}");
}
