//! A cache that a Unix group shares: creating one, and checking one (`init`, `doctor`).
//!
//! # What a shared cache is
//!
//! * Directories `2775` (setgid, so everything created inside belongs to the group;
//!   group-writable, so any member can add and remove), owned by the group.
//! * `index.redb`, lock files and `settings.json` `0664`, owned by the group: any member
//!   can take the locks and write the index.
//! * Blobs `0444`: readable by everyone who can reach them, writable by no one.
//! * The settings (`v1/settings.json`) record the group and modes; every command applies
//!   them explicitly with `chmod`, so a member's umask (say `077`) cannot narrow them.
//!
//! The trust boundary is the group: any member can add, tag, remove and collect. `verify`
//! detects content altered behind the cache's back.
//!
//! # What `init` does to a directory
//!
//! * A new or empty directory becomes a cache (a `lost+found` in it is left alone). A
//!   directory that holds anything else and is not already a cache is refused untouched.
//! * Without `--shared`, `init` never changes an existing cache's settings: on a shared
//!   cache it says so and changes nothing.
//! * With `--shared --group G`, on a cache already shared with G it re-applies group and
//!   modes where they are off (how `doctor`'s permission problems are fixed); on a private
//!   cache, or one shared with another group, it gives the cache to G. First it checks
//!   that it can do all of it: the caller is root or a member of G, and every path whose
//!   group or mode must change belongs to the caller (or the caller is root). Otherwise
//!   it refuses and changes nothing. So a member re-running the set-up is harmless, and
//!   only root, or a user who owns every file that must change, hands a cache to another
//!   group.
//! * Only the cache's own entries are touched: the root directory, `CACHEDIR.TAG` and
//!   `v1/`. Each is changed through a descriptor opened without following a final
//!   symlink and checked to be the very file that was planned, and a file with another
//!   hard link is refused, so a member who swaps a path for a symlink or links a file
//!   into the cache cannot make root's `init` change a file outside it.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cache::Cache;
use crate::cache::{Settings, SettingsError};
use crate::error::ErrorKind;
use crate::maintain::group;

/// Entries a directory may hold and still count as empty: what a fresh filesystem's root
/// holds.
const LEFT_ALONE: [&str; 1] = ["lost+found"];

/// Errors of `init`.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error(
        "`{0}` is not an sregistry cache and has other files in it; `init` makes a cache only in a new or empty directory, so nothing was changed (give another directory)"
    )]
    NotACache(PathBuf),
    #[error("`{0}` exists and is not a directory; give a directory for the cache")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(
        "you are not a member of group `{group}` (gid {gid}), so you cannot give files to it; nothing was changed (run `init` as a member of the group, or as root)"
    )]
    NotAMember { group: String, gid: u32 },
    #[error(
        "cannot {action}: `{path}` belongs to uid {uid}, and only its owner or root may change its group or mode; nothing was changed"
    )]
    NotOwner {
        action: String,
        path: PathBuf,
        uid: u32,
    },
    #[error(
        "`{0}` has another hard link, so it may be a file outside the cache; `init` changes no such file, so nothing was changed (remove the extra link, or copy the file back in place of it)"
    )]
    HardLinked(PathBuf),
    #[error(
        "`{0}` is not a directory (a member may have put a file or a link there before `init --shared` made it); remove it and run `init --shared` again"
    )]
    PrivateNotADirectory(PathBuf),
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

impl SharedError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SharedError::NotACache(_)
            | SharedError::HardLinked(_)
            | SharedError::PrivateNotADirectory(_) => ErrorKind::Conflict,
            SharedError::NotADirectory(_) => ErrorKind::Unsupported,
            SharedError::Settings(e) => e.kind(),
            SharedError::NotAMember { .. } | SharedError::NotOwner { .. } => {
                ErrorKind::PermissionDenied
            }
            SharedError::Io { source, .. } => ErrorKind::of_io(source),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SharedError + '_ {
    move |source| SharedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `init` found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A new cache.
    Created,
    /// An existing cache, already what was asked for (group and modes re-applied where
    /// they were off).
    Unchanged,
    /// A plain `init` on a shared cache: left exactly as it was.
    AlreadyShared,
    /// A private cache, now shared.
    Converted,
    /// A shared cache, now shared with another group.
    Regrouped,
}

/// The result of [`init`].
#[derive(Debug)]
pub struct Initialised {
    pub cache: Cache,
    pub outcome: Outcome,
    /// The settings the cache had before, when it existed.
    pub previous: Option<Settings>,
    /// How many paths had their group or mode changed.
    pub changed: usize,
}

