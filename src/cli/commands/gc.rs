//! `sregistry gc`: remove what is not needed (see [`sregistry::maintain::gc`] for the protocol).

use anyhow::Result;

use super::{Ctx, output};
use crate::cli::GcArgs;
use sregistry::maintain::gc::{self, GcOptions};

pub fn run(ctx: &Ctx, args: &GcArgs) -> Result<()> {
    let opts = GcOptions {
        max_size: args.max_size,
        max_age: args.max_age,
        min_idle: args.min_idle,
        tmp_grace: args.tmp_grace,
        dry_run: args.dry_run,
        progress: None,
    };
    let report = gc::run(&ctx.cache, &opts)?;
    // The caller's own private cache in a shared cache, after it (another user's is
    // never entered: it is not this user's to read).
    let private = match ctx.cache.own_private()? {
        Some(p) => Some((gc::run(&p, &opts)?, p)),
        None => None,
    };
    if ctx.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some((r, _)) = &private {
            v["private"] = serde_json::to_value(r)?;
        }
        return Ok(output::json(&v)?);
    }
    print(ctx, &report)?;
    if let Some((r, p)) = &private {
        ctx.say(format!("your private cache `{}`:", p.root().display()));
        print(ctx, r)?;
    }
    Ok(())
}

fn print(ctx: &Ctx, report: &gc::GcReport) -> Result<()> {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    if !ctx.quiet {
        for n in &report.names {
            output::line(format!(
                "{verb} {} ({}, last used {})",
                n.name,
                n.reason,
                output::age(n.last_used)
            ))?;
        }
    }
    ctx.say(format!(
        "{}: {} name{}, {} blob{}, {} tmp file{}; {} {}, {} kept",
        if report.dry_run { "dry run" } else { "gc" },
        report.names.len(),
        plural(report.names.len()),
        report.blobs.len(),
        plural(report.blobs.len()),
        report.tmp_files,
        plural(report.tmp_files),
        output::size(report.bytes_freed),
        if report.dry_run {
            "would be freed"
        } else {
            "freed"
        },
        output::size(report.bytes_kept),
    ));
    if report.over_budget {
        // A warning even under -q: the budget cannot be met, an admin should know.
        eprintln!(
            "warning: the cache is still over --max-size ({} kept): what remains is pinned or used within --min-idle",
            output::size(report.bytes_kept)
        );
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
