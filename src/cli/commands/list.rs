//! `sregistry list [PATTERN]`: the cached images, sorted by name, from the caller's
//! private cache (in a shared cache), the writable cache, then each tier, in the one
//! lookup order (`sregistry::cache::tiers`).

use anyhow::Result;
use serde::Serialize;

use super::{Ctx, output};
use crate::cli::ListArgs;

/// A row of `list --json`: the entry, and whether an earlier cache has the same name.
#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    entry: output::EntryJson<'a>,
    shadowed: bool,
}

pub fn run(ctx: &Ctx, args: &ListArgs) -> Result<()> {
    let listed = ctx.caches()?.list(args.pattern.as_deref(), args.all)?;
    if ctx.json {
        let rows: Vec<Row> = listed
            .iter()
            .map(|l| Row {
                entry: output::EntryJson::from(&l.entry),
                shadowed: l.shadowed,
            })
            .collect();
        return Ok(output::json(&rows)?);
    }
    if listed.is_empty() {
        ctx.say(match &args.pattern {
            Some(p) => format!("no cached image matches `{p}`"),
            None => format!(
                "the cache `{}` holds no images yet",
                ctx.cache.root().display()
            ),
        });
        return Ok(());
    }
    // A PLATFORM column when any image came from docker:// (each platform is an image),
    // a TIER column when any comes from a tier.
    let platforms = listed
        .iter()
        .any(|l| output::platform_of(&l.entry).is_some());
    let tiers = listed.iter().any(|l| l.entry.tier.is_some());
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|l| {
            let e = &l.entry;
            let mut name = e.name.clone();
            if e.pinned {
                name.push_str(" (pinned)");
            }
            if e.private {
                name.push_str(" (private)");
            }
            if l.shadowed {
                name.push_str(" (shadowed)");
            }
            let mut row = vec![
                name,
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
            if tiers {
                row.push(match &e.tier {
                    Some(t) => output::cell_path(t),
                    None => "-".into(),
                });
            }
            row
        })
        .collect();
    let mut header = vec!["NAME", "DIGEST", "SIZE", "ADDED", "LAST USED"];
    if platforms {
        header.insert(1, "PLATFORM");
    }
    if tiers {
        header.push("TIER");
    }
    Ok(output::table(&header, &rows)?)
}
