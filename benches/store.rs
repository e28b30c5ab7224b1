//! Object-storage benchmark (issue 7 §6), against a moto S3 server on loopback started here:
//!   - training throughput reading a dataset in place from the store (range requests,
//!     prefetch, no cache) ÷ reading the same dataset from local disk, same run, same steps:
//!     the MLP 784-1024-1024-10 at batch 256 of the trainer benchmark. Target ≥ 0.9.
//!   - for scale, the raw read rate (every row and column streamed, no training) from each.
//!   - merge time for a dataset of 1,000 shards built into the store (list the markers,
//!     download and check every shard, write the manifest, remove the build records), with the
//!     same merge on local disk for scale.
//!
//! moto is a Python server sharing this machine's cores with the trainer, so the ratio is a
//! pessimistic stand-in for a real store, which serves from other machines.
//!
//! Run: `cargo bench --bench store [-- --quick]`. Figures: BENCHMARKS.md.

use std::path::Path;
use std::time::Instant;

use logits_format::synth::{self, SynthSpec};
use logits_format::writer::{self, CreateMode, DatasetWriter, WriteOptions};
use logits_format::{Dataset, manifest::Granularity};

#[path = "../crates/logits-student/benches/common/mlp_rate.rs"]
mod mlp_rate;
#[path = "../tests/common/moto.rs"]
mod moto;
use mlp_rate::train_samples_per_s;

/// Seconds to stream every row of `ds` (all columns, batches of 256, no shuffle).
fn stream_seconds(ds: &Dataset) -> f64 {
    let t = Instant::now();
    let mut rows = 0usize;
    for b in ds
        .stream(&logits_format::ReadOptions {
            batch_size: 256,
            ..Default::default()
        })
        .expect("stream")
    {
        rows += b.expect("batch").num_rows();
    }
    assert_eq!(rows as u64, ds.manifest().totals.rows);
    t.elapsed().as_secs_f64()
}

/// Builds `shards` small shards into `root` without committing them; returns seconds.
fn build_shards(root: &Path, shards: u32) -> f64 {
    let spec = SynthSpec {
        granularity: Granularity::Example,
        axis_size: 100,
        rows: shards as u64 * 8,
        ..Default::default()
    };
    let t = Instant::now();
    let mut w = DatasetWriter::create(
        root,
        synth::draft(&spec),
        WriteOptions::default(),
        CreateMode::Overwrite,
    )
    .expect("create");
    for i in 0..shards {
        let mut s = w.shard(i).expect("shard");
        s.write(&synth::batch(
            &spec,
            w.draft(),
            i as u64 * 8..(i as u64 + 1) * 8,
        ))
        .expect("write");
        let rec = s.finish().expect("finish");
        w.record(rec).expect("record");
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    logits::keep_freed_memory();
    let quick = std::env::args().any(|a| a == "--quick");
    let (rows, steps, merge_shards) = if quick {
        (8192u64, 30u64, 100u32)
    } else {
        (32768, 100, 1000)
    };
    let server = moto::Moto::start();
    server.bucket("bench");
    for (k, v) in server.env() {
        // SAFETY: set before any other thread of this process starts.
        unsafe { std::env::set_var(k, v) };
    }
    let dir = tempfile::tempdir().expect("tempdir");

    let local = dir.path().join("ds");
    let url = "s3://bench/ds";
    let t = Instant::now();
    synth::write_dense_dataset(&local, rows, 784, 10, 4096).expect("local dataset");
    let tl = t.elapsed().as_secs_f64();
    let t = Instant::now();
    synth::write_dense_dataset(Path::new(url), rows, 784, 10, 4096).expect("store dataset");
    let tr = t.elapsed().as_secs_f64();
    let bytes = Dataset::open(&local).expect("open").manifest().totals.bytes;
    println!(
        "dataset: {rows} rows × 784 f32, {:.1} MB in 4,096-row shards; built locally in {tl:.1}s, into the store in {tr:.1}s",
        bytes as f64 / 1e6
    );
    let dl = Dataset::open(&local).expect("open local");
    let dr = Dataset::open(Path::new(url)).expect("open remote");
    let (sl, sr) = (stream_seconds(&dl), stream_seconds(&dr));
    println!(
        "reading every row and column, no training: {:.0} MB/s from local disk, {:.0} MB/s from the store ({:.2}x)",
        bytes as f64 / 1e6 / sl,
        bytes as f64 / 1e6 / sr,
        sl / sr
    );
    let a = train_samples_per_s(&dl, steps, false);
    let b = train_samples_per_s(&dr, steps, false);
    println!("trainer from local disk:  {a:.0} samples/s");
    println!("trainer from the store:   {b:.0} samples/s");
    println!("ratio store/local disk: {:.3} (target >= 0.9)", b / a);

    let mroot = dir.path().join("merge");
    let murl = format!("s3://bench/merge{merge_shards}");
    let bl = build_shards(&mroot, merge_shards);
    let br = build_shards(Path::new(&murl), merge_shards);
    let t = Instant::now();
    let m = writer::commit(&mroot, Some(merge_shards)).expect("local merge");
    let ml = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mr = writer::commit(Path::new(&murl), Some(merge_shards)).expect("store merge");
    let ms = t.elapsed().as_secs_f64();
    assert_eq!(m.shards, mr.shards);
    println!(
        "{merge_shards} shards ({} rows): built in {bl:.1}s locally, {br:.1}s into the store",
        m.totals.rows
    );
    println!("merge of {merge_shards} shards: {ml:.2}s on local disk, {ms:.2}s in the store");
}
