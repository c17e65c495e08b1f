//! The configuration: one table of every setting ([`KEYS`]: its key, its environment
//! variable, its flag, its form, its default, what it means), read once into one typed
//! [`Config`] that the command line, the library and the Python package all use.
//!
//! Protocol. A setting's value comes from the last of these sources that gives it, key by
//! key: its default; the files, in this order: `/etc/sregistry/config.toml`,
//! `$XDG_CONFIG_HOME/sregistry/config.toml` (else `~/.config/sregistry/config.toml`), the
//! file `$SREGISTRY_CONFIG` names; then its `SREGISTRY_*` variable; then its flag. A
//! missing file costs one failed `open` and is no error (but the file `SREGISTRY_CONFIG`
//! names must exist); a file that cannot be read, is not TOML, has a key that is not in
//! [`KEYS`], or a value of the wrong type or one its form refuses, is an error naming the
//! file, the line and the key ([`ConfigError`]). A variable that is unset or empty counts
//! as not given; one set to something its form does not accept is an error naming the
//! variable, the value and the form ([`SettingError`]): never ignored, never clamped,
//! never read as the default.
//!
//! Reading: [`load`] reads the files and the environment. The command line loads once,
//! adds its flags, and [`install`]s the result before it does anything, so a bad setting
//! stops every command (exit 2) whichever setting it would have read. Everything in the
//! library that needs a setting asks [`current`]: the installed configuration, or, in a
//! program that installed none (the Python package), a fresh [`load`] at that call, so a
//! change to the environment between calls counts.
//!
//! Adding a setting is one entry in the `keys!` table below: the key (its field of
//! [`Config`]), its variable, flag, form, default and doc line. docs/configuration.md
//! lists the same table, and a test holds the two together.
//!
//! Not settings, and not in the table: the test hooks, which exist for tests only and are
//! read where they act: `SREGISTRY_NOW` (`format::clock`), `SREGISTRY_TEST_PAUSE`,
//! `SREGISTRY_TEST_RESUME` and `SREGISTRY_TEST_FAIL` (`testhook`), and
//! `SREGISTRY_TEST_SYSTEM_CONFIG` (here: the file read instead of
//! `/etc/sregistry/config.toml`, only in builds with the `test-hooks` feature). Nor is
//! `SREGISTRY_CONFIG` a key: it names a file of keys.

mod file;
pub mod form;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::ErrorKind;
use crate::format::reference::shown;

pub use file::Given;
pub use form::{Form, Value, format_duration, parse_duration};

/// The site's configuration file, read first.
pub const SYSTEM_FILE: &str = "/etc/sregistry/config.toml";
/// The variable naming a configuration file read after the others.
pub const CONFIG_VAR: &str = "SREGISTRY_CONFIG";
/// Test builds only: the file read instead of [`SYSTEM_FILE`], so that tests never read
/// or need the machine's `/etc`.
#[cfg(feature = "test-hooks")]
pub const TEST_SYSTEM_VAR: &str = "SREGISTRY_TEST_SYSTEM_CONFIG";

/// A setting's default as the docs show it: a value in its form (the entry gives the same
/// value typed, so that no command parses defaults; a test holds the two together), or one
/// worked out where it is used (a path under the home directory), described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Value(&'static str),
    Derived(&'static str),
}

/// One setting.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// The key in a configuration file: the variable's name without `SREGISTRY_`, in
    /// lower case.
    pub name: &'static str,
    /// The environment variable.
    pub var: &'static str,
    /// The command-line flag that sets it, if any.
    pub flag: Option<&'static str>,
    pub form: Form,
    pub default: Preset,
    /// What it sets, one line, for the docs' table and `sregistry config`.
    pub means: &'static str,
}

impl Key {
    /// The default as the docs' table gives it.
    pub fn default_text(&self) -> &'static str {
        match self.default {
            Preset::Value(s) | Preset::Derived(s) => s,
        }
    }
}

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Variable(&'static str),
    Flag(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Variable(v) => write!(f, "${v}"),
            Source::Flag(flag) => f.write_str(flag),
        }
    }
}

/// A configuration file looked at, and whether it was there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub path: PathBuf,
    pub found: bool,
}

