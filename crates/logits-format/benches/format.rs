//! Format benchmark: write and read throughput, bytes per stored entry (all-in, and where they
//! go), and decoding error, for every value encoding, on
//!   (a) per-example targets, k = 8 over 1,000 classes;
//!   (b) per-token targets, k = 32 over a 32,000-entry vocabulary,
//! with realistically peaked logits (see `logits_format::synth`); int8 also context-coded
//! (`ctx-v1`, shown as `int8c`).
//!
//! Run: `cargo bench -p logits-format --bench format [-- --zstd LEVEL] [--quick]`.
//!
//! Real teachers: `cargo bench -p logits-format --bench format -- --real F32 DATASET...`
//! reads datasets `logits-build` wrote from one corpus (the f32 one as the reference; the
//! commands are in BENCHMARKS.md) and reports each one's bytes per entry by column group, its
//! decoding error against the f32 build and its read throughput through the reader.
//! Figures are recorded in BENCHMARKS.md.

use std::time::Instant;

use logits_format::manifest::{Granularity, TopK, ValueEncoding};
use logits_format::rows::RowBatch;
use logits_format::stats::column_bytes;
use logits_format::synth::{self, SynthSpec};
use logits_format::writer::{CreateMode, DatasetWriter, WriteOptions};
use logits_format::{Dataset, ReadOptions};

