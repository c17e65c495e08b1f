//! A cache that a Unix group shares: creating one, and checking one (`init`, `doctor`).
//!
//! # What a shared cache is
//!
//! * Directories `2775` (setgid, so everything created inside belongs to the group;
//!   group-writable, so any member can add and remove), owned by the group.
//! * `index.redb` and lock files `0664`, owned by the group: any member can take the
//!   locks and write the index.
//! * Blobs `0444`: readable by everyone who can reach them, writable by no one.
//! * The settings (`v1/settings.json`) record the group and modes; every command applies
//!   them explicitly with `chmod`, so a member's umask (say `077`) cannot narrow them.
//!
//! The trust boundary is the group: any member can add, tag, remove and collect. `verify`
//! detects content altered behind the cache's back.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cache::Cache;
use crate::settings::Settings;

/// Errors of `init`.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("no group `{0}` on this system (see `getent group`; a numeric group id works too)")]
    NoGroup(String),
    #[error("cannot set up `{path}`: {source}{hint}", hint = chown_hint(.source))]
    Io { path: PathBuf, source: io::Error },
}

fn chown_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EPERM) {
        " (you must own the files and be a member of the group, or be root)"
    } else {
        ""
    }
}

/// Look up a group by name or number: (name, gid).
pub fn lookup_group(group: &str) -> Result<(String, u32), SharedError> {
    let by_name = CString::new(group).ok().and_then(|c| {
        // SAFETY: getgrnam returns a pointer to static storage or null; we copy out the
        // fields we need before any other call could overwrite it.
        let gr = unsafe { libc::getgrnam(c.as_ptr()) };
        (!gr.is_null()).then(|| unsafe { (*gr).gr_gid })
    });
    if let Some(gid) = by_name {
        return Ok((group.to_string(), gid));
    }
    if let Ok(gid) = group.parse::<u32>() {
        // SAFETY: as above, for getgrgid.
        let gr = unsafe { libc::getgrgid(gid) };
        let name = if gr.is_null() {
            group.to_string()
        } else {
            // SAFETY: gr_name is a valid NUL-terminated string while `gr` is valid.
            unsafe { std::ffi::CStr::from_ptr((*gr).gr_name) }
                .to_string_lossy()
                .into_owned()
        };
        return Ok((name, gid));
    }
    Err(SharedError::NoGroup(group.to_string()))
}

