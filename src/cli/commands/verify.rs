//! `sregistry verify [REF...]`: re-hash and check (see [`sregistry::maintain::verify`]).

use anyhow::Result;

use super::{Ctx, output, parse_ref};
use crate::cli::VerifyArgs;
use crate::cli::exit::{ExitStatus, Reported};
use sregistry::maintain::verify::{self, VerifyOptions};

pub fn run(ctx: &Ctx, args: &VerifyArgs) -> Result<()> {
    let names = args
        .references
        .iter()
        .map(|s| parse_ref(s))
        .collect::<Result<Vec<_>>>()?;
    let report = verify::run(
        &ctx.cache,
        &VerifyOptions {
            names,
            repair: args.repair,
            tmp_grace: args.tmp_grace,
        },
    )?;
    if ctx.json {
        output::json(&report)?;
    } else {
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
    }
    if !report.is_clean() {
        if !ctx.json {
            eprintln!(
                "verify found {} problem(s); corrupt content is quarantined, run `sregistry gc` for leftovers",
                report.problems.len()
            );
        }
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    Ok(())
}
