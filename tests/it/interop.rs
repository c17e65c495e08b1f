//! Interop with other clients, so that "it round-trips with itself" is not the only proof:
//! what `sregistry push` writes, PyPI `oras` and `skopeo` read back byte for byte; what
//! PyPI `oras` pushes the way `apptainer push` does, `sregistry pull` reads; and S3 pushes
//! and pulls against a real S3 server (`s3s-fs`, files on disk).
//!
//! Every tool is required: a missing one fails the test with what to install.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::registry::Registry;
use crate::support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY, s3_cmd, s3_env_cmd, s3_std};
use crate::support::sha256_of;

const SIF_CONFIG: &str = "application/vnd.sylabs.sif.config.v1+json";
const SIF_LAYER: &str = "application/vnd.sylabs.sif.layer.v1.sif";
const TITLE: &str = "org.opencontainers.image.title";

const APT_SKOPEO: &str = "apt-get install skopeo";

/// `tests/support/NAME`
fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}

/// How long one run of another client may take: a hung tool (oras-py retries a refused
/// connection for minutes) fails the test instead of stalling it.
const TOOL_LIMIT: Duration = Duration::from_secs(15);

/// Run `c` to completion within [`TOOL_LIMIT`]; `install` says how to get it if missing.
fn output_within(c: &mut Command, what: &str, install: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = c
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): {install}"));
    let deadline = Instant::now() + TOOL_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {TOOL_LIMIT:?}: {}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: fs::read(&out).unwrap(),
        stderr: fs::read(&err).unwrap(),
    }
}

/// Run `tests/support/oras_py.py ARGS` (PyPI `oras`); its last stdout line is JSON.
fn oras_py(args: &[&str]) -> serde_json::Value {
    let out = output_within(
        Command::new("python3")
            .arg(support("oras_py.py"))
            .args(args),
        "python3",
        "apt-get install python3",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(4) {
        panic!("PyPI oras is missing: {}", err.trim());
    }
    assert!(
        out.status.success(),
        "oras-py {args:?} failed ({:?}): {err}",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("oras-py printed no JSON ({e}): {stdout}\n{err}"))
}

/// The one layer of a manifest, after checking the manifest is a SIF artifact as
/// Apptainer writes it (config `{}` of the SIF config type, one SIF layer).
fn sif_layer_of(manifest: &serde_json::Value) -> &serde_json::Value {
    assert_eq!(manifest["config"]["mediaType"], SIF_CONFIG, "{manifest}");
    assert_eq!(manifest["config"]["digest"], sha256_of(b"{}"), "{manifest}");
    assert_eq!(manifest["config"]["size"], 2, "{manifest}");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], SIF_LAYER, "{manifest}");
    &layers[0]
}

/// A SIF in a fresh cache, pushed to `reg` as `REPO_TAG`: (the cache, the SIF's bytes).
fn pushed_sif(reg: &Registry, repo_tag: &str, payload: &str) -> (Env, Vec<u8>) {
    let env = Env::new();
    let sif = env.sif("tool.sif", payload);
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", repo_tag]));
    stdout_of(env.cmd().args(["push", repo_tag, &reg.oras(repo_tag)]));
    let bytes = fs::read(&sif).unwrap();
    (env, bytes)
}

#[test]
fn sif_pushed_by_sregistry_is_pulled_byte_identical_by_pypi_oras() {
    let reg = Registry::anonymous();
    let (env, original) = pushed_sif(&reg, "lab/tool:1", "read by oras-py");
    let out = env.path("oras-out");
    fs::create_dir(&out).unwrap();
    let v = oras_py(&[
        "pull",
        &format!("{}/lab/tool:1", reg.addr),
        out.to_str().unwrap(),
    ]);
    let layer = sif_layer_of(&v["manifest"]);
    assert_eq!(layer["digest"], sha256_of(&original));
    assert_eq!(layer["size"], original.len() as u64);
    let title = layer["annotations"][TITLE]
        .as_str()
        .unwrap_or_else(|| panic!("the layer has no {TITLE} annotation: {layer}"));
    assert!(
        title.ends_with(".sif") && title.len() > 4 && !title.contains('/'),
        "the title annotation does not name a .sif file: `{title}`"
    );
    // oras-py names the file after the title annotation.
    let files: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let expected = out.join(title);
    assert_eq!(files, [expected.to_str().unwrap()]);
    assert!(
        fs::read(&expected).unwrap() == original,
        "oras-py pulled different bytes"
    );
}

