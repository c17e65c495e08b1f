//! Messages and exit codes that tell the truth (issue 15): each test names what a user saw.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::common::*;

/// `sregistry completions bash | head -1` panicked on the closed pipe and exited 1. A
/// closed stdout ends the output quietly, as for every other command.
#[test]
fn completions_into_a_closed_pipe_is_not_an_error() {
    let env = Env::new();
    let mut child = env
        .std_cmd()
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

/// The last line `verify` writes on stderr, after checking it exited 4.
fn verify_last_line(env: &Env) -> String {
    let out = env.cmd().arg("verify").output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    err.trim_end().lines().last().unwrap().to_string()
}

/// verify's summary said "corrupt content is quarantined, run gc" whatever it found. It
/// names only what applies: here a missing file (no quarantine, no gc), then an orphan
/// (gc, no repair).
#[test]
fn verify_summary_says_only_what_applies() {
    let env = Env::new();
    let f = env.file("a.img", b"content of a");
    let path = stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "a"]));
    fs::remove_file(&path).unwrap();
    let last = verify_last_line(&env);
    assert!(last.contains("verify --repair"), "{last}");
    assert!(!last.contains("quarantin"), "{last}");
    assert!(!last.contains("gc"), "{last}");

    stdout_of(env.cmd().args(["rm", "a"]));
    env.plant_orphan();
    let last = verify_last_line(&env);
    assert!(
        last.contains("`sregistry gc` removes the leftovers"),
        "{last}"
    );
    assert!(
        !last.contains("quarantin") && !last.contains("repair"),
        "{last}"
    );
}

/// `inspect` of content verify had quarantined said "MISSING (run `sregistry verify`)",
/// sending the user round in a circle. It says where the content went.
#[test]
fn inspect_of_quarantined_content_says_so() {
    let env = Env::new();
    let f = env.file("a.img", b"content of a");
    let path = stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "a"]));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, b"content of A").unwrap();
    assert_eq!(
        env.cmd().arg("verify").output().unwrap().status.code(),
        Some(4)
    );
    let out = env.cmd().args(["inspect", "a"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "a quarantined image is a problem found"
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(shown.contains("QUARANTINED at"), "{shown}");
    assert!(
        !shown.contains("MISSING") && !err.contains("missing"),
        "{shown}{err}"
    );
    assert!(
        err.contains("quarantined by verify") && err.contains("--repair"),
        "{err}"
    );
    let out = env.cmd().args(["inspect", "--json", "a"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["quarantined"]
            .as_str()
            .is_some_and(|q| q.contains("quarantine")),
        "{v}"
    );
}

/// `rm -q` still printed "removed NAME" on stdout.
#[test]
fn rm_quiet_prints_nothing() {
    let env = Env::new();
    let f = env.file("a.img", b"content of a");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "a"]));
    let out = env.cmd().args(["-q", "rm", "a"]).output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.names().is_empty());
}

/// Under `--json` an error was plain text on stderr and stdout stayed empty: a script
/// parsing stdout got nothing to parse. It gets `{"error", "exit_code"}` too.
#[test]
fn errors_under_json_are_json_on_stdout_too() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["get", "--json", "lab/none"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["exit_code"], 3);
    assert!(v["error"].as_str().unwrap().contains("lab/none"), "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
}

/// `unpin --help` described pinning.
#[test]
fn unpin_help_describes_unpinning() {
    let env = Env::new();
    let help = stdout_of(env.cmd().args(["unpin", "--help"]));
    assert!(help.starts_with("Unpin an image"), "{help}");
    let help = stdout_of(env.cmd().args(["pin", "--help"]));
    assert!(help.starts_with("Pin an image"), "{help}");
}

/// `get` printed the path of a blob truncated to 0 bytes from outside. The recorded size
/// is checked: exit 4 and what to run, no path. The same for a blob cut part way and for
/// one grown from outside (bytes appended).
#[test]
fn get_refuses_a_blob_cut_short_from_outside() {
    for (what, cut, want) in [
        (
            "cut to nothing",
            Some(0),
            "has 0 bytes, not the 12 recorded",
        ),
        ("cut part way", Some(5), "has 5 bytes, not the 12 recorded"),
        ("grown", None, "has 21 bytes, not the 12 recorded"),
    ] {
        let env = Env::new();
        let f = env.file("a.img", b"content of a");
        let path = stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "a"]));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        match cut {
            Some(n) => fs::write(&path, &b"content of a"[..n]).unwrap(),
            None => fs::write(&path, b"content of a appended").unwrap(),
        }
        let err = assert_fails(env.cmd().args(["get", "a"]), 4, want);
        assert!(err.contains("sregistry verify"), "{what}: {err}");
        assert!(err.contains(&path), "{what}: the path is not named: {err}");
    }
}

