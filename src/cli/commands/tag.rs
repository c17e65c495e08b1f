//! `sregistry tag SRC DST`: another name for the same content.

use anyhow::Result;

use super::{Ctx, output, parse_ref, parse_target_ref};
use crate::cli::TagArgs;
use sregistry::cache::Repoint;

pub fn run(ctx: &Ctx, args: &TagArgs) -> Result<()> {
    let src = parse_ref(&args.source)?;
    let dst = parse_target_ref(&args.target)?;
    // In the cache that holds SRC: a name given to a private image stays private.
    let caches = ctx.caches()?;
    let entry = caches
        .holder(&src)
        .tag(&src, &dst, Repoint::from_force(args.force))
        .map_err(|e| caches.refuse_in_tier(e))?;
    if ctx.json {
        output::json(&output::EntryJson::from(&entry))?;
    } else {
        ctx.say(format!(
            "{} now points to {} (as {})",
            entry.name,
            entry.digest.short(),
            src.key()
        ));
    }
    Ok(())
}
