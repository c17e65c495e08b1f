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
    let opts = VerifyOptions {
        names,
        repair: args.repair,
        tmp_grace: args.tmp_grace,
        progress: None,
    };
    if args.check_tiers {
        return tiers(ctx, &opts);
    }
    let report = verify::run(&ctx.cache, &opts)?;
    show(ctx, &report)
}

/// `verify --tiers`: each tier checked read-only, one report per tier (exit 4 when any
/// found a problem).
fn tiers(ctx: &Ctx, opts: &VerifyOptions) -> Result<()> {
    let mut reports = Vec::new();
    for tier in ctx.caches().tier_paths() {
        let cache = sregistry::cache::Cache::open_tier(tier)?;
        reports.push((tier.to_path_buf(), verify::run(&cache, opts)?));
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
            "verify found problems in a tier; sregistry never changes a tier: publish it again from a good source"
        );
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    Ok(())
}

fn show(ctx: &Ctx, report: &verify::VerifyReport) -> Result<()> {
    if ctx.json {
        output::json(report)?;
    } else {
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
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    Ok(())
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
