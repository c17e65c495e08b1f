//! Pins and digests mean what they say.
//!
//! A pin protects the content its name points to, so `add`, `tag` and `pull` refuse to
//! point a pinned name at other content unless given `--force` (else gc would delete the
//! image the pin was taken for). A reference with a digest (`name@blake3:...`) acts only
//! when its name points to that digest: `rm lab/a:1@blake3:000...` once removed `lab/a:1`.
//! Every refusal leaves the cache exactly as it was.

use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use sregistry::Digest;

use crate::common::*;
use crate::support::fault_server::{FaultServer, Handler, Reply};
use crate::support::inspect;

/// A cache holding `gold` (pinned, content "gold v1") and `other` (content "other"), and
/// the digests of both contents.
fn pinned_gold() -> (Env, Digest, Digest) {
    let env = Env::new();
    let v1 = env.file("v1.img", b"gold v1");
    let o = env.file("o.img", b"other");
    stdout_of(env.cmd().arg("add").arg(&v1).args(["--name", "gold"]));
    stdout_of(env.cmd().arg("add").arg(&o).args(["--name", "other"]));
    env.cmd().args(["pin", "gold"]).assert().success();
    (env, Digest::of(b"gold v1"), Digest::of(b"other"))
}

/// The refusal of a re-point: exit 1, one line naming the name, the digest it is pinned
/// to, and both ways on.
fn assert_repoint_refused(c: &mut assert_cmd::Command, pinned: &Digest) {
    let err = assert_fails(c, 1, "library/gold:latest");
    for needle in [
        "is pinned to",
        &pinned.to_string(),
        "--force",
        "sregistry unpin library/gold:latest",
    ] {
        assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
    }
}

/// `add --name` of other content to a pinned name is refused, and the staged copy is
/// cleaned up: not in tmp/, not in blobs/, the index untouched. Then gc cannot take the
/// pinned content.
#[test]
fn add_refuses_to_repoint_a_pinned_name_and_changes_nothing() {
    let (env, d1, _) = pinned_gold();
    let v2 = env.file("v2.img", b"gold v2, other content");
    let before = env.snapshot();
    assert_repoint_refused(env.cmd().arg("add").arg(&v2).args(["--name", "gold"]), &d1);
    assert_eq!(env.snapshot(), before, "a refused add changed the cache");
    assert_eq!(inspect(&env, "gold")["digest"], d1.to_string());
    stdout_of(env.cmd().args(["gc", "-q", "--min-idle", "0"]));
    assert_eq!(
        std::fs::read(stdout_of(env.cmd().args(["get", "gold"]))).unwrap(),
        b"gold v1"
    );
}

/// Adding the very content a pinned name points to is no re-point, and is allowed.
#[test]
fn re_adding_identical_content_to_a_pinned_name_is_allowed() {
    let (env, d1, _) = pinned_gold();
    let same = env.file("same.img", b"gold v1");
    stdout_of(env.cmd().arg("add").arg(&same).args(["--name", "gold"]));
    let e = inspect(&env, "gold");
    assert_eq!(e["digest"], d1.to_string());
    assert_eq!(e["pinned"], true);
}

/// `add --force` re-points a pinned name: the name stays pinned, now to the new content,
/// and the old content, which no name uses any more, goes at the next gc.
#[test]
fn add_force_repoints_a_pinned_name_and_the_old_content_loses_protection() {
    let (env, d1, _) = pinned_gold();
    let v2 = env.file("v2.img", b"gold v2");
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&v2)
            .args(["--name", "gold", "--force"]),
    );
    let e = inspect(&env, "gold");
    assert_eq!(e["digest"], Digest::of(b"gold v2").to_string());
    assert_eq!(e["pinned"], true, "--force dropped the pin");
    let old_blob = env.blobs().into_iter().find(|b| b.ends_with(d1.hex()));
    assert!(old_blob.is_some(), "the old content went before gc ran");
    stdout_of(env.cmd().args(["gc", "-q", "--min-idle", "0"]));
    assert!(
        !env.blobs().iter().any(|b| b.ends_with(d1.hex())),
        "gc kept content no name uses"
    );
}

