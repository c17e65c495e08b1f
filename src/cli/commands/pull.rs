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
    opts.refetch = args.force;
    opts.platform = args.docker.platform.clone();
    opts.squashfs_comp = args.docker.squashfs_comp.clone();
    let pulled = remote::pull(&ctx.cache, &r, name.as_ref(), &opts)?;
    let entry = &pulled.entry;
    if ctx.json {
        // The entry, and whether this pull downloaded it or found the remote unchanged.
        #[derive(serde::Serialize)]
        struct Pulled<'a> {
            #[serde(flatten)]
            entry: output::EntryJson<'a>,
            downloaded: bool,
        }
        output::json(&Pulled {
            entry: output::EntryJson::from(entry),
            downloaded: pulled.downloaded,
        })?;
    } else {
        ctx.say(format!(
            "{} {} as {} ({})",
            if pulled.downloaded {
                "pulled"
            } else {
                "unchanged:"
            },
            r,
            entry.name,
            entry.digest.short()
        ));
        output::line(entry.path.display())?;
    }
    Ok(())
}
