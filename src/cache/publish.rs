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
//! 1. Under `DEST/.publish.lock` (exclusive), SRC's index is read and copied under SRC's
//!    shared index lock (so no writer commits meanwhile, and the copy is a clean, closed
//!    file of the commit the list of blobs came from); the lock is then released, and
//!    every blob that index records is copied into `DEST/.partial/<id>/` (a blob is never
//!    changed in place; one gc removed meanwhile fails the publish, naming it): a blob
//!    the current version already holds (a regular file of the recorded size) is
//!    hard-linked from it (same content, same name; blobs are never changed), unless
//!    `--copy` (a tier's file damaged in place is replaced only so), any other copied;
//!    each source blob is opened non-blocking, without following a link, is hashed as
//!    it is copied and must hash to its name (a file renamed over a blob from outside
//!    never goes out to every node), and must be a regular file of its recorded size (a FIFO there fails the publish at once, never
//!    holds it, nor SRC's lock); mode 0444, each file fsynced,
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
//! hours. A version is removed only by a later publish, and only when `current` stopped
//! naming it more than `keep` ago (default 7 days, `--keep`): that long after a version
//! stopped being current, no `get` can have handed out one of its paths more recently.
//! The time is recorded in `DEST/.retired/<id>` just before the switch (a publish that
//! dies before it leaves a record the next one overwrites), never guessed from the next
//! id: a version `current` never named (a publish killed between its rename into
//! `versions/` and the switch) is a leftover, aged by its own id, as `.partial/` ones are. On CVMFS
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
use crate::format::digest::{Digest, HashingWriter, open_blob};

/// The link readers follow to the current version.
pub const CURRENT: &str = "current";
/// The directory holding every published version.
pub const VERSIONS: &str = "versions";
const PARTIAL: &str = ".partial";
/// `DEST/.retired/<id>`: when version `<id>` stopped being current (seconds).
const RETIRED: &str = ".retired";
/// One publisher at a time.
const LOCK: &str = ".publish.lock";
/// The new link, before it is renamed over `current`.
const NEW_CURRENT: &str = ".current.new";
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
    move |source| CacheError::PublishWrite {
        path: path.to_path_buf(),
        source,
    }
}

/// Make `dir` (mode 0755) unless it exists: a directory that exists keeps its mode.
fn make_dir(dir: &Path) -> Result<(), CacheError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_at(dir))
}

/// The (device, inode) of `dir` and of each directory above it that exists, after
/// resolving links: what decides whether one directory is inside another, whatever path
/// (a link, a bind mount seen twice) names it.
fn identities(dir: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let start = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    let start = fs::canonicalize(start).unwrap_or_else(|_| start.to_path_buf());
    start
        .ancestors()
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Refuse a `dest` publish must not write: one that exists, holds anything and is not a
/// tier (no `current`, no `versions/`), one inside the cache at `src` (its gc would take
/// it for leftovers) or one holding `src` (a published version published into its own
/// tier).
fn check_dest(src: &Path, dest: &Path) -> Result<(), CacheError> {
    let refuse = |why: String| CacheError::PublishRefused {
        dest: dest.to_path_buf(),
        why,
    };
    let src_ids = identities(src);
    let dest_ids = identities(dest);
    let (Some(src_id), Some(dest_id)) = (src_ids.first(), dest_ids.first()) else {
        return Ok(());
    };
    if dest.exists() && src_ids.contains(dest_id) {
        return Err(refuse(format!(
            "the cache `{}` is inside it (a tier is published next to its source, never around it)",
            src.display()
        )));
    }
    if dest_ids.contains(src_id) {
        return Err(refuse(format!(
            "it is inside the cache `{}` it would publish (its gc would remove it); give a directory outside it",
            src.display()
        )));
    }
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(dest)(e)),
        Ok(m) if !m.is_dir() => Err(refuse("it is not a directory".into())),
        Ok(_) => {
            // Publish's own: `current` naming one of its versions, or (a first publish
            // that failed or was killed before its switch) nothing but publish's own
            // entries, `versions/` and `.partial/` holding only its ids.
            let only_ids = |dir: &Path| match fs::read_dir(dir) {
                Ok(rd) => rd
                    .flatten()
                    .all(|e| e.file_name().to_str().is_some_and(is_id)),
                Err(e) => e.kind() == io::ErrorKind::NotFound,
            };
            let only_own = fs::read_dir(dest).is_ok_and(|rd| {
                rd.flatten().all(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        [CURRENT, VERSIONS, PARTIAL, RETIRED, LOCK, NEW_CURRENT].contains(&n)
                    })
                })
            });
            let tier = current_id(dest).is_some()
                || (only_own && only_ids(&dest.join(VERSIONS)) && only_ids(&dest.join(PARTIAL)));
            let empty = fs::read_dir(dest).map_err(io_at(dest))?.next().is_none();
            if tier || empty {
                Ok(())
            } else {
                Err(refuse(
                    "it is not a tier (no `current` naming one of `versions/<id>`) and not empty; give a new or empty directory, or an existing tier".into(),
                ))
            }
        }
    }
}

