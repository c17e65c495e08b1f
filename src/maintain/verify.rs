//! verify: re-hash every blob and check the cache's structure; quarantine what is corrupt.
//!
//! # Protocol
//!
//! 1. Under the shared index lock: read every name and blob record. Without a lock: list
//!    `blobs/` and `tmp/`.
//! 2. Without any lock: re-hash the blobs in parallel, memory-mapped (large files with
//!    BLAKE3's multi-threaded hasher one after another, small ones on one thread each),
//!    and compare with their names and recorded sizes.
//! 3. Under the shared index lock: look at each finding again (`still_wrong`) and keep
//!    only what is still wrong, so that an `add`, `rm` or gc running meanwhile is never
//!    reported as a problem (its blob placed before its name, a blob removed while it was
//!    being hashed, gc's own `tmp/delete-*` files).
//! 4. Under the exclusive index lock, briefly: move each corrupt blob into `quarantine/`,
//!    so `get` can never hand it out again (`get` then says it was quarantined and what
//!    to run). With `--repair`, put back content whose recorded local source still has the
//!    right digest.
//!
//! A read-only tier (`Cache::open_tier`, `verify --tiers`) is checked the same way, and
//! only checked: it has no writers (so no `tmp/` to judge), and nothing is quarantined or
//! repaired there (its admin publishes it again).
//!
//! Problems (exit code 4): corrupt blobs, names whose blob is missing, orphan files under
//! `blobs/` that the index does not know, foreign files there, and `tmp/` entries older
//! than the grace period (`delete-*` files included) whose writer is gone: a file whose
//! writer still holds its writer lock (`crate::cache::writer`) is work in progress, never
//! reported. Blobs the index knows but no name
//! uses are reported for information only: `gc` removes them.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

use crate::cache::{BlobRecord, Found, Named, TmpFile};
use crate::cache::{Cache, CacheError};
use crate::format::clock;
use crate::format::digest::Digest;
use crate::format::reference::Reference;

/// Files at least this large are hashed one at a time with all threads.
const BIG: u64 = 32 << 20;

/// What to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Only the blobs of these names (all when empty).
    pub names: Vec<Reference>,
    pub repair: bool,
    /// Age after which a `tmp/` entry is stray (seconds).
    pub tmp_grace: u64,
    /// Told how the hashing advances; `None` tells nobody.
    pub progress: Option<VerifyProgress>,
}

/// Started with the bytes to hash, then told the bytes hashed after each blob is hashed
/// (from the hashing threads, so possibly from several at once); asking it to stop stops
/// verify with [`CacheError::Stopped`] before it quarantines or repairs anything.
pub type VerifyProgress = crate::cache::ProgressHook;

/// One finding about a blob or a name.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Names affected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub detail: String,
}

/// The outcome of a verify run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    pub problems: Vec<Finding>,
    /// Blobs the index knows but no name uses, directly or as a part of the image it
    /// names (gc removes them; not a problem).
    pub unreferenced: usize,
    pub repaired: Vec<String>,
    /// Repairs that were asked for but could not be done, with why.
    pub not_repaired: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The digest and size of one file, or why it could not be read.
pub type Hashed = Result<(Digest, u64), String>;

/// Hash many files in parallel; returns (digest, size) or the error text per path.
pub fn hash_all(files: &[PathBuf]) -> Vec<Hashed> {
    hash_all_told(files, None).0
}

