//! The index: which name points to which blob, in a redb database.
//!
//! # Protocol
//!
//! `v1/index.redb` is opened only while this process holds `v1/index.lock`
//! ([`crate::lock`]):
//!
//! * **read**: the lock shared, the database opened read-only ([`redb::ReadOnlyDatabase`]);
//!   any number of processes on any number of nodes at once.
//! * **write**: the lock exclusive, the database opened read-write, one write transaction,
//!   committed durably, the database closed, then the lock released.
//!
//! redb's own file locks are not used ([`UnderOurLock`]): our lock already gives readers
//! and the writer the exclusion they would, and on NFS each of their 18 or so lock calls
//! per open would be a round trip to the server. Our lock makes waits bounded and
//! announced where redb would refuse a second opener outright. Both holds last milliseconds: no
//! hashing, copying or downloading happens under the index lock, and no other lock is
//! waited for while it is held.
//!
//! After a crash of a writer, a read-only open fails with `RepairAborted`: the reader
//! then takes the exclusive lock, opens read-write (which repairs), and reads again.
//!
//! # Tables (values are JSON, so fields can be added with defaults)
//!
//! | table       | key              | value                                   |
//! |-------------|------------------|-----------------------------------------|
//! | `refs`      | name (`ns/n:tag`) | [`RefRecord`]: digest, added, source, labels |
//! | `blobs`     | digest hex       | [`BlobRecord`]: size, added, media type, remote digest |
//! | `blob_refs` | digest hex       | (multimap) every name pointing at it    |
//! | `last_use`  | name             | Unix seconds; written only when older than [`LAST_USE_RESOLUTION`] |
//! | `pins`      | name             | Unix seconds when pinned                |
//! | `meta`      | `schema_version` | [`SCHEMA_VERSION`]                      |
//!
//! Migrations are an append-only list ([`MIGRATIONS`]); never remove an entry from it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{
    BackendError, Database, MultimapTableDefinition, ReadOnlyDatabase, ReadTransaction,
    ReadableDatabase, ReadableMultimapTable, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::lock::{self, LockError, LockGuard, LockOptions, Mode};

const REFS: TableDefinition<&str, &[u8]> = TableDefinition::new("refs");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const BLOB_REFS: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("blob_refs");
const LAST_USE: TableDefinition<&str, u64> = TableDefinition::new("last_use");
const PINS: TableDefinition<&str, u64> = TableDefinition::new("pins");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The schema this build writes: the number of [`MIGRATIONS`].
pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;
/// `last_use` is rewritten only when the stored time is older than this (seconds).
pub const LAST_USE_RESOLUTION: u64 = 600;
/// redb page cache per open (the index is small; this keeps `get` lean).
const CACHE_BYTES: usize = 8 << 20;

type Migration = fn(&WriteTransaction) -> Result<(), redb::Error>;

/// Append-only list of schema migrations; entry `i` takes schema `i` to `i + 1`.
/// Never remove or reorder an entry.
pub const MIGRATIONS: &[Migration] = &[create_v1_tables];

fn create_v1_tables(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(REFS)?;
    txn.open_table(BLOBS)?;
    txn.open_multimap_table(BLOB_REFS)?;
    txn.open_table(LAST_USE)?;
    txn.open_table(PINS)?;
    Ok(())
}

/// What a name records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    pub digest: Digest,
    /// Unix seconds when this name was (last) pointed at its digest.
    pub added: u64,
    /// Where the content came from: a remote reference, or the local file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What a blob records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    /// Unix seconds when the blob entered the cache.
    pub added: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The remote's own digest of this content (e.g. `sha256:...`), when pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_digest: Option<String>,
}

/// Index failures, each naming the index file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the index `{path}` cannot be read: {source} (run `sregistry doctor`)")]
    Db { path: PathBuf, source: redb::Error },
    #[error(
        "the index `{path}` has a damaged record for `{key}`: {detail} (run `sregistry doctor`)"
    )]
    Corrupt {
        path: PathBuf,
        key: String,
        detail: String,
    },
    #[error(
        "the index `{path}` was written by a newer sregistry (schema {found}, this one knows {SCHEMA_VERSION}); upgrade sregistry"
    )]
    NewerSchema { path: PathBuf, found: u64 },
}

