//! Garbage collection: keep the cache bounded, from cron, while jobs keep using it.
//!
//! # Protocol
//!
//! 1. Without any lock: list `blobs/` and `tmp/` (a snapshot; everything is re-checked).
//! 2. Under the **exclusive index lock** (milliseconds to a second or two for 100,000
//!    names): read every name, its last use and pin, and every blob record; choose the
//!    victims; remove the victim names and blob records and fold use markers into
//!    `last_use`, in one transaction; commit; rename the victim blob files into `tmp/`
//!    (`delete-*`) and remove the folded markers; release the lock.
//! 3. Without any lock: unlink the renamed files and stale `tmp/` entries, then the
//!    writer locks of dead writers that no `tmp/` file names any more.
//!
//! A `get` therefore waits at most for step 2, never for the unlinks; a job that already
//! has an image open keeps reading it after its name is gone.
//!
//! # Policy
//!
//! * Always: blobs no name uses (including files under `blobs/` the index does not know,
//!   which only a crash between blob and name can leave) and `tmp/` entries older than
//!   the grace period (`--tmp-grace`, default 6 h) whose writer is gone, and `delete-*`
//!   leftovers of an interrupted gc or rm, at once. A `tmp/` file whose writer still
//!   holds its writer lock (a pull downloading or converting, an add staging, on any
//!   node: `crate::cache::writer`) is never removed, however old.
//! * `--max-age D`: names not used for `D` go.
//! * `--max-size S`: least recently used names go until the blobs that remain fit in `S`.
//! * Never: pinned names, or names used (or added) within `--min-idle` (default 1 h), so
//!   an image a running job just asked for is not pulled from under it.
//!
//! "Used" is the later of the recorded last use and the time the name was added. A
//! recorded use is the later of the index's `last_use` and the name's use marker, which a
//! `get` writes under the shared lock when it cannot write the index (`crate::cache::uses`);
//! gc folds the markers into the index in its transaction and removes them before it
//! releases the lock. Uses are recorded to [`LAST_USE_RESOLUTION`] (10 minutes), so a
//! `--min-idle` below that counts as 10 minutes.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::cache::{
    BlobRecord, Cache, CacheError, Found, LAST_USE_RESOLUTION, Named, TmpFile, Victims,
};
use crate::format::clock;
use crate::format::digest::Digest;

/// Default `--min-idle`: one hour.
pub const DEFAULT_MIN_IDLE: u64 = 3600;
/// Default grace period of `tmp/` files: six hours.
pub const DEFAULT_TMP_GRACE: u64 = 6 * 3600;

/// What gc may remove.
#[derive(Clone, Debug)]
pub struct GcOptions {
    pub max_size: Option<u64>,
    pub max_age: Option<u64>,
    pub min_idle: u64,
    pub tmp_grace: u64,
    pub dry_run: bool,
    /// Told how the removal of files advances; `None` tells nobody.
    pub progress: Option<GcProgress>,
}

/// Started with the files to remove, then told the files removed after each removed
/// blob's file is unlinked (the names and records are already gone from the index then);
/// asking it to stop stops the unlinking, and the next gc removes the files left.
pub type GcProgress = crate::cache::ProgressHook;

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            max_size: None,
            max_age: None,
            min_idle: DEFAULT_MIN_IDLE,
            tmp_grace: DEFAULT_TMP_GRACE,
            dry_run: false,
            progress: None,
        }
    }
}

