//! `sregistry inspect REF`: the index record, and the SIF header and objects of the file.

use anyhow::Result;

use super::{Ctx, output, parse_ref};
use crate::cli::InspectArgs;
use crate::cli::exit::{ExitStatus, Reported};
use sregistry::format::clock;
use sregistry::format::sif;

pub fn run(ctx: &Ctx, args: &InspectArgs) -> Result<()> {
    let r = parse_ref(&args.reference)?;
    let caches = ctx.caches()?;
    let entry = caches.entry(&r)?;
    let present = entry.path.is_file();
    let sif_result = if present {
        sif::read_if_sif(&entry.path)
    } else {
        None
    };
    let quarantined = if present {
        None
    } else if entry.tier.is_none() {
        caches.holder(&r).quarantined(&entry.digest)
    } else {
        None
    };
    if ctx.json {
        let mut v = serde_json::to_value(output::EntryJson::from(&entry))?;
        v["present"] = present.into();
        if let Some(q) = &quarantined {
            v["quarantined"] = q.display().to_string().into();
        }
        v["sif"] = match &sif_result {
            Some(Ok(info)) => serde_json::to_value(info)?,
            Some(Err(e)) => serde_json::json!({ "error": e.to_string() }),
            None => serde_json::Value::Null,
        };
        output::json(&v)?;
    } else {
        let mut s = String::new();
        let mut kv = |k: &str, v: String| s.push_str(&format!("{k:<10} {v}\n"));
        kv("name:", entry.name.clone());
        if entry.private {
            kv(
                "private:",
                "yes (in your private cache; no other user can read it)".into(),
            );
        }
        kv("digest:", entry.digest.to_string());
        kv("path:", entry.path.display().to_string());
        kv(
            "size:",
            entry
                .size
                .map(|b| format!("{} ({b} bytes)", output::size(b)))
                .unwrap_or_else(|| "unknown".into()),
        );
        kv("added:", format!("{} UTC", clock::format_utc(entry.added)));
        kv(
            "last used:",
            entry
                .last_used
                .map(|t| format!("{} UTC", clock::format_utc(t)))
                .unwrap_or_else(|| "never".into()),
        );
        kv("pinned:", if entry.pinned { "yes" } else { "no" }.into());
        if let Some(t) = &entry.tier {
            kv("tier:", format!("{} (read-only)", t.display()));
        }
        if let Some(src) = &entry.source {
            kv("source:", sregistry::remote::shown_source(src));
        }
        if let Some(p) = output::platform_of(&entry) {
            kv("platform:", p.to_string());
        }
        for (k, v) in &entry.labels {
            kv("label:", format!("{k}={v}"));
        }
        match &sif_result {
            Some(Ok(info)) => s.push_str(&format!("\n{info}")),
            Some(Err(e)) => kv("format:", format!("not a readable SIF file ({e})")),
            None if !present => match &quarantined {
                Some(q) => kv(
                    "file:",
                    format!(
                        "QUARANTINED at `{}` (its content did not match its digest; pull or add the image again)",
                        q.display()
                    ),
                ),
                None => kv("file:", "MISSING (run `sregistry verify`)".into()),
            },
            None => kv("format:", "not a SIF file".into()),
        }
        output::line(s.trim_end())?;
    }
    if let Some(q) = &quarantined {
        eprintln!(
            "error: the content of `{}` was quarantined by verify (now at `{}`): it no longer matched its digest; run `sregistry verify --repair`, or pull or add the image again",
            entry.name,
            q.display()
        );
        return Err(Reported {
            status: ExitStatus::Problem,
        }
        .into());
    }
    if !present {
        eprintln!(
            "error: the file of `{}` is missing from the cache (`{}`); run `sregistry verify`",
            entry.name,
            entry.path.display()
        );
        return Err(Reported {
            status: ExitStatus::Failure,
        }
        .into());
    }
    Ok(())
}
