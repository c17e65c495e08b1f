//! The verifying sink: every byte from a remote goes through it on its way into the
//! cache's `tmp/`.
//!
//! It counts bytes and refuses more than the declared size (or, where the remote declared
//! none, more than [`Limits::max_download`]), stops before the cache's filesystem keeps
//! less than [`Limits::min_free`], refuses an empty body, and writes into a cache
//! [`Ingest`], which hashes with BLAKE3 (the cache's own name for the content) and, on the
//! same thread, with sha256 for this sink (to check the remote's digest).
//! [`Sink::finish`] checks the count and the digest and hands back the [`Ingested`]
//! content that the cache commits. Dropped before that (any error), the file is removed.
//!
//! A download that breaks off can continue where it stopped ([`Sink::written`] bytes in;
//! the hash state carries on) or start over ([`Sink::reset`]) when the server ignores a
//! `Range`.

use std::path::PathBuf;

use bytes::Bytes;
use sha2::Digest as _;

use super::error::RemoteError;
use crate::cache::limits::{self, Limits};
use crate::cache::{Cache, Ingest, Ingested, Tap};

/// Look at the free space again after this many bytes.
const SPACE_STEP: u64 = 8 << 20;

/// The sha256 of the content, computed on the ingest's hashing thread.
struct Sha(sha2::Sha256);

impl Tap for Sha {
    fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }
    fn reset(&mut self) {
        self.0 = sha2::Sha256::new();
    }
}

/// Where a download is being written and what it has hashed so far.
pub(super) struct Sink {
    ingest: Ingest<Sha>,
    url: String,
    /// The size the remote declared.
    limit: Option<u64>,
    limits: Limits,
    /// Bytes written when the free space was last looked at.
    space_checked: u64,
}

impl Sink {
    /// A new sink in the cache's `tmp/`, for content from `url` that must not exceed
    /// `limit` bytes (the size the remote declared, if any), held to `limits`. A declared
    /// size that would not leave `limits.min_free` is refused before anything is written.
    pub(super) fn new(
        cache: &Cache,
        url: &str,
        limit: Option<u64>,
        limits: &Limits,
    ) -> Result<Sink, RemoteError> {
        let ingest = cache
            .ingest(Sha(sha2::Sha256::new()))
            .map_err(|e| RemoteError::Io {
                path: e.path,
                source: e.source,
            })?;
        let sink = Sink {
            ingest,
            url: url.to_string(),
            limit,
            limits: *limits,
            space_checked: 0,
        };
        sink.check_space(limit.unwrap_or(0))?;
        Ok(sink)
    }

    /// Refuse to go on when writing `more` bytes would leave less than the free space the
    /// cache must keep.
    fn check_space(&self, more: u64) -> Result<(), RemoteError> {
        let dir = self.path().parent().map(PathBuf::from).unwrap_or_default();
        // A filesystem that cannot say how full it is gets the benefit of the doubt.
        let Ok((free, _)) = limits::space(&dir) else {
            return Ok(());
        };
        if free.saturating_sub(more) < self.limits.min_free {
            return Err(RemoteError::NoSpace {
                url: self.url.clone(),
                dir,
                free,
                need: more,
                min_free: self.limits.min_free,
            });
        }
        Ok(())
    }

    pub(super) fn written(&self) -> u64 {
        self.ingest.written()
    }

    /// The size the remote declared, if any.
    pub(super) fn limit(&self) -> Option<u64> {
        self.limit
    }

    fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> RemoteError {
        move |source| RemoteError::Io { path, source }
    }

    fn path(&self) -> PathBuf {
        self.ingest.path().to_path_buf()
    }

    /// Take the next bytes of the content.
    pub(super) fn write(&mut self, chunk: Bytes) -> Result<(), RemoteError> {
        let next = self.ingest.written() + chunk.len() as u64;
        match self.limit {
            Some(limit) if next > limit => {
                return Err(RemoteError::TooLong {
                    url: self.url.clone(),
                    limit,
                });
            }
            None if next > self.limits.max_download => {
                return Err(RemoteError::TooLarge {
                    url: self.url.clone(),
                    max: self.limits.max_download,
                });
            }
            _ => {}
        }
        if next - self.space_checked >= SPACE_STEP || next < self.space_checked {
            // A declared size was checked against the free space at the start; the
            // filesystem is shared, so look again as it fills.
            self.check_space(chunk.len() as u64)?;
            self.space_checked = next;
        }
        let path = self.path();
        let first = self.ingest.written() == 0;
        self.ingest.write(chunk).map_err(Self::io(path))?;
        if first {
            crate::testhook::pause("download-started");
        }
        Ok(())
    }

    /// Start over from byte 0 (the server ignored a Range request).
    pub(super) fn reset(&mut self) -> Result<(), RemoteError> {
        let path = self.path();
        self.ingest.reset().map_err(Self::io(path))
    }

    /// Check size and digest; on success the content is ready for the cache to commit.
    /// `expected_sha` is `sha256:<hex>` when the remote names its content.
    pub(super) fn finish(
        mut self,
        expected_size: Option<u64>,
        expected_sha: Option<&str>,
    ) -> Result<(Ingested, String), RemoteError> {
        let written = self.ingest.written();
        if written == 0 {
            return Err(RemoteError::Empty {
                url: self.url.clone(),
            });
        }
        if let Some(size) = expected_size
            && written != size
        {
            return Err(RemoteError::Truncated {
                url: self.url.clone(),
                expected: size,
                got: written,
            });
        }
        let path = self.path();
        let sha = self.ingest.stop_hashing().map_err(Self::io(path.clone()))?;
        let sha = format!("sha256:{}", hex(&sha.0.finalize()));
        if let Some(want) = expected_sha
            && want != sha
        {
            return Err(RemoteError::DigestMismatch {
                url: self.url.clone(),
                expected: want.to_string(),
                actual: sha,
            });
        }
        let ingested = self.ingest.seal().map_err(Self::io(path))?;
        Ok((ingested, sha))
    }
}

/// Lower-case hex of the sha256 this sink computed on the ingest's hashing thread (the
/// one-shot and reader forms are `format::digest`'s).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
