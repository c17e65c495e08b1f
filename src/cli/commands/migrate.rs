//! `sregistry migrate [--from DIR] [--dry-run] [--move]`: import the old Python client's
//! images (see [`sregistry::maintain::migrate`] for what it promises).

use anyhow::Result;

use super::{Ctx, output};
use crate::cli::MigrateArgs;
use crate::cli::exit::{ExitStatus, Reported};
use sregistry::maintain::migrate::{self, MigrateOptions, Outcome};

pub fn run(ctx: &Ctx, args: &MigrateArgs) -> Result<()> {
    let dir = match &args.from {
        Some(d) => d.clone(),
        None => migrate::default_dir(&ctx.config)?,
    };
    let db = migrate::database_path(&dir);
    let opts = MigrateOptions {
        dry_run: args.dry_run,
        move_files: args.move_files,
        batch: 0,
    };
    // The errors name the database or the cache themselves.
    let report = migrate::run(&ctx.cache, &db, &opts)?;
    let verb = if report.dry_run {
        "would import"
    } else {
        "imported"
    };
    for r in &report.rows {
        let file = r
            .file
            .as_ref()
            .map(|f| format!("`{}`", f.display()))
            .unwrap_or_else(|| "no file".into());
        match &r.outcome {
            Outcome::Imported {
                name,
                normalized_from,
            } if !ctx.json && !ctx.quiet => {
                let mut note = normalized_from
                    .as_ref()
                    .map(|old| format!(", name normalised from `{old}`"))
                    .unwrap_or_default();
                if r.collection_from_uri {
                    note.push_str(", its collection row is gone: collection taken from its uri");
                }
                output::line(format!("{verb} {name} (row {} `{}`{note})", r.id, r.uri))?;
            }
            Outcome::AlreadyThere { name } if !ctx.json && !ctx.quiet => {
                output::line(format!("already there {name} (row {} `{}`)", r.id, r.uri))?;
            }
            o if !o.is_in_cache() => {
                // Even under -q: a row left behind is what the exit status is about.
                eprintln!(
                    "not imported: row {} `{}` ({file}): {}",
                    r.id,
                    r.uri,
                    o.why()
                );
            }
            _ => {}
        }
        if let (Some(why), Outcome::Imported { name, .. }) = (&r.not_removed, &r.outcome) {
            // Even under -q: the exit status is about it.
            eprintln!(
                "warning: row {} `{}`: {file} is in the cache as `{name}`, but was copied, not moved: it cannot be removed ({why}); remove it by hand, or make its directory writable",
                r.id, r.uri
            );
        }
    }
    if ctx.json {
        output::json(&report)?;
    }
    ctx.say(format!(
        "{}: {} {verb}, {} already there, {} not imported, from `{}`{}",
        if report.dry_run { "dry run" } else { "migrate" },
        report.imported,
        report.already_there,
        report.not_imported,
        report.database.display(),
        match (report.moved && !report.dry_run, report.not_removed) {
            (false, _) => String::new(),
            (true, 0) => " (files moved; the old database still lists them)".into(),
            (true, n) => format!(
                " (files moved, but {n} copied and not removed from their old paths, see the warnings; the old database still lists them)"
            ),
        }
    ));
    if report.not_removed > 0 {
        return Err(Reported {
            status: ExitStatus::Failure,
        }
        .into());
    }
    if report.not_imported > 0 {
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    Ok(())
}
