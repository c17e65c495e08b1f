//! One configuration file: TOML, one `key = value` per setting, keys from
//! [`super::KEYS`]. Every fault is one line naming the file, the line and the key:
//! text that is not TOML, a key that is not a setting (a `[table]` included), a value of
//! the wrong type, a value its form refuses.

use std::path::{Path, PathBuf};

use super::form::{self, Refused, Value};
use super::{ConfigError, KEYS, Key};

/// A setting a file gives: its key, its value, and the line it is on.
#[derive(Clone, Debug)]
pub struct Given {
    pub key: &'static Key,
    pub value: Value,
    pub line: usize,
}

/// Read the settings of `text`, the content of the file at `path` (named in errors).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Given>, ConfigError> {
    let line_of = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let fault = |at: usize, key: Option<&str>, problem: String| ConfigError::File {
        path: path.to_path_buf(),
        line: line_of(at),
        key: key.map(str::to_string),
        problem,
    };
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        let first = e.message().lines().next().unwrap_or("").trim().to_string();
        fault(
            e.span().map_or(0, |s| s.start),
            None,
            format!("not valid TOML: {first}"),
        )
    })?;
    let mut entries: Vec<_> = doc.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let name: &str = k.get_ref();
        let at = k.span().start;
        let Some(key) = KEYS.iter().find(|key| key.name == name) else {
            let known: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
            return Err(fault(
                at,
                Some(name),
                format!(
                    "unknown key `{}` (the keys are {}; see docs/configuration.md)",
                    form::shown(name),
                    known.join(", ")
                ),
            ));
        };
        let value = form::from_toml(key.form, v.get_ref()).map_err(|why| {
            let problem = match why {
                Refused::Type { takes, found } => format!(
                    "`{name}` takes {takes} ({}), not {found}",
                    key.form.expected()
                ),
                Refused::Value(shown) => format!(
                    "`{name} = {shown}` is not valid: expected {}",
                    key.form.expected()
                ),
                Refused::Why { shown, why } => format!("`{name} = {shown}` is not valid: {why}"),
            };
            fault(v.span().start, Some(name), problem)
        })?;
        out.push(Given {
            key,
            value,
            line: line_of(at),
        });
    }
    Ok(out)
}

/// The most a configuration file may hold: a file of settings is a few hundred bytes.
const MAX_FILE: u64 = 1 << 20;

/// The bytes of the regular file at `path`, at most [`MAX_FILE`] of them. Opened without
/// waiting (a FIFO or a device put there would otherwise hang every command, `get`
/// included) and refused unless it is a regular file.
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a socket is not read)",
        ));
    }
    // The size it says, and what it gives: a file may grow between the two.
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_FILE) as usize);
    file.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "larger than {} KiB, too large for a configuration file",
                MAX_FILE >> 10
            ),
        ));
    }
    Ok(bytes)
}

/// Read the file at `path`: `Ok(None)` when it does not exist (nor a directory on its
/// way), an error when it is there and cannot be read, or is not UTF-8. One `open` when it
/// is missing. A directory on the way that this user may not search (a `HOME` of another
/// user's, inherited through `setpriv` or `sudo` without `-H`) hides whether the file is
/// there at all: that counts as missing, not as a file that cannot be read.
pub fn read(path: &Path) -> Result<Option<String>, ConfigError> {
    let unreadable = |source| ConfigError::Unreadable {
        path: PathBuf::from(path),
        source,
    };
    match read_regular(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                line: e.as_bytes()[..e.utf8_error().valid_up_to()]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1,
                key: None,
                problem: "not UTF-8 text".into(),
            }),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                && std::fs::metadata(path).is_err() =>
        {
            Ok(None)
        }
        Err(e) => Err(unreadable(e)),
    }
}