/// Decode a record stored in the index. Public so fuzzing can reach it.
pub fn decode_ref(bytes: &[u8]) -> Result<RefRecord, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Decode a blob record stored in the index.
pub fn decode_blob(bytes: &[u8]) -> Result<BlobRecord, serde_json::Error> {
    serde_json::from_slice(bytes)
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Handle on the index of one cache.
#[derive(Clone, Debug)]
pub struct Index {
    db_path: PathBuf,
    lock_path: PathBuf,
    lock_opts: LockOptions,
    file_mode: u32,
}

impl Index {
    /// The index of the cache version directory `v1`.
    pub fn new(v1: &Path, lock_opts: LockOptions, file_mode: u32) -> Index {
        Index {
            db_path: v1.join("index.redb"),
            lock_path: v1.join("index.lock"),
            lock_opts,
            file_mode,
        }
    }

    pub fn lock_options(&self) -> &LockOptions {
        &self.lock_opts
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    fn db_err(&self) -> impl Fn(redb::Error) -> IndexError + '_ {
        move |source| IndexError::Db {
            path: self.db_path.clone(),
            source,
        }
    }

    /// Open for reading under the shared lock.
    pub fn read(&self) -> Result<IndexReader, IndexError> {
        let mut repaired = false;
        loop {
            let guard = lock::lock(&self.lock_path, Mode::Shared, &self.lock_opts)?;
            if !self.db_path.exists() {
                return Ok(IndexReader {
                    txn: None,
                    _db: None,
                    _lock: guard,
                    path: self.db_path.clone(),
                });
            }
            let opened = UnderOurLock::open(&self.db_path, false)
                .map_err(redb::DatabaseError::Storage)
                .and_then(|backend| {
                    redb::Builder::new()
                        .set_cache_size(CACHE_BYTES)
                        .open_read_only_with_backend(backend)
                });
            match opened {
                Ok(db) => {
                    let txn = db.begin_read().map_err(|e| self.db_err()(e.into()))?;
                    let reader = IndexReader {
                        txn: Some(txn),
                        _db: Some(db),
                        _lock: guard,
                        path: self.db_path.clone(),
                    };
                    reader.check_schema()?;
                    return Ok(reader);
                }
                Err(redb::DatabaseError::RepairAborted) if !repaired => {
                    // A writer died mid-commit: repair under the exclusive lock, read again.
                    drop(guard);
                    self.repair()?;
                    repaired = true;
                }
                Err(e) => return Err(self.db_err()(e.into())),
            }
        }
    }

    fn repair(&self) -> Result<(), IndexError> {
        let _guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        let db = self.open_rw()?;
        db.close().map_err(|e| self.db_err()(e.into()))
    }

    /// Open read-write (caller holds the exclusive lock). A missing index is first built
    /// complete under a temporary name and renamed into place, so a crash during creation
    /// never leaves a half-written `index.redb` behind.
    fn open_rw(&self) -> Result<Database, IndexError> {
        if !self.db_path.exists() {
            self.create_fresh()?;
        }
        let backend =
            UnderOurLock::open(&self.db_path, true).map_err(|e| self.db_err()(e.into()))?;
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| self.db_err()(e.into()))
    }

    fn create_fresh(&self) -> Result<(), IndexError> {
        let dir = self.db_path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".index.redb.new-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let io = |source: std::io::Error| self.db_err()(redb::StorageError::Io(source).into());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io)?;
        let backend = UnderOurLock::wrap(file).map_err(|e| self.db_err()(e.into()))?;
        let db = redb::Builder::new()
            .create_with_backend(backend)
            .map_err(|e| self.db_err()(e.into()))?;
        let txn = db.begin_write().map_err(|e| self.db_err()(e.into()))?;
        let mut meta = txn.open_table(META).map_err(|e| self.db_err()(e.into()))?;
        for m in MIGRATIONS {
            m(&txn).map_err(self.db_err())?;
        }
        meta.insert("schema_version", SCHEMA_VERSION)
            .map_err(|e| self.db_err()(e.into()))?;
        drop(meta);
        txn.commit().map_err(|e| self.db_err()(e.into()))?;
        db.close().map_err(|e| self.db_err()(e.into()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(self.file_mode))
            .map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &self.db_path).map_err(io)?;
        crate::store::sync_dir(dir).map_err(io)?;
        Ok(())
    }

    /// Check every page's checksum and rebuild the allocator state, under the exclusive
    /// lock (`doctor`). `Ok(false)` means redb found damage and repaired what it could.
    pub fn check_integrity(&self) -> Result<bool, IndexError> {
        let _guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        if !self.db_path.exists() {
            return Ok(true);
        }
        let mut db = self.open_rw()?;
        let ok = db.check_integrity().map_err(|e| self.db_err()(e.into()))?;
        db.close().map_err(|e| self.db_err()(e.into()))?;
        Ok(ok)
    }

    /// Open for writing under the exclusive lock; changes land with [`IndexWriter::commit`].
    pub fn write(&self) -> Result<IndexWriter, IndexError> {
        let guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        self.writer(guard)
    }

    /// Open for writing only if the exclusive lock is free within `wait`; `None` if not.
    pub fn try_write(&self, wait: std::time::Duration) -> Result<Option<IndexWriter>, IndexError> {
        let opts = LockOptions {
            timeout: wait,
            announce: false,
            ..self.lock_opts.clone()
        };
        match lock::lock(&self.lock_path, Mode::Exclusive, &opts) {
            Ok(guard) => self.writer(guard).map(Some),
            Err(LockError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn writer(&self, guard: LockGuard) -> Result<IndexWriter, IndexError> {
        let db = self.open_rw()?;
        let mut txn = db.begin_write().map_err(|e| self.db_err()(e.into()))?;
        // The commit itself need not reach the disk: `commit()` closes the database right
        // after, and redb's close makes a pending commit durable (with the allocator state)
        // in one go, saving three fsyncs per write. If the process dies in between, the
        // change is lost, but it was never reported done either.
        txn.set_durability(redb::Durability::None)
            .map_err(|e| IndexError::Corrupt {
                path: self.db_path.clone(),
                key: "durability".into(),
                detail: e.to_string(),
            })?;
        let mut w = IndexWriter {
            txn: Some(txn),
            db: Some(db),
            _lock: guard,
            path: self.db_path.clone(),
        };
        w.migrate()?;
        Ok(w)
    }
}

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
pub struct IndexReader {
    txn: Option<ReadTransaction>,
    _db: Option<ReadOnlyDatabase>,
    _lock: LockGuard,
    path: PathBuf,
}

fn dberr(path: &Path) -> impl Fn(redb::StorageError) -> IndexError + '_ {
    move |e| IndexError::Db {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn corrupt(path: &Path, key: &str, e: impl std::fmt::Display) -> IndexError {
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

fn get_ref_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
    path: &Path,
) -> Result<Option<RefRecord>, IndexError> {
    get_record_in(t, key, path, decode_ref)
}

fn get_blob_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    hex: &str,
    path: &Path,
) -> Result<Option<BlobRecord>, IndexError> {
    get_record_in(t, hex, path, decode_blob)
}

fn get_u64_in(
    t: &impl ReadableTable<&'static str, u64>,
    key: &str,
    path: &Path,
) -> Result<Option<u64>, IndexError> {
    Ok(t.get(key).map_err(dberr(path))?.map(|v| v.value()))
}

/// Every name with its blob record, last use and pin, from open tables.
fn all_in(
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
fn blobs_in(
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
    /// A table of the snapshot; `None` when the index, or the table, does not exist yet.
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, IndexError> {
        let Some(txn) = &self.txn else {
            return Ok(None);
        };
        match txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(IndexError::Db {
                path: self.path.clone(),
                source: e.into(),
            }),
        }
    }

    fn check_schema(&self) -> Result<(), IndexError> {
        if let Some(meta) = self.table(META)?
            && let Some(v) = get_u64_in(&meta, "schema_version", &self.path)?
            && v > SCHEMA_VERSION
        {
            return Err(IndexError::NewerSchema {
                path: self.path.clone(),
                found: v,
            });
        }
        Ok(())
    }

    /// The record of one name.
    pub fn get_ref(&self, key: &str) -> Result<Option<RefRecord>, IndexError> {
        self.table(REFS)?
            .map_or(Ok(None), |t| get_ref_in(&t, key, &self.path))
    }

    /// The record of one blob.
    pub fn get_blob(&self, d: &Digest) -> Result<Option<BlobRecord>, IndexError> {
        self.table(BLOBS)?
            .map_or(Ok(None), |t| get_blob_in(&t, &d.hex(), &self.path))
    }

    /// When the name was last used, as recorded.
    pub fn last_use(&self, key: &str) -> Result<Option<u64>, IndexError> {
        self.table(LAST_USE)?
            .map_or(Ok(None), |t| get_u64_in(&t, key, &self.path))
    }

    /// Whether the name is pinned.
    pub fn is_pinned(&self, key: &str) -> Result<bool, IndexError> {
        self.table(PINS)?.map_or(
            Ok(false),
            |t| Ok(get_u64_in(&t, key, &self.path)?.is_some()),
        )
    }

    /// Every name, sorted, with its blob record, last use and pin.
    pub fn all(&self) -> Result<Vec<Named>, IndexError> {
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
    }

    /// Every blob record.
    pub fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, IndexError> {
        self.table(BLOBS)?
            .map_or(Ok(Vec::new()), |t| blobs_in(&t, &self.path))
    }

    /// Counts for `info`: (names, blobs, total blob bytes, pins, schema version).
    pub fn stats(&self) -> Result<IndexStats, IndexError> {
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

/// One write transaction under the exclusive lock. Dropped without
/// [`commit`](IndexWriter::commit), it changes nothing.
pub struct IndexWriter {
    txn: Option<WriteTransaction>,
    db: Option<Database>,
    _lock: LockGuard,
    path: PathBuf,
}

impl IndexWriter {
    fn txn(&self) -> &WriteTransaction {
        // Present from construction until commit consumes self.
        self.txn
            .as_ref()
            .expect("write transaction present until commit")
    }

    fn err(&self) -> impl Fn(redb::Error) -> IndexError + '_ {
        move |source| IndexError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// One of the index's tables, in this transaction.
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<redb::Table<'_, K, V>, IndexError> {
        self.txn().open_table(def).map_err(|e| self.err()(e.into()))
    }

    /// The multimap from blob to names, in this transaction.
    fn blob_refs(&self) -> Result<redb::MultimapTable<'_, &'static str, &'static str>, IndexError> {
        self.txn()
            .open_multimap_table(BLOB_REFS)
            .map_err(|e| self.err()(e.into()))
    }

    fn migrate(&mut self) -> Result<(), IndexError> {
        let txn = self.txn();
        let mut meta = self.table(META)?;
        let current = get_u64_in(&meta, "schema_version", &self.path)?.unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(IndexError::NewerSchema {
                path: self.path.clone(),
                found: current,
            });
        }
        for m in &MIGRATIONS[current as usize..] {
            m(txn).map_err(self.err())?;
        }
        if current != SCHEMA_VERSION {
            meta.insert("schema_version", SCHEMA_VERSION)
                .map_err(|e| self.err()(e.into()))?;
        }
        Ok(())
    }

    pub fn get_ref(&self, key: &str) -> Result<Option<RefRecord>, IndexError> {
        let t = self.table(REFS)?;
        get_ref_in(&t, key, &self.path)
    }

    pub fn get_blob(&self, d: &Digest) -> Result<Option<BlobRecord>, IndexError> {
        let t = self.table(BLOBS)?;
        get_blob_in(&t, &d.hex(), &self.path)
    }

    pub fn last_use(&self, key: &str) -> Result<Option<u64>, IndexError> {
        let t = self.table(LAST_USE)?;
        get_u64_in(&t, key, &self.path)
    }

    pub fn is_pinned(&self, key: &str) -> Result<bool, IndexError> {
        let t = self.table(PINS)?;
        Ok(get_u64_in(&t, key, &self.path)?.is_some())
    }

    /// Names pointing at a blob.
    pub fn names_of(&self, d: &Digest) -> Result<Vec<String>, IndexError> {
        let t = self.blob_refs()?;
        let mut out = Vec::new();
        for v in t.get(d.hex().as_str()).map_err(dberr(&self.path))? {
            out.push(v.map_err(dberr(&self.path))?.value().to_string());
        }
        Ok(out)
    }

    /// Point `key` at `record.digest`; returns the record it replaces, if any.
    pub fn put_ref(
        &mut self,
        key: &str,
        record: &RefRecord,
    ) -> Result<Option<RefRecord>, IndexError> {
        let old = self.get_ref(key)?;
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
        Ok(old)
    }

    /// Remove a name (with its last-use and pin entries); returns its record.
    pub fn remove_ref(&mut self, key: &str) -> Result<Option<RefRecord>, IndexError> {
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
        }
        Ok(old)
    }

    /// Record a blob (keeps the first `added` time when it is already known).
    pub fn put_blob(&mut self, d: &Digest, record: &BlobRecord) -> Result<(), IndexError> {
        if self.get_blob(d)?.is_some() {
            return Ok(());
        }
        let mut t = self.table(BLOBS)?;
        t.insert(d.hex().as_str(), encode(record).as_slice())
            .map_err(dberr(&self.path))?;
        Ok(())
    }

    /// Overwrite a blob's record.
    pub fn replace_blob(&mut self, d: &Digest, record: &BlobRecord) -> Result<(), IndexError> {
        let mut t = self.table(BLOBS)?;
        t.insert(d.hex().as_str(), encode(record).as_slice())
            .map_err(dberr(&self.path))?;
        Ok(())
    }

    /// Forget a blob.
    pub fn remove_blob(&mut self, d: &Digest) -> Result<(), IndexError> {
        let mut t = self.table(BLOBS)?;
        t.remove(d.hex().as_str()).map_err(dberr(&self.path))?;
        Ok(())
    }

    pub fn set_last_use(&mut self, key: &str, when: u64) -> Result<(), IndexError> {
        let mut t = self.table(LAST_USE)?;
        t.insert(key, when).map_err(dberr(&self.path))?;
        Ok(())
    }

    /// Pin or unpin a name; returns whether that changed anything.
    pub fn set_pin(&mut self, key: &str, pinned: bool, when: u64) -> Result<bool, IndexError> {
        let mut t = self.table(PINS)?;
        let changed = if pinned {
            t.insert(key, when).map_err(dberr(&self.path))?.is_none()
        } else {
            t.remove(key).map_err(dberr(&self.path))?.is_some()
        };
        Ok(changed)
    }

    /// Every name, sorted, with its blob record, last use and pin.
    pub fn all(&self) -> Result<Vec<Named>, IndexError> {
        let refs = self.table(REFS)?;
        let blobs = self.table(BLOBS)?;
        let last = self.table(LAST_USE)?;
        let pins = self.table(PINS)?;
        all_in(&refs, Some(&blobs), Some(&last), Some(&pins), &self.path)
    }

    /// Every blob record.
    pub fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, IndexError> {
        let t = self.table(BLOBS)?;
        blobs_in(&t, &self.path)
    }

    /// Make the changes durable, close the database, release the lock.
    pub fn commit(self) -> Result<(), IndexError> {
        self.commit_then(|| ())
    }

    /// [`commit`](IndexWriter::commit), then run `after` while the exclusive lock is still
    /// held (to remove what the commit made redundant, with no reader or writer between).
    pub fn commit_then<T>(mut self, after: impl FnOnce() -> T) -> Result<T, IndexError> {
        if let Some(txn) = self.txn.take() {
            txn.commit().map_err(|e| self.err()(e.into()))?;
        }
        if let Some(db) = self.db.take() {
            db.close().map_err(|e| self.err()(e.into()))?;
        }
        Ok(after())
    }
}

impl Drop for IndexWriter {
    fn drop(&mut self) {
        // Abort an uncommitted transaction before the database and lock go.
        if let Some(txn) = self.txn.take() {
            let _ = txn.abort();
        }
        self.db.take();
    }
}

/// redb's file backend with redb's own file locks granted without asking the kernel.
///
/// redb guards its file with byte-range locks of its own: about 18 lock calls to open,
/// read and close it, each a round trip to the server on NFS, for every `get`. The index
/// is only ever opened under `index.lock` (shared to read, exclusive to write; see the
/// protocol above), which gives exactly the exclusion those locks would, so they are
/// granted here as taken and no other process is ever reported holding one. This also
/// keeps the index usable with `SREGISTRY_LOCK=flock` on filesystems without `fcntl`
/// locks, where redb's would fail.
///
/// # Flushes
///
/// A write opens the database, commits once and closes it. redb flushes six times on that
/// path; three reach the disk here (the two phases of the commit, the clean-shutdown
/// header), and the three left out make nothing visible early:
///
/// * **Length changes.** redb grows the file (the last close trimmed it) and flushes, then,
///   closing, trims it and flushes again before its last header write. A flush with only a
///   length change behind it is left to the next flush, which always follows (the commit;
///   the clean-shutdown header). A crash in between leaves a file whose length and header
///   disagree, which redb checks on every open and repairs.
/// * **The recovery flag.** Opening for writing, redb sets the header's "recovery
///   required" flag and flushes it, so that no commit can become durable while the header
///   still vouches for the allocator state recorded at the last clean close. When the file
///   was closed cleanly (the header read at open says so: [`header_is_clean`]), that flush
///   is left to the commit's first flush. Until then redb writes only pages the durable
///   commit does not use (pages a commit may still need are never reused before a durable
///   commit: redb's own guarantee for non-durable commits) and the header, whose every
///   write carries the flag. After a power loss the header is either the old one, clean,
///   describing the old commit and its allocator state, the new pages being unused
///   garbage, or a new one with the flag set, which redb repairs from. A flush so owed is
///   paid before any trim and at close at the latest.
///
///   The header read at open is the page cache's. A clean one there may be newer than the
///   disk's only when the last writer died between its clean-shutdown header write and
///   that write's flush; both headers then name the same, already durable commit. An
///   unclean header (a writer died mid-write) or one this code does not know keeps every
///   flush: the first then makes the dead writer's pages durable before anything is built
///   on them, as redb's recovery expects.
///
/// The file's length is kept here rather than asked of the filesystem each time redb
/// wants it (about six times per write, each a `statx`, on NFS a round trip): while we
/// hold `index.lock` nobody else changes the file.
#[derive(Debug)]
struct UnderOurLock {
    file: redb::backends::FileBackend,
    /// What may be unflushed: [`NOTHING`], [`LENGTH`], [`HEADER`] or [`PAGES`].
    unflushed: std::sync::atomic::AtomicU8,
    /// Until the first flush that reaches the disk, a flush with only the header (and
    /// lengths) behind it may wait for the next: the file was opened for writing and had
    /// been closed cleanly.
    defer_header: std::sync::atomic::AtomicBool,
    /// A flush was left for later and must happen before a trim or the close.
    owed: std::sync::atomic::AtomicBool,
    len: std::sync::atomic::AtomicU64,
    /// Flushes that reached the file (for tests).
    flushes: std::sync::atomic::AtomicU32,
}

/// [`UnderOurLock::unflushed`]: nothing written since the last flush.
const NOTHING: u8 = 0;
/// Only the file's length changed.
const LENGTH: u8 = 1;
/// The header (and perhaps the length) changed, nothing else.
const HEADER: u8 = 2;
/// Pages beyond the header were written.
const PAGES: u8 = 3;
/// redb's header: 320 bytes at the start of the file; a write within the first sector is
/// a header write.
const HEADER_SECTOR: u64 = 512;

/// Whether `head`, the first bytes of an index file, is a redb header this code knows
/// that says the file was closed cleanly: redb's magic number, then the "god byte" with
/// neither "recovery required" (2) nor "primary unflushed" (8) set and no flag this code
/// does not know, and the primary commit slot in file format 3 (redb's header layout,
/// `tree_store/page_store/header.rs`). Anything else keeps every flush.
fn header_is_clean(head: &[u8]) -> bool {
    const MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
    const KNOWN: u8 = 1 | 2 | 4 | 8;
    let Some(&god) = head.get(MAGIC.len()) else {
        return false;
    };
    let slot = 64 + 128 * usize::from(god & 1);
    head.starts_with(&MAGIC)
        && god & !KNOWN == 0
        && god & (2 | 8) == 0
        && head.get(slot) == Some(&3)
}

impl UnderOurLock {
    /// Open an existing index; `write` for the read-write open.
    fn open(path: &Path, write: bool) -> Result<UnderOurLock, redb::StorageError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(redb::StorageError::Io)?;
        let backend = Self::wrap(file)?;
        let len = backend.len.load(std::sync::atomic::Ordering::SeqCst);
        // `create_with_backend` would initialise an empty file as a new, empty index: an
        // empty `index.redb` is damage to report (as `open` does), not a cache to restart.
        if write && len == 0 {
            return Err(redb::StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the index file is empty, not a redb database",
            )));
        }
        if write {
            let mut head = [0u8; 320];
            if len >= head.len() as u64
                && redb::StorageBackend::read(&backend.file, 0, &mut head).is_ok()
                && header_is_clean(&head)
            {
                use std::sync::atomic::Ordering;
                backend.unflushed.store(NOTHING, Ordering::SeqCst);
                backend.defer_header.store(true, Ordering::SeqCst);
            }
        }
        Ok(backend)
    }

    /// Wrap an open file. Every flush reaches the disk until [`UnderOurLock::open`] finds
    /// the header clean.
    fn wrap(file: std::fs::File) -> Result<UnderOurLock, redb::StorageError> {
        let len = file.metadata().map_err(redb::StorageError::Io)?.len();
        match redb::backends::FileBackend::new(file) {
            Ok(file) => Ok(UnderOurLock {
                file,
                unflushed: std::sync::atomic::AtomicU8::new(PAGES),
                defer_header: std::sync::atomic::AtomicBool::new(false),
                owed: std::sync::atomic::AtomicBool::new(false),
                len: std::sync::atomic::AtomicU64::new(len),
                flushes: std::sync::atomic::AtomicU32::new(0),
            }),
            Err(redb::DatabaseError::Storage(e)) => Err(e),
            Err(e) => Err(redb::StorageError::Io(std::io::Error::other(e.to_string()))),
        }
    }

    /// Flush to the disk, whatever is pending.
    fn flush(&self) -> Result<(), std::io::Error> {
        use std::sync::atomic::Ordering;
        redb::StorageBackend::sync_data(&self.file)?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.unflushed.store(NOTHING, Ordering::SeqCst);
        self.owed.store(false, Ordering::SeqCst);
        self.defer_header.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Pay a flush left for later.
    fn pay_owed(&self) -> Result<(), std::io::Error> {
        if self.owed.load(std::sync::atomic::Ordering::SeqCst) {
            self.flush()?;
        }
        Ok(())
    }
}

