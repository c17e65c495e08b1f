//! Private caches inside a shared one (issue 23, "private images stay private").
//!
//! An image that needed credentials to pull never enters a shared cache: it goes to the
//! puller's own private cache, a whole cache (index, journal, blobs, locks, `tmp/`) at
//! `<shared cache>/private/<uid>/`, a directory of mode 0700 that belongs to that user.
//! Nothing of it passes through the shared index, the shared blobs or the shared `tmp/`,
//! so no other member can reach it by name, by digest, by path or through a shared layer
//! (docs/shared-cache.md, "Private images", gives the reasons for this layout).
//!
//! * [`Cache::own_private`] finds the caller's private cache: for a cache that is not
//!   shared, nothing at all (no system call); for a shared one, one `lstat` of
//!   `private/<uid>` (which fails with `ENOENT` for a user who never pulled a private
//!   image, the whole cost of a `get` for everyone else). A directory there of the
//!   caller's that others may enter is refused; one that another user owns is passed
//!   over by lookups (it cannot hold the caller's images) and refused by a pull, never
//!   used: another member could have made it to read what the caller pulls.
//! * [`Cache::make_own_private`] creates it on a private pull's first need:
//!   `private/` (setgid and sticky, `3730`: members may create their own directory and
//!   enter it, but neither list nor rename nor remove another's), then `private/<uid>`
//!   (0700).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Cache, CacheError};

/// The directory of the private caches, under a shared cache's root.
pub const PRIVATE_DIR: &str = "private";
/// Mode of `private/`: setgid, sticky, the owner everything, the group write and search
/// (create one's own directory, enter it), others nothing.
const PARENT_MODE: u32 = 0o3730;
/// Mode of `private/<uid>`.
const OWN_MODE: u32 = 0o700;

/// The effective user id of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

impl Cache {
    /// Where the caller's private cache is (or would be), for a shared cache; `None` for
    /// a cache that is not shared, which has no private caches.
    pub fn own_private_root(&self) -> Option<PathBuf> {
        self.settings
            .shared
            .then(|| self.root.join(PRIVATE_DIR).join(euid().to_string()))
    }

    /// The caller's private cache, if this cache is shared and the caller has one; one
    /// `lstat` (none for a cache that is not shared). Refused when the directory is not
    /// the caller's own, or when group or others may enter it.
    pub fn own_private(&self) -> Result<Option<Cache>, CacheError> {
        self.find_own_private(false)
    }

    /// [`Cache::own_private`]; with `strict`, a directory there that another user owns is
    /// refused too, else it is passed over (it cannot hold the caller's images, and a
    /// member who made one must not stop every `get` of the caller's).
    fn find_own_private(&self, strict: bool) -> Result<Option<Cache>, CacheError> {
        let Some(dir) = self.own_private_root() else {
            return Ok(None);
        };
        match fs::symlink_metadata(&dir) {
            Ok(m) if !strict && m.uid() != euid() => Ok(None),
            Ok(m) => {
                check_own(&dir, &m)?;
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
            // `private` is not a directory (a file, a link loop, put there by a member):
            // it holds nobody's images, and must not stop every lookup in the cache.
            Err(_) if !strict => Ok(None),
            Err(source) => Err(CacheError::Open { path: dir, source }),
        }
    }

    /// The caller's private cache, made if it is not there yet (see the module's doc);
    /// `None` for a cache that is not shared.
    pub fn make_own_private(&self) -> Result<Option<Cache>, CacheError> {
        if let Some(c) = self.find_own_private(true)? {
            return Ok(Some(c));
        }
        let Some(dir) = self.own_private_root() else {
            return Ok(None);
        };
        let parent = self.root.join(PRIVATE_DIR);
        let layout = |path: &Path, source| CacheError::Layout {
            path: path.to_path_buf(),
            source,
        };
        // A link or anything else at `private` (a member can put one there) is never
        // followed: the pull would write wherever it points.
        match fs::symlink_metadata(&parent) {
            Ok(m) if !m.file_type().is_dir() => {
                return Err(not_own(
                    &parent,
                    "it is not a directory (a link or a file put there); the cache's owner removes it and runs `sregistry init --shared` again",
                ));
            }
            _ => {}
        }
        match fs::DirBuilder::new().mode(0o700).create(&parent) {
            Ok(()) => {
                if let Some(gid) = self.settings.gid {
                    std::os::unix::fs::chown(&parent, None, Some(gid))
                        .map_err(|e| layout(&parent, e))?;
                }
                fs::set_permissions(&parent, fs::Permissions::from_mode(PARENT_MODE))
                    .map_err(|e| layout(&parent, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(layout(&parent, e)),
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
