//! Re-pointing a name: the content it held keeps the protection of its last use.
//!
//! # Protocol
//!
//! A `get` hands a job a path; the job may start minutes later (a batch queue). Whatever
//! re-points that name meanwhile (a `pull` of a changed tag, `tag --force`, `add --force`,
//! `add_many` over an existing name), the content the job was handed must stay on disk for
//! `--min-idle` after that `get` (invariant 6 of docs/design.md). So every write of a name
//! goes through [`Cache::point_name`], under the exclusive index lock, in the transaction
//! that re-points it:
//!
//! * when the name pointed to other content, that content's blob record gets
//!   [`Retired`]: the name, and the latest time a `get` of the name can have handed it
//!   out, which is the later of the index's `last_use` and the name's use marker
//!   (`crate::cache::uses`: a `get` writes it under the shared lock, which this writer's
//!   exclusive lock excludes, so the marker is complete when it is read here, by its own
//!   path), plus the [`LAST_USE_RESOLUTION`] by which a recorded use may lag a real one
//!   (never later than now), and never earlier than when the name was pointed there;
//! * gc (`maintain::gc`, above the cache) keeps an unreferenced blob whose `retired.used` is
//!   within `--min-idle` (and counts it against `--max-size` as kept), and removes it as
//!   any unreferenced blob afterwards;
//! * `rm NAME` gives the protection up at once: the blobs retired from that name are
//!   candidates of the same removal as its current content ([`Cache::retired_from`]).
//!
//! The record is journalled with the blob record, so a rebuilt index keeps it.

use super::index::{IndexError, IndexWriter, LAST_USE_RESOLUTION, RefRecord, Retired};
use super::{Cache, CacheError};
use crate::format::digest::Digest;

impl Cache {
    /// Point `key` at `record.digest` in the open transaction `w` (the caller holds the
    /// exclusive lock and has checked the pin); the content it pointed to before, if
    /// other, is marked [`Retired`] with the last time it can have been handed out.
    pub(super) fn point_name(
        &self,
        w: &mut IndexWriter,
        key: &str,
        record: &RefRecord,
        now: u64,
    ) -> Result<(), CacheError> {
        let old = w.put_ref(key, record)?;
        let Some(old) = old.filter(|o| o.digest != record.digest) else {
            return Ok(());
        };
        let recorded = w
            .last_use(key)?
            .into_iter()
            .chain(self.uses.read(key))
            .max();
        let used = match recorded {
            Some(t) => t.saturating_add(LAST_USE_RESOLUTION).min(now).max(t),
            None => old.added,
        }
        .max(old.added);
        retire(w, &old.digest, key, used)?;
        Ok(())
    }

    /// The blobs whose protection was kept for `key` when it was re-pointed: `rm` of the
    /// name removes them with its own content (each only if no name refers to it).
    pub(super) fn retired_from(
        &self,
        w: &IndexWriter,
        keys: &[String],
    ) -> Result<Vec<Digest>, CacheError> {
        Ok(w.blobs()?
            .into_iter()
            .filter(|(_, b)| b.retired.as_ref().is_some_and(|r| keys.contains(&r.name)))
            .map(|(d, _)| d)
            .collect())
    }
}

/// Record on `d` that `key` last handed it out at `used` (the later of this and any
/// earlier such record).
fn retire(w: &mut IndexWriter, d: &Digest, key: &str, used: u64) -> Result<(), IndexError> {
    let Some(mut b) = w.get_blob(d)? else {
        return Ok(());
    };
    if b.retired.as_ref().is_some_and(|r| r.used >= used) {
        return Ok(());
    }
    b.retired = Some(Retired {
        name: key.to_string(),
        used,
    });
    w.replace_blob(d, &b)
}
