//! Damage: every call into redb runs under [`std::panic::catch_unwind`], and a panic (or
//! an error redb calls corruption) becomes [`IndexError::Damaged`], naming the index and
//! the fix (see "Damage, and the journal that undoes it" in [`super`]).
//!
//! A reader or writer that met damage is poisoned: [`guarded`] refuses every later call
//! on it. While a guarded call runs, [`panic_is_caught`] is true on its thread, so the
//! binary's panic hook stays quiet.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use super::IndexError;

thread_local! {
    static CAUGHT: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread is inside a call into redb whose panic becomes
/// [`IndexError::Damaged`]: a panic hook should then print nothing.
pub fn panic_is_caught() -> bool {
    CAUGHT.with(|c| c.get() > 0)
}

/// Run `f`, a call into redb; `None` if it panicked.
pub(super) fn caught<T>(f: impl FnOnce() -> T) -> Option<T> {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            CAUGHT.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    CAUGHT.with(|c| c.set(c.get() + 1));
    let _depth = Depth;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

fn journal_path_of(db: &Path) -> PathBuf {
    db.with_file_name("index.journal")
}

pub(super) fn damaged(path: &Path) -> IndexError {
    IndexError::Damaged {
        path: path.to_path_buf(),
        journal: journal_path_of(path),
    }
}

/// A redb error as an index error: what redb calls corruption (or a file that is not a
/// database, or a transaction a panic poisoned) is [`IndexError::Damaged`].
pub(super) fn from_redb(path: &Path, source: redb::Error) -> IndexError {
    let is_damage = match &source {
        redb::Error::Corrupted(_) | redb::Error::TransactionPoisoned => true,
        redb::Error::Io(e) => e.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    };
    let os_error = match &source {
        redb::Error::Io(e) => e.raw_os_error(),
        _ => None,
    };
    if is_damage {
        damaged(path)
    } else if matches!(os_error, Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        IndexError::NoSpace {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(os_error.unwrap_or(libc::ENOSPC)),
        }
    } else if let Some(errno) = os_error.filter(|&e| refused_by_the_server(e)) {
        IndexError::Refused {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    } else {
        IndexError::Db {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Run `f` (calls into redb) for the reader or writer whose `poisoned` flag is given: a
/// panic marks it and becomes [`IndexError::Damaged`]; once marked, nothing more runs.
pub(super) fn guarded<T>(
    poisoned: &Cell<bool>,
    path: &Path,
    f: impl FnOnce() -> Result<T, IndexError>,
) -> Result<T, IndexError> {
    if poisoned.get() {
        return Err(damaged(path));
    }
    caught(f).unwrap_or_else(|| {
        poisoned.set(true);
        Err(damaged(path))
    })
}

/// The `map_err` of a redb storage error met reading or writing `path`.
pub(super) fn dberr(path: &Path) -> impl Fn(redb::StorageError) -> IndexError + '_ {
    move |e| from_redb(path, e.into())
}

/// An error the NFS client gives for I/O through a descriptor whose state the server lost
/// in a restart: `EIO` when the lock on it could not be reclaimed, `EBADF` when the open
/// itself could not be (seen in the cluster's reboot test). The descriptor is open and
/// ours, so neither means anything else here.
pub(super) fn refused_by_the_server(errno: i32) -> bool {
    errno == libc::EIO || errno == libc::EBADF
}
