//! The journal of names beside the index, `v1/index.journal`: the way back from a damaged
//! `index.redb` (see the protocol in [`crate::cache::index`]).
//!
//! JSON lines, appended only under the exclusive index lock, so there is never a second
//! appender (not even on NFS, where `O_APPEND` is not atomic across clients):
//!
//! * the first line is a snapshot, `{"journal":1,"seq":S,"ops":[...]}`: every blob record,
//!   name and pin of the committed index at sequence number `S`;
//! * each later line is one write transaction, `{"seq":S,"ops":[...]}`, written before
//!   redb commits it (not flushed: see the index's protocol), `S` one more than the line
//!   before;
//! * `{"seq":S,"void":true}` says transaction `S` did not commit (its redb commit failed,
//!   or its writer died before it and the next writer found the index still at `S - 1`).
//!
//! A line cut short by a crash has no newline; the next appender ends it first, and replay
//! skips any line it cannot parse (and says how many). Replay starts from the snapshot and
//! applies every transaction that is not void, in order.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{BlobRecord, RefRecord};
use crate::error::ErrorKind;
use crate::format::digest::Digest;

/// The journal format this build writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// One change to the names, blobs or pins of the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// A name now points at `record.digest`.
    PutRef {
        name: String,
        record: RefRecord,
    },
    /// A name (and its pin) is gone.
    RemoveRef {
        name: String,
    },
    /// A blob's record, new or replaced.
    PutBlob {
        digest: Digest,
        record: BlobRecord,
    },
    /// A blob's record is gone.
    RemoveBlob {
        digest: Digest,
    },
    Pin {
        name: String,
        at: u64,
    },
    Unpin {
        name: String,
    },
}

/// One line of the journal.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Line {
    /// Present on the snapshot line only: the journal format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<u32>,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub void: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<Op>,
}

/// What the journal says the index holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub refs: BTreeMap<String, RefRecord>,
    pub blobs: BTreeMap<Digest, BlobRecord>,
    pub pins: BTreeMap<String, u64>,
}

impl State {
    pub(crate) fn apply(&mut self, op: &Op) {
        match op {
            Op::PutRef { name, record } => {
                self.refs.insert(name.clone(), record.clone());
            }
            Op::RemoveRef { name } => {
                self.refs.remove(name);
                self.pins.remove(name);
            }
            Op::PutBlob { digest, record } => {
                self.blobs.insert(*digest, record.clone());
            }
            Op::RemoveBlob { digest } => {
                self.blobs.remove(digest);
            }
            Op::Pin { name, at } => {
                self.pins.insert(name.clone(), *at);
            }
            Op::Unpin { name } => {
                self.pins.remove(name);
            }
        }
    }

    /// The state as the ops of a snapshot line: blobs, then names, then pins.
    pub(crate) fn ops(&self) -> Vec<Op> {
        let blobs = self.blobs.iter().map(|(d, r)| Op::PutBlob {
            digest: *d,
            record: r.clone(),
        });
        let refs = self.refs.iter().map(|(n, r)| Op::PutRef {
            name: n.clone(),
            record: r.clone(),
        });
        let pins = self.pins.iter().map(|(n, at)| Op::Pin {
            name: n.clone(),
            at: *at,
        });
        blobs.chain(refs).chain(pins).collect()
    }
}

/// The journal read from its start.
#[derive(Clone, Debug, Default)]
pub(crate) struct Replayed {
    pub state: State,
    /// Sequence number of the last transaction applied (or of the snapshot).
    pub seq: u64,
    /// Transactions applied after the snapshot.
    pub applied: u64,
    /// Transactions marked void.
    pub voided: u64,
    /// Line numbers (from 1) that could not be parsed and were skipped.
    pub skipped: Vec<usize>,
    /// Blobs recorded only by transactions marked void: a writer that died (or failed)
    /// between its append and its commit linked them, and no name was ever committed for
    /// them.
    pub never_committed: std::collections::BTreeSet<Digest>,
}

/// The last complete line of the journal, read by a writer to check that the journal and
/// the index agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tail {
    /// `None` when the last complete line does not parse.
    pub last: Option<(u64, bool)>,
    /// The file does not end in a newline: a line was cut short.
    pub torn: bool,
    pub len: u64,
}

