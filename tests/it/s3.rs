//! `s3://` against a real S3 server (`s3s-fs`, files on disk; `tests/support/s3.rs`): what a
//! signal leaves of an upload, endpoints as users mistype them, keys as other clients
//! write them, and the names keys give.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY, s3_std};
use crate::support::sha256_hex;

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
/// MiB part on the server, two more to come; or every part sent and none yet waited for,
/// where the signal was once not heard and the object was published) aborts the multipart
/// upload: no part, no upload record and no object is left on the server, and the process
/// ends by the signal.
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
    for (sig, name, point) in [
        (libc::SIGINT, "SIGINT", "s3-push-part"),
        (libc::SIGTERM, "SIGTERM", "s3-push-part"),
        (libc::SIGHUP, "SIGHUP", "s3-push-part"),
        (libc::SIGINT, "SIGINT", "s3-push-last-part"),
        (libc::SIGTERM, "SIGTERM", "s3-push-last-part"),
    ] {
        let name = format!("{name} at {point}");
        let s3 = S3Server::start();
        let remote = format!("s3://{BUCKET}/images/big.img");
        let mut child = s3_std(&env, &s3, SECRET_KEY, &["push", "lab/big:1", &remote])
            .env("SREGISTRY_TEST_PAUSE", point)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        crate::support::wait_for_pause(&mut child);
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
            // A query value is never shown, an endpoint's neither.
            "http://127.0.0.1:9000/?x=***",
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

/// `key` as the AWS CLI (botocore) puts it in a request's path: every byte but the
/// unreserved ones (`A-Z a-z 0-9 - . _ ~`) and `/` as `%XX`, upper-case, UTF-8.
fn aws_cli_encoded(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `curl --aws-sigv4` (a second S3 client, signing itself) against `s3`: `GET` the object
/// under `key` (`put` None), or `PUT` `put` there; the key is sent as the AWS CLI encodes it
/// ([`aws_cli_encoded`]). Returns the body of a `GET`.
fn curl_s3(s3: &S3Server, key: &str, put: Option<&std::path::Path>) -> Vec<u8> {
    let url = format!("{}/{BUCKET}/{}", s3.endpoint(), aws_cli_encoded(key));
    let mut c = StdCommand::new("curl");
    c.args([
        "-sS",
        "--fail-with-body",
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
    ])
    .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")]);
    match put {
        Some(file) => {
            let sha = sha256_hex(&fs::read(file).unwrap());
            c.args(["-H", &format!("x-amz-content-sha256: {sha}")])
                .arg("-T")
                .arg(file);
        }
        None => {
            c.args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
        }
    }
    let out = c.arg(&url).output().expect("curl");
    assert!(
        out.status.success(),
        "curl {url}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s3.log()
    );
    out.stdout
}

/// Keys that need encoding in a URL, each a different object: non-ASCII, a literal `%`
/// (and `%25`), `?`, `#`, `&`, `=`, `{`, `}`, `+`, spaces, and the other characters S3
/// allows.
const ODD_KEYS: [&str; 8] = [
    "uni/ñandú 𝄞.sif",
    "pct/100%25 and 50%.sif",
    "q/a?b=c&d.sif",
    "h/a#b.sif",
    "br/{x}.sif",
    "sp/a b  c.sif",
    "plus/a+b.sif",
    "misc/~!$'()*,;=@:[].sif",
];

/// S3 keys are sent as written, so they round-trip with another client: what
/// `sregistry push` writes under an odd key, curl reads under that same key (and s3s-fs
/// holds under that exact name on disk), and what curl writes under an odd key,
/// `sregistry pull` reads.
#[test]
fn odd_s3_keys_round_trip_with_another_client() {
    let s3 = S3Server::start();
    let env = Env::new();
    for (i, key) in ODD_KEYS.iter().enumerate() {
        // sregistry writes, curl reads.
        let pushed = env.file(
            &format!("pushed-{i}.img"),
            format!("pushed to {key}").as_bytes(),
        );
        let name = format!("lab/pushed:{i}");
        stdout_of(env.cmd().arg("add").arg(&pushed).args(["--name", &name]));
        let remote = format!("s3://{BUCKET}/{key}");
        let out = s3_std(&env, &s3, SECRET_KEY, &["push", &name, &remote])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "push to {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(s3.object(key).is_file(), "{key}: {:?}", s3.objects());
        assert_eq!(curl_s3(&s3, key, None), fs::read(&pushed).unwrap(), "{key}");
        // curl writes, sregistry reads.
        let other = format!("{key}.other");
        let theirs = env.file(
            &format!("theirs-{i}.img"),
            format!("curl put {other}").as_bytes(),
        );
        curl_s3(&s3, &other, Some(&theirs));
        let remote = format!("s3://{BUCKET}/{other}");
        let out = s3_std(
            &env,
            &s3,
            SECRET_KEY,
            &["pull", &remote, "--name", &format!("lab/theirs:{i}")],
        )
        .output()
        .unwrap();
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success(),
            "pull of {other}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            fs::read(&theirs).unwrap(),
            "{other}"
        );
    }
}

/// A key with an empty part (`dir/`, `/dir`, `a//dir`) is refused in one line (exit 2),
/// by `pull`, `get` and `push` alike: the S3 client would send it without its empty part
/// and so read or overwrite another object (`dir/` as `dir`), which is there.
#[test]
fn an_s3_key_with_an_empty_part_is_refused_never_read_as_another() {
    let s3 = S3Server::start();
    let env = env_with_lab_tool();
    let other = env.file("other.img", b"the object under another key");
    for key in ["dir", "a/dir"] {
        curl_s3(&s3, key, Some(&other));
    }
    let names = env.names();
    for key in ["dir/", "/dir", "a//dir"] {
        let remote = format!("s3://{BUCKET}/{key}");
        for args in [
            &["pull", &remote][..],
            &["pull", &remote, "--name", "lab/x:1"],
            &["get", &remote],
            &["push", "lab/tool:1", &remote],
        ] {
            let out = s3_std(&env, &s3, SECRET_KEY, args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
            assert!(err.contains(&format!("`{remote}`")), "{args:?}: {err}");
            assert!(err.contains("empty part"), "{args:?}: {err}");
            assert!(out.stdout.is_empty(), "{args:?}");
        }
    }
    assert_eq!(env.names(), names);
    for key in ["dir", "a/dir"] {
        assert_eq!(curl_s3(&s3, key, None), fs::read(&other).unwrap(), "{key}");
    }
}

/// `get` (which takes no `--name`) fetches an object under any key, with `--endpoint`:
/// each key gives a valid default name, also those that gave none (`n/x-.sif`, `x_-y`,
/// non-ASCII); a second `get` answers from the cache, and `pull` without `--name` names it
/// the same. (Keys over 245 characters, which s3s-fs cannot hold, are the unit tests'
/// `every_s3_key_gives_a_valid_default_name_and_valid_ones_keep_theirs`.)
#[test]
fn get_fetches_an_s3_object_under_any_key() {
    let s3 = S3Server::start();
    let env = Env::new();
    let mut keys: Vec<String> = ODD_KEYS.iter().map(|k| k.to_string()).collect();
    keys.extend(["n/x-.sif", "x_-y", "a._b/-_-.sif", "ÅÄÖ/𝄞"].map(String::from));
    for (i, key) in keys.iter().enumerate() {
        let data = env.file(&format!("o{i}.img"), format!("object {key}").as_bytes());
        curl_s3(&s3, key, Some(&data));
        let remote = format!("s3://{BUCKET}/{key}");
        let run = |args: &[&str]| {
            let out = s3_std(&env, &s3, SECRET_KEY, args).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let path = run(&["get", &remote]);
        assert_eq!(fs::read(&path).unwrap(), fs::read(&data).unwrap(), "{key}");
        let again: serde_json::Value =
            serde_json::from_str(&run(&["--json", "get", &remote])).unwrap();
        assert_eq!(again["path"], path.as_str(), "{key}");
        let name = again["name"].as_str().unwrap().to_string();
        assert_eq!(run(&["pull", &remote]), path, "{key}");
        assert!(env.names().contains(&name), "{key}: {name}");
    }
}

/// Without AWS credentials a request goes unsigned (and the refusal says that no
/// credentials were given), and nothing connects to the EC2 instance metadata service
/// (here a local listener where both object_store's and the AWS SDKs' variables point):
/// off EC2 that address is a stranger's. Only `AWS_EC2_METADATA_DISABLED=false` asks for
/// it, and then it is asked (the control, showing the listener would have seen it).
#[test]
fn without_aws_credentials_nothing_asks_the_ec2_metadata_service() {
    let s3 = S3Server::start();
    let env = Env::new();
    fs::write(s3.object("pub.sif"), b"public").unwrap();
    let remote = format!("s3://{BUCKET}/pub.sif");
    for asked in [false, true] {
        let metadata = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = format!("http://{}", metadata.local_addr().unwrap());
        let mut c = env.cmd();
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                c.env_remove(k);
            }
        }
        c.env("AWS_METADATA_ENDPOINT", &at)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &at)
            .env("SREGISTRY_TIMEOUT", "2")
            .args(["pull", &remote, "--endpoint", &s3.endpoint()]);
        if asked {
            c.env("AWS_EC2_METADATA_DISABLED", "false");
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "asked {asked}: {err}");
        // A connection made while the process ran waits in the backlog.
        metadata.set_nonblocking(true).unwrap();
        let connected = metadata.accept().is_ok();
        assert_eq!(connected, asked, "asked {asked}: {err}");
        if !asked {
            assert!(err.contains("no AWS credentials were given"), "{err}");
            assert!(err.contains("Signature is required"), "{err}");
        }
    }
    assert!(env.names().is_empty());
}
