//! How much a download may write into the cache, and how much free space it must leave.
//!
//! A remote that declares its size (a manifest, `Content-Length`, an S3 object's size) is
//! held to it. One that declares none is held to [`Limits::max_download`]
//! (`SREGISTRY_MAX_DOWNLOAD`, default 64 GiB). Whatever it declared, a download stops when
//! the filesystem of the cache's `tmp/` would keep less than [`Limits::min_free`]
//! (`SREGISTRY_MIN_FREE`, default 1 GiB): an endless or oversized body fails with a clear
//! error and its partial file is removed, instead of filling the disk that every job on
//! the node shares. `sregistry doctor` reports both.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Environment variable: the most a download that declares no size may write.
pub const MAX_DOWNLOAD_ENV: &str = crate::settings::MAX_DOWNLOAD.var;
/// Environment variable: the free space a download must leave on the cache's filesystem.
pub const MIN_FREE_ENV: &str = crate::settings::MIN_FREE.var;
/// Default for [`Limits::max_download`].
pub const DEFAULT_MAX_DOWNLOAD: u64 = 64 << 30;
/// Default for [`Limits::min_free`].
pub const DEFAULT_MIN_FREE: u64 = 1 << 30;

/// The bounds every download is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most a download that declared no size may write.
    pub max_download: u64,
    /// The free space a download must leave on the filesystem of `tmp/`.
    pub min_free: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_download: DEFAULT_MAX_DOWNLOAD,
            min_free: DEFAULT_MIN_FREE,
        }
    }
}

impl Limits {
    /// The bounds of the configuration (`max_download`, `min_free`: files,
    /// `SREGISTRY_MAX_DOWNLOAD`, `SREGISTRY_MIN_FREE`; sizes: `500M`, `10G`, `0`).
    pub fn from_config(c: &crate::settings::Config) -> Limits {
        Limits {
            max_download: c.max_download,
            min_free: c.min_free,
        }
    }
}

/// Free (for this user) and total bytes of the filesystem holding `path`.
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
