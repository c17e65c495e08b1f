//! The verifying sink: every byte from a remote goes through it on its way into the
//! cache's `tmp/`.
//!
//! It counts bytes and refuses more than the declared size, and writes into a cache
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

use super::RemoteError;
use crate::cache::{Cache, Ingest, Ingested, Tap};

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
pub struct Sink {
    ingest: Ingest<Sha>,
    url: String,
    limit: Option<u64>,
}

impl Sink {
    /// A new sink in the cache's `tmp/`, for content from `url` that must not exceed
    /// `limit` bytes.
    pub fn new(cache: &Cache, url: &str, limit: Option<u64>) -> Result<Sink, RemoteError> {
        let ingest = cache
            .ingest(Sha(sha2::Sha256::new()))
            .map_err(|e| RemoteError::Io {
                path: e.path,
                source: e.source,
            })?;
        Ok(Sink {
            ingest,
            url: url.to_string(),
            limit,
        })
    }

    pub fn written(&self) -> u64 {
        self.ingest.written()
    }

    /// The size the remote declared, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn io(path: PathBuf) -> impl FnOnce(std::io::Error) -> RemoteError {
        move |source| RemoteError::Io { path, source }
    }

    fn path(&self) -> PathBuf {
        self.ingest.path().to_path_buf()
    }

    /// Take the next bytes of the content.
    pub fn write(&mut self, chunk: Bytes) -> Result<(), RemoteError> {
        let next = self.ingest.written() + chunk.len() as u64;
        if let Some(limit) = self.limit
            && next > limit
        {
            return Err(RemoteError::TooLong {
                url: self.url.clone(),
                limit,
            });
        }
        let path = self.path();
        self.ingest.write(chunk).map_err(Self::io(path))
    }

    /// Start over from byte 0 (the server ignored a Range request).
    pub fn reset(&mut self) -> Result<(), RemoteError> {
        let path = self.path();
        self.ingest.reset().map_err(Self::io(path))
    }

    /// Check size and digest; on success the content is ready for the cache to commit.
    /// `expected_sha` is `sha256:<hex>` when the remote names its content.
    pub fn finish(
        mut self,
        expected_size: Option<u64>,
        expected_sha: Option<&str>,
    ) -> Result<(Ingested, String), RemoteError> {
        let written = self.ingest.written();
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
        let sha = format!("sha256:{}", super::hex(&sha.0.finalize()));
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
