//! Private caches inside a shared one (issue 23, "private images stay private").
//!
//! An image that needed credentials to pull never enters a shared cache: it goes to the
//! puller's own private cache, a whole cache (index, journal, blobs, locks, `tmp/`) at
//! `<shared cache>/private/<uid>/`, a directory of mode 0700 that belongs to that user.
//! Nothing of it passes through the shared index, the shared blobs or the shared `tmp/`,
//! so no other member can reach it by name, by digest, by path or through a shared layer
//! (docs/shared-cache.md, "Private images", gives the reasons for this layout).
//!
//! # The chain of directories, and why paths are safe to use
//!
//! A member may not rename, replace or remove any directory between the cache's root and
//! a user's private cache, or that user's names would vanish (and the same names in the
//! shared cache answer instead), or a pull would write into a tree the member reads. So
//! every use checks the chain ([`Cache::private_chain`]):
//!
//! * the cache's root is sticky (members cannot rename or remove what they do not own in
//!   it: `private/`, `v1/`);
//! * `private/` is a directory (not a link), owned by the root's owner or by root, sticky
//!   (members cannot rename or remove one another's directories in it), closed to others
//!   and not listable by the group (mode `3730`, made by `init --shared`);
//! * `private/<uid>` is a directory (not a link) of the caller's, mode 0700.
//!
//! Each link of the chain can then change only by the hand of the caller, the cache's
//! owner or root, whom the caller trusts anyway, so the paths checked stay the paths used
//! for the rest of the command, and no descriptor needs to be carried.
//!
//! * [`Cache::own_private`] finds the caller's private cache: one `lstat` of
//!   `private/<uid>` (which fails with `ENOENT` for a user who never pulled a private
//!   image, the whole cost of a `get` for everyone else), in every cache: whether a cache
//!   is shared is in `v1/settings.json`, which any member can replace, so it never
//!   decides that a private cache is not looked at. A directory there that another
//!   user owns, or anything else at `private` (a file, a link), is passed over by lookups
//!   (it cannot hold the caller's images) and refused by a pull. A directory of the
//!   caller's in a chain that does not hold is refused for lookups too: passed over, the
//!   caller's names would silently become whatever the shared cache holds under them.
//! * [`Cache::make_own_private`] creates `private/<uid>` (0700) on a private pull's first
//!   need, in a chain that holds; `private/` itself is made only by `init --shared` (or
//!   by a pull of the root's owner), never by another member.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Cache, CacheError};

/// The directory of the private caches, under a shared cache's root.
pub const PRIVATE_DIR: &str = "private";
/// Mode of `private/` (made by `init --shared`): setgid, sticky, the owner everything, the
/// group write and search (create one's own directory, enter it), others nothing.
pub const PRIVATE_DIR_MODE: u32 = 0o3730;
/// Mode of `private/<uid>`.
const OWN_MODE: u32 = 0o700;

/// The effective user id of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

impl Cache {
    /// Where the caller's private cache is (or would be). Asked of every cache, shared or
    /// not: whether a cache is shared is written in `v1/settings.json`, which any member
    /// can replace (found by a hostile test: settings that said "not shared" hid every
    /// private cache, and the same names in the shared cache answered), so a lookup never
    /// trusts it to skip a private cache that is there. A cache that is not shared has no
    /// `private/`: the one `lstat` fails.
    pub fn own_private_root(&self) -> Option<PathBuf> {
        Some(self.root.join(PRIVATE_DIR).join(euid().to_string()))
    }

    /// Whether pulls that need credentials go to private caches here: the settings say the
    /// cache is shared, or it has a `private/` (which members cannot remove from a sticky
    /// root), or its `v1/` is laid out for a group (which only its owner can change). Not
    /// the settings alone: any member can replace them (see [`Cache::own_private_root`]).
    pub fn keeps_private_images(&self) -> bool {
        self.settings.shared
            || fs::symlink_metadata(self.root.join(PRIVATE_DIR)).is_ok()
            || self.group_layout().is_some()
    }

    /// The caller's private cache, if this cache is shared and the caller has one; one
    /// `lstat` for a caller who has none.
    /// Refused when the directory is the caller's but others may enter it, or when the
    /// chain above it does not hold (see the module's doc).
    pub fn own_private(&self) -> Result<Option<Cache>, CacheError> {
        self.find_own_private(false)
    }

