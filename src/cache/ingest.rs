//! Ingest: the one way content written by a caller (a download) enters the cache.
//!
//! [`Cache::ingest`](super::Cache::ingest) opens a new file in `tmp/`; the caller writes
//! chunks into it. The chunks are hashed with BLAKE3 (the cache's name for the content)
//! on a second thread fed with the very chunks that were written (reference-counted, not
//! copied), so receiving, writing and hashing overlap; every chunk is hashed exactly once,
//! in order. A caller that checks its own digest passes a [`Tap`] that the same thread
//! feeds (the remotes' sha256). Writeback to disk is started as the file grows, so the
//! final fsync has little left to do. [`Ingest::seal`] makes the file read-only and
//! durable and hands back [`Ingested`] content, which only
//! [`Cache::commit_ingested`](super::Cache::commit_ingested) can name. Dropped before
//! that (any error), the file is removed.
//!
//! A tool that writes a file itself, by path (the converter runs `mksquashfs` into one),
//! gets a [`Scratch`] file in `tmp/` from [`Cache::scratch`](super::Cache::scratch)
//! instead; [`Scratch::seal`] hashes the finished file once (BLAKE3, memory-mapped,
//! on every core), makes it read-only and durable, and hands back the same [`Ingested`].
//! Both are named under this process's writer lock (`super::writer`): gc and verify
//! leave them alone while the process lives, however long it takes, and gc removes what
//! a killed process left after its grace period.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bytes::Bytes;

use super::store::{self, Staged};
use crate::format::digest::Digest;

/// Start writeback every this many bytes.
const WRITEBACK_STEP: u64 = 8 << 20;

/// A second hash the caller wants of the same bytes, computed on the ingest's hashing
/// thread (for example the sha256 a remote names its content by).
pub trait Tap: Send + 'static {
    fn update(&mut self, chunk: &[u8]);
    /// Forget everything (the content starts over from byte 0).
    fn reset(&mut self);
}

/// No second hash.
impl Tap for () {
    fn update(&mut self, _: &[u8]) {}
    fn reset(&mut self) {}
}

enum Msg {
    Chunk(Bytes),
    Reset,
}

/// The hashing thread: BLAKE3 and the caller's tap of every chunk, in order.
struct Hasher<T: Tap> {
    tx: Option<mpsc::SyncSender<Msg>>,
    handle: Option<std::thread::JoinHandle<(T, blake3::Hasher)>>,
}

