//! TLS failures against a real registry (`docker-registry` serving TLS) with certificates
//! made here by `openssl`: one for the right name from a CA the client trusts (the
//! control), one for another name, one from a CA it does not know, one expired. Each
//! failure must say what failed and must not be retried (it failed four times, blamed
//! on "the address and the network").

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::registry::Registry;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is not installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority in `dir/NAME.{pem,key}`, with what `openssl ca` needs to sign.
fn ca(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    fs::create_dir_all(&d).unwrap();
    openssl(
        &d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    fs::write(d.join("index.txt"), "").unwrap();
    fs::write(d.join("serial"), "1000\n").unwrap();
    fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = own\n[own]\ndir = .\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n[server]\nsubjectAltName = @alt\nextendedKeyUsage = serverAuth\n[alt]\n",
    )
    .unwrap();
    d
}

/// A server certificate signed by `ca` for the names `alt` (`IP.1 = 127.0.0.1`), valid
/// between `start` and `end` (`YYYYMMDDHHMMSSZ`): its chain and key.
fn server_cert(ca: &Path, file: &str, alt: &str, start: &str, end: &str) -> (PathBuf, PathBuf) {
    let cnf = ca.join(format!("{file}.cnf"));
    let base = fs::read_to_string(ca.join("ca.cnf")).unwrap();
    fs::write(&cnf, format!("{base}{alt}\n")).unwrap();
    let (key, csr, pem) = (
        format!("{file}.key"),
        format!("{file}.csr"),
        format!("{file}.pem"),
    );
    openssl(
        ca,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=sregistry-test-server",
        ],
    );
    openssl(
        ca,
        &[
            "ca",
            "-batch",
            "-config",
            cnf.to_str().unwrap(),
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            &csr,
            "-out",
            &pem,
            "-extensions",
            "server",
            "-startdate",
            start,
            "-enddate",
            end,
            "-notext",
        ],
    );
    (ca.join(pem), ca.join(key))
}

const VALID: (&str, &str) = ("20240101000000Z", "20991231000000Z");
const OVER: (&str, &str) = ("20200101000000Z", "20200201000000Z");

/// Pull `https://127.0.0.1:PORT/v2/` (the registry's API root, a small JSON document)
/// trusting only `trusted`'s CA: exit code and stderr.
fn pull_over_tls(env: &Env, reg: &Registry, trusted: &Path) -> (Option<i32>, String) {
    let out = env
        .cmd()
        .env("SSL_CERT_FILE", trusted.join("ca.pem"))
        .env_remove("SSL_CERT_DIR")
        .args([
            "pull",
            &format!("https://{}/v2/", reg.addr),
            "--name",
            "tls/root:1",
        ])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Handshakes the client broke off, refusing the certificate (Go's server logs each one;
/// the probe that waited for the port shows as `EOF`, not as a remote error).
fn refused_handshakes(reg: &Registry) -> usize {
    reg.log()
        .lines()
        .filter(|l| l.contains("TLS handshake error") && l.contains("remote error"))
        .count()
}

#[test]
fn certificate_failures_say_what_failed_and_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca(dir.path(), "trusted-ca");
    let unknown = ca(dir.path(), "unknown-ca");
    let right = "IP.1 = 127.0.0.1\nDNS.1 = localhost";

    // The control: the right name, a trusted CA, in date. The same pull then works.
    let (cert, key) = server_cert(&trusted, "good", right, VALID.0, VALID.1);
    let reg = Registry::tls(&cert, &key);
    let env = Env::new();
    let (code, err) = pull_over_tls(&env, &reg, &trusted);
    assert_eq!(code, Some(0), "{err}\n{}", reg.log());

    let cases = [
        (
            server_cert(
                &trusted,
                "other-name",
                "DNS.1 = other.invalid",
                VALID.0,
                VALID.1,
            ),
            "for another name than the host",
        ),
        (
            server_cert(&unknown, "stranger", right, VALID.0, VALID.1),
            "signed by an unknown certificate authority",
        ),
        (
            server_cert(&trusted, "expired", right, OVER.0, OVER.1),
            "certificate has expired",
        ),
    ];
    for ((cert, key), says) in cases {
        let reg = Registry::tls(&cert, &key);
        let env = Env::new();
        let (code, err) = pull_over_tls(&env, &reg, &trusted);
        assert_eq!(code, Some(1), "{}: {err}", cert.display());
        assert!(err.contains(says), "{}: {err}", cert.display());
        assert!(err.contains("not retried"), "{err}");
        assert!(!err.contains("check the address and the network"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_eq!(
            refused_handshakes(&reg),
            1,
            "{}: one attempt only\n{}",
            cert.display(),
            reg.log()
        );
        assert!(env.names().is_empty());
    }
}

/// An `SSL_CERT_FILE` that does not exist was ignored without a word (rustls then had no
/// roots, and every server's certificate was "unknown"): refused, naming it, exit 2,
/// before anything is sent. So is an `SSL_CERT_DIR` that is not a directory.
#[test]
fn a_missing_ssl_cert_file_is_refused_naming_it() {
    let env = Env::new();
    let missing = env.path("no-such-bundle.pem");
    let err = assert_fails(
        env.cmd()
            .env("SSL_CERT_FILE", &missing)
            .args(["pull", "https://127.0.0.1:1/x.sif"]),
        2,
        &format!("SSL_CERT_FILE=`{}` does not exist", missing.display()),
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let file = env.file("not-a-dir", b"x");
    assert_fails(
        env.cmd()
            .env("SSL_CERT_DIR", &file)
            .args(["pull", "https://127.0.0.1:1/x.sif"]),
        2,
        "SSL_CERT_DIR=",
    );
}
