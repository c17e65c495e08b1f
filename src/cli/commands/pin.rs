//! `sregistry pin REF` / `unpin REF`: keep an image safe from gc, or stop doing so.

use anyhow::Result;

use super::{Ctx, output, parse_ref};
use crate::cli::PinArgs;

pub fn run(ctx: &Ctx, args: &PinArgs, pin: bool) -> Result<()> {
    let r = parse_ref(&args.reference)?;
    let caches = ctx.caches()?;
    let changed = caches
        .holder(&r)
        .set_pin(&r, pin)
        .map_err(|e| caches.refuse_in_tier(e))?;
    if ctx.json {
        return Ok(output::json(&serde_json::json!({
            "name": r.key(), "pinned": pin, "changed": changed
        }))?);
    }
    let verb = if pin { "pinned" } else { "unpinned" };
    if changed {
        ctx.say(format!("{verb} {}", r.key()));
    } else {
        ctx.say(format!("{} was already {verb}", r.key()));
    }
    Ok(())
}
