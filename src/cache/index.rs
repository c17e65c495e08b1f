//! The index: which name points to which blob, in a redb database, with a journal of
//! names beside it that can rebuild it.
//!
//! # Protocol
//!
//! `v1/index.redb` is opened only while this process holds `v1/index.lock`
//! ([`crate::cache::lock`]):
//!
//! * **read**: the lock shared, the database opened read-only ([`redb::ReadOnlyDatabase`]);
//!   any number of processes on any number of nodes at once.
//! * **write**: the lock exclusive, then `index.redb` and `index.journal` opened and
//!   *fenced* (`lock::fence`: an exclusive lock on a byte far past their end, through the
//!   descriptor every write goes through), the database opened read-write, one write
//!   transaction, its changes appended to the journal, committed durably, the files
//!   closed, then the lock released. The fences make a writer whose lock an NFS server
//!   forgot in a restart fail with an I/O error (the Linux client refuses I/O through a
//!   descriptor whose lock was lost) instead of writing over the next writer's commit.
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
//! # Damage, and the journal that undoes it
//!
//! redb checks its pages, but some damaged pages (a zeroed page, flipped bytes, a cut
//! file) make it panic rather than return an error. Every call into redb is made here
//! under [`std::panic::catch_unwind`] (while it runs, [`panic_is_caught`] is true so the
//! binary's panic hook stays quiet); a panic, or an error redb calls corruption, becomes
//! [`IndexError::Damaged`], whose one-line message names the index and the fix. A reader
//! or writer that met damage refuses every later call.
//!
//! The fix is `sregistry doctor --repair-index` ([`Index::rebuild`]), which rebuilds the
//! names from `v1/index.journal` ([`journal`]):
//!
//! * **What it holds.** The first line is a snapshot of every blob record, name and pin
//!   at a sequence number; each later line is one write transaction that changed any of
//!   them (`last_use` is not journalled: it is a hint for gc, and a rebuild counts as a
//!   use of every name). Lines are JSON.
//! * **Writing.** Only under the exclusive index lock (so there is one appender, on NFS
//!   too). A transaction with changes takes the next sequence number, records it in
//!   `meta.journal_seq` in the same redb transaction, and appends its line *before* redb
//!   commits. The line is not flushed: the kernel writes it back within seconds, and a
//!   power loss before then leaves a journal behind the (durable) index, which the next
//!   writer notices and mends with a snapshot (below). So a flush would only shorten the
//!   window in which a power loss *and* page damage to the index together lose the last
//!   seconds of names; it would cost every `add` about a tenth of its time. If the
//!   commit fails, a `void` line for that number follows.
//! * **Checking.** Each writer reads the journal's last complete line when it opens the
//!   index and compares its number with `meta.journal_seq`: equal is in step; one ahead
//!   means the last writer died between its append and its commit (a `void` line is
//!   appended); behind, or unreadable, or missing means the journal lost its tail (or
//!   never existed: a cache older than the journal), and the writer replaces it with a
//!   snapshot of the index; two or more ahead means the index is older than its journal
//!   (restored from a copy, or deleted and created anew) and every writer refuses
//!   ([`IndexError::BehindJournal`]) until it is rebuilt. A missing `index.redb` beside a
//!   journal is refused the same way, by readers too, so no name is silently forgotten.
//! * **Compaction.** When the journal grows past four times its last snapshot (and 1 MiB),
//!   the next writer replaces it with a snapshot of the committed index: written to a
//!   temporary file with the cache's file mode, synced, renamed over, the directory synced.
//! * **Rebuild.** Under the exclusive lock: replay the snapshot and every transaction not
//!   void, move the damaged index aside (`index.redb.damaged-<unix time>`, never deleted),
//!   build a fresh index from the replayed state under a temporary name, rename it into
//!   place. Blob records the journal lacks are made from the blob files (size, time, a
//!   SIF's media type); names whose blob file is missing are kept and reported (as
//!   `verify` would). Every blob file no replayed name points at (and no named image
//!   lists as a part) is kept under a pinned name `recovered/<hex>:latest` and reported,
//!   except a writer's own (a second link: its staged file; or recorded only by a void
//!   line). Without a journal the rebuild starts from nothing but `blobs/`. When the
//!   result differs from what the journal replays, the journal is rewritten as a snapshot
//!   of it (a journal with unreadable lines is copied aside first).
//! * **Never an empty index beside images.** A missing `index.redb` is created afresh
//!   only when there is neither a journal nor a file with a single link in `blobs/`
//!   (an add or pull in flight holds a second one); otherwise every reader and writer
//!   refuses ([`IndexError::Missing`]) and points to the rebuild.
//!
//! One unflushed append (and a read of the journal's last line) per write transaction is
//! the journal's whole cost on the write path; `get` never touches it.
//!
//! # Several versions on one cache
//!
//! `meta` records `schema_version` (the newest schema that wrote the index), `read_compat`
//! (the oldest schema that can still read it safely) and `write_compat` (the oldest that
//! can still change it safely); the `about` table records which sregistry version brought
//! it to its schema. A build whose [`SCHEMA_VERSION`] is older than the index's reads only
//! if it is at least `read_compat` and writes only if it is at least `write_compat`, and
//! never migrates or restamps the index; otherwise it refuses with
//! [`IndexError::NeedsNewer`], naming the schema and the version the cache needs. Each
//! migration declares the compatibility its schema needs ([`Migration`]): a change an
//! older reader would misread raises `read_compat`; one an older writer would undo or
//! defeat (a table an old gc does not know, whose blobs it would delete; the journal, which
//! an old writer would not keep) raises `write_compat`; anything else raises neither.
//!
//! # Tables (values are JSON, so fields can be added with defaults)
//!
//! | table       | key              | value                                   |
//! |-------------|------------------|-----------------------------------------|
//! | `refs`      | name (`ns/n:tag`) | [`RefRecord`]: digest, added, source, labels |
//! | `blobs`     | digest hex       | [`BlobRecord`]: size, added, media type, remote digest, parts |
//! | `blob_refs` | digest hex       | (multimap) every name pointing at it    |
//! | `last_use`  | name             | Unix seconds; written only when older than [`LAST_USE_RESOLUTION`] |
//! | `pins`      | name             | Unix seconds when pinned                |
//! | `meta`      | `schema_version`, `read_compat`, `write_compat`, `journal_seq`, `journal_base` | numbers |
//! | `about`     | `schema_written_by` | the sregistry version that migrated it to its schema |
//!
//! Migrations are an append-only list ([`MIGRATIONS`]); never remove an entry from it.

