//! docker:// conversion: the layers of an OCI or Docker image, and its config, into a SIF
//! whose primary partition is a squashfs of the merged root filesystem, as Apptainer builds
//! for `docker://` sources; no container runtime, no root, and no staging tree on disk.
//!
//! # Protocol
//!
//! [`write_sif`] reads each layer blob twice, decompressing as it streams (gzip, zstd or
//! none, from the blob's magic bytes; the media type must be a layer type):
//!
//! 1. **Headers** (`merge.rs`): every tar header of every layer, data skipped, is applied in
//!    order to an in-memory view (path → directory, file inode, symlink, FIFO): whiteouts,
//!    opaque directories, replacements, hardlinks as shared inodes, symlinks followed inside
//!    the root. Hostile names are refused here, before anything is written (an error names
//!    the layer's digest and the entry); device nodes are skipped and reported in
//!    [`Converted::skipped`]. The `/.singularity.d/` tree and the top-level links and
//!    mount points ([`singularity`]) join the view.
//! 2. **Data** (`emit.rs`): the view becomes one tar stream, parents before children and
//!    each hardlink after its target, regular files' data copied from the layers as they
//!    are read again. The stream goes through a pipe to `mksquashfs - OUT -tar`
//!    (squashfs-tools 4.5 or later), which writes the squashfs straight into `out` at the
//!    SIF's partition offset, on all cores, with owners and modes from the tar headers:
//!    the caller's uid never matters, and a user's conversion records root-owned and
//!    setuid files as root's does (the root directory's owner, which 4.5.1 takes from
//!    the caller, is root's through a user namespace of its own: see `userns`).
//!    `sqfstar` is the same code, but 4.5.1 (Debian 12's) drops the value of every `-X`
//!    compressor option, so it cannot set a level (squashfs-tools issue 191);
//!    `mksquashfs -tar` parses them.
//!
//! Then the OCI config is written as a generic JSON object at the start of the SIF's data
//! section and the SIF header and descriptor table go in front (`format::sif_write`).
//! Memory holds the view (a few hundred bytes per path) and the I/O buffers, never file data.
//!
//! Reading twice costs a second decompression (about 0.5 s per 300 MB of zstd, 1 s of
//! gzip) but needs no spool: a file's data cannot be written before the last layer has
//! said whether it survives, and the alternative (spooling every file, or a tree on disk)
//! writes the whole image a second time.
//!
//! `out` must be an existing, empty, writable file the caller made (in the cache's `tmp/`);
//! on error its content is undefined and the caller removes it. The library prints nothing.
//!
//! **Reproducible**: the same layers, config and options give a byte-identical SIF on
//! every node and every run, whoever converts, whatever their umask, working directory or
//! core count. Nothing of the moment goes in. One time, the later of the config's
//! `created` and the newest entry of the layers, is the SIF's creation and modification
//! time, the squashfs's creation time, its root directory's time and the generated
//! `/.singularity.d/` files' time; it reaches `mksquashfs` as `SOURCE_DATE_EPOCH` (the
//! caller's is not passed on), which clamps times to it and so changes none a layer gave.
//! It clamps only times *later* than it, and 4.5.1 stamps the root directory with the
//! moment it starts: a conversion waits until the clock has passed that one time (at
//! most `MAX_CLOCK_WAIT`, 10 s; an image made seconds ago, or on a node whose clock is ahead),
//! or the root's time, and the digest, would be the moment's.
//! The SIF's UUID is derived from [`ConvertOptions::identity`] (the manifest digest and
//! platform) and the compression. The tar stream's order is fixed by the view.
//! `mksquashfs -reproducible -no-tailends` writes the same bytes on any number of threads
//! ([`ConvertOptions::processors`] changes nothing): 4.5.1's tar mode packs tail ends into
//! fragments by default, and its duplicate check of those races its own threads.
//! The same squashfs-tools and compressor library are assumed: another zlib can compress
//! the same blocks to other bytes. Where user namespaces are disabled, the root
//! directory's owner is the caller's (see `userns`), which a root conversion does not
//! share.
//!
//! **Space**: [`write_sif_watched`] takes a [`SpaceWatch`], which says how many more bytes
//! the output may take (the caller's free space above the reserve it keeps; this module
//! knows no cache). `mksquashfs` runs with that room as its file size limit
//! (`RLIMIT_FSIZE`, counted from the squashfs' offset; `SIGXFSZ` ignored, so a write past
//! it fails with `EFBIG`), and the watch is asked again every [`WATCH_EVERY`] while it
//! runs: when other writers have used the room up, `mksquashfs` is killed. Either way the
//! conversion ends with [`ConvertError::NoSpace`], `mksquashfs` waited for, and the caller
//! removes `out`.
//!
//! **Compression**: gzip by default, because older cluster kernels cannot mount zstd
//! squashfs, at [`DEFAULT_GZIP_LEVEL`] (its doc gives the measurements).
//!
//! **Extended attributes** of regular files (PAX `SCHILY.xattr.*`: file capabilities,
//! user attributes) are carried over; those of directories, symlinks and FIFOs are not.

