//! `auth::parse_challenge` on `WWW-Authenticate` values: never panics; what it returns
//! has a lower-case token scheme and non-empty, lower-case parameter names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sregistry::remote::auth;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(c) = auth::parse_challenge(s) else {
        return;
    };
    assert!(!c.scheme.is_empty());
    assert!(
        c.scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
        "scheme {:?}",
        c.scheme
    );
    for k in c.params.keys() {
        assert!(!k.is_empty(), "empty parameter name in {s:?}");
        assert_eq!(k, &k.to_ascii_lowercase());
        assert!(!k.contains(['=', ',']) && !k.bytes().any(|b| b.is_ascii_whitespace()));
    }
});
