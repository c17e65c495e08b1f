//! Test plumbing for the integration tests (`tests/it/`, which includes this directory as
//! its module `support`): the servers and helpers several test files use, kept out of the
//! test files so that those hold tests. Nothing here is a test, and nothing here asserts
//! what sregistry should do; the Python helpers beside it (`token_server.py`,
//! `oras_py.py`, `old_client.py`) are run by the tests as programs.
//!
//! - [`fault_server`]: an HTTP/1.1 server that misbehaves on request, and records requests;
//! - [`s3`]: `s3s-fs`, a real S3 server over a directory, and commands pointed at it;
//! - digests as registries write them ([`sha256_of`]), `inspect --json` ([`inspect`]), and
//!   waiting for a child stopped at a pause point ([`wait_for_pause`]).

pub mod fault_server;
pub mod s3;

use std::process::Child;

use sha2::Digest as _;

use crate::common::{Env, stdout_of};

/// The sha256 of `data` in lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(data))
}

/// The digest a registry knows `data` by: `sha256:<hex>`.
pub fn sha256_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// The digest a registry knows the file at `path` by: `sha256:<hex>`.
pub fn sha256_of_file(path: &std::path::Path) -> String {
    sha256_of(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// `inspect --json NAME` in `env`'s cache, which must succeed.
pub fn inspect(env: &Env, name: &str) -> serde_json::Value {
    serde_json::from_str(&stdout_of(env.cmd().args(["inspect", "--json", name]))).unwrap()
}

/// Read the child's stderr until it says it paused at its hook.
pub fn wait_for_pause(child: &mut Child) {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("paused at") => break,
            Some(Ok(_)) => continue,
            other => panic!("child ended before pausing: {other:?}"),
        }
    }
    // Keep draining in the background so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
}