/// How a field of [`Config`] takes a [`Value`] of its key's form, and gives it back.
trait Field: Sized {
    fn take(v: Value) -> Self;
    fn give(&self) -> Option<Value>;
}

macro_rules! field {
    ($ty:ty, $variant:ident, |$v:ident| $take:expr, |$s:ident| $give:expr) => {
        impl Field for $ty {
            fn take(v: Value) -> Self {
                match v {
                    Value::$variant($v) => $take,
                    other => unreachable!("a key of another form was given {other:?}"),
                }
            }
            fn give(&self) -> Option<Value> {
                let $s = self;
                $give
            }
        }
    };
}
field!(Option<PathBuf>, Path, |p| Some(p), |s| s
    .clone()
    .map(Value::Path));
field!(Option<String>, Text, |t| Some(t), |s| s
    .clone()
    .map(Value::Text));
field!(Duration, Duration, |d| d, |s| Some(Value::Duration(*s)));
field!(u32, Count, |n| n, |s| Some(Value::Count(*s)));
field!(u64, Size, |n| n, |s| Some(Value::Size(*s)));
field!(&'static str, Word, |w| w, |s| Some(Value::Word(s)));
field!(bool, Bool, |b| b, |s| Some(Value::Bool(*s)));
// An empty list is no value (shown as the default, "none").
field!(Vec<PathBuf>, Paths, |p| p, |s| (!s.is_empty())
    .then(|| Value::Paths(s.clone())));
field!(Vec<String>, Remotes, |p| p, |s| (!s.is_empty())
    .then(|| Value::Remotes(s.clone())));

/// The table: each entry a constant [`Key`], a field of [`Config`], and a row of
/// docs/configuration.md.
macro_rules! keys {
    ($(
        $(#[doc = $doc:literal])*
        $konst:ident $field:ident: $ty:ty,
            var $var:literal, flag $flag:expr, form $form:expr,
            default $default:expr => $init:expr, means $means:literal;
    )*) => {
        $(
            $(#[doc = $doc])*
            pub const $konst: Key = Key {
                name: stringify!($field),
                var: $var,
                flag: $flag,
                form: $form,
                default: $default,
                means: $means,
            };
        )*

        /// Every setting, in the order of the docs' table.
        pub const KEYS: &[Key] = &[$($konst),*];

        /// Every setting's value (see the module's doc for where each comes from).
        #[derive(Clone, Debug)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $field: $ty, )*
            sources: Vec<Source>,
            files: Vec<Seen>,
        }

        impl Config {
            /// Every setting at its default.
            pub fn defaults() -> Config {
                Config {
                    $( $field: $init, )*
                    sources: vec![Source::Default; KEYS.len()],
                    files: Vec::new(),
                }
            }

            fn put(&mut self, name: &str, v: Value) {
                match name {
                    $( stringify!($field) => self.$field = Field::take(v), )*
                    _ => unreachable!("not a key: {name}"),
                }
            }

            /// The value of `key`, `None` when it has none (unset, and its default is
            /// worked out where it is used).
            pub fn value(&self, key: &Key) -> Option<Value> {
                match key.name {
                    $( stringify!($field) => self.$field.give(), )*
                    _ => None,
                }
            }
        }
    };
}

keys! {
    /// `cache`: the cache directory.
    CACHE cache: Option<PathBuf>,
        var "SREGISTRY_CACHE", flag Some("--cache"), form Form::Path,
        default Preset::Derived("${XDG_CACHE_HOME:-~/.cache}/sregistry") => None,
        means "the cache directory";
    /// `database`: the old Python client's directory, for `migrate`.
    DATABASE database: Option<PathBuf>,
        var "SREGISTRY_DATABASE", flag Some("migrate --from"), form Form::Path,
        default Preset::Derived("~/.singularity") => None,
        means "migrate: the old Python client's directory holding sregistry.db";
    /// `config_dir`: where `login` keeps credentials.
    CONFIG_DIR config_dir: Option<PathBuf>,
        var "SREGISTRY_CONFIG_DIR", flag None, form Form::Path,
        default Preset::Derived("${XDG_CONFIG_HOME:-~/.config}/sregistry") => None,
        means "where login stores credentials";
    /// `password`: the password for `login` without `--password-stdin`.
    PASSWORD password: Option<String>,
        var "SREGISTRY_PASSWORD", flag None, form Form::Secret,
        default Preset::Derived("none") => None,
        means "the password for login without --password-stdin (never shown)";
    /// `lock_timeout`: the bound on every lock wait.
    LOCK_TIMEOUT lock_timeout: Duration,
        var "SREGISTRY_LOCK_TIMEOUT", flag None, form Form::Duration { positive: false },
        default Preset::Value("5m") => Duration::from_secs(300),
        means "bound on every lock wait (0 fails at once)";
    /// `lock`: the kind of lock.
    LOCK lock: &'static str,
        var "SREGISTRY_LOCK", flag None, form Form::OneOf(&["ofd", "fcntl", "flock"]),
        default Preset::Value("ofd") => "ofd",
        means "ofd (fcntl is the same) or flock, for filesystems without fcntl locks";
    /// `retries`: retries of a remote request.
    RETRIES retries: u32,
        var "SREGISTRY_RETRIES", flag None, form Form::Count { max: MAX_RETRIES },
        default Preset::Value("3") => 3,
        means "retries of a remote request (a request that times out twice is not retried again)";
    /// `timeout`: how long a remote may stay silent.
    TIMEOUT timeout: Duration,
        var "SREGISTRY_TIMEOUT", flag None, form Form::Duration { positive: true },
        default Preset::Value("30s") => Duration::from_secs(30),
        means "how long a remote may stay silent before a request times out";
    /// `max_download`: the most a download that declares no size may write.
    MAX_DOWNLOAD max_download: u64,
        var "SREGISTRY_MAX_DOWNLOAD", flag None, form Form::Size,
        default Preset::Value("64G") => 64 << 30,
        means "the most a download may write when the remote declares no size";
    /// `min_free`: the free space a download must leave.
    MIN_FREE min_free: u64,
        var "SREGISTRY_MIN_FREE", flag None, form Form::Size,
        default Preset::Value("1G") => 1 << 30,
        means "free space a download must leave on the cache's filesystem";
    /// `offline`: never contact a remote; answer from the cache.
    OFFLINE offline: bool,
        var "SREGISTRY_OFFLINE", flag Some("--offline"), form Form::Bool,
        default Preset::Value("false") => false,
        means "never contact a remote: remotes are answered from the cache";
    /// `shared_remotes`: remotes whose images go to the shared cache even when pulling
    /// them needed credentials.
    SHARED_REMOTES shared_remotes: Vec<String>,
        var "SREGISTRY_SHARED_REMOTES", flag None, form Form::Remotes,
        default Preset::Derived("none") => Vec::new(),
        means "remotes whose images go to a shared cache even when they needed credentials (else to the puller's private cache)";
    /// `tiers`: read-only caches looked in after the writable one, in order.
    TIERS tiers: Vec<PathBuf>,
        var "SREGISTRY_TIERS", flag Some("--tier"), form Form::Paths,
        default Preset::Derived("none") => Vec::new(),
        means "read-only caches looked in, in order, after the writable cache (never written)";
}

/// The most retries `retries` may ask for.
pub const MAX_RETRIES: u32 = 20;

impl Config {
    /// Where `key`'s value came from.
    pub fn source(&self, key: &Key) -> &Source {
        &self.sources[index(key)]
    }

    /// The configuration files looked at, in order.
    pub fn files(&self) -> &[Seen] {
        &self.files
    }

    /// Give `key` the value `v` (of its form), from `source`.
    pub fn set(&mut self, key: &Key, v: Value, source: Source) {
        self.put(key.name, v);
        self.sources[index(key)] = source;
    }

    /// Take the settings of the file at `path`; a missing file is an error only when
    /// `must_exist`.
    pub fn read_file(&mut self, path: &Path, must_exist: bool) -> Result<(), ConfigError> {
        let text = file::read(path)?;
        self.files.push(Seen {
            path: path.to_path_buf(),
            found: text.is_some(),
        });
        let Some(text) = text else {
            return match must_exist {
                true => Err(ConfigError::Missing {
                    path: path.to_path_buf(),
                }),
                false => Ok(()),
            };
        };
        for g in file::parse(path, &text)? {
            let source = Source::File {
                path: path.to_path_buf(),
                line: g.line,
            };
            self.set(g.key, g.value, source);
        }
        Ok(())
    }

    /// Take the settings of the environment.
    pub fn read_env(&mut self) -> Result<(), ConfigError> {
        for key in KEYS {
            let Some(raw) = std::env::var_os(key.var).filter(|v| !v.is_empty()) else {
                continue;
            };
            let v = match key.form {
                // A path is taken as the bytes it is.
                Form::Path => Value::Path(PathBuf::from(raw)),
                _ => {
                    let s = raw.to_string_lossy();
                    form::from_text(key.form, &s).ok_or_else(|| SettingError {
                        var: key.var,
                        value: shown(&s),
                        expected: key.form.expected(),
                    })?
                }
            };
            self.set(key, v, Source::Variable(key.var));
        }
        Ok(())
    }
}

fn index(key: &Key) -> usize {
    KEYS.iter()
        .position(|k| k.name == key.name)
        .expect("a key of the table")
}

/// The configuration files, in the order they are read, and whether each must exist.
pub fn file_paths() -> Vec<(PathBuf, bool)> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    #[cfg(feature = "test-hooks")]
    let system = env(TEST_SYSTEM_VAR).unwrap_or_else(|| PathBuf::from(SYSTEM_FILE));
    #[cfg(not(feature = "test-hooks"))]
    let system = PathBuf::from(SYSTEM_FILE);
    let mut out = vec![(system, false)];
    // A relative XDG_CONFIG_HOME or HOME is ignored, as the XDG specification says.
    let user = env("XDG_CONFIG_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| {
            env("HOME")
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".config"))
        });
    if let Some(dir) = user {
        out.push((dir.join("sregistry").join("config.toml"), false));
    }
    if let Some(named) = env(CONFIG_VAR) {
        out.push((named, true));
    }
    out
}

