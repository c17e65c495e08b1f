//! Rebuilding the index from its journal (`doctor --repair-index`, [`Index::rebuild`])
//! and comparing the two (`doctor`, [`Index::journal_status`]): see "Damage, and the
//! journal that undoes it" in [`super`].
//!
//! A rebuild runs under the exclusive index lock: it replays the journal, moves the
//! damaged index aside (never deleting it), builds a fresh one under a temporary name and
//! renames it into place; every blob file no replayed name points at is kept under a
//! pinned [`recovered_name`]. The comparison runs under the shared lock and changes nothing.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use super::damage::{from_redb, guarded};
use super::schema::get_u64_in;
use super::schema::{BLOB_REFS, BLOBS, LAST_USE, META, PINS, REFS, encode};
use super::{BlobRecord, Index, IndexError, RefRecord, journal};
use crate::cache::lock::{self, Mode};
use crate::format::digest::Digest;

/// What `Index::rebuild` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rebuilt {
    pub names: u64,
    pub blobs: u64,
    pub pins: u64,
    /// Where the damaged index was moved (`None` when there was none).
    pub moved_aside: Option<PathBuf>,
    /// Names whose blob file is missing (kept; `verify` reports them too).
    pub missing_blobs: Vec<String>,
    /// Blob records made from the blob files because the journal had none.
    pub blob_records_from_files: u64,
    /// Transactions replayed after the journal's snapshot, and those marked void.
    pub replayed: u64,
    pub voided: u64,
    /// Journal lines that could not be read and were skipped.
    pub skipped_lines: Vec<usize>,
    /// Where the journal with those lines was kept before a fresh one replaced it.
    pub journal_aside: Option<PathBuf>,
    /// There was no journal: the index was rebuilt from `blobs/` alone.
    pub from_blobs_alone: bool,
    /// Blob files no rebuilt name pointed at, kept under a recovered, pinned name.
    pub recovered: Vec<Recovered>,
}

/// A blob file that a rebuild found without a name, now kept under [`recovered_name`].
#[derive(Clone, Debug, Serialize)]
pub struct Recovered {
    pub name: String,
    pub digest: Digest,
    pub size: u64,
    pub media_type: Option<String>,
}

/// What a rebuild knows of a blob file from `blobs/` itself.
#[derive(Clone, Debug, Default)]
pub(crate) struct OnDisk {
    pub size: u64,
    /// Sniffed from the content (a SIF's header), when it tells.
    pub media_type: Option<String>,
    /// The file has a second link: the staged file in `tmp/` of an add or pull that is
    /// committing it, or was killed before it could (no name was ever committed for it).
    pub in_flight: bool,
}

/// The name a rebuild gives a blob that no name points at: `recovered/<hex>:latest`.
pub fn recovered_name(d: &Digest) -> String {
    format!("recovered/{}:latest", d.hex())
}

impl Index {
    /// Rebuild the index from the journal (`doctor --repair-index`), under the exclusive
    /// lock: see the protocol above. `on_disk` maps each blob file found to its size.
    pub(crate) fn rebuild(&self, on_disk: &HashMap<Digest, OnDisk>) -> Result<Rebuilt, IndexError> {
        let _guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        let replayed = self.replay_for_rebuild()?;
        let journal_missing = !self.journal_path.exists();
        let now = crate::format::clock::now();
        let mut state = replayed.state;
        let mut report = Rebuilt {
            replayed: replayed.applied,
            voided: replayed.voided,
            skipped_lines: replayed.skipped,
            from_blobs_alone: journal_missing,
            ..Rebuilt::default()
        };
        records_from_files(
            &mut state,
            on_disk,
            &replayed.never_committed,
            now,
            &mut report,
        );
        let base = self.journal_for(&state, replayed.seq, now, &mut report)?;
        report.moved_aside = self.move_damaged_aside(now)?;
        let base =
            base.unwrap_or_else(|| std::fs::metadata(&self.journal_path).map_or(0, |m| m.len()));
        self.write_rebuilt(&state, replayed.seq, base, now)?;
        report.names = state.refs.len() as u64;
        report.blobs = state.blobs.len() as u64;
        report.pins = state
            .pins
            .keys()
            .filter(|n| state.refs.contains_key(*n))
            .count() as u64;
        Ok(report)
    }

    fn rebuild_err(&self, detail: String) -> IndexError {
        IndexError::Rebuild {
            path: self.db_path.clone(),
            detail,
        }
    }

