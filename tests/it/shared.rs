//! A cache shared by a Unix group: two real users, umask 077, every member can use what
//! another added. Also: disk full, and doctor.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

pub(crate) const GROUP: &str = "sregtest";
pub(crate) const USERS: [&str; 2] = ["sregtest-alice", "sregtest-bob"];

/// Create the group and the two users once (idempotent).
pub(crate) fn ensure_users() {
    let _ = Command::new("groupadd").arg(GROUP).output();
    for u in USERS {
        let _ = Command::new("useradd")
            .args(["-M", "-N", "-G", GROUP, "-s", "/bin/sh", u])
            .output();
        let out = Command::new("id").arg(u).output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(GROUP),
            "user {u} not set up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A copy of the binary every user can execute, in a directory every user can enter.
pub(crate) fn public_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("sregistry");
    fs::copy(env!("CARGO_BIN_EXE_sregistry"), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// The binary as `nobody` (group `nogroup`): a user in no group of the cache's, with
/// nothing of the caller's environment changed.
pub(crate) fn as_nobody(bin: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        "nobody",
        "--regid",
        "nogroup",
        "--init-groups",
        "--",
    ])
    .arg(bin);
    c
}

/// Run the binary as `user` with umask 077.
pub(crate) fn as_user(user: &str, bin: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid", user, "--regid", "users", "--init-groups", "--"])
        .args(["sh", "-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(bin)
        .args(args)
        .env("SREGISTRY_CACHE", cache)
        // The user's own (empty) home, not root's: no credentials to read.
        .env("HOME", "/nonexistent")
        .env_remove("SREGISTRY_CONFIG_DIR")
        .env_remove("DOCKER_CONFIG")
        .env_remove("SREGISTRY_NOW")
        .output()
        .unwrap()
}

pub(crate) fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The test users, a binary they can run, and a cache made by `init --shared` for their
/// group, in a directory everyone can enter.
pub(crate) fn shared_cache_for_the_users() -> (Env, PathBuf, PathBuf) {
    ensure_users();
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = public_binary(env.dir.path());
    let cache = env.cache.clone();
    let init = env
        .cmd()
        .args(["init", "--shared", "--group", GROUP])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    (env, bin, cache)
}

/// The first user adds a world-readable file as `lab/tool:1`; returns the input file and
/// the cached path.
pub(crate) fn alice_adds_lab_tool(
    env: &Env,
    bin: &Path,
    cache: &Path,
    content: &[u8],
) -> (PathBuf, String) {
    let input = env.file("tool.img", content);
    fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).unwrap();
    let path = ok(as_user(
        USERS[0],
        bin,
        cache,
        &["add", input.to_str().unwrap(), "--name", "lab/tool:1"],
    ));
    (input, path)
}

#[test]
fn group_members_share_a_cache_whatever_their_umask() {
    if skip_unless_root(
        "group_members_share_a_cache_whatever_their_umask",
        "needs root to create users",
    ) {
        return;
    }
    let (env, bin, cache) = shared_cache_for_the_users();
    let (input, path) = alice_adds_lab_tool(&env, &bin, &cache, b"a shared image");
    let [alice, bob] = USERS;
    // Modes are the cache's, not alice's umask.
    let gid = fs::metadata(&cache).unwrap().gid();
    let blob = fs::metadata(&path).unwrap();
    assert_eq!(blob.permissions().mode() & 0o7777, 0o444);
    assert_eq!(blob.gid(), gid);
    let fan = Path::new(&path).parent().unwrap();
    assert_eq!(
        fs::metadata(fan).unwrap().permissions().mode() & 0o7777,
        0o2775
    );

    // bob reads, tags, removes and collects what alice added.
    assert_eq!(ok(as_user(bob, &bin, &cache, &["get", "lab/tool:1"])), path);
    let cat = Command::new("setpriv")
        .args([
            "--reuid",
            bob,
            "--regid",
            "users",
            "--init-groups",
            "cat",
            &path,
        ])
        .output()
        .unwrap();
    assert_eq!(cat.stdout, b"a shared image");
    ok(as_user(
        bob,
        &bin,
        &cache,
        &["tag", "lab/tool:1", "lab/tool:2"],
    ));
    ok(as_user(bob, &bin, &cache, &["rm", "lab/tool:1"]));
    ok(as_user(
        bob,
        &bin,
        &cache,
        &["rm", "--keep-blob", "lab/tool:2"],
    ));
    ok(as_user(bob, &bin, &cache, &["gc"]));
    assert!(
        !Path::new(&path).exists(),
        "bob's gc could not remove alice's blob"
    );
    // And alice can use the cache after bob wrote its index.
    ok(as_user(
        alice,
        &bin,
        &cache,
        &["add", input.to_str().unwrap(), "--name", "lab/tool:3"],
    ));
    let doctor = as_user(bob, &bin, &cache, &["doctor"]);
    assert!(
        doctor.status.success(),
        "{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
}

#[test]
fn doctor_reports_a_broken_permission_and_names_the_fix() {
    if skip_unless_root(
        "doctor_reports_a_broken_permission_and_names_the_fix",
        "needs root for groups",
    ) {
        return;
    }
    ensure_users();
    let env = Env::new();
    env.cmd()
        .args(["init", "--shared", "--group", GROUP])
        .arg(&env.cache)
        .assert()
        .success();
    stdout_of(env.cmd().args(["doctor"]));
    fs::set_permissions(
        env.cache.join("v1/index.lock"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = env.cmd().args(["doctor"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL permissions") && text.contains("index.lock"),
        "{text}"
    );
    // Running init again repairs it.
    env.cmd()
        .args(["init", "--shared", "--group", GROUP])
        .arg(&env.cache)
        .assert()
        .success();
    stdout_of(env.cmd().args(["doctor"]));
}

#[test]
fn doctor_on_a_healthy_private_cache_passes_and_names_the_filesystem() {
    let env = Env::new();
    let f = env.file("a.img", b"x");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "a"]));
    let v: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["doctor", "--json"]))).unwrap();
    let checks = v.as_array().unwrap();
    for name in [
        "cache",
        "permissions",
        "locks",
        "filesystem",
        "space",
        "index",
    ] {
        let c = checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check"));
        assert_ne!(c["status"], "fail", "{c}");
    }
    let out = env
        .cmd()
        .env("SREGISTRY_CACHE", env.path("nowhere"))
        .args(["doctor"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL cache"));
}

/// A write past RLIMIT_FSIZE fails cleanly: exit 1, nothing in blobs/ or tmp/, index as
/// it was. Both copy paths: through a buffer (4 MiB), and inside the kernel (24 MiB).
#[test]
fn add_past_the_file_size_limit_fails_cleanly() {
    let env = Env::new();
    let seed = env.file("seed.img", b"seed");
    stdout_of(env.cmd().arg("add").arg(&seed).args(["--name", "seed"]));
    for size in [4usize << 20, 24 << 20] {
        let big = env.file("big.img", &vec![1u8; size]);
        let before = env.snapshot();
        let mut cmd = env.std_cmd();
        cmd.arg("add").arg(&big).args(["--name", "big"]);
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; called in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 1 << 20,
                    rlim_max: 1 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{size} bytes: {err}");
        assert!(err.contains("larger than this process may write"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_eq!(env.snapshot(), before, "the failed add changed the cache");
    }
}

/// A full filesystem (a 5 MiB tmpfs): clear error, nothing partial, and the cache still
/// works for what fits.
#[test]
fn add_on_a_full_disk_fails_cleanly_and_the_cache_stays_usable() {
    if skip_unless_root(
        "add_on_a_full_disk_fails_cleanly_and_the_cache_stays_usable",
        "mounting a tmpfs needs root",
    ) {
        return;
    }
    let env = Env::new();
    let mnt = env.path("small");
    let _tmpfs = Tmpfs::mount(&mnt, "5m");
    let cache = mnt.join("cache");
    let small = env.file("small.img", &vec![3u8; 512 * 1024]);
    let big = env.file("big.img", &vec![4u8; 8 << 20]);
    stdout_of(
        env.cmd()
            .env("SREGISTRY_CACHE", &cache)
            .arg("add")
            .arg(&small)
            .args(["--name", "small"]),
    );
    let out = env
        .cmd()
        .env("SREGISTRY_CACHE", &cache)
        .arg("add")
        .arg(&big)
        .args(["--name", "big"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left") && err.contains("sregistry gc"),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(cache.join("v1/tmp")).unwrap().count(),
        0,
        "partial file left in tmp/"
    );
    let names = stdout_of(
        env.cmd()
            .env("SREGISTRY_CACHE", &cache)
            .args(["list", "--json"]),
    );
    assert!(names.contains("library/small:latest") && !names.contains("big"));
    stdout_of(
        env.cmd()
            .env("SREGISTRY_CACHE", &cache)
            .args(["get", "small"]),
    );
}

/// An admin-curated cache that everyone reads: a user outside the cache's group (who can
/// read it but not write it) can `get` and `list`, and is refused any change cleanly.
#[test]
fn a_reader_outside_the_group_can_get_but_not_change_the_cache() {
    if skip_unless_root(
        "a_reader_outside_the_group_can_get_but_not_change_the_cache",
        "needs root to create users",
    ) {
        return;
    }
    let (env, bin, cache) = shared_cache_for_the_users();
    let (input, path) = alice_adds_lab_tool(&env, &bin, &cache, b"a curated image");
    let before = env.snapshot_of(&cache);

    let outsider = "nobody";
    assert_eq!(
        ok(as_user(outsider, &bin, &cache, &["get", "lab/tool:1"])),
        path
    );
    assert!(ok(as_user(outsider, &bin, &cache, &["list"])).contains("lab/tool:1"));
    let out = as_user(
        outsider,
        &bin,
        &cache,
        &["add", input.to_str().unwrap(), "--name", "lab/other:1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(
        env.snapshot_of(&cache),
        before,
        "a refused add changed the cache"
    );
}

/// Run the binary as `user` with no thread to spare (`prlimit --nproc=1`: the process
/// itself is the user's one task), under `strace`, `env` added; the output and whether a
/// thread was refused (EAGAIN).
fn capped(
    user: &str,
    bin: &Path,
    cache: &Path,
    env: &[(&str, &str)],
    args: &[&std::ffi::OsStr],
) -> (std::process::Output, bool) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=clone,clone3", "-o"])
        .arg(log.path())
        .args([
            "setpriv",
            "--reuid",
            user,
            "--regid",
            "users",
            "--init-groups",
            "--",
        ])
        .args(["prlimit", "--nproc=1", "--"])
        .arg(bin)
        .args(args)
        .env("SREGISTRY_CACHE", cache)
        .env("HOME", "/nonexistent")
        .envs(env.iter().copied())
        .env_remove("SREGISTRY_CONFIG_DIR")
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap();
    let refused = fs::read_to_string(log.path()).unwrap().contains("EAGAIN");
    (out, refused)
}

/// A batch system may cap a user's processes and threads (`ulimit -u`): with no thread
/// to spare, `add` does the blob's fsyncs and link on its own thread (and copies and
/// hashes a large file on it too), and stores the image as ever. strace shows the thread
/// was refused.
#[test]
fn add_with_no_thread_to_spare_still_stores_its_image() {
    if skip_unless_root(
        "add_with_no_thread_to_spare_still_stores_its_image",
        "needs root to create users",
    ) {
        return;
    }
    let (env, bin, cache) = shared_cache_for_the_users();
    // Add `content` as `name` with no thread to spare; the path, once checked.
    let capped_add = |file: &str, content: &[u8], name: &str| {
        let input = env.file(file, content);
        fs::set_permissions(&input, fs::Permissions::from_mode(0o644)).unwrap();
        let args = [
            "add".as_ref(),
            input.as_os_str(),
            "--name".as_ref(),
            name.as_ref(),
        ];
        let (out, refused) = capped(USERS[0], &bin, &cache, &[], &args);
        let path = ok(out);
        assert!(refused, "no thread was refused");
        assert_eq!(fs::read(&path).unwrap(), content);
        path
    };
    let path = capped_add(
        "capped.img",
        &b"no thread to spare".repeat(500),
        "lab/capped:1",
    );
    assert_eq!(
        ok(as_user(USERS[1], &bin, &cache, &["get", "lab/capped:1"])),
        path
    );
    // A file of 8 MiB or more is copied and hashed on two threads: with one, on one.
    capped_add("big.img", &vec![7u8; 9 << 20], "lab/big:1");
    stdout_of(env.cmd().args(["verify"]));
}

/// A `get` that finds the index locked by a writer waits for it on a thread of its own;
/// with no thread to spare it asks again every few milliseconds instead, and answers once
/// the writer is done (it once ended in an internal error).
#[test]
fn a_get_that_must_wait_for_a_writer_with_no_thread_to_spare_still_answers() {
    if skip_unless_root(
        "a_get_that_must_wait_for_a_writer_with_no_thread_to_spare_still_answers",
        "needs root to create users",
    ) {
        return;
    }
    let (env, bin, cache) = shared_cache_for_the_users();
    let (_, path) = alice_adds_lab_tool(&env, &bin, &cache, b"waited for");
    let other = env.file("other.img", b"the writer's");
    let go = env.path("go");
    let mut writer = env.spawn_paused(
        "add-index-uncommitted",
        Some(&go),
        &[
            "add".as_ref(),
            other.as_os_str(),
            "--name".as_ref(),
            "lab/other:1".as_ref(),
        ],
    );
    let resume = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(400));
        fs::write(&go, b"").unwrap();
    });
    let (out, refused) = capped(
        USERS[1],
        &bin,
        &cache,
        &[("SREGISTRY_LOCK_TIMEOUT", "60")],
        &["get".as_ref(), "lab/tool:1".as_ref()],
    );
    resume.join().unwrap();
    assert_eq!(ok(out), path);
    assert!(refused, "no thread was refused");
    assert!(writer.wait().unwrap().success());
    stdout_of(env.cmd().args(["get", "lab/other:1"]));
}
