//! Round trips of the block coder on synthetic rows, and (ignored) a size measurement on a
//! real int8 dataset.

use super::*;

fn lcg(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *x >> 33
}

/// Rows whose ids depend on the token (so the context models have something to learn).
fn rows(n: usize, positions: usize, k: usize, axis: u64, seed: u64) -> Vec<(PlainRow, Vec<u32>)> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            let tokens: Vec<u32> = (0..positions)
                .map(|_| (lcg(&mut x) % axis) as u32)
                .collect();
            let mut row = PlainRow {
                offsets: vec![0],
                ..PlainRow::default()
            };
            for &t in &tokens {
                let kk = 1 + (lcg(&mut x) as usize % k);
                let mut seen = std::collections::BTreeSet::new();
                while seen.len() < kk.min(axis as usize) {
                    let id = if lcg(&mut x).is_multiple_of(3) {
                        lcg(&mut x) % axis
                    } else {
                        (t as u64 * 7 + lcg(&mut x) % 5) % axis
                    };
                    if seen.insert(id) {
                        row.ids.push(id as u32);
                        row.steps.push(if lcg(&mut x).is_multiple_of(2) {
                            0
                        } else {
                            (lcg(&mut x) % 40) as u8
                        });
                    }
                }
                row.offsets.push(row.ids.len());
            }
            row.canonicalise();
            (row, tokens)
        })
        .collect()
}

#[test]
fn rows_round_trip_across_blocks() {
    for (axis, k) in [
        (8_192u64, 32usize),
        (50_257, 8),
        (3, 3),
        (1, 1),
        (200_000, 64),
    ] {
        let data = rows(12, 17, k, axis, axis);
        let mut enc = BlockCoder::new(axis, k as u64);
        let blobs: Vec<Vec<u8>> = data
            .iter()
            .enumerate()
            .map(|(i, (r, t))| enc.encode_row(r, t, i % 5 == 0))
            .collect();
        let mut dec = BlockCoder::new(axis, k as u64);
        for (i, ((r, t), b)) in data.iter().zip(&blobs).enumerate() {
            assert_eq!(&dec.decode_row(b, t).unwrap(), r, "axis {axis} row {i}");
        }
        // A block read on its own, as a shuffled reader does.
        let mut dec = BlockCoder::new(axis, k as u64);
        for i in 5..10 {
            assert_eq!(dec.decode_row(&blobs[i], &data[i].1).unwrap(), data[i].0);
        }
        // Starting inside a block is refused.
        let mut dec = BlockCoder::new(axis, k as u64);
        assert!(
            dec.decode_row(&blobs[6], &data[6].1)
                .unwrap_err()
                .0
                .contains("row group")
        );
    }
}

#[test]
fn rows_without_context_round_trip() {
    let data = rows(3, 9, 5, 1000, 7);
    let mut enc = BlockCoder::new(1000, 5);
    let mut dec = BlockCoder::new(1000, 5);
    for (i, (r, _)) in data.iter().enumerate() {
        let b = enc.encode_row(r, &[], i == 0);
        assert_eq!(&dec.decode_row(&b, &[]).unwrap(), r);
    }
}

/// A row of identical, perfectly predictable positions codes in well under a bit each and
/// must still decode (the header bound is no bits-per-position rule).
#[test]
fn highly_predictable_rows_decode() {
    let row = PlainRow {
        offsets: (0..=6_000).collect(),
        ids: vec![7; 6_000],
        steps: vec![3; 6_000],
    };
    let mut enc = BlockCoder::new(50, 1);
    let blob = enc.encode_row(&row, &[], true);
    assert!(blob.len() * 8 < 6_000, "{} bytes", blob.len());
    let mut dec = BlockCoder::new(50, 1);
    assert_eq!(dec.decode_row(&blob, &[]).unwrap(), row);
}

#[test]
fn damaged_rows_are_errors_not_panics() {
    let data = rows(4, 20, 16, 8_192, 3);
    let mut enc = BlockCoder::new(8_192, 16);
    let blobs: Vec<Vec<u8>> = data
        .iter()
        .enumerate()
        .map(|(i, (r, t))| enc.encode_row(r, t, i == 0))
        .collect();
    // Cut short, and every byte flipped in turn: an error or a different row, never a panic.
    let mut dec = BlockCoder::new(8_192, 16);
    assert!(
        dec.decode_row(&blobs[0][..blobs[0].len() / 2], &data[0].1)
            .is_err()
    );
    for i in 0..blobs[1].len().min(200) {
        let mut b = blobs[0].clone();
        if i < b.len() {
            b[i] ^= 0x5A;
        }
        let mut dec = BlockCoder::new(8_192, 16);
        let _ = dec.decode_row(&b, &data[0].1);
    }
    let mut dec = BlockCoder::new(8_192, 16);
    assert!(
        dec.decode_row(&blobs[0], &data[1].1[..3])
            .unwrap_err()
            .0
            .contains("context")
    );
    assert!(dec.decode_row(&[], &[]).is_err());
}

