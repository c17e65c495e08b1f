//! `s3://` against a real S3 server (`s3s-fs`, files on disk; see `interop.rs`): what a
//! signal leaves of an upload, endpoints as users mistype them, keys as other clients
//! write them, and the names keys give.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::interop::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};

/// The binary with this cache, against `s3` with the test's credentials and no other
/// AWS_* variable from the caller's environment (the plain `Command` of `s3_cmd`).
fn s3_std(env: &Env, s3: &S3Server, args: &[&str]) -> StdCommand {
    let mut c = env.std_cmd();
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .args(args)
        .args(["--endpoint", &s3.endpoint()]);
    c
}

/// The names of s3s-fs's files for multipart uploads not yet completed or aborted: the
/// upload's record (`.upload-<id>.json`), its parts (`.upload_id-<id>.part-N`) and its
/// metadata (`.bucket-...upload-<id>.metadata.json`), all at the top of its root.
fn upload_files(s3: &S3Server) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(&s3.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("upload"))
        .collect();
    out.sort();
    out
}

/// A push to S3 ended by SIGINT, SIGTERM or SIGHUP while its parts go up (the first 16
/// MiB part on the server, two more to come) aborts the multipart upload: no part, no
/// upload record and no object is left on the server, and the process ends by the signal.
#[test]
fn a_signal_during_an_s3_push_leaves_no_parts_on_the_server() {
    let env = Env::new();
    let mut next = xorshift(21);
    let data: Vec<u8> = (0..(40 << 20) / 8)
        .flat_map(|_| next().to_le_bytes())
        .collect();
    let file = env.file("big.img", &data);
    stdout_of(
        env.cmd()
            .arg("add")
            .arg(&file)
            .args(["--name", "lab/big:1"]),
    );
    for (sig, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let s3 = S3Server::start();
        let remote = format!("s3://{BUCKET}/images/big.img");
        let mut child = s3_std(&env, &s3, &["push", "lab/big:1", &remote])
            .env("SREGISTRY_TEST_PAUSE", "s3-push-part")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        crate::contention::wait_for_pause(&mut child);
        // Wait for the first part to land (s3s-fs renames it into place when whole).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !upload_files(&s3).iter().any(|n| n.ends_with(".part-1")) {
            assert!(
                Instant::now() < deadline,
                "{name}: the first part never reached the server: {:?}\n{}",
                upload_files(&s3),
                s3.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(sig),
            "{name}: the push did not end by its signal: {status:?}"
        );
        assert_eq!(
            upload_files(&s3),
            Vec::<String>::new(),
            "{name}: the multipart upload was left on the server"
        );
        assert!(s3.objects().is_empty(), "{name}: {:?}", s3.objects());
        assert!(
            env.tmp_entries().is_empty(),
            "{name}: {:?}",
            env.tmp_entries()
        );
    }
}

/// A mistyped S3 endpoint, from `--endpoint` or `AWS_ENDPOINT_URL`, given to `pull`,
/// `get` or `push`, is a usage error (exit 2) in one line that names it (never its
/// password) and shows a good one; never a panic inside the S3 client ("internal error",
/// "(tokio runtime)"), in plain or `--json` output; and nothing is written to the cache.
#[test]
fn a_mistyped_s3_endpoint_is_a_usage_error_that_names_it_never_a_panic() {
    let env = env_with_lab_tool();
    let names = env.names();
    let cases = [
        ("127.0.0.1:19000", "127.0.0.1:19000", "no scheme"),
        ("notaurl", "notaurl", "no scheme"),
        ("http://", "http://", "empty host"),
        (
            "http://127.0.0.1:99999",
            "http://127.0.0.1:99999",
            "invalid port",
        ),
        ("http://127.0.0.1:0", "http://127.0.0.1:0", "port is 0"),
        ("ftp://127.0.0.1:9000", "ftp://127.0.0.1:9000", "`ftp://`"),
        (
            "https://me:hunter2@127.0.0.1:9000",
            "https://***@127.0.0.1:9000",
            "user or password",
        ),
        (
            "http://127.0.0.1:9000/?x=1",
            "http://127.0.0.1:9000/?x=1",
            "query",
        ),
        (
            "http://127.0.0.1:9000/a b",
            "http://127.0.0.1:9000/a b",
            "' '",
        ),
        ("http://bücher.example", "http://bücher.example", "'ü'"),
    ];
    for (ep, shown, why) in cases {
        for from in ["--endpoint", "AWS_ENDPOINT_URL"] {
            for args in [
                &["pull", "s3://bucket/k.sif"][..],
                &["pull", "s3://bucket/k.sif", "--name", "lab/k:1"],
                &["get", "s3://bucket/k.sif"],
                &["push", "lab/tool:1", "s3://bucket/k.sif"],
                &["--json", "pull", "s3://bucket/k.sif"],
            ] {
                let mut c = env.cmd();
                for (k, _) in std::env::vars_os() {
                    if k.to_string_lossy().starts_with("AWS_") {
                        c.env_remove(k);
                    }
                }
                c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                    .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                    .args(args);
                if from == "--endpoint" {
                    c.args(["--endpoint", ep]);
                } else {
                    c.env("AWS_ENDPOINT_URL", ep);
                }
                let out = c.output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                let said = format!("{ep} from {from}, {args:?}");
                assert_eq!(out.status.code(), Some(2), "{said}: {err}");
                assert_eq!(err.trim_end().lines().count(), 1, "{said}: {err}");
                let want = format!("invalid S3 endpoint `{shown}` (from {from})");
                assert!(err.contains(&want), "{said}: lacks {want}: {err}");
                assert!(err.contains(why), "{said}: lacks {why}: {err}");
                assert!(err.contains("`http://127.0.0.1:9000`"), "{said}: {err}");
                let stdout = String::from_utf8_lossy(&out.stdout);
                for text in [&err, &stdout] {
                    assert!(!text.contains("internal error"), "{said}: {text}");
                    assert!(!text.contains("tokio"), "{said}: {text}");
                    assert!(!text.contains("hunter2"), "{said}: {text}");
                }
                if args[0] == "--json" {
                    let v: serde_json::Value = serde_json::from_str(stdout.trim())
                        .unwrap_or_else(|e| panic!("{said}: {e}: {stdout}"));
                    assert_eq!(v["exit_code"], 2, "{said}: {v}");
                    assert!(v["error"].as_str().unwrap().contains(&want), "{said}: {v}");
                } else {
                    assert!(stdout.is_empty(), "{said}: {stdout}");
                }
            }
        }
    }
    assert_eq!(env.names(), names);
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
}
