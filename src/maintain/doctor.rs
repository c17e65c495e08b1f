//! `doctor`: check that a cache is usable by this user on this node, and say why not.
//!
//! Each check gives `ok`, `warn` or `fail` with a one-line detail that names the path and
//! what to do. Checks: the cache exists; its settings, against the layout (settings that
//! say private on a setgid, group-writable `v1/`, as a plain `init` by an older version
//! leaves a shared cache, or the reverse); permissions (every entry of the cache against
//! the modes and group its settings ask for, see [`crate::maintain::shared::Kind::problem`], and
//! that this user can write); that `blobs/`, `tmp/`, `locks/` and `quarantine/` are
//! directories; in a shared cache, that no member can move `private/` or another's
//! private cache (see `Cache::private_chain`); that `fcntl` locks exclude each
//! other here; the filesystem (NFS, Lustre, GPFS by `statfs` magic, with mount options) and
//! what it means for locks across nodes; free space, and the bounds downloads are held to
//! (`SREGISTRY_MAX_DOWNLOAD`, `SREGISTRY_MIN_FREE`); the index's integrity; leftovers in
//! `tmp/` and `quarantine/`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;

pub use crate::cache::Repaired;
use crate::cache::lock;
use crate::cache::{Cache, CacheError, JournalStatus};
use crate::maintain::shared;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[serde(rename = "ok")]
    Pass,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        check: name,
        status,
        detail: detail.into(),
    }
}

fn can_access(p: &Path, mode: i32) -> bool {
    CString::new(p.as_os_str().as_bytes())
        // SAFETY: a valid NUL-terminated path.
        .map(|c| unsafe { libc::access(c.as_ptr(), mode) } == 0)
        .unwrap_or(false)
}

/// Run every check on `cache`.
pub fn run(cache: &Cache, lock_kind: lock::Kind) -> Vec<Check> {
    let root = cache.root();
    if !cache.exists() {
        return vec![check(
            "cache",
            Status::Fail,
            format!(
                "no cache at `{}`; `sregistry init` creates one (so does the first `add`)",
                root.display()
            ),
        )];
    }
    let mut out = vec![check(
        "cache",
        Status::Pass,
        format!("`{}`", root.display()),
    )];
    let settings = cache.settings();
    let group = settings.gid.filter(|_| settings.shared);
    let layout = cache.group_layout();
    let fix = init_command(cache, group, layout);
    out.push(settings_check(cache, group, layout, &fix));
    out.push(permissions_check(cache, group, &fix));
    out.push(layout_check(cache));
    if cache.keeps_private_images() {
        out.push(private_check(cache));
    }
    let (access, read_only) = access_check(cache);
    out.push(access);
    out.push(locks_check(cache, lock_kind));
    out.push(filesystem_check(root, lock_kind));
    let limits = crate::settings::current().map(|c| crate::cache::limits::Limits::from_config(&c));
    out.push(space_check(root, limits.as_ref().map_or(0, |l| l.min_free)));
    out.push(downloads_check(&limits));
    let index = index_check(cache, read_only);
    let readable = index.status != Status::Fail;
    out.push(index);
    if readable {
        out.push(journal_check(cache));
    }
    out.push(blobs_check(cache, readable));
    out.push(tmp_check(cache));
    out.push(quarantine_check(cache));
    out
}

/// The `init --shared` command that records or applies a group for this cache, as the
/// settings and permissions checks advise it: the recorded group, else the group the
/// layout shows (`layout`: [`Cache::group_layout`]), else `G`.
fn init_command(cache: &Cache, group: Option<u32>, layout: Option<(u32, u32)>) -> String {
    let fix = match (&cache.settings().group, group, layout) {
        (Some(g), Some(_), _) => g.clone(),
        (_, None, Some((_, gid))) => format!("{gid}"),
        _ => "G".to_string(),
    };
    format!(
        "sregistry init --shared --group {fix} {}",
        cache.root().display()
    )
}