/// gc reported freeing a non-empty directory in `tmp/` on every run and never removed it.
#[test]
fn gc_removes_a_stale_directory_in_tmp_and_reports_it_once() {
    let env = Env::new();
    let f = env.file("a.img", b"content of a");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "a"]));
    let dir = env.cache.join("v1/tmp/left-behind");
    fs::create_dir_all(dir.join("inner")).unwrap();
    fs::write(dir.join("inner/file"), b"x").unwrap();
    let gc = || -> serde_json::Value {
        serde_json::from_str(&stdout_of(env.cmd().args([
            "gc",
            "--json",
            "--tmp-grace",
            "0",
        ])))
        .unwrap()
    };
    assert_eq!(gc()["tmp_files"], 1);
    assert!(!dir.exists(), "the directory is still there");
    assert_eq!(gc()["tmp_files"], 0, "reported again");
}

/// With `v1/tmp` replaced by a file, `doctor` said all was well while `verify` and `gc`
/// failed. The layout check fails and says what to do.
#[test]
fn doctor_fails_when_a_cache_directory_is_a_file() {
    let env = Env::new();
    stdout_of(env.cmd().arg("init"));
    let tmp = env.cache.join("v1/tmp");
    fs::remove_dir(&tmp).unwrap();
    fs::write(&tmp, b"not a directory").unwrap();
    let (layout, code) = doctor_check(&mut env.cmd(), "layout");
    assert_eq!(code, Some(4));
    assert_eq!(layout["status"], "fail", "{layout:#}");
    let detail = layout["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("`{}`", tmp.display())), "{detail}");
}

/// doctor's index failure said "run `sregistry doctor`", to a user running it. It says
/// what doctor can do instead.
#[test]
fn doctor_index_failure_does_not_send_the_user_to_doctor() {
    let env = Env::new();
    stdout_of(env.cmd().arg("init"));
    let index = env.cache.join("v1/index.redb");
    fs::remove_file(&index).unwrap();
    fs::create_dir(&index).unwrap();
    let (check, code) = doctor_check(&mut env.cmd(), "index");
    assert_eq!(code, Some(4));
    assert_eq!(check["status"], "fail");
    let detail = check["detail"].as_str().unwrap();
    assert!(!detail.contains("(run `sregistry doctor`)"), "{detail}");
    assert!(detail.contains("doctor --repair-index"), "{detail}");
}

/// `doctor` run by a user outside a shared cache's group said "fcntl locks fail here; set
/// SREGISTRY_LOCK=flock" (the cause is permissions) and marked the index FAIL although
/// reads work. It says the user can read, not write, and exits 0.
#[test]
fn doctor_outside_the_group_says_reads_work_and_blames_permissions() {
    if skip_unless_root(
        "doctor_outside_the_group_says_reads_work_and_blames_permissions",
        "running as another user needs root",
    ) {
        return;
    }
    let (env, bin, cache) = crate::shared::shared_cache_for_the_users();
    crate::shared::alice_adds_lab_tool(&env, &bin, &cache, b"content of a");
    let as_nobody = |args: &[&str]| {
        crate::shared::as_nobody(&bin)
            .args(args)
            .env("SREGISTRY_CACHE", &cache)
            .output()
            .unwrap()
    };
    let listed = as_nobody(&["list"]);
    assert!(
        listed.status.success(),
        "reads do not work here: {listed:?}"
    );
    let out = as_nobody(&["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let by_name = |name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name}: {v:#}"))
            .clone()
    };
    let locks = by_name("locks");
    assert_eq!(locks["status"], "warn", "{v:#}");
    assert!(
        !locks["detail"]
            .as_str()
            .unwrap()
            .contains("SREGISTRY_LOCK=flock"),
        "{v:#}"
    );
    assert_eq!(by_name("index")["status"], "warn", "{v:#}");
    let access = by_name("access");
    assert!(
        access["detail"]
            .as_str()
            .unwrap()
            .contains("`get` and `list` work"),
        "{v:#}"
    );
    assert_eq!(out.status.code(), Some(0), "{v:#}");
}

