//! What the remotes need of the cache around a pull or push: the per-pull lock
//! (`locks/<hash>.lock`, exclusive for a whole download, taken before the index lock and
//! never while holding it), the note of failed pulls a waiter reads, and the remote
//! digest a push records.

use std::path::PathBuf;

use super::{Cache, CacheError, IndexError};
use crate::format::digest::Digest;

impl Cache {
    /// Record the remote's digest of a blob (after a push computed it), so later pushes
    /// need not hash the file again.
    pub fn record_remote_digest(&self, d: &Digest, remote: &str) -> Result<(), CacheError> {
        let mut w = self.index.write()?;
        if let Some(mut b) = w.get_blob(d)?
            && b.remote_digest.as_deref() != Some(remote)
        {
            b.remote_digest = Some(remote.to_string());
            w.replace_blob(d, &b)?;
            w.commit()?;
        }
        Ok(())
    }

    /// The per-pull lock of a remote reference (`v1/locks/<hash>.lock`), held exclusive for
    /// a whole download. Taken before the index lock, never while holding it.
    ///
    /// Once it holds the lock, it removes what killed pulls and adds on this machine left
    /// in `tmp/` (see `store::Store::remove_dead_tmp`), so a pull killed mid-way leaves
    /// nothing behind once the next one runs here.
    pub fn pull_lock(&self, remote: &str) -> Result<crate::cache::lock::LockGuard, CacheError> {
        let path = self.locks_dir().join(pull_lock_name(remote));
        if crate::cache::lock::held_by_caller(&path) {
            // A callback of the pull holding it (see `LockGuard::reentry`): waiting would
            // be waiting for ourselves, the whole lock timeout, then blaming another process.
            return Err(CacheError::Reentered {
                remote: remote.to_string(),
                path,
            });
        }
        let take = |path: &std::path::Path| {
            crate::cache::lock::lock(
                path,
                crate::cache::lock::Mode::Exclusive,
                self.index.lock_options(),
            )
        };
        let guard = match take(&path) {
            // A lock file this user may not open for writing: in a shared cache, one that
            // another member made with a mode of their own (found by a hostile test: every
            // pull of that remote failed at once). This user's pulls of it then take a lock
            // of their own: they happen once among this user's processes, not the group's.
            Err(crate::cache::lock::LockError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                // SAFETY: geteuid has no preconditions.
                let uid = unsafe { libc::geteuid() };
                let own = path.with_extension(format!("{uid}.lock"));
                match take(&own) {
                    // Another member made that one too. No process of this user can hold
                    // a lock on a file this user cannot open for writing, so it holds
                    // nothing of theirs: removed (`locks/` is the group's), and made again.
                    Err(crate::cache::lock::LockError::Open { source, .. })
                        if source.kind() == std::io::ErrorKind::PermissionDenied
                            && std::fs::symlink_metadata(&own).is_ok_and(|m| {
                                use std::os::unix::fs::MetadataExt;
                                m.uid() != uid
                            }) =>
                    {
                        let _ = std::fs::remove_file(&own);
                        take(&own)
                    }
                    r => r,
                }
            }
            r => r,
        }
        .map_err(IndexError::from)?;
        self.store.remove_dead_tmp();
        Ok(guard)
    }

    /// How many pulls of `remote` by this user have failed so far, and the last one's
    /// message (`0, ""` when none has). Read before waiting for the pull lock and again
    /// once it is held, it tells a waiter whether the pull it waited for failed.
    ///
    /// Only the caller's own note about this very remote counts: in a shared cache another
    /// member can write a note at that name (to put words in this user's error), or rename
    /// one of this user's notes about another remote to it, and a note of another user's
    /// names a remote that user pulled, so notes are `0600`, name their remote (`count`,
    /// the remote, the message, one line each), and a waiter of another user finds none
    /// and tries the pull itself.
    pub fn pull_failures(&self, remote: &str) -> (u64, String) {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let path = self.pull_failure_note(remote);
        let mut text = String::new();
        let own = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .and_then(|mut f| {
                let m = f.metadata()?;
                // SAFETY: geteuid has no preconditions.
                // A note this user wrote is 0600: a lock file of theirs (0664), which any
                // member may rewrite and rename to a note's name, is not one.
                if m.is_file() && m.uid() == unsafe { libc::geteuid() } && m.mode() & 0o077 == 0 {
                    f.by_ref().take(64 << 10).read_to_string(&mut text)?;
                }
                Ok(())
            });
        if own.is_err() {
            text.clear();
        }
        // The note names its remote: one of this user's notes about another remote, that a
        // member renamed to this remote's name (`locks/` is not sticky), is not this one's.
        let mut lines = text.splitn(3, '\n');
        let (count, about, detail) = (
            lines.next().unwrap_or(""),
            lines.next().unwrap_or(""),
            lines.next().unwrap_or(""),
        );
        if about != remote {
            return (0, String::new());
        }
        (count.trim().parse().unwrap_or(0), detail.to_string())
    }

    /// Record that a pull of `remote` failed with `detail` (call holding its pull lock),
    /// in a note only this user reads (see [`Cache::pull_failures`]). Best effort: a
    /// note that cannot be written only makes waiters try for themselves.
    pub fn record_pull_failure(&self, remote: &str, detail: &str) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (count, _) = self.pull_failures(remote);
        let path = self.pull_failure_note(remote);
        let tmp = path.with_extension(format!("failed.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                let remote = remote.replace('\n', " ");
                f.write_all(format!("{}\n{remote}\n{detail}", count + 1).as_bytes())
            });
        if written.is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        let _ = std::fs::remove_file(&tmp);
    }

    fn pull_failure_note(&self, remote: &str) -> PathBuf {
        self.locks_dir()
            .join(pull_lock_name(remote))
            .with_extension("failed")
    }
}

/// BLAKE3 of a remote reference's text: the name of its per-pull lock.
fn pull_lock_name(remote: &str) -> String {
    format!("{}.lock", &Digest::of(remote.as_bytes()).hex()[..32])
}
