//! A native reader for SIF, the Singularity Image Format written by Apptainer, SingularityCE
//! and `siftool`.
//!
//! A SIF file starts with a 128-byte global header (launch script, `SIF_MAGIC`, spec version,
//! primary architecture, image UUID, timestamps and the placement of the descriptor table and
//! the data section). The descriptor table holds `descriptors_total` fixed-size (585-byte)
//! records; each used one describes a data object: its type, id, group, link, position,
//! timestamps, name and a 384-byte type-specific "extra" area (partition file system, type and
//! architecture; signature hash and signer fingerprint; crypto-message format; SBOM format;
//! OCI digest). All integers are little-endian and the records are packed without padding.
//!
//! The parser reads only the header, the table and small text objects (definition file,
//! labels, environment, generic JSON; each at most [`MAX_CONTENT_LEN`] bytes, and at most
//! [`MAX_CONTENT_TOTAL`] bytes together). It never panics on any input and trusts no count,
//! offset or size from the file: every allocation is bounded by a constant or by the real file
//! length, the table is read through a fixed-size buffer, and all arithmetic on file values is
//! checked. Offsets and sizes are only validated where they are used (text content); like
//! `siftool`, it is otherwise lenient about objects that lie outside the file.

use crate::error::ErrorKind;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

/// The magic string at offset 32 (followed by a NUL in the file).
pub const MAGIC: &[u8] = b"SIF_MAGIC";
/// The media type of a SIF file as an OCI layer (`apptainer push oras://`), and as the
/// cache records a SIF it made or recovered.
pub const MEDIA_TYPE: &str = "application/vnd.sylabs.sif.layer.v1.sif";
/// Largest descriptor table accepted (the tools create 48 entries by default).
pub const MAX_DESCRIPTORS: i64 = 100_000;
/// Largest text object whose content is read into [`Descriptor::content`].
pub const MAX_CONTENT_LEN: i64 = 64 * 1024;
/// Budget for all text contents of one file together; beyond it, `content` is `None`.
pub const MAX_CONTENT_TOTAL: usize = 4 * 1024 * 1024;

const MAGIC_OFFSET: usize = 32;
const HEADER_LEN: usize = 128;
const DESCRIPTOR_LEN: usize = 585;
const TABLE_CHUNK: usize = 64;
const GROUP_MASK: u32 = 0xf000_0000;
/// Go's zero `time.Time` in Unix seconds, which the Go tools write for "no timestamp".
const GO_ZERO_TIME: i64 = -62_135_596_800;

const DEFFILE: i32 = 0x4001;
const ENV_VARS: i32 = 0x4002;
const LABELS: i32 = 0x4003;
const PARTITION: i32 = 0x4004;
const SIGNATURE: i32 = 0x4005;
const GENERIC_JSON: i32 = 0x4006;
const CRYPTO_MESSAGE: i32 = 0x4008;
const SBOM: i32 = 0x4009;
const OCI_ROOT_INDEX: i32 = 0x400a;
const OCI_BLOB: i32 = 0x400b;

#[rustfmt::skip]
pub(super) mod names {
    use super::*;
    pub(crate) const KINDS: &[(i32, &str)] = &[
        (DEFFILE, "Def.FILE"), (ENV_VARS, "Env.Vars"), (LABELS, "JSON.Labels"), (PARTITION, "FS"),
        (SIGNATURE, "Signature"), (GENERIC_JSON, "JSON.Generic"), (0x4007, "Generic/Raw"),
        (CRYPTO_MESSAGE, "Cryptographic Message"), (SBOM, "SBOM"),
        (OCI_ROOT_INDEX, "OCI.RootIndex"), (OCI_BLOB, "OCI.Blob"),
    ];
    pub(crate) const FS_TYPES: &[(i32, &str)] =
        &[(1, "Squashfs"), (2, "Ext3"), (3, "Archive"), (4, "Raw"), (5, "Encrypted squashfs")];
    pub(crate) const PART_TYPES: &[(i32, &str)] = &[(1, "System"), (2, "*System"), (3, "Data"), (4, "Overlay")];
    pub(crate) const HASHES: &[(i32, &str)] =
        &[(1, "SHA-256"), (2, "SHA-384"), (3, "SHA-512"), (4, "BLAKE2s-256"), (5, "BLAKE2b-256")];
    pub(crate) const CRYPTO_FORMATS: &[(i32, &str)] = &[(1, "OpenPGP"), (2, "PEM")];
    pub(crate) const CRYPTO_MESSAGES: &[(i32, &str)] = &[(0x100, "Clear Signature"), (0x200, "RSA-OAEP")];
    pub(crate) const SBOM_FORMATS: &[(i32, &str)] = &[
        (1, "cyclonedx-json"), (2, "cyclonedx-xml"), (3, "github-json"), (4, "spdx-json"),
        (5, "spdx-rdf"), (6, "spdx-tag-value"), (7, "spdx-yaml"), (8, "syft-json"),
    ];
    /// Two-digit architecture codes of the header and of partitions, with Go's names.
    pub(crate) const ARCHES: &[(&str, &str)] = &[
        ("01", "386"), ("02", "amd64"), ("03", "arm"), ("04", "arm64"), ("05", "ppc64"),
        ("06", "ppc64le"), ("07", "mips"), ("08", "mipsle"), ("09", "mips64"),
        ("10", "mips64le"), ("11", "s390x"), ("12", "riscv64"),
    ];
}
use names::*;

