//! Fuzzes the training reader: a small valid dataset (per example with labels, int8 values
//! and sampled targets; or per position, as a language model's) whose shard is replaced by
//! the fuzzer's bytes or a mutation of the real shard (size and sha256 resealed in the
//! manifest, so the reader gets past them), then read as `logits-train` reads it: the MLP
//! loader streamed with shuffling and loaded whole, or the LM loader. Rows or an error, never
//! a panic.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use logits_format::manifest::{Granularity, SampledSpec, ValueEncoding};
use logits_format::synth::{self, SynthSpec};
use logits_format::writer::WriteOptions;
use logits_format::{Dataset, Manifest};
use logits_student::data::{Loader, Needs};
use logits_student::lm::LmLoader;

struct Base {
    dir: tempfile::TempDir,
    manifest: Manifest,
    shard: Vec<u8>,
}

fn make(per_position: bool) -> Base {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SynthSpec {
        rows: 8,
        values: ValueEncoding::Int8,
        sampled: Some(SampledSpec {
            draws: 4,
            temperature: 1.0,
            seed: 0,
        }),
        granularity: if per_position {
            Granularity::Position
        } else {
            Granularity::Example
        },
        positions: if per_position { (2, 5) } else { (1, 1) },
        labels: !per_position,
        ..Default::default()
    };
    let manifest = synth::write_dataset(&spec, dir.path(), 8, WriteOptions::default()).expect("write");
    let shard = std::fs::read(dir.path().join(&manifest.shards[0].path)).expect("read");
    Base { dir, manifest, shard }
}

fn bases() -> &'static [Base; 2] {
    static B: OnceLock<[Base; 2]> = OnceLock::new();
    B.get_or_init(|| [make(false), make(true)])
}

fuzz_target!(|data: &[u8]| {
    common::quiet_panics();
    let Some(&head) = data.first() else { return };
    let b = &bases()[(head >> 1 & 1) as usize];
    let bytes: Vec<u8> = if head & 1 == 1 && data.len() > 4 {
        common::mutate(&b.shard, &data[1..])
    } else {
        data[1..].to_vec()
    };
    common::reseal(b.dir.path(), &b.manifest, &bytes);
    let Ok(ds) = Dataset::open(b.dir.path()) else { return };
    let needs = |labels| Needs {
        topk: true,
        sampled: true,
        labels,
        features: vec![],
    };
    if head >> 1 & 1 == 0 {
        if let Ok(l) = Loader::new(&ds, None, needs(true)) {
            if let Ok(s) = l.stream(None, 3, Some(7), 4, 1) {
                for r in s {
                    if r.is_err() {
                        break;
                    }
                }
            }
            let _ = l.load(None);
        }
    } else if let Ok(l) = LmLoader::new(&ds, needs(false)) {
        if let Ok(s) = l.stream(None, 3, Some(7), 4, 1) {
            for r in s {
                if r.is_err() {
                    break;
                }
            }
        }
    }
});
