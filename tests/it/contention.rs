//! Many processes on one cache at once: every command succeeds, nothing is lost.

use std::process::{Child, Stdio};

use crate::common::*;
use crate::support::wait_for_pause;

fn wait_all(children: Vec<(String, Child)>) {
    let mut failures = Vec::new();
    for (what, child) in children {
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// 32 concurrent adds (some sharing content) and 32 concurrent gets: all succeed, every
/// name lands, every blob verifies, tmp/ is empty.
#[test]
fn concurrent_adds_and_gets_all_succeed_and_lose_nothing() {
    adds_and_gets_under_contention("ofd");
}

/// The same with `SREGISTRY_LOCK=flock`, the fallback for filesystems without `fcntl`
/// locks: our lock alone must guard the index (redb takes no locks of its own).
#[test]
fn concurrent_adds_and_gets_with_flock_locks_lose_nothing() {
    adds_and_gets_under_contention("flock");
}

fn adds_and_gets_under_contention(lock_kind: &str) {
    let env = Env::new();
    let seed = env.file("seed.img", b"seed image");
    let seed_path = stdout_of(env.cmd().arg("add").arg(&seed).args(["--name", "seed"]));
    let mut children = Vec::new();
    for i in 0..32 {
        // Every fourth file repeats content, so dedupe races too.
        let content = format!("image {}", if i % 4 == 0 { 0 } else { i }).repeat(1000);
        let f = env.file(&format!("in{i}.img"), content.as_bytes());
        let child = env
            .std_cmd()
            .env("SREGISTRY_LOCK", lock_kind)
            .arg("add")
            .arg(&f)
            .args(["--name", &format!("lab/img{i}:v1")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push((format!("add {i}"), child));
        let child = env
            .std_cmd()
            .env("SREGISTRY_LOCK", lock_kind)
            .args(["get", "seed"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push((format!("get {i}"), child));
    }
    wait_all(children);
    let names = env.names();
    for i in 0..32 {
        assert!(
            names.contains(&format!("lab/img{i}:v1")),
            "lab/img{i}:v1 lost"
        );
    }
    assert_eq!(names.len(), 33);
    assert_eq!(stdout_of(env.cmd().args(["get", "seed"])), seed_path);
    assert_eq!(
        env.blobs().len(),
        1 + 1 + 24,
        "dedupe failed under contention"
    );
    env.assert_blobs_verify();
    assert!(
        env.tmp_entries().is_empty(),
        "left in tmp: {:?}",
        env.tmp_entries()
    );
}

/// Concurrent writers to the same name: the name ends up pointing at one of the contents,
/// and every get during the race printed one path that still exists (re-pointed content
/// stays for `--min-idle`), is the blob of the digest it is named by, and holds one of
/// the contents the name was given, whole.
#[test]
fn concurrent_writers_to_one_name_leave_it_consistent() {
    let env = Env::new();
    let first = env.file("first.img", b"first");
    stdout_of(env.cmd().arg("add").arg(&first).args(["--name", "hot"]));
    let mut contents = vec![b"first".to_vec()];
    let mut adds = Vec::new();
    let mut gets = Vec::new();
    for i in 0..16 {
        let content = format!("version {i}").into_bytes();
        let f = env.file(&format!("v{i}.img"), &content);
        contents.push(content);
        let c = env
            .std_cmd()
            .arg("add")
            .arg(&f)
            .args(["--name", "hot"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        adds.push((format!("add {i}"), c));
        let g = env
            .std_cmd()
            .args(["get", "hot"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        gets.push(g);
    }
    wait_all(adds);
    for (i, g) in gets.into_iter().enumerate() {
        let out = g.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "get {i}: {:?}: {err}", out.status);
        let printed = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), 1, "get {i} printed {printed:?}");
        let path = std::path::Path::new(lines[0]);
        assert!(
            path.starts_with(env.cache.join("v1/blobs/blake3")),
            "{path:?}"
        );
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("get {i} printed {path:?}, which is gone: {e}"));
        assert!(
            contents.contains(&bytes),
            "get {i}: {path:?} holds {:?}, none of the contents added",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            sregistry::Digest::of(&bytes).hex(),
            "get {i}: {path:?} is not the blob of its content"
        );
    }
    let p = stdout_of(env.cmd().args(["get", "hot"]));
    let content = String::from_utf8(std::fs::read(p).unwrap()).unwrap();
    assert!(content.starts_with("version "), "{content}");
    assert_eq!(env.names(), ["library/hot:latest"]);
    env.assert_blobs_verify();
    assert!(env.tmp_entries().is_empty());
}

/// A held index lock makes a reader wait (bounded), then fail with a message naming the
/// lock file and the variable that raises the bound.
#[test]
fn a_stuck_writer_makes_readers_time_out_with_a_clear_message() {
    let env = Env::new();
    let f = env.file("a.img", b"locked");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "x"]));
    // Park a writer inside its index transaction (test hook), holding the lock.
    let g = env.file("b.img", b"other");
    let mut parked = env
        .std_cmd()
        .env("SREGISTRY_TEST_PAUSE", "add-index-uncommitted")
        .arg("add")
        .arg(&g)
        .args(["--name", "y"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_pause(&mut parked);
    let out = env
        .cmd()
        .env("SREGISTRY_LOCK_TIMEOUT", "1.5")
        .args(["get", "x"])
        .output()
        .unwrap();
    parked.kill().unwrap();
    parked.wait().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("waiting for lock on"), "{err}");
    // The wait is reported as it was set, not rounded down to whole seconds.
    assert!(err.contains("timed out after 1.5 s"), "{err}");
    assert!(
        err.contains("index.lock") && err.contains("SREGISTRY_LOCK_TIMEOUT"),
        "{err}"
    );
    // Once the writer is gone, the lock is free again.
    stdout_of(env.cmd().args(["get", "x"]));
}
