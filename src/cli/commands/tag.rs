//! `sregistry tag SRC DST`: another name for the same content.

use anyhow::Result;

use super::{Ctx, output, parse_ref, parse_target_ref};
use crate::cli::TagArgs;
use sregistry::cache::Repoint;

pub fn run(ctx: &Ctx, args: &TagArgs) -> Result<()> {
    let src = parse_ref(&args.source)?;
    let dst = parse_target_ref(&args.target)?;
    let entry = ctx
        .cache
        .tag(&src, &dst, Repoint::from_force(args.force))
        .map_err(|e| ctx.caches().refuse_in_tier(e))?;
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
