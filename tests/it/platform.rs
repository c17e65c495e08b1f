//! The platform of a `docker://` image is what its config says: images built with umoci
//! for other architectures, pushed with skopeo to a real registry, asked for as another
//! platform, alone or behind an index that claims otherwise.

use std::fs;

use crate::common::*;
use crate::images::{self, Layout};
use crate::registry::Registry;
use crate::support::{inspect, sha256_of};

fn docker(reg: &Registry, repo_tag: &str) -> String {
    format!("docker://{}/{repo_tag}", reg.addr)
}

/// An architecture this machine is not, for an image no `--platform` default matches.
const FOREIGN: &str = if cfg!(target_arch = "s390x") {
    "riscv64"
} else {
    "s390x"
};

/// A layout with a busybox layer and two images on it: `amd` (a linux/amd64 config) and
/// `foreign` (a linux/FOREIGN config).
fn two_architectures(work: &std::path::Path) -> Layout {
    fs::create_dir_all(work).unwrap();
    let mut l = Layout::new(work);
    l.layer("base", "bb", images::busybox_root);
    l.layer("bb", "amd", |root| {
        fs::write(root.join("arch"), "amd64\n").unwrap()
    });
    l.config("amd", &["--os", "linux", "--architecture", "amd64"]);
    l.layer("bb", "foreign", |root| {
        fs::write(root.join("arch"), format!("{FOREIGN}\n")).unwrap()
    });
    l.config("foreign", &["--os", "linux", "--architecture", FOREIGN]);
    l
}

/// Push an image index tagged `tag` whose entries point at `entries` (manifest digest of
/// the layout, the platform the entry claims).
fn push_index(l: &Layout, tag: &str, entries: &[(String, serde_json::Value)], dest: &str) {
    let blob = |d: &str| {
        l.dir
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, platform)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": fs::metadata(blob(digest)).unwrap().len(),
                "platform": platform,
            })
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let digest = sha256_of(&body);
    fs::write(blob(&digest), &body).unwrap();
    let mut idx: serde_json::Value =
        serde_json::from_slice(&fs::read(l.dir.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest, "size": body.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }));
    fs::write(l.dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    l.push(tag, dest, &["--all"]);
}

/// The danger: an image of one architecture stored as another (label and SIF header say
/// arm64, the binaries are amd64) is handed to jobs on nodes where it cannot run, and an
/// image of a foreign architecture passes for this machine's. The config decides; a
/// request that disagrees exits 1 naming what the image is, before any layer is fetched.
#[test]
fn an_image_is_never_stored_as_a_platform_its_config_does_not_say() {
    let env = Env::new();
    let reg = Registry::anonymous();
    let l = two_architectures(&env.path("img"));
    let (one, foreign) = (docker(&reg, "lab/one:1"), docker(&reg, "lab/foreign:1"));
    l.push("amd", &one, &[]);
    l.push("foreign", &foreign, &[]);
    let fetched_layers = |tag: &str| {
        l.layers(tag)
            .iter()
            .map(|d| reg.blob_gets(d))
            .sum::<usize>()
    };

    // Asked for with --platform: refused, naming what the image is and how to get it.
    let err = assert_fails(
        env.cmd().args(["get", "--platform", "linux/arm64", &one]),
        1,
        "linux/amd64",
    );
    assert!(
        err.contains("linux/arm64") && err.contains("--platform linux/amd64"),
        "{err}"
    );
    // No --platform: this machine's, which a foreign image is not.
    let err = assert_fails(env.cmd().args(["get", &foreign]), 1, FOREIGN);
    assert!(
        err.contains(&format!("--platform linux/{FOREIGN}")),
        "{err}"
    );
    assert!(env.names().is_empty(), "{:?}", env.names());
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    assert_eq!(fetched_layers("amd") + fetched_layers("foreign"), 0);

    // Asked for as what they are, both convert and say so: label and SIF header.
    stdout_of(
        env.cmd()
            .args(["get", "--platform", &format!("linux/{FOREIGN}"), &foreign]),
    );
    // Each platform is its own image: the s390x one is named for it.
    let v = inspect(&env, &format!("{}/lab/foreign:1-linux-{FOREIGN}", reg.addr));
    assert_eq!(
        v["labels"]["org.sregistry.docker.platform"],
        format!("linux/{FOREIGN}")
    );
    assert_eq!(v["sif"]["header"]["arch"], FOREIGN);
    stdout_of(env.cmd().args(["get", "--platform", "linux/amd64", &one]));
    let v = inspect(&env, &format!("{}/lab/one:1", reg.addr));
    assert_eq!(v["labels"]["org.sregistry.docker.platform"], "linux/amd64");
    assert_eq!(v["sif"]["header"]["arch"], "amd64");
    // Cached and unchanged, it is still not what another platform asks for.
    assert_fails(
        env.cmd().args(["pull", "--platform", "linux/arm64", &one]),
        1,
        "the image is linux/amd64",
    );
    env.assert_blobs_verify();
}

/// The danger: an index (hand-made, or a registry's mistake) whose arm64 entry points at
/// an amd64 image gets that image stored and handed out as arm64. The chosen manifest's
/// config must agree with the entry, or the pull exits 1 naming what the image is.
#[test]
fn an_index_entry_that_claims_another_platform_than_its_config_is_refused() {
    let env = Env::new();
    let reg = Registry::anonymous();
    let l = two_architectures(&env.path("img"));
    let reference = docker(&reg, "lab/lying:1");
    let amd = l.manifest_digest("amd");
    push_index(
        &l,
        "lying",
        &[
            (
                amd.clone(),
                serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
            ),
            (
                l.manifest_digest("foreign"),
                serde_json::json!({"os": "linux", "architecture": "amd64"}),
            ),
        ],
        &reference,
    );
    let err = assert_fails(
        env.cmd()
            .args(["get", "--platform", "linux/arm64", &reference]),
        1,
        "the image is linux/amd64",
    );
    assert!(err.contains("linux/arm64"), "{err}");
    // The entry this machine's platform picks is the foreign image: refused as well.
    assert_fails(
        env.cmd().args(["get", &reference]),
        1,
        &format!("the image is linux/{FOREIGN}"),
    );
    assert!(env.names().is_empty(), "{:?}", env.names());
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    for d in l.layers("amd").iter().chain(&l.layers("foreign")) {
        assert_eq!(reg.blob_gets(d), 0, "layer {d} was fetched");
    }
}
