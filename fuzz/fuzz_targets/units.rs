//! `units::parse_size` and `units::parse_duration`: never panic; a number they return
//! reads back as the same number when written as a bare count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sregistry::format::units::{parse_duration, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse_size(s) {
        // Bare sizes go through f64: exact below 2^53.
        Ok(n) if n < (1 << 53) => {
            assert_eq!(parse_size(&n.to_string()), Ok(n), "size {s:?} = {n}");
        }
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match parse_duration(s) {
        Ok(n) => assert_eq!(
            parse_duration(&n.to_string()),
            Ok(n),
            "duration {s:?} = {n}"
        ),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