/// True when `prefix` (the first bytes of a file, at least 64 bytes given when available)
/// starts a SIF file.
pub fn looks_like_sif(prefix: &[u8]) -> bool {
    let end = MAGIC_OFFSET + MAGIC.len();
    prefix.get(MAGIC_OFFSET..end) == Some(MAGIC) && prefix.get(end) == Some(&0)
}

/// What a SIF file holds: its global header and its used descriptors, in table order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SifInfo {
    pub header: Header,
    pub descriptors: Vec<Descriptor>,
}

/// The global header. Times are Unix seconds as stored (the Go tools store
/// -62135596800, Go's zero time, when unset).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Header {
    pub launch_script: String,
    pub version: String,
    /// Primary architecture: a Go name such as "amd64", "unknown" or "unknown(NN)".
    pub arch: String,
    /// Image UUID, hyphenated lowercase.
    pub id: String,
    pub created_at: i64,
    pub modified_at: i64,
    pub descriptors_free: i64,
    pub descriptors_total: i64,
    pub descriptors_offset: i64,
    pub descriptors_size: i64,
    pub data_offset: i64,
    pub data_size: i64,
}

/// One used data-object descriptor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Descriptor {
    pub id: u32,
    /// Group number without the group mask; `None` when the object is in no group.
    pub group: Option<u32>,
    pub link: Option<Link>,
    /// Type as `siftool` names it ("FS", "Def.FILE", "OCI.Blob", ...) or "Unknown(0x....)".
    pub kind: String,
    pub name: String,
    pub offset: i64,
    pub size: i64,
    pub created_at: i64,
    pub modified_at: i64,
    pub detail: Detail,
    /// Small text objects (def file, labels JSON, env vars, generic JSON) up to 64 KiB, read
    /// from the file; `None` for other types, larger objects or past the content budget.
    pub content: Option<String>,
}

/// What a descriptor is linked to (for example, the object or group a signature covers).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Link {
    Object { id: u32 },
    Group { id: u32 },
}

/// The decoded type-specific "extra" area of a descriptor.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Detail {
    None,
    /// File system, partition type ("*System" is the primary system partition), architecture.
    Partition {
        fs: String,
        part: String,
        arch: String,
    },
    /// Hash algorithm and the signer's 20-byte fingerprint in uppercase hex ("" if absent).
    Signature {
        hash: String,
        entity: String,
    },
    CryptoMessage {
        format: String,
        message: String,
    },
    Sbom {
        format: String,
    },
    /// OCI root index or blob: digest such as `sha256:<hex>`.
    Oci {
        digest: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SifError {
    #[error("not a SIF file (no SIF_MAGIC at offset 32)")]
    NotSif,
    #[error("truncated SIF file: {0}")]
    Truncated(&'static str),
    #[error("malformed SIF file: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl SifError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SifError::NotSif | SifError::Truncated(_) | SifError::Malformed(_) => {
                ErrorKind::InvalidInput
            }
            SifError::Io(e) => ErrorKind::of_io(e),
        }
    }
}

/// Parse from any seekable reader (a File, or a Cursor over bytes for fuzzing).
pub fn parse<R: Read + Seek>(r: &mut R) -> Result<SifInfo, SifError> {
    let file_len = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(HEADER_LEN);
    r.by_ref().take(HEADER_LEN as u64).read_to_end(&mut head)?;
    if !looks_like_sif(&head) {
        return Err(SifError::NotSif);
    }
    if head.len() < HEADER_LEN {
        return Err(SifError::Truncated("global header"));
    }
    let header = decode_header(&head)?;
    let mut found = read_table(r, &header, file_len)?;
    let mut budget = MAX_CONTENT_TOTAL;
    for (data_type, d) in &mut found {
        if matches!(*data_type, DEFFILE | ENV_VARS | LABELS | GENERIC_JSON) {
            d.content = read_text(r, d, file_len, &mut budget)?;
        }
    }
    let descriptors = found.into_iter().map(|(_, d)| d).collect();
    Ok(SifInfo {
        header,
        descriptors,
    })
}

/// Parse an in-memory image (convenient for fuzz targets).
pub fn parse_bytes(data: &[u8]) -> Result<SifInfo, SifError> {
    parse(&mut io::Cursor::new(data))
}

