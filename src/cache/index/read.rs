//! Reading the index: [`IndexReader`], one redb read transaction under the shared index
//! lock (or, for the view a writer checks, under the writer's exclusive lock), and the
//! table readers the writer shares with it.
//!
//! Every call into redb goes through the reader's panic guard ([`super::damage`]); a
//! record that does not decode is [`IndexError::Corrupt`]. Dropping the reader ends the
//! transaction, closes the database, then releases the lock (field order).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redb::{
    ReadOnlyDatabase, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use serde::Serialize;

use super::damage::{caught, dberr, from_redb, guarded};
use super::kept::Slot;
use super::schema::{ABOUT, BLOBS, LAST_USE, Levels, META, PINS, REFS, get_u64_in, levels_in};
use super::{BlobRecord, IndexError, RefRecord, decode_blob, decode_ref};
use crate::cache::lock::LockGuard;
use crate::format::digest::Digest;

/// A name with everything the index knows about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub record: RefRecord,
    pub blob: Option<BlobRecord>,
    pub last_use: Option<u64>,
    pub pinned: bool,
}

/// A read snapshot under the shared lock. Fields drop in order: transaction, database,
/// then the lock.
pub(crate) struct IndexReader {
    pub(super) txn: Option<ReadTransaction>,
    /// Instead of `txn`: the read transaction and tables a kept open keeps while the
    /// index is unchanged ([`super::kept`]).
    pub(super) snap: Option<Arc<Snapshot>>,
    /// Shared with the open [`super::Index::read_kept`] keeps, when it came from there.
    pub(super) _db: Option<Arc<ReadOnlyDatabase>>,
    /// `None` for the view a writer checks under its own exclusive lock.
    pub(super) _lock: Option<LockGuard>,
    pub(super) path: PathBuf,
    pub(super) poisoned: Cell<bool>,
    /// For a reader of a kept open: set when a call fails, so that the open is not kept.
    pub(super) kept: Option<Arc<AtomicBool>>,
    /// Where the lock file's descriptor goes once the lock is released, to be locked
    /// again by the next lookup ([`super::kept`]); `None`: it is closed.
    pub(super) keep_lock: Option<Arc<Mutex<Slot>>>,
}

/// A read transaction of a kept open and the tables a `get` reads, opened once and
/// read by every lookup while the index is unchanged ([`super::kept`]). `None` for a
/// table the index does not have.
pub(super) struct Snapshot {
    pub(super) refs: Option<ReadOnlyTable<&'static str, &'static [u8]>>,
    pub(super) blobs: Option<ReadOnlyTable<&'static str, &'static [u8]>>,
    pub(super) last_use: Option<ReadOnlyTable<&'static str, u64>>,
    pub(super) txn: ReadTransaction,
    /// The records read through it so far: a read transaction sees one commit, so a
    /// record it read once is what it would read again. Only ever tried (another
    /// thread in it reads the tables instead), and emptied when it holds [`MEMO_MAX`].
    memo: Mutex<Memo>,
}

/// Records a [`Snapshot`] has read (decoded), by key; `None`: not in the index.
#[derive(Default)]
struct Memo {
    refs: HashMap<String, Option<RefRecord>>,
    blobs: HashMap<Digest, Option<BlobRecord>>,
}

/// How many records a [`Snapshot`] keeps, of each table.
const MEMO_MAX: usize = 1024;

impl Snapshot {
    /// A read of `db` and its tables (the caller holds the shared lock).
    pub(super) fn of(db: &ReadOnlyDatabase, path: &Path) -> Result<Snapshot, IndexError> {
        let txn = db.begin_read().map_err(|e| from_redb(path, e.into()))?;
        let open = |def| match txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(from_redb(path, e.into())),
        };
        let refs = open(REFS)?;
        let blobs = open(BLOBS)?;
        let last_use = match txn.open_table(LAST_USE) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(from_redb(path, e.into())),
        };
        Ok(Snapshot {
            refs,
            blobs,
            last_use,
            txn,
            memo: Mutex::new(Memo::default()),
        })
    }

    /// The record of `key` in `table` of the memo, else `read` and remembered.
    fn recall<K, Q, T>(
        &self,
        table: impl Fn(&mut Memo) -> &mut HashMap<K, Option<T>>,
        key: &Q,
        read: impl FnOnce() -> Result<Option<T>, IndexError>,
    ) -> Result<Option<T>, IndexError>
    where
        K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
        T: Clone,
    {
        if let Ok(mut memo) = self.memo.try_lock()
            && let Some(found) = table(&mut memo).get(key)
        {
            return Ok(found.clone());
        }
        let found = read()?;
        if let Ok(mut memo) = self.memo.try_lock() {
            let map = table(&mut memo);
            if map.len() >= MEMO_MAX {
                map.clear();
            }
            map.insert(key.to_owned(), found.clone());
        }
        Ok(found)
    }
}

