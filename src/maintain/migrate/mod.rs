//! `sregistry migrate`: bring the images of the old Python client (`sregistry` 0.2.39 on
//! PyPI) into the cache, through [`Cache`]'s public API only.
//!
//! # What it promises
//!
//! * The old database is opened read-only and never written (`olddb`); without
//!   `move_files` the old image files are only read.
//! * Every `container` row whose file exists is imported under `collection/name:tag`
//!   (normalised where ours refuses the old name, see `names`), with its facts as
//!   labels: [`LABEL_VERSION`], [`LABEL_URL`], [`LABEL_URI`], [`LABEL_METRICS`],
//!   [`LABEL_ROW`], [`LABEL_CREATED`] (a NULL column gives no label).
//! * A row whose `collection` row is gone takes its collection from its `uri` (the report
//!   says so: [`RowReport::collection_from_uri`]); one whose `uri` names none either is
//!   [`Outcome::NoCollection`], never left out of the report.
//! * Several rows for one name: the newest (`created_at`, then `id`) that can be imported
//!   wins; the rows after it are [`Outcome::Superseded`], the newer ones that could not be
//!   imported say why.
//! * A version that is a sha256 (the old client's default: the file's hash) is checked
//!   against the file; a file that no longer matches is [`Outcome::Changed`], not imported.
//! * A second run adds nothing: a name that already points to the file's content, or (the
//!   file having been moved in by an earlier run) carries this row's labels, is
//!   [`Outcome::AlreadyThere`]. A name in the cache that points to other content is
//!   re-pointed only if an earlier migrate put it there; otherwise it is
//!   [`Outcome::Taken`] and left alone.
//! * The names are committed through [`Cache::add_many`], a batch of names per index
//!   transaction; a dry run plans the same and commits nothing.
//! * With `move_files`, a row whose file could not be removed from its old path once its
//!   name was committed (its directory not writable) says so
//!   ([`RowReport::not_removed`], counted in [`Report::not_removed`]): its image is in the
//!   cache, and the file was copied, not moved.

mod names;
mod olddb;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cache::{AddItem, AddOptions, Cache, CacheError, Entry, NotRemoved};
use crate::error::ErrorKind;
use crate::format::digest;
use crate::format::reference::Reference;
pub use names::{Target, target};
pub use olddb::{DB_FILE, OldDbError, OldRow, read_rows};

/// The row's `version` (the old client's version string, usually the file's sha256).
pub const LABEL_VERSION: &str = "org.sregistry.migrate.version";
/// The row's `url` (where the old client got the image, or the name it was given).
pub const LABEL_URL: &str = "org.sregistry.migrate.url";
/// The row's `uri` (`collection/name:tag@version`, as the old client showed it).
pub const LABEL_URI: &str = "org.sregistry.migrate.uri";
/// The row's `metrics` (JSON text: the old client's inspection of the image).
pub const LABEL_METRICS: &str = "org.sregistry.migrate.metrics";
/// The row's `id` in the old database.
pub const LABEL_ROW: &str = "org.sregistry.migrate.row";
/// The row's `created_at` (`YYYY-MM-DD HH:MM:SS`, UTC).
pub const LABEL_CREATED: &str = "org.sregistry.migrate.created";
/// The old client's variable naming the directory that holds `sregistry.db`.
pub const DATABASE_ENV: &str = crate::settings::DATABASE.var;

/// Why migrate could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    OldDb(#[from] OldDbError),
    #[error(
        "no old sregistry database given: set {DATABASE_ENV} (the directory that holds sregistry.db) or HOME, or give --from DIR"
    )]
    NoDefault,
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl MigrateError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            MigrateError::OldDb(e) => e.kind(),
            MigrateError::NoDefault => ErrorKind::Unsupported,
            MigrateError::Cache(e) => e.kind(),
        }
    }
}

/// How to migrate.
#[derive(Clone, Debug, Default)]
pub struct MigrateOptions {
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Move the files into the cache (the rules of `add --move`).
    pub move_files: bool,
    /// Names per index transaction (0: [`crate::cache::DEFAULT_ADD_BATCH`]).
    pub batch: usize,
}