pub(crate) mod emit;
pub(crate) mod layer;
pub(crate) mod merge;
pub mod singularity;
mod userns;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::ErrorKind;
use crate::format::sif_write::{self, DATA_OFFSET, Object, ObjectKind, PARTITION_ALIGN};
use crate::format::{clock, digest};
pub use singularity::ImageConfig;

/// gzip level used when [`ConvertOptions::level`] is `None`: 6, not mksquashfs' own 9.
/// Measured on a 281 MB, 8,418-file tree (busybox, Python 3.11's and Debian's python3
/// libraries, vim and perl runtime files, gcc), `mksquashfs -comp gzip` on 2 busy cores:
/// level 9 took 75-81 s for 89.6 MB, level 6 19-20 s for 90.3 MB (+0.8%), level 1 5.9 s
/// for 100.9 MB (+12.6%). Level 9 buys under 1% for four times the time; level 1 costs
/// an eighth more space in a cache every node shares. Images are hundreds of MB to a few
/// GB, so the time is what users wait for on a first pull.
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// The squashfs compressors `mksquashfs` 4.5 knows.
pub const COMPRESSORS: &[&str] = &["gzip", "xz", "zstd", "lz4", "lzo", "lzma"];
const PIPE_BUF: usize = 1 << 20;
const STDERR_KEEP: usize = 4096;
/// How often [`SpaceWatch`] is asked while `mksquashfs` runs.
pub const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
/// How far in the future an image's time may be for a conversion to wait for the clock to
/// reach it (see [`wait_for_the_clock_to_pass`]).
const MAX_CLOCK_WAIT: u64 = 10;

/// Wait until this machine's clock has reached `time` (at most [`MAX_CLOCK_WAIT`]
/// seconds). `mksquashfs` 4.5.1 stamps the root directory with the moment it starts (tar
/// mode ignores `-root-time`) and clamps only *later* times to `SOURCE_DATE_EPOCH`: a
/// conversion that starts before `time` (an image made seconds ago, a node whose clock is
/// a little behind the one that built it) would give the root directory the moment's time,
/// and the SIF another digest than every other node's. An image further in the future is
/// converted at once (and its root time is then the moment's). The real clock, not
/// `format::clock`: it is mksquashfs's clock that matters.
fn wait_for_the_clock_to_pass(time: u64) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let ahead = time.saturating_sub(now());
    if ahead == 0 || ahead > MAX_CLOCK_WAIT {
        return;
    }
    while now() < time {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// How many more bytes the SIF being written may take (`None`: unknown, no bound); asked
/// before `mksquashfs` starts and every [`WATCH_EVERY`] while it runs.
#[derive(Clone)]
pub struct SpaceWatch(pub std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>);

impl std::fmt::Debug for SpaceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpaceWatch(..)")
    }
}

