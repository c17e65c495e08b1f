//! `RemoteRef::parse`, its `Display` and `default_name()`: never panic; whatever parses
//! prints to a string that parses to the same value, unless the display hides something
//! (a URL's user-info as `***@`, its query values as `NAME=***`, its fragment): then no
//! hidden query value shows in it; a default name, when there is one, is itself a
//! reference that round-trips.
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
    let hides = shown.contains("***@")
        || matches!(&r, RemoteRef::Http(u) if u.contains(['?', '#']));
    if hides {
        if let RemoteRef::Http(u) = &r {
            no_query_value_shows(u, &shown);
        }
    } else {
        let again = RemoteRef::parse(&shown).unwrap_or_else(|e| {
            panic!("{s:?} parsed to {r:?}, but its display {shown:?} does not parse: {e}")
        });
        assert_eq!(again, r, "{s:?} -> {shown:?} parses to a different remote");
        assert_eq!(again.to_string(), shown, "display of {s:?} is not stable");
    }
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
                r.default_name(&RemoteOptions::default()).ok(),
                Some(name),
                "default name of {s:?} unstable"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

/// No value of `url`'s query appears in `shown`, except where the same text is also in
/// the URL outside the values (a path, a parameter's name) or could be the hex hash the
/// display adds.
fn no_query_value_shows(url: &str, shown: &str) {
    let no_fragment = url.split('#').next().unwrap_or(url);
    let Some((_, query)) = no_fragment.split_once('?') else {
        return;
    };
    let mut outside = no_fragment.split('?').next().unwrap_or("").to_string();
    let mut values = Vec::new();
    for param in query.split('&') {
        match param.split_once('=') {
            Some((name, value)) => {
                outside.push_str(name);
                outside.push(' ');
                values.push(value);
            }
            None => {
                outside.push_str(param);
                outside.push(' ');
            }
        }
    }
    for v in values {
        let maybe_hash = v.len() <= 12 && v.bytes().all(|b| b.is_ascii_hexdigit());
        if v.is_empty() || outside.contains(v) || "***".contains(v) || maybe_hash {
            continue;
        }
        assert!(
            !shown.contains(v),
            "the display {shown:?} of {url:?} shows the query value {v:?}"
        );
    }
}
