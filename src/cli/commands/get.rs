//! `sregistry get REF`: print the cached path of an image (the hot path).

use anyhow::Result;

use super::{Ctx, output, parse_ref};
use crate::cli::GetArgs;
use sregistry::cache::Lookup;

pub fn run(ctx: &Ctx, args: &GetArgs) -> Result<()> {
    if sregistry::remote::is_remote(&args.reference) {
        let remote = sregistry::remote::RemoteRef::parse(&args.reference)?;
        let mut opts = super::remote_options(ctx, args.insecure, args.endpoint.clone())?;
        opts.platform = args.docker.platform.clone();
        opts.squashfs_comp = args.docker.squashfs_comp.clone();
        let path = sregistry::remote::get_or_pull(&ctx.cache, &remote, &opts)?;
        let name = remote.default_name(&opts)?;
        let path = if args.verify {
            Lookup::of(&ctx.cache)?.get_verified(&name)?
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
    // The caller's private cache first (one failed `lstat` in a shared cache for a user
    // who has none; nothing at all in a cache that is not shared), then the cache.
    let lookup = Lookup::of(&ctx.cache)?;
    let path = if args.verify {
        lookup.get_verified(&r)?
    } else {
        lookup.get(&r)?
    };
    if ctx.json {
        output::json(&serde_json::json!({ "name": r.key(), "path": path }))?;
    } else {
        output::line(path.display())?;
    }
    Ok(())
}
