//! Settings from the environment: one table of the `SREGISTRY_*` variables, what each
//! means, and the form its value takes.
//!
//! Protocol: a variable that is unset or empty takes its default. A variable that is set
//! to something its form does not accept is an error naming the variable, the value and
//! the form expected ([`SettingError`]): never ignored, never clamped, never read as the
//! default. [`check`] reads every variable of [`VARS`] that has a form to check, so the
//! command line refuses a bad setting (exit 2) before it does anything, whichever setting
//! the command would have read; the readers below give the same answer later, so a program
//! that embeds the library and skips `check` still never runs on a misread value. Nothing
//! here is cached: the environment is read where the value is needed, by the one reader of
//! its form.

use crate::error::ErrorKind;
use std::time::Duration;

use crate::format::reference::shown;

/// How a variable's value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// A path, used as given.
    Path,
    /// Free text (a name, a password).
    Text,
    /// A size: `500M`, `10G`, `0` ([`crate::format::units::parse_size`]).
    Size,
    /// A duration: seconds (`30`, `0.5`) or with units (`90s`, `5m`, `1h`, `1m30s`);
    /// `positive` refuses zero.
    Duration { positive: bool },
    /// A whole number from 0 to `max`.
    Count { max: u32 },
    /// One of the words listed.
    OneOf(&'static [&'static str]),
    /// A Unix time in whole seconds.
    UnixTime,
}

/// One environment variable.
#[derive(Clone, Copy, Debug)]
pub struct Var {
    pub name: &'static str,
    pub form: Form,
    /// What it sets, for `--help` and the docs' table.
    pub means: &'static str,
}

/// `SREGISTRY_CACHE`: the cache directory.
pub const CACHE: Var = Var {
    name: "SREGISTRY_CACHE",
    form: Form::Path,
    means: "cache directory",
};
/// `SREGISTRY_DATABASE`: the old client's directory, for `migrate`.
pub const DATABASE: Var = Var {
    name: "SREGISTRY_DATABASE",
    form: Form::Path,
    means: "migrate: the old Python client's directory holding sregistry.db",
};
/// `SREGISTRY_CONFIG_DIR`: where `login` keeps credentials.
pub const CONFIG_DIR: Var = Var {
    name: "SREGISTRY_CONFIG_DIR",
    form: Form::Path,
    means: "where login stores credentials",
};
/// `SREGISTRY_PASSWORD`: the password for `login` without `--password-stdin`.
pub const PASSWORD: Var = Var {
    name: "SREGISTRY_PASSWORD",
    form: Form::Text,
    means: "the password for login without --password-stdin",
};
/// `SREGISTRY_LOCK_TIMEOUT`: the bound on every lock wait.
pub const LOCK_TIMEOUT: Var = Var {
    name: "SREGISTRY_LOCK_TIMEOUT",
    form: Form::Duration { positive: false },
    means: "bound on every lock wait (default 5 minutes)",
};
/// `SREGISTRY_LOCK`: the kind of lock.
pub const LOCK: Var = Var {
    name: "SREGISTRY_LOCK",
    form: Form::OneOf(&["ofd", "fcntl", "flock"]),
    means: "ofd (default) or flock, for filesystems without fcntl locks",
};
/// `SREGISTRY_RETRIES`: retries of a remote request.
pub const RETRIES: Var = Var {
    name: "SREGISTRY_RETRIES",
    form: Form::Count { max: MAX_RETRIES },
    means: "retries of a remote request (default 3)",
};
/// `SREGISTRY_TIMEOUT`: how long a remote may stay silent.
pub const TIMEOUT: Var = Var {
    name: "SREGISTRY_TIMEOUT",
    form: Form::Duration { positive: true },
    means: "how long a remote may stay silent before a request times out (default 30 s)",
};
/// `SREGISTRY_MAX_DOWNLOAD`: the most a download that declares no size may write.
pub const MAX_DOWNLOAD: Var = Var {
    name: "SREGISTRY_MAX_DOWNLOAD",
    form: Form::Size,
    means: "the most a download may write when the remote declares no size (default 64 GiB)",
};
/// `SREGISTRY_MIN_FREE`: the free space a download must leave.
pub const MIN_FREE: Var = Var {
    name: "SREGISTRY_MIN_FREE",
    form: Form::Size,
    means: "free space a download must leave on the cache's filesystem (default 1 GiB)",
};
/// `SREGISTRY_NOW`: pins the clock, for tests.
pub const NOW: Var = Var {
    name: "SREGISTRY_NOW",
    form: Form::UnixTime,
    means: "for tests: pin the clock to this Unix time",
};
/// `SREGISTRY_TEST_PAUSE`: a pause point, for tests.
pub const TEST_PAUSE: Var = Var {
    name: "SREGISTRY_TEST_PAUSE",
    form: Form::Text,
    means: "for tests: stop at a named point so a test can kill the process there",
};

/// `SREGISTRY_OFFLINE`: never contact a remote; answer from the cache.
pub const OFFLINE: Var = Var {
    name: "SREGISTRY_OFFLINE",
    form: Form::OneOf(&["1", "0", "true", "false", "yes", "no"]),
    means: "never contact a remote: remotes are answered from the cache (like --offline)",
};

/// The most retries `SREGISTRY_RETRIES` may ask for.
pub const MAX_RETRIES: u32 = 20;

/// Every `SREGISTRY_*` variable the library reads.
pub const VARS: &[Var] = &[
    CACHE,
    DATABASE,
    CONFIG_DIR,
    PASSWORD,
    LOCK_TIMEOUT,
    LOCK,
    RETRIES,
    TIMEOUT,
    MAX_DOWNLOAD,
    MIN_FREE,
    OFFLINE,
    NOW,
    TEST_PAUSE,
];

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

