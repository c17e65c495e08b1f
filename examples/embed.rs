//! A program that embeds the sregistry library, with none of the command line's code:
//! it adds a file, gets its path back, lists the cache and, given a registry reference,
//! pulls it once (a second pull finds it cached).
//!
//! ```text
//! cargo run --no-default-features --example embed -- CACHE_DIR FILE [oras://HOST/REPO:TAG]
//! ```
//!
//! Built without the `cli` feature it compiles neither clap nor indicatif; the library
//! prints nothing, so everything on the terminal here is this program's own.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use sregistry::cache::AddOptions;
use sregistry::cache::lock::{LockOptions, OnWait};
use sregistry::remote::{self, RemoteOptions, RemoteRef};
use sregistry::{Cache, Reference};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: embed CACHE_DIR FILE [oras://HOST/REPO:TAG]");
        return ExitCode::from(2);
    }
    match run(Path::new(&args[0]), Path::new(&args[1]), args.get(2)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    root: &Path,
    file: &Path,
    remote: Option<&String>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Lock waits reach this program through a hook; the library says nothing itself.
    let locks = LockOptions {
        on_wait: Some(OnWait(Arc::new(|lock: &Path| {
            eprintln!("(still waiting for {})", lock.display())
        }))),
        ..LockOptions::default()
    };
    let cache = Cache::open(root, locks)?;

    let name = Reference::parse("examples/embedded:1")?;
    let added = cache.add(file, &name, &AddOptions::default())?;
    println!(
        "added   {} -> {} ({} bytes)",
        added.name,
        added.digest,
        added.size.unwrap_or(0)
    );
    println!("get     {}", cache.get(&name)?.display());
    for e in cache.list(None)? {
        println!("list    {} {}", e.name, e.path.display());
    }

    if let Some(r) = remote {
        let remote = RemoteRef::parse(r)?;
        let opts = RemoteOptions::default();
        let first = remote::get_or_pull(&cache, &remote, &opts)?;
        let again = remote::get_or_pull(&cache, &remote, &opts)?;
        assert_eq!(
            first, again,
            "a second get of one remote gives the same file"
        );
        println!("pulled  {} -> {}", remote, first.display());
    }
    Ok(())
}
