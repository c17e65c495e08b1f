//! `docker://` images against a real registry: images built with umoci, pushed with
//! skopeo, pulled, converted to SIF, shared, and pulled once however many ask.

use std::collections::HashSet;
use std::fs;
use std::process::Stdio;

use crate::common::*;
use crate::images::{self, Layout};
use crate::registry::Registry;

fn docker(reg: &Registry, repo_tag: &str) -> String {
    format!("docker://{}/{repo_tag}", reg.addr)
}

/// The registry with the `app` image pushed as `lab/app:1`; the layout it came from.
fn registry_with_app(env: &Env) -> (Registry, Layout) {
    let reg = Registry::anonymous();
    let work = env.path("img");
    fs::create_dir_all(&work).unwrap();
    let l = images::app_image(&work);
    l.push("app", &docker(&reg, "lab/app:1"), &[]);
    (reg, l)
}

#[test]
fn docker_get_converts_to_a_sif_and_records_what_the_image_runs() {
    let env = Env::new();
    let (reg, layout) = registry_with_app(&env);
    let path = stdout_of(env.cmd().args(["get", &docker(&reg, "lab/app:1")]));
    let out = std::process::Command::new("siftool")
        .arg("list")
        .arg(&path)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "siftool list: {list}");
    // siftool marks the primary system partition with `*`.
    assert!(list.contains("FS (Squashfs/*System/amd64)"), "{list}");
    assert!(list.contains("JSON.Generic"), "{list}");
    let v: serde_json::Value = serde_json::from_str(&stdout_of(env.cmd().args([
        "inspect",
        "--json",
        &format!("{}/lab/app:1", reg.addr),
    ])))
    .unwrap();
    assert_eq!(v["source"], docker(&reg, "lab/app:1"));
    let labels = &v["labels"];
    assert_eq!(
        labels["org.sregistry.docker.manifest"],
        layout.manifest_digest("app")
    );
    assert_eq!(labels["org.sregistry.docker.platform"], "linux/amd64");
    assert_eq!(
        labels["org.sregistry.docker.cmd"],
        r#"["/opt/app/hello.sh","default-arg"]"#
    );
    assert!(
        labels["org.sregistry.docker.env"]
            .as_str()
            .unwrap()
            .contains("GREETING=the image"),
        "{labels}"
    );
    assert_eq!(labels["org.example.team"], "hpc");
    assert_eq!(
        labels["org.sregistry.docker.layers"],
        layout.layers("app").join(",")
    );
    assert_eq!(v["sif"]["header"]["arch"], "amd64");
    // A second get answers from the cache: the same path, nothing fetched.
    let before = reg.log().lines().count();
    let again = stdout_of(env.cmd().args(["get", &docker(&reg, "lab/app:1")]));
    assert_eq!(again, path);
    assert_eq!(
        reg.log().lines().count(),
        before,
        "a cached get went to the registry"
    );
    env.assert_blobs_verify();
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
}

