//! A `Cache` kept open in process (as the Python package and Rust embedders keep one)
//! answers `get` as a fresh process would, whatever other processes (the real binary)
//! changed in between: its kept open of the index (`src/cache/index/kept.rs`) is never
//! used once a writer has committed.

use std::path::PathBuf;

use sregistry::cache::lock::LockOptions;
use sregistry::{Cache, Reference};

use crate::common::*;

fn open(env: &Env) -> Cache {
    Cache::open(&env.cache, LockOptions::default()).unwrap()
}

/// `sregistry add FILE --name NAME`, by the real binary, which must succeed.
fn add(env: &Env, file: &std::path::Path, name: &str) {
    env.cmd()
        .arg("add")
        .arg(file)
        .args(["--name", name])
        .assert()
        .success();
}

/// `t/a` added by the real binary, a `Cache` kept open that got it twice, and a second
/// file, `b.img`, to add.
fn kept_with_a(env: &Env) -> (Cache, PathBuf) {
    let a = env.file("a.img", b"content of a");
    add(env, &a, "t/a");
    let kept = open(env);
    warm(&kept, "t/a");
    (kept, env.file("b.img", b"content of b"))
}

fn name(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

/// What `get` answers through `kept` and through a `Cache` opened afresh: the same path,
/// or the same error.
fn assert_answers_as_fresh(env: &Env, kept: &Cache, n: &str) -> Result<PathBuf, String> {
    let r = name(n);
    let got = kept.get(&r).map_err(|e| e.to_string());
    let fresh = open(env).get(&r).map_err(|e| e.to_string());
    assert_eq!(
        got, fresh,
        "`get {n}` through a kept Cache, then a fresh one"
    );
    got
}

/// Two `get`s, so that the second (and every later one) goes through the kept open.
fn warm(kept: &Cache, n: &str) -> PathBuf {
    let r = name(n);
    kept.get(&r).unwrap();
    kept.get(&r).unwrap()
}

#[test]
fn a_kept_cache_does_not_hand_out_a_name_another_process_removed() {
    let env = Env::new();
    let a = env.file("a.img", b"content of a");
    let b = env.file("b.img", b"content of b");
    add(&env, &a, "t/a");
    add(&env, &b, "t/b");
    let kept = open(&env);
    warm(&kept, "t/a");
    warm(&kept, "t/b");
    env.cmd().args(["rm", "t/a"]).assert().success();
    let e = assert_answers_as_fresh(&env, &kept, "t/a").unwrap_err();
    assert!(e.contains("no image `t/a:latest`"), "{e}");
    assert!(assert_answers_as_fresh(&env, &kept, "t/b").is_ok());
}

#[test]
fn a_kept_cache_follows_a_name_another_process_repointed() {
    let env = Env::new();
    let kept = open(&env);
    // Many commits in quick succession (several within one tick of the file clock): each
    // must be seen, as each changes redb's header.
    for i in 0..20u8 {
        let f = env.file(&format!("v{i}.img"), &[i + 1; 100]);
        add(&env, &f, "t/moving");
        let path = assert_answers_as_fresh(&env, &kept, "t/moving").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![i + 1; 100], "round {i}");
        // `tag` re-points another name to it, from another process.
        env.cmd()
            .args(["tag", "t/moving", "t/follower"])
            .assert()
            .success();
        assert_eq!(
            assert_answers_as_fresh(&env, &kept, "t/follower").unwrap(),
            path
        );
    }
}

#[test]
fn a_kept_cache_does_not_hand_out_what_gc_evicted() {
    let env = Env::new();
    let old = env.file("old.img", &[7; 4096]);
    add(&env, &old, "t/old");
    let kept = open(&env);
    let path = warm(&kept, "t/old");
    // By gc's clock, the uses the kept Cache recorded are a month old.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    env.cmd()
        .env("SREGISTRY_NOW", (now + 30 * 86_400).to_string())
        .args(["gc", "-q", "--max-age", "15d", "--min-idle", "0"])
        .assert()
        .success();
    assert!(!path.exists(), "gc kept the evicted image's file");
    let e = assert_answers_as_fresh(&env, &kept, "t/old").unwrap_err();
    assert!(e.contains("no image `t/old:latest`"), "{e}");
}

