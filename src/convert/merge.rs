//! Pass 1: the final view of the root filesystem, computed from the layers' tar headers
//! alone (no data, no I/O here).
//!
//! The view maps each normalized path (relative to the root, no `.`, `..` or empty
//! components, no leading `/`) to a [`Node`]. Layers are applied in order, each in two
//! steps, as the OCI image spec's "Representing Changes" section asks:
//!
//! 1. its whiteouts, which hide only what lower layers put there: `DIR/.wh.NAME` removes
//!    `DIR/NAME` and everything under it, `DIR/.wh..wh..opq` removes everything under
//!    `DIR` (keeping `DIR`), other `.wh..wh.*` names are ignored;
//! 2. its other entries in tar order: a directory over a directory changes only the
//!    directory's own attributes (its children stay); anything else replaces what was at
//!    the path, a whole subtree included.
//!
//! An absolute entry name (`/etc/x`) is read relative to the root, as `tar` and `umoci`
//! read it: it is kept, not refused. Every entry's parent is resolved through the view as
//! it stands, following symlinks the layers laid down with `..` and absolute targets held
//! inside the root (as `umoci` does): an entry written "through" a symlink to `/`, `/etc`
//! or `../../..` lands inside the root, not refused either. Both are safe: nothing is
//! written to disk here, and every path of the view is inside the root. A name that `..`
//! takes above the root, and a hardlink whose target does so, are refused; missing
//! parents are made as directories (0755, root). Regular files become inodes: a hardlink
//! shares its target's inode as it stood when the link was applied, so the link keeps the
//! original content even when a later layer replaces or deletes the target path. Device
//! nodes are skipped and reported, as rootless unpackers do (an unprivileged runtime
//! cannot use them, and a squashfs written for a cluster should not carry them).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// Owner, group, permission bits (setuid, setgid and sticky included) and mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl Meta {
    /// A directory the layers did not declare but whose children they hold.
    pub(crate) const IMPLICIT_DIR: Meta = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
}

/// Extended attributes (name, value), from PAX `SCHILY.xattr.*` records.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a tar header declares, as pass 1 needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EntryKind {
    File {
        size: u64,
        xattrs: Xattrs,
    },
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Fifo,
    Device,
    /// Another tar type flag (GNU sparse, volume labels, …): refused.
    Unsupported(u8),
}

/// One entry of a layer: its position in the layer's entry sequence, its raw name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub index: usize,
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub meta: Meta,
}

/// What a path holds in the final view.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Dir(Meta),
    /// A regular file: an index into [`View::inodes`]; paths sharing one are hardlinks.
    File(usize),
    Symlink(Vec<u8>, Meta),
    Fifo(Meta),
    /// A file the conversion adds (`/.singularity.d/…`), with its content.
    Generated(Vec<u8>, Meta),
}

/// A regular file's content: where its data is (layer, entry index), its size and attributes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inode {
    pub layer: usize,
    pub index: usize,
    pub size: u64,
    pub meta: Meta,
    pub xattrs: Xattrs,
}

/// An entry left out, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Skip {
    pub layer: usize,
    pub path: Vec<u8>,
    pub reason: &'static str,
}

/// Why an entry makes the layer unusable.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Problem {
    /// `..` takes the name above the root.
    Escapes,
    /// A hardlink target outside the root.
    LinkOutside(Vec<u8>),
    /// A hardlink to a path nothing is at.
    LinkMissing(Vec<u8>),
    /// A hardlink to a directory (or to the root).
    LinkToDir(Vec<u8>),
    /// A parent component is a file, not a directory.
    NotADirectory(Vec<u8>),
    /// More than [`MAX_SYMLINKS`] symlinks on the way.
    SymlinkLoop,
    /// A whiteout that names nothing (`.wh.`, `.wh..`, `.wh..`).
    BadWhiteout,
    Unsupported(u8),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        match self {
            Problem::Escapes => write!(f, "climbs above the root with `..`"),
            Problem::LinkOutside(t) => write!(f, "is a hardlink to `{}`, outside the root", s(t)),
            Problem::LinkMissing(t) => {
                write!(f, "is a hardlink to `{}`, which no layer holds", s(t))
            }
            Problem::LinkToDir(t) => write!(f, "is a hardlink to the directory `{}`", s(t)),
            Problem::NotADirectory(p) => {
                write!(f, "has `{}` as a parent, which is not a directory", s(p))
            }
            Problem::SymlinkLoop => {
                write!(f, "is reached through more than {MAX_SYMLINKS} symlinks")
            }
            Problem::BadWhiteout => write!(f, "is a whiteout that names nothing"),
            Problem::Unsupported(t) => {
                write!(f, "has the unsupported tar type `{}`", char::from(*t))
            }
        }
    }
}

