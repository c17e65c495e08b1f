//! The forms a setting's value takes, and how each is read: from the text of an
//! environment variable or a flag ([`from_text`]), and from a value of a configuration
//! file ([`from_toml`]), where the type is checked as well as the value.

use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

/// How a setting's value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// A path, used as given (a file must give it absolute).
    Path,
    /// Free text (a name).
    Text,
    /// Text never shown back (a password): `sregistry config` says only that it is set.
    Secret,
    /// A size: `500M`, `10G`, `0` ([`crate::format::units::parse_size`]); in a file also
    /// a whole number of bytes.
    Size,
    /// A duration: seconds (`30`, `0.5`) or with units (`90s`, `5m`, `1h`, `1m30s`);
    /// `positive` refuses zero. In a file also a number of seconds.
    Duration { positive: bool },
    /// A whole number from 0 to `max`.
    Count { max: u32 },
    /// One of the words listed.
    OneOf(&'static [&'static str]),
    /// `true` or `false` (in a variable also `1`, `0`, `yes`, `no`).
    Bool,
    /// A list of absolute paths (in a variable, separated by `:`).
    Paths,
    /// A list of remote patterns, `SCHEME://HOST[:PORT][/PATH]` with an optional `/*` at
    /// the end (in a variable, separated by spaces or commas).
    Remotes,
}

/// A setting's value, read in its form.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Path(PathBuf),
    Text(String),
    Size(u64),
    Duration(Duration),
    Count(u32),
    Word(&'static str),
    Bool(bool),
    Paths(Vec<PathBuf>),
    Remotes(Vec<String>),
}

impl Form {
    /// What the form takes, for messages: "a size (examples: 500M, 10G, 0)".
    pub fn expected(&self) -> String {
        match self {
            Form::Path => "a path".to_string(),
            Form::Text | Form::Secret => "text".to_string(),
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
            Form::Bool => "true or false (a variable also takes 1, 0, yes, no)".to_string(),
            Form::Paths => "a list of absolute paths".to_string(),
            Form::Remotes => {
                "a list of remotes, SCHEME://HOST[/PATH] with an optional /* at the end (examples: oras://reg.example.org/lab/*, docker://reg.example.org:5000/base)".to_string()
            }
        }
    }

    /// The TOML type a file gives this form in, for a type error's message.
    fn toml_type(&self) -> &'static str {
        match self {
            Form::Path | Form::Text | Form::Secret | Form::OneOf(_) => "a string",
            Form::Size | Form::Duration { .. } => "a string or a number",
            Form::Count { .. } => "an integer",
            Form::Bool => "a boolean",
            Form::Paths | Form::Remotes => "an array of strings",
        }
    }
}

/// `s` read in `form` (a variable's or a flag's text); `None` when the form does not take it.
pub fn from_text(form: Form, s: &str) -> Option<Value> {
    match form {
        Form::Path => plain_path(s).then(|| Value::Path(PathBuf::from(s))),
        Form::Text | Form::Secret => Some(Value::Text(s.to_string())),
        Form::Size => crate::format::units::parse_size(s).ok().map(Value::Size),
        Form::Duration { positive } => parse_duration(s)
            .filter(|d| !positive || !d.is_zero())
            .map(Value::Duration),
        Form::Count { max } => {
            let t = s.trim();
            t.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| t.parse::<u32>().ok())
                .flatten()
                .filter(|n| *n <= max)
                .map(Value::Count)
        }
        Form::OneOf(words) => words
            .iter()
            .copied()
            .find(|w| *w == s.trim())
            .map(Value::Word),
        Form::Bool => match s.trim() {
            "1" | "true" | "yes" => Some(Value::Bool(true)),
            "0" | "false" | "no" => Some(Value::Bool(false)),
            _ => None,
        },
        Form::Paths => {
            let paths: Vec<PathBuf> = s
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
            paths
                .iter()
                .all(|p| p.is_absolute())
                .then_some(Value::Paths(paths))
        }
        Form::Remotes => {
            let items: Vec<String> = s
                .split([' ', ',', '\t'])
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            items
                .iter()
                .all(|p| remote_pattern(p))
                .then_some(Value::Remotes(items))
        }
    }
}

