//! `sregistry export REF DIR`: write a docker:// image out as an OCI image layout.

use anyhow::Result;

use super::{Ctx, output, parse_ref};
use crate::cli::ExportArgs;
use sregistry::remote::oci_layout;

pub fn run(ctx: &Ctx, args: &ExportArgs) -> Result<()> {
    let name = parse_ref(&args.reference)?;
    let tag = args.tag.clone().unwrap_or_else(|| name.tag().to_string());
    let lookup = ctx.caches()?;
    let done = oci_layout::export(&lookup.reader(&name)?, &name, &args.dir, &tag)?;
    if ctx.json {
        output::json(&serde_json::json!({
            "name": name.key(),
            "dir": done.dir,
            "tag": done.tag,
            "manifest": done.manifest,
            "linked": done.linked,
            "copied": done.copied,
        }))?;
    } else {
        ctx.say(format!(
            "exported {} to {}:{} ({} blob(s) linked, {} copied)",
            name.key(),
            done.dir.display(),
            done.tag,
            done.linked,
            done.copied
        ));
    }
    Ok(())
}
