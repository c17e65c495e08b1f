//! `init` and `doctor` on group caches: group names resolved without a crash, what `init`
//! refuses to touch, a plain `init` that must not turn a shared cache private, and who
//! may give a cache to another group.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::shared::{GROUP, USERS, as_user, ensure_users, ok, public_binary};

/// Owner, group, mode and content of every path under `dir`: equal states mean `init`
/// changed nothing, not even a group.
fn state(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, String)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            sregistry::Digest::of(&fs::read(&p).unwrap()).hex()
        } else {
            String::new()
        };
        if m.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        out.insert(
            p,
            (m.uid(), m.gid(), m.permissions().mode() & 0o7777, content),
        );
    }
    out
}

/// `sregistry init --shared --group GID` of the test's cache.
fn init_shared(env: &Env, gid: u32) {
    stdout_of(
        env.cmd()
            .args(["init", "--shared", "--group", &gid.to_string()])
            .arg(&env.cache),
    );
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn gid(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().gid()
}

fn egid() -> u32 {
    // SAFETY: getegid has no preconditions.
    unsafe { libc::getegid() }
}

/// A group id that `/etc/group` does not list, from `from` up.
fn unused_gid(from: u32) -> u32 {
    let text = fs::read_to_string("/etc/group").unwrap();
    let used: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    (from..).find(|g| !used.contains(g)).unwrap()
}

fn settings_of(cache: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(cache.join("v1/settings.json")).unwrap()).unwrap()
}

/// Create `group` (if missing) and add `user` to it; retried, since other tests may be
/// editing `/etc/group` at the same moment.
fn ensure_member(group: &str, user: &str) {
    for _ in 0..50 {
        let _ = Command::new("groupadd").arg(group).output();
        let _ = Command::new("usermod")
            .args(["-a", "-G", group, user])
            .output();
        let id = Command::new("id").arg(user).output().unwrap();
        if String::from_utf8_lossy(&id.stdout).contains(&format!("({group})")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("cannot make {user} a member of {group}");
}

/// A group that `/etc/group` does not know (a cluster's LDAP or SSSD group) given by
/// number is taken as it is. Before, the static binary's group lookup loaded an NSS
/// module and the documented set-up command died of SIGSEGV.
#[test]
fn init_shared_takes_a_numeric_gid_that_etc_group_does_not_know() {
    if skip_unless_root(
        "init_shared_takes_a_numeric_gid_that_etc_group_does_not_know",
        "only root may give files to a group it is not in",
    ) {
        return;
    }
    let env = Env::new();
    let g = unused_gid(42_000);
    let out = env
        .cmd()
        .args(["init", "--shared", "--group", &g.to_string()])
        .arg(&env.cache)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in [
        "",
        "v1",
        "v1/index.redb",
        "v1/index.lock",
        "v1/settings.json",
    ] {
        assert_eq!(gid(&env.cache.join(p)), g, "{p}");
    }
    // Sticky: no member renames `private/` or `v1/` away (src/cache/private.rs).
    assert_eq!(mode(&env.cache), 0o3775);
    assert_eq!(mode(&env.cache.join("private")), 0o3730);
    assert_eq!(gid(&env.cache.join("private")), g);
    assert_eq!(mode(&env.cache.join("v1/index.redb")), 0o664);
    assert_eq!(settings_of(&env.cache)["gid"], g);
    let f = env.file("a.img", b"an image for an LDAP group");
    let path = stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "lab/a:1"]));
    assert_eq!(gid(Path::new(&path)), g);
    stdout_of(env.cmd().arg("doctor"));
}

