//! `sif::parse_bytes` and the `Display` of its result: never panic, bounded allocation
//! (run with `-rss_limit_mb=512`), and the promised limits on what is read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sregistry::format::sif::{self, MAX_CONTENT_LEN, MAX_CONTENT_TOTAL, MAX_DESCRIPTORS};

fuzz_target!(|data: &[u8]| {
    let info = match sif::parse_bytes(data) {
        Ok(info) => info,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(sif::looks_like_sif(data), "parsed without the magic");
    let h = &info.header;
    assert_eq!(h.version, "01");
    assert!((0..=MAX_DESCRIPTORS).contains(&h.descriptors_total));
    assert!(info.descriptors.len() as i64 <= h.descriptors_total);
    let mut read = 0i64;
    for d in &info.descriptors {
        if d.content.is_some() {
            assert!(
                (0..=MAX_CONTENT_LEN).contains(&d.size),
                "content of {} bytes",
                d.size
            );
            assert!(d.offset >= 0 && d.offset.saturating_add(d.size) <= data.len() as i64);
            read += d.size;
        }
    }
    assert!(
        read <= MAX_CONTENT_TOTAL as i64,
        "read {read} bytes of text"
    );
    let text = info.to_string();
    assert!(text.lines().count() >= 3 + info.descriptors.len());
    serde_json::to_string(&info).expect("SifInfo serializes");
});