impl Drop for IndexReader {
    fn drop(&mut self) {
        // redb may panic closing a damaged database too; the lock goes after, as declared.
        let (txn, snap, db) = (self.txn.take(), self.snap.take(), self._db.take());
        caught(move || drop((txn, snap, db)));
        if let (Some(slot), Some(guard)) = (self.keep_lock.take(), self._lock.take()) {
            super::kept::give_back(&slot, guard);
        }
    }
}

pub(super) fn corrupt(path: &Path, key: &str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Corrupt {
        path: path.to_path_buf(),
        key: key.to_string(),
        detail: e.to_string(),
    }
}

/// Read one record and decode it with `decode` ([`decode_ref`] or [`decode_blob`], the
/// decoders the fuzz target exercises); a record that does not decode is `Corrupt`.
fn get_record_in<T>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
    path: &Path,
    decode: fn(&[u8]) -> Result<T, serde_json::Error>,
) -> Result<Option<T>, IndexError> {
    match t.get(key).map_err(dberr(path))? {
        Some(v) => decode(v.value())
            .map(Some)
            .map_err(|e| corrupt(path, key, e)),
        None => Ok(None),
    }
}

pub(super) fn get_ref_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
    path: &Path,
) -> Result<Option<RefRecord>, IndexError> {
    get_record_in(t, key, path, decode_ref)
}

pub(super) fn get_blob_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    hex: &str,
    path: &Path,
) -> Result<Option<BlobRecord>, IndexError> {
    get_record_in(t, hex, path, decode_blob)
}

/// Every name with its blob record, last use and pin, from open tables.
pub(super) fn all_in(
    refs: &impl ReadableTable<&'static str, &'static [u8]>,
    blobs: Option<&impl ReadableTable<&'static str, &'static [u8]>>,
    last_use: Option<&impl ReadableTable<&'static str, u64>>,
    pins: Option<&impl ReadableTable<&'static str, u64>>,
    p: &Path,
) -> Result<Vec<Named>, IndexError> {
    let mut last: HashMap<String, u64> = HashMap::new();
    if let Some(t) = last_use {
        for row in t.iter().map_err(dberr(p))? {
            let (k, v) = row.map_err(dberr(p))?;
            last.insert(k.value().to_string(), v.value());
        }
    }
    let mut pinned: HashSet<String> = HashSet::new();
    if let Some(t) = pins {
        for row in t.iter().map_err(dberr(p))? {
            pinned.insert(row.map_err(dberr(p))?.0.value().to_string());
        }
    }
    let mut blob_cache: HashMap<Digest, Option<BlobRecord>> = HashMap::new();
    let mut out = Vec::with_capacity(refs.len().map_err(dberr(p))? as usize);
    for row in refs.iter().map_err(dberr(p))? {
        let (k, v) = row.map_err(dberr(p))?;
        let name = k.value().to_string();
        let record = decode_ref(v.value()).map_err(|e| corrupt(p, &name, e))?;
        let blob = match blob_cache.get(&record.digest) {
            Some(b) => b.clone(),
            None => {
                let b = match blobs {
                    Some(t) => get_blob_in(t, &record.digest.hex(), p)?,
                    None => None,
                };
                blob_cache.insert(record.digest, b.clone());
                b
            }
        };
        out.push(Named {
            last_use: last.get(&name).copied(),
            pinned: pinned.contains(&name),
            name,
            record,
            blob,
        });
    }
    Ok(out)
}

/// Every blob record of an open table.
pub(super) fn blobs_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    p: &Path,
) -> Result<Vec<(Digest, BlobRecord)>, IndexError> {
    let mut out = Vec::new();
    for row in t.iter().map_err(dberr(p))? {
        let (k, v) = row.map_err(dberr(p))?;
        let hex = k.value();
        let d = Digest::from_hex(hex).ok_or_else(|| corrupt(p, hex, "not a digest"))?;
        out.push((d, decode_blob(v.value()).map_err(|e| corrupt(p, hex, e))?));
    }
    Ok(out)
}

impl IndexReader {
    /// Run `f` under the reader's panic guard.
    pub(super) fn guard<T>(
        &self,
        f: impl FnOnce() -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let r = guarded(&self.poisoned, &self.path, f);
        if r.is_err()
            && let Some(failed) = &self.kept
        {
            failed.store(true, Ordering::Relaxed);
        }
        r
    }