/// `tag SRC DST` onto a pinned DST that points elsewhere is refused (nothing changed);
/// onto a pinned DST that already points there it is fine; `--force` re-points it.
#[test]
fn tag_refuses_to_repoint_a_pinned_name_unless_forced() {
    let (env, d1, d_other) = pinned_gold();
    let before = env.snapshot();
    assert_repoint_refused(env.cmd().args(["tag", "other", "gold"]), &d1);
    assert_eq!(env.snapshot(), before, "a refused tag changed the cache");

    stdout_of(env.cmd().args(["tag", "gold", "gold-copy"]));
    env.cmd().args(["pin", "gold-copy"]).assert().success();
    env.cmd()
        .args(["tag", "gold", "gold-copy"])
        .assert()
        .success();

    env.cmd()
        .args(["tag", "--force", "other", "gold"])
        .assert()
        .success();
    let e = inspect(&env, "gold");
    assert_eq!(e["digest"], d_other.to_string());
    assert_eq!(e["pinned"], true);
}

/// A pin taken while an `add` was copying (after any check before the copy could have
/// run) still counts: the check is made under the index lock the commit takes.
#[test]
fn a_pin_taken_while_an_add_is_in_flight_still_stops_the_repoint() {
    let env = Env::new();
    let v1 = env.file("v1.img", b"gold v1");
    stdout_of(env.cmd().arg("add").arg(&v1).args(["--name", "gold"]));
    let v2 = env.file("v2.img", b"gold v2");
    let resume = env.path("resume");
    let mut child = env
        .std_cmd()
        .env("SREGISTRY_TEST_PAUSE", "add-staged")
        .env("SREGISTRY_TEST_RESUME", &resume)
        .arg("add")
        .arg(&v2)
        .args(["--name", "gold"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut first = [0u8; 10];
    stderr.read_exact(&mut first).unwrap();
    assert_eq!(
        &first, b"paused at ",
        "the add did not reach its pause point"
    );
    // The add has hashed and staged v2; now, before it commits, gold gets pinned.
    env.cmd().args(["pin", "gold"]).assert().success();
    let before_names = inspect(&env, "gold");
    std::fs::write(&resume, b"").unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "the add was not refused: {rest}");
    assert!(rest.contains("is pinned to"), "{rest}");
    assert_eq!(inspect(&env, "gold"), before_names);
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    assert_eq!(env.blobs().len(), 1, "the refused content stayed in blobs/");
    let out = env.cmd().args(["verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "verify after a refused add: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An HTTP server on 127.0.0.1 whose one file, `content`, can be changed between
/// requests; its URL is `server.url("/image.sif")`.
fn file_server(content: Arc<Mutex<Vec<u8>>>) -> FaultServer {
    let file: Handler = Box::new(move |_, _| Reply::new(200).body(&content.lock().unwrap()));
    FaultServer::start(vec![("/image.sif".to_string(), file)])
}

/// `pull` re-points a name when the remote changed: a pinned one only with `--force`.
#[test]
fn pull_refuses_to_repoint_a_pinned_name_unless_forced() {
    let env = Env::new();
    let content = Arc::new(Mutex::new(b"remote v1".to_vec()));
    let server = file_server(content.clone());
    let url = server.url("/image.sif");
    stdout_of(env.cmd().args(["pull", &url, "--name", "gold"]));
    env.cmd().args(["pin", "gold"]).assert().success();
    *content.lock().unwrap() = b"remote v2, changed upstream".to_vec();
    let before = env.snapshot();
    assert_repoint_refused(
        env.cmd().args(["pull", &url, "--name", "gold"]),
        &Digest::of(b"remote v1"),
    );
    assert_eq!(env.snapshot(), before, "a refused pull changed the cache");
    stdout_of(env.cmd().args(["pull", &url, "--name", "gold", "--force"]));
    let e = inspect(&env, "gold");
    assert_eq!(
        e["digest"],
        Digest::of(b"remote v2, changed upstream").to_string()
    );
    assert_eq!(e["pinned"], true);
}

/// Every command that takes `NAME@blake3:<hex>` acts only when NAME points to that
/// digest: exit 3, a message naming both digests, and nothing changed. `rm` with a wrong
/// digest once removed the name.
#[test]
fn every_command_refuses_a_digest_the_name_does_not_point_to() {
    let (env, d1, _) = pinned_gold();
    let wrong = Digest::of(b"never added");
    let with_wrong = format!("gold@{wrong}");
    stdout_of(env.cmd().args(["unpin", "gold"]));
    let before = env.snapshot();
    let cases: Vec<Vec<&str>> = vec![
        vec!["rm", &with_wrong],
        vec!["rm", "--keep-blob", "other", &with_wrong],
        vec!["tag", &with_wrong, "copy"],
        vec!["pin", &with_wrong],
        vec!["unpin", &with_wrong],
        vec!["inspect", &with_wrong],
        vec!["verify", &with_wrong],
        vec![
            "push",
            &with_wrong,
            "s3://bucket/key.sif",
            "--endpoint",
            "http://127.0.0.1:9",
        ],
    ];
    for args in &cases {
        let err = assert_fails(env.cmd().args(args), 3, "library/gold:latest");
        assert!(
            err.contains(&d1.to_string()) && err.contains(&wrong.to_string()),
            "{args:?}: the message does not name both digests: {err}"
        );
        assert_eq!(env.snapshot(), before, "{args:?} changed the cache");
    }
}

/// With the digest the name does point to, each command does its work.
#[test]
fn every_command_acts_on_a_digest_the_name_points_to() {
    let (env, d1, _) = pinned_gold();
    let right = format!("gold@{d1}");
    assert_eq!(inspect(&env, &right)["name"], "library/gold:latest");
    stdout_of(env.cmd().args(["verify", &right]));
    stdout_of(env.cmd().args(["tag", &right, "copy"]));
    assert_eq!(inspect(&env, "copy")["digest"], d1.to_string());
    stdout_of(env.cmd().args(["unpin", &right]));
    assert_eq!(inspect(&env, "gold")["pinned"], false);
    stdout_of(env.cmd().args(["pin", &right]));
    assert_eq!(inspect(&env, "gold")["pinned"], true);
    stdout_of(env.cmd().args(["unpin", &right]));
    stdout_of(env.cmd().args(["rm", &right]));
    assert!(!env.names().contains(&"library/gold:latest".to_string()));
}

/// A name to be written (`add --name`, tag's DST, `pull --name`) cannot carry a digest:
/// a digest selects content that exists. Exit 2 before any work, nothing changed.
#[test]
fn a_name_to_write_with_a_digest_is_a_usage_error() {
    let (env, d1, _) = pinned_gold();
    let f = env.file("new.img", b"new content");
    let target = format!("fresh@{d1}");
    let before = env.snapshot();
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec![
                "add".into(),
                f.clone().into(),
                "--name".into(),
                target.clone().into(),
            ],
            "add",
        ),
        (
            vec!["tag".into(), "other".into(), target.clone().into()],
            "tag",
        ),
        (
            vec![
                "pull".into(),
                "http://127.0.0.1:9/x.sif".into(),
                "--name".into(),
                target.clone().into(),
            ],
            "pull",
        ),
    ];
    for (args, what) in &cases {
        let err = assert_fails(env.cmd().args(args), 2, "library/fresh:latest");
        assert!(err.contains("cannot carry a digest"), "{what}: {err}");
        assert_eq!(env.snapshot(), before, "{what} changed the cache");
    }
}

/// The help of each command that writes a name says what --force does.
#[test]
fn force_is_documented_where_it_is_accepted() {
    let env = Env::new();
    for cmd in ["add", "tag", "pull"] {
        let help = stdout_of(env.cmd().args([cmd, "--help"]));
        assert!(help.contains("--force"), "{cmd} --help: {help}");
        assert!(help.contains("pinned"), "{cmd} --help: {help}");
    }
}
