//! The printer: data to stdout (text or `--json`), never anything else there.
//!
//! Times print as RFC 3339 UTC in JSON and as ages ("3 hours ago") in text; sizes as
//! exact bytes in JSON and binary units in text.

use std::io::{self, Write};
use std::path::PathBuf;

use serde::Serialize;

use sregistry::cache::Entry;
use sregistry::format::clock;

/// JSON shape of one cache entry.
#[derive(Serialize)]
pub struct EntryJson<'a> {
    pub name: &'a str,
    pub digest: String,
    pub size: Option<u64>,
    pub added: String,
    pub last_used: Option<String>,
    pub pinned: bool,
    /// As recorded, except that an older version's record of an `https://` query shows
    /// no values ([`sregistry::remote::shown_source`]).
    pub source: Option<String>,
    /// The platform of an image pulled from `docker://` (`os/arch[/variant]`).
    pub platform: Option<&'a str>,
    pub labels: &'a std::collections::BTreeMap<String, String>,
    pub media_type: Option<&'a str>,
    pub path: &'a PathBuf,
    /// The read-only tier that holds the name, as configured; `null` for the writable
    /// cache.
    pub tier: Option<&'a PathBuf>,
    /// Whether the name is in the caller's private cache (inside a shared cache).
    pub private: bool,
}

impl<'a> From<&'a Entry> for EntryJson<'a> {
    fn from(e: &'a Entry) -> Self {
        EntryJson {
            name: &e.name,
            digest: e.digest.to_string(),
            size: e.size,
            added: clock::rfc3339(e.added),
            last_used: e.last_used.map(clock::rfc3339),
            pinned: e.pinned,
            source: e.source.as_deref().map(sregistry::remote::shown_source),
            platform: platform_of(e),
            labels: &e.labels,
            media_type: e.media_type.as_deref(),
            path: &e.path,
            tier: e.tier.as_ref(),
            private: e.private,
        }
    }
}

/// A path as a table cell shows it: on one line, each control character escaped as Rust
/// writes it (`\n`, `\u{1b}`), the rest as it is (a line break in a tier's path would
/// otherwise split a row in two). `--json` gives the path unchanged.
pub fn cell_path(p: &std::path::Path) -> String {
    let shown = p.display().to_string();
    if !shown.chars().any(char::is_control) {
        return shown;
    }
    shown
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The platform of an image pulled from `docker://`, as its name records it.
pub fn platform_of(e: &Entry) -> Option<&str> {
    e.labels
        .get(sregistry::remote::docker::LABEL_PLATFORM)
        .map(String::as_str)
}

/// Write `value` as pretty JSON and a newline to stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> io::Result<()> {
    // Buffered: stdout is line-buffered, and pretty JSON has many short lines.
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, value).map_err(|e| {
        e.io_error_kind()
            .map(io::Error::from)
            .unwrap_or_else(|| io::Error::other(e))
    })?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Write one line to stdout.
pub fn line(s: impl std::fmt::Display) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{s}")?;
    out.flush()
}

/// Binary-unit size: `1.5 GiB`.
pub fn size(bytes: u64) -> String {
    sregistry::format::units::format_size(bytes)
}

/// How long ago a Unix time was, coarsely: `just now`, `5 minutes ago`, `3 days ago`.
pub fn age(then: u64) -> String {
    let secs = clock::now().saturating_sub(then);
    let (n, unit) = match secs {
        0..60 => return "just now".into(),
        60..3600 => (secs / 60, "minute"),
        3600..86_400 => (secs / 3600, "hour"),
        86_400..2_592_000 => (secs / 86_400, "day"),
        2_592_000..31_536_000 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Print rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut put = |cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut line = String::new();
        for (i, c) in cells.enumerate() {
            if i + 1 < widths.len() {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            } else {
                line.push_str(c);
            }
        }
        writeln!(out, "{}", line.trim_end())
    };
    put(&mut header.iter().copied())?;
    for r in rows {
        put(&mut r.iter().map(String::as_str))?;
    }
    out.flush()
}
