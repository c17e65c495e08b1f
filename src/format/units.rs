//! Sizes and durations as admins type them: `500G`, `1.5TiB`, `90d`, `12h`, `1d12h`.
//!
//! Sizes: a number (decimals allowed) with an optional unit. `K`, `M`, `G`, `T`, `P` and
//! `KiB`...`PiB` are binary (powers of 1024, as `du -h` prints them); `KB`, `MB`, `GB`,
//! `TB`, `PB` are decimal; `B` or no unit is bytes. Case does not matter.
//!
//! Durations: one or more number-unit pairs, units `s`, `m`, `h`, `d`, `w`
//! (`90d`, `1d12h`, `30m`); a bare number is seconds.

use crate::error::ErrorKind;

/// Why a size or duration did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("size `{0}` is not understood (examples: 500G, 1.5TiB, 200GB, 1048576)")]
    Size(String),
    #[error("duration `{0}` is not understood (examples: 90d, 12h, 1d12h, 30m)")]
    Duration(String),
}

impl UnitError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            UnitError::Size(_) | UnitError::Duration(_) => ErrorKind::InvalidInput,
        }
    }
}

/// A size for people, in binary units as `du -h` prints them: `1.50 GiB`.
pub fn format_size(bytes: u64) -> String {
    humansize::format_size(bytes, humansize::BINARY)
}

/// Parse a size into bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(crate::format::reference::shown(s));
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.len() > 30 {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024f64,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "p" | "pib" => 1024f64.powi(5),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "pb" => 1e15,
        _ => return Err(err()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// Parse a duration into seconds.
pub fn parse_duration(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Duration(crate::format::reference::shown(s));
    let t = s.trim();
    if t.is_empty() {
        return Err(err());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| err());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 || digits > 12 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        let unit = rest[digits..].chars().next().ok_or_else(err)?;
        let mult = match unit.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(err()),
        };
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        rest = &rest[digits + 1..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_follow_du_for_short_units_and_si_for_b_units() {
        assert_eq!(parse_size("500G"), Ok(500 << 30));
        assert_eq!(parse_size("1.5TiB"), Ok(3 << 39));
        assert_eq!(parse_size("200GB"), Ok(200_000_000_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("10 m"), Ok(10 << 20));
        for bad in ["", "G", "1.2.3G", "5X", "-1G", "1e400", "huge"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_add_up_their_parts() {
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("1d12h"), Ok(129_600));
        assert_eq!(parse_duration("45"), Ok(45));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
        for bad in ["", "d", "12x", "1.5h", "h12", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
            let _ = parse_duration(&s);
        }
    }
}
