//! The configuration: files, variables and flags, each later source winning key by key;
//! a fault in a file names the file, the line and the key; `sregistry config` says where
//! each setting came from; docs/configuration.md lists the code's table.

use std::fs;
use std::path::Path;

use crate::common::{Env, assert_fails, stdout_of};

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// The file read in place of /etc/sregistry/config.toml, and the user's file.
fn system(env: &Env) -> std::path::PathBuf {
    env.path("etc/config.toml")
}
fn user(env: &Env) -> std::path::PathBuf {
    env.path("xdg/sregistry/config.toml")
}

fn config_json(c: &mut assert_cmd::Command) -> serde_json::Value {
    serde_json::from_str(&stdout_of(c.args(["config", "--json"]))).unwrap()
}

/// Danger: a source read in the wrong order, or one that wins for every key when it gives
/// only some. The site's file, the user's, `$SREGISTRY_CONFIG`'s, the variables and the
/// flags each give a key no later source gives, and each later one overrides some.
#[test]
fn each_later_source_wins_key_by_key() {
    let env = Env::new();
    write(
        &system(&env),
        "# the site\nretries = 1\ntimeout = \"5s\"\nmin_free = \"1M\"\nlock = \"flock\"\n",
    );
    write(&user(&env), "retries = 2\n\ntimeout = 6\n");
    let named = env.path("named.toml");
    write(&named, "retries = 3\nmax_download = 1024\n");
    let flag_cache = env.path("flag-cache");
    let v = config_json(
        env.cmd()
            .env("SREGISTRY_CONFIG", &named)
            .env("SREGISTRY_RETRIES", "4")
            .env_remove("SREGISTRY_CACHE")
            .arg("--cache")
            .arg(&flag_cache),
    );
    let s = &v["settings"];
    assert_eq!(s["retries"]["value"], 4);
    assert_eq!(s["retries"]["source"], "variable");
    assert_eq!(s["retries"]["from"], "SREGISTRY_RETRIES");
    assert_eq!(s["max_download"]["value"], 1024);
    assert_eq!(s["max_download"]["file"], named.to_str().unwrap());
    assert_eq!(s["max_download"]["line"], 2);
    assert_eq!(s["timeout"]["value"], 6.0);
    assert_eq!(s["timeout"]["file"], user(&env).to_str().unwrap());
    assert_eq!(s["timeout"]["line"], 3);
    assert_eq!(s["min_free"]["value"], 1 << 20);
    assert_eq!(s["min_free"]["file"], system(&env).to_str().unwrap());
    assert_eq!(s["min_free"]["line"], 4);
    assert_eq!(s["lock"]["value"], "flock");
    assert_eq!(s["cache"]["value"], flag_cache.to_str().unwrap());
    assert_eq!(s["cache"]["source"], "flag");
    assert_eq!(s["cache"]["from"], "--cache");
    assert_eq!(s["lock_timeout"]["source"], "default");
    assert_eq!(s["lock_timeout"]["value"], 300.0);
    let files: Vec<_> = v["files"].as_array().unwrap().iter().collect();
    assert_eq!(files.len(), 3);
    assert!(files.iter().all(|f| f["found"] == true), "{files:?}");
    // The text form: TOML, each line with its source.
    let text = stdout_of(
        env.cmd()
            .env("SREGISTRY_CONFIG", &named)
            .env("SREGISTRY_RETRIES", "4")
            .arg("config"),
    );
    let line = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{k} = ")))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .to_string()
    };
    assert!(line("retries").ends_with("# $SREGISTRY_RETRIES"), "{text}");
    assert!(line("min_free").contains("\"1M\""), "{text}");
    assert!(
        line("timeout").ends_with(&format!("# {}:3", user(&env).display())),
        "{text}"
    );
    assert!(line("lock_timeout").ends_with("# default"), "{text}");
}

/// The settings a file gives are the ones every command uses: a cache named in the
/// user's file (no variable, no flag) is where `add` and `get` work, and the download
/// bound of the site's file is the one `doctor` reports.
#[test]
fn a_file_sets_what_commands_use() {
    let env = Env::new();
    let cache = env.path("from-file");
    write(
        &user(&env),
        &format!("cache = {:?}\n", cache.to_str().unwrap()),
    );
    write(&system(&env), "max_download = \"3M\"\n");
    let img = env.sif("a.sif", "one");
    let cmd = || {
        let mut c = env.cmd();
        c.env_remove("SREGISTRY_CACHE");
        c
    };
    let path = stdout_of(cmd().args(["add"]).arg(&img).args(["--name", "a:1"]));
    assert!(path.trim().starts_with(cache.to_str().unwrap()), "{path}");
    assert_eq!(stdout_of(cmd().args(["get", "a:1"])), path);
    let doctor = String::from_utf8(cmd().args(["doctor"]).output().unwrap().stdout).unwrap();
    assert!(doctor.contains("at most 3 MiB"), "{doctor}");
}