/// Journal failures other than I/O.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("`{path}` does not exist")]
    Missing { path: PathBuf },
    #[error("`{path}` does not start with a snapshot line (line 1 is damaged or missing)")]
    NoSnapshot { path: PathBuf },
    #[error(
        "`{path}` is in journal format {format}, which this sregistry (format {FORMAT}) does not know; repair with a newer sregistry"
    )]
    Newer { path: PathBuf, format: u32 },
    #[error("cannot read `{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ReplayError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReplayError::Missing { .. } | ReplayError::NoSnapshot { .. } => ErrorKind::Damaged,
            ReplayError::Newer { .. } => ErrorKind::Unsupported,
            ReplayError::Io { source, .. } => ErrorKind::of_io(source),
        }
    }
}

/// The journal at `path`, opened for reading without following a link a member put at its
/// name or waiting on a FIFO.
fn open_plain(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Replay the journal at `path` from its snapshot.
pub(crate) fn replay(path: &Path) -> Result<Replayed, ReplayError> {
    let text = match open_plain(path).and_then(|mut f| {
        let mut t = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut t).map(|_| t)
    }) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReplayError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(ReplayError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Replayed::default();
    // (seq, ops) of transactions in order; a void line cancels the last one with its seq.
    let mut txns: Vec<(u64, Vec<Op>)> = Vec::new();
    let mut snapshot = None;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = serde_json::from_slice::<Line>(raw) else {
            out.skipped.push(i + 1);
            continue;
        };
        if line.journal.is_some() {
            if i == 0 {
                snapshot = Some(line);
            } else {
                out.skipped.push(i + 1);
            }
        } else if line.void {
            if txns.last().is_some_and(|(s, _)| *s == line.seq)
                && let Some((_, ops)) = txns.pop()
            {
                out.never_committed
                    .extend(ops.iter().filter_map(|op| match op {
                        Op::PutBlob { digest, .. } => Some(*digest),
                        _ => None,
                    }));
            }
            out.voided += 1;
        } else {
            txns.push((line.seq, line.ops));
        }
    }
    let Some(snapshot) = snapshot else {
        return Err(ReplayError::NoSnapshot {
            path: path.to_path_buf(),
        });
    };
    if let Some(format) = snapshot.journal.filter(|f| *f > FORMAT) {
        return Err(ReplayError::Newer {
            path: path.to_path_buf(),
            format,
        });
    }
    out.seq = snapshot.seq;
    for op in &snapshot.ops {
        out.state.apply(op);
    }
    for (seq, ops) in txns {
        for op in &ops {
            out.state.apply(op);
        }
        out.seq = seq;
        out.applied += 1;
    }
    Ok(out)
}

/// Read the journal's last complete line; `Ok(None)` when there is no journal (or it is
/// empty).
pub(crate) fn tail(path: &Path) -> io::Result<Option<Tail>> {
    // Registered with `fork` while open, as every descriptor of the index is: a child
    // forked meanwhile closes its copy (a writer reads the tail under the index lock).
    // The registration drops first, then the file closes.
    let (f, _registered) = match crate::fork::open(|| open_plain(path)) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    tail_of(&f)
}

/// [`tail`] through a descriptor already open for reading (a writer's fenced one, from
/// [`open_for_append`]), so that a write reads the journal without opening it again.
pub(crate) fn tail_of(f: &std::fs::File) -> io::Result<Option<Tail>> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    // Read back from the end, more each time, until the last complete line is in view.
    let mut want: u64 = 4096;
    loop {
        let start = len.saturating_sub(want);
        let mut buf = vec![0u8; (len - start) as usize];
        f.read_exact_at(&mut buf, start)?;
        let torn = buf.last() != Some(&b'\n');
        // The complete part ends at the last newline.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(Some(Tail {
                    last: None,
                    torn,
                    len,
                }));
            }
            want *= 4;
            continue;
        };
        let body = &buf[..end];
        match body.iter().rposition(|&b| b == b'\n') {
            Some(nl) => return Ok(Some(parse_tail(&body[nl + 1..], torn, len))),
            None if start == 0 => return Ok(Some(parse_tail(body, torn, len))),
            None => want *= 4,
        }
    }
}