/// What gc removed (or, with `dry_run`, would remove).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Names removed, with why (`max-age` or `max-size`).
    pub names: Vec<RemovedName>,
    /// Blobs removed.
    pub blobs: Vec<RemovedBlob>,
    /// Stale entries removed from `tmp/` (not counting spare files, which go too).
    pub tmp_files: usize,
    /// Bytes freed (blobs and tmp files).
    pub bytes_freed: u64,
    /// Bytes of blobs that remain.
    pub bytes_kept: u64,
    /// `--max-size` could not be met: what is left is pinned or recently used.
    pub over_budget: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RemovedName {
    pub name: String,
    pub reason: &'static str,
    pub last_used: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RemovedBlob {
    pub digest: Digest,
    pub size: u64,
}

/// When a name was last used: the later of its recorded use and its addition.
fn used_at(n: &Named) -> u64 {
    n.last_use.unwrap_or(0).max(n.record.added)
}

/// [`plan`], with the marker of every name it would remove read again by its path: a
/// directory listing can miss a marker another node just wrote (NFS caches listings),
/// a lookup of the file itself does not. Re-plans until no victim shows a newer use.
fn plan_checked(
    cache: &Cache,
    names: &mut [Named],
    blob_records: &[(Digest, BlobRecord)],
    on_disk: &[Found],
    opts: &GcOptions,
    now: u64,
) -> Plan {
    // Each victim's marker is read once (nothing writes markers while gc holds the
    // lock), and found by a map, not a scan of every name per victim.
    let at: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let mut checked: HashSet<String> = HashSet::new();
    loop {
        let p = plan(names, blob_records, on_disk, opts, now);
        let mut newer = false;
        for v in &p.names {
            if checked.insert(v.name.clone())
                && let Some(t) = cache.marked_use(&v.name)
                && t > v.last_used
                && let Some(&i) = at.get(&v.name)
            {
                names[i].last_use = Some(t);
                newer = true;
            }
        }
        if !newer {
            return p;
        }
    }
}

/// The victims: decided from a consistent view of the index.
struct Plan {
    names: Vec<RemovedName>,
    blobs: Vec<(Digest, u64)>,
    orphans: Vec<Found>,
    bytes_kept: u64,
    over_budget: bool,
}

/// Choose the victims by the policy above: the names past `--max-age`; under `--max-size`
/// parts, then least recently used names, until the rest fits; then every blob record
/// nothing holds any more and every file under `blobs/` the index does not know.
fn plan(
    names: &[Named],
    blob_records: &[(Digest, BlobRecord)],
    on_disk: &[Found],
    opts: &GcOptions,
    now: u64,
) -> Plan {
    // Recorded uses are precise to LAST_USE_RESOLUTION: a name used more recently than
    // that may show an older time, so no shorter idle time protects a name. A retired
    // blob's time already allows for that (`crate::cache` on re-pointing), so an
    // explicit `--min-idle 0` gives it up.
    let idle = opts.min_idle.max(LAST_USE_RESOLUTION);
    let protected = |n: &Named| n.pinned || now.saturating_sub(used_at(n)) < idle;
    let mut removed: HashSet<&str> = HashSet::new();
    let mut out_names = Vec::new();
    if let Some(age) = opts.max_age {
        for n in names
            .iter()
            .filter(|n| !protected(n) && now.saturating_sub(used_at(n)) >= age)
        {
            removed.insert(&n.name);
            out_names.push(removal(n, "max-age"));
        }
    }
    let retired = retired_kept(blob_records, opts.min_idle, now);
    let mut kept = Kept::of(names, &removed, blob_records, retired);
    let mut over_budget = false;
    if let Some(max) = opts.max_size {
        if kept.bytes > max {
            kept.drop_parts_to_fit(names, &removed, max);
        }
        out_names.extend(evict_to_fit(names, &removed, &protected, &mut kept, max));
        over_budget = kept.bytes > max;
    }
    Plan {
        names: out_names,
        blobs: unheld_blobs(blob_records, &kept),
        orphans: unknown_files(on_disk, blob_records),
        bytes_kept: kept.bytes,
        over_budget,
    }
}

fn removal(n: &Named, reason: &'static str) -> RemovedName {
    RemovedName {
        name: n.name.clone(),
        reason,
        last_used: used_at(n),
    }
}

/// The content once handed out under a name since re-pointed and used within `min_idle`:
/// it stays (invariant 6), and its bytes count.
fn retired_kept(blob_records: &[(Digest, BlobRecord)], min_idle: u64, now: u64) -> HashSet<Digest> {
    blob_records
        .iter()
        .filter(|(_, b)| {
            b.retired
                .as_ref()
                .is_some_and(|r| now.saturating_sub(r.used) < min_idle)
        })
        .map(|(d, _)| *d)
        .collect()
}

/// What stays as the plan is made: the blobs the remaining names use (how many names use
/// each), the parts those blobs list (how many used blobs list each), the retired content
/// kept, and the bytes all of that takes.
struct Kept<'a> {
    size_of: HashMap<Digest, u64>,
    parts_of: HashMap<Digest, &'a [Digest]>,
    retired: HashSet<Digest>,
    users: HashMap<Digest, usize>,
    part_users: HashMap<Digest, usize>,
    bytes: u64,
}