/// What became of one row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Imported (or, in a dry run, would be) under `name`; `normalized_from` is the old
    /// name when ours refused it.
    Imported {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        normalized_from: Option<String>,
    },
    /// `name` already holds this row's image: nothing to do.
    AlreadyThere { name: String },
    /// A newer row for the same name was imported instead.
    Superseded { by: i64 },
    /// The row names no file.
    NoFile,
    /// The row's collection row is gone and its `uri` names no collection either.
    NoCollection,
    /// The row's file does not exist any more.
    FileGone,
    /// The row's version is a sha256 the file no longer matches.
    Changed { sha256: String },
    /// The file could not be read.
    Unreadable { error: String },
    /// The old name is not valid here, even normalised.
    InvalidName { reason: String },
    /// The normalised name is another row's name.
    Collides { name: String, with: String },
    /// The name is in the cache, pointing to other content that migrate did not put there.
    Taken { name: String },
    /// The cache refused the import (a pinned name, a file it cannot take...).
    Refused { error: String },
}

impl Outcome {
    /// True when the row's image is in the cache after the run (or would be).
    pub fn is_in_cache(&self) -> bool {
        matches!(
            self,
            Outcome::Imported { .. } | Outcome::AlreadyThere { .. }
        )
    }

    /// Why a row was not imported, for the report's one line per row.
    pub fn why(&self) -> String {
        match self {
            Outcome::Imported { name, .. } => format!("imported as `{name}`"),
            Outcome::AlreadyThere { name } => format!("already in the cache as `{name}`"),
            Outcome::Superseded { by } => format!(
                "a newer row ({by}) has the same name and was imported instead (one name holds one image)"
            ),
            Outcome::NoFile => "the row names no image file".into(),
            Outcome::NoCollection => "its collection row is gone from the old database and its uri names no collection; add the file by hand (`sregistry add FILE --name COLLECTION/NAME:TAG`)".into(),
            Outcome::FileGone => "its file does not exist any more".into(),
            Outcome::Changed { sha256 } => format!(
                "its file changed since the old client added it (sha256 now {sha256}, not the row's version); check it, then add it by hand if it is right"
            ),
            Outcome::Unreadable { error } => format!("its file cannot be read: {error}"),
            Outcome::InvalidName { reason } => format!(
                "its name is not valid here, even normalised: {reason}; add the file by hand under a valid name"
            ),
            Outcome::Collides { name, with } => format!(
                "its name, normalised to `{name}`, is also `{with}`'s; add the file by hand under another name"
            ),
            Outcome::Taken { name } => format!(
                "the cache already has `{name}` pointing to other content; `sregistry rm {name}` (or tag it elsewhere) and run migrate again"
            ),
            Outcome::Refused { error } => error.clone(),
        }
    }
}

/// One row and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct RowReport {
    pub id: i64,
    /// The row as the old client showed it (its `uri`).
    pub uri: String,
    pub file: Option<PathBuf>,
    /// The row's collection row is gone: its collection was taken from its `uri`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub collection_from_uri: bool,
    /// With `--move`: the row's image is in the cache, but its old path could not be
    /// removed (why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_removed: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What a migrate did (or, in a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub database: PathBuf,
    pub dry_run: bool,
    pub moved: bool,
    pub imported: usize,
    pub already_there: usize,
    pub not_imported: usize,
    /// With `--move`: rows imported whose old path could not be removed.
    pub not_removed: usize,
    pub rows: Vec<RowReport>,
}

/// The directory the old client keeps its database in: the configuration's `database`
/// (`$SREGISTRY_DATABASE`), else `~/.singularity`.
pub fn default_dir(config: &crate::settings::Config) -> Result<PathBuf, MigrateError> {
    if let Some(d) = &config.database {
        return Ok(d.clone());
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".singularity"))
        .ok_or(MigrateError::NoDefault)
}

/// The database in `dir` (`dir/sregistry.db`), or `dir` itself when it is a file.
pub fn database_path(dir: &Path) -> PathBuf {
    if dir.is_file() {
        dir.to_path_buf()
    } else {
        dir.join(DB_FILE)
    }
}

/// A row chosen for its name, and its file.
struct Pick {
    row: usize,
    target: Target,
    file: Option<PathBuf>,
}