#[test]
fn concurrent_docker_gets_download_and_convert_once() {
    let env = Env::new();
    let (reg, layout) = registry_with_app(&env);
    let reference = docker(&reg, "lab/app:1");
    let children: Vec<_> = (0..32)
        .map(|_| {
            env.std_cmd()
                .args(["get", &reference])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut paths = HashSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        paths.insert(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }
    assert_eq!(paths.len(), 1, "{paths:?}");
    for layer in layout.layers("app") {
        assert_eq!(
            reg.blob_gets(&layer),
            1,
            "layer {layer} served more than once"
        );
    }
    // One SIF, plus each layer and the config once.
    assert_eq!(env.blobs().len(), 1 + layout.layers("app").len() + 1);
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
}

#[test]
fn images_sharing_a_base_layer_download_only_their_own_layers() {
    let env = Env::new();
    let reg = Registry::anonymous();
    let work = env.path("img");
    fs::create_dir_all(&work).unwrap();
    let mut l = Layout::new(&work);
    l.layer("base", "bb", images::busybox_root);
    l.layer("bb", "one", |root| {
        fs::write(root.join("one"), "1").unwrap()
    });
    l.layer("bb", "two", |root| {
        fs::write(root.join("two"), "2").unwrap()
    });
    l.push("one", &docker(&reg, "lab/one:1"), &[]);
    l.push("two", &docker(&reg, "lab/two:1"), &[]);
    let (one, two) = (l.layers("one"), l.layers("two"));
    assert_eq!(one[0], two[0], "the images must share their base layer");
    stdout_of(env.cmd().args(["get", &docker(&reg, "lab/one:1")]));
    stdout_of(env.cmd().args(["get", &docker(&reg, "lab/two:1")]));
    assert_eq!(
        reg.blob_gets(&one[0]),
        1,
        "the shared base layer was fetched twice"
    );
    assert_eq!(reg.blob_gets(&one[1]), 1);
    assert_eq!(reg.blob_gets(&two[1]), 1);
    env.assert_blobs_verify();
}

#[test]
fn a_pull_of_an_unchanged_tag_downloads_nothing_and_a_changed_one_repoints() {
    let env = Env::new();
    let (reg, mut layout) = registry_with_app(&env);
    let reference = docker(&reg, "lab/app:1");
    let first = stdout_of(env.cmd().args(["pull", "-q", &reference]));
    let blob_gets = |reg: &Registry| {
        reg.log()
            .lines()
            .filter(|l| l.contains("/blobs/sha256:") && l.contains("\"GET "))
            .count()
    };
    let before = blob_gets(&reg);
    let again = stdout_of(env.cmd().args(["pull", "-q", &reference]));
    assert_eq!(again, first);
    assert_eq!(blob_gets(&reg), before, "an unchanged pull fetched blobs");
    // The tag moves: the next pull converts the new image and re-points the name.
    layout.layer("app", "app2", |root| {
        fs::write(root.join("new"), "x").unwrap()
    });
    layout.push("app2", &reference, &[]);
    let changed = stdout_of(env.cmd().args(["pull", "-q", &reference]));
    assert_ne!(changed, first);
    let v: serde_json::Value = serde_json::from_str(&stdout_of(env.cmd().args([
        "inspect",
        "--json",
        &format!("{}/lab/app:1", reg.addr),
    ])))
    .unwrap();
    assert_eq!(
        v["labels"]["org.sregistry.docker.manifest"],
        layout.manifest_digest("app2")
    );
}

#[test]
fn docker_references_that_cannot_work_fail_with_one_clear_line() {
    let env = Env::new();
    let reg = Registry::anonymous();
    assert_fails(
        env.cmd().args(["get", "docker://UPPER/case"]),
        2,
        "docker://UPPER/case",
    );
    assert_fails(
        env.cmd()
            .args(["get", &docker(&reg, "lab/none:1"), "--platform", "linux"]),
        2,
        "os/arch",
    );
    assert_fails(
        env.cmd().args(["get", &docker(&reg, "lab/none:1")]),
        3,
        "lab/none",
    );
    assert!(env.tmp_entries().is_empty());
}

/// The file the test registry serves a blob from.
fn registry_blob(reg: &Registry, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    reg.dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// The danger: a registry (or a proxy before it) that serves other bytes than the digest
/// it names, or fewer than the manifest declares, must not get a SIF built from them
/// into the cache under the name jobs will run.
#[test]
fn a_layer_that_does_not_match_its_digest_or_is_cut_short_stores_nothing() {
    let env = Env::new();
    let (reg, layout) = registry_with_app(&env);
    let top = layout.layers("app").last().unwrap().clone();
    let blob = registry_blob(&reg, &top);
    let good = fs::read(&blob).unwrap();
    // Same length, other bytes.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&blob, &bad).unwrap();
    let reference = docker(&reg, "lab/app:1");
    assert_fails(env.cmd().args(["get", &reference]), 1, &top);
    assert!(env.names().is_empty(), "{:?}", env.names());
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    // Cut short.
    fs::write(&blob, &good[..good.len() / 3]).unwrap();
    assert_fails(env.cmd().args(["get", &reference]), 1, "ended after");
    assert!(env.names().is_empty());
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    // Mended, the same command works and the result verifies.
    fs::write(&blob, &good).unwrap();
    stdout_of(env.cmd().args(["get", &reference]));
    env.assert_blobs_verify();
}

/// The danger: a job killed (time limit, node failure) after the download or in the
/// middle of the conversion must leave no half-made image behind a name, and the next
/// job must convert afresh rather than trust a leftover.
#[test]
fn a_pull_killed_after_download_or_conversion_leaves_nothing_and_the_next_converts_afresh() {
    let env = Env::new();
    let (reg, _layout) = registry_with_app(&env);
    let reference = docker(&reg, "lab/app:1");
    for point in ["docker-downloaded", "docker-converted"] {
        let mut child = env.spawn_paused(point, None, &["get".as_ref(), reference.as_ref()]);
        assert!(
            !env.tmp_entries().is_empty(),
            "{point}: nothing staged in tmp/"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(env.names().is_empty(), "{point}: a name appeared");
    }
    // The next get on this machine removes what the killed ones left, and converts.
    let path = stdout_of(env.cmd().args(["get", &reference]));
    assert!(std::path::Path::new(&path).is_file());
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    env.assert_blobs_verify();
}