/// With no XDG_CONFIG_HOME the user's file is ~/.config/sregistry/config.toml.
#[test]
fn the_user_file_defaults_to_dot_config() {
    let env = Env::new();
    let home = env.path("home");
    write(&home.join(".config/sregistry/config.toml"), "retries = 7\n");
    let v = config_json(env.cmd().env_remove("XDG_CONFIG_HOME").env("HOME", &home));
    assert_eq!(v["settings"]["retries"]["value"], 7);
}

/// Danger: a mistake in a file that is ignored, or reported without saying where. Each
/// fault exits 2 with one line naming the file, the line and the key, whichever file it
/// is in, and nothing is done.
#[test]
fn faults_in_a_file_name_the_file_line_and_key() {
    let cases = [
        ("retries = 2\ncolour = \"red\"\n", 2, "unknown key `colour`"),
        ("\n\nretries = \"many\"\n", 3, "`retries` takes an integer"),
        (
            "retries = 99\n",
            1,
            "`retries = 99` is not valid: expected a whole number from 0 to 20",
        ),
        (
            "min_free = \"lots\"\n",
            1,
            "`min_free = \"lots\"` is not valid",
        ),
        ("cache = \"relative/dir\"\n", 1, "must be absolute"),
        (
            "lock = \"nfs\"\n",
            1,
            "expected one of `ofd`, `fcntl`, `flock`",
        ),
        ("[remote]\ntimeout = 1\n", 1, "`remote`"),
        ("retries = 1\nretries = 2\n", 2, "not valid TOML"),
        ("timeout 5\n", 1, "not valid TOML"),
    ];
    for (text, line, needle) in cases {
        for which in ["system", "user", "named"] {
            let env = Env::new();
            let f = match which {
                "system" => system(&env),
                "user" => user(&env),
                _ => env.path("named.toml"),
            };
            write(&f, text);
            let img = env.file("x.img", b"x");
            let err = assert_fails(
                env.cmd()
                    .env("SREGISTRY_CONFIG", env.path("named.toml"))
                    .args(["add"])
                    .arg(&img)
                    .args(["--name", "x:1"]),
                2,
                needle,
            );
            let err = err.trim();
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with(&format!("error: `{}` line {line}: ", f.display())),
                "{which} {text:?}: {err}"
            );
            assert!(!env.cache.exists(), "a refused command made the cache");
            if which == "named" {
                // `config --check` finds the same fault.
                assert_fails(env.cmd().args(["config", "--check"]).arg(&f), 2, needle);
            }
        }
    }
}

/// A missing file is no error (one failed open each), but the file `SREGISTRY_CONFIG`
/// names must exist, and a file that cannot be read is an error (exit 1) naming it.
#[test]
fn missing_files_are_fine_unreadable_ones_are_not() {
    let env = Env::new();
    let v = config_json(&mut env.cmd());
    assert!(
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["found"] == false),
        "{v}"
    );
    assert_fails(
        env.cmd()
            .env("SREGISTRY_CONFIG", env.path("nope.toml"))
            .args(["get", "x"]),
        2,
        "no configuration file",
    );
    // A directory where the file should be: open succeeds, read fails.
    fs::create_dir_all(user(&env)).unwrap();
    let err = assert_fails(
        env.cmd().args(["get", "x"]),
        1,
        "cannot read the configuration file",
    );
    assert!(err.contains(user(&env).to_str().unwrap()), "{err}");
    fs::remove_dir(user(&env)).unwrap();
    fs::write(user(&env), b"retries = 1\n\xff\n").unwrap();
    assert_fails(env.cmd().args(["get", "x"]), 2, "line 2: not UTF-8");
}

