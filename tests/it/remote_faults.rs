//! Fault injection against pulls: a small HTTP/1.1 server of our own
//! (`tests/support/fault_server.rs`) that serves a SIF artifact the way an OCI registry
//! does, or a plain file, and misbehaves in one chosen way per route. Each test
//! names the danger it guards; the failing ones check that nothing reached the cache.

use std::fs;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::*;
use crate::support::fault_server::{FaultServer, Handler, Reply, Seen, with_range};
use crate::support::{inspect, sha256_of};

const MANIFEST_OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_OCI: &str = "application/vnd.oci.image.index.v1+json";
const SIF_CONFIG: &str = "application/vnd.sylabs.sif.config.v1+json";
const SIF_LAYER: &str = "application/vnd.sylabs.sif.layer.v1.sif";

// ---------------------------------------------------------------------------------------
// The artifact
// ---------------------------------------------------------------------------------------

/// A real SIF file from the peer corpus, read in place.
fn source_sif() -> Vec<u8> {
    let p = fixtures().join("one-group.sif");
    fs::read(&p).unwrap_or_else(|e| panic!("cannot read the fixture {}: {e}", p.display()))
}

/// The ORAS manifest of a SIF artifact whose layer is `blob`.
fn sif_manifest(blob: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_OCI,
        "config": {
            "mediaType": SIF_CONFIG,
            "digest": sha256_of(b"{}"),
            "size": 2,
        },
        "layers": [{
            "mediaType": SIF_LAYER,
            "digest": sha256_of(blob),
            "size": blob.len(),
            "annotations": { "org.opencontainers.image.title": "x.sif" },
        }],
    }))
    .unwrap()
}

fn manifest_path(kind: &str) -> String {
    format!("/v2/fault/{kind}/manifests/1")
}

fn blob_path(kind: &str, blob: &[u8]) -> String {
    format!("/v2/fault/{kind}/blobs/{}", sha256_of(blob))
}

/// `oras://127.0.0.1:PORT/fault/KIND:1`
fn oras(server: &FaultServer, kind: &str) -> String {
    format!("oras://{}/fault/{kind}:1", server.addr)
}

/// A registry holding one SIF artifact of `source` at `/v2/fault/KIND/manifests/1`,
/// whose blob is answered by `blob`.
fn artifact_server(kind: &str, source: &[u8], blob: Handler) -> FaultServer {
    let manifest = sif_manifest(source);
    let serve_manifest: Handler = Box::new(move |_, _| {
        Reply::new(200)
            .header("Content-Type", MANIFEST_OCI)
            .header("Docker-Content-Digest", &sha256_of(&manifest))
            .body(&manifest)
    });
    FaultServer::start(vec![
        (manifest_path(kind), serve_manifest),
        (blob_path(kind, source), blob),
    ])
}

/// Nothing of a failed pull is left: no blob, nothing in `tmp/`, no name.
fn assert_nothing_stored(env: &Env) {
    assert!(env.blobs().is_empty(), "blobs stored: {:?}", env.blobs());
    assert!(
        env.tmp_entries().is_empty(),
        "left in tmp/: {:?}",
        env.tmp_entries()
    );
    assert!(env.names().is_empty(), "names added: {:?}", env.names());
}

// ---------------------------------------------------------------------------------------
// ORAS pulls
// ---------------------------------------------------------------------------------------

/// A registry (or a proxy in front of it) that sends other bytes than the manifest names
/// must not get them into the cache: the sha256 is checked before anything is committed.
#[test]
fn blob_whose_content_does_not_match_its_digest_is_not_stored() {
    let source = source_sif();
    let mut forged = source.clone();
    let mid = forged.len() / 2;
    forged[mid] ^= 0xff;
    let served = forged.clone();
    let server = artifact_server(
        "wrong-digest",
        &source,
        Box::new(move |_, _| Reply::new(200).body(&served)),
    );
    let env = Env::new();
    let err = assert_fails(
        env.cmd().args(["pull", &oras(&server, "wrong-digest")]),
        1,
        "does not match",
    );
    assert!(err.contains(&sha256_of(&source)), "expected digest: {err}");
    assert!(err.contains(&sha256_of(&forged)), "actual digest: {err}");
    assert!(err.contains("nothing was stored"), "{err}");
    assert_nothing_stored(&env);
}

/// A connection that dies mid-blob on every attempt: resumed with `Range` from where it
/// stopped, then given up after the retries, and the partial file removed.
#[test]
fn blob_cut_short_on_every_attempt_is_not_stored() {
    let source = source_sif();
    let served = source.clone();
    // Whatever is asked for, half of it is sent before the connection closes.
    let server = artifact_server(
        "truncated",
        &source,
        Box::new(move |req, _| {
            let r = with_range(req, &served);
            let n = r.body.len() / 2;
            r.cut(n)
        }),
    );
    let env = Env::new();
    let err = assert_fails(
        env.cmd()
            .args(["pull", &oras(&server, "truncated")])
            .env("SREGISTRY_RETRIES", "1"),
        1,
        &server.url(&blob_path("truncated", &source)),
    );
    assert!(
        err.contains("before message length") || err.contains("ended after"),
        "the error does not say the body was cut short: {err}"
    );
    let half = source.len() / 2;
    assert_eq!(
        server.ranges(&blob_path("truncated", &source)),
        [None, Some(format!("bytes={half}-"))],
        "one GET and one resume from the bytes received"
    );
    assert_nothing_stored(&env);
}

/// A body with no declared length that stops early looks complete to HTTP; the size in
/// the manifest must catch it.
#[test]
fn blob_without_length_that_ends_early_is_refused_as_truncated() {
    let source = source_sif();
    let half = source[..source.len() / 2].to_vec();
    let server = artifact_server(
        "short",
        &source,
        Box::new(move |_, _| Reply::new(200).body(&half).close_delimited()),
    );
    let env = Env::new();
    let err = assert_fails(
        env.cmd().args(["pull", &oras(&server, "short")]),
        1,
        "ended after",
    );
    let expected = format!("after {} of {} bytes", source.len() / 2, source.len());
    assert!(err.contains(&expected), "{err}");
    assert_nothing_stored(&env);
}

/// More bytes than the manifest declares (and a Content-Length that agrees with the
/// server, not the manifest) are refused as soon as they pass the declared size.
#[test]
fn blob_longer_than_the_manifest_declares_is_refused() {
    let source = source_sif();
    let mut longer = source.clone();
    longer.extend_from_slice(&[0x5a; 100]);
    let server = artifact_server(
        "too-long",
        &source,
        Box::new(move |_, _| Reply::new(200).body(&longer)),
    );
    let env = Env::new();
    let err = assert_fails(
        env.cmd().args(["pull", &oras(&server, "too-long")]),
        1,
        &format!("more than the {} bytes declared", source.len()),
    );
    assert!(err.contains("nothing was stored"), "{err}");
    assert_nothing_stored(&env);
}

