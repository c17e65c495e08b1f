//! A damaged index never panics and comes back whole from its journal; several sregistry
//! versions share one cache (index schema levels).

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};

use crate::common::{Env, assert_fails, run, stdout_of};

const PAGE: u64 = 4096;

/// A cache with `n` names over `n / 2 + 1` images (names share content), every third
/// name pinned. Returns the names and each name's content.
fn cache_with(env: &Env, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let content = format!("image {} of a cache of {n}\n", i / 2).into_bytes();
        let f = env.file(&format!("in{i}"), &content);
        let name = format!("lab/img{i}:1");
        stdout_of(env.cmd().arg("add").arg(&f).args(["--name", &name]));
        if i % 3 == 0 {
            stdout_of(env.cmd().args(["pin", &name]));
        }
        out.push((name, content));
    }
    out
}

/// The binary on the cache at `cache`.
fn on(env: &Env, cache: &Path) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.env("SREGISTRY_CACHE", cache);
    c
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The page overwritten with zeros.
    Zero,
    /// 64 bytes in the middle of the page inverted.
    Flip,
    /// The file cut at the start of the page.
    Truncate,
}

fn damage(index: &Path, page: u64, how: Damage) {
    let mut bytes = fs::read(index).unwrap();
    let start = (page * PAGE) as usize;
    match how {
        Damage::Zero => {
            let end = (start + PAGE as usize).min(bytes.len());
            bytes[start..end].fill(0);
        }
        Damage::Flip => {
            let mid = (start + 2048).min(bytes.len() - 64);
            for b in &mut bytes[mid..mid + 64] {
                *b = !*b;
            }
        }
        Damage::Truncate => bytes.truncate(start),
    }
    fs::write(index, bytes).unwrap();
}

/// A command met the damage as it must: exit 0 or one of `codes`, never a panic or an
/// abort; a failure is one line on stderr (`doctor` prints its checks on stdout), and if
/// it names the damage, it names the fix.
fn met_cleanly(out: &std::process::Output, codes: &[i32], what: &str) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        code == Some(0) || code.is_some_and(|c| codes.contains(&c)),
        "{what}: exit {:?}, stderr: {err}",
        out.status
    );
    assert!(
        !err.contains("internal error") && !err.contains("panicked"),
        "{what}: a panic reached the user: {err}"
    );
    if code != Some(0) {
        assert!(
            err.trim_end().lines().count() <= 1,
            "{what}: not one line: {err}"
        );
        if err.contains("damaged") {
            assert!(
                err.contains("--repair-index"),
                "{what}: no fix named: {err}"
            );
        }
    }
    code == Some(0)
}

