//! `add`: a file checked, staged into `tmp/` and hashed before the index lock is taken,
//! then committed through the one commit path ([`super::commit`]). See "`add --move`
//! never loses or shares the user's file" in [`super`]: a moved file is hard-linked into
//! `tmp/` and its path unlinked only after the name is committed; its inode is handed
//! over only under a [`MoveClaim`], otherwise it is copied.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::store::{self, Staged, Store, StoreError};
use super::{
    Cache, CacheError, Entry, ProgressHook, Provenance, Repoint, Settings, refuse_digest_on_target,
};
use crate::format::reference::Reference;
use crate::testhook;

/// Options of [`Cache::add`].
#[derive(Clone, Debug, Default)]
pub struct AddOptions {
    /// Rename the file in when it is on the cache's filesystem.
    pub move_file: bool,
    /// Whether a pinned name may be re-pointed.
    pub repoint: Repoint,
    pub labels: BTreeMap<String, String>,
    /// What to record as the source (defaults to the absolute source path).
    pub source: Option<String>,
    pub media_type: Option<String>,
    /// Told how the copy advances (bytes copied of the file's size), and can stop it: the
    /// copy in `tmp/` is removed and nothing is stored; `None` tells nobody. A file moved in
    /// by hard link is not copied, and tells nothing.
    pub progress: Option<ProgressHook>,
    /// With `move_file`: told when the name is committed but the file's path could not be
    /// removed (its directory not writable, a read-only filesystem). The image is in the
    /// cache and the user's file is still at its path; `None` tells nobody.
    pub not_removed: Option<NotRemoved>,
}

/// Told `(path, why)` when a moved file's name is committed but its path could not be
/// removed ([`AddOptions::not_removed`]).
#[derive(Clone)]
pub struct NotRemoved(pub std::sync::Arc<NotRemovedFn>);

/// The function behind [`NotRemoved`].
pub type NotRemovedFn = dyn Fn(&Path, &io::Error) + Send + Sync;

impl std::fmt::Debug for NotRemoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NotRemoved(..)")
    }
}

/// A file checked and staged in `tmp/` for a name, not yet committed (the first half of
/// [`Cache::add`]). Dropped, it removes the staged file and gives a moved file its mode
/// back.
pub(super) struct PreparedAdd {
    pub(super) staged: Staged,
    /// The name, without a digest.
    pub(super) name: Reference,
    pub(super) prov: Provenance,
    pub(super) repoint: Repoint,
    pub(super) moved: Option<MovedFile>,
}

/// The user's file of an `add --move`, removed only once its name is committed.
pub(super) struct MovedFile {
    pub(super) src: PathBuf,
    pub(super) dev: u64,
    pub(super) ino: u64,
    claim: Option<MoveClaim>,
    /// Told when the path cannot be removed.
    pub(super) not_removed: Option<NotRemoved>,
}