mod backend;
pub mod journal;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use redb::{
    Database, MultimapTableDefinition, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableMultimapTable, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::cache::lock::{self, LockError, LockGuard, LockOptions, Mode};
use crate::format::digest::Digest;
use backend::UnderOurLock;
use journal::{Line, Op, State};

const REFS: TableDefinition<&str, &[u8]> = TableDefinition::new("refs");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const BLOB_REFS: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("blob_refs");
const LAST_USE: TableDefinition<&str, u64> = TableDefinition::new("last_use");
const PINS: TableDefinition<&str, u64> = TableDefinition::new("pins");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ABOUT: TableDefinition<&str, &str> = TableDefinition::new("about");

/// The schema this build writes: the number of `MIGRATIONS`.
pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;
/// `last_use` is rewritten only when the stored time is older than this (seconds).
pub const LAST_USE_RESOLUTION: u64 = 600;
/// redb page cache per open (the index is small; this keeps `get` lean).
const CACHE_BYTES: usize = 8 << 20;
/// The journal is compacted when it is larger than this many times its snapshot...
const COMPACT_RATIO: u64 = 4;
/// ...and larger than this.
const COMPACT_MIN: u64 = 1 << 20;
/// This build's version, recorded in the index when it migrates it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One schema step: entry `i` of [`MIGRATIONS`] takes schema `i` to `i + 1`.
pub struct Migration {
    pub up: fn(&WriteTransaction) -> Result<(), redb::Error>,
    /// The oldest schema that can read an index at this schema safely.
    pub read_compat: u64,
    /// The oldest schema that can change an index at this schema safely.
    pub write_compat: u64,
}

/// Append-only list of schema migrations. Never remove or reorder an entry, and never
/// lower a compatibility level an earlier entry set.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        up: create_v1_tables,
        read_compat: 1,
        write_compat: 1,
    },
    // The journal and the compatibility levels. Readers are unaffected; a writer that does
    // not keep the journal would leave it behind the index, so writers need schema 2.
    Migration {
        up: create_about_table,
        read_compat: 1,
        write_compat: 2,
    },
    // Blob records say when content a re-pointed name held was last handed out
    // (`BlobRecord::retired`). Readers are unaffected; an older gc would delete that
    // content as unreferenced within `--min-idle`, so writers need schema 3.
    Migration {
        up: no_tables,
        read_compat: 1,
        write_compat: 3,
    },
];

/// The (read, write) compatibility levels of schema `n`.
pub fn compat_of(n: u64) -> (u64, u64) {
    MIGRATIONS[..n as usize].iter().fold((0, 0), |(r, w), m| {
        (r.max(m.read_compat), w.max(m.write_compat))
    })
}

fn create_v1_tables(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(REFS)?;
    txn.open_table(BLOBS)?;
    txn.open_multimap_table(BLOB_REFS)?;
    txn.open_table(LAST_USE)?;
    txn.open_table(PINS)?;
    Ok(())
}

fn create_about_table(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(ABOUT)?;
    Ok(())
}

/// A migration that only raises the compatibility levels.
fn no_tables(_: &WriteTransaction) -> Result<(), redb::Error> {
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    /// Unix seconds when the blob entered the cache.
    pub added: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The remote's own digest of this content (e.g. `sha256:...`), when pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_digest: Option<String>,
    /// The blobs this one was made from (the layers and config of a converted image):
    /// gc keeps them while a name uses this blob, and drops them first under size
    /// pressure. Older builds ignore the field (and may collect the parts, which only
    /// costs a download).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Digest>,
    /// Set when a name that pointed here was re-pointed elsewhere (pull, `tag --force`,
    /// `add --force`, another conversion): the content keeps the `--min-idle` protection
    /// of that name's last use, so a job that was handed its path keeps it, although no
    /// name refers to it any more. `rm` of that name gives the protection up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<Retired>,
}

/// The last use of content whose name was re-pointed (see [`BlobRecord::retired`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// The name that pointed here.
    pub name: String,
    /// Unix seconds: no `get` of the name handed this content out after this time.
    pub used: u64,
}

/// Index failures, each naming the index file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the index `{path}` cannot be read: {source} (run `sregistry doctor`)")]
    Db { path: PathBuf, source: redb::Error },
    #[error(
        "the index `{path}` has a damaged record for `{key}`: {detail}; run `sregistry doctor --repair-index` (names are rebuilt from `index.journal`; no image is lost)"
    )]
    Corrupt {
        path: PathBuf,
        key: String,
        detail: String,
    },
    #[error(
        "the index `{path}` is damaged; run `sregistry doctor --repair-index` (names are rebuilt from `{journal}`; no image is lost)"
    )]
    Damaged { path: PathBuf, journal: PathBuf },
    #[error(
        "the index `{path}` is missing or older than its journal `{journal}` (deleted, or restored from a copy); run `sregistry doctor --repair-index` to rebuild it from the journal"
    )]
    BehindJournal { path: PathBuf, journal: PathBuf },
    #[error(
        "the index `{path}` is missing, but `{blobs}` holds image files (the index was deleted, or part of the cache restored); run `sregistry doctor --repair-index` to rebuild it (every image is kept; names come back from the journal where it has them)"
    )]
    Missing { path: PathBuf, blobs: PathBuf },
    #[error(
        "I/O error on `{path}`: {source} (on NFS: the server restarted and did not give back this client's lock, so the write was refused; run the command again, then `sregistry verify`)"
    )]
    Refused {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write the index `{path}`: {source}; nothing was changed (free space on its filesystem: remove other files there, or run `sregistry gc`, which needs a little room for its own index write)"
    )]
    NoSpace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the index journal `{path}`: {source}")]
    Journal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the index `{path}` needs sregistry with index schema >= {need} to {access} it (it has schema {schema}, written by sregistry {by}); this is sregistry {VERSION} with schema {SCHEMA_VERSION}: upgrade sregistry"
    )]
    NeedsNewer {
        path: PathBuf,
        /// `read` or `change`.
        access: &'static str,
        need: u64,
        schema: u64,
        by: String,
    },
    #[error("cannot rebuild the index `{path}` from its journal: {detail}")]
    Rebuild { path: PathBuf, detail: String },
}

