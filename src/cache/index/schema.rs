//! The index's schema: its tables, the records they hold, the append-only list of
//! migrations and the compatibility levels each one declares (see "Several versions on
//! one cache" and "Tables" in [`super`]).
//!
//! Pure definitions: nothing here opens a file or takes a lock. A migration runs inside
//! the write transaction a writer opened under the exclusive index lock; [`Levels`] are
//! read from the transaction a reader or writer already has.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{MultimapTableDefinition, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::IndexError;
use super::damage::dberr;
use crate::format::digest::Digest;

pub(super) const REFS: TableDefinition<&str, &[u8]> = TableDefinition::new("refs");
pub(super) const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
pub(super) const BLOB_REFS: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("blob_refs");
pub(super) const LAST_USE: TableDefinition<&str, u64> = TableDefinition::new("last_use");
pub(super) const PINS: TableDefinition<&str, u64> = TableDefinition::new("pins");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const ABOUT: TableDefinition<&str, &str> = TableDefinition::new("about");

/// The schema this build writes: the number of `MIGRATIONS`.
pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;
/// `last_use` is rewritten only when the stored time is older than this (seconds).
pub const LAST_USE_RESOLUTION: u64 = 600;
/// redb page cache per open (the index is small; this keeps `get` lean).
pub(super) const CACHE_BYTES: usize = 8 << 20;
/// The journal is compacted when it is larger than this many times its snapshot...
pub(super) const COMPACT_RATIO: u64 = 4;
/// ...and larger than this.
pub(super) const COMPACT_MIN: u64 = 1 << 20;
/// This build's version, recorded in the index when it migrates it.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One schema step: entry `i` of [`MIGRATIONS`] takes schema `i` to `i + 1`.
pub(super) struct Migration {
    pub up: fn(&WriteTransaction) -> Result<(), redb::Error>,
    /// The oldest schema that can read an index at this schema safely.
    pub read_compat: u64,
    /// The oldest schema that can change an index at this schema safely.
    pub write_compat: u64,
}

/// Append-only list of schema migrations. Never remove or reorder an entry, and never
/// lower a compatibility level an earlier entry set.
pub(super) const MIGRATIONS: &[Migration] = &[
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
    // Blob records say which file was put in place (`BlobRecord::placed`), and `get`
    // refuses another one. Readers are unaffected; an older writer that puts a missing
    // blob back (re-add, `verify --repair`) would leave a file the record does not
    // describe, which this build refuses, so writers need schema 4.
    Migration {
        up: no_tables,
        read_compat: 1,
        write_compat: 4,
    },
];

/// The (read, write) compatibility levels of schema `n`.
pub(super) fn compat_of(n: u64) -> (u64, u64) {
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
    /// Which file was put in place as this blob, as a `stat` of it showed at the commit
    /// that put it there: `get` and `verify` refuse a file at the blob's path that is
    /// another (renamed or copied over it from outside sregistry). `None` in records
    /// older builds made (recorded at the next commit of the same content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed: Option<PlacedFile>,
}

/// What tells the file put in place as a blob from any other file at its path (see
/// [`BlobRecord::placed`]): its inode number and birth time, and the same of `blobs/`,
/// the directory the cache's blobs were in then. Device numbers are left out: a rename
/// cannot cross filesystems, and each NFS client numbers a mount its own way. The change
/// time is left out: links, unlinks of the staged name, renames and `chmod` change it on
/// honest paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedFile {
    pub ino: u64,
    /// Birth time (ns since the epoch) where the filesystem reports one: an inode number
    /// reused after the blob was deleted comes with another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born: Option<u64>,
    /// `blobs/`'s inode number and birth time: a cache copied elsewhere (rsync, `cp -a`,
    /// a tier's publication) has other ones, and its records are not compared there.
    pub store_ino: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_born: Option<u64>,
}

/// The inode number and birth time (ns) of a file, as [`PlacedFile`] records them.
pub fn file_id(m: &std::fs::Metadata) -> (u64, Option<u64>) {
    use std::os::unix::fs::MetadataExt;
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok());
    (m.ino(), born)
}

/// Whether two birth times can be told apart: only when both are known.
fn born_differs(a: Option<u64>, b: Option<u64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a != b)
}

impl PlacedFile {
    /// Whether `m` (a `stat` of the blob's path) shows the file that was put in place.
    pub fn is(&self, m: &std::fs::Metadata) -> bool {
        let (ino, born) = file_id(m);
        ino == self.ino && !born_differs(born, self.born)
    }

    /// Whether `m` (a `stat` of `blobs/`) shows the directory the record was made in.
    pub fn made_in(&self, m: &std::fs::Metadata) -> bool {
        let (ino, born) = file_id(m);
        ino == self.store_ino && !born_differs(born, self.store_born)
    }
}

/// The last use of content whose name was re-pointed (see [`BlobRecord::retired`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// The name that pointed here.
    pub name: String,
    /// Unix seconds: no `get` of the name handed this content out after this time.
    pub used: u64,
}

/// Decode a record stored in the index. Public so fuzzing can reach it.
pub fn decode_ref(bytes: &[u8]) -> Result<RefRecord, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Decode a blob record stored in the index.
pub fn decode_blob(bytes: &[u8]) -> Result<BlobRecord, serde_json::Error> {
    serde_json::from_slice(bytes)
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Record this build's schema, its compatibility levels and version in a transaction.
pub(super) fn stamp_schema(txn: &WriteTransaction) -> Result<(), redb::Error> {
    let (read, write) = compat_of(SCHEMA_VERSION);
    let mut meta = txn.open_table(META)?;
    meta.insert("schema_version", SCHEMA_VERSION)?;
    meta.insert("read_compat", read)?;
    meta.insert("write_compat", write)?;
    let mut about = txn.open_table(ABOUT)?;
    about.insert("schema_written_by", VERSION)?;
    Ok(())
}

/// The schema levels recorded in `meta` and `about`.
pub(super) struct Levels {
    pub(super) schema: u64,
    pub(super) read: u64,
    pub(super) write: u64,
    pub(super) by: String,
}

/// One `u64` of a table such as `meta`, if it is there.
pub(super) fn get_u64_in(
    t: &impl ReadableTable<&'static str, u64>,
    key: &str,
    path: &Path,
) -> Result<Option<u64>, IndexError> {
    Ok(t.get(key).map_err(dberr(path))?.map(|v| v.value()))
}

pub(super) fn levels_in(
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
    pub(super) fn require(&self, path: &Path, access: &'static str) -> Result<(), IndexError> {
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