/// The test hooks: read where they act, outside the configuration (see the module's doc).
pub const HOOKS: &[&str] = &[
    crate::format::clock::NOW_ENV,
    "SREGISTRY_TEST_PAUSE",
    "SREGISTRY_TEST_RESUME",
    "SREGISTRY_TEST_FAIL",
    "SREGISTRY_TEST_SYSTEM_CONFIG",
];

/// `SREGISTRY_NOW` set to something that is not a Unix time is refused with the settings,
/// not read as "no pinned clock".
fn check_clock() -> Result<(), SettingError> {
    let var = crate::format::clock::NOW_ENV;
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v)
            if v.to_str()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_none() =>
        {
            Err(SettingError {
                var,
                value: shown(&v.to_string_lossy()),
                expected: "a Unix time in whole seconds".into(),
            })
        }
        _ => Ok(()),
    }
}

/// The defaults, then the files, then the environment.
pub fn load() -> Result<Config, ConfigError> {
    check_clock()?;
    let mut c = Config::defaults();
    for (path, must_exist) in file_paths() {
        c.read_file(&path, must_exist)?;
    }
    c.read_env()?;
    Ok(c)
}

/// Check the file at `path` as the files are read: its settings, or the first fault.
pub fn check_file(path: &Path) -> Result<Vec<Given>, ConfigError> {
    match file::read(path)? {
        Some(text) => file::parse(path, &text),
        None => Err(ConfigError::NoFile {
            path: path.to_path_buf(),
        }),
    }
}