/// Copy `from` (a file of the source cache's own: its index, its settings) to `to`
/// (which does not exist), read-only and fsynced.
fn copy_synced(from: &Path, to: &Path, mode: u32) -> Result<u64, CacheError> {
    let mut src = open_blob(from).map_err(|source| CacheError::Open {
        path: from.to_path_buf(),
        source,
    })?;
    copy_synced_from(&mut src, to, mode)
}

/// Write `body` to `to` (made here), mode `mode`, fsynced.
fn copy_synced_from_bytes(body: &[u8], to: &Path, mode: u32) -> Result<u64, CacheError> {
    copy_hashed_from(&mut &body[..], to, mode).map(|(n, _)| n)
}

/// Copy what `src` holds to `to` (made here; it does not exist), mode `mode`, fsynced.
fn copy_synced_from(src: &mut fs::File, to: &Path, mode: u32) -> Result<u64, CacheError> {
    copy_hashed_from(src, to, mode).map(|(n, _)| n)
}

/// [`copy_synced_from`], hashing the bytes as they are copied: their count and digest.
fn copy_hashed_from(
    src: &mut impl io::Read,
    to: &Path,
    mode: u32,
) -> Result<(u64, Digest), CacheError> {
    use std::os::unix::fs::OpenOptionsExt;
    let out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_CLOEXEC)
        .open(to)
        .map_err(io_at(to))?;
    let mut hashing = HashingWriter::new(out);
    io::copy(src, &mut hashing).map_err(io_at(to))?;
    let (digest, n, out) = hashing.finish();
    // The mode asked for whatever the umask.
    out.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_at(to))?;
    out.sync_all().map_err(io_at(to))?;
    Ok((n, digest))
}

impl Cache {
    /// Publish this cache as a new version of the tier at `dest` (see the module's doc);
    /// versions that stopped being current more than `keep` ago are removed. With `copy`,
    /// every blob is copied from this cache, none linked from the version before.
    pub fn publish_tier(
        &self,
        dest: &Path,
        keep: Duration,
        copy: bool,
        lock_opts: &LockOptions,
    ) -> Result<Published, CacheError> {
        check_dest(self.root(), dest)?;
        make_dir(dest)?;
        let _publishing = lock::lock(&dest.join(LOCK), Mode::Exclusive, lock_opts)
            .map_err(super::IndexError::from)?;
        let now = clock::now();
        let id = format!("{now:010}-{}", std::process::id());
        let partial = dest.join(PARTIAL).join(&id);
        let _ = fs::remove_dir_all(&partial);
        let result = self.fill_version(dest, &partial, copy);
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
        // The version current until now retires at this switch: recorded first, so a
        // publish that dies before the switch leaves a record the next one overwrites.
        let previous = current_id(dest);
        if let Some(prev) = &previous {
            record_retired(dest, prev, now)?;
        }
        let link = dest.join(NEW_CURRENT);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new(VERSIONS).join(&id), &link).map_err(io_at(&link))?;
        fs::rename(&link, dest.join(CURRENT)).map_err(io_at(dest))?;
        sync_dir(dest).map_err(io_at(dest))?;
        let removed = prune(dest, &id, previous.as_deref(), now, keep);
        Ok(Published {
            version,
            names,
            blobs,
            bytes,
            linked,
            removed,
        })
    }

    /// Copy the index and every recorded blob into `partial`; blobs the current version
    /// of `dest` holds are hard-linked from it. This cache's shared index lock is held only
    /// while its index is read and copied (so the list of blobs and the copied index are
    /// of one commit); the blobs are copied after (a blob is never changed in place), each
    /// opened as a blob ([`open_blob`]: a FIFO or link there is refused, never waited on)
    /// and required to have its recorded size.
    fn fill_version(
        &self,
        dest: &Path,
        partial: &Path,
        copy: bool,
    ) -> Result<(usize, usize, u64, usize), CacheError> {
        let v1 = partial.join(FORMAT_DIR);
        let blobs_dir = v1.join("blobs").join("blake3");
        make_dir(&blobs_dir)?;
        let previous = fs::canonicalize(dest.join(CURRENT)).ok();
        let (named, records) = {
            let rd = self.index.read()?;
            let named = rd.all()?;
            let records = rd.blobs()?;
            if self.index.db_path().exists() {
                copy_synced(self.index.db_path(), &v1.join("index.redb"), 0o444)?;
            }
            (named, records)
        };
        let names = named.len();
        let (mut bytes, mut linked) = (0, 0);
        for (digest, record) in &records {
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
            // Only a regular file of the recorded size (a FIFO or a truncated file there
            // is not carried on); with `copy`, never.
            let old = old.filter(|o| {
                !copy
                    && fs::symlink_metadata(o).is_ok_and(|m| m.is_file() && m.len() == record.size)
            });
            if let Some(old) = old.filter(|o| fs::hard_link(o, &to).is_ok()) {
                bytes += fs::metadata(&old).map(|m| m.len()).unwrap_or(0);
                linked += 1;
                continue;
            }
            let from = self.store.blob_path(digest);
            let users: Vec<&str> = named
                .iter()
                .filter(|n| n.record.digest == *digest)
                .map(|n| n.name.as_str())
                .collect();
            let bad = |why: String| CacheError::PublishSource {
                path: from.clone(),
                names: if users.is_empty() {
                    "a part of an image".into()
                } else {
                    users.join(", ")
                },
                cache: self.root().to_path_buf(),
                why,
            };
            let mut src = open_blob(&from).map_err(|e| bad(e.to_string()))?;
            let size = src.metadata().map_err(|e| bad(e.to_string()))?.len();
            if size != record.size {
                return Err(bad(format!(
                    "{size} bytes, not the {} recorded",
                    record.size
                )));
            }
            // Hashed as it is copied: a file put at the blob's path from outside (a member
            // of a shared cache's group can rename one there), or damaged, never goes out
            // to every node that reads the tier.
            let (n, got) = copy_hashed_from(&mut src, &to, BLOB_MODE)?;
            if got != *digest {
                let _ = fs::remove_file(&to);
                return Err(bad(format!(
                    "its content hashes to {got}, not to its name (damaged, or replaced from outside sregistry)"
                )));
            }
            bytes += n;
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
        // SRC's settings, marked: a version is never opened as a writable cache.
        let marked = super::Settings {
            published: true,
            ..self.settings().clone()
        };
        let settings = v1.join(super::settings::FILE);
        let body = serde_json::to_vec_pretty(&marked)
            .map_err(|e| io_at(&settings)(io::Error::other(e)))?;
        copy_synced_from_bytes(&body, &settings, 0o444)?;
        let tag = partial.join("CACHEDIR.TAG");
        fs::write(&tag, CACHEDIR_TAG).map_err(io_at(&tag))?;
        for dir in [v1.join("blobs"), v1.clone(), partial.to_path_buf()] {
            sync_dir(&dir).map_err(io_at(&dir))?;
        }
        Ok((names, records.len(), bytes, linked))
    }
}

