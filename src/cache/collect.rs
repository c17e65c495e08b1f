//! Removal: the one routine by which a blob leaves `blobs/`, and the collection that gc
//! plans over a consistent view of the index.
//!
//! A blob is removed only under the exclusive index lock, after the index shows that no
//! name refers to it ([`Cache::drop_blobs`]); its record goes in the transaction, its file
//! is moved into `tmp/` right after the commit, still under the lock
//! ([`Cache::move_aside`]), and unlinked after the lock is released. A kill at any point
//! leaves at most an unreferenced file, never a name without its file. `rm` and gc both
//! go through it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::index::{BlobRecord, IndexWriter, Named};
use super::ingest::Ingested;
use super::store::{self, Found, TmpFile};
use super::uses::UseMarkers;
use super::{Cache, CacheError, Progress};
use crate::format::digest::{Digest, hash_blob};
use crate::testhook;

/// What a collection removes, chosen by the caller's plan from a consistent view.
#[derive(Clone, Debug, Default)]
pub struct Victims {
    /// Names to remove.
    pub names: Vec<String>,
    /// Blobs to remove, known to the index or not (files under `blobs/` that only a
    /// crash between blob and name can leave). Each goes only if no name refers to it
    /// once the names are gone.
    pub blobs: Vec<Digest>,
}

/// Every name and every blob record, as [`Cache::snapshot`] read them.
pub type Snapshot = (Vec<Named>, Vec<(Digest, BlobRecord)>);

/// A blob [`Cache::drop_blobs`] removed.
pub(super) struct Dropped {
    /// Its recorded size, when the index knew it.
    pub size: Option<u64>,
    /// Whether its file was there (and is moved aside now).
    pub moved: bool,
}

/// Count the later of each name's recorded use and its marker's ([`UseMarkers`]).
pub(super) fn fold_marks(names: &mut [Named], marks: &HashMap<String, u64>) {
    if marks.is_empty() {
        return;
    }
    for n in names {
        if let Some(&t) = marks.get(&UseMarkers::file_name(&n.name)) {
            n.last_use = Some(n.last_use.map_or(t, |l| l.max(t)));
        }
    }
}

impl Cache {
    /// Remove the records of the blobs in `ds` that no name refers to (the caller holds
    /// the exclusive lock and has removed the names first). One answer per digest: `None`
    /// when a name still refers to it. The files stay until [`Cache::move_aside`], which
    /// the caller runs **after** its commit, still under the lock: a kill in between
    /// leaves an unreferenced file for the next gc, never a name whose file has gone.
    pub(super) fn drop_blobs(
        &self,
        w: &mut IndexWriter,
        ds: &[Digest],
    ) -> Result<Vec<Option<Dropped>>, CacheError> {
        let mut out = Vec::with_capacity(ds.len());
        for d in ds {
            if !w.names_of(d)?.is_empty() {
                out.push(None);
                continue;
            }
            let size = w.get_blob(d)?.map(|b| b.size);
            w.remove_blob(d)?;
            out.push(Some(Dropped { size, moved: false }));
        }
        Ok(out)
    }

    /// Move the files of the blobs [`Cache::drop_blobs`] dropped into `tmp/`, after the
    /// commit and still under the exclusive lock; their new paths go on `aside`, for
    /// [`store::unlink_now`] once the lock is released. A file that cannot be moved stays
    /// an unreferenced blob, which the next gc removes.
    pub(super) fn move_aside(
        &self,
        ds: &[Digest],
        dropped: &mut [Option<Dropped>],
        aside: &mut Vec<PathBuf>,
    ) {
        for (d, dropped) in ds.iter().zip(dropped.iter_mut()) {
            let Some(dropped) = dropped else { continue };
            if let Ok(Some(p)) = self.store.unlink_later(d) {
                aside.push(p);
                dropped.moved = true;
            }
        }
    }

    /// Every name and every blob record, from one view under the shared lock.
    pub fn snapshot(&self) -> Result<Snapshot, CacheError> {
        let rd = self.index.read()?;
        Ok((rd.all()?, rd.blobs()?))
    }

    /// Run `check` on every name and blob record while still holding the shared lock, so
    /// no name or blob record changes (nor a blob leaves `blobs/`) until it returns: for
    /// verify to look again at what it found before it reports it.
    pub fn with_snapshot<T>(&self, check: impl FnOnce(&Snapshot) -> T) -> Result<T, CacheError> {
        let rd = self.index.read()?;
        let snap = (rd.all()?, rd.blobs()?);
        Ok(check(&snap))
    }

