//! The cache's directories: created on first write, and listed for the checks of modes
//! and access that `init --shared` and `doctor` make.
//!
//! # Protocol
//!
//! * [`Cache::ensure_layout`] creates what is missing (root, `v1/`, `locks/`,
//!   `quarantine/`, `blobs/`, `tmp/`, `CACHEDIR.TAG`), each directory with the settings'
//!   mode, and makes the new entries durable before any blob or name relies on them. It
//!   takes no lock: creating a directory that exists is harmless, and every later step
//!   checks what it needs under the index lock.
//! * [`Cache::own_paths`] lists the cache's own entries (the root, `CACHEDIR.TAG` and
//!   everything under `v1/`), directories before their contents, symlinks not followed.
//!   It reads directory listings only: callers change groups and modes of what it lists
//!   (`init --shared`), never their contents.
//! * [`Cache::recorded_settings`] tells a directory that holds a cache (its tag, index or
//!   settings) from one that does not, without creating anything.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::settings::{Settings, SettingsError};
use super::{CACHEDIR_TAG, Cache, CacheError};

impl Cache {
    /// Create the directory layout and `CACHEDIR.TAG` if they are missing.
    pub fn ensure_layout(&self) -> Result<(), CacheError> {
        if self.tier.is_some() {
            return Err(super::IndexError::TierWrite {
                path: self.index.db_path().to_path_buf(),
            }
            .into());
        }
        let layout = |path: &Path| {
            let p = path.to_path_buf();
            move |source| CacheError::Layout { path: p, source }
        };
        // Each a directory itself: nothing is written through a link (`super::dirs`).
        if self.store.real_layout().map_err(layout(&self.v1))? {
            return Ok(());
        }
        // The root may be a link its admin made (`/shared/containers` -> `/gpfs/...`).
        if !self.root.is_dir() {
            fs::create_dir_all(&self.root).map_err(layout(&self.root))?;
            let _ = fs::set_permissions(
                &self.root,
                fs::Permissions::from_mode(self.settings.dir_mode),
            );
        }
        for dir in [
            self.v1.clone(),
            self.v1.join("locks"),
            self.v1.join("quarantine"),
        ] {
            super::dirs::make_dir(&dir, self.settings.dir_mode).map_err(layout(&dir))?;
        }
        self.store.create_dirs().map_err(layout(&self.v1))?;
        // Made new, never written through a link a member put at its name.
        let tag = self.root.join("CACHEDIR.TAG");
        if fs::symlink_metadata(&tag).is_err() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tag)
            {
                Ok(mut f) => f.write_all(CACHEDIR_TAG.as_bytes()).map_err(layout(&tag))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(layout(&tag)(e)),
            }
        }
        // The new entries durable, deepest first, before any blob or name relies on them.
        // A directory this user may not read (a root another user made, mode 0711) cannot
        // be opened to be synced; its owner's creation of it is what made it.
        let blobs_parent = self.store.blobs_dir().parent().unwrap_or(&self.v1);
        for dir in [blobs_parent, self.v1.as_path(), self.root.as_path()] {
            match super::store::sync_dir(dir) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                r => r.map_err(layout(dir))?,
            }
        }
        Ok(())
    }

    /// Whether anything was ever written here (the format directory exists).
    pub fn exists(&self) -> bool {
        self.v1.is_dir()
    }

    /// The cache's own entries: the root, `CACHEDIR.TAG` and everything under `v1/`,
    /// directories before their contents (some may not exist). Nothing else a cache's root
    /// directory may hold (`lost+found`) belongs to the cache.
    pub fn own_paths(&self) -> Vec<PathBuf> {
        let mut out = vec![self.root.clone(), self.root.join("CACHEDIR.TAG")];
        // A shared cache's `private/` itself, never what is in it (each user's own).
        if self.settings.shared {
            out.push(self.root.join(super::PRIVATE_DIR));
        }
        out.extend(walk(&self.v1));
        out
    }

    /// Mode and group of `v1/` when it is laid out for a group (setgid and
    /// group-writable), whatever the settings say; `None` otherwise.
    pub fn group_layout(&self) -> Option<(u32, u32)> {
        let meta = fs::metadata(&self.v1).ok()?;
        let mode = meta.permissions().mode() & 0o7777;
        (mode & 0o2020 == 0o2020).then_some((mode, meta.gid()))
    }

    /// The settings of the cache at `root` when the directory holds one (its
    /// `CACHEDIR.TAG`, index or settings file); `None` when it holds none of them.
    /// Creates nothing.
    pub fn recorded_settings(root: &Path) -> Result<Option<Settings>, SettingsError> {
        let probe = Cache::with_settings(root, Default::default(), Settings::default());
        let tagged = fs::read_to_string(root.join("CACHEDIR.TAG"))
            .is_ok_and(|t| t.contains("created by sregistry"));
        if tagged || probe.index_path().exists() || probe.settings_path().exists() {
            return Ok(Some(Settings::load(&probe.v1)?));
        }
        Ok(None)
    }
}

/// Every path under `root` (root included), directories before their contents; symlinks
/// are listed, not followed.
fn walk(root: &Path) -> Vec<PathBuf> {
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
