//! Writing a SIF file around data that is already in place.
//!
//! The layout is the one `siftool` 2 writes: the 128-byte global header at 0, the
//! descriptor table at 4096 with [`DESCRIPTORS_TOTAL`] records of 585 bytes, and the data
//! section right after the table ([`DATA_OFFSET`]). A caller places its objects in the data
//! section itself (a squashfs partition is written by another program, at an offset aligned
//! to 4096 as `siftool` aligns partitions), then calls [`write_header_and_table`] to write
//! the header and the table over the first [`DATA_OFFSET`] bytes. The reader in
//! [`super::sif`] and `siftool` read the result; the layout constants there and here agree.

use std::io::{self, Seek, SeekFrom, Write};

use super::sif::names::ARCHES;

/// Where the descriptor table starts.
pub(crate) const DESCRIPTORS_OFFSET: u64 = 4096;
/// Number of descriptor records in the table (the tools' default).
pub(crate) const DESCRIPTORS_TOTAL: u64 = 48;
/// Where the data section starts: right after the table.
pub(crate) const DATA_OFFSET: u64 = DESCRIPTORS_OFFSET + DESCRIPTORS_TOTAL * DESCRIPTOR_LEN as u64;
/// Alignment of partitions inside the data section.
pub(crate) const PARTITION_ALIGN: u64 = 4096;

const HEADER_LEN: usize = 128;
const DESCRIPTOR_LEN: usize = 585;
const LAUNCH_SCRIPT: &[u8] = b"#!/usr/bin/env run-singularity\n";
const GROUP_MASK: u32 = 0xf000_0000;
const PARTITION: i32 = 0x4004;
const GENERIC_JSON: i32 = 0x4006;
const FS_SQUASH: i32 = 1;
const PART_PRIMARY_SYSTEM: i32 = 2;

/// The SIF architecture code ("02" for amd64) of a Go architecture name, as OCI image
/// configs spell it; `None` for one SIF has no code for.
pub(crate) fn arch_code(goarch: &str) -> Option<&'static str> {
    ARCHES
        .iter()
        .find(|(_, name)| *name == goarch)
        .map(|(code, _)| *code)
}

/// What one data object is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ObjectKind {
    /// A squashfs primary system partition for the architecture code (see [`arch_code`]).
    PrimarySquashfs { arch: &'static str },
    /// A generic JSON object.
    GenericJson,
}

/// One data object already written at `offset` (inside the data section) with `size` bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Object {
    pub kind: ObjectKind,
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// Write the global header and the descriptor table of a SIF whose data section ends at
/// `file_end`. Objects get ids 1, 2, … in order, all in group 1; `arch` is the header's
/// primary architecture code, `now` the creation and modification time (Unix seconds),
/// `id` the image UUID.
pub(crate) fn write_header_and_table<W: Write + Seek>(
    w: &mut W,
    objects: &[Object],
    arch: &'static str,
    now: i64,
    id: [u8; 16],
    file_end: u64,
) -> io::Result<()> {
    if objects.len() as u64 > DESCRIPTORS_TOTAL {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many SIF objects",
        ));
    }
    let mut head = Vec::with_capacity(HEADER_LEN);
    head.extend_from_slice(&fixed(LAUNCH_SCRIPT, 32));
    head.extend_from_slice(&fixed(b"SIF_MAGIC", 10));
    head.extend_from_slice(&fixed(b"01", 3));
    head.extend_from_slice(&fixed(arch.as_bytes(), 3));
    head.extend_from_slice(&id);
    for v in [
        now,
        now,
        (DESCRIPTORS_TOTAL - objects.len() as u64) as i64,
        DESCRIPTORS_TOTAL as i64,
        DESCRIPTORS_OFFSET as i64,
        (DESCRIPTORS_TOTAL * DESCRIPTOR_LEN as u64) as i64,
        DATA_OFFSET as i64,
        file_end.saturating_sub(DATA_OFFSET) as i64,
    ] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    debug_assert_eq!(head.len(), HEADER_LEN);

    let mut table = vec![0u8; (DESCRIPTORS_TOTAL as usize) * DESCRIPTOR_LEN];
    for (i, obj) in objects.iter().enumerate() {
        let rec = descriptor(i as u32 + 1, obj, now);
        table[i * DESCRIPTOR_LEN..(i + 1) * DESCRIPTOR_LEN].copy_from_slice(&rec);
    }
    w.seek(SeekFrom::Start(0))?;
    w.write_all(&head)?;
    w.write_all(&vec![0u8; DESCRIPTORS_OFFSET as usize - HEADER_LEN])?;
    w.write_all(&table)?;
    w.flush()
}

