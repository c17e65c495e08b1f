//! `sregistry pull REMOTE [--name REF]`: download into the cache, print the path.

use anyhow::Result;

use super::{Ctx, output, parse_target_ref};
use crate::cli::PullArgs;
use sregistry::cache::Repoint;
use sregistry::remote::{self, RemoteRef};

pub fn run(ctx: &Ctx, args: &PullArgs) -> Result<()> {
    let r = RemoteRef::parse(&args.remote)?;
    let name = args.name.as_deref().map(parse_target_ref).transpose()?;
    let mut opts = super::remote_options(ctx, args.insecure, args.endpoint.clone())?;
    opts.repoint = Repoint::from_force(args.force);
    let entry = remote::pull(&ctx.cache, &r, name.as_ref(), &opts)?;
    if ctx.json {
        output::json(&output::EntryJson::from(&entry))?;
    } else {
        ctx.say(format!(
            "pulled {} as {} ({})",
            r,
            entry.name,
            entry.digest.short()
        ));
        output::line(entry.path.display())?;
    }
    Ok(())
}