    /// [`Cache::own_private`]; with `strict` (a pull), a directory there that another user
    /// owns is refused too, else it is passed over (it cannot hold the caller's images,
    /// and a member who made one must not stop every `get` of the caller's).
    fn find_own_private(&self, strict: bool) -> Result<Option<Cache>, CacheError> {
        let Some(dir) = self.own_private_root() else {
            return Ok(None);
        };
        match fs::symlink_metadata(&dir) {
            Ok(m) if !strict && m.uid() != euid() => Ok(None),
            Ok(m) => {
                check_own(&dir, &m)?;
                self.private_chain()?;
                Ok(Some(self.private_at(&dir)?))
            }
            // Never made, or `private/` closed to this user (not in the group: such a
            // user cannot have made one).
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                Ok(None)
            }
            // `private` is not a directory (a file, a link loop, put there by a member in
            // a cache set up before `init --shared` made it): it holds nobody's images,
            // and must not stop every lookup in the cache.
            Err(_) if !strict => Ok(None),
            Err(source) => Err(CacheError::Open { path: dir, source }),
        }
    }

    /// Whether the directories from the cache's root to `private/` are safe from other
    /// members (see the module's doc): an error naming the first that is not, and what
    /// to do.
    pub fn private_chain(&self) -> Result<(), CacheError> {
        let fix = format!(
            "the cache's owner runs `sregistry init --shared --group {} {}` to set it right",
            self.settings.group.as_deref().unwrap_or("GROUP"),
            self.root.display()
        );
        let not_safe = |path: &Path, why: String| CacheError::PrivateUnsafe {
            path: path.to_path_buf(),
            why,
            fix: fix.clone(),
        };
        let open = |path: &Path, source| CacheError::Open {
            path: path.to_path_buf(),
            source,
        };
        // The root as its admin named it: a link there is the admin's, followed.
        let root = fs::metadata(&self.root).map_err(|e| open(&self.root, e))?;
        if root.mode() & 0o1000 == 0 {
            return Err(not_safe(
                &self.root,
                "is not sticky, so any member may rename `private/` away".into(),
            ));
        }
        let parent = self.root.join(PRIVATE_DIR);
        let m = match fs::symlink_metadata(&parent) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_safe(&parent, "does not exist".into()));
            }
            Err(e) => return Err(open(&parent, e)),
        };
        if !m.file_type().is_dir() {
            return Err(not_safe(
                &parent,
                "is not a directory (a link or a file put there)".into(),
            ));
        }
        if m.uid() != root.uid() && m.uid() != 0 {
            return Err(not_safe(
                &parent,
                format!(
                    "belongs to uid {}, not to the cache's owner (uid {}), so that user may rename anyone's private cache in it",
                    m.uid(),
                    root.uid()
                ),
            ));
        }
        if has_acl(&parent) {
            return Err(not_safe(
                &parent,
                "has an access control list (ACL), which may let others in whatever its mode says, and which every private cache made in it inherits".into(),
            ));
        }
        let mode = m.mode() & 0o7777;
        if mode & 0o1000 == 0 || mode & 0o047 != 0 {
            return Err(not_safe(
                &parent,
                format!(
                    "has mode {mode:04o}, which lets members rename one another's private caches, or list them, or lets others in (it must be {PRIVATE_DIR_MODE:04o})"
                ),
            ));
        }
        Ok(())
    }

    /// What is wrong with the directories the cache's root lies in, for `doctor`: one that
    /// users other than its owner may write and that is not sticky lets them rename the
    /// whole cache away and put one of their own in its place (its `private/` then theirs,
    /// and every name answered from it). Checks the directory holding the root as named
    /// and as resolved (a link there is the admin's). `None` when both are safe.
    pub fn root_parent_problem(&self) -> Option<String> {
        let resolved = fs::canonicalize(&self.root).ok();
        [Some(self.root.clone()), resolved]
            .into_iter()
            .flatten()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .find_map(|parent| {
                let m = fs::metadata(&parent).ok()?;
                let mode = m.mode() & 0o7777;
                (mode & 0o022 != 0 && mode & 0o1000 == 0).then(|| {
                    format!(
                        "`{}` (mode {mode:04o}) lets users other than its owner rename the cache itself away and put one of their own in its place; make it sticky (`chmod +t`) or writable by its owner only",
                        parent.display()
                    )
                })
            })
    }

    /// Remove any access control list from this shared cache's `private/` (`init
    /// --shared`: a `private/` a member made may carry one that lets them into every
    /// private cache made in it). Best effort: a caller who may not change it leaves it,
    /// and [`Cache::private_chain`] refuses it.
    pub fn clear_private_dir_acls(&self) {
        let Ok(c) = path_cstr(&self.root.join(PRIVATE_DIR)) else {
            return;
        };
        for name in ACL_XATTRS {
            // SAFETY: valid NUL-terminated strings; lremovexattr does not follow a link.
            unsafe { libc::lremovexattr(c.as_ptr(), name.as_ptr()) };
        }
    }

    /// Make this shared cache's `private/` ([`PRIVATE_DIR_MODE`], the cache's group) if it
    /// is not there (`init --shared`); one that is there is left for
    /// [`Cache::private_chain`] to judge.
    pub fn make_private_dir(&self) -> Result<(), CacheError> {
        make_private_parent(&self.root.join(PRIVATE_DIR), self.settings.gid)
    }

    /// The caller's private cache, made if it is not there yet (see the module's doc);
    /// `None` for a cache that is not shared. Refused unless the chain above it holds.
    pub fn make_own_private(&self) -> Result<Option<Cache>, CacheError> {
        let Some(dir) = self.own_private_root() else {
            return Ok(None);
        };
        let parent = self.root.join(PRIVATE_DIR);
        // A cache shared before `init --shared` made `private/`: its owner (or root) may
        // make it on a first private pull; nobody else, who would then own it.
        if matches!(fs::symlink_metadata(&parent), Err(e) if e.kind() == io::ErrorKind::NotFound)
            && fs::metadata(&self.root).is_ok_and(|m| m.uid() == euid() || euid() == 0)
        {
            make_private_parent(&parent, self.settings.gid)?;
        }
        self.private_chain()?;
        if let Some(c) = self.find_own_private(true)? {
            return Ok(Some(c));
        }
        match fs::DirBuilder::new().mode(OWN_MODE).create(&dir) {
            Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(OWN_MODE))
                .map_err(|e| layout(&dir, e))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(layout(&dir, e)),
        }
        // Checked again: what is there now may be another's, made before or in between.
        self.find_own_private(true)
    }

    fn private_at(&self, dir: &Path) -> Result<Cache, CacheError> {
        let mut c = Cache::open(dir, self.lock_opts.clone())?;
        c.private = true;
        if c.settings.shared {
            return Err(not_own(dir, "it is set up as a shared cache"));
        }
        Ok(c)
    }

    /// Whether this is the caller's private cache inside a shared one.
    pub fn is_private(&self) -> bool {
        self.private
    }
}

