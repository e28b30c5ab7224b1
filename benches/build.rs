//! Build benchmark: `logits-build` end to end against bare ONNX Runtime inference on the same
//! model, batch size and threads, measured in the same run; and peak RSS of the build for a
//! corpus 1x and 10x as large.
//!
//! Run: `cargo bench --bench build` (ONNX Runtime from ORT_DYLIB_PATH or scripts/fetch-ort.sh's
//! cache). Figures are recorded in BENCHMARKS.md.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn read(path: &Path) -> Vec<RecordBatch> {
    let f = File::open(path).expect("corpus");
    ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect()
}

/// Writes the fixture corpus repeated `times` times.
fn replicate(src: &[RecordBatch], times: usize, out: &Path) -> usize {
    let schema = src[0].schema();
    let mut w =
        ArrowWriter::try_new(File::create(out).expect("create"), schema, None).expect("writer");
    let mut rows = 0;
    for _ in 0..times {
        for b in src {
            w.write(b).expect("write");
            rows += b.num_rows();
        }
    }
    w.close().expect("close");
    rows
}

fn pixels(src: &[RecordBatch]) -> Vec<f32> {
    let mut v = Vec::new();
    for b in src {
        let l = b.column_by_name("pixels").expect("pixels").as_list::<i32>();
        let vals = l.values().as_primitive::<Float32Type>();
        assert_eq!(vals.null_count(), 0);
        v.extend_from_slice(vals.values());
    }
    v
}

fn bare_ort(
    model: &Path,
    data: &[f32],
    rows: usize,
    batch: usize,
    sessions: usize,
    threads: usize,
) -> f64 {
    let teacher = logits_teacher::TeacherModel::open(model, &[]).expect("model");
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..sessions {
            let teacher = &teacher;
            s.spawn(move || {
                let mut sess = teacher.session(threads).expect("session");
                let mut at = w * batch;
                while at < rows {
                    let n = batch.min(rows - at);
                    let x = ndarray::Array2::from_shape_vec(
                        (n, 64),
                        data[at * 64..(at + n) * 64].to_vec(),
                    )
                    .expect("shape");
                    let input = ort::value::Tensor::from_array(x).expect("tensor");
                    let out = sess.run(ort::inputs!["pixels" => input]).expect("run");
                    let (_, logits) = out["logits"].try_extract_tensor::<f32>().expect("logits");
                    std::hint::black_box(logits);
                    at += sessions * batch;
                }
            });
        }
    });
    rows as f64 / t.elapsed().as_secs_f64()
}

fn build(
    model: &Path,
    corpus: &Path,
    out: &Path,
    batch: usize,
    sessions: usize,
    threads: usize,
) -> (f64, f64) {
    let o = Command::new(env!("CARGO_BIN_EXE_logits-build"))
        .args([
            "build",
            "--model",
            model.to_str().expect("utf8"),
            "--corpus",
            corpus.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ])
        .args([
            "-k",
            "5",
            "--temperatures",
            "2,4",
            "--rows-per-shard",
            "50000",
            "--json",
            "--overwrite",
        ])
        .args([
            "--batch-size",
            &batch.to_string(),
            "--sessions",
            &sessions.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .output()
        .expect("run logits-build");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    (
        v["rows_per_second"].as_f64().unwrap_or(0.0),
        v["peak_rss_bytes"].as_f64().unwrap_or(0.0),
    )
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("fixtures/digits/digits_teacher.onnx");
    let src = read(&root.join("fixtures/digits/train.parquet"));
    let dir = tempfile::tempdir().expect("tempdir");
    let c1 = dir.path().join("x10.parquet");
    let c10 = dir.path().join("x100.parquet");
    let rows1 = replicate(&src, 10, &c1);
    let rows10 = replicate(&src, 100, &c10);
    let data = pixels(&read(&c1));
    println!(
        "build benchmark: digits teacher (64-512-512-10), corpus {rows1} rows (1x) and {rows10} rows (10x), k=5, logZ at 3 temperatures"
    );
    println!(
        "{:>6} {:>9} {:>8} {:>14} {:>14} {:>7}",
        "batch", "sessions", "threads", "bare ORT r/s", "build r/s", "ratio"
    );
    for (batch, sessions, threads) in [(64, 1, 1), (256, 1, 1), (256, 1, 2), (256, 2, 1)] {
        // Warm both once, then measure each twice and keep the better (noise on 2 vCPUs).
        let _ = bare_ort(&model, &data, rows1.min(2000), batch, sessions, threads);
        let bare = (0..2)
            .map(|_| bare_ort(&model, &data, rows1, batch, sessions, threads))
            .fold(0.0, f64::max);
        let b = (0..2)
            .map(|_| {
                build(
                    &model,
                    &c1,
                    &dir.path().join("ds"),
                    batch,
                    sessions,
                    threads,
                )
                .0
            })
            .fold(0.0, f64::max);
        println!(
            "{batch:>6} {sessions:>9} {threads:>8} {bare:>14.0} {b:>14.0} {:>7.3}",
            b / bare
        );
    }
    let (_, rss1) = build(&model, &c1, &dir.path().join("ds1"), 256, 1, 2);
    let (_, rss10) = build(&model, &c10, &dir.path().join("ds10"), 256, 1, 2);
    println!(
        "peak RSS: 1x {:.1} MiB, 10x {:.1} MiB, growth {:.3}x (target <= 1.1x)",
        rss1 / 1048576.0,
        rss10 / 1048576.0,
        rss10 / rss1
    );
}
