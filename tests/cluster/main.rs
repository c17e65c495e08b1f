//! The cluster tests (tests/cluster/README.md): one NFSv4.2 server and three client nodes,
//! each a qemu guest with Debian's kernel, sharing one cache. Run with `make test-cluster`
//! (or `cargo test --test cluster -- [NAME...]`); plain `cargo test` and `cargo nextest
//! run` leave this target alone (`test = false` in Cargo.toml).
//!
//! Its own runner (`harness = false`): the cluster boots once, the tests run one after
//! another on it, each on its own cache directory on the export, and the cluster is torn
//! down whatever happens (Drop, and qemu dies with this process).

mod checks;
mod harness;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Instant;

use harness::Cluster;

type Test = fn(&Cluster);

const TESTS: &[(&str, Test)] = &[
    ("doctor_locks_coherent", checks::doctor_locks_coherent),
    ("concurrent_adds_and_gets", checks::concurrent_adds_and_gets),
    ("gc_against_running_jobs", checks::gc_against_running_jobs),
    ("pull_once_across_nodes", checks::pull_once_across_nodes),
    (
        "node_dies_holding_the_lock",
        checks::node_dies_holding_the_lock,
    ),
    (
        "server_reboots_under_load",
        checks::server_reboots_under_load,
    ),
    (
        "writer_whose_lock_the_server_forgot",
        checks::writer_whose_lock_the_server_forgot,
    ),
    (
        "live_tmp_files_across_nodes",
        checks::live_tmp_files_across_nodes,
    ),
    (
        "replaced_blob_across_nodes",
        checks::replaced_blob_across_nodes,
    ),
    ("tier_published_over_nfs", checks::tier_published_over_nfs),
    ("figures", checks::figures),
];

/// The binaries handed to the nodes: `bin/sregistry` is `$SREGISTRY_CLUSTER_BIN` (what
/// `make test-cluster CLUSTER_BUILD=release` sets: the release build), else the test build
/// (plain `make test-cluster`); `bin/sregistry-hooks`
/// is always the test build, which has the pause points (`test-hooks`).
fn host_files(host: &Path) {
    let hooks = env!("CARGO_BIN_EXE_sregistry");
    let main = std::env::var("SREGISTRY_CLUSTER_BIN").unwrap_or_else(|_| {
        eprintln!("cluster: SREGISTRY_CLUSTER_BIN unset; the nodes run the test build");
        hooks.to_string()
    });
    for (src, dst) in [(main.as_str(), "sregistry"), (hooks, "sregistry-hooks")] {
        let to = host.join("bin").join(dst);
        std::fs::copy(src, &to).unwrap_or_else(|e| panic!("copy {src}: {e}"));
        // The test build carries 150 MB of debug information the nodes do not need.
        let _ = std::process::Command::new("strip").arg(&to).status();
    }
    checks::make_data(host);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let chosen: Vec<&(&str, Test)> = TESTS
        .iter()
        .filter(|(n, _)| args.is_empty() || args.iter().any(|a| n.contains(a.as_str())))
        .collect();
    if chosen.is_empty() {
        eprintln!("no cluster test matches {args:?}");
        std::process::exit(2);
    }
    let t0 = Instant::now();
    let cluster = Cluster::boot(3, host_files);
    eprintln!(
        "cluster: server + {} clients up in {:.1} s (kernel {})",
        cluster.clients.len(),
        t0.elapsed().as_secs_f64(),
        cluster.kernel
    );
    let mut failed = Vec::new();
    for (name, test) in chosen {
        let t = Instant::now();
        eprintln!("cluster: {name} ...");
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| test(&cluster)));
        let secs = t.elapsed().as_secs_f64();
        match r {
            Ok(()) => eprintln!("cluster: {name} ok ({secs:.1} s)"),
            Err(_) => {
                eprintln!("cluster: {name} FAILED ({secs:.1} s)");
                failed.push(*name);
            }
        }
    }
    drop(cluster);
    eprintln!(
        "cluster: {} failed; total {:.1} s",
        failed.len(),
        t0.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        eprintln!("cluster: failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}