    /// Where the blob `d` lives (whether or not it is there).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.store.blob_path(d)
    }

    /// The first recorded source among `names` (under the shared lock).
    pub fn first_source(&self, names: &[String]) -> Result<Option<String>, CacheError> {
        let rd = self.index.read()?;
        Ok(names
            .iter()
            .find_map(|n| rd.get_ref(n).ok().flatten().and_then(|r| r.source)))
    }

    /// Copy the file at `path` into `tmp/`, hashing it: content for
    /// [`Cache::quarantine`] to put back.
    pub fn copy_in(&self, path: &Path) -> Result<Ingested, String> {
        let staged = std::fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|mut f| {
                self.store
                    .stage_copy(&mut f, path, None)
                    .map_err(|e| e.to_string())
            })?;
        Ok(Ingested { staged })
    }

    /// Under the exclusive lock: move each corrupt blob (`corrupt`: digest and the path
    /// where it was found) into `quarantine/`, if the file there is still the one found
    /// corrupt (not added again meanwhile) or one its record says was not put there
    /// (replaced from outside, see [`BlobRecord::placed`]), so that `get` never hands it
    /// out again; then put `restore`d content in place. No name changes; a restored blob's
    /// record names the file put in place.
    pub fn quarantine(
        &self,
        corrupt: &[(Digest, PathBuf)],
        restore: Vec<Ingested>,
    ) -> Result<(), CacheError> {
        let qdir = self.quarantine_dir();
        let mut w = self.index.write()?;
        for (d, path) in corrupt {
            // Only if the file there is still the one we found corrupt (not re-added since).
            if self.store.blob_path(d) == *path
                && let Ok(m) = std::fs::metadata(path)
            {
                let replaced = w
                    .get_blob(d)?
                    .is_some_and(|b| self.store.replaced(&b, path, &m));
                if replaced || hash_blob(path, false).map_or(true, |(g, _)| g != *d) {
                    self.store
                        .quarantine(path, &qdir)
                        .map_err(|source| CacheError::Remove {
                            path: path.clone(),
                            source,
                        })?;
                }
            }
        }
        for r in restore {
            let d = r.digest();
            let old = w.get_blob(&d)?;
            let (placed, own) = self.placement(old.as_ref(), &r.staged);
            r.staged.commit(&self.store, own)?;
            if let Some(mut b) = old
                && b.placed != placed
            {
                b.placed = placed;
                w.replace_blob(&d, &b)?;
            }
        }
        w.commit()?;
        Ok(())
    }

    /// Every file under `blobs/`, without a lock (a snapshot: whoever acts on it checks
    /// again under the lock).
    pub fn blobs_on_disk(&self) -> Result<Vec<Found>, CacheError> {
        self.store.scan().map_err(|source| CacheError::Remove {
            path: self.store.blobs_dir().to_path_buf(),
            source,
        })
    }

    /// Every entry of `tmp/`, without a lock.
    pub fn tmp_files(&self) -> Result<Vec<TmpFile>, CacheError> {
        self.store.scan_tmp().map_err(|source| CacheError::Remove {
            path: self.store.tmp_dir().to_path_buf(),
            source,
        })
    }

    /// Remove the writer locks (`locks/writer-*`) of processes that are gone and whose
    /// `tmp/` files are gone too (see `crate::cache::writer`); returns how many went.
    pub fn remove_dead_writer_locks(&self) -> usize {
        self.store.remove_dead_writer_locks()
    }

    /// Remove stale entries of `tmp/` (no lock needed: nothing refers to them), a
    /// directory with what it holds; says for each whether it is gone.
    pub fn remove_tmp_files(&self, files: &[&TmpFile]) -> Vec<bool> {
        files
            .iter()
            .map(|t| {
                let Some(name) = t.path.file_name() else {
                    return false;
                };
                match self.store.remove_tmp_entry(name) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                }
            })
            .collect()
    }

    /// The use a `get` left in the marker of `name` (`crate::cache::uses`), read by the
    /// file's own path (a directory listing may miss a marker another node just wrote).
    pub fn marked_use(&self, name: &str) -> Option<u64> {
        self.uses.read(name)
    }

    /// Collect garbage as `plan` decides. `plan` sees every name (its last use the later
    /// of the index's and its marker's) and every blob record, from one consistent view,
    /// and returns what to remove (a pinned name among them stays). Under the exclusive
    /// index lock, then: the uses the
    /// markers held are folded into the index for the names that stay, the victim names
    /// go, each victim blob goes through `Cache::drop_blobs`, the transaction commits
    /// and the folded markers are removed before the lock is released; the blob files
    /// are unlinked after. With `dry_run`, `plan` runs under the shared lock and nothing
    /// changes.
    pub fn collect<T>(
        &self,
        dry_run: bool,
        plan: impl FnOnce(&mut [Named], &[(Digest, BlobRecord)]) -> (T, Victims),
    ) -> Result<T, CacheError> {
        self.collect_told(dry_run, plan, None)
    }

    /// [`Cache::collect`], telling `progress` the files removed of those to remove after
    /// each removed file is unlinked (after the lock is released: the names and records
    /// are gone by then). When it asks to stop, the unlinking stops; the files left stay
    /// in `tmp/` under their deleting names, which the next gc removes whatever their age.
    pub fn collect_told<T>(
        &self,
        dry_run: bool,
        plan: impl FnOnce(&mut [Named], &[(Digest, BlobRecord)]) -> (T, Victims),
        progress: Option<&dyn Progress>,
    ) -> Result<T, CacheError> {
        if dry_run {
            let rd = self.index.read()?;
            let mut names = rd.all()?;
            fold_marks(&mut names, &self.uses.all());
            return Ok(plan(&mut names, &rd.blobs()?).0);
        }
        let mut aside: Vec<PathBuf> = Vec::new();
        let out = {
            let mut w = self.index.write()?;
            let mut names = w.all()?;
            let recorded: HashMap<String, Option<u64>> =
                names.iter().map(|n| (n.name.clone(), n.last_use)).collect();
            let marks = self.uses.all();
            fold_marks(&mut names, &marks);
            let (out, victims) = plan(&mut names, &w.blobs()?);
            // A pinned name is never collected, whatever the plan says.
            let pinned: HashSet<&str> = names
                .iter()
                .filter(|n| n.pinned)
                .map(|n| n.name.as_str())
                .collect();
            let removed: HashSet<&str> = victims
                .names
                .iter()
                .map(String::as_str)
                .filter(|n| !pinned.contains(n))
                .collect();
            // Fold the uses the markers held into the index, so their markers can go.
            for n in &names {
                if let Some(t) = n.last_use
                    && !removed.contains(n.name.as_str())
                    && recorded.get(&n.name).copied().flatten() < Some(t)
                {
                    w.set_last_use(&n.name, t)?;
                }
            }
            for n in victims
                .names
                .iter()
                .filter(|n| removed.contains(n.as_str()))
            {
                w.remove_ref(n)?;
            }
            let mut dropped = self.drop_blobs(&mut w, &victims.blobs)?;
            testhook::pause("gc-uncommitted");
            // Still under the exclusive lock, so no `get` writes a marker meanwhile, and
            // no writer sees a record gone whose file is still in place.
            w.commit_then(|| {
                testhook::pause("gc-committed");
                self.move_aside(&victims.blobs, &mut dropped, &mut aside);
                for (file, t) in &marks {
                    self.uses.remove_file_folded(file, *t);
                }
            })?;
            out
        };
        testhook::pause("gc-deleting");
        match progress {
            None => store::unlink_now(&aside),
            Some(progress) => {
                let total = aside.len() as u64;
                progress.start(Some(total), 0);
                for (done, file) in (1..).zip(aside.chunks(1)) {
                    store::unlink_now(file);
                    progress.advance(done);
                    if progress.stop() {
                        break;
                    }
                }
                progress.finish();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::AddOptions;
    use crate::cache::lock::LockOptions;
    use crate::format::reference::Reference;

    /// The danger: `collect` is public, so a library caller's plan (not only gc's, which
    /// never picks a pinned name) could evict a pinned image from under the jobs that
    /// rely on it. The door refuses it, and keeps the blob the pinned name uses.
    #[test]
    fn a_plan_that_names_a_pinned_image_does_not_remove_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c"), LockOptions::default()).unwrap();
        let file = dir.path().join("a.img");
        std::fs::write(&file, b"pinned content").unwrap();
        let pinned = Reference::parse("lab/kept:1").unwrap();
        let loose = Reference::parse("lab/gone:1").unwrap();
        let entry = cache.add(&file, &pinned, &AddOptions::default()).unwrap();
        std::fs::write(&file, b"other content").unwrap();
        let other = cache.add(&file, &loose, &AddOptions::default()).unwrap();
        cache.set_pin(&pinned, true).unwrap();
        cache
            .collect(false, |names, blobs| {
                let victims = Victims {
                    names: names.iter().map(|n| n.name.clone()).collect(),
                    blobs: blobs.iter().map(|(d, _)| *d).collect(),
                };
                ((), victims)
            })
            .unwrap();
        let left: Vec<String> = cache
            .list(None)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(left, vec![pinned.key()]);
        assert!(entry.path.is_file(), "the pinned name's blob was removed");
        assert!(!other.path.exists(), "the unpinned name's blob was kept");
        assert_eq!(cache.get(&pinned).unwrap(), entry.path);
    }
}
