//! `docker://` images against a real registry: images built with umoci, pushed with
//! skopeo, pulled, converted to SIF, shared, and pulled once however many ask.

use std::collections::HashSet;
use std::fs;
use std::process::Stdio;

use crate::common::*;
use crate::images::{self, Layout};
use crate::registry::Registry;
use crate::support::{sha256_hex, sha256_of};

fn docker(reg: &Registry, repo_tag: &str) -> String {
    format!("docker://{}/{repo_tag}", reg.addr)
}

/// A real registry, and a layout holding a busybox base layer `bb` (nothing pushed yet).
pub(crate) fn registry_with_busybox_base(env: &Env) -> (Registry, Layout) {
    let reg = Registry::anonymous();
    let work = env.path("img");
    fs::create_dir_all(&work).unwrap();
    let mut l = Layout::new(&work);
    l.layer("base", "bb", images::busybox_root);
    (reg, l)
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
    // verify hashes the layers and the config too, and counts none of them as unused.
    let report: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["verify", "--json"]))).unwrap();
    assert_eq!(
        report["blobs_checked"],
        1 + layout.layers("app").len() + 1,
        "{report}"
    );
    assert_eq!(report["unreferenced"], 0, "{report}");
}

/// 32 jobs `get` one uncached `docker://` image: its layers are downloaded once and it is
/// converted once. The first is held with its layers downloaded (per-pull lock held) until
/// each of the other 31 has said it waits on that lock; `mksquashfs` is a wrapper on
/// `PATH` that counts its runs before running the real one.
#[test]
fn concurrent_docker_gets_download_and_convert_once() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let (reg, layout) = registry_with_app(&env);
    let reference = docker(&reg, "lab/app:1");
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v mksquashfs"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let (bin, runs) = (env.path("counting-bin"), env.path("mksquashfs-runs"));
    fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("mksquashfs");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho run >> '{}'\nexec '{}' \"$@\"\n",
            runs.display(),
            real.trim()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let path_var = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let resume = env.path("resume");
    let mut holder = env
        .std_cmd()
        .env("PATH", &path_var)
        .env("SREGISTRY_TEST_PAUSE", "docker-downloaded")
        .env("SREGISTRY_TEST_RESUME", &resume)
        .args(["get", &reference])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_for_pause(&mut holder);
    let started: Vec<_> = (0..31)
        .map(|_| {
            PullWaiter::spawn(
                env.std_cmd()
                    .env("PATH", &path_var)
                    .args(["get", &reference]),
            )
        })
        .collect();
    let waiters: Vec<_> = started.into_iter().map(PullWaiter::waiting).collect();
    assert!(!runs.exists(), "converted before the holder went on");
    fs::write(&resume, b"").unwrap();
    let out = holder.wait_with_output().unwrap();
    assert!(out.status.success(), "the holder: {:?}", out.status);
    let mut paths = HashSet::new();
    paths.insert(String::from_utf8(out.stdout).unwrap().trim().to_string());
    for w in waiters {
        let (status, stdout, err) = w.finish();
        assert!(status.success(), "{err}");
        paths.insert(stdout.trim().to_string());
    }
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert_eq!(
        fs::read_to_string(&runs).unwrap(),
        "run\n",
        "mksquashfs ran other than once"
    );
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
    let (reg, mut l) = registry_with_busybox_base(&env);
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
    let out = env.cmd().args(["pull", &reference]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), first);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("unchanged"), "{said}");
    assert_eq!(blob_gets(&reg), before, "an unchanged pull fetched blobs");
    // --force fetches and converts again.
    stdout_of(env.cmd().args(["pull", "-q", "--force", &reference]));
    assert!(blob_gets(&reg) > before, "--force fetched nothing");
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

