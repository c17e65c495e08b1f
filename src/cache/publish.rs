//! Publishing a tier (`sregistry tier publish SRC DEST`): a cache an admin filled becomes
//! a new version of the read-only tier at `DEST`, which readers see whole or not at all.
//!
//! # Protocol
//!
//! ```text
//! DEST/current                    -> versions/<id>   (a symbolic link, replaced by rename)
//! DEST/versions/<id>/CACHEDIR.TAG
//! DEST/versions/<id>/v1/index.redb, settings.json, blobs/blake3/ab/<hex>
//! DEST/.partial/<id>/             a version being written (never read)
//! DEST/.publish.lock              one publisher at a time
//! ```
//!
//! 1. Under `DEST/.publish.lock` (exclusive) and SRC's shared index lock (so no writer
//!    commits to SRC meanwhile, and SRC's index is a clean, closed file), every blob SRC's
//!    index records and the index itself are copied into `DEST/.partial/<id>/`: a blob
//!    the current version already holds is hard-linked from it (same content, same
//!    name; blobs are never changed), any other copied; mode 0444, each file fsynced,
//!    each directory fsynced. Nothing else of SRC is copied (`tmp/`, `locks/`, use
//!    markers, the journal, `quarantine/`).
//! 2. The copied index is opened as a tier's is (read-only, no lock): a copy redb would
//!    have to repair is refused here, not by every reader later.
//! 3. `.partial/<id>` is renamed to `versions/<id>`, then a new link `.current.new` is
//!    renamed over `current`, and `DEST` fsynced. A rename is atomic: a reader resolves
//!    `current` to the old version or the new one, never to a mix.
//! 4. A reader ([`super::Cache::open_tier`]) resolves `current` once per handle, so the
//!    index it reads and every path it hands out are of one version.
//!
//! # Old versions
//!
//! A path `get` printed (`DEST/versions/<id>/v1/blobs/...`) may be used by a job for
//! hours. A version is removed only by a later publish, and only when its successor was
//! published more than `keep` ago (default 7 days, `--keep`): that long after a version
//! stopped being current, no `get` can have handed out one of its paths more recently.
//! `.partial/` leftovers of a killed publish older than `keep` go the same way. On CVMFS
//! the same command runs inside a transaction (`cvmfs_server transaction` ... `publish`),
//! which makes the whole change appear at once; the versions still keep paths handed out
//! before it valid.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::lock::{self, LockOptions, Mode};
use super::store::{BLOB_MODE, sync_dir};
use super::{CACHEDIR_TAG, Cache, CacheError, FORMAT_DIR};
use crate::format::clock;

/// The link readers follow to the current version.
pub const CURRENT: &str = "current";
/// The directory holding every published version.
pub const VERSIONS: &str = "versions";
const PARTIAL: &str = ".partial";
/// How long a version stays after it stopped being current, by default.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a publish did.
#[derive(Clone, Debug, Serialize)]
pub struct Published {
    /// The new version's directory (`DEST/versions/<id>`).
    pub version: PathBuf,
    /// Images (names) and blobs it holds, and their bytes.
    pub names: usize,
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs hard-linked from the version before (not copied again).
    pub linked: usize,
    /// Old versions (and leftovers of killed publishes) removed.
    pub removed: Vec<PathBuf>,
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> CacheError + '_ {
    move |source| CacheError::Layout {
        path: path.to_path_buf(),
        source,
    }
}

fn make_dir(dir: &Path) -> Result<(), CacheError> {
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_at(dir))
}

/// Copy `from` to `to` (which does not exist), read-only and fsynced.
fn copy_synced(from: &Path, to: &Path, mode: u32) -> Result<u64, CacheError> {
    let n = fs::copy(from, to).map_err(io_at(to))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io_at(to))?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io_at(to))?;
    Ok(n)
}

impl Cache {
    /// Publish this cache as a new version of the tier at `dest` (see the module's doc);
    /// versions that stopped being current more than `keep` ago are removed.
    pub fn publish_tier(
        &self,
        dest: &Path,
        keep: Duration,
        lock_opts: &LockOptions,
    ) -> Result<Published, CacheError> {
        make_dir(dest)?;
        let _publishing = lock::lock(&dest.join(".publish.lock"), Mode::Exclusive, lock_opts)
            .map_err(super::IndexError::from)?;
        let now = clock::now();
        let id = format!("{now:010}-{}", std::process::id());
        let partial = dest.join(PARTIAL).join(&id);
        let _ = fs::remove_dir_all(&partial);
        let result = self.fill_version(dest, &partial);
        let (names, blobs, bytes, linked) = match result {
            Ok(counts) => counts,
            Err(e) => {
                let _ = fs::remove_dir_all(&partial);
                return Err(e);
            }
        };
        // Readers see the new version only once it is whole (and checked).
        if let Err(e) = Cache::open_tier(&partial).and_then(|t| t.list(None).map(drop)) {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        let versions = dest.join(VERSIONS);
        make_dir(&versions)?;
        let version = versions.join(&id);
        fs::rename(&partial, &version).map_err(io_at(&version))?;
        sync_dir(&versions).map_err(io_at(&versions))?;
        let link = dest.join(".current.new");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new(VERSIONS).join(&id), &link).map_err(io_at(&link))?;
        fs::rename(&link, dest.join(CURRENT)).map_err(io_at(dest))?;
        sync_dir(dest).map_err(io_at(dest))?;
        let removed = prune(dest, &id, now, keep);
        Ok(Published {
            version,
            names,
            blobs,
            bytes,
            linked,
            removed,
        })
    }

