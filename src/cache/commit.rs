//! The one commit path of `add` and of every pull ([`Cache::commit_staged`]): staged
//! content is linked into `blobs/` on a thread of its own while the exclusive index lock
//! is taken and the transaction written, checked (and put back if gc took it) under the
//! lock before the index's header names the commit (`IndexWriter::before_durable`), and
//! its name committed in one transaction with the
//! blobs a converted image was made from. A pinned name is re-pointed only with
//! [`Repoint::Force`]; a refusal or a failed transaction takes out of `blobs/` what only
//! it knew (moved into `tmp/` under the lock, unlinked after), so no blob is left unknown
//! to the index (invariant 8).

use std::fs;
use std::path::{Path, PathBuf};

use super::index::IndexWriter;
use super::store::{self, Placing, Staged};
use super::{
    BlobRecord, Cache, CacheError, Entry, IndexError, Ingest, IngestError, Ingested, PlacedFile,
    Provenance, RefRecord, Repoint, Scratch, Tap, refuse_digest_on_target, refuse_repoint,
};
use crate::format::clock;
use crate::format::digest::Digest;
use crate::format::reference::Reference;
use crate::testhook;

/// A blob a converted image was made from: one of its layers, or its config.
pub enum Part {
    /// Downloaded for this image: committed with it.
    New {
        content: Ingested,
        media_type: String,
        /// The registry's digest of it (`sha256:...`).
        remote_digest: String,
    },
    /// Already in the cache (see [`Cache::open_by_remote_digest`]).
    Known(Digest),
}

impl Cache {
    /// A new file in `tmp/` for content the caller writes (a download), hashed as it is
    /// written; `tap` computes a second hash of the same bytes on the same thread (use
    /// `()` for none). See [`Ingest`].
    pub fn ingest<T: Tap>(&self, tap: T) -> Result<Ingest<T>, IngestError> {
        Ingest::new(&self.store, tap)
    }

    /// An empty file in `tmp/` for a tool that writes content by path (see [`Scratch`]).
    pub fn scratch(&self) -> Result<Scratch, IngestError> {
        Scratch::new(&self.store)
    }

    /// Commit ingested content under `name`: `Cache::commit_staged`, the one commit
    /// path of `add` and of every pull.
    pub fn commit_ingested(
        &self,
        ingested: Ingested,
        name: &Reference,
        prov: Provenance,
        repoint: Repoint,
    ) -> Result<Entry, CacheError> {
        self.commit_staged(ingested.staged, Vec::new(), name, prov, repoint)
    }

    /// Commit a converted image under `name` together with the blobs it was made from
    /// (its layers and config, in that order), in one transaction: new parts go into
    /// `blobs/` with their remote digests; known parts are listed whether or not gc has
    /// collected them meanwhile (they are only a cache: the image is complete without
    /// them, and [`Cache::open_parts`] says which are missing).
    pub fn commit_image(
        &self,
        image: Ingested,
        parts: Vec<Part>,
        name: &Reference,
        prov: Provenance,
        repoint: Repoint,
    ) -> Result<Entry, CacheError> {
        self.commit_staged(image.staged, parts, name, prov, repoint)
    }

