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
    // A PLATFORM column when any image came from docker:// (each platform is an image).
    let platforms = entries.iter().any(|e| output::platform_of(e).is_some());
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut row = vec![
                format!("{}{}", e.name, if e.pinned { " (pinned)" } else { "" }),
                e.digest.short(),
                e.size.map(output::size).unwrap_or_else(|| "?".into()),
                output::age(e.added),
                e.last_used
                    .map(output::age)
                    .unwrap_or_else(|| "never".into()),
            ];
            if platforms {
                row.insert(1, output::platform_of(e).unwrap_or("-").to_string());
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "DIGEST", "SIZE", "ADDED", "LAST USED"];
    if platforms {
        header.insert(1, "PLATFORM");
    }
    Ok(output::table(&header, &rows)?)
}