/// Create the cache at `root` with settings `want`, or bring an existing one to them (see
/// the module documentation for what is refused).
pub fn init(
    root: &Path,
    want: &Settings,
    lock: crate::cache::lock::LockOptions,
) -> Result<Initialised, SharedError> {
    let previous = existing_cache(root)?;
    let outcome = match (&previous, want.gid) {
        (None, _) => Outcome::Created,
        (Some(old), None) if old.shared => {
            return Ok(Initialised {
                cache: Cache::with_settings(root, lock, old.clone()),
                outcome: Outcome::AlreadyShared,
                previous,
                changed: 0,
            });
        }
        (Some(_), None) => Outcome::Unchanged,
        (Some(old), Some(gid)) if old.shared && old.gid == Some(gid) => Outcome::Unchanged,
        (Some(old), Some(_)) if old.shared => Outcome::Regrouped,
        (Some(_), Some(_)) => Outcome::Converted,
    };
    // A plain `init` keeps an existing private cache's settings as they are.
    let want = match (&previous, want.gid) {
        (Some(old), None) => old,
        _ => want,
    };
    if let Some(gid) = want.gid
        && !group::may_use(gid)
    {
        return Err(SharedError::NotAMember {
            group: want.group.clone().unwrap_or_else(|| gid.to_string()),
            gid,
        });
    }
    let new_root = !root.exists();
    fs::create_dir_all(root).map_err(io_err(root))?;
    if new_root && want.gid.is_none() {
        // Its mode, not the umask's (a umask of 002 would leave it group-writable).
        fs::set_permissions(root, fs::Permissions::from_mode(want.dir_mode))
            .map_err(io_err(root))?;
    }
    // The directory itself, when `root` is a symlink to it (`/shared/containers` ->
    // `/gpfs/...`): changes are made without following symlinks.
    let root = &fs::canonicalize(root).map_err(io_err(root))?;
    let cache = Cache::with_settings(root, lock, want.clone());
    let regroup = |gid| -> Result<usize, SharedError> {
        let what = describe(root, want, previous.as_ref(), outcome);
        apply(root, &plan(&cache, gid, &what)?, gid)
    };
    let mut changed = 0;
    let private = root.join(crate::cache::PRIVATE_DIR);
    if want.shared && fs::symlink_metadata(&private).is_ok_and(|m| !m.file_type().is_dir()) {
        return Err(SharedError::PrivateNotADirectory(private));
    }
    // Group and modes first (the root's setgid bit before anything is created in it),
    // then the layout, the index and the settings, then whatever those created.
    if let Some(gid) = want.gid {
        changed += regroup(gid)?;
    }
    let layout_err = |path: &Path, e: &dyn std::fmt::Display| SharedError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(e.to_string()),
    };
    cache.ensure_layout().map_err(|e| layout_err(root, &e))?;
    let db = cache.index_path();
    if !db.exists() {
        cache.create_index().map_err(|e| layout_err(db, &e))?;
    }
    if previous.as_ref() != Some(want) {
        cache
            .save_settings(want)
            .map_err(io_err(&cache.settings_path()))?;
    }
    if want.shared {
        cache
            .make_private_dir()
            .map_err(|e| layout_err(&private, &e))?;
        cache.clear_private_dir_acls();
    }
    if let Some(gid) = want.gid {
        changed += regroup(gid)?;
    }
    Ok(Initialised {
        cache,
        outcome,
        previous,
        changed,
    })
}

/// What a refused `init --shared` was asked to do, for its message.
fn describe(root: &Path, want: &Settings, previous: Option<&Settings>, outcome: Outcome) -> String {
    let group = want.group.as_deref().unwrap_or("?");
    let root = root.display();
    match (outcome, previous.and_then(|p| p.group.as_deref())) {
        (Outcome::Regrouped, Some(old)) => {
            format!("give the cache at `{root}`, shared with group `{old}`, to group `{group}`")
        }
        (Outcome::Converted, _) => format!("share the cache at `{root}` with group `{group}`"),
        _ => format!("apply group `{group}` and the shared modes to `{root}`"),
    }
}

