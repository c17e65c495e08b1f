//! Shared helpers: a temp cache per test, real SIF files from `siftool`, cache snapshots.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};

use assert_cmd::Command;

/// The peer corpus of real SIF files, used in place (never copied into the repo).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/sif-peer")
}

/// A temporary directory holding a cache (`cache/`) and input files.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub cache: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = dir.path().join("cache");
        Env { dir, cache }
    }

    /// `sregistry` with this cache, and no influence from the caller's environment.
    pub fn cmd(&self) -> Command {
        Command::from_std(self.scrubbed())
    }

    /// The same as a plain `std::process::Command`, for spawning many at once.
    pub fn std_cmd(&self) -> StdCommand {
        let mut c = self.scrubbed();
        c.stdin(Stdio::null());
        c
    }

    /// The binary with this cache; credentials and configuration files come only from
    /// this test's own directories (`etc/config.toml` in place of
    /// `/etc/sregistry/config.toml`, `xdg/sregistry/config.toml`; none exists unless the
    /// test writes it), and no setting of the caller's environment leaks in.
    fn scrubbed(&self) -> StdCommand {
        let mut c = StdCommand::new(env!("CARGO_BIN_EXE_sregistry"));
        c.env("SREGISTRY_CACHE", &self.cache)
            .env("SREGISTRY_CONFIG_DIR", self.dir.path().join("config"))
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env(
                "SREGISTRY_TEST_SYSTEM_CONFIG",
                self.dir.path().join("etc/config.toml"),
            )
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"));
        for var in [
            "SREGISTRY_CONFIG",
            "SREGISTRY_PASSWORD",
            "SREGISTRY_NOW",
            "SREGISTRY_LOCK",
            "SREGISTRY_TEST_PAUSE",
            "SREGISTRY_TEST_FAIL",
            "SREGISTRY_LOCK_TIMEOUT",
            "SREGISTRY_MAX_DOWNLOAD",
            "SREGISTRY_MIN_FREE",
            "SREGISTRY_TIMEOUT",
            "SREGISTRY_RETRIES",
            "SREGISTRY_DATABASE",
            "SREGISTRY_STORAGE",
            "SREGISTRY_OFFLINE",
            "SREGISTRY_TIERS",
        ] {
            c.env_remove(var);
        }
        c
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a plain input file.
    pub fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, content).expect("write input");
        p
    }

    /// Build a real SIF with `siftool`: one squashfs system partition (amd64) holding
    /// `payload`, plus a definition file.
    pub fn sif(&self, name: &str, payload: &str) -> PathBuf {
        let work = self.path(&format!("{name}.d"));
        let root = work.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("payload.txt"), payload).unwrap();
        let sqfs = work.join("fs.sqfs");
        run(StdCommand::new("mksquashfs").arg(&root).arg(&sqfs).args([
            "-noappend",
            "-quiet",
            "-all-root",
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
        ]));
        let def = work.join("def");
        fs::write(&def, format!("Bootstrap: scratch\n# {payload}\n")).unwrap();
        let out = self.path(name);
        let _ = fs::remove_file(&out);
        run(StdCommand::new("siftool").arg("new").arg(&out));
        run(StdCommand::new("siftool")
            .args(["add", "--datatype", "1"])
            .arg(&out)
            .arg(&def));
        run(StdCommand::new("siftool")
            .args([
                "add",
                "--datatype",
                "4",
                "--parttype",
                "2",
                "--partfs",
                "1",
                "--partarch",
                "2",
            ])
            .arg(&out)
            .arg(&sqfs));
        out
    }

    pub fn blobs(&self) -> Vec<PathBuf> {
        let root = self.cache.join("v1/blobs/blake3");
        let mut out = Vec::new();
        if let Ok(dirs) = fs::read_dir(&root) {
            for d in dirs.flatten() {
                for f in fs::read_dir(d.path()).unwrap().flatten() {
                    out.push(f.path());
                }
            }
        }
        out.sort();
        out
    }

    /// What `tmp/` holds but spare files (empty `spare-*` files an `add` makes for the
    /// next one: no leftover of anything, see [`Env::spares`]).
    pub fn tmp_entries(&self) -> Vec<PathBuf> {
        let spares = self.spares();
        match fs::read_dir(self.cache.join("v1/tmp")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| !spares.contains(p))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The spare files in `tmp/`: plain, empty, mode 0600 files named `spare-*`.
    pub fn spares(&self) -> Vec<PathBuf> {
        spares_in(&self.cache)
    }

    /// Every blob's content hashes to its file name.
    pub fn assert_blobs_verify(&self) {
        for b in self.blobs() {
            let data = fs::read(&b).unwrap();
            let name = b.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                sregistry::Digest::of(&data).hex(),
                name,
                "blob {} does not match its name",
                b.display()
            );
            let mode = fs::metadata(&b).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o444, "blob {} is writable", b.display());
        }
    }

    /// Names in the index, via `list --json`.
    pub fn names(&self) -> Vec<String> {
        let out = self.cmd().args(["list", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Path, size and mode of everything under the cache, with the index's content hash:
    /// equal snapshots mean nothing changed. Spare files ([`Env::spares`]: empty, the
    /// user's, for the next `add` to rename) are left out: a command may take one.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, (u64, u32, String)> {
        self.snapshot_of(&self.cache)
    }

    /// [`Env::snapshot`] of another cache directory.
    pub fn snapshot_of(&self, cache: &Path) -> BTreeMap<PathBuf, (u64, u32, String)> {
        let mut out = BTreeMap::new();
        if !cache.exists() {
            return out;
        }
        let spares = spares_in(cache);
        for e in walk(cache).into_iter().filter(|e| !spares.contains(e)) {
            let m = fs::symlink_metadata(&e).unwrap();
            let h = if m.is_file() {
                sregistry::Digest::of(&fs::read(&e).unwrap()).hex()
            } else {
                String::new()
            };
            out.insert(
                e,
                (
                    if m.is_file() { m.len() } else { 0 },
                    m.permissions().mode(),
                    h,
                ),
            );
        }
        out
    }
}

/// The spare files in `cache`'s `tmp/` (see [`Env::spares`]).
pub fn spares_in(cache: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match fs::read_dir(cache.join("v1/tmp")) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with("spare-")
                    && fs::symlink_metadata(e.path()).is_ok_and(|m| {
                        m.file_type().is_file()
                            && m.len() == 0
                            && m.permissions().mode() & 0o7777 == 0o600
                    })
            })
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// The uid of `user`, as `id -u` says.
pub fn uid_of(user: &str) -> u32 {
    let out = StdCommand::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Tests that need root (creating users, mounting a tmpfs) print `SKIPPED <test>: <why>`
/// and return when not run as root on a developer's machine. True when the caller should
/// return. Under `CI=true` (what CI services set) a skip would count as a pass for a test
/// that never ran, so there it fails instead: CI must run the tests as root.
pub fn skip_unless_root(test: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return false;
    }
    assert!(
        !in_ci(),
        "{test} needs root ({why}) and was not run as root; under CI=true a skipped test \
         must not pass: run the tests as root"
    );
    eprintln!("SKIPPED {test}: {why}");
    true
}