/// A multi-platform index pushed as one reference: the image of the platform asked for.
fn push_two_platform_index(l: &mut Layout, dest: &str) -> (String, String) {
    l.layer("bb", "amd", |root| {
        fs::write(root.join("arch"), "amd64\n").unwrap()
    });
    l.layer("bb", "arm", |root| {
        fs::write(root.join("arch"), "arm64\n").unwrap()
    });
    l.config("arm", &["--architecture", "arm64", "--os", "linux"]);
    let (amd, arm) = (l.manifest_digest("amd"), l.manifest_digest("arm"));
    let size = |d: &str| {
        fs::metadata(
            l.dir
                .join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap()),
        )
        .unwrap()
        .len()
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": size(&arm),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd, "size": size(&amd),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    let body = serde_json::to_vec(&index).unwrap();
    let digest = sha256_hex(&body);
    fs::write(l.dir.join("blobs/sha256").join(&digest), &body).unwrap();
    let mut idx: serde_json::Value =
        serde_json::from_slice(&fs::read(l.dir.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"), "size": body.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}
        }));
    fs::write(l.dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    l.push("multi", dest, &["--all"]);
    (amd, arm)
}

/// Read one file out of a SIF's squashfs partition.
fn file_in_sif(env: &Env, sif: &str, inner: &str) -> String {
    let out = env.path(&format!("x-{}", inner.replace('/', "_")));
    let part = env.path("partition.sqfs");
    let _ = fs::remove_file(&part);
    run(std::process::Command::new("siftool")
        .args(["dump", "1", sif])
        .stdout(fs::File::create(&part).unwrap()));
    let _ = fs::remove_dir_all(&out);
    run(std::process::Command::new("unsquashfs")
        .args(["-no-progress", "-q", "-d"])
        .arg(&out)
        .arg(&part)
        .arg(inner));
    fs::read_to_string(out.join(inner)).unwrap()
}

#[test]
fn the_platform_asked_for_is_chosen_from_an_index_and_recorded() {
    let env = Env::new();
    let (reg, mut l) = registry_with_busybox_base(&env);
    let reference = docker(&reg, "lab/multi:1");
    let (amd, arm) = push_two_platform_index(&mut l, &reference);
    let host = stdout_of(env.cmd().args(["get", &reference]));
    assert_eq!(file_in_sif(&env, &host, "arch"), "amd64\n");
    // Another platform is another image, pulled separately, under its own lock.
    let other = Env::new();
    let p = stdout_of(
        other
            .cmd()
            .args(["pull", "-q", &reference, "--platform", "linux/arm64"]),
    );
    assert_eq!(file_in_sif(&other, &p, "arch"), "arm64\n");
    let v: serde_json::Value = serde_json::from_str(&stdout_of(other.cmd().args([
        "inspect",
        "--json",
        &format!("{}/lab/multi:1-linux-arm64", reg.addr),
    ])))
    .unwrap();
    assert_eq!(v["labels"]["org.sregistry.docker.manifest"], arm.as_str());
    assert_eq!(v["labels"]["org.sregistry.docker.platform"], "linux/arm64");
    assert_eq!(v["sif"]["header"]["arch"], "arm64");
    assert_ne!(amd, arm);
    // A platform the index does not offer: one line naming what it offers, exit 1.
    assert_fails(
        env.cmd()
            .args(["pull", &reference, "--platform", "linux/s390x"]),
        1,
        "linux/arm64/v8, linux/amd64",
    );
}

#[test]
fn zstd_and_docker_schema_2_images_convert_to_the_same_tree() {
    let env = Env::new();
    let (reg, layout) = registry_with_app(&env);
    layout.push_zstd(
        "app",
        &env.path("zstd-layout"),
        &docker(&reg, "lab/app:zstd"),
    );
    layout.push("app", &docker(&reg, "lab/app:v2s2"), &["--format", "v2s2"]);
    let listing = |tag: &str| {
        let sif = stdout_of(
            env.cmd()
                .args(["get", &docker(&reg, &format!("lab/app:{tag}"))]),
        );
        tree_of(env.dir.path(), &sif)
            .into_iter()
            .filter(|l| !l.contains("/.singularity.d"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    layout.push("app", &docker(&reg, "lab/app:1"), &[]);
    let gzip = listing("1");
    assert!(gzip.contains("opt/app/hello.sh"), "{gzip}");
    assert_eq!(listing("zstd"), gzip);
    assert_eq!(listing("v2s2"), gzip);
    // They were other images on the wire: zstd layers, a Docker manifest.
    let label = |tag: &str, key: &str| {
        let v: serde_json::Value = serde_json::from_str(&stdout_of(env.cmd().args([
            "inspect",
            "--json",
            &format!("{}/lab/app:{tag}", reg.addr),
        ])))
        .unwrap();
        v["labels"][key].as_str().unwrap().to_string()
    };
    let layers = "org.sregistry.docker.layers";
    assert_ne!(label("zstd", layers), label("1", layers));
    let manifest = "org.sregistry.docker.manifest";
    assert_ne!(label("v2s2", manifest), label("1", manifest));
}

/// `unsquashfs -lln` of a SIF's system partition, without the date column.
fn tree_of(work: &std::path::Path, sif: &str) -> Vec<String> {
    let part = work.join(format!("{}.sqfs", sif.replace('/', "_")));
    run(std::process::Command::new("siftool")
        .args(["dump", "1", sif])
        .stdout(fs::File::create(&part).unwrap()));
    let out = std::process::Command::new("unsquashfs")
        .args(["-lln", "-no-progress"])
        .arg(&part)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(['d', '-', 'l', 'c', 'b', 'p', 's']))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {:?}", f[0], f[1], f[2], &f[5..])
        })
        .collect()
}

