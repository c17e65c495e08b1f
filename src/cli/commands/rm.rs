//! `sregistry rm REF...`: remove names, and content no name uses any more.

use anyhow::Result;

use super::{Ctx, output, parse_ref};
use crate::cli::RmArgs;

pub fn run(ctx: &Ctx, args: &RmArgs) -> Result<()> {
    let refs = args
        .references
        .iter()
        .map(|s| parse_ref(s))
        .collect::<Result<Vec<_>>>()?;
    // Each name is removed from the cache that holds it: the caller's private cache first.
    let removed = ctx.caches()?.remove(&refs, args.keep_blob)?;
    if ctx.json {
        return Ok(output::json(&removed)?);
    }
    if !ctx.quiet {
        for n in &removed.names {
            output::line(format!("removed {n}"))?;
        }
    }
    // The removed copy shadowed another: `get` now answers that one. Said even with
    // --quiet: a job would otherwise run another image than the one its user removed.
    for r in &removed.revealed {
        eprintln!(
            "note: `{}` now resolves to the same name in {}",
            r.name,
            match &r.tier {
                Some(t) => format!("the read-only tier `{}`", t.display()),
                None => format!("the shared cache `{}`", ctx.cache.root().display()),
            }
        );
    }
    if !removed.blobs.is_empty() {
        ctx.say(format!(
            "deleted {} blob{}, freed {}",
            removed.blobs.len(),
            if removed.blobs.len() == 1 { "" } else { "s" },
            output::size(removed.bytes_freed)
        ));
    }
    Ok(())
}
