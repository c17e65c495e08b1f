//! The name an old row is imported under.
//!
//! The old client lower-cased what it was given and accepted nearly any character but
//! `:`, `@` and `/` in a name or tag (`lab/my tool!:1` was fine); ours keeps to the OCI
//! grammar ([`crate::format::reference`]). A row's `collection/name:tag` that is a valid
//! name of ours is used as it is. Otherwise it is normalised: lower case, every run of
//! characters outside `a-z0-9._-` (and every run of separators the grammar does not
//! allow, such as `._` or `..`) becomes one `-`, separators are trimmed from the ends of
//! each part; in the tag, characters outside `A-Za-z0-9._-` become `-` and a leading `.`
//! or `-` goes. The result is used only if it is a valid name (the caller also checks
//! it collides with nothing).

use crate::format::reference::{MAX_TAG_LEN, Reference};

/// What a row's wanted name becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Valid as it is: the index key.
    Valid(String),
    /// Valid once normalised: the index key of the normalised name.
    Normalized(String),
    /// Not valid, even normalised: why (the original name's parse error).
    Invalid(String),
}

impl Target {
    /// The name to import under, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Target::Valid(k) | Target::Normalized(k) => Some(k),
            Target::Invalid(_) => None,
        }
    }
}

/// The name `collection/name:tag` is imported under.
pub fn target(collection: &str, name: &str, tag: &str) -> Target {
    let wanted = format!("{collection}/{name}:{tag}");
    let parsed = Reference::parse(&wanted);
    match &parsed {
        Ok(r) if r.key() == wanted => return Target::Valid(r.key()),
        _ => {}
    }
    let path: Vec<String> = collection
        .split('/')
        .chain(std::iter::once(name))
        .map(normalize_component)
        .collect();
    let normalized = format!("{}:{}", path.join("/"), normalize_tag(tag));
    match (Reference::parse(&normalized), parsed) {
        (Ok(r), _) => Target::Normalized(r.key()),
        (Err(_), Err(e)) => Target::Invalid(e.reason().to_string()),
        (Err(e), Ok(_)) => Target::Invalid(e.reason().to_string()),
    }
}

fn is_sep(c: char) -> bool {
    matches!(c, '.' | '_' | '-')
}

/// One path component in the OCI grammar `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn normalize_component(part: &str) -> String {
    let lower = part.to_ascii_lowercase();
    let mut out = String::with_capacity(lower.len());
    let mut sep = String::new();
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if !sep.is_empty() {
                let allowed =
                    matches!(sep.as_str(), "." | "_" | "__") || sep.chars().all(|c| c == '-');
                out.push_str(if allowed { &sep } else { "-" });
                sep.clear();
            }
            out.push(c);
        } else if !out.is_empty() {
            // Anything else is a separator; a leading one is dropped.
            sep.push(if is_sep(c) { c } else { '-' });
        }
    }
    out
}

/// A tag in the grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn normalize_tag(tag: &str) -> String {
    let mapped: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || is_sep(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches(['.', '-']);
    trimmed.chars().take(MAX_TAG_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The danger: a name the old client accepted lost in the move, or imported under a
    /// name that is still invalid (every later command would refuse it).
    #[test]
    fn odd_old_names_become_valid_names_or_are_refused() {
        assert_eq!(
            target("lab", "tool", "1.2"),
            Target::Valid("lab/tool:1.2".into())
        );
        assert_eq!(
            target("lab", "odd_name!", "1"),
            Target::Normalized("lab/odd_name:1".into())
        );
        assert_eq!(
            target("Lab", "My Tool", "V1"),
            Target::Normalized("lab/my-tool:V1".into())
        );
        assert_eq!(
            target("lab", "a._b", "x y"),
            Target::Normalized("lab/a-b:x-y".into())
        );
        assert_eq!(target("lab", "x", ".hidden").key(), Some("lab/x:hidden"));
        assert!(matches!(target("lab", "!!!", "1"), Target::Invalid(_)));
        assert!(matches!(target("", "x", "1"), Target::Invalid(_)));
        for t in [
            target("Lab", "My Tool", "V1"),
            target("lab", "ünïcode", "1"),
            target("a/b.c", "d__e", "-t"),
        ] {
            if let Some(k) = t.key() {
                assert_eq!(Reference::parse(k).unwrap().key(), k, "{t:?}");
            }
        }
    }
}
