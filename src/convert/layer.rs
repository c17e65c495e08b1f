//! Opening one layer blob as an uncompressed tar stream: the media type must be one of the
//! OCI or Docker layer types, and the compression is taken from the blob's first bytes (the
//! magic numbers of gzip and zstd), so a layer whose media type names the wrong compression
//! still reads.
//!
//! A tar stream that ends right after its last entry's data, without the padding to 512
//! bytes and the two zero blocks (Debian's `umoci` 0.4.7 writes such layers for
//! `insert --opaque`, and Go's tar reader accepts them), is read as if they were there:
//! [`Lenient`] supplies at most [`ZERO_TAIL`] zero bytes after the blob's end and records
//! where the real end was, so that the caller can refuse an entry whose declared data
//! runs past it (a truncated layer, or a header declaring a huge size).

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use super::{ConvertError, LayerFile};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const READ_BUF: usize = 1 << 20;
/// Zero bytes supplied after a blob's end: the padding of the last entry and two blocks.
pub(crate) const ZERO_TAIL: usize = 511 + 1024;

/// Where a layer's real tar stream ended (in bytes), once its reader has reached the end.
pub(crate) type EndProbe = Rc<Cell<Option<u64>>>;

/// A tar stream followed by at most [`ZERO_TAIL`] zero bytes (see the module doc).
pub(crate) struct Lenient<R> {
    inner: R,
    read: u64,
    zeros: usize,
    end: EndProbe,
}

impl<R: Read> Read for Lenient<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.end.get().is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            self.end.set(Some(self.read));
        }
        let n = buf.len().min(self.zeros);
        buf[..n].fill(0);
        self.zeros -= n;
        Ok(n)
    }
}

/// The compression of a layer, as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// True for the media types of tar layers: OCI (`application/vnd.oci.image.layer.v1.tar`,
/// `+gzip`, `+zstd`, and the `nondistributable` variants) and Docker v2 schema 2
/// (`application/vnd.docker.image.rootfs.diff.tar.gzip`, `…foreign.diff.tar.gzip`).
pub(crate) fn is_layer_media_type(media_type: &str) -> bool {
    const OCI: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
    ];
    const DOCKER: &[&str] = &[
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
    ];
    let media_type = media_type.trim();
    let suffixes: &[&str] = &["", "+gzip", "+zstd", ".gzip", ".zstd"];
    OCI.iter().chain(DOCKER).any(|base| {
        media_type
            .strip_prefix(base)
            .is_some_and(|rest| suffixes.contains(&rest))
    })
}

/// Which compression `prefix` (the first bytes of a blob) starts.
pub(crate) fn sniff(prefix: &[u8]) -> Compression {
    if prefix.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if prefix.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// The layer's tar stream, decompressed, and the probe that tells where it really ended.
pub(crate) fn open(layer: &LayerFile<'_>) -> Result<(Box<dyn Read>, EndProbe), ConvertError> {
    if !is_layer_media_type(layer.media_type) {
        return Err(ConvertError::MediaType {
            digest: layer.digest.to_string(),
            media_type: layer.media_type.to_string(),
        });
    }
    let io_err = |source: io::Error| ConvertError::LayerRead {
        digest: layer.digest.to_string(),
        entry: None,
        source,
    };
    let file = File::open(layer.path).map_err(io_err)?;
    let mut buf = BufReader::with_capacity(READ_BUF, file);
    let kind = sniff(buf.fill_buf().map_err(io_err)?);
    let inner: Box<dyn Read> = match kind {
        Compression::None => Box::new(buf),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(io_err)?)
        }
    };
    let end = EndProbe::default();
    Ok((
        Box::new(Lenient {
            inner,
            read: 0,
            zeros: ZERO_TAIL,
            end: end.clone(),
        }),
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_media_types() {
        for ok in [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ] {
            assert!(is_layer_media_type(ok), "{ok}");
        }
        for bad in [
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            "application/vnd.sylabs.sif.layer.v1.sif",
            "application/vnd.oci.image.layer.v1.tarx",
        ] {
            assert!(!is_layer_media_type(bad), "{bad}");
        }
    }

    /// The zero tail is bounded and the probe records the real end.
    #[test]
    fn lenient_tail_is_bounded() {
        let end = EndProbe::default();
        let mut r = Lenient {
            inner: &b"abc"[..],
            read: 0,
            zeros: ZERO_TAIL,
            end: end.clone(),
        };
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(
            all.len(),
            3 + 511 + 1024,
            "padding to a block and two zero blocks"
        );
        assert_eq!(end.get(), Some(3));
        assert!(all[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn magic_bytes_decide_compression() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(sniff(b"etc/\0\0\0"), Compression::None);
        assert_eq!(sniff(&[]), Compression::None);
    }
}
