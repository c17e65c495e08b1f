//! Fill a cache with many names quickly, for benchmarks (`bench/run.sh`).
//!
//! ```text
//! cargo run --release --example populate -- CACHE_DIR NAMES [BLOBS] [BATCH]
//! ```
//!
//! Creates `NAMES` names `bench/ns{i%100}/img{i}:v{i%7}` pointing at `BLOBS` distinct small
//! blobs (default `max(1, NAMES/100)`, at most `NAMES`), name `i` at blob `i % BLOBS`. The
//! blobs are written through `Cache::ingest` (hashed and fsynced outside the index lock,
//! as a pull's are); then `Cache::add_batch` puts every `BATCH` names (default 10,000) in
//! one write transaction of the index, the blobs being renamed into place in the first
//! one. A 100,000-name cache takes
//! seconds instead of the minutes of 100,000 separate `sregistry add` runs (each one a
//! durable commit).
//!
//! The records look like those `add` writes (source, size, added and last-use times), so
//! `get`, `list` and `info` work on the result as on any cache. Names already present are
//! re-pointed, so running it twice on the same directory is harmless.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use sregistry::cache::lock::LockOptions;
use sregistry::cache::{BatchName, Repoint};
use sregistry::{Cache, Reference};

/// Size of each blob: small, like a tiny image, but not trivially small.
const BLOB_BYTES: usize = 4096;

fn usage() -> ExitCode {
    eprintln!("usage: populate CACHE_DIR NAMES [BLOBS] [BATCH]");
    ExitCode::from(2)
}

/// The content of blob `j`: deterministic, distinct for each `j`.
fn blob_content(j: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOB_BYTES);
    let mut x = j.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    out.extend_from_slice(format!("sregistry bench blob {j}\n").as_bytes());
    while out.len() < BLOB_BYTES {
        // xorshift64*: cheap pseudo-random filler.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(BLOB_BYTES);
    out
}

/// The name of entry `i`.
fn name_of(i: u64) -> String {
    format!("bench/ns{}/img{}:v{}", i % 100, i, i % 7)
}

fn parse(arg: Option<&String>, what: &str) -> Result<Option<u64>, String> {
    match arg {
        None => Ok(None),
        Some(s) => s
            .replace('_', "")
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{what} must be a number, not `{s}`")),
    }
}

fn run(root: &Path, names: u64, blobs: u64, batch: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let cache = Cache::open(root, LockOptions::default())?;
    cache.ensure_layout()?;

    // Write every blob outside the lock (hash, fsync), as a pull does.
    let mut content = Vec::with_capacity(blobs as usize);
    let mut digests = Vec::with_capacity(blobs as usize);
    for j in 0..blobs {
        let mut ingest = cache.ingest(())?;
        ingest.write(blob_content(j).into())?;
        let c = ingest.seal()?;
        digests.push(c.digest());
        content.push(c);
    }
    let staged_at = start.elapsed();

    let named = (0..names).map(|i| {
        Ok(BatchName {
            name: Reference::parse(&name_of(i))?,
            digest: digests[(i % blobs) as usize],
            source: format!("/bench/src/img{i}.sif"),
        })
    });
    let named: Vec<BatchName> = named.collect::<anyhow::Result<_>>()?;
    // Names already present are re-pointed: a second run on the same cache is harmless.
    let txns = cache.add_batch(content, named, batch as usize, Repoint::Force)?;
    eprintln!(
        "populate: {names} names over {blobs} blobs in {txns} transactions into `{}` \
         ({:.2} s staging, {:.2} s total)",
        root.display(),
        staged_at.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 4 || args[0].starts_with('-') {
        return usage();
    }
    let parsed = (|| -> Result<(u64, u64, u64), String> {
        let names = parse(args.get(1), "NAMES")?.unwrap_or(0);
        let blobs = parse(args.get(2), "BLOBS")?
            .unwrap_or((names / 100).max(1))
            .clamp(1, names.max(1));
        let batch = parse(args.get(3), "BATCH")?.unwrap_or(10_000).max(1);
        Ok((names, blobs, batch))
    })();
    let (names, blobs, batch) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("populate: {e}");
            return usage();
        }
    };
    let root = std::path::absolute(&args[0]).unwrap_or_else(|_| PathBuf::from(&args[0]));
    match run(&root, names, blobs, batch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("populate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