/// A group name that only the system's name services know resolves through `getent`,
/// run as a program of its own (it follows nsswitch.conf, LDAP and SSSD included): a
/// stand-in `getent` first on PATH answers for a name `/etc/group` lacks, and the cache
/// gets that group. A name it does not know is a usage error; a `getent` that fails is
/// an error naming it.
#[test]
fn init_shared_resolves_a_group_name_through_getent() {
    if skip_unless_root(
        "init_shared_resolves_a_group_name_through_getent",
        "only root may give files to a group it is not in",
    ) {
        return;
    }
    let env = Env::new();
    let g = unused_gid(43_000);
    let bin = env.path("fakebin");
    fs::create_dir(&bin).unwrap();
    let calls = env.path("getent.calls");
    let getent = bin.join("getent");
    fs::write(
        &getent,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\n\
             case \"$2\" in\n\
             sregtest-ldap-only) echo 'sregtest-ldap-only:*:{g}:sregtest-alice' ;;\n\
             sregtest-sssd-down) echo 'getent: sssd is not answering' >&2; exit 1 ;;\n\
             *) exit 2 ;;\n\
             esac\n",
            calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&getent, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let init = |group: &str| {
        let mut c = env.cmd();
        c.env("PATH", &path)
            .args(["init", "--shared", "--group", group])
            .arg(&env.cache);
        c
    };
    stdout_of(&mut init("sregtest-ldap-only"));
    assert_eq!(
        fs::read_to_string(&calls).unwrap(),
        "group sregtest-ldap-only\n"
    );
    assert_eq!(gid(&env.cache), g);
    assert_eq!(gid(&env.cache.join("v1/index.lock")), g);
    let s = settings_of(&env.cache);
    assert_eq!(
        (s["group"].as_str(), s["gid"].as_u64()),
        (Some("sregtest-ldap-only"), Some(g as u64))
    );

    let before = state(&env.cache);
    assert_fails(&mut init("sregtest-nowhere"), 2, "`sregtest-nowhere`");
    let err = assert_fails(&mut init("sregtest-sssd-down"), 1, "sssd is not answering");
    assert!(err.contains("getent"), "{err}");
    assert_eq!(
        state(&env.cache),
        before,
        "a failed lookup changed the cache"
    );
}

/// A group that exists nowhere: one line naming it, exit 2 (a bad argument), and no
/// cache made. Without `getent` on PATH, an error that says so (exit 1). Before, the
/// lookup crashed the static binary (SIGSEGV, exit 139).
#[test]
fn init_shared_with_a_group_that_exists_nowhere_fails_in_one_line() {
    let env = Env::new();
    let err = assert_fails(
        env.cmd()
            .args(["init", "--shared", "--group", "sregtest-no-such-group"])
            .arg(&env.cache),
        2,
        "`sregtest-no-such-group`",
    );
    assert!(err.contains("no group"), "{err}");
    assert!(!env.cache.exists(), "a refused init made the directory");

    let empty = env.path("empty-path");
    fs::create_dir(&empty).unwrap();
    let err = assert_fails(
        env.cmd()
            .env("PATH", &empty)
            .args(["init", "--shared", "--group", "sregtest-no-such-group"])
            .arg(&env.cache),
        1,
        "`getent` is not on PATH",
    );
    assert!(err.contains("number"), "{err}");
    assert!(!env.cache.exists(), "a refused init made the directory");
}

/// A cache whose path has a component named `blobs` (`/srv/blobs/cache`): the index, its
/// lock and the settings are group-writable, as `init` says, and only images are 0444.
/// Before, every file under any `blobs` component was taken for an image.
#[test]
fn init_shared_under_a_directory_named_blobs_keeps_the_index_group_writable() {
    let env = Env::new();
    let cache = env.path("blobs/cache");
    let g = egid().to_string();
    let init = || {
        let mut c = env.cmd();
        c.args(["init", "--shared", "--group", &g]).arg(&cache);
        c.output().unwrap()
    };
    let out = init();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("index and locks 664"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = env.file("a.img", b"an image");
    let blob = stdout_of(
        env.cmd()
            .env("SREGISTRY_CACHE", &cache)
            .arg("add")
            .arg(&f)
            .args(["--name", "a"]),
    );
    // Running it again (the documented repair) keeps it so.
    assert!(init().status.success());
    for p in ["v1/index.redb", "v1/index.lock", "v1/settings.json"] {
        assert_eq!(mode(&cache.join(p)), 0o664, "{p}");
    }
    assert_eq!(mode(Path::new(&blob)), 0o444);
    stdout_of(env.cmd().env("SREGISTRY_CACHE", &cache).arg("doctor"));
}

/// `init` on a directory of the user's own files is refused, shared or not, and not one
/// mode, group or byte changes. Before, `init --shared` made every file in it 0664 and
/// every directory 2775, recursively. An empty directory, or one holding only a fresh
/// filesystem's `lost+found`, is fine, and `lost+found` is left as it was.
#[test]
fn init_refuses_a_directory_of_other_files_and_changes_nothing() {
    let env = Env::new();
    let dir = env.path("work");
    fs::create_dir_all(dir.join("private")).unwrap();
    for (p, m) in [
        ("notes.txt", 0o600),
        ("run.sh", 0o755),
        ("private/key", 0o400),
    ] {
        fs::write(dir.join(p), p).unwrap();
        fs::set_permissions(dir.join(p), fs::Permissions::from_mode(m)).unwrap();
    }
    fs::set_permissions(dir.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
    let before = state(&dir);
    let g = egid().to_string();
    for args in [vec!["init", "--shared", "--group", &g], vec!["init"]] {
        let err = assert_fails(
            env.cmd().args(&args).arg(&dir),
            1,
            &format!("`{}` is not an sregistry cache", dir.display()),
        );
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(state(&dir), before, "{args:?} changed the user's files");
    }
    let file = env.file("plain-file", b"x");
    assert_fails(env.cmd().arg("init").arg(&file), 1, "is not a directory");

    let fresh = env.path("fresh-fs");
    fs::create_dir_all(fresh.join("lost+found")).unwrap();
    fs::set_permissions(fresh.join("lost+found"), fs::Permissions::from_mode(0o700)).unwrap();
    stdout_of(
        env.cmd()
            .args(["init", "--shared", "--group", &g])
            .arg(&fresh),
    );
    assert_eq!(mode(&fresh.join("lost+found")), 0o700);
    assert_eq!(mode(&fresh.join("v1/index.redb")), 0o664);
    stdout_of(env.cmd().env("SREGISTRY_CACHE", &fresh).arg("doctor"));
}

/// A member's plain `init` on a shared cache (a set-up script, a habit) leaves it shared:
/// it says so and changes nothing. Before, it recorded the cache as private, the next
/// member's new directories were 0755, and another member's `rm` failed.
#[test]
fn a_plain_init_by_a_member_leaves_a_shared_cache_shared() {
    if skip_unless_root(
        "a_plain_init_by_a_member_leaves_a_shared_cache_shared",
        "needs root to create users",
    ) {
        return;
    }
    let (env, bin, cache) = crate::shared::shared_cache_for_the_users();
    let [_, bob] = USERS;
    let before = state(&cache);
    let out = as_user(bob, &bin, &cache, &["init"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(state(&cache), before, "a plain init changed a shared cache");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("already a cache shared by group `{GROUP}`")),
        "{err}"
    );

    let (_, path) = crate::shared::alice_adds_lab_tool(&env, &bin, &cache, b"alice's image");
    let fan = Path::new(&path).parent().unwrap();
    assert_eq!(
        mode(fan),
        0o2775,
        "alice's new directory is not group-writable"
    );
    ok(as_user(bob, &bin, &cache, &["rm", "lab/tool:1"]));
    assert!(
        !Path::new(&path).exists(),
        "bob could not remove alice's image"
    );
}

/// `doctor` fails a cache whose settings and layout disagree: settings that say private
/// on a setgid, group-writable layout (what a plain `init` by an older sregistry, or a
/// hand edit, leaves), and settings that say shared on a private layout. Before, it
/// reported every check ok for the first.
#[test]
fn doctor_fails_settings_that_disagree_with_the_layout() {
    let env = Env::new();
    let g = egid();
    init_shared(&env, g);
    stdout_of(env.cmd().arg("doctor"));
    fs::write(
        env.cache.join("v1/settings.json"),
        r#"{"shared": false, "dir_mode": 493, "file_mode": 420}"#,
    )
    .unwrap();
    let f = env.file("a.img", b"an image");
    stdout_of(env.cmd().arg("add").arg(&f).args(["--name", "a"]));
    let out = env.cmd().arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL settings") && l.contains("say private")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL permissions") && l.contains("2775")),
        "{text}"
    );

    // The reverse: a private cache whose settings say shared.
    let private = env.path("private");
    stdout_of(env.cmd().arg("init").arg(&private));
    fs::write(
        private.join("v1/settings.json"),
        format!(
            r#"{{"shared": true, "group": "g", "gid": {g}, "dir_mode": 1533, "file_mode": 436}}"#
        ),
    )
    .unwrap();
    let out = env
        .cmd()
        .env("SREGISTRY_CACHE", &private)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL settings") && l.contains("say shared")),
        "{text}"
    );
}