    /// A table of the snapshot; `None` when the index, or the table, does not exist yet.
    pub(super) fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, IndexError> {
        let txn = match (&self.txn, &self.snap) {
            (Some(txn), _) => txn,
            (None, Some(snap)) => &snap.txn,
            (None, None) => return Ok(None),
        };
        match txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(from_redb(&self.path, e.into())),
        }
    }

    pub(super) fn levels(&self) -> Result<Levels, IndexError> {
        self.guard(|| {
            levels_in(
                self.table(META)?.as_ref(),
                self.table(ABOUT)?.as_ref(),
                &self.path,
            )
        })
    }

    pub(super) fn check_schema(&self) -> Result<(), IndexError> {
        self.levels()?.require(&self.path, "read")
    }

    /// Whether this build may change the index: the error a writer would refuse with.
    pub(crate) fn check_writable(&self) -> Result<(), IndexError> {
        self.levels()?.require(&self.path, "change")
    }

    /// The record of one name.
    pub(crate) fn get_ref(&self, key: &str) -> Result<Option<RefRecord>, IndexError> {
        if let Some(s) = &self.snap {
            return self.guard(|| {
                s.recall(
                    |m| &mut m.refs,
                    key,
                    || {
                        s.refs
                            .as_ref()
                            .map_or(Ok(None), |t| get_ref_in(t, key, &self.path))
                    },
                )
            });
        }
        self.guard(|| {
            self.table(REFS)?
                .map_or(Ok(None), |t| get_ref_in(&t, key, &self.path))
        })
    }

    /// The record of one blob.
    pub(crate) fn get_blob(&self, d: &Digest) -> Result<Option<BlobRecord>, IndexError> {
        if let Some(s) = &self.snap {
            return self.guard(|| {
                s.recall(
                    |m| &mut m.blobs,
                    d,
                    || {
                        s.blobs
                            .as_ref()
                            .map_or(Ok(None), |t| get_blob_in(t, &d.hex(), &self.path))
                    },
                )
            });
        }
        self.guard(|| {
            self.table(BLOBS)?
                .map_or(Ok(None), |t| get_blob_in(&t, &d.hex(), &self.path))
        })
    }

    /// When the name was last used, as recorded.
    pub(crate) fn last_use(&self, key: &str) -> Result<Option<u64>, IndexError> {
        if let Some(s) = &self.snap {
            return self.guard(|| {
                s.last_use
                    .as_ref()
                    .map_or(Ok(None), |t| get_u64_in(t, key, &self.path))
            });
        }
        self.guard(|| {
            self.table(LAST_USE)?
                .map_or(Ok(None), |t| get_u64_in(&t, key, &self.path))
        })
    }

    /// Whether the name is pinned.
    pub(crate) fn is_pinned(&self, key: &str) -> Result<bool, IndexError> {
        self.guard(|| {
            self.table(PINS)?.map_or(
                Ok(false),
                |t| Ok(get_u64_in(&t, key, &self.path)?.is_some()),
            )
        })
    }

    /// Every name, sorted, with its blob record, last use and pin.
    pub(crate) fn all(&self) -> Result<Vec<Named>, IndexError> {
        self.guard(|| {
            let Some(refs) = self.table(REFS)? else {
                return Ok(Vec::new());
            };
            let blobs = self.table(BLOBS)?;
            let last = self.table(LAST_USE)?;
            let pins = self.table(PINS)?;
            all_in(
                &refs,
                blobs.as_ref(),
                last.as_ref(),
                pins.as_ref(),
                &self.path,
            )
        })
    }

    /// Every blob record.
    pub(crate) fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, IndexError> {
        self.guard(|| {
            self.table(BLOBS)?
                .map_or(Ok(Vec::new()), |t| blobs_in(&t, &self.path))
        })
    }

    /// Counts for `info`: (names, blobs, total blob bytes, pins, schema version).
    pub(crate) fn stats(&self) -> Result<IndexStats, IndexError> {
        self.guard(|| {
            let mut s = IndexStats::default();
            let p = &self.path;
            if let Some(t) = self.table(REFS)? {
                s.names = t.len().map_err(dberr(p))?;
            }
            if let Some(t) = self.table(BLOBS)? {
                for row in t.iter().map_err(dberr(p))? {
                    let (k, v) = row.map_err(dberr(p))?;
                    let b = decode_blob(v.value()).map_err(|e| corrupt(p, k.value(), e))?;
                    s.blobs += 1;
                    s.bytes += b.size;
                }
            }
            if let Some(t) = self.table(PINS)? {
                s.pins = t.len().map_err(dberr(p))?;
            }
            if let Some(t) = self.table(META)? {
                s.schema_version = get_u64_in(&t, "schema_version", p)?.unwrap_or(0);
            }
            Ok(s)
        })
    }
}

/// Summary counts of an index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexStats {
    pub names: u64,
    pub blobs: u64,
    pub bytes: u64,
    pub pins: u64,
    pub schema_version: u64,
}