fn descriptor(id: u32, obj: &Object, now: i64) -> Vec<u8> {
    let mut d = Vec::with_capacity(DESCRIPTOR_LEN);
    let (data_type, extra) = match &obj.kind {
        ObjectKind::PrimarySquashfs { arch } => {
            let mut e = Vec::new();
            e.extend_from_slice(&FS_SQUASH.to_le_bytes());
            e.extend_from_slice(&PART_PRIMARY_SYSTEM.to_le_bytes());
            e.extend_from_slice(&fixed(arch.as_bytes(), 3));
            (PARTITION, e)
        }
        ObjectKind::GenericJson => (GENERIC_JSON, Vec::new()),
    };
    d.extend_from_slice(&data_type.to_le_bytes());
    d.push(1); // used
    d.extend_from_slice(&id.to_le_bytes());
    d.extend_from_slice(&(GROUP_MASK | 1).to_le_bytes());
    d.extend_from_slice(&0u32.to_le_bytes()); // no link
    for v in [
        obj.offset as i64,
        obj.size as i64,
        obj.size as i64,
        now,
        now,
        0,
        0,
    ] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d.extend_from_slice(&fixed(obj.name.as_bytes(), 128));
    d.extend_from_slice(&fixed(&extra, 384));
    debug_assert_eq!(d.len(), DESCRIPTOR_LEN);
    d
}

/// `s` cut or zero-padded to `n` bytes (names keep a terminating NUL).
fn fixed(s: &[u8], n: usize) -> Vec<u8> {
    let mut v = s[..s.len().min(n.saturating_sub(1))].to_vec();
    v.resize(n, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::sif::{self, Detail};
    use std::io::Cursor;

    /// A written header and table read back by the project's parser: objects, kinds,
    /// positions, architecture, group, and the layout `siftool` uses.
    #[test]
    fn written_table_reads_back() {
        let json = br#"{"a":1}"#;
        let sq_off = DATA_OFFSET.div_ceil(PARTITION_ALIGN) * PARTITION_ALIGN + PARTITION_ALIGN;
        let end = sq_off + 8192;
        let mut buf = Cursor::new(vec![0u8; end as usize]);
        buf.get_mut()[DATA_OFFSET as usize..DATA_OFFSET as usize + json.len()]
            .copy_from_slice(json);
        let objects = [
            Object {
                kind: ObjectKind::PrimarySquashfs {
                    arch: arch_code("arm64").unwrap(),
                },
                name: "rootfs".into(),
                offset: sq_off,
                size: 8192,
            },
            Object {
                kind: ObjectKind::GenericJson,
                name: "oci-config.json".into(),
                offset: DATA_OFFSET,
                size: json.len() as u64,
            },
        ];
        write_header_and_table(&mut buf, &objects, "04", 1_700_000_000, [7; 16], end).unwrap();
        let info = sif::parse_bytes(buf.get_ref()).unwrap();
        assert_eq!(info.header.arch, "arm64");
        assert_eq!(info.header.descriptors_offset, 4096);
        assert_eq!(info.header.data_offset, 32176);
        assert_eq!(info.header.data_size, (end - DATA_OFFSET) as i64);
        assert_eq!(info.header.descriptors_free, 46);
        assert_eq!(info.descriptors.len(), 2);
        let part = &info.descriptors[0];
        assert_eq!(
            (part.id, part.group, part.offset, part.size),
            (1, Some(1), sq_off as i64, 8192)
        );
        assert_eq!(
            part.detail,
            Detail::Partition {
                fs: "Squashfs".into(),
                part: "*System".into(),
                arch: "arm64".into()
            }
        );
        let js = &info.descriptors[1];
        assert_eq!(js.kind, "JSON.Generic");
        assert_eq!(js.content.as_deref(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn arch_codes_follow_go_names() {
        assert_eq!(arch_code("amd64"), Some("02"));
        assert_eq!(arch_code("ppc64le"), Some("06"));
        assert_eq!(arch_code("riscv64"), Some("12"));
        assert_eq!(arch_code("wasm"), None);
    }
}
