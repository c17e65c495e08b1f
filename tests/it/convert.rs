//! docker:// conversion against real images: layouts built by `umoci`, converted by
//! `sregistry::convert::write_sif` straight from the layout's blob files, and compared with
//! `umoci unpack` of the same image path by path. The root filesystem runs through
//! `chroot` (or `unshare -r chroot` for an ordinary user).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sregistry::convert::{ConvertOptions, LayerFile, write_sif};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Run a bash script in `dir`; panic with its output when it fails.
fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Build `img:t` in `dir`: a busybox-static root, then layers that replace `/data`'s
/// contents (opaque), delete `/etc/removeme` (whiteout), add a setuid root-owned file
/// with a hardlink, a symlink and a file owned by 1234:5678, and finally replace the
/// hardlinked file's first path (the link keeps the old content).
fn build_image(dir: &Path) {
    sh(
        dir,
        r#"
        umoci init --layout img
        umoci new --image img:t
        mkdir -p base/bin base/etc base/data/sub base/usr/bin
        cp "$(command -v busybox)" base/bin/busybox
        for a in sh echo cat ls env; do ln -s busybox base/bin/$a; done
        ln base/bin/busybox base/usr/bin/busybox-hard
        echo gone > base/etc/removeme
        echo keep > base/etc/keep
        echo old > base/data/old
        echo deep > base/data/sub/deep
        chmod 0750 base/data/sub
        chmod 0711 base
        umoci insert --image img:t base /

        mkdir -p opq && echo new > opq/new
        umoci insert --image img:t --opaque opq /data
        umoci insert --image img:t --whiteout /etc/removeme

        mkdir -p extra/opt
        printf 'tool v1\n' > extra/opt/tool
        chmod 4755 extra/opt/tool
        ln extra/opt/tool extra/opt/tool-hard
        ln -s tool extra/opt/latest
        ln -s /etc/keep extra/opt/abs-link
        echo mine > extra/opt/owned
        chown 1234:5678 extra/opt/owned
        chmod 0600 extra/opt/owned
        umoci insert --image img:t extra /

        mkdir -p v2 && printf 'tool v2\n' > v2/tool && chmod 0755 v2/tool
        umoci insert --image img:t v2/tool /opt/tool

        umoci config --image img:t --config.env=GREETING=hello --config.env='QUOTED=it'"'"'s $HOME' \
          --config.cmd=/bin/sh --config.cmd=-c --config.cmd='echo "$GREETING from cmd, $QUOTED"' \
          --config.label=org.example.k=v
        "#,
    );
}

/// The layer files (base first, with media types and digests) and the config of the image
/// in `layout`: an OCI layout's `t`, or a `skopeo copy dir:` directory (`manifest.json`,
/// blobs named by their hex digest).
fn read_layout(layout: &Path) -> (Vec<(PathBuf, String, String)>, Vec<u8>) {
    let dir_transport = layout.join("manifest.json").exists();
    let blob = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        if dir_transport {
            layout.join(hex)
        } else {
            layout.join("blobs/sha256").join(hex)
        }
    };
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    };
    let manifest = if dir_transport {
        json(layout.join("manifest.json"))
    } else {
        json(blob(
            json(layout.join("index.json"))["manifests"][0]["digest"]
                .as_str()
                .unwrap(),
        ))
    };
    let config = fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap().to_string();
            (blob(&d), l["mediaType"].as_str().unwrap().to_string(), d)
        })
        .collect();
    (layers, config)
}

/// Convert the image in `layout` to the SIF `out` (created empty first).
fn write_layout_sif(layout: &Path, out: &Path) -> sregistry::convert::Converted {
    let (layers, config) = read_layout(layout);
    let files: Vec<LayerFile<'_>> = layers
        .iter()
        .map(|(p, m, d)| LayerFile {
            path: p,
            media_type: m,
            digest: d,
        })
        .collect();
    fs::write(out, b"").unwrap();
    write_sif(&files, &config, out, &ConvertOptions::default()).expect("convert")
}