struct Case {
    name: &'static str,
    spec: SynthSpec,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--real") {
        let dirs: Vec<&String> = args[i + 1..]
            .iter()
            .filter(|a| !a.starts_with("--"))
            .collect();
        real(&dirs);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let zstd_level: i32 = args
        .iter()
        .position(|a| a == "--zstd")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(WriteOptions::default().zstd_level);
    let cases = [
        Case {
            name: "(a) per-example k=8, 1,000 classes",
            spec: SynthSpec {
                granularity: Granularity::Example,
                axis_size: 1000,
                topk: Some(TopK::Fixed { k: 8 }),
                temperatures: vec![],
                features: vec![],
                inputs: false,
                labels: false,
                keys: false,
                rows: if quick { 20_000 } else { 200_000 },
                ..Default::default()
            },
        },
        Case {
            name: "(b) per-token k=32, 32,000 vocabulary",
            spec: SynthSpec {
                granularity: Granularity::Position,
                axis_size: 32_000,
                topk: Some(TopK::Fixed { k: 32 }),
                temperatures: vec![],
                features: vec![],
                inputs: false,
                labels: false,
                keys: false,
                positions: (128, 128),
                rows: if quick { 40 } else { 400 },
                ..Default::default()
            },
        },
    ];
    println!(
        "format benchmark{} (release build, 1 writer thread, zstd level {zstd_level})",
        if quick { " --quick" } else { "" }
    );
    for case in cases {
        let spec0 = &case.spec;
        let t0 = Instant::now();
        let draft = synth::draft(spec0);
        let chunk = if spec0.granularity == Granularity::Example {
            4096
        } else {
            16
        };
        let batches: Vec<RowBatch> = (0..spec0.rows)
            .step_by(chunk as usize)
            .map(|lo| synth::batch(spec0, &draft, lo..(lo + chunk).min(spec0.rows)))
            .collect();
        let positions: usize = batches
            .iter()
            .map(|b| b.targets.as_ref().map_or(0, |t| t.positions()))
            .sum();
        let entries: usize = batches
            .iter()
            .map(|b| {
                b.targets
                    .as_ref()
                    .and_then(|t| t.topk.as_ref())
                    .map_or(0, |k| k.ids.len())
            })
            .sum();
        println!(
            "\n{}: {} rows, {} positions, {} entries (generated in {:.1}s)",
            case.name,
            spec0.rows,
            positions,
            entries,
            t0.elapsed().as_secs_f64()
        );
        println!(
            "  {:<5} {:>9} {:>10} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11} {:>11}",
            "enc",
            "write r/s",
            "write MB/s",
            "read r/s",
            "read MB/s",
            "B/entry",
            "ids",
            "values",
            "logz",
            "rest",
            "max |dlogp|",
            "mean KL",
            "max KL"
        );
        let encs = ValueEncoding::ALL
            .iter()
            .map(|&e| (e, false))
            .chain([(ValueEncoding::Int8, true)]);
        for (enc, coded) in encs {
            let spec = SynthSpec {
                values: enc,
                coded,
                ..spec0.clone()
            };
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().join("ds");
            let mut d = synth::draft(&spec);
            d.targets.as_mut().expect("targets").values = enc;
            let shard_rows = if spec.granularity == Granularity::Example {
                50_000
            } else {
                100
            };
            let t = Instant::now();
            let wo = WriteOptions {
                zstd_level,
                ..Default::default()
            };
            let mut w = DatasetWriter::create(&root, d, wo, CreateMode::New).expect("create");
            let mut shard = None;
            let mut index = 0;
            for b in &batches {
                if shard.is_none() {
                    shard = Some(w.shard(index).expect("shard"));
                }
                let s = shard.as_mut().expect("shard");
                s.write(b).expect("write");
                if s.rows() >= shard_rows {
                    let rec = shard.take().expect("shard").finish().expect("finish");
                    w.record(rec).expect("record");
                    index += 1;
                }
            }
            if let Some(s) = shard.take() {
                let rec = s.finish().expect("finish");
                w.record(rec).expect("record");
                index += 1;
            }
            let m = w.commit(index).expect("commit");
            let write_s = t.elapsed().as_secs_f64();
            let ds = Dataset::open(&root).expect("open");
            let t = Instant::now();
            let mut stream = ds
                .stream(&ReadOptions {
                    batch_size: chunk as usize,
                    ..Default::default()
                })
                .expect("stream");
            let mut got = Vec::new();
            while let Some(b) = stream.next_rows() {
                got.push(b.expect("read"));
            }
            let read_s = t.elapsed().as_secs_f64();
            let (max_err, mean_kl, max_kl) = decoding_error(&batches, &got);
            let cols = column_bytes(&ds).expect("column bytes");
            let col = |names: &[&str]| {
                names
                    .iter()
                    .map(|n| cols.get(*n).copied().unwrap_or(0))
                    .sum::<u64>()
            };
            let ids = col(&["topk_ids", "topk_coded"]);
            let values = col(&["topk_values", "topk_logtail"]);
            let logz = col(&["logz"]);
            let rest = m.totals.bytes - ids - values - logz;
            let e = entries as f64;
            let mb = m.totals.bytes as f64 / 1e6;
            println!(
                "  {:<5} {:>9.0} {:>10.1} {:>9.0} {:>10.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>11.2e} {:>11.2e} {:>11.2e}",
                if coded { "int8c" } else { enc.name() },
                spec.rows as f64 / write_s,
                mb / write_s,
                spec.rows as f64 / read_s,
                mb / read_s,
                m.totals.bytes as f64 / e,
                ids as f64 / e,
                values as f64 / e,
                logz as f64 / e,
                rest as f64 / e,
                max_err,
                mean_kl,
                max_kl
            );
        }
    }
    println!(
        "\nB/entry = shard bytes / stored top-k entries (ids + values + logZ + row overhead, after zstd)."
    );
    println!(
        "KL = KL(exact || decoded) per position over the kept entries plus one tail bucket, in nats."
    );
    println!("int8c: `ids` holds the coded ids and steps (topk_coded), `values` the exact tail.");
}

/// Every row of a dataset, through the reader, and the seconds it took.
fn read_rows(ds: &Dataset) -> (Vec<RowBatch>, f64) {
    let t = Instant::now();
    let mut stream = ds
        .stream(&ReadOptions {
            batch_size: 256,
            ..Default::default()
        })
        .expect("stream");
    let mut got = Vec::new();
    while let Some(b) = stream.next_rows() {
        got.push(b.expect("read"));
    }
    (got, t.elapsed().as_secs_f64())
}