/// Migrate the old database at `db` (a path to `sregistry.db`) into `cache`.
pub fn run(cache: &Cache, db: &Path, opts: &MigrateOptions) -> Result<Report, MigrateError> {
    let rows = read_rows(db)?;
    let base = db.parent().unwrap_or(Path::new("."));
    let files: Vec<Option<PathBuf>> = rows.iter().map(|r| file_of(r, base)).collect();
    let existing: HashMap<String, Entry> = cache
        .list(None)?
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; rows.len()];

    let groups = rows_by_name(&rows, &mut outcomes);
    let picks = pick_winners(&rows, &files, groups, &existing, &mut outcomes);
    let collided = mark_collisions(&rows, &picks, &mut outcomes);
    let kept = KeptPaths::default();
    let (items, item_rows) = adds_to_make(
        &rows,
        &picks,
        &collided,
        &existing,
        opts,
        &kept,
        &mut outcomes,
    );
    if !opts.dry_run && !items.is_empty() {
        let results = cache.add_many(items, opts.batch)?;
        for (i, r) in item_rows.into_iter().zip(results) {
            if let Err(e) = r {
                outcomes[i] = Some(Outcome::Refused {
                    error: e.to_string(),
                });
            }
        }
    }
    let kept = std::mem::take(&mut *kept.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(report_of(db, opts, rows, files, outcomes, kept))
}

/// The rows whose old path could not be removed after their import, with why (filled by
/// the adds, from the cache's threads).
type KeptPaths = std::sync::Arc<std::sync::Mutex<HashMap<usize, String>>>;

/// Rows by the name they want, newest (`created_at`, then `id`) first; a row that names
/// no collection at all is [`Outcome::NoCollection`] and in no group.
fn rows_by_name(rows: &[OldRow], outcomes: &mut [Option<Outcome>]) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if r.collection_gone && r.collection.is_empty() {
            outcomes[i] = Some(Outcome::NoCollection);
            continue;
        }
        groups.entry(r.wanted_name()).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
    for idx in &mut groups {
        idx.sort_by(|&a, &b| {
            let key = |i: usize| (rows[i].created_at.clone(), rows[i].id);
            key(b).cmp(&key(a))
        });
    }
    groups
}

/// The row each name is imported from: the first of its group (newest first) that can be
/// imported, or that an earlier run already moved in. The newest row of each name is
/// checked (its file hashed) on every core; an older row only when the newer ones cannot
/// be imported.
fn pick_winners(
    rows: &[OldRow],
    files: &[Option<PathBuf>],
    groups: Vec<Vec<usize>>,
    existing: &HashMap<String, Entry>,
    outcomes: &mut [Option<Outcome>],
) -> Vec<Pick> {
    let newest: Vec<usize> = groups.iter().map(|idx| idx[0]).collect();
    let mut checked: HashMap<usize, Result<(), Outcome>> = newest
        .iter()
        .copied()
        .zip(crate::format::par::map(&newest, |&i| {
            check_file(&rows[i], files[i].as_deref())
        }))
        .collect();
    groups
        .into_iter()
        .filter_map(|idx| winner_of_group(rows, files, idx, existing, &mut checked, outcomes))
        .collect()
}

/// The winner of one name's rows (newest first), if any; every other row's outcome says
/// why it is not: an invalid name, superseded by the winner, or what its check found.
fn winner_of_group(
    rows: &[OldRow],
    files: &[Option<PathBuf>],
    idx: Vec<usize>,
    existing: &HashMap<String, Entry>,
    checked: &mut HashMap<usize, Result<(), Outcome>>,
    outcomes: &mut [Option<Outcome>],
) -> Option<Pick> {
    let first = &rows[idx[0]];
    let target = names::target(&first.collection, &first.name, &first.tag);
    if let Target::Invalid(reason) = &target {
        for i in idx {
            outcomes[i] = Some(Outcome::InvalidName {
                reason: reason.clone(),
            });
        }
        return None;
    }
    let key = target.key().unwrap_or_default().to_string();
    let mut winner: Option<Pick> = None;
    for i in idx {
        if let Some(w) = &winner {
            outcomes[i] = Some(Outcome::Superseded { by: rows[w.row].id });
            continue;
        }
        let check = checked
            .remove(&i)
            .unwrap_or_else(|| check_file(&rows[i], files[i].as_deref()));
        match check {
            Ok(()) => {
                winner = Some(Pick {
                    row: i,
                    target: target.clone(),
                    file: files[i].clone(),
                });
            }
            Err(Outcome::FileGone) if moved_here(existing.get(&key), &rows[i]) => {
                winner = Some(Pick {
                    row: i,
                    target: target.clone(),
                    file: None,
                });
            }
            Err(o) => outcomes[i] = Some(o),
        }
    }
    winner
}

