//! Invariant 7: one `docker://` manifest (same platform, same settings) converts to one
//! byte-identical SIF, whoever converts, wherever, whenever, and however often.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::images;
use crate::registry::Registry;

fn docker(reg: &Registry, repo_tag: &str) -> String {
    format!("docker://{}/{repo_tag}", reg.addr)
}

/// `sregistry get REFERENCE` on `env`'s cache under `umask`, from `cwd`, with the clock at
/// `now` and `SOURCE_DATE_EPOCH` as given: the path it prints.
fn get_as(
    env: &Env,
    umask: &str,
    cwd: &Path,
    now: &str,
    epoch: Option<&str>,
    reference: &str,
) -> String {
    let inner = env.std_cmd();
    let mut c = Command::new("sh");
    c.args(["-c", &format!("umask {umask}; exec \"$0\" \"$@\"")])
        .arg(inner.get_program())
        .args(["get", reference])
        .current_dir(cwd);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env("SREGISTRY_NOW", now);
    match epoch {
        Some(e) => c.env("SOURCE_DATE_EPOCH", e),
        None => c.env_remove("SOURCE_DATE_EPOCH"),
    };
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "get failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The danger: two nodes (or one node twice) converting the same manifest get two
/// digests, so a name moves to new content on every conversion and the next gc deletes
/// the path a job was handed. Two caches, other umasks, working directories, clocks and
/// `SOURCE_DATE_EPOCH`: the same digest and the same bytes.
#[test]
fn one_manifest_converts_to_the_same_bytes_in_two_caches() {
    let reg = Registry::anonymous();
    let (a, b) = (Env::new(), Env::new());
    let work = a.path("img");
    fs::create_dir_all(&work).unwrap();
    let l = images::app_image(&work);
    let reference = docker(&reg, "lab/app:1");
    l.push("app", &reference, &[]);
    let first = get_as(&a, "022", Path::new("/"), "1000000000", None, &reference);
    let second = get_as(
        &b,
        "077",
        b.dir.path(),
        "2000000000",
        Some("12345"),
        &reference,
    );
    assert_ne!(first, second, "one cache, not two");
    assert_eq!(
        Path::new(&first).file_name(),
        Path::new(&second).file_name(),
        "two digests for one manifest"
    );
    assert!(
        fs::read(&first).unwrap() == fs::read(&second).unwrap(),
        "the two SIFs differ in their bytes"
    );
    a.assert_blobs_verify();
    b.assert_blobs_verify();
}

/// The reproduction of issue 20: `get`, then `gc --max-size 1K` (the layers go first,
/// the image stays: it was just used), then `pull` of the unchanged tag. The pull must
/// keep the SIF the name has (no layer fetched, "unchanged"), so that a gc after it does
/// not delete the path `get` printed; `pull --force` fetches and converts again, to the
/// same digest.
#[test]
fn a_repull_after_gc_dropped_the_layers_keeps_the_sif_and_force_gives_the_same_digest() {
    let env = Env::new();
    let reg = Registry::anonymous();
    let work = env.path("img");
    fs::create_dir_all(&work).unwrap();
    let l = images::app_image(&work);
    let reference = docker(&reg, "lab/app:1");
    l.push("app", &reference, &[]);
    let layer_gets = || {
        l.layers("app")
            .iter()
            .map(|d| reg.blob_gets(d))
            .sum::<usize>()
    };
    let a = stdout_of(env.cmd().args(["get", &reference]));
    stdout_of(env.cmd().args(["gc", "--max-size", "1K"]));
    assert_eq!(
        env.blobs(),
        vec![std::path::PathBuf::from(&a)],
        "gc should have dropped the layers and kept the image"
    );
    let fetched = layer_gets();
    let out = env.cmd().args(["pull", &reference]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), a);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("unchanged"), "{said}");
    assert_eq!(layer_gets(), fetched, "an unchanged pull fetched layers");
    // Nothing else points at `a`'s content if the pull moved the name: an explicit
    // `--min-idle 0` gc would delete it.
    stdout_of(env.cmd().args(["gc", "--min-idle", "0"]));
    assert!(Path::new(&a).is_file(), "gc deleted the path get printed");

    // A `pull --force` killed after its download or its conversion leaves the name where
    // it was; one that gc races at its commit point ends on the same digest.
    let name = format!("{}/lab/app:1", reg.addr);
    for point in ["docker-downloaded", "docker-converted"] {
        let args = ["pull".as_ref(), "--force".as_ref(), reference.as_ref()];
        let mut child = env.spawn_paused(point, None, &args);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(stdout_of(env.cmd().args(["get", &name])), a, "{point}");
    }
    let resume = env.path("resume");
    let args = [
        "pull".as_ref(),
        "-q".as_ref(),
        "--force".as_ref(),
        reference.as_ref(),
    ];
    let child = env.spawn_paused("docker-converted", Some(&resume), &args);
    stdout_of(env.cmd().args(["gc", "--min-idle", "0"]));
    fs::write(&resume, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), a);

    // --force fetches and converts again: the same digest.
    let forced = stdout_of(env.cmd().args(["pull", "-q", "--force", &reference]));
    assert_eq!(forced, a, "pull --force made another digest");
    assert!(layer_gets() > fetched, "--force fetched nothing");
    stdout_of(env.cmd().args(["gc", "--min-idle", "0"]));
    assert!(Path::new(&a).is_file());
    env.assert_blobs_verify();
}