/// A cache alice shares with the test group from a directory she owns, and an image bob
/// added to it (so some of its files are bob's). Returns the test's env, the binary, the
/// cache, its path as text, and bob's image's path.
fn alices_shared_cache_with_bobs_image() -> (Env, PathBuf, PathBuf, String) {
    ensure_users();
    let [alice, bob] = USERS;
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = public_binary(env.dir.path());
    let cache = env.path("alices-cache");
    fs::create_dir(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(uid_of(alice)), None).unwrap();
    let c = cache.to_str().unwrap();
    ok(as_user(
        alice,
        &bin,
        &cache,
        &["init", "--shared", "--group", GROUP, c],
    ));
    let img = env.file("b.img", b"bob's image");
    fs::set_permissions(&img, fs::Permissions::from_mode(0o644)).unwrap();
    let blob = ok(as_user(
        bob,
        &bin,
        &cache,
        &["add", img.to_str().unwrap(), "--name", "lab/b:1"],
    ));
    (env, bin, cache, blob)
}

/// `init --shared` with the group a cache already has, by its owner or by any member, is
/// a no-op: not a mode, group or byte changes. Before, each run rewrote the index and the
/// settings (a member's run made the settings file theirs).
#[test]
fn init_shared_with_the_same_group_again_changes_nothing() {
    if skip_unless_root(
        "init_shared_with_the_same_group_again_changes_nothing",
        "needs root to create users",
    ) {
        return;
    }
    let (_env, bin, cache, _) = alices_shared_cache_with_bobs_image();
    let c = cache.to_str().unwrap();
    let before = state(&cache);
    // The same group again, by the owner and by a member: nothing to do.
    for user in USERS {
        let out = as_user(
            user,
            &bin,
            &cache,
            &["init", "--shared", "--group", GROUP, c],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(state(&cache), before, "{user}'s repeat changed the cache");
        assert_eq!(out.status.code(), Some(0), "{user}: {err}");
        assert!(
            err.contains("group and modes are as they should be"),
            "{err}"
        );
    }
}

/// A private cache made in a setgid project directory (common on clusters) inherits the
/// setgid bit on its root; that alone is no sign of a group layout, and `doctor` passes
/// it (as it passes one `init` made under a umask of 002), while group-write on its
/// directories, which the settings do not give, fails.
#[test]
fn doctor_passes_a_private_cache_in_a_setgid_directory_but_not_a_group_writable_one() {
    let env = Env::new();
    let project = env.path("project");
    fs::create_dir(&project).unwrap();
    fs::set_permissions(&project, fs::Permissions::from_mode(0o2755)).unwrap();
    let cache = project.join("cache");
    fs::create_dir(&cache).unwrap();
    assert_eq!(
        mode(&cache) & 0o2000,
        0o2000,
        "mkdir did not inherit setgid"
    );
    stdout_of(env.cmd().arg("init").arg(&cache));
    let f = env.file("a.img", b"an image");
    stdout_of(
        env.cmd()
            .env("SREGISTRY_CACHE", &cache)
            .arg("add")
            .arg(&f)
            .args(["--name", "a"]),
    );
    stdout_of(env.cmd().env("SREGISTRY_CACHE", &cache).arg("doctor"));
    // One that `init` makes under a umask of 002 passes too.
    let other = env.path("umask002");
    let out = Command::new("sh")
        .args(["-c", "umask 002; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_sregistry"))
        .arg("init")
        .arg(&other)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_of(env.cmd().env("SREGISTRY_CACHE", &other).arg("doctor"));

    fs::set_permissions(cache.join("v1/locks"), fs::Permissions::from_mode(0o775)).unwrap();
    let out = env
        .cmd()
        .env("SREGISTRY_CACHE", &cache)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL permissions") && l.contains("v1/locks: 775 (want 755)")),
        "{text}"
    );
}

