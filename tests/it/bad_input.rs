//! Bad input: every case exits with its documented code, says what is wrong on one line,
//! and leaves the cache exactly as it was.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;

/// A cache with one image in it, to check that failures change nothing.
fn seeded() -> Env {
    let env = Env::new();
    let f = env.file("seed.img", b"seed");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "seed:1"]));
    env
}

/// Malformed and hostile names exit 2, naming the problem, changing nothing.
#[test]
fn malformed_names_are_usage_errors_that_change_nothing() {
    let env = seeded();
    let f = env.file("in.img", b"input");
    let before = env.snapshot();
    let long_tag = format!("tool:{}", "t".repeat(10_000));
    for (name, needle) in [
        ("../../etc/passwd:1", "`..`"),
        ("lab/../tool", "`..`"),
        ("/abs/tool", "starts or ends with `/`"),
        ("lab/tool/", "starts or ends with `/`"),
        ("tool\u{0}x", "control character"),
        ("t\u{043e}ol", "non-ASCII"),
        (long_tag.as_str(), "longer than 128"),
        ("tool:", "tag after `:` is empty"),
        ("", "empty"),
        ("oras://host/repo:1", "remote reference"),
    ] {
        // NUL cannot pass through argv; test it as a get argument via a stand-in.
        if name.contains('\u{0}') {
            continue;
        }
        assert_fails(
            env.cmd().arg("add").arg(&f).args(["--name", name]),
            2,
            needle,
        );
        // `get` takes remote references too (they pull); a local name cannot be one.
        if !name.contains("://") {
            assert_fails(env.cmd().args(["get", name]), 2, needle);
        }
    }
    assert_eq!(env.snapshot(), before);
}

/// Names are lower-cased (as the Python client did), tags keep their case.
#[test]
fn upper_case_names_are_lowered_but_tags_are_kept() {
    let env = Env::new();
    let f = env.file("in.img", b"input");
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&f)
            .args(["--name", "Registry.Example.ORG/Lab/Tool:RC1"]),
    );
    assert_eq!(env.names(), ["registry.example.org/lab/tool:RC1"]);
    stdout_of(env.cmd().args(["get", "registry.example.org/lab/tool:RC1"]));
    assert_fails(
        env.cmd().args(["get", "registry.example.org/lab/tool:rc1"]),
        3,
        "no image",
    );
}

/// An unknown name exits 3 with one line; nothing is created.
#[test]
fn unknown_names_exit_three() {
    let env = seeded();
    let before = env.snapshot();
    for cmd in [
        &["get", "ghost"][..],
        &["inspect", "ghost"],
        &["tag", "ghost", "x"],
        &["rm", "ghost"],
        &["pin", "ghost"],
    ] {
        assert_fails(env.cmd().args(cmd), 3, "library/ghost:latest");
    }
    assert_eq!(env.snapshot(), before);
}

/// Files that are not regular, non-empty files are refused up front, as bad arguments
/// (exit 2, as Python's `InvalidInput`: they exited 1 while Python said "bad input").
#[test]
fn add_refuses_what_is_not_an_image_file() {
    let env = seeded();
    let before = env.snapshot();
    let dir = env.path("a-directory");
    fs::create_dir(&dir).unwrap();
    let empty = env.file("empty.img", b"");
    let fifo = env.path("a.fifo");
    let rc = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(rc.success());
    let missing = env.path("no-such-file.img");
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (dir, "a directory"),
        (empty, "is empty"),
        (fifo, "a FIFO"),
        (missing, "No such file"),
    ];
    for (path, needle) in cases {
        assert_fails(
            env.cmd().arg("add").arg(&path).args(["--name", "x"]),
            2,
            needle,
        );
    }
    assert_eq!(env.snapshot(), before);
}

/// An unreadable file is refused with the OS reason (only meaningful when not root).
#[test]
fn add_of_an_unreadable_file_fails_cleanly() {
    let env = seeded();
    let f = env.file("secret.img", b"secret");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o000)).unwrap();
    let before = env.snapshot();
    let out = env
        .cmd()
        .arg("add")
        .arg(&f)
        .args(["--name", "x"])
        .output()
        .unwrap();
    // Root reads it anyway; then it must simply succeed.
    if out.status.success() {
        assert_eq!(env.names().len(), 2);
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
        assert_eq!(env.snapshot(), before);
    }
}

