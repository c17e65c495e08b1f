//! Writing the index: [`IndexWriter`], one write transaction under the exclusive index
//! lock, through fenced descriptors (see "Protocol" and "Damage, and the journal that
//! undoes it" in [`super`]).
//!
//! A writer migrates the schema and checks the journal against `meta.journal_seq` as it
//! opens; each change is journalled, and the transaction's line is appended before redb
//! commits (a `void` line follows a failed commit). The journal is compacted into a
//! snapshot when it outgrows its last one. Dropped without a commit, a writer changes
//! nothing.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;

use redb::{Database, ReadableMultimapTable, ReadableTable, TableDefinition, WriteTransaction};

use super::damage::dberr;
use super::damage::{caught, from_redb, guarded};
use super::journal::{self, Line, Op, State};
use super::open::{FencedFile, fence_journal};
use super::read::{all_in, blobs_in, corrupt, get_blob_in, get_ref_in};
use super::schema::get_u64_in;
use super::schema::{
    ABOUT, BLOB_REFS, BLOBS, COMPACT_MIN, COMPACT_RATIO, LAST_USE, META, MIGRATIONS, PINS, REFS,
    encode, levels_in, stamp_schema,
};
use super::{BlobRecord, IndexError, Named, RefRecord, SCHEMA_VERSION, decode_ref};
use crate::cache::lock::{LockGuard, LockOptions};
use crate::format::digest::Digest;

/// One write transaction under the exclusive lock. Dropped without
/// [`commit`](IndexWriter::commit), it changes nothing.
pub(crate) struct IndexWriter {
    pub(super) txn: Option<WriteTransaction>,
    pub(super) db: Option<Database>,
    /// The journal, opened and fenced (`lock::fence`); `None` until it exists, and again
    /// after a snapshot replaced the file. Closed before the lock is released (field
    /// order), which on NFS sends its last line to the server first.
    pub(super) journal_file: RefCell<Option<FencedFile>>,
    pub(super) lock_opts: LockOptions,
    pub(super) _lock: LockGuard,
    pub(super) path: PathBuf,
    pub(super) journal: PathBuf,
    pub(super) file_mode: u32,
    pub(super) poisoned: Cell<bool>,
    /// The changes to journal at commit.
    pub(super) ops: RefCell<Vec<Op>>,
    /// `meta.journal_seq` as the transaction began.
    pub(super) seq: Cell<u64>,
    /// The journal ends in a line cut short: the next append ends it first.
    pub(super) torn: Cell<bool>,
    /// What must be done before the commit is named ([`IndexWriter::before_durable`]).
    pub(super) before_flush: super::backend::BeforeFlush,
}

impl IndexWriter {
    /// Run `f` under the writer's panic guard.
    pub(super) fn guard<T>(
        &self,
        f: impl FnOnce() -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        guarded(&self.poisoned, &self.path, f)
    }

    pub(super) fn txn(&self) -> &WriteTransaction {
        // Present from construction until commit consumes self.
        self.txn
            .as_ref()
            .expect("write transaction present until commit")
    }