#[test]
fn sif_pushed_by_sregistry_is_copied_byte_identical_by_skopeo() {
    let reg = Registry::anonymous();
    let (env, original) = pushed_sif(&reg, "lab/copied:2", "read by skopeo");
    // A policy of our own: the result must not depend on /etc/containers/policy.json.
    let policy = env.file(
        "policy.json",
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    );
    let out = env.path("skopeo-out");
    let run = output_within(
        Command::new("skopeo")
            .arg("--policy")
            .arg(&policy)
            .args(["copy", "--src-tls-verify=false", "--src-no-creds"])
            .arg(format!("docker://{}/lab/copied:2", reg.addr))
            .arg(format!("dir:{}", out.display())),
        "skopeo",
        APT_SKOPEO,
    );
    assert!(
        run.status.success(),
        "skopeo copy failed ({:?}): {}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let layer = sif_layer_of(&manifest);
    let digest = layer["digest"].as_str().unwrap();
    assert_eq!(digest, sha256_of(&original));
    // `dir:` stores each blob under its hex digest.
    let hex = digest.strip_prefix("sha256:").unwrap();
    let blob = fs::read(out.join(hex))
        .unwrap_or_else(|e| panic!("skopeo did not store the layer {digest}: {e}"));
    assert!(blob == original, "skopeo copied different bytes");
    let config_hex = sha256_of(b"{}");
    let config = fs::read(out.join(config_hex.strip_prefix("sha256:").unwrap())).unwrap();
    assert_eq!(config, b"{}");
}

#[test]
fn sif_pushed_by_pypi_oras_with_apptainer_media_types_is_pulled_by_sregistry() {
    let reg = Registry::anonymous();
    let src = Env::new();
    let sif = src.sif("from-oras.sif", "pushed by oras-py");
    let original = fs::read(&sif).unwrap();
    let target = format!("{}/lab/apptainer:3", reg.addr);
    let v = oras_py(&[
        "push",
        &target,
        sif.to_str().unwrap(),
        SIF_LAYER,
        SIF_CONFIG,
    ]);
    // What the registry holds is the artifact `apptainer push` writes.
    let layer = sif_layer_of(&v["manifest"]);
    assert_eq!(layer["digest"], sha256_of(&original));
    assert_eq!(layer["annotations"][TITLE], "from-oras.sif");

    let env = Env::new();
    let remote = reg.oras("lab/apptainer:3");
    let path = stdout_of(env.cmd().args(["pull", &remote]));
    assert!(
        fs::read(&path).unwrap() == original,
        "sregistry pulled different bytes"
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["inspect", "--json", &target]))).unwrap();
    assert_eq!(v["source"], remote.as_str(), "{v}");
    assert_eq!(v["media_type"], SIF_LAYER, "{v}");
    assert_eq!(v["size"], original.len() as u64, "{v}");
    assert_eq!(v["path"], path.as_str(), "{v}");
    env.assert_blobs_verify();
    assert_eq!(env.blobs().len(), 1);
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
}

// ---------------------------------------------------------------------------------------
// S3 against s3s-fs