/// The real-teacher part: datasets built by `logits-build` from one corpus, against the first
/// (an f32 build).
fn real(dirs: &[&String]) {
    let Some((reference, rest)) = dirs.split_first() else {
        eprintln!("--real F32_DATASET DATASET...: datasets built by logits-build from one corpus");
        std::process::exit(2);
    };
    let (want, _) = read_rows(&Dataset::open(std::path::Path::new(reference)).expect("open"));
    println!(
        "  {:<40} {:<6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11} {:>12}",
        "dataset",
        "enc",
        "B/entry",
        "top-k",
        "logz",
        "tail",
        "rest",
        "mean KL",
        "max KL",
        "read ent/s"
    );
    for dir in std::iter::once(reference).chain(rest) {
        let ds = Dataset::open(std::path::Path::new(dir)).expect("open");
        let m = ds.manifest().clone();
        let (got, secs) = read_rows(&ds);
        let (_, mean_kl, max_kl) = decoding_error(&want, &got);
        let cols = column_bytes(&ds).expect("column bytes");
        let col = |names: &[&str]| -> u64 {
            names
                .iter()
                .map(|n| cols.get(*n).copied().unwrap_or(0))
                .sum()
        };
        let topk = col(&["topk_ids", "topk_values", "topk_coded"]);
        let (logz, tail) = (col(&["logz", "logz_temps"]), col(&["topk_logtail"]));
        let e = m.totals.entries as f64;
        let t = m.targets.as_ref().expect("targets");
        println!(
            "  {:<40} {:<6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>11.2e} {:>11.2e} {:>12.0}",
            dir,
            if t.coding.is_some() {
                "int8c"
            } else {
                t.values.name()
            },
            m.totals.bytes as f64 / e,
            topk as f64 / e,
            logz as f64 / e,
            tail as f64 / e,
            (m.totals.bytes - topk - logz - tail) as f64 / e,
            mean_kl,
            max_kl,
            e / secs
        );
    }
    println!(
        "B/entry all-in; top-k = ids + values (or the coded column); read = the whole reader (Parquet, checks, decoding)."
    );
}

/// Max |log p error| at T=1 and the mean and max KL(exact ‖ decoded) over positions, with the
/// kept entries plus the tail as one bucket.
fn decoding_error(want: &[RowBatch], got: &[RowBatch]) -> (f64, f64, f64) {
    let (mut max_err, mut sum_kl, mut max_kl, mut n) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    // Entries by id within each position: coded datasets store tied ids in id order.
    let flat = |bs: &[RowBatch]| -> (Vec<f32>, Vec<usize>, Vec<f32>) {
        let (mut logits, mut offsets, mut logz) = (vec![], vec![0usize], vec![]);
        for b in bs {
            let t = b.targets.as_ref().expect("targets");
            let k = t.topk.as_ref().expect("topk");
            for p in 0..t.logz.len() {
                let mut e: Vec<(u32, f32)> = (k.offsets[p]..k.offsets[p + 1])
                    .map(|i| (k.ids[i], k.logits[i]))
                    .collect();
                e.sort_by_key(|x| x.0);
                logits.extend(e.iter().map(|x| x.1));
                offsets.push(logits.len());
            }
            logz.extend(&t.logz);
        }
        (logits, offsets, logz)
    };
    let (wl, wo, wz) = flat(want);
    let (gl, go, gz) = flat(got);
    assert_eq!(wo, go, "entry layout must round-trip");
    for p in 0..wz.len() {
        let (mut pk, mut qk, mut kl) = (0.0f64, 0.0f64, 0.0f64);
        for i in wo[p]..wo[p + 1] {
            let lp = wl[i] as f64 - wz[p] as f64;
            let lq = gl[i] as f64 - gz[p] as f64;
            max_err = max_err.max((lp - lq).abs());
            let (a, b) = (lp.exp(), lq.exp());
            pk += a;
            qk += b;
            kl += a * (lp - lq);
        }
        let (tp, tq) = ((1.0 - pk).max(1e-12), (1.0 - qk).max(1e-12));
        kl += tp * (tp / tq).ln();
        sum_kl += kl;
        max_kl = max_kl.max(kl);
        n += 1;
    }
    (max_err, sum_kl / n.max(1) as f64, max_kl)
}