    /// Copy the index and every recorded blob into `partial`, under this cache's shared
    /// index lock; blobs the current version of `dest` holds are hard-linked from it.
    fn fill_version(
        &self,
        dest: &Path,
        partial: &Path,
    ) -> Result<(usize, usize, u64, usize), CacheError> {
        let v1 = partial.join(FORMAT_DIR);
        let blobs_dir = v1.join("blobs").join("blake3");
        make_dir(&blobs_dir)?;
        let previous = fs::canonicalize(dest.join(CURRENT)).ok();
        // The shared lock, held until the index is copied: no writer commits meanwhile.
        let rd = self.index.read()?;
        let names = rd.all()?.len();
        let records = rd.blobs()?;
        let (mut bytes, mut linked) = (0, 0);
        for (digest, _) in &records {
            let hex = digest.hex();
            let fan = blobs_dir.join(&hex[..2]);
            if !fan.is_dir() {
                make_dir(&fan)?;
            }
            let to = fan.join(&hex);
            let old = previous.as_ref().map(|p| {
                p.join(FORMAT_DIR)
                    .join("blobs/blake3")
                    .join(&hex[..2])
                    .join(&hex)
            });
            if let Some(old) = old.filter(|o| fs::hard_link(o, &to).is_ok()) {
                bytes += fs::metadata(&old).map(|m| m.len()).unwrap_or(0);
                linked += 1;
                continue;
            }
            bytes += copy_synced(&self.store.blob_path(digest), &to, BLOB_MODE)?;
        }
        let mut fans: Vec<PathBuf> = fs::read_dir(&blobs_dir)
            .map_err(io_at(&blobs_dir))?
            .flatten()
            .map(|e| e.path())
            .collect();
        fans.sort();
        for fan in &fans {
            sync_dir(fan).map_err(io_at(fan))?;
        }
        sync_dir(&blobs_dir).map_err(io_at(&blobs_dir))?;
        if self.index.db_path().exists() {
            copy_synced(self.index.db_path(), &v1.join("index.redb"), 0o444)?;
        }
        drop(rd);
        let settings = self.settings_path();
        if settings.exists() {
            copy_synced(&settings, &v1.join(super::settings::FILE), 0o444)?;
        }
        let tag = partial.join("CACHEDIR.TAG");
        fs::write(&tag, CACHEDIR_TAG).map_err(io_at(&tag))?;
        for dir in [v1.join("blobs"), v1.clone(), partial.to_path_buf()] {
            sync_dir(&dir).map_err(io_at(&dir))?;
        }
        Ok((names, records.len(), bytes, linked))
    }
}

/// Remove the versions of `dest` (other than `current`, just published) whose successor
/// was published at least `keep` before `now`, and `.partial/` leftovers as old.
fn prune(dest: &Path, current: &str, now: u64, keep: Duration) -> Vec<PathBuf> {
    let time_of = |id: &str| id.split('-').next().and_then(|t| t.parse::<u64>().ok());
    let listed = |dir: &Path| -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    };
    let old_enough = |t: u64| now.saturating_sub(t) >= keep.as_secs();
    let mut removed = Vec::new();
    let versions = dest.join(VERSIONS);
    let ids = listed(&versions);
    for (i, id) in ids.iter().enumerate() {
        if id == current {
            continue;
        }
        // Retired when the next version was published.
        let retired = ids.get(i + 1).and_then(|next| time_of(next));
        if retired.is_some_and(old_enough) {
            let dir = versions.join(id);
            if fs::remove_dir_all(&dir).is_ok() {
                removed.push(dir);
            }
        }
    }
    let partials = dest.join(PARTIAL);
    for id in listed(&partials) {
        if time_of(&id).is_some_and(old_enough) {
            let dir = partials.join(&id);
            if fs::remove_dir_all(&dir).is_ok() {
                removed.push(dir);
            }
        }
    }
    removed
}