#[test]
fn s3_push_then_pull_round_trip_is_byte_identical() {
    let s3 = S3Server::start();
    let env = Env::new();
    let sif = env.sif("tool.sif", "through s3");
    let original = fs::read(&sif).unwrap();
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&sif)
            .args(["--name", "lab/tool:s3"]),
    );
    let remote = format!("s3://{BUCKET}/images/x.sif");
    let out = s3_cmd(&env, &s3, SECRET_KEY, &["push", "lab/tool:s3", &remote])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push failed ({:?}): {}\ns3s-fs log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        s3.log()
    );
    // The object is on the server's disk, whole.
    assert_eq!(s3.objects(), [PathBuf::from("images/x.sif")]);
    assert!(
        fs::read(s3.object("images/x.sif")).unwrap() == original,
        "the stored object differs from the SIF"
    );

    // A fresh cache pulls it back.
    let other = Env::new();
    let path = stdout_of(&mut s3_cmd(
        &other,
        &s3,
        SECRET_KEY,
        &["pull", &remote, "--name", "lab/tool:back"],
    ));
    assert!(
        fs::read(&path).unwrap() == original,
        "the pulled image differs from the SIF"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout_of(other.cmd().args([
        "inspect",
        "--json",
        "lab/tool:back",
    ])))
    .unwrap();
    // The source says where it came from, endpoint included.
    assert_eq!(
        v["source"],
        format!("{remote} (endpoint {})", s3.endpoint()).as_str(),
        "{v}"
    );
    assert_eq!(v["size"], original.len() as u64, "{v}");
    other.assert_blobs_verify();
    assert_eq!(other.blobs().len(), 1);
    assert!(other.tmp_entries().is_empty(), "{:?}", other.tmp_entries());
}

/// A second pull of an unchanged `s3://` object compares its ETag and downloads nothing.
/// Proof that nothing is fetched: the object's bytes are changed on the server's disk
/// behind its back (s3s-fs keeps the ETag it stored), so a download would bring other
/// content; the name must still point to the first. A changed object (pushed anew, new
/// ETag) is downloaded and the name re-pointed; `--force` downloads again.
#[test]
fn a_second_pull_of_an_unchanged_s3_object_downloads_nothing() {
    let s3 = S3Server::start();
    let env = Env::new();
    let v1 = env.sif("v1.sif", "s3 version one");
    let v2 = env.sif("v2.sif", "s3 version two");
    stdout_of(env.cmd().arg("add").arg(&v1).args(["--name", "lab/v:1"]));
    stdout_of(env.cmd().arg("add").arg(&v2).args(["--name", "lab/v:2"]));
    let remote = format!("s3://{BUCKET}/images/v.sif");
    stdout_of(&mut s3_cmd(
        &env,
        &s3,
        SECRET_KEY,
        &["push", "lab/v:1", &remote],
    ));
    let pull = |force: bool| {
        let mut args = vec!["pull", remote.as_str(), "--name", "lab/pulled"];
        if force {
            args.push("--force");
        }
        let out = s3_cmd(&env, &s3, SECRET_KEY, &args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}\n{}", s3.log());
        (
            String::from_utf8(out.stdout)
                .unwrap()
                .trim_end()
                .to_string(),
            err,
        )
    };
    let (first, _) = pull(false);
    assert_eq!(fs::read(&first).unwrap(), fs::read(&v1).unwrap());
    let mut tampered = fs::read(&v1).unwrap();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0xff;
    fs::write(s3.object("images/v.sif"), &tampered).unwrap();
    let (again, err) = pull(false);
    assert_eq!(again, first, "the object was downloaded again");
    assert!(err.contains("unchanged"), "{err}");

    stdout_of(&mut s3_cmd(
        &env,
        &s3,
        SECRET_KEY,
        &["push", "lab/v:2", &remote],
    ));
    let (second, _) = pull(false);
    assert_eq!(fs::read(&second).unwrap(), fs::read(&v2).unwrap());
    let mut tampered = fs::read(&v2).unwrap();
    tampered[mid] ^= 0xff;
    fs::write(s3.object("images/v.sif"), &tampered).unwrap();
    let (forced, _) = pull(true);
    assert_eq!(
        fs::read(&forced).unwrap(),
        tampered,
        "--force did not download again"
    );
}

