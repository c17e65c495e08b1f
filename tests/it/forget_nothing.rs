//! Invariant 8: no failed command leaves a file in `blobs/` that the index does not know,
//! and no repair or re-created index forgets an image. What has no name is kept (pinned,
//! under `recovered/<digest>`), reported, and left to the user; never taken by the next gc.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common::{Env, assert_fails, doctor_check, stdout_of};

/// Add `content` under `name`; returns the blob path `add` printed.
fn add(env: &Env, name: &str, content: &[u8]) -> PathBuf {
    let f = env.file(&name.replace(['/', ':'], "_"), content);
    PathBuf::from(
        stdout_of(env.cmd().arg("add").arg(&f).args(["--name", name]))
            .trim()
            .to_string(),
    )
}

fn add_args(f: &Path, name: &str) -> Vec<OsString> {
    vec!["add".into(), f.into(), "--name".into(), name.into()]
}

fn refs(v: &[OsString]) -> Vec<&OsStr> {
    v.iter().map(OsString::as_os_str).collect()
}

fn recovered(content: &[u8]) -> String {
    format!("recovered/{}:latest", sregistry::Digest::of(content).hex())
}

/// Every file under `blobs/` (sorted).
fn blob_files(env: &Env) -> Vec<PathBuf> {
    let mut v = env.blobs();
    v.sort();
    v
}