/// Which picks may not take their normalised name, marked [`Outcome::Collides`]: a
/// normalised name is taken only if it is no other row's name (whether or not that row can
/// be imported) and no other normalised name.
fn mark_collisions(rows: &[OldRow], picks: &[Pick], outcomes: &mut [Option<Outcome>]) -> Vec<bool> {
    let wanted: HashSet<String> = rows
        .iter()
        .filter(|r| !(r.collection_gone && r.collection.is_empty()))
        .map(OldRow::wanted_name)
        .collect();
    let mut normalized: HashMap<&str, Vec<usize>> = HashMap::new();
    for (p, pick) in picks.iter().enumerate() {
        if let Target::Normalized(k) = &pick.target {
            normalized.entry(k).or_default().push(p);
        }
    }
    let mut collided = vec![false; picks.len()];
    for (key, ps) in &normalized {
        for &p in ps {
            let with = if wanted.contains(*key) {
                key.to_string()
            } else if let Some(&q) = ps.iter().find(|&&q| q != p) {
                rows[picks[q].row].wanted_name()
            } else {
                continue;
            };
            outcomes[picks[p].row] = Some(Outcome::Collides {
                name: key.to_string(),
                with,
            });
            collided[p] = true;
        }
    }
    collided
}

/// What to add, and the row of each: every pick that did not collide, is not in the
/// cache already, and names no other content there than an earlier migrate put. Each
/// row's outcome is what the adds will do (a dry run stops here).
fn adds_to_make(
    rows: &[OldRow],
    picks: &[Pick],
    collided: &[bool],
    existing: &HashMap<String, Entry>,
    opts: &MigrateOptions,
    kept: &KeptPaths,
    outcomes: &mut [Option<Outcome>],
) -> (Vec<AddItem>, Vec<usize>) {
    let mut items = Vec::new();
    let mut item_rows = Vec::new();
    for (p, pick) in picks.iter().enumerate() {
        if collided[p] {
            continue;
        }
        let row = &rows[pick.row];
        let key = pick.target.key().unwrap_or_default();
        let Some(file) = &pick.file else {
            outcomes[pick.row] = Some(Outcome::AlreadyThere {
                name: key.to_string(),
            });
            continue;
        };
        if let Some(e) = existing.get(key)
            && let Some(o) = against_cached(e, file, key, pick.row, opts, kept)
        {
            outcomes[pick.row] = Some(o);
            continue;
        }
        let name = match Reference::parse(key) {
            Ok(r) => r,
            Err(e) => {
                outcomes[pick.row] = Some(Outcome::InvalidName {
                    reason: e.reason().to_string(),
                });
                continue;
            }
        };
        items.push(import_item(row, pick.row, file, name, opts, kept));
        item_rows.push(pick.row);
        outcomes[pick.row] = Some(Outcome::Imported {
            name: key.to_string(),
            normalized_from: matches!(pick.target, Target::Normalized(_))
                .then(|| row.wanted_name()),
        });
    }
    (items, item_rows)
}

/// The add that imports `row` (index `i`) from `file` as `name`, with the row's facts as
/// labels; with `move_files`, a path it cannot remove is told to `kept`.
fn import_item(
    row: &OldRow,
    i: usize,
    file: &Path,
    name: Reference,
    opts: &MigrateOptions,
    kept: &KeptPaths,
) -> AddItem {
    AddItem {
        path: file.to_path_buf(),
        name,
        opts: AddOptions {
            move_file: opts.move_files,
            labels: labels_of(row),
            not_removed: Some(NotRemoved({
                let kept = kept.clone();
                std::sync::Arc::new(move |_, e| {
                    kept.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(i, e.to_string());
                })
            })),
            ..AddOptions::default()
        },
    }
}