/// The settings of the cache at `root`; `None` when there is no cache yet (no such
/// directory, or an empty one). Refuses a directory with other things in it.
fn existing_cache(root: &Path) -> Result<Option<Settings>, SharedError> {
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(root)(e)),
    };
    if !meta.is_dir() {
        return Err(SharedError::NotADirectory(root.to_path_buf()));
    }
    if let Some(settings) = Cache::recorded_settings(root)? {
        return Ok(Some(settings));
    }
    for entry in fs::read_dir(root).map_err(io_err(root))? {
        let entry = entry.map_err(io_err(root))?;
        if !LEFT_ALONE.iter().any(|n| entry.file_name() == *n) {
            return Err(SharedError::NotACache(root.to_path_buf()));
        }
    }
    Ok(None)
}

/// One path whose group or mode `init` changes, as it was when planned.
#[derive(Debug)]
struct Change {
    path: PathBuf,
    dev: u64,
    ino: u64,
    chgrp: bool,
    mode: Option<u32>,
    /// A new owner (`private/` of someone other than the root's owner or root).
    chown: Option<u32>,
}

/// What must change for the cache's own entries to have group `gid` and the modes of
/// its settings. Refuses (changing nothing) when a path to change belongs to another
/// user and this process is not root.
fn plan(cache: &Cache, gid: u32, action: &str) -> Result<Vec<Change>, SharedError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let root_uid = fs::metadata(cache.root())
        .map_err(io_err(cache.root()))?
        .uid();
    let mut out = Vec::new();
    let listed = cache.own_paths();
    // A member may swap a directory just listed for a link before it is looked at: what
    // the link names may then be planned, and `apply` must not reach it.
    crate::testhook::pause("init-listed");
    for path in listed {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let Some(kind) = Kind::of(cache, &path, &meta) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        let target = kind.mode(cache.settings()).unwrap_or(mode);
        // A sticky bit an admin set on the root stays.
        let target = match kind {
            Kind::Root => target | (mode & 0o1000),
            _ => target,
        };
        let change = Change {
            chgrp: meta.gid() != gid,
            mode: (mode != target).then_some(target),
            chown: (kind == Kind::Private && meta.uid() != root_uid && meta.uid() != 0)
                .then_some(root_uid),
            dev: meta.dev(),
            ino: meta.ino(),
            path,
        };
        if !change.chgrp && change.mode.is_none() && change.chown.is_none() {
            continue;
        }
        // A member could link a file of root's into the cache for root's `init` to open up.
        if !matches!(kind, Kind::Dir | Kind::Root | Kind::Private) && meta.nlink() > 1 {
            return Err(SharedError::HardLinked(change.path));
        }
        if euid != 0 && (meta.uid() != euid || change.chown.is_some()) {
            return Err(SharedError::NotOwner {
                action: action.to_string(),
                path: change.path,
                uid: meta.uid(),
            });
        }
        out.push(change);
    }
    Ok(out)
}

/// Make the planned changes, each through a descriptor that does not follow a final
/// symlink and is checked to be the planned file. A path removed or replaced since it
/// was planned (by a member's `gc`, say) is skipped: whoever made its replacement gave it
/// the cache's modes. Returns how many paths changed.
fn apply(root: &Path, changes: &[Change], gid: u32) -> Result<usize, SharedError> {
    let mut done = 0;
    for c in changes {
        let err = io_err(&c.path);
        // The root as `init` resolved it; everything under it without following any link
        // on the way (a member can swap a directory of the walk for one).
        let opened = match c.path.strip_prefix(root) {
            Ok(rel) if !rel.as_os_str().is_empty() => {
                crate::cache::open_beneath(root, rel, libc::O_PATH)
            }
            _ => fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
                .open(&c.path),
        };
        let file = match opened {
            Ok(f) => f,
            // Gone, or a link now stands on the way: whatever it names is not changed.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                continue;
            }
            Err(e) => return Err(err(e)),
        };
        let now = file.metadata().map_err(io_err(&c.path))?;
        if (now.dev(), now.ino()) != (c.dev, c.ino) {
            continue;
        }
        if c.chgrp || c.chown.is_some() {
            // SAFETY: a valid descriptor and an empty path with AT_EMPTY_PATH; uid -1
            // leaves the owner as it is.
            let rc = unsafe {
                libc::fchownat(
                    file.as_raw_fd(),
                    c"".as_ptr(),
                    c.chown.unwrap_or(u32::MAX),
                    gid,
                    libc::AT_EMPTY_PATH,
                )
            };
            if rc != 0 {
                return Err(err(io::Error::last_os_error()));
            }
        }
        if let Some(mode) = c.mode {
            // An O_PATH descriptor cannot be fchmod-ed; its /proc link names the very file.
            let link = format!("/proc/self/fd/{}", file.as_raw_fd());
            fs::set_permissions(&link, fs::Permissions::from_mode(mode)).map_err(|e| {
                SharedError::Io {
                    path: c.path.clone(),
                    source: io::Error::new(e.kind(), format!("{e} (through `{link}`)")),
                }
            })?;
        }
        done += 1;
    }
    Ok(done)
}

