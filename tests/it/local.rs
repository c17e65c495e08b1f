//! Round trips of the local commands: add, get, list, inspect, tag, rm, pin, info.

use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::common::*;

/// add prints the cached path; get prints the same path; the content is the file's.
#[test]
fn add_then_get_returns_the_same_read_only_copy() {
    let env = Env::new();
    let f = env.file("a.img", b"image content");
    let added = stdout_of(
        env.cmd()
            .args(["add"])
            .arg(&f)
            .args(["--name", "lab/tool:1.2"]),
    );
    let got = stdout_of(env.cmd().args(["get", "lab/tool:1.2"]));
    assert_eq!(added, got);
    assert!(got.starts_with(env.cache.to_str().unwrap()));
    assert_eq!(fs::read(&got).unwrap(), b"image content");
    env.assert_blobs_verify();
    assert!(env.tmp_entries().is_empty());
    assert!(env.cache.join("CACHEDIR.TAG").is_file());
}

/// Two names for identical content share one blob file.
#[test]
fn identical_content_under_two_names_is_stored_once() {
    let env = Env::new();
    let a = env.file("a.img", b"same bytes");
    let b = env.file("b.img", b"same bytes");
    let pa = stdout_of(env.cmd().arg("add").arg(&a).args(["--name", "one"]));
    let pb = stdout_of(env.cmd().arg("add").arg(&b).args(["--name", "two"]));
    assert_eq!(pa, pb);
    assert_eq!(env.blobs().len(), 1);
    assert_eq!(env.names(), ["library/one:latest", "library/two:latest"]);
}

/// Adding new content under an existing name re-points it; get never returns the old copy
/// (the Python client returned the oldest).
#[test]
fn re_adding_a_name_points_it_at_the_new_content() {
    let env = Env::new();
    let v1 = env.file("v1.img", b"version one");
    let v2 = env.file("v2.img", b"version two");
    stdout_of(env.cmd().arg("add").arg(&v1).args(["--name", "tool:1"]));
    stdout_of(env.cmd().arg("add").arg(&v2).args(["--name", "tool:1"]));
    let got = stdout_of(env.cmd().args(["get", "tool:1"]));
    assert_eq!(fs::read(got).unwrap(), b"version two");
    assert_eq!(env.names(), ["library/tool:1"]);
    // The old blob stays until gc (or rm) finds it unused.
    assert_eq!(env.blobs().len(), 2);
}

/// `get NAME@blake3:...` returns exactly that content, even after the name moved on.
#[test]
fn get_by_digest_returns_exactly_that_content() {
    let env = Env::new();
    let v1 = env.file("v1.img", b"first");
    let v2 = env.file("v2.img", b"second");
    stdout_of(env.cmd().arg("add").arg(&v1).args(["--name", "tool"]));
    stdout_of(env.cmd().arg("add").arg(&v2).args(["--name", "tool"]));
    let d1 = sregistry::Digest::of(b"first");
    let got = stdout_of(env.cmd().args(["get", &format!("tool@{d1}")]));
    assert_eq!(fs::read(got).unwrap(), b"first");
    let unknown = sregistry::Digest::of(b"never added");
    assert_fails(
        env.cmd().args(["get", &format!("tool@{unknown}")]),
        3,
        "not in the cache",
    );
}

/// --move renames the file in: same inode, source gone, no copy.
#[test]
fn add_move_renames_instead_of_copying() {
    let env = Env::new();
    let f = env.file("big.img", &vec![7u8; 1 << 20]);
    let ino = fs::metadata(&f).unwrap().ino();
    let p = stdout_of(
        env.cmd()
            .arg("add")
            .arg(&f)
            .args(["--name", "big", "--move"]),
    );
    assert!(!f.exists());
    assert_eq!(fs::metadata(&p).unwrap().ino(), ino);
    env.assert_blobs_verify();
    assert!(env.tmp_entries().is_empty());
}