    /// The journal's names, or none when there is no journal (deleted with the index, a
    /// partial restore: every image still comes back, under a recovered name).
    fn replay_for_rebuild(&self) -> Result<journal::Replayed, IndexError> {
        match journal::replay(&self.journal_path) {
            Ok(r) => Ok(r),
            Err(journal::ReplayError::Missing { .. }) => Ok(journal::Replayed::default()),
            Err(e) => Err(self.rebuild_err(format!(
                "{e}; no name can be recovered from it (the images stay in `blobs/`; add them again by name)"
            ))),
        }
    }

    /// The journal must rebuild what the new index holds: a fresh snapshot of it, when
    /// that differs from what the journal replays (the snapshot's length is returned, the
    /// index's `journal_base`). A journal with lines that could not be read is kept aside
    /// first, as the damaged index is.
    fn journal_for(
        &self,
        state: &journal::State,
        seq: u64,
        now: u64,
        report: &mut Rebuilt,
    ) -> Result<Option<u64>, IndexError> {
        let rewrite = report.from_blobs_alone
            || !report.recovered.is_empty()
            || !report.skipped_lines.is_empty();
        if !rewrite {
            return Ok(None);
        }
        if !report.skipped_lines.is_empty() {
            let aside = self
                .journal_path
                .with_file_name(format!("index.journal.damaged-{now}"));
            std::fs::copy(&self.journal_path, &aside)
                .map_err(|e| self.rebuild_err(format!("cannot keep `{}`: {e}", aside.display())))?;
            report.journal_aside = Some(aside);
        }
        journal::write_snapshot(&self.journal_path, state, seq, self.file_mode)
            .map(Some)
            .map_err(|e| {
                self.rebuild_err(format!(
                    "cannot write `{}`: {e}",
                    self.journal_path.display()
                ))
            })
    }

    /// Move a damaged index aside, under a name no earlier repair used: it is kept, never
    /// replaced.
    fn move_damaged_aside(&self, now: u64) -> Result<Option<PathBuf>, IndexError> {
        if !self.db_path.exists() {
            return Ok(None);
        }
        let aside = (0..)
            .map(|n| {
                let suffix = if n == 0 {
                    String::new()
                } else {
                    format!(".{n}")
                };
                self.db_path
                    .with_file_name(format!("index.redb.damaged-{now}{suffix}"))
            })
            .find(|p| !p.exists())
            .unwrap_or_default();
        std::fs::rename(&self.db_path, &aside).map_err(|e| {
            self.rebuild_err(format!(
                "cannot move it aside to `{}`: {e}",
                aside.display()
            ))
        })?;
        Ok(Some(aside))
    }

    /// Build the fresh index from `state` and rename it into place.
    fn write_rebuilt(
        &self,
        state: &journal::State,
        seq: u64,
        base: u64,
        now: u64,
    ) -> Result<(), IndexError> {
        let poisoned = Cell::new(false);
        guarded(&poisoned, &self.db_path, || {
            self.build_fresh(|txn| {
                let err = |e: redb::StorageError| from_redb(&self.db_path, e.into());
                let terr = |e: redb::TableError| from_redb(&self.db_path, e.into());
                let mut refs = txn.open_table(REFS).map_err(terr)?;
                let mut back = txn.open_multimap_table(BLOB_REFS).map_err(terr)?;
                let mut last = txn.open_table(LAST_USE).map_err(terr)?;
                for (name, r) in &state.refs {
                    refs.insert(name.as_str(), encode(r).as_slice())
                        .map_err(err)?;
                    back.insert(r.digest.hex().as_str(), name.as_str())
                        .map_err(err)?;
                    // A rebuild counts as a use: no name is evicted for a lost use time.
                    last.insert(name.as_str(), now).map_err(err)?;
                }
                let mut blobs = txn.open_table(BLOBS).map_err(terr)?;
                for (d, b) in &state.blobs {
                    blobs
                        .insert(d.hex().as_str(), encode(b).as_slice())
                        .map_err(err)?;
                }
                let mut pins = txn.open_table(PINS).map_err(terr)?;
                for (name, at) in &state.pins {
                    if state.refs.contains_key(name) {
                        pins.insert(name.as_str(), *at).map_err(err)?;
                    }
                }
                let mut meta = txn.open_table(META).map_err(terr)?;
                meta.insert("journal_seq", seq).map_err(err)?;
                meta.insert("journal_base", base).map_err(err)?;
                Ok(())
            })
        })
    }
}