/// Convert `layout:t` to `out` and extract its squashfs partition to `root`.
fn convert(layout: &Path, work: &Path, name: &str) -> (sregistry::convert::Converted, PathBuf) {
    let (_, config) = read_layout(layout);
    let out = work.join(format!("{name}.sif"));
    let done = write_layout_sif(layout, &out);
    let list = sh(work, &format!("siftool list {name}.sif"));
    assert!(list.contains("FS (Squashfs/*System/amd64)"), "{list}");
    assert!(list.contains("JSON.Generic"), "{list}");
    let info = sregistry::format::sif::parse_path(&out).expect("own reader");
    assert_eq!(
        info.descriptors[1].content.as_deref().map(str::as_bytes),
        Some(&config[..])
    );
    sh(
        work,
        &format!(
            "siftool dump 1 {name}.sif > {name}.sqfs && unsquashfs -q -d {name}-root {name}.sqfs >/dev/null"
        ),
    );
    (done, work.join(format!("{name}-root")))
}

#[derive(Debug, PartialEq)]
struct Item {
    kind: &'static str,
    mode: u32,
    owner: Option<(u32, u32)>,
    content: Vec<u8>,
}

/// Every path under `root` (not `root` itself) with its type, mode, owner, file content or
/// link target; and the hardlink groups (sets of paths sharing an inode, when more than one).
fn describe(root: &Path) -> (BTreeMap<String, Item>, BTreeSet<Vec<String>>) {
    let mut items = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            let (kind, content) = if t.is_dir() {
                stack.push(p.clone());
                ("dir", Vec::new())
            } else if t.is_symlink() {
                (
                    "symlink",
                    fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if t.is_file() {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(rel.clone());
                ("file", fs::read(&p).unwrap())
            } else if t.is_fifo() {
                ("fifo", Vec::new())
            } else {
                ("other", Vec::new())
            };
            let owner = is_root().then_some((m.uid(), m.gid()));
            items.insert(
                rel,
                Item {
                    kind,
                    mode: m.mode() & 0o7777,
                    owner,
                    content,
                },
            );
        }
    }
    let groups = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    (items, groups)
}

/// What the conversion adds to an image that lacks them.
const ADDITIONS: &[&str] = &[
    ".exec",
    ".run",
    ".shell",
    ".test",
    "singularity",
    "environment",
    "dev",
    "proc",
    "sys",
    "home",
    "root",
    "tmp",
    "var",
    "var/tmp",
    "etc/hosts",
    "etc/resolv.conf",
];

/// The converted root equals `umoci unpack` of the same image in every path, type, mode,
/// owner, content, link target and hardlink group, apart from Apptainer's additions.
fn assert_same_as_umoci(work: &Path, layout: &str, ours: &Path) {
    let bundle = work.join(format!("{layout}-bundle"));
    let rootless = if is_root() { "" } else { "--rootless" };
    sh(
        work,
        &format!(
            "umoci unpack {rootless} --image {layout}:t {}",
            bundle.display()
        ),
    );
    let (theirs, their_groups) = describe(&bundle.join("rootfs"));
    let (mine, my_groups) = describe(ours);
    for (path, item) in &theirs {
        assert_eq!(
            mine.get(path),
            Some(item),
            "`{path}` differs from umoci's unpack"
        );
    }
    for path in mine.keys().filter(|p| !theirs.contains_key(*p)) {
        let added = path.starts_with(".singularity.d") || ADDITIONS.contains(&path.as_str());
        assert!(
            added,
            "`{path}` is in the conversion but not in umoci's unpack"
        );
    }
    assert_eq!(my_groups, their_groups, "hardlink groups differ");
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(
        mode(ours),
        mode(&bundle.join("rootfs")),
        "the root directory's mode"
    );
}

/// The image's own facts, checked on umoci's side so the comparison cannot pass on an
/// image that lacks what it is meant to exercise.
fn assert_image_exercises_the_rules(root: &Path) {
    let (items, groups) = describe(root);
    assert!(!items.contains_key("etc/removeme"), "whiteout");
    assert!(
        !items.contains_key("data/old") && !items.contains_key("data/sub"),
        "opaque dir"
    );
    assert_eq!(items["data/new"].content, b"new\n");
    assert_eq!(items["opt/tool"].content, b"tool v2\n");
    assert_eq!(
        items["opt/tool-hard"].content, b"tool v1\n",
        "hardlink keeps the replaced target's content"
    );
    assert_eq!(items["opt/tool-hard"].mode, 0o4755);
    assert_eq!(items["opt/latest"].kind, "symlink");
    if is_root() {
        assert_eq!(items["opt/owned"].owner, Some((1234, 5678)));
    }
    assert!(
        groups.contains(&vec![
            "bin/busybox".to_string(),
            "usr/bin/busybox-hard".to_string()
        ]),
        "{groups:?}"
    );
}