/// list is sorted by name, filters by glob or substring, and --json carries every field.
#[test]
fn list_sorts_filters_and_reports_every_field_in_json() {
    let env = Env::new();
    let f = env.file("x.img", b"xx");
    for n in ["zeta/b:1", "alpha/a:2", "lab/tool:1.0", "lab/tool:1.1"] {
        stdout_of(
            env.cmd()
                .arg("add")
                .arg(&f)
                .args(["--name", n, "--label", "k=v"]),
        );
    }
    assert_eq!(
        env.names(),
        ["alpha/a:2", "lab/tool:1.0", "lab/tool:1.1", "zeta/b:1"]
    );
    let text = stdout_of(env.cmd().args(["list", "lab/"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("NAME") && lines[1].starts_with("lab/tool:1.0"));
    let glob = stdout_of(env.cmd().args(["images", "--json", "*:1.?"]));
    let v: serde_json::Value = serde_json::from_str(&glob).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let e = &v[0];
    for field in [
        "name",
        "digest",
        "size",
        "added",
        "last_used",
        "pinned",
        "source",
        "labels",
        "path",
    ] {
        assert!(e.get(field).is_some(), "missing {field} in {e}");
    }
    assert_eq!(e["size"], 2);
    assert_eq!(e["labels"]["k"], "v");
    assert_eq!(e["digest"], sregistry::Digest::of(b"xx").to_string());
}

/// inspect reads the SIF header and objects of a real image built by siftool.
#[test]
fn inspect_shows_the_sif_header_and_partitions() {
    let env = Env::new();
    let sif = env.sif("tool.sif", "hello from inspect");
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&sif)
            .args(["--name", "lab/tool:1"]),
    );
    let text = stdout_of(env.cmd().args(["inspect", "lab/tool:1"]));
    assert!(text.contains("amd64"), "{text}");
    assert!(text.contains("Squashfs"), "{text}");
    let json = stdout_of(env.cmd().args(["inspect", "--json", "lab/tool:1"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let descs = v["sif"]["descriptors"].as_array().unwrap();
    let def = descs
        .iter()
        .find(|d| d["content"].is_string())
        .expect("def file object");
    assert!(
        def["content"]
            .as_str()
            .unwrap()
            .contains("hello from inspect")
    );
    let part = descs
        .iter()
        .find(|d| d["detail"]["type"] == "partition")
        .expect("partition");
    assert_eq!(part["detail"]["arch"], "amd64");
    assert_eq!(v["name"], "lab/tool:1");
}

/// inspect works on every file of the peer corpus (signed, OCI, SBOM, two groups...).
#[test]
fn inspect_reads_every_peer_corpus_file() {
    let env = Env::new();
    let mut n = 0;
    for entry in fs::read_dir(fixtures()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "sif") {
            continue;
        }
        let name = format!("peer/{}", p.file_stem().unwrap().to_str().unwrap());
        stdout_of(env.cmd().arg("add").arg(&p).args(["--name", &name]));
        let json = stdout_of(env.cmd().args(["inspect", "--json", &name]));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["sif"]["header"].is_object(), "{name}: {json}");
        n += 1;
    }
    assert_eq!(n, 21);
}

/// tag adds a name without a copy; rm of one name keeps shared content; rm of the last
/// name deletes it at once; --keep-blob keeps it.
#[test]
fn tag_and_rm_share_and_free_content_correctly() {
    let env = Env::new();
    let f = env.file("a.img", b"shared");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "a:1"]));
    env.cmd().args(["tag", "a:1", "b:1"]).assert().success();
    assert_eq!(
        stdout_of(env.cmd().args(["get", "a:1"])),
        stdout_of(env.cmd().args(["get", "b:1"]))
    );
    assert_eq!(env.blobs().len(), 1);
    assert_eq!(
        stdout_of(env.cmd().args(["rm", "a:1"])),
        "removed library/a:1"
    );
    assert_eq!(
        env.blobs().len(),
        1,
        "content still named by b:1 was deleted"
    );
    stdout_of(env.cmd().args(["rm", "b:1"]));
    assert!(env.blobs().is_empty(), "unused content was kept");
    assert!(env.tmp_entries().is_empty());

    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "c"]));
    stdout_of(env.cmd().args(["rm", "--keep-blob", "c"]));
    assert_eq!(env.blobs().len(), 1);
    assert!(env.names().is_empty());
}