/// [`hash_all`], telling `progress` after each file; the flag is true when it asked to
/// stop (the files not hashed by then are "not hashed").
fn hash_all_told(files: &[PathBuf], progress: Option<&VerifyProgress>) -> (Vec<Hashed>, bool) {
    let sizes: Vec<u64> = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .collect();
    let total: u64 = sizes.iter().sum();
    let (done, stopped) = (AtomicU64::new(0), AtomicBool::new(false));
    let results: Vec<Mutex<Option<Hashed>>> = files.iter().map(|_| Mutex::new(None)).collect();
    if let Some(p) = progress {
        p.0.start(Some(total), 0);
    }
    let hash = |i: usize, parallel: bool| {
        if stopped.load(Ordering::Relaxed) {
            return;
        }
        let r = crate::format::digest::hash_blob(&files[i], parallel);
        if let Ok(mut slot) = results[i].lock() {
            *slot = Some(r.map_err(|e| e.to_string()));
        }
        if let Some(p) = progress {
            let now = done.fetch_add(sizes[i], Ordering::Relaxed) + sizes[i];
            p.0.advance(now);
            if p.0.stop() {
                stopped.store(true, Ordering::Relaxed);
            }
        }
    };
    // Large files: one at a time, each on every core.
    for i in (0..files.len()).filter(|&i| sizes[i] >= BIG) {
        hash(i, true);
    }
    // Small files: one per thread.
    let small: Vec<usize> = (0..files.len()).filter(|&i| sizes[i] < BIG).collect();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    std::thread::scope(|s| {
        for _ in 0..threads.min(small.len().max(1)) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = small.get(k) else { break };
                    hash(i, false);
                }
            });
        }
    });
    if let Some(p) = progress {
        p.0.finish();
    }
    let hashed = results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err("not hashed".into()))
        })
        .collect();
    (hashed, stopped.into_inner())
}

/// Run verify on `cache`.
pub fn run(cache: &Cache, opts: &VerifyOptions) -> Result<VerifyReport, CacheError> {
    let mut report = VerifyReport::default();
    if !cache.exists() {
        // No cache: nothing to check, but a name asked for is not in it.
        if let Some(r) = opts.names.first() {
            return Err(CacheError::NotFound {
                name: r.key(),
                cache: cache.root().to_path_buf(),
                tiers: Vec::new(),
            });
        }
        return Ok(report);
    }
    let (names, blob_records) = cache.snapshot()?;
    crate::testhook::pause("verify-read-index");
    let wanted = wanted_names(cache, &names, &opts.names)?;
    let mut users: HashMap<Digest, Vec<String>> = HashMap::new();
    for n in &names {
        users
            .entry(n.record.digest)
            .or_default()
            .push(n.name.clone());
    }
    let size_of: HashMap<Digest, u64> = blob_records.iter().map(|(d, b)| (*d, b.size)).collect();
    let on_disk: Vec<Found> = cache.blobs_on_disk()?;
    crate::testhook::pause("verify-listed");

    let to_hash = blobs_to_hash(&on_disk, &wanted, &users);
    let paths: Vec<PathBuf> = to_hash.iter().map(|f| f.path.clone()).collect();
    let (hashed, stopped) = hash_all_told(&paths, opts.progress.as_ref());
    if stopped {
        return Err(CacheError::Stopped { what: "verify" });
    }
    let records: HashMap<Digest, &BlobRecord> = blob_records.iter().map(|(d, b)| (*d, b)).collect();
    let replaced = |d: &Digest, path: &std::path::Path| {
        records.get(d).is_some_and(|b| cache.is_replaced(b, path))
    };
    let mut corrupt = judge_hashes(&to_hash, hashed, &size_of, &replaced, &users, &mut report);
    missing_blobs(cache, &on_disk, &users, &wanted, &mut report);
    let tier = cache.tier().is_some();
    if wanted.is_none() {
        // A tier has no writers: its `tmp/` (if any) is never read, nor its writer locks.
        let tmp = if tier { Vec::new() } else { cache.tmp_files()? };
        unknown_files(&on_disk, &tmp, &size_of, &mut report);
        report.unreferenced = unreferenced(&blob_records, &users);
        stray_tmp(tmp, opts.tmp_grace, &mut report);
    }
    report.problems = still_wrong(cache, std::mem::take(&mut report.problems), &wanted)?;
    corrupt.retain(|(d, _)| {
        report
            .problems
            .iter()
            .any(|f| f.kind == "corrupt" && f.digest == Some(*d))
    });
    if !tier && (!corrupt.is_empty() || opts.repair) {
        quarantine_and_repair(cache, &corrupt, &users, &mut report, opts.repair)?;
    }
    Ok(report)
}