/// The names of the cache, and those pinned.
fn names_of(env: &Env, cache: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = stdout_of(on(env, cache).args(["list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let all = v.as_array().unwrap();
    let name = |e: &serde_json::Value| e["name"].as_str().unwrap().to_string();
    (
        all.iter().map(name).collect(),
        all.iter()
            .filter(|e| e["pinned"].as_bool() == Some(true))
            .map(name)
            .collect(),
    )
}

/// A copy of the cache at `to`: images hard-linked (they are never written in place), the
/// index and its journal copied.
fn fresh_copy(cache: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    run(StdCommand::new("cp").arg("-al").arg(cache).arg(to));
    for f in ["index.redb", "index.journal"] {
        let p = to.join("v1").join(f);
        if fs::remove_file(&p).is_ok() {
            fs::copy(cache.join("v1").join(f), &p).unwrap();
        }
    }
}

/// Damage every page of the index of a cache of `n` names in each way, on a fresh copy
/// each time; run the commands a user would; then repair, and check every name, pin and
/// image is back.
fn every_page_of_a_cache_of(n: usize) {
    let env = Env::new();
    let names = cache_with(&env, n);
    let (want, want_pins) = names_of(&env, &env.cache);
    assert_eq!(want.len(), n);
    assert_eq!(want_pins.len(), n.div_ceil(3));
    let extra = env.file("extra", b"an image added to a damaged cache\n");
    let len = fs::metadata(env.cache.join("v1/index.redb")).unwrap().len();
    let pages = len.div_ceil(PAGE);
    let work = env.path("work");
    let mut refused = 0;
    for page in 0..pages {
        for how in [Damage::Zero, Damage::Flip, Damage::Truncate] {
            let case = format!("{n} names, page {page} of {pages}, {how:?}");
            fresh_copy(&env.cache, &work);
            damage(&work.join("v1/index.redb"), page, how);

            let listed = met_cleanly(
                &on(&env, &work).arg("list").output().unwrap(),
                &[1],
                &format!("{case}: list"),
            );
            if !listed {
                refused += 1;
            }
            let (first, content) = &names[0];
            let got = on(&env, &work).args(["get", first]).output().unwrap();
            if met_cleanly(&got, &[1, 3], &format!("{case}: get")) {
                let path = String::from_utf8(got.stdout).unwrap();
                assert_eq!(&fs::read(path.trim_end()).unwrap(), content, "{case}: get");
            }
            met_cleanly(
                &on(&env, &work).arg("gc").output().unwrap(),
                &[1],
                &format!("{case}: gc"),
            );
            let added = met_cleanly(
                &on(&env, &work)
                    .arg("add")
                    .arg(&extra)
                    .args(["--name", "lab/extra:1"])
                    .output()
                    .unwrap(),
                &[1],
                &format!("{case}: add"),
            );
            let doctor = on(&env, &work).arg("doctor").output().unwrap();
            let report = String::from_utf8_lossy(&doctor.stdout).to_string();
            assert!(
                !String::from_utf8_lossy(&doctor.stderr).contains("internal error"),
                "{case}: doctor panicked"
            );
            if !listed {
                assert_eq!(
                    doctor.status.code(),
                    Some(4),
                    "{case}: doctor passed a damaged index: {report}"
                );
                assert!(
                    report.contains("--repair-index"),
                    "{case}: doctor names no fix: {report}"
                );
            }

            let repair = on(&env, &work)
                .args(["doctor", "--repair-index"])
                .output()
                .unwrap();
            assert!(
                met_cleanly(&repair, &[], &format!("{case}: doctor --repair-index")),
                "{case}: repair failed"
            );
            let mut expect = want.clone();
            if added {
                expect.insert("lab/extra:1".into());
            }
            let (got, pins) = names_of(&env, &work);
            assert_eq!(got, expect, "{case}: names after repair");
            assert_eq!(pins, want_pins, "{case}: pins after repair");
            // gc removes what a refused `add` left (an unnamed image) and nothing else.
            stdout_of(on(&env, &work).arg("gc"));
            stdout_of(on(&env, &work).arg("verify"));
            for (name, content) in [&names[0], &names[n - 1]] {
                let path = stdout_of(on(&env, &work).args(["get", name]));
                assert_eq!(&fs::read(&path).unwrap(), content, "{case}: {name}");
            }
            // And the repaired cache takes changes again.
            stdout_of(
                on(&env, &work)
                    .arg("add")
                    .arg(&extra)
                    .args(["--name", "lab/after:1"]),
            );
        }
    }
    // The loop must have met real damage, not only pages redb never reads.
    assert!(
        refused >= pages as usize,
        "only {refused} of {} cases were refused",
        pages * 3
    );
}

/// Danger: a zeroed, flipped or cut page of `index.redb` made `list` print redb's panic
/// and `gc` abort (exit 134), and the only advice was to re-add every image by hand.
#[test]
fn every_damaged_page_of_a_one_name_index_is_met_cleanly_and_repaired() {
    every_page_of_a_cache_of(1);
}

/// The same danger on an index whose tables span several pages each.
#[test]
fn every_damaged_page_of_a_40_name_index_is_met_cleanly_and_repaired() {
    every_page_of_a_cache_of(40);
}

/// The same danger on an index with branch pages above its leaves.
#[test]
fn every_damaged_page_of_a_200_name_index_is_met_cleanly_and_repaired() {
    every_page_of_a_cache_of(200);
}

/// `doctor --repair-index` succeeds and every name is back.
fn repair_brings_back(env: &Env, names: &[(String, Vec<u8>)]) {
    stdout_of(env.cmd().args(["doctor", "--repair-index"]));
    let mut want: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(env.names(), want);
}

/// The first page whose zeroing makes `list` refuse the index.
fn damaging_page(env: &Env) -> u64 {
    let index = env.cache.join("v1/index.redb");
    let pristine = fs::read(&index).unwrap();
    let pages = (pristine.len() as u64).div_ceil(PAGE);
    for page in 1..pages {
        damage(&index, page, Damage::Zero);
        let out = env.cmd().arg("list").output().unwrap();
        if out.status.code() == Some(1) {
            return page;
        }
        fs::write(&index, &pristine).unwrap();
    }
    panic!("no page of the index is read by `list`");
}

/// Danger: some command other than list, gc and add still panics on a damaged index, or
/// answers without naming the fix.
#[test]
fn every_command_names_the_repair_on_a_damaged_index() {
    let env = Env::new();
    let names = cache_with(&env, 12);
    damaging_page(&env);
    let f = env.file("more", b"more\n");
    let name = names[0].0.as_str();
    let commands: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["get", name],
        vec!["get", "--verify", name],
        vec!["inspect", name],
        vec!["rm", name],
        vec!["tag", name, "lab/other:1"],
        vec!["pin", name],
        vec!["unpin", name],
        vec!["gc", "--max-size", "1"],
        vec!["verify"],
        vec!["info"],
    ];
    for args in commands {
        assert_fails(env.cmd().args(&args), 1, "sregistry doctor --repair-index");
    }
    assert_fails(
        env.cmd().arg("add").arg(&f).args(["--name", "lab/more:1"]),
        1,
        "sregistry doctor --repair-index",
    );
    repair_brings_back(&env, &names);
    // The damaged index is kept beside the new one.
    let kept: Vec<PathBuf> = fs::read_dir(env.cache.join("v1"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("index.redb.damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
}

/// Danger: a rebuild from a journal that lost its start would silently drop most names
/// (and gc would then delete their images); it must refuse and change nothing.
#[test]
fn a_repair_without_a_readable_journal_refuses_and_changes_nothing() {
    let env = Env::new();
    cache_with(&env, 3);
    damaging_page(&env);
    let journal = env.cache.join("v1/index.journal");
    let text = fs::read_to_string(&journal).unwrap();
    fs::write(&journal, text.replacen("{\"journal\"", "{\"jXurnal\"", 1)).unwrap();
    let before = env.snapshot();
    assert_fails(
        env.cmd().args(["doctor", "--repair-index"]),
        1,
        "snapshot line",
    );
    // The lock repairs take turns on is the one file it may leave.
    let mut after = env.snapshot();
    after.remove(&env.cache.join("v1/locks/index-repair.lock"));
    assert_eq!(after, before);
}

/// Danger: an index deleted (or restored from an old copy) beside its journal was taken
/// for a new, empty cache: the next `add` then rewrote the journal from the empty index and
/// every name was gone for good.
#[test]
fn a_deleted_index_is_refused_until_rebuilt_from_its_journal() {
    let env = Env::new();
    let names = cache_with(&env, 4);
    fs::remove_file(env.cache.join("v1/index.redb")).unwrap();
    let f = env.file("more", b"more\n");
    assert_fails(env.cmd().arg("list"), 1, "--repair-index");
    assert_fails(
        env.cmd().arg("add").arg(&f).args(["--name", "lab/more:1"]),
        1,
        "--repair-index",
    );
    repair_brings_back(&env, &names);
}

/// Write the schema levels of the cache's index directly, as a newer sregistry would.
fn mark_schema(cache: &Path, schema: u64, read: u64, write: u64, by: &str) {
    const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    const ABOUT: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("about");
    let db = redb::Database::open(cache.join("v1/index.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("schema_version", schema).unwrap();
        meta.insert("read_compat", read).unwrap();
        meta.insert("write_compat", write).unwrap();
        let mut about = txn.open_table(ABOUT).unwrap();
        about.insert("schema_written_by", by).unwrap();
    }
    txn.commit().unwrap();
}

fn schema_of(cache: &Path) -> u64 {
    const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    use redb::ReadableDatabase;
    let db = redb::Database::open(cache.join("v1/index.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get("schema_version").unwrap().unwrap().value()
}

const OURS: u64 = sregistry::cache::SCHEMA_VERSION;

/// Danger: a newer sregistry whose change older builds can live with locked them out of
/// the shared cache anyway.
#[test]
fn an_older_build_reads_and_writes_a_newer_but_compatible_index() {
    let env = Env::new();
    let names = cache_with(&env, 2);
    mark_schema(&env.cache, OURS + 3, OURS, OURS, "9.1.0");
    let f = env.file("more", b"more\n");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "lab/more:1"]));
    stdout_of(env.cmd().args(["get", &names[0].0]));
    stdout_of(env.cmd().args(["rm", &names[1].0]));
    stdout_of(env.cmd().args(["gc"]));
    stdout_of(env.cmd().arg("doctor"));
    assert_eq!(
        env.names(),
        vec!["lab/img0:1".to_string(), "lab/more:1".to_string()]
    );
    // The older build never lowers the newer schema's stamp.
    assert_eq!(schema_of(&env.cache), OURS + 3);
}

/// Danger: an older build changed an index a newer one needs it not to change (say, gc
/// deleting blobs named in a table it does not know), or refused without saying which
/// version the cache needs.
#[test]
fn an_older_build_reads_but_never_changes_an_index_it_cannot_write() {
    let env = Env::new();
    let names = cache_with(&env, 2);
    mark_schema(&env.cache, OURS + 1, OURS, OURS + 1, "9.1.0");
    let need = format!("needs sregistry with index schema >= {}", OURS + 1);
    stdout_of(env.cmd().args(["get", &names[0].0]));
    stdout_of(env.cmd().arg("list"));
    let index = env.cache.join("v1/index.redb");
    let journal = env.cache.join("v1/index.journal");
    let before = (fs::read(&index).unwrap(), fs::read(&journal).unwrap());
    let f = env.file("more", b"more\n");
    let refusals: Vec<Vec<String>> = vec![
        vec![
            "add".into(),
            f.display().to_string(),
            "--name".into(),
            "lab/more:1".into(),
        ],
        vec!["rm".into(), names[1].0.clone()],
        vec!["tag".into(), names[0].0.clone(), "lab/t:1".into()],
        vec!["pin".into(), names[1].0.clone()],
        vec!["gc".into(), "--max-size".into(), "1".into()],
    ];
    for args in refusals {
        let err = assert_fails(env.cmd().args(&args), 1, &need);
        assert!(err.contains("9.1.0") && err.contains("upgrade"), "{err}");
        assert!(
            (fs::read(&index).unwrap(), fs::read(&journal).unwrap()) == before,
            "`{}` changed the index",
            args.join(" ")
        );
    }
    let doctor = env.cmd().arg("doctor").output().unwrap();
    assert_eq!(doctor.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&doctor.stdout).contains(&need));
    assert_eq!(env.names().len(), 2);
}

/// Danger: an older build misread an index whose format it does not know, or gave no
/// way to tell which version to load.
#[test]
fn an_older_build_refuses_an_index_it_cannot_read_and_doctor_says_which_it_needs() {
    let env = Env::new();
    let names = cache_with(&env, 2);
    mark_schema(&env.cache, OURS + 2, OURS + 2, OURS + 2, "9.2.0");
    let need = format!(
        "needs sregistry with index schema >= {} to read it",
        OURS + 2
    );
    let before = env.snapshot();
    let f = env.file("more", b"more\n");
    let name = names[0].0.as_str();
    let commands: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["get", name],
        vec!["inspect", name],
        vec!["info"],
        vec!["verify"],
        vec!["rm", name],
        vec!["pin", name],
        vec!["gc"],
    ];
    for args in commands {
        let err = assert_fails(env.cmd().args(&args), 1, &need);
        assert!(err.contains("9.2.0"), "{err}");
    }
    assert_fails(
        env.cmd().arg("add").arg(&f).args(["--name", "lab/more:1"]),
        1,
        &need,
    );
    let doctor = env.cmd().arg("doctor").output().unwrap();
    assert_eq!(doctor.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&doctor.stdout).contains(&need));
    let after = env.snapshot();
    let index = env.cache.join("v1/index.redb");
    assert_eq!(after.get(&index), before.get(&index), "the index changed");
}

/// `doctor --repair-index` on a cache whose index was deleted; the names and pins after it
/// are those before.
fn rebuilt_equals_before(env: &Env) {
    let before = names_of(env, &env.cache);
    fs::remove_file(env.cache.join("v1/index.redb")).unwrap();
    stdout_of(env.cmd().args(["doctor", "--repair-index"]));
    assert_eq!(names_of(env, &env.cache), before);
}

/// Danger: concurrent writers from many processes interleave or lose journal lines, so a
/// rebuild brings back another set of names than the index had. The writers' own results
/// are checked too: every add landed, every `rm` that said so removed its name, and every
/// `pin` that said so left its name pinned, so the
/// rebuild is compared against an index that really holds the concurrent writes.
#[test]
fn the_journal_of_many_concurrent_writers_rebuilds_the_same_names_and_pins() {
    let env = Env::new();
    cache_with(&env, 6);
    let mut children = Vec::new();
    for i in 0..24 {
        let f = env.file(&format!("c{i}"), format!("concurrent {i}\n").as_bytes());
        let mut c = env.std_cmd();
        let (verb, name) = match i % 4 {
            0 | 1 => ("add", format!("lab/c{i}:1")),
            2 => ("pin", format!("lab/img{}:1", i % 6)),
            _ => ("rm", format!("lab/img{}:1", i % 6)),
        };
        match verb {
            "add" => c.arg("add").arg(&f).args(["--name", &name]),
            _ => c.args([verb, &name]),
        };
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push((i, verb, name, child));
    }
    let mut added = BTreeSet::new();
    let mut removed = BTreeSet::new();
    let mut pinned = BTreeSet::new();
    for (i, verb, name, c) in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        match verb {
            "add" => {
                assert!(out.status.success(), "add {name}: {:?}: {err}", out.status);
                added.insert((i, name));
            }
            _ if out.status.success() => {
                if verb == "rm" {
                    removed.insert(name);
                } else {
                    pinned.insert(name);
                }
            }
            _ => {
                // A pin of a name an rm took first (3), an rm of a pinned name or one
                // another rm took (1 or 3): refused, in one line naming the name.
                assert!(
                    matches!(out.status.code(), Some(1 | 3)),
                    "{verb} {name}: {:?}: {err}",
                    out.status
                );
                assert_eq!(err.trim_end().lines().count(), 1, "{verb} {name}: {err}");
                assert!(err.contains(&name), "{verb} {name}: {err}");
            }
        }
    }
    // The pins fall on img0, img2, img4 (img0 already pinned); the rms on img1, img5 (each
    // taken by one of its two rms) and img3 (pinned by cache_with: refused).
    let set = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };
    assert_eq!(removed, set(&["lab/img1:1", "lab/img5:1"]));
    assert_eq!(pinned, set(&["lab/img0:1", "lab/img2:1", "lab/img4:1"]));
    let (names, pins) = names_of(&env, &env.cache);
    for (i, name) in &added {
        assert!(names.contains(name), "the add of {name} did not land");
        let path = stdout_of(env.cmd().args(["get", name]));
        assert_eq!(
            fs::read(&path).unwrap(),
            format!("concurrent {i}\n").into_bytes(),
            "{name}"
        );
    }
    for name in &removed {
        assert!(!names.contains(name), "{name} said removed but is listed");
    }
    for name in &pinned {
        assert!(pins.contains(name), "{name} said pinned but is not");
    }
    rebuilt_equals_before(&env);
}

