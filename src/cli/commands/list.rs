//! `sregistry list [PATTERN]`: the cached images, sorted by name.

use anyhow::Result;

use super::{Ctx, output};
use crate::cli::ListArgs;
use sregistry::cache::{Lookup, Place};

pub fn run(ctx: &Ctx, args: &ListArgs) -> Result<()> {
    // The caller's private images (in a shared cache) with the cache's, by name.
    let placed = Lookup::of(&ctx.cache)?.list(args.pattern.as_deref())?;
    let private = |p: &Place| *p == Place::Private;
    if ctx.json {
        let rows: Vec<serde_json::Value> = placed
            .iter()
            .map(|(p, e)| {
                let mut v = serde_json::to_value(output::EntryJson::from(e))?;
                if private(p) {
                    v["private"] = true.into();
                }
                Ok(v)
            })
            .collect::<Result<_>>()?;
        return Ok(output::json(&rows)?);
    }
    let entries: Vec<&sregistry::cache::Entry> = placed.iter().map(|(_, e)| e).collect();
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
        .zip(&placed)
        .map(|(e, (place, _))| {
            let mut row = vec![
                format!(
                    "{}{}{}",
                    e.name,
                    if e.pinned { " (pinned)" } else { "" },
                    if private(place) { " (private)" } else { "" }
                ),
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