#[test]
fn s3_with_a_wrong_secret_fails_with_a_clear_error() {
    let s3 = S3Server::start();
    let wrong = "not-the-secret-at-all-0000000000";
    let env = Env::new();
    let sif = env.sif("tool.sif", "wrong secret");
    let original = fs::read(&sif).unwrap();

    // Pull: the object is there, but the signature is wrong.
    fs::create_dir_all(s3.object("images")).unwrap();
    fs::write(s3.object("images/there.sif"), &original).unwrap();
    let remote = format!("s3://{BUCKET}/images/there.sif");
    let err = assert_fails(&mut s3_cmd(&env, &s3, wrong, &["pull", &remote]), 1, "S3");
    assert!(
        err.contains(&remote),
        "the error does not name {remote}: {err}"
    );
    assert!(
        err.contains("AWS_SECRET_ACCESS_KEY"),
        "the error does not point at the credentials: {err}"
    );
    assert!(env.blobs().is_empty(), "{:?}", env.blobs());
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());

    // Push: nothing reaches the bucket.
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&sif)
            .args(["--name", "lab/tool:s3"]),
    );
    let target = format!("s3://{BUCKET}/images/new.sif");
    let err = assert_fails(
        &mut s3_cmd(&env, &s3, wrong, &["push", "lab/tool:s3", &target]),
        1,
        "S3",
    );
    assert!(
        err.contains(&target),
        "the error does not name {target}: {err}"
    );
    assert!(
        err.contains("AWS_SECRET_ACCESS_KEY"),
        "the error does not point at the credentials: {err}"
    );
    assert_eq!(s3.objects(), [PathBuf::from("images/there.sif")]);
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
}