/// Who may give a shared cache to another group: refused, changing nothing, unless the
/// caller is a member of the new group and owns every path that must change, or is root;
/// root can, and says what the group was. A private cache of another user: refused.
/// Before, the owner's attempt half-regrouped the cache (root directory and settings on
/// the new group, other members' files on the old) and then failed.
#[test]
fn only_root_or_the_owner_of_every_file_gives_a_cache_to_another_group() {
    if skip_unless_root(
        "only_root_or_the_owner_of_every_file_gives_a_cache_to_another_group",
        "needs root to create users",
    ) {
        return;
    }
    let (env, bin, cache, blob) = alices_shared_cache_with_bobs_image();
    let [alice, bob] = USERS;
    let other = "sregtest-other";
    ensure_member(other, alice);
    let c = cache.to_str().unwrap();
    let before = state(&cache);
    // Another group: alice owns the root but not bob's files; bob is not in the group.
    let out = as_user(
        alice,
        &bin,
        &cache,
        &["init", "--shared", "--group", other, c],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(state(&cache), before, "a refused regroup changed the cache");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("belongs to uid {}", uid_of(bob)))
            && err.contains("nothing was changed"),
        "{err}"
    );
    let out = as_user(
        bob,
        &bin,
        &cache,
        &["init", "--shared", "--group", other, c],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("not a member of group `{other}`")),
        "{err}"
    );
    assert_eq!(state(&cache), before, "a refused regroup changed the cache");

    // Root can, and says what it was.
    let out = env
        .cmd()
        .args(["init", "--shared", "--group", other])
        .arg(&cache)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "was shared by group `{GROUP}`; it is now shared by group `{other}`"
        )),
        "{err}"
    );
    let new_gid = gid(&cache);
    assert_ne!(new_gid, before[&cache].1);
    for p in state(&cache).keys() {
        assert_eq!(gid(p), new_gid, "{} kept the old group", p.display());
    }
    assert_eq!(settings_of(&cache)["group"], other);
    assert_eq!(ok(as_user(alice, &bin, &cache, &["get", "lab/b:1"])), blob);
    stdout_of(env.cmd().env("SREGISTRY_CACHE", &cache).arg("doctor"));

    // A private cache that alice made: bob cannot share it.
    let private = env.path("alices-private");
    fs::create_dir(&private).unwrap();
    std::os::unix::fs::chown(&private, Some(uid_of(alice)), None).unwrap();
    let p = private.to_str().unwrap();
    ok(as_user(alice, &bin, &private, &["init", p]));
    let before = state(&private);
    let out = as_user(
        bob,
        &bin,
        &private,
        &["init", "--shared", "--group", GROUP, p],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot share the cache at `{p}`"))
            && err.contains(&format!("belongs to uid {}", uid_of(alice))),
        "{err}"
    );
    assert_eq!(
        state(&private),
        before,
        "a refused init changed alice's cache"
    );
}

