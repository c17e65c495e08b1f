//! `sregistry add FILE --name REF`: copy (or move) a file into the cache under a name.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::{Ctx, output, parse_target_ref};
use crate::cli::AddArgs;
use crate::cli::exit::UsageError;
use sregistry::cache::{AddOptions, Repoint};

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
    let opts = AddOptions {
        move_file: args.move_file,
        repoint: Repoint::from_force(args.force),
        labels,
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
    Ok(())
}