fn pinned_names(env: &Env) -> Vec<String> {
    let out = stdout_of(env.cmd().args(["list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pinned"].as_bool() == Some(true))
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// Danger: a repair that skipped an unreadable journal line said success (exit 0), the
/// name on that line was gone, its image unknown to the index, and the nightly gc deleted
/// it: "no image is lost" was false.
#[test]
fn a_repair_that_skips_a_journal_line_keeps_its_image_and_exits_4() {
    let env = Env::new();
    add(&env, "lab/a:1", b"image a\n");
    let b = add(&env, "lab/b:1", b"image b\n");
    add(&env, "lab/c:1", b"image c\n");
    let journal = env.cache.join("v1/index.journal");
    let text = fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("lab/b:1"))
        .expect("a line for lab/b:1");
    assert!(at > 0, "lab/b:1 is in the snapshot line");
    let mut broken: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    broken[at] = broken[at].replacen('{', "{{", 1);
    fs::write(&journal, broken.join("\n") + "\n").unwrap();
    fs::remove_file(env.cache.join("v1/index.redb")).unwrap();

    let out = env
        .cmd()
        .args(["doctor", "--repair-index"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.contains(&format!("journal line(s) [{}] could not be read", at + 1)),
        "{text}"
    );
    let kept = recovered(b"image b\n");
    assert!(text.contains(&kept), "the kept image is not listed: {text}");
    assert_eq!(
        env.names(),
        vec!["lab/a:1".to_string(), "lab/c:1".into(), kept.clone()]
    );
    assert_eq!(pinned_names(&env), vec![kept.clone()]);
    // The journal with the unreadable line is kept, as the damaged index would be.
    let aside: Vec<PathBuf> = fs::read_dir(env.cache.join("v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("index.journal.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        fs::read_to_string(&aside[0]).unwrap(),
        broken.join("\n") + "\n"
    );
    // The nightly gc, even one that evicts everything it may: the image stays.
    stdout_of(env.cmd().args(["gc", "--max-size", "1", "--min-idle", "0"]));
    assert_eq!(fs::read(&b).unwrap(), b"image b\n");
    assert_eq!(
        stdout_of(env.cmd().args(["get", &kept])).trim(),
        b.display().to_string()
    );
    // The journal now rebuilds what the index holds, the recovered name included.
    let (journal_check, _) = doctor_check(&mut env.cmd(), "journal");
    assert_eq!(journal_check["status"], "ok", "{journal_check}");
    // Once named again, the user can drop the recovered name.
    stdout_of(env.cmd().args(["tag", &kept, "lab/b:1"]));
    stdout_of(env.cmd().args(["unpin", &kept]));
    stdout_of(env.cmd().args(["rm", &kept]));
    stdout_of(env.cmd().arg("gc"));
    assert_eq!(fs::read(&b).unwrap(), b"image b\n");
}

/// Danger: with `index.redb` and `index.journal` both deleted (an operator's mistake, a
/// partial restore), every command quietly started an empty index, `doctor` passed, and
/// gc deleted every image.
#[test]
fn a_cache_without_index_or_journal_refuses_until_rebuilt_from_its_blobs() {
    let env = Env::new();
    let sif = env.sif("tool.sif", "a real SIF\n");
    let sif_blob = PathBuf::from(
        stdout_of(
            env.cmd()
                .arg("add")
                .arg(&sif)
                .args(["--name", "lab/tool:1"]),
        )
        .trim()
        .to_string(),
    );
    let plain = add(&env, "lab/notes:1", b"not a SIF\n");
    for f in ["index.redb", "index.journal"] {
        fs::remove_file(env.cache.join("v1").join(f)).unwrap();
    }
    let before = blob_files(&env);
    assert_eq!(before.len(), 2);

    for args in [
        &["list"][..],
        &["gc"],
        &["get", "lab/tool:1"],
        &["inspect", "lab/tool:1"],
    ] {
        let err = assert_fails(env.cmd().args(args), 1, "--repair-index");
        assert!(err.contains("missing"), "{args:?}: {err}");
    }
    let f = env.file("new", b"a new image\n");
    assert_fails(
        env.cmd().arg("add").arg(&f).args(["--name", "lab/new:1"]),
        1,
        "--repair-index",
    );
    assert!(!env.cache.join("v1/index.redb").exists());
    assert_eq!(blob_files(&env), before, "a refused add left its blob");
    let (blobs, code) = doctor_check(&mut env.cmd(), "blobs");
    assert_eq!(code, Some(4));
    assert!(
        blobs["detail"]
            .as_str()
            .unwrap()
            .contains("2 image file(s)"),
        "{blobs}"
    );

    let out = env
        .cmd()
        .args(["doctor", "--repair-index"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("from the image files alone"), "{text}");
    let sif_name = recovered(&fs::read(&sif_blob).unwrap());
    let plain_name = recovered(b"not a SIF\n");
    let sif_line = text.lines().find(|l| l.contains(&sif_name)).unwrap();
    assert!(sif_line.ends_with("SIF"), "{text}");
    let plain_line = text.lines().find(|l| l.contains(&plain_name)).unwrap();
    assert!(!plain_line.ends_with("SIF"), "{text}");
    let mut want = vec![sif_name.clone(), plain_name.clone()];
    want.sort();
    assert_eq!(env.names(), want);
    stdout_of(env.cmd().args(["gc", "--max-size", "1", "--min-idle", "0"]));
    assert_eq!(blob_files(&env), before);
    assert_eq!(fs::read(&plain).unwrap(), b"not a SIF\n");
    // The record made from the file says what it is.
    let listed: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["list", "--json"]))).unwrap();
    let media = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["media_type"].clone())
            .unwrap()
    };
    assert_eq!(media(&sif_name), "application/vnd.sylabs.sif.layer.v1.sif");
    assert!(media(&plain_name).is_null(), "{listed}");
    let report = stdout_of(env.cmd().arg("doctor"));
    assert!(report.contains("ok   journal"), "{report}");
    assert!(report.contains("ok   blobs"), "{report}");
}