fn parse_tail(line: &[u8], torn: bool, len: u64) -> Tail {
    let last = serde_json::from_slice::<Line>(line)
        .ok()
        .map(|l| (l.seq, l.void));
    Tail { last, torn, len }
}

fn encode_line(line: &Line) -> Vec<u8> {
    // Serializing these plain structs to a Vec cannot fail.
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Append one line (not flushed: see "Writing" in the index's protocol). `torn`: end a
/// line cut short first.
#[cfg(test)]
pub fn append(path: &Path, line: &Line, torn: bool) -> io::Result<()> {
    append_to(&open_for_append(path)?, line, torn)
}

/// Open the journal for appending (a writer fences this descriptor: see `lock::fence`),
/// and for reading its tail ([`tail_of`]).
pub(crate) fn open_for_append(path: &Path) -> io::Result<std::fs::File> {
    // Never through a link a member put at its name (found by a hostile test: a link to a
    // user's private journal had that user's shared commits appended to it).
    OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// [`append`] through a descriptor from [`open_for_append`].
pub(crate) fn append_to(mut f: &std::fs::File, line: &Line, torn: bool) -> io::Result<()> {
    let mut bytes = Vec::new();
    if torn {
        bytes.push(b'\n');
    }
    bytes.extend(encode_line(line));
    f.write_all(&bytes)
}

/// Replace the journal with a snapshot of `state` at `seq`: written to a temporary file
/// with `mode`, synced, renamed over the journal, the directory synced. Returns its size.
pub(crate) fn write_snapshot(path: &Path, state: &State, seq: u64, mode: u32) -> io::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".index.journal.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let bytes = encode_line(&Line {
        journal: Some(FORMAT),
        seq,
        void: false,
        ops: state.ops(),
    });
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        crate::cache::store::sync_dir(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8) -> RefRecord {
        RefRecord {
            digest: Digest::from_bytes([n; 32]),
            added: 1,
            source: None,
            labels: BTreeMap::new(),
        }
    }

    fn put(n: u8) -> Op {
        Op::PutRef {
            name: format!("lab/t{n}:1"),
            record: rec(n),
        }
    }

    #[test]
    fn replay_applies_the_snapshot_then_every_transaction_not_voided() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.journal");
        let mut s = State::default();
        s.apply(&put(1));
        write_snapshot(&p, &s, 4, 0o644).unwrap();
        let txn = |seq, ops| Line {
            seq,
            ops,
            ..Line::default()
        };
        append(&p, &txn(5, vec![put(2)]), false).unwrap();
        append(&p, &txn(6, vec![put(3)]), false).unwrap();
        let void = Line {
            seq: 6,
            void: true,
            ..Line::default()
        };
        append(&p, &void, false).unwrap();
        assert_eq!(tail(&p).unwrap().unwrap().last, Some((6, true)));
        // A line cut short, then a writer that ends it before appending its own.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":7,\"ops\":[{\"op\":\"put_r").unwrap();
        drop(f);
        let t = tail(&p).unwrap().unwrap();
        assert!(t.torn);
        assert_eq!(t.last, Some((6, true)));
        append(
            &p,
            &txn(
                7,
                vec![Op::RemoveRef {
                    name: "lab/t1:1".into(),
                }],
            ),
            true,
        )
        .unwrap();
        let r = replay(&p).unwrap();
        assert_eq!(r.seq, 7);
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.voided, 1);
        let names: Vec<&String> = r.state.refs.keys().collect();
        assert_eq!(names, vec!["lab/t2:1"]);
    }

    #[test]
    fn a_journal_in_a_newer_format_is_refused_not_half_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.journal");
        std::fs::write(&p, b"{\"journal\":2,\"seq\":0}\n").unwrap();
        assert!(matches!(
            replay(&p),
            Err(ReplayError::Newer { format: 2, .. })
        ));
    }

    #[test]
    fn a_journal_without_its_snapshot_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.journal");
        std::fs::write(&p, b"garbage\n{\"seq\":1,\"ops\":[]}\n").unwrap();
        assert!(matches!(replay(&p), Err(ReplayError::NoSnapshot { .. })));
        assert!(matches!(
            replay(&dir.path().join("none")),
            Err(ReplayError::Missing { .. })
        ));
    }
}