/// The danger: a conversion that takes owners and modes from the user who runs it
/// (as a staging tree on disk would) gives an ordinary user's cluster jobs an image whose
/// root-owned and setuid files belong to that user, unlike the root-made one.
#[test]
fn an_ordinary_users_conversion_records_owners_and_setuid_as_roots_does() {
    if skip_unless_root(
        "an_ordinary_users_conversion_records_owners_and_setuid_as_roots_does",
        "needs root to create the test users and the image's owners",
    ) {
        return;
    }
    use std::os::unix::fs::{PermissionsExt, chown};
    let (env, bin, cache) = crate::shared::shared_cache_for_the_users();
    let (reg, mut l) = registry_with_busybox_base(&env);
    l.layer("bb", "owned", |root| {
        let su = root.join("bin/su-tool");
        fs::write(&su, "#!/bin/sh\nid\n").unwrap();
        fs::set_permissions(&su, fs::Permissions::from_mode(0o4755)).unwrap();
        let data = root.join("srv/data");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("f"), "x").unwrap();
        chown(&data, Some(1234), Some(5678)).unwrap();
        chown(data.join("f"), Some(1234), Some(5678)).unwrap();
    });
    let reference = docker(&reg, "lab/owned:1");
    l.push("owned", &reference, &[]);
    let as_alice = crate::shared::ok(crate::shared::as_user(
        crate::shared::USERS[0],
        &bin,
        &cache,
        &["get", &reference],
    ));
    let root_env = Env::new();
    let as_root = stdout_of(root_env.cmd().args(["get", &reference]));
    let (alice_tree, root_tree) = (
        tree_of(env.dir.path(), &as_alice),
        tree_of(env.dir.path(), &as_root),
    );
    assert!(
        alice_tree
            .iter()
            .any(|l| l.starts_with("-rwsr-xr-x 0/0 ") && l.contains("bin/su-tool")),
        "{alice_tree:#?}"
    );
    assert!(
        alice_tree
            .iter()
            .any(|l| l.contains("1234/5678") && l.contains("srv/data/f")),
        "{alice_tree:#?}"
    );
    let mine = |t: &[String]| {
        t.iter()
            .filter(|l| !l.contains(".singularity.d"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(mine(&alice_tree), mine(&root_tree));
    // Not only the same tree: the same bytes, so the same digest (invariant 7).
    assert!(
        fs::read(&as_alice).unwrap() == fs::read(&as_root).unwrap(),
        "alice's conversion and root's differ in their bytes"
    );
}

/// `export` writes a layout the OCI tools read, with blobs that check out.
#[test]
fn export_writes_an_oci_layout_that_skopeo_and_umoci_read() {
    let env = Env::new();
    let (reg, layout) = registry_with_app(&env);
    stdout_of(env.cmd().args(["get", &docker(&reg, "lab/app:1")]));
    let name = format!("{}/lab/app:1", reg.addr);
    let dir = env.path("exported");
    stdout_of(
        env.cmd()
            .args(["export", &name])
            .arg(&dir)
            .args(["--tag", "v1"]),
    );
    // Every blob is what its name says.
    let blobs = dir.join("blobs/sha256");
    let mut n = 0;
    for e in fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        let got = sha256_hex(&fs::read(e.path()).unwrap());
        assert_eq!(
            got,
            e.file_name().to_string_lossy(),
            "blob does not check out"
        );
        n += 1;
    }
    assert_eq!(
        n,
        layout.layers("app").len() + 2,
        "layers, config and manifest"
    );
    // The layers are the cache's own files (hard links), not copies.
    let layer = layout.layers("app")[0].clone();
    let linked = fs::metadata(blobs.join(layer.strip_prefix("sha256:").unwrap())).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(linked.nlink() >= 2, "the layer was copied, not linked");
    // umoci unpacks it to the image's tree; skopeo copies it into a registry.
    let bundle = env.path("bundle");
    run(std::process::Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:v1", dir.display())])
        .arg(&bundle));
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/opt/app/hello.sh")).unwrap(),
        "#!/bin/sh\necho \"hello from $GREETING: $*\"\n"
    );
    run(std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", dir.display()))
        .arg(docker(&reg, "lab/again:1")));
    let other = Env::new();
    stdout_of(other.cmd().args(["get", &docker(&reg, "lab/again:1")]));
    // A name that is not a converted image: one line, exit 1, nothing written.
    let plain = env.file("plain.img", b"not an image");
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&plain)
            .args(["--name", "lab/plain:1"]),
    );
    let nowhere = env.path("nowhere");
    assert_fails(
        env.cmd().args(["export", "lab/plain:1"]).arg(&nowhere),
        1,
        "not converted from a container image",
    );
    assert!(!nowhere.exists());
}

