//! The directories the cache makes inside itself, never through a link.
//!
//! In a shared cache `v1/` is group-writable, so any member can rename `blobs/`, `tmp/`,
//! `locks/` or a fan-out directory away and put a symbolic link in its place. A command
//! that then made or `chmod`ed that directory by path would work on whatever the link
//! names: root's `init --shared` opening a user's home to the group, a user's own pull
//! opening their private cache (found by a hostile test). So:
//!
//! * [`make_dir`] creates one directory at a time, gives the mode only to a directory it
//!   has just created, through a descriptor opened without following a link, and takes
//!   an existing entry only when it is a directory itself (not a link to one);
//! * [`real_dirs`] tells whether the store's directories are there, each a directory
//!   itself: what `ensure_layout`, `gc`, `verify` and `doctor` ask before they write in
//!   them, scan them or remove from them, so that none of them follows a link out of the
//!   cache.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The error for a link (or anything not a directory) where the cache keeps a directory.
pub(super) fn linked(dir: &Path) -> io::Error {
    io::Error::other(format!(
        "`{}` is a symbolic link or not a directory; sregistry never writes through one (a member may have put it there: remove it, and the next command makes the directory again)",
        dir.display()
    ))
}

/// Create `dir` (and its missing parents) with `mode`, never through a link: an entry
/// that exists is taken only when it is a directory itself, and only a directory this
/// call created gets `mode` (an existing one keeps whatever its owner gave it).
pub(super) fn make_dir(dir: &Path, mode: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => set_up_new_dir(dir, None, mode),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match real_dir(dir)? {
            true => Ok(()),
            false => Err(linked(dir)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            match parent {
                Some(p) if p != dir => {
                    make_dir(p, mode)?;
                    make_dir(dir, mode)
                }
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Give the directory `dir` this call has just made group `gid` (if any), then `mode`,
/// through a descriptor opened without following a link: a member who swapped the new
/// directory for a link in between gets no change of what the link names.
pub(super) fn set_up_new_dir(dir: &Path, gid: Option<u32>, mode: u32) -> io::Result<()> {
    let d = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => linked(dir),
            _ => e,
        })?;
    if let Some(gid) = gid {
        std::os::unix::fs::fchown(&d, None, Some(gid))?;
    }
    d.set_permissions(fs::Permissions::from_mode(mode))
}

/// Whether `dir` is there as a directory itself (`Ok(false)`: nothing there); a link or
/// any other file there is an error naming it.
pub(super) fn real_dir(dir: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(linked(dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether each of `dirs` is there, each a directory itself (see [`real_dir`]): `Ok(true)`
/// when all are, `Ok(false)` when one is missing, an error naming the first that is a link
/// or not a directory.
pub(super) fn real_dirs(dirs: &[&Path]) -> io::Result<bool> {
    let mut all = true;
    for d in dirs {
        all &= real_dir(d)?;
    }
    Ok(all)
}

/// Open `rel` (a path inside the directory `base`, without `..`) never through a link: no
/// component of `rel`, the last one included, may be a symbolic link, and nothing outside
/// `base` is reached (`openat2` with `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`; on a kernel
/// without it, each component opened in turn with `O_NOFOLLOW`). `base` itself is opened as
/// named (a link there is its admin's). `flags` as for `open(2)`; a link on the way is
/// `ELOOP`. For what root's `init --shared` changes: a member who swaps a directory of
/// the walk for a link between the listing and the change gets `ELOOP`, not a change of
/// what the link names (found by a hostile test).
pub fn open_beneath(base: &Path, rel: &Path, flags: i32) -> io::Result<fs::File> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(base)?;
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a zeroed open_how is valid; its fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH;
    // SAFETY: a valid directory descriptor, NUL-terminated path and open_how of its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor openat2 just returned, owned by nobody else.
        return Ok(unsafe { fs::File::from_raw_fd(fd as i32) });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    // No openat2: one component at a time, none followed.
    let mut cur = dir;
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        let std::path::Component::Normal(name) = part else {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        };
        let last = i + 1 == parts.len();
        let f = if last {
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC
        } else {
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        let n = CString::new(name.as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a valid directory descriptor and NUL-terminated name.
        let fd = unsafe { libc::openat(cur.as_raw_fd(), n.as_ptr(), f, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor openat just returned, owned by nobody else.
        cur = unsafe { fs::File::from_raw_fd(fd) };
    }
    Ok(cur)
}
