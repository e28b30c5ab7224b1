//! Regression tests from fuzzing: damaged shards whose checksums were resealed (so only the
//! reader's own guards stand between the bytes and the Parquet library) give errors, never a
//! panic. Found by `fuzz/` (target `shard`): a flipped footer byte made parquet 60.1 panic in
//! `ColumnChunkMetaData::byte_range` ("column start and length should not be negative").

use logits_format::synth::{self, SynthSpec};
use logits_format::writer::{WriteOptions, file_sha256};
use logits_format::{Dataset, Manifest, ReadOptions, validate};

/// The fuzz targets' base: an 8-row synthetic dataset in one shard; its manifest, the shard's
/// path and bytes.
fn base(dir: &std::path::Path) -> (Manifest, std::path::PathBuf, Vec<u8>) {
    let spec = SynthSpec {
        rows: 8,
        ..Default::default()
    };
    let m = synth::write_dataset(&spec, dir, 8, WriteOptions::default()).expect("write");
    let path = dir.join(&m.shards[0].path);
    let bytes = std::fs::read(&path).expect("read");
    (m, path, bytes)
}

/// Writes `bytes` as the shard and reseals the manifest's size and sha256 for it, as the fuzz
/// targets do, so only the reader's own guards stand between the bytes and the library.
fn reseal(dir: &std::path::Path, m: &Manifest, path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write");
    let (n, sha) = file_sha256(path).expect("hash");
    let mut mm = m.clone();
    mm.shards[0].bytes = n;
    mm.shards[0].sha256 = sha;
    std::fs::write(dir.join("manifest.json"), mm.to_json()).expect("manifest");
}

/// Streams and validates the dataset in `dir`; returns the first error's text, if any.
fn read_all(dir: &std::path::Path) -> Option<String> {
    let ds = match Dataset::open(dir) {
        Ok(d) => d,
        Err(e) => return Some(e.to_string()),
    };
    let rep = validate(&ds);
    let mut first = rep.problems.first().cloned();
    if let Ok(mut s) = ds.stream(&ReadOptions::default()) {
        while let Some(r) = s.next_rows() {
            if let Err(e) = r {
                first.get_or_insert(e.to_string());
                break;
            }
        }
    }
    first
}

#[test]
fn every_single_byte_flip_of_the_footer_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, path, good) = base(dir.path());
    let footer = u32::from_le_bytes(good[good.len() - 8..good.len() - 4].try_into().unwrap());
    let start = good.len() - 8 - footer as usize;
    let (mut errors, mut caught, mut total) = (0, 0, 0);
    for at in start..good.len() - 8 {
        for mask in [0x01u8, 0xff] {
            total += 1;
            let mut b = good.clone();
            b[at] ^= mask;
            reseal(dir.path(), &m, &path, &b);
            if let Some(e) = read_all(dir.path()) {
                errors += 1;
                // The reader catches the library's own panics and reports them; the known one
                // is prevented by the byte-range guard and must not show up here.
                if e.contains("panicked") {
                    caught += 1;
                    assert!(
                        !e.contains("should not be negative"),
                        "byte {at} ^ {mask:#x}: {e}"
                    );
                }
            }
        }
    }
    assert!(errors > 0);
    eprintln!(
        "{total} damaged footers: {errors} refused ({caught} through a caught library panic), the rest read (flips in unused fields)"
    );
}

/// Found by the `shard` target (input `/wATHT0jAPs=`): one byte of a float column's page
/// flipped (resealed) made parquet 60.1's byte-stream-split decoder index out of bounds
/// (`byte_stream_split_decoder.rs:67`). The library still panics; the reader and validation
/// catch it and report the file as damaged.
#[test]
fn a_page_that_makes_the_parquet_decoder_panic_is_reported_as_damaged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, path, mut b) = base(dir.path());
    // The fuzz target's mutation of that input: byte (19 << 8) mod len, xor 29, where len was
    // the 3,977 bytes the shard had then (byte 887, in a float column's page). The pages come
    // before the footer, so the byte is the same one though the footer has grown since
    // (logits.targets/inputs/features metadata).
    let at = (19usize << 8) % 3977;
    assert!(at < b.len());
    b[at] ^= 29;
    reseal(dir.path(), &m, &path, &b);
    let e = read_all(dir.path()).expect("an error");
    assert!(e.contains(&m.shards[0].path), "{e}");
    assert!(e.contains("damaged"), "{e}");
}
