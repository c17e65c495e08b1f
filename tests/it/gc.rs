//! gc: each policy, dry runs, what must survive, and gc racing the writers and readers.

use std::fs;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;

const T0: u64 = 2_000_000_000;
const DAY: u64 = 86_400;

fn at(env: &Env, t: u64) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.env("SREGISTRY_NOW", t.to_string());
    c
}

/// A cache with four 1000-byte images added at T0, used at different times.
fn aged_cache() -> Env {
    let env = Env::new();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let f = env.file(&format!("{name}.img"), &vec![i as u8 + 1; 1000]);
        stdout_of(at(&env, T0).arg("add").arg(&f).args(["--name", name]));
    }
    // Uses: a never again, b at +10 d, c at +20 d, d at +29 d.
    stdout_of(at(&env, T0 + 10 * DAY).args(["get", "b"]));
    stdout_of(at(&env, T0 + 20 * DAY).args(["get", "c"]));
    stdout_of(at(&env, T0 + 29 * DAY).args(["get", "d"]));
    env
}

fn gc_json(env: &Env, t: u64, args: &[&str]) -> serde_json::Value {
    let out = stdout_of(at(env, t).args(["gc", "--json"]).args(args));
    serde_json::from_str(&out).unwrap()
}

fn removed_names(v: &serde_json::Value) -> Vec<String> {
    v["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn gc_max_age_removes_names_unused_that_long() {
    let env = aged_cache();
    let v = gc_json(&env, T0 + 30 * DAY, &["--max-age", "15d"]);
    assert_eq!(removed_names(&v), ["library/a:latest", "library/b:latest"]);
    assert_eq!(v["blobs"].as_array().unwrap().len(), 2);
    assert_eq!(v["bytes_freed"], 2000);
    assert_eq!(env.names(), ["library/c:latest", "library/d:latest"]);
    assert_eq!(env.blobs().len(), 2);
    assert!(env.tmp_entries().is_empty(), "victims left in tmp/");
}

#[test]
fn gc_max_size_evicts_least_recently_used_until_it_fits() {
    let env = aged_cache();
    let v = gc_json(&env, T0 + 30 * DAY, &["--max-size", "2500"]);
    assert_eq!(removed_names(&v), ["library/a:latest", "library/b:latest"]);
    assert_eq!(v["bytes_kept"], 2000);
    assert_eq!(v["over_budget"], false);
    assert_eq!(env.blobs().len(), 2);
}

#[test]
fn gc_keeps_pinned_names_and_names_used_recently() {
    let env = aged_cache();
    stdout_of(at(&env, T0 + 30 * DAY).args(["pin", "a"]));
    // d was used 1 day before; with --min-idle 2d it must stay even at size 0.
    let v = gc_json(
        &env,
        T0 + 30 * DAY,
        &["--max-size", "0", "--min-idle", "2d"],
    );
    assert_eq!(removed_names(&v), ["library/b:latest", "library/c:latest"]);
    assert_eq!(v["over_budget"], true);
    assert_eq!(env.names(), ["library/a:latest", "library/d:latest"]);
}

#[test]
fn gc_keeps_names_used_recently_by_default() {
    let env = aged_cache();
    // Everything was used or added within the hour before: the default --min-idle keeps all.
    let v = gc_json(
        &env,
        T0 + 29 * DAY + 60,
        &["--max-size", "0", "--max-age", "1s"],
    );
    assert_eq!(
        removed_names(&v),
        ["library/a:latest", "library/b:latest", "library/c:latest"]
    );
    assert_eq!(env.names(), ["library/d:latest"]);
}

#[test]
fn gc_dry_run_changes_nothing() {
    let env = aged_cache();
    let before = env.snapshot();
    let v = gc_json(&env, T0 + 30 * DAY, &["--max-size", "0", "--dry-run"]);
    assert_eq!(v["dry_run"], true);
    assert_eq!(removed_names(&v).len(), 4);
    assert_eq!(env.snapshot(), before);
}

#[test]
fn gc_always_removes_unreferenced_blobs_and_old_tmp_files_but_not_young_ones() {
    let env = Env::new();
    let v1 = env.file("v1.img", b"old content");
    let v2 = env.file("v2.img", b"new content");
    stdout_of(env.cmd().arg("add").arg(&v1).args(["--name", "x"]));
    stdout_of(env.cmd().arg("add").arg(&v2).args(["--name", "x"]));
    assert_eq!(env.blobs().len(), 2);
    // A leftover of a killed add, and an orphan blob file the index never knew.
    let tmp_file = env.cache.join("v1/tmp/ingest-999-leftover");
    fs::write(&tmp_file, b"partial").unwrap();
    let orphan_digest = sregistry::Digest::of(b"orphan");
    let orphan_dir = env
        .cache
        .join(format!("v1/blobs/blake3/{}", &orphan_digest.hex()[..2]));
    fs::create_dir_all(&orphan_dir).unwrap();
    fs::write(orphan_dir.join(orphan_digest.hex()), b"orphan").unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Young tmp file: kept.
    let v = gc_json(&env, now, &[]);
    assert_eq!(v["tmp_files"], 0);
    assert!(tmp_file.exists(), "an in-flight tmp file was removed");
    // The orphan goes; the old content of `x` stays for --min-idle after the name was
    // re-pointed (a job may have been handed it: tests/it/names.rs).
    assert_eq!(v["blobs"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(env.blobs().len(), 2);
    // Seven hours later the tmp file is stale, and the old content is no one's.
    let v = gc_json(&env, now + 7 * 3600, &[]);
    assert_eq!(v["tmp_files"], 1);
    assert!(!tmp_file.exists());
    assert_eq!(v["blobs"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(env.blobs().len(), 1);
    assert_eq!(
        fs::read(stdout_of(env.cmd().args(["get", "x"]))).unwrap(),
        b"new content"
    );
}

#[test]
fn gc_quiet_prints_nothing_and_text_output_summarises() {
    let env = aged_cache();
    let out = at(&env, T0 + 30 * DAY)
        .args(["gc", "-q", "--max-age", "15d"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let out = at(&env, T0 + 40 * DAY)
        .args(["gc", "--max-age", "15d"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed library/c:latest (max-age"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1000 B freed"),
        "{out:?}"
    );
}

#[test]
fn gc_refuses_bad_sizes_and_durations_with_usage_errors() {
    let env = aged_cache();
    for args in [
        &["--max-size", "lots"][..],
        &["--max-age", "1.5h"],
        &["--min-idle", ""],
    ] {
        let out = env.cmd().arg("gc").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not understood"));
    }
}

/// Adds of content that gc keeps collecting, racing repeated gc: no name may ever point
/// to a missing blob.
#[test]
fn gc_racing_adds_of_the_same_content_never_leaves_a_dangling_name() {
    let env = Env::new();
    let f = env.file("same.img", &vec![42u8; 64 * 1024]);
    let adder = {
        let cmds: Vec<_> = (0..40)
            .map(|i| {
                let mut add = env.std_cmd();
                add.arg("add")
                    .arg(&f)
                    .args(["--name", &format!("race/n{i}")]);
                let mut rm = env.std_cmd();
                rm.args(["rm", "--keep-blob", &format!("race/n{}", i)]);
                (i, add, rm)
            })
            .collect();
        std::thread::spawn(move || {
            for (i, mut add, mut rm) in cmds {
                let out = add.output().unwrap();
                assert!(
                    out.status.success(),
                    "add {i}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                // Leave every third name in place; drop the rest so the blob is unreferenced again.
                if i % 3 != 0 {
                    let out = rm.output().unwrap();
                    assert!(
                        out.status.success(),
                        "rm {i}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        })
    };
    let mut gcs = 0;
    while !adder.is_finished() {
        let out = env.std_cmd().args(["gc", "-q"]).output().unwrap();
        assert!(
            out.status.success(),
            "gc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        gcs += 1;
        for n in env.names() {
            // The adder may remove a name between list and get (exit 3); what must never
            // happen is a name whose blob is gone (exit 1).
            let out = env.cmd().args(["get", &n]).output().unwrap();
            match out.status.code() {
                Some(0) => {
                    let p = String::from_utf8(out.stdout).unwrap();
                    assert!(std::path::Path::new(p.trim()).is_file(), "{n}: {p}");
                }
                Some(3) => {}
                _ => panic!("{n}: {}", String::from_utf8_lossy(&out.stderr)),
            }
        }
    }
    adder.join().unwrap();
    assert!(gcs > 3, "gc hardly ran ({gcs})");
    let names = env.names();
    assert_eq!(names.len(), 14);
    for n in names {
        stdout_of(env.cmd().args(["get", &n]));
    }
    env.assert_blobs_verify();
}

/// 64 concurrent readers while a writer adds and gc runs: every get succeeds. The writer's
/// names are added as if two hours ago, so each `gc --max-size 0` really evicts them (their
/// blobs are gone once it exits) while the name the readers use is kept by its recorded
/// uses (`--min-idle` 1h), not by luck: gc deletes while the gets run.
#[test]
fn concurrent_gets_never_fail_while_a_writer_adds_and_gc_runs() {
    let env = Env::new();
    let f = env.file("hot.img", b"hot image");
    let hot = stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "hot"]));
    let inputs: Vec<_> = (0..10)
        .map(|i| env.file(&format!("w{i}.img"), format!("w{i}").as_bytes()))
        .collect();
    let writer_env = inputs.clone();
    let cache = env.cache.clone();
    let bin = env!("CARGO_BIN_EXE_sregistry");
    let two_hours_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 7200;
    let writer = std::thread::spawn(move || {
        let mut evicted = 0;
        for (i, f) in writer_env.iter().enumerate() {
            let out = std::process::Command::new(bin)
                .env("SREGISTRY_CACHE", &cache)
                .env("SREGISTRY_NOW", two_hours_ago.to_string())
                .arg("add")
                .arg(f)
                .args(["--name", &format!("w/{i}")])
                .output()
                .unwrap();
            assert!(out.status.success());
            let added = String::from_utf8(out.stdout).unwrap().trim().to_string();
            assert!(std::path::Path::new(&added).exists());
            let out = std::process::Command::new(bin)
                .env("SREGISTRY_CACHE", &cache)
                .args(["gc", "-q", "--max-size", "0"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if !std::path::Path::new(&added).exists() {
                evicted += 1;
            }
        }
        evicted
    });
    let readers: Vec<_> = (0..64)
        .map(|_| {
            env.std_cmd()
                .args(["get", "hot"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for r in readers {
        let out = r.wait_with_output().unwrap();
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || path != hot {
            failures.push(String::from_utf8_lossy(&out.stderr).to_string());
        }
    }
    let evicted = writer.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} gets failed: {failures:?}",
        failures.len()
    );
    assert_eq!(evicted, 10, "gc --max-size 0 left the idle names' blobs");
    assert_eq!(env.names(), ["library/hot:latest"]);
    assert_eq!(fs::read(&hot).unwrap(), b"hot image");
}

/// What a command may leave in the cache when killed: the files in `tmp/` and `blobs/`,
/// and the journal's length.
struct Traces {
    files: std::collections::BTreeSet<std::path::PathBuf>,
    journal: u64,
}

impl Traces {
    /// Whether anything was written since `before`: a new file, or journal lines.
    fn touched_since(&self, before: &Traces) -> bool {
        self.journal != before.journal || !self.files.is_subset(&before.files)
    }
}

fn traces(env: &Env) -> Traces {
    let mut files: std::collections::BTreeSet<_> = env.tmp_entries().into_iter().collect();
    files.extend(env.blobs());
    let journal = fs::metadata(env.cache.join("v1/index.journal")).map_or(0, |m| m.len());
    Traces { files, journal }
}

/// Kill add and gc at random moments, many times: afterwards a gc and a verify are clean
/// and every add that reported success is still there. Only kills that landed after the
/// command wrote into the cache are counted, and enough of them must have. `SREGISTRY_CRASH_ITERATIONS`
/// raises the count for a long run (`make soak`).
#[test]
fn crash_loop_of_killed_adds_and_gcs_leaves_a_verifiable_cache() {
    let iterations: u64 = std::env::var("SREGISTRY_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let env = Env::new();
    let inputs: Vec<_> = (0..8)
        .map(|i| env.file(&format!("c{i}.img"), &vec![i as u8; 32 * 1024 * (i + 1)]))
        .collect();
    let mut done = std::collections::BTreeSet::new();
    let mut killed = 0u64;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Calibrate: how long an uninterrupted add takes here and now, so kills land inside
    // commands whatever the machine's speed or load.
    let mut spans = Vec::new();
    for i in 0..3 {
        let t = std::time::Instant::now();
        let out = env
            .std_cmd()
            .arg("add")
            .arg(&inputs[7])
            .args(["--name", &format!("calibrate/{i}")])
            .output()
            .unwrap();
        assert!(out.status.success());
        spans.push(t.elapsed().as_micros() as u64);
    }
    // The median of the last three uninterrupted adds, so the kills follow the machine's
    // load as it changes (a kill that lands before the command touches the cache does not
    // count).
    let median = |spans: &[u64]| {
        let mut last: Vec<u64> = spans[spans.len() - 3..].to_vec();
        last.sort();
        last[1].max(500)
    };
    for i in 0..iterations {
        let span = median(&spans);
        let r = rand();
        let name = format!("crash/n{}", r % 16);
        let mut cmd = env.std_cmd();
        if r % 4 == 0 {
            cmd.args(["gc", "-q", "--tmp-grace", "0"]);
        } else {
            cmd.arg("add")
                .arg(&inputs[(r % 8) as usize])
                .args(["--name", &name]);
        }
        let before = traces(&env);
        let started = std::time::Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // One in eight runs to completion; the rest are killed somewhere inside.
        if i % 8 != 0 {
            std::thread::sleep(std::time::Duration::from_micros(rand() % span));
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        if i % 8 == 0 && r % 4 != 0 && out.status.success() {
            spans.push(started.elapsed().as_micros() as u64);
        }
        use std::os::unix::process::ExitStatusExt;
        // A kill counts only if it landed after the command had touched the cache: it
        // left a file in tmp/ or blobs/ that was not there, or a journal line.
        if out.status.signal().is_some() && traces(&env).touched_since(&before) {
            killed += 1;
        }
        if out.status.success() && r % 4 != 0 {
            done.insert((i, format!("{name}:latest")));
        } else if let Some(code) = out.status.code().filter(|&c| c != 0) {
            panic!(
                "a command failed on its own (exit {code}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // What a nightly cron would do, then the weekly check.
    let out = env
        .std_cmd()
        .args(["gc", "-q", "--tmp-grace", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env
        .std_cmd()
        .args(["verify", "--tmp-grace", "1h"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify after the crash loop: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // gc here evicts no names, so every name an add reported done must be there.
    let names = env.names();
    for (_, n) in &done {
        assert!(names.contains(n), "{n} was reported added but is gone");
    }
    for n in &names {
        stdout_of(env.cmd().args(["get", n]));
    }
    assert!(
        !done.is_empty(),
        "no add ever completed; the kill timing is off"
    );
    assert!(
        killed >= iterations / 10,
        "only {killed} of {iterations} were killed after touching the cache"
    );
    env.assert_blobs_verify();
}

/// gc killed inside its transaction, or right after its commit: no name is ever left
/// pointing at a file gc already moved away (a `get` would then fail with "missing");
/// at most an unreferenced file stays, which the next gc removes.
#[test]
fn a_gc_killed_around_its_commit_never_leaves_a_name_without_its_file() {
    for point in ["gc-uncommitted", "gc-committed"] {
        let env = aged_cache();
        let names = env.names();
        let mut gc = env
            .std_cmd()
            .env("SREGISTRY_NOW", (T0 + 400 * DAY).to_string())
            .env("SREGISTRY_TEST_PAUSE", point)
            .args(["gc", "--max-size", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        crate::support::wait_for_pause(&mut gc);
        gc.kill().unwrap();
        gc.wait().unwrap();
        for n in env.names() {
            let out = env.cmd().args(["get", &n]).output().unwrap();
            assert!(
                out.status.success(),
                "{point}: `{n}` is indexed but get fails: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if point == "gc-uncommitted" {
            assert_eq!(env.names(), names, "an uncommitted gc changed the names");
        } else {
            assert!(env.names().is_empty(), "the committed gc removed nothing");
            assert_eq!(env.blobs().len(), 4, "the files go only after the commit");
        }
        stdout_of(at(&env, T0 + 400 * DAY).args(["gc", "-q", "--max-size", "0"]));
        assert!(env.names().is_empty());
        assert!(
            env.blobs().is_empty(),
            "the next gc left files: {:?}",
            env.blobs()
        );
        let out = env.cmd().args(["verify"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Danger: `get` waits while gc deletes files (minutes for many large images on NFS).
/// docs/shared-cache.md: "`get` waits at most for gc's index transaction (milliseconds to
/// a second or two on a very large cache), never for its file deletions." gc is held
/// after its commit with the evicted image moved aside in `tmp/` and not yet deleted;
/// meanwhile `get` of a kept name prints its path without waiting, `get` of the evicted
/// name says it is gone, and an `add` lands; then gc finishes the deletion.
#[test]
fn get_never_waits_for_gcs_deletions() {
    let env = Env::new();
    let now = T0 + 400 * DAY;
    let old = env.file("old.img", &[7u8; 4096]);
    let old_path = env.add_at(T0, &old, "old");
    let hot = env.file("hot.img", b"hot");
    let hot_path = env.add_at(now, &hot, "hot");
    let resume = env.path("resume");
    let mut gc = env
        .std_cmd()
        .env("SREGISTRY_NOW", now.to_string())
        .env("SREGISTRY_TEST_PAUSE", "gc-deleting")
        .env("SREGISTRY_TEST_RESUME", &resume)
        .args(["gc", "--max-size", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_for_pause(&mut gc);
    assert!(!std::path::Path::new(&old_path).exists());
    let aside: Vec<_> = env
        .tmp_entries()
        .into_iter()
        .filter(|p| fs::read(p).is_ok_and(|b| b == [7u8; 4096]))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the evicted file is not waiting for deletion"
    );

    let quick = |args: &[&str]| {
        at(&env, now)
            .env("SREGISTRY_LOCK_TIMEOUT", "60")
            .args(args)
            .output()
            .unwrap()
    };
    let out = quick(&["get", "hot"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("waiting for"), "get waited: {err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hot_path);
    let out = quick(&["get", "old"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = env.file("new.img", b"added while gc deletes");
    let out = quick(&["add", new.to_str().unwrap(), "--name", "new"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("waiting for"),
        "{err}"
    );
    assert!(aside[0].exists(), "the deletion was not still pending");

    fs::write(&resume, b"").unwrap();
    let out = gc.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert!(!aside[0].exists(), "gc did not finish its deletion");
    assert_eq!(env.names(), ["library/hot:latest", "library/new:latest"]);
}

/// Danger: gc removes an image a running job is reading, and the job reads garbage or
/// a short file. docs/shared-cache.md: "A job that has an image open keeps reading it
/// even if gc removes its name: the file is renamed aside and unlinked, and Unix keeps an
/// open file's data until it is closed." A job (a shell) opens the image, reads its first
/// MiB, and waits; gc evicts the image and deletes its file; the job reads the rest, and
/// the two parts are the image, whole.
#[test]
fn a_job_reading_an_image_gc_removes_keeps_reading_it_whole() {
    use std::io::{BufRead, BufReader, Write};
    let env = Env::new();
    let data: Vec<u8> = (0..24usize << 20).map(|i| (i % 241) as u8).collect();
    let f = env.file("job.img", &data);
    let path = env.add_at(T0, &f, "job");
    let (first, rest) = (env.path("first"), env.path("rest"));
    let mut job = std::process::Command::new("sh")
        .args([
            "-c",
            "exec 3<\"$1\"; dd bs=1M count=1 <&3 >\"$2\" 2>/dev/null; echo ready; read go; cat <&3 >\"$3\"",
            "job",
        ])
        .arg(&path)
        .arg(&first)
        .arg(&rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(job.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    stdout_of(at(&env, T0 + 400 * DAY).args(["gc", "-q", "--max-size", "0"]));
    assert!(env.names().is_empty(), "gc did not evict the image");
    assert!(
        !std::path::Path::new(&path).exists(),
        "the file is still there"
    );
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    job.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(job.wait().unwrap().success());
    let mut read = fs::read(&first).unwrap();
    assert_eq!(read.len(), 1 << 20, "the job's first read");
    read.extend(fs::read(&rest).unwrap());
    assert!(
        read == data,
        "the job read {} bytes, not the image",
        read.len()
    );
}

/// Danger: a gc that removes what a link names. In a shared cache a member can swap
/// `blobs/blake3/` or `tmp/` for a link (to another user's private cache, say) between gc's
/// listing and its removals: gc then moved the files the link named into `tmp/` and
/// deleted them, and removed what `tmp/`'s link named (found by a hostile test). gc is
/// held after its commit; both are swapped for links to directories holding files of the
/// very names gc removes; gc goes on: every one of those files is still there.
#[test]
fn gc_removes_nothing_through_a_directory_swapped_for_a_link() {
    let env = aged_cache();
    let v1 = env.cache.join("v1");
    let blobs = v1.join("blobs/blake3");
    let stale = v1.join("tmp/ingest-left-behind");
    fs::write(&stale, b"a leftover").unwrap();
    run(std::process::Command::new("touch")
        .arg("-d")
        .arg(format!("@{T0}"))
        .arg(&stale));
    // The victims: copies of the blob tree and of tmp/, elsewhere.
    let victim = env.path("victim");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        run(std::process::Command::new("cp").arg("-a").arg(from).arg(to));
    };
    fs::create_dir(&victim).unwrap();
    copy(&blobs, &victim.join("blake3"));
    copy(&v1.join("tmp"), &victim.join("tmp"));
    let before = walk(&victim);
    assert!(before.iter().filter(|p| p.is_file()).count() >= 5);
    let resume = env.path("resume");
    let mut gc = env
        .std_cmd()
        .env("SREGISTRY_NOW", (T0 + 400 * DAY).to_string())
        .env("SREGISTRY_TEST_PAUSE", "gc-committed")
        .env("SREGISTRY_TEST_RESUME", &resume)
        .args(["gc", "--max-size", "0", "--tmp-grace", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_for_pause(&mut gc);
    fs::rename(&blobs, v1.join("blobs/blake3.x")).unwrap();
    std::os::unix::fs::symlink(victim.join("blake3"), &blobs).unwrap();
    fs::rename(v1.join("tmp"), v1.join("tmp.x")).unwrap();
    std::os::unix::fs::symlink(victim.join("tmp"), v1.join("tmp")).unwrap();
    fs::write(&resume, "").unwrap();
    gc.wait().unwrap();
    assert_eq!(walk(&victim), before, "gc removed files through a link");
}
