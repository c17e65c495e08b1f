//! A pull in progress against gc, verify and a full filesystem: the files a live pull is
//! writing in `tmp/` are neither removed nor reported whatever their age (they are under
//! its writer lock), a killed pull's leftovers go with the next gc after the grace period,
//! and a conversion stops before the cache's filesystem keeps less than
//! `SREGISTRY_MIN_FREE`. Real docker-registry, umoci-built images, real gc and verify
//! processes, SIGKILL at pause points, a real tmpfs.

use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::common::*;
use crate::images::{self, Layout};
use crate::registry::Registry;

fn docker(reg: &Registry, repo_tag: &str) -> String {
    format!("docker://{}/{repo_tag}", reg.addr)
}

/// A day from now, as `SREGISTRY_NOW` takes it: every `tmp/` file is past any grace.
fn a_day_later() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (now + 86_400).to_string()
}

fn registry_with_app(env: &Env) -> Registry {
    let reg = Registry::anonymous();
    let work = env.path("img");
    fs::create_dir_all(&work).unwrap();
    images::app_image(&work).push("app", &docker(&reg, "lab/app:1"), &[]);
    reg
}

/// The `ingest-*` files in `tmp/`.
fn ingest_files(env: &Env) -> Vec<std::path::PathBuf> {
    env.tmp_entries()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ingest-")
        })
        .collect()
}

fn writer_locks(env: &Env) -> Vec<String> {
    fs::read_dir(env.cache.join("v1/locks"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("writer-"))
                .collect()
        })
        .unwrap_or_default()
}

fn gc_json(env: &Env, args: &[&str]) -> serde_json::Value {
    let out = stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", a_day_later())
            .args(["gc", "--json"])
            .args(args),
    );
    serde_json::from_str(&out).unwrap()
}

/// Resume a paused pull and return its output.
fn resume(child: std::process::Child, file: &std::path::Path) -> std::process::Output {
    fs::write(file, b"").unwrap();
    child.wait_with_output().unwrap()
}

