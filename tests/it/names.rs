//! Names that change over time: what a job was handed survives a re-pointed name
//! (invariant 6), and two remotes never share a default name.
//!
//! The web server here is Python's own `http.server` (a real one, serving files from a
//! temp dir; its request log counts downloads).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::common::*;
use crate::registry::free_port;

/// A time well in the past, so the tests' pinned clocks never meet the real one.
const T: u64 = 1_700_000_000;

/// `gc` as if at `t`, with these extra arguments; its JSON report.
fn gc_at(env: &Env, t: u64, args: &[&str]) -> serde_json::Value {
    let out = stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", t.to_string())
            .args(["gc", "--json"])
            .args(args),
    );
    serde_json::from_str(&out).unwrap()
}

fn get_at(env: &Env, t: u64, name: &str) -> String {
    stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", t.to_string())
            .args(["get", name]),
    )
}

/// The danger: a job is handed `$(sregistry get lab/t:1)`, then the name is re-pointed
/// (`add` of a new build, `tag --force`); the next cron gc deleted the old content
/// because no name referred to it, and the queued job found no file. Whatever re-points
/// a name, the content it held stays for `--min-idle` after its last use.
#[test]
fn gc_keeps_what_a_repointed_name_handed_out_for_min_idle() {
    let env = Env::new();
    let a = env.sif("a.sif", "build one");
    let b = env.sif("b.sif", "build two");
    let c = env.sif("c.sif", "build three");
    // add re-points.
    env.add_at(T, &a, "lab/t:1");
    let handed = get_at(&env, T + 100, "lab/t:1");
    env.add_at(T + 200, &b, "lab/t:1");
    // tag --force re-points too (lab/u:1 held c, a job was handed c).
    env.add_at(T, &c, "lab/u:1");
    let handed_c = get_at(&env, T + 150, "lab/u:1");
    stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", (T + 250).to_string())
            .args(["tag", "--force", "lab/t:1", "lab/u:1"]),
    );
    // An hour after the uses (the default --min-idle), both are still there.
    let r = gc_at(&env, T + 100 + 3600, &[]);
    assert!(
        Path::new(&handed).is_file(),
        "gc removed a handed-out image: {r}"
    );
    assert!(
        Path::new(&handed_c).is_file(),
        "gc removed a handed-out image: {r}"
    );
    assert_eq!(r["blobs"].as_array().unwrap().len(), 0, "{r}");
    // With --max-size 0 too: what was handed out counts, and is not evicted.
    let r = gc_at(&env, T + 100 + 3600, &["--max-size", "0"]);
    assert!(Path::new(&handed).is_file(), "{r}");
    assert_eq!(r["over_budget"], true, "{r}");
    // Once the protection has run out (min-idle after the last use, plus the 10 minutes
    // by which a recorded use may lag), the next gc frees them.
    let r = gc_at(&env, T + 250 + 600 + 3600 + 1, &[]);
    assert!(!Path::new(&handed).exists(), "{r}");
    assert!(!Path::new(&handed_c).exists(), "{r}");
    assert_eq!(r["blobs"].as_array().unwrap().len(), 2, "{r}");
    // The names themselves were never touched.
    assert_eq!(env.names(), ["lab/t:1", "lab/u:1"]);
    env.assert_blobs_verify();
}

/// `rm` of the name gives the protection up at once, and `gc --min-idle 0` explicitly
/// too; nothing else does.
#[test]
fn rm_of_a_repointed_name_frees_what_it_held_at_once() {
    let env = Env::new();
    let a = env.sif("a.sif", "first");
    let b = env.sif("b.sif", "second");
    env.add_at(T, &a, "lab/t:1");
    let old = get_at(&env, T + 10, "lab/t:1");
    env.add_at(T + 20, &b, "lab/t:1");
    gc_at(&env, T + 30, &[]);
    assert!(Path::new(&old).is_file());
    stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", (T + 40).to_string())
            .args(["rm", "lab/t:1"]),
    );
    assert!(!Path::new(&old).exists(), "rm kept the re-pointed content");
    assert!(env.blobs().is_empty(), "{:?}", env.blobs());

    // gc --min-idle 0 is the other explicit way.
    env.add_at(T, &a, "lab/v:1");
    let old = get_at(&env, T + 10, "lab/v:1");
    env.add_at(T + 20, &b, "lab/v:1");
    gc_at(&env, T + 30, &["--min-idle", "1m"]);
    assert!(
        Path::new(&old).is_file(),
        "a short --min-idle still covers a use 20 s ago"
    );
    gc_at(&env, T + 30, &["--min-idle", "0"]);
    assert!(!Path::new(&old).exists());
    env.assert_blobs_verify();
}