/// Whether this is a CI run: `CI` set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// A small deterministic pseudo-random sequence (xorshift64) for spreading kills and
/// choices reproducibly.
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

pub fn run(c: &mut StdCommand) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// stdout of a successful run, trimmed.
pub fn stdout_of(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "command failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// Assert a failed run: exit code, and one non-empty line on stderr mentioning `needle`.
pub fn assert_fails(c: &mut Command, code: i32, needle: &str) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "stdout not empty: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
    err
}

/// A new cache holding the fixture `one-group.sif` as `lab/tool:1`.
pub fn env_with_lab_tool() -> Env {
    let env = Env::new();
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(fixtures().join("one-group.sif"))
            .args(["--name", "lab/tool:1"]),
    );
    env
}

/// The check named `name` in the output of `doctor --json` (and the command's exit code).
pub fn doctor_check(c: &mut Command, name: &str) -> (serde_json::Value, Option<i32>) {
    let out = c.args(["doctor", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let found = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {v:#}"))
        .clone();
    (found, out.status.code())
}

/// A tmpfs mounted for one test (root only), unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        run(StdCommand::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "none"])
            .arg(at));
        Tmpfs(at.to_path_buf())
    }

    pub fn remount_read_only(&self) {
        run(StdCommand::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0));
    }

    pub fn remount_read_write(&self) {
        run(StdCommand::new("mount")
            .args(["-o", "remount,rw"])
            .arg(&self.0));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = StdCommand::new("umount").arg(&self.0).status();
    }
}

