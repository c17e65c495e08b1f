//! `RemoteRef::parse`, its `Display` and `default_name()`: never panic; whatever parses
//! prints to a string that parses to the same value (or, where the display hides a URL's
//! user-info as `***@`, to one that displays the same); a default name, when there is
//! one, is itself a reference that round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sregistry::format::reference::Reference;
use sregistry::remote::{RemoteOptions, RemoteRef};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sregistry::remote::is_remote(s);
    let r = match RemoteRef::parse(s) {
        Ok(r) => r,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let shown = r.to_string();
    let again = RemoteRef::parse(&shown).unwrap_or_else(|e| {
        panic!("{s:?} parsed to {r:?}, but its display {shown:?} does not parse: {e}")
    });
    if !shown.contains("***@") {
        assert_eq!(again, r, "{s:?} -> {shown:?} parses to a different remote");
    }
    assert_eq!(again.to_string(), shown, "display of {s:?} is not stable");
    if let RemoteRef::Oras(o) = &r {
        let _ = (o.reference(), o.local_name());
    }
    match r.default_name(&RemoteOptions::default()) {
        Ok(name) => {
            let text = name.to_string();
            let back = Reference::parse(&text)
                .unwrap_or_else(|e| panic!("default name {text:?} of {s:?} does not parse: {e}"));
            assert_eq!(
                back, name,
                "default name {text:?} of {s:?} does not round-trip"
            );
            assert_eq!(
                again.default_name(&RemoteOptions::default()).ok(),
                Some(name),
                "default name of {s:?} unstable"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
