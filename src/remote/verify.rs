//! The verifying sink: every byte from a remote goes through it on its way into `tmp/`.
//!
//! It counts bytes and refuses more than the declared size, hashes with sha256 (to check
//! the remote's digest) and BLAKE3 (the cache's own name for the content) in the same
//! pass, and writes to a new file in `tmp/`. [`Sink::finish`] checks the count and the
//! digest, makes the file read-only and durable, and hands back a [`Staged`] file that
//! the cache commits. Dropped before that (any error), the file is removed.
//!
//! A download that breaks off can continue where it stopped ([`Sink::written`] bytes in;
//! the hash state carries on) or start over ([`Sink::reset`]) when the server ignores a
//! `Range`.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::PathBuf;

use sha2::Digest as _;

use super::RemoteError;
use crate::digest::Digest;
use crate::store::{Staged, Store};

/// Where a download is being written and what it has hashed so far.
pub struct Sink {
    file: Option<File>,
    path: PathBuf,
    url: String,
    sha: sha2::Sha256,
    b3: blake3::Hasher,
    written: u64,
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
            sha: sha2::Sha256::new(),
            b3: blake3::Hasher::new(),
            written: 0,
            limit,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
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
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), RemoteError> {
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
        if let Err(e) = f.write_all(chunk) {
            return Err(self.io(e));
        }
        self.sha.update(chunk);
        self.b3.update(chunk);
        self.written = next;
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
        self.sha = sha2::Sha256::new();
        self.b3 = blake3::Hasher::new();
        self.written = 0;
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
        let sha = format!("sha256:{}", super::hex(&self.sha.clone().finalize()));
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
                .set_permissions(std::fs::Permissions::from_mode(crate::store::BLOB_MODE))
                .and_then(|_| f.sync_all());
            if let Err(e) = r {
                let _ = std::fs::remove_file(&self.path);
                return Err(self.io(e));
            }
        }
        let digest = Digest::from_bytes(*self.b3.finalize().as_bytes());
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