/// gc keeps a converted image's layers while its name is used, and drops them first when
/// the cache is over its size; an export then says how to get them back.
#[test]
fn gc_keeps_layers_with_their_image_and_drops_them_first_under_max_size() {
    let env = Env::new();
    let (reg, layout) = registry_with_app(&env);
    let path = stdout_of(env.cmd().args(["get", &docker(&reg, "lab/app:1")]));
    let all = env.blobs().len();
    assert_eq!(all, layout.layers("app").len() + 2);
    stdout_of(env.cmd().args(["gc"]));
    assert_eq!(env.blobs().len(), all, "gc removed parts of a used image");
    let sif_size = fs::metadata(&path).unwrap().len();
    stdout_of(env.cmd().args([
        "gc",
        "--max-size",
        &(sif_size + 1).to_string(),
        "--min-idle",
        "0",
    ]));
    assert_eq!(
        env.blobs(),
        vec![std::path::PathBuf::from(&path)],
        "the image went, or its parts stayed"
    );
    assert_eq!(
        stdout_of(env.cmd().args(["get", &docker(&reg, "lab/app:1")])),
        path
    );
    env.assert_blobs_verify();
    assert_fails(
        env.cmd()
            .args(["export", &format!("{}/lab/app:1", reg.addr)])
            .arg(env.path("out")),
        1,
        "collected by gc",
    );
    // `pull --force` fetches the layers again and converts to the same SIF, so export
    // works and the path jobs were handed stays the name's.
    assert_eq!(
        stdout_of(
            env.cmd()
                .args(["pull", "-q", "--force", &docker(&reg, "lab/app:1")])
        ),
        path
    );
    stdout_of(
        env.cmd()
            .args(["export", &format!("{}/lab/app:1", reg.addr)])
            .arg(env.path("out")),
    );
}

/// The pid of a child of `parent` running `name`, if there is one now.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if comm == name && ppid == Some(parent.to_string().as_str()) {
            return Some(pid);
        }
    }
    None
}