/// `LOGITS_CODED_MEASURE=DATASET cargo test -p logits-format --release coded::tests::measure
/// -- --ignored --nocapture`: codes the first shard of a plain int8 per-token dataset and
/// prints bits per entry (a development aid; the benchmark is `benches/format.rs`).
#[test]
#[ignore]
fn measure() {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{UInt8Type, UInt16Type, UInt32Type};
    let Ok(ds) = std::env::var("LOGITS_CODED_MEASURE") else {
        return;
    };
    let m: crate::manifest::Manifest =
        serde_json::from_slice(&std::fs::read(format!("{ds}/manifest.json")).unwrap()).unwrap();
    let t = m.targets.as_ref().unwrap();
    let max_k = match t.topk.as_ref().unwrap() {
        crate::manifest::TopK::Fixed { k } => *k as u64,
        crate::manifest::TopK::Adaptive { max_k, .. } => *max_k as u64,
    };
    let f = std::fs::File::open(format!("{ds}/{}", m.shards[0].path)).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .with_batch_size(64)
        .build()
        .unwrap();
    let mut enc = BlockCoder::new(t.axis_size, max_k);
    let (mut bytes, mut entries, mut n) = (0usize, 0usize, 0u64);
    let start = std::time::Instant::now();
    let mut all = Vec::new();
    for b in r {
        let b = b.unwrap();
        let ids = b.column_by_name("topk_ids").unwrap().as_list::<i32>();
        let vals = b.column_by_name("topk_values").unwrap().as_list::<i32>();
        let toks = b.column_by_name("in_input_ids").unwrap().as_list::<i32>();
        for row in 0..b.num_rows() {
            let tokens: Vec<u32> = toks
                .value(row)
                .as_primitive::<UInt32Type>()
                .values()
                .to_vec();
            let pi = ids.value(row);
            let pi = pi.as_list::<i32>();
            let pv = vals.value(row);
            let pv = pv.as_list::<i32>();
            let mut pr = PlainRow {
                offsets: vec![0],
                ..PlainRow::default()
            };
            for p in 0..pi.len() {
                let a = pi.value(p);
                if let Some(x) = a.as_primitive_opt::<UInt16Type>() {
                    pr.ids.extend(x.values().iter().map(|&v| v as u32));
                } else {
                    pr.ids
                        .extend_from_slice(a.as_primitive::<UInt32Type>().values());
                }
                pr.steps
                    .extend_from_slice(pv.value(p).as_primitive::<UInt8Type>().values());
                pr.offsets.push(pr.ids.len());
            }
            pr.canonicalise();
            let blob = enc.encode_row(&pr, &tokens, n % 1024 == 0);
            n += 1;
            bytes += blob.len();
            entries += pr.ids.len();
            all.push((blob, tokens, pr));
        }
    }
    let enc_s = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    let mut dec = BlockCoder::new(t.axis_size, max_k);
    for (blob, tokens, pr) in &all {
        assert_eq!(&dec.decode_row(blob, tokens).unwrap(), pr);
    }
    let dec_s = start.elapsed().as_secs_f64();
    struct Meter([f64; 3], usize);
    impl model::BitIo for Meter {
        fn bit(&mut self, bit: bool, p1: u32) -> bool {
            let p = p1 as f64 / 65_536.0;
            self.0[self.1] -= if bit { p.log2() } else { (1.0 - p).log2() };
            bit
        }
        fn section(&mut self, s: usize) {
            self.1 = s;
        }
    }
    let mut meter = Meter([0.0; 3], 0);
    let mut m = BlockCoder::new(t.axis_size, max_k);
    for (i, (_, tokens, pr)) in all.iter().enumerate() {
        m.meter_row(pr, tokens, i % 1024 == 0, &mut meter);
    }
    let e = entries as f64;
    println!(
        "bits per entry: counts {:.3}, steps {:.3}, ids {:.3}",
        meter.0[0] / e,
        meter.0[1] / e,
        meter.0[2] / e
    );
    println!(
        "{ds}: {n} rows, {entries} entries, coded {bytes} B = {:.4} B/entry ({:.3} bits); encode {:.2} M entries/s, decode {:.2} M entries/s",
        bytes as f64 / entries as f64,
        8.0 * bytes as f64 / entries as f64,
        entries as f64 / enc_s / 1e6,
        entries as f64 / dec_s / 1e6
    );
}
