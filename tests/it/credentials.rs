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

/// Two `login`s at once failed at random ("File exists", "No such file or directory"):
/// every login wrote the same temporary file, and with no lock one could also write back
/// the file as it was before the other's entry. Many logins at once, each to another
/// registry, round after round: every one succeeds and every entry is kept.
#[test]
fn concurrent_logins_to_many_hosts_keep_every_entry() {
    let regs: Vec<Registry> = (0..6)
        .map(|i| Registry::htpasswd(&format!("user{i}"), &format!("pw-{i}")))
        .collect();
    let env = Env::new();
    for round in 0..4 {
        let config = env.path(&format!("config-{round}"));
        let children: Vec<_> = regs
            .iter()
            .enumerate()
            .map(|(i, reg)| {
                let mut c = env.std_cmd();
                c.env("SREGISTRY_CONFIG_DIR", &config)
                    .env("SREGISTRY_PASSWORD", format!("pw-{i}"))
                    .args(["login", &reg.addr, "-u", &format!("user{i}")])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                c.spawn().unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let file = config.join("credentials.json");
        let stored: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        for (i, reg) in regs.iter().enumerate() {
            assert_eq!(
                stored["auths"][&reg.addr]["username"],
                format!("user{i}"),
                "round {round}: {stored}"
            );
        }
        let left: Vec<_> = fs::read_dir(&config)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// `login` stored an empty password, and a user name with `:` (which Basic
/// authentication cannot carry: the registry would read another user and password), and
/// sent an empty user or password to the registry. Each is a usage error (exit 2): nothing
/// is sent, nothing stored.
#[test]
fn login_refuses_an_empty_password_an_empty_user_and_a_user_with_a_colon() {
    let reg = Registry::htpasswd("alice", "pw-alice");
    let env = Env::new();
    let login = |user: &str, password: &str| {
        let mut c = env.cmd();
        c.args(["login", &reg.addr, "-u", user, "--password-stdin"])
            .write_stdin(password.to_string());
        c
    };
    let before = reg.log().matches("/v2/").count();
    assert_fails(&mut login("alice", ""), 2, "the password is empty");
    assert_fails(&mut login("alice", "\n"), 2, "the password is empty");
    assert_fails(&mut login("", "pw-alice"), 2, "the user name is empty");
    assert_fails(&mut login("al:ice", "pw-alice"), 2, "contains `:`");
    assert_eq!(reg.log().matches("/v2/").count(), before, "{}", reg.log());
    assert!(!env.path("config/credentials.json").exists());
    // The control: the same login with a password is sent and stored.
    let out = login("alice", "pw-alice").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.path("config/credentials.json").exists());
}

/// Credentials with an empty password (`auth` of `bob:` in a Docker config) were sent
/// as they were. They count as none: the pull goes anonymous, and the registry's refusal
/// does not name bob's credentials.
#[test]
fn an_empty_password_from_a_docker_config_is_never_sent() {
    let reg = Registry::htpasswd("bob", "pw-bob");
    let env = Env::new();
    let docker = docker_config(&env, "docker", &reg, "bob", "");
    let err = String::from_utf8_lossy(
        &env.cmd()
            .env("DOCKER_CONFIG", &docker)
            .args(["pull", &reg.oras("lab/tool:1")])
            .output()
            .unwrap()
            .stderr,
    )
    .into_owned();
    assert!(!err.contains("credentials of `bob`"), "{err}");
    assert!(err.contains("credentials are required"), "{err}");
}

/// `login --json` and `logout --json` printed nothing: a script had nothing to read.
#[test]
fn login_and_logout_print_json() {
    let reg = Registry::htpasswd("alice", "pw-alice");
    let env = Env::new();
    let json = |args: &[&str]| -> serde_json::Value {
        let mut c = env.cmd();
        c.arg("--json").args(args).write_stdin("pw-alice");
        serde_json::from_str(&stdout_of(&mut c)).unwrap()
    };
    let file = env.path("config/credentials.json");
    let v = json(&["login", &reg.addr, "-u", "alice", "--password-stdin"]);
    assert_eq!(v["host"], reg.addr.as_str());
    assert_eq!(v["username"], "alice");
    assert_eq!(v["credentials_file"], file.to_str().unwrap());
    let v = json(&["logout", &reg.addr]);
    assert_eq!(v["removed"], true, "{v}");
    assert_eq!(v["credentials_file"], file.to_str().unwrap());
    let v = json(&["logout", &reg.addr]);
    assert_eq!(v["removed"], false, "{v}");
}

/// A relative `XDG_CONFIG_HOME` was used as it was: the credentials went to a directory
/// under wherever the command ran, another one for each directory. It is ignored (as the
/// XDG specification says) and `HOME`'s `.config` is used; a relative `HOME` counts as
/// none.
#[test]
fn a_relative_xdg_config_home_or_home_is_ignored() {
    let reg = Registry::htpasswd("alice", "pw-alice");
    let env = Env::new();
    let home = env.path("home");
    let work = env.path("work");
    fs::create_dir_all(&work).unwrap();
    let login = |xdg: &str, home: &std::path::Path| {
        env.cmd()
            .env_remove("SREGISTRY_CONFIG_DIR")
            .env("XDG_CONFIG_HOME", xdg)
            .env("HOME", home)
            .current_dir(&work)
            .args(["login", &reg.addr, "-u", "alice", "--password-stdin"])
            .write_stdin("pw-alice")
            .output()
            .unwrap()
    };
    let out = login("rel-config", &home);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(home.join(".config/sregistry/credentials.json").is_file());
    assert!(!work.join("rel-config").exists());
    let out = login("rel-config", std::path::Path::new("rel-home"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an absolute path"), "{err}");
    assert!(!work.join("rel-home").exists() && !work.join("rel-config").exists());
}

/// The mode error said "read" for any bit: a file the group can write (mode 620) was
/// said to be readable by others. It says what the bits allow.
#[test]
fn the_credentials_mode_error_says_what_the_bits_allow() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let file = env.path("config/credentials.json");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, r#"{"auths":{}}"#).unwrap();
    for (mode, says) in [
        (0o620, "the group can write it (mode 620)"),
        (0o604, "others can read it (mode 604)"),
        (
            0o664,
            "the group can read and write, others can read it (mode 664)",
        ),
    ] {
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        assert_fails(
            env.cmd().args(["pull", "oras://127.0.0.1:9/lab/tool:1"]),
            1,
            says,
        );
    }
}

/// docs/remotes.md and commands.md promise that passwords are never printed by `login`
/// or `push` (nor by a pull): a distinctive password is looked for in everything they
/// print, with and without `--json`, on success and on failure, and in the cache.
#[test]
fn passwords_are_never_printed_by_login_push_or_pull() {
    const PW: &str = "Zq7-distinctive-PASSWORD-41x";
    let reg = Registry::htpasswd("alice", PW);
    let env = env_with_lab_tool();
    let mut printed = String::new();
    let mut run = |json: bool, args: &[&str], stdin: &str| {
        let mut c = env.cmd();
        if json {
            c.arg("--json");
        }
        let out = c
            .args(args)
            .write_stdin(stdin.to_string())
            .output()
            .unwrap();
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
        out.status.code()
    };
    let target = reg.oras("lab/tool:1");
    let login = [
        "login",
        reg.addr.as_str(),
        "-u",
        "alice",
        "--password-stdin",
    ];
    // A wrong password first (the registry refuses it), then the right one.
    let wrong = format!("{PW}-wrong");
    assert_eq!(run(false, &login, &wrong), Some(1));
    assert_eq!(run(true, &login, &wrong), Some(1));
    assert_eq!(run(false, &login, PW), Some(0));
    assert_eq!(run(true, &login, PW), Some(0));
    assert_eq!(run(false, &["push", "lab/tool:1", &target], ""), Some(0));
    assert_eq!(run(true, &["push", "lab/tool:1", &target], ""), Some(0));
    assert_eq!(run(false, &["pull", &target], ""), Some(0));
    assert_eq!(run(true, &["pull", &target, "--force"], ""), Some(0));
    let name = format!("{}/lab/tool:1", reg.addr);
    assert_eq!(run(true, &["inspect", &name], ""), Some(0));
    assert!(printed.contains("alice"), "{printed}");
    assert!(!printed.contains(PW), "{printed}");
    assert!(!printed.contains("distinctive"), "{printed}");
    for (p, bytes) in every_file(&env.cache) {
        assert!(
            !bytes.windows(PW.len()).any(|w| w == PW.as_bytes()),
            "the password is in {}",
            p.display()
        );
    }
}

fn every_file(dir: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(every_file(&p));
        } else if let Ok(b) = fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}