    /// Put staged content in place and point `name` at it, under the exclusive index lock
    /// (the one commit path of `add` and of every pull). A pinned name that points to
    /// other content is refused unless `repoint` says otherwise: checked under the lock,
    /// so a pin taken meanwhile counts; the refusal leaves the index and `blobs/` as they
    /// were. `parts` (a converted image's layers and config) are committed in the same
    /// transaction and listed in the blob's record.
    pub(super) fn commit_staged(
        &self,
        mut staged: Staged,
        parts: Vec<Part>,
        name: &Reference,
        prov: Provenance,
        repoint: Repoint,
    ) -> Result<Entry, CacheError> {
        refuse_digest_on_target(name)?;
        let now = clock::now();
        let digest = staged.digest();
        let key = name.key();
        let fan_dir_existed = self
            .store
            .blob_path(&digest)
            .parent()
            .is_some_and(Path::is_dir);
        // The staged file's fsync, its link into `blobs/` and the directory's fsync run on
        // a thread of their own while this one waits for the index lock and opens the
        // index; settled before anything reads the blob's place or names it, and on every
        // way out, so nothing links it after the staged file is gone.
        let mut placing = Placement(Some(staged.place_in_background(&self.store)), false);
        // A test stopping here finds the blob placed, as it would be after a slow lock.
        if testhook::wants("add-staged") {
            placing.settle(&mut staged);
        }
        testhook::pause("add-staged");
        // The pin check reads the index in the open that checks this build may write it,
        // before the read-write open: a refusal leaves the index file as it was, and the
        // blob placed before the lock (and its new fan-out directory) go again, as gc would.
        let mut refused_aside = Vec::new();
        let written = self.index.write_checked(|rd| {
            refuse_repoint(&key, &digest, repoint, rd.get_ref(&key)?, || {
                rd.is_pinned(&key)
            })
            .inspect_err(|_| {
                placing.settle(&mut staged);
                if matches!(rd.get_blob(&digest), Ok(None)) {
                    let blob = self.store.blob_path(&digest);
                    refused_aside.extend(self.take_out(&[digest]));
                    if !fan_dir_existed && let Some(dir) = blob.parent() {
                        let _ = fs::remove_dir(dir);
                    }
                }
            })
        });
        let mut w = match written {
            Ok(w) => w,
            Err(e) => {
                let linked = placing.settle(&mut staged);
                store::unlink_now(&refused_aside);
                // The index refused the writer (damaged, missing, newer): the blob this
                // command linked in must not stay unknown to it (invariant 8).
                if linked
                    && matches!(&e, CacheError::Index(ie) if !matches!(ie, IndexError::Lock(_)))
                {
                    self.take_back(&[digest]);
                }
                return Err(e);
            }
        };
        let mut aside = Vec::new();
        let refused = self.refuse_under_lock(&w, &key, &digest, repoint, &mut aside, || {
            placing.settle(&mut staged);
        });
        if let Err(e) = refused {
            drop(w);
            store::unlink_now(&aside);
            return Err(e);
        }
        let new_parts = parts.iter().filter_map(|p| match p {
            Part::New { content, .. } => Some(content.digest()),
            Part::Known(_) => None,
        });
        let fresh = unknown_to(&w, std::iter::once(digest).chain(new_parts))?;
        let placed_failure = PlacedFailure::default();
        let entry = match self.put_staged(
            &mut w,
            staged,
            parts,
            key,
            prov,
            now,
            placing.0.take(),
            &placed_failure,
        ) {
            Ok(entry) => entry,
            Err(e) => {
                let aside = self.take_out(&fresh);
                drop(w);
                store::unlink_now(&aside);
                return Err(e);
            }
        };
        // A test stopping here finds the blob in place, as it would be after a slow
        // transaction.
        if testhook::wants("add-index-uncommitted") {
            w.before_durable_now()?;
        }
        testhook::pause("add-index-uncommitted");
        let mut aside = Vec::new();
        let committed = w.commit_then_else(|| (), || aside = self.take_out(&fresh));
        store::unlink_now(&aside);
        if committed.is_err()
            && let Some(e) = placed_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        {
            // The blob could not be put in place: say so, not that the index failed.
            return Err(e.into());
        }
        committed?;
        Ok(entry)
    }

    /// Move the files of `ds` out of `blobs/` into `tmp/` (the caller holds the exclusive
    /// lock, and its transaction, which alone knew them, failed): the paths to
    /// [`store::unlink_now`] once the lock is released.
    pub(super) fn take_out(&self, ds: &[Digest]) -> Vec<PathBuf> {
        ds.iter()
            .filter_map(|d| self.store.unlink_later(d).ok().flatten())
            .collect()
    }