/// A push to S3 tells its progress like every other transfer: a user at a terminal sees a
/// bar (the Python API's `progress` rides on the same hook), and the object arrives whole.
#[test]
fn s3_push_draws_its_progress_on_a_terminal() {
    let s3 = S3Server::start();
    let env = Env::new();
    let sif = env.sif("big.sif", &"s3 progress ".repeat(200_000));
    stdout_of(env.cmd().arg("add").arg(&sif).args(["--name", "lab/big:1"]));
    let remote = format!("s3://{BUCKET}/images/big.sif");
    let line = format!(
        "exec '{}' push lab/big:1 '{remote}' --endpoint '{}'",
        env!("CARGO_BIN_EXE_sregistry"),
        s3.endpoint()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        // A terminal has a TERM (CI's environment may have none).
        .env("TERM", "xterm")
        .env("SREGISTRY_CACHE", &env.cache)
        .env("SREGISTRY_CONFIG_DIR", env.path("config"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\ns3s-fs log:\n{}", s3.log());
    assert!(
        text.contains("KiB/") || text.contains("MiB/"),
        "no progress bar for a push to S3 on a terminal: {text:?}"
    );
    assert!(
        fs::read(s3.object("images/big.sif")).unwrap() == fs::read(&sif).unwrap(),
        "the stored object differs from the SIF"
    );
}

/// The danger: `s3://b/col/a?b.sif` and `s3://b/col/a-b.sif` reduced to one local name,
/// and so did one bucket and key on two endpoints: each `get` downloaded again and
/// re-pointed the name, the next gc deleted what the other `get` had printed, and with two
/// endpoints a `get` through B answered with A's object without asking B. Each is an
/// image of its own, and its name and source say where it came from, endpoint included.
#[test]
fn s3_objects_that_reduce_alike_or_sit_on_two_endpoints_are_images_of_their_own() {
    let (a, b) = (S3Server::start(), S3Server::start());
    let env = Env::new();
    let made: std::collections::HashMap<&str, Vec<u8>> =
        ["a-question-b", "a-dash-b-on-a", "a-dash-b-on-b"]
            .into_iter()
            .map(|w| (w, fs::read(env.sif(&format!("{w}.sif"), w)).unwrap()))
            .collect();
    let content = |what: &str| made[what].clone();
    fs::create_dir_all(a.object("col")).unwrap();
    fs::create_dir_all(b.object("col")).unwrap();
    fs::write(a.object("col/a?b.sif"), content("a-question-b")).unwrap();
    fs::write(a.object("col/a-b.sif"), content("a-dash-b-on-a")).unwrap();
    fs::write(b.object("col/a-b.sif"), content("a-dash-b-on-b")).unwrap();
    let (q, d) = (
        format!("s3://{BUCKET}/col/a?b.sif"),
        format!("s3://{BUCKET}/col/a-b.sif"),
    );
    let gets = [
        (&a, &q, "a-question-b"),
        (&a, &d, "a-dash-b-on-a"),
        (&b, &d, "a-dash-b-on-b"),
    ];
    let mut paths = Vec::new();
    for (server, remote, what) in gets {
        let p = stdout_of(&mut s3_env_cmd(&env, server, &["get", remote]));
        assert!(
            fs::read(&p).unwrap() == content(what),
            "{remote} through {}: other content",
            server.endpoint()
        );
        paths.push(p);
    }
    stdout_of(env.cmd().args(["gc", "-q"]));
    // Every image is still there, and a second get of each answers from the cache: with
    // the objects changed behind the servers' backs, a download would bring other bytes.
    for (server, remote, _) in gets {
        let obj = if remote.contains('?') {
            "col/a?b.sif"
        } else {
            "col/a-b.sif"
        };
        fs::write(server.object(obj), b"changed behind its back").unwrap();
    }
    for ((server, remote, what), p) in gets.iter().zip(&paths) {
        let again = stdout_of(&mut s3_env_cmd(&env, server, &["get", remote]));
        assert_eq!(&again, p, "{remote} through {}", server.endpoint());
        assert!(
            fs::read(p).unwrap() == content(what),
            "{remote}: other content"
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["list", "--json"]))).unwrap();
    let mut seen: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let host = |s: &S3Server| s.endpoint().trim_start_matches("http://").to_string();
    for (server, remote, _) in gets {
        let source = format!("{remote} (endpoint {})", server.endpoint());
        assert!(
            seen.iter().any(|(n, s)| *s == source
                && n.starts_with(&format!("{}/s3/{BUCKET}/col/", host(server)))),
            "no name for {source}: {seen:?}"
        );
    }
}

/// Bad S3 credentials made other users' concurrent pulls of the same object fail at once,
/// each told to check its own `AWS_ACCESS_KEY_ID`: the `.failed` note beside the pull
/// lock did not depend on who failed, or why. A refused signature is the puller's own
/// failure; a waiter with good keys takes the lock and pulls. (The first pull stops,
/// holding the lock, just before it would note its failure, until the second is seen
/// waiting.)
#[test]
fn one_users_bad_s3_secret_does_not_fail_another_users_waiting_pull() {
    use std::io::{BufRead, BufReader, Read};
    let s3 = S3Server::start();
    let env = env_with_lab_tool();
    let remote = format!("s3://{BUCKET}/lab/tool.sif");
    s3_cmd(&env, &s3, SECRET_KEY, &["push", "lab/tool:1", &remote])
        .assert()
        .success();
    let pull = |secret: &str| {
        let mut c = s3_std(&env, &s3, secret, &["pull", &remote]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    };
    let resume = env.path("resume");
    let mut first = pull("not-the-secret")
        .env("SREGISTRY_TEST_PAUSE", "pull-failed")
        .env("SREGISTRY_TEST_RESUME", &resume)
        .spawn()
        .unwrap();
    let mut first_err = BufReader::new(first.stderr.take().unwrap());
    let mut line = String::new();
    first_err.read_line(&mut line).unwrap();
    assert!(line.contains("paused at pull-failed"), "{line}");
    let mut second = pull(SECRET_KEY).spawn().unwrap();
    let mut second_err = BufReader::new(second.stderr.take().unwrap());
    let mut said = String::new();
    second_err.read_line(&mut said).unwrap();
    assert!(said.contains("waiting for another process"), "{said}");
    fs::write(&resume, "").unwrap();

    let mut rest = String::new();
    first_err.read_to_string(&mut rest).unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(1), "{rest}");
    assert!(rest.contains("AWS_SECRET_ACCESS_KEY"), "{rest}");
    let mut rest = String::new();
    second_err.read_to_string(&mut rest).unwrap();
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success(), "{said}{rest}\n{}", s3.log());
    let path = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    let held = stdout_of(env.cmd().args(["get", "lab/tool:1"]));
    assert_eq!(fs::read(path).unwrap(), fs::read(held).unwrap());
}
