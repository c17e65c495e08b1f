//! `sregistry doctor`: check the cache (see [`sregistry::maintain::doctor`]); with `--repair-index`,
//! rebuild a damaged index from its journal.

use anyhow::Result;

use super::{Ctx, output};
use crate::cli::DoctorArgs;
use crate::cli::exit::{ExitStatus, Reported};
use sregistry::maintain::doctor::{self, Repaired, Status};

pub fn run(ctx: &Ctx, args: &DoctorArgs) -> Result<()> {
    if args.repair_index {
        return repair(ctx);
    }
    let checks = doctor::run(&ctx.cache, ctx.lock.kind);
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if ctx.json {
        output::json(&checks)?;
    } else {
        for c in &checks {
            let tag = match c.status {
                Status::Pass => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            output::line(format!("{tag} {:<12} {}", c.check, c.detail))?;
        }
    }
    if failed > 0 {
        if !ctx.json {
            eprintln!("doctor found {failed} problem(s)");
        }
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    Ok(())
}

/// Rebuild the index; exit 4 when the rebuild could not account for everything: journal
/// lines skipped, image files kept under recovered names, or names whose image file is
/// missing.
fn repair(ctx: &Ctx) -> Result<()> {
    let db = ctx.cache.index_path().display();
    let journal = ctx.cache.journal_path().display();
    let r = match doctor::repair_index(&ctx.cache)? {
        Repaired::Index(r) => r,
        Repaired::Nothing => {
            if ctx.json {
                output::json(&serde_json::json!({ "repaired": "nothing" }))?;
            } else {
                output::line(format!("`{db}` is not damaged; nothing to repair"))?;
            }
            return Ok(());
        }
        Repaired::Journal => {
            if ctx.json {
                output::json(&serde_json::json!({ "repaired": "journal" }))?;
            } else {
                output::line(format!(
                    "`{db}` is not damaged; its journal `{journal}` was rewritten from it"
                ))?;
            }
            return Ok(());
        }
    };
    if ctx.json {
        output::json(&serde_json::json!({ "repaired": "index", "rebuilt": r }))?;
    } else {
        if r.from_blobs_alone {
            output::line(format!(
                "rebuilt `{db}` from the image files alone (there is no journal `{journal}`): {} names, {} blobs, {} pins",
                r.names, r.blobs, r.pins
            ))?;
        } else {
            output::line(format!(
                "rebuilt `{db}` from `{journal}`: {} names, {} blobs, {} pins ({} transactions replayed)",
                r.names, r.blobs, r.pins, r.replayed
            ))?;
        }
        if let Some(aside) = &r.moved_aside {
            output::line(format!(
                "the damaged index is kept as `{}`",
                aside.display()
            ))?;
        }
        if r.blob_records_from_files > 0 {
            output::line(format!(
                "{} blob record(s) were made from the image files",
                r.blob_records_from_files
            ))?;
        }
        if !r.skipped_lines.is_empty() {
            output::line(format!(
                "warn: journal line(s) {:?} could not be read and were skipped (the journal is kept as `{}`); the names they held may be among the recovered images below",
                r.skipped_lines,
                r.journal_aside
                    .as_deref()
                    .unwrap_or(ctx.cache.journal_path())
                    .display()
            ))?;
        }
        if !r.recovered.is_empty() {
            output::line(format!(
                "warn: {} image file(s) had no name and are kept, pinned, under recovered names (`sregistry tag` one to name it, `sregistry unpin` and `sregistry rm` what you do not need):",
                r.recovered.len()
            ))?;
            for rec in &r.recovered {
                output::line(format!(
                    "  {}  {} bytes{}",
                    rec.name,
                    rec.size,
                    if rec.media_type.is_some() {
                        "  SIF"
                    } else {
                        ""
                    }
                ))?;
            }
        }
        if !r.missing_blobs.is_empty() {
            output::line(format!(
                "warn: {} name(s) point at an image file that is missing: {} (`sregistry rm` them, or add them again)",
                r.missing_blobs.len(),
                r.missing_blobs.join(", ")
            ))?;
        }
    }
    if !r.missing_blobs.is_empty() || !r.skipped_lines.is_empty() || !r.recovered.is_empty() {
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    Ok(())
}