/// The danger: a job killed while mksquashfs is writing the squashfs (the longest step)
/// must leave no half-written SIF under a name, no mksquashfs running on, and the next
/// job must convert afresh.
#[test]
fn a_pull_killed_during_the_conversion_leaves_nothing_and_the_next_converts_afresh() {
    let env = Env::new();
    let (reg, mut l) = registry_with_busybox_base(&env);
    // Enough incompressible data that mksquashfs runs for a while.
    l.layer("bb", "big", |root| {
        let mut next = xorshift(7);
        let data: Vec<u8> = (0..48 << 20).map(|_| next() as u8).collect();
        fs::write(root.join("big.bin"), data).unwrap();
    });
    let reference = docker(&reg, "lab/big:1");
    l.push("big", &reference, &[]);
    let mut child = env
        .std_cmd()
        .args(["get", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let squasher = loop {
        if let Some(p) = child_named(child.id(), "mksquashfs") {
            break p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "get ended before converting"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no conversion started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    // Stopped, mksquashfs cannot end on its own when its input closes: only a signal
    // bound to its parent's death ends it.
    let signal = |sig: &str, pid: u32| {
        let _ = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status();
    };
    signal("-STOP", squasher);
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::read_to_string(format!("/proc/{squasher}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    if !gone {
        signal("-KILL", squasher);
    }
    assert!(gone, "mksquashfs {squasher} outlived the killed get");
    assert!(env.names().is_empty(), "a name appeared: {:?}", env.names());
    let path = stdout_of(env.cmd().args(["get", &reference]));
    assert!(std::path::Path::new(&path).is_file());
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    env.assert_blobs_verify();
}

/// Blob downloads (`GET .../blobs/...` answered 200 or 206) the registry served so far.
fn blob_downloads(reg: &Registry) -> usize {
    reg.log()
        .lines()
        .filter(|l| {
            l.contains("GET /v2/")
                && l.contains("/blobs/")
                && (l.contains("\" 200 ") || l.contains("\" 206 "))
        })
        .count()
}

/// The danger: both platforms of an index were stored under the one name
/// `HOST/REPO:TAG`, so each `get` of the other platform downloaded, converted and
/// re-pointed it, and the next gc deleted the image a job on the other kind of node had
/// just been handed. Each platform is its own image, under a name that is the same on
/// every node: linux/amd64 keeps the plain name, others add the platform to the tag.
#[test]
fn each_platform_is_its_own_image_and_gc_keeps_both() {
    let env = Env::new();
    let (reg, mut l) = registry_with_busybox_base(&env);
    let reference = docker(&reg, "lab/multi:1");
    push_two_platform_index(&mut l, &reference);
    let amd = stdout_of(
        env.cmd()
            .args(["get", &reference, "--platform", "linux/amd64"]),
    );
    let arm = stdout_of(
        env.cmd()
            .args(["get", &reference, "--platform", "linux/arm64"]),
    );
    assert_ne!(amd, arm);
    assert_eq!(file_in_sif(&env, &amd, "arch"), "amd64\n");
    assert_eq!(file_in_sif(&env, &arm, "arch"), "arm64\n");
    stdout_of(env.cmd().args(["gc", "-q"]));
    assert!(fs::metadata(&amd).is_ok(), "gc deleted the amd64 image");
    assert!(fs::metadata(&arm).is_ok(), "gc deleted the arm64 image");
    // The second get of either downloads and converts nothing, whichever came last;
    // `linux/arm64/v8` is the same platform as `linux/arm64`.
    let before = blob_downloads(&reg);
    for _ in 0..2 {
        for (platform, path) in [
            ("linux/amd64", &amd),
            ("linux/arm64", &arm),
            ("linux/arm64/v8", &arm),
        ] {
            let got = stdout_of(env.cmd().args(["get", &reference, "--platform", platform]));
            assert_eq!(&got, path, "{platform}");
        }
    }
    assert_eq!(
        blob_downloads(&reg),
        before,
        "a cached platform was downloaded again"
    );
    // The names: plain for linux/amd64, the platform in the tag for the other; list and
    // inspect show the platform.
    let plain = format!("{}/lab/multi:1", reg.addr);
    let tagged = format!("{}/lab/multi:1-linux-arm64", reg.addr);
    assert_eq!(env.names(), [plain.clone(), tagged.clone()]);
    let v: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["list", "--json"]))).unwrap();
    let platforms: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let table = stdout_of(env.cmd().arg("list"));
    assert!(
        table.lines().next().unwrap().contains("PLATFORM"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&tagged) && l.contains("linux/arm64")),
        "{table}"
    );
    let shown = stdout_of(env.cmd().args(["inspect", &tagged]));
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("platform:") && l.contains("linux/arm64")),
        "{shown}"
    );
    env.assert_blobs_verify();
}

