//! `sregistry init [--shared --group G] [DIR]`: create a cache, or share an existing one
//! (what is refused and why: [`sregistry::maintain::shared`]).

use std::path::Path;

use anyhow::{Context, Result};

use super::output;
use crate::cli::InitArgs;
use sregistry::cache::Cache;
use sregistry::cache::Settings;
use sregistry::cache::lock::LockOptions;
use sregistry::maintain::group;
use sregistry::maintain::shared::{self, Outcome};

pub fn run(
    args: &InitArgs,
    config: &sregistry::settings::Config,
    lock: &LockOptions,
    json: bool,
    quiet: bool,
) -> Result<()> {
    let root = Cache::resolve_root(args.dir.as_deref(), config)?;
    let want = match (&args.group, args.shared) {
        (Some(g), true) => {
            // A group that does not exist is a bad argument (exit 2); a lookup that
            // could not be made is an error (exit 1): `GroupError::kind`.
            let g = group::resolve(g)?;
            Settings::shared(&g.name, g.gid)
        }
        _ => Settings::default(),
    };
    let done = shared::init(&root, &want, lock.clone())
        .with_context(|| format!("cannot initialise the cache at `{}`", root.display()))?;
    let settings = done.cache.settings();
    if json {
        output::json(&serde_json::json!({
            "root": root,
            "outcome": done.outcome,
            "settings": settings,
            "previous_settings": done.previous,
            "changed": done.changed,
        }))?;
    } else if !quiet {
        eprintln!("{}", message(&root, &done));
    }
    Ok(())
}

fn message(root: &Path, done: &shared::Initialised) -> String {
    let root = root.display();
    let settings = done.cache.settings();
    let group = settings.group.as_deref().unwrap_or("?");
    let modes =
        "directories 2775 (the root 3775, sticky), private/ 3730, index and locks 664, images 444";
    let previous_group = done.previous.as_ref().and_then(|p| p.group.as_deref());
    match (done.outcome, settings.shared) {
        (Outcome::Created, true) => {
            format!("initialised a cache shared by group `{group}` at `{root}` ({modes})")
        }
        (Outcome::Created, false) => format!("initialised a cache at `{root}`"),
        (Outcome::AlreadyShared, _) => format!(
            "`{root}` is already a cache shared by group `{group}`; left as it is (`sregistry init --shared --group {group} {root}` re-applies its modes)"
        ),
        (Outcome::Unchanged, true) => format!(
            "`{root}` is already a cache shared by group `{group}`; {}",
            match done.changed {
                0 => "group and modes are as they should be".to_string(),
                n => format!("re-applied group and modes to {n} path(s) ({modes})"),
            }
        ),
        (Outcome::Unchanged, false) => format!("`{root}` is already a cache; nothing to do"),
        (Outcome::Converted, _) => {
            format!("the cache at `{root}` is now shared by group `{group}` ({modes})")
        }
        (Outcome::Regrouped, _) => format!(
            "the cache at `{root}` was shared by group `{}`; it is now shared by group `{group}` ({modes})",
            previous_group.unwrap_or("?")
        ),
    }
}
