//! `oci::parse_manifest` then `oci::sif_layer`: never panic; a parsed manifest is
//! schema 2, survives a serde round trip, and the chosen layer is a SIF layer. The same
//! bytes through the docker:// parsers (`docker::parse_image_manifest`,
//! `docker::choose_platform`): never panic; an accepted image has layers, and a chosen
//! index entry names a digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sregistry::remote::docker::{self, Platform};
use sregistry::remote::oci::{self, SIF_LAYER, SIF_LAYER_PROTO};

fuzz_target!(|data: &[u8]| {
    if let Ok((_, layers)) = docker::parse_image_manifest(data) {
        assert!(!layers.is_empty());
    }
    for p in ["linux/amd64", "linux/arm64", "linux/arm/v7"] {
        if let Ok((digest, _)) = docker::choose_platform(data, &Platform::parse(p).unwrap()) {
            let _ = digest.len();
        }
    }
    let m = match oci::parse_manifest(data) {
        Ok(m) => m,
        Err(_) => return,
    };
    assert_eq!(m.schema_version, 2);
    match oci::sif_layer(&m) {
        Ok(layer) => {
            assert!(layer.media_type == SIF_LAYER || layer.media_type == SIF_LAYER_PROTO);
            let _ = layer.annotations.as_ref().and_then(|a| a.get(oci::TITLE));
        }
        Err(e) => assert!(!e.is_empty()),
    }
    let bytes = serde_json::to_vec(&m).expect("a manifest serializes");
    let again = oci::parse_manifest(&bytes)
        .unwrap_or_else(|e| panic!("re-encoded manifest does not parse: {e}"));
    assert_eq!(again, m, "manifest changed in a serde round trip");
});