static INSTALLED: OnceLock<Arc<Config>> = OnceLock::new();

/// Make `c` the process's configuration, which [`current`] answers from now on (the
/// first one installed stays).
pub fn install(c: Config) -> Arc<Config> {
    let c = Arc::new(c);
    INSTALLED.get_or_init(|| c).clone()
}

/// The process's configuration: the one [`install`]ed, else a fresh [`load`].
pub fn current() -> Result<Arc<Config>, ConfigError> {
    match INSTALLED.get() {
        Some(c) => Ok(c.clone()),
        None => load().map(Arc::new),
    }
}

/// A variable set to a value its form does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}=`{value}` is not valid: expected {expected} (unset it for the default)")]
pub struct SettingError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

impl SettingError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable set to something its form does not accept.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// A fault in a file: not TOML, an unknown key, a wrong type or value.
    #[error("`{}` line {line}: {problem}", path.display())]
    File {
        path: PathBuf,
        line: usize,
        /// The key the fault is at, when it is at one.
        key: Option<String>,
        problem: String,
    },
    /// A file there that cannot be read.
    #[error("cannot read the configuration file `{}`: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file `SREGISTRY_CONFIG` names is not there.
    #[error("no configuration file `{}` (named by {CONFIG_VAR}: make it, or unset the variable)", path.display())]
    Missing { path: PathBuf },
    /// `sregistry config --check` of a file that is not there.
    #[error("no configuration file `{}`", path.display())]
    NoFile { path: PathBuf },
}