impl redb::StorageBackend for UnderOurLock {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.len.load(std::sync::atomic::Ordering::SeqCst))
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        use std::sync::atomic::Ordering;
        if len < self.len.load(Ordering::SeqCst) {
            self.pay_owed()?; // a trim must not reach the disk before the header it follows
        }
        self.file.set_len(len)?;
        self.len.store(len, Ordering::SeqCst);
        self.unflushed.fetch_max(LENGTH, Ordering::SeqCst);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        use std::sync::atomic::Ordering;
        match self.unflushed.load(Ordering::SeqCst) {
            NOTHING | LENGTH => Ok(()), // at most a length change: left to the next flush
            HEADER if self.defer_header.load(Ordering::SeqCst) => {
                self.owed.store(true, Ordering::SeqCst); // the recovery flag: see above
                Ok(())
            }
            _ => self.flush(),
        }
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        use std::sync::atomic::Ordering;
        let end = offset + data.len() as u64;
        let what = if end <= HEADER_SECTOR { HEADER } else { PAGES };
        self.unflushed.fetch_max(what, Ordering::SeqCst);
        self.file.write(offset, data)?;
        self.len.fetch_max(end, Ordering::SeqCst);
        Ok(())
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.pay_owed()?;
        self.file.close()
    }
    fn try_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }
    fn try_lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }
    fn lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }
    fn lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }
    fn unlock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }
    fn query_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Inodes with a lock on them, from /proc/locks ("... MAJ:MIN:INODE START END").
    fn locked_inodes() -> Vec<u64> {
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let dev_ino = f.iter().find(|w| w.matches(':').count() == 2)?;
                dev_ino.rsplit(':').next()?.parse().ok()
            })
            .collect()
    }

    /// An index in a new temporary cache (keep the directory alive while it is used).
    fn fresh_index() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        std::fs::create_dir_all(&v1).unwrap();
        let idx = Index::new(&v1, LockOptions::default(), 0o644);
        (dir, idx)
    }

    #[test]
    fn the_index_file_carries_no_locks_of_its_own() {
        // On NFS every lock call is a round trip to the server: an open index must be
        // guarded by index.lock alone, for the writer and for readers.
        let (_dir, idx) = fresh_index();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let w = idx.write().unwrap();
        let (db, lk) = (ino(idx.db_path()), ino(idx.lock_path()));
        let held = locked_inodes();
        assert!(held.contains(&lk), "the writer holds index.lock");
        assert!(!held.contains(&db), "redb locked index.redb while writing");
        w.commit().unwrap();
        let r = idx.read().unwrap();
        let held = locked_inodes();
        assert!(held.contains(&lk), "the reader holds index.lock");
        assert!(!held.contains(&db), "redb locked index.redb while reading");
        drop(r);
    }

    fn record(n: u8) -> RefRecord {
        RefRecord {
            digest: Digest::from_bytes([n; 32]),
            added: 1,
            source: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn an_index_whose_trim_never_reached_the_disk_is_repaired_on_open() {
        // The backend defers the flush of a length change to the next flush: after a power
        // loss the header may say "closed cleanly" while the file keeps its old length.
        // redb must then repair on open, and every name must still be there.
        let (_dir, idx) = fresh_index();
        for n in 0..3u8 {
            let mut w = idx.write().unwrap();
            w.put_ref(&format!("lab/t{n}:1"), &record(n)).unwrap();
            w.commit().unwrap();
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(idx.db_path())
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len + (1 << 20)).unwrap();
        drop(f);
        let r = idx.read().unwrap();
        for n in 0..3u8 {
            assert_eq!(r.get_ref(&format!("lab/t{n}:1")).unwrap(), Some(record(n)));
        }
        drop(r);
        let mut w = idx.write().unwrap();
        w.put_ref("lab/t9:1", &record(9)).unwrap();
        w.commit().unwrap();
        let r = idx.read().unwrap();
        assert_eq!(r.all().unwrap().len(), 4);
    }

    /// An index with one name, closed cleanly by a write.
    fn written_index() -> (tempfile::TempDir, Index) {
        let (dir, idx) = fresh_index();
        let mut w = idx.write().unwrap();
        w.put_ref("lab/t:1", &record(1)).unwrap();
        w.commit().unwrap();
        (dir, idx)
    }

    fn flushes(b: &UnderOurLock) -> u32 {
        b.flushes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Replay what redb does to the file around a commit: header write and flush (the
    /// recovery flag), grow and flush, pages and header and flush (the commit's first
    /// phase), header and flush (the second).
    fn replay_commit(b: &UnderOurLock) -> Vec<u32> {
        use redb::StorageBackend as _;
        let len = b.len().unwrap();
        let mut head = vec![0u8; 320];
        b.read(0, &mut head).unwrap();
        let mut seen = Vec::new();
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        seen.push(flushes(b));
        b.set_len(len + 8192).unwrap();
        b.sync_data().unwrap();
        seen.push(flushes(b));
        b.write(len, &[0u8; 4096]).unwrap();
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        seen.push(flushes(b));
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        seen.push(flushes(b));
        seen
    }

    #[test]
    fn a_cleanly_closed_index_has_a_header_this_code_reads_as_clean() {
        // If a redb upgrade changes its header, the flush of the recovery flag is never
        // deferred again (safe, but a flush more per write): this says so.
        let (_dir, idx) = written_index();
        let head = std::fs::read(idx.db_path()).unwrap();
        assert!(header_is_clean(&head[..320]));
        let mut dirty = head[..320].to_vec();
        dirty[9] |= 2; // recovery required
        assert!(!header_is_clean(&dirty));
        let mut unknown = head[..320].to_vec();
        unknown[9] |= 16;
        assert!(!header_is_clean(&unknown));
        assert!(!header_is_clean(&[]));
        assert!(!header_is_clean(b"not a redb file at all"));
    }

    #[test]
    fn the_recovery_flag_flush_waits_for_the_commit_only_after_a_clean_close() {
        // Deferred, the flag reaches the disk with the commit's first flush; the second
        // phase of the commit is never deferred.
        let (_dir, idx) = written_index();
        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        assert_eq!(replay_commit(&b), vec![0, 0, 1, 2]);
        assert!(!b.owed.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn the_first_flush_after_a_writer_died_mid_write_reaches_the_disk() {
        // The dead writer's pages may still be only in the page cache; redb's recovery
        // builds on them, so they must be durable before anything else is written.
        let (_dir, idx) = written_index();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(idx.db_path())
            .unwrap();
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut god = [0u8; 1];
        f.seek(SeekFrom::Start(9)).unwrap();
        f.read_exact(&mut god).unwrap();
        f.seek(SeekFrom::Start(9)).unwrap();
        f.write_all(&[god[0] | 2]).unwrap();
        drop(f);
        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        assert_eq!(replay_commit(&b), vec![1, 1, 2, 3]);
        // And redb recovers that file: the name is still there.
        drop(b);
        let r = idx.read().unwrap();
        assert_eq!(r.get_ref("lab/t:1").unwrap(), Some(record(1)));
    }

    #[test]
    fn a_deferred_flush_is_paid_before_a_trim_and_at_close() {
        use redb::StorageBackend as _;
        let (_dir, idx) = written_index();
        let mut head = vec![0u8; 320];
        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        b.read(0, &mut head).unwrap();
        let len = b.len().unwrap();
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        assert_eq!(flushes(&b), 0);
        b.set_len(len - 4096).unwrap();
        assert_eq!(
            flushes(&b),
            1,
            "trimmed before the header it follows was flushed"
        );
        b.set_len(len).unwrap();

        let b = UnderOurLock::open(idx.db_path(), true).unwrap();
        b.write(0, &head).unwrap();
        b.sync_data().unwrap();
        assert_eq!(flushes(&b), 0);
        b.close().unwrap();
        assert_eq!(flushes(&b), 1, "closed with a flush owed");
    }

    #[test]
    fn a_read_only_open_never_defers() {
        let (_dir, idx) = written_index();
        let b = UnderOurLock::open(idx.db_path(), false).unwrap();
        assert!(!b.defer_header.load(std::sync::atomic::Ordering::SeqCst));
    }
}
