//! `Reference::parse` and its `Display`: for every input that parses, the printed form
//! parses back to the same reference, and printing is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sregistry::format::reference::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let r = match Reference::parse(s) {
        Ok(r) => r,
        Err(e) => {
            // The error message must render (it escapes and shortens the input).
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(s.parse::<Reference>().as_ref(), Ok(&r), "FromStr disagrees");
    let shown = r.to_string();
    let again = Reference::parse(&shown).unwrap_or_else(|e| {
        panic!("{s:?} parsed to {r:?}, but its display {shown:?} does not parse: {e}")
    });
    assert_eq!(
        again, r,
        "{s:?} -> {shown:?} parses to a different reference"
    );
    assert_eq!(again.to_string(), shown, "display of {s:?} is not stable");
    // The index key is the display without the digest, and parses to the same name.
    let key = r.key();
    assert!(
        shown.starts_with(&key),
        "{shown:?} does not start with key {key:?}"
    );
    assert!(!key.contains('@'), "key {key:?} has a digest");
    let by_key = Reference::parse(&key)
        .unwrap_or_else(|e| panic!("key {key:?} of {s:?} does not parse: {e}"));
    assert_eq!(by_key, r.without_digest(), "key {key:?} of {s:?}");
    // Accessors never panic; the name is never a path step.
    assert!(!r.name().is_empty() && r.name() != "." && r.name() != "..");
    let _ = (r.namespace(), r.host(), r.tag(), r.digest());
});
