//! How `mksquashfs` is started: as uid 0 in a user namespace of its own for a caller that
//! is not root, and bound to end with the converting process.
//!
//! Reading a tar, squashfs-tools takes every owner from the tar headers except the root
//! directory's: that one is the uid and gid of the process (4.5.1 ignores `-root-uid` and
//! `-root-gid` in tar mode), so an ordinary user's conversion would own `/` of the image.
//! Run in a new user namespace that maps the caller to uid 0 and gid 0, it records `/` as
//! root's, exactly as a root conversion does; nothing else changes (it writes only the
//! file it was given, which the caller owns). The namespace is made in the child between
//! fork and exec, with no helper program. Where user namespaces are disabled (some
//! cluster kernels), the command runs as it is, and `/` belongs to the caller; the
//! conversion still succeeds.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Make `cmd` run as uid 0 in a user namespace when this process is not root.
pub(super) fn as_root_in_user_namespace(cmd: &mut Command) {
    // SAFETY: geteuid, getuid and getgid have no preconditions.
    let (euid, uid, gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
    if euid == 0 {
        return;
    }
    // Built before the fork: the child may only make system calls (no allocation).
    let uid_map = format!("0 {uid} 1\n").into_bytes();
    let gid_map = format!("0 {gid} 1\n").into_bytes();
    // SAFETY: the closure runs between fork and exec and only calls unshare, open, write
    // and close on buffers made before the fork; failures leave the process as it was.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Ok(());
            }
            write_proc(c"/proc/self/setgroups", b"deny");
            write_proc(c"/proc/self/uid_map", &uid_map);
            write_proc(c"/proc/self/gid_map", &gid_map);
            Ok(())
        });
    }
}

/// Write `data` to a `/proc` file with raw system calls (safe after fork).
fn write_proc(path: &std::ffi::CStr, data: &[u8]) {
    // SAFETY: a valid NUL-terminated path and a buffer valid for its length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, data.as_ptr().cast(), data.len());
            libc::close(fd);
        }
    }
}

/// Make `cmd` end when this process does: a command killed mid-conversion (a job's time
/// limit, Ctrl-C) must not leave `mksquashfs` compressing on for nobody.
pub(super) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls prctl and getppid.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            // The parent may have died before the prctl: then nobody waits for us.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the converting process has ended"));
            }
            Ok(())
        });
    }
}
