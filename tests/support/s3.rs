//! `s3s-fs` (a real S3 server over a directory, from crates.io; `scripts/install-deps.sh
//! test` installs it) on 127.0.0.1 with one bucket, and `sregistry` commands pointed at
//! it with the test's credentials and nothing of the caller's AWS_* environment.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Env;
use crate::registry::free_port;

const CARGO_S3S: &str = "cargo install s3s-fs --version 0.14.1 --features binary --locked";

pub const BUCKET: &str = "sifs";
pub const ACCESS_KEY: &str = "sregistry-test-access";
pub const SECRET_KEY: &str = "sregistry-test-secret-0123456789";

/// `s3s-fs` on 127.0.0.1, serving a temp root whose directories are buckets. Killed when
/// dropped.
pub struct S3Server {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    port: u16,
    log: PathBuf,
    child: Child,
}

impl S3Server {
    /// A server with one (empty) bucket, [`BUCKET`].
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join(BUCKET)).unwrap();
        let log = dir.path().join("s3s-fs.log");
        let port = free_port();
        let out = fs::File::create(&log).unwrap();
        let mut child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run s3s-fs ({e}): {CARGO_S3S}"));
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(&addr).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "s3s-fs exited ({status}) before listening on {addr}: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("s3s-fs did not start listening on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server {
            _dir: dir,
            root,
            port,
            log,
            child,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where s3s-fs keeps `s3://BUCKET/key`.
    pub fn object(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// Every regular file under the bucket, relative to it (s3s-fs may keep its own
    /// bookkeeping elsewhere under the root).
    pub fn objects(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if e.file_type().unwrap().is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().to_path_buf());
                }
            }
        }
        let mut out = Vec::new();
        let bucket = self.root.join(BUCKET);
        walk(&bucket, &bucket, &mut out);
        out.sort();
        out
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sregistry` with `env`'s cache, the test's access key and `secret`, and no other AWS_*
/// variable from the caller's environment.
fn with_credentials(env: &Env, secret: &str) -> Command {
    let mut c = env.std_cmd();
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1");
    c
}

/// `sregistry ARGS... --endpoint` against `s3`, with these credentials (a plain
/// `std::process::Command`, for spawning).
pub fn s3_std(env: &Env, s3: &S3Server, secret: &str, args: &[&str]) -> Command {
    let mut c = with_credentials(env, secret);
    c.args(args).args(["--endpoint", &s3.endpoint()]);
    c
}

/// `sregistry ARGS... --endpoint` against `s3`, with these credentials.
pub fn s3_cmd(env: &Env, s3: &S3Server, secret: &str, args: &[&str]) -> assert_cmd::Command {
    assert_cmd::Command::from_std(s3_std(env, s3, secret, args))
}

/// `sregistry ARGS` against `s3` through `AWS_ENDPOINT_URL` (not `--endpoint`).
pub fn s3_env_cmd(env: &Env, s3: &S3Server, args: &[&str]) -> assert_cmd::Command {
    let mut c = with_credentials(env, SECRET_KEY);
    c.env("AWS_ENDPOINT_URL", s3.endpoint()).args(args);
    assert_cmd::Command::from_std(c)
}