/// The danger: a remote reference given to a command that takes a cached image's name
/// (`inspect docker://...`) being answered "remote pulls are not supported yet", which
/// sends the user away from `pull`. Each such command exits 2 with one line that says
/// to pull first and names the local name the pull gives, which `get` then finds after a
/// real pull from a real registry.
#[test]
fn a_remote_reference_given_to_a_local_command_names_its_local_name() {
    let reg = crate::registry::Registry::anonymous();
    let env = Env::new();
    let sif = env.sif("tool.sif", "remote for local commands");
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&sif)
            .args(["--name", "lab/tool:1"]),
    );
    let remote = reg.oras("lab/tool:1");
    stdout_of(env.cmd().args(["push", "lab/tool:1", &remote]));
    let out_dir = env.path("layout");
    let before = env.snapshot();
    let mut named = Vec::new();
    for args in [
        vec!["inspect", &remote],
        vec!["rm", &remote],
        vec!["pin", &remote],
        vec!["unpin", &remote],
        vec!["tag", &remote, "lab/other:1"],
        vec!["export", &remote, out_dir.to_str().unwrap()],
        vec!["verify", &remote],
        vec!["push", &remote, &remote],
    ] {
        let err = assert_fails(env.cmd().args(&args), 2, "is a remote reference");
        assert!(!err.contains("not supported"), "{args:?}: {err}");
        assert!(err.contains("sregistry pull"), "{args:?}: {err}");
        let name = err
            .split("(by default `")
            .nth(1)
            .and_then(|r| r.split('`').next())
            .unwrap_or_else(|| panic!("{args:?} names no local name: {err}"));
        named.push(name.to_string());
    }
    assert_eq!(
        env.snapshot(),
        before,
        "a refused command changed the cache"
    );
    assert!(!out_dir.exists(), "export wrote into its target");
    // A pre-signed URL: the same line, and the query's values are not shown.
    let signed = "https://127.0.0.1:9/lab/tool.sif?X-Amz-Signature=s3cr3t&token=t0k3n";
    let err = assert_fails(env.cmd().args(["inspect", signed]), 2, "sregistry pull");
    assert!(!err.contains("s3cr3t") && !err.contains("t0k3n"), "{err}");
    // The name they give is the one a pull gives.
    let other = Env::new();
    let pulled = stdout_of(other.cmd().args(["pull", &remote]));
    for name in named {
        assert_eq!(stdout_of(other.cmd().args(["get", &name])), pulled);
    }
}

/// The danger: `--cache FILE` (a regular file) answered with "cannot read the cache
/// settings `FILE/v1/settings.json`: Not a directory ... fix or remove the file", which
/// points at a file that does not exist and invites removing the user's own. Every
/// command, with `--cache` or `SREGISTRY_CACHE`, the file itself or a path under it,
/// says that FILE is not a directory (exit 1, one line), and the file is left as it was.
#[test]
fn a_cache_that_is_a_file_is_named_as_not_a_directory() {
    let env = Env::new();
    let file = env.file("not-a-cache", b"the user's file");
    let input = env.file("in.sif", b"content");
    for root in [file.clone(), file.join("sub")] {
        for args in [
            vec!["list"],
            vec!["get", "lab/tool:1"],
            vec!["add", input.to_str().unwrap(), "--name", "lab/tool:1"],
            vec!["gc"],
            vec!["verify"],
        ] {
            let mut by_flag = env.cmd();
            by_flag.arg("--cache").arg(&root).args(&args);
            let mut by_env = env.cmd();
            by_env.env("SREGISTRY_CACHE", &root).args(&args);
            for c in [&mut by_flag, &mut by_env] {
                let err = assert_fails(c, 1, "is not a directory");
                assert!(
                    err.contains(&format!("`{}` is not a directory", file.display())),
                    "{err}"
                );
                assert!(!err.contains("settings.json"), "{err}");
            }
        }
    }
    assert_eq!(fs::read(&file).unwrap(), b"the user's file");
    // A cache directory whose `v1` is a file: that file is named.
    let cache = env.path("odd-cache");
    fs::create_dir(&cache).unwrap();
    fs::write(cache.join("v1"), b"not a format directory").unwrap();
    let err = assert_fails(
        env.cmd().arg("--cache").arg(&cache).arg("list"),
        1,
        "is not a directory",
    );
    assert!(
        err.contains(&format!(
            "`{}` is not a directory",
            cache.join("v1").display()
        )),
        "{err}"
    );
}

/// A remote reference that is not valid, given to a command that takes a cached image's
/// name or to one that pulls, was echoed whole in its error ("invalid image name
/// `oras://user:PASSWORD@host/x`", "`user:PASSWORD@host` is not a host name"). However it
/// is wrong, a password or a query value never appears in what is printed.
#[test]
fn a_bad_remote_reference_never_echoes_its_password_or_query() {
    let env = Env::new();
    let refs = [
        "oras://user:pw-SECRET@host/x",
        "docker://user:pw-SECRET@host/x:1",
        "https://user:pw-SECRET@host/x.sif?sig=SIG-SECRET",
        "https://user:pw SECRET@host/x.sif?sig=SIG-SECRET",
        "https://host/x y.sif?X-Amz-Signature=SIG-SECRET",
    ];
    for r in refs {
        for args in [
            vec!["inspect", r],
            vec!["rm", r],
            vec!["pin", r],
            vec!["pull", r],
            vec!["get", r],
            vec!["push", "lab/x:1", r],
        ] {
            let out = env.cmd().args(&args).output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{args:?}: {text}");
            assert!(!text.contains("SECRET"), "{args:?}: {text}");
        }
    }
}