/// A registry that fails once with 500 is asked again, and the pull still stores exactly
/// the registry's bytes.
#[test]
fn blob_that_fails_once_with_500_is_retried_and_stored_intact() {
    let source = source_sif();
    let served = source.clone();
    let server = artifact_server(
        "flaky",
        &source,
        Box::new(move |req, nth| {
            if nth == 1 {
                Reply::new(500)
                    .header("Content-Type", "application/json")
                    .body(br#"{"errors":[{"code":"UNKNOWN","message":"try again"}]}"#)
            } else {
                with_range(req, &served)
            }
        }),
    );
    let env = Env::new();
    let remote = oras(&server, "flaky");
    let path = stdout_of(env.cmd().args(["pull", &remote, "--name", "lab/flaky:1"]));
    assert_eq!(fs::read(&path).unwrap(), source, "the cached file differs");
    let blob = blob_path("flaky", &source);
    assert_eq!(
        server.requests("GET", &blob).len(),
        2,
        "{:#?}",
        server.seen()
    );
    assert_eq!(server.ranges(&blob), [None, None], "a 500 is not a resume");
    let manifests = server.requests("GET", &manifest_path("flaky"));
    assert_eq!(manifests.len(), 1);
    let accept = manifests[0].header("Accept").unwrap_or("");
    assert!(accept.contains(MANIFEST_OCI), "Accept: {accept}");
    let v = inspect(&env, "lab/flaky:1");
    assert_eq!(v["source"], remote);
    assert_eq!(v["media_type"], SIF_LAYER);
    assert_eq!(env.names(), ["lab/flaky:1"]);
    assert_eq!(env.blobs().len(), 1);
    env.assert_blobs_verify();
    assert!(env.tmp_entries().is_empty());
}

/// A blob URL that redirects to itself must end with a clear error, not a hang and not a
/// retry loop.
#[test]
fn blob_that_redirects_to_itself_fails_with_too_many_redirects() {
    let source = source_sif();
    let kind = "redirect-loop";
    let holder: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let target = holder.clone();
    let server = artifact_server(
        kind,
        &source,
        Box::new(move |_, _| Reply::new(307).header("Location", &target.lock().unwrap())),
    );
    let blob = blob_path(kind, &source);
    *holder.lock().unwrap() = server.url(&blob);
    let env = Env::new();
    assert_fails(
        env.cmd().args(["pull", &oras(&server, kind)]),
        1,
        "too many redirects",
    );
    let hops = server.requests("GET", &blob).len();
    assert!(
        (10..=11).contains(&hops),
        "{hops} requests for the blob: the redirect limit is 10 and a loop is not retried"
    );
    assert_nothing_stored(&env);
}

/// A tag that names an index (several platforms) is not a SIF artifact: refused with a
/// message that says so, and no blob is fetched.
#[test]
fn oci_index_instead_of_a_manifest_is_refused() {
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_OCI,
        "manifests": [{
            "mediaType": MANIFEST_OCI,
            "digest": sha256_of(b"elsewhere"),
            "size": 512,
            "platform": { "architecture": "amd64", "os": "linux" },
        }],
    }))
    .unwrap();
    let serve_index: Handler = Box::new(move |_, _| {
        Reply::new(200)
            .header("Content-Type", INDEX_OCI)
            .body(&index)
    });
    let server = FaultServer::start(vec![(manifest_path("index"), serve_index)]);
    let env = Env::new();
    let err = assert_fails(
        env.cmd().args(["pull", &oras(&server, "index")]),
        1,
        "is not a SIF artifact",
    );
    assert!(err.contains("index of several manifests"), "{err}");
    assert!(
        server.seen().iter().all(|r| !r.path.contains("/blobs/")),
        "a blob was fetched: {:#?}",
        server.seen()
    );
    assert_nothing_stored(&env);
}