/// Settings against the layout: private settings on a setgid, group-writable `v1/` (as
/// a plain `init` by an older version leaves a shared cache), or the reverse.
fn settings_check(
    cache: &Cache,
    group: Option<u32>,
    layout: Option<(u32, u32)>,
    fix: &str,
) -> Check {
    use Status::*;
    let settings = cache.settings();
    match (group, layout) {
        (Some(gid), Some(_)) => check(
            "settings",
            Pass,
            format!(
                "shared with group `{}` (gid {gid})",
                settings.group.as_deref().unwrap_or("?")
            ),
        ),
        (None, None) => check("settings", Pass, "private cache (no `init --shared`)"),
        (None, Some((mode, gid))) => check(
            "settings",
            Fail,
            format!(
                "the settings say private, but `{}` is laid out for group {gid} ({mode:o}): members' new directories will not be group-writable; if it is meant to be shared, `{fix}` records it again",
                cache.format_dir().display(),
            ),
        ),
        (Some(gid), None) => check(
            "settings",
            Fail,
            format!(
                "the settings say shared with group `{}` (gid {gid}), but `{}` is not setgid and group-writable; `{fix}` applies them",
                settings.group.as_deref().unwrap_or("?"),
                cache.format_dir().display()
            ),
        ),
    }
}

/// Permissions: the cache's own entries against the modes and group of its settings.
fn permissions_check(cache: &Cache, group: Option<u32>, fix: &str) -> Check {
    let (root, settings) = (cache.root(), cache.settings());
    let mut bad = Vec::new();
    for p in cache.own_paths() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        let rel = if rel.is_empty() { ".".to_string() } else { rel };
        if let Some(kind) = shared::Kind::of(cache, &p, &meta)
            && let Some(problem) = kind.problem(settings, mode, meta.gid())
        {
            bad.push(format!("{rel}: {problem}"));
        }
    }
    if bad.is_empty() {
        check(
            "permissions",
            Status::Pass,
            "modes and group as the settings say",
        )
    } else {
        let n = bad.len();
        bad.truncate(3);
        check(
            "permissions",
            Status::Fail,
            format!(
                "{n} path(s) off: {}; {}",
                bad.join("; "),
                if group.is_some() {
                    format!("`{fix}` fixes them")
                } else {
                    format!(
                        "`chmod` them back to what the settings say, or share the cache with `{fix}`"
                    )
                }
            ),
        )
    }
}

/// Private caches (a shared cache only): the directories from the root to `private/`
/// are safe from other members (src/cache/private.rs, "The chain of directories").
fn private_check(cache: &Cache) -> Check {
    if let Some(problem) = cache.root_parent_problem() {
        return check("private", Status::Fail, problem);
    }
    match cache.private_chain() {
        Ok(()) => check(
            "private",
            Status::Pass,
            "the root is sticky and `private/` is the owner's, 3730: members cannot move one another's private caches",
        ),
        Err(e) => check("private", Status::Fail, e.to_string()),
    }
}

/// Layout: what must be a directory is one (a file in its place passes every other
/// check, and then every write fails).
fn layout_check(cache: &Cache) -> Check {
    let not_dirs: Vec<String> = [
        cache.blobs_dir().to_path_buf(),
        cache.tmp_dir().to_path_buf(),
        cache.locks_dir(),
        cache.quarantine_dir(),
    ]
    .into_iter()
    .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
    .map(|p| format!("`{}`", p.display()))
    .collect();
    if not_dirs.is_empty() {
        check(
            "layout",
            Status::Pass,
            "blobs/, tmp/, locks/ and quarantine/ are directories (or not made yet)",
        )
    } else {
        check(
            "layout",
            Status::Fail,
            format!(
                "{} should be a directory but is not; move it out of the cache (the next command makes the directory again)",
                not_dirs.join(", ")
            ),
        )
    }
}