/// Whether `name` has exactly the form publish gives a version (and a `.partial/`
/// directory): ten digits of time, `-`, the publisher's process id. Nothing else in
/// `versions/` or `.partial/` is publish's to remove.
fn is_id(name: &str) -> bool {
    let Some((time, pid)) = name.split_once('-') else {
        return false;
    };
    time.len() == 10
        && !pid.is_empty()
        && time.bytes().chain(pid.bytes()).all(|b| b.is_ascii_digit())
}

/// The id of the version `DEST/current` names, if it names one.
fn current_id(dest: &Path) -> Option<String> {
    let target = fs::read_link(dest.join(CURRENT)).ok()?;
    let id = target.file_name()?.to_str()?.to_string();
    (target == Path::new(VERSIONS).join(&id) && is_id(&id)).then_some(id)
}

/// Record that version `id` stopped being current at `at` (`DEST/.retired/<id>`).
fn record_retired(dest: &Path, id: &str, at: u64) -> Result<(), CacheError> {
    let dir = dest.join(RETIRED);
    if !dir.is_dir() {
        make_dir(&dir)?;
    }
    let record = dir.join(id);
    let tmp = dir.join(format!(".{id}.new"));
    fs::write(&tmp, format!("{at}\n")).map_err(io_at(&tmp))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_at(&tmp))?;
    fs::rename(&tmp, &record).map_err(io_at(&record))?;
    sync_dir(&dir).map_err(io_at(&dir))
}

/// When version `id` stopped being current, as recorded.
fn retired_at(dest: &Path, id: &str) -> Option<u64> {
    fs::read_to_string(dest.join(RETIRED).join(id))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Remove the versions of `dest` (other than `current`, just published) that stopped
/// being current at least `keep` before `now` (as recorded at each switch), versions
/// that never were current (newer than `previous`, the one current until this publish:
/// what a killed publish leaves) and `.partial/` leftovers as old. A version with no
/// record that may have been current (older than `previous`) gets one now: it is kept
/// `keep` from this publish. Only names of publish's own form are touched.
fn prune(
    dest: &Path,
    current: &str,
    previous: Option<&str>,
    now: u64,
    keep: Duration,
) -> Vec<PathBuf> {
    let time_of = |id: &str| id.split('-').next().and_then(|t| t.parse::<u64>().ok());
    let listed = |dir: &Path| -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| is_id(n))
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
    for id in &ids {
        if id == current {
            continue;
        }
        let retired = match retired_at(dest, id) {
            Some(t) => Some(t),
            // Never current: its age is its own.
            None if previous.is_some_and(|p| id.as_str() > p) => time_of(id),
            None => {
                let _ = record_retired(dest, id, now);
                None
            }
        };
        if retired.is_some_and(old_enough) {
            let dir = versions.join(id);
            if fs::remove_dir_all(&dir).is_ok() {
                removed.push(dir);
            }
        }
    }
    // Records of versions no longer there.
    for id in listed(&dest.join(RETIRED)) {
        if !ids.contains(&id) || removed.contains(&versions.join(&id)) {
            let _ = fs::remove_file(dest.join(RETIRED).join(&id));
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
