//! Changing names: `tag`, `rm` and `pin`, and the checks every write of a name makes
//! (a digest on a reference must match, a name to be written carries none, a pinned name
//! is re-pointed only with [`Repoint::Force`]). Each refuses under the shared lock first,
//! so a refused command leaves the index file unchanged, then checks again under the
//! exclusive lock it writes under. `rm` removes blobs through the one removal routine
//! (`collect.rs`).

use serde::Serialize;

use super::{Cache, CacheError, Entry, IndexError, Named, RefRecord, store};
use crate::format::clock;
use crate::format::digest::Digest;
use crate::format::reference::Reference;

/// What a write does when it would point a pinned name at other content.
///
/// A pin protects the content its name points to; re-pointing the name silently would
/// leave that content unprotected for gc. Re-pointing to the same content is no change
/// and always allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Repoint {
    /// Refuse with [`CacheError::PinnedRepoint`], changing nothing (the default).
    #[default]
    RefuseIfPinned,
    /// Re-point it (`--force`): the name stays pinned, now to the new content; the old
    /// content loses its protection and goes as usual once no name uses it.
    Force,
}

impl Repoint {
    /// [`Repoint::Force`] when `--force` was given.
    pub fn from_force(force: bool) -> Repoint {
        if force {
            Repoint::Force
        } else {
            Repoint::RefuseIfPinned
        }
    }
}

/// What [`Cache::remove`] did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Removed {
    pub names: Vec<String>,
    pub blobs: Vec<Digest>,
    pub bytes_freed: u64,
    /// The removed names that another cache still answers ([`Caches::remove`]): the
    /// removed copy shadowed it, and `get NAME` now hands out that cache's image.
    ///
    /// [`Caches::remove`]: super::Caches::remove
    pub revealed: Vec<Revealed>,
}

/// A removed name that a cache looked in later still has: after the caller's private
/// cache, the shared (writable) cache (`tier` is `None`) or a tier; after the writable
/// cache, a tier.
#[derive(Clone, Debug, Serialize)]
pub struct Revealed {
    pub name: String,
    /// The tier that now answers the name, as configured; `None` for the writable cache.
    pub tier: Option<std::path::PathBuf>,
}

impl Cache {
    /// Fail with "not found" (or a digest the name does not point to, or "pinned") under
    /// the shared lock, before a write opens the index: a refused command leaves the index
    /// file byte-for-byte unchanged. The writer checks again under the exclusive lock.
    fn precheck(&self, names: &[Reference], refuse_pinned: bool) -> Result<(), CacheError> {
        if !self.exists() {
            return Err(self.not_found(&names[0]));
        }
        let rd = self.index.read()?;
        for r in names {
            let key = r.key();
            let rec = rd.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
            check_digest(r, &rec)?;
            if refuse_pinned && rd.is_pinned(&key)? {
                return Err(CacheError::Pinned { name: key });
            }
        }
        Ok(())
    }

    /// Point `dst` at the blob `src` points at (`src` with a digest only if it points
    /// there). A pinned `dst` that points elsewhere is refused unless `repoint` says
    /// otherwise (see [`Repoint`]).
    pub fn tag(
        &self,
        src: &Reference,
        dst: &Reference,
        repoint: Repoint,
    ) -> Result<Entry, CacheError> {
        refuse_digest_on_target(dst)?;
        if !self.exists() {
            return Err(self.not_found(src));
        }
        let key = dst.key();
        {
            // What the writer would refuse, refused under the shared lock first (see
            // `precheck`).
            let rd = self.index.read()?;
            let rec = rd.get_ref(&src.key())?.ok_or_else(|| self.not_found(src))?;
            check_digest(src, &rec)?;
            refuse_repoint(&key, &rec.digest, repoint, rd.get_ref(&key)?, || {
                rd.is_pinned(&key)
            })?;
        }
        let mut w = self.index.write()?;
        let rec = w.get_ref(&src.key())?.ok_or_else(|| self.not_found(src))?;
        check_digest(src, &rec)?;
        let path = self.store.blob_path(&rec.digest);
        if !path.is_file() {
            return Err(CacheError::BlobMissing {
                name: src.key(),
                path,
            });
        }
        refuse_repoint(&key, &rec.digest, repoint, w.get_ref(&key)?, || {
            w.is_pinned(&key)
        })?;
        let now = clock::now();
        let new = RefRecord { added: now, ..rec };
        self.point_name(&mut w, &key, &new, now)?;
        w.set_last_use(&key, now)?;
        let blob = w.get_blob(&new.digest)?;
        let pinned = w.is_pinned(&key)?;
        w.commit()?;
        Ok(self.entry_of(Named {
            name: key,
            record: new,
            blob,
            last_use: Some(now),
            pinned,
        }))
    }

