//! Convert the image `TAG` of a local OCI image layout (as `umoci` or `skopeo copy oci:`
//! write it) to a SIF with `sregistry::convert::write_sif`, reading the layer blobs where
//! they are; prints what the conversion reports. Used to measure the converter:
//!
//! ```text
//! cargo run --example convert_layout -- LAYOUT_DIR TAG OUT.sif [COMPRESSION]
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use sregistry::convert::{ConvertOptions, LayerFile, write_sif};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [layout, tag, out, rest @ ..] = args.as_slice() else {
        eprintln!("usage: convert_layout LAYOUT_DIR TAG OUT.sif [COMPRESSION]");
        return ExitCode::from(2);
    };
    match run(Path::new(layout), tag, Path::new(out), rest.first()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convert_layout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    layout: &Path,
    tag: &str,
    out: &Path,
    comp: Option<&String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let json = |p: PathBuf| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        Ok(serde_json::from_slice(&fs::read(p)?)?)
    };
    let index = json(layout.join("index.json"))?;
    let desc = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        })
        .ok_or_else(|| format!("no tag `{tag}` in `{}`", layout.display()))?;
    let manifest = json(blob(desc["digest"].as_str().unwrap_or_default()))?;
    let config = fs::read(blob(
        manifest["config"]["digest"].as_str().unwrap_or_default(),
    ))?;
    let layers: Vec<(PathBuf, String, String)> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let d = l["digest"].as_str().unwrap_or_default().to_string();
            (
                blob(&d),
                l["mediaType"].as_str().unwrap_or_default().to_string(),
                d,
            )
        })
        .collect();
    let files: Vec<LayerFile<'_>> = layers
        .iter()
        .map(|(p, m, d)| LayerFile {
            path: p,
            media_type: m,
            digest: d,
        })
        .collect();
    let arch = serde_json::from_slice::<serde_json::Value>(&config)?["architecture"]
        .as_str()
        .unwrap_or("amd64")
        .to_string();
    let mut opts = ConvertOptions {
        arch,
        ..ConvertOptions::default()
    };
    if let Some(c) = comp {
        opts.compression = c.clone();
    }
    fs::write(out, b"")?;
    let t = Instant::now();
    let done = write_sif(&files, &config, out, &opts)?;
    println!(
        "{} entries, squashfs {} bytes, SIF {} bytes, {} skipped, {:.2} s",
        done.entries,
        done.squashfs_bytes,
        done.sif_bytes,
        done.skipped.len(),
        t.elapsed().as_secs_f64()
    );
    for s in &done.skipped {
        println!("skipped `{}` in `{}`: {}", s.path, s.layer, s.reason);
    }
    Ok(())
}