/// One layer blob on disk, in the image's order (base first).
#[derive(Debug, Clone, Copy)]
pub struct LayerFile<'a> {
    pub path: &'a Path,
    pub media_type: &'a str,
    /// `sha256:<hex>`, for messages.
    pub digest: &'a str,
}

/// How to write the squashfs.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertOptions {
    /// One of [`COMPRESSORS`]; "gzip" by default.
    pub compression: String,
    /// The compressor's level; `None` is [`DEFAULT_GZIP_LEVEL`] for gzip and the
    /// compressor's own default otherwise (15 for zstd).
    pub level: Option<u32>,
    /// The image's architecture as Go names it (`amd64`, `arm64`, `ppc64le`, …).
    pub arch: String,
    /// Threads `mksquashfs` may use; `None` is all cores. The result does not depend on it.
    pub processors: Option<usize>,
    /// What the image is, for the SIF's UUID: a `docker://` pull passes the manifest digest
    /// and the platform. `None` derives it from the config and the layers' digests.
    pub identity: Option<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            compression: "gzip".into(),
            level: None,
            arch: "amd64".into(),
            processors: None,
            identity: None,
        }
    }
}

/// An entry left out of the root filesystem.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Skipped {
    pub layer: String,
    pub path: String,
    pub reason: String,
}

/// What a conversion made.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Converted {
    /// Entries in the squashfs (the root not counted), `/.singularity.d` included.
    pub entries: u64,
    /// Size of the squashfs partition.
    pub squashfs_bytes: u64,
    /// Size of the whole SIF file.
    pub sif_bytes: u64,
    pub skipped: Vec<Skipped>,
    pub image: ImageConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(
        "layer `{digest}` has media type `{media_type}`, which is not a tar layer; only OCI and Docker layers (plain, gzip or zstd) convert"
    )]
    MediaType { digest: String, media_type: String },
    #[error(
        "layer `{digest}`: cannot read{}: {source}; the blob may be damaged (`sregistry verify` checks it)",
        at(entry)
    )]
    LayerRead {
        digest: String,
        entry: Option<String>,
        source: io::Error,
    },
    /// The layer's bytes (checked against its digest when downloaded) do not read as the
    /// tar archive its media type declares: the image is malformed.
    #[error(
        "layer `{digest}` (media type `{media_type}`) does not read as a tar archive{}: {source}; its bytes were checked against that digest when they were downloaded, so the image itself is malformed: push it again from a good copy (`sregistry verify` checks the cache's copy, if in doubt)",
        at(entry)
    )]
    NotTar {
        digest: String,
        media_type: String,
        entry: Option<String>,
        source: io::Error,
    },
    #[error(
        "layer `{digest}`: entry `{entry}` {problem}; the image is malformed or hostile and is not converted"
    )]
    Entry {
        digest: String,
        entry: String,
        problem: String,
    },
    #[error(
        "layer `{digest}` changed between the two reads (a file's data is missing); convert again"
    )]
    Changed { digest: String },
    #[error("the image config is not valid JSON: {0}")]
    Config(#[from] serde_json::Error),
    #[error(
        "architecture `{0}` has no SIF code; SIF knows 386, amd64, arm, arm64, ppc64, ppc64le, mips, mipsle, mips64, mips64le, s390x, riscv64"
    )]
    Arch(String),
    #[error("unknown squashfs compression `{0}`; choose one of gzip, xz, zstd, lz4, lzo, lzma")]
    Compression(String),
    #[error("cannot run `mksquashfs`: {0}; install squashfs-tools 4.5 or later")]
    NoMksquashfs(io::Error),
    #[error("`mksquashfs` failed ({status}): {stderr}")]
    Mksquashfs { status: String, stderr: String },
    #[error("cannot write `{path}`: {source}")]
    Output { path: String, source: io::Error },
    #[error(
        "the SIF outgrew the {room} bytes of room the filesystem had for it; `mksquashfs` was stopped"
    )]
    NoSpace { room: u64 },
}

