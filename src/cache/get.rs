//! `get` and the other lookups (`list`, `inspect`, the entry a push or pull reads, a
//! docker pull's cached parts), each under the shared index lock. See "A `get` that
//! printed a path has made its use count" in [`super`]: `get` hands out only a path it
//! has just seen exist with its recorded size, and records a stale use in the name's
//! marker before it lets go of the shared lock, then folds it into the index only if the
//! exclusive lock is free at once.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use super::{
    BlobRecord, Cache, CacheError, Entry, LAST_USE_RESOLUTION, Named, RefRecord, check_digest,
    collect, index,
};
use crate::format::clock;
use crate::format::digest::{Digest, open_blob};
use crate::format::reference::Reference;
use crate::testhook;

/// A part of an image, opened by [`Cache::open_parts`]: `record` and `file` are `None`
/// when gc has dropped it.
pub struct OpenPart {
    pub digest: Digest,
    pub record: Option<BlobRecord>,
    pub file: Option<fs::File>,
    /// Where the blob lives in the store (for a hard link; read through `file`).
    pub path: PathBuf,
}

impl Cache {
    /// The blobs already in the cache whose remote digest (`sha256:...`) is one of
    /// `wanted`, opened under the shared lock: the open files stay readable whatever gc
    /// does next. Reads every blob record (not a hot path: once per image pull).
    pub fn open_by_remote_digest(
        &self,
        wanted: &[&str],
    ) -> Result<HashMap<String, (Digest, fs::File)>, CacheError> {
        let mut out = HashMap::new();
        if wanted.is_empty() || !self.exists() {
            return Ok(out);
        }
        let rd = self.index.read()?;
        for (d, b) in rd.blobs()? {
            let Some(remote) = b.remote_digest.as_deref() else {
                continue;
            };
            if wanted.contains(&remote)
                && !out.contains_key(remote)
                && let Ok(f) = open_blob(&self.store.blob_path(&d))
                && f.metadata().is_ok_and(|m| m.len() == b.size)
            {
                out.insert(remote.to_string(), (d, f));
            }
        }
        Ok(out)
    }

    /// The parts of the image `r` names (its layers, bottom first, then its config), each
    /// opened under the shared lock, so they stay readable whatever gc does next. A part
    /// gc has dropped (under size pressure) is `None`: the image needs a pull to export.
    pub fn open_parts(&self, r: &Reference) -> Result<Vec<OpenPart>, CacheError> {
        if !self.exists() {
            return Err(self.not_found(r));
        }
        let key = r.key();
        let rd = self.index.read()?;
        let rec = rd.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
        check_digest(r, &rec)?;
        let blob = rd.get_blob(&rec.digest)?.unwrap_or_default();
        let mut out = Vec::with_capacity(blob.parts.len());
        for d in blob.parts {
            let path = self.store.blob_path(&d);
            let file = rd.get_blob(&d)?.and_then(|b| {
                let f = open_blob(&path).ok()?;
                Some((b, f))
            });
            out.push(match file {
                Some((record, file)) => OpenPart {
                    digest: d,
                    record: Some(record),
                    file: Some(file),
                    path,
                },
                None => OpenPart {
                    digest: d,
                    record: None,
                    file: None,
                    path,
                },
            });
        }
        Ok(out)
    }

    /// The path of the blob `r` names: the hot path. Takes the shared lock for a lookup,
    /// checks the file exists, and records the use when the stored time is stale.
    pub fn get(&self, r: &Reference) -> Result<PathBuf, CacheError> {
        self.get_where(r, |_| true)?
            .ok_or_else(|| self.not_found(r))
    }

    /// [`Cache::get`] when the name's record passes `check` (for example: it was pulled
    /// from this remote), in the same lookup; `Ok(None)` when it does not.
    pub fn get_where(
        &self,
        r: &Reference,
        check: impl FnOnce(&RefRecord) -> bool,
    ) -> Result<Option<PathBuf>, CacheError> {
        let key = r.key();
        let (path, stale) = {
            // Whether the cache exists is asked only when the lookup cannot go by what
            // a kept open keeps (see `index::kept`).
            let Some(rd) = self.index.read_kept(|| self.exists())? else {
                return Err(self.not_found(r));
            };
            let rec = rd.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
            if !check(&rec) {
                return Ok(None);
            }
            let digest = match r.digest() {
                Some(want) if *want != rec.digest => {
                    if rd.get_blob(want)?.is_none() {
                        return Err(CacheError::DigestNotFound {
                            name: key,
                            wanted: *want,
                            current: rec.digest,
                            cache: self.root.clone(),
                        });
                    }
                    *want
                }
                _ => rec.digest,
            };
            let path = self.checked_path(&rd, &key, &digest)?;
            let stale = self.note_use(&rd, &key)?;
            (path, stale)
        };
        if stale {
            testhook::pause("get-before-touch");
            self.touch(&key);
        }
        Ok(Some(path))
    }