impl<'a> Kept<'a> {
    /// What the names not `removed` hold, with the `retired` content.
    fn of(
        names: &[Named],
        removed: &HashSet<&str>,
        blob_records: &'a [(Digest, BlobRecord)],
        retired: HashSet<Digest>,
    ) -> Self {
        let size_of: HashMap<Digest, u64> =
            blob_records.iter().map(|(d, b)| (*d, b.size)).collect();
        // How many remaining names use each blob.
        let mut users: HashMap<Digest, usize> = HashMap::new();
        for n in names.iter().filter(|n| !removed.contains(n.name.as_str())) {
            *users.entry(n.record.digest).or_default() += 1;
        }
        // The parts (layers, config) of the blobs names use: kept with them, but only as
        // a cache of what made them, so under size pressure they go before any image a
        // name uses. How many used blobs list each part:
        let parts_of: HashMap<Digest, &[Digest]> = blob_records
            .iter()
            .map(|(d, b)| (*d, b.parts.as_slice()))
            .collect();
        let mut part_users: HashMap<Digest, usize> = HashMap::new();
        for d in users.keys() {
            for p in parts_of.get(d).copied().unwrap_or_default() {
                if size_of.contains_key(p) {
                    *part_users.entry(*p).or_default() += 1;
                }
            }
        }
        let size = |d: &Digest| size_of.get(d).copied().unwrap_or(0);
        let used_bytes: u64 = users
            .keys()
            .chain(part_users.keys().filter(|p| !users.contains_key(*p)))
            .map(size)
            .sum();
        // Content handed out under a name since re-pointed stays for `--min-idle`, and
        // counts.
        let retired_bytes: u64 = retired
            .iter()
            .filter(|d| !users.contains_key(*d) && !part_users.contains_key(*d))
            .map(size)
            .sum();
        Kept {
            size_of,
            parts_of,
            retired,
            users,
            part_users,
            bytes: used_bytes + retired_bytes,
        }
    }

    /// Whether `d` stays: a name uses it, a used blob lists it, or it is retired content
    /// kept.
    fn holds(&self, d: &Digest) -> bool {
        self.users.contains_key(d) || self.part_users.contains_key(d) || self.retired.contains(d)
    }

    /// `d` lost a holder: its bytes are freed if nothing holds it any more.
    fn release(&mut self, d: &Digest) {
        if !self.holds(d) {
            self.bytes -= self.size_of.get(d).copied().unwrap_or(0);
        }
    }

    /// Under `--max-size`: drop parts until the kept bytes fit `max`, those of the least
    /// recently used images first, and of those the ones fewest images share (a common
    /// base layer goes last).
    fn drop_parts_to_fit(&mut self, names: &[Named], removed: &HashSet<&str>, max: u64) {
        let mut newest_use: HashMap<Digest, u64> = HashMap::new();
        for n in names.iter().filter(|n| !removed.contains(n.name.as_str())) {
            for p in self
                .parts_of
                .get(&n.record.digest)
                .copied()
                .unwrap_or_default()
            {
                let t = newest_use.entry(*p).or_default();
                *t = (*t).max(used_at(n));
            }
        }
        let mut parts: Vec<Digest> = self.part_users.keys().copied().collect();
        parts.sort_by_key(|p| {
            let used = newest_use.get(p).copied().unwrap_or(0);
            (used, self.part_users.get(p).copied().unwrap_or(0), *p)
        });
        for p in parts {
            if self.bytes <= max {
                break;
            }
            self.part_users.remove(&p);
            self.release(&p);
        }
    }

    /// A name that used `d` goes: when it was the last, `d` and the parts only it listed
    /// are released.
    fn drop_user(&mut self, d: &Digest) {
        let Some(c) = self.users.get_mut(d) else {
            return;
        };
        *c -= 1;
        if *c > 0 {
            return;
        }
        self.users.remove(d);
        self.release(d);
        for p in self.parts_of.get(d).copied().unwrap_or_default() {
            if let Some(c) = self.part_users.get_mut(p) {
                *c -= 1;
                if *c == 0 {
                    self.part_users.remove(p);
                    self.release(p);
                }
            }
        }
    }
}

