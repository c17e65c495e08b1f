//! A test-only hook for crash tests: stop at a named point so a test can kill the process
//! there deterministically.
//!
//! When `SREGISTRY_TEST_PAUSE` equals the point's name, the process writes
//! `paused at <point>` to stderr and sleeps until it is killed. Unset (always, outside
//! tests), each call is one environment lookup.

/// The environment variable naming the point to stop at.
pub const PAUSE_ENV: &str = "SREGISTRY_TEST_PAUSE";

/// Stop here forever if the test asked for this point.
pub fn pause(point: &str) {
    if std::env::var_os(PAUSE_ENV).is_some_and(|v| v == point) {
        eprintln!("paused at {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