    /// The path of `digest`'s blob for the name `key`, checked under the caller's shared
    /// lock: there, a regular file, of its recorded size (a file cut short or grown from
    /// outside is never handed out), and the very file the commit put there, as the same
    /// `stat` shows it (a file renamed over the blob from outside is never handed out,
    /// see [`BlobRecord::placed`]); else why not.
    fn checked_path(
        &self,
        rd: &index::IndexReader,
        key: &str,
        digest: &Digest,
    ) -> Result<PathBuf, CacheError> {
        self.checked_path_here(rd, key, digest)
            .map_err(|e| self.tier_damage(e))
    }

    /// A damaged file `e` reports, as a tier's reader should read it when this handle is
    /// a tier's: `verify` never repairs a tier; its admin publishes it again.
    fn tier_damage(&self, e: CacheError) -> CacheError {
        let Some(tier) = self.tier() else {
            return e;
        };
        let (name, path, what, corrupt) = match e {
            CacheError::BlobMissing { name, path } => {
                (name, path, "is missing or not a regular file".into(), false)
            }
            CacheError::WrongSize {
                name,
                path,
                size,
                recorded,
            } => (
                name,
                path,
                format!("has {size} bytes, not the {recorded} recorded"),
                true,
            ),
            CacheError::Replaced { name, path } => {
                (name, path, "is not the file published there".into(), true)
            }
            CacheError::Corrupt { name, path, actual } => (
                name,
                path,
                format!("hashes to {actual}, not its name"),
                true,
            ),
            other => return other,
        };
        CacheError::TierDamaged {
            name,
            path,
            tier: tier.to_path_buf(),
            what,
            corrupt,
        }
    }

    fn checked_path_here(
        &self,
        rd: &index::IndexReader,
        key: &str,
        digest: &Digest,
    ) -> Result<PathBuf, CacheError> {
        let path = self.store.blob_path(digest);
        let Some(meta) = std::fs::metadata(&path).ok().filter(|m| m.is_file()) else {
            if let Some(q) = self.quarantined(digest) {
                return Err(CacheError::Quarantined {
                    name: key.to_string(),
                    path: q,
                });
            }
            return Err(CacheError::BlobMissing {
                name: key.to_string(),
                path,
            });
        };
        let Some(b) = rd.get_blob(digest)? else {
            return Ok(path);
        };
        if b.size != meta.len() {
            return Err(CacheError::WrongSize {
                name: key.to_string(),
                path,
                size: meta.len(),
                recorded: b.size,
            });
        }
        if self.store.replaced(&b, &path, &meta) {
            return Err(CacheError::Replaced {
                name: key.to_string(),
                path,
            });
        }
        Ok(path)
    }

    /// Record a use of `key` in its marker when the stored time is stale, under the
    /// caller's shared lock, so that no gc can choose the name between the lookup and the
    /// record of its use (see `crate::cache::uses`). True when the caller should then
    /// fold it into the index ([`Cache::touch`]).
    fn note_use(&self, rd: &index::IndexReader, key: &str) -> Result<bool, CacheError> {
        if self.tier.is_some() {
            // A tier is never written: its uses are not recorded (no gc acts on it).
            return Ok(false);
        }
        let now = clock::now();
        let stale = rd
            .last_use(key)?
            .is_none_or(|t| now.saturating_sub(t) >= LAST_USE_RESOLUTION);
        if stale {
            let _ = self.uses.record(key, now, LAST_USE_RESOLUTION);
        }
        Ok(stale)
    }