impl<T: Tap> Hasher<T> {
    fn start(mut tap: T) -> Hasher<T> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(64);
        let handle = std::thread::spawn(move || {
            let mut b3 = blake3::Hasher::new();
            for m in rx {
                match m {
                    Msg::Chunk(c) => {
                        tap.update(&c);
                        b3.update(&c);
                    }
                    Msg::Reset => {
                        tap.reset();
                        b3 = blake3::Hasher::new();
                    }
                }
            }
            (tap, b3)
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
    fn stop(&mut self) -> Option<(T, blake3::Hasher)> {
        drop(self.tx.take());
        self.handle.take()?.join().ok()
    }
}

impl<T: Tap> Drop for Hasher<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a new ingest file could not be made: the directory and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct IngestError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl IngestError {
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::of_io(&self.source)
    }
}

fn stopped() -> io::Error {
    io::Error::other("the hashing thread stopped")
}

/// Content being written into `tmp/`, hashed as it goes.
pub struct Ingest<T: Tap = ()> {
    file: Option<File>,
    path: PathBuf,
    hasher: Option<Hasher<T>>,
    /// The BLAKE3 digest, once [`Ingest::stop_hashing`] has run.
    digest: Option<Digest>,
    written: u64,
    synced: u64,
}

/// Content that is complete, read-only and durable in `tmp/`, with its digest: ready for
/// [`Cache::commit_ingested`](super::Cache::commit_ingested). Dropping it removes the file.
pub struct Ingested {
    pub(super) staged: Staged,
}

impl Ingested {
    pub fn digest(&self) -> Digest {
        self.staged.digest()
    }
    pub fn size(&self) -> u64 {
        self.staged.size()
    }
    /// The read-only file in `tmp/`, for reading it before it is committed.
    pub fn path(&self) -> &Path {
        self.staged.path()
    }
}

/// An empty file in `tmp/` that a tool fills by its path; see the module documentation.
/// Dropped before [`Scratch::seal`], the file is removed.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub(super) fn new(store: &store::Store) -> Result<Scratch, IngestError> {
        let (_, path) = store.new_ingest_file().map_err(|e| IngestError {
            path: store.tmp_dir().to_path_buf(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(Scratch { path })
    }

    /// The file to write.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file is complete: hash it, make it read-only and durable.
    pub fn seal(mut self) -> io::Result<Ingested> {
        let path = std::mem::take(&mut self.path);
        let sealed = (|| {
            // Opened first and hashed through that descriptor (see `Staged::adopt`).
            let f = File::open(&path)?;
            // Made by this process (mode 0600): a file of anyone else's is not it.
            use std::os::unix::fs::MetadataExt;
            // SAFETY: geteuid cannot fail.
            if f.metadata()?.uid() != unsafe { libc::geteuid() } {
                return Err(io::Error::other(store::StoreError::Replaced {
                    path: path.clone(),
                }));
            }
            let (digest, size) = store::hash_open_file(&f, &path)?;
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(store::BLOB_MODE))?;
            f.sync_all()?;
            Ok((digest, size, f))
        })();
        match sealed {
            Ok((digest, size, f)) => Ok(Ingested {
                staged: Staged::adopt(path, Some(&f), digest, size),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
            store::untrack(&self.path);
        }
    }
}

impl<T: Tap> Ingest<T> {
    pub(super) fn new(store: &store::Store, tap: T) -> Result<Ingest<T>, IngestError> {
        let (file, path) = store.new_ingest_file().map_err(|e| IngestError {
            path: store.tmp_dir().to_path_buf(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(Ingest {
            file: Some(file),
            path,
            hasher: Some(Hasher::start(tap)),
            digest: None,
            written: 0,
            synced: 0,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The file in `tmp/` being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write and hash the next bytes of the content.
    pub fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let next = self.written + chunk.len() as u64;
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("sink already finished"));
        };
        f.write_all(&chunk)?;
        if !self
            .hasher
            .as_ref()
            .is_some_and(|h| h.send(Msg::Chunk(chunk)))
        {
            return Err(stopped());
        }
        self.written = next;
        if self.written - self.synced >= WRITEBACK_STEP {
            if let Some(f) = &self.file {
                store::start_writeback(f, self.synced, self.written - self.synced);
            }
            self.synced = self.written;
        }
        Ok(())
    }

    /// Start over from byte 0.
    pub fn reset(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.set_len(0).and_then(|_| f.rewind().map(|_| ()))?;
        }
        if !self.hasher.as_ref().is_some_and(|h| h.send(Msg::Reset)) {
            return Err(stopped());
        }
        self.written = 0;
        self.synced = 0;
        Ok(())
    }

    /// No more bytes: wait for the hashes and hand back the caller's tap (to check its
    /// digest before [`Ingest::seal`]).
    pub fn stop_hashing(&mut self) -> io::Result<T> {
        let (tap, b3) = self
            .hasher
            .as_mut()
            .and_then(Hasher::stop)
            .ok_or_else(stopped)?;
        self.digest = Some(Digest::from_bytes(*b3.finalize().as_bytes()));
        Ok(tap)
    }

    /// Make the file read-only and durable: the content is ready to commit. Stops the
    /// hashing first if [`Ingest::stop_hashing`] has not.
    pub fn seal(mut self) -> io::Result<Ingested> {
        if self.digest.is_none() {
            self.stop_hashing()?;
        }
        let digest = self.digest.ok_or_else(stopped)?;
        let file = self.file.take();
        if let Some(f) = &file {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(store::BLOB_MODE))
                .and_then(|_| f.sync_all())?;
            // The file holds what was hashed and nothing else (see `Staged::adopt`).
            if f.metadata()?.len() != self.written {
                return Err(io::Error::other(store::StoreError::Replaced {
                    path: self.path.clone(),
                }));
            }
        }
        let path = std::mem::take(&mut self.path);
        Ok(Ingested {
            staged: Staged::adopt(path, file.as_ref(), digest, self.written),
        })
    }
}

impl<T: Tap> Drop for Ingest<T> {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
            store::untrack(&self.path);
        }
    }
}
