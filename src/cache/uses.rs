//! Use markers: how a `get` records its use when it cannot write the index.
//!
//! # Protocol
//!
//! gc must not remove an image that a `get` has just printed, yet a `get` must not wait
//! for a writer (a gc can hold the exclusive index lock for a second or two, and a
//! thousand jobs may ask at once). So the use is recorded outside the index, in a small
//! file per name, `v1/uses/<first 32 hex of BLAKE3(name)>`, holding the time in seconds
//! (20 digits, then the name):
//!
//! * `get` writes the marker **while it holds the shared index lock**, whenever the
//!   index's last use of the name is older than [`crate::cache::index::LAST_USE_RESOLUTION`]
//!   and the marker's is too. The shared lock excludes gc's exclusive one, so a gc either
//!   ran before the `get` looked the name up (and the `get` then found the name, or did
//!   not), or runs after the marker was written and sees it.
//! * After releasing the shared lock, `get` tries the exclusive lock without waiting; if
//!   it gets it, it writes the time into the index and removes the marker (under that
//!   lock). If not, the marker stays for the next writer to fold in.
//! * gc, under the exclusive lock, reads every marker (and, for each name it is about to
//!   remove, that name's marker by its path again), counts the later of the index's time
//!   and the marker's as the name's last use, writes the marker times into the index,
//!   commits, and removes the markers it folded in while it still holds the lock.
//!
//! Every write of a marker is the same length at offset 0, so a reader sees one whole
//! time or another. A marker that cannot be read counts as absent; one that cannot be
//! written (a user who may only read the cache) leaves the use unrecorded, as before.
//! Nothing here takes a lock: callers hold the index lock as described.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Digits of the time at the start of a marker.
const TIME_DIGITS: usize = 20;

/// The markers of one cache (`v1/uses/`).
#[derive(Clone, Debug)]
pub(super) struct UseMarkers {
    dir: PathBuf,
    file_mode: u32,
    dir_mode: u32,
}

impl UseMarkers {
    pub(super) fn new(v1: &Path, file_mode: u32, dir_mode: u32) -> UseMarkers {
        UseMarkers {
            dir: v1.join("uses"),
            file_mode,
            dir_mode,
        }
    }

    /// The marker file name of `key`.
    pub(super) fn file_name(key: &str) -> String {
        let h = blake3::hash(key.as_bytes()).to_hex();
        h.as_str()[..32].to_string()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(Self::file_name(key))
    }

    /// The time recorded for `key`, if any.
    pub(super) fn read(&self, key: &str) -> Option<u64> {
        read_time(&self.path(key))
    }

    /// Record a use of `key` at `now` unless the marker already says a time within
    /// `resolution` of it. The caller holds the shared (or exclusive) index lock.
    pub(super) fn record(&self, key: &str, now: u64, resolution: u64) -> io::Result<()> {
        let path = self.path(key);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(self.file_mode)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Never made or chmoded through a link a member put there (`super::dirs`).
                super::dirs::make_dir(&self.dir, self.dir_mode)?;
                open()?
            }
            r => r?,
        };
        let mut buf = [0u8; TIME_DIGITS];
        if file.read_exact_at(&mut buf, 0).is_ok()
            && parse_time(&buf).is_some_and(|t| now.saturating_sub(t) < resolution && t <= now)
        {
            return Ok(());
        }
        // Explicit mode whatever the umask, so other members of a shared cache can write it.
        if file.metadata()?.permissions().mode() & 0o777 != self.file_mode & 0o777 {
            let _ = file.set_permissions(fs::Permissions::from_mode(self.file_mode));
        }
        let line = format!("{now:0w$} {key}\n", w = TIME_DIGITS);
        file.write_all_at(line.as_bytes(), 0)?;
        file.set_len(line.len() as u64)
    }

    /// Every marker: file name -> time. Unreadable markers are left out.
    pub(super) fn all(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(t) = read_time(&e.path()) {
                out.insert(name, t);
            }
        }
        out
    }

    /// Remove the marker of `key` if it says no later than `folded` (the caller holds the
    /// exclusive index lock and has just committed `folded` as the name's last use).
    pub(super) fn remove_folded(&self, key: &str, folded: u64) {
        self.remove_file_folded(&Self::file_name(key), folded);
    }

    /// [`UseMarkers::remove_folded`] by file name.
    pub(super) fn remove_file_folded(&self, file_name: &str, folded: u64) {
        let path = self.dir.join(file_name);
        if read_time(&path).is_none_or(|t| t <= folded) {
            let _ = fs::remove_file(path);
        }
    }
}

fn parse_time(buf: &[u8]) -> Option<u64> {
    std::str::from_utf8(buf).ok()?.parse().ok()
}

fn read_time(path: &Path) -> Option<u64> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let mut buf = [0u8; TIME_DIGITS];
    file.read_exact_at(&mut buf, 0).ok()?;
    parse_time(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_use_reads_back_and_a_fresh_one_is_not_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let m = UseMarkers::new(d.path(), 0o644, 0o755);
        assert_eq!(m.read("lab/a:1"), None);
        m.record("lab/a:1", 1000, 600).unwrap();
        assert_eq!(m.read("lab/a:1"), Some(1000));
        m.record("lab/a:1", 1500, 600).unwrap();
        assert_eq!(m.read("lab/a:1"), Some(1000), "within the resolution");
        m.record("lab/a:1", 1600, 600).unwrap();
        assert_eq!(m.read("lab/a:1"), Some(1600));
        let all = m.all();
        assert_eq!(all.get(&UseMarkers::file_name("lab/a:1")), Some(&1600));
    }

    #[test]
    fn a_marker_newer_than_the_folded_time_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let m = UseMarkers::new(d.path(), 0o644, 0o755);
        m.record("lab/a:1", 2000, 600).unwrap();
        m.remove_folded("lab/a:1", 1999);
        assert_eq!(m.read("lab/a:1"), Some(2000));
        m.remove_folded("lab/a:1", 2000);
        assert_eq!(m.read("lab/a:1"), None);
    }
}
