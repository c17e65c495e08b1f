//! `sregistry config [--check FILE]`: the settings in effect and where each came from
//! (the table and the order of the sources: [`sregistry::settings`]), or one file checked.

use std::path::Path;

use anyhow::Result;
use serde_json::{Map, json};

use super::output;
use sregistry::cache::Cache;
use sregistry::settings::{self, Config, Form, KEYS, Key, Source, Value};

/// Print every key with its value and source.
pub fn show(config: &Config, json: bool) -> Result<()> {
    if json {
        let mut keys = Map::new();
        for key in KEYS {
            let value = shown(config, key);
            let mut entry = Map::new();
            entry.insert(
                "value".into(),
                value.map_or(json!(null), |v| json_value(key, &v)),
            );
            entry.insert("variable".into(), json!(key.var));
            entry.insert("flag".into(), json!(key.flag));
            entry.extend(source_json(config.source(key)));
            keys.insert(key.name.into(), serde_json::Value::Object(entry));
        }
        let files: Vec<_> = config
            .files()
            .iter()
            .map(|f| json!({ "path": f.path, "found": f.found }))
            .collect();
        output::json(&json!({ "files": files, "settings": keys }))?;
        return Ok(());
    }
    let mut out = String::new();
    for f in config.files() {
        let state = if f.found { "read" } else { "not there" };
        out.push_str(&format!("# file {} ({state})\n", f.path.display()));
    }
    for key in KEYS {
        let line = match shown(config, key) {
            Some(v) => format!("{} = {}", key.name, toml_value(key, &v)),
            None => format!("# {} is not set", key.name),
        };
        let from = match config.source(key) {
            Source::Default => match key.default {
                settings::Preset::Derived(d) if shown(config, key).is_none() => {
                    format!("default: {d}")
                }
                _ => "default".to_string(),
            },
            other => other.to_string(),
        };
        out.push_str(&format!("{line:<40} # {from}\n"));
    }
    output::line(out.trim_end())?;
    Ok(())
}

/// Check one file; list its settings.
pub fn check(file: &Path, json: bool) -> Result<()> {
    let given = settings::check_file(file)?;
    if json {
        let mut keys = Map::new();
        for g in &given {
            keys.insert(
                g.key.name.into(),
                json!({ "value": json_value(g.key, &g.value), "line": g.line }),
            );
        }
        output::json(&json!({ "file": file, "valid": true, "settings": keys }))?;
        return Ok(());
    }
    let mut out = format!(
        "# {}: valid, {} setting{}\n",
        file.display(),
        given.len(),
        if given.len() == 1 { "" } else { "s" }
    );
    for g in &given {
        let line = format!("{} = {}", g.key.name, toml_value(g.key, &g.value));
        out.push_str(&format!("{line:<40} # line {}\n", g.line));
    }
    output::line(out.trim_end())?;
    Ok(())
}

/// The value to show: the cache's root worked out when no source gave it.
fn shown(config: &Config, key: &Key) -> Option<Value> {
    match config.value(key) {
        None if key.name == settings::CACHE.name => {
            Cache::resolve_root(None, config).ok().map(Value::Path)
        }
        v => v,
    }
}

/// A value as a configuration file would give it (a password never).
fn toml_value(key: &Key, v: &Value) -> String {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    match v {
        _ if key.form == Form::Secret => quoted("********"),
        Value::Path(p) => quoted(&p.to_string_lossy()),
        Value::Text(t) => quoted(t),
        Value::Size(n) => quoted(&size_text(*n)),
        Value::Duration(d) => quoted(&settings::format_duration(*d).replace(' ', "")),
        Value::Count(n) => n.to_string(),
        Value::Word(w) => quoted(w),
        Value::Bool(b) => b.to_string(),
        Value::Paths(ps) => {
            let items: Vec<String> = ps.iter().map(|p| quoted(&p.to_string_lossy())).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Remotes(rs) => {
            let items: Vec<String> = rs.iter().map(|r| quoted(r)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// A value for `--json`: sizes in bytes, durations in seconds.
fn json_value(key: &Key, v: &Value) -> serde_json::Value {
    match v {
        _ if key.form == Form::Secret => json!("********"),
        Value::Path(p) => json!(p),
        Value::Text(t) => json!(t),
        Value::Size(n) => json!(n),
        Value::Duration(d) => json!(d.as_secs_f64()),
        Value::Count(n) => json!(n),
        Value::Word(w) => json!(w),
        Value::Bool(b) => json!(b),
        Value::Paths(ps) => json!(ps),
        Value::Remotes(rs) => json!(rs),
    }
}

fn source_json(s: &Source) -> Map<String, serde_json::Value> {
    let v = match s {
        Source::Default => json!({ "source": "default" }),
        Source::File { path, line } => json!({ "source": "file", "file": path, "line": line }),
        Source::Variable(v) => json!({ "source": "variable", "from": v }),
        Source::Flag(f) => json!({ "source": "flag", "from": f }),
    };
    match v {
        serde_json::Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A size in the largest binary unit that divides it (`64G`), else in bytes.
fn size_text(n: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if n > 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}
