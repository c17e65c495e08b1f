//! `export NAME DIR`: a converted `docker://` image written back out as an OCI image
//! layout (what `skopeo copy oci:DIR:TAG ...` and `umoci unpack --image DIR:TAG` read).
//!
//! # What it writes
//!
//! `DIR/oci-layout`, `DIR/blobs/sha256/<hex>` for the config and every layer, an OCI image
//! manifest made from them (the layers' and config's digests, sizes and media types, the
//! Docker ones given their OCI names), and `DIR/index.json` listing that manifest with
//! `org.opencontainers.image.ref.name` = TAG. DIR must be new or empty, or an OCI layout
//! already: then the blobs are added and TAG is (re)pointed in its index. TAG must fit the
//! image layout spec's `ref.name` grammar (`valid_ref_name`); a bad TAG, and a DIR that
//! is a file or a directory of other files, are refused before anything is written.
//!
//! # Promises
//!
//! * The blobs come from the image's parts, opened under the cache's shared lock
//!   ([`Cache::open_parts`]); each is hard-linked from the store where the filesystem
//!   allows (the store's blobs are read-only and never change), copied from the open file
//!   where it does not, and never modified.
//! * A part gc has dropped makes the export fail before anything is written, naming the
//!   fix (pull the image again).
//! * `index.json` is replaced by a rename, so a reader sees the old or the new one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::error::RemoteError;
use crate::cache::{Cache, OpenPart};
use crate::format::digest::sha256_hex;
use crate::format::reference::Reference;

const LAYOUT_FILE: &str = "oci-layout";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What [`export`] wrote.
#[derive(Debug)]
pub struct Exported {
    pub dir: PathBuf,
    pub tag: String,
    /// The manifest's digest (`sha256:...`).
    pub manifest: String,
    /// How many blobs were hard-linked, and how many copied.
    pub linked: usize,
    pub copied: usize,
}

/// The OCI media type for a layer or config media type (Docker's names mapped).
fn oci_media_type(t: &str) -> &str {
    match t {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        }
        "application/vnd.docker.container.image.v1+json" => {
            "application/vnd.oci.image.config.v1+json"
        }
        other => other,
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RemoteError + '_ {
    move |source| RemoteError::ExportIo {
        path: path.to_path_buf(),
        source,
    }
}

fn refuse(dir: &Path, reason: impl Into<String>) -> RemoteError {
    RemoteError::ExportTarget {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether `tag` fits the OCI image layout spec's grammar for
/// `org.opencontainers.image.ref.name`:
///
/// ```text
/// ref       ::= component ("/" component)*
/// component ::= alphanum (separator alphanum)*
/// alphanum  ::= [A-Za-z0-9]+
/// separator ::= [-._:@+] | "--"
/// ```
fn valid_ref_name(tag: &str) -> bool {
    tag.split('/').all(|c| {
        let b = c.as_bytes();
        if !b.first().is_some_and(u8::is_ascii_alphanumeric) {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_alphanumeric() {
                i += 1;
                continue;
            }
            i += match (b[i], b.get(i + 1)) {
                (b'-', Some(b'-')) => 2,
                (c, _) if b"-._:@+".contains(&c) => 1,
                _ => return false,
            };
            if !b.get(i).is_some_and(u8::is_ascii_alphanumeric) {
                return false;
            }
        }
        true
    })
}

/// Write the image `name` into the OCI layout `dir` under `tag`.
pub fn export(
    cache: &Cache,
    name: &Reference,
    dir: &Path,
    tag: &str,
) -> Result<Exported, RemoteError> {
    if !valid_ref_name(tag) {
        return Err(RemoteError::ExportTag {
            tag: crate::format::reference::shown(tag),
            reason: "it does not fit the grammar".into(),
        });
    }
    let parts = cache.open_parts(name)?;
    if parts.len() < 2 {
        return Err(RemoteError::Export {
            name: name.key(),
            detail: "it was not converted from a container image (only docker:// pulls keep their layers); nothing was written".into(),
        });
    }
    if let Some(gone) = parts.iter().find(|p| p.record.is_none()) {
        return Err(RemoteError::Export {
            name: name.key(),
            detail: format!(
                "its layer {} was collected by gc; `sregistry pull --force` of its source fetches it again (nothing was written)",
                gone.digest
            ),
        });
    }
    let sha = |p: &OpenPart| {
        p.record
            .as_ref()
            .and_then(|r| r.remote_digest.clone())
            .unwrap_or_default()
    };
    if let Some(p) = parts.iter().find(|p| !sha(p).starts_with("sha256:")) {
        return Err(RemoteError::Export {
            name: name.key(),
            detail: format!(
                "its part {} has no sha256 digest; nothing was written",
                p.digest
            ),
        });
    }
    prepare_dir(dir)?;
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let (mut linked, mut copied) = (0, 0);
    for p in &parts {
        let hex = sha(p).trim_start_matches("sha256:").to_string();
        let dest = blobs.join(&hex);
        if dest.exists() {
            continue;
        }
        if fs::hard_link(&p.path, &dest).is_ok() {
            linked += 1;
            continue;
        }
        copy_in(p, &dest)?;
        copied += 1;
    }
    let (config, layers) = parts.split_last().expect("two parts or more");
    let desc = |p: &OpenPart| {
        let r = p.record.as_ref().expect("checked above");
        json!({
            "mediaType": oci_media_type(r.media_type.as_deref().unwrap_or("")),
            "digest": sha(p),
            "size": r.size,
        })
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc(config),
        "layers": layers.iter().map(desc).collect::<Vec<_>>(),
    });
    let body = serde_json::to_vec(&manifest).unwrap_or_default();
    let digest = sha256_hex(&body);
    let mpath = blobs.join(digest.trim_start_matches("sha256:"));
    write_atomically(&mpath, &body)?;
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| refuse(dir, format!("its index.json is not JSON ({e})")))?,
        Err(_) => json!({"schemaVersion": 2, "manifests": []}),
    };
    let entries = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| refuse(dir, "its index.json has no manifests list"))?;
    entries.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
    let mut annotations = BTreeMap::new();
    annotations.insert(REF_NAME, tag);
    entries.push(json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": body.len(),
        "annotations": annotations,
    }));
    write_atomically(
        &index_path,
        &serde_json::to_vec_pretty(&index).unwrap_or_default(),
    )?;
    Ok(Exported {
        dir: dir.to_path_buf(),
        tag: tag.to_string(),
        manifest: digest,
        linked,
        copied,
    })
}

