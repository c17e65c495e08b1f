//! BLAKE3 content digests: how blobs are named.
//!
//! A [`Digest`] prints as `blake3:<64 lower-case hex>` and parses only from exactly that
//! form. [`HashingWriter`] hashes bytes in the same pass that writes them, so content is
//! never read twice on the way into the store; [`hash_file`] re-hashes a file already on
//! disk (memory-mapped, multi-threaded for large files).
//!
//! Remotes name content by sha256 instead: [`sha256`], [`sha256_hex`] and
//! [`sha256_reader`] are the crate's one way to compute it, printed as `sha256:<64 lower-case
//! hex>` (the form registries and OCI layouts use).

use crate::error::ErrorKind;
use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::str::FromStr;

/// The algorithm prefix of every digest this crate writes.
pub const ALGORITHM: &str = "blake3";

/// A BLAKE3 digest of a blob's full content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest `{0}` does not start with `blake3:` (only BLAKE3 digests name cached blobs)")]
    Algorithm(String),
    #[error("digest `{0}` is not 64 lower-case hex characters after `blake3:`")]
    Hex(String),
}

impl DigestError {
    /// A digest is part of a name: [`ErrorKind::InvalidName`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            DigestError::Algorithm(_) | DigestError::Hex(_) => ErrorKind::InvalidName,
        }
    }
}

impl Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-character lower-case hex form, without the algorithm prefix.
    pub fn hex(&self) -> String {
        let bytes = self.hex_bytes();
        // Every byte is an ASCII hex digit.
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// [`Digest::hex`] without an allocation: 64 ASCII hex digits.
    pub fn hex_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        out
    }

    /// The first 12 hex characters, as `list` shows them.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    /// Parse the bare 64-hex form (as used in blob file names).
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Digest(out))
    }

    /// Digest of an in-memory buffer.
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ALGORITHM}:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(hex) = s.strip_prefix("blake3:") else {
            return Err(DigestError::Algorithm(s.to_string()));
        };
        Digest::from_hex(hex).ok_or_else(|| DigestError::Hex(s.to_string()))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts every byte it passes on to `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

/// Above this size a chunk is hashed on several threads.
const PARALLEL_CHUNK: usize = 1 << 20;

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest and size of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (
            Digest(*self.hasher.finalize().as_bytes()),
            self.written,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = &buf[..n];
        if done.len() >= PARALLEL_CHUNK && parallel() {
            self.hasher.update_rayon(done);
        } else {
            self.hasher.update(done);
        }
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether large inputs may be hashed on rayon's pool: it starts (once), or was started.
/// Where no thread can be made (a batch system's cap on a user's processes), rayon would
/// panic at its first use; hashing then stays on the caller's thread.
fn parallel() -> bool {
    static STARTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STARTED.get_or_init(
        || match rayon_core::ThreadPoolBuilder::new().build_global() {
            Ok(()) => true,
            // Built already (by another user of rayon in this process): usable.
            Err(e) => e.to_string().contains("already"),
        },
    )
}

/// Hash a file on disk: memory-mapped and multi-threaded when it is large.
pub fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    if parallel() {
        hasher.update_mmap_rayon(path)?;
    } else {
        hasher.update_mmap(path)?;
    }
    let size = hasher.count();
    Ok((Digest(*hasher.finalize().as_bytes()), size))
}

/// What the error of [`open_blob`] says of a path that is no regular file.
pub const NOT_REGULAR: &str = "not a regular file";

/// Open a blob (a file in a cache's or a tier's `blobs/`) for reading: non-blocking and
/// without following a symbolic link, so a FIFO or a link planted at a blob's path is an
/// error at once (naming what it is), never a read that waits for a writer forever or a
/// file read from elsewhere.
pub fn open_blob(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let not_regular = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, {NOT_REGULAR}"),
        )
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_regular("a symbolic link"),
            _ => e,
        })?;
    let t = file.metadata()?.file_type();
    if t.is_file() {
        return Ok(file);
    }
    Err(not_regular(if t.is_fifo() {
        "a FIFO"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    }))
}

/// Hash a blob on disk ([`open_blob`]: a FIFO or a link there is an error, never a hang),
/// memory-mapped, on the rayon pool when `parallel` (for large files), else on this thread.
pub fn hash_blob(path: &Path, on_pool: bool) -> io::Result<(Digest, u64)> {
    let file = open_blob(path)?;
    let mut h = blake3::Hasher::new();
    if file.metadata()?.len() > 0 {
        // SAFETY: a blob is never written in place (it is replaced by rename, whole), and
        // a file truncated under the map is a SIGBUS as for blake3's own `update_mmap`.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        if on_pool && parallel() {
            h.update_rayon(&map);
        } else {
            h.update(&map);
        }
    }
    Ok((Digest(*h.finalize().as_bytes()), h.count()))
}

/// Hash a file on disk on this thread alone (memory-mapped), for callers that run many
/// at once.
pub fn hash_file_single(path: &Path) -> io::Result<(Digest, u64)> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(path)?;
    Ok((Digest(*h.finalize().as_bytes()), h.count()))
}

/// The sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// The sha256 of `bytes` as remotes name content: `sha256:<64 lower-case hex>`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256_display(&sha256(bytes))
}

/// The sha256 of everything `reader` yields, read in 1 MiB pieces, as
/// `sha256:<64 lower-case hex>`.
pub fn sha256_reader(reader: &mut impl io::Read) -> io::Result<String> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(sha256_display(&h.finalize().into()))
}

fn sha256_display(bytes: &[u8; 32]) -> String {
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in bytes {
        s.push(char::from(HEX[(b >> 4) as usize]));
        s.push(char::from(HEX[(b & 0xf) as usize]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn digest_of_empty_input_is_the_published_blake3_value() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn sha256_helpers_give_the_published_values() {
        // FIPS 180-2's "abc" vector and the empty input.
        let abc = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_hex(b"abc"), abc);
        assert_eq!(sha256_hex(b""), empty);
        assert_eq!(sha256(b"abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(sha256_reader(&mut &b"abc"[..]).unwrap(), abc);
        assert_eq!(sha256_reader(&mut io::empty()).unwrap(), empty);
        // Across the 1 MiB read size, the streaming form agrees with the one-shot one.
        let big: Vec<u8> = (0..(1 << 20) * 2 + 3).map(|i| (i * 7) as u8).collect();
        assert_eq!(sha256_reader(&mut &big[..]).unwrap(), sha256_hex(&big));
    }

    #[test]
    fn upper_case_or_short_hex_is_refused() {
        let good = Digest::of(b"x").to_string();
        assert!(good.parse::<Digest>().is_ok());
        assert!(good.to_uppercase().parse::<Digest>().is_err());
        assert!(good[..good.len() - 1].parse::<Digest>().is_err());
        assert!(format!("sha256:{}", &good[7..]).parse::<Digest>().is_err());
    }

    #[test]
    fn hashing_writer_matches_one_shot_hash_across_chunk_sizes() {
        let data: Vec<u8> = (0..3 * PARALLEL_CHUNK + 17)
            .map(|i| (i * 31) as u8)
            .collect();
        let mut w = HashingWriter::new(Vec::new());
        for chunk in data.chunks(PARALLEL_CHUNK + 5) {
            w.write_all(chunk).unwrap();
        }
        let (d, n, out) = w.finish();
        assert_eq!(n as usize, data.len());
        assert_eq!(out, data);
        assert_eq!(d, Digest::of(&data));
    }

    proptest! {
        #[test]
        fn digest_display_parse_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let d = Digest::from_bytes(bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        }
    }
}
