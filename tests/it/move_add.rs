//! `add --move` never loses the user's file and never shares it: after any failure, and
//! after a SIGKILL at any instant, the file is still at its path with its content, or it
//! is committed in the cache under the requested name; and a file someone else can still
//! write is copied, never handed to the cache by inode.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;

use crate::common::*;

fn content() -> Vec<u8> {
    (0..200_000u32).map(|i| (i % 253) as u8).collect()
}

/// The user's file after a failed or killed `add --move`: either at its path, whole, or
/// committed under `name` with the same content.
fn assert_kept_or_committed(env: &Env, path: &std::path::Path, name: &str, data: &[u8]) {
    let at_path = fs::read(path).ok();
    let committed = env
        .cmd()
        .args(["get", name])
        .output()
        .unwrap()
        .status
        .success();
    if let Some(bytes) = &at_path {
        assert_eq!(bytes, data, "the file at its path changed");
    }
    if committed {
        let p = stdout_of(env.cmd().args(["get", "--verify", name]));
        assert_eq!(fs::read(p).unwrap(), data);
    }
    assert!(
        at_path.is_some() || committed,
        "the file is gone from its path and `{name}` is not in the cache"
    );
}

/// The reproduction from the report: the index lock is held elsewhere, the add times out
/// waiting for it, and the file must still be where it was, with its mode.
#[test]
fn a_move_that_times_out_on_the_lock_leaves_the_file_in_place() {
    let env = Env::new();
    let data = content();
    let f = env.file("tool.sif", &data);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    let other = env.file("other.img", b"holds the lock");
    let resume = env.path("resume");
    let mut holder = env.spawn_paused(
        "add-index-uncommitted",
        Some(&resume),
        &[
            "add".as_ref(),
            other.as_ref(),
            "--name".as_ref(),
            "holder".as_ref(),
        ],
    );
    let tmp_before = env.tmp_entries();
    let out = env
        .cmd()
        .env("SREGISTRY_LOCK_TIMEOUT", "1")
        .arg("add")
        .arg(&f)
        .args(["--move", "--name", "lab/x:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("timed out") && err.contains("index.lock"),
        "{err}"
    );
    fs::write(&resume, b"").unwrap();
    assert!(holder.wait().unwrap().success());
    assert_eq!(fs::read(&f).unwrap(), data, "the file lost its content");
    assert_eq!(
        fs::metadata(&f).unwrap().mode() & 0o7777,
        0o640,
        "the file's mode was not given back"
    );
    assert_eq!(
        env.tmp_entries(),
        tmp_before,
        "the failed add left files in tmp/"
    );
    // Nothing the failure left makes a later gc touch the file.
    stdout_of(env.cmd().args(["gc", "-q", "--tmp-grace", "0"]));
    assert_eq!(fs::read(&f).unwrap(), data);
}

/// SIGKILL at every stage of a move: the file is at its path or committed, and a gc
/// with no grace period afterwards changes neither.
#[test]
fn a_move_killed_at_any_stage_keeps_the_file_or_commits_it() {
    for point in [
        "add-staged",
        "add-blob-committed",
        "add-index-uncommitted",
        "add-move-committed",
    ] {
        let env = Env::new();
        let data = content();
        let f = env.file("tool.sif", &data);
        let mut child = env.spawn_paused(
            point,
            None,
            &[
                "add".as_ref(),
                f.as_ref(),
                "--move".as_ref(),
                "--name".as_ref(),
                "lab/x:1".as_ref(),
            ],
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_kept_or_committed(&env, &f, "lab/x:1", &data);
        stdout_of(env.cmd().args(["gc", "-q", "--tmp-grace", "0"]));
        assert_kept_or_committed(&env, &f, "lab/x:1", &data);
        env.assert_blobs_verify();
    }
}

/// Random kills of `add --move`, each followed by a gc that clears `tmp/` at once.
#[test]
fn moves_killed_at_random_moments_never_lose_a_file() {
    let env = Env::new();
    let mut seed: u64 = 0x1234_5678_9ABC_DEF1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut killed = 0;
    for i in 0..40 {
        let data: Vec<u8> = (0..(64 * 1024 + i * 4096))
            .map(|j| (j % 241) as u8 ^ i as u8)
            .collect();
        let f = env.file(&format!("m{i}.img"), &data);
        let name = format!("lab/m{i}:1");
        let mut child = env
            .std_cmd()
            .arg("add")
            .arg(&f)
            .args(["--move", "--name", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(rand() % 4000));
        let _ = child.kill();
        use std::os::unix::process::ExitStatusExt;
        if child.wait().unwrap().signal().is_some() {
            killed += 1;
        }
        stdout_of(env.cmd().args(["gc", "-q", "--tmp-grace", "0"]));
        assert_kept_or_committed(&env, &f, &name, &data);
    }
    assert!(killed > 0, "no add was killed mid-way");
}

/// `--move` of a file inside the cache is refused (exit 2): moving the index in once
/// wiped every name.
#[test]
fn a_move_from_inside_the_cache_is_refused() {
    let env = Env::new();
    let f = env.file("a.img", b"first image");
    let blob = stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "lab/a:1"]));
    let before = env.snapshot();
    for inside in [env.cache.join("v1/index.redb"), blob.clone().into()] {
        assert_fails(
            env.cmd()
                .arg("add")
                .arg(&inside)
                .args(["--move", "--name", "lab/b:1"]),
            2,
            "inside the cache",
        );
    }
    assert_eq!(env.snapshot(), before, "a refused move changed the cache");
    assert_eq!(stdout_of(env.cmd().args(["get", "lab/a:1"])), blob);
}

