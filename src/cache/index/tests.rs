//! Unit tests of the index: locks and fences, the journal, migrations, damage.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::journal::{Line, Op};
use super::schema::get_u64_in;
use super::schema::{ABOUT, COMPACT_MIN, META, compat_of};
use super::*;
use crate::cache::lock::{self, LockError, LockOptions};
use crate::format::digest::Digest;

/// Inodes with a lock on them, from /proc/locks ("... MAJ:MIN:INODE START END").
fn locked_inodes() -> Vec<u64> {
    locks().into_iter().map(|(ino, _)| ino).collect()
}

/// Every lock in /proc/locks: the inode and the first byte locked. The file is read
/// three times and the answers joined: the kernel produces it a page at a time, and an
/// entry can be skipped when other processes take and drop locks meanwhile (seen on a
/// loaded machine), which would make a held lock look free.
fn locks() -> Vec<(u64, u64)> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        seen.extend(
            std::fs::read_to_string("/proc/locks")
                .unwrap()
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let at = f.iter().position(|w| w.matches(':').count() == 2)?;
                    let ino = f[at].rsplit(':').next()?.parse().ok()?;
                    Some((ino, f.get(at + 1)?.parse::<u64>().ok()?))
                }),
        );
    }
    seen.into_iter().collect()
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

#[test]
fn an_index_copied_while_the_writers_hook_runs_does_not_name_the_commit() {
    // The hook (a blob's own flushes) may run after the commit's first phase reached the
    // disk. A copy of the file taken as it runs is what a crash at that moment leaves:
    // opened, it must still be the index before the commit, and whole.
    let (dir, idx) = written_index();
    let crashed = dir.path().join("crashed");
    std::fs::create_dir_all(&crashed).unwrap();
    let (from, to) = (idx.db_path().to_path_buf(), crashed.join("index.redb"));
    let mut w = idx.write().unwrap();
    w.put_ref("lab/new:1", &record(2)).unwrap();
    w.before_durable(Box::new(move || std::fs::copy(&from, &to).map(drop)));
    w.commit().unwrap();
    assert_eq!(
        idx.read().unwrap().get_ref("lab/new:1").unwrap(),
        Some(record(2))
    );
    let copy = Index::new(&crashed, LockOptions::default(), 0o644);
    let r = copy.read().unwrap();
    assert_eq!(r.get_ref("lab/t:1").unwrap(), Some(record(1)));
    assert_eq!(r.get_ref("lab/new:1").unwrap(), None);
}