/// `config --check FILE` checks that file alone (not the others, not the environment)
/// and lists what it sets; a missing FILE exits 2.
#[test]
fn check_validates_one_file() {
    let env = Env::new();
    write(&system(&env), "bogus = 1\n");
    let f = env.path("site.toml");
    write(&f, "# site\nmin_free = \"10G\"\nlock_timeout = 0.5\n");
    let out = stdout_of(
        env.cmd()
            .env("SREGISTRY_RETRIES", "x")
            .args(["config", "--check"])
            .arg(&f),
    );
    assert!(out.contains("valid, 2 settings"), "{out}");
    assert!(out.contains("min_free = \"10G\""), "{out}");
    assert!(out.contains("lock_timeout = \"0.5s\""), "{out}");
    let json: serde_json::Value = serde_json::from_str(&stdout_of(
        env.cmd().args(["config", "--json", "--check"]).arg(&f),
    ))
    .unwrap();
    assert_eq!(json["settings"]["min_free"]["value"], 10u64 << 30);
    assert_eq!(json["settings"]["lock_timeout"]["line"], 3);
    assert_fails(
        env.cmd()
            .args(["config", "--check"])
            .arg(env.path("absent.toml")),
        2,
        "no configuration file",
    );
}

/// The password a file or variable gives is never printed.
#[test]
fn config_never_shows_the_password() {
    let env = Env::new();
    write(&user(&env), "password = \"hunter2-file\"\n");
    let text = stdout_of(env.cmd().arg("config"));
    let json = stdout_of(env.cmd().args(["config", "--json"]));
    let named = stdout_of(env.cmd().args(["config", "--check"]).arg(user(&env)));
    for out in [&text, &json, &named] {
        assert!(!out.contains("hunter2"), "{out}");
    }
    assert!(text.contains("password = \"********\""), "{text}");
}

/// Danger: a `get` that pays for the configuration. Each missing file costs one failed
/// open, and nothing else is asked of it.
#[test]
fn a_missing_file_costs_one_open() {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        panic!("strace is needed (scripts/install-deps.sh test)");
    }
    let env = Env::new();
    let img = env.sif("a.sif", "one");
    stdout_of(env.cmd().args(["add"]).arg(&img).args(["--name", "a:1"]));
    let log = env.path("strace.log");
    let mut c = env.cmd();
    c.env("SREGISTRY_CONFIG", "")
        .env("HOME", env.path("home"))
        .env_remove("XDG_CONFIG_HOME");
    let bin = c.get_program().to_owned();
    let mut s = std::process::Command::new("strace");
    s.args(["-f", "-qq", "-o"])
        .arg(&log)
        .arg(bin)
        .args(["get", "a:1"]);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    let out = s.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = fs::read_to_string(log).unwrap();
    let touching: Vec<&str> = log.lines().filter(|l| l.contains("config.toml")).collect();
    assert_eq!(touching.len(), 2, "{touching:#?}");
    assert!(
        touching.iter().all(|l| l.contains("ENOENT")),
        "{touching:#?}"
    );
}

/// Danger: the docs' table and the code's table drifting apart. Every key is a row of
/// docs/configuration.md with its variable, flag and default, and no row names a key the
/// code does not have; docs/commands.md's Environment table lists no key's variable (it
/// points to configuration.md), only variables that are not settings.
#[test]
fn the_docs_table_is_the_code_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let table = doc.split("## Keys").nth(1).expect("a Keys section");
    let rows: Vec<Vec<String>> = table
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect();
    let want: Vec<Vec<String>> = sregistry::settings::KEYS
        .iter()
        .map(|k| {
            vec![
                k.name.to_string(),
                k.var.to_string(),
                k.flag.unwrap_or("none").to_string(),
                k.default_text().to_string(),
            ]
        })
        .collect();
    let got: Vec<Vec<String>> = rows.iter().map(|r| r[..4].to_vec()).collect();
    assert_eq!(got, want);
    let commands = fs::read_to_string(root.join("docs/commands.md")).unwrap();
    let envs = commands.split("## Environment").nth(1).unwrap();
    let listed: Vec<&str> = envs
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| &l[..l.find('`').unwrap()])
        .filter(|v| v.starts_with("SREGISTRY_"))
        .collect();
    let mut allowed: Vec<&str> = sregistry::settings::HOOKS.to_vec();
    allowed.push(sregistry::settings::CONFIG_VAR);
    for v in &listed {
        assert!(allowed.contains(v), "{v} is listed in docs/commands.md");
    }
    assert!(listed.contains(&sregistry::settings::CONFIG_VAR));
    assert!(envs.contains("configuration.md"));
}

