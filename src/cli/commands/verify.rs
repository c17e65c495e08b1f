//! `sregistry verify [REF...]`: re-hash and check (see [`sregistry::maintain::verify`]).

use anyhow::Result;

use super::{Ctx, output, parse_ref};
use crate::cli::VerifyArgs;
use crate::cli::exit::{ExitStatus, Reported};
use sregistry::maintain::verify::{self, VerifyOptions};

/// What to do about the kinds of problem found, and only those.
fn what_to_do(report: &verify::VerifyReport) -> String {
    let has = |k: &str| report.problems.iter().any(|p| p.kind == k);
    let mut said = Vec::new();
    if has("corrupt") {
        said.push("corrupt content was moved to quarantine/");
    }
    if has("corrupt") || has("missing") || has("unreadable") {
        said.push("run `sregistry verify --repair`, or pull or add the images named again");
    }
    if has("orphan") || has("stray-tmp") || has("foreign") {
        said.push("`sregistry gc` removes the leftovers");
    }
    if said.is_empty() {
        String::new()
    } else {
        format!("; {}", said.join("; "))
    }
}

pub fn run(ctx: &Ctx, args: &VerifyArgs) -> Result<()> {
    let names = args
        .references
        .iter()
        .map(|s| parse_ref(s))
        .collect::<Result<Vec<_>>>()?;
    let opts = |names| VerifyOptions {
        names,
        repair: args.repair,
        tmp_grace: args.tmp_grace,
        progress: None,
    };
    if args.check_tiers {
        return tiers(ctx, &opts(names));
    }
    // The caller's own private cache in a shared cache too (names given are checked in
    // the cache that holds them); another user's is never entered.
    let caches = sregistry::cache::Caches::new(&ctx.cache, &[])?;
    let (mine, rest) = caches.split_private(&names);
    let report = if !names.is_empty() && rest.is_empty() {
        None
    } else {
        // A name only a tier holds: verify checks the writable cache; say where it is.
        Some(
            verify::run(&ctx.cache, &opts(rest)).map_err(|e| {
                match ctx.caches().map(|c| c.refuse_in_tier(e)) {
                    Ok(sregistry::cache::CacheError::InTier { name, tier, .. }) => anyhow::anyhow!(
                        "image `{name}` is in the read-only tier `{}`, not in the writable cache: check it with `sregistry verify --tiers` (sregistry never repairs a tier; its admin publishes it again)",
                        tier.display()
                    ),
                    Ok(e) => e.into(),
                    Err(e) => e.into(),
                }
            })?,
        )
    };
    let private = match caches.private() {
        Some(p) if names.is_empty() || !mine.is_empty() => Some((verify::run(p, &opts(mine))?, p)),
        _ => None,
    };
    if ctx.json {
        let mut v = match &report {
            Some(r) => serde_json::to_value(r)?,
            None => serde_json::json!({}),
        };
        if let Some((r, _)) = &private {
            v["private"] = serde_json::to_value(r)?;
        }
        output::json(&v)?;
    }
    let mut clean = true;
    for (r, label) in report
        .iter()
        .map(|r| (r, None))
        .chain(private.iter().map(|(r, p)| (r, Some(p.root()))))
    {
        if let Some(root) = label
            && !ctx.json
        {
            ctx.say(format!("your private cache `{}`:", root.display()));
        }
        clean &= print(ctx, r)?;
    }
    if !clean {
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    Ok(())
}

/// `verify --tiers`: each tier checked read-only, one report per tier (exit 4 when any
/// found a problem).
fn tiers(ctx: &Ctx, opts: &VerifyOptions) -> Result<()> {
    let mut reports = Vec::new();
    for tier in &ctx.config.tiers {
        let cache = sregistry::cache::Cache::open_tier(tier)?;
        reports.push((tier.clone(), verify::run(&cache, opts)?));
    }
    if ctx.json {
        let rows: Vec<serde_json::Value> = reports
            .iter()
            .map(|(t, r)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["tier"] = t.display().to_string().into();
                v
            })
            .collect();
        output::json(&rows)?;
    }
    let mut clean = true;
    for (tier, report) in &reports {
        if !ctx.json {
            ctx.say(format!("tier `{}`:", tier.display()));
            print_report(ctx, report)?;
        }
        clean &= report.is_clean();
    }
    if reports.is_empty() {
        ctx.say("no tiers are configured (--tier, $SREGISTRY_TIERS, `tiers`)");
    }
    if !clean {
        eprintln!(
            "verify found problems in a tier; sregistry never changes a tier: its admin publishes it again from a good source with `sregistry tier publish --copy SRC TIER` (a plain publish links the files the tier holds, damaged or not)"
        );
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    Ok(())
}

/// Print one cache's report (unless `--json`); whether it is clean.
fn print(ctx: &Ctx, report: &verify::VerifyReport) -> Result<bool> {
    if !ctx.json {
        print_report(ctx, report)?;
    }
    if !report.is_clean() {
        if !ctx.json {
            eprintln!(
                "verify found {} problem(s){}",
                report.problems.len(),
                what_to_do(report)
            );
        }
        return Ok(false);
    }
    Ok(true)
}

/// A report as text: one line per problem, repair and unrepaired name, then a summary.
fn print_report(ctx: &Ctx, report: &verify::VerifyReport) -> Result<()> {
    for p in &report.problems {
        let names = if p.names.is_empty() {
            String::new()
        } else {
            format!(" [{}]", p.names.join(", "))
        };
        output::line(format!(
            "{:<11} {}{names}: {}",
            p.kind,
            p.path.display(),
            p.detail
        ))?;
    }
    for r in &report.repaired {
        output::line(format!("repaired    {r}"))?;
    }
    for r in &report.not_repaired {
        output::line(format!("unrepaired  {r}"))?;
    }
    ctx.say(format!(
        "verified {} blob{} ({}): {} problem{}{}",
        report.blobs_checked,
        if report.blobs_checked == 1 { "" } else { "s" },
        output::size(report.bytes_checked),
        report.problems.len(),
        if report.problems.len() == 1 { "" } else { "s" },
        if report.unreferenced > 0 {
            format!(", {} unused blob(s) for gc", report.unreferenced)
        } else {
            String::new()
        }
    ));
    Ok(())
}