    /// A command that linked `linked` into `blobs/` failed before it could open its write
    /// transaction (the index is damaged, missing or refuses this build): under the
    /// exclusive lock, take out each of them that the index does not know, or every one
    /// when the index cannot be read (no writer can name anything then). These links are
    /// this command's own (the blob was not there before), so nothing else was handed them;
    /// a concurrent add of the same content puts the blob back from its staged file as it
    /// commits ([`store::Staged::commit`]).
    pub(super) fn take_back(&self, linked: &[Digest]) {
        let aside = self.index.view_exclusive(|view| {
            let gone: Vec<Digest> = linked
                .iter()
                .filter(|d| view.is_none_or(|v| !matches!(v.get_blob(d), Ok(Some(_)))))
                .copied()
                .collect();
            self.take_out(&gone)
        });
        if let Ok(aside) = aside {
            store::unlink_now(&aside);
        }
    }

    /// Under the exclusive lock, before `staged` is committed under `key`: refuse to
    /// re-point a pinned name (see [`Repoint`]). A refused blob that
    /// `Staged::place_in_background` linked in before the lock is nobody's unless the
    /// index knows it: it is moved aside into `aside` (for [`store::unlink_now`] once the
    /// lock is released), as gc would. `settle` is called before a refused blob is looked
    /// for in `blobs/`.
    pub(super) fn refuse_under_lock(
        &self,
        w: &IndexWriter,
        key: &str,
        digest: &Digest,
        repoint: Repoint,
        aside: &mut Vec<PathBuf>,
        settle: impl FnOnce(),
    ) -> Result<(), CacheError> {
        let refused = refuse_repoint(key, digest, repoint, w.get_ref(key)?, || w.is_pinned(key));
        if refused.is_err() && w.get_blob(digest)?.is_none() {
            settle();
            aside.extend(self.take_out(&[*digest]));
        }
        refused
    }

    /// In the open transaction `w` (the caller checked the pin): put the staged blob in
    /// place with the blobs it was made from, record it, point `key` at it and mark its
    /// use. Without `placing`, a store error leaves the transaction as it was (`add_many`
    /// goes on with the next file); an index error means the transaction must be dropped.
    /// With `placing` (the staged file still on its way into `blobs/` on a thread of its
    /// own), the records go in now and the blob is put in place by a hook run before the
    /// index's header names the commit ([`IndexWriter::before_durable`]), so that the
    /// thread has until then;
    /// any error means the transaction must be dropped, and a failure of the hook is left
    /// in `placed_failure` for the caller to report.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put_staged(
        &self,
        w: &mut IndexWriter,
        staged: Staged,
        parts: Vec<Part>,
        key: String,
        prov: Provenance,
        now: u64,
        placing: Option<Placing>,
        placed_failure: &PlacedFailure,
    ) -> Result<Entry, CacheError> {
        let digest = staged.digest();
        let size = staged.size();
        let old = w.get_blob(&digest)?;
        let (placed, own) = self.placement(old.as_ref(), &staged);
        let record = RefRecord {
            digest,
            added: now,
            source: Some(prov.source),
            labels: prov.labels,
        };
        // The thread first, then the staged file: dropped on an error below, the thread
        // is waited for before the staged file is removed.
        let (pending, path) = match placing {
            Some(placing) => (Some((placing, staged)), self.store.blob_path(&digest)),
            None => {
                let (path, _new) = staged.commit(&self.store, own)?;
                testhook::pause("add-blob-committed");
                (None, path)
            }
        };
        let mut part_digests = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                Part::New {
                    content,
                    media_type,
                    remote_digest,
                } => {
                    let (d, size) = (content.digest(), content.size());
                    // A part is never handed out by a `get`: no file identity recorded.
                    content.staged.commit(&self.store, None)?;
                    w.put_blob(
                        &d,
                        &BlobRecord {
                            size,
                            added: now,
                            media_type: Some(media_type),
                            remote_digest: Some(remote_digest),
                            ..Default::default()
                        },
                    )?;
                    part_digests.push(d);
                }
                // Listed even if gc dropped it meanwhile: the list stays the image's
                // whole recipe, and `open_parts` reports what is missing.
                Part::Known(d) => part_digests.push(d),
            }
        }
        match old {
            Some(old) => {
                let mut b = old.clone();
                if !part_digests.is_empty() {
                    b.parts = part_digests;
                }
                b.placed = placed;
                if b != old {
                    w.replace_blob(&digest, &b)?;
                }
            }
            None => w.put_blob(
                &digest,
                &BlobRecord {
                    size,
                    added: now,
                    media_type: prov.media_type,
                    remote_digest: prov.remote_digest,
                    parts: part_digests,
                    retired: None,
                    placed,
                },
            )?,
        }
        self.point_name(w, &key, &record, now)?;
        w.set_last_use(&key, now)?;
        let pinned = w.is_pinned(&key)?;
        let blob = w.get_blob(&digest)?;
        if let Some(pending) = pending {
            // The blob goes in place before the index's header names the commit, after the
            // journal's line and the commit's first phase: the thread placing it has until
            // then; the commit that names it becomes durable only with the flush after that.
            let (store, failed) = (self.store.clone(), placed_failure.clone());
            w.before_durable(Box::new(move || {
                let (placing, mut staged) = pending;
                staged.settle_committing(placing);
                match staged.commit(&store, own) {
                    Ok(_) => {
                        testhook::pause("add-blob-committed");
                        Ok(())
                    }
                    Err(e) => {
                        let io = std::io::Error::other(e.to_string());
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        Err(io)
                    }
                }
            }));
        }
        Ok(Entry {
            name: key,
            digest,
            size: Some(size),
            added: now,
            last_used: Some(now),
            pinned,
            source: record.source,
            labels: record.labels,
            media_type: blob.as_ref().and_then(|b| b.media_type.clone()),
            remote_digest: blob.and_then(|b| b.remote_digest),
            path,
            tier: None,
            private: self.private,
        })
    }
}

