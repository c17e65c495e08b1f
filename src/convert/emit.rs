//! Pass 2: the final view written as one uncompressed tar stream, in an order `mksquashfs -tar`
//! (or any tar reader) can apply without looking back:
//!
//! 1. every directory, parents before children (the view's sorted order);
//! 2. the generated `/.singularity.d/` files;
//! 3. regular files, each inode once, at the first (smallest) of its surviving paths, with
//!    its data streamed from its layer as the layers are read again in order; a layer whose
//!    files all lost to later layers is not read again, and reading a layer stops after its
//!    last surviving file;
//! 4. symlinks, FIFOs, and the other paths of each inode as hardlinks to the path of step 3.
//!
//! Owners, modes and mtimes come from the view; nothing depends on who runs the conversion.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::{EntryType, Header};

use super::merge::{Meta, Node, View, Xattrs};

/// What pass 2 writes, computed from the view.
pub(crate) struct Plan<'v> {
    dirs: Vec<(&'v [u8], Meta)>,
    generated: Vec<(&'v [u8], &'v [u8], Meta)>,
    /// (layer, entry index) of each surviving inode's data → its first path and attributes.
    files: HashMap<(usize, usize), FileOut<'v>>,
    /// Per layer, how many of `files` it holds.
    per_layer: HashMap<usize, usize>,
    rest: Vec<(&'v [u8], Rest<'v>)>,
}

/// A regular file of the stream: its first path, size, attributes.
struct FileOut<'v> {
    path: &'v [u8],
    size: u64,
    meta: Meta,
    xattrs: &'v Xattrs,
}

