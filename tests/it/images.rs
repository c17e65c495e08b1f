//! Real container images for the tests, built with Debian's `umoci` (an OCI image layout,
//! one layer per step) and pushed into the test registry with `skopeo copy`. Nothing is
//! fetched: the root filesystem is Debian's static busybox and files the tests write.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::run;

/// An OCI image layout being built, one tag per step.
pub struct Layout {
    pub dir: PathBuf,
    work: PathBuf,
    steps: usize,
}

/// Where Debian's static busybox is.
pub fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox is missing: `scripts/install-deps.sh test` installs busybox-static");
}

impl Layout {
    /// A new layout in `work` with an empty image tagged `base`.
    pub fn new(work: &Path) -> Layout {
        let dir = work.join("layout");
        run(Command::new("umoci").args(["init", "--layout"]).arg(&dir));
        run(Command::new("umoci")
            .arg("new")
            .arg("--image")
            .arg(format!("{}:base", dir.display())));
        Layout {
            dir,
            work: work.to_path_buf(),
            steps: 0,
        }
    }

    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.dir.display())
    }

    /// Unpack `from`, let `change` edit its root filesystem, and repack it as `to`: `to`
    /// is `from` plus one layer holding the change.
    pub fn layer(&mut self, from: &str, to: &str, change: impl FnOnce(&Path)) {
        self.steps += 1;
        let bundle = self.work.join(format!("bundle-{}", self.steps));
        run(Command::new("umoci")
            .args(["unpack", "--image", &self.image(from)])
            .arg(&bundle));
        change(&bundle.join("rootfs"));
        run(Command::new("umoci")
            .args(["repack", "--image", &self.image(to)])
            .arg(&bundle));
        fs::remove_dir_all(&bundle).unwrap();
    }

    /// `umoci config` on `tag` (in place).
    pub fn config(&self, tag: &str, args: &[&str]) {
        run(Command::new("umoci")
            .args(["config", "--image", &self.image(tag), "--tag", tag])
            .args(args));
    }

    /// Push `tag` to `docker://ADDR/REPO` with `skopeo copy` and extra options.
    pub fn push(&self, tag: &str, dest: &str, extra: &[&str]) {
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}", self.image(tag)))
            .arg(dest));
    }

    /// Push `tag` with its layers recompressed as zstd: copied into a second layout at
    /// `via` first (pushed straight to the registry, skopeo would reuse the gzip blobs
    /// the registry already holds).
    pub fn push_zstd(&self, tag: &str, via: &Path, dest: &str) {
        run(Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-compress-format",
                "zstd",
                "--dest-compress",
            ])
            .arg(format!("oci:{}", self.image(tag)))
            .arg(format!("oci:{}:{tag}", via.display())));
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", via.display()))
            .arg(dest));
    }

    /// The manifest digest of `tag` in the layout.
    pub fn manifest_digest(&self, tag: &str) -> String {
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(self.dir.join("index.json")).unwrap()).unwrap();
        idx["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no tag {tag}"))["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A blob of the layout, parsed as JSON.
    pub fn json_blob(&self, digest: &str) -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&fs::read(self.dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    }

    /// The layer digests of `tag`, bottom first.
    pub fn layers(&self, tag: &str) -> Vec<String> {
        let m = self.json_blob(&self.manifest_digest(tag));
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }
}

/// A busybox root: `/bin/busybox` and links for the applets the tests use, `/etc` with a
/// passwd file, `/tmp`.
pub fn busybox_root(root: &Path) {
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(busybox(), bin.join("busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "env", "ls", "id", "printf", "test", "[",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

/// The image most tests use, tagged `app` in a new layout under `work`: a busybox layer,
/// then a layer with a script, an `Env` and a `Cmd` that prints it.
pub fn app_image(work: &Path) -> Layout {
    let mut l = Layout::new(work);
    l.layer("base", "bb", busybox_root);
    l.layer("bb", "app", |root| {
        fs::create_dir_all(root.join("opt/app")).unwrap();
        let script = root.join("opt/app/hello.sh");
        fs::write(&script, "#!/bin/sh\necho \"hello from $GREETING: $*\"\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    });
    l.config(
        "app",
        &[
            "--config.env",
            "GREETING=the image",
            "--config.cmd",
            "/opt/app/hello.sh",
            "--config.cmd",
            "default-arg",
            "--config.label",
            "org.example.team=hpc",
        ],
    );
    l
}
