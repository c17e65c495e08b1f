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

/// Files that are not regular, non-empty, readable files are refused up front.
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
            1,
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

/// --move of a symlink would move the link, not the image: refused.
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
        1,
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