/// What a path of the cache is, for the mode it should have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The cache's own directory: as any directory, and sticky in a shared cache (members
    /// then cannot rename `private/` or `v1/` away; src/cache/private.rs); an admin's
    /// sticky bit on a cache that is not shared stays too.
    Root,
    /// A shared cache's `private/`: [`crate::cache::PRIVATE_DIR_MODE`], owned by the
    /// root's owner (or root).
    Private,
    Dir,
    /// An image file under `blobs/`: always `0444`.
    Blob,
    /// A file in `tmp/` or `quarantine/`, or a failed pull's note in `locks/` (`0600`,
    /// see `Cache::pull_failures`): its mode is its writer's business.
    Staged,
    /// The index, lock files, settings, `CACHEDIR.TAG`.
    File,
}

impl Kind {
    /// The kind of `path` (with metadata `meta`, not followed); `None` for symlinks and
    /// special files, which sregistry never makes and `init` leaves alone.
    pub fn of(cache: &Cache, path: &Path, meta: &fs::Metadata) -> Option<Kind> {
        let t = meta.file_type();
        Some(if t.is_dir() && path == cache.root() {
            Kind::Root
        } else if t.is_dir()
            && cache.settings().shared
            && path == cache.root().join(crate::cache::PRIVATE_DIR)
        {
            Kind::Private
        } else if t.is_dir() {
            Kind::Dir
        } else if !t.is_file() {
            return None;
        } else if path.starts_with(cache.blobs_dir()) {
            Kind::Blob
        } else if path.starts_with(cache.tmp_dir())
            || path.starts_with(cache.quarantine_dir())
            || (path.starts_with(cache.locks_dir())
                && path.extension().is_some_and(|e| e == "failed"))
        {
            Kind::Staged
        } else {
            Kind::File
        })
    }

    /// The mode `init` gives this kind of path under `settings` (`None`: left as it is).
    pub fn mode(self, settings: &Settings) -> Option<u32> {
        match self {
            Kind::Root if settings.shared => Some(settings.dir_mode | 0o1000),
            Kind::Root | Kind::Dir => Some(settings.dir_mode),
            Kind::Private => Some(crate::cache::PRIVATE_DIR_MODE),
            Kind::Blob => Some(crate::cache::BLOB_MODE),
            Kind::Staged => None,
            Kind::File => Some(settings.file_mode),
        }
    }

    /// What is wrong with `mode` and group `gid` for this kind of path under `settings`:
    /// a bit the cache needs is missing (the group's, for a shared cache; the owner's), a
    /// bit the settings do not give is there (group-write on a private cache's
    /// directories, anyone-write, setuid, sticky), or the group is not the cache's.
    /// `None` when they fit.
    pub fn problem(self, settings: &Settings, mode: u32, gid: u32) -> Option<String> {
        let target = self.mode(settings)?;
        let (need, forbid) = match self {
            // A setgid bit alone is harmless (a private cache made in a setgid project
            // directory inherits it); group-write without the settings asking is not.
            Kind::Dir => ((target & 0o2070) | 0o700, 0o5022 & !target),
            Kind::Root => ((target & 0o3070) | 0o700, 0o4022 & !target),
            Kind::Private => (0o1730, 0o4047),
            Kind::File => ((target & 0o060) | 0o600, 0o7002 & !target),
            _ => (target, !target & 0o7777),
        };
        let group = settings.gid.filter(|_| settings.shared);
        let off = mode & need != need || mode & forbid != 0 || group.is_some_and(|g| g != gid);
        off.then(|| match group {
            Some(g) => format!("{mode:o}, gid {gid} (want {target:o}, gid {g})"),
            None => format!("{mode:o} (want {target:o})"),
        })
    }
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
            "NFS: fcntl (OFD) locks go through the NFS lock service and hold across nodes (NFSv4 has it built in; NFSv3 needs lockd/statd on every node). Do not mount with `nolock`, `local_lock=all` or `local_lock=posix`.",
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
pub use crate::cache::limits::space;