impl ConvertError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConvertError::MediaType { .. }
            | ConvertError::NotTar { .. }
            | ConvertError::Entry { .. }
            | ConvertError::Config(_)
            | ConvertError::Arch(_)
            | ConvertError::Mksquashfs { .. } => ErrorKind::Unconvertible,
            ConvertError::Changed { .. } => ErrorKind::Conflict,
            ConvertError::Compression(_) => ErrorKind::InvalidInput,
            ConvertError::NoMksquashfs(_) => ErrorKind::Unsupported,
            ConvertError::LayerRead { source, .. } | ConvertError::Output { source, .. } => {
                ErrorKind::of_io(source)
            }
            ConvertError::NoSpace { .. } => ErrorKind::NoSpace,
        }
    }
}

fn at(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!(" at entry `{e}`"))
        .unwrap_or_default()
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Read one layer's headers (pass 1), data skipped. `end` tells where the stream really
/// ended (see [`layer::Lenient`]): an entry whose data runs past it is truncated.
pub(crate) fn read_entries(
    digest: &str,
    r: impl Read,
    end: &layer::EndProbe,
) -> Result<Vec<merge::Entry>, ConvertError> {
    use merge::EntryKind as K;
    use tar::EntryType as T;
    let mut out = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    let err = |last: &Option<Vec<u8>>, source: io::Error| ConvertError::LayerRead {
        digest: digest.to_string(),
        entry: last.as_deref().map(lossy),
        source: truncation(source),
    };
    let mut data_end: Vec<u64> = Vec::new();
    let mut archive = tar::Archive::new(r);
    for (index, entry) in archive.entries().map_err(|e| err(&None, e))?.enumerate() {
        let mut entry = entry.map_err(|e| err(&last, e))?;
        let xattrs = xattrs(&mut entry).map_err(|e| err(&None, e))?;
        let path = entry.path_bytes().into_owned();
        last = Some(path.clone());
        let h = entry.header();
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default()
        };
        let kind = match h.entry_type() {
            T::Regular | T::Continuous => K::File {
                size: entry.size(),
                xattrs,
            },
            T::Directory => K::Dir,
            T::Symlink => K::Symlink(link()),
            T::Link => K::Hardlink(link()),
            T::Fifo => K::Fifo,
            T::Char | T::Block => K::Device,
            T::XGlobalHeader => continue,
            other => K::Unsupported(other.as_byte()),
        };
        let raw = h.as_old();
        let meta = (|| -> io::Result<merge::Meta> {
            Ok(merge::Meta {
                mode: numeric(h.mode().map(u64::from), &raw.mode)? as u32 & 0o7777,
                uid: numeric(h.uid(), &raw.uid)?,
                gid: numeric(h.gid(), &raw.gid)?,
                mtime: numeric(h.mtime(), &raw.mtime)?,
            })
        })()
        .map_err(|e| err(&last, e))?;
        data_end.push(entry.raw_file_position() + entry.size());
        out.push(merge::Entry {
            index,
            path,
            kind,
            meta,
        });
    }
    if let Some(real_end) = end.get()
        && let Some(i) = data_end.iter().position(|&e| e > real_end)
    {
        let source = io::Error::from(io::ErrorKind::UnexpectedEof);
        return Err(err(&Some(out[i].path.clone()), source));
    }
    Ok(out)
}

