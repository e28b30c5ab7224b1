//! Fuzzes the shard reader: a valid small dataset whose shard file is replaced by the fuzzer's
//! bytes (with the manifest's size and checksum updated, so the reader gets past them) must
//! stream to rows or to an error, and validation must report, never panic.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use logits_format::synth::{self, SynthSpec};
use logits_format::writer::{WriteOptions, file_sha256};
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
    let b = base();
    // Half the time mutate the real shard (deeper coverage), else use the bytes as they are.
    let bytes: Vec<u8> = if data.first().is_some_and(|x| x & 1 == 1) && data.len() > 4 {
        let mut s = b.shard.clone();
        for chunk in data[1..].chunks(4) {
            if chunk.len() == 4 {
                let at = u16::from_le_bytes([chunk[0], chunk[1]]) as usize % s.len();
                s[at] ^= chunk[2];
            }
        }
        s
    } else {
        data.to_vec()
    };
    let path = b.dir.path().join(&b.manifest.shards[0].path);
    std::fs::write(&path, &bytes).expect("write shard");
    let (n, sha) = file_sha256(&path).expect("hash");
    let mut m = b.manifest.clone();
    m.shards[0].bytes = n;
    m.shards[0].sha256 = sha;
    m.totals.bytes = n;
    std::fs::write(b.dir.path().join("manifest.json"), m.to_json()).expect("write manifest");
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