/// Danger: a user who cannot read a file that is there runs on the defaults, or one whose
/// inherited `HOME` is another user's (`setpriv`, `sudo` without `-H`) cannot run at all.
/// A file there without read permission is an error naming it (exit 1); a file behind a
/// directory the user may not search counts as missing.
#[test]
fn a_file_another_user_cannot_read_is_an_error_a_hidden_one_is_missing() {
    use std::os::unix::fs::PermissionsExt;
    if crate::common::skip_unless_root(
        "a_file_another_user_cannot_read_is_an_error_a_hidden_one_is_missing",
        "running as another user needs root",
    ) {
        return;
    }
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = crate::shared::public_binary(env.dir.path());
    let closed = env.path("closed.toml");
    write(&closed, "retries = 1\n");
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o000)).unwrap();
    let hidden = env.path("hidden");
    write(&hidden.join("sregistry/config.toml"), "retries = 1\n");
    fs::set_permissions(&hidden, fs::Permissions::from_mode(0o700)).unwrap();
    let as_nobody = |config: Option<&Path>| {
        let mut c = crate::shared::as_nobody(&bin);
        c.arg("config")
            .env("XDG_CONFIG_HOME", &hidden)
            .env("SREGISTRY_TEST_SYSTEM_CONFIG", env.path("etc/config.toml"))
            .env_remove("SREGISTRY_CONFIG");
        if let Some(f) = config {
            c.env("SREGISTRY_CONFIG", f);
        }
        c.output().unwrap()
    };
    let out = as_nobody(None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("retries = 3"),
        "{out:?}"
    );
    let out = as_nobody(Some(&closed));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot read the configuration file `{}`: Permission denied",
            closed.display()
        )),
        "{err}"
    );
}

/// `offline = true` in the site's file makes every command offline, as `--offline` and
/// `SREGISTRY_OFFLINE=1` do, and `config` names the file; `SREGISTRY_OFFLINE=0` wins over it.
#[test]
fn offline_in_the_site_file_is_offline() {
    let env = Env::new();
    write(&system(&env), "offline = true\n");
    let v = config_json(&mut env.cmd());
    assert_eq!(v["settings"]["offline"]["value"], true);
    assert_eq!(v["settings"]["offline"]["line"], 1);
    assert_fails(
        env.cmd().args(["get", "https://127.0.0.1:9/x.sif"]),
        3,
        "is not in the cache (offline)",
    );
    let v = config_json(env.cmd().env("SREGISTRY_OFFLINE", "0"));
    assert_eq!(v["settings"]["offline"]["value"], false);
    let v = config_json(env.cmd().env("SREGISTRY_OFFLINE", "0").arg("--offline"));
    assert_eq!(v["settings"]["offline"]["source"], "flag");
}

/// A FIFO or a device where a configuration file should be hung every command, `get`
/// included, reading without end (found by a hostile test); a file larger than any
/// configuration ran it out of memory. Each is now refused at once, exit 1, naming it.
#[test]
fn a_fifo_a_device_or_a_huge_file_as_configuration_is_refused_not_waited_on() {
    let env = Env::new();
    let fifo = env.path("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    fs::create_dir_all(user(&env).parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&fifo, user(&env)).unwrap();
    let start = std::time::Instant::now();
    let err = assert_fails(
        env.cmd()
            .args(["get", "x"])
            .timeout(std::time::Duration::from_secs(20)),
        1,
        "not a regular file",
    );
    assert!(err.contains(user(&env).to_str().unwrap()), "{err}");
    fs::remove_file(user(&env)).unwrap();
    for dev in ["/dev/zero", "/dev/urandom"] {
        assert_fails(
            env.cmd()
                .env("SREGISTRY_CONFIG", dev)
                .args(["get", "x"])
                .timeout(std::time::Duration::from_secs(20)),
            1,
            "not a regular file",
        );
    }
    assert_fails(
        env.cmd()
            .args(["config", "--check"])
            .arg(&fifo)
            .timeout(std::time::Duration::from_secs(20)),
        1,
        "not a regular file",
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    let huge = env.path("huge.toml");
    fs::write(&huge, "# a comment\n".repeat(200_000)).unwrap();
    assert_fails(
        env.cmd().env("SREGISTRY_CONFIG", &huge).args(["get", "x"]),
        1,
        "too large for a configuration file",
    );
}