/// Python's `http.server` over a temp dir; the paths it was asked for (GETs).
struct WebServer {
    _dir: tempfile::TempDir,
    root: PathBuf,
    port: u16,
    child: Child,
    gets: Arc<Mutex<Vec<String>>>,
}

impl WebServer {
    fn start() -> WebServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        fs::create_dir_all(&root).unwrap();
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 -m http.server");
        let gets = Arc::new(Mutex::new(Vec::new()));
        let (err, log) = (child.stderr.take().unwrap(), gets.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("\"GET ").nth(1) {
                    let path = rest.split(' ').next().unwrap_or("").to_string();
                    log.lock().unwrap().push(path);
                }
            }
        });
        let addr = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "http.server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        WebServer {
            _dir: dir,
            root,
            port,
            child,
            gets,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn gets(&self) -> usize {
        // The log line is written after the response: give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(200));
        self.gets.lock().unwrap().len()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The danger: URLs that reduce to one local name (`x..y.sif` and `x.y.sif`, `A.sif` and
/// `a.sif`, the same path with two queries) re-pointed it at each `get`: every get
/// downloaded again, never said "unchanged", and the next gc deleted the image the other
/// `get` had just printed. Each must be an image of its own.
#[test]
fn urls_that_reduce_alike_keep_names_of_their_own() {
    let web = WebServer::start();
    let env = Env::new();
    let pairs = [
        ("x..y.sif", "x.y.sif"),
        ("Tool.sif", "tool.sif"),
        ("q.sif?v=1", "q.sif?v=2"),
    ];
    for (one, two) in pairs {
        for p in [one, two] {
            let file = p.split('?').next().unwrap();
            if !web.root.join(file).exists() {
                fs::copy(env.sif(&format!("{p}.src"), p), web.root.join(file)).unwrap();
            }
        }
        let (u1, u2) = (web.url(one), web.url(two));
        let p1 = stdout_of(env.cmd().args(["get", &u1]));
        let p2 = stdout_of(env.cmd().args(["get", &u2]));
        let n1: serde_json::Value =
            serde_json::from_str(&stdout_of(env.cmd().args(["get", "--json", &u1]))).unwrap();
        let n2: serde_json::Value =
            serde_json::from_str(&stdout_of(env.cmd().args(["get", "--json", &u2]))).unwrap();
        assert_ne!(n1["name"], n2["name"], "{one} and {two} share a name");
        if !one.contains('?') {
            assert_ne!(p1, p2, "{one} and {two} have different content");
        }
        // gc keeps both; a get of either downloads nothing more.
        let before = web.gets();
        stdout_of(env.cmd().args(["gc", "-q"]));
        assert_eq!(stdout_of(env.cmd().args(["get", &u1])), p1);
        assert_eq!(stdout_of(env.cmd().args(["get", &u2])), p2);
        assert!(Path::new(&p1).is_file() && Path::new(&p2).is_file());
        assert_eq!(web.gets(), before, "a cached URL was downloaded again");
        // Each name records the URL it came from (a query's values hidden, its own
        // still told apart by a hash: docs/remotes.md, "HTTPS").
        let mut sources = Vec::new();
        for (u, n) in [(&u1, &n1), (&u2, &n2)] {
            let v: serde_json::Value = serde_json::from_str(&stdout_of(env.cmd().args([
                "inspect",
                "--json",
                n["name"].as_str().unwrap(),
            ])))
            .unwrap();
            let source = v["source"].as_str().unwrap().to_string();
            match u.split_once('?') {
                None => assert_eq!(source, u.as_str(), "{v}"),
                Some((base, _)) => {
                    assert!(source.starts_with(&format!("{base}?v=*** (query ")), "{v}")
                }
            }
            sources.push(source);
        }
        assert_ne!(sources[0], sources[1]);
    }
    // A plain URL keeps its plain name.
    let n: serde_json::Value = serde_json::from_str(&stdout_of(env.cmd().args([
        "get",
        "--json",
        &web.url("x.y.sif"),
    ])))
    .unwrap();
    assert_eq!(
        n["name"],
        format!("127.0.0.1:{}/x.y.sif:latest", web.port).as_str()
    );
    env.assert_blobs_verify();
}

/// A name another remote's image holds (an older version named it so, or a real tag
/// that reads like a platform name) is not re-pointed by a pull under its default name:
/// one line, exit 1, nothing pulled; `--name` pulls it beside.
#[test]
fn a_default_name_held_by_another_remote_is_not_taken_silently() {
    let web = WebServer::start();
    let env = Env::new();
    fs::copy(env.sif("one.sif", "one"), web.root.join("one.sif")).unwrap();
    fs::copy(env.sif("two.sif", "two"), web.root.join("two.sif")).unwrap();
    let one = web.url("one.sif");
    let kept = stdout_of(env.cmd().args(["get", &one]));
    let name = format!("127.0.0.1:{}/one.sif:latest", web.port);
    // Another remote's image under that very name, as an older version could leave it.
    stdout_of(
        env.cmd()
            .args(["pull", &web.url("two.sif"), "--name", &name]),
    );
    let err = assert_fails(env.cmd().args(["get", &one]), 1, "--name");
    assert!(err.contains(&name) && err.contains("two.sif"), "{err}");
    assert_fails(env.cmd().args(["pull", &one]), 1, "--name");
    stdout_of(env.cmd().args(["pull", "-q", &one, "--name", "lab/one:1"]));
    assert_eq!(
        stdout_of(env.cmd().args(["get", "lab/one:1"])),
        kept,
        "the same content, stored once"
    );
}

/// The other ways a name is re-pointed: a `pull` of a remote whose content changed, and
/// `add --force` over a pinned name. What each name handed out stays for `--min-idle`.
#[test]
fn a_changed_remote_or_a_forced_add_keeps_what_the_name_handed_out() {
    let web = WebServer::start();
    let env = Env::new();
    fs::copy(env.sif("v1.sif", "version one"), web.root.join("tool.sif")).unwrap();
    let url = web.url("tool.sif");
    let first = stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", T.to_string())
            .args(["get", &url]),
    );
    // The file changes on the server (a newer mtime, so a new Last-Modified).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::copy(env.sif("v2.sif", "version two"), web.root.join("tool.sif")).unwrap();
    let second = stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", (T + 60).to_string())
            .args(["pull", "-q", &url]),
    );
    assert_ne!(first, second, "the changed file was not pulled");
    // A pinned name, re-pointed with --force.
    let a = env.sif("a.sif", "pinned one");
    let b = env.sif("b.sif", "pinned two");
    env.add_at(T, &a, "lab/p:1");
    let pinned_old = get_at(&env, T + 30, "lab/p:1");
    stdout_of(env.cmd().args(["pin", "lab/p:1"]));
    stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", (T + 60).to_string())
            .arg("add")
            .arg(&b)
            .args(["--name", "lab/p:1", "--force"]),
    );
    let r = gc_at(&env, T + 60 + 3500, &["--max-size", "0"]);
    assert!(Path::new(&first).is_file(), "{r}");
    assert!(Path::new(&pinned_old).is_file(), "{r}");
    let r = gc_at(&env, T + 60 + 600 + 3600 + 1, &[]);
    assert!(!Path::new(&first).exists(), "{r}");
    assert!(!Path::new(&pinned_old).exists(), "{r}");
    assert!(Path::new(&second).is_file());
    env.assert_blobs_verify();
}