impl MovedFile {
    /// The name is committed: the file is the cache's. Leave its inode read-only (when it
    /// was handed over) and remove the user's path, but only if it still holds the file
    /// that was added, not one put there since. A path that cannot be removed is told to
    /// [`AddOptions::not_removed`].
    pub(super) fn release(self) {
        if let Some(c) = self.claim {
            c.keep();
        }
        if fs::symlink_metadata(&self.src).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
        {
            match fs::remove_file(&self.src) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    if let Some(told) = &self.not_removed {
                        (told.0)(&self.src, &e);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The right to hand a user's file to the cache by hard link (`add --move`), taken only
/// when nobody else can change the file afterwards: it has no other hard link, it is on
/// the cache's filesystem, it is now read-only (mode 0444, set here, which needs the
/// caller to own it), and no process has it open for writing (a read lease, which the
/// kernel grants only then, is taken and released at once; where a filesystem grants no
/// leases, as NFS often does not, the file is copied instead). Dropping the claim gives
/// the file its mode back; [`MoveClaim::keep`] leaves it read-only, as a blob is.
pub(super) struct MoveClaim {
    pub(super) file: fs::File,
    /// The mode to give back on drop; `None` once kept.
    pub(super) mode: Option<u32>,
}

impl MoveClaim {
    pub(super) fn take(
        src: &Path,
        file: &fs::File,
        meta: &fs::Metadata,
        store: &Store,
        settings: &Settings,
    ) -> Option<MoveClaim> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;
        let same_fs = fs::metadata(store.tmp_dir()).is_ok_and(|t| t.dev() == meta.dev());
        // A shared cache's blobs belong to its group; a file of another group is copied
        // (which gives the copy the cache's group) rather than re-grouped.
        let group_ok = !settings.shared || settings.gid.is_none_or(|g| g == meta.gid());
        if meta.nlink() != 1 || !same_fs || !group_ok {
            return None;
        }
        // A path that could not be removed after the commit would stay a second link to
        // the blob, which its owner could make writable again: a file whose directory we
        // cannot write is copied.
        let dir = match src.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: access reads a NUL-terminated string that outlives the call.
        if unsafe { libc::access(dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return None;
        }
        let file = file.try_clone().ok()?;
        let claim = MoveClaim {
            mode: Some(meta.mode() & 0o7777),
            file,
        };
        claim
            .file
            .set_permissions(fs::Permissions::from_mode(store::BLOB_MODE))
            .ok()?;
        let fd = claim.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this function owns; no pointers are passed.
        if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
            return None;
        }
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        // A link made before the mode changed would still let its owner in.
        claim.file.metadata().ok().filter(|m| m.nlink() == 1)?;
        Some(claim)
    }

    /// The file is the cache's now: leave it read-only.
    pub(super) fn keep(mut self) {
        self.mode = None;
    }
}

impl Drop for MoveClaim {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(mode) = self.mode {
            let _ = self.file.set_permissions(fs::Permissions::from_mode(mode));
        }
    }
}

impl Cache {
    /// Add the file at `src` under `name`; returns the new entry. The copy (or rename)
    /// and the hashing happen before the index lock is taken.
    pub fn add(
        &self,
        src: &Path,
        name: &Reference,
        opts: &AddOptions,
    ) -> Result<Entry, CacheError> {
        let p = self.prepare_add(src, name, opts, true)?;
        // On an error from here on, `staged` removes its file in `tmp/` and the move's
        // claim gives the user's file its mode back.
        let entry = self.commit_staged(p.staged, Vec::new(), &p.name, p.prov, p.repoint)?;
        if let Some(moved) = p.moved {
            testhook::pause("add-move-committed");
            moved.release();
        }
        Ok(entry)
    }

    /// The first half of [`Cache::add`] and of [`Cache::add_many`]: every check of the
    /// file and the name, then the copy (or, for `--move`, the hard link) into `tmp/` and
    /// the hashing, all before the index lock. Nothing is committed; dropping the result
    /// removes the staged file and gives a moved file its mode back. With `defer_sync`
    /// the staged file's fsync is left to the commit ([`Staged::place_in_background`]).
    pub(super) fn prepare_add(
        &self,
        src: &Path,
        name: &Reference,
        opts: &AddOptions,
        defer_sync: bool,
    ) -> Result<PreparedAdd, CacheError> {
        refuse_digest_on_target(name)?;
        let name = name.without_digest();
        let open_err = |source| CacheError::Open {
            path: src.to_path_buf(),
            source,
        };
        if opts.move_file
            && fs::symlink_metadata(src)
                .map_err(open_err)?
                .file_type()
                .is_symlink()
        {
            return Err(CacheError::MoveSymlink {
                path: src.to_path_buf(),
            });
        }
        // O_NONBLOCK: opening a FIFO must not hang waiting for a writer.
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(src)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let what = if ft.is_dir() {
                "a directory"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() || ft.is_char_device() {
                "a device"
            } else {
                "not a file"
            };
            return Err(CacheError::NotAFile {
                path: src.to_path_buf(),
                what,
            });
        }
        if meta.len() == 0 {
            return Err(CacheError::Empty {
                path: src.to_path_buf(),
            });
        }
        if opts.move_file && self.contains(src) {
            return Err(CacheError::MoveFromCache {
                path: src.to_path_buf(),
                cache: self.root.clone(),
            });
        }
        self.ensure_layout()?;
        let abs_src = std::path::absolute(src).unwrap_or_else(|_| src.to_path_buf());
        // --move hands the file's inode to the cache only when nobody else can write it
        // ([`MoveClaim`]); otherwise it copies. Either way the user's path keeps the file
        // until the name is committed, and is removed only after that.
        let mut claim = None;
        let staged = match opts
            .move_file
            .then(|| MoveClaim::take(src, &file, &meta, &self.store, &self.settings))
        {
            Some(Some(c)) => match self.store.stage_link(src, defer_sync) {
                Ok(s) => {
                    claim = Some(c);
                    s
                }
                Err(StoreError::CrossDevice { .. } | StoreError::NoLink { .. }) => {
                    drop(c);
                    self.store.stage_file(
                        &mut file,
                        src,
                        Some(meta.len()),
                        opts.progress.as_ref(),
                        defer_sync,
                    )?
                }
                Err(e) => return Err(e.into()),
            },
            _ => self.store.stage_file(
                &mut file,
                src,
                Some(meta.len()),
                opts.progress.as_ref(),
                defer_sync,
            )?,
        };
        let source = opts
            .source
            .clone()
            .unwrap_or_else(|| abs_src.display().to_string());
        Ok(PreparedAdd {
            staged,
            name,
            prov: Provenance {
                source,
                labels: opts.labels.clone(),
                media_type: opts.media_type.clone(),
                remote_digest: None,
            },
            repoint: opts.repoint,
            moved: opts.move_file.then(|| MovedFile {
                src: src.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
                claim,
                not_removed: opts.not_removed.clone(),
            }),
        })
    }

    /// Whether `path` lies inside this cache's directory (after resolving links).
    pub(super) fn contains(&self, path: &Path) -> bool {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match (fs::canonicalize(&self.root), fs::canonicalize(parent)) {
            (Ok(root), Ok(dir)) => dir.starts_with(root),
            _ => false,
        }
    }
}
