//! A test-only hook for crash tests: stop at a named point so a test can kill the process
//! there deterministically. Compiled in only with the `test-hooks` feature, which the
//! package's dev-dependency on itself turns on for test builds; any other build has no
//! pause points and never reads `SREGISTRY_TEST_PAUSE`.
//!
//! When `SREGISTRY_TEST_PAUSE` equals the point's name, the process writes
//! `paused at <point>` to stderr and sleeps until it is killed, or, when
//! `SREGISTRY_TEST_RESUME` names a file, until that file exists (so a test can change the
//! world at that instant and let the command go on). Unset (always, outside tests), each
//! call is one environment lookup.

/// The environment variable naming the point to stop at.
#[cfg(feature = "test-hooks")]
pub const PAUSE_ENV: &str = "SREGISTRY_TEST_PAUSE";

/// Stop here forever if the test asked for this point. Without the `test-hooks` feature
/// (every build but the tests'), this does nothing and reads no environment.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn pause(_point: &str) {}

/// The environment variable naming an operation to fail (a fault a real filesystem
/// seldom gives: an fsync's EIO).
#[cfg(feature = "test-hooks")]
pub const FAIL_ENV: &str = "SREGISTRY_TEST_FAIL";

/// Whether the test asked `what` to fail (always false without `test-hooks`).
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn fails(_what: &str) -> bool {
    false
}

/// Whether the test asked `what` to fail.
#[cfg(feature = "test-hooks")]
pub(crate) fn fails(what: &str) -> bool {
    std::env::var_os(FAIL_ENV).is_some_and(|v| v == what)
}

/// Whether the test asked to stop at `point` (always false without `test-hooks`).
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn wants(_point: &str) -> bool {
    false
}

/// Whether the test asked to stop at `point`.
#[cfg(feature = "test-hooks")]
pub(crate) fn wants(point: &str) -> bool {
    std::env::var_os(PAUSE_ENV).is_some_and(|v| v == point)
}

/// Stop here forever if the test asked for this point.
#[cfg(feature = "test-hooks")]
pub(crate) fn pause(point: &str) {
    if std::env::var_os(PAUSE_ENV).is_some_and(|v| v == point) {
        eprintln!("paused at {point}");
        let resume = std::env::var_os("SREGISTRY_TEST_RESUME").map(std::path::PathBuf::from);
        loop {
            match &resume {
                Some(f) if f.exists() => return,
                Some(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                None => std::thread::sleep(std::time::Duration::from_secs(3600)),
            }
        }
    }
}