/// Danger: an `add` refused because the index is damaged (or missing) left its blob in
/// `blobs/`, unknown to the index: `verify` reported an orphan, and the disk kept it.
#[test]
fn an_add_refused_by_a_damaged_index_leaves_no_blob() {
    let env = Env::new();
    add(&env, "lab/a:1", b"image a\n");
    let before = blob_files(&env);
    // Deleted beside its journal: every writer refuses until it is rebuilt.
    fs::remove_file(env.cache.join("v1/index.redb")).unwrap();
    let f = env.file("b", b"image b\n");
    assert_fails(
        env.cmd().arg("add").arg(&f).args(["--name", "lab/b:1"]),
        1,
        "--repair-index",
    );
    assert_eq!(blob_files(&env), before);
    // Damaged: the same.
    stdout_of(env.cmd().args(["doctor", "--repair-index"]));
    fs::write(env.cache.join("v1/index.redb"), vec![0x5a; 8192]).unwrap();
    assert_fails(
        env.cmd().arg("add").arg(&f).args(["--name", "lab/b:1"]),
        1,
        "--repair-index",
    );
    assert_eq!(blob_files(&env), before);
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    stdout_of(env.cmd().args(["doctor", "--repair-index"]));
    assert_eq!(env.names(), vec!["lab/a:1".to_string()]);
}

/// Danger: taking out a refused add's blob breaks a concurrent add of the same content,
/// which found the blob in place and relies on it.
#[test]
fn a_refused_adds_blob_goes_but_a_concurrent_add_of_the_same_content_still_commits() {
    let env = Env::new();
    add(&env, "lab/a:1", b"image a\n");
    let f = env.file("x", b"the same content\n");
    let go_a = env.path("go-a");
    let go_b = env.path("go-b");
    // A links the blob in; B finds it there. Both stop before the index lock.
    let a = env.spawn_paused("add-staged", Some(&go_a), &refs(&add_args(&f, "lab/x:1")));
    let b = env.spawn_paused("add-staged", Some(&go_b), &refs(&add_args(&f, "lab/y:1")));
    // The index goes missing under A, which is refused and takes its blob out.
    let index = env.cache.join("v1/index.redb");
    let saved = env.path("index.saved");
    fs::rename(&index, &saved).unwrap();
    fs::write(&go_a, b"").unwrap();
    let out = a.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let blob = env.cache.join({
        let d = sregistry::Digest::of(b"the same content\n").hex();
        format!("v1/blobs/blake3/{}/{d}", &d[..2])
    });
    assert!(!blob.exists(), "the refused add left its blob");
    // B commits once the index is back, and its name points at a whole file.
    fs::rename(&saved, &index).unwrap();
    fs::write(&go_b, b"").unwrap();
    let out = b.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let got = stdout_of(env.cmd().args(["get", "lab/y:1"]));
    assert_eq!(fs::read(got.trim()).unwrap(), b"the same content\n");
    stdout_of(env.cmd().arg("verify"));
}

