//! `get` latency under load, for benchmarks (`bench/gc_verify.sh`).
//!
//! ```text
//! cargo run --release --example get_load -- SREGISTRY_BIN CACHE NAME READERS SECONDS PERIOD_MS [ADD_FILE...]
//! ```
//!
//! Runs READERS threads that each run `SREGISTRY_BIN get NAME` once every PERIOD_MS
//! (open loop, staggered starts: the way many batch jobs ask, not a busy loop that would
//! only measure CPU starvation on a small machine) for SECONDS, timing every process from
//! spawn to exit, while one writer thread runs `add` of the given files back to back
//! (under fresh names) and a `gc` after every tenth add. Prints one JSON object: the number
//! of gets, failures, writes, and the p50, p90, p99 and max latency in milliseconds.

use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        eprintln!(
            "usage: get_load SREGISTRY_BIN CACHE NAME READERS SECONDS PERIOD_MS [ADD_FILE...]"
        );
        return ExitCode::from(2);
    }
    let (bin, cache, name) = (args[0].clone(), args[1].clone(), args[2].clone());
    let readers: usize = args[3].parse().unwrap_or(64);
    let secs: u64 = args[4].parse().unwrap_or(10);
    let period = Duration::from_millis(args[5].parse().unwrap_or(100));
    let files: Vec<String> = args[6..].to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let failures = Arc::new(Mutex::new(0u64));
    let writes = Arc::new(Mutex::new(0u64));
    let mut handles = Vec::new();
    for k in 0..readers {
        let (bin, cache, name, stop, lat, failures) = (
            bin.clone(),
            cache.clone(),
            name.clone(),
            stop.clone(),
            lat.clone(),
            failures.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            // Stagger the readers over one period.
            std::thread::sleep(period * k as u32 / readers.max(1) as u32);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = Command::new(&bin)
                    .args(["--cache", &cache, "get", &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                mine.push(t.elapsed().as_secs_f64() * 1000.0);
                if !ok {
                    *failures.lock().unwrap() += 1;
                }
                if let Some(rest) = period.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    if !files.is_empty() {
        let (bin, cache, stop, writes) = (bin.clone(), cache.clone(), stop.clone(), writes.clone());
        handles.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let f = &files[(i as usize) % files.len()];
                let _ = Command::new(&bin)
                    .args(["--cache", &cache, "add", f, "--name", &format!("load/w{i}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if i % 10 == 9 {
                    let _ = Command::new(&bin)
                        .args(["--cache", &cache, "gc", "-q"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                i += 1;
                *writes.lock().unwrap() = i;
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() as f64 - 1.0) * p).round() as usize]
    };
    println!(
        "{{\"gets\": {}, \"failures\": {}, \"writes\": {}, \"p50_ms\": {:.2}, \"p90_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        l.len(),
        failures.lock().unwrap(),
        writes.lock().unwrap(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        l.last().copied().unwrap_or(0.0)
    );
    ExitCode::SUCCESS
}