/// A tag the registry does not know is "not found" (exit 3), not a generic failure.
#[test]
fn unknown_tag_exits_three() {
    let missing: Handler = Box::new(|_, _| {
        Reply::new(404)
            .header("Content-Type", "application/json")
            .body(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#)
    });
    let server = FaultServer::start(vec![(manifest_path("missing"), missing)]);
    let env = Env::new();
    let err = assert_fails(
        env.cmd().args(["pull", &oras(&server, "missing")]),
        3,
        "was not found",
    );
    assert!(err.contains("fault/missing:1"), "{err}");
    assert_eq!(server.requests("GET", &manifest_path("missing")).len(), 1);
    assert_nothing_stored(&env);
}

// ---------------------------------------------------------------------------------------
// Plain URLs
// ---------------------------------------------------------------------------------------

const FILE: &str = "/files/image.sif";
const ETAG: &str = "\"sif-5e1f-v1\"";
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

/// A file server for `FILE`: `HEAD` with the validators, and the first `GET` cut off
/// halfway through; later `GET`s are answered by `resume`.
fn file_server(source: &[u8], resume: fn(&Seen, &[u8]) -> Reply) -> FaultServer {
    let body = source.to_vec();
    let handler: Handler = Box::new(move |req, nth| {
        let reply = if req.method == "GET" && nth == 1 {
            Reply::new(200).body(&body).cut(body.len() / 2)
        } else if req.method == "GET" {
            resume(req, &body)
        } else {
            Reply::new(200).body(&body)
        };
        reply
            .header("Content-Type", "application/octet-stream")
            .header("Accept-Ranges", "bytes")
            .header("ETag", ETAG)
            .header("Last-Modified", LAST_MODIFIED)
    });
    FaultServer::start(vec![(FILE.to_string(), handler)])
}

/// A download that drops halfway is resumed from the bytes received, and the result is
/// the server's file, with its validators recorded.
#[test]
fn http_pull_resumes_a_dropped_download_with_range() {
    let source = source_sif();
    let server = file_server(&source, with_range);
    let env = Env::new();
    let url = server.url(FILE);
    let path = stdout_of(
        env.cmd()
            .args(["pull", &url, "--name", "lab/image:1"])
            .env("SREGISTRY_RETRIES", "3"),
    );
    assert_eq!(fs::read(&path).unwrap(), source, "the cached file differs");
    assert_eq!(server.requests("HEAD", FILE).len(), 1);
    let half = source.len() / 2;
    assert_eq!(
        server.ranges(FILE),
        [None, Some(format!("bytes={half}-"))],
        "one GET, then one resume from the bytes received"
    );
    let v = inspect(&env, "lab/image:1");
    assert_eq!(v["source"], url);
    assert_eq!(v["labels"]["org.sregistry.etag"], ETAG);
    assert_eq!(v["labels"]["org.sregistry.last-modified"], LAST_MODIFIED);
    assert_eq!(v["size"], source.len());
    assert_eq!(env.names(), ["lab/image:1"]);
    env.assert_blobs_verify();
    assert!(env.tmp_entries().is_empty());
}

/// A server that ignores `Range` and sends the whole file again: the download starts
/// over instead of appending the whole file to the half it had.
#[test]
fn http_pull_starts_over_when_the_server_ignores_range() {
    let source = source_sif();
    let server = file_server(&source, |_, body| Reply::new(200).body(body));
    let env = Env::new();
    let url = server.url(FILE);
    let path = stdout_of(env.cmd().args(["pull", &url]).env("SREGISTRY_RETRIES", "3"));
    assert_eq!(fs::read(&path).unwrap(), source, "the cached file differs");
    let ranges = server.ranges(FILE);
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    assert!(
        ranges[1]
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "the second GET was not a resume: {ranges:?}"
    );
    let name = format!("{}/files/image.sif:latest", server.addr);
    assert_eq!(env.names(), [name.as_str()]);
    let v = inspect(&env, &name);
    assert_eq!(v["source"], url);
    assert_eq!(v["labels"]["org.sregistry.etag"], ETAG);
    assert_eq!(env.blobs().len(), 1);
    env.assert_blobs_verify();
    assert!(env.tmp_entries().is_empty());
}

/// The file is replaced between the dropped GET and the resume (same size, new ETag). A
/// resume must not stitch the first half of the old file to the second half of the new
/// one: a plain URL has no digest to catch it, so only `If-Range` (or comparing the
/// validators of the `206`) can. The server below answers as a real one would: `206`
/// when `If-Range` matches its current ETag or is absent, `200` with the whole new file
/// when `If-Range` names an older one.
#[test]
fn http_resume_after_the_file_changed_does_not_splice_two_versions() {
    const NEW_ETAG: &str = "\"sif-5e1f-v2\"";
    let old = source_sif();
    let mut new = old.clone();
    // Different in both halves, so a splice is neither file.
    new[old.len() / 4] ^= 0xff;
    new[old.len() * 3 / 4] ^= 0xff;
    let (old_body, new_body) = (old.clone(), new.clone());
    let handler: Handler = Box::new(move |req, nth| {
        if req.method == "HEAD" || nth == 1 {
            let r = Reply::new(200).header("ETag", ETAG).body(&old_body);
            return if req.method == "GET" {
                r.cut(old_body.len() / 2)
            } else {
                r
            };
        }
        let r = match req.header("If-Range") {
            Some(v) if v != NEW_ETAG => Reply::new(200).body(&new_body),
            _ => with_range(req, &new_body),
        };
        r.header("ETag", NEW_ETAG)
    });
    let server = FaultServer::start(vec![(FILE.to_string(), handler)]);
    let env = Env::new();
    let out = env
        .cmd()
        .args(["pull", &server.url(FILE), "--name", "lab/changed:1"])
        .env("SREGISTRY_RETRIES", "3")
        .output()
        .unwrap();
    assert!(env.tmp_entries().is_empty());
    if out.status.success() {
        let path = String::from_utf8(out.stdout).unwrap();
        let got = fs::read(path.trim_end()).unwrap();
        let half = old.len() / 2;
        let spliced = [&old[..half], &new[half..]].concat();
        assert!(
            got == old || got == new,
            "the cached file is neither version{} (ranges sent: {:?})",
            if got == spliced {
                ": it is the old file's first half and the new one's second half"
            } else {
                ""
            },
            server.ranges(FILE)
        );
    } else {
        assert_nothing_stored(&env);
    }
}

// ---------------------------------------------------------------------------------------
// Bounded downloads: endless bodies, full disks, silent servers, signals
// ---------------------------------------------------------------------------------------

/// Run `c` to its end, but no longer than `secs`: a command still running then is killed
/// and the test fails (an unbounded download or a hang is the bug these tests guard).
fn output_within(c: &mut std::process::Command, secs: u64) -> std::process::Output {
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {secs} s: {c:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A failed run: exit code 1, stdout empty, one line on stderr; the line is returned.
fn failed_line(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

/// A file at `FILE` whose `HEAD` declares no length and whose `GET` never ends (zeros,
/// paced so a run without the bound stays small).
fn endless_server() -> FaultServer {
    let handler: Handler = Box::new(|req, _| {
        if req.method == "HEAD" {
            Reply::new(200).close_delimited()
        } else {
            Reply::new(200).endless(Duration::from_millis(10))
        }
    });
    FaultServer::start(vec![(FILE.to_string(), handler)])
}

/// A server at `FILE` that accepts every connection and never answers.
fn silent_server() -> FaultServer {
    let silent: Handler = Box::new(|_, _| Reply::new(200).silent());
    FaultServer::start(vec![(FILE.to_string(), silent)])
}

/// An endless body with no length filled the disk (15 GB in a minute). Where the remote
/// declares no size, `SREGISTRY_MAX_DOWNLOAD` bounds it: the pull stops with an error that
/// names the setting, and the partial file is gone.
#[test]
fn endless_body_without_a_length_stops_at_the_configured_maximum() {
    let server = endless_server();
    let env = Env::new();
    let out = output_within(
        env.std_cmd()
            .args(["pull", &server.url(FILE)])
            .env("SREGISTRY_MAX_DOWNLOAD", "1M"),
        30,
    );
    let err = failed_line(&out);
    assert!(err.contains("without declaring its size"), "{err}");
    assert!(err.contains("SREGISTRY_MAX_DOWNLOAD"), "{err}");
    assert!(err.contains("1 MiB"), "{err}");
    assert_nothing_stored(&env);
}

/// The cache's filesystem is shared by every job on the node: a download stops before it
/// leaves less than `SREGISTRY_MIN_FREE`, whether the remote declared its size (refused
/// before the body is asked for) or not (stopped as the disk fills); nothing is left.
#[test]
fn downloads_keep_the_free_space_the_cache_must_keep() {
    if skip_unless_root(
        "downloads_keep_the_free_space_the_cache_must_keep",
        "mounting a tmpfs needs root",
    ) {
        return;
    }
    let env = Env::new();
    let mnt = env.path("small");
    let _tmpfs = Tmpfs::mount(&mnt, "8m");
    let cache = mnt.join("cache");
    let tmp_left = || -> Vec<_> {
        fs::read_dir(cache.join("v1/tmp"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };

    let pull_keeping_6m = |server: &FaultServer| {
        failed_line(&output_within(
            env.std_cmd()
                .env("SREGISTRY_CACHE", &cache)
                .env("SREGISTRY_MIN_FREE", "6M")
                .args(["pull", &server.url(FILE)]),
            60,
        ))
    };

    // Declared: 3 MiB would fit in 8 MiB, but not with 6 MiB kept free.
    let body = vec![7u8; 3 << 20];
    let declared: Handler = Box::new(move |_, _| Reply::new(200).body(&body));
    let sized = FaultServer::start(vec![(FILE.to_string(), declared)]);
    let err = pull_keeping_6m(&sized);
    assert!(err.contains("not enough space"), "{err}");
    assert!(err.contains("SREGISTRY_MIN_FREE"), "{err}");
    assert!(
        sized.requests("GET", FILE).is_empty(),
        "the body was asked for although it could not fit: {:#?}",
        sized.seen()
    );
    assert!(tmp_left().is_empty(), "left in tmp/: {:?}", tmp_left());

    // Undeclared: stopped as the free space runs down to the reserve.
    let err = pull_keeping_6m(&endless_server());
    assert!(err.contains("not enough space"), "{err}");
    assert!(tmp_left().is_empty(), "left in tmp/: {:?}", tmp_left());
    let free = {
        let c = std::ffi::CString::new(cache.to_str().unwrap()).unwrap();
        // SAFETY: a zeroed statvfs is valid storage; statvfs fills it.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    };
    assert!(
        free > 6 << 20,
        "only {free} bytes free after the failed pull"
    );
}

/// An HTTP `200` with an empty body was stored as a 0-byte image that `get` served.
/// `add` refuses empty files; a pull does too.
#[test]
fn empty_body_is_refused_and_nothing_is_named() {
    let empty: Handler = Box::new(|_, _| Reply::new(200));
    let server = FaultServer::start(vec![(FILE.to_string(), empty)]);
    let env = Env::new();
    let err = assert_fails(
        env.cmd().args(["pull", &server.url(FILE)]),
        1,
        "sent an empty body",
    );
    assert!(err.contains(&server.url(FILE)), "{err}");
    assert_nothing_stored(&env);
}

/// A server that accepts the connection and never answers made `pull` fail only after
/// 482 s (4 x 120 s), silently. With `SREGISTRY_TIMEOUT` of 1 s, a request that times
/// out twice is given up, with a message that says so and names the setting.
#[test]
fn a_server_that_never_answers_fails_within_two_timeouts() {
    let server = silent_server();
    let env = Env::new();
    let started = std::time::Instant::now();
    let out = output_within(
        env.std_cmd()
            .args(["pull", &server.url(FILE)])
            .env("SREGISTRY_TIMEOUT", "1"),
        30,
    );
    let took = started.elapsed();
    let err = failed_line(&out);
    assert!(err.contains("sent nothing for 1 s"), "{err}");
    assert!(err.contains("SREGISTRY_TIMEOUT"), "{err}");
    assert_eq!(
        server.seen().len(),
        2,
        "one request and one retry: {:#?}",
        server.seen()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_nothing_stored(&env);
}

/// On a terminal, a silent server is not a silent wait: after a few seconds the user is
/// told what is awaited (the library reports it; the command line prints it).
#[test]
fn a_silent_server_is_announced_on_a_terminal() {
    let server = silent_server();
    let env = Env::new();
    let line = format!(
        "exec '{}' pull '{}'",
        env!("CARGO_BIN_EXE_sregistry"),
        server.url(FILE)
    );
    let out = output_within(
        std::process::Command::new("script")
            .args(["-q", "-e", "-c", &line, "/dev/null"])
            // A terminal has a TERM (CI's environment may have none).
            .env("TERM", "xterm")
            .env("SREGISTRY_CACHE", &env.cache)
            .env("SREGISTRY_CONFIG_DIR", env.path("config"))
            .env("DOCKER_CONFIG", env.path("docker"))
            .env("SREGISTRY_TIMEOUT", "4")
            .stdin(std::process::Stdio::null()),
        40,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "waiting for an answer from `{}`",
            server.url(FILE)
        )),
        "{text:?}"
    );
    assert!(text.contains("sent nothing for 4 s"), "{text:?}");
}

/// A thousand jobs `get` one image from a remote that has died: the first holds the pull
/// lock and times out; the others must not each wait it out again in turn (and time out
/// on the lock): they fail at once with the first one's error.
#[test]
fn waiters_on_a_dead_remote_fail_with_the_pullers_error() {
    let server = silent_server();
    let env = Env::new();
    let url = server.url(FILE);
    let spawn = || {
        env.std_cmd()
            .args(["-q", "get", &url])
            .env("SREGISTRY_TIMEOUT", "2")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    while server.seen().is_empty() {
        thread::sleep(Duration::from_millis(20));
    }
    let waiters: Vec<_> = (0..3).map(|_| spawn()).collect();
    // One more, not quiet: it says what it waits for.
    let talkative = env
        .std_cmd()
        .args(["get", &url])
        .env("SREGISTRY_TIMEOUT", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let out = first.wait_with_output().unwrap();
    let first_err = failed_line(&out);
    assert!(first_err.contains("sent nothing for 2 s"), "{first_err}");
    for w in waiters {
        let out = w.wait_with_output().unwrap();
        let err = failed_line(&out);
        assert!(err.contains("another process's pull"), "{err}");
        assert!(err.contains("sent nothing for 2 s"), "{err}");
    }
    let out = talkative.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("waiting for another process that is downloading the same image"),
        "{err}"
    );
    assert!(err.contains("another process's pull"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the waiters took {:?}",
        started.elapsed()
    );
    assert_eq!(
        server.seen().len(),
        2,
        "only the first process asked (and retried once): {:#?}",
        server.seen()
    );
    assert_nothing_stored(&env);
}

/// Ctrl-C or a batch system's time limit during a pull left the partial file in `tmp/`
/// (1.5 GB) until gc's grace period. On SIGINT, SIGTERM and SIGHUP the partial file is
/// removed, and the process still ends by that signal (so the shell or the scheduler sees
/// it), for `pull` and for a `get` that pulls. docs/commands.md: "Interrupted by SIGINT,
/// SIGTERM or SIGHUP, `pull` and `get` (and `add`) remove their partial file from `tmp/`
/// and end by that signal".
#[test]
fn an_interrupted_pull_leaves_nothing_in_tmp() {
    use std::os::unix::process::ExitStatusExt;
    for (verb, sig) in [
        ("pull", libc::SIGINT),
        ("pull", libc::SIGTERM),
        ("pull", libc::SIGHUP),
        ("get", libc::SIGINT),
        ("get", libc::SIGTERM),
        ("get", libc::SIGHUP),
    ] {
        let server = endless_server();
        let env = Env::new();
        let mut child = env
            .std_cmd()
            .args([verb, &server.url(FILE)])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let partial = loop {
            let written: u64 = env
                .tmp_entries()
                .iter()
                .filter_map(|p| fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            if written > 256 << 10 {
                break written;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the download never started"
            );
            thread::sleep(Duration::from_millis(20));
        };
        // SAFETY: kill(2) on the child's pid, which is still running.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "{verb}: {status:?}");
        assert!(
            env.tmp_entries().is_empty(),
            "{verb}: signal {sig} left {:?} in tmp/ ({partial} bytes were written)",
            env.tmp_entries()
        );
    }
}

/// `doctor` reports the bounds downloads are held to, as the environment sets them, and
/// a bound that is not a size is a usage error (exit 2) before anything is asked.
#[test]
fn doctor_reports_the_download_bounds_and_a_bad_one_is_refused() {
    let env = Env::new();
    stdout_of(env.cmd().arg("init"));
    let (downloads, _) = doctor_check(
        env.cmd()
            .env("SREGISTRY_MAX_DOWNLOAD", "2G")
            .env("SREGISTRY_MIN_FREE", "512M"),
        "downloads",
    );
    let detail = downloads["detail"].as_str().unwrap();
    assert!(detail.contains("at most 2 GiB"), "{detail}");
    assert!(detail.contains("512 MiB kept free"), "{detail}");
    let never: Handler = Box::new(|_, _| Reply::new(200).body(b"x"));
    let server = FaultServer::start(vec![(FILE.to_string(), never)]);
    assert_fails(
        env.cmd()
            .args(["pull", &server.url(FILE)])
            .env("SREGISTRY_MIN_FREE", "plenty"),
        2,
        "SREGISTRY_MIN_FREE",
    );
    assert!(server.seen().is_empty(), "{:#?}", server.seen());
}

// ---------------------------------------------------------------------------------------
// The rules on every hop
// ---------------------------------------------------------------------------------------

/// Plain HTTP is allowed to loopback or with `--insecure`, and that must hold on every
/// hop: a registry (or URL) on loopback that redirects to plain HTTP elsewhere is refused
/// at the redirect, before anything is sent there.
#[test]
fn a_redirect_to_plain_http_elsewhere_is_refused() {
    let source = source_sif();
    let kind = "redirect-plain";
    let server = artifact_server(
        kind,
        &source,
        Box::new(|_, _| Reply::new(307).header("Location", "http://blobs.invalid/layer")),
    );
    let to_file: Handler =
        Box::new(|_, _| Reply::new(307).header("Location", "http://files.invalid/image.sif"));
    let files = FaultServer::start(vec![(FILE.to_string(), to_file)]);
    let env = Env::new();
    assert_fails(
        env.cmd().args(["pull", &oras(&server, kind)]),
        2,
        "plain HTTP to `blobs.invalid` is refused",
    );
    assert_fails(
        env.cmd().args(["pull", &files.url(FILE)]),
        2,
        "plain HTTP to `files.invalid` is refused",
    );
    assert_eq!(
        server.requests("GET", &blob_path(kind, &source)).len(),
        1,
        "a refused redirect is not retried"
    );
    assert_nothing_stored(&env);
}

/// A registry names where an upload goes (`Location`); a plain-HTTP location on another
/// host is refused like any other plain-HTTP URL.
#[test]
fn an_upload_location_on_plain_http_elsewhere_is_refused() {
    let uploads: Handler = Box::new(|_, _| {
        Reply::new(202).header(
            "Location",
            "http://uploads.invalid/v2/lab/tool/blobs/uploads/1",
        )
    });
    let server = FaultServer::start(vec![("/v2/lab/tool/blobs/uploads/".to_string(), uploads)]);
    let env = env_with_lab_tool();
    let remote = format!("oras://{}/lab/tool:1", server.addr);
    assert_fails(
        env.cmd().args(["push", "lab/tool:1", &remote]),
        2,
        "plain HTTP to `uploads.invalid` is refused",
    );
    assert!(
        server.seen().iter().all(|r| r.method != "PUT"),
        "{:#?}",
        server.seen()
    );
}

/// A password in a URL (`https://user:secret@host/...`) appeared in error messages. It
/// is never printed nor recorded (name, source, messages), and the loopback check takes
/// the URL's host, not what precedes the `@`.
#[test]
fn credentials_in_a_url_are_never_shown_and_never_pass_for_the_host() {
    const SECRET: &str = "S3CRET-pw";
    let env = Env::new();
    // `localhost:...@` is user-info: the host is `files.invalid`, plain HTTP is refused.
    let err = assert_fails(
        env.cmd().args([
            "pull",
            &format!("http://localhost:{SECRET}@files.invalid/x.sif"),
        ]),
        2,
        "plain HTTP to `files.invalid` is refused",
    );
    assert!(!err.contains(SECRET), "{err}");

    let source = source_sif();
    let body = source.clone();
    let file: Handler = Box::new(move |_, _| Reply::new(200).body(&body));
    let server = FaultServer::start(vec![(FILE.to_string(), file)]);
    let with_secret = |path: &str| format!("http://alice:{SECRET}@{}{path}", server.addr);
    let err = assert_fails(
        env.cmd().args(["pull", &with_secret("/missing.sif")]),
        3,
        "was not found",
    );
    assert!(!err.contains(SECRET), "{err}");
    let out = env
        .cmd()
        .args(["pull", &with_secret(FILE)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(SECRET), "{err}");
    let listed = stdout_of(env.cmd().args(["list", "--json"]));
    assert!(!listed.contains(SECRET), "{listed}");
    let name = format!("{}/files/image.sif:latest", server.addr);
    assert_eq!(env.names(), [name.as_str()]);
    let v = inspect(&env, &name);
    assert_eq!(v["source"], format!("http://***@{}{FILE}", server.addr));
}

/// `push NAME oras://host/repo@sha256:...` overwrote the `latest` tag. A push needs a
/// tag: a digest reference is a usage error (exit 2), and nothing is sent.
#[test]
fn push_to_a_digest_reference_is_refused_as_usage() {
    let server = FaultServer::start(vec![]);
    let env = env_with_lab_tool();
    let digest = format!("sha256:{}", "a".repeat(64));
    for target in [
        format!("oras://{}/lab/tool@{digest}", server.addr),
        format!("oras://{}/lab/tool:1@{digest}", server.addr),
    ] {
        assert_fails(
            env.cmd().args(["push", "lab/tool:1", &target]),
            2,
            "a push needs a tag",
        );
    }
    assert!(server.seen().is_empty(), "{:#?}", server.seen());
}

// ---------------------------------------------------------------------------------------
// Pulling again
// ---------------------------------------------------------------------------------------

/// A file server for `FILE` with the current `content` and ETag `"v<version>"`, which
/// answers a matching `If-None-Match` with `304` (to `HEAD` and `GET`), as web servers do.
fn versioned_server(content: Arc<Mutex<(u32, Vec<u8>)>>) -> FaultServer {
    let handler: Handler = Box::new(move |req, _| {
        let (version, body) = content.lock().unwrap().clone();
        let etag = format!("\"v{version}\"");
        if req.header("If-None-Match") == Some(etag.as_str()) {
            return Reply::new(304).header("ETag", &etag);
        }
        with_range(req, &body)
            .header("ETag", &etag)
            .header("Last-Modified", LAST_MODIFIED)
    });
    FaultServer::start(vec![(FILE.to_string(), handler)])
}

/// A second pull of an unchanged `https://` file must not download it again: the `HEAD`
/// is conditional on the recorded ETag, a `304` keeps the cached file (its path printed at
/// once); a changed file is downloaded and the name re-pointed; `--force` downloads again.
/// Counted by the `GET`s the server answered.
#[test]
fn a_second_pull_of_an_unchanged_url_downloads_nothing() {
    let source = source_sif();
    let content = Arc::new(Mutex::new((1, source.clone())));
    let server = versioned_server(content.clone());
    let env = Env::new();
    let url = server.url(FILE);
    let first = stdout_of(env.cmd().args(["pull", &url, "--name", "lab/file:1"]));
    let again = env
        .cmd()
        .args(["pull", &url, "--name", "lab/file:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim_end(), first);
    assert!(err.contains("unchanged"), "{err}");
    assert_eq!(
        server.requests("GET", FILE).len(),
        1,
        "{:#?}",
        server.seen()
    );
    let heads = server.requests("HEAD", FILE);
    assert_eq!(heads[1].header("If-None-Match"), Some("\"v1\""));

    let mut changed = source.clone();
    changed[source.len() / 2] ^= 0xff;
    *content.lock().unwrap() = (2, changed.clone());
    let second = stdout_of(env.cmd().args(["pull", &url, "--name", "lab/file:1"]));
    assert_eq!(fs::read(&second).unwrap(), changed);
    assert_eq!(server.requests("GET", FILE).len(), 2);
    assert_eq!(
        inspect(&env, "lab/file:1")["labels"]["org.sregistry.etag"],
        "\"v2\""
    );

    let forced = stdout_of(
        env.cmd()
            .args(["pull", &url, "--name", "lab/file:1", "--force"]),
    );
    assert_eq!(forced, second);
    assert_eq!(
        server.requests("GET", FILE).len(),
        3,
        "--force downloads again"
    );
}

// ---------------------------------------------------------------------------------------
// Listings
// ---------------------------------------------------------------------------------------

/// The tags of a repository come in pages (`Link: <...>; rel="next"`, relative or
/// absolute, as registries send them); `search` lists them all. (The registry used
/// elsewhere, distribution 2.8, does not page tags, so this server does.) A tag or digest
/// in the reference is a usage error (exit 2), not "not found".
#[test]
fn search_follows_every_page_of_tags() {
    const TAGS: &str = "/v2/lab/tool/tags/list";
    let addr: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let at = addr.clone();
    let pages: Handler = Box::new(move |_, nth| {
        let json = |tags: &[&str]| {
            serde_json::to_vec(&serde_json::json!({ "name": "lab/tool", "tags": tags })).unwrap()
        };
        match nth {
            1 => Reply::new(200)
                .header("Link", &format!("<{TAGS}?n=2&last=b>; rel=\"next\""))
                .body(&json(&["a", "b"])),
            2 => Reply::new(200)
                .header(
                    "Link",
                    &format!(
                        "<http://{}{TAGS}?n=2&last=d>; rel=\"next\"",
                        at.lock().unwrap()
                    ),
                )
                .body(&json(&["c", "d"])),
            _ => Reply::new(200).body(&json(&["e"])),
        }
    });
    let server = FaultServer::start(vec![(TAGS.to_string(), pages)]);
    *addr.lock().unwrap() = server.addr.clone();
    let env = Env::new();
    let listed = stdout_of(
        env.cmd()
            .args(["search", &format!("oras://{}/lab/tool", server.addr)]),
    );
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["a", "b", "c", "d", "e"]
    );
    assert_eq!(server.requests("GET", TAGS).len(), 3);

    let before = server.seen().len();
    assert_fails(
        env.cmd()
            .args(["search", &format!("oras://{}/lab/tool:1", server.addr)]),
        2,
        "without a tag or digest",
    );
    assert_eq!(
        server.seen().len(),
        before,
        "a refused search asked the server"
    );
}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// `get REMOTE --json` printed a plain path; `--json` means JSON.
#[test]
fn get_of_a_remote_under_json_prints_json() {
    let source = source_sif();
    let body = source.clone();
    let file: Handler = Box::new(move |_, _| Reply::new(200).body(&body));
    let server = FaultServer::start(vec![(FILE.to_string(), file)]);
    let env = Env::new();
    let out = stdout_of(env.cmd().args(["get", "--json", &server.url(FILE)]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(fs::read(v["path"].as_str().unwrap()).unwrap(), source);
    assert_eq!(v["remote"], server.url(FILE));
    assert_eq!(v["name"], format!("{}/files/image.sif:latest", server.addr));
}

/// `login oras://host` looked up the host "oras"; `logout unknownhost` said "removed".
/// The scheme is accepted (and dropped), a repository path is a usage error, and logout
/// says when there was nothing to remove.
#[test]
fn login_accepts_the_oras_scheme_and_logout_says_what_it_did() {
    let ok: Handler = Box::new(|_, _| Reply::new(200).body(b"{}"));
    let server = FaultServer::start(vec![("/v2/".to_string(), ok)]);
    let env = Env::new();
    let out = env
        .cmd()
        .args([
            "login",
            &format!("oras://{}/", server.addr),
            "-u",
            "alice",
            "--password-stdin",
        ])
        .write_stdin("pw")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("logged in to {} as alice", server.addr)),
        "{err}"
    );
    assert_eq!(server.requests("GET", "/v2/").len(), 1);
    let stored = fs::read_to_string(env.path("config/credentials.json")).unwrap();
    assert!(stored.contains(&format!("\"{}\"", server.addr)), "{stored}");
    assert_fails(
        env.cmd()
            .args([
                "login",
                &format!("oras://{}/lab/tool", server.addr),
                "-u",
                "a",
                "--password-stdin",
            ])
            .write_stdin("pw"),
        2,
        "HOST[:PORT] only",
    );
    let out = env
        .cmd()
        .args(["logout", "unknown.example.org"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("no credentials for unknown.example.org"),
        "{err}"
    );
    assert!(!err.contains("removed"), "{err}");
    let out = env
        .cmd()
        .args(["logout", &format!("oras://{}", server.addr)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("removed the credentials for {}", server.addr)),
        "{err}"
    );
}

/// A `403` to an anonymous pull said "denies pull on `` with these credentials". It says
/// which repository, that no credentials were sent, and what to run.
#[test]
fn a_403_without_credentials_says_so() {
    let forbidden: Handler = Box::new(|_, _| Reply::new(403));
    let server = FaultServer::start(vec![(manifest_path("private"), forbidden)]);
    let env = Env::new();
    let err = assert_fails(
        env.cmd().args(["pull", &oras(&server, "private")]),
        1,
        "denies pull on `fault/private` without credentials",
    );
    assert!(
        err.contains(&format!("sregistry login {}", server.addr)),
        "{err}"
    );
    assert!(!err.contains("with these credentials"), "{err}");
}

/// The S3 client has time-outs of its own: a silent endpoint must cost about two
/// `SREGISTRY_TIMEOUT`s too, not object_store's 30 s per attempt with ten retries.
#[test]
fn a_silent_s3_endpoint_fails_within_a_few_timeouts() {
    let silent: Handler = Box::new(|_, _| Reply::new(200).silent());
    let server = FaultServer::start(vec![("/bucket/image.sif".to_string(), silent)]);
    let env = Env::new();
    let started = std::time::Instant::now();
    let out = output_within(
        env.std_cmd()
            .args([
                "pull",
                "s3://bucket/image.sif",
                "--endpoint",
                &server.url(""),
            ])
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .env("AWS_REGION", "us-east-1")
            .env("SREGISTRY_TIMEOUT", "1"),
        40,
    );
    let err = failed_line(&out);
    assert!(err.contains("s3://bucket"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}: {err}",
        started.elapsed()
    );
    assert_nothing_stored(&env);
}

/// `SREGISTRY_RETRIES` is obeyed exactly: a blob that always fails with 500 is asked for
/// once with 0 retries and three times with 2. (A value it cannot read was once ignored
/// for the default of 3: `bad_settings_are_usage_errors_that_name_the_variable`.)
#[test]
fn retries_setting_sets_the_number_of_attempts() {
    let source = source_sif();
    for (retries, attempts) in [("0", 1), ("2", 3)] {
        let server = artifact_server(
            "failing",
            &source,
            Box::new(|_, _| Reply::new(500).body(b"no")),
        );
        let env = Env::new();
        let out = env
            .cmd()
            .args(["pull", &oras(&server, "failing")])
            .env("SREGISTRY_RETRIES", retries)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let blob = blob_path("failing", &source);
        assert_eq!(
            server.requests("GET", &blob).len(),
            attempts,
            "SREGISTRY_RETRIES={retries}: {:#?}",
            server.seen()
        );
        assert_nothing_stored(&env);
    }
}

/// A missing S3 bucket is reported as the bucket (exit 3), not as a missing key. A fake
/// server, because s3s-fs answers `NoSuchKey` for a bucket it does not have; the answers
/// are S3's own (`404` with `NoSuchBucket` or `NoSuchKey` in the body).
#[test]
fn a_missing_s3_bucket_is_reported_as_the_bucket() {
    let no_bucket: Handler = Box::new(|_, _| {
        Reply::new(404)
            .header("Content-Type", "application/xml")
            .body(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>gone</BucketName></Error>")
    });
    let no_key: Handler = Box::new(|_, _| {
        Reply::new(404)
            .header("Content-Type", "application/xml")
            .body(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>x.sif</Key></Error>")
    });
    let server = FaultServer::start(vec![
        ("/gone/x.sif".to_string(), no_bucket),
        ("/bucket/x.sif".to_string(), no_key),
    ]);
    let env = Env::new();
    let run = |args: &[&str]| {
        output_within(
            env.std_cmd()
                .args(args)
                .args(["--endpoint", &server.url("")])
                .env("AWS_ACCESS_KEY_ID", "k")
                .env("AWS_SECRET_ACCESS_KEY", "s")
                .env("AWS_REGION", "us-east-1"),
            40,
        )
    };
    for cmd in ["pull", "get"] {
        let out = run(&[cmd, "s3://gone/x.sif"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "{cmd}: {err}");
        assert!(err.contains("there is no S3 bucket `gone`"), "{cmd}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err}");
    }
    let out = run(&["pull", "s3://bucket/x.sif"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("`x.sif` was not found"), "{err}");
    assert!(!err.contains("no S3 bucket"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Secrets in a query
// ---------------------------------------------------------------------------------------

/// Every file under `dir`, read whole, with its path.
fn every_file(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(every_file(&p));
        } else if let Ok(b) = fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

/// Fail naming where any of `secrets` appears: in `text` (what a command printed) or in
/// any file of the cache (index, journal, locks and their notes, settings).
fn assert_no_secret(env: &Env, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "`{s}` was shown: {text}");
        for (p, bytes) in every_file(&env.cache) {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "`{s}` is stored in {}",
                p.display()
            );
        }
    }
}

/// A file server for `FILE` as a pre-signed URL is served: a `HEAD` is refused with `403`
/// (the URL is signed for `GET` only), a `GET` with a matching `If-None-Match` answers
/// `304`, otherwise the file with its ETag. (A fault server: s3s-fs needs a signer the
/// test machine has not got.)
fn presigned_server(body: Vec<u8>) -> FaultServer {
    let file: Handler = Box::new(move |req, _| {
        if req.method == "HEAD" {
            return Reply::new(403);
        }
        if req.header("If-None-Match") == Some(ETAG) {
            return Reply::new(304).header("ETag", ETAG);
        }
        with_range(req, &body).header("ETag", ETAG)
    });
    FaultServer::start(vec![(FILE.to_string(), file)])
}

/// A pre-signed URL's query holds a signature and a token: they were recorded as the
/// source (index, journal, `list --json`, `inspect`) and printed on stderr, for every
/// user of a shared cache to read, and each new signature downloaded the object again
/// under a new name. No query value may be stored or shown anywhere, and a re-signed URL
/// is the same image: `pull` asks the remote whether it changed (a conditional `GET`, the
/// `HEAD` being refused) and downloads nothing, `get` answers from the cache.
#[test]
fn query_values_are_never_stored_or_shown_and_a_new_signature_is_the_same_image() {
    let source = source_sif();
    let server = presigned_server(source.clone());
    let env = Env::new();
    let signed = |n: u32| {
        format!(
            "{}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDCRED{n}%2Fus-east-1&X-Amz-Date=2026120{n}T000000Z&X-Amz-Expires=300&X-Amz-Signature=SIGVALUE{n}&token=TOKVALUE{n}#FRAGVALUE{n}",
            server.url(FILE)
        )
    };
    let secrets = ["AKIDCRED", "SIGVALUE", "TOKVALUE", "FRAGVALUE", "2026120"];
    let mut shown = String::new();
    let mut run = |args: &[&str]| {
        let out = env.cmd().args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        shown.push_str(&text);
        (out.status.code(), text)
    };

    let (code, first) = run(&["pull", &signed(1)]);
    assert_eq!(code, Some(0), "{first}");
    let path = first.lines().next().unwrap().to_string();
    assert_eq!(fs::read(&path).unwrap(), source);
    assert_eq!(server.requests("GET", FILE).len(), 1);

    // Signed again: the same name and source, and the remote is asked, not downloaded.
    let (code, again) = run(&["pull", &signed(2)]);
    assert_eq!(code, Some(0), "{again}");
    assert!(again.starts_with(&format!("{path}\n")), "{again}");
    assert!(again.contains("unchanged"), "{again}");
    let gets = server.requests("GET", FILE);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert_eq!(gets[1].header("If-None-Match"), Some(ETAG));
    let (code, got) = run(&["get", &signed(3)]);
    assert_eq!((code, got.trim_end()), (Some(0), path.as_str()));
    assert_eq!(
        server.requests("GET", FILE).len(),
        2,
        "get asked the remote"
    );
    let names = env.names();
    assert_eq!(names.len(), 1, "{names:?}");
    let (code, listed) = run(&["list", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v[0]["source"], server.url(FILE), "{listed}");
    let (code, _) = run(&["inspect", &names[0]]);
    assert_eq!(code, Some(0));
    let (code, _) = run(&["inspect", "--json", &names[0]]);
    assert_eq!(code, Some(0));

    // Failures name the URL without its values too.
    let missing = signed(4).replace(FILE, "/missing.sif");
    let (code, err) = run(&["pull", &missing]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("X-Amz-Signature=***"), "{err}");
    let (code, err) = run(&["pull", &format!("{}\tx", signed(5))]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(&["push", &names[0], &signed(6)]);
    assert_eq!(code, Some(2), "{err}");

    assert_no_secret(&env, &shown, &secrets);
}

/// Two URLs that differ only in a parameter that is not a signature (`?version=1`,
/// `?version=2`) are two objects: each gets a name of its own and its own bytes (a name
/// shared would give one the other's bytes from the cache), and neither value is stored
/// or shown; a new signature on either is still that same image.
#[test]
fn urls_that_differ_in_a_plain_parameter_are_images_of_their_own() {
    let source = source_sif();
    let mut other = source.clone();
    other[source.len() / 2] ^= 0xff;
    let (one, two) = (source.clone(), other.clone());
    let file: Handler = Box::new(move |req, _| {
        let body = if req.query.contains("version=VERSIONTWO") {
            &two
        } else {
            &one
        };
        with_range(req, body).header(
            "ETag",
            &format!("\"{}\"", body.len() + body[body.len() / 2] as usize),
        )
    });
    let server = FaultServer::start(vec![(FILE.to_string(), file)]);
    let env = Env::new();
    let url =
        |v: &str, sig: &str| format!("{}?version={v}&X-Amz-Signature={sig}", server.url(FILE));
    let get = |u: String| {
        let out = env.cmd().args(["get", &u]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        (text.lines().next().unwrap().to_string(), text)
    };
    let (p1, t1) = get(url("VERSIONONE", "SIGA"));
    let (p2, t2) = get(url("VERSIONTWO", "SIGB"));
    assert_eq!(fs::read(&p1).unwrap(), source);
    assert_eq!(fs::read(&p2).unwrap(), other);
    let (p1_again, t3) = get(url("VERSIONONE", "SIGC"));
    assert_eq!(p1_again, p1);
    assert_eq!(
        server.requests("GET", FILE).len(),
        2,
        "{:#?}",
        server.seen()
    );
    let names = env.names();
    assert_eq!(names.len(), 2, "{names:?}");
    let sources: Vec<String> = names
        .iter()
        .map(|n| inspect(&env, n)["source"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(sources[0], sources[1]);
    for s in &sources {
        assert!(
            s.starts_with(&format!("{}?version=*** (query ", server.url(FILE))),
            "{s}"
        );
    }
    let listed = stdout_of(env.cmd().args(["list", "--json"]));
    assert_no_secret(
        &env,
        &format!("{t1}{t2}{t3}{listed}{}", names.join(" ")),
        &["VERSIONONE", "VERSIONTWO", "SIGA", "SIGB", "SIGC"],
    );
}

// ---------------------------------------------------------------------------------------
// What a HEAD says
// ---------------------------------------------------------------------------------------

/// Some servers answer a `HEAD` with `Content-Length: 0` when they do not know the size;
/// taken as the size limit, it failed a good `GET` with "sent more than the 0 bytes
/// declared". The `GET`'s own length holds.
#[test]
fn a_head_that_says_content_length_zero_does_not_fail_a_good_get() {
    let source = source_sif();
    let body = source.clone();
    let file: Handler = Box::new(move |req, _| match req.method.as_str() {
        "HEAD" => Reply::new(200).header("ETag", ETAG),
        _ => with_range(req, &body).header("ETag", ETAG),
    });
    let server = FaultServer::start(vec![(FILE.to_string(), file)]);
    let env = Env::new();
    let out = env
        .cmd()
        .args(["pull", &server.url(FILE)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    assert_eq!(fs::read(path).unwrap(), source);
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
}

/// `pull --json` printed the entry alone: a script could not tell a download from a
/// remote found unchanged. `downloaded` says which (docs/commands.md, "pull").
#[test]
fn pull_json_says_whether_it_downloaded() {
    let content = Arc::new(Mutex::new((1, source_sif())));
    let server = versioned_server(content.clone());
    let env = Env::new();
    let url = server.url(FILE);
    let pull = || -> serde_json::Value {
        serde_json::from_str(&stdout_of(env.cmd().args([
            "--json",
            "pull",
            &url,
            "--name",
            "lab/file:1",
        ])))
        .unwrap()
    };
    let first = pull();
    assert_eq!(first["downloaded"], true, "{first}");
    assert_eq!(first["name"], "lab/file:1", "{first}");
    let again = pull();
    assert_eq!(again["downloaded"], false, "{again}");
    assert_eq!(again["path"], first["path"]);
    assert_eq!(server.requests("GET", FILE).len(), 1);
    let mut changed = source_sif();
    changed[100] ^= 0xff;
    *content.lock().unwrap() = (2, changed);
    assert_eq!(pull()["downloaded"], true);
}

/// docs/remotes.md promises that a transfer that keeps streaming is never cut off, however
/// long it takes: `SREGISTRY_TIMEOUT` bounds a silence, not a whole transfer. A body sent
/// in ten pieces half a second apart (five seconds in all, against a timeout of two) must
/// arrive whole, in one `GET` (a cut would show as a resumed `GET` or a failure).
#[test]
fn a_stream_longer_than_the_timeout_but_never_silent_that_long_is_not_cut_off() {
    let source = source_sif();
    let body = source.clone();
    let file: Handler = Box::new(move |req, _| {
        Reply::new(200).body(&body).header("ETag", ETAG).trickle(
            if req.method == "GET" { 10 } else { 1 },
            Duration::from_millis(500),
        )
    });
    let server = FaultServer::start(vec![(FILE.to_string(), file)]);
    let env = Env::new();
    let out = env
        .cmd()
        .env("SREGISTRY_TIMEOUT", "2")
        .args(["pull", &server.url(FILE)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    assert_eq!(fs::read(path).unwrap(), source);
    assert_eq!(
        server.requests("GET", FILE).len(),
        1,
        "{:#?}",
        server.seen()
    );
}

/// A cache filled by an earlier version recorded an `https://` URL's query as given
/// (`?version=1` and its value). Hiding query values from then on must not cost that cache
/// its images: the same URL is still found as the same remote (before, `get` and `pull`
/// refused its own name as "held by another remote"), a re-pull asks the remote and
/// downloads nothing when unchanged, and `list` and `inspect` show the old record without
/// its values.
#[test]
fn a_query_url_recorded_by_an_earlier_version_is_still_the_same_remote() {
    use sregistry::remote::{RemoteOptions, RemoteRef};
    let source = source_sif();
    let body = source.clone();
    let file: Handler = Box::new(move |req, _| {
        if req.header("If-None-Match") == Some(ETAG) {
            return Reply::new(304).header("ETag", ETAG);
        }
        with_range(req, &body).header("ETag", ETAG)
    });
    let server = FaultServer::start(vec![(FILE.to_string(), file)]);
    let env = Env::new();
    let url = format!("{}?version=OLDVALUE1", server.url(FILE));
    // What the earlier version left: the content under the URL's default name, its source
    // the URL as given, its ETag recorded.
    let name = RemoteRef::parse(&url)
        .unwrap()
        .default_name(&RemoteOptions::default())
        .unwrap();
    let other = env.file("other.img", b"another image");
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&other)
            .args(["--name", "lab/other:1"]),
    );
    let labels = [(sregistry::remote::ETAG_LABEL.to_string(), ETAG.to_string())]
        .into_iter()
        .collect();
    commit_as_an_earlier_version(&env, &source, &name, &url, labels);
    let got = stdout_of(env.cmd().args(["get", &url]));
    assert_eq!(fs::read(&got).unwrap(), source);
    assert!(
        server.requests("GET", FILE).is_empty(),
        "{:#?}",
        server.seen()
    );
    let pulled = stdout_of(env.cmd().args(["pull", &url]));
    assert_eq!(pulled, got);
    // Asked (a HEAD that finds the recorded ETag), nothing downloaded.
    assert_eq!(
        server.requests("HEAD", FILE).len(),
        1,
        "{:#?}",
        server.seen()
    );
    assert!(
        server.requests("GET", FILE).is_empty(),
        "{:#?}",
        server.seen()
    );
    assert_eq!(env.names(), [name.key(), "lab/other:1".to_string()]);
    let listed = stdout_of(env.cmd().args(["list", "--json"]));
    let inspected = stdout_of(env.cmd().args(["inspect", &name.key()]));
    for text in [&listed, &inspected] {
        assert!(!text.contains("OLDVALUE1"), "{text}");
        assert!(text.contains("version=***"), "{text}");
    }
    // An earlier version kept a password or a fragment in a source too: shown hidden.
    for (old, secret) in [
        ("https://user:OLDPASSWORD@h.example/z.sif", "OLDPASSWORD"),
        ("https://h.example/w.sif#OLDFRAGMENT", "OLDFRAGMENT"),
    ] {
        let name: sregistry::Reference = format!("old/{}:1", secret.to_ascii_lowercase())
            .parse()
            .unwrap();
        commit_as_an_earlier_version(&env, secret.as_bytes(), &name, old, Default::default());
        let listed = stdout_of(env.cmd().args(["list", "--json"]));
        let inspected = stdout_of(env.cmd().args(["inspect", &name.key()]));
        for text in [&listed, &inspected] {
            assert!(!text.contains(secret), "{text}");
        }
    }
}

/// `content` under `name` with the recorded `source` and `labels`, committed through the
/// library as an earlier version's pull left it (the cache must exist already).
fn commit_as_an_earlier_version(
    env: &Env,
    content: &[u8],
    name: &sregistry::Reference,
    source: &str,
    labels: std::collections::BTreeMap<String, String>,
) {
    let cache = sregistry::Cache::open(&env.cache, Default::default()).unwrap();
    let mut ingest = cache.ingest(()).unwrap();
    ingest.write(content.to_vec().into()).unwrap();
    cache
        .commit_ingested(
            ingest.seal().unwrap(),
            name,
            sregistry::cache::Provenance {
                source: source.to_string(),
                labels,
                media_type: None,
                remote_digest: None,
            },
            Default::default(),
        )
        .unwrap();
}

/// A query parameter without `=` (`?<token>`, a common way to carry a token) was recorded
/// and shown whole, in the source, `list --json`, `inspect` and stderr. It is hidden as a
/// value is, and still tells two URLs apart.
#[test]
fn a_query_parameter_without_a_value_is_hidden_too() {
    let source = source_sif();
    let body = source.clone();
    let file: Handler = Box::new(move |req, _| with_range(req, &body));
    let server = FaultServer::start(vec![(FILE.to_string(), file)]);
    let env = Env::new();
    let mut printed = String::new();
    for token in ["BARETOKEN1", "BARETOKEN2"] {
        let url = format!("{}?{token}&x", server.url(FILE));
        let out = env.cmd().args(["pull", &url]).output().unwrap();
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{printed}");
    }
    let names = env.names();
    assert_eq!(names.len(), 2, "two tokens, two images: {names:?}");
    printed.push_str(&stdout_of(env.cmd().args(["list", "--json"])));
    for n in &names {
        printed.push_str(&stdout_of(env.cmd().args(["inspect", n])));
    }
    assert!(!printed.contains("BARETOKEN"), "{printed}");
    assert!(printed.contains("?***&***"), "{printed}");
    for f in walk(&env.cache) {
        if f.is_file() {
            let bytes = fs::read(&f).unwrap();
            assert!(
                !bytes.windows(9).any(|w| w == b"BARETOKEN"),
                "{} holds the token",
                f.display()
            );
        }
    }
}

/// `SREGISTRY_RETRIES` held for every remote but s3://, whose client retried 3 times
/// whatever it said. An S3 server that answers 503 to everything is asked once with 0
/// retries and three times with 2.
#[test]
fn retries_setting_holds_for_s3_too() {
    for (retries, attempts) in [("0", 1), ("2", 3)] {
        let failing: Handler = Box::new(|_, _| Reply::new(503).body(b"slow down"));
        let server = FaultServer::start(vec![("/bucket/x.sif".to_string(), failing)]);
        let env = Env::new();
        let out = output_within(
            env.std_cmd()
                .args(["pull", "s3://bucket/x.sif", "--endpoint", &server.url("")])
                .env("AWS_ACCESS_KEY_ID", "k")
                .env("AWS_SECRET_ACCESS_KEY", "s")
                .env("AWS_REGION", "us-east-1")
                .env("SREGISTRY_RETRIES", retries),
            60,
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(
            server.seen().len(),
            attempts,
            "SREGISTRY_RETRIES={retries}: {:#?}",
            server.seen()
        );
        assert_nothing_stored(&env);
    }
}

/// An empty `AWS_ENDPOINT_URL` (an empty variable counts as unset) made the S3 client
/// panic ("internal error ... RelativeUrlWithoutBase"). Unset or empty, the endpoint is
/// AWS's; here another variable gives the real one, and the pull works.
#[test]
fn an_empty_aws_endpoint_url_counts_as_unset() {
    let source = source_sif();
    let body = source.clone();
    let file: Handler = Box::new(move |req, _| with_range(req, &body));
    let server = FaultServer::start(vec![("/bucket/x.sif".to_string(), file)]);
    let env = Env::new();
    // No endpoint at all: AWS's own, which this machine cannot reach; a failure that says
    // so, not a panic.
    let out = output_within(
        env.std_cmd()
            .args(["pull", "s3://bucket/x.sif"])
            .env("AWS_ENDPOINT_URL", "")
            .env_remove("AWS_ENDPOINT")
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .env("AWS_REGION", "us-east-1")
            .env("SREGISTRY_RETRIES", "0")
            .env("SREGISTRY_TIMEOUT", "2"),
        60,
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("internal error"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = output_within(
        env.std_cmd()
            .args(["pull", "s3://bucket/x.sif"])
            .env("AWS_ENDPOINT_URL", "")
            .env("AWS_ENDPOINT", server.url(""))
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .env("AWS_REGION", "us-east-1"),
        60,
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("internal error"), "{err}");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(fs::read(&path).unwrap(), source);
}

/// With `SREGISTRY_RETRIES=0` a failure said "1 attempts": the count of tries reads as
/// English whatever it is.
#[test]
fn a_single_attempt_is_counted_in_english() {
    let server = silent_server();
    let env = Env::new();
    let out = output_within(
        env.std_cmd()
            .args(["pull", &server.url(FILE)])
            .env("SREGISTRY_TIMEOUT", "1")
            .env("SREGISTRY_RETRIES", "0"),
        30,
    );
    let err = failed_line(&out);
    assert!(
        err.contains("(check the address and the network; 1 attempt)")
            || err.contains("on its one attempt"),
        "{err}"
    );
    assert!(!err.contains("1 attempts"), "{err}");
}
