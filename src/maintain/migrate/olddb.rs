//! Reading the old Python client's database (`sregistry.db`, as `sregistry==0.2.39`
//! writes it through its SQLAlchemy models): the `container` rows with the name of their
//! `collection`. Opened read-only (`SQLITE_OPEN_READ_ONLY`): migrate never writes it.
//!
//! The facts, from the old client's `database/models.py` and `database/sqlite.py`:
//! * `collection(id, name UNIQUE, token, created_at)`;
//! * `container(id, created_at, metrics TEXT NOT NULL, name, tag, image, url, uri, client,
//!   version, collection_id)`, unique on `(collection_id, name, tag, client, version)`:
//!   a tag added again with other content is a second row (its version differs);
//! * `version` is the file's sha256 in hex unless the user named one (`NAME@VERSION`);
//! * `image` is the absolute path of the file in its storage
//!   (`$SREGISTRY_STORAGE/<collection>/<name>/<tag>@<version>.sif`), or NULL for a
//!   record without a file;
//! * `created_at` is SQLite's `CURRENT_TIMESTAMP` text, `YYYY-MM-DD HH:MM:SS` (UTC), so
//!   text order is time order;
//! * `uri` is `[registry/]collection/name:tag@version` (`parse_image_name`), so a row
//!   whose `collection` row is gone (deleted by hand, or a `collection_id` that names
//!   none) still says its collection: [`read_rows`] reads every row (an outer join) and
//!   takes the collection from the `uri` when the join finds none.
//!
//! An old client killed in the middle of a write leaves a hot rollback journal
//! (`sregistry.db-journal`): SQLite must roll the unfinished transaction back before
//! anyone reads the file, which a read-only open cannot do. That is
//! [`OldDbError::HotJournal`], naming the journal and how to roll it back; migrate never
//! does it itself (that would write the old database).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::error::ErrorKind;

/// File name of the old client's database, in its directory.
pub const DB_FILE: &str = "sregistry.db";

/// One row of the old client's `container` table, with its collection's name.
#[derive(Clone, Debug, Serialize)]
pub struct OldRow {
    pub id: i64,
    pub collection: String,
    pub name: String,
    pub tag: String,
    /// The image file's path (NULL for a record without a file).
    pub image: Option<String>,
    pub url: Option<String>,
    pub uri: Option<String>,
    pub version: Option<String>,
    pub metrics: String,
    pub created_at: Option<String>,
    /// The row's `collection` row is gone: `collection` was taken from the `uri` (empty
    /// when the `uri` does not end in `/name:tag[@version]` and names none).
    pub collection_gone: bool,
}

impl OldRow {
    /// How the old client showed the row: its `uri`, else `collection/name:tag`.
    pub fn shown(&self) -> String {
        match &self.uri {
            Some(u) if !u.is_empty() => u.clone(),
            _ if self.collection.is_empty() => format!("{}:{}", self.name, self.tag),
            _ => format!("{}/{}:{}", self.collection, self.name, self.tag),
        }
    }

    /// `collection/name:tag`, the name the row is imported under (if it is valid).
    pub fn wanted_name(&self) -> String {
        format!("{}/{}:{}", self.collection, self.name, self.tag)
    }
}

/// Why the old database could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OldDbError {
    #[error(
        "no old sregistry database `{path}` (give the directory that holds the old client's sregistry.db with --from DIR, or set SREGISTRY_DATABASE to it)"
    )]
    Missing { path: PathBuf },
    #[error(
        "cannot read the old sregistry database `{path}`: {detail} (check it is the old client's sregistry.db and readable by you)"
    )]
    Unreadable { path: PathBuf, detail: String },
    #[error(
        "`{path}` is a SQLite database but not the old sregistry client's: {detail} (give the directory that holds the old client's sregistry.db with --from DIR)"
    )]
    NotSregistry { path: PathBuf, detail: String },
    #[error(
        "the old sregistry database `{path}` has an unfinished transaction in `{journal}` (the old client was interrupted in the middle of a write), and migrate opens it read-only, so it cannot roll it back: as the database's owner, roll it back by opening it once (`sqlite3 {path} 'PRAGMA integrity_check'`, or any command of the old client, such as `sregistry images`), then run migrate again"
    )]
    HotJournal { path: PathBuf, journal: PathBuf },
}

impl OldDbError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            OldDbError::Missing { .. } => ErrorKind::NotFound,
            OldDbError::Unreadable { .. } => ErrorKind::Io,
            OldDbError::NotSregistry { .. } => ErrorKind::Unsupported,
            OldDbError::HotJournal { .. } => ErrorKind::Conflict,
        }
    }
}

/// Every container row of the database at `path`, by id.
pub fn read_rows(path: &Path) -> Result<Vec<OldRow>, OldDbError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OldDbError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(OldDbError::Unreadable {
                path: path.to_path_buf(),
                detail: e.to_string(),
            });
        }
        Ok(m) if !m.is_file() => {
            return Err(OldDbError::Unreadable {
                path: path.to_path_buf(),
                detail: "it is not a file".into(),
            });
        }
        Ok(_) => {}
    }
    let journal = {
        let mut j = path.as_os_str().to_owned();
        j.push("-journal");
        PathBuf::from(j)
    };
    let unreadable = |e: rusqlite::Error| match &e {
        // SQLite's answer when a read-only connection finds a hot journal to roll back.
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK
                || (f.code == rusqlite::ErrorCode::ReadOnly && journal.exists()) =>
        {
            OldDbError::HotJournal {
                path: path.to_path_buf(),
                journal: journal.clone(),
            }
        }
        _ => OldDbError::Unreadable {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unreadable)?;
    // The old client may be writing it right now: wait for its commit, boundedly.
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(unreadable)?;
    // The first read: a file that is not SQLite fails here ("file is not a database").
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| {
            s.query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(unreadable)?;
    for t in ["container", "collection"] {
        if !tables.iter().any(|have| have == t) {
            return Err(OldDbError::NotSregistry {
                path: path.to_path_buf(),
                detail: format!("it has no `{t}` table"),
            });
        }
    }
    let not_ours = |e: rusqlite::Error| OldDbError::NotSregistry {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut stmt = conn
        .prepare(
            "SELECT c.id, k.name, c.name, c.tag, c.image, c.url, c.uri, c.version, c.metrics,
                    CAST(c.created_at AS TEXT), k.id IS NULL
             FROM container c LEFT JOIN collection k ON k.id = c.collection_id
             ORDER BY c.id",
        )
        .map_err(not_ours)?;
    let rows = stmt
        .query_map([], |r| {
            let mut row = OldRow {
                id: r.get(0)?,
                collection: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                name: r.get(2)?,
                tag: r.get(3)?,
                image: r.get(4)?,
                url: r.get(5)?,
                uri: r.get(6)?,
                version: r.get(7)?,
                metrics: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                created_at: r.get(9)?,
                collection_gone: r.get(10)?,
            };
            if row.collection_gone {
                row.collection = collection_of_uri(&row).unwrap_or_default();
            }
            Ok(row)
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(unreadable)?;
    Ok(rows)
}

/// The collection a row's `uri` names: what comes before `/name:tag`, once the
/// `@version` the row records is taken off the end.
fn collection_of_uri(row: &OldRow) -> Option<String> {
    let uri = row.uri.as_deref()?;
    let uri = match &row.version {
        Some(v) => uri.strip_suffix(&format!("@{v}"))?,
        None => uri,
    };
    let collection = uri.strip_suffix(&format!("/{}:{}", row.name, row.tag))?;
    (!collection.is_empty()).then(|| collection.to_string())
}