/// Make `dir` an OCI layout: new, empty, or one already.
fn prepare_dir(dir: &Path) -> Result<(), RemoteError> {
    match fs::read_dir(dir) {
        Ok(mut rd) => {
            let is_layout = dir.join(LAYOUT_FILE).is_file();
            if rd.next().is_some() && !is_layout {
                return Err(refuse(
                    dir,
                    "it holds files and is not an OCI image layout; give a new or empty directory",
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) => not_a_dir(dir),
                _ => io_err(dir)(e),
            })?;
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Err(not_a_dir(dir)),
        Err(e) => return Err(io_err(dir)(e)),
    }
    let layout = dir.join(LAYOUT_FILE);
    if !layout.is_file() {
        write_atomically(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    Ok(())
}

fn not_a_dir(dir: &Path) -> RemoteError {
    refuse(
        dir,
        "it is not a directory (a file is there, or in its path); give a new or empty directory, or an OCI image layout",
    )
}

/// Copy a part from its open file into `dest` (through a temporary name).
fn copy_in(p: &OpenPart, dest: &Path) -> Result<(), RemoteError> {
    let tmp = dest.with_extension("partial");
    let mut src = p.file.as_ref().expect("checked above");
    let mut out = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let copied = io::copy(&mut src, &mut out).and_then(|_| out.sync_all());
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(dest)(e));
    }
    fs::rename(&tmp, dest).map_err(io_err(dest))
}

/// Write `body` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, body: &[u8]) -> Result<(), RemoteError> {
    let tmp = path.with_extension("partial");
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(body)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::valid_ref_name;

    /// The image layout spec's `ref.name` grammar, case by case.
    #[test]
    fn layout_tags_follow_the_ref_name_grammar() {
        for ok in [
            "1",
            "latest",
            "1.0",
            "v2-rc1",
            "a--b",
            "a_b",
            "a:b",
            "a@b",
            "a+b",
            "lab/tool",
            "Lab/Tool/1.0",
            "UPPER",
        ] {
            assert!(valid_ref_name(ok), "{ok}");
        }
        for bad in [
            "", "-a", "a-", "_a", ".a", "a..b", "a._b", "a---b", "a b", "a/", "/a", "a//b", "a#b",
            "a%b", "ñ", "a\nb",
        ] {
            assert!(!valid_ref_name(bad), "{bad:?}");
        }
    }
}