    pub(super) fn err(&self) -> impl Fn(redb::Error) -> IndexError + '_ {
        move |source| from_redb(&self.path, source)
    }

    /// Append a line to the journal through the fenced descriptor (fencing a new one when
    /// the file is new).
    pub(super) fn append(&self, line: &Line, torn: bool) -> Result<(), IndexError> {
        let mut file = self.journal_file.borrow_mut();
        if file.is_none() {
            *file = fence_journal(&self.journal, &self.lock_opts)?;
        }
        match file.as_ref() {
            Some((_, f)) => journal::append_to(f, line, torn).map_err(self.journal_err()),
            None => Err(self.journal_err()(std::io::Error::from(
                std::io::ErrorKind::NotFound,
            ))),
        }
    }

    pub(super) fn journal_err(&self) -> impl Fn(std::io::Error) -> IndexError + '_ {
        move |source| {
            if source
                .raw_os_error()
                .is_some_and(super::damage::refused_by_the_server)
            {
                IndexError::Refused {
                    path: self.journal.clone(),
                    source,
                }
            } else {
                IndexError::Journal {
                    path: self.journal.clone(),
                    source,
                }
            }
        }
    }

    /// One of the index's tables, in this transaction.
    pub(super) fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<redb::Table<'_, K, V>, IndexError> {
        self.txn().open_table(def).map_err(|e| self.err()(e.into()))
    }

    /// The multimap from blob to names, in this transaction.
    pub(super) fn blob_refs(
        &self,
    ) -> Result<redb::MultimapTable<'_, &'static str, &'static str>, IndexError> {
        self.txn()
            .open_multimap_table(BLOB_REFS)
            .map_err(|e| self.err()(e.into()))
    }

    pub(super) fn migrate(&self) -> Result<(), IndexError> {
        let txn = self.txn();
        let current = get_u64_in(&self.table(META)?, "schema_version", &self.path)?.unwrap_or(0);
        if current > SCHEMA_VERSION {
            // Newer than this build: change it only if its write level allows, and leave
            // its schema stamps alone.
            let meta = self.table(META)?;
            let about = txn.open_table(ABOUT).ok();
            let levels = levels_in(Some(&meta), about.as_ref(), &self.path)?;
            levels.require(&self.path, "read")?;
            return levels.require(&self.path, "change");
        }
        for m in &MIGRATIONS[current as usize..] {
            (m.up)(txn).map_err(self.err())?;
        }
        if current != SCHEMA_VERSION {
            stamp_schema(txn).map_err(self.err())?;
        }
        Ok(())
    }

    /// Bring the journal in step with the index as the transaction begins (see the
    /// protocol above), compacting it when it has grown.
    pub(super) fn check_journal(&self) -> Result<(), IndexError> {
        let meta = self.table(META)?;
        let seq = get_u64_in(&meta, "journal_seq", &self.path)?.unwrap_or(0);
        let base = get_u64_in(&meta, "journal_base", &self.path)?.unwrap_or(0);
        drop(meta);
        self.seq.set(seq);
        // Through the descriptor fenced as the lock was taken, when there is one: the
        // journal no other writer can replace while this one holds the lock.
        let tail = match self.journal_file.borrow().as_ref() {
            Some((_, f)) => journal::tail_of(f),
            None => journal::tail(&self.journal),
        }
        .map_err(self.journal_err())?;
        let Some(tail) = tail else {
            return self.snapshot();
        };
        self.torn.set(tail.torn);
        let in_step = match tail.last {
            Some((s, false)) if s == seq => true,
            Some((s, true)) if s == seq + 1 => true,
            Some((s, false)) if s == seq + 1 => {
                // The last writer died between its append and its commit.
                let void = Line {
                    seq: s,
                    void: true,
                    ..Line::default()
                };
                self.append(&void, tail.torn)?;
                self.torn.set(false);
                true
            }
            Some((s, _)) if s > seq + 1 => {
                return Err(IndexError::BehindJournal {
                    path: self.path.clone(),
                    journal: self.journal.clone(),
                });
            }
            _ => false,
        };
        if !in_step || tail.len > (COMPACT_RATIO * base).max(COMPACT_MIN) {
            return self.snapshot();
        }
        Ok(())
    }

    /// Replace the journal with a snapshot of the index as committed.
    pub(super) fn snapshot(&self) -> Result<(), IndexError> {
        let state = self.state()?;
        let bytes = journal::write_snapshot(&self.journal, &state, self.seq.get(), self.file_mode)
            .map_err(self.journal_err())?;
        // The descriptor fenced before is of the file the snapshot replaced.
        self.journal_file.replace(None);
        self.torn.set(false);
        let mut meta = self.table(META)?;
        meta.insert("journal_base", bytes)
            .map_err(dberr(&self.path))?;
        meta.insert("journal_seq", self.seq.get())
            .map_err(dberr(&self.path))?;
        Ok(())
    }

    /// Every blob record, name and pin in this transaction.
    pub(super) fn state(&self) -> Result<State, IndexError> {
        let p = &self.path;
        let mut s = State::default();
        for row in self.table(REFS)?.iter().map_err(dberr(p))? {
            let (k, v) = row.map_err(dberr(p))?;
            let rec = decode_ref(v.value()).map_err(|e| corrupt(p, k.value(), e))?;
            s.refs.insert(k.value().to_string(), rec);
        }
        s.blobs = blobs_in(&self.table(BLOBS)?, p)?.into_iter().collect();
        for row in self.table(PINS)?.iter().map_err(dberr(p))? {
            let (k, v) = row.map_err(dberr(p))?;
            s.pins.insert(k.value().to_string(), v.value());
        }
        Ok(s)
    }

    fn journal_op(&self, op: Op) {
        self.ops.borrow_mut().push(op);
    }

    pub(crate) fn get_ref(&self, key: &str) -> Result<Option<RefRecord>, IndexError> {
        self.guard(|| get_ref_in(&self.table(REFS)?, key, &self.path))
    }

    pub(crate) fn get_blob(&self, d: &Digest) -> Result<Option<BlobRecord>, IndexError> {
        self.guard(|| get_blob_in(&self.table(BLOBS)?, &d.hex(), &self.path))
    }

    pub(crate) fn is_pinned(&self, key: &str) -> Result<bool, IndexError> {
        self.guard(|| Ok(get_u64_in(&self.table(PINS)?, key, &self.path)?.is_some()))
    }

    /// Names pointing at a blob.
    pub(crate) fn names_of(&self, d: &Digest) -> Result<Vec<String>, IndexError> {
        self.guard(|| {
            let t = self.blob_refs()?;
            let mut out = Vec::new();
            for v in t.get(d.hex().as_str()).map_err(dberr(&self.path))? {
                out.push(v.map_err(dberr(&self.path))?.value().to_string());
            }
            Ok(out)
        })
    }

    /// Point `key` at `record.digest`; returns the record it replaces, if any.
    pub(crate) fn put_ref(
        &mut self,
        key: &str,
        record: &RefRecord,
    ) -> Result<Option<RefRecord>, IndexError> {
        self.guard(|| {
            let old = get_ref_in(&self.table(REFS)?, key, &self.path)?;
            let mut refs = self.table(REFS)?;
            let mut back = self.blob_refs()?;
            if let Some(o) = &old {
                back.remove(o.digest.hex().as_str(), key)
                    .map_err(dberr(&self.path))?;
            }
            refs.insert(key, encode(record).as_slice())
                .map_err(dberr(&self.path))?;
            back.insert(record.digest.hex().as_str(), key)
                .map_err(dberr(&self.path))?;
            self.journal_op(Op::PutRef {
                name: key.to_string(),
                record: record.clone(),
            });
            Ok(old)
        })
    }

    /// Remove a name (with its last-use and pin entries); returns its record.
    pub(crate) fn remove_ref(&mut self, key: &str) -> Result<Option<RefRecord>, IndexError> {
        self.guard(|| {
            let mut refs = self.table(REFS)?;
            let old = match refs.remove(key).map_err(dberr(&self.path))? {
                Some(v) => Some(decode_ref(v.value()).map_err(|e| corrupt(&self.path, key, e))?),
                None => None,
            };
            if let Some(o) = &old {
                let mut back = self.blob_refs()?;
                back.remove(o.digest.hex().as_str(), key)
                    .map_err(dberr(&self.path))?;
                let mut lu = self.table(LAST_USE)?;
                lu.remove(key).map_err(dberr(&self.path))?;
                let mut pins = self.table(PINS)?;
                pins.remove(key).map_err(dberr(&self.path))?;
                self.journal_op(Op::RemoveRef {
                    name: key.to_string(),
                });
            }
            Ok(old)
        })
    }

    /// Record a blob (keeps the first `added` time when it is already known).
    pub(crate) fn put_blob(&mut self, d: &Digest, record: &BlobRecord) -> Result<(), IndexError> {
        if self.get_blob(d)?.is_some() {
            return Ok(());
        }
        self.replace_blob(d, record)
    }

    /// Overwrite a blob's record.
    pub(crate) fn replace_blob(
        &mut self,
        d: &Digest,
        record: &BlobRecord,
    ) -> Result<(), IndexError> {
        self.guard(|| {
            let mut t = self.table(BLOBS)?;
            t.insert(d.hex().as_str(), encode(record).as_slice())
                .map_err(dberr(&self.path))?;
            self.journal_op(Op::PutBlob {
                digest: *d,
                record: record.clone(),
            });
            Ok(())
        })
    }

    /// Forget a blob.
    pub(crate) fn remove_blob(&mut self, d: &Digest) -> Result<(), IndexError> {
        self.guard(|| {
            let mut t = self.table(BLOBS)?;
            if t.remove(d.hex().as_str())
                .map_err(dberr(&self.path))?
                .is_some()
            {
                self.journal_op(Op::RemoveBlob { digest: *d });
            }
            Ok(())
        })
    }

    /// The recorded last use of `key` (precise to [`LAST_USE_RESOLUTION`]).
    pub(crate) fn last_use(&self, key: &str) -> Result<Option<u64>, IndexError> {
        self.guard(|| get_u64_in(&self.table(LAST_USE)?, key, &self.path))
    }

    pub(crate) fn set_last_use(&mut self, key: &str, when: u64) -> Result<(), IndexError> {
        self.guard(|| {
            let mut t = self.table(LAST_USE)?;
            t.insert(key, when).map_err(dberr(&self.path))?;
            Ok(())
        })
    }

    /// Pin or unpin a name; returns whether that changed anything.
    pub(crate) fn set_pin(
        &mut self,
        key: &str,
        pinned: bool,
        when: u64,
    ) -> Result<bool, IndexError> {
        self.guard(|| {
            let mut t = self.table(PINS)?;
            let changed = if pinned {
                t.insert(key, when).map_err(dberr(&self.path))?.is_none()
            } else {
                t.remove(key).map_err(dberr(&self.path))?.is_some()
            };
            if changed {
                self.journal_op(if pinned {
                    Op::Pin {
                        name: key.to_string(),
                        at: when,
                    }
                } else {
                    Op::Unpin {
                        name: key.to_string(),
                    }
                });
            }
            Ok(changed)
        })
    }

    /// Every name, sorted, with its blob record, last use and pin.
    pub(crate) fn all(&self) -> Result<Vec<Named>, IndexError> {
        self.guard(|| {
            let refs = self.table(REFS)?;
            let blobs = self.table(BLOBS)?;
            let last = self.table(LAST_USE)?;
            let pins = self.table(PINS)?;
            all_in(&refs, Some(&blobs), Some(&last), Some(&pins), &self.path)
        })
    }

    /// Every blob record.
    pub(crate) fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, IndexError> {
        self.guard(|| blobs_in(&self.table(BLOBS)?, &self.path))
    }

    /// Journal the changes, make them durable, close the database, release the lock.
    pub(crate) fn commit(self) -> Result<(), IndexError> {
        self.commit_then(|| ())
    }

    /// [`commit`](IndexWriter::commit), then run `after` while the exclusive lock is still
    /// held (to remove what the commit made redundant, with no reader or writer between).
    pub(crate) fn commit_then<T>(self, after: impl FnOnce() -> T) -> Result<T, IndexError> {
        self.commit_then_else(after, || ())
    }

    /// Run `hook` before the index names this transaction's commit: after the journal's
    /// line is written, before the first flush of the commit or, when that flush cannot
    /// publish it, before the header write that does (`backend::UnderOurLock::flush`); its
    /// error fails the commit. It may take until then (a blob on its way into `blobs/`: the
    /// commit that names it becomes durable only with the flush after the hook). Dropped unrun when the transaction
    /// is not committed, before anything else the writer does on the way out.
    pub(crate) fn before_durable(&self, hook: super::backend::Hook) {
        self.before_flush.set(hook);
    }

    /// Run the [`IndexWriter::before_durable`] hook now, if there is one (for a test that
    /// stops before the commit).
    pub(crate) fn before_durable_now(&self) -> Result<(), IndexError> {
        match self.before_flush.take() {
            Some(hook) => {
                hook().map_err(|e| from_redb(&self.path, redb::StorageError::Io(e).into()))
            }
            None => Ok(()),
        }
    }

    /// [`commit_then`](IndexWriter::commit_then), and if the commit fails, run `failed`
    /// while the exclusive lock is still held (to take out what the failed transaction
    /// had put in `blobs/`, with no writer between: invariant 8 of the design).
    pub(crate) fn commit_then_else<T>(
        mut self,
        after: impl FnOnce() -> T,
        failed: impl FnOnce(),
    ) -> Result<T, IndexError> {
        // Every commit flushes, so the hook has run; were it ever left, it runs now, late
        // (the blob is then in place, if after its name).
        let done = self.commit_inner().and_then(|()| self.before_durable_now());
        match done {
            Ok(()) => Ok(after()),
            Err(e) => {
                // A hook not run yet goes first: what it would put in place is not wanted.
                drop(self.before_flush.take());
                failed();
                Err(e)
            }
        }
    }

    fn commit_inner(&mut self) -> Result<(), IndexError> {
        let ops = self.ops.take();
        let seq = self.seq.get() + 1;
        let journaled = !ops.is_empty();
        if journaled {
            self.guard(|| {
                let mut meta = self.table(META)?;
                meta.insert("journal_seq", seq).map_err(dberr(&self.path))?;
                Ok(())
            })?;
            let line = Line {
                seq,
                ops,
                ..Line::default()
            };
            self.append(&line, self.torn.get())?;
            crate::testhook::pause("index-journalled");
        }
        let (txn, db) = (self.txn.take(), self.db.take());
        let committed = guarded(&self.poisoned, &self.path, || {
            if let Some(txn) = txn {
                txn.commit().map_err(|e| from_redb(&self.path, e.into()))?;
            }
            if let Some(db) = db {
                db.close().map_err(|e| from_redb(&self.path, e.into()))?;
            }
            Ok(())
        });
        if committed.is_err() && journaled {
            // Best effort: if this line is lost too, the next writer voids it.
            let void = Line {
                seq,
                void: true,
                ..Line::default()
            };
            let _ = self.append(&void, false);
        }
        committed
    }
}

impl Drop for IndexWriter {
    fn drop(&mut self) {
        // A hook not run is dropped unrun: the abort and the close below must not run it.
        drop(self.before_flush.take());
        // Abort an uncommitted transaction before the database and lock go; redb may
        // panic doing so on a damaged database.
        let (txn, db) = (self.txn.take(), self.db.take());
        caught(move || {
            if let Some(txn) = txn {
                let _ = txn.abort();
            }
            drop(db);
        });
    }
}