/// Run the image's `/.singularity.d/actions/run` inside `root` with a clean environment.
fn run_in(root: &Path, args: &[&str]) -> String {
    // The child's PATH is the image's, so the host's tools are named in full.
    let which = |tool: &str| sh(root, &format!("command -v {tool}")).trim().to_string();
    let mut cmd = if is_root() {
        Command::new(which("chroot"))
    } else {
        let mut c = Command::new(which("unshare"));
        c.args(["-r", &which("chroot")]);
        c
    };
    let out = cmd
        .arg(root)
        .arg("/.singularity.d/actions/run")
        .args(args)
        .env_clear()
        .env("PATH", "/bin")
        .output()
        .unwrap();
    assert!(out.status.success(), "run failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A real multi-layer image (whiteout, opaque directory, hardlinks within and across a
/// replacement, symlinks, setuid and foreign-owned files) converts to the same tree that
/// `umoci unpack` makes, and the SIF's runscript runs the image's Cmd with its Env, with
/// arguments replacing Cmd.
#[test]
fn umoci_image_converts_like_umoci_unpack_and_runs() {
    let work = tempfile::tempdir().unwrap();
    build_image(work.path());
    let (done, root) = convert(&work.path().join("img"), work.path(), "gz");
    assert!(done.skipped.is_empty(), "{:?}", done.skipped);
    assert_eq!(done.image.cmd[0], "/bin/sh");
    assert_eq!(done.image.labels["org.example.k"], "v");
    assert_image_exercises_the_rules(&root);
    assert_same_as_umoci(work.path(), "img", &root);

    // The default gzip level (6, not mksquashfs' 9) reaches the filesystem.
    let super_block = sh(work.path(), "unsquashfs -s gz.sqfs");
    assert!(
        super_block.contains("Compression gzip") && super_block.contains("compression-level 6"),
        "{super_block}"
    );
    let labels: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join(".singularity.d/labels.json")).unwrap())
            .unwrap();
    assert_eq!(labels["org.example.k"], "v");
    assert_eq!(run_in(&root, &[]), "hello from cmd, it's $HOME\n");
    assert_eq!(run_in(&root, &["/bin/echo", "a  b", "c"]), "a  b c\n");
    assert_eq!(
        run_in(&root, &["/bin/sh", "-c", "echo $GREETING"]),
        "hello\n"
    );
}

/// The same image with zstd-compressed layers (`skopeo copy --dest-compress-format zstd`)
/// converts to the same tree (compared with umoci's unpack of the gzip original: umoci
/// 0.4.7 does not read zstd layers).
#[test]
fn zstd_layers_convert_like_umoci_unpack() {
    let work = tempfile::tempdir().unwrap();
    build_image(work.path());
    sh(
        work.path(),
        "skopeo copy -q --dest-compress-format zstd oci:img:t oci:imgz:t",
    );
    let (layers, _) = read_layout(&work.path().join("imgz"));
    assert!(
        layers.iter().all(|(_, m, _)| m.ends_with("+zstd")),
        "{layers:?}"
    );
    let (_, root) = convert(&work.path().join("imgz"), work.path(), "zst");
    assert_image_exercises_the_rules(&root);
    assert_same_as_umoci(work.path(), "img", &root);
}

/// One synthetic tar entry: raw name (written byte for byte, `..` included), type, data
/// or link target, mode.
struct Raw<'a>(&'a str, tar::EntryType, &'a [u8], u32);

/// Write an uncompressed tar layer with `entries` to `dir/name.tar`.
fn raw_layer(dir: &Path, name: &str, entries: &[Raw<'_>]) -> PathBuf {
    let path = dir.join(format!("{name}.tar"));
    let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
    for Raw(p, kind, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..p.len()].copy_from_slice(p.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let is_link = matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link);
        if is_link {
            h.as_gnu_mut().unwrap().linkname[..data.len()].copy_from_slice(data);
            h.set_size(0);
        } else {
            h.set_size(data.len() as u64);
        }
        if *kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        b.append(&h, if is_link { &b""[..] } else { data }).unwrap();
    }
    b.finish().unwrap();
    path
}

