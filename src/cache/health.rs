//! The index's health, for `doctor`: read every record and page, compare the journal,
//! rebuild a damaged index from its journal (under the exclusive index lock); probe
//! whether the locks exclude each other on this filesystem (a probe file of its own in
//! `locks/`, removed at once, never a lock file in use). Where the files are, for the
//! messages and the checks of modes and access that `doctor` and `init --shared` make:
//! those paths are for showing and `stat`, and only this module opens them.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::index::{IndexError, IndexStats, JournalStatus, OnDisk, Rebuilt};
use super::{Cache, CacheError};
use crate::format::digest::Digest;

/// What [`Cache::repair_index`] did.
#[derive(Clone, Debug)]
pub enum Repaired {
    /// The index and its journal were whole: nothing.
    Nothing,
    /// The index was whole, its journal would not have rebuilt it: rewritten from it.
    Journal,
    /// The index was damaged: rebuilt from the journal.
    Index(Rebuilt),
}

impl Cache {
    /// The format directory (`<cache>/v1`).
    pub fn format_dir(&self) -> &Path {
        &self.v1
    }

    /// The index database (`v1/index.redb`).
    pub fn index_path(&self) -> &Path {
        self.index.db_path()
    }

    /// The index lock file.
    pub fn index_lock_path(&self) -> &Path {
        self.index.lock_path()
    }

    /// The index's journal (`v1/index.journal`).
    pub fn journal_path(&self) -> &Path {
        self.index.journal_path()
    }

    /// The blobs root (`v1/blobs/blake3`).
    pub fn blobs_dir(&self) -> &Path {
        self.store.blobs_dir()
    }

    /// The staging directory (`v1/tmp`).
    pub fn tmp_dir(&self) -> &Path {
        self.store.tmp_dir()
    }

    /// Where `verify` moves corrupt blobs (`v1/quarantine`).
    pub fn quarantine_dir(&self) -> PathBuf {
        self.v1.join("quarantine")
    }

    /// Where the per-pull locks are (`v1/locks`).
    pub fn locks_dir(&self) -> PathBuf {
        self.v1.join("locks")
    }

    /// Whether two descriptors of one file exclude each other with fcntl (OFD) locks here:
    /// `false` where the filesystem accepts the locks but does not enforce them. Uses a
    /// probe file of its own in `locks/` (in `v1/` before `locks/` exists), removed before
    /// the answer.
    pub fn probe_locks(&self) -> io::Result<bool> {
        let dir = self.locks_dir();
        super::lock::probe_ofd(if dir.is_dir() { &dir } else { &self.v1 })
    }

    /// How many corrupt blobs `verify` has moved into `quarantine/` (0 when it is missing).
    pub fn quarantined_count(&self) -> usize {
        fs::read_dir(self.quarantine_dir()).map_or(0, |r| r.count())
    }

    /// Create an empty index (with its journal) where there is none.
    pub fn create_index(&self) -> Result<(), IndexError> {
        self.index.write()?.commit()
    }

    /// The index's counts, and whether every page is intact (`false`: redb repaired
    /// damage), after reading every record under the shared lock and checking that this
    /// build may write it.
    pub fn index_health(&self) -> Result<(IndexStats, bool), IndexError> {
        let rd = self.index.read()?;
        let stats = rd.stats()?;
        // Read every record too: damage may sit in a page the counts do not touch.
        rd.all()?;
        rd.blobs()?;
        rd.check_writable()?;
        drop(rd);
        let intact = self.index.check_integrity()?;
        Ok((stats, intact))
    }

    /// Whether the journal would rebuild this index.
    pub fn journal_status(&self) -> Result<JournalStatus, IndexError> {
        self.index.journal_status()
    }

    /// `doctor --repair-index`: rebuild a damaged index from its journal; for an intact
    /// index, rewrite a journal that would not rebuild it.
    ///
    /// Repairs take turns: each holds `locks/index-repair.lock` from its first look at
    /// the index to the end of its rebuild (the check needs the index lock several times,
    /// shared and exclusive, so it cannot hold that one throughout). A second repair
    /// started meanwhile waits, then finds the index the first rebuilt whole and leaves it
    /// alone, instead of setting it aside as damaged. Lock order: the repair lock, then
    /// the index lock.
    pub fn repair_index(&self) -> Result<Repaired, CacheError> {
        self.ensure_layout()?;
        let _turn = super::lock::lock(
            &self.locks_dir().join("index-repair.lock"),
            super::lock::Mode::Exclusive,
            self.index.lock_options(),
        )
        .map_err(IndexError::from)?;
        let index = &self.index;
        let damage = (|| {
            let rd = index.read()?;
            rd.all()?;
            rd.blobs()?;
            drop(rd);
            let journal = index.journal_status()?;
            // A writer's checks (the journal in step with the index) without a change.
            drop(index.write()?);
            Ok::<_, IndexError>((index.check_integrity()?, journal))
        })();
        match damage {
            Ok((true, JournalStatus::InStep { .. })) => return Ok(Repaired::Nothing),
            Ok((true, _)) => {
                index.rewrite_journal()?;
                return Ok(Repaired::Journal);
            }
            Ok((false, _)) => {}
            Err(e) if e.needs_repair() => {}
            Err(e) => return Err(e.into()),
        }
        crate::testhook::pause("repair-checked");
        // What each blob file is, for the records the journal lacks: a SIF says so in
        // its header.
        let on_disk: HashMap<Digest, OnDisk> = self
            .blobs_on_disk()?
            .into_iter()
            .filter_map(|f| {
                let media_type = matches!(crate::format::sif::read_if_sif(&f.path), Some(Ok(_)))
                    .then(|| crate::format::sif::MEDIA_TYPE.to_string());
                let in_flight = fs::metadata(&f.path).is_ok_and(|m| m.nlink() > 1);
                f.digest.map(|d| {
                    (
                        d,
                        OnDisk {
                            size: f.size,
                            media_type,
                            in_flight,
                        },
                    )
                })
            })
            .collect();
        Ok(Repaired::Index(index.rebuild(&on_disk)?))
    }
}