/// Whether `p` is a remote pattern: `SCHEME://HOST[:PORT][/PATH]` (a scheme sregistry
/// pulls from, a host, no space, no user-info), `/*` allowed only at the end.
pub fn remote_pattern(p: &str) -> bool {
    let Some((scheme, rest)) = p.split_once("://") else {
        return false;
    };
    let body = rest.strip_suffix("/*").unwrap_or(rest);
    let host = body.split('/').next().unwrap_or("");
    ["oras", "docker", "https", "http", "s3"].contains(&scheme)
        && !host.is_empty()
        && !body.contains(['*', '@', '?', '#'])
        && !body.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Why a file's value was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// A value of another TOML type: what the form takes, and what was found.
    Type { takes: &'static str, found: String },
    /// The right type, a value the form does not accept: the value as written.
    Value(String),
    /// The right type, a value refused for a reason of its own: the value as written, and
    /// the reason.
    Why { shown: String, why: &'static str },
}

/// A configuration file's value read in `form`.
pub fn from_toml(form: Form, v: &DeValue<'_>) -> Result<Value, Refused> {
    let wrong = || Refused::Type {
        takes: form.toml_type(),
        found: found(v),
    };
    match (form, v) {
        (Form::Path, DeValue::String(s)) => absolute(s).map(Value::Path),
        (Form::Secret, DeValue::String(s)) if s.is_empty() => Err(Refused::Why {
            shown: "\"\"".into(),
            why: "it is empty (leave the key out to leave it unset)",
        }),
        (Form::Text | Form::Secret, DeValue::String(s)) => Ok(Value::Text(s.to_string())),
        (Form::OneOf(_), DeValue::String(s)) => {
            from_text(form, s).ok_or_else(|| Refused::Value(format!("\"{}\"", shown(s))))
        }
        (Form::Size | Form::Duration { .. }, DeValue::String(s)) => {
            from_text(form, s).ok_or_else(|| Refused::Value(format!("\"{}\"", shown(s))))
        }
        (Form::Size | Form::Duration { .. } | Form::Count { .. }, DeValue::Integer(i)) => {
            let n = i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .filter(|n| *n >= 0);
            let text = n.map_or_else(|| i.as_str().to_string(), |n| n.to_string());
            n.and_then(|_| from_text(form, &text))
                .ok_or(Refused::Value(text))
        }
        (Form::Duration { .. }, DeValue::Float(f)) => {
            from_text(form, f.as_str()).ok_or_else(|| Refused::Value(f.as_str().to_string()))
        }
        (Form::Bool, DeValue::Boolean(b)) => Ok(Value::Bool(*b)),
        (Form::Paths, DeValue::Array(items)) => items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) => absolute(s),
                _ => Err(wrong()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Paths),
        (Form::Remotes, DeValue::Array(items)) => items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) if remote_pattern(s) => Ok(s.to_string()),
                DeValue::String(s) => Err(Refused::Why {
                    shown: format!("\"{}\"", shown(s)),
                    why: "a remote pattern is SCHEME://HOST[/PATH], with an optional /* at the end",
                }),
                _ => Err(wrong()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Remotes),
        _ => Err(wrong()),
    }
}

/// A path a file gives: absolute, or refused (a relative one would name another
/// directory for every directory a command runs from).
fn absolute(s: &str) -> Result<PathBuf, Refused> {
    let p = PathBuf::from(s);
    let refuse = |why| {
        Err(Refused::Why {
            shown: format!("\"{}\"", shown(s)),
            why,
        })
    };
    if !plain_path(s) {
        refuse(NOT_PLAIN)
    } else if p.is_absolute() {
        Ok(p)
    } else {
        refuse("a path in a configuration file must be absolute")
    }
}

/// Why a path with a NUL byte or a line break is refused.
const NOT_PLAIN: &str = "a path cannot hold a NUL byte or a line break";

