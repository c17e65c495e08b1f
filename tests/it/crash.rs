//! SIGKILL during `add` at each stage: afterwards the cache opens, lists, and holds no
//! partial blob; the name is either fully there or not there at all.

use std::collections::BTreeMap;
use std::fs;
use std::process::Stdio;

use crate::common::*;
use crate::support::wait_for_pause;

fn kill_add_at(point: &str, size: usize) -> Env {
    let env = Env::new();
    let seed = env.file("seed.img", b"seed");
    stdout_of(env.cmd().arg("add").arg(&seed).args(["--name", "seed"]));
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let f = env.file("victim.img", &data);
    let mut child = env
        .std_cmd()
        .env("SREGISTRY_TEST_PAUSE", point)
        .arg("add")
        .arg(&f)
        .args(["--name", "victim"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_pause(&mut child);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    env
}

fn assert_consistent_after_crash(env: &Env, victim_expected: Option<bool>) {
    let names = env.names();
    assert!(names.contains(&"library/seed:latest".to_string()));
    let has_victim = names.contains(&"library/victim:latest".to_string());
    if let Some(expected) = victim_expected {
        assert_eq!(has_victim, expected, "names: {names:?}");
    }
    if has_victim {
        stdout_of(env.cmd().args(["get", "victim"]));
    } else {
        assert_fails(env.cmd().args(["get", "victim"]), 3, "no image");
    }
    stdout_of(env.cmd().args(["get", "seed"]));
    env.assert_blobs_verify();
    // Whatever the kill left is in tmp/ only (gc clears it after a grace period).
    for t in env.tmp_entries() {
        assert!(
            t.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("ingest-"),
            "{t:?}"
        );
    }
    // And the cache still takes new work.
    let again = env.file("after.img", b"after the crash");
    stdout_of(env.cmd().arg("add").arg(&again).args(["--name", "after"]));
}

#[test]
fn sigkill_mid_copy_leaves_no_partial_blob() {
    let env = kill_add_at("add-mid-copy", 40 << 20);
    assert_eq!(env.blobs().len(), 1, "a partial blob reached blobs/");
    assert_consistent_after_crash(&env, Some(false));
}

#[test]
fn sigkill_after_staging_leaves_no_name_and_only_complete_blobs() {
    let env = kill_add_at("add-staged", 4096);
    // The staged file may already be linked into blobs/ (complete, unreferenced: gc's to
    // remove); a name never landed.
    assert!(env.blobs().len() <= 2);
    assert_consistent_after_crash(&env, Some(false));
}

#[test]
fn sigkill_between_blob_and_name_leaves_only_an_unreferenced_blob() {
    let env = kill_add_at("add-blob-committed", 4096);
    // The blob is complete (gc removes it later, as unreferenced); the name never landed.
    assert_eq!(env.blobs().len(), 2);
    assert_consistent_after_crash(&env, Some(false));
}

#[test]
fn sigkill_inside_the_index_transaction_loses_only_that_add() {
    let env = kill_add_at("add-index-uncommitted", 4096);
    assert_consistent_after_crash(&env, Some(false));
}

/// Kill adds at random moments, many times: the cache stays consistent throughout and
/// every add that reported success is still there. The test proves that its kills land
/// inside adds: a killed run counts only if it left what an add in flight leaves (a file
/// in `tmp/`, a blob without its name, or its name committed just before the kill), and
/// it goes on until enough did. The kill delays are spread over the time an add takes
/// here, measured first and shortened whenever an add finishes before its kill.
#[test]
fn repeated_random_kills_during_add_never_corrupt_the_cache() {
    use std::collections::BTreeSet;
    use std::os::unix::process::ExitStatusExt;
    const WANTED: u64 = 24;
    const MAX_RUNS: u64 = 300;
    let env = Env::new();
    let inputs: Vec<_> = (0..8)
        .map(|i| {
            let data = format!("payload {i} ").repeat(20_000 + (i * 7919) % 50_000);
            env.file(&format!("r{i}.img"), data.as_bytes())
        })
        .collect();
    // How long an uninterrupted add takes here and now.
    let mut spans = Vec::new();
    for i in 0..3 {
        let t = std::time::Instant::now();
        stdout_of(
            env.cmd()
                .arg("add")
                .arg(&inputs[7])
                .args(["--name", &format!("calibrate/{i}")]),
        );
        spans.push(t.elapsed().as_micros() as u64);
    }
    spans.sort();
    let mut span = spans[1].max(500);
    let mut rand = xorshift(0x2545_F491_4F6C_DD1D);
    let state = |env: &Env| -> (BTreeSet<_>, BTreeSet<_>) {
        (
            env.tmp_entries().into_iter().collect(),
            env.blobs().into_iter().collect(),
        )
    };
    let mut done = Vec::new();
    let (mut runs, mut killed, mut in_flight) = (0u64, 0u64, 0u64);
    while in_flight < WANTED && runs < MAX_RUNS {
        runs += 1;
        let name = format!("rand/img{runs}");
        let before = state(&env);
        let mut child = env
            .std_cmd()
            .arg("add")
            .arg(&inputs[(runs % 8) as usize])
            .args(["--name", &name])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(rand() % span));
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let full = format!("{name}:latest");
        if out.status.success() {
            // Finished before the kill: aim earlier.
            span = (span * 7 / 8).max(200);
            done.push(full);
            continue;
        }
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "an add failed on its own: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        killed += 1;
        let after = state(&env);
        let left_work = after.0.difference(&before.0).next().is_some()
            || after.1.difference(&before.1).next().is_some();
        if left_work || env.names().contains(&full) {
            in_flight += 1;
        }
    }
    assert!(
        in_flight >= WANTED,
        "in {runs} runs only {in_flight} of {killed} kills landed inside an add (the others \
         before it touched the cache, the rest finished first)"
    );
    let names = env.names();
    for d in &done {
        assert!(names.contains(d), "{d} reported done but is gone");
    }
    env.assert_blobs_verify();
    for n in names {
        stdout_of(env.cmd().args(["get", &n]));
    }
}

/// Danger: an `add` interrupted by Ctrl-C, a batch system's time limit or a closed
/// terminal leaves its partial copy in `tmp/`, or loses the user's file. docs/commands.md:
/// "Interrupted by SIGINT, SIGTERM or SIGHUP, `pull` and `get` (and `add`) remove their
/// partial file from `tmp/` and end by that signal". The signal lands mid-copy, with the
/// partial file in `tmp/` (checked before it is sent).
#[test]
fn an_add_interrupted_by_sigint_sigterm_or_sighup_removes_its_partial_file() {
    use std::os::unix::process::ExitStatusExt;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let env = Env::new();
        let data: Vec<u8> = (0..40usize << 20).map(|i| (i % 251) as u8).collect();
        let f = env.file("victim.img", &data);
        let mut child = env.spawn_paused(
            "add-mid-copy",
            None,
            &[
                "add".as_ref(),
                f.as_os_str(),
                "--name".as_ref(),
                "victim".as_ref(),
            ],
        );
        let partial = env.tmp_entries();
        assert!(!partial.is_empty(), "paused mid-copy with nothing in tmp/");
        // SAFETY: kill(2) on the child's pid, which is still running (paused).
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "{status:?}");
        assert!(
            env.tmp_entries().is_empty(),
            "signal {sig} left {:?} in tmp/",
            env.tmp_entries()
        );
        assert!(env.blobs().is_empty(), "signal {sig}: a blob landed");
        assert!(env.names().is_empty(), "signal {sig}: a name landed");
        assert_eq!(
            std::fs::read(&f).unwrap(),
            data,
            "signal {sig}: the user's file changed"
        );
    }
}

