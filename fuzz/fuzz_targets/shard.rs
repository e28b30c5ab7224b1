//! Fuzzes the shard reader: a valid small dataset whose shard file is replaced by the fuzzer's
//! bytes (with the manifest's size and checksum updated, so the reader gets past them) must
//! stream to rows or to an error, and validation must report, never panic.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use logits_format::synth::{self, SynthSpec};
use logits_format::writer::WriteOptions;
use logits_format::{Dataset, Manifest, ReadOptions};

struct Base {
    dir: tempfile::TempDir,
    manifest: Manifest,
    shard: Vec<u8>,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = SynthSpec { rows: 8, ..Default::default() };
        let manifest = synth::write_dataset(&spec, dir.path(), 8, WriteOptions::default()).expect("write");
        let shard = std::fs::read(dir.path().join(&manifest.shards[0].path)).expect("read");
        Base { dir, manifest, shard }
    })
}

fuzz_target!(|data: &[u8]| {
    common::quiet_panics();
    let b = base();
    // Half the time mutate the real shard (deeper coverage), else use the bytes as they are.
    let bytes: Vec<u8> = if data.first().is_some_and(|x| x & 1 == 1) && data.len() > 4 {
        common::mutate(&b.shard, &data[1..])
    } else {
        data.to_vec()
    };
    common::reseal(b.dir.path(), &b.manifest, &bytes);
    if let Ok(ds) = Dataset::open(b.dir.path()) {
        if let Ok(mut s) = ds.stream(&ReadOptions::default()) {
            while let Some(r) = s.next_rows() {
                if r.is_err() {
                    break;
                }
            }
        }
        let _ = logits_format::validate(&ds);
    }
});