/// rm is all or nothing: one unknown name leaves the others in place.
#[test]
fn rm_with_one_unknown_name_removes_nothing() {
    let env = Env::new();
    let f = env.file("a.img", b"keep me");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "keep"]));
    assert_fails(env.cmd().args(["rm", "keep", "ghost"]), 3, "ghost");
    assert_eq!(env.names(), ["library/keep:latest"]);
}

/// A pinned name cannot be removed until it is unpinned.
#[test]
fn pinned_names_survive_rm_until_unpinned() {
    let env = Env::new();
    let f = env.file("a.img", b"precious");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "gold"]));
    env.cmd().args(["pin", "gold"]).assert().success();
    let list = stdout_of(env.cmd().args(["list", "--json"]));
    assert!(list.contains("\"pinned\": true"));
    assert_fails(env.cmd().args(["rm", "gold"]), 1, "unpin");
    env.cmd().args(["unpin", "gold"]).assert().success();
    env.cmd().args(["rm", "gold"]).assert().success();
    assert!(env.names().is_empty());
}

/// A blob deleted from outside is reported, never handed out as a stale path.
#[test]
fn get_refuses_a_name_whose_file_vanished() {
    let env = Env::new();
    let f = env.file("a.img", b"will vanish");
    let p = stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "gone"]));
    fs::remove_file(&p).unwrap();
    let err = assert_fails(env.cmd().args(["get", "gone"]), 1, "missing");
    assert!(err.contains("verify"), "{err}");
    // inspect still shows the record, and says the file is missing.
    let out = env.cmd().args(["inspect", "gone"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("MISSING"));
}

/// get records use, but only when the stored time is older than the resolution, so most
/// gets never write.
#[test]
fn get_records_last_use_at_most_every_ten_minutes() {
    let env = Env::new();
    let f = env.file("a.img", b"used");
    let t0 = 2_000_000_000u64;
    stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", t0.to_string())
            .arg("add")
            .arg(&f)
            .args(["--name", "u"]),
    );
    let last_used = || {
        let v: serde_json::Value =
            serde_json::from_str(&stdout_of(env.cmd().args(["list", "--json"]))).unwrap();
        v[0]["last_used"].as_str().unwrap().to_string()
    };
    let at_add = last_used();
    let index = env.cache.join("v1/index.redb");
    let before = fs::read(&index).unwrap();
    stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", (t0 + 60).to_string())
            .args(["get", "u"]),
    );
    assert_eq!(
        fs::read(&index).unwrap(),
        before,
        "a fresh get wrote the index"
    );
    assert_eq!(last_used(), at_add);
    stdout_of(
        env.cmd()
            .env("SREGISTRY_NOW", (t0 + 3600).to_string())
            .args(["get", "u"]),
    );
    assert_eq!(last_used(), sregistry::format::clock::rfc3339(t0 + 3600));
}

/// info reports counts and total size.
#[test]
fn info_counts_names_blobs_and_bytes() {
    let env = Env::new();
    let a = env.file("a.img", b"aaaa");
    let b = env.file("b.img", b"bbbbbb");
    stdout_of(env.cmd().arg("add").arg(&a).args(["--name", "a"]));
    stdout_of(env.cmd().arg("add").arg(&b).args(["--name", "b"]));
    env.cmd().args(["tag", "a", "c"]).assert().success();
    let v: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["info", "--json"]))).unwrap();
    assert_eq!(v["names"], 3);
    assert_eq!(v["blobs"], 2);
    assert_eq!(v["bytes"], 10);
    assert_eq!(v["schema_version"], sregistry::cache::SCHEMA_VERSION);
}

/// An empty or missing cache lists nothing and answers get with "not found".
#[test]
fn empty_cache_lists_nothing_and_creates_nothing() {
    let env = Env::new();
    assert_eq!(stdout_of(env.cmd().arg("list")), "");
    assert_fails(env.cmd().args(["get", "x"]), 3, "no image");
    assert!(!env.cache.exists(), "a read-only command created the cache");
}

/// Completion scripts are generated for the usual shells.
#[test]
fn completions_are_generated() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = stdout_of(env.cmd().args(["completions", shell]));
        assert!(
            out.contains("sregistry") && out.contains("inspect"),
            "{shell}"
        );
    }
}