/// Parse the file at `path`.
pub fn parse_path(path: &Path) -> Result<SifInfo, SifError> {
    parse(&mut std::fs::File::open(path)?)
}

/// The SIF header and objects of the file at `path`, as `inspect` shows them: `None` when
/// the file is not SIF at all (or cannot be opened); `Some(Err)` when it starts like one
/// but does not parse.
pub fn read_if_sif(path: &Path) -> Option<Result<SifInfo, SifError>> {
    let mut prefix = [0u8; 64];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut prefix))
        .ok()?;
    if !looks_like_sif(&prefix[..n]) {
        return None;
    }
    Some(parse_path(path))
}

/// Sequential little-endian reads from a fixed record; reads past its end yield zeros.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos;
        self.pos = start.saturating_add(n);
        self.buf.get(start..self.pos).unwrap_or(&[])
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.bytes(N).try_into().unwrap_or([0; N])
    }
    fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.array())
    }
}

/// Text of a fixed byte field: up to the first NUL, decoded lossily.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or(&[])).into_owned()
}

fn lookup(value: i32, table: &[(i32, &str)]) -> String {
    match table.iter().find(|(v, _)| *v == value) {
        Some((_, name)) => (*name).to_string(),
        None => format!("Unknown({value})"),
    }
}

fn arch_name(field: &[u8]) -> String {
    let code = c_string(field);
    match ARCHES.iter().find(|(c, _)| *c == code) {
        Some((_, name)) => (*name).to_string(),
        None if code.is_empty() || code == "00" => "unknown".to_string(),
        None => format!("unknown({code})"),
    }
}

fn kind_name(data_type: i32) -> String {
    match KINDS.iter().find(|(v, _)| *v == data_type) {
        Some((_, name)) => (*name).to_string(),
        None => format!("Unknown({data_type:#06x})"),
    }
}

fn hex(bytes: &[u8], upper: bool) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = if upper {
            write!(s, "{b:02X}")
        } else {
            write!(s, "{b:02x}")
        };
        s
    })
}

fn uuid_string(id: &[u8; 16]) -> String {
    let h = hex(id, false);
    let part = |a: usize, b: usize| h.get(a..b).unwrap_or("");
    let parts = [
        part(0, 8),
        part(8, 12),
        part(12, 16),
        part(16, 20),
        part(20, 32),
    ];
    parts.join("-")
}

fn decode_header(head: &[u8]) -> Result<Header, SifError> {
    let mut f = Fields::new(head);
    let launch_script = c_string(f.bytes(MAGIC_OFFSET));
    f.bytes(MAGIC.len() + 1);
    let version = c_string(f.bytes(3));
    if version != "01" {
        return Err(SifError::Malformed(format!(
            "unsupported SIF version {version:?}"
        )));
    }
    Ok(Header {
        launch_script,
        version,
        arch: arch_name(f.bytes(3)),
        id: uuid_string(&f.array()),
        created_at: f.i64(),
        modified_at: f.i64(),
        descriptors_free: f.i64(),
        descriptors_total: f.i64(),
        descriptors_offset: f.i64(),
        descriptors_size: f.i64(),
        data_offset: f.i64(),
        data_size: f.i64(),
    })
}

/// Reads the descriptor table through a fixed-size buffer, keeping used entries only.
fn read_table<R: Read + Seek>(
    r: &mut R,
    h: &Header,
    file_len: u64,
) -> Result<Vec<(i32, Descriptor)>, SifError> {
    let count = match usize::try_from(h.descriptors_total) {
        Ok(n) if h.descriptors_total <= MAX_DESCRIPTORS => n,
        _ => {
            return Err(SifError::Malformed(format!(
                "descriptor count {} is outside 0..={MAX_DESCRIPTORS}",
                h.descriptors_total
            )));
        }
    };
    let table_len = count.saturating_mul(DESCRIPTOR_LEN);
    if !i64::try_from(table_len).is_ok_and(|n| h.descriptors_size >= n) {
        return Err(SifError::Malformed(format!(
            "descriptor table of {count} entries needs {table_len} bytes, header gives {}",
            h.descriptors_size
        )));
    }
    let start = u64::try_from(h.descriptors_offset).map_err(|_| {
        SifError::Malformed(format!(
            "negative descriptor offset {}",
            h.descriptors_offset
        ))
    })?;
    match start.checked_add(table_len as u64) {
        Some(end) if end <= file_len => {}
        _ => return Err(SifError::Truncated("descriptor table")),
    }
    r.seek(SeekFrom::Start(start))?;
    let mut found = Vec::new();
    let mut buf = Vec::with_capacity(TABLE_CHUNK.min(count) * DESCRIPTOR_LEN);
    let mut remaining = count;
    while remaining > 0 {
        let n = remaining.min(TABLE_CHUNK);
        remaining -= n;
        buf.clear();
        buf.resize(n * DESCRIPTOR_LEN, 0);
        r.read_exact(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => SifError::Truncated("descriptor table"),
            _ => SifError::Io(e),
        })?;
        found.extend(
            buf.chunks_exact(DESCRIPTOR_LEN)
                .filter_map(decode_descriptor),
        );
    }
    Ok(found)
}

