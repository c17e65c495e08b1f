//! Credentials: one user's refused credentials are theirs alone, `login` keeps every
//! host's entry whatever runs at once, and no password is ever printed. Against a real
//! registry with htpasswd (bcrypt) auth.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use crate::common::*;
use crate::registry::Registry;

/// A Docker config directory under `env` whose `config.json` holds `user:password` for
/// `reg` (as `docker login` writes it).
fn docker_config(env: &Env, dir: &str, reg: &Registry, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let d = env.path(dir);
    fs::create_dir_all(&d).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    fs::write(
        d.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    d
}

/// A pull whose credentials the registry refused left a `.failed` note beside the pull
/// lock, and every process waiting on that lock failed at once with it, each told to
/// check credentials that were never tried: one user's typo failed everyone's jobs. A
/// refusal of the puller's own credentials is not noted; the waiter takes the lock and
/// pulls with its own. (The first pull stops, holding the lock, just before it would note
/// its failure, until the second is seen waiting.)
#[test]
fn one_users_refused_credentials_do_not_fail_another_users_waiting_pull() {
    let reg = Registry::htpasswd("alice", "pw-alice");
    let env = env_with_lab_tool();
    let good = docker_config(&env, "docker-good", &reg, "alice", "pw-alice");
    let bad = docker_config(&env, "docker-bad", &reg, "alice", "typo");
    let remote = reg.oras("lab/tool:1");
    let out = env
        .cmd()
        .env("DOCKER_CONFIG", &good)
        .args(["push", "lab/tool:1", &remote])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let resume = env.path("resume");
    let mut first = env
        .std_cmd()
        .env("DOCKER_CONFIG", &bad)
        .env("SREGISTRY_TEST_PAUSE", "pull-failed")
        .env("SREGISTRY_TEST_RESUME", &resume)
        .args(["get", &remote])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_err = BufReader::new(first.stderr.take().unwrap());
    let mut line = String::new();
    first_err.read_line(&mut line).unwrap();
    assert!(line.contains("paused at pull-failed"), "{line}");

    let mut second = env
        .std_cmd()
        .env("DOCKER_CONFIG", &good)
        .args(["get", &remote])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut second_err = BufReader::new(second.stderr.take().unwrap());
    let mut said = String::new();
    second_err.read_line(&mut said).unwrap();
    assert!(
        said.contains("waiting for another process"),
        "the second get did not wait on the lock: {said}"
    );
    fs::write(&resume, "").unwrap();

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut first_err, &mut rest).unwrap();
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        rest.contains("refused the credentials of `alice`"),
        "{rest}"
    );

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut second_err, &mut rest).unwrap();
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success(), "{said}{rest}");
    let path = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    let held = stdout_of(env.cmd().args(["get", "lab/tool:1"]));
    assert_eq!(fs::read(path).unwrap(), fs::read(held).unwrap());
}
