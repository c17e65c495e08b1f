//! A real registry for the tests: Debian's `docker-registry` (distribution 2.8) on
//! 127.0.0.1, with a config and storage of its own in a temp dir, in three flavours:
//! anonymous, htpasswd (bcrypt) and token auth (a small RS256 token server,
//! `tests/support/token_server.py`). Killed when dropped.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: tempfile::TempDir,
    child: Child,
    token: Option<Child>,
    log: PathBuf,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on {addr}");
}

impl Registry {
    fn start(auth: &str, dir: tempfile::TempDir, token: Option<Child>) -> Registry {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("docker-registry is not installed (apt-get install docker-registry)");
        wait_for(&addr, "docker-registry");
        Registry {
            addr,
            dir,
            child,
            token,
            log,
        }
    }

    /// No authentication.
    pub fn anonymous() -> Registry {
        Registry::start("", tempfile::tempdir().unwrap(), None)
    }

    /// No authentication, and Docker schema 1 manifests accepted (distribution refuses
    /// them by default since 2.8).
    pub fn anonymous_with_schema1() -> Registry {
        Registry::start(
            "compatibility:\n  schema1:\n    enabled: true\n",
            tempfile::tempdir().unwrap(),
            None,
        )
    }

    /// No authentication, and a catalog page holds at most `n` repositories (the registry
    /// then answers with `Link: <...>; rel="next"`).
    pub fn anonymous_with_catalog_pages_of(n: usize) -> Registry {
        Registry::start(
            &format!("catalog:\n  maxentries: {n}\n"),
            tempfile::tempdir().unwrap(),
            None,
        )
    }

    /// No authentication, over TLS with this certificate chain and key (PEM files).
    pub fn tls(cert: &Path, key: &Path) -> Registry {
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        );
        Registry::start(&tls, tempfile::tempdir().unwrap(), None)
    }

    /// Basic auth against an htpasswd file (bcrypt, as the registry requires).
    pub fn htpasswd(user: &str, password: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .expect("htpasswd is not installed (apt-get install apache2-utils)");
        assert!(out.status.success());
        fs::write(&file, out.stdout).unwrap();
        let auth = format!(
            "auth:\n  htpasswd:\n    realm: sregistry-test\n    path: {}\n",
            file.display()
        );
        Registry::start(&auth, dir, None)
    }

    /// Token auth: `user`/`password` may pull everything and push only to `push_repo`.
    pub fn token(user: &str, password: &str, push_repo: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/token_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .args([user, password, push_repo])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 for the token server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!("the token server did not start (pip install pyjwt cryptography): `{line}`")
        });
        let auth = format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    service: sregistry-test\n    issuer: sregistry-test-issuer\n    rootcertbundle: {}\n",
            dir.path().join("cert.pem").display()
        );
        Registry::start(&auth, dir, Some(child))
    }

    /// `oras://ADDR/REPO:TAG`
    pub fn oras(&self, repo_tag: &str) -> String {
        format!("oras://{}/{repo_tag}", self.addr)
    }

    /// The access log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times a blob was served in full or in part (`GET .../blobs/DIGEST` with 200
    /// or 206).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("GET /v2/")
                    && l.contains(&format!("/blobs/{digest} HTTP"))
                    && (l.contains("\" 200 ") || l.contains("\" 206 "))
            })
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = &mut self.token {
            let _ = t.kill();
            let _ = t.wait();
        }
    }
}