/// Danger: a writer killed after its journal line but before its commit leaves a name
/// in the journal that was never added; a rebuild must not bring it back.
#[test]
fn a_writer_killed_between_journal_and_commit_leaves_no_name_behind() {
    let env = Env::new();
    cache_with(&env, 3);
    let f = env.file("ghost", b"never committed\n");
    let mut c = env
        .std_cmd()
        .env("SREGISTRY_TEST_PAUSE", "index-journalled")
        .arg("add")
        .arg(&f)
        .args(["--name", "lab/ghost:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim_end(), "paused at index-journalled");
    c.kill().unwrap();
    c.wait().unwrap();
    let journal = fs::read_to_string(env.cache.join("v1/index.journal")).unwrap();
    assert!(
        journal.contains("lab/ghost:1"),
        "the kill did not land after the append"
    );
    assert!(!env.names().contains(&"lab/ghost:1".to_string()));
    // The next writer finds the index one behind the journal and voids that line.
    let g = env.file("after", b"after\n");
    stdout_of(env.cmd().arg("add").arg(&g).args(["--name", "lab/after:1"]));
    rebuilt_equals_before(&env);
    assert!(!env.names().contains(&"lab/ghost:1".to_string()));
}

/// Danger: the journal itself is lost or damaged while the index is fine, nobody notices,
/// and the next damage to the index finds no way back.
#[test]
fn doctor_notices_a_journal_that_would_not_rebuild_the_index_and_repair_rewrites_it() {
    let env = Env::new();
    cache_with(&env, 4);
    let journal = env.cache.join("v1/index.journal");
    let text = fs::read_to_string(&journal).unwrap();
    let broken: [(&str, String); 2] = [
        ("missing", String::new()),
        (
            "snapshot damaged",
            text.replacen("lab/img0:1", "lab/imgX:1", 1),
        ),
    ];
    for (what, content) in broken {
        if content.is_empty() {
            fs::remove_file(&journal).unwrap();
        } else {
            fs::write(&journal, &content).unwrap();
        }
        let doctor = env.cmd().arg("doctor").output().unwrap();
        let report = String::from_utf8_lossy(&doctor.stdout).to_string();
        let line = report
            .lines()
            .find(|l| l.contains(" journal "))
            .unwrap_or_else(|| panic!("{what}: no journal check: {report}"));
        assert!(line.starts_with("warn"), "{what}: {line}");
        assert!(line.contains("--repair-index"), "{what}: {line}");
        let out = stdout_of(env.cmd().args(["doctor", "--repair-index"]));
        assert!(out.contains("was rewritten"), "{what}: {out}");
        let report = stdout_of(env.cmd().arg("doctor"));
        assert!(report.contains("ok   journal"), "{what}: {report}");
        rebuilt_equals_before(&env);
    }
}

/// Danger: a rebuild hides that a name's image file is gone (deleted by hand while the
/// index was damaged): it must name it and exit 4, and keep the name for `verify` and `rm`.
#[test]
fn a_repair_names_what_lost_its_image_and_exits_4() {
    let env = Env::new();
    let names = cache_with(&env, 3);
    let victim = &names[2];
    let digest = sregistry::Digest::of(&victim.1).hex();
    let blob = env
        .cache
        .join(format!("v1/blobs/blake3/{}/{digest}", &digest[..2]));
    fs::remove_file(&blob).unwrap();
    damaging_page(&env);
    let out = env
        .cmd()
        .args(["doctor", "--repair-index"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.contains("1 name(s) point at an image file that is missing: lab/img2:1"),
        "{text}"
    );
    assert_eq!(env.names().len(), 3);
    assert_fails(env.cmd().args(["get", &victim.0]), 1, "lab/img2:1");
}

/// Any member of a shared cache's group can rename a FIFO over `index.redb`: every command
/// then waited for ever in the index's open, `doctor` too (found by a hostile test). Each
/// now fails at once, naming the index.
#[test]
fn a_fifo_at_the_index_name_fails_every_command_at_once() {
    let env = Env::new();
    cache_with(&env, 2);
    let index = env.cache.join("v1/index.redb");
    let fifo = env.cache.join("v1/fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    fs::rename(&fifo, &index).unwrap();
    let f = env.file("new.img", b"new image");
    let commands: [&[&str]; 5] = [
        &["get", "lab/img0:1"],
        &["list"],
        &["inspect", "lab/img1:1"],
        &["add", f.to_str().unwrap(), "--name", "lab/new:1"],
        &["gc"],
    ];
    for args in commands {
        let out = env
            .cmd()
            .args(args)
            .timeout(std::time::Duration::from_secs(30))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code().is_some_and(|c| c != 0), "{args:?}: {err}");
        assert!(err.contains("index.redb"), "{args:?}: {err}");
    }
    let out = env
        .cmd()
        .args(["doctor"])
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    assert!(
        out.status.code().is_some(),
        "doctor was killed by the timeout"
    );
    assert_ne!(out.status.code(), Some(0));
}

/// Danger: a write through a link a member of a shared cache put at the index's own
/// files (`v1/` is group-writable). A link at `index.journal` had the next writer's commit
/// appended to the file it named (another user's private journal, found by a hostile
/// test), and one at `index.lock` had it locked. Neither is followed: the command is
/// refused, and the file the link names is unchanged.
#[test]
fn no_write_goes_through_a_link_at_the_index_journal_or_lock() {
    for file in ["index.journal", "index.lock"] {
        let env = Env::new();
        cache_with(&env, 1);
        let at = env.cache.join("v1").join(file);
        let victim = env.path("victim");
        fs::write(&victim, b"someone else's").unwrap();
        fs::remove_file(&at).unwrap();
        std::os::unix::fs::symlink(&victim, &at).unwrap();
        let f = env.file("b.img", b"another image");
        let out = env
            .cmd()
            .arg("add")
            .arg(&f)
            .args(["--name", "lab/b:1"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file}: {out:?}");
        assert_eq!(fs::read(&victim).unwrap(), b"someone else's", "{file}");
        assert!(fs::symlink_metadata(&at).unwrap().file_type().is_symlink());
    }
}