/// A file with another hard link outside the cache is copied, not moved: writing
/// through the other link afterwards does not change the stored image.
#[test]
fn a_move_of_a_file_with_another_link_copies_it() {
    let env = Env::new();
    let f = env.file("linked.img", b"original content");
    let other = env.path("other-link.img");
    fs::hard_link(&f, &other).unwrap();
    let blob = stdout_of(
        env.cmd()
            .arg("add")
            .arg(&f)
            .args(["--move", "--name", "lab/l:1"]),
    );
    assert!(!f.exists(), "--move leaves the path it was given");
    assert_ne!(
        fs::metadata(&blob).unwrap().ino(),
        fs::metadata(&other).unwrap().ino(),
        "the blob shares an inode with a file outside the cache"
    );
    fs::write(&other, b"changed through the other link").unwrap();
    stdout_of(env.cmd().args(["get", "--verify", "lab/l:1"]));
    assert_eq!(fs::read(&blob).unwrap(), b"original content");
}

/// A file another process holds open for writing is copied, not moved: what that
/// process writes afterwards does not reach the stored image.
#[test]
fn a_move_of_a_file_open_for_writing_copies_it() {
    let env = Env::new();
    let f = env.file("busy.img", b"content before the add");
    let go = env.path("go");
    let mut writer = std::process::Command::new("sh")
        .args([
            "-c",
            r#"exec 3>>"$1"; echo ready; while [ ! -e "$2" ]; do sleep 0.01; done; echo tampered >&3"#,
            "sh",
        ])
        .arg(&f)
        .arg(&go)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::{BufRead, BufReader};
        let mut line = String::new();
        BufReader::new(writer.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    let blob = stdout_of(
        env.cmd()
            .arg("add")
            .arg(&f)
            .args(["--move", "--name", "lab/busy:1"]),
    );
    fs::write(&go, b"").unwrap();
    assert!(writer.wait().unwrap().success());
    stdout_of(env.cmd().args(["get", "--verify", "lab/busy:1"]));
    assert_eq!(fs::read(&blob).unwrap(), b"content before the add");
}

/// `add --move` onto a pinned name is refused under the lock: the refusal must give the
/// file back, at its path, whole, with its mode, and change nothing in the cache.
#[test]
fn a_move_refused_by_a_pin_keeps_the_file() {
    let env = Env::new();
    let gold = env.file("gold.img", b"pinned content");
    stdout_of(env.cmd().arg("add").arg(&gold).args(["--name", "gold"]));
    stdout_of(env.cmd().args(["pin", "gold"]));
    let data = content();
    let f = env.file("new.img", &data);
    let mode = fs::metadata(&f).unwrap().mode();
    let before = env.snapshot();
    let out = env
        .cmd()
        .arg("add")
        .arg(&f)
        .args(["--move", "--name", "gold"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pinned"));
    assert_eq!(
        fs::read(&f).unwrap(),
        data,
        "the refused file lost its content"
    );
    assert_eq!(
        fs::metadata(&f).unwrap().mode(),
        mode,
        "its mode was not given back"
    );
    assert_eq!(env.snapshot(), before, "a refused move changed the cache");
}

/// In a shared cache, `--move` of a file of another group copies it, so the blob has the
/// cache's group and every member can read and collect it; the user's file is not
/// re-grouped.
#[test]
fn a_move_into_a_shared_cache_gives_the_blob_the_cache_group() {
    if skip_unless_root(
        "a_move_into_a_shared_cache_gives_the_blob_the_cache_group",
        "creates a group",
    ) {
        return;
    }
    let (env, _bin, cache) = crate::shared::shared_cache_for_the_users();
    let want = fs::metadata(cache.join("v1")).unwrap().gid();
    let f = env.file("root-owned.img", b"made by root, group root");
    assert_ne!(fs::metadata(&f).unwrap().gid(), want);
    let blob = stdout_of(
        env.cmd()
            .arg("add")
            .arg(&f)
            .args(["--move", "--name", "lab/r:1"]),
    );
    assert_eq!(
        fs::metadata(&blob).unwrap().gid(),
        want,
        "the blob kept the file's group"
    );
    assert!(!f.exists());
    let out = env.cmd().arg("doctor").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The danger: `add --move` saying all is well (exit 0) when the file's directory is not
/// the user's to write, so its path cannot be removed; and, on the cache's filesystem,
/// the path then staying a second link to the blob, which its owner could make writable
/// again. As a user who owns the file but not its directory: the file is copied, the name
/// is committed, the path keeps the file (its own inode, its mode), a warning names it,
/// and the exit status is 1.
#[test]
fn a_move_whose_file_cannot_be_removed_warns_and_exits_1() {
    if skip_unless_root(
        "a_move_whose_file_cannot_be_removed_warns_and_exits_1",
        "running as another user needs root",
    ) {
        return;
    }
    use crate::shared::{USERS, as_user, ensure_users, public_binary};
    ensure_users();
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = public_binary(env.dir.path());
    let cache = env.path("user-cache");
    let dir = env.path("not-yours");
    fs::create_dir(&cache).unwrap();
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let data = content();
    let file = dir.join("tool.sif");
    fs::write(&file, &data).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    run(std::process::Command::new("chown")
        .arg(USERS[0])
        .arg(&cache)
        .arg(&file));
    let out = as_user(
        USERS[0],
        &bin,
        &cache,
        &[
            "add",
            "--move",
            file.to_str().unwrap(),
            "--name",
            "lab/kept:1",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let warning = format!("`{}` is in the cache as `lab/kept:1`", file.display());
    assert!(stderr.contains(&warning), "{stderr}");
    assert!(stderr.contains("copied, not moved"), "{stderr}");
    let meta = fs::metadata(&file).expect("the file is gone from its path");
    assert_eq!(fs::read(&file).unwrap(), data);
    assert_eq!(meta.nlink(), 1, "the path is a second link to the blob");
    assert_eq!(meta.mode() & 0o777, 0o644, "the file's mode changed");
    let path = String::from_utf8(out.stdout).unwrap();
    assert_eq!(fs::read(path.trim()).unwrap(), data);
    let got = as_user(USERS[0], &bin, &cache, &["get", "--verify", "lab/kept:1"]);
    assert!(got.status.success(), "{got:?}");
}