/// Danger: two `doctor --repair-index` at once both rebuilt, and the second set the index
/// the first had just rebuilt aside as "damaged".
#[test]
fn two_concurrent_repairs_take_turns_and_the_second_leaves_the_first_ones_index() {
    let env = Env::new();
    add(&env, "lab/a:1", b"image a\n");
    add(&env, "lab/b:1", b"image b\n");
    fs::write(env.cache.join("v1/index.redb"), vec![0x5a; 8192]).unwrap();
    let go = env.path("go");
    let first = env.spawn_paused(
        "repair-checked",
        Some(&go),
        &["doctor".as_ref(), "--repair-index".as_ref()],
    );
    // The second starts while the first has decided to rebuild but not yet done it.
    let mut second = env
        .std_cmd()
        .args(["doctor", "--repair-index"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It either waits for the first (it says so after a second) or finishes on its own.
    let mut err = BufReader::new(second.stderr.take().unwrap());
    let mut line = String::new();
    let _ = err.read_line(&mut line);
    std::thread::spawn(move || for _ in err.lines() {});
    fs::write(&go, b"").unwrap();
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    let aside: Vec<PathBuf> = fs::read_dir(env.cache.join("v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("index.redb.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "a healthy index was set aside: {aside:?}");
    assert_eq!(fs::read(&aside[0]).unwrap(), vec![0x5a; 8192]);
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("nothing to repair"),
        "{second:?} (stderr began: {line})"
    );
    assert_eq!(
        env.names(),
        vec!["lab/a:1".to_string(), "lab/b:1".to_string()]
    );
}

/// Danger: a writer killed between linking its blob and committing its name leaves a file
/// nobody accounts for. The rule (docs/design.md): no name was ever committed for it, so
/// it is no one's image; `doctor` counts it, `verify` lists it, gc removes it.
#[test]
fn a_blob_left_by_a_killed_add_is_counted_by_doctor_and_removed_by_gc() {
    let env = Env::new();
    add(&env, "lab/a:1", b"image a\n");
    for point in ["add-staged", "add-blob-committed", "add-index-uncommitted"] {
        let f = env.file("k", format!("killed at {point}\n").as_bytes());
        let mut c = env.spawn_paused(point, None, &refs(&add_args(&f, "lab/k:1")));
        c.kill().unwrap();
        c.wait().unwrap();
        assert!(!env.names().contains(&"lab/k:1".to_string()), "{point}");
        let (blobs, _) = doctor_check(&mut env.cmd(), "blobs");
        assert_eq!(blobs["status"], "warn", "{point}: {blobs}");
        assert!(
            blobs["detail"]
                .as_str()
                .unwrap()
                .contains("1 of 2 image file(s)"),
            "{point}: {blobs}"
        );
        stdout_of(env.cmd().arg("gc"));
        let (blobs, _) = doctor_check(&mut env.cmd(), "blobs");
        assert_eq!(blobs["status"], "ok", "{point}: {blobs}");
        assert_eq!(blob_files(&env).len(), 1, "{point}");
    }
}

/// Free bytes on the filesystem of `dir`, for an unprivileged writer.
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is valid storage; statvfs fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Fill the filesystem of `dir` with a file of the user's, `filler`, to the last byte.
fn fill(filler: &Path) {
    use std::io::Write;
    let mut f = fs::File::create(filler).unwrap();
    let block = vec![0x77u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.write_all(&[0x77]);
    assert_eq!(free_bytes(filler.parent().unwrap()), 0);
}

/// Danger: a full disk wedged the cache. The index write of an `add` failed with ENOSPC and
/// left the blob behind, so the disk stayed full, and from then on `list`, `get`, `gc` and
/// `doctor --repair-index` all failed with ENOSPC (a reader after a failed writer must
/// repair the index, which writes), until someone deleted a file under `blobs/` by hand.
#[test]
fn an_add_that_fills_the_disk_takes_its_blob_out_and_the_cache_keeps_working() {
    if crate::common::skip_unless_root(
        "an_add_that_fills_the_disk_takes_its_blob_out_and_the_cache_keeps_working",
        "mounts a tmpfs",
    ) {
        return;
    }
    let env = Env::new();
    let fs_dir = env.path("small");
    let _fs = crate::common::Tmpfs::mount(&fs_dir, "4m");
    let cache = fs_dir.join("cache");
    let on = || {
        let mut c = env.cmd();
        c.env("SREGISTRY_CACHE", &cache);
        c
    };
    let mut kept = Vec::new();
    for (round, with_index) in [(0u8, false), (1, true)] {
        if with_index {
            // The second time the index exists: its write transaction fails at its commit.
            let first = env.file("first", b"the first image\n");
            kept.push(PathBuf::from(
                stdout_of(on().arg("add").arg(&first).args(["--name", "lab/first:1"])).trim(),
            ));
        }
        // Room for the file in tmp/, none for the index write that must name it.
        let free = free_bytes(&fs_dir);
        let big = env.file("big", &vec![0x42 + round; (free - 8192) as usize]);
        let out = on()
            .arg("add")
            .arg(&big)
            .args(["--name", "lab/big:1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("No space left") && err.contains("nothing was changed"),
            "{err}"
        );
        let files = |sub: &str| -> Vec<PathBuf> { walkdir(&cache.join("v1").join(sub)) };
        assert_eq!(files("blobs"), kept, "the failed add left its blob");
        assert_eq!(files("tmp"), Vec::<PathBuf>::new());
        assert!(
            free_bytes(&fs_dir) + (64 << 10) > free,
            "the space did not come back"
        );
        // Now the disk is full of someone else's file: reads still answer.
        fill(&fs_dir.join("filler"));
        let listed = stdout_of(on().args(["list", "--json"]));
        assert_eq!(listed.contains("lab/first:1"), with_index, "{listed}");
        let out = on().args(["get", "lab/big:1"]).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        fs::remove_file(fs_dir.join("filler")).unwrap();
    }
    let small = env.file("little", b"a small image\n");
    stdout_of(on().arg("add").arg(&small).args(["--name", "lab/small:1"]));
    stdout_of(on().arg("gc"));
    stdout_of(on().arg("verify"));
}

/// Danger: on a full disk, `get` and `list` must not need to write: a writer killed with
/// the index open for writing must leave nothing that a reader has to repair first.
#[test]
fn get_and_list_answer_on_a_full_disk_after_a_writer_died_mid_write() {
    if crate::common::skip_unless_root(
        "get_and_list_answer_on_a_full_disk_after_a_writer_died_mid_write",
        "mounts a tmpfs",
    ) {
        return;
    }
    let env = Env::new();
    let fs_dir = env.path("small");
    let _fs = crate::common::Tmpfs::mount(&fs_dir, "4m");
    let cache = fs_dir.join("cache");
    let on = || {
        let mut c = env.cmd();
        c.env("SREGISTRY_CACHE", &cache);
        c
    };
    let a = env.file("a", b"image a\n");
    let path = stdout_of(on().arg("add").arg(&a).args(["--name", "lab/a:1"]));
    // A writer killed with the index open for writing: the next open must repair it.
    let b = env.file("b", b"image b\n");
    let mut c = env.std_cmd();
    c.env("SREGISTRY_CACHE", &cache)
        .env("SREGISTRY_TEST_PAUSE", "add-index-uncommitted")
        .arg("add")
        .arg(&b)
        .args(["--name", "lab/b:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    crate::support::wait_for_pause(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    fill(&fs_dir.join("filler"));
    assert_eq!(stdout_of(on().args(["get", "lab/a:1"])), path);
    let listed = stdout_of(on().args(["list", "--json"]));
    assert!(
        listed.contains("lab/a:1") && !listed.contains("lab/b:1"),
        "{listed}"
    );
    // A gc with nothing to evict runs on the full disk too (one that must evict may need
    // room for its transaction: docs/design.md), and with room again all is as it was.
    stdout_of(on().arg("gc"));
    fs::remove_file(fs_dir.join("filler")).unwrap();
    stdout_of(on().arg("gc"));
    stdout_of(on().arg("verify"));
    assert_eq!(stdout_of(on().args(["get", "lab/a:1"])), path);
}

/// Every file under `dir` (sorted; none when it does not exist).
fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Danger, the other way: a repair that adopts the file of an add killed before its commit
/// (its staged file in `tmp/` still links it) names an image nobody was ever handed, and
/// says the repair found a problem when it found none.
#[test]
fn a_repair_leaves_a_killed_adds_blob_to_gc() {
    let env = Env::new();
    add(&env, "lab/a:1", b"image a\n");
    let f = env.file("k", b"killed before its name\n");
    let mut c = env.spawn_paused("add-staged", None, &refs(&add_args(&f, "lab/k:1")));
    c.kill().unwrap();
    c.wait().unwrap();
    assert_eq!(blob_files(&env).len(), 2);
    fs::remove_file(env.cache.join("v1/index.redb")).unwrap();
    let out = stdout_of(env.cmd().args(["doctor", "--repair-index"]));
    assert!(!out.contains("recovered/"), "{out}");
    assert_eq!(env.names(), vec!["lab/a:1".to_string()]);
    stdout_of(env.cmd().arg("gc"));
    assert_eq!(blob_files(&env).len(), 1);
}