/// A gc run while a pull has downloaded its layers (and, later, while it has converted
/// its SIF), with a clock a day on and a grace of an hour, removes none of the pull's
/// files, which are all it could find; the pull then commits its image.
#[test]
fn gc_spares_a_live_pulls_files() {
    let env = Env::new();
    let reg = registry_with_app(&env);
    let reference = docker(&reg, "lab/app:1");
    for (i, point) in ["docker-downloaded", "docker-converted"].iter().enumerate() {
        let go = env.path(&format!("resume-{i}"));
        let child = env.spawn_paused(point, Some(&go), &["get".as_ref(), reference.as_ref()]);
        let held = ingest_files(&env);
        assert!(!held.is_empty(), "the pull paused at {point} holds no file");
        let report = gc_json(&env, &["--tmp-grace", "1h"]);
        assert_eq!(report["tmp_files"], 0, "at {point}: {report}");
        for f in &held {
            assert!(f.exists(), "gc removed `{}` at {point}", f.display());
        }
        let out = resume(child, &go);
        assert!(
            out.status.success(),
            "the pull paused at {point} failed after gc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(ingest_files(&env).is_empty(), "{:?}", env.tmp_entries());
        env.assert_blobs_verify();
        // The next round pulls again: the name is taken away first.
        env.cmd()
            .args(["rm", &format!("{}/lab/app:1", reg.addr)])
            .assert()
            .success();
        env.cmd().args(["gc", "-q"]).assert().success();
    }
}

/// verify, with a clock a day on and a grace of a second, does not report the files a
/// paused pull is writing as stray (nor recommend the gc that would break the pull).
#[test]
fn verify_does_not_report_a_live_pulls_files_as_stray() {
    let env = Env::new();
    let reg = registry_with_app(&env);
    let reference = docker(&reg, "lab/app:1");
    let go = env.path("resume");
    let child = env.spawn_paused(
        "docker-converted",
        Some(&go),
        &["get".as_ref(), reference.as_ref()],
    );
    assert!(!ingest_files(&env).is_empty());
    let out = env
        .cmd()
        .env("SREGISTRY_NOW", a_day_later())
        .args(["verify", "--json", "--tmp-grace", "1s"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!report.contains("stray-tmp"), "{report}");
    assert_eq!(out.status.code(), Some(0), "{report}");
    let out = resume(child, &go);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Four concurrent gets of four images, each converting a layer of 8 MiB, while gc runs
/// in a loop with `--max-size 1`, a grace of a second and a clock a day on (so every
/// `tmp/` file is past it, and every name idle): all four gets succeed.
#[test]
fn concurrent_gets_survive_a_looping_gc() {
    let env = Env::new();
    let (reg, mut l) = crate::docker::registry_with_busybox_base(&env);
    let mut rand = xorshift(20);
    for tag in ["a", "b", "c", "d"] {
        let data: Vec<u8> = (0..(8 << 20) / 8)
            .flat_map(|_| rand().to_le_bytes())
            .collect();
        l.layer("bb", tag, |root| {
            fs::write(root.join("data"), &data).unwrap()
        });
        l.push(tag, &docker(&reg, &format!("lab/big:{tag}")), &[]);
    }
    let done = Arc::new(AtomicBool::new(false));
    let gc_runs = Arc::new(AtomicU64::new(0));
    let looping = {
        let (done, gc_runs) = (done.clone(), gc_runs.clone());
        let mut gc = env.std_cmd();
        gc.env("SREGISTRY_NOW", a_day_later())
            .args(["gc", "-q", "--max-size", "1", "--tmp-grace", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                gc.status().unwrap();
                gc_runs.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let gets: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|tag| {
            env.std_cmd()
                .args(["get", &docker(&reg, &format!("lab/big:{tag}"))])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = gets
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    done.store(true, Ordering::SeqCst);
    looping.join().unwrap();
    assert!(gc_runs.load(Ordering::SeqCst) > 0);
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(ingest_files(&env).is_empty(), "{:?}", env.tmp_entries());
}

/// Invariant 5: a pull killed (SIGKILL) at a pause point leaves files in `tmp/`; a gc
/// while it lived kept them, the next gc after the grace period removes them, and the
/// dead writer's lock in `locks/` with them. A gc within the grace keeps them.
#[test]
fn a_killed_pulls_leftovers_go_with_the_next_gc_after_the_grace() {
    let env = Env::new();
    let reg = registry_with_app(&env);
    let reference = docker(&reg, "lab/app:1");
    let mut child = env.spawn_paused(
        "docker-converted",
        None,
        &["get".as_ref(), reference.as_ref()],
    );
    let mut held = ingest_files(&env);
    held.sort();
    assert!(held.len() >= 2, "{held:?}");
    assert_eq!(gc_json(&env, &["--tmp-grace", "1h"])["tmp_files"], 0);
    assert_eq!(writer_locks(&env).len(), 1, "{:?}", writer_locks(&env));
    child.kill().unwrap();
    child.wait().unwrap();
    // Within the grace period (real clock), the leftovers stay.
    let r: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["gc", "--json"]))).unwrap();
    assert_eq!(r["tmp_files"], 0, "{r}");
    let mut left = ingest_files(&env);
    left.sort();
    assert_eq!(left, held);
    // verify names them (past its grace) as what they are.
    let out = env
        .cmd()
        .env("SREGISTRY_NOW", a_day_later())
        .args(["verify", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stray-tmp"));
    // Past it, they go, and so does the dead writer's lock.
    let r = gc_json(&env, &["--tmp-grace", "1h"]);
    assert_eq!(r["tmp_files"], held.len(), "{r}");
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    assert!(writer_locks(&env).is_empty(), "{:?}", writer_locks(&env));
    env.cmd().args(["verify"]).assert().success();
    // And the pull works from scratch.
    env.cmd().args(["get", &reference]).assert().success();
}

/// The registry with `lab/big:1`: one layer of 200 MiB that is well under 1 MiB on the
/// wire (256 KiB of random bytes, repeated: zstd sees the repeats, mksquashfs' 128 KiB
/// blocks do not), so it converts into a squashfs of about 200 MB. Built with umoci,
/// recompressed and pushed with skopeo.
fn registry_with_big_image(env: &Env) -> Registry {
    let reg = Registry::anonymous();
    let work = env.path("img");
    fs::create_dir_all(&work).unwrap();
    let mut l = Layout::new(&work);
    l.layer("base", "big", |root| {
        let mut rand = xorshift(7);
        let chunk: Vec<u8> = (0..(256 << 10) / 8)
            .flat_map(|_| rand().to_le_bytes())
            .collect();
        let mut f = fs::File::create(root.join("big")).unwrap();
        for _ in 0..800 {
            f.write_all(&chunk).unwrap();
        }
    });
    l.push_zstd("big", &env.path("zstd-layout"), &docker(&reg, "lab/big:1"));
    reg
}

const RESERVE: u64 = 50 << 20;

/// Samples the free space of `dir` until dropped; the lowest value seen.
struct FreeSampler {
    lowest: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FreeSampler {
    fn start(dir: &std::path::Path) -> FreeSampler {
        let lowest = Arc::new(AtomicU64::new(free_bytes(dir)));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (lowest, done, dir) = (lowest.clone(), done.clone(), dir.to_path_buf());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    lowest.fetch_min(free_bytes(&dir), Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        FreeSampler {
            lowest,
            done,
            thread: Some(thread),
        }
    }

    fn lowest(mut self) -> u64 {
        self.done.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.lowest.load(Ordering::SeqCst)
    }
}

/// The failed pull's output is the usual one-line message naming the reserve, exit 1, and
/// it left nothing in `tmp/` or `blobs/`.
fn assert_stopped_for_space(env: &Env, out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not enough space") && stderr.contains("SREGISTRY_MIN_FREE"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    assert!(env.blobs().is_empty(), "{:?}", env.blobs());
}

/// In a 160 MiB tmpfs with `SREGISTRY_MIN_FREE=50M`, the pull of `lab/big:1` (a squashfs
/// of about 200 MB) fails with the usual message naming the reserve, exit 1, leaves
/// nothing behind, and the free space sampled while it ran never fell below the reserve
/// by more than 1 MiB: mksquashfs' file size limit is the room above the reserve, so the
/// only writes past it are the SIF header and config written after the squashfs (a few
/// KiB) and tmpfs' page rounding.
#[test]
fn a_conversion_stops_before_the_filesystem_keeps_less_than_the_reserve() {
    if skip_unless_root(
        "a_conversion_stops_before_the_filesystem_keeps_less_than_the_reserve",
        "mounts a tmpfs",
    ) {
        return;
    }
    let env = Env::new();
    let reg = registry_with_big_image(&env);
    let _mnt = Tmpfs::mount(&env.cache, "160m");
    let start_free = free_bytes(&env.cache);
    let sampler = FreeSampler::start(&env.cache);
    let out = env
        .cmd()
        .env("SREGISTRY_MIN_FREE", "50M")
        .args(["get", &docker(&reg, "lab/big:1")])
        .output()
        .unwrap();
    let lowest = sampler.lowest();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("lowest free {lowest} bytes (reserve {RESERVE}); {stderr}");
    assert!(
        lowest + (1 << 20) >= RESERVE,
        "free space fell to {lowest} bytes, below the reserve of {RESERVE}: {stderr}"
    );
    // It did write up to the reserve: the room ran out, nothing else stopped it.
    assert!(
        lowest < RESERVE + (8 << 20),
        "lowest free {lowest}: {stderr}"
    );
    assert_stopped_for_space(&env, &out);
    assert!(free_bytes(&env.cache) + (1 << 20) >= start_free);
}

/// Another writer takes the room while mksquashfs runs (a file written into the same
/// tmpfs once the conversion has started, leaving 10 MiB above the reserve): the watch
/// sees it and stops mksquashfs. The free space never falls more than 24 MiB below the
/// reserve: the watch looks every 20 ms, and mksquashfs, compressing random data on the
/// two cores of this machine, writes far less than that in 20 ms (without the watch it
/// writes until the filesystem is full).
#[test]
fn a_conversion_stops_when_another_writer_takes_the_room_meanwhile() {
    if skip_unless_root(
        "a_conversion_stops_when_another_writer_takes_the_room_meanwhile",
        "mounts a tmpfs",
    ) {
        return;
    }
    let env = Env::new();
    let reg = registry_with_big_image(&env);
    let _mnt = Tmpfs::mount(&env.cache, "160m");
    let go = env.path("resume");
    let mut c = env.std_cmd();
    c.env("SREGISTRY_MIN_FREE", "50M")
        .env("SREGISTRY_TEST_PAUSE", "mksquashfs-started")
        .env("SREGISTRY_TEST_RESUME", &go)
        .args(["get", &docker(&reg, "lab/big:1")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // Its stderr stays ours: the message comes after the pause.
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("paused at") {
        use std::io::Read;
        assert_eq!(err.read(&mut byte).unwrap(), 1, "ended before pausing");
        seen.push(byte[0]);
    }
    let filler = env.cache.join("filler");
    let take = free_bytes(&env.cache) - RESERVE - (10 << 20);
    let mut f = fs::File::create(&filler).unwrap();
    let block = vec![1u8; 1 << 20];
    for _ in 0..take >> 20 {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    let sampler = FreeSampler::start(&env.cache);
    fs::write(&go, b"").unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let lowest = sampler.lowest();
    // What follows the pause line.
    let rest = String::from_utf8_lossy(&rest);
    let after = rest.split_once('\n').map_or("", |(_, after)| after);
    let out = std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: after.as_bytes().to_vec(),
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("lowest free {lowest} bytes (reserve {RESERVE}); {stderr}");
    assert!(
        lowest + (24 << 20) >= RESERVE,
        "free space fell to {lowest} bytes, {RESERVE} kept: {stderr}"
    );
    fs::remove_file(&filler).unwrap();
    assert_stopped_for_space(&env, &out);
}

/// Free bytes (for an unprivileged user) of the filesystem at `p`.
fn free_bytes(p: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is valid; statvfs fills it for a valid path string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// An add paused with its file staged in `tmp/` (and linked into `blobs/`, not yet
/// named): verify and gc with a clock a day on and a grace of a second neither report
/// nor remove either (the link in `blobs/` is the same file as the live staged one), and
/// the add then names its image.
#[test]
fn gc_spares_a_staged_add() {
    let env = Env::new();
    let sif = env.sif("tool.sif", "tool");
    let go = env.path("resume");
    let child = env.spawn_paused(
        "add-staged",
        Some(&go),
        &[
            "add".as_ref(),
            sif.as_os_str(),
            "--name".as_ref(),
            "lab/tool:1".as_ref(),
        ],
    );
    let held = ingest_files(&env);
    assert_eq!(held.len(), 1, "{:?}", env.tmp_entries());
    assert_eq!(env.blobs().len(), 1, "the add did not place its blob");
    let out = env
        .cmd()
        .env("SREGISTRY_NOW", a_day_later())
        .args(["verify", "--json", "--tmp-grace", "1s"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = gc_json(&env, &["--tmp-grace", "1s"]);
    assert_eq!(report["tmp_files"], 0, "{report}");
    assert_eq!(report["blobs"], serde_json::json!([]), "{report}");
    assert!(held[0].exists());
    assert_eq!(env.blobs().len(), 1);
    let out = resume(child, &go);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.cmd().args(["get", "lab/tool:1"]).assert().success();
    env.assert_blobs_verify();
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
}
