//! `sregistry info`: where the cache is and what it holds.

use anyhow::Result;

use super::{Ctx, output};
use crate::cli::InfoArgs;

pub fn run(ctx: &Ctx, _args: &InfoArgs) -> Result<()> {
    let info = ctx.cache.info(ctx.lock.kind)?;
    if ctx.json {
        return Ok(output::json(&info)?);
    }
    let s = &info.stats;
    output::line(format!(
        "cache:   {}\nformat:  {} (index schema {})\nindex:   {}\nnames:   {} ({} pinned)\nblobs:   {} ({})\nlocks:   {}",
        info.root.display(),
        info.format,
        s.schema_version,
        info.index.display(),
        s.names,
        s.pins,
        s.blobs,
        output::size(s.bytes),
        info.lock
    ))?;
    Ok(())
}