/// The names verify is limited to (`None`: all), each checked to be in the index (and to
/// point to the digest it was given with, if any).
fn wanted_names(
    cache: &Cache,
    names: &[Named],
    asked: &[Reference],
) -> Result<Option<HashSet<String>>, CacheError> {
    if asked.is_empty() {
        return Ok(None);
    }
    let keys: HashSet<String> = asked.iter().map(|r| r.key()).collect();
    for r in asked {
        let Some(n) = names.iter().find(|n| n.name == r.key()) else {
            return Err(CacheError::NotFound {
                name: r.key(),
                cache: cache.root().to_path_buf(),
                tiers: Vec::new(),
            });
        };
        crate::cache::check_digest(r, &n.record)?;
    }
    Ok(Some(keys))
}

/// The blob files to re-hash: every one with a blob name, or only those a wanted name
/// uses.
fn blobs_to_hash<'a>(
    on_disk: &'a [Found],
    wanted: &Option<HashSet<String>>,
    users: &HashMap<Digest, Vec<String>>,
) -> Vec<&'a Found> {
    on_disk
        .iter()
        .filter(|f| match (wanted, f.digest) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(w), Some(d)) => users
                .get(&d)
                .is_some_and(|ns| ns.iter().any(|n| w.contains(n))),
        })
        .collect()
}

/// Each hashed blob against its name, its recorded size and the file its record says
/// was put in place (`replaced` answers whether a blob's file is another):
/// `corrupt` or `unreadable` findings, counted in the report; returns the corrupt blobs.
fn judge_hashes(
    to_hash: &[&Found],
    hashed: Vec<Hashed>,
    size_of: &HashMap<Digest, u64>,
    replaced: &dyn Fn(&Digest, &std::path::Path) -> bool,
    users: &HashMap<Digest, Vec<String>>,
    report: &mut VerifyReport,
) -> Vec<(Digest, PathBuf)> {
    let mut corrupt: Vec<(Digest, PathBuf)> = Vec::new();
    for (f, r) in to_hash.iter().zip(hashed) {
        let Some(d) = f.digest else { continue };
        report.blobs_checked += 1;
        const REPLACED: &str = "not the file sregistry put there: another file was renamed or copied over it from outside sregistry";
        let detail = match r {
            Ok((got, size)) => {
                report.bytes_checked += size;
                if got != d {
                    format!("content hashes to {got}")
                } else if size_of.get(&d).is_some_and(|&s| s != size) {
                    format!("size {size} differs from the recorded {}", size_of[&d])
                } else if replaced(&d, &f.path) {
                    REPLACED.into()
                } else {
                    continue;
                }
            }
            // A FIFO, a link, a directory at a blob's name: never waited on, never read.
            Err(e) if e.contains(crate::format::digest::NOT_REGULAR) => {
                report.problems.push(Finding {
                    kind: "foreign",
                    path: f.path.clone(),
                    digest: Some(d),
                    names: users.get(&d).cloned().unwrap_or_default(),
                    detail: e,
                });
                continue;
            }
            // A file another member renamed over the blob may be one only they can read.
            Err(_) if replaced(&d, &f.path) => REPLACED.into(),
            Err(e) => {
                report.problems.push(Finding {
                    kind: "unreadable",
                    path: f.path.clone(),
                    digest: Some(d),
                    names: users.get(&d).cloned().unwrap_or_default(),
                    detail: e,
                });
                continue;
            }
        };
        corrupt.push((d, f.path.clone()));
        report.problems.push(Finding {
            kind: "corrupt",
            path: f.path.clone(),
            digest: Some(d),
            names: users.get(&d).cloned().unwrap_or_default(),
            detail,
        });
    }
    corrupt
}