#[test]
fn a_kept_cache_reads_an_index_rebuilt_by_another_process() {
    let env = Env::new();
    let (kept, b) = kept_with_a(&env);
    // The index deleted (the kept Cache still has it open), then rebuilt from the
    // journal into another file, which then changes.
    std::fs::remove_file(env.cache.join("v1/index.redb")).unwrap();
    let e = assert_answers_as_fresh(&env, &kept, "t/a").unwrap_err();
    assert!(e.contains("--repair-index"), "{e}");
    env.cmd()
        .args(["doctor", "--repair-index"])
        .assert()
        .success();
    assert!(assert_answers_as_fresh(&env, &kept, "t/a").is_ok());
    add(&env, &b, "t/a");
    let path = assert_answers_as_fresh(&env, &kept, "t/a").unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"content of b");
    env.cmd().args(["rm", "t/a"]).assert().success();
    assert!(assert_answers_as_fresh(&env, &kept, "t/a").is_err());
}

/// `index.lock` at `path` (created if need be) locked exclusive through a descriptor of
/// its own, as a writer holds it, without touching the index: what a kept `Cache` sees
/// then is the lock alone. Let go when the file is dropped.
fn hold_as_a_writer(path: &std::path::Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    // SAFETY: an all-zero flock is valid; a whole-file write lock, l_pid 0 for OFD.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: `f` is open; `fl` is a valid flock.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    f
}

/// A kept `Cache` locks `index.lock` through the descriptor it kept from its last
/// lookup: that lock must still keep it out while a writer holds the index, and a lock
/// file removed meanwhile (an admin's `rm` of a "stale" lock) must not let it in
/// through the old file: it takes the lock on the file at the path, which the writer
/// holds.
#[test]
fn a_kept_cache_waits_for_the_writer_on_the_lock_file_at_the_path() {
    use std::time::Duration;
    let env = Env::new();
    let a = env.file("a.img", b"content of a");
    add(&env, &a, "t/a");
    let opts = LockOptions {
        timeout: Duration::from_millis(300),
        ..LockOptions::default()
    };
    let kept = Cache::open(&env.cache, opts).unwrap();
    let lock = env.cache.join("v1/index.lock");
    for removed in [false, true] {
        warm(&kept, "t/a");
        if removed {
            std::fs::remove_file(&lock).unwrap();
        }
        let writer = hold_as_a_writer(&lock);
        let got = kept.get(&name("t/a")).map_err(|e| e.to_string());
        drop(writer);
        let e = got.expect_err("a get went through a lock a writer held");
        assert!(
            e.contains("index.lock") && e.contains("SREGISTRY_LOCK_TIMEOUT"),
            "lock file removed: {removed}: {e}"
        );
        // The writer gone, the kept Cache answers again, as a fresh one.
        assert!(assert_answers_as_fresh(&env, &kept, "t/a").is_ok());
    }
}

/// A kept `Cache` goes by what it kept only while the index and its lock file are the
/// ones it opened: a cache removed under it is not found, and one made again at the same
/// place is read afresh.
#[test]
fn a_kept_cache_follows_its_cache_removed_and_made_again() {
    let env = Env::new();
    let (kept, b) = kept_with_a(&env);
    std::fs::remove_dir_all(&env.cache).unwrap();
    let e = assert_answers_as_fresh(&env, &kept, "t/a").unwrap_err();
    assert!(e.contains("no image `t/a:latest`"), "{e}");
    add(&env, &b, "t/a");
    for _ in 0..3 {
        let path = assert_answers_as_fresh(&env, &kept, "t/a").unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"content of b");
    }
}
