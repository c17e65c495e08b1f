//! Spare files: an `add` leaves an empty `tmp/spare-*` file for the next `add` of its user
//! on its host, which renames it instead of making a file (a new inode can cost ext4 a
//! millisecond). What is at a spare's known name may be anything a member of the group
//! put there: only a plain, empty file of the user's, mode 0600, with one link, is used.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::*;

fn add(env: &Env, file: &Path, name: &str) -> PathBuf {
    PathBuf::from(stdout_of(
        env.cmd().arg("add").arg(file).args(["--name", name]),
    ))
}

/// Three adds in a row, the first two making what the third uses: its blob is the very
/// inode of the spare the second left, and a new spare is there after it.
#[test]
fn sequential_adds_stage_into_the_last_adds_spare_file() {
    let env = Env::new();
    add(&env, &env.file("a.img", b"first image"), "lab/a:1");
    add(&env, &env.file("b.img", b"second image"), "lab/b:1");
    let spares = env.spares();
    assert_eq!(spares.len(), 1, "one spare after two adds: {spares:?}");
    let spare_ino = fs::metadata(&spares[0]).unwrap().ino();
    let blob = add(&env, &env.file("c.img", b"third image"), "lab/c:1");
    let meta = fs::metadata(&blob).unwrap();
    assert_eq!(meta.ino(), spare_ino, "the third add staged into the spare");
    assert_eq!(fs::read(&blob).unwrap(), b"third image");
    assert_eq!(meta.mode() & 0o7777, 0o444);
    let after = env.spares();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(fs::metadata(&after[0]).unwrap().ino(), spare_ino);
    env.assert_blobs_verify();
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    // A spare is no leftover: verify and doctor do not report it, even past the grace.
    let out = stdout_of(env.cmd().args(["verify", "--json", "--tmp-grace", "0"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{out}");
    let a_week_on = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 7 * 86_400)
        .to_string();
    let (tmp, _) = doctor_check(env.cmd().env("SREGISTRY_NOW", &a_week_on), "tmp");
    assert_eq!(tmp["status"], "ok", "{tmp}");
    // gc removes it once past the grace period, like any file in tmp/.
    stdout_of(env.cmd().args(["gc", "--tmp-grace", "0"]));
    assert!(env.spares().is_empty(), "gc left {:?}", env.spares());
    assert_eq!(env.names().len(), 3);
}

/// Whatever is planted at the spare's name (a symbolic link to a user's file, a hard link
/// of one, a file with content, another user's file, a FIFO, a directory with something
/// in it) is not written through and does not stop the add: the user's files keep their
/// bytes, the add stores exactly its own, and never hangs.
#[test]
fn what_is_planted_at_a_spares_name_is_never_written_through() {
    type Plant = fn(&Path, &Path);
    // Each with the victim's bytes: an empty one where only its size would tell it apart.
    let plants: [(&str, &[u8], Plant); 6] = [
        ("symlink", b"the user's own bytes", |spare, victim| {
            std::os::unix::fs::symlink(victim, spare).unwrap()
        }),
        ("hard link", b"", |spare, victim| {
            fs::hard_link(victim, spare).unwrap()
        }),
        ("content", b"the user's own bytes", |spare, _| {
            write_0600(spare, b"planted bytes")
        }),
        ("another user's", b"the user's own bytes", |spare, _| {
            write_0600(spare, b"");
            std::os::unix::fs::chown(spare, Some(1001), None).unwrap();
        }),
        ("fifo", b"the user's own bytes", |spare, _| {
            let c = std::ffi::CString::new(spare.to_str().unwrap()).unwrap();
            // SAFETY: a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }),
        ("directory", b"the user's own bytes", |spare, _| {
            fs::create_dir(spare).unwrap();
            fs::write(spare.join("inside"), b"x").unwrap();
        }),
    ];
    for (what, bytes, plant) in plants {
        let env = Env::new();
        add(&env, &env.file("a.img", b"first image"), "lab/a:1");
        add(&env, &env.file("b.img", b"second image"), "lab/b:1");
        let spares = env.spares();
        assert_eq!(spares.len(), 1, "{what}: {spares:?}");
        let spare = spares[0].clone();
        fs::remove_file(&spare).unwrap();
        let victim = env.file("victim.txt", bytes);
        fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        plant(&spare, &victim);
        let blob = add(&env, &env.file("c.img", b"third image"), "lab/c:1");
        assert_eq!(fs::read(&blob).unwrap(), b"third image", "{what}");
        assert_eq!(fs::read(&victim).unwrap(), bytes, "{what}: written through");
        assert_ne!(
            fs::metadata(&blob).unwrap().ino(),
            fs::metadata(&victim).unwrap().ino(),
            "{what}: the user's file became a blob"
        );
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert_eq!(
            fs::metadata(&blob).unwrap().uid(),
            me,
            "{what}: the blob is another user's, who could make it writable"
        );
        env.assert_blobs_verify();
        assert_eq!(env.names().len(), 3, "{what}");
    }
}

fn write_0600(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}
