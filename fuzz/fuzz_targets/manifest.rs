//! Fuzzes the manifest parser: any bytes must give a manifest or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = logits_format::Manifest::from_json(std::path::Path::new("manifest.json"), text);
    }
});
