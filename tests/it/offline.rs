//! Offline nodes: with `--offline` or `SREGISTRY_OFFLINE`, no command opens a network
//! connection, and `get` and `pull` answer from the cache. Without it, a `pull` whose
//! remote cannot be reached answers from the cache with a warning. Run inside a network
//! namespace with no interfaces (`unshare -n`, not even loopback up), so that any attempt
//! to connect fails, and under strace, so that any attempt shows.

use std::process::Output;

use crate::common::*;
use crate::registry::Registry;

/// Run the binary with `args` (and `extra` environment) in a network namespace of its
/// own, traced for the sockets it opens and the connections it tries; the output, and the
/// trace's `socket`/`connect` calls on the internet families.
fn in_netns(env: &Env, args: &[&str], extra: &[(&str, &str)]) -> (Output, Vec<String>) {
    let bin = env.std_cmd();
    let log = env.path(&format!("net-{}.log", std::process::id() ^ rand_u32()));
    let mut c = std::process::Command::new("unshare");
    c.args([
        "-n",
        "--",
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=socket,connect",
        "-o",
    ])
    .arg(&log)
    .arg(bin.get_program())
    .args(args);
    for (k, v) in bin.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    for (k, v) in extra {
        c.env(k, v);
    }
    c.env("SREGISTRY_RETRIES", "0");
    let out = c.output().expect("unshare and strace");
    let trace = std::fs::read_to_string(&log).unwrap_or_default();
    let net = trace
        .lines()
        .filter(|l| l.contains("AF_INET") || l.contains("AF_INET6"))
        .map(str::to_string)
        .collect();
    (out, net)
}

fn rand_u32() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A cache that pulled `lab/tool:1` from a real registry, which is gone afterwards.
fn pulled(env: &Env) -> (String, String, String) {
    let reg = Registry::anonymous();
    let sif = env.sif("tool.sif", "for the offline node");
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/seed"]));
    stdout_of(
        env.cmd()
            .args(["push", "lab/seed", &reg.oras("lab/tool:1")]),
    );
    stdout_of(
        env.cmd()
            .args(["push", "lab/seed", &reg.oras("lab/other:1")]),
    );
    let remote = reg.oras("lab/tool:1");
    let path = stdout_of(env.cmd().args(["pull", &remote]));
    (remote, reg.oras("lab/other:1"), path)
}

#[test]
fn offline_get_and_pull_answer_from_the_cache_and_open_no_connection() {
    let env = Env::new();
    let (remote, uncached, path) = pulled(&env);
    for how in [&[][..], &[("SREGISTRY_OFFLINE", "1")][..]] {
        let flag: &[&str] = if how.is_empty() { &["--offline"] } else { &[] };
        let args = |rest: &[&str]| -> Vec<String> {
            flag.iter().chain(rest).map(|s| s.to_string()).collect()
        };
        let run = |rest: &[&str]| {
            let a = args(rest);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            in_netns(&env, &a, how)
        };
        // The cache answers get and pull: the same file, no socket opened.
        let (out, net) = run(&["get", &remote]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout, path);
        assert!(net.is_empty(), "{net:?}");
        let (out, net) = run(&["pull", &remote]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout, path);
        assert!(stderr.contains("from the cache"), "{stderr}");
        assert!(net.is_empty(), "{net:?}");
        let (out, _) = run(&["--json", "pull", &remote]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains(r#""unreached": "offline""#), "{stdout}");
        // What the cache does not hold: exit 3, said so, still no socket.
        for verb in ["get", "pull"] {
            let (out, net) = run(&[verb, &uncached]);
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(3), "{stderr}");
            assert!(stderr.contains("is not in the cache (offline)"), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(net.is_empty(), "{net:?}");
        }
        // What needs the network is refused, before any socket.
        for cmd in [
            vec!["push", "lab/seed", uncached.as_str()],
            vec!["search", "oras://127.0.0.1:1"],
            vec!["login", "127.0.0.1:1", "-u", "u", "--password-stdin"],
            vec!["pull", "--force", remote.as_str()],
        ] {
            let (out, net) = run(&cmd);
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
            assert!(stderr.contains("offline"), "{stderr}");
            assert!(net.is_empty(), "{cmd:?}: {net:?}");
        }
    }
    // A bad value is a usage error naming the variable.
    let (out, _) = in_netns(&env, &["get", &remote], &[("SREGISTRY_OFFLINE", "maybe")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SREGISTRY_OFFLINE"), "{stderr}");
}

#[test]
fn a_pull_whose_remote_cannot_be_reached_answers_from_the_cache_with_a_warning() {
    let env = Env::new();
    let (remote, uncached, path) = pulled(&env);
    // Not offline: the pull tries (the trace shows the attempt), fails to connect, and
    // the cache answers, with one line of warning that gives the image's age.
    let (out, net) = in_netns(&env, &["pull", &remote], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, path);
    assert!(!net.is_empty(), "the pull did not even try");
    let warning: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warning.len(), 1, "{stderr}");
    assert!(warning[0].contains("cannot reach"), "{stderr}");
    assert!(warning[0].contains("was pulled just now"), "{stderr}");
    // `--quiet` keeps the warning: the answer may be older than the remote's.
    let (out, _) = in_netns(&env, &["-q", "pull", &remote], &[]);
    assert!(text(&out).1.contains("warning:"), "{}", text(&out).1);
    // --force asks for the remote's content: it fails as the network does.
    let (out, _) = in_netns(&env, &["pull", "--force", &remote], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    // Nothing cached from there: the network's failure.
    let (out, _) = in_netns(&env, &["pull", &uncached], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // And the cache is as it was.
    assert_eq!(stdout_of(env.cmd().args(["get", &remote])), path);
}
