//! `sregistry tier publish SRC DEST`: a cache becomes a new version of a read-only tier
//! (`sregistry::cache::publish`).

use std::time::Duration;

use anyhow::Result;

use super::{Ctx, output};
use crate::cli::args::{TierAction, TierArgs};
use sregistry::cache::Cache;

pub fn run(ctx: &Ctx, args: &TierArgs) -> Result<()> {
    match &args.action {
        TierAction::Publish(a) => {
            let src = Cache::open(&std::path::absolute(&a.source)?, ctx.lock.clone())?;
            if !src.exists() {
                anyhow::bail!(crate::cli::exit::UsageError(format!(
                    "`{}` is not a cache: nothing to publish",
                    a.source.display()
                )));
            }
            let dest = std::path::absolute(&a.dest)?;
            let done = src.publish_tier(&dest, Duration::from_secs(a.keep), a.copy, &ctx.lock)?;
            if ctx.json {
                return Ok(output::json(&done)?);
            }
            output::line(done.version.display())?;
            ctx.say(format!(
                "published {} names, {} blobs ({}; {} linked from the version before) as the current version of `{}`",
                done.names,
                done.blobs,
                output::size(done.bytes),
                done.linked,
                dest.display()
            ));
            for r in &done.removed {
                ctx.say(format!("removed the old version `{}`", r.display()));
            }
            Ok(())
        }
    }
}