/// A path the system can name and a message can show on one line: no NUL byte (no system
/// call takes it), no line break.
fn plain_path(s: &str) -> bool {
    !s.contains(['\0', '\n', '\r'])
}

pub(super) fn shown(s: &str) -> String {
    crate::format::reference::shown(s)
}

/// The TOML type of `v`, as a message names it.
fn found(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
    .to_string()
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

    fn with(form: Form, text: &str) -> Result<Value, Refused> {
        let doc = format!("k = {text}");
        let table = toml::de::DeTable::parse(&doc).unwrap();
        let (_, v) = table.get_ref().iter().next().unwrap();
        from_toml(form, v.get_ref())
    }

    #[test]
    fn a_file_gives_each_form_its_types() {
        let size = Form::Size;
        assert_eq!(with(size, "\"1G\""), Ok(Value::Size(1 << 30)));
        assert_eq!(with(size, "1024"), Ok(Value::Size(1024)));
        assert_eq!(with(size, "0x10"), Ok(Value::Size(16)));
        assert_eq!(with(size, "-1"), Err(Refused::Value("-1".into())));
        assert!(matches!(with(size, "true"), Err(Refused::Type { .. })));
        let d = Form::Duration { positive: true };
        assert_eq!(
            with(d, "1.5"),
            Ok(Value::Duration(Duration::from_millis(1500)))
        );
        assert_eq!(
            with(d, "\"2m\""),
            Ok(Value::Duration(Duration::from_secs(120)))
        );
        assert_eq!(with(d, "0"), Err(Refused::Value("0".into())));
        let count = Form::Count { max: 20 };
        assert_eq!(with(count, "20"), Ok(Value::Count(20)));
        assert_eq!(with(count, "21"), Err(Refused::Value("21".into())));
        assert!(matches!(with(count, "\"3\""), Err(Refused::Type { .. })));
        assert_eq!(with(Form::Path, "\"/x\""), Ok(Value::Path("/x".into())));
        assert!(matches!(
            with(Form::Path, "\"x\""),
            Err(Refused::Why { why, .. }) if why.contains("absolute")
        ));
        // Found by a hostile test: a NUL byte was taken, and every command then failed
        // with it in its message; a line break split messages and `info` in two.
        for bad in ["\"/a\\u0000b\"", "\"/a\\nb\""] {
            assert!(matches!(
                with(Form::Path, bad),
                Err(Refused::Why { why: NOT_PLAIN, .. })
            ));
        }
        assert_eq!(from_text(Form::Path, "/a\nb"), None);
        assert_eq!(from_text(Form::Path, "/a\0b"), None);
        assert!(matches!(
            with(Form::Secret, "\"\""),
            Err(Refused::Why { why, .. }) if why.contains("empty")
        ));
        assert_eq!(with(Form::Secret, "\"s\""), Ok(Value::Text("s".into())));
        assert_eq!(with(Form::Bool, "true"), Ok(Value::Bool(true)));
        assert_eq!(
            with(Form::Paths, "[\"/a\", \"/b\"]"),
            Ok(Value::Paths(vec!["/a".into(), "/b".into()]))
        );
        assert!(matches!(
            with(Form::Paths, "[\"/a\", 1]"),
            Err(Refused::Type { .. })
        ));
        let words = Form::OneOf(&["ofd", "flock"]);
        assert_eq!(with(words, "\"flock\""), Ok(Value::Word("flock")));
        assert_eq!(with(words, "\"x\""), Err(Refused::Value("\"x\"".into())));
    }

    #[test]
    fn a_variable_gives_booleans_and_lists_as_text() {
        assert_eq!(from_text(Form::Bool, "1"), Some(Value::Bool(true)));
        assert_eq!(from_text(Form::Bool, "maybe"), None);
        assert_eq!(
            from_text(Form::Paths, "/a::/b"),
            Some(Value::Paths(vec!["/a".into(), "/b".into()]))
        );
        assert_eq!(from_text(Form::Paths, "/a:b"), None);
    }
}
