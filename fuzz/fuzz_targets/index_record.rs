//! `index::decode_ref` and `index::decode_blob` (the JSON records in redb): never panic;
//! what decodes re-encodes with serde_json to bytes that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sregistry::cache::{decode_blob, decode_ref};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_ref(data) {
        let bytes = serde_json::to_vec(&r).expect("a RefRecord serializes");
        let again = decode_ref(&bytes).unwrap_or_else(|e| {
            panic!(
                "re-encoded {:?} does not decode: {e}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(again, r);
        assert_eq!(serde_json::to_vec(&again).expect("serializes"), bytes);
    }
    if let Ok(b) = decode_blob(data) {
        let bytes = serde_json::to_vec(&b).expect("a BlobRecord serializes");
        let again = decode_blob(&bytes).unwrap_or_else(|e| {
            panic!(
                "re-encoded {:?} does not decode: {e}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_eq!(again, b);
        assert_eq!(serde_json::to_vec(&again).expect("serializes"), bytes);
    }
});