/// Under `--max-size`: the names to evict, least recently used first (then by name),
/// until the kept bytes fit `max`; never a `protected` one or one already `removed`.
fn evict_to_fit(
    names: &[Named],
    removed: &HashSet<&str>,
    protected: &dyn Fn(&Named) -> bool,
    kept: &mut Kept<'_>,
    max: u64,
) -> Vec<RemovedName> {
    let mut lru: Vec<&Named> = names
        .iter()
        .filter(|n| !removed.contains(n.name.as_str()) && !protected(n))
        .collect();
    lru.sort_by(|a, b| {
        used_at(a)
            .cmp(&used_at(b))
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut out = Vec::new();
    for n in lru {
        if kept.bytes <= max {
            break;
        }
        out.push(removal(n, "max-size"));
        kept.drop_user(&n.record.digest);
    }
    out
}

/// The blob records nothing holds any more: they go.
fn unheld_blobs(blob_records: &[(Digest, BlobRecord)], kept: &Kept<'_>) -> Vec<(Digest, u64)> {
    blob_records
        .iter()
        .filter(|(d, _)| !kept.holds(d))
        .map(|(d, b)| (*d, b.size))
        .collect()
}

/// The files under `blobs/` the index does not know: they go.
fn unknown_files(on_disk: &[Found], blob_records: &[(Digest, BlobRecord)]) -> Vec<Found> {
    let known: HashSet<Digest> = blob_records.iter().map(|(d, _)| *d).collect();
    on_disk
        .iter()
        .filter(|f| f.digest.is_some_and(|d| !known.contains(&d)))
        .cloned()
        .collect()
}

/// Run gc on `cache`.
pub fn run(cache: &Cache, opts: &GcOptions) -> Result<GcReport, CacheError> {
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    if !cache.exists() {
        return Ok(report);
    }
    let on_disk = cache.blobs_on_disk()?;
    let tmp = cache.tmp_files()?;
    // A blob an add or a pull placed before its commit is an orphan until then; it is a
    // hard link of the live writer's staged file in `tmp/`, so it is the writer's.
    let staged: HashSet<(u64, u64)> = tmp.iter().filter(|t| t.live).map(|t| t.inode).collect();
    let on_disk: Vec<Found> = on_disk
        .into_iter()
        .filter(|f| !staged.contains(&f.inode))
        .collect();
    let now = clock::now();
    let stale_tmp: Vec<&TmpFile> = tmp
        .iter()
        .filter(|t| t.deleting || (!t.live && now.saturating_sub(t.mtime) >= opts.tmp_grace))
        .collect();
    let told = opts.progress.as_ref().map(|p| &*p.0);
    let p = cache.collect_told(
        opts.dry_run,
        |names, blob_records| {
            let p = plan_checked(cache, names, blob_records, &on_disk, opts, now);
            let victims = Victims {
                names: p.names.iter().map(|n| n.name.clone()).collect(),
                blobs: p
                    .blobs
                    .iter()
                    .map(|(d, _)| *d)
                    .chain(p.orphans.iter().filter_map(|o| o.digest))
                    .collect(),
            };
            (p, victims)
        },
        told,
    )?;
    fill(&mut report, &p);
    // Only what is gone counts (a dry run counts what would go).
    let gone = if opts.dry_run {
        vec![true; stale_tmp.len()]
    } else {
        cache.remove_tmp_files(&stale_tmp)
    };
    // A spare file goes after the grace period too, but was no leftover: not counted.
    for (t, gone) in stale_tmp.iter().zip(gone) {
        if gone && !t.spare {
            report.tmp_files += 1;
            report.bytes_freed += t.size;
        }
    }
    if !opts.dry_run {
        cache.remove_dead_writer_locks();
    }
    Ok(report)
}

fn fill(report: &mut GcReport, p: &Plan) {
    report.names = p.names.clone();
    report.blobs = p
        .blobs
        .iter()
        .map(|(d, s)| RemovedBlob {
            digest: *d,
            size: *s,
        })
        .chain(p.orphans.iter().filter_map(|o| {
            o.digest.map(|d| RemovedBlob {
                digest: d,
                size: o.size,
            })
        }))
        .collect();
    report.bytes_freed += report.blobs.iter().map(|b| b.size).sum::<u64>();
    report.bytes_kept = p.bytes_kept;
    report.over_budget = p.over_budget;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::RefRecord;

    fn named(name: &str, content: &[u8], added: u64, last: Option<u64>, pinned: bool) -> Named {
        Named {
            name: name.into(),
            record: RefRecord {
                digest: Digest::of(content),
                added,
                source: None,
                labels: Default::default(),
            },
            blob: None,
            last_use: last,
            pinned,
        }
    }

    fn blob(content: &[u8], size: u64) -> (Digest, BlobRecord) {
        (
            Digest::of(content),
            BlobRecord {
                size,
                added: 0,
                media_type: None,
                remote_digest: None,
                ..Default::default()
            },
        )
    }

    #[test]
    fn max_size_evicts_least_recently_used_first_and_frees_shared_blobs_only_when_unused() {
        let now = 1_000_000;
        let names = vec![
            named("old", b"a", 0, Some(10), false),
            named("older-twin", b"b", 0, Some(5), false),
            named("twin", b"b", 0, Some(900_000), false),
            named("new", b"c", 0, Some(990_000), false),
        ];
        let blobs = vec![blob(b"a", 100), blob(b"b", 100), blob(b"c", 100)];
        let opts = GcOptions {
            max_size: Some(150),
            ..GcOptions::default()
        };
        let p = plan(&names, &blobs, &[], &opts, now);
        let gone: Vec<&str> = p.names.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(gone, ["older-twin", "old", "twin"]);
        assert_eq!(p.bytes_kept, 100);
        assert!(!p.over_budget);
    }

    fn with_parts(mut b: (Digest, BlobRecord), parts: &[&[u8]]) -> (Digest, BlobRecord) {
        b.1.parts = parts.iter().map(|p| Digest::of(p)).collect();
        b
    }

    /// The danger: an image's layers are what `export` and a re-conversion need without
    /// a download; collected as unreferenced blobs, every later pull of an image with the
    /// same base would fetch them again. Under size pressure, though, they must go before
    /// any image a job may run.
    #[test]
    fn gc_keeps_an_images_layers_and_drops_them_before_any_image_under_size_pressure() {
        let now = 1_000_000;
        let names = vec![
            named("old", b"img-a", 0, Some(10), false),
            named("new", b"img-b", 0, Some(990_000), false),
        ];
        let blobs = vec![
            with_parts(blob(b"img-a", 100), &[b"base", b"top-a"]),
            with_parts(blob(b"img-b", 100), &[b"base", b"top-b"]),
            blob(b"base", 60),
            blob(b"top-a", 30),
            blob(b"top-b", 20),
            blob(b"stray-layer", 5),
        ];
        let gone = |p: &Plan| -> HashSet<Digest> { p.blobs.iter().map(|(d, _)| *d).collect() };
        // No pressure: every part of a used image stays; a layer of no image goes.
        let p = plan(&names, &blobs, &[], &GcOptions::default(), now);
        assert_eq!(gone(&p), HashSet::from([Digest::of(b"stray-layer")]));
        assert_eq!(p.bytes_kept, 310);
        // Pressure: the old image's own layer goes first, then the new one's; the base
        // both share goes last; both images stay.
        let opts = GcOptions {
            max_size: Some(270),
            ..GcOptions::default()
        };
        let p = plan(&names, &blobs, &[], &opts, now);
        assert!(p.names.is_empty(), "{:?}", p.names);
        assert_eq!(
            gone(&p),
            HashSet::from([
                Digest::of(b"stray-layer"),
                Digest::of(b"top-a"),
                Digest::of(b"top-b")
            ])
        );
        assert_eq!(p.bytes_kept, 260);
        // Only when no part is left does an image go; its last part goes with it.
        let opts = GcOptions {
            max_size: Some(150),
            ..GcOptions::default()
        };
        let p = plan(&names, &blobs, &[], &opts, now);
        let names_gone: Vec<&str> = p.names.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names_gone, ["old"]);
        assert_eq!(p.bytes_kept, 100);
        assert!(gone(&p).contains(&Digest::of(b"img-a")));
    }

    #[test]
    fn pinned_and_recently_used_names_are_never_chosen() {
        let now = 1_000_000;
        let names = vec![
            named("pinned", b"a", 0, Some(0), true),
            named("recent", b"b", 0, Some(now - 60), false),
        ];
        let blobs = vec![blob(b"a", 100), blob(b"b", 100)];
        let opts = GcOptions {
            max_size: Some(0),
            max_age: Some(1),
            ..GcOptions::default()
        };
        let p = plan(&names, &blobs, &[], &opts, now);
        assert!(p.names.is_empty());
        assert!(p.over_budget);
    }
}