/// Whether this user can write the cache, and whether it can at least read it (a user
/// outside the group of a shared cache can still `get` and `list`): the check, and
/// whether the cache is read-only to this user.
fn access_check(cache: &Cache) -> (Check, bool) {
    let writable = [
        cache.format_dir().to_path_buf(),
        cache.tmp_dir().to_path_buf(),
        cache.index_lock_path().to_path_buf(),
    ]
    .into_iter()
    .filter(|p| p.exists() && !can_access(p, libc::W_OK))
    .map(|p| format!("`{}`", p.display()))
    .collect::<Vec<_>>();
    let can_read = can_access(cache.index_path(), libc::R_OK)
        && can_access(cache.blobs_dir(), libc::R_OK | libc::X_OK);
    let read_only = !writable.is_empty() && can_read;
    let access = if writable.is_empty() {
        check(
            "access",
            Status::Pass,
            "this user can read and write the cache",
        )
    } else {
        check(
            "access",
            if read_only {
                Status::Warn
            } else {
                Status::Fail
            },
            format!(
                "this user cannot write {}{}; ask the cache's admin to add you to its group",
                writable.join(", "),
                if read_only {
                    " (it can read: `get` and `list` work; `add` and `pull` do not)"
                } else {
                    ""
                }
            ),
        )
    };
    (access, read_only)
}

/// Whether the lock kind in use excludes other holders here.
fn locks_check(cache: &Cache, lock_kind: lock::Kind) -> Check {
    use Status::*;
    match lock_kind {
        lock::Kind::Flock => check(
            "locks",
            Warn,
            "SREGISTRY_LOCK=flock: whole-file flock locks (node-local on GPFS, need `-o flock` on Lustre)",
        ),
        lock::Kind::Ofd => match cache.probe_locks() {
            Ok(true) => check("locks", Pass, "fcntl (OFD) locks exclude each other here"),
            Ok(false) => check(
                "locks",
                Fail,
                "fcntl locks do not exclude each other here; set SREGISTRY_LOCK=flock or move the cache",
            ),
            // Not the filesystem: this user may not make the probe's file (see `access`).
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => check(
                "locks",
                Warn,
                format!(
                    "not tested: this user may not create a lock file in the cache ({e}; see `access`)"
                ),
            ),
            Err(e) => check(
                "locks",
                Fail,
                format!("fcntl locks fail here ({e}); set SREGISTRY_LOCK=flock or move the cache"),
            ),
        },
    }
}

/// The filesystem (NFS, Lustre, GPFS by `statfs` magic), its mount options, and what they
/// mean for locks across nodes.
fn filesystem_check(root: &Path, lock_kind: lock::Kind) -> Check {
    use Status::*;
    match shared::filesystem(root) {
        Ok(fs) => {
            let opts = shared::mount_options(root).unwrap_or_default();
            let has = |o: &str| {
                opts.split(',')
                    .any(|x| x == o || x.starts_with(&format!("{o}=")))
            };
            let status = match fs.name {
                "nfs" if nfs_locks_node_local(&opts, lock_kind) => Fail,
                "lustre" if has("localflock") => Warn,
                "lustre" if !has("flock") => Fail,
                _ => Pass,
            };
            let mut detail = format!(
                "{} ({}) {}",
                fs.name,
                if fs.cluster { "cluster" } else { "local" },
                fs.advice
            );
            if !opts.is_empty() && fs.cluster {
                detail.push_str(&format!(" Mount options: {opts}."));
            }
            check("filesystem", status, detail)
        }
        Err(e) => check(
            "filesystem",
            Warn,
            format!("cannot statfs `{}`: {e}", root.display()),
        ),
    }
}

/// Free space: under 1 GiB (or `SREGISTRY_MIN_FREE`, `min_free`) fails, under a tenth of
/// the filesystem warns.
fn space_check(root: &Path, min_free: u64) -> Check {
    use Status::*;
    match shared::space(root) {
        Ok((free, total)) => {
            let human = |b| crate::format::units::format_size(b);
            let status = if free < (1 << 30).max(min_free) {
                Fail
            } else if total > 0 && free * 10 < total {
                Warn
            } else {
                Pass
            };
            check(
                "space",
                status,
                format!(
                    "{} free of {}{}",
                    human(free),
                    human(total),
                    if status == Pass {
                        ""
                    } else {
                        "; run `sregistry gc --max-size ...`"
                    }
                ),
            )
        }
        Err(e) => check("space", Warn, format!("cannot statvfs: {e}")),
    }
}

