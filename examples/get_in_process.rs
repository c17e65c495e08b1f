//! `Cache::get` in process, per call, for benchmarks: the cost an embedding program (or
//! the Python package) pays for each `get` on a `Cache` it keeps open.
//!
//! ```text
//! cargo run --release --example get_in_process -- CACHE_DIR FILE [CALLS [NAMES]]
//! ```
//!
//! Adds FILE under NAMES names (default 1), warms up with 1,000 gets, then
//! times five rounds of CALLS/5 gets (default 100,000 calls), going round the names in
//! turn, and prints the best round's time per call in microseconds. With more names than
//! a kept `Cache` remembers records of (1,024), no get finds its name's records
//! remembered.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use sregistry::cache::lock::LockOptions;
use sregistry::cache::{AddOptions, BatchName, Repoint};
use sregistry::{Cache, Reference};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: get_in_process CACHE_DIR FILE [CALLS [NAMES]]");
        return ExitCode::from(2);
    }
    let calls: u32 = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(100_000);
    let names: u32 = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(1);
    match run(
        Path::new(&args[0]),
        Path::new(&args[1]),
        calls.max(5),
        names.max(1),
    ) {
        Ok(us) => {
            println!("{us:.2}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("get_in_process: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    root: &Path,
    file: &Path,
    calls: u32,
    names: u32,
) -> Result<f64, Box<dyn std::error::Error>> {
    let cache = Cache::open(root, LockOptions::default())?;
    let names = (1..=names)
        .map(|i| Reference::parse(&format!("bench/img:{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let first = cache.add(file, &names[0], &AddOptions::default())?;
    let more = names[1..].iter().map(|n| BatchName {
        name: n.clone(),
        digest: first.digest,
        source: first.source.clone().unwrap_or_default(),
    });
    cache.add_batch(Vec::new(), more, 0, Repoint::Force)?;
    let mut turn = names.iter().cycle();
    for _ in 0..1000 {
        cache.get(turn.next().unwrap())?;
    }
    let per_round = calls / 5;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..per_round {
            cache.get(turn.next().unwrap())?;
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / f64::from(per_round));
    }
    Ok(best)
}
