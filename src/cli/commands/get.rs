//! `sregistry get REF`: print the cached path of an image (the hot path).

use anyhow::Result;

use super::{Ctx, output, parse_ref};
use crate::cli::GetArgs;

pub fn run(ctx: &Ctx, args: &GetArgs) -> Result<()> {
    if sregistry::remote::is_remote(&args.reference) {
        let remote = sregistry::remote::RemoteRef::parse(&args.reference)?;
        let mut opts = super::remote_options(ctx, args.insecure, args.endpoint.clone())?;
        opts.platform = args.docker.platform.clone();
        opts.squashfs_comp = args.docker.squashfs_comp.clone();
        let path = sregistry::remote::get_or_pull_in(&ctx.caches()?, &remote, &opts)?;
        let name = remote.default_name(&opts)?;
        let path = if args.verify {
            // Looked up afresh: the pull may have just made the caller's private cache.
            ctx.caches()?.get_verified(&name)?
        } else {
            path
        };
        if ctx.json {
            return Ok(output::json(
                &serde_json::json!({ "name": name.key(), "path": path, "remote": remote.to_string() }),
            )?);
        }
        return Ok(output::line(path.display())?);
    }
    let r = parse_ref(&args.reference)?;
    // The caller's private cache first (in a shared cache), then the cache, then each tier.
    let caches = ctx.caches()?;
    let path = if args.verify {
        caches.get_verified(&r)?
    } else {
        caches.get(&r)?
    };
    if ctx.json {
        output::json(&serde_json::json!({ "name": r.key(), "path": path }))?;
    } else {
        output::line(path.display())?;
    }
    Ok(())
}