/// Decodes one table entry; `None` when the entry is unused.
fn decode_descriptor(raw: &[u8]) -> Option<(i32, Descriptor)> {
    let mut f = Fields::new(raw);
    let data_type = f.i32();
    if f.bytes(1).first().is_none_or(|&used| used == 0) {
        return None;
    }
    let id = f.u32();
    let group = f.u32() & !GROUP_MASK;
    let link_raw = f.u32();
    let link_id = link_raw & !GROUP_MASK;
    let link = match (link_id, link_raw & GROUP_MASK == GROUP_MASK) {
        (0, _) => None,
        (id, true) => Some(Link::Group { id }),
        (id, false) => Some(Link::Object { id }),
    };
    let (offset, size) = (f.i64(), f.i64());
    f.i64(); // size with padding
    let (created_at, modified_at) = (f.i64(), f.i64());
    f.bytes(16); // uid, gid: historical, unused
    let name = c_string(f.bytes(128));
    let detail = decode_detail(data_type, f.bytes(384));
    let d = Descriptor {
        id,
        group: (group != 0).then_some(group),
        link,
        kind: kind_name(data_type),
        name,
        offset,
        size,
        created_at,
        modified_at,
        detail,
        content: None,
    };
    Some((data_type, d))
}

fn decode_detail(data_type: i32, extra: &[u8]) -> Detail {
    let mut f = Fields::new(extra);
    match data_type {
        PARTITION => Detail::Partition {
            fs: lookup(f.i32(), FS_TYPES),
            part: lookup(f.i32(), PART_TYPES),
            arch: arch_name(f.bytes(3)),
        },
        SIGNATURE => {
            let hash = lookup(f.i32(), HASHES);
            let fingerprint = f.bytes(20);
            let present = fingerprint.iter().any(|&b| b != 0);
            let entity = if present {
                hex(fingerprint, true)
            } else {
                String::new()
            };
            Detail::Signature { hash, entity }
        }
        CRYPTO_MESSAGE => Detail::CryptoMessage {
            format: lookup(f.i32(), CRYPTO_FORMATS),
            message: lookup(f.i32(), CRYPTO_MESSAGES),
        },
        SBOM => Detail::Sbom {
            format: lookup(f.i32(), SBOM_FORMATS),
        },
        OCI_ROOT_INDEX | OCI_BLOB => Detail::Oci {
            digest: c_string(extra),
        },
        _ => Detail::None,
    }
}

/// Reads a small text object, checking that it lies inside the file.
fn read_text<R: Read + Seek>(
    r: &mut R,
    d: &Descriptor,
    file_len: u64,
    budget: &mut usize,
) -> Result<Option<String>, SifError> {
    if d.size > MAX_CONTENT_LEN {
        return Ok(None);
    }
    let span = u64::try_from(d.offset).ok().zip(u64::try_from(d.size).ok());
    let (start, len) = match span {
        Some((start, len)) if start.checked_add(len).is_some_and(|end| end <= file_len) => {
            (start, len)
        }
        _ => {
            return Err(SifError::Malformed(format!(
                "object {} ({}) at {}+{} lies outside the {file_len}-byte file",
                d.id, d.kind, d.offset, d.size
            )));
        }
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let Some(left) = budget.checked_sub(len) else {
        return Ok(None);
    };
    *budget = left;
    r.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)?;
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// UTC calendar rendering of Unix seconds, "YYYY-MM-DD HH:MM:SS", valid for every `i64`.
pub fn format_utc(t: i64) -> String {
    // |days| < 1.1e14, so none of the arithmetic below can overflow.
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hh, mm, ss) = (secs / 3_600, secs % 3_600 / 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02} {hh:02}:{mm:02}:{ss:02}")
}

fn is_set(t: i64) -> bool {
    t != 0 && t != GO_ZERO_TIME
}