fn chown_group(path: &Path, gid: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid path string; uid -1 leaves the owner as it is.
    let rc = unsafe { libc::lchown(c.as_ptr(), u32::MAX, gid) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Create (or convert) the cache at `root` with `settings`: layout, index, lock file,
/// and, for a shared cache, group and modes on everything already there.
pub fn init(
    root: &Path,
    settings: &Settings,
    lock: crate::lock::LockOptions,
) -> Result<Cache, SharedError> {
    let io = |path: &Path| {
        let p = path.to_path_buf();
        move |source| SharedError::Io { path: p, source }
    };
    fs::create_dir_all(root).map_err(io(root))?;
    let cache = Cache::with_settings(root, lock, settings.clone());
    if let Some(gid) = settings.gid {
        // Group first, so directories created below inherit it through setgid.
        chown_group(root, gid).map_err(io(root))?;
        fs::set_permissions(root, fs::Permissions::from_mode(settings.dir_mode))
            .map_err(io(root))?;
    }
    cache.ensure_layout().map_err(|e| SharedError::Io {
        path: root.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    settings.save(cache.v1()).map_err(io(cache.v1()))?;
    // Create the index (and its lock file) now, with the cache's modes.
    let w = cache.index().write().map_err(|e| SharedError::Io {
        path: cache.index().db_path().to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    w.commit().map_err(|e| SharedError::Io {
        path: cache.index().db_path().to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    if let Some(gid) = settings.gid {
        for entry in walk(root) {
            let meta = fs::symlink_metadata(&entry).map_err(io(&entry))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.gid() != gid {
                chown_group(&entry, gid).map_err(io(&entry))?;
            }
            let want = if meta.is_dir() {
                settings.dir_mode
            } else if is_blob(&entry) {
                crate::store::BLOB_MODE
            } else if entry.starts_with(cache.v1().join("tmp"))
                || entry.starts_with(cache.v1().join("quarantine"))
            {
                meta.permissions().mode() & 0o7777
            } else {
                settings.file_mode
            };
            if meta.permissions().mode() & 0o7777 != want {
                fs::set_permissions(&entry, fs::Permissions::from_mode(want))
                    .map_err(io(&entry))?;
            }
        }
    }
    Ok(cache)
}

fn is_blob(p: &Path) -> bool {
    p.components().any(|c| c.as_os_str() == "blobs") && p.is_file()
}

/// Every path under `root` (root included), directories before their contents.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
            && let Ok(rd) = fs::read_dir(&p)
        {
            out.extend(rd.flatten().map(|e| e.path()));
        }
        i += 1;
    }
    out
}

/// A filesystem as `statfs` names it, with what it means for locking.
#[derive(Clone, Debug, Serialize)]
pub struct FsInfo {
    pub name: &'static str,
    pub magic: u64,
    pub cluster: bool,
    pub advice: &'static str,
}

/// Which filesystem holds `path`.
pub fn filesystem(path: &Path) -> io::Result<FsInfo> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: zeroed statfs is valid; statfs fills it for a valid path string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(classify(st.f_type as u64))
}

/// Name a `statfs` magic number and say what it means for sregistry's locks.
pub fn classify(magic: u64) -> FsInfo {
    let (name, cluster, advice) = match magic {
        0x6969 => (
            "nfs",
            true,
            "NFS: fcntl (OFD) locks go through the NFS lock service and hold across nodes (NFSv4 has it built in; NFSv3 needs lockd/statd on every node). Do not mount with `nolock` or `local_lock=`.",
        ),
        0x0BD0_0BD0 => (
            "lustre",
            true,
            "Lustre: fcntl locks hold across nodes only when every client mounts with `-o flock`; with `localflock` they are node-local, and without either they are refused.",
        ),
        0x4750_4653 => (
            "gpfs",
            true,
            "GPFS (Spectrum Scale): fcntl locks hold across the cluster; flock is node-local, so keep SREGISTRY_LOCK unset (ofd).",
        ),
        0x00C3_6400 => ("cephfs", true, "CephFS: fcntl locks hold across clients."),
        0x1983_0326 => (
            "beegfs",
            true,
            "BeeGFS: fcntl locks hold across nodes only with `tuneUseGlobalFileLocks` enabled on the clients.",
        ),
        0xEF53 => (
            "ext2/3/4",
            false,
            "local filesystem: locks hold on this node only.",
        ),
        0x5846_5342 => (
            "xfs",
            false,
            "local filesystem: locks hold on this node only.",
        ),
        0x9123_683E => (
            "btrfs",
            false,
            "local filesystem: locks hold on this node only.",
        ),
        0x2FC1_2FC1 => (
            "zfs",
            false,
            "local filesystem: locks hold on this node only.",
        ),
        0x0102_1994 => (
            "tmpfs",
            false,
            "tmpfs: in memory, lost at reboot, this node only.",
        ),
        0x794C_7630 => (
            "overlayfs",
            false,
            "overlay filesystem: locks hold on this node only.",
        ),
        0x6573_5546 => (
            "fuse",
            false,
            "FUSE: whether locks work depends on the daemon; check the lock test below.",
        ),
        _ => (
            "other",
            false,
            "unrecognised filesystem: rely on the lock test below.",
        ),
    };
    FsInfo {
        name,
        magic,
        cluster,
        advice,
    }
}

/// The mount options of the filesystem holding `path` (from `/proc/self/mountinfo`).
pub fn mount_options(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let path = fs::canonicalize(path).ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mp), Some(opts)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let mp = mp.replace("\\040", " ");
        let super_opts = line.rsplit(' ').next().unwrap_or("");
        if path.starts_with(&mp) && best.as_ref().is_none_or(|(l, _)| mp.len() > *l) {
            best = Some((mp.len(), format!("{opts},{super_opts}")));
        }
    }
    best.map(|(_, o)| o)
}

/// Free and total bytes of the filesystem holding `path`.
pub fn space(path: &Path) -> io::Result<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: zeroed statvfs is valid; statvfs fills it for a valid path string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let f = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * f, st.f_blocks as u64 * f))
}