/// The bounds downloads are held to (`max_download`, `min_free`).
fn downloads_check(
    limits: &Result<crate::cache::limits::Limits, crate::settings::ConfigError>,
) -> Check {
    match limits {
        Ok(l) => check(
            "downloads",
            Status::Pass,
            format!(
                "at most {} where a remote declares no size (max_download, SREGISTRY_MAX_DOWNLOAD); {} kept free (min_free, SREGISTRY_MIN_FREE)",
                crate::format::units::format_size(l.max_download),
                crate::format::units::format_size(l.min_free)
            ),
        ),
        Err(e) => check(
            "downloads",
            Status::Fail,
            format!("{e}; pulls refuse to start"),
        ),
    }
}

/// Leftovers in `tmp/`: files older than gc's default grace period, or gc's and rm's
/// own `delete-*` files. Spare files are neither.
fn tmp_check(cache: &Cache) -> Check {
    let mut tmp = cache.tmp_files().unwrap_or_default();
    tmp.retain(|t| !t.spare);
    let old = tmp
        .iter()
        .filter(|t| {
            t.deleting
                || crate::format::clock::now().saturating_sub(t.mtime)
                    >= crate::maintain::gc::DEFAULT_TMP_GRACE
        })
        .count();
    if old == 0 {
        check(
            "tmp",
            Status::Pass,
            format!("{} file(s) in flight", tmp.len()),
        )
    } else {
        check(
            "tmp",
            Status::Warn,
            format!("{old} leftover file(s) of interrupted commands; `sregistry gc` removes them"),
        )
    }
}

/// Corrupt blobs that verify moved to `quarantine/`.
fn quarantine_check(cache: &Cache) -> Check {
    let q = cache.quarantined_count();
    if q == 0 {
        check("quarantine", Status::Pass, "empty")
    } else {
        check(
            "quarantine",
            Status::Warn,
            format!(
                "{q} corrupt blob(s) kept in `{}` for inspection; delete them when done",
                cache.quarantine_dir().display()
            ),
        )
    }
}

/// Whether NFS mount options make this lock kind node-local: `nolock`, `local_lock=all`,
/// or `local_lock=posix` (for fcntl locks) / `local_lock=flock` (for flock). Linux lists
/// `local_lock=none`, the default, on every NFS mount: locks then go to the server.
fn nfs_locks_node_local(opts: &str, kind: lock::Kind) -> bool {
    let local = match kind {
        lock::Kind::Ofd => "posix",
        lock::Kind::Flock => "flock",
    };
    opts.split(',')
        .any(|o| o == "nolock" || o == "local_lock=all" || o == format!("local_lock={local}"))
}

/// The index's health: readable by this build, changeable by it, every page intact.
fn index_check(cache: &Cache, read_only: bool) -> Check {
    use Status::*;
    let index = cache.index_path().display().to_string();
    let health = cache.index_health();
    // The full check needs the exclusive lock; a user who may only read gets the reads.
    if read_only
        && health.is_err()
        && let Ok((names, blobs)) = cache.snapshot()
    {
        return check(
            "index",
            Warn,
            format!(
                "`{index}`: {} names, {} blobs, read by this user; its pages were not checked, which needs write access (see `access`)",
                names.len(),
                blobs.len()
            ),
        );
    }
    match health {
        Ok((s, true)) => check(
            "index",
            Pass,
            format!(
                "`{index}`: {} names, {} blobs, schema {}",
                s.names, s.blobs, s.schema_version
            ),
        ),
        Ok((_, false)) => check(
            "index",
            Warn,
            format!(
                "`{index}` had damage that redb repaired; run `sregistry verify`, and \
                 `sregistry doctor --repair-index` if a name is missing"
            ),
        ),
        // The error's own advice is to run doctor: here, say what doctor can do instead.
        Err(e @ crate::cache::IndexError::Db { .. }) => check(
            "index",
            Fail,
            format!(
                "{}; if the file is damaged, `sregistry doctor --repair-index` rebuilds it from the journal; if this user may not read it, see the permissions and access checks",
                e.to_string().trim_end_matches(" (run `sregistry doctor`)")
            ),
        ),
        Err(e) => check("index", Fail, e.to_string()),
    }
}

