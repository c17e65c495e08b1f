//! `sregistry add FILE --name REF`: copy (or move) a file into the cache under a name.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::{Ctx, output, parse_target_ref};
use crate::cli::AddArgs;
use crate::cli::exit::{ExitStatus, Reported, UsageError};
use sregistry::cache::{AddOptions, NotRemoved, Repoint};

/// Parse `KEY=VALUE` labels; keys are non-empty and have no `=`.
pub fn parse_labels(raw: &[String]) -> Result<BTreeMap<String, String>, UsageError> {
    let mut labels = BTreeMap::new();
    for l in raw {
        match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                labels.insert(k.trim().to_string(), v.to_string());
            }
            _ => {
                return Err(UsageError(format!(
                    "label `{}` is not KEY=VALUE (for example --label maintainer=alice)",
                    sregistry::format::reference::shown(l)
                )));
            }
        }
    }
    Ok(labels)
}

pub fn run(ctx: &Ctx, args: &AddArgs) -> Result<()> {
    let name = parse_target_ref(&args.name)?;
    let labels = parse_labels(&args.labels)?;
    // `--move`: why the file's path could not be removed once its name was committed.
    let kept = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let told = kept.clone();
    let opts = AddOptions {
        move_file: args.move_file,
        repoint: Repoint::from_force(args.force),
        labels,
        not_removed: Some(NotRemoved(std::sync::Arc::new(move |_, e| {
            *told.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }))),
        ..AddOptions::default()
    };
    let entry = ctx
        .cache
        .add(&args.file, &name, &opts)
        .with_context(|| format!("cannot add `{}` as `{}`", args.file.display(), name.key()))?;
    if ctx.json {
        output::json(&output::EntryJson::from(&entry))?;
    } else {
        output::line(entry.path.display())?;
    }
    if let Some(why) = kept.lock().unwrap_or_else(|p| p.into_inner()).take() {
        eprintln!(
            "warning: `{}` is in the cache as `{}`, but the file was copied, not moved: it cannot be removed ({why}); remove it by hand, or make its directory writable",
            args.file.display(),
            name.key()
        );
        return Err(Reported {
            status: ExitStatus::Failure,
        }
        .into());
    }
    Ok(())
}
