//! `sregistry init [--shared --group G] [DIR]`: create (or convert) a cache.

use std::path::Path;

use anyhow::{Context, Result};

use super::output;
use crate::cache::Cache;
use crate::cli::InitArgs;
use crate::lock::LockOptions;
use crate::settings::Settings;
use crate::shared;

pub fn run(
    args: &InitArgs,
    global_cache: Option<&Path>,
    lock: &LockOptions,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let root = Cache::resolve_root(args.dir.as_deref().or(global_cache))?;
    let settings = match (&args.group, args.shared) {
        (Some(g), true) => {
            let (name, gid) = shared::lookup_group(g)?;
            Settings::shared(&name, gid)
        }
        _ => Settings::default(),
    };
    shared::init(&root, &settings, lock.clone())
        .with_context(|| format!("cannot initialise the cache at `{}`", root.display()))?;
    if json {
        output::json(&serde_json::json!({ "root": root, "settings": settings }))?;
    } else if !quiet {
        match &settings.group {
            Some(g) => eprintln!(
                "initialised a cache shared by group `{g}` at `{}` (directories 2775, index and locks 664, images 444)",
                root.display()
            ),
            None => eprintln!("initialised a cache at `{}`", root.display()),
        }
    }
    Ok(())
}
