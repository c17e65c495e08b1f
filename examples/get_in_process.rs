//! `Cache::get` in process, per call, for benchmarks: the cost an embedding program (or
//! the Python package) pays for each `get` on a `Cache` it keeps open.
//!
//! ```text
//! cargo run --release --example get_in_process -- CACHE_DIR FILE [CALLS]
//! ```
//!
//! Adds FILE under one name, warms up with 1,000 gets, then times five rounds of CALLS/5
//! gets of that name (default 100,000 calls) and prints the best round's time per call
//! in microseconds.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use sregistry::cache::AddOptions;
use sregistry::cache::lock::LockOptions;
use sregistry::{Cache, Reference};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: get_in_process CACHE_DIR FILE [CALLS]");
        return ExitCode::from(2);
    }
    let calls: u32 = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(100_000);
    match run(Path::new(&args[0]), Path::new(&args[1]), calls.max(5)) {
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

fn run(root: &Path, file: &Path, calls: u32) -> Result<f64, Box<dyn std::error::Error>> {
    let cache = Cache::open(root, LockOptions::default())?;
    let name = Reference::parse("bench/img:1")?;
    cache.add(file, &name, &AddOptions::default())?;
    for _ in 0..1000 {
        cache.get(&name)?;
    }
    let per_round = calls / 5;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..per_round {
            cache.get(&name)?;
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / f64::from(per_round));
    }
    Ok(best)
}
