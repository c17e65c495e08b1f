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
    if let Some(remote::Unreached::Unreachable(why)) = &pulled.unreached {
        // Said even with --quiet: the answer may be older than the remote's.
        eprintln!(
            "warning: {why}; answering from the cache: `{}` was pulled {}",
            entry.name,
            super::output::age(entry.added)
        );
    }
    if ctx.json {
        // The entry, and whether this pull downloaded it or found the remote unchanged.
        #[derive(serde::Serialize)]
        struct Pulled<'a> {
            #[serde(flatten)]
            entry: output::EntryJson<'a>,
            downloaded: bool,
            /// Answered from the cache without the remote: `offline` or `unreachable`.
            #[serde(skip_serializing_if = "Option::is_none")]
            unreached: Option<&'static str>,
        }
        output::json(&Pulled {
            entry: output::EntryJson::from(entry),
            downloaded: pulled.downloaded,
            unreached: pulled.unreached.as_ref().map(|u| match u {
                remote::Unreached::Offline => "offline",
                remote::Unreached::Unreachable(_) => "unreachable",
            }),
        })?;
    } else {
        ctx.say(format!(
            "{} {} as {} ({})",
            match (&pulled.unreached, pulled.downloaded) {
                (Some(_), _) => "from the cache:",
                (None, true) => "pulled",
                (None, false) => "unchanged:",
            },
            r,
            entry.name,
            entry.digest.short()
        ));
        output::line(entry.path.display())?;
    }
    Ok(())
}