/// The extended attributes that hold POSIX ACLs.
const ACL_XATTRS: [&std::ffi::CStr; 2] = [c"system.posix_acl_access", c"system.posix_acl_default"];

fn path_cstr(p: &Path) -> Result<std::ffi::CString, std::ffi::NulError> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
}

/// Whether `p` (not followed) carries an access or default ACL.
fn has_acl(p: &Path) -> bool {
    let Ok(c) = path_cstr(p) else {
        return false;
    };
    ACL_XATTRS.iter().any(|name| {
        // SAFETY: valid NUL-terminated strings; a null buffer of size 0 asks the size.
        unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) > 0 }
    })
}

fn layout(path: &Path, source: io::Error) -> CacheError {
    CacheError::Layout {
        path: path.to_path_buf(),
        source,
    }
}

/// Make `private/` (`parent`), of mode [`PRIVATE_DIR_MODE`] and group `gid`; one that is
/// there already is left for [`Cache::private_chain`] to judge.
fn make_private_parent(parent: &Path, gid: Option<u32>) -> Result<(), CacheError> {
    match fs::DirBuilder::new().mode(0o700).create(parent) {
        // Group and mode through a descriptor: in a cache whose root is not yet sticky a
        // member could swap the new directory for a link before they are given.
        Ok(()) => super::dirs::set_up_new_dir(parent, gid, PRIVATE_DIR_MODE)
            .map_err(|e| layout(parent, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(layout(parent, e)),
    }
}

fn not_own(dir: &Path, detail: &str) -> CacheError {
    CacheError::NotOwnPrivate {
        path: dir.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// `m` (of `dir`, not followed) is a directory of the caller's that only the caller may
/// enter.
fn check_own(dir: &Path, m: &fs::Metadata) -> Result<(), CacheError> {
    if !m.file_type().is_dir() {
        return Err(not_own(dir, "it is not a directory"));
    }
    if m.uid() != euid() {
        return Err(not_own(
            dir,
            &format!("it belongs to uid {}, not to you ({})", m.uid(), euid()),
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(not_own(
            dir,
            &format!(
                "its mode {:04o} lets others in (it must be 0700)",
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}