/// The outcome of a pick whose name `key` is in the cache already as `e`, or `None` when
/// the name is to be (re-)pointed at `file`: the same content is
/// [`Outcome::AlreadyThere`] (and with `move_files` the file is handed over as an
/// import's would be: a run after one that could not remove it said "files moved" and left
/// it); other content is [`Outcome::Taken`] unless an earlier migrate put it there.
fn against_cached(
    e: &Entry,
    file: &Path,
    key: &str,
    row: usize,
    opts: &MigrateOptions,
    kept: &KeptPaths,
) -> Option<Outcome> {
    match crate::format::digest::hash_file(file) {
        Ok((d, _)) if d == e.digest => {
            if opts.move_files
                && !opts.dry_run
                && let Err(err) = std::fs::remove_file(file)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                kept.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(row, err.to_string());
            }
            Some(Outcome::AlreadyThere {
                name: key.to_string(),
            })
        }
        Ok(_) if !e.labels.contains_key(LABEL_ROW) => Some(Outcome::Taken {
            name: key.to_string(),
        }),
        Ok(_) => None,
        Err(err) => Some(Outcome::Unreadable {
            error: err.to_string(),
        }),
    }
}

/// The report: every row with its outcome ([`Outcome::NoFile`] where none was decided),
/// counted.
fn report_of(
    db: &Path,
    opts: &MigrateOptions,
    rows: Vec<OldRow>,
    files: Vec<Option<PathBuf>>,
    outcomes: Vec<Option<Outcome>>,
    mut kept: HashMap<usize, String>,
) -> Report {
    let mut report = Report {
        database: db.to_path_buf(),
        dry_run: opts.dry_run,
        moved: opts.move_files,
        imported: 0,
        already_there: 0,
        not_imported: 0,
        not_removed: 0,
        rows: Vec::with_capacity(rows.len()),
    };
    for (i, ((row, file), outcome)) in rows.into_iter().zip(files).zip(outcomes).enumerate() {
        let outcome = outcome.unwrap_or(Outcome::NoFile);
        match outcome {
            Outcome::Imported { .. } => report.imported += 1,
            Outcome::AlreadyThere { .. } => report.already_there += 1,
            _ => report.not_imported += 1,
        }
        report.rows.push(RowReport {
            id: row.id,
            uri: row.shown(),
            file,
            collection_from_uri: row.collection_gone && !row.collection.is_empty(),
            not_removed: kept.remove(&i).inspect(|_| report.not_removed += 1),
            outcome,
        });
    }
    report
}

/// The row's file: its `image` path (relative to the database's directory if relative).
fn file_of(row: &OldRow, base: &Path) -> Option<PathBuf> {
    let image = row.image.as_deref().filter(|s| !s.is_empty())?;
    Some(base.join(image))
}

/// The row's file exists, and matches its version when that is a sha256.
fn check_file(row: &OldRow, file: Option<&Path>) -> Result<(), Outcome> {
    let file = file.ok_or(Outcome::NoFile)?;
    match std::fs::metadata(file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(Outcome::Unreadable {
                error: "it is not a regular file".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Outcome::FileGone),
        Err(e) => {
            return Err(Outcome::Unreadable {
                error: e.to_string(),
            });
        }
    }
    let Some(want) = row.version.as_deref().and_then(sha256_of_version) else {
        return Ok(());
    };
    let actual = sha256_file(file).map_err(|e| Outcome::Unreadable {
        error: e.to_string(),
    })?;
    if actual == want {
        Ok(())
    } else {
        Err(Outcome::Changed { sha256: actual })
    }
}

/// The hex of a version that is a sha256 (`<64 hex>` or `sha256:<64 hex>`).
fn sha256_of_version(v: &str) -> Option<String> {
    let hex = v.strip_prefix("sha256:").unwrap_or(v).to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The bare hex of the file's sha256, as the old client wrote versions.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let hex = digest::sha256_reader(&mut std::fs::File::open(path)?)?;
    Ok(hex.trim_start_matches("sha256:").to_string())
}

/// A name an earlier migrate filled from this very row (its file since moved in).
fn moved_here(entry: Option<&Entry>, row: &OldRow) -> bool {
    entry.is_some_and(|e| {
        e.labels.get(LABEL_ROW) == Some(&row.id.to_string())
            && e.labels.get(LABEL_URI) == row.uri.as_ref()
            && e.labels.get(LABEL_VERSION) == row.version.as_ref()
    })
}

/// The row's facts, as labels.
fn labels_of(row: &OldRow) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            l.insert(k.to_string(), v.clone());
        }
    };
    put(LABEL_VERSION, row.version.as_ref());
    put(LABEL_URL, row.url.as_ref());
    put(LABEL_URI, row.uri.as_ref());
    put(LABEL_METRICS, Some(&row.metrics));
    put(LABEL_ROW, Some(&row.id.to_string()));
    put(LABEL_CREATED, row.created_at.as_ref());
    l
}
