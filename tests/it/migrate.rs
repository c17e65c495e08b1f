//! `sregistry migrate` against databases made by the real old client (PyPI `sregistry`
//! 0.2.39 with SQLAlchemy 1.4, through `tests/support/old_client.py`), with real SIF files
//! from the peer corpus, a temp cache each.
//!
//! The old client is found at `$SREGISTRY_OLD_CLIENT` (its python; `make test` sets it),
//! else where `scripts/install-deps.sh test` puts it (`scripts/install-deps.sh oldclient`
//! prints it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output};

use crate::common::{Env, fixtures};
use crate::support::{inspect, sha256_hex};

/// The old client's python.
fn old_python() -> PathBuf {
    let p = std::env::var_os("SREGISTRY_OLD_CLIENT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh");
            let out = StdCommand::new("bash")
                .arg(&script)
                .arg("oldclient")
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        });
    assert!(
        p.is_file(),
        "the old Python client is not installed at `{}`: run `scripts/install-deps.sh test` (or set SREGISTRY_OLD_CLIENT to its python)",
        p.display()
    );
    p
}

/// The old client's home in a test: its database directory and its storage.
struct Old {
    db_dir: PathBuf,
    storage: PathBuf,
}

impl Old {
    fn new(env: &Env) -> Old {
        let old = Old {
            db_dir: env.path("old-db"),
            storage: env.path("old-storage"),
        };
        fs::create_dir_all(&old.db_dir).unwrap();
        old
    }

    fn db(&self) -> PathBuf {
        self.db_dir.join("sregistry.db")
    }