impl ConfigError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConfigError::Setting(e) => e.kind(),
            ConfigError::File { .. } => ErrorKind::InvalidInput,
            ConfigError::Unreadable { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Io,
            },
            ConfigError::Missing { .. } | ConfigError::NoFile { .. } => ErrorKind::NoSuchFile,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_its_variable_in_lower_case_and_unique() {
        let mut names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        for k in KEYS {
            assert_eq!(format!("SREGISTRY_{}", k.name.to_uppercase()), k.var);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KEYS.len());
    }

    /// The default the docs' table shows is the default a command runs with.
    #[test]
    fn the_defaults_are_the_ones_the_table_shows() {
        let d = Config::defaults();
        for k in KEYS {
            match k.default {
                Preset::Value(s) => {
                    assert_eq!(form::from_text(k.form, s), d.value(k), "{}", k.name)
                }
                Preset::Derived(_) => assert_eq!(d.value(k), None, "{}", k.name),
            }
        }
    }

    #[test]
    fn the_defaults_are_those_the_readers_had() {
        let d = Config::defaults();
        assert_eq!(d.lock_timeout, crate::cache::lock::DEFAULT_TIMEOUT);
        assert_eq!(d.lock, "ofd");
        assert_eq!(d.retries, 3);
        assert_eq!(d.timeout, Duration::from_secs(30));
        let limits = crate::cache::limits::Limits::default();
        assert_eq!(d.max_download, limits.max_download);
        assert_eq!(d.min_free, limits.min_free);
        assert!(KEYS.iter().all(|k| *d.source(k) == Source::Default));
    }

    #[test]
    fn every_key_takes_a_value_of_its_form() {
        let mut c = Config::defaults();
        for k in KEYS {
            let sample = match k.form {
                Form::Path | Form::Paths => "/x",
                Form::Remotes => "oras://h/x/*",
                Form::Text | Form::Secret => "t",
                Form::Size | Form::Duration { .. } | Form::Count { .. } => "1",
                Form::OneOf(words) => words[0],
                Form::Bool => "true",
            };
            let v = form::from_text(k.form, sample).unwrap();
            c.set(k, v.clone(), Source::Flag("--x"));
            assert_eq!(c.value(k), Some(v));
        }
    }

    #[test]
    fn a_file_names_the_line_and_key_of_its_fault() {
        let p = Path::new("/f.toml");
        let e = file::parse(p, "retries = 2\n\nlock = \"nfs\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`/f.toml` line 3: `lock = \"nfs\"` is not valid: expected one of `ofd`, `fcntl`, `flock`"
        );
        for (text, starts) in [
            ("# c\ncolour = 1\n", "line 2: unknown key `colour`"),
            ("retries = \"3\"\n", "line 1: `retries` takes an integer"),
            ("a = 1\nb = = 2\n", "line 2: not valid TOML"),
            ("[cache]\nx = 1\n", "line 1: `cache` takes a string"),
        ] {
            let e = file::parse(p, text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("`/f.toml` {starts}")), "{e}");
        }
        let got = file::parse(p, "min_free = \"2G\"\n\nretries = 0\n").unwrap();
        assert_eq!(got[0].line, 1);
        assert_eq!(got[1].line, 3);
        assert_eq!(got[1].value, Value::Count(0));
    }
}