/// Upload `bytes` as a blob of `repo` with curl (POST, then PUT with the digest, as the
/// registry wants it); its digest.
fn curl_blob(env: &Env, reg: &Registry, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256_of(bytes);
    let file = env.path(&format!("upload-{}", &digest[7..19]));
    fs::write(&file, bytes).unwrap();
    let head = std::process::Command::new("curl")
        .args(["-sSf", "-o", "/dev/null", "-D", "-", "-X", "POST"])
        .arg(format!("http://{}/v2/{repo}/blobs/uploads/", reg.addr))
        .output()
        .unwrap();
    assert!(head.status.success(), "{head:?}");
    let head = String::from_utf8(head.stdout).unwrap();
    let location = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Location: {head}"));
    let sep = if location.contains('?') { '&' } else { '?' };
    run(std::process::Command::new("curl")
        .args(["-sSf", "-o", "/dev/null", "-X", "PUT"])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{location}{sep}digest={digest}")));
    digest
}

/// PUT `body` as the manifest `repo:reference` with its media type, with curl.
fn curl_manifest(
    env: &Env,
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) {
    let file = env.path("manifest-upload.json");
    fs::write(&file, body).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-w", "%{http_code}", "-X", "PUT"])
        .args(["-H", &format!("Content-Type: {media_type}")])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "http://{}/v2/{repo}/manifests/{reference}",
            reg.addr
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.ends_with("201"),
        "the registry refused the manifest: {said}"
    );
}

/// The danger: a layer whose bytes match its digest but are not a tar archive reported as
/// "the blob may be damaged (`sregistry verify` checks it)", when verify finds nothing
/// and the image itself is malformed. The real registry holds the image (curl pushed it);
/// the one line names the layer's digest and media type and says it is not a tar
/// archive; nothing is named, and verify is clean.
#[test]
fn a_layer_that_is_not_a_tar_archive_is_named_as_such() {
    let env = Env::new();
    let reg = Registry::anonymous();
    let config = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let text: Vec<u8> = "this is a text file, not a tar archive\n"
        .repeat(100)
        .into_bytes();
    for (media_type, layer) in [
        ("application/vnd.oci.image.layer.v1.tar", text.clone()),
        ("application/vnd.oci.image.layer.v1.tar+gzip", {
            use std::io::Write as _;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&text).unwrap();
            gz.finish().unwrap()
        }),
    ] {
        let config_digest = curl_blob(&env, &reg, "lab/nottar", config);
        let layer_digest = curl_blob(&env, &reg, "lab/nottar", &layer);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": media_type, "digest": layer_digest, "size": layer.len()}],
        });
        let body = serde_json::to_vec(&manifest).unwrap();
        curl_manifest(
            &env,
            &reg,
            "lab/nottar",
            "1",
            "application/vnd.oci.image.manifest.v1+json",
            &body,
        );
        let err = assert_fails(
            env.cmd().args(["pull", &docker(&reg, "lab/nottar:1")]),
            1,
            "does not read as a tar archive",
        );
        for part in [format!("`{layer_digest}`"), format!("`{media_type}`")] {
            assert!(err.contains(&part), "{media_type}: `{part}` missing: {err}");
        }
        assert!(!err.contains("damaged"), "{err}");
        assert!(err.contains("malformed"), "{err}");
        assert!(env.names().is_empty(), "{:?}", env.names());
        let verify = env.cmd().arg("verify").output().unwrap();
        assert_eq!(verify.status.code(), Some(0), "{verify:?}");
    }
}

/// The danger: a Docker schema 1 image reported as "not an image manifest: missing field
/// `config`". A real registry that accepts schema 1 holds one (skopeo wrote it, signed);
/// the pull says "schema 1" and to push the image again with a current client.
#[test]
fn a_schema_1_image_is_named_as_such_with_what_to_do() {
    let env = Env::new();
    let reg = Registry::anonymous_with_schema1();
    let work = env.path("img");
    fs::create_dir_all(&work).unwrap();
    let l = images::app_image(&work);
    l.push("app", &docker(&reg, "lab/old:1"), &["--format", "v2s1"]);
    let err = assert_fails(
        env.cmd().args(["pull", &docker(&reg, "lab/old:1")]),
        1,
        "schema 1",
    );
    assert!(err.contains("push the image again"), "{err}");
    assert!(env.names().is_empty(), "{:?}", env.names());
}