impl Env {
    /// A file under `blobs/`, named as a blob, that the index does not know.
    pub fn plant_orphan(&self) {
        let od = sregistry::Digest::of(b"orphan");
        let dir = self
            .cache
            .join(format!("v1/blobs/blake3/{}", &od.hex()[..2]));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(od.hex()), b"orphan").unwrap();
    }

    /// `sregistry ARGS` started with `SREGISTRY_TEST_PAUSE=point`, returned once it has
    /// paused there. With `resume`, it goes on when that file exists; without, it waits
    /// to be killed. Its stdout is piped, for `wait_with_output`.
    pub fn spawn_paused(
        &self,
        point: &str,
        resume: Option<&Path>,
        args: &[&std::ffi::OsStr],
    ) -> std::process::Child {
        let mut c = self.std_cmd();
        c.env("SREGISTRY_TEST_PAUSE", point);
        if let Some(r) = resume {
            c.env("SREGISTRY_TEST_RESUME", r);
        }
        let mut child = c
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        crate::support::wait_for_pause(&mut child);
        child
    }

    /// `sregistry add FILE --name NAME` stopped at the pause point `point` (announced on
    /// its stderr, read here) until `resume` exists; the rest of its stderr is the reader's.
    pub fn add_paused(
        &self,
        point: &str,
        resume: &Path,
        file: &Path,
        name: &str,
    ) -> (
        std::process::Child,
        std::io::BufReader<std::process::ChildStderr>,
    ) {
        let mut child = self
            .std_cmd()
            .env("SREGISTRY_TEST_PAUSE", point)
            .env("SREGISTRY_TEST_RESUME", resume)
            .arg("add")
            .arg(file)
            .args(["--name", name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(line.starts_with("paused at"), "{line}");
        (child, stderr)
    }

    /// `sregistry add FILE --name NAME` as if at Unix time `t`; returns the path.
    pub fn add_at(&self, t: u64, file: &Path, name: &str) -> String {
        stdout_of(
            self.cmd()
                .env("SREGISTRY_NOW", t.to_string())
                .arg("add")
                .arg(file)
                .args(["--name", name]),
        )
    }
}

/// What a `get` or `pull` of a remote prints when another process holds that remote's
/// per-pull lock (after one second of waiting).
pub const WAITS_ON_PULL_LOCK: &str =
    "waiting for another process that is downloading the same image";

/// A process started with stderr piped, read until it said it waits on the per-pull
/// lock of the remote: proof that it found the lock held. The rest of its stderr is
/// gathered in the background.
pub struct PullWaiter {
    child: std::process::Child,
    err: std::thread::JoinHandle<String>,
}

impl PullWaiter {
    /// Spawn `c` (stdout and stderr piped).
    pub fn spawn(c: &mut StdCommand) -> std::process::Child {
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Read `child`'s stderr until it says it waits on the pull lock; fails the test if
    /// it ends or says anything else first.
    pub fn waiting(mut child: std::process::Child) -> PullWaiter {
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        match lines.next() {
            Some(Ok(l)) if l.contains(WAITS_ON_PULL_LOCK) => {}
            other => {
                let _ = child.kill();
                panic!("did not wait on the pull lock, it said: {other:?}")
            }
        }
        let err = std::thread::spawn(move || {
            lines
                .map_while(Result::ok)
                .map(|l| l + "\n")
                .collect::<String>()
        });
        PullWaiter { child, err }
    }

    /// Exit status, stdout, and stderr after the waiting line.
    pub fn finish(self) -> (std::process::ExitStatus, String, String) {
        let out = self.child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8(out.stdout).unwrap(),
            self.err.join().unwrap(),
        )
    }
}