/// The image files under `blobs/` that the index does not know (invariant 8: none should
/// be, but a command killed between storing an image and naming it leaves one; a lost or
/// deleted index leaves them all).
fn blobs_check(cache: &Cache, readable: bool) -> Check {
    use Status::*;
    let blobs = cache.blobs_dir().display().to_string();
    let on_disk: Vec<_> = match cache.blobs_on_disk() {
        Ok(found) => found.into_iter().filter(|f| f.digest.is_some()).collect(),
        Err(e) => return check("blobs", Warn, e.to_string()),
    };
    let known: Option<std::collections::HashSet<_>> = if readable {
        cache
            .snapshot()
            .ok()
            .map(|(_, records)| records.into_iter().map(|(d, _)| d).collect())
    } else {
        None
    };
    let Some(known) = known else {
        return check(
            "blobs",
            if on_disk.is_empty() { Pass } else { Warn },
            format!(
                "{} image file(s) in `{blobs}` that the index cannot account for until it is repaired (`sregistry doctor --repair-index` keeps every one)",
                on_disk.len()
            ),
        );
    };
    let unknown: Vec<_> = on_disk
        .iter()
        .filter(|f| f.digest.is_some_and(|d| !known.contains(&d)))
        .collect();
    if unknown.is_empty() {
        check(
            "blobs",
            Pass,
            format!("{} image file(s), each known to the index", on_disk.len()),
        )
    } else {
        check(
            "blobs",
            Warn,
            format!(
                "{} of {} image file(s) in `{blobs}` are unknown to the index ({} bytes): left by a command killed between storing and naming them (none was ever named); `sregistry verify` lists them and `sregistry gc` removes them",
                unknown.len(),
                on_disk.len(),
                unknown.iter().map(|f| f.size).sum::<u64>()
            ),
        )
    }
}

/// `doctor --repair-index`: rebuild a damaged index from its journal; for an intact
/// index, rewrite a journal that would not rebuild it ([`Cache::repair_index`]).
pub fn repair_index(cache: &Cache) -> Result<Repaired, CacheError> {
    cache.repair_index()
}

/// Whether the journal would rebuild this index (see [`crate::cache::index`]).
fn journal_check(cache: &Cache) -> Check {
    use Status::*;
    let journal = cache.journal_path().display().to_string();
    match cache.journal_status() {
        Ok(JournalStatus::InStep { names, lines }) => check(
            "journal",
            Pass,
            format!("`{journal}`: {lines} line(s), would rebuild all {names} names"),
        ),
        Ok(JournalStatus::Missing) => check(
            "journal",
            Warn,
            format!(
                "`{journal}` does not exist yet, so a damaged index could not be rebuilt; run `sregistry doctor --repair-index` (or any `add`) to start it"
            ),
        ),
        Ok(JournalStatus::Unreadable(e)) => check(
            "journal",
            Warn,
            format!("{e}; run `sregistry doctor --repair-index` to rewrite it from the index"),
        ),
        Ok(JournalStatus::Differs(names)) => check(
            "journal",
            Warn,
            format!(
                "`{journal}` would not rebuild {} name(s) as the index has them ({}); run `sregistry doctor --repair-index` to rewrite it from the index",
                names.len(),
                names.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        Err(e) if e.needs_repair() => check("journal", Fail, e.to_string()),
        Err(e) => check("journal", Warn, e.to_string()),
    }
}

#[cfg(test)]
mod nfs_option_tests {
    use super::*;

    /// Linux shows `local_lock=none` on every NFS mount: doctor must not fail the
    /// default mount (the cluster tests found it did), only the options that keep locks
    /// on the node.
    #[test]
    fn only_node_local_nfs_lock_options_fail() {
        let default = "rw,relatime,vers=4.2,hard,proto=tcp,sec=sys,local_lock=none,addr=10.0.1.1";
        assert!(!nfs_locks_node_local(default, lock::Kind::Ofd));
        assert!(!nfs_locks_node_local(default, lock::Kind::Flock));
        assert!(nfs_locks_node_local("rw,vers=3,nolock", lock::Kind::Ofd));
        assert!(nfs_locks_node_local("rw,local_lock=all", lock::Kind::Ofd));
        assert!(nfs_locks_node_local("rw,local_lock=posix", lock::Kind::Ofd));
        assert!(!nfs_locks_node_local(
            "rw,local_lock=flock",
            lock::Kind::Ofd
        ));
        assert!(nfs_locks_node_local(
            "rw,local_lock=flock",
            lock::Kind::Flock
        ));
    }
}
