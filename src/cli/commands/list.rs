//! `sregistry list [PATTERN]`: the cached images, sorted by name.

use anyhow::Result;

use super::{Ctx, output};
use crate::cli::ListArgs;

pub fn run(ctx: &Ctx, args: &ListArgs) -> Result<()> {
    let entries = ctx.cache.list(args.pattern.as_deref())?;
    if ctx.json {
        let rows: Vec<output::EntryJson> = entries.iter().map(output::EntryJson::from).collect();
        return Ok(output::json(&rows)?);
    }
    if entries.is_empty() {
        ctx.say(match &args.pattern {
            Some(p) => format!("no cached image matches `{p}`"),
            None => format!(
                "the cache `{}` holds no images yet",
                ctx.cache.root().display()
            ),
        });
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                format!("{}{}", e.name, if e.pinned { " (pinned)" } else { "" }),
                e.digest.short(),
                e.size.map(output::size).unwrap_or_else(|| "?".into()),
                output::age(e.added),
                e.last_used
                    .map(output::age)
                    .unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    Ok(output::table(
        &["NAME", "DIGEST", "SIZE", "ADDED", "LAST USED"],
        &rows,
    )?)
}