impl fmt::Display for SifInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        write!(f, "SIF {} image {}, arch {}", h.version, h.id, h.arch)?;
        if is_set(h.created_at) {
            write!(f, ", created {} UTC", format_utc(h.created_at))?;
        }
        if is_set(h.modified_at) && h.modified_at != h.created_at {
            write!(f, ", modified {} UTC", format_utc(h.modified_at))?;
        }
        writeln!(f)?;
        if !h.launch_script.is_empty() {
            writeln!(f, "launch script: {:?}", h.launch_script.trim_end())?;
        }
        writeln!(
            f,
            "descriptors: {} used of {} ({} free), table {}+{}, data {}+{}",
            self.descriptors.len(),
            h.descriptors_total,
            h.descriptors_free,
            h.descriptors_offset,
            h.descriptors_size,
            h.data_offset,
            h.data_size
        )?;
        writeln!(
            f,
            "{:<5} {:<6} {:<8} {:<24} TYPE",
            "ID", "GROUP", "LINK", "RANGE"
        )?;
        for d in &self.descriptors {
            let group = d.group.map_or_else(|| "-".to_string(), |g| g.to_string());
            let link = match &d.link {
                None => "-".to_string(),
                Some(Link::Object { id }) => id.to_string(),
                Some(Link::Group { id }) => format!("{id} (G)"),
            };
            let range = format!("{}-{}", d.offset, d.offset.saturating_add(d.size));
            write!(f, "{:<5} {group:<6} {link:<8} {range:<24} {}", d.id, d.kind)?;
            match &d.detail {
                Detail::None => Ok(()),
                Detail::Partition { fs, part, arch } => write!(f, " ({fs}/{part}/{arch})"),
                Detail::Signature { hash, entity } if entity.is_empty() => write!(f, " ({hash})"),
                Detail::Signature { hash, entity } => write!(f, " ({hash}, signer {entity})"),
                Detail::CryptoMessage { format, message } => write!(f, " ({format}/{message})"),
                Detail::Sbom { format } => write!(f, " ({format})"),
                Detail::Oci { digest } => write!(f, " {}", digest.escape_debug()),
            }?;
            if !d.name.is_empty() {
                write!(f, " {:?}", d.name)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::process::Command;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/sif-peer");

    fn fixtures() -> Vec<PathBuf> {
        let dir = std::fs::read_dir(FIXTURES).expect("fixtures in ../shared/fixtures/sif-peer");
        let mut files: Vec<PathBuf> = dir.map(|e| e.expect("dir entry").path()).collect();
        files.retain(|p| p.extension().is_some_and(|x| x == "sif"));
        files.sort();
        assert_eq!(files.len(), 21, "expected the 21 reference SIF fixtures");
        files
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(FIXTURES).join(name)).expect("read fixture")
    }

    /// Runs a tool that must be installed; a missing tool fails the test loudly.
    fn run(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output();
        let out = out.unwrap_or_else(|e| panic!("{program} must be installed for this test: {e}"));
        assert!(out.status.success(), "{program} {args:?} failed: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8 tool output")
    }

    fn key_values(text: &str) -> HashMap<String, String> {
        let pairs = text.lines().filter_map(|l| l.split_once(':'));
        pairs
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    fn words(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn none_or<T: ToString>(v: Option<T>) -> String {
        v.map_or_else(|| "NONE".to_string(), |v| v.to_string())
    }

    /// The outcome of parsing `data`, by error variant.
    fn outcome(data: &[u8]) -> &'static str {
        match parse_bytes(data) {
            Ok(_) => "Ok",
            Err(SifError::NotSif) => "NotSif",
            Err(SifError::Truncated(_)) => "Truncated",
            Err(SifError::Malformed(_)) => "Malformed",
            Err(SifError::Io(_)) => "Io",
        }
    }

    /// What siftool 2.8.3 prints for `d`: its `list` columns and its `info` key/values.
    fn siftool_view(d: &Descriptor) -> (Vec<String>, Vec<(&'static str, String)>) {
        // siftool 2.8.3 predates the OCI object types and calls them "Unknown".
        let kind = match d.kind.as_str() {
            k if k.starts_with("OCI.") => "Unknown",
            k => k,
        };
        let link = match &d.link {
            None => "NONE".to_string(),
            Some(Link::Object { id }) => id.to_string(),
            Some(Link::Group { id }) => format!("{id} (G)"),
        };
        let mut info = vec![("Data Type", kind.to_string()), ("ID", d.id.to_string())];
        info.extend([("Group ID", none_or(d.group)), ("Linked ID", link.clone())]);
        info.extend([
            ("Offset", d.offset.to_string()),
            ("Size", d.size.to_string()),
        ]);
        for (key, t) in [("Created At", d.created_at), ("Modified At", d.modified_at)] {
            if t != GO_ZERO_TIME {
                info.push((key, format!("{} +0000 UTC", format_utc(t))));
            }
        }
        if !d.name.is_empty() {
            info.push(("Name", d.name.clone()));
        }
        let (typ, extra) = match &d.detail {
            Detail::Partition { fs, part, arch } => (
                format!("{kind} ({fs}/{part}/{arch})"),
                vec![
                    ("Filesystem Type", fs),
                    ("Partition Type", part),
                    ("Architecture", arch),
                ],
            ),
            Detail::Signature { hash, entity } => (
                format!("{kind} ({hash})"),
                vec![("Hash Type", hash), ("Entity", entity)],
            ),
            Detail::CryptoMessage { format, message } => (
                format!("{kind} ({format}/{message})"),
                vec![("Format Type", format), ("Message Type", message)],
            ),
            Detail::Sbom { format } => (format!("{kind} ({format})"), vec![("Format", format)]),
            Detail::None | Detail::Oci { .. } => (kind.to_string(), vec![]),
        };
        info.extend(extra.into_iter().map(|(k, v)| (k, v.clone())));
        let range = format!("{}-{}", d.offset, d.offset.saturating_add(d.size));
        (
            vec![d.id.to_string(), none_or(d.group), link, range, typ],
            info,
        )
    }

    #[test]
    fn every_fixture_agrees_with_siftool_header_list_info_and_dump() {
        for path in fixtures() {
            let p = path.to_str().expect("utf-8 path");
            let info = parse_path(&path).unwrap_or_else(|e| panic!("{p}: {e}"));
            let h = &info.header;

            let theirs = key_values(&run("siftool", &["header", p]));
            let get = |key: &str, absent: &str| theirs.get(key).cloned().unwrap_or(absent.into());
            assert_eq!(get("Version", ""), h.version, "{p}");
            assert_eq!(get("Primary Architecture", "unknown"), h.arch, "{p}");
            assert_eq!(
                get("ID", "00000000-0000-0000-0000-000000000000"),
                h.id,
                "{p}"
            );
            assert_eq!(
                get("Launch Script", ""),
                h.launch_script.trim_end_matches('\n')
            );
            assert_eq!(get("Descriptors Free", ""), h.descriptors_free.to_string());
            assert_eq!(
                get("Descriptors Total", ""),
                h.descriptors_total.to_string()
            );
            assert_eq!(
                get("Descriptors Offset", ""),
                h.descriptors_offset.to_string()
            );
            assert_eq!(get("Data Offset", ""), h.data_offset.to_string(), "{p}");

            let listed: Vec<Vec<String>> = run("siftool", &["list", p])
                .lines()
                .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                .map(|l| l.split('|').map(words).collect())
                .collect();
            let ours: Vec<_> = info.descriptors.iter().map(siftool_view).collect();
            let rows: Vec<Vec<String>> = ours.iter().map(|(row, _)| row.clone()).collect();
            assert_eq!(listed, rows, "{p}: siftool list");

            for (d, (_, expected)) in info.descriptors.iter().zip(&ours) {
                let id = d.id.to_string();
                let theirs = key_values(&run("siftool", &["info", &id, p]));
                for (key, value) in expected {
                    let got = theirs.get(*key).cloned().unwrap_or_default();
                    assert_eq!(&got, value, "{p}: object {id} {key}");
                }
                if let Some(text) = &d.content {
                    assert_eq!(text, &run("siftool", &["dump", &id, p]), "{p}: {id}");
                }
            }
            assert!(info.to_string().lines().count() >= 3 + info.descriptors.len());
            serde_json::to_string(&info).expect("serializes");
        }
    }

    #[test]
    fn oci_digest_generic_json_and_dates_decode() {
        let path = Path::new(FIXTURES).join("one-object-oci-blob.sif");
        let blob = parse_path(&path).expect("oci blob fixture");
        assert_eq!(blob.descriptors[0].kind, "OCI.Blob");
        let script = format!("siftool dump 1 '{}' | sha256sum", path.display());
        let sum = run("sh", &["-c", &script]);
        let digest = format!(
            "sha256:{}",
            sum.split_whitespace().next().unwrap_or_default()
        );
        assert_eq!(blob.descriptors[0].detail, Detail::Oci { digest });
        let index = parse_bytes(&fixture("one-object-oci-root-index.sif")).expect("root index");
        assert_eq!(index.descriptors[0].kind, "OCI.RootIndex");
        let json = serde_json::to_value(&index.descriptors[0].detail).expect("json");
        assert_eq!(json["type"], "oci");
        let generic = parse_bytes(&fixture("one-object-generic-json.sif")).expect("generic");
        assert_eq!(generic.descriptors[0].content.as_deref(), Some("{}"));
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(GO_ZERO_TIME), "0001-01-01 00:00:00");
        for t in [i64::MIN, i64::MAX, -1] {
            format_utc(t);
        }
    }

    #[test]
    fn siftool_built_image_roundtrips_partition_deffile_and_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
        let (root, sqfs, sif) = (at("root"), at("fs.sqfs"), at("x.sif"));
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(at("root/hello"), "hello\n").expect("write");
        let no_progress = ["-noappend", "-quiet", "-no-progress"];
        run(
            "mksquashfs",
            &[&[root.as_str(), &sqfs][..], &no_progress].concat(),
        );
        let def = "Bootstrap: docker\nFrom: alpine:3.20\n\n%post\n    echo hi\n";
        let labels = r#"{"org.label-schema.name":"demo","maintainer":"ops@example.org"}"#;
        let (def_path, labels_path) = (at("def"), at("labels.json"));
        std::fs::write(&def_path, def).expect("write def");
        std::fs::write(&labels_path, labels).expect("write labels");
        let siftool = |args: &str, file: &str| {
            let args: Vec<&str> = args.split(' ').chain([sif.as_str(), file]).collect();
            run("siftool", &args)
        };
        run("siftool", &["new", &sif]);
        siftool(
            "add --datatype 4 --parttype 2 --partfs 1 --partarch 2",
            &sqfs,
        );
        siftool("add --datatype 1", &def_path);
        siftool("add --datatype 3", &labels_path);

        let info = parse_path(Path::new(&sif)).expect("parse built image");
        assert_eq!(info.header.arch, "amd64");
        assert_eq!(
            info.header.descriptors_free + 3,
            info.header.descriptors_total
        );
        let [fs, d, l] = &info.descriptors[..] else {
            panic!("want 3 objects: {info:#?}")
        };
        let (squash, primary, amd64) = ("Squashfs".into(), "*System".into(), "amd64".into());
        let part = Detail::Partition {
            fs: squash,
            part: primary,
            arch: amd64,
        };
        assert_eq!(
            (fs.kind.as_str(), &fs.detail, &fs.content),
            ("FS", &part, &None)
        );
        let sqfs_len = std::fs::metadata(&sqfs).expect("stat").len();
        assert_eq!(u64::try_from(fs.size).ok(), Some(sqfs_len));
        assert_eq!(
            (d.kind.as_str(), d.content.as_deref()),
            ("Def.FILE", Some(def))
        );
        assert_eq!(
            (l.kind.as_str(), l.content.as_deref()),
            ("JSON.Labels", Some(labels))
        );
        assert!(fs.created_at > 0 && is_set(info.header.created_at));
    }

    fn put(buf: &mut [u8], at: usize, v: &[u8]) {
        buf[at..at + v.len()].copy_from_slice(v);
    }

    /// A version-01 amd64 header announcing `total` descriptors at `table_offset`.
    fn header(total: i64, table_offset: i64) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN];
        put(&mut v, 32, b"SIF_MAGIC\0");
        put(&mut v, 42, b"01\0");
        put(&mut v, 45, b"02\0");
        put(&mut v, 80, &total.to_le_bytes());
        put(&mut v, 88, &total.to_le_bytes());
        put(&mut v, 96, &table_offset.to_le_bytes());
        let table_size = total.saturating_mul(DESCRIPTOR_LEN as i64);
        put(&mut v, 104, &table_size.to_le_bytes());
        v
    }

    /// A file with used descriptors (type, offset, size) right after the header, then `data`.
    fn image(objects: &[(i32, i64, i64)], data: &[u8]) -> Vec<u8> {
        let mut v = header(objects.len() as i64, HEADER_LEN as i64);
        for (i, &(data_type, offset, size)) in objects.iter().enumerate() {
            let mut d = vec![0u8; DESCRIPTOR_LEN];
            put(&mut d, 0, &data_type.to_le_bytes());
            d[4] = 1;
            put(&mut d, 5, &(i as u32 + 1).to_le_bytes());
            put(&mut d, 17, &offset.to_le_bytes());
            put(&mut d, 25, &size.to_le_bytes());
            v.extend(d);
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn empty_short_and_magic_only_inputs_are_rejected() {
        assert_eq!((outcome(&[]), outcome(&[0; 63])), ("NotSif", "NotSif"));
        assert!(!looks_like_sif(&[0; 63]) && !looks_like_sif(&header(0, 128)[..41]));
        assert!(looks_like_sif(&fixture("empty.sif")[..64]));
        let magic_only = [&[0u8; 32][..], b"SIF_MAGIC\0"].concat();
        assert_eq!(outcome(&magic_only), "Truncated");
        assert_eq!(outcome(&header(0, 128)[..63]), "Truncated");
        let mut other_version = header(0, 128);
        put(&mut other_version, 42, b"02");
        assert_eq!(outcome(&other_version), "Malformed");
        let empty = parse_bytes(&header(0, 128)).expect("zero descriptors is a valid image");
        assert_eq!(
            (empty.descriptors.len(), empty.header.arch.as_str()),
            (0, "amd64")
        );
    }

    #[test]
    fn huge_descriptor_count_is_rejected_without_allocating() {
        for total in [i64::MAX, MAX_DESCRIPTORS + 1, -1, i64::MIN] {
            assert_eq!(outcome(&header(total, 128)), "Malformed", "{total}");
        }
        let mut v = header(MAX_DESCRIPTORS, 128);
        put(&mut v, 104, &0i64.to_le_bytes()); // table size too small for the count
        assert_eq!(outcome(&v), "Malformed");
    }

    #[test]
    fn negative_offsets_are_malformed_only_where_they_matter() {
        assert_eq!(outcome(&header(1, -585)), "Malformed");
        let v = image(&[(PARTITION, -4096, 10), (SIGNATURE, i64::MIN, -1)], b"");
        let lenient = parse_bytes(&v).expect("objects that are not read may lie anywhere");
        assert_eq!(lenient.descriptors[1].offset, i64::MIN);
        for (off, size) in [(-1, 1), (0, -1), (i64::MAX, 10), (i64::MIN, i64::MIN)] {
            let v = image(&[(DEFFILE, off, size)], b"x");
            assert_eq!(outcome(&v), "Malformed", "{off}+{size}");
        }
    }

    #[test]
    fn descriptor_table_running_past_eof_is_truncated() {
        let mut v = header(48, 4096);
        v.resize(4096 + 47 * DESCRIPTOR_LEN, 0);
        assert_eq!(outcome(&v), "Truncated");
        assert_eq!(outcome(&header(2, i64::MAX - 100)), "Truncated");
    }

    #[test]
    fn used_descriptor_pointing_past_eof_fails_only_when_its_text_is_read() {
        let end = (HEADER_LEN + DESCRIPTOR_LEN) as i64;
        let part = parse_bytes(&image(&[(PARTITION, end, 1 << 40)], b"")).expect("lenient");
        assert_eq!(part.descriptors[0].size, 1 << 40);
        let big = parse_bytes(&image(&[(LABELS, end, MAX_CONTENT_LEN + 1)], b"")).expect("big");
        assert_eq!(big.descriptors[0].content, None);
        assert_eq!(outcome(&image(&[(LABELS, end, 3)], b"{}")), "Malformed");
        let ok = parse_bytes(&image(&[(LABELS, end, 2)], b"{}")).expect("inside");
        assert_eq!(ok.descriptors[0].content.as_deref(), Some("{}"));
    }

    #[test]
    fn text_objects_sharing_one_region_stay_within_the_content_budget() {
        let n = 200;
        let data_at = (HEADER_LEN + n * DESCRIPTOR_LEN) as i64;
        let objects = vec![(ENV_VARS, data_at, MAX_CONTENT_LEN); n];
        let info = parse_bytes(&image(&objects, &[b'a'; MAX_CONTENT_LEN as usize])).expect("ok");
        let texts = info.descriptors.iter().filter_map(|d| d.content.as_ref());
        let read: usize = texts.map(String::len).sum();
        assert!(read <= MAX_CONTENT_TOTAL && read > 0, "{read}");
        assert!(info.descriptors.iter().any(|d| d.content.is_none()));
    }

    #[test]
    fn unused_descriptors_are_skipped_and_odd_fields_are_named() {
        let mut v = image(&[(0x7fff, 0, 0), (PARTITION, 0, 0), (SIGNATURE, 0, 0)], b"");
        let second = HEADER_LEN + DESCRIPTOR_LEN;
        let third = second + DESCRIPTOR_LEN;
        v[second + 4] = 0; // unused
        put(&mut v, third + 9, &0xf000_0002u32.to_le_bytes()); // in group 2
        put(&mut v, third + 13, &0xf000_0002u32.to_le_bytes()); // linked to group 2
        put(&mut v, third + 201, &9i32.to_le_bytes()); // unknown hash
        let info = parse_bytes(&v).expect("parses");
        let [odd, sig] = &info.descriptors[..] else {
            panic!("{info:#?}")
        };
        assert_eq!((odd.id, odd.kind.as_str()), (1, "Unknown(0x7fff)"));
        assert_eq!(
            (sig.group, &sig.link),
            (Some(2), &Some(Link::Group { id: 2 }))
        );
        let hash = "Unknown(9)".to_string();
        assert_eq!(
            sig.detail,
            Detail::Signature {
                hash,
                entity: String::new()
            }
        );
        assert!(info.to_string().contains("2 (G)"));
    }

    #[test]
    fn every_truncation_of_a_fixture_is_an_error_not_a_panic() {
        let full = fixture("one-object-generic-json.sif");
        assert_eq!(full.len(), 32178);
        for len in 0..=full.len() {
            let want = match len {
                0..42 => "NotSif",
                42..32176 => "Truncated",
                32176..32178 => "Malformed", // the 2-byte JSON object is cut
                _ => "Ok",
            };
            assert_eq!(outcome(&full[..len]), want, "prefix of {len} bytes");
        }
    }

    #[test]
    fn byte_flips_in_the_first_8_kib_never_panic() {
        let original = fixture("one-group-signed-pgp.sif");
        let mut data = original.clone();
        for at in 0..8192 {
            for mask in [0xff, 0x80, 0x01] {
                data[at] ^= mask;
                if let Ok(info) = parse_bytes(&data) {
                    let json = serde_json::to_string(&info).expect("json");
                    assert!(!info.to_string().is_empty() && !json.is_empty());
                }
                data[at] = original[at];
            }
        }
    }
}