/// One system call of an `strace -f -y -ttt -T` log: its name, its arguments as printed,
/// its result, and when it started and ended (seconds).
#[derive(Debug)]
struct Call {
    name: String,
    args: String,
    result: String,
    start: f64,
    end: f64,
}

/// The calls of an strace log, a call split by another thread ("<unfinished ...>" and
/// "<... resumed>") joined again.
fn strace_calls(log: &str) -> Vec<Call> {
    let mut open: BTreeMap<String, (String, String, f64)> = BTreeMap::new();
    let mut calls = Vec::new();
    let duration = |tail: &str| -> f64 {
        let d = tail.rsplit_once('<').expect("strace -T duration").1;
        d.trim_end_matches('>').parse().expect("duration")
    };
    for line in log.lines() {
        // `PID TIME CALL`, the PID padded to a width (its spaces vary with its digits).
        let mut words = line.trim_start().splitn(2, char::is_whitespace);
        let (Some(pid), Some(rest)) = (words.next(), words.next()) else {
            continue;
        };
        let mut words = rest.trim_start().splitn(2, char::is_whitespace);
        let (Some(ts), Some(rest)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("<... ") {
            let (name, tail) = r.split_once(" resumed>").expect("resumed line");
            let (_, args, start) = open.remove(pid).expect("a resumed call was started");
            let result = tail.rsplit_once(") = ").map_or("", |x| x.1);
            calls.push(Call {
                name: name.to_string(),
                args: args + tail,
                result: result.split(' ').next().unwrap_or("").to_string(),
                start,
                end: start + duration(tail),
            });
        } else if let Some((head, _)) = rest.split_once(" <unfinished ...>") {
            let (name, args) = head.split_once('(').expect("a call");
            open.insert(pid.to_string(), (name.to_string(), args.to_string(), ts));
        } else if let Some((name, args)) = rest.split_once('(') {
            let Some((args, tail)) = args.rsplit_once(") = ") else {
                continue;
            };
            calls.push(Call {
                name: name.to_string(),
                args: args.to_string(),
                result: tail.split(' ').next().unwrap_or("").to_string(),
                start: ts,
                end: ts + duration(tail),
            });
        }
    }
    calls
}

/// The blob `add` stores reaches the disk before the index names it: the staged copy's
/// fsync, then its link into `blobs/`, then the fsync of its directory, all done before
/// the index's header names the commit (the write that swaps its slots, after the
/// commit's first flush; see `cache::index::backend`). `add` runs these fsyncs on a thread
/// of their own while it takes the index lock, writes its records and the journal's line
/// and makes the commit's first phase durable; this holds it to the order a crash needs. (The journal's line is not flushed and may come first: a line whose commit
/// never became durable is voided by the next writer, see docs/design.md.) Watched with
/// strace, on a new fan-out directory and an old one.
#[test]
fn add_makes_its_blob_durable_before_the_index_names_it() {
    let env = Env::new();
    let seed = env.file("seed.img", b"seed");
    stdout_of(env.cmd().arg("add").arg(&seed).args(["--name", "seed"]));
    for i in 0..2 {
        let f = env.file(
            &format!("x{i}.img"),
            format!("durable {i}").repeat(999).as_bytes(),
        );
        let log = env.path(&format!("strace{i}.log"));
        let bin = env.std_cmd();
        let mut c = std::process::Command::new("strace");
        c.args(["-f", "-y", "-ttt", "-T", "-qq", "-e"])
            .arg("trace=fsync,fdatasync,linkat,write,pwrite64")
            .arg("-o")
            .arg(&log)
            .arg(bin.get_program())
            .arg("add")
            .arg(&f)
            .args(["--name", &format!("x/{i}")]);
        for (k, v) in bin.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let out = c
            .output()
            .expect("strace (scripts/install-deps.sh test installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let calls = strace_calls(&fs::read_to_string(&log).unwrap());
        let one = |what: &str, pick: &dyn Fn(&Call) -> bool| -> &Call {
            let found: Vec<&Call> = calls.iter().filter(|c| pick(c)).collect();
            assert!(!found.is_empty(), "no {what} in {calls:#?}");
            found[0]
        };
        let staged = one("fsync of the staged copy", &|c| {
            c.name == "fsync" && c.args.contains("/v1/tmp/ingest-") && c.result == "0"
        });
        let link = one("link into blobs/", &|c| {
            c.name == "linkat" && c.args.contains("/v1/blobs/blake3/") && c.result == "0"
        });
        let fan = link.args.rsplit_once("/v1/blobs/blake3/").unwrap().1[..2].to_string();
        let dir = one("fsync of the fan-out directory", &|c| {
            c.name == "fsync" && c.args.contains(&format!("/v1/blobs/blake3/{fan}>"))
        });
        // The commit's first phase (its pages, the new commit in the header's secondary
        // slot) may reach the disk while the blob is placed; the header write that swaps
        // the slots, the first header write after that flush, names it.
        let flush = one("index flush", &|c| {
            c.name == "fdatasync" && c.args.contains("/v1/index.redb>")
        });
        let publish = one("header write after the first index flush", &|c| {
            c.name == "pwrite64"
                && c.args.contains("/v1/index.redb>")
                && c.args.split(") = ").next().unwrap().ends_with(", 0")
                && c.start >= flush.end
        });
        assert!(
            staged.end <= link.start,
            "linked before durable: {staged:?} {link:?}"
        );
        assert!(link.end <= dir.start, "{link:?} {dir:?}");
        assert!(
            dir.end <= publish.start,
            "named before durable: {dir:?} {publish:?}"
        );
    }
    assert_eq!(env.names().len(), 3);
    env.assert_blobs_verify();
}

/// A staged copy whose fsync fails (EIO, injected: the thread that places it in the
/// background reports it as the commit's first flush begins) is never named: the add
/// fails with exit 1 and the write error, nothing of it stays in `blobs/` or `tmp/`, the
/// journal's line for it is void, and the cache goes on as before.
#[test]
fn an_add_whose_staged_copy_cannot_reach_the_disk_names_nothing() {
    let env = Env::new();
    let seed = env.file("seed.img", b"seed");
    stdout_of(env.cmd().arg("add").arg(&seed).args(["--name", "seed"]));
    let f = env.file("victim.img", &b"never durable".repeat(300));
    let out = env
        .cmd()
        .env("SREGISTRY_TEST_FAIL", "staged-fsync")
        .arg("add")
        .arg(&f)
        .args(["--name", "victim"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fsync of the staged copy failed"),
        "{stderr}"
    );
    assert_eq!(env.names(), vec!["library/seed:latest".to_string()]);
    assert_eq!(env.blobs().len(), 1, "a blob of the failed add stayed");
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    let journal = fs::read_to_string(env.cache.join("v1/index.journal")).unwrap();
    let last = journal.lines().last().unwrap();
    assert!(last.contains("\"void\":true"), "{journal}");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "victim"]));
    assert_eq!(env.names().len(), 2);
    stdout_of(env.cmd().arg("verify"));
    let doctor = env.cmd().args(["doctor", "--json"]).output().unwrap();
    assert!(
        doctor.status.success(),
        "{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
}