    /// `sregistry add --copy FILE --name NAME` with the old client, for each pair; the
    /// stored path of each.
    fn add(&self, pairs: &[(&Path, &str)]) -> Vec<PathBuf> {
        let mut c = StdCommand::new(old_python());
        c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/old_client.py"))
            .arg("add")
            .env("SREGISTRY_DATABASE", &self.db_dir)
            .env("SREGISTRY_STORAGE", &self.storage)
            .env_remove("SREGISTRY_CLIENT");
        for (f, n) in pairs {
            c.arg(f).arg(n);
        }
        let out = c.output().expect("run the old client");
        assert!(
            out.status.success(),
            "the old client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("IMAGE "))
            .map(PathBuf::from)
            .collect()
    }

    /// Every container row, read with Python's own sqlite3 (not the code under test).
    fn rows(&self) -> Vec<serde_json::Value> {
        let script = "import json, sqlite3, sys\n\
            c = sqlite3.connect(sys.argv[1]); c.row_factory = sqlite3.Row\n\
            print(json.dumps([dict(r) for r in c.execute('SELECT * FROM container ORDER BY id')]))";
        let out = StdCommand::new(old_python())
            .args(["-c", script])
            .arg(self.db())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn db_bytes(&self) -> Vec<u8> {
        fs::read(self.db()).unwrap()
    }
}

/// `sregistry migrate --from <old db dir> EXTRA...`, which must exit with `code`.
fn migrate(env: &Env, old: &Old, extra: &[&str], code: i32) -> Output {
    let out = env
        .std_cmd()
        .arg("migrate")
        .arg("--from")
        .arg(&old.db_dir)
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
    out
}

/// `line` contains every one of `parts`.
fn assert_has(line: &str, parts: &[&str]) {
    for p in parts {
        assert!(line.contains(p), "`{p}` missing from: {line}");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn get_bytes(env: &Env, name: &str) -> Vec<u8> {
    let out = env.std_cmd().args(["get", name]).output().unwrap();
    assert!(out.status.success(), "get {name}: {}", text(&out.stderr));
    fs::read(text(&out.stdout).trim()).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// The "not imported" lines on stderr.
fn not_imported(out: &Output) -> Vec<String> {
    text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("not imported:"))
        .map(str::to_string)
        .collect()
}

/// The danger: the old client's images and what it knew about them lost in the move.
/// Each row comes over under `collection/name:tag` with the same bytes and with its
/// version, url, uri, metrics, id and time as labels; `$SREGISTRY_DATABASE` is the default
/// directory; the old database and files stay as they were.
#[test]
fn plain_import_keeps_each_rows_facts_as_labels() {
    let env = Env::new();
    let old = Old::new(&env);
    let stored = old.add(&[
        (&fixture("one-group.sif"), "lab/one:1"),
        (&fixture("two-groups.sif"), "tools/two:2.0"),
    ]);
    let db_before = old.db_bytes();
    let out = env
        .std_cmd()
        .arg("migrate")
        .env("SREGISTRY_DATABASE", &old.db_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(env.names(), vec!["lab/one:1", "tools/two:2.0"]);
    let rows = old.rows();
    for (row, (fixture_name, name)) in rows.iter().zip([
        ("one-group.sif", "lab/one:1"),
        ("two-groups.sif", "tools/two:2.0"),
    ]) {
        let bytes = fs::read(fixture(fixture_name)).unwrap();
        assert_eq!(get_bytes(&env, name), bytes, "{name}: other bytes");
        let labels = &inspect(&env, name)["labels"];
        let want = [
            ("org.sregistry.migrate.version", row["version"].clone()),
            ("org.sregistry.migrate.url", row["url"].clone()),
            ("org.sregistry.migrate.uri", row["uri"].clone()),
            ("org.sregistry.migrate.metrics", row["metrics"].clone()),
            ("org.sregistry.migrate.row", row["id"].to_string().into()),
            ("org.sregistry.migrate.created", row["created_at"].clone()),
        ];
        for (k, v) in want {
            assert!(v.is_string(), "row has no {k}: {row}");
            assert_eq!(labels[k], v, "{name} label {k}");
        }
        assert_eq!(
            row["version"],
            sha256_hex(&bytes),
            "the old client's version"
        );
        assert!(
            text(&out.stdout).contains(&format!("imported {name} (row {}", row["id"])),
            "{}",
            text(&out.stdout)
        );
    }
    assert_eq!(old.db_bytes(), db_before, "the old database was written");
    assert!(
        stored.iter().all(|p| p.is_file()),
        "an old file went without --move"
    );
    env.assert_blobs_verify();
}

/// The danger: a tag the old client re-added with new content coming over as the old
/// content. The newest row wins; the older one gets its own line saying why (exit 4).
#[test]
fn duplicate_tags_import_the_newest_row() {
    let env = Env::new();
    let old = Old::new(&env);
    old.add(&[
        (&fixture("one-group.sif"), "lab/tool:1"),
        (&fixture("two-groups.sif"), "lab/tool:1"),
    ]);
    let rows = old.rows();
    assert_eq!(rows.len(), 2, "the old client kept one row: {rows:?}");
    let out = migrate(&env, &old, &[], 4);
    assert_eq!(
        get_bytes(&env, "lab/tool:1"),
        fs::read(fixture("two-groups.sif")).unwrap()
    );
    assert_eq!(
        inspect(&env, "lab/tool:1")["labels"]["org.sregistry.migrate.row"],
        rows[1]["id"].to_string()
    );
    let lines = not_imported(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let uri = rows[0]["uri"].as_str().unwrap();
    assert_has(
        &lines[0],
        &[
            &format!("row {} `{uri}`", rows[0]["id"]),
            &format!("newer row ({})", rows[1]["id"]),
        ],
    );
}

/// The danger: handing out a file that is gone or no longer what the old client
/// recorded. A row whose file was deleted, and one whose file no longer matches its
/// sha256 version, are each reported on one line naming the row and the file, and not
/// imported; the rest are.
#[test]
fn gone_and_changed_files_are_reported_and_not_imported() {
    let env = Env::new();
    let old = Old::new(&env);
    let stored = old.add(&[
        (&fixture("one-group.sif"), "lab/gone:1"),
        (&fixture("two-groups.sif"), "lab/changed:1"),
        (&fixture("empty.sif"), "lab/fine:1"),
    ]);
    fs::remove_file(&stored[0]).unwrap();
    let mut changed = fs::read(&stored[1]).unwrap();
    let last = changed.len() - 1;
    changed[last] ^= 0xff;
    fs::write(&stored[1], &changed).unwrap();
    let out = migrate(&env, &old, &[], 4);
    assert_eq!(env.names(), vec!["lab/fine:1"]);
    let lines = not_imported(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let gone = format!("`{}`", stored[0].display());
    assert_has(&lines[0], &["lab/gone:1@", &gone, "does not exist"]);
    let file = format!("`{}`", stored[1].display());
    let now = sha256_hex(&changed);
    assert_has(&lines[1], &["lab/changed:1@", &file, "changed", &now]);
}

/// The danger: rows whose `collection` row is gone silently left out ("0 not imported",
/// exit 0, the image not in the cache). A row whose collection row was deleted by hand
/// comes over under the collection its `uri` names (its stdout line says so); one whose
/// `uri` names none either is reported on its own line (exit 4). The old database stays
/// as it was.
#[test]
fn rows_whose_collection_row_is_gone_are_imported_or_reported() {
    let env = Env::new();
    let old = Old::new(&env);
    old.add(&[
        (&fixture("one-group.sif"), "lost/one:1"),
        (&fixture("two-groups.sif"), "gone/two:2"),
        (&fixture("empty.sif"), "kept/three:3"),
    ]);
    // Delete two collection rows, and take the uri of one of their rows, with Python's
    // own sqlite3 (not the code under test).
    let script = "import sqlite3, sys\n\
        c = sqlite3.connect(sys.argv[1])\n\
        c.execute(\"DELETE FROM collection WHERE name IN ('lost', 'gone')\")\n\
        c.execute(\"UPDATE container SET uri = NULL WHERE name = 'two'\")\n\
        c.commit()";
    let out = StdCommand::new(old_python())
        .args(["-c", script])
        .arg(old.db())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows = old.rows();
    let db_before = old.db_bytes();
    let out = migrate(&env, &old, &[], 4);
    assert_eq!(env.names(), vec!["kept/three:3", "lost/one:1"]);
    assert_eq!(
        get_bytes(&env, "lost/one:1"),
        fs::read(fixture("one-group.sif")).unwrap()
    );
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("imported lost/one:1"))
        .unwrap_or_else(|| panic!("no line for lost/one:1: {stdout}"));
    assert_has(line, &["collection row is gone", "from its uri"]);
    let lines = not_imported(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let two = rows.iter().find(|r| r["name"] == "two").unwrap();
    assert_has(
        &lines[0],
        &[
            &format!("row {} `two:2`", two["id"]),
            "collection row is gone",
            "sregistry add",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("2 imported, 0 already there, 1 not imported"),
        "{stderr}"
    );
    assert_eq!(old.db_bytes(), db_before, "the old database was written");
    env.assert_blobs_verify();
}

/// The danger: images under names the old client accepted and ours refuses silently left
/// behind, or imported under a name that clashes with another image. A name with a space
/// and `!` comes over normalised (said on its line); one whose normalised name is another
/// row's (even a row whose file is gone), and one with nothing valid left, are reported
/// and not imported.
#[test]
fn names_ours_refuses_are_normalised_or_reported() {
    let env = Env::new();
    let old = Old::new(&env);
    let stored = old.add(&[
        (&fixture("one-group.sif"), "lab/odd name!:1"),
        (&fixture("two-groups.sif"), "lab/x:1"),
        (&fixture("empty.sif"), "lab/x!:1"),
        (&fixture("one-object-time.sif"), "lab/!!!:1"),
        (&fixture("one-object-sbom.sif"), "lab/y:1"),
        (&fixture("one-object-generic-json.sif"), "lab/y!:1"),
    ]);
    // `lab/y:1` cannot be imported (its file is gone), but its name is still its own.
    fs::remove_file(&stored[4]).unwrap();
    let out = migrate(&env, &old, &[], 4);
    assert_eq!(env.names(), vec!["lab/odd-name:1", "lab/x:1"]);
    assert_eq!(
        get_bytes(&env, "lab/x:1"),
        fs::read(fixture("two-groups.sif")).unwrap()
    );
    assert_has(
        &text(&out.stdout),
        &[
            "imported lab/odd-name:1 (row 1",
            "normalised from `lab/odd name!:1`",
        ],
    );
    let lines = not_imported(&out);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_has(&lines[0], &["`lab/x!:1@", "normalised to `lab/x:1`"]);
    assert_has(&lines[1], &["`lab/!!!:1@", "not valid here"]);
    assert_has(&lines[2], &["`lab/y:1@", "does not exist"]);
    assert_has(&lines[3], &["`lab/y!:1@", "normalised to `lab/y:1`"]);
}

/// The danger: running migrate twice (as users will) duplicating or re-writing
/// anything. The second run finds every image already there, exits 0, and leaves the
/// cache byte for byte as it was.
#[test]
fn a_second_run_adds_nothing() {
    let env = Env::new();
    let old = Old::new(&env);
    old.add(&[
        (&fixture("one-group.sif"), "lab/one:1"),
        (&fixture("two-groups.sif"), "lab/two:1"),
    ]);
    migrate(&env, &old, &[], 0);
    let before = env.snapshot();
    let second = migrate(&env, &old, &[], 0);
    assert_eq!(env.snapshot(), before, "the second run changed the cache");
    let stdout = text(&second.stdout);
    assert_eq!(stdout.matches("already there").count(), 2, "{stdout}");
    assert!(!stdout.contains("imported"), "{stdout}");
}

/// The old database as a writer would leave traces of it: its bytes, its mtime, and the
/// listing and mtime of its directory (a `-journal`, `-wal` or `-shm` file created and
/// removed again still changes the directory's mtime).
#[derive(Debug, PartialEq)]
struct OldDbState {
    /// sha256 of its bytes.
    bytes: String,
    mtime: std::time::SystemTime,
    dir_mtime: std::time::SystemTime,
    listing: Vec<std::ffi::OsString>,
}

fn old_db_state(old: &Old) -> OldDbState {
    let mut listing: Vec<_> = fs::read_dir(&old.db_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    listing.sort();
    OldDbState {
        bytes: sha256_hex(&old.db_bytes()),
        mtime: fs::metadata(old.db()).unwrap().modified().unwrap(),
        dir_mtime: fs::metadata(&old.db_dir).unwrap().modified().unwrap(),
        listing,
    }
}

/// The danger: a dry run that writes. Against no cache it creates none; against a cache
/// it changes nothing in it, nor in the old storage, and says what it would import. The
/// old database is never written, by the dry run or by the import (docs/commands.md:
/// "The database is opened read-only and **never written**, whatever the options"):
/// same bytes, same mtime, and no side file (`-journal`, `-wal`, `-shm`) in its
/// directory, not even for a moment.
#[test]
fn dry_run_writes_nothing() {
    let env = Env::new();
    let old = Old::new(&env);
    let stored = old.add(&[(&fixture("one-group.sif"), "lab/one:1")]);
    assert_eq!(
        old_db_state(&old).listing,
        ["sregistry.db"],
        "the old client left a side file"
    );
    let db_before = old_db_state(&old);
    let out = migrate(&env, &old, &["--dry-run", "--move"], 0);
    assert_eq!(
        old_db_state(&old),
        db_before,
        "a dry run wrote the old database"
    );
    assert!(
        text(&out.stdout).contains("would import lab/one:1"),
        "{}",
        text(&out.stdout)
    );
    assert!(!env.cache.exists(), "a dry run created the cache");
    assert!(stored[0].is_file(), "a dry run with --move moved the file");

    migrate(&env, &old, &[], 0);
    assert_eq!(
        old_db_state(&old),
        db_before,
        "an import wrote the old database"
    );
    old.add(&[(&fixture("two-groups.sif"), "lab/two:1")]);
    let cache_before = env.snapshot();
    let storage_before = env.snapshot_of(&old.storage);
    let db_before = old_db_state(&old);
    let out = migrate(&env, &old, &["--dry-run", "--move"], 0);
    assert_eq!(
        old_db_state(&old),
        db_before,
        "a dry run wrote the old database"
    );
    assert!(
        text(&out.stdout).contains("would import lab/two:1"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(env.snapshot(), cache_before, "a dry run changed the cache");
    assert_eq!(
        env.snapshot_of(&old.storage),
        storage_before,
        "a dry run changed the old storage"
    );
}

/// The danger: `--move` losing images, or a second run then taking the moved files for
/// gone ones. The files leave the old storage and are served from the cache; the old
/// database is not written; a second run says already there and exits 0.
#[test]
fn move_takes_the_files_and_a_second_run_adds_nothing() {
    let env = Env::new();
    let old = Old::new(&env);
    let stored = old.add(&[
        (&fixture("one-group.sif"), "lab/one:1"),
        (&fixture("two-groups.sif"), "lab/two:1"),
    ]);
    let db_before = old.db_bytes();
    migrate(&env, &old, &["--move"], 0);
    assert!(
        stored.iter().all(|p| !p.exists()),
        "a moved file is still in the old storage"
    );
    assert_eq!(
        get_bytes(&env, "lab/one:1"),
        fs::read(fixture("one-group.sif")).unwrap()
    );
    assert_eq!(
        get_bytes(&env, "lab/two:1"),
        fs::read(fixture("two-groups.sif")).unwrap()
    );
    assert_eq!(old.db_bytes(), db_before, "the old database was written");
    let before = env.snapshot();
    let again = migrate(&env, &old, &["--move"], 0);
    assert_eq!(text(&again.stdout).matches("already there").count(), 2);
    assert_eq!(env.snapshot(), before);
    env.assert_blobs_verify();
}

/// The danger: `migrate --move` saying "files moved" (exit 0) when the old files cannot
/// be removed (their filesystem read-only here; a directory the user cannot write is the
/// same). Each row is imported, a warning per file names it, the summary counts them,
/// the files stay whole at their paths, and the exit status is 1.
#[test]
fn a_move_whose_files_cannot_be_removed_warns_per_file_and_exits_1() {
    if crate::common::skip_unless_root(
        "a_move_whose_files_cannot_be_removed_warns_per_file_and_exits_1",
        "mounting a tmpfs needs root",
    ) {
        return;
    }
    let env = Env::new();
    let old = Old::new(&env);
    let storage = crate::common::Tmpfs::mount(&old.storage, "20m");
    let stored = old.add(&[
        (&fixture("one-group.sif"), "lab/one:1"),
        (&fixture("two-groups.sif"), "lab/two:1"),
    ]);
    storage.remount_read_only();
    let out = migrate(&env, &old, &["--move", "--json"], 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["not_removed"], 2, "{report:#}");
    for row in report["rows"].as_array().unwrap() {
        assert!(row["not_removed"].is_string(), "{row:#}");
    }
    assert_eq!(env.names(), vec!["lab/one:1", "lab/two:1"]);
    let stderr = text(&out.stderr);
    for (p, (f, name)) in stored.iter().zip([
        ("one-group.sif", "lab/one:1"),
        ("two-groups.sif", "lab/two:1"),
    ]) {
        assert_eq!(fs::read(p).unwrap(), fs::read(fixture(f)).unwrap());
        assert_eq!(get_bytes(&env, name), fs::read(fixture(f)).unwrap());
        let line = stderr
            .lines()
            .find(|l| l.starts_with("warning:") && l.contains(&format!("`{}`", p.display())))
            .unwrap_or_else(|| panic!("no warning names `{}`: {stderr}", p.display()));
        assert_has(line, &[&format!("`{name}`"), "copied, not moved"]);
    }
    assert!(
        stderr.contains("2 imported") && stderr.contains("2 copied and not removed"),
        "{stderr}"
    );
    env.assert_blobs_verify();
    // Run again, the storage still read-only: the rows are already there, and their files
    // still cannot be handed over; that is said again (it once said "files moved" and
    // exited 0).
    let out = migrate(&env, &old, &["--move", "--json"], 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["already_there"], 2, "{report:#}");
    assert_eq!(report["not_removed"], 2, "{report:#}");
    assert!(text(&out.stderr).contains("2 copied and not removed"));
    // Writable again: the files already in the cache are handed over.
    storage.remount_read_write();
    let out = migrate(&env, &old, &["--move"], 0);
    assert!(
        text(&out.stderr).contains("2 already there"),
        "{}",
        text(&out.stderr)
    );
    for p in &stored {
        assert!(!p.exists(), "`{}` was not handed over", p.display());
    }
    assert_eq!(env.names(), vec!["lab/one:1", "lab/two:1"]);
    env.assert_blobs_verify();
}

/// The danger: an old database with a hot rollback journal (the old client killed in
/// the middle of a write) answered "attempt to write a readonly database", which names
/// neither the cause nor the fix. A real one is made by killing Python's sqlite3 in the
/// middle of a transaction that spilled into the file; migrate exits 1 with one line
/// naming the journal, the unfinished transaction and how to roll it back, writes neither
/// file, and after the fix it names (`PRAGMA integrity_check` as the owner) imports all.
#[test]
fn a_hot_journal_is_named_with_how_to_roll_it_back() {
    let env = Env::new();
    let old = Old::new(&env);
    old.add(&[(&fixture("one-group.sif"), "lab/one:1")]);
    let script = "import os, signal, sqlite3, sys\n\
        c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
        c.execute('PRAGMA cache_size=1')\n\
        c.execute('BEGIN')\n\
        c.execute('CREATE TABLE junk(x)')\n\
        for i in range(500): c.execute('INSERT INTO junk VALUES (randomblob(2000))')\n\
        c.execute(\"UPDATE container SET metrics = 'half-written'\")\n\
        os.kill(os.getpid(), signal.SIGKILL)";
    let killed = StdCommand::new(old_python())
        .args(["-c", script])
        .arg(old.db())
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(libc::SIGKILL),
        "{}",
        text(&killed.stderr)
    );
    let journal = old.db_dir.join("sregistry.db-journal");
    let journal_before = fs::read(&journal).expect("the kill left no journal");
    assert!(!journal_before.is_empty());
    let db_before = old.db_bytes();
    let out = migrate(&env, &old, &[], 1);
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_has(
        &err,
        &[
            &format!("`{}`", journal.display()),
            "unfinished transaction",
            "PRAGMA integrity_check",
        ],
    );
    assert!(!err.contains("readonly"), "{err}");
    assert_eq!(old.db_bytes(), db_before, "the old database was written");
    assert_eq!(
        fs::read(&journal).unwrap(),
        journal_before,
        "the journal was written"
    );
    assert!(env.names().is_empty());
    // The fix it names: open it once as its owner, which rolls the transaction back.
    let fix = "import sqlite3, sys\n\
        print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])";
    let fixed = StdCommand::new(old_python())
        .args(["-c", fix])
        .arg(old.db())
        .output()
        .unwrap();
    assert_eq!(text(&fixed.stdout).trim(), "ok", "{}", text(&fixed.stderr));
    migrate(&env, &old, &[], 0);
    assert_eq!(env.names(), vec!["lab/one:1"]);
    assert_ne!(
        inspect(&env, "lab/one:1")["labels"]["org.sregistry.migrate.metrics"],
        "half-written"
    );
}

/// The danger: migrate overwriting what the user already keeps in the cache. A name
/// that points to other content (not put there by migrate) is left alone, and a pinned
/// one too; each is reported (exit 4) and the other rows are imported.
#[test]
fn names_already_in_the_cache_are_left_alone() {
    let env = Env::new();
    let old = Old::new(&env);
    old.add(&[
        (&fixture("one-group.sif"), "lab/mine:1"),
        (&fixture("two-groups.sif"), "lab/new:1"),
    ]);
    let mine = fixture("empty.sif");
    let out = env
        .std_cmd()
        .arg("add")
        .arg(&mine)
        .args(["--name", "lab/mine:1"])
        .output();
    assert!(out.unwrap().status.success());
    let out = migrate(&env, &old, &[], 4);
    assert_eq!(get_bytes(&env, "lab/mine:1"), fs::read(&mine).unwrap());
    assert_eq!(
        get_bytes(&env, "lab/new:1"),
        fs::read(fixture("two-groups.sif")).unwrap()
    );
    let lines = not_imported(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("already has `lab/mine:1`"),
        "{}",
        lines[0]
    );

    // A name an earlier migrate filled is updated from a newer row, unless pinned.
    old.add(&[(&fixture("one-object-time.sif"), "lab/new:1")]);
    let pin = env.std_cmd().args(["pin", "lab/new:1"]).output().unwrap();
    assert!(pin.status.success());
    let out = migrate(&env, &old, &[], 4);
    assert_eq!(
        get_bytes(&env, "lab/new:1"),
        fs::read(fixture("two-groups.sif")).unwrap()
    );
    assert!(
        not_imported(&out).iter().any(|l| l.contains("is pinned")),
        "{}",
        text(&out.stderr)
    );
    let unpin = env.std_cmd().args(["unpin", "lab/new:1"]).output().unwrap();
    assert!(unpin.status.success());
    let out = migrate(&env, &old, &[], 4);
    assert_eq!(
        get_bytes(&env, "lab/new:1"),
        fs::read(fixture("one-object-time.sif")).unwrap(),
        "{}",
        text(&out.stderr)
    );
}

/// The danger: a wrong --from read as an empty migration, or a half-run against
/// something that is not the old client's database. Missing: exit 3; not SQLite, or
/// SQLite without the old tables: exit 1; one line naming the path; no cache created.
#[test]
fn a_missing_or_foreign_database_is_one_clear_line() {
    let env = Env::new();
    let cases: Vec<(PathBuf, i32, &str)> = {
        let missing = env.path("nowhere");
        let garbage = env.path("garbage");
        fs::create_dir_all(&garbage).unwrap();
        fs::write(
            garbage.join("sregistry.db"),
            b"not a database at all, not even close",
        )
        .unwrap();
        let foreign = env.path("foreign");
        fs::create_dir_all(&foreign).unwrap();
        let made = StdCommand::new(old_python())
            .args(["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('CREATE TABLE t (x)'); c.commit()"])
            .arg(foreign.join("sregistry.db"))
            .status()
            .unwrap();
        assert!(made.success());
        vec![
            (missing, 3, "no old sregistry database"),
            (garbage, 1, "not a database"),
            (foreign, 1, "not the old sregistry client's"),
        ]
    };
    for (dir, code, needle) in cases {
        let out = env
            .std_cmd()
            .arg("migrate")
            .arg("--from")
            .arg(&dir)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{}: {err}", dir.display());
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
        assert!(err.contains(needle), "{err}");
        assert!(
            err.contains(&format!("`{}", dir.display())),
            "the path is not named: {err}"
        );
        assert!(!env.cache.exists(), "a failed migrate created the cache");
    }
}

/// The danger: a migrate --move killed mid-batch (a batch job's time limit) losing the
/// images it was moving. Killed with every name of the batch written but not committed,
/// it leaves every old file where it was and no name; the next run imports them all.
#[test]
fn a_move_killed_before_its_batch_commits_loses_nothing() {
    let env = Env::new();
    let old = Old::new(&env);
    let stored = old.add(&[
        (&fixture("one-group.sif"), "lab/one:1"),
        (&fixture("two-groups.sif"), "lab/two:1"),
    ]);
    let from = old.db_dir.as_os_str();
    let mut child = env.spawn_paused(
        "add-many-uncommitted",
        None,
        &[
            "migrate".as_ref(),
            "--move".as_ref(),
            "--from".as_ref(),
            from,
        ],
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        stored.iter().all(|p| p.is_file()),
        "a killed --move lost a file"
    );
    assert_eq!(env.names(), Vec::<String>::new(), "a name was committed");
    migrate(&env, &old, &["--move"], 0);
    assert_eq!(env.names(), vec!["lab/one:1", "lab/two:1"]);
    assert!(stored.iter().all(|p| !p.exists()));
    assert_eq!(
        get_bytes(&env, "lab/one:1"),
        fs::read(fixture("one-group.sif")).unwrap()
    );
}

/// Danger: the first `migrate` of 30 images into a small filesystem staged and linked
/// every image, then its index write failed with ENOSPC and left the blobs behind: the
/// disk stayed full, and every later command failed with ENOSPC (invariant 8).
#[test]
fn a_migrate_whose_index_write_finds_no_space_takes_its_blobs_out() {
    if crate::common::skip_unless_root(
        "a_migrate_whose_index_write_finds_no_space_takes_its_blobs_out",
        "mounts a tmpfs",
    ) {
        return;
    }
    let env = Env::new();
    let small = env.path("small");
    let mnt = crate::common::Tmpfs::mount(&small, "4m");
    let cache = small.join("cache");
    // 30 images that fill the filesystem but for a few pages: too few for a new index.
    let free = {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(small.as_os_str().as_bytes()).unwrap();
        // SAFETY: a zeroed statvfs is valid storage; statvfs fills it.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as usize * st.f_frsize as usize
    };
    let each = (free - 12 * 4096) / 30 / 4096 * 4096;
    let files: Vec<(PathBuf, String)> = (0..30)
        .map(|i| {
            let mut content = vec![i as u8; each];
            content[0] = b'#';
            (
                env.file(&format!("img{i}"), &content),
                format!("lab/img{i}:1"),
            )
        })
        .collect();
    let old = Old::new(&env);
    let pairs: Vec<(&Path, &str)> = files
        .iter()
        .map(|(f, n)| (f.as_path(), n.as_str()))
        .collect();
    old.add(&pairs);
    let out = env
        .std_cmd()
        .env("SREGISTRY_CACHE", &cache)
        .arg("migrate")
        .arg("--from")
        .arg(&old.db_dir)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left"), "{err}");
    let under = |sub: &str| -> usize {
        fn count(p: &Path) -> usize {
            fs::read_dir(p).map_or(0, |rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            count(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
        }
        count(&cache.join("v1").join(sub))
    };
    assert_eq!(under("blobs"), 0, "the failed migrate left blobs behind");
    assert_eq!(under("tmp"), 0);
    // With a larger filesystem, the same migrate brings every image in.
    crate::common::run(
        StdCommand::new("mount")
            .args(["-o", "remount,size=8m"])
            .arg(&small),
    );
    let out = env
        .std_cmd()
        .env("SREGISTRY_CACHE", &cache)
        .arg("migrate")
        .arg("--from")
        .arg(&old.db_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(under("blobs"), 30);
    drop(mnt);
}
