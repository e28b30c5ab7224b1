//! What the shard-level fuzz targets share: the panic hook they need, the mutation of a real
//! shard by the fuzzer's bytes, and writing a shard with the manifest resealed to it.

use logits_format::Manifest;
use logits_format::writer::file_sha256;

/// libfuzzer-sys makes every panic abort, even one the reader catches and reports as an
/// error (the Parquet library's page decoders panic on some damaged pages; the reader turns
/// that into "the file is damaged"). Silencing the hook keeps those as what the tool does,
/// an error; a panic that escapes the tool still aborts (libfuzzer-sys checks the unwind).
pub fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

/// `shard` with bytes flipped as `ops` says: each 4 bytes are a little-endian u16 offset
/// (modulo the length), an xor mask and one unused byte.
pub fn mutate(shard: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut s = shard.to_vec();
    for chunk in ops.chunks(4) {
        if chunk.len() == 4 {
            let at = u16::from_le_bytes([chunk[0], chunk[1]]) as usize % s.len();
            s[at] ^= chunk[2];
        }
    }
    s
}

/// Writes `bytes` as the only shard of the dataset in `dir` and rewrites its manifest with
/// their size and sha256, so the reader gets past the checksum to its deeper guards.
pub fn reseal(dir: &std::path::Path, manifest: &Manifest, bytes: &[u8]) {
    let path = dir.join(&manifest.shards[0].path);
    std::fs::write(&path, bytes).expect("write shard");
    let (n, sha) = file_sha256(&path).expect("hash");
    let mut m = manifest.clone();
    m.shards[0].bytes = n;
    m.shards[0].sha256 = sha;
    m.totals.bytes = n;
    std::fs::write(dir.join("manifest.json"), m.to_json()).expect("write manifest");
}