/// `missing`: the (wanted) names whose blob has no file.
fn missing_blobs(
    cache: &Cache,
    on_disk: &[Found],
    users: &HashMap<Digest, Vec<String>>,
    wanted: &Option<HashSet<String>>,
    report: &mut VerifyReport,
) {
    let disk_set: HashSet<Digest> = on_disk.iter().filter_map(|f| f.digest).collect();
    for (d, ns) in users {
        let ns: Vec<String> = ns
            .iter()
            .filter(|n| wanted.as_ref().is_none_or(|w| w.contains(*n)))
            .cloned()
            .collect();
        if !ns.is_empty() && !disk_set.contains(d) {
            report.problems.push(Finding {
                kind: "missing",
                path: cache.blob_path(d),
                digest: Some(*d),
                names: ns,
                detail: "the index names this blob but its file is gone".into(),
            });
        }
    }
}

/// `foreign` files under `blobs/` (not a blob name, or in the wrong directory) and
/// `orphan` ones (a blob the index does not know); a blob placed before its commit is its
/// live writer's, not an orphan (see gc).
fn unknown_files(
    on_disk: &[Found],
    tmp: &[TmpFile],
    size_of: &HashMap<Digest, u64>,
    report: &mut VerifyReport,
) {
    let staged: HashSet<(u64, u64)> = tmp.iter().filter(|t| t.live).map(|t| t.inode).collect();
    for f in on_disk.iter().filter(|f| !staged.contains(&f.inode)) {
        match f.digest {
            None => report.problems.push(Finding {
                kind: "foreign",
                path: f.path.clone(),
                digest: None,
                names: vec![],
                detail: "not a blob name, or in the wrong directory".into(),
            }),
            Some(d) if !size_of.contains_key(&d) => report.problems.push(Finding {
                kind: "orphan",
                path: f.path.clone(),
                digest: Some(d),
                names: vec![],
                detail: "a file the index does not know (`sregistry gc` removes it)".into(),
            }),
            _ => {}
        }
    }
}

/// How many blobs the index knows that no name uses, directly or as a part (layers,
/// config) of the image it names: information, not a problem.
fn unreferenced(
    blob_records: &[(Digest, BlobRecord)],
    users: &HashMap<Digest, Vec<String>>,
) -> usize {
    let parts: HashSet<Digest> = blob_records
        .iter()
        .filter(|(d, _)| users.contains_key(d))
        .flat_map(|(_, b)| b.parts.iter().copied())
        .collect();
    blob_records
        .iter()
        .map(|(d, _)| d)
        .collect::<HashSet<_>>()
        .into_iter()
        .filter(|d| !users.contains_key(d) && !parts.contains(d))
        .count()
}

/// `stray-tmp`: `tmp/` entries older than `grace` whose writer is gone. A `delete-*` file
/// too: gc and rm unlink theirs a moment after their lock. A file whose writer is alive
/// (its writer lock held) is work in progress.
fn stray_tmp(tmp: Vec<TmpFile>, grace: u64, report: &mut VerifyReport) {
    let now = clock::now();
    for t in tmp {
        if !t.live && !t.spare && now.saturating_sub(t.mtime) >= grace {
            report.problems.push(Finding {
                kind: "stray-tmp",
                path: t.path.clone(),
                digest: None,
                names: vec![],
                detail: "left by an interrupted command (`sregistry gc` removes it)".into(),
            });
        }
    }
}