/// Convert synthetic uncompressed layers named `l0`, `l1`, …; the digests are
/// `sha256:l0`, … so that messages can be checked for them.
fn convert_raw(
    dir: &Path,
    layers: &[PathBuf],
) -> Result<(sregistry::convert::Converted, PathBuf), String> {
    let digests: Vec<String> = (0..layers.len()).map(|i| format!("sha256:l{i}")).collect();
    let files: Vec<LayerFile<'_>> = layers
        .iter()
        .zip(&digests)
        .map(|(p, d)| LayerFile {
            path: p,
            media_type: "application/vnd.oci.image.layer.v1.tar",
            digest: d,
        })
        .collect();
    let out = dir.join("raw.sif");
    fs::write(&out, b"").unwrap();
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]}}"#;
    let done =
        write_sif(&files, config, &out, &ConvertOptions::default()).map_err(|e| e.to_string())?;
    let root = dir.join("raw-root");
    let _ = fs::remove_dir_all(&root);
    sh(
        dir,
        "siftool dump 1 raw.sif > raw.sqfs && unsquashfs -q -d raw-root raw.sqfs >/dev/null",
    );
    Ok((done, root))
}

use tar::EntryType as T;

/// Hostile names are refused before anything is written, and the message names the layer
/// (digest) and the entry in backticks: `..` above the root, a hardlink to a path outside
/// the root, and a header declaring more data than the layer holds.
#[test]
fn hostile_layers_are_refused_naming_layer_and_entry() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let cases: &[(&[Raw<'_>], &str, &str)] = &[
        (
            &[Raw("a/../../etc/passwd", T::Regular, b"x", 0o644)],
            "`a/../../etc/passwd`",
            "above the root",
        ),
        (
            &[
                Raw("f", T::Regular, b"x", 0o644),
                Raw("x", T::Link, b"../../etc/shadow", 0o644),
            ],
            "`x`",
            "outside the root",
        ),
        (
            &[
                Raw("ok", T::Regular, b"x", 0o644),
                Raw("big", T::Regular, b"", 0o644),
            ],
            "`big`",
            "ends inside this entry's data",
        ),
        (
            &[
                Raw("ok", T::Regular, b"x", 0o644),
                Raw("short", T::Regular, &[7; 1000], 0o644),
            ],
            "`short`",
            "ends inside this entry's data",
        ),
    ];
    for (i, (entries, entry, what)) in cases.iter().enumerate() {
        let layer = raw_layer(d, &format!("bad{i}"), entries);
        if i == 2 {
            // Declare 1 TiB for `big` (its header is the second 512-byte block from the end
            // of the first entry's data), and cut the stream after that header.
            let mut bytes = fs::read(&layer).unwrap();
            let at = 1024;
            let mut h = tar::Header::new_gnu();
            h.as_mut_bytes().copy_from_slice(&bytes[at..at + 512]);
            h.set_size(1 << 40);
            h.set_cksum();
            bytes[at..at + 512].copy_from_slice(h.as_bytes());
            bytes.truncate(at + 512 + 4096);
            fs::write(&layer, bytes).unwrap();
        }
        if i == 3 {
            // `short` declares 1000 bytes; the stream ends after 100 of them, within the
            // zero tail that a stream without its end blocks is granted.
            let mut bytes = fs::read(&layer).unwrap();
            bytes.truncate(1024 + 512 + 100);
            fs::write(&layer, bytes).unwrap();
        }
        let ok = raw_layer(d, "fine", &[Raw("etc/", T::Directory, b"", 0o755)]);
        let err = convert_raw(d, &[ok, layer])
            .err()
            .unwrap_or_else(|| panic!("case {i} converted"));
        assert!(err.contains("`sha256:l1`"), "case {i}: {err}");
        assert!(err.contains(entry), "case {i}: {err}");
        assert!(err.contains(what), "case {i}: {err}");
    }
}

/// The promise of docs/remotes.md: entries written through symlinks to `/`, to `/etc` and
/// to `../..`, and absolute names, are kept and land inside the root (not refused, and
/// not outside it: nothing of theirs appears on this machine); a device node is skipped and
/// reported, and the squashfs holds nothing outside the root and no device.
#[test]
fn hostile_layers_stay_inside_the_root() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let l0 = raw_layer(
        d,
        "links",
        &[
            Raw("root-link", T::Symlink, b"/", 0o777),
            Raw("up", T::Symlink, b"../../..", 0o777),
            Raw("etc-link", T::Symlink, b"/etc", 0o777),
            Raw("dev/", T::Directory, b"", 0o755),
        ],
    );
    let l1 = raw_layer(
        d,
        "through",
        &[
            Raw("root-link/etc/evil", T::Regular, b"1", 0o644),
            Raw("up/tmp/evil2", T::Regular, b"2", 0o644),
            Raw("/abs/file", T::Regular, b"3", 0o644),
            Raw("etc-link/sregistry-evil4", T::Regular, b"4", 0o644),
            Raw("dev/null", T::Char, b"", 0o666),
        ],
    );
    let (done, root) = convert_raw(d, &[l0, l1]).unwrap();
    assert_eq!(fs::read(root.join("etc/evil")).unwrap(), b"1");
    assert_eq!(fs::read(root.join("tmp/evil2")).unwrap(), b"2");
    assert_eq!(fs::read(root.join("abs/file")).unwrap(), b"3");
    assert_eq!(fs::read(root.join("etc/sregistry-evil4")).unwrap(), b"4");
    for outside in [
        "/etc/evil",
        "/tmp/evil2",
        "/abs/file",
        "/etc/sregistry-evil4",
    ] {
        assert!(!Path::new(outside).exists(), "`{outside}` was written");
    }
    assert_eq!(
        fs::read_link(root.join("root-link")).unwrap(),
        Path::new("/")
    );
    assert!(!root.join("dev/null").exists());
    assert_eq!(done.skipped.len(), 1, "{:?}", done.skipped);
    assert_eq!(
        (
            done.skipped[0].layer.as_str(),
            done.skipped[0].path.as_str()
        ),
        ("sha256:l1", "dev/null")
    );
    let listing = sh(d, "unsquashfs -lln raw.sqfs");
    for line in listing.lines().filter(|l| l.contains("squashfs-root")) {
        let path = line
            .split("squashfs-root")
            .nth(1)
            .unwrap()
            .split(" -> ")
            .next()
            .unwrap();
        assert!(!path.contains(".."), "{line}");
        assert!(
            !line.starts_with('c') && !line.starts_with('b'),
            "device in the result: {line}"
        );
    }
}

