//! The verifying sink: every byte from a remote goes through it on its way into `tmp/`.
//!
//! It counts bytes and refuses more than the declared size, hashes with sha256 (to check
//! the remote's digest) and BLAKE3 (the cache's own name for the content), and writes to a
//! new file in `tmp/`. The hashing runs on a second thread fed with the very chunks that
//! were written (reference-counted, not copied), so receiving, writing and hashing
//! overlap; every chunk is hashed exactly once, in order. Writeback to disk is started as
//! the file grows, so the final fsync has little left to do. [`Sink::finish`] checks the
//! count and the digest, makes the file read-only and durable, and hands back a
//! [`Staged`] file that the cache commits. Dropped before that (any error), the file is
//! removed.
//!
//! A download that breaks off can continue where it stopped ([`Sink::written`] bytes in;
//! the hash state carries on) or start over ([`Sink::reset`]) when the server ignores a
//! `Range`.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::mpsc;

use bytes::Bytes;
use sha2::Digest as _;

use super::RemoteError;
use crate::cache::store::{Staged, Store};
use crate::format::digest::Digest;

/// Start writeback every this many bytes.
const WRITEBACK_STEP: u64 = 8 << 20;

enum Msg {
    Chunk(Bytes),
    Reset,
}

/// The hashing thread: sha256 and BLAKE3 of every chunk, in order.
struct Hasher {
    tx: Option<mpsc::SyncSender<Msg>>,
    handle: Option<std::thread::JoinHandle<(sha2::Sha256, blake3::Hasher)>>,
}

impl Hasher {
    fn start() -> Hasher {
        let (tx, rx) = mpsc::sync_channel::<Msg>(64);
        let handle = std::thread::spawn(move || {
            let mut sha = sha2::Sha256::new();
            let mut b3 = blake3::Hasher::new();
            for m in rx {
                match m {
                    Msg::Chunk(c) => {
                        sha.update(&c);
                        b3.update(&c);
                    }
                    Msg::Reset => {
                        sha = sha2::Sha256::new();
                        b3 = blake3::Hasher::new();
                    }
                }
            }
            (sha, b3)
        });
        Hasher {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn send(&self, m: Msg) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(m).is_ok())
    }

    /// Close the channel and wait for the thread's hashes (once; `None` after that, or if
    /// the thread panicked).
    fn stop(&mut self) -> Option<(sha2::Sha256, blake3::Hasher)> {
        drop(self.tx.take());
        self.handle.take()?.join().ok()
    }

    fn finish(mut self) -> Option<(sha2::Sha256, blake3::Hasher)> {
        self.stop()
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a download is being written and what it has hashed so far.
pub struct Sink {
    file: Option<File>,
    path: PathBuf,
    url: String,
    hasher: Option<Hasher>,
    written: u64,
    synced: u64,
    limit: Option<u64>,
}

impl Sink {
    /// A new sink in the store's `tmp/`, for content from `url` that must not exceed
    /// `limit` bytes.
    pub fn new(store: &Store, url: &str, limit: Option<u64>) -> Result<Sink, RemoteError> {
        let (file, path) = store.new_ingest_file().map_err(|e| RemoteError::Io {
            path: store.tmp_dir().to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Sink {
            file: Some(file),
            path,
            url: url.to_string(),
            hasher: Some(Hasher::start()),
            written: 0,
            synced: 0,
            limit,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The size the remote declared, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn io(&self, source: std::io::Error) -> RemoteError {
        RemoteError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Take the next bytes of the content.
    pub fn write(&mut self, chunk: Bytes) -> Result<(), RemoteError> {
        let next = self.written + chunk.len() as u64;
        if let Some(limit) = self.limit
            && next > limit
        {
            return Err(RemoteError::TooLong {
                url: self.url.clone(),
                limit,
            });
        }
        let Some(f) = self.file.as_mut() else {
            return Err(self.io(std::io::Error::other("sink already finished")));
        };
        if let Err(e) = f.write_all(&chunk) {
            return Err(self.io(e));
        }
        if !self
            .hasher
            .as_ref()
            .is_some_and(|h| h.send(Msg::Chunk(chunk)))
        {
            return Err(self.io(std::io::Error::other("the hashing thread stopped")));
        }
        self.written = next;
        if self.written - self.synced >= WRITEBACK_STEP {
            if let Some(f) = &self.file {
                crate::cache::store::start_writeback(f, self.synced, self.written - self.synced);
            }
            self.synced = self.written;
        }
        Ok(())
    }

    /// Start over from byte 0 (the server ignored a Range request).
    pub fn reset(&mut self) -> Result<(), RemoteError> {
        if let Some(f) = self.file.as_mut() {
            let r = f.set_len(0).and_then(|_| f.rewind().map(|_| ()));
            if let Err(e) = r {
                return Err(self.io(e));
            }
        }
        if !self.hasher.as_ref().is_some_and(|h| h.send(Msg::Reset)) {
            return Err(self.io(std::io::Error::other("the hashing thread stopped")));
        }
        self.written = 0;
        self.synced = 0;
        Ok(())
    }

    /// Check size and digest; on success the content is staged for the cache.
    /// `expected_sha` is `sha256:<hex>` when the remote names its content.
    pub fn finish(
        mut self,
        expected_size: Option<u64>,
        expected_sha: Option<&str>,
    ) -> Result<(Staged, String), RemoteError> {
        if let Some(size) = expected_size
            && self.written != size
        {
            return Err(RemoteError::Truncated {
                url: self.url.clone(),
                expected: size,
                got: self.written,
            });
        }
        let (sha, b3) = self
            .hasher
            .take()
            .and_then(Hasher::finish)
            .ok_or_else(|| self.io(std::io::Error::other("the hashing thread stopped")))?;
        let sha = format!("sha256:{}", super::hex(&sha.finalize()));
        if let Some(want) = expected_sha
            && want != sha
        {
            return Err(RemoteError::DigestMismatch {
                url: self.url.clone(),
                expected: want.to_string(),
                actual: sha,
            });
        }
        let file = self.file.take();
        if let Some(f) = &file {
            use std::os::unix::fs::PermissionsExt;
            let r = f
                .set_permissions(std::fs::Permissions::from_mode(
                    crate::cache::store::BLOB_MODE,
                ))
                .and_then(|_| f.sync_all());
            if let Err(e) = r {
                let _ = std::fs::remove_file(&self.path);
                return Err(self.io(e));
            }
        }
        let digest = Digest::from_bytes(*b3.finalize().as_bytes());
        let staged = Staged::adopt(std::mem::take(&mut self.path), digest, self.written);
        Ok((staged, sha))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