/// A member links a file of root's (say `/etc/shadow`, on the same filesystem) into the
/// cache and waits for root to re-run `init --shared`: root's `init` refuses the linked
/// file and changes nothing, and the outside file keeps its mode and group. Before, it
/// made the outside file group-owned and 0664.
#[test]
fn root_init_does_not_open_up_a_file_linked_into_the_cache() {
    if skip_unless_root(
        "root_init_does_not_open_up_a_file_linked_into_the_cache",
        "the attack is on root's init",
    ) {
        return;
    }
    ensure_users();
    let env = Env::new();
    stdout_of(
        env.cmd()
            .args(["init", "--shared", "--group", GROUP])
            .arg(&env.cache),
    );
    let secret = env.file("secret", b"root's secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let linked = env.cache.join("v1/locks/planted.lock");
    fs::hard_link(&secret, &linked).unwrap();
    let before = state(&env.cache);
    let err = assert_fails(
        env.cmd()
            .args(["init", "--shared", "--group", GROUP])
            .arg(&env.cache),
        1,
        "has another hard link",
    );
    assert!(err.contains(&format!("`{}`", linked.display())), "{err}");
    assert_eq!((mode(&secret), gid(&secret)), (0o600, 0));
    assert_eq!(
        state(&env.cache),
        before,
        "a refused init changed the cache"
    );
}

/// The executable is linked statically, where glibc's user and group lookups load NSS
/// modules and crash: no code in it may call them, whichever crate it comes from.
#[test]
fn the_static_binary_links_no_user_or_group_lookup() {
    let out = Command::new("nm")
        .arg(env!("CARGO_BIN_EXE_sregistry"))
        .output()
        .expect("cannot run `nm` (binutils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let symbols = String::from_utf8_lossy(&out.stdout);
    assert!(symbols.contains(" main\n"), "nm listed no symbols");
    let lookups: Vec<&str> = symbols
        .lines()
        .filter_map(|l| l.rsplit(' ').next())
        .filter(|s| {
            [
                "getgrnam",
                "getgrgid",
                "getpwnam",
                "getpwuid",
                "getgrouplist",
                "initgroups",
            ]
            .iter()
            .any(|f| s.trim_start_matches("__").starts_with(f))
        })
        .collect();
    assert!(lookups.is_empty(), "linked in: {lookups:?}");
}

/// An admin who sets the sticky bit on a shared cache's root (so that no member can
/// rename `private/` or `v1/` away: docs/shared-cache.md, "Private images") keeps it: doctor
/// took it for a wrong mode and `init --shared` again took it off. Only the root may
/// carry it: a sticky `v1/` would stop members removing each other's files.
#[test]
fn a_sticky_bit_on_the_roots_directory_stays_and_is_no_problem() {
    let env = Env::new();
    let g = egid();
    init_shared(&env, g);
    fs::set_permissions(&env.cache, fs::Permissions::from_mode(0o3775)).unwrap();
    let (check, code) = doctor_check(&mut env.cmd(), "permissions");
    assert_eq!(check["status"], "ok", "{check}");
    assert_eq!(code, Some(0));
    init_shared(&env, g);
    assert_eq!(mode(&env.cache), 0o3775, "init took the sticky bit off");
    let v1 = env.cache.join("v1");
    fs::set_permissions(&v1, fs::Permissions::from_mode(0o3775)).unwrap();
    let (check, _) = doctor_check(&mut env.cmd(), "permissions");
    assert_ne!(check["status"], "ok", "a sticky v1/ passed: {check}");
}

/// Danger: root's `init --shared` giving a file outside the cache to the group. A member
/// swaps a directory of `v1/` that `init` has just listed for a link to a directory of
/// root's: `init` then looked at (and planned to change) root's file through the link, and
/// changed it, because only the last component was opened without following a link (found
/// by a hostile test: any file, `/etc/shadow` too, became `root:users 0664`). No
/// component of a path `init` changes may now be a link: root's file stays as it was.
#[test]
fn init_never_changes_a_file_through_a_directory_swapped_for_a_link() {
    if skip_unless_root(
        "init_never_changes_a_file_through_a_directory_swapped_for_a_link",
        "changes groups",
    ) {
        return;
    }
    let env = Env::new();
    let c = env.cache.to_str().unwrap().to_string();
    let init = |env: &Env| {
        let out = env
            .cmd()
            .args(["init", "--shared", "--group", GROUP, &c])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    init(&env);
    let evil = env.cache.join("v1/evil");
    fs::create_dir(&evil).unwrap();
    fs::write(evil.join("victim"), "a member's").unwrap();
    fs::set_permissions(evil.join("victim"), fs::Permissions::from_mode(0o600)).unwrap();
    let roots = env.path("roots");
    fs::create_dir(&roots).unwrap();
    fs::set_permissions(&roots, fs::Permissions::from_mode(0o700)).unwrap();
    let victim = roots.join("victim");
    fs::write(&victim, "root's own").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let before = (mode(&victim), gid(&victim), mode(&roots), gid(&roots));
    let resume = env.path("resume");
    let child = env.spawn_paused(
        "init-listed",
        Some(&resume),
        &[
            "init".as_ref(),
            "--shared".as_ref(),
            "--group".as_ref(),
            GROUP.as_ref(),
            c.as_ref(),
        ],
    );
    fs::rename(&evil, env.cache.join("v1/evil.x")).unwrap();
    std::os::unix::fs::symlink(&roots, &evil).unwrap();
    fs::write(&resume, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        (mode(&victim), gid(&victim), mode(&roots), gid(&roots)),
        before,
        "root's file changed through the link: {out:?}"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root's own");
}
