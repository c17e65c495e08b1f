//! The cluster: one NFSv4 server and N client nodes, each a qemu guest (TCG) with Debian's
//! kernel and a busybox initramfs that `prepare.sh` builds under `target/cluster/`.
//!
//! Networking never touches the host's: each client has a point-to-point link to the
//! server made of two unix datagram sockets (`-netdev dgram`), and its address exists only
//! inside the guests. Commands reach a node over its second serial port, where the guest's
//! init runs a small agent (`init.sh`): one line `ID BASE64-SCRIPT` in, the script's stdout
//! and stderr in base64 and `@@END ID CODE` out. Host files (the sregistry binaries, test
//! data) reach the nodes read-only through 9p, and each node copies them to `/host` in
//! memory as it boots.
//!
//! Teardown: [`Cluster`]'s `Drop` kills every qemu, and each qemu is started with
//! `PR_SET_PDEATHSIG` so that it dies with the test process even if that is killed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// What a command on a node printed and how it ended.
#[derive(Debug, Clone)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Out {
    /// Panic with everything the command said unless it exited 0.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "command failed ({}):\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// One guest: its qemu process, its qemu arguments (to boot it again), its control link.
pub struct Node {
    pub name: String,
    args: Vec<String>,
    dir: PathBuf,
    qemu: Mutex<Option<Child>>,
    ctl: Mutex<Option<BufReader<UnixStream>>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Node {
    fn ctl_path(&self) -> PathBuf {
        self.dir.join(format!("{}.ctl", self.name))
    }

    pub fn console_path(&self) -> PathBuf {
        self.dir.join(format!("{}.console", self.name))
    }

    /// Start qemu (the node boots; [`Node::wait_ready`] waits for its agent).
    pub fn start(&self) {
        let _ = std::fs::remove_file(self.ctl_path());
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join(format!("{}.qemu.log", self.name)))
                    .expect("qemu log"),
            );
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start qemu-system-x86_64");
        *self.qemu.lock().unwrap() = Some(child);
        // Connect at once: what the guest writes to the port before anyone listens is lost.
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(self.ctl_path()) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: qemu made no control socket",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        *self.ctl.lock().unwrap() = Some(BufReader::new(stream));
    }

    /// Wait for the agent's `@@READY` line (the node has booted and mounted).
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut guard = self.ctl.lock().unwrap();
        let r = guard
            .as_mut()
            .unwrap_or_else(|| panic!("{}: not started", self.name));
        loop {
            let line = read_line(r, deadline).unwrap_or_else(|e| {
                panic!(
                    "{}: not ready ({e}); console:\n{}",
                    self.name,
                    self.console()
                )
            });
            if line.starts_with("@@READY") {
                break;
            }
            assert!(
                !line.starts_with("@@BOOTFAIL"),
                "{}: {line}; console:\n{}",
                self.name,
                self.console()
            );
        }
    }

    /// Kill the guest at once, as a power cut would (its qemu gets SIGKILL).
    pub fn kill(&self) {
        if let Some(mut c) = self.qemu.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        *self.ctl.lock().unwrap() = None;
    }

    /// The end of the node's console log (kernel messages, init's messages).
    pub fn console(&self) -> String {
        let s = std::fs::read_to_string(self.console_path()).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Run a shell script on the node (busybox sh; `sregistry` on PATH, `SREGISTRY_CACHE`
    /// set to the shared cache); wait at most `timeout`.
    pub fn sh_timeout(&self, script: &str, timeout: Duration) -> Out {
        let mut guard = self.ctl.lock().unwrap();
        let r = guard
            .as_mut()
            .unwrap_or_else(|| panic!("{}: not running", self.name));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let line = format!("{id} {}\n", B64.encode(script));
        r.get_mut()
            .write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
        let deadline = Instant::now() + timeout;
        let (mut out, mut err) = (String::new(), String::new());
        let mut section = 0;
        loop {
            let l = read_line(r, deadline).unwrap_or_else(|e| {
                panic!(
                    "{}: no answer to `{}` ({e}); console:\n{}",
                    self.name,
                    script.lines().next().unwrap_or(""),
                    self.console()
                )
            });
            if l == format!("@@OUT {id}") {
                section = 1;
            } else if l == format!("@@ERR {id}") {
                section = 2;
            } else if let Some(rest) = l.strip_prefix(&format!("@@END {id} ")) {
                let code = rest.trim().parse().expect("exit code");
                return Out {
                    stdout: decode(&out),
                    stderr: decode(&err),
                    code,
                };
            } else if section == 1 {
                out.push_str(&l);
            } else if section == 2 {
                err.push_str(&l);
            }
        }
    }

    /// [`Node::sh_timeout`] with two minutes.
    pub fn sh(&self, script: &str) -> Out {
        self.sh_timeout(script, Duration::from_secs(120))
    }
}

fn decode(b64: &str) -> String {
    String::from_utf8_lossy(&B64.decode(b64.trim()).unwrap_or_default()).into_owned()
}

fn read_line(r: &mut BufReader<UnixStream>, deadline: Instant) -> Result<String, String> {
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        r.get_ref().set_read_timeout(Some(left)).ok();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) => return Err("control link closed".into()),
            Ok(_) if buf.ends_with(b"\n") => {
                let s = String::from_utf8_lossy(&buf);
                return Ok(s.trim_end_matches(['\n', '\r']).to_string());
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A server and its clients.
pub struct Cluster {
    /// The prepared kernel and initramfs (`target/cluster/`); this run is in `run/` there,
    /// with each node's console log.
    pub prepared: PathBuf,
    pub server: Node,
    pub clients: Vec<Node>,
    pub lease_secs: u64,
    pub kernel: String,
}

/// NFSv4 lease and grace time the server is given, in seconds (Linux's default is 90;
/// short here so the tests that wait for it stay short).
pub const LEASE_SECS: u64 = 10;

impl Cluster {
    /// Prepare (`prepare.sh`), then boot a server and `n` clients with the cache exported
    /// from an ext4 disk, and wait until every client has it mounted.
    pub fn boot(n: usize, host_files: impl FnOnce(&Path)) -> Cluster {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let prep = Command::new("bash")
            .arg(root.join("tests/cluster/prepare.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/cluster/prepare.sh");
        assert!(prep.status.success(), "tests/cluster/prepare.sh failed");
        let prepared = PathBuf::from(String::from_utf8(prep.stdout).unwrap().trim());
        let run = prepared.join("run");
        let _ = std::fs::remove_dir_all(&run);
        let host = run.join("host");
        std::fs::create_dir_all(host.join("bin")).unwrap();
        host_files(&host);
        let disk = run.join("export.img");
        let mkfs = |img: &Path, size: u64| {
            let f = std::fs::File::create(img).unwrap();
            f.set_len(size).unwrap();
            drop(f);
            let st = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
                .arg(img)
                .status()
                .expect("mkfs.ext4");
            assert!(st.success(), "mkfs.ext4 {} failed", img.display());
        };
        let kernel = std::fs::read_to_string(prepared.join("kernel/version"))
            .unwrap()
            .trim()
            .to_string();

        let common = |name: &str, append: String| -> Vec<String> {
            let mut a: Vec<String> = [
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-accel",
                "tcg,tb-size=128",
                "-m",
                "256",
                "-smp",
                "1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let p = |x: &Path| x.to_str().unwrap().to_string();
            a.extend([
                "-kernel".into(),
                p(&prepared.join("kernel/vmlinux")),
                "-initrd".into(),
                p(&prepared.join("initramfs.gz")),
                "-append".into(),
                format!("console=ttyS0 quiet panic=-1 {append}"),
                "-chardev".into(),
                format!(
                    "file,id=con,path={}",
                    p(&run.join(format!("{name}.console")))
                ),
                "-serial".into(),
                "chardev:con".into(),
                "-chardev".into(),
                format!(
                    "socket,id=ctl,path={},server=on,wait=off",
                    p(&run.join(format!("{name}.ctl")))
                ),
                "-serial".into(),
                "chardev:ctl".into(),
                "-fsdev".into(),
                format!(
                    "local,id=hostfs,path={},security_model=none,readonly=on",
                    p(&host)
                ),
                "-device".into(),
                "virtio-9p-pci,fsdev=hostfs,mount_tag=host".into(),
            ]);
            a
        };
        mkfs(&disk, 4 << 30);
        let sock = |a: &str, b: &str| run.join(format!("{a}-{b}.sock"));
        let mut sargs = common(
            "server",
            format!("sr.role=server sr.clients={n} sr.lease={LEASE_SECS} sr.grace=skip"),
        );
        sargs.extend([
            "-drive".into(),
            format!("file={},format=raw,if=virtio", disk.display()),
        ]);
        let mut clients = Vec::new();
        for i in 1..=n {
            let cname = format!("node{i}");
            sargs.extend([
                "-netdev".into(),
                format!(
                    "dgram,id=n{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                    sock("server", &cname).display(),
                    sock(&cname, "server").display()
                ),
                "-device".into(),
                format!("virtio-net-pci,netdev=n{i},mac=52:54:00:00:00:{i:02x}"),
            ]);
            let mut cargs = common(&cname, format!("sr.role=client sr.id={i}"));
            let local = run.join(format!("{cname}.img"));
            mkfs(&local, 256 << 20);
            cargs.extend([
                "-drive".into(),
                format!("file={},format=raw,if=virtio", local.display()),
                "-netdev".into(),
                format!(
                    "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                    sock(&cname, "server").display(),
                    sock("server", &cname).display()
                ),
                "-device".into(),
                format!("virtio-net-pci,netdev=n0,mac=52:54:00:00:01:{i:02x}"),
            ]);
            clients.push(Node {
                name: cname,
                args: cargs,
                dir: run.clone(),
                qemu: Mutex::new(None),
                ctl: Mutex::new(None),
            });
        }
        let server = Node {
            name: "server".into(),
            args: sargs,
            dir: run.clone(),
            qemu: Mutex::new(None),
            ctl: Mutex::new(None),
        };
        let cluster = Cluster {
            prepared,
            server,
            clients,
            lease_secs: LEASE_SECS,
            kernel,
        };
        cluster.server.start();
        for c in &cluster.clients {
            c.start();
        }
        cluster.server.wait_ready(Duration::from_secs(90));
        for c in &cluster.clients {
            c.wait_ready(Duration::from_secs(90));
        }
        cluster
    }

    /// Every node: the server first, then the clients.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.server).chain(self.clients.iter())
    }

    /// Boot a node again after [`Node::kill`] (a client mounts the export again; the server
    /// keeps its disk and starts with its NFSv4 grace period on, as after a crash).
    pub fn reboot(&self, node: &Node, timeout: Duration) {
        self.restart(node, timeout, true)
    }

    /// Kill `node` and boot it again from its disk; the server with its NFSv4 grace
    /// period on when `grace`, else with none, like a server that forgot its clients (no
    /// client can reclaim its opens and locks).
    pub fn restart(&self, node: &Node, timeout: Duration, grace: bool) {
        node.kill();
        let mut args = node.args.clone();
        if let Some(a) = args.iter_mut().find(|a| a.contains("sr.grace=skip"))
            && grace
        {
            *a = a.replace("sr.grace=skip", "sr.grace=on");
        }
        let rebooted = Node {
            name: node.name.clone(),
            args,
            dir: node.dir.clone(),
            qemu: Mutex::new(None),
            ctl: Mutex::new(None),
        };
        rebooted.start();
        *node.qemu.lock().unwrap() = rebooted.qemu.lock().unwrap().take();
        *node.ctl.lock().unwrap() = rebooted.ctl.lock().unwrap().take();
        node.wait_ready(timeout);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes() {
            n.kill();
        }
    }
}
