//! Fuzzes the training reader: a small valid dataset (per example with labels, int8 values
//! and sampled targets; or per position, as a language model's) whose shard is replaced by
//! the fuzzer's bytes or a mutation of the real shard (size and sha256 resealed in the
//! manifest, so the reader gets past them), then read as `logits-train` reads it: the MLP
//! loader streamed with shuffling and loaded whole, or the LM loader. Rows or an error, never
//! a panic.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use logits_format::manifest::{Granularity, SampledSpec, ValueEncoding};
use logits_format::synth::{self, SynthSpec};
use logits_format::writer::{WriteOptions, file_sha256};
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

/// libfuzzer-sys makes every panic abort, even one the reader catches and reports as an
/// error (the Parquet library's page decoders panic on some damaged pages; the reader turns
/// that into "the file is damaged"). Silencing the hook keeps those as what the tool does,
/// an error; a panic that escapes the tool still aborts (libfuzzer-sys checks the unwind).
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fuzz_target!(|data: &[u8]| {
    quiet_panics();
    let Some(&head) = data.first() else { return };
    let b = &bases()[(head >> 1 & 1) as usize];
    let bytes: Vec<u8> = if head & 1 == 1 && data.len() > 4 {
        let mut s = b.shard.clone();
        for chunk in data[1..].chunks(4) {
            if chunk.len() == 4 {
                let at = u16::from_le_bytes([chunk[0], chunk[1]]) as usize % s.len();
                s[at] ^= chunk[2];
            }
        }
        s
    } else {
        data[1..].to_vec()
    };
    let path = b.dir.path().join(&b.manifest.shards[0].path);
    std::fs::write(&path, &bytes).expect("write shard");
    let (n, sha) = file_sha256(&path).expect("hash");
    let mut m = b.manifest.clone();
    m.shards[0].bytes = n;
    m.shards[0].sha256 = sha;
    m.totals.bytes = n;
    std::fs::write(b.dir.path().join("manifest.json"), m.to_json()).expect("write manifest");
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