/// Names and symlink targets longer than a tar header holds (GNU long names in the merged
/// stream) reach the squashfs intact, and a FIFO stays a FIFO.
#[test]
fn long_names_and_fifos_survive() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let long_dir = "d".repeat(90);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let target = format!("/{}", "t".repeat(180));
    let path = d.join("long.tar");
    let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o640);
    h.set_size(5);
    b.append_data(&mut h, &long_file, &b"long\n"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(T::Symlink);
    h.set_size(0);
    b.append_link(&mut h, format!("{long_dir}/link"), &target)
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(T::Fifo);
    h.set_mode(0o600);
    h.set_size(0);
    b.append_data(&mut h, "pipe", std::io::empty()).unwrap();
    b.finish().unwrap();
    drop(b);
    let (_, root) = convert_raw(d, &[path]).unwrap();
    assert_eq!(fs::read(root.join(&long_file)).unwrap(), b"long\n");
    assert_eq!(
        fs::symlink_metadata(root.join(&long_file)).unwrap().mode() & 0o7777,
        0o640
    );
    assert_eq!(
        fs::read_link(root.join(format!("{long_dir}/link"))).unwrap(),
        Path::new(&target)
    );
    assert!(
        fs::symlink_metadata(root.join("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

/// Options reach mksquashfs (zstd at level 3 is what the superblock says), and bad options
/// are refused before anything runs, naming the value.
#[test]
fn compression_options_are_applied_or_refused() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let layer = raw_layer(d, "one", &[Raw("f", T::Regular, b"data", 0o644)]);
    let files = [LayerFile {
        path: &layer,
        media_type: "application/vnd.oci.image.layer.v1.tar",
        digest: "sha256:l0",
    }];
    let out = d.join("z.sif");
    fs::write(&out, b"").unwrap();
    let opts = |c: &str, arch: &str| ConvertOptions {
        compression: c.into(),
        level: Some(3),
        arch: arch.into(),
        processors: Some(1),
        identity: None,
    };
    write_sif(&files, b"{}", &out, &opts("zstd", "arm64")).unwrap();
    let list = sh(d, "siftool list z.sif");
    assert!(list.contains("Squashfs/*System/arm64"), "{list}");
    let super_block = sh(d, "siftool dump 1 z.sif > z.sqfs && unsquashfs -s z.sqfs");
    assert!(
        super_block.contains("Compression zstd") && super_block.contains("compression-level 3"),
        "{super_block}"
    );
    let err = write_sif(&files, b"{}", &out, &opts("brotli", "amd64"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`brotli`"), "{err}");
    let err = write_sif(&files, b"{}", &out, &opts("gzip", "wasm"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`wasm`"), "{err}");
    let err = write_sif(&files, b"{\"config\":", &out, &opts("gzip", "amd64"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("config"), "{err}");
    let bad = [LayerFile {
        path: &layer,
        media_type: "application/vnd.oci.image.config.v1+json",
        digest: "sha256:l0",
    }];
    let err = write_sif(&bad, b"{}", &out, &opts("gzip", "amd64"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`sha256:l0`") && err.contains("`application/vnd.oci.image.config.v1+json`"),
        "{err}"
    );
}

/// One PAX record, `LEN key=value\n`, its length counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

/// Owners that do not fit a tar header's octal fields arrive as PAX `uid` and `gid`
/// records (as Go's tar writer makes them); they, not the header's 0, reach the squashfs.
/// (The `tar` crate folds them into the header; this guards that it still does.)
#[test]
fn pax_owner_records_apply() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let mut pax = pax_record("uid", "3000000");
    pax.extend(pax_record("gid", "3000001"));
    let layer = raw_layer(
        d,
        "pax",
        &[
            Raw("././@PaxHeader", T::XHeader, &pax, 0o644),
            Raw("owned", T::Regular, b"x", 0o640),
        ],
    );
    convert_raw(d, &[layer]).unwrap();
    let listing = sh(d, "unsquashfs -lln raw.sqfs");
    let line = listing
        .lines()
        .find(|l| l.ends_with("squashfs-root/owned"))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(line.starts_with("-rw-r----- 3000000/3000001 "), "{line}");
}

/// The same image as Docker v2 schema 2 (`skopeo copy --format v2s2`: Docker media types
/// for the layers and the config) converts to the same tree.
#[test]
fn docker_v2s2_layers_convert_like_umoci_unpack() {
    let work = tempfile::tempdir().unwrap();
    build_image(work.path());
    sh(
        work.path(),
        "skopeo copy -q --format v2s2 oci:img:t dir:imgd",
    );
    let (layers, _) = read_layout(&work.path().join("imgd"));
    assert!(
        layers
            .iter()
            .all(|(_, m, _)| m == "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        "{layers:?}"
    );
    let (_, root) = convert(&work.path().join("imgd"), work.path(), "v2s2");
    assert_image_exercises_the_rules(&root);
    assert_same_as_umoci(work.path(), "img", &root);
}

/// An extended attribute of `path` (not following a symlink), or `None`.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// Extended attributes on regular files (PAX `SCHILY.xattr.*`: file capabilities, user
/// attributes) reach the squashfs, for a short name and for a name too long for a tar
/// header (PAX `path`, re-emitted as a GNU long name after the attributes' header).
#[test]
fn file_xattrs_survive() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut short = pax_record("SCHILY.xattr.user.origin", "layer0");
    let mut cap_record = b"SCHILY.xattr.security.capability=".to_vec();
    cap_record.extend_from_slice(cap);
    let body_len = cap_record.len() + 2; // the space and the newline
    let mut len = body_len + 2;
    while len.to_string().len() + body_len != len {
        len += 1;
    }
    short.extend(format!("{len} ").into_bytes());
    short.extend(&cap_record);
    short.push(b'\n');
    let long_name = format!("{}/{}", "p".repeat(80), "q".repeat(80));
    let mut long = pax_record("path", &long_name);
    long.extend(pax_record("SCHILY.xattr.user.long", "yes"));
    let layer = raw_layer(
        d,
        "xattrs",
        &[
            Raw("././@PaxHeader", T::XHeader, &short, 0o644),
            Raw("ping", T::Regular, b"p", 0o755),
            Raw("././@PaxHeader", T::XHeader, &long, 0o644),
            Raw("ignored-short-name", T::Regular, b"l", 0o644),
            Raw("plain", T::Regular, b"n", 0o644),
        ],
    );
    let (_, root) = convert_raw(d, &[layer]).unwrap();
    assert_eq!(
        xattr(&root.join("ping"), "user.origin").as_deref(),
        Some(&b"layer0"[..])
    );
    if is_root() {
        assert_eq!(
            xattr(&root.join("ping"), "security.capability").as_deref(),
            Some(cap)
        );
    }
    assert_eq!(fs::read(root.join(&long_name)).unwrap(), b"l");
    assert_eq!(
        xattr(&root.join(&long_name), "user.long").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(xattr(&root.join("plain"), "user.origin"), None);
}

/// The child half of `ordinary_user_conversion_records_root_owners`: converts the layout
/// named by the environment, as whoever runs it. Run only by that test.
#[test]
#[ignore = "run by ordinary_user_conversion_records_root_owners as another user"]
fn convert_as_child() {
    let layout = std::env::var_os("SREGISTRY_TEST_CONVERT_LAYOUT").expect("run by the parent test");
    let out = std::env::var_os("SREGISTRY_TEST_CONVERT_OUT").expect("run by the parent test");
    write_layout_sif(Path::new(&layout), Path::new(&out));
}

/// `unsquashfs -lln` of the SIF's partition: type and mode, owner, size and path of every
/// entry (times left out).
fn listing(work: &Path, sif: &str) -> Vec<String> {
    let text = sh(
        work,
        &format!("siftool dump 1 {sif} > {sif}.sqfs && unsquashfs -lln {sif}.sqfs"),
    );
    text.lines()
        .filter(|l| l.contains("squashfs-root"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {}", f[0], f[1], f[2], f[5..].join(" "))
        })
        .collect()
}

/// An ordinary user's conversion records root-owned, setuid and foreign-owned files, and
/// the root directory, exactly as root's does: owners come from the layers, never from
/// the caller. As root, the test converts a second time as `nobody` (the test binary run
/// again under `setpriv`) and compares the two listings; as another user, its own
/// conversion is that user's.
#[test]
fn ordinary_user_conversion_records_root_owners() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    build_image(d);
    write_layout_sif(&d.join("img"), &d.join("mine.sif"));
    let mine = listing(d, "mine.sif");
    let line = |l: &[String], p: &str| {
        l.iter()
            .find(|x| x.ends_with(p))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        line(&mine, " squashfs-root").starts_with("drwxr-xr-x 0/0 "),
        "{mine:?}"
    );
    assert!(
        line(&mine, "squashfs-root/opt/owned").starts_with("-rw------- 1234/5678 "),
        "{mine:?}"
    );
    assert!(
        line(&mine, "squashfs-root/opt/tool-hard").starts_with("-rwsr-xr-x 0/0 "),
        "{mine:?}"
    );
    if is_root() {
        let user_dir = d.join("user");
        fs::create_dir(&user_dir).unwrap();
        sh(
            d,
            &format!("chmod -R a+rX . && chmod 0777 {}", user_dir.display()),
        );
        let out = user_dir.join("theirs.sif");
        let status = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "convert::convert_as_child",
                "--ignored",
                "--nocapture",
            ])
            .env("SREGISTRY_TEST_CONVERT_LAYOUT", d.join("img"))
            .env("SREGISTRY_TEST_CONVERT_OUT", &out)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            fs::metadata(&out).unwrap().uid(),
            65534,
            "the child ran as nobody"
        );
        assert_eq!(listing(&user_dir, "theirs.sif"), mine);
    }
}

/// The danger: a conversion whose bytes depend on the node's core count gives each node
/// of a cluster its own digest for one image. Many files, most larger than a squashfs
/// block with a tail end (which squashfs-tools 4.5.1 in tar mode packs into fragments and
/// checks for duplicates on its threads, differently run to run), some alike, some small
/// enough to share fragments: converted on 1, 2 and 8 threads, the same bytes.
#[test]
fn a_conversion_is_the_same_bytes_on_any_number_of_threads() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let mut next = crate::common::xorshift(20);
    let files: Vec<(String, Vec<u8>)> = (0..240)
        .map(|i| {
            let len = (next() % 300_000) as usize;
            let noise = next().is_multiple_of(2);
            let data = (0..len)
                .map(|j| if noise { next() as u8 } else { (j / 7) as u8 })
                .collect();
            (format!("d{}/f{i}", i % 9), data)
        })
        .collect();
    let dirs = [
        "d0/", "d1/", "d2/", "d3/", "d4/", "d5/", "d6/", "d7/", "d8/",
    ];
    let mut entries: Vec<Raw<'_>> = dirs
        .iter()
        .map(|d| Raw(d, T::Directory, b"", 0o755))
        .collect();
    entries.extend(
        files
            .iter()
            .map(|(p, data)| Raw(p, T::Regular, data, 0o644)),
    );
    entries.extend(
        files
            .iter()
            .take(20)
            .map(|(p, data)| Raw(&p[1..], T::Regular, data, 0o600)),
    );
    let layer = raw_layer(d, "many", &entries);
    let convert = |threads: usize| {
        let out = d.join(format!("t{threads}.sif"));
        fs::write(&out, b"").unwrap();
        let files = [LayerFile {
            path: &layer,
            media_type: "application/vnd.oci.image.layer.v1.tar",
            digest: "sha256:l0",
        }];
        let opts = ConvertOptions {
            processors: Some(threads),
            identity: Some("sha256:m@linux/amd64".into()),
            ..ConvertOptions::default()
        };
        write_sif(
            &files,
            br#"{"created":"2024-05-01T12:00:00Z"}"#,
            &out,
            &opts,
        )
        .unwrap();
        fs::read(out).unwrap()
    };
    let one = convert(1);
    assert!(
        one.len() > 8 << 20,
        "too small to need threads: {}",
        one.len()
    );
    assert!(convert(2) == one, "2 threads gave other bytes than 1");
    assert!(convert(8) == one, "8 threads gave other bytes than 1");
}

/// The danger: a reproducible conversion that gets there by overwriting times (every file
/// stamped alike, or clamped to the config's `created`) makes every `.py` look newer or
/// older than its `.pyc` and changes what `make`-style tools see. File times come from
/// the layers untouched; what the conversion writes itself (the root, `/.singularity.d/`,
/// the SIF header) gets the later of `created` and the newest layer entry; the UUID
/// follows the identity and the compression, not the moment.
#[test]
fn layer_times_are_kept_and_the_conversions_own_time_comes_from_the_input() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    // raw_layer stamps every entry 1_700_000_000 (2023-11-14 22:13 UTC).
    let layer = raw_layer(d, "one", &[Raw("f", T::Regular, b"data", 0o644)]);
    let files = [LayerFile {
        path: &layer,
        media_type: "application/vnd.oci.image.layer.v1.tar",
        digest: "sha256:l0",
    }];
    let convert = |name: &str, created: &str, identity: &str| {
        let out = d.join(format!("{name}.sif"));
        fs::write(&out, b"").unwrap();
        let opts = ConvertOptions {
            identity: Some(identity.into()),
            ..ConvertOptions::default()
        };
        let config = format!(r#"{{"created":"{created}","architecture":"amd64"}}"#);
        write_sif(&files, config.as_bytes(), &out, &opts).unwrap();
        let header = sregistry::format::sif::parse_bytes(&fs::read(&out).unwrap())
            .unwrap()
            .header;
        let listing = sh(
            d,
            &format!(
                "siftool dump 1 {name}.sif > {name}.sqfs && TZ=UTC unsquashfs -lln {name}.sqfs"
            ),
        );
        let time_of = |path: &str| {
            listing
                .lines()
                .find(|l| l.ends_with(&format!(" {path}")))
                .map(|l| l.split_whitespace().collect::<Vec<_>>()[3..5].join(" "))
                .unwrap_or_else(|| panic!("no {path} in {listing}"))
        };
        let times = [
            time_of("squashfs-root/f"),
            time_of("squashfs-root"),
            time_of("squashfs-root/.singularity.d/runscript"),
        ];
        (header, times)
    };
    // Created before the layer's files: the files' time is the newest, and no file moves.
    let (older, times) = convert("older", "2020-09-13T12:26:40Z", "sha256:m@linux/amd64");
    assert_eq!(times, ["2023-11-14 22:13"; 3].map(String::from));
    assert_eq!(
        (older.created_at, older.modified_at),
        (1_700_000_000, 1_700_000_000)
    );
    // Created after them: what the conversion writes gets `created`; the file keeps its own.
    let (newer, times) = convert("newer", "2025-01-01T00:00:00+00:00", "sha256:m@linux/amd64");
    assert_eq!(
        times,
        ["2023-11-14 22:13", "2025-01-01 00:00", "2025-01-01 00:00"].map(String::from)
    );
    assert_eq!(newer.created_at, 1_735_689_600);
    // One identity, one UUID; another identity (another manifest or platform), another.
    assert_eq!(older.id, newer.id);
    let (other, _) = convert("other", "2025-01-01T00:00:00Z", "sha256:m@linux/arm64");
    assert_ne!(other.id, newer.id);
}