    /// Remove names. All must exist and be unpinned, or nothing changes. A blob no name
    /// uses any more is deleted too, unless `keep_blobs`.
    pub fn remove(&self, names: &[Reference], keep_blobs: bool) -> Result<Removed, CacheError> {
        if names.is_empty() {
            return Ok(Removed::default());
        }
        self.precheck(names, true)?;
        let mut out = Removed::default();
        let mut aside = Vec::new();
        {
            let mut w = self.index.write()?;
            for r in names {
                let key = r.key();
                let rec = w.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
                check_digest(r, &rec)?;
                if w.is_pinned(&key)? {
                    return Err(CacheError::Pinned { name: key });
                }
            }
            let mut candidates = Vec::new();
            for r in names {
                let key = r.key();
                if let Some(rec) = w.remove_ref(&key)? {
                    out.names.push(key);
                    candidates.push(rec.digest);
                }
            }
            // What the names held before they were re-pointed goes with them.
            candidates.extend(self.retired_from(&w, &out.names)?);
            if keep_blobs {
                candidates.clear();
            }
            candidates.sort();
            candidates.dedup();
            let mut dropped = self.drop_blobs(&mut w, &candidates)?;
            // The files go after the commit, still under the lock (see `drop_blobs`).
            w.commit_then(|| self.move_aside(&candidates, &mut dropped, &mut aside))?;
            for (d, dropped) in candidates.into_iter().zip(dropped) {
                let Some(dropped) = dropped else { continue };
                if dropped.moved {
                    out.bytes_freed += dropped.size.unwrap_or(0);
                }
                out.blobs.push(d);
            }
        }
        store::unlink_now(&aside);
        Ok(out)
    }

    /// Pin or unpin a name; returns whether that changed anything.
    pub fn set_pin(&self, r: &Reference, pinned: bool) -> Result<bool, CacheError> {
        self.precheck(std::slice::from_ref(r), false)?;
        let key = r.key();
        let mut w = self.index.write()?;
        let rec = w.get_ref(&key)?.ok_or_else(|| self.not_found(r))?;
        check_digest(r, &rec)?;
        let changed = w.set_pin(&key, pinned, clock::now())?;
        w.commit()?;
        Ok(changed)
    }
}

/// Refuse `r` when it carries a digest and its name points to other content.
pub(crate) fn check_digest(r: &Reference, rec: &RefRecord) -> Result<(), CacheError> {
    match r.digest() {
        Some(want) if *want != rec.digest => Err(CacheError::DigestMismatch {
            name: r.key(),
            wanted: *want,
            current: rec.digest,
        }),
        _ => Ok(()),
    }
}

/// Refuse a name to be written that carries a digest: a digest selects content that
/// exists, it cannot say where a name will point.
pub fn refuse_digest_on_target(name: &Reference) -> Result<(), CacheError> {
    match name.digest() {
        Some(d) => Err(CacheError::DigestOnTarget {
            name: name.key(),
            digest: *d,
        }),
        None => Ok(()),
    }
}

/// Refuse to point the pinned `key` at `new` when it points to other content, unless
/// `repoint` is [`Repoint::Force`]. `current` is what `key` points to now; `pinned` asks
/// the index whether it is pinned (only when that matters).
pub(super) fn refuse_repoint(
    key: &str,
    new: &Digest,
    repoint: Repoint,
    current: Option<RefRecord>,
    pinned: impl FnOnce() -> Result<bool, IndexError>,
) -> Result<(), CacheError> {
    match current {
        Some(cur) if repoint != Repoint::Force && cur.digest != *new && pinned()? => {
            Err(CacheError::PinnedRepoint {
                name: key.to_string(),
                pinned: cur.digest,
                new: *new,
            })
        }
        _ => Ok(()),
    }
}