    /// Whether the file at `path`, the blob `record` describes, is not the one the commit
    /// put there (another file renamed or copied over it from outside sregistry; see
    /// [`BlobRecord::placed`]). For `verify`; `get` checks the same under its lock.
    pub fn is_replaced(&self, record: &BlobRecord, path: &std::path::Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| self.store.replaced(record, path, &m))
    }

    /// [`Cache::get`], then re-hash the file before answering (`get --verify`).
    pub fn get_verified(&self, r: &Reference) -> Result<PathBuf, CacheError> {
        let path = self.get(r)?;
        let (actual, _) =
            crate::format::digest::hash_blob(&path, true).map_err(|source| CacheError::Open {
                path: path.clone(),
                source,
            })?;
        let expected = path
            .file_name()
            .and_then(|n| Digest::from_hex(&n.to_string_lossy()));
        if expected != Some(actual) {
            return Err(self.tier_damage(CacheError::Corrupt {
                name: r.key(),
                path,
                actual,
            }));
        }
        Ok(path)
    }

    /// Move a use of `key` from its marker into the index if the index lock is free within
    /// milliseconds; a busy index means someone else is writing, and the marker `get` left
    /// under the shared lock keeps the use until a writer folds it in.
    pub(super) fn touch(&self, key: &str) {
        let Ok(Some(mut w)) = self.index.try_write(std::time::Duration::from_millis(50)) else {
            return;
        };
        let when = clock::now().max(self.uses.read(key).unwrap_or(0));
        if matches!(w.get_ref(key), Ok(Some(_))) && w.set_last_use(key, when).is_ok() {
            let _ = w.commit_then(|| self.uses.remove_folded(key, when));
        }
    }

    /// The later of the index's last use and the marker's, for each of `names`.
    fn with_marked_uses(&self, names: &mut [Named]) {
        collect::fold_marks(names, &self.uses.all());
    }

    pub(super) fn entry_of(&self, n: Named) -> Entry {
        Entry {
            path: self.store.blob_path(&n.record.digest),
            digest: n.record.digest,
            size: n.blob.as_ref().map(|b| b.size),
            added: n.record.added,
            last_used: n.last_use,
            pinned: n.pinned,
            source: n.record.source,
            labels: n.record.labels,
            media_type: n.blob.as_ref().and_then(|b| b.media_type.clone()),
            remote_digest: n.blob.and_then(|b| b.remote_digest),
            name: n.name,
            tier: self.tier.clone(),
            private: self.private,
        }
    }

    /// Every name (sorted), or those matching `pattern` (a glob with `*`/`?`, else a
    /// substring).
    pub fn list(&self, pattern: Option<&str>) -> Result<Vec<Entry>, CacheError> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let mut all = self.index.read()?.all()?;
        self.with_marked_uses(&mut all);
        Ok(all
            .into_iter()
            .filter(|n| {
                pattern.is_none_or(|p| crate::format::reference::matches_pattern(p, &n.name))
            })
            .map(|n| self.entry_of(n))
            .collect())
    }

    /// Everything known about one name.
    pub fn entry(&self, r: &Reference) -> Result<Entry, CacheError> {
        if !self.exists() {
            return Err(self.not_found(r));
        }
        let rd = self.index.read()?;
        self.entry_under(&rd, r)
    }

    fn entry_under(&self, rd: &index::IndexReader, r: &Reference) -> Result<Entry, CacheError> {
        let key = r.key();
        let record = rd.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
        check_digest(r, &record)?;
        let blob = rd.get_blob(&record.digest)?;
        let last_use = match (rd.last_use(&key)?, self.uses.read(&key)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let pinned = rd.is_pinned(&key)?;
        Ok(self.entry_of(Named {
            name: key,
            record,
            blob,
            last_use,
            pinned,
        }))
    }

    /// The entry of `r` and its file, opened, from one lookup under the shared lock: the
    /// open file holds the content the entry describes, whatever re-points the name or gc
    /// removes next (an [`Cache::entry`] then a [`Cache::get`] could see two contents, and
    /// a path can vanish). A file that is missing, quarantined or not of its recorded size
    /// is the error [`Cache::get`] gives. For `push`, which reads the file and records the
    /// entry's digest.
    pub fn open_entry(&self, r: &Reference) -> Result<(Entry, fs::File), CacheError> {
        if !self.exists() {
            return Err(self.not_found(r));
        }
        let rd = self.index.read()?;
        let entry = self.entry_under(&rd, r)?;
        // There, a regular file, of its recorded size (the errors `get` gives), then
        // opened while the shared lock still holds.
        let path = self.checked_path(&rd, &entry.name, &entry.digest)?;
        let file = open_blob(&path).map_err(|source| CacheError::Open { path, source })?;
        Ok((entry, file))
    }

    /// [`Cache::entry`] and [`Cache::get`] in one lookup: the entry of `r` when it passes
    /// `check`, its file checked in place and its use recorded as `get` does; `Ok(None)`
    /// when it does not pass. What `check` saw is what the caller gets, even if the name
    /// is re-pointed the moment after.
    pub fn entry_in_use(
        &self,
        r: &Reference,
        check: impl FnOnce(&Entry) -> bool,
    ) -> Result<Option<Entry>, CacheError> {
        if !self.exists() {
            return Err(self.not_found(r));
        }
        let (entry, stale) = {
            let rd = self.index.read()?;
            let entry = self.entry_under(&rd, r)?;
            if !check(&entry) {
                return Ok(None);
            }
            self.checked_path(&rd, &entry.name, &entry.digest)?;
            let stale = self.note_use(&rd, &entry.name)?;
            (entry, stale)
        };
        if stale {
            self.touch(&entry.name);
        }
        Ok(Some(entry))
    }
}
