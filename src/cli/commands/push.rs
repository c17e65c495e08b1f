//! `sregistry push REF REMOTE`: upload a cached image.

use anyhow::Result;

use super::{Ctx, output, parse_ref};
use crate::cli::PushArgs;
use sregistry::remote::{self, RemoteRef};

pub fn run(ctx: &Ctx, args: &PushArgs) -> Result<()> {
    let name = parse_ref(&args.reference)?;
    let r = RemoteRef::parse(&args.remote)?;
    let opts = super::remote_options(ctx, args.insecure, args.endpoint.clone())?;
    let lookup = ctx.caches()?;
    let to = remote::push(&lookup.reader(&name)?, &name, &r, &opts)?;
    if ctx.json {
        output::json(&serde_json::json!({ "name": name.key(), "remote": to }))?;
    } else {
        ctx.say(format!("pushed {} to {to}", name.key()));
    }
    Ok(())
}
