//! The one clock every time-dependent decision reads.
//!
//! `now()` is the current Unix time in seconds. Tests (and anyone replaying a scenario) set
//! `SREGISTRY_NOW` to a Unix time in seconds to pin it; nothing else in the crate calls
//! `SystemTime::now()` for decisions.

use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that pins [`now`] to a fixed Unix time (seconds), for tests.
pub const NOW_ENV: &str = "SREGISTRY_NOW";

/// Current Unix time in whole seconds, or the value of `SREGISTRY_NOW` when it is set to
/// a number.
pub fn now() -> u64 {
    if let Some(pinned) = std::env::var_os(NOW_ENV)
        .and_then(|v| v.into_string().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return pinned;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Render a Unix time as `YYYY-MM-DD HH:MM` UTC (no time-zone database needed).
pub fn format_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Render a Unix time as RFC 3339 UTC, as the JSON output uses.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_rendering_matches_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