/// Symlinks followed while resolving one path, as Linux allows.
pub(crate) const MAX_SYMLINKS: usize = 40;
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT_META: &[u8] = b".wh..wh.";

/// The root filesystem as the layers applied so far leave it.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// The root directory's attributes (from a `./` entry), if a layer gave them.
    pub root: Option<Meta>,
    pub nodes: BTreeMap<Vec<u8>, Node>,
    pub inodes: Vec<Inode>,
    pub skipped: Vec<Skip>,
}

/// `raw` as a normalized relative path; a leading `/` is dropped (tar and umoci read
/// absolute names relative to the root), `..` above the root is an error.
pub(crate) fn normalize(raw: &[u8]) -> Result<Vec<u8>, Problem> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop().ok_or(Problem::Escapes)?;
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join(&b'/'))
}

/// `dir/name`, or `name` when `dir` is the root.
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// (parent, last component) of a normalized, non-empty path.
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

impl View {
    /// Apply one layer's entries (in tar order): its whiteouts first, then the rest.
    /// On a refused entry, returns its raw name and the problem.
    pub(crate) fn apply_layer(
        &mut self,
        layer: usize,
        entries: &[Entry],
    ) -> Result<(), (Vec<u8>, Problem)> {
        let is_whiteout = |e: &Entry| {
            let name = e
                .path
                .rsplit(|&b| b == b'/')
                .find(|c| !c.is_empty())
                .unwrap_or(b"");
            name.starts_with(WHITEOUT)
        };
        for e in entries.iter().filter(|e| is_whiteout(e)) {
            self.apply_whiteout(&e.path)
                .map_err(|p| (e.path.clone(), p))?;
        }
        for e in entries.iter().filter(|e| !is_whiteout(e)) {
            self.apply_entry(layer, e)
                .map_err(|p| (e.path.clone(), p))?;
        }
        Ok(())
    }