impl IndexError {
    /// True when the index must be rebuilt (`doctor --repair-index`).
    pub fn needs_repair(&self) -> bool {
        matches!(
            self,
            IndexError::Damaged { .. }
                | IndexError::Corrupt { .. }
                | IndexError::BehindJournal { .. }
                | IndexError::Missing { .. }
        )
    }
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

thread_local! {
    static CAUGHT: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread is inside a call into redb whose panic becomes
/// [`IndexError::Damaged`]: a panic hook should then print nothing.
pub fn panic_is_caught() -> bool {
    CAUGHT.with(|c| c.get() > 0)
}

/// Run `f`, a call into redb; `None` if it panicked.
fn caught<T>(f: impl FnOnce() -> T) -> Option<T> {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            CAUGHT.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    CAUGHT.with(|c| c.set(c.get() + 1));
    let _depth = Depth;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

fn journal_path_of(db: &Path) -> PathBuf {
    db.with_file_name("index.journal")
}

fn damaged(path: &Path) -> IndexError {
    IndexError::Damaged {
        path: path.to_path_buf(),
        journal: journal_path_of(path),
    }
}

/// A redb error as an index error: what redb calls corruption (or a file that is not a
/// database, or a transaction a panic poisoned) is [`IndexError::Damaged`].
fn from_redb(path: &Path, source: redb::Error) -> IndexError {
    let is_damage = match &source {
        redb::Error::Corrupted(_) | redb::Error::TransactionPoisoned => true,
        redb::Error::Io(e) => e.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    };
    let os_error = match &source {
        redb::Error::Io(e) => e.raw_os_error(),
        _ => None,
    };
    if is_damage {
        damaged(path)
    } else if matches!(os_error, Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        IndexError::NoSpace {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(os_error.unwrap_or(libc::ENOSPC)),
        }
    } else if let redb::Error::Io(e) = &source
        && e.raw_os_error() == Some(libc::EIO)
    {
        IndexError::Refused {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        }
    } else {
        IndexError::Db {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The index and journal a writer opened and fenced as it took the lock (`None`: the
/// file did not exist).
struct Fenced {
    db: Option<FencedFile>,
    journal: Option<FencedFile>,
}

/// A file and its fence (`lock::fence`). The fence drops first (the tuple's order): it is
/// unlocked while the descriptor is still open, then the file closes.
type FencedFile = (lock::Held, std::fs::File);

/// Open the journal at `path` for appending and fence it; `None` when there is none.
fn fence_journal(path: &Path, opts: &LockOptions) -> Result<Option<FencedFile>, IndexError> {
    let journal_err = |source| IndexError::Journal {
        path: path.to_path_buf(),
        source,
    };
    match crate::fork::open(|| journal::open_for_append(path)) {
        Ok((file, registration)) => {
            let fence = lock::fence(&file, registration, path, opts)?;
            Ok(Some((fence, file)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(journal_err(e)),
    }
}

/// Run `f` (calls into redb) for the reader or writer whose `poisoned` flag is given: a
/// panic marks it and becomes [`IndexError::Damaged`]; once marked, nothing more runs.
fn guarded<T>(
    poisoned: &Cell<bool>,
    path: &Path,
    f: impl FnOnce() -> Result<T, IndexError>,
) -> Result<T, IndexError> {
    if poisoned.get() {
        return Err(damaged(path));
    }
    caught(f).unwrap_or_else(|| {
        poisoned.set(true);
        Err(damaged(path))
    })
}

/// Handle on the index of one cache.
#[derive(Clone, Debug)]
pub struct Index {
    db_path: PathBuf,
    lock_path: PathBuf,
    journal_path: PathBuf,
    lock_opts: LockOptions,
    file_mode: u32,
    /// `v1/blobs`: an index is never started empty beside image files.
    blobs_dir: PathBuf,
}

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
pub struct OnDisk {
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
    /// The index of the cache version directory `v1`.
    pub fn new(v1: &Path, lock_opts: LockOptions, file_mode: u32) -> Index {
        Index {
            db_path: v1.join("index.redb"),
            lock_path: v1.join("index.lock"),
            journal_path: v1.join("index.journal"),
            lock_opts,
            file_mode,
            blobs_dir: v1.join("blobs"),
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

    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    fn db_err(&self) -> impl Fn(redb::Error) -> IndexError + '_ {
        move |source| from_redb(&self.db_path, source)
    }

    /// The journal exists with something in it.
    fn journal_exists(&self) -> bool {
        std::fs::metadata(&self.journal_path).is_ok_and(|m| m.len() > 0)
    }

    fn behind_journal(&self) -> IndexError {
        IndexError::BehindJournal {
            path: self.db_path.clone(),
            journal: self.journal_path.clone(),
        }
    }

    /// Why there is no `index.redb` to use, if it must not be started empty: a journal
    /// holds names, or `blobs/` holds images (`blobs/<algorithm>/<fan-out>/<file>`) that
    /// an empty index would leave to the next gc. A blob with a second link is an add or
    /// pull in flight (its staged file in `tmp/` is that link; the first add of a new cache
    /// links its blob before it creates the index), so only files with one link count.
    /// Read only when the index is missing.
    fn refuse_missing(&self) -> Option<IndexError> {
        use std::os::unix::fs::MetadataExt;
        if self.journal_exists() {
            return Some(self.behind_journal());
        }
        let has_files = |dir: &Path| {
            std::fs::read_dir(dir).is_ok_and(|rd| {
                rd.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.nlink() == 1))
            })
        };
        let holds_images = std::fs::read_dir(&self.blobs_dir).is_ok_and(|algos| {
            algos.flatten().any(|algo| {
                std::fs::read_dir(algo.path())
                    .is_ok_and(|fans| fans.flatten().any(|fan| has_files(&fan.path())))
            })
        });
        holds_images.then(|| IndexError::Missing {
            path: self.db_path.clone(),
            blobs: self.blobs_dir.clone(),
        })
    }

    /// Open for reading under the shared lock.
    pub fn read(&self) -> Result<IndexReader, IndexError> {
        let mut repaired = false;
        loop {
            let guard = lock::lock(&self.lock_path, Mode::Shared, &self.lock_opts)?;
            if !self.db_path.exists() {
                if let Some(e) = self.refuse_missing() {
                    return Err(e);
                }
                return Ok(IndexReader {
                    txn: None,
                    _db: None,
                    _lock: Some(guard),
                    path: self.db_path.clone(),
                    poisoned: Cell::new(false),
                });
            }
            let poisoned = Cell::new(false);
            match self.open_read_only(poisoned)? {
                Ok(mut reader) => {
                    reader._lock = Some(guard);
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
        let poisoned = Cell::new(false);
        guarded(&poisoned, &self.db_path, || {
            let db = self.open_rw(None)?;
            db.close().map_err(|e| self.db_err()(e.into()))
        })
    }

    /// Open read-write (caller holds the exclusive lock). A missing index is first built
    /// complete under a temporary name and renamed into place, so a crash during creation
    /// never leaves a half-written `index.redb` behind; but not beside a journal, which
    /// holds names a new, empty index would forget.
    ///
    /// Every write goes through a fenced descriptor (`lock::fence`): `fenced`, the one the
    /// writer fenced as it took the lock, or a new one fenced here.
    fn open_rw(&self, fenced: Option<FencedFile>) -> Result<Database, IndexError> {
        let (fence, file) = match fenced {
            Some(file) => file,
            None => {
                if !self.db_path.exists() {
                    if let Some(e) = self.refuse_missing() {
                        return Err(e);
                    }
                    self.build_fresh(|_| Ok(()))?;
                }
                self.open_db_fenced()?
            }
        };
        let backend =
            UnderOurLock::open_file(file, true, fence).map_err(|e| self.db_err()(e.into()))?;
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| self.db_err()(e.into()))
    }

    /// `index.redb` opened read-write and fenced (`lock::fence`).
    fn open_db_fenced(&self) -> Result<FencedFile, IndexError> {
        let (file, registration) = crate::fork::open(|| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.db_path)
        })
        .map_err(|e| self.db_err()(redb::StorageError::Io(e).into()))?;
        let fence = lock::fence(&file, registration, &self.db_path, &self.lock_opts)?;
        Ok((fence, file))
    }

    /// Fence the index and its journal for a writer that has just taken the exclusive
    /// lock, before it reads anything of them (see `lock::fence`): a file that does not
    /// exist yet is fenced when it is made.
    fn fence(&self) -> Result<Fenced, IndexError> {
        let db = if self.db_path.exists() {
            Some(self.open_db_fenced()?)
        } else {
            None
        };
        let journal = fence_journal(&self.journal_path, &self.lock_opts)?;
        Ok(Fenced { db, journal })
    }

    /// Build a new index at this build's schema under a temporary name, let `fill` put
    /// content in it, and rename it to `index.redb` (the caller holds the exclusive lock).
    fn build_fresh(
        &self,
        fill: impl FnOnce(&WriteTransaction) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let dir = self.db_path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".index.redb.new-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let io = |source: std::io::Error| self.db_err()(redb::StorageError::Io(source).into());
        let built = (|| {
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
            for m in MIGRATIONS {
                (m.up)(&txn).map_err(self.db_err())?;
            }
            stamp_schema(&txn).map_err(self.db_err())?;
            fill(&txn)?;
            txn.commit().map_err(|e| self.db_err()(e.into()))?;
            db.close().map_err(|e| self.db_err()(e.into()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(self.file_mode))
                .map_err(io)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            std::fs::rename(&tmp, &self.db_path).map_err(io)?;
            crate::cache::store::sync_dir(dir).map_err(io)
        })();
        if built.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        built
    }

    /// Check every page's checksum and rebuild the allocator state, under the exclusive
    /// lock (`doctor`). `Ok(false)` means redb found damage and repaired what it could.
    pub fn check_integrity(&self) -> Result<bool, IndexError> {
        let _guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        if !self.db_path.exists() {
            return Ok(true);
        }
        let poisoned = Cell::new(false);
        guarded(&poisoned, &self.db_path, || {
            let mut db = self.open_rw(None)?;
            let ok = db.check_integrity().map_err(|e| self.db_err()(e.into()))?;
            db.close().map_err(|e| self.db_err()(e.into()))?;
            Ok(ok)
        })
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
            on_wait: None,
            ..self.lock_opts.clone()
        };
        match lock::lock(&self.lock_path, Mode::Exclusive, &opts) {
            Ok(guard) => self.writer(guard).map(Some),
            Err(LockError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuse to write an index whose `write_compat` is above this build's before the
    /// read-write open, which would rewrite its header: a refused writer leaves the file
    /// byte for byte as it was. (The caller holds the exclusive lock.)
    fn check_writable_before_open(&self) -> Result<(), IndexError> {
        self.view_before_write().map(drop)
    }

    /// Open the index read-only and begin a read, as a reader without a lock of its own
    /// (the caller holds one). The outer error is damage; the inner one is redb's refusal
    /// to open (`RepairAborted` after a writer's crash), for the caller to handle.
    fn open_read_only(
        &self,
        poisoned: Cell<bool>,
    ) -> Result<Result<IndexReader, redb::DatabaseError>, IndexError> {
        let opened = guarded(&poisoned, &self.db_path, || {
            Ok(UnderOurLock::open(&self.db_path, false)
                .map_err(redb::DatabaseError::Storage)
                .and_then(|backend| {
                    redb::Builder::new()
                        .set_cache_size(CACHE_BYTES)
                        .open_read_only_with_backend(backend)
                }))
        })?;
        let db = match opened {
            Ok(db) => db,
            Err(e) => return Ok(Err(e)),
        };
        let txn = match guarded(&poisoned, &self.db_path, || {
            db.begin_read().map_err(|e| self.db_err()(e.into()))
        }) {
            Ok(txn) => txn,
            Err(e) => {
                caught(move || drop(db));
                return Err(e);
            }
        };
        Ok(Ok(IndexReader {
            txn: Some(txn),
            _db: Some(db),
            _lock: None,
            path: self.db_path.clone(),
            poisoned,
        }))
    }

    /// The index as it is, opened read-only under the writer's exclusive lock, after
    /// checking this build may change it; `None` when there is no index yet or a
    /// writer's crash left it needing the repair the read-write open does (the
    /// migration step checks the levels then).
    fn view_before_write(&self) -> Result<Option<IndexReader>, IndexError> {
        if !self.db_path.exists() {
            return Ok(None);
        }
        let view = match self.open_read_only(Cell::new(false))? {
            Ok(view) => view,
            Err(redb::DatabaseError::RepairAborted) => return Ok(None),
            Err(e) => return Err(self.db_err()(e.into())),
        };
        let levels = view.levels()?;
        levels.require(&self.db_path, "read")?;
        levels.require(&self.db_path, "change")?;
        Ok(Some(view))
    }

    /// Open for writing under the exclusive lock, once `check` has accepted the index as
    /// it is: `check` reads it in the read-only open that also checks this build may
    /// change it, so a refusal costs no second open and leaves the file byte for byte as
    /// it was. (Where there is nothing to view, see [`Index::view_before_write`], `check`
    /// is not run: the writer checks again.)
    pub fn write_checked<E: From<IndexError>>(
        &self,
        check: impl FnOnce(&IndexReader) -> Result<(), E>,
    ) -> Result<IndexWriter, E> {
        let guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)
            .map_err(IndexError::from)?;
        let fenced = self.fence()?;
        if let Some(view) = self.view_before_write()? {
            check(&view)?;
        }
        Ok(self.writer_checked(guard, fenced)?)
    }

    fn writer(&self, guard: LockGuard) -> Result<IndexWriter, IndexError> {
        let fenced = self.fence()?;
        self.check_writable_before_open()?;
        self.writer_checked(guard, fenced)
    }

    /// [`Index::writer`] once the levels were checked.
    fn writer_checked(&self, guard: LockGuard, fenced: Fenced) -> Result<IndexWriter, IndexError> {
        let poisoned = Cell::new(false);
        let Fenced { db, journal } = fenced;
        let (db, txn) = guarded(&poisoned, &self.db_path, || {
            let db = self.open_rw(db)?;
            let mut txn = db.begin_write().map_err(|e| self.db_err()(e.into()))?;
            // The commit itself need not reach the disk: `commit()` closes the database
            // right after, and redb's close makes a pending commit durable (with the
            // allocator state) in one go, saving three fsyncs per write. If the process
            // dies in between, the change is lost, but it was never reported done either.
            txn.set_durability(redb::Durability::None)
                .map_err(|e| IndexError::Corrupt {
                    path: self.db_path.clone(),
                    key: "durability".into(),
                    detail: e.to_string(),
                })?;
            Ok((db, txn))
        })?;
        let w = IndexWriter {
            txn: Some(txn),
            db: Some(db),
            journal_file: RefCell::new(journal),
            lock_opts: self.lock_opts.clone(),
            _lock: guard,
            path: self.db_path.clone(),
            journal: self.journal_path.clone(),
            file_mode: self.file_mode,
            poisoned,
            ops: RefCell::new(Vec::new()),
            seq: Cell::new(0),
            torn: Cell::new(false),
        };
        w.guard(|| {
            w.migrate()?;
            w.check_journal()
        })?;
        Ok(w)
    }

    /// Take the exclusive lock and run `f` on the index as it is, opened read-only
    /// (`None` when it is missing, damaged or cannot be opened without a repair): for a
    /// command that failed before its write transaction to look, with no writer between,
    /// whether the index knows what it put in `blobs/`.
    pub fn view_exclusive<T>(
        &self,
        f: impl FnOnce(Option<&IndexReader>) -> T,
    ) -> Result<T, IndexError> {
        let _guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        let view = if self.db_path.exists() {
            self.open_read_only(Cell::new(false))
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        Ok(f(view.as_ref()))
    }

    /// Rebuild the index from the journal (`doctor --repair-index`), under the exclusive
    /// lock: see the protocol above. `on_disk` maps each blob file found to its size.
    pub fn rebuild(&self, on_disk: &HashMap<Digest, OnDisk>) -> Result<Rebuilt, IndexError> {
        let _guard = lock::lock(&self.lock_path, Mode::Exclusive, &self.lock_opts)?;
        let rebuild_err = |detail: String| IndexError::Rebuild {
            path: self.db_path.clone(),
            detail,
        };
        let replayed = match journal::replay(&self.journal_path) {
            Ok(r) => r,
            // No journal (deleted with the index, a partial restore): no name can come
            // back, but every image does, under a recovered name.
            Err(journal::ReplayError::Missing { .. }) => journal::Replayed::default(),
            Err(e) => {
                return Err(rebuild_err(format!(
                    "{e}; no name can be recovered from it (the images stay in `blobs/`; add them again by name)"
                )));
            }
        };
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
        // Every blob file that no name points at and no named image lists as a part is
        // kept under a recovered name, pinned: its name may be what the damage lost, and
        // gc must not take it (invariant 8). The user names it again, or removes it. A
        // file an add or pull holds a staged link to is theirs, named by their commit or
        // (killed) never named, and so is one only a void transaction recorded: left to
        // them and to gc.
        let parts: HashSet<Digest> = wanted
            .iter()
            .filter_map(|d| state.blobs.get(d))
            .flat_map(|b| b.parts.iter().copied())
            .collect();
        let mut loose: Vec<(&Digest, &OnDisk)> = on_disk
            .iter()
            .filter(|(d, f)| {
                let killed_writers = f.in_flight
                    || (replayed.never_committed.contains(d) && !state.blobs.contains_key(d));
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
        // The journal must rebuild what the new index holds: a fresh snapshot of it, when
        // that differs from what the journal replays. A journal with lines that could not
        // be read is kept aside first, as the damaged index is.
        let rewrite =
            journal_missing || !report.recovered.is_empty() || !report.skipped_lines.is_empty();
        if rewrite && !report.skipped_lines.is_empty() {
            let aside = self
                .journal_path
                .with_file_name(format!("index.journal.damaged-{now}"));
            std::fs::copy(&self.journal_path, &aside)
                .map_err(|e| rebuild_err(format!("cannot keep `{}`: {e}", aside.display())))?;
            report.journal_aside = Some(aside);
        }
        let base = if rewrite {
            Some(
                journal::write_snapshot(&self.journal_path, &state, replayed.seq, self.file_mode)
                    .map_err(|e| {
                    rebuild_err(format!(
                        "cannot write `{}`: {e}",
                        self.journal_path.display()
                    ))
                })?,
            )
        } else {
            None
        };
        if self.db_path.exists() {
            // A name no earlier repair used: a damaged index is kept, never replaced.
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
                rebuild_err(format!(
                    "cannot move it aside to `{}`: {e}",
                    aside.display()
                ))
            })?;
            report.moved_aside = Some(aside);
        }
        let base =
            base.unwrap_or_else(|| std::fs::metadata(&self.journal_path).map_or(0, |m| m.len()));
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
                meta.insert("journal_seq", replayed.seq).map_err(err)?;
                meta.insert("journal_base", base).map_err(err)?;
                Ok(())
            })
        })?;
        report.names = state.refs.len() as u64;
        report.blobs = state.blobs.len() as u64;
        report.pins = state
            .pins
            .keys()
            .filter(|n| state.refs.contains_key(*n))
            .count() as u64;
        Ok(report)
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
    pub fn rewrite_journal(&self) -> Result<(), IndexError> {
        let w = self.write()?;
        w.guard(|| w.snapshot())?;
        w.commit()
    }

    /// Replay the journal and compare it with the index, under the shared lock (`doctor`).
    pub fn journal_status(&self) -> Result<JournalStatus, IndexError> {
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

/// Record this build's schema, its compatibility levels and version in a transaction.
fn stamp_schema(txn: &WriteTransaction) -> Result<(), redb::Error> {
    let (read, write) = compat_of(SCHEMA_VERSION);
    let mut meta = txn.open_table(META)?;
    meta.insert("schema_version", SCHEMA_VERSION)?;
    meta.insert("read_compat", read)?;
    meta.insert("write_compat", write)?;
    let mut about = txn.open_table(ABOUT)?;
    about.insert("schema_written_by", VERSION)?;
    Ok(())
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
    /// `None` for the view a writer checks under its own exclusive lock.
    _lock: Option<LockGuard>,
    path: PathBuf,
    poisoned: Cell<bool>,
}

impl Drop for IndexReader {
    fn drop(&mut self) {
        // redb may panic closing a damaged database too; the lock goes after, as declared.
        let (txn, db) = (self.txn.take(), self._db.take());
        caught(move || drop((txn, db)));
    }
}

fn dberr(path: &Path) -> impl Fn(redb::StorageError) -> IndexError + '_ {
    move |e| from_redb(path, e.into())
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

/// The schema levels recorded in `meta` and `about`.
struct Levels {
    schema: u64,
    read: u64,
    write: u64,
    by: String,
}

fn levels_in(
    meta: Option<&impl ReadableTable<&'static str, u64>>,
    about: Option<&impl ReadableTable<&'static str, &'static str>>,
    p: &Path,
) -> Result<Levels, IndexError> {
    let get = |k: &str| match meta {
        Some(t) => get_u64_in(t, k, p),
        None => Ok(None),
    };
    let schema = get("schema_version")?.unwrap_or(0);
    // An index without the levels is as demanding as its schema.
    let read = get("read_compat")?.unwrap_or(schema);
    let write = get("write_compat")?.unwrap_or(schema);
    let by = match about {
        Some(t) => t
            .get("schema_written_by")
            .map_err(dberr(p))?
            .map(|v| v.value().to_string()),
        None => None,
    };
    Ok(Levels {
        schema,
        read,
        write,
        by: by.unwrap_or_else(|| "an unknown version".into()),
    })
}

impl Levels {
    /// Refuse `access` (`read` or `change`) when this build's schema is below `need`.
    fn require(&self, path: &Path, access: &'static str) -> Result<(), IndexError> {
        let need = if access == "read" {
            self.read
        } else {
            self.write
        };
        if self.schema > SCHEMA_VERSION && need > SCHEMA_VERSION {
            return Err(IndexError::NeedsNewer {
                path: path.to_path_buf(),
                access,
                need,
                schema: self.schema,
                by: self.by.clone(),
            });
        }
        Ok(())
    }
}

impl IndexReader {
    /// Run `f` under the reader's panic guard.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T, IndexError>) -> Result<T, IndexError> {
        guarded(&self.poisoned, &self.path, f)
    }

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
            Err(e) => Err(from_redb(&self.path, e.into())),
        }
    }

    fn levels(&self) -> Result<Levels, IndexError> {
        self.guard(|| {
            levels_in(
                self.table(META)?.as_ref(),
                self.table(ABOUT)?.as_ref(),
                &self.path,
            )
        })
    }

    fn check_schema(&self) -> Result<(), IndexError> {
        self.levels()?.require(&self.path, "read")
    }

    /// Whether this build may change the index: the error a writer would refuse with.
    pub fn check_writable(&self) -> Result<(), IndexError> {
        self.levels()?.require(&self.path, "change")
    }

    /// The record of one name.
    pub fn get_ref(&self, key: &str) -> Result<Option<RefRecord>, IndexError> {
        self.guard(|| {
            self.table(REFS)?
                .map_or(Ok(None), |t| get_ref_in(&t, key, &self.path))
        })
    }

    /// The record of one blob.
    pub fn get_blob(&self, d: &Digest) -> Result<Option<BlobRecord>, IndexError> {
        self.guard(|| {
            self.table(BLOBS)?
                .map_or(Ok(None), |t| get_blob_in(&t, &d.hex(), &self.path))
        })
    }

    /// When the name was last used, as recorded.
    pub fn last_use(&self, key: &str) -> Result<Option<u64>, IndexError> {
        self.guard(|| {
            self.table(LAST_USE)?
                .map_or(Ok(None), |t| get_u64_in(&t, key, &self.path))
        })
    }

    /// Whether the name is pinned.
    pub fn is_pinned(&self, key: &str) -> Result<bool, IndexError> {
        self.guard(|| {
            self.table(PINS)?.map_or(
                Ok(false),
                |t| Ok(get_u64_in(&t, key, &self.path)?.is_some()),
            )
        })
    }

    /// Every name, sorted, with its blob record, last use and pin.
    pub fn all(&self) -> Result<Vec<Named>, IndexError> {
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
    pub fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, IndexError> {
        self.guard(|| {
            self.table(BLOBS)?
                .map_or(Ok(Vec::new()), |t| blobs_in(&t, &self.path))
        })
    }

    /// Counts for `info`: (names, blobs, total blob bytes, pins, schema version).
    pub fn stats(&self) -> Result<IndexStats, IndexError> {
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

/// One write transaction under the exclusive lock. Dropped without
/// [`commit`](IndexWriter::commit), it changes nothing.
pub struct IndexWriter {
    txn: Option<WriteTransaction>,
    db: Option<Database>,
    /// The journal, opened and fenced (`lock::fence`); `None` until it exists, and again
    /// after a snapshot replaced the file. Closed before the lock is released (field
    /// order), which on NFS sends its last line to the server first.
    journal_file: RefCell<Option<FencedFile>>,
    lock_opts: LockOptions,
    _lock: LockGuard,
    path: PathBuf,
    journal: PathBuf,
    file_mode: u32,
    poisoned: Cell<bool>,
    /// The changes to journal at commit.
    ops: RefCell<Vec<Op>>,
    /// `meta.journal_seq` as the transaction began.
    seq: Cell<u64>,
    /// The journal ends in a line cut short: the next append ends it first.
    torn: Cell<bool>,
}

impl IndexWriter {
    /// Run `f` under the writer's panic guard.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T, IndexError>) -> Result<T, IndexError> {
        guarded(&self.poisoned, &self.path, f)
    }

    fn txn(&self) -> &WriteTransaction {
        // Present from construction until commit consumes self.
        self.txn
            .as_ref()
            .expect("write transaction present until commit")
    }

    fn err(&self) -> impl Fn(redb::Error) -> IndexError + '_ {
        move |source| from_redb(&self.path, source)
    }

    /// Append a line to the journal through the fenced descriptor (fencing a new one when
    /// the file is new).
    fn append(&self, line: &Line, torn: bool) -> Result<(), IndexError> {
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

    fn journal_err(&self) -> impl Fn(std::io::Error) -> IndexError + '_ {
        move |source| {
            if source.raw_os_error() == Some(libc::EIO) {
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

    fn migrate(&self) -> Result<(), IndexError> {
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
    fn check_journal(&self) -> Result<(), IndexError> {
        let meta = self.table(META)?;
        let seq = get_u64_in(&meta, "journal_seq", &self.path)?.unwrap_or(0);
        let base = get_u64_in(&meta, "journal_base", &self.path)?.unwrap_or(0);
        drop(meta);
        self.seq.set(seq);
        let tail = journal::tail(&self.journal).map_err(self.journal_err())?;
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
    fn snapshot(&self) -> Result<(), IndexError> {
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
    fn state(&self) -> Result<State, IndexError> {
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

    pub fn get_ref(&self, key: &str) -> Result<Option<RefRecord>, IndexError> {
        self.guard(|| get_ref_in(&self.table(REFS)?, key, &self.path))
    }

    pub fn get_blob(&self, d: &Digest) -> Result<Option<BlobRecord>, IndexError> {
        self.guard(|| get_blob_in(&self.table(BLOBS)?, &d.hex(), &self.path))
    }

    pub fn is_pinned(&self, key: &str) -> Result<bool, IndexError> {
        self.guard(|| Ok(get_u64_in(&self.table(PINS)?, key, &self.path)?.is_some()))
    }

    /// Names pointing at a blob.
    pub fn names_of(&self, d: &Digest) -> Result<Vec<String>, IndexError> {
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
    pub fn put_ref(
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
    pub fn remove_ref(&mut self, key: &str) -> Result<Option<RefRecord>, IndexError> {
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
    pub fn put_blob(&mut self, d: &Digest, record: &BlobRecord) -> Result<(), IndexError> {
        if self.get_blob(d)?.is_some() {
            return Ok(());
        }
        self.replace_blob(d, record)
    }

    /// Overwrite a blob's record.
    pub fn replace_blob(&mut self, d: &Digest, record: &BlobRecord) -> Result<(), IndexError> {
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
    pub fn remove_blob(&mut self, d: &Digest) -> Result<(), IndexError> {
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
    pub fn last_use(&self, key: &str) -> Result<Option<u64>, IndexError> {
        self.guard(|| get_u64_in(&self.table(LAST_USE)?, key, &self.path))
    }

    pub fn set_last_use(&mut self, key: &str, when: u64) -> Result<(), IndexError> {
        self.guard(|| {
            let mut t = self.table(LAST_USE)?;
            t.insert(key, when).map_err(dberr(&self.path))?;
            Ok(())
        })
    }

    /// Pin or unpin a name; returns whether that changed anything.
    pub fn set_pin(&mut self, key: &str, pinned: bool, when: u64) -> Result<bool, IndexError> {
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
    pub fn all(&self) -> Result<Vec<Named>, IndexError> {
        self.guard(|| {
            let refs = self.table(REFS)?;
            let blobs = self.table(BLOBS)?;
            let last = self.table(LAST_USE)?;
            let pins = self.table(PINS)?;
            all_in(&refs, Some(&blobs), Some(&last), Some(&pins), &self.path)
        })
    }

    /// Every blob record.
    pub fn blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, IndexError> {
        self.guard(|| blobs_in(&self.table(BLOBS)?, &self.path))
    }

    /// Journal the changes, make them durable, close the database, release the lock.
    pub fn commit(self) -> Result<(), IndexError> {
        self.commit_then(|| ())
    }

    /// [`commit`](IndexWriter::commit), then run `after` while the exclusive lock is still
    /// held (to remove what the commit made redundant, with no reader or writer between).
    pub fn commit_then<T>(self, after: impl FnOnce() -> T) -> Result<T, IndexError> {
        self.commit_then_else(after, || ())
    }

    /// [`commit_then`](IndexWriter::commit_then), and if the commit fails, run `failed`
    /// while the exclusive lock is still held (to take out what the failed transaction
    /// had put in `blobs/`, with no writer between: invariant 8 of the design).
    pub fn commit_then_else<T>(
        mut self,
        after: impl FnOnce() -> T,
        failed: impl FnOnce(),
    ) -> Result<T, IndexError> {
        let done = self.commit_inner();
        match done {
            Ok(()) => Ok(after()),
            Err(e) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Inodes with a lock on them, from /proc/locks ("... MAJ:MIN:INODE START END").
    fn locked_inodes() -> Vec<u64> {
        locks().into_iter().map(|(ino, _)| ino).collect()
    }

    /// Every lock in /proc/locks: the inode and the first byte locked.
    fn locks() -> Vec<(u64, u64)> {
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let at = f.iter().position(|w| w.matches(':').count() == 2)?;
                let ino = f[at].rsplit(':').next()?.parse().ok()?;
                Some((ino, f.get(at + 1)?.parse().ok()?))
            })
            .collect()
    }

    /// An index in a new temporary cache (keep the directory alive while it is used).
    pub(super) fn fresh_index() -> (tempfile::TempDir, Index) {
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
        // The writer's one lock on it is its fence, far past the end.
        let (_dir, idx) = fresh_index();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let w = idx.write().unwrap();
        let (db, lk) = (ino(idx.db_path()), ino(idx.lock_path()));
        let held = locked_inodes();
        assert!(held.contains(&lk), "the writer holds index.lock");
        let on_db: Vec<u64> = locks()
            .into_iter()
            .filter(|(i, _)| *i == db)
            .map(|(_, at)| at)
            .collect();
        assert_eq!(
            on_db,
            vec![1 << 62],
            "index.redb carries a lock other than the writer's fence"
        );
        w.commit().unwrap();
        let r = idx.read().unwrap();
        let held = locked_inodes();
        assert!(held.contains(&lk), "the reader holds index.lock");
        assert!(!held.contains(&db), "redb locked index.redb while reading");
        drop(r);
    }

    #[test]
    fn a_writer_fences_the_index_and_the_journal_it_writes() {
        // On NFS a lock the server forgot in a restart fails only I/O made through the
        // descriptor that held it: every file a writer writes must carry its own fence,
        // taken with the lock, before anything is read (see `lock::fence`).
        let (_dir, idx) = fresh_index();
        put_names(&idx, 0..1);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let w = idx.write().unwrap();
        let fences: Vec<u64> = locks()
            .into_iter()
            .filter(|(_, at)| *at == 1 << 62)
            .map(|(i, _)| i)
            .collect();
        assert!(
            fences.contains(&ino(idx.db_path())),
            "index.redb is not fenced"
        );
        assert!(
            fences.contains(&ino(idx.journal_path())),
            "index.journal is not fenced"
        );
        // Another writer whose fence is held (the old writer's, given back by a restarted
        // server while its lock on index.lock was not) waits for it and gives up.
        let open = || {
            crate::fork::open(|| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(idx.db_path())
            })
            .unwrap()
        };
        let quick = LockOptions {
            timeout: std::time::Duration::from_millis(50),
            on_wait: None,
            ..LockOptions::default()
        };
        let (file, registration) = open();
        assert!(matches!(
            lock::fence(&file, registration, idx.db_path(), &quick),
            Err(LockError::Timeout { .. })
        ));
        w.commit().unwrap();
        let (file, registration) = open();
        let _fence = lock::fence(&file, registration, idx.db_path(), &quick)
            .expect("the fence goes with the writer");
    }

    pub(super) fn record(n: u8) -> RefRecord {
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
        put_names(&idx, 0..3);
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
    pub(super) fn written_index() -> (tempfile::TempDir, Index) {
        let (dir, idx) = fresh_index();
        let mut w = idx.write().unwrap();
        w.put_ref("lab/t:1", &record(1)).unwrap();
        w.commit().unwrap();
        (dir, idx)
    }

    /// Name `lab/t<n>:1` for each `n`, one write each.
    fn put_names(idx: &Index, ns: std::ops::Range<u8>) {
        for n in ns {
            let mut w = idx.write().unwrap();
            w.put_ref(&format!("lab/t{n}:1"), &record(n)).unwrap();
            w.commit().unwrap();
        }
    }

    fn names(idx: &Index) -> Vec<String> {
        idx.read()
            .unwrap()
            .all()
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect()
    }

    fn replayed_names(idx: &Index) -> Vec<String> {
        journal::replay(idx.journal_path())
            .unwrap()
            .state
            .refs
            .into_keys()
            .collect()
    }

    fn meta_u64(idx: &Index, key: &str) -> Option<u64> {
        let r = idx.read().unwrap();
        r.guard(|| get_u64_in(&r.table(META)?.unwrap(), key, &r.path))
            .unwrap()
    }

    #[test]
    fn every_committed_change_is_in_the_journal_and_an_aborted_one_is_not() {
        let (_dir, idx) = fresh_index();
        let mut w = idx.write().unwrap();
        w.put_ref("lab/a:1", &record(1)).unwrap();
        w.set_pin("lab/a:1", true, 5).unwrap();
        w.commit().unwrap();
        let mut w = idx.write().unwrap();
        w.put_ref("lab/b:1", &record(2)).unwrap();
        drop(w); // aborted: never journalled
        let mut w = idx.write().unwrap();
        w.put_ref("lab/c:1", &record(3)).unwrap();
        w.remove_ref("lab/a:1").unwrap();
        w.commit().unwrap();
        // A write that changes no name (a use) is not journalled.
        let mut w = idx.write().unwrap();
        w.set_last_use("lab/c:1", 9).unwrap();
        w.commit().unwrap();
        assert_eq!(names(&idx), vec!["lab/c:1"]);
        let r = journal::replay(idx.journal_path()).unwrap();
        assert_eq!(r.state.refs.keys().collect::<Vec<_>>(), vec!["lab/c:1"]);
        assert!(r.state.pins.is_empty());
        assert_eq!(r.seq, 2);
        assert_eq!(meta_u64(&idx, "journal_seq"), Some(2));
    }

    #[test]
    fn a_writer_that_died_between_append_and_commit_is_voided_by_the_next() {
        let (_dir, idx) = fresh_index();
        let mut w = idx.write().unwrap();
        w.put_ref("lab/a:1", &record(1)).unwrap();
        w.commit().unwrap();
        // What a writer killed after its append leaves: a line one ahead of the index.
        let ghost = Line {
            seq: 2,
            ops: vec![Op::PutRef {
                name: "lab/ghost:1".into(),
                record: record(2),
            }],
            ..Line::default()
        };
        journal::append(idx.journal_path(), &ghost, false).unwrap();
        let mut w = idx.write().unwrap();
        w.put_ref("lab/b:1", &record(3)).unwrap();
        w.commit().unwrap();
        assert_eq!(replayed_names(&idx), vec!["lab/a:1", "lab/b:1"]);
        assert_eq!(replayed_names(&idx), names(&idx));
    }

    #[test]
    fn a_journal_that_lost_its_tail_is_replaced_by_a_snapshot() {
        let (_dir, idx) = fresh_index();
        put_names(&idx, 0..3);
        assert_eq!(
            idx.journal_status().unwrap(),
            JournalStatus::InStep { names: 3, lines: 4 }
        );
        // Cut the last line off, as a lost write-back would.
        let text = std::fs::read_to_string(idx.journal_path()).unwrap();
        let cut = text.trim_end().rfind('\n').unwrap() + 1;
        std::fs::write(idx.journal_path(), &text[..cut]).unwrap();
        assert_ne!(replayed_names(&idx), names(&idx));
        let w = idx.write().unwrap();
        w.commit().unwrap();
        assert_eq!(replayed_names(&idx), names(&idx));
    }

    #[test]
    fn an_index_behind_its_journal_refuses_writers() {
        let (_dir, idx) = fresh_index();
        put_names(&idx, 0..3);
        let old = std::fs::read(idx.db_path()).unwrap();
        put_names(&idx, 3..5);
        // The index restored from a copy two writes old.
        std::fs::write(idx.db_path(), old).unwrap();
        assert!(matches!(
            idx.write().err(),
            Some(IndexError::BehindJournal { .. })
        ));
        assert!(matches!(
            idx.journal_status(),
            Err(IndexError::BehindJournal { .. })
        ));
        // An earlier repair's damaged index, in this very second (or the next two).
        let now = crate::format::clock::now();
        let earlier: Vec<PathBuf> = (now..now + 3)
            .map(|t| {
                idx.db_path()
                    .with_file_name(format!("index.redb.damaged-{t}"))
            })
            .collect();
        for p in &earlier {
            std::fs::write(p, b"kept").unwrap();
        }
        let r = idx.rebuild(&HashMap::new()).unwrap();
        let aside = r.moved_aside.clone().unwrap();
        assert!(!earlier.contains(&aside), "{aside:?}");
        assert!(earlier.iter().all(|p| std::fs::read(p).unwrap() == b"kept"));
        assert_eq!(r.names, 5);
        assert_eq!(r.missing_blobs.len(), 5);
        assert_eq!(names(&idx).len(), 5);
        let mut w = idx.write().unwrap();
        w.put_ref("lab/t9:1", &record(9)).unwrap();
        w.commit().unwrap();
        assert_eq!(replayed_names(&idx), names(&idx));
    }

    #[test]
    fn the_journal_is_compacted_when_it_outgrows_its_snapshot() {
        let (_dir, idx) = fresh_index();
        let mut label = BTreeMap::new();
        label.insert("pad".to_string(), "x".repeat(4000));
        let mut rec = record(1);
        rec.labels = label;
        let mut sizes = Vec::new();
        for n in 0..400u32 {
            let mut w = idx.write().unwrap();
            // One name re-pointed over and over: the state stays small, the journal grows.
            w.put_ref("lab/churn:1", &rec).unwrap();
            w.set_pin("lab/churn:1", n % 2 == 0, 1).unwrap();
            w.commit().unwrap();
            sizes.push(std::fs::metadata(idx.journal_path()).unwrap().len());
        }
        let max = *sizes.iter().max().unwrap();
        assert!(max <= COMPACT_MIN + 16384, "journal grew to {max}");
        assert!(sizes.windows(2).any(|w| w[1] < w[0]), "never compacted");
        assert_eq!(replayed_names(&idx), names(&idx));
    }

    #[test]
    fn an_index_of_schema_1_is_migrated_and_its_names_journalled() {
        let (_dir, idx) = fresh_index();
        let mut w = idx.write().unwrap();
        w.put_ref("lab/old:1", &record(1)).unwrap();
        w.commit().unwrap();
        // Make it what schema 1 left: no levels, no about table, no journal.
        {
            let w = idx.write().unwrap();
            let mut meta = w.table(META).unwrap();
            meta.insert("schema_version", 1).unwrap();
            meta.remove("read_compat").unwrap();
            meta.remove("write_compat").unwrap();
            meta.remove("journal_seq").unwrap();
            drop(meta);
            w.txn().delete_table(ABOUT).unwrap();
            w.commit().unwrap();
        }
        std::fs::remove_file(idx.journal_path()).unwrap();
        let w = idx.write().unwrap();
        w.commit().unwrap();
        assert_eq!(meta_u64(&idx, "schema_version"), Some(SCHEMA_VERSION));
        assert_eq!(
            meta_u64(&idx, "write_compat"),
            Some(compat_of(SCHEMA_VERSION).1)
        );
        assert_eq!(replayed_names(&idx), vec!["lab/old:1"]);
    }

    #[test]
    fn compatibility_levels_never_fall_along_the_migrations() {
        let mut last = (0, 0);
        for n in 1..=SCHEMA_VERSION {
            let (r, w) = compat_of(n);
            assert!(r >= last.0 && w >= last.1 && r <= n && w <= n && r <= w);
            last = (r, w);
        }
    }

    #[test]
    fn a_panic_inside_a_guarded_call_is_damage_and_poisons_the_reader() {
        let (_dir, idx) = written_index();
        let r = idx.read().unwrap();
        let seen = r.guard(|| -> Result<(), IndexError> {
            assert!(panic_is_caught());
            panic!("a damaged page")
        });
        assert!(matches!(seen, Err(IndexError::Damaged { .. })));
        assert!(!panic_is_caught());
        // Nothing more runs on that reader.
        assert!(matches!(
            r.get_ref("lab/t:1"),
            Err(IndexError::Damaged { .. })
        ));
    }
}