/// Look again, under the shared lock (no name, blob record or blob changes meanwhile), at
/// each finding of a check that ran without it on a cache in use, and keep only what is
/// still wrong:
/// * `orphan`: still there, still unknown to the index, and not an `add` in flight (whose
///   blob is hard-linked to its staged copy in `tmp/` until the name is committed, so it
///   has more than one link);
/// * `missing`, `unreadable`, `corrupt` whose file is gone: a problem only if a name (of
///   those asked about) still points to it, and then it is `missing`;
/// * `stray-tmp`, `foreign`: still there.
fn still_wrong(
    cache: &Cache,
    problems: Vec<Finding>,
    wanted: &Option<HashSet<String>>,
) -> Result<Vec<Finding>, CacheError> {
    use std::os::unix::fs::MetadataExt;
    cache.with_snapshot(|(names, blobs)| {
        let known: HashSet<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let users = |d: &Digest| -> Vec<String> {
            names
                .iter()
                .filter(|n| n.record.digest == *d)
                .filter(|n| wanted.as_ref().is_none_or(|w| w.contains(&n.name)))
                .map(|n| n.name.clone())
                .collect()
        };
        problems
            .into_iter()
            .filter_map(|mut f| {
                let meta = std::fs::symlink_metadata(&f.path).ok();
                match (f.kind, f.digest) {
                    ("orphan", Some(d)) => meta
                        .filter(|m| !known.contains(&d) && m.nlink() == 1)
                        .map(|_| f),
                    ("missing" | "unreadable" | "corrupt", Some(d)) if meta.is_none() => {
                        f.names = users(&d);
                        if f.names.is_empty() {
                            return None;
                        }
                        f.kind = "missing";
                        f.detail = "the index names this blob but its file is gone".into();
                        Some(f)
                    }
                    // Put back meanwhile (an `add` of the same content).
                    ("missing", _) => meta.is_none().then_some(f),
                    ("stray-tmp" | "foreign", _) => meta.map(|_| f),
                    _ => Some(f),
                }
            })
            .collect()
    })
}

/// Under the exclusive lock: move corrupt blobs to `quarantine/`; with `repair`, put back
/// content from recorded local sources that still hash right.
fn quarantine_and_repair(
    cache: &Cache,
    corrupt: &[(Digest, PathBuf)],
    users: &HashMap<Digest, Vec<String>>,
    report: &mut VerifyReport,
    repair: bool,
) -> Result<(), CacheError> {
    // Stage repairs before taking the lock: copying and hashing never hold it.
    let mut staged = Vec::new();
    if repair {
        let broken: Vec<Digest> = report
            .problems
            .iter()
            .filter(|f| matches!(f.kind, "corrupt" | "missing"))
            .filter_map(|f| f.digest)
            .collect();
        for d in broken {
            let names = users.get(&d).cloned().unwrap_or_default();
            let source = cache.first_source(&names)?;
            match source {
                Some(src) if src.contains("://") => {
                    // A source recorded with a query (by an earlier version) keeps its
                    // values out of the report.
                    let shown = match src.split_once('?') {
                        Some((before, _)) => format!("{before}?..."),
                        None => src.clone(),
                    };
                    report.not_repaired.push(format!(
                        "{}: its source `{shown}` is remote, and --repair copies local files only; pull it again (`sregistry pull --force REMOTE --name {}`)",
                        names.join(", "),
                        names.first().map(String::as_str).unwrap_or("NAME"),
                    ))
                }
                Some(src) => {
                    let path = PathBuf::from(&src);
                    let fresh = cache.copy_in(&path);
                    match fresh {
                        Ok(s) if s.digest() == d => staged.push((s, names)),
                        Ok(_) => report.not_repaired.push(format!(
                            "{}: its source `{src}` has changed; add it again",
                            names.join(", ")
                        )),
                        Err(e) => report.not_repaired.push(format!(
                            "{}: its source `{src}` cannot be read ({e}); add it again",
                            names.join(", ")
                        )),
                    }
                }
                None => report.not_repaired.push(format!(
                    "{}: no source recorded; add it again",
                    names.join(", ")
                )),
            }
        }
    }
    let mut restore = Vec::new();
    for (s, names) in staged {
        restore.push(s);
        report.repaired.extend(names);
    }
    cache.quarantine(corrupt, restore)?;
    Ok(())
}