/// --move of a symlink would move the link, not the image: refused as a bad argument.
#[test]
fn add_move_refuses_a_symlink() {
    let env = seeded();
    let target = env.file("real.img", b"real");
    let link = env.path("link.img");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let before = env.snapshot();
    assert_fails(
        env.cmd()
            .arg("add")
            .arg(&link)
            .args(["--name", "x", "--move"]),
        2,
        "symbolic link",
    );
    assert_eq!(env.snapshot(), before);
    assert!(link.exists() && target.exists());
    // Without --move, a symlink is followed and its target's content added.
    let p = stdout_of(env.cmd().arg("add").arg(&link).args(["--name", "x"]));
    assert_eq!(fs::read(p).unwrap(), b"real");
}

/// Bad flags are usage errors (exit 2).
#[test]
fn bad_flags_are_usage_errors() {
    let env = seeded();
    let f = env.file("in.img", b"input");
    assert_fails(
        env.cmd()
            .arg("add")
            .arg(&f)
            .args(["--name", "x", "--label", "novalue"]),
        2,
        "KEY=VALUE",
    );
    let out = env.cmd().args(["get"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = env.cmd().args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A cache directory that cannot be written gives a clear error naming it.
#[test]
fn unwritable_cache_location_is_named_in_the_error() {
    let env = Env::new();
    let f = env.file("in.img", b"input");
    let blocker = env.file("not-a-dir", b"x");
    let out = env
        .cmd()
        .env("SREGISTRY_CACHE", blocker.join("cache"))
        .arg("add")
        .arg(&f)
        .args(["--name", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-dir"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// A file that shrinks while it is being added is refused; nothing partial is kept.
#[test]
fn add_of_a_file_that_shrinks_while_being_added_fails_cleanly() {
    let env = seeded();
    let f = env.file("shrinking.img", &vec![9u8; 40 << 20]);
    let resume = env.path("resume");
    let before = env.snapshot();
    let (mut child, mut stderr) = env.add_paused("add-mid-copy", &resume, &f, "x");
    // Shrink the file under the running add, then let it go on.
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    fs::write(&resume, b"").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        rest.contains("changed size while it was being added"),
        "{rest}"
    );
    assert_eq!(rest.trim_end().lines().count(), 1, "{rest}");
    assert_eq!(env.snapshot(), before);
}

/// A damaged index (truncated, or random bytes) is reported by every command, naming the
/// index and the way out; nothing panics, and doctor says what to do.
#[test]
fn a_damaged_index_is_reported_by_every_command_without_a_panic() {
    for damage in ["truncated", "random"] {
        let env = seeded();
        let index = env.cache.join("v1/index.redb");
        let good = fs::read(&index).unwrap();
        let bad: Vec<u8> = match damage {
            "truncated" => good[..good.len() / 3].to_vec(),
            _ => (0..good.len())
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        };
        fs::write(&index, &bad).unwrap();
        let f = env.file("new.img", b"new");
        let commands: Vec<Vec<String>> = vec![
            vec!["get".into(), "seed:1".into()],
            vec!["list".into()],
            vec!["inspect".into(), "seed:1".into()],
            vec![
                "add".into(),
                f.display().to_string(),
                "--name".into(),
                "n".into(),
            ],
            vec!["rm".into(), "seed:1".into()],
            vec!["gc".into()],
            vec!["verify".into()],
            vec!["info".into()],
        ];
        for args in commands {
            let out = env.cmd().args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{damage} {args:?}: {err}");
            assert!(
                err.contains("index.redb") && err.contains("doctor"),
                "{damage} {args:?}: {err}"
            );
            assert!(
                !err.contains("panicked") && !err.contains("internal error"),
                "{damage} {args:?}: {err}"
            );
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{damage} {args:?}: {err}"
            );
        }
        let out = env.cmd().args(["doctor"]).output().unwrap();
        assert_eq!(out.status.code(), Some(4));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("FAIL index") && text.contains("sregistry doctor --repair-index"),
            "{damage}: {text}"
        );
        assert_eq!(
            fs::read(&index).unwrap(),
            bad,
            "{damage}: a command rewrote the damaged index"
        );
    }
}

/// A cache directory reached through a symlink works like the directory itself.
#[test]
fn a_cache_directory_behind_a_symlink_works() {
    let env = Env::new();
    let real = env.path("real-cache");
    fs::create_dir(&real).unwrap();
    let link = env.path("linked-cache");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let f = env.file("a.img", b"through a link");
    let p = stdout_of(
        env.cmd()
            .env("SREGISTRY_CACHE", &link)
            .arg("add")
            .arg(&f)
            .args(["--name", "a"]),
    );
    assert_eq!(fs::read(&p).unwrap(), b"through a link");
    assert!(real.join("v1/index.redb").is_file());
    assert_eq!(
        stdout_of(env.cmd().env("SREGISTRY_CACHE", &real).args(["get", "a"])).len(),
        p.len() - link.as_os_str().len() + real.as_os_str().len()
    );
}

/// A cache on a read-only filesystem: reads work, writes fail with the reason, nothing
/// changes.
#[test]
fn a_read_only_cache_refuses_writes_cleanly() {
    if skip_unless_root(
        "a_read_only_cache_refuses_writes_cleanly",
        "remounting read-only needs root",
    ) {
        return;
    }
    let env = Env::new();
    let mnt = Tmpfs::mount(&env.path("ro"), "8m");
    let cache = env.path("ro").join("cache");
    let f = env.file("a.img", b"read only later");
    stdout_of(
        env.cmd()
            .env("SREGISTRY_CACHE", &cache)
            .arg("add")
            .arg(&f)
            .args(["--name", "a"]),
    );
    let path = stdout_of(env.cmd().env("SREGISTRY_CACHE", &cache).args(["get", "a"]));
    mnt.remount_read_only();
    // Reading needs no write access: compute nodes often mount a cache read-only.
    assert_eq!(
        stdout_of(env.cmd().env("SREGISTRY_CACHE", &cache).args(["get", "a"])),
        path
    );
    let before = env.snapshot_of(&cache);
    let g = env.file("b.img", b"second");
    let out = env
        .cmd()
        .env("SREGISTRY_CACHE", &cache)
        .arg("add")
        .arg(&g)
        .args(["--name", "b"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(env.snapshot_of(&cache), before);
}

/// A setting that is set to something it cannot be exits 2 with one line naming the
/// variable and its value, before anything is done; none is ignored for its default (a
/// `SREGISTRY_RETRIES` of `-1` once was), none overflows, and none is blamed on something
/// else (a bad `SREGISTRY_TIMEOUT` once spoke of missing CA certificates and exited 1).
#[test]
fn bad_settings_are_usage_errors_that_name_the_variable() {
    let env = seeded();
    let before = env.snapshot();
    let f = env.file("in.img", b"input");
    let bad = [
        ("SREGISTRY_TIMEOUT", "abc"),
        ("SREGISTRY_TIMEOUT", "0"),
        ("SREGISTRY_TIMEOUT", "-5"),
        ("SREGISTRY_LOCK_TIMEOUT", "abc"),
        ("SREGISTRY_LOCK_TIMEOUT", "-1"),
        ("SREGISTRY_LOCK", "posix"),
        ("SREGISTRY_RETRIES", "abc"),
        ("SREGISTRY_RETRIES", "-1"),
        ("SREGISTRY_RETRIES", "4294967295"),
        ("SREGISTRY_RETRIES", "21"),
        ("SREGISTRY_MAX_DOWNLOAD", "lots"),
        ("SREGISTRY_MIN_FREE", "1X"),
        ("SREGISTRY_NOW", "yesterday"),
    ];
    for (var, value) in bad {
        for args in [
            vec!["get".to_string(), "seed:1".to_string()],
            vec![
                "add".to_string(),
                f.display().to_string(),
                "--name".to_string(),
                "new:1".to_string(),
            ],
            vec!["pull".to_string(), "https://127.0.0.1:9/x.sif".to_string()],
        ] {
            let err = assert_fails(env.cmd().args(&args).env(var, value), 2, var);
            assert!(err.contains(&format!("`{value}`")), "{var}={value}: {err}");
            assert!(!err.contains("CA certificates"), "{var}={value}: {err}");
        }
    }
    assert_eq!(
        env.snapshot(),
        before,
        "a refused command changed the cache"
    );
    // The same values, well formed, are taken.
    for (var, value) in [
        ("SREGISTRY_TIMEOUT", "0.5"),
        ("SREGISTRY_LOCK_TIMEOUT", "0"),
        ("SREGISTRY_LOCK", "flock"),
        ("SREGISTRY_RETRIES", "20"),
        ("SREGISTRY_MIN_FREE", "0"),
    ] {
        stdout_of(env.cmd().args(["get", "seed:1"]).env(var, value));
    }
}

/// Every pause point the source stops at (`testhook::pause("...")`) is listed in
/// docs/development.md, which tests that kill or race a command at one rely on.
#[test]
fn every_pause_point_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("docs/development.md")).unwrap();
    let mut points = std::collections::BTreeSet::new();
    for f in walk(&root.join("src")) {
        if f.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&f).unwrap();
            for part in text.split("testhook::pause(\"").skip(1) {
                points.insert(part.split('"').next().unwrap().to_string());
            }
        }
    }
    assert!(points.len() > 20, "found only {points:?}");
    let missing: Vec<_> = points
        .iter()
        .filter(|p| !doc.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/development.md: {missing:?}"
    );
}