    fn apply_whiteout(&mut self, raw: &[u8]) -> Result<(), Problem> {
        let norm = normalize(raw)?;
        let (parent, name) = split_last(&norm);
        let dir = match self.resolve_dir(parent) {
            Ok(dir) => dir,
            // Nothing lower can be under a file: nothing to hide.
            Err(Problem::NotADirectory(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if name == OPAQUE {
            self.remove_children(&dir);
        } else if name.starts_with(WHITEOUT_META) {
            // Other AUFS bookkeeping names carry no change.
        } else {
            let hidden = &name[WHITEOUT.len()..];
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(Problem::BadWhiteout);
            }
            self.remove_subtree(&join(&dir, hidden));
        }
        Ok(())
    }

    fn apply_entry(&mut self, layer: usize, e: &Entry) -> Result<(), Problem> {
        let norm = normalize(&e.path)?;
        if norm.is_empty() {
            match e.kind {
                EntryKind::Dir => self.root = Some(e.meta),
                _ => self.skip(layer, e, "the root can only be a directory"),
            }
            return Ok(());
        }
        if e.kind == EntryKind::Device {
            self.skip(
                layer,
                e,
                "device node (not created, as by rootless unpackers)",
            );
            return Ok(());
        }
        let (parent, name) = split_last(&norm);
        let dir = self.resolve_dir(parent)?;
        let target = join(&dir, name);
        let node = match &e.kind {
            EntryKind::Dir => {
                if let Some(Node::Dir(meta)) = self.nodes.get_mut(&target) {
                    *meta = e.meta;
                    return Ok(());
                }
                Node::Dir(e.meta)
            }
            EntryKind::File { size, xattrs } => {
                self.inodes.push(Inode {
                    layer,
                    index: e.index,
                    size: *size,
                    meta: e.meta,
                    xattrs: xattrs.clone(),
                });
                Node::File(self.inodes.len() - 1)
            }
            EntryKind::Symlink(to) => Node::Symlink(to.clone(), e.meta),
            EntryKind::Fifo => Node::Fifo(e.meta),
            EntryKind::Hardlink(to) => {
                let linked = self.link_target(to)?;
                if linked.0 == target {
                    return Ok(());
                }
                linked.1
            }
            EntryKind::Device => unreachable!("handled above"),
            EntryKind::Unsupported(t) => return Err(Problem::Unsupported(*t)),
        };
        self.make_parents(&dir);
        self.remove_subtree(&target);
        self.nodes.insert(target, node);
        Ok(())
    }

    /// The path and node a hardlink's target names, as the view stands.
    fn link_target(&self, to: &[u8]) -> Result<(Vec<u8>, Node), Problem> {
        let norm = normalize(to).map_err(|_| Problem::LinkOutside(to.to_vec()))?;
        if norm.is_empty() {
            return Err(Problem::LinkToDir(to.to_vec()));
        }
        let (parent, name) = split_last(&norm);
        let path = join(&self.resolve_dir(parent)?, name);
        match self.nodes.get(&path) {
            None | Some(Node::Generated(..)) => Err(Problem::LinkMissing(to.to_vec())),
            Some(Node::Dir(_)) => Err(Problem::LinkToDir(to.to_vec())),
            Some(node) => {
                let node = node.clone();
                Ok((path, node))
            }
        }
    }

    fn skip(&mut self, layer: usize, e: &Entry, reason: &'static str) {
        self.skipped.push(Skip {
            layer,
            path: e.path.clone(),
            reason,
        });
    }

    /// The directory `path` (normalized) names, its symlinks followed inside the root;
    /// components nothing is at yet count as directories.
    pub(crate) fn resolve_dir(&self, path: &[u8]) -> Result<Vec<u8>, Problem> {
        let mut done: Vec<Vec<u8>> = Vec::new();
        let mut todo: VecDeque<Vec<u8>> = path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            let here = join(&done.join(&b'/'), &c);
            match self.nodes.get(&here) {
                None | Some(Node::Dir(_)) => done.push(c),
                Some(Node::Symlink(to, _)) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Problem::SymlinkLoop);
                    }
                    if to.starts_with(b"/") {
                        done.clear();
                    }
                    for part in to.split(|&b| b == b'/').rev() {
                        todo.push_front(part.to_vec());
                    }
                }
                Some(_) => return Err(Problem::NotADirectory(here)),
            }
        }
        Ok(done.join(&b'/'))
    }

    /// Make the missing directories of `dir` (resolved: every present component is one).
    fn make_parents(&mut self, dir: &[u8]) {
        if dir.is_empty() {
            return;
        }
        for (i, _) in dir.iter().enumerate().filter(|&(_, &b)| b == b'/') {
            self.nodes
                .entry(dir[..i].to_vec())
                .or_insert(Node::Dir(Meta::IMPLICIT_DIR));
        }
        self.nodes
            .entry(dir.to_vec())
            .or_insert(Node::Dir(Meta::IMPLICIT_DIR));
    }

    /// Remove `path` and everything under it.
    pub(crate) fn remove_subtree(&mut self, path: &[u8]) {
        self.nodes.remove(path);
        self.remove_children(path);
    }

    /// Remove everything under `dir` (the root when empty), keeping `dir`.
    pub(crate) fn remove_children(&mut self, dir: &[u8]) {
        if dir.is_empty() {
            self.nodes.clear();
            return;
        }
        let lo = join(dir, b"");
        let mut hi = dir.to_vec();
        hi.push(b'/' + 1);
        let doomed: Vec<Vec<u8>> = self.nodes.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: 1,
        }
    }

    /// A layer from (name, kind) pairs, mode 0644 (0755 for directories).
    fn layer(spec: &[(&str, EntryKind)]) -> Vec<Entry> {
        spec.iter()
            .enumerate()
            .map(|(index, (p, k))| Entry {
                index,
                path: p.as_bytes().to_vec(),
                kind: k.clone(),
                meta: meta(if *k == EntryKind::Dir { 0o755 } else { 0o644 }),
            })
            .collect()
    }

    fn file(n: u64) -> EntryKind {
        EntryKind::File {
            size: n,
            xattrs: Vec::new(),
        }
    }

    fn view(layers: &[Vec<Entry>]) -> View {
        let mut v = View::default();
        for (i, l) in layers.iter().enumerate() {
            v.apply_layer(i, l).unwrap();
        }
        v
    }

    fn paths(v: &View) -> Vec<String> {
        v.nodes
            .keys()
            .map(|k| String::from_utf8(k.clone()).unwrap())
            .collect()
    }

    /// The (layer, entry) a file path's content comes from.
    fn source(v: &View, p: &str) -> (usize, usize) {
        match v.nodes.get(p.as_bytes()) {
            Some(Node::File(i)) => (v.inodes[*i].layer, v.inodes[*i].index),
            other => panic!("{p} is {other:?}"),
        }
    }

    fn refused(layers: &[Vec<Entry>]) -> (String, Problem) {
        let mut v = View::default();
        for (i, l) in layers.iter().enumerate() {
            if let Err((p, e)) = v.apply_layer(i, l) {
                return (String::from_utf8(p).unwrap(), e);
            }
        }
        panic!("accepted: {:?}", paths(&v));
    }

    #[test]
    fn normalize_drops_dots_and_leading_slash_and_refuses_escape() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(normalize(b"/etc/passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalize(b"a/../b").unwrap(), b"b");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b"a/../../etc/passwd"), Err(Problem::Escapes));
        assert_eq!(normalize(b"../x"), Err(Problem::Escapes));
    }

    /// A `.wh.NAME` hides the lower file and a lower directory's whole subtree.
    #[test]
    fn whiteout_removes_file_and_subtree() {
        let v = view(&[
            layer(&[
                ("etc/", EntryKind::Dir),
                ("etc/gone", file(1)),
                ("etc/keep", file(1)),
            ]),
            layer(&[
                ("etc/", EntryKind::Dir),
                ("etc/sub/", EntryKind::Dir),
                ("etc/sub/f", file(1)),
            ]),
            layer(&[("etc/.wh.gone", file(0)), ("etc/.wh.sub", file(0))]),
        ]);
        assert_eq!(paths(&v), ["etc", "etc/keep"]);
    }

    /// A whiteout hides only lower layers: the same layer's file of that name stays,
    /// whatever the order of the two entries in the tar.
    #[test]
    fn whiteout_spares_its_own_layer() {
        let v = view(&[
            layer(&[("a", file(1))]),
            layer(&[("a", file(2)), (".wh.a", file(0))]),
        ]);
        assert_eq!(paths(&v), ["a"]);
        assert_eq!(source(&v, "a"), (1, 0));
    }

    /// An opaque marker empties the directory of lower entries, keeps the directory and
    /// the same layer's new children, and leaves siblings of the directory alone.
    #[test]
    fn opaque_dir_keeps_only_this_layers_children() {
        let v = view(&[
            layer(&[
                ("data/", EntryKind::Dir),
                ("data/old", file(1)),
                ("data/deep/", EntryKind::Dir),
                ("data/deep/x", file(1)),
                ("data-sibling", file(1)),
                ("data0", file(1)),
            ]),
            layer(&[("data/new", file(1)), ("data/.wh..wh..opq", file(0))]),
        ]);
        assert_eq!(paths(&v), ["data", "data-sibling", "data/new", "data0"]);
    }

    /// A directory entry over a directory changes its mode but keeps the lower children.
    #[test]
    fn dir_over_dir_merges() {
        let mut l2 = layer(&[("d/", EntryKind::Dir), ("d/b", file(1))]);
        l2[0].meta.mode = 0o700;
        let v = view(&[layer(&[("d/", EntryKind::Dir), ("d/a", file(1))]), l2]);
        assert_eq!(paths(&v), ["d", "d/a", "d/b"]);
        assert_eq!(v.nodes[&b"d"[..]], Node::Dir(meta(0o700)));
    }

    /// A file replacing a directory drops the directory's subtree; a directory replacing
    /// the file afterwards starts empty.
    #[test]
    fn file_replaces_dir_and_back() {
        let l1 = layer(&[
            ("x/", EntryKind::Dir),
            ("x/in", file(1)),
            ("x/sub/", EntryKind::Dir),
        ]);
        let v = view(&[l1.clone(), layer(&[("x", file(5))])]);
        assert_eq!(paths(&v), ["x"]);
        assert_eq!(source(&v, "x"), (1, 0));
        let v = view(&[
            l1,
            layer(&[("x", file(5))]),
            layer(&[("x/", EntryKind::Dir), ("x/new", file(1))]),
        ]);
        assert_eq!(paths(&v), ["x", "x/new"]);
        assert!(matches!(v.nodes[&b"x"[..]], Node::Dir(_)));
    }

    /// A hardlink shares its target's inode, and keeps the original content when a later
    /// layer replaces the target path or deletes it.
    #[test]
    fn hardlink_keeps_content_when_target_replaced() {
        let base = layer(&[
            ("bin/", EntryKind::Dir),
            ("bin/a", file(3)),
            ("bin/b", EntryKind::Hardlink(b"bin/a".to_vec())),
        ]);
        let v = view(std::slice::from_ref(&base));
        assert_eq!(v.nodes[&b"bin/a"[..]], v.nodes[&b"bin/b"[..]]);
        let v = view(&[base.clone(), layer(&[("bin/a", file(9))])]);
        assert_eq!(source(&v, "bin/b"), (0, 1));
        assert_eq!(source(&v, "bin/a"), (1, 0));
        let v = view(&[base, layer(&[("bin/.wh.a", file(0))])]);
        assert_eq!(paths(&v), ["bin", "bin/b"]);
        assert_eq!(source(&v, "bin/b"), (0, 1));
    }

    /// Hardlinks to a lower layer's file resolve against the view, not only this layer.
    #[test]
    fn hardlink_to_lower_layer() {
        let v = view(&[
            layer(&[("f", file(1))]),
            layer(&[("g", EntryKind::Hardlink(b"/f".to_vec()))]),
        ]);
        assert_eq!(v.nodes[&b"f"[..]], v.nodes[&b"g"[..]]);
    }

    /// Symlinks are kept verbatim (even absolute or dangling ones), and attributes of
    /// setuid and root-owned files pass through unchanged.
    #[test]
    fn symlink_and_setuid_attributes_pass_through() {
        let mut l = layer(&[
            ("bin/su", file(1)),
            ("sh", EntryKind::Symlink(b"/bin/busybox".to_vec())),
        ]);
        l[0].meta = Meta {
            mode: 0o4755,
            uid: 0,
            gid: 0,
            mtime: 5,
        };
        let v = view(&[l]);
        assert_eq!(v.inodes[0].meta.mode, 0o4755);
        assert_eq!(
            v.nodes[&b"sh"[..]],
            Node::Symlink(b"/bin/busybox".to_vec(), meta(0o644))
        );
        // The missing parent `bin` became a directory.
        assert_eq!(v.nodes[&b"bin"[..]], Node::Dir(Meta::IMPLICIT_DIR));
    }

    /// Hostile: an entry written through a symlink to `/` or to `../../..` lands inside
    /// the root, never outside (nothing is extracted, and the path keys prove it).
    #[test]
    fn write_through_symlink_stays_inside() {
        let v = view(&[
            layer(&[
                ("up", EntryKind::Symlink(b"../../../..".to_vec())),
                ("abs", EntryKind::Symlink(b"/".to_vec())),
            ]),
            layer(&[("up/etc/evil", file(1)), ("abs/tmp/evil2", file(1))]),
        ]);
        assert_eq!(
            paths(&v),
            ["abs", "etc", "etc/evil", "tmp", "tmp/evil2", "up"]
        );
    }

    /// Hostile: `..` above the root, a hardlink outside it, a link to a missing path or
    /// a directory, and a symlink loop are refused, naming the entry.
    #[test]
    fn hostile_names_are_refused() {
        let (p, e) = refused(&[layer(&[("a/../../etc/passwd", file(1))])]);
        assert_eq!((p.as_str(), e), ("a/../../etc/passwd", Problem::Escapes));
        let (p, e) = refused(&[layer(&[(
            "x",
            EntryKind::Hardlink(b"../../etc/shadow".to_vec()),
        )])]);
        assert_eq!(p, "x");
        assert_eq!(e, Problem::LinkOutside(b"../../etc/shadow".to_vec()));
        let (_, e) = refused(&[layer(&[("x", EntryKind::Hardlink(b"nothing".to_vec()))])]);
        assert_eq!(e, Problem::LinkMissing(b"nothing".to_vec()));
        let (_, e) = refused(&[layer(&[
            ("d/", EntryKind::Dir),
            ("x", EntryKind::Hardlink(b"d".to_vec())),
        ])]);
        assert_eq!(e, Problem::LinkToDir(b"d".to_vec()));
        let (_, e) = refused(&[layer(&[
            ("l", EntryKind::Symlink(b"l".to_vec())),
            ("l/x", file(1)),
        ])]);
        assert_eq!(e, Problem::SymlinkLoop);
        let (_, e) = refused(&[layer(&[("f", file(1)), ("f/x", file(1))])]);
        assert_eq!(e, Problem::NotADirectory(b"f".to_vec()));
        let (_, e) = refused(&[layer(&[(".wh..", file(0))])]);
        assert_eq!(e, Problem::BadWhiteout);
    }

    /// Device nodes are skipped and reported; they do not replace what was there.
    #[test]
    fn device_nodes_are_skipped() {
        let v = view(&[layer(&[
            ("dev/", EntryKind::Dir),
            ("dev/sda", EntryKind::Device),
        ])]);
        assert_eq!(paths(&v), ["dev"]);
        assert_eq!(v.skipped.len(), 1);
        assert_eq!(v.skipped[0].path, b"dev/sda");
    }

    /// The `./` entry sets the root's attributes and never becomes a path.
    #[test]
    fn root_entry_sets_root_meta() {
        let mut l = layer(&[("./", EntryKind::Dir)]);
        l[0].meta.mode = 0o700;
        let v = view(&[l]);
        assert!(v.nodes.is_empty());
        assert_eq!(v.root.unwrap().mode, 0o700);
    }
}