impl Cache {
    /// Which file the record of `staged`'s digest names once `staged` is committed (the
    /// caller holds the exclusive lock; `old` is the record as it is): the one it names
    /// now when that file is at the blob's path; else (a new blob, a record without
    /// [`PlacedFile`] or made in a cache copied from elsewhere, a blob missing or replaced
    /// from outside) the staged file, and then its inode number, which the commit makes
    /// sure is the blob's ([`Staged::commit`]'s `own`): a re-add restores a replaced blob.
    /// `(None, None)` when the staged file cannot be seen (the record then names no file,
    /// and nothing is compared).
    pub(super) fn placement(
        &self,
        old: Option<&BlobRecord>,
        staged: &Staged,
    ) -> (Option<PlacedFile>, Option<u64>) {
        if let Some(p) = old.and_then(|b| b.placed)
            && self.store.holds(&staged.digest(), &p)
        {
            return (Some(p), None);
        }
        let mine = self.store.placed_staged(staged);
        (mine, mine.map(|p| p.ino))
    }
}

/// Why the blob could not be put in place before the commit was named, for the commit's
/// caller to report rather than the index's failed commit.
pub(super) type PlacedFailure = std::sync::Arc<std::sync::Mutex<Option<super::StoreError>>>;

/// The way of a staged file into `blobs/` on a thread of its own
/// ([`Staged::place_in_background`]), until it is settled: then whether it made the link.
struct Placement(Option<Placing>, bool);

impl Placement {
    /// Wait for the thread (once): whether it linked the blob in.
    fn settle(&mut self, staged: &mut Staged) -> bool {
        if let Some(p) = self.0.take() {
            self.1 = staged.settle(p);
        }
        self.1
    }
}

/// Of `ds`, those the open transaction `w` has no record of (each once): what it must take
/// out of `blobs/` again if it fails.
pub(super) fn unknown_to(
    w: &IndexWriter,
    ds: impl IntoIterator<Item = Digest>,
) -> Result<Vec<Digest>, IndexError> {
    let mut out: Vec<Digest> = Vec::new();
    for d in ds {
        if !out.contains(&d) && w.get_blob(&d)?.is_none() {
            out.push(d);
        }
    }
    Ok(out)
}