enum Rest<'v> {
    Symlink(&'v [u8], Meta),
    Fifo(Meta),
    Hardlink(&'v [u8]),
}

/// Why pass 2 stopped.
#[derive(Debug)]
pub(crate) enum EmitError {
    /// Reading layer `layer` failed at or after `entry` (its raw name).
    Read {
        layer: usize,
        entry: Option<Vec<u8>>,
        source: io::Error,
    },
    /// Writing the stream failed (the consumer went away).
    Write(io::Error),
    /// A layer ended before one of its surviving files (it changed since pass 1).
    Missing { layer: usize },
}

impl<'v> Plan<'v> {
    pub(crate) fn new(view: &'v View) -> Plan<'v> {
        let mut plan = Plan {
            dirs: Vec::new(),
            generated: Vec::new(),
            files: HashMap::new(),
            per_layer: HashMap::new(),
            rest: Vec::new(),
        };
        let mut first: HashMap<usize, &'v [u8]> = HashMap::new();
        for (path, node) in &view.nodes {
            let path = path.as_slice();
            match node {
                Node::Dir(m) => plan.dirs.push((path, *m)),
                Node::Generated(data, m) => plan.generated.push((path, data, *m)),
                Node::Symlink(to, m) => plan.rest.push((path, Rest::Symlink(to, *m))),
                Node::Fifo(m) => plan.rest.push((path, Rest::Fifo(*m))),
                Node::File(id) => match first.get(id) {
                    Some(primary) => plan.rest.push((path, Rest::Hardlink(primary))),
                    None => {
                        first.insert(*id, path);
                        let ino = &view.inodes[*id];
                        let out = FileOut {
                            path,
                            size: ino.size,
                            meta: ino.meta,
                            xattrs: &ino.xattrs,
                        };
                        plan.files.insert((ino.layer, ino.index), out);
                        *plan.per_layer.entry(ino.layer).or_default() += 1;
                    }
                },
            }
        }
        plan
    }

    /// Number of entries the stream holds.
    pub(crate) fn entries(&self) -> u64 {
        (self.dirs.len() + self.generated.len() + self.files.len() + self.rest.len()) as u64
    }

    /// Write the stream to `out`; `open(layer)` gives a layer's tar stream again.
    pub(crate) fn write<W: Write>(
        &self,
        layers: usize,
        mut open: impl FnMut(usize) -> io::Result<Box<dyn Read>>,
        out: W,
    ) -> Result<W, EmitError> {
        let mut tar = tar::Builder::new(out);
        let w = EmitError::Write;
        for (path, meta) in &self.dirs {
            let mut h = header(EntryType::Directory, meta, 0);
            tar.append_data(&mut h, os(path), io::empty()).map_err(w)?;
        }
        for (path, data, meta) in &self.generated {
            let mut h = header(EntryType::Regular, meta, data.len() as u64);
            tar.append_data(&mut h, os(path), *data).map_err(w)?;
        }
        for layer in 0..layers {
            let Some(&wanted) = self.per_layer.get(&layer) else {
                continue;
            };
            self.copy_files(layer, wanted, &mut open, &mut tar)?;
        }
        for (path, rest) in &self.rest {
            match rest {
                Rest::Symlink(to, meta) => {
                    let mut h = header(EntryType::Symlink, meta, 0);
                    tar.append_link(&mut h, os(path), os(to)).map_err(w)?;
                }
                Rest::Fifo(meta) => {
                    let mut h = header(EntryType::Fifo, meta, 0);
                    tar.append_data(&mut h, os(path), io::empty()).map_err(w)?;
                }
                Rest::Hardlink(to) => {
                    let mut h = header(
                        EntryType::Link,
                        &Meta {
                            mode: 0o644,
                            uid: 0,
                            gid: 0,
                            mtime: 0,
                        },
                        0,
                    );
                    tar.append_link(&mut h, os(path), os(to)).map_err(w)?;
                }
            }
        }
        tar.into_inner().map_err(w)
    }

    fn copy_files<W: Write>(
        &self,
        layer: usize,
        mut wanted: usize,
        open: &mut impl FnMut(usize) -> io::Result<Box<dyn Read>>,
        tar: &mut tar::Builder<W>,
    ) -> Result<(), EmitError> {
        let mut last: Option<Vec<u8>> = None;
        let read_err = |last: &Option<Vec<u8>>, source| EmitError::Read {
            layer,
            entry: last.clone(),
            source,
        };
        let mut archive = tar::Archive::new(open(layer).map_err(|e| read_err(&None, e))?);
        let entries = archive.entries().map_err(|e| read_err(&None, e))?;
        for (index, entry) in entries.enumerate() {
            let entry = entry.map_err(|e| read_err(&last, e))?;
            last = Some(entry.path_bytes().into_owned());
            let Some(FileOut {
                path,
                size,
                meta,
                xattrs,
            }) = self.files.get(&(layer, index))
            else {
                continue;
            };
            if !xattrs.is_empty() {
                append_pax(tar, xattrs).map_err(EmitError::Write)?;
            }
            let mut h = header(EntryType::Regular, meta, *size);
            let mut src = Exact {
                inner: entry,
                left: *size,
                failed: None,
            };
            if let Err(e) = tar.append_data(&mut h, os(path), &mut src) {
                return Err(match src.failed {
                    Some(source) => read_err(&last, source),
                    None => EmitError::Write(e),
                });
            }
            wanted -= 1;
            if wanted == 0 {
                return Ok(());
            }
        }
        Err(EmitError::Missing { layer })
    }
}

/// A PAX extended header carrying `xattrs` as `SCHILY.xattr.NAME` records, for the entry
/// that follows it.
fn append_pax<W: Write>(tar: &mut tar::Builder<W>, xattrs: &Xattrs) -> io::Result<()> {
    let mut records = Vec::new();
    for (name, value) in xattrs {
        let mut body = b" SCHILY.xattr.".to_vec();
        body.extend_from_slice(name);
        body.push(b'=');
        body.extend_from_slice(value);
        body.push(b'\n');
        // The record's length counts its own decimal digits.
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        records.extend_from_slice(len.to_string().as_bytes());
        records.extend_from_slice(&body);
    }
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::XHeader);
    h.set_path("././@PaxHeader")?;
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(records.len() as u64);
    h.set_cksum();
    tar.append(&h, records.as_slice())
}

fn os(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

fn header(kind: EntryType, meta: &Meta, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_uid(meta.uid);
    h.set_gid(meta.gid);
    h.set_mtime(meta.mtime);
    h.set_size(size);
    h
}

/// Exactly `left` bytes of `inner`, or an error: a short source must never leave the tar
/// stream with fewer bytes than its header declares. Read errors are kept in `failed`, to
/// tell them from write errors.
struct Exact<R> {
    inner: R,
    left: u64,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.left.try_into().unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..max]) {
            Ok(0) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the layer ends inside this entry's data",
                );
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
                return Err(e);
            }
            Ok(n) => n,
            Err(e) => {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
                return Err(e);
            }
        };
        self.left -= n as u64;
        Ok(n)
    }
}