/// Read every variable of [`VARS`] whose form can be wrong: the first bad one is the error.
pub fn check() -> Result<(), SettingError> {
    for v in VARS {
        match v.form {
            Form::Path | Form::Text => {}
            Form::Size => size(v).map(drop)?,
            Form::Duration { .. } => duration(v).map(drop)?,
            Form::Count { .. } => count(v).map(drop)?,
            Form::OneOf(_) => one_of(v).map(drop)?,
            Form::UnixTime => unix_time(v).map(drop)?,
        }
    }
    Ok(())
}

/// The variable's value, `None` when unset or empty.
fn raw(v: &Var) -> Option<String> {
    std::env::var_os(v.name)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string_lossy().into_owned())
}

fn bad(v: &Var, value: &str) -> SettingError {
    let expected = match v.form {
        Form::Path => "a path".to_string(),
        Form::Text => "text".to_string(),
        Form::Size => "a size (examples: 500M, 10G, 0)".to_string(),
        Form::Duration { positive: true } => {
            "a duration above zero (examples: 30, 0.5, 90s, 2m, 1h)".to_string()
        }
        Form::Duration { positive: false } => {
            "a duration (examples: 0, 0.5, 30, 90s, 5m, 1h)".to_string()
        }
        Form::Count { max } => format!("a whole number from 0 to {max}"),
        Form::OneOf(words) => {
            let words: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
            format!("one of {}", words.join(", "))
        }
        Form::UnixTime => "a Unix time in whole seconds".to_string(),
    };
    SettingError {
        var: v.name,
        value: shown(value),
        expected,
    }
}

/// A size variable, in bytes.
pub fn size(v: &Var) -> Result<Option<u64>, SettingError> {
    raw(v)
        .map(|s| crate::format::units::parse_size(&s).map_err(|_| bad(v, &s)))
        .transpose()
}

/// A duration variable.
pub fn duration(v: &Var) -> Result<Option<Duration>, SettingError> {
    let positive = matches!(v.form, Form::Duration { positive: true });
    raw(v)
        .map(|s| {
            parse_duration(&s)
                .filter(|d| !positive || !d.is_zero())
                .ok_or_else(|| bad(v, &s))
        })
        .transpose()
}

/// A count variable.
pub fn count(v: &Var) -> Result<Option<u32>, SettingError> {
    let max = match v.form {
        Form::Count { max } => max,
        _ => u32::MAX,
    };
    raw(v)
        .map(|s| {
            let t = s.trim();
            t.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| t.parse::<u32>().ok())
                .flatten()
                .filter(|n| *n <= max)
                .ok_or_else(|| bad(v, &s))
        })
        .transpose()
}

/// A yes-or-no variable (`1`, `true`, `yes` or `0`, `false`, `no`): false when unset.
pub fn flag(v: &Var) -> Result<bool, SettingError> {
    Ok(one_of(v)?.is_some_and(|w| matches!(w, "1" | "true" | "yes")))
}

/// A variable that takes one of a few words: the word, trimmed.
pub fn one_of(v: &Var) -> Result<Option<&'static str>, SettingError> {
    let words = match v.form {
        Form::OneOf(w) => w,
        _ => &[],
    };
    raw(v)
        .map(|s| {
            words
                .iter()
                .copied()
                .find(|w| *w == s.trim())
                .ok_or_else(|| bad(v, &s))
        })
        .transpose()
}

/// A Unix-time variable.
pub fn unix_time(v: &Var) -> Result<Option<u64>, SettingError> {
    raw(v)
        .map(|s| s.trim().parse::<u64>().map_err(|_| bad(v, &s)))
        .transpose()
}

/// A duration as people write one: a number of seconds (decimals allowed: `0.5`), a
/// number with one unit (`1.5h`), or whole number-unit pairs (`1m30s`, see
/// [`crate::format::units::parse_duration`]). `None` when it is none of these, negative,
/// or longer than about 30 years.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let t = s.trim();
    if let Ok(secs) = crate::format::units::parse_duration(t) {
        return (secs < 1_000_000_000).then(|| Duration::from_secs(secs));
    }
    let (num, mult) = match t.as_bytes().last()? {
        b's' => (&t[..t.len() - 1], 1.0),
        b'm' => (&t[..t.len() - 1], 60.0),
        b'h' => (&t[..t.len() - 1], 3600.0),
        b'd' => (&t[..t.len() - 1], 86_400.0),
        _ => (t, 1.0),
    };
    let num = num.trim();
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let secs = num.parse::<f64>().ok()? * mult;
    (secs.is_finite() && secs < 1e9).then(|| Duration::from_secs_f64(secs))
}

/// A duration for people: whole seconds as `30 s`, a part of a second kept (`0.5 s`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{} s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_decimals_and_units() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in [
            "",
            "abc",
            "-1",
            "1e3",
            "5x",
            "nan",
            "inf",
            "1.2.3",
            "99999999999",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_are_shown_with_their_fraction() {
        assert_eq!(format_duration(Duration::from_millis(500)), "0.5 s");
        assert_eq!(format_duration(Duration::from_secs(300)), "300 s");
        assert_eq!(format_duration(Duration::from_millis(1250)), "1.25 s");
    }

    #[test]
    fn every_variable_has_a_unique_sregistry_name() {
        let mut names: Vec<&str> = VARS.iter().map(|v| v.name).collect();
        assert!(names.iter().all(|n| n.starts_with("SREGISTRY_")));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), VARS.len());
    }
}