/// Blob records for the replayed names whose blob the journal does not describe (from
/// the files), and every blob file that no name points at and no named image lists as a
/// part kept under a recovered name, pinned: its name may be what the damage lost, and
/// gc must not take it (invariant 8). The user names it again, or removes it. A file an
/// add or pull holds a staged link to is theirs, named by their commit or (killed) never
/// named, and so is one only a void transaction recorded: left to them and to gc.
fn records_from_files(
    state: &mut journal::State,
    on_disk: &HashMap<Digest, OnDisk>,
    never_committed: &std::collections::BTreeSet<Digest>,
    now: u64,
    report: &mut Rebuilt,
) {
    for (name, r) in &state.refs {
        if !on_disk.contains_key(&r.digest) {
            report.missing_blobs.push(name.clone());
        }
    }
    let wanted: HashSet<Digest> = state.refs.values().map(|r| r.digest).collect();
    let from_file = |f: &OnDisk| BlobRecord {
        size: f.size,
        added: now,
        media_type: f.media_type.clone(),
        ..Default::default()
    };
    for d in &wanted {
        if let (None, Some(f)) = (state.blobs.get(d), on_disk.get(d)) {
            state.blobs.insert(*d, from_file(f));
            report.blob_records_from_files += 1;
        }
    }
    let parts: HashSet<Digest> = wanted
        .iter()
        .filter_map(|d| state.blobs.get(d))
        .flat_map(|b| b.parts.iter().copied())
        .collect();
    let mut loose: Vec<(&Digest, &OnDisk)> = on_disk
        .iter()
        .filter(|(d, f)| {
            let killed_writers =
                f.in_flight || (never_committed.contains(d) && !state.blobs.contains_key(d));
            !killed_writers && !wanted.contains(d) && !parts.contains(d)
        })
        .collect();
    loose.sort_by_key(|(d, _)| d.hex());
    for (d, f) in loose {
        let name = recovered_name(d);
        if !state.blobs.contains_key(d) {
            state.blobs.insert(*d, from_file(f));
            report.blob_records_from_files += 1;
        }
        state.refs.insert(
            name.clone(),
            RefRecord {
                digest: *d,
                added: now,
                source: None,
                labels: BTreeMap::new(),
            },
        );
        state.pins.insert(name.clone(), now);
        report.recovered.push(Recovered {
            name,
            digest: *d,
            size: f.size,
            media_type: f.media_type.clone(),
        });
    }
}

/// How the journal compares with the index (`Index::journal_status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalStatus {
    /// It would rebuild exactly the names, records and pins of the index.
    InStep { names: u64, lines: u64 },
    /// There is none yet (a cache not written since it was upgraded to the journal).
    Missing,
    /// It cannot be replayed.
    Unreadable(String),
    /// It would rebuild something else: the names that differ.
    Differs(Vec<String>),
}

impl Index {
    /// Replace the journal with a snapshot of the index (`doctor --repair-index` on an
    /// intact index whose journal would not rebuild it).
    pub(crate) fn rewrite_journal(&self) -> Result<(), IndexError> {
        let w = self.write()?;
        w.guard(|| w.snapshot())?;
        w.commit()
    }

    /// Replay the journal and compare it with the index, under the shared lock (`doctor`).
    pub(crate) fn journal_status(&self) -> Result<JournalStatus, IndexError> {
        let rd = self.read()?;
        let all = rd.all()?;
        let seq = rd.guard(|| match rd.table(META)? {
            Some(t) => get_u64_in(&t, "journal_seq", &rd.path),
            None => Ok(None),
        })?;
        let replayed = match journal::replay(&self.journal_path) {
            Ok(r) => r,
            Err(journal::ReplayError::Missing { .. }) => return Ok(JournalStatus::Missing),
            Err(e) => return Ok(JournalStatus::Unreadable(e.to_string())),
        };
        drop(rd);
        if replayed.seq > seq.unwrap_or(0) + 1 {
            // The journal holds changes the index never saw: it is the newer of the two.
            return Err(self.behind_journal());
        }
        let lines = std::fs::read(&self.journal_path)
            .map(|t| t.iter().filter(|&&b| b == b'\n').count() as u64)
            .unwrap_or(0);
        let state = replayed.state;
        let mut differ: Vec<String> = all
            .iter()
            .filter(|n| {
                state.refs.get(&n.name) != Some(&n.record)
                    || state.pins.contains_key(&n.name) != n.pinned
            })
            .map(|n| n.name.clone())
            .collect();
        let indexed: HashSet<&str> = all.iter().map(|n| n.name.as_str()).collect();
        differ.extend(
            state
                .refs
                .keys()
                .filter(|k| !indexed.contains(k.as_str()))
                .cloned(),
        );
        if differ.is_empty() {
            Ok(JournalStatus::InStep {
                names: all.len() as u64,
                lines,
            })
        } else {
            Ok(JournalStatus::Differs(differ))
        }
    }
}
