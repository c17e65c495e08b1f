//! Settings recorded in the cache itself (`v1/settings.json`), so that every later
//! command, by any user, keeps them: the modes new files and directories get, and the
//! group of a shared cache.
//!
//! Written by `sregistry init` when it creates a cache or shares one (a plain `init`
//! never changes an existing cache's settings); read (one small file) by every command
//! that opens the cache. A cache without the file uses private defaults (0755 directories, 0644
//! index and lock files). Blobs are always 0444.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name under `v1/`.
pub(super) const FILE: &str = "settings.json";

/// The recorded settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// A group cache made with `init --shared`.
    #[serde(default)]
    pub shared: bool,
    /// Group name and id of a shared cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Mode of directories the cache creates (e.g. `0o2775`: setgid, group-writable).
    pub dir_mode: u32,
    /// Mode of the index and lock files.
    pub file_mode: u32,
    /// A version `tier publish` made (`DEST/versions/<id>`): read only as a tier, never
    /// opened as a writable cache (`Cache::open` refuses it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub published: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            shared: false,
            group: None,
            gid: None,
            dir_mode: 0o755,
            file_mode: 0o644,
            published: false,
        }
    }
}

/// Settings that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the cache settings `{path}`: {detail} (fix or remove the file; `sregistry doctor` checks it)"
)]
pub struct SettingsError {
    pub path: PathBuf,
    pub detail: String,
}

impl SettingsError {
    /// The cache's settings file cannot be read or does not parse.
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Io
    }
}

impl Settings {
    /// Settings of a shared cache for group `gid`.
    pub fn shared(group: &str, gid: u32) -> Settings {
        Settings {
            shared: true,
            group: Some(group.to_string()),
            gid: Some(gid),
            dir_mode: 0o2775,
            file_mode: 0o664,
            published: false,
        }
    }

    /// Read `v1/settings.json`, or the defaults when there is none.
    pub fn load(v1: &Path) -> Result<Settings, SettingsError> {
        let path = v1.join(FILE);
        // Without waiting on a FIFO or following a link a member put there (found by a
        // hostile test: a FIFO hung every command, `doctor` and root's `init` too).
        let read = || -> io::Result<Vec<u8>> {
            use std::io::Read;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(&path)?;
            if !f.metadata()?.is_file() {
                return Err(io::Error::other(
                    "it is not a regular file (a member may have put it there; `sregistry init --shared` by the cache's owner writes it again)",
                ));
            }
            let mut bytes = Vec::new();
            f.by_ref().take(1 << 20).read_to_end(&mut bytes)?;
            Ok(bytes)
        };
        match read() {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SettingsError {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(SettingsError {
                path,
                detail: e.to_string(),
            }),
        }
    }

    /// Write `v1/settings.json` (mode: the file mode, like the index's).
    pub fn save(&self, v1: &Path) -> io::Result<()> {
        let path = v1.join(FILE);
        let tmp = v1.join(format!(".{FILE}.tmp"));
        let body = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        // A new file, never through a link a member put at the temporary name (root's
        // `init` would write and chmod what it names), its mode set on the descriptor.
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.set_permissions(fs::Permissions::from_mode(self.file_mode))?;
        drop(f);
        fs::rename(&tmp, &path)
    }
}