/// The danger: an index whose linux/amd64 entry is itself an index answered "no image for
/// platform linux/amd64 (the index offers none)", which is false. A real registry holds
/// the nested index (curl pushed it over an image skopeo pushed); the line says the entry
/// is another index and how to pull it, and the pull it names works.
#[test]
fn an_index_whose_platform_entry_is_an_index_says_so() {
    let env = Env::new();
    let (reg, _layout) = registry_with_app(&env);
    let inner_ref = docker(&reg, "lab/app:1");
    // The inner index: the app's manifest for linux/amd64.
    let out = std::process::Command::new("curl")
        .args([
            "-sSf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{}/v2/lab/app/manifests/1", reg.addr))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let manifest = out.stdout;
    let index_of = |digest: String, size: usize, media_type: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": media_type, "digest": digest, "size": size,
                           "platform": {"architecture": "amd64", "os": "linux"}}],
        }))
        .unwrap()
    };
    let oci_index = "application/vnd.oci.image.index.v1+json";
    let inner = index_of(
        sha256_of(&manifest),
        manifest.len(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let inner_digest = sha256_of(&inner);
    curl_manifest(&env, &reg, "lab/app", &inner_digest, oci_index, &inner);
    let outer = index_of(inner_digest.clone(), inner.len(), oci_index);
    curl_manifest(&env, &reg, "lab/app", "nested", oci_index, &outer);
    let err = assert_fails(
        env.cmd().args(["pull", &docker(&reg, "lab/app:nested")]),
        1,
        "another index",
    );
    assert!(!err.contains("offers none"), "{err}");
    assert!(err.contains(&format!("`{inner_digest}`")), "{err}");
    // What it says to do works: the inner index by its digest.
    let by_digest = inner_ref.replace(":1", &format!("@{inner_digest}"));
    let path = stdout_of(env.cmd().args(["pull", &by_digest]));
    assert!(std::path::Path::new(&path).is_file());
}

/// The danger: `export` into a directory of other files, or onto a file, answered with
/// "invalid remote reference" or "cannot write the download into the cache", which send
/// the user to the wrong place; and a `--tag` outside the OCI layout's `ref.name` grammar
/// written into `index.json`, where skopeo and umoci cannot name it. Each is one line
/// that names the target and what is wrong with it (exit 2), and nothing is written; a
/// tag the grammar allows is then exported and read back by skopeo under that tag.
#[test]
fn export_says_what_is_wrong_with_its_target_and_refuses_bad_tags() {
    let env = Env::new();
    let (reg, _layout) = registry_with_app(&env);
    stdout_of(env.cmd().args(["get", &docker(&reg, "lab/app:1")]));
    let name = format!("{}/lab/app:1", reg.addr);
    let export = |dir: &std::path::Path, tag: &str| {
        let mut c = env.cmd();
        c.args(["export", &name])
            .arg(dir)
            .arg(format!("--tag={tag}"));
        c
    };
    let wrong = |err: &str| {
        for lie in ["remote reference", "download into the cache"] {
            assert!(!err.contains(lie), "`{lie}`: {err}");
        }
    };
    // A directory of other files.
    let other = env.path("notes");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("todo.txt"), "mine").unwrap();
    let err = assert_fails(&mut export(&other, "v1"), 2, "not an OCI image layout");
    assert!(
        err.contains(&format!("cannot export into `{}`", other.display())),
        "{err}"
    );
    wrong(&err);
    assert_eq!(fs::read_dir(&other).unwrap().count(), 1);
    // A file, and a path under a file.
    let file = env.file("image.tar", b"a user's file");
    for target in [file.clone(), file.join("sub")] {
        let err = assert_fails(&mut export(&target, "v1"), 2, "not a directory");
        assert!(err.contains(&format!("`{}`", target.display())), "{err}");
        wrong(&err);
    }
    assert_eq!(fs::read(&file).unwrap(), b"a user's file");
    // Tags outside the grammar.
    let dir = env.path("layout");
    for tag in ["-v1", "v1-", "a..b", "a b", "v1/", "_x", "ü"] {
        let err = assert_fails(&mut export(&dir, tag), 2, "invalid layout tag");
        assert!(err.contains("--tag"), "{err}");
        assert!(!dir.exists(), "{tag}: the layout was written");
    }
    // One the grammar allows.
    stdout_of(&mut export(&dir, "v1.0-rc1+b2"));
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:v1.0-rc1+b2", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