/// The extended attributes of an entry (PAX `SCHILY.xattr.NAME` records, as GNU tar,
/// Docker and umoci write them).
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<merge::Xattrs> {
    let mut out = Vec::new();
    if let Some(records) = entry.pax_extensions()? {
        for record in records {
            let record = record?;
            if let Some(name) = record.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((name.to_vec(), record.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

/// The tar reader's end-of-stream errors, said plainly.
fn truncation(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof || e.to_string().contains("unexpected EOF") {
        let why = "the layer ends inside this entry's data (truncated, or its header declares more than the layer holds)";
        return io::Error::new(io::ErrorKind::UnexpectedEof, why);
    }
    e
}

/// A header's numeric field; an empty one (all NUL or spaces) is 0, as Go's tar reader
/// (Docker's, umoci's) reads it.
fn numeric(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        other => other,
    }
}

/// The view of the layers (pass 1) with the Apptainer additions, and the conversion's one
/// time: the later of `created` and the newest entry of the layers (see [`image_time`]).
pub(crate) fn build_view(
    layers: &[LayerFile<'_>],
    image: &ImageConfig,
    created: u64,
) -> Result<(merge::View, u64), ConvertError> {
    let mut view = merge::View::default();
    for (i, l) in layers.iter().enumerate() {
        let (tar, end) = layer::open(l)?;
        // An error the system gave (EIO) may be damage; any other is the archive's own.
        let entries = read_entries(l.digest, tar, &end).map_err(|e| match e {
            ConvertError::LayerRead {
                digest,
                entry,
                source,
            } if source.raw_os_error().is_none() => ConvertError::NotTar {
                digest,
                media_type: l.media_type.to_string(),
                entry,
                source,
            },
            e => e,
        })?;
        view.apply_layer(i, &entries)
            .map_err(|(entry, problem)| ConvertError::Entry {
                digest: l.digest.to_string(),
                entry: lossy(&entry),
                problem: problem.to_string(),
            })?;
    }
    let time = image_time(created, &view);
    singularity::add(&mut view, image, time);
    Ok((view, time))
}

/// Convert `layers` (base first) and `config` into a SIF at `out`. See the module doc.
pub fn write_sif(
    layers: &[LayerFile<'_>],
    config: &[u8],
    out: &Path,
    opts: &ConvertOptions,
) -> Result<Converted, ConvertError> {
    write_sif_watched(layers, config, out, opts, None)
}

/// [`write_sif`], the SIF held to the room `watch` gives (see "Space" in the module doc).
pub fn write_sif_watched(
    layers: &[LayerFile<'_>],
    config: &[u8],
    out: &Path,
    opts: &ConvertOptions,
    watch: Option<&SpaceWatch>,
) -> Result<Converted, ConvertError> {
    let image = ImageConfig::parse(config)?;
    let arch =
        sif_write::arch_code(&opts.arch).ok_or_else(|| ConvertError::Arch(opts.arch.clone()))?;
    if !COMPRESSORS.contains(&opts.compression.as_str()) {
        return Err(ConvertError::Compression(opts.compression.clone()));
    }
    let (view, time) = build_view(layers, &image, config_created(config))?;
    wait_for_the_clock_to_pass(time);
    let plan = emit::Plan::new(&view);
    let squash_at = (DATA_OFFSET + config.len() as u64).div_ceil(PARTITION_ALIGN) * PARTITION_ALIGN;
    run_mksquashfs(
        layers,
        &plan,
        view.root.unwrap_or(merge::Meta::IMPLICIT_DIR),
        Squash {
            out,
            offset: squash_at,
            time,
        },
        opts,
        watch,
    )?;

    let out_err = |source| ConvertError::Output {
        path: out.display().to_string(),
        source,
    };
    let mut f = OpenOptions::new().write(true).open(out).map_err(out_err)?;
    let end = f.seek(SeekFrom::End(0)).map_err(out_err)?;
    f.seek(SeekFrom::Start(DATA_OFFSET)).map_err(out_err)?;
    f.write_all(config).map_err(out_err)?;
    let objects = [
        Object {
            kind: ObjectKind::PrimarySquashfs { arch },
            name: "rootfs.squashfs".into(),
            offset: squash_at,
            size: end - squash_at,
        },
        Object {
            kind: ObjectKind::GenericJson,
            name: "oci-config.json".into(),
            offset: DATA_OFFSET,
            size: config.len() as u64,
        },
    ];
    sif_write::write_header_and_table(
        &mut f,
        &objects,
        arch,
        time as i64,
        image_id(layers, config, opts),
        end,
    )
    .map_err(out_err)?;

    Ok(Converted {
        entries: plan.entries(),
        squashfs_bytes: end - squash_at,
        sif_bytes: end,
        skipped: view
            .skipped
            .iter()
            .map(|s| Skipped {
                layer: layers[s.layer].digest.to_string(),
                path: lossy(&s.path),
                reason: s.reason.to_string(),
            })
            .collect(),
        image,
    })
}

/// The image config's `created` (Unix seconds), 0 where it has none.
fn config_created(config: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Created {
        #[serde(default)]
        created: Option<String>,
    }
    serde_json::from_slice::<Created>(config)
        .ok()
        .and_then(|c| c.created)
        .and_then(|t| clock::parse_rfc3339(&t))
        .unwrap_or(0)
}

/// The one time a conversion writes where the layers give none (the SIF's creation and
/// modification times, the squashfs's creation time, its root directory, the generated
/// `/.singularity.d/` files): the later of the config's `created` and the newest entry of
/// the layers, so that it depends on nothing but the input and, given to `mksquashfs` as
/// `SOURCE_DATE_EPOCH` (which clamps every time to it), changes no time a layer gave.
fn image_time(created: u64, view: &merge::View) -> u64 {
    use merge::Node;
    let newest = view
        .nodes
        .values()
        .map(|n| match n {
            Node::Dir(m) | Node::Symlink(_, m) | Node::Fifo(m) | Node::Generated(_, m) => m.mtime,
            Node::File(id) => view.inodes[*id].meta.mtime,
        })
        .chain(view.root.map(|m| m.mtime))
        .max()
        .unwrap_or(0);
    created.max(newest).min(u64::from(u32::MAX))
}

/// A UUID (version 4 layout) from what the image is ([`ConvertOptions::identity`], or its
/// config and layers) and the settings that change the bytes: the same input always gets
/// the same UUID, another image or other settings another one, without a random source.
fn image_id(layers: &[LayerFile<'_>], config: &[u8], opts: &ConvertOptions) -> [u8; 16] {
    let mut input = Vec::new();
    match &opts.identity {
        Some(identity) => input.extend_from_slice(identity.as_bytes()),
        None => {
            input.extend_from_slice(config);
            for l in layers {
                input.extend_from_slice(l.digest.as_bytes());
            }
        }
    }
    input.push(0);
    input.extend_from_slice(opts.compression.as_bytes());
    input.extend_from_slice(format!("/{:?}", effective_level(opts)).as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest::sha256(&input)[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// The compression level passed to `mksquashfs`, if any.
fn effective_level(opts: &ConvertOptions) -> Option<u32> {
    opts.level
        .or((opts.compression == "gzip").then_some(DEFAULT_GZIP_LEVEL))
}

/// Run `cmd` with `limit` as its file size limit, `SIGXFSZ` ignored: a write past it fails
/// with `EFBIG` instead of killing the process (and dumping core).
fn limit_file_size(cmd: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    let rl = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: the closure runs between fork and exec and calls only setrlimit and signal,
    // both async-signal-safe, on values it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
}

/// While `mksquashfs` (`pid`) runs, ask `watch` every [`WATCH_EVERY`] for the room left,
/// and kill it when there is none; returns whether it did. Ends when the child has
/// exited (seen without reaping it, so the pid stays its own until the caller waits) or
/// `stop` is dropped and the child has exited.
fn watch_room(watch: &SpaceWatch, pid: libc::pid_t, stop: std::sync::mpsc::Receiver<()>) -> bool {
    let mut stopping = false;
    loop {
        if !stopping {
            match stop.recv_timeout(WATCH_EVERY) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => stopping = true,
            }
        } else {
            std::thread::sleep(WATCH_EVERY);
        }
        // SAFETY: a zeroed siginfo_t is valid; waitid with WNOWAIT leaves the child
        // unreaped, so `pid` is still the child's when we kill it.
        let exited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            ) != 0
                || info.si_pid() != 0
        };
        if exited {
            return false;
        }
        if (watch.0)() == Some(0) {
            // SAFETY: the child is not reaped yet (see above), so the pid is its own.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
    }
}

/// Where pass 2 writes: the file, the squashfs' offset in it, and the conversion's one
/// time (see "Reproducible" above).
struct Squash<'a> {
    out: &'a Path,
    offset: u64,
    time: u64,
}

/// `mksquashfs -tar` as pass 2 runs it: reading the tar stream on stdin, writing the
/// squashfs into `out` at `offset`, with the root's owner, mode and time, reproducibly.
fn mksquashfs_command(
    root: &merge::Meta,
    out: &Path,
    offset: u64,
    time: u64,
    opts: &ConvertOptions,
) -> Command {
    let mut cmd = Command::new("mksquashfs");
    cmd.arg("-").arg(out).args([
        "-tar",
        "-noappend",
        "-quiet",
        "-no-progress",
        "-exit-on-error",
    ]);
    cmd.args(["-offset", &offset.to_string()])
        .args(["-comp", &opts.compression])
        .args(["-root-mode", &format!("{:o}", root.mode)])
        .args([
            "-root-uid",
            &root.uid.to_string(),
            "-root-gid",
            &root.gid.to_string(),
        ])
        .args(["-root-time", &root.mtime.min(u32::MAX as u64).to_string()])
        // The same stream must give the same bytes on any number of threads, at any hour.
        // `-reproducible` (4.5's default, said anyway) orders the output; in tar mode 4.5.1
        // packs tail ends into fragments by default and its duplicate check of those
        // races its own threads (other bytes run to run): `-no-tailends`, as the
        // directory mode's default (about 2% larger). 4.5.1 gives the root directory the
        // time of the moment in tar mode (`-root-time` is ignored): `SOURCE_DATE_EPOCH`
        // clamps it, and sets the creation time, to `time`, which no entry is newer than.
        .args(["-reproducible", "-no-tailends"])
        .env("SOURCE_DATE_EPOCH", time.to_string());
    if let Some(level) = effective_level(opts) {
        cmd.args(["-Xcompression-level", &level.to_string()]);
    }
    if let Some(n) = opts.processors {
        cmd.args(["-processors", &n.max(1).to_string()]);
    }
    if (root.uid, root.gid) == (0, 0) {
        userns::as_root_in_user_namespace(&mut cmd);
    }
    userns::die_with_parent(&mut cmd);
    cmd
}

/// Write the merged tar stream of `layers` into mksquashfs' stdin, then close it. A layer
/// that cannot be read (or changed since it was checked) is the first answer, for which
/// mksquashfs is then stopped; a broken pipe is the second, told only if mksquashfs
/// itself says nothing worse.
fn feed(
    layers: &[LayerFile<'_>],
    plan: &emit::Plan<'_>,
    stdin: BufWriter<std::process::ChildStdin>,
) -> (Option<ConvertError>, Option<io::Error>) {
    let open = |i: usize| -> io::Result<Box<dyn Read>> {
        layer::open(&layers[i])
            .map(|(tar, _)| tar)
            .map_err(|e| io::Error::other(e.to_string()))
    };
    let written = plan.write(layers.len(), open, stdin).and_then(|w| {
        w.into_inner()
            .map_err(|e| emit::EmitError::Write(e.into_error()))
    });
    let mut failed_write = None;
    let failed_read = match written {
        Ok(pipe) => {
            drop(pipe);
            None
        }
        Err(emit::EmitError::Write(e)) => {
            failed_write = Some(e);
            None
        }
        Err(emit::EmitError::Read {
            layer,
            entry,
            source,
        }) => Some(ConvertError::LayerRead {
            digest: layers[layer].digest.to_string(),
            entry: entry.as_deref().map(lossy),
            source,
        }),
        Err(emit::EmitError::Missing { layer }) => Some(ConvertError::Changed {
            digest: layers[layer].digest.to_string(),
        }),
    };
    (failed_read, failed_write)
}

/// Pass 2 into `mksquashfs -tar`, which writes the squashfs into `out` at `offset`.
fn run_mksquashfs(
    layers: &[LayerFile<'_>],
    plan: &emit::Plan<'_>,
    root: merge::Meta,
    to: Squash<'_>,
    opts: &ConvertOptions,
    watch: Option<&SpaceWatch>,
) -> Result<(), ConvertError> {
    let Squash { out, offset, time } = to;
    let mut cmd = mksquashfs_command(&root, out, offset, time, opts);
    // The room for the squashfs, as a file size limit: past it, a write fails.
    let size_limit = match watch.map(|w| (w.0)()) {
        Some(Some(0)) => return Err(ConvertError::NoSpace { room: 0 }),
        Some(Some(room)) => Some(offset.saturating_add(room)),
        _ => None,
    };
    if let Some(limit) = size_limit {
        limit_file_size(&mut cmd, limit);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // mksquashfs removes its output when it fails: an open descriptor still tells how far
    // the file grew.
    let out_file = File::open(out).map_err(|source| ConvertError::Output {
        path: out.display().to_string(),
        source,
    })?;
    let mut child = cmd.spawn().map_err(ConvertError::NoMksquashfs)?;
    let (stop_watching, watcher) = match watch {
        Some(w) if size_limit.is_some() => {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (w, pid) = (w.clone(), child.id() as libc::pid_t);
            (
                Some(tx),
                Some(std::thread::spawn(move || watch_room(&w, pid, rx))),
            )
        }
        _ => (None, None),
    };
    crate::testhook::pause("mksquashfs-started");
    let mut stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let stdin = BufWriter::with_capacity(PIPE_BUF, child.stdin.take().expect("piped"));
    let (failed_read, failed_write) = feed(layers, plan, stdin);
    if failed_read.is_some() {
        let _ = child.kill();
    }
    // The watcher ends when mksquashfs has exited (it never reaps it), or once it killed it.
    drop(stop_watching);
    let out_of_room = watcher.is_some_and(|w| w.join().unwrap_or(false));
    let status = child.wait().map_err(|e| ConvertError::Mksquashfs {
        status: "not waited for".into(),
        stderr: e.to_string(),
    })?;
    let stderr = errs.join().unwrap_or_default();
    if let Some(e) = failed_read {
        return Err(e);
    }
    // A write past the size limit failed (`EFBIG`): the file reached it, give or take
    // the last block mksquashfs tried to write.
    let grew = out_file.metadata().map_or(0, |m| m.len());
    if let Some(limit) = size_limit
        && !status.success()
        && (out_of_room || grew.saturating_add(1 << 20) >= limit)
    {
        return Err(ConvertError::NoSpace {
            room: limit - offset,
        });
    }
    if !status.success() {
        let text = lossy(&stderr[stderr.len().saturating_sub(STDERR_KEEP)..]);
        return Err(ConvertError::Mksquashfs {
            status: status.to_string(),
            stderr: text.trim().replace('\n', "; "),
        });
    }
    if let Some(e) = failed_write {
        return Err(ConvertError::Mksquashfs {
            status: status.to_string(),
            stderr: format!("its input pipe broke: {e}"),
        });
    }
    // mksquashfs leaves `out` complete; make sure it is not shorter than the offset.
    let len = File::open(out)
        .and_then(|f| f.metadata())
        .map(|m| m.len())
        .unwrap_or(0);
    if len <= offset {
        return Err(ConvertError::Mksquashfs {
            status: status.to_string(),
            stderr: "wrote no filesystem".into(),
        });
    }
    Ok(())
}
