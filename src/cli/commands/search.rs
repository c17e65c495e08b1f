//! `sregistry search oras://HOST[/REPO]`: tags of a repository, or a registry's catalog.

use anyhow::Result;

use super::{Ctx, output};
use crate::cli::SearchArgs;

pub fn run(ctx: &Ctx, args: &SearchArgs) -> Result<()> {
    let opts = super::remote_options(ctx, args.insecure, None)?;
    let found = sregistry::remote::search(&args.remote, &opts)?;
    if ctx.json {
        return Ok(output::json(&found)?);
    }
    for f in found {
        output::line(f)?;
    }
    Ok(())
}
