//! Build benchmark: `logits-build` end to end against bare ONNX Runtime inference on the same
//! model, batch size and threads, measured in the same run; and peak RSS of the build for a
//! corpus 1x and 10x as large.
//!
//! Teachers: the digits classifier fixture and a random 1,000-class MLP (per example); and, per token over a 32,000-entry
//! vocabulary, two random GPT-style language models written at run time by the student's ONNX
//! exporter: one with no transformer block (embedding, LayerNorm, output projection: the
//! cheapest teacher a 32,000-way output allows, where top-k and logZ weigh most), and one with
//! four blocks of width 512 (a small real teacher).
//!
//! Run: `cargo bench --bench build` (ONNX Runtime from ORT_DYLIB_PATH or scripts/fetch-ort.sh's
//! cache); `-- classifier`, `-- classifier-1k`, `-- zoo`, `-- lm`, `-- lm-small` or
//! `-- postprocess` (host against in-graph top-k and logZ) runs one
//! part only (`zoo`: the CNN and the BERT sequence classifier of the teacher-family matrix, as
//! torch.onnx and transformers exported them); `-- gpu` (only when asked, with
//! `LOGITS_BENCH_DEVICE=cuda:N`: scripts/gpu-check.sh) is the GPU check. `LOGITS_BUILD_BIN`
//! points at another `logits-build` binary and `LOGITS_ROOT` at the repository (for running the
//! benchmark on another machine), `LOGITS_BENCH_CONFIGS=SxT,...` picks sessions × threads.
//! Figures are recorded in BENCHMARKS.md.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// `LOGITS_BENCH_DEVICE` (e.g. `cuda:0`): where bare ONNX Runtime and the builds run (the CPU
/// when unset). Read once, in `main`.
static DEVICE: OnceLock<Option<logits_teacher::runtime::Device>> = OnceLock::new();

fn device() -> Option<logits_teacher::runtime::Device> {
    DEVICE.get().copied().flatten()
}

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

/// Bare ONNX Runtime over the classifier's inputs (`width` values per row, input `name`).
#[allow(clippy::too_many_arguments)]
fn bare_ort(
    model: &Path,
    name: &str,
    width: usize,
    data: &[f32],
    rows: usize,
    batch: usize,
    sessions: usize,
    threads: usize,
) -> f64 {
    bare_ort_shaped(model, name, &[width], data, rows, batch, sessions, threads)
}

/// Bare ONNX Runtime over rows of shape `row` (input `name`, output `logits`).
#[allow(clippy::too_many_arguments)]
fn bare_ort_shaped(
    model: &Path,
    name: &str,
    row: &[usize],
    data: &[f32],
    rows: usize,
    batch: usize,
    sessions: usize,
    threads: usize,
) -> f64 {
    let width: usize = row.iter().product();
    let teacher = logits_teacher::TeacherModel::open(model, &[]).expect("model");
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..sessions {
            let teacher = &teacher;
            s.spawn(move || {
                let mut sess = match device() {
                    Some(d) => teacher.device_session(threads, d).expect("session").0,
                    None => teacher.session(threads).expect("session"),
                };
                let mut at = w * batch;
                while at < rows {
                    let n = batch.min(rows - at);
                    let dims: Vec<usize> = std::iter::once(n).chain(row.iter().copied()).collect();
                    let x = ndarray::ArrayD::from_shape_vec(
                        dims,
                        data[at * width..(at + n) * width].to_vec(),
                    )
                    .expect("shape");
                    let input = ort::value::Tensor::from_array(x).expect("tensor");
                    let out = sess.run(ort::inputs![name => input]).expect("run");
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
    build_with(model, corpus, out, batch, sessions, threads, &[])
}

fn build_with(
    model: &Path,
    corpus: &Path,
    out: &Path,
    batch: usize,
    sessions: usize,
    threads: usize,
    extra: &[&str],
) -> (f64, f64) {
    let bin = std::env::var("LOGITS_BUILD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_logits-build").to_string());
    let o = Command::new(bin)
        .args([
            "build",
            "--model",
            model.to_str().expect("utf8"),
            "--corpus",
            corpus.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ])
        .args(extra)
        .args(if extra.contains(&"-k") {
            vec![]
        } else {
            vec!["-k", "5", "--temperatures", "2,4"]
        })
        .args(["--rows-per-shard", "50000", "--json", "--overwrite"])
        .args(
            device()
                .filter(|_| !extra.contains(&"--device"))
                .map(|d| vec!["--device".to_string(), d.to_string()])
                .unwrap_or_default(),
        )
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

/// Bare ONNX Runtime over pre-made token windows, padded per batch as the build pads them.
fn bare_lm(
    model: &Path,
    windows: &[Vec<u32>],
    batch: usize,
    sessions: usize,
    threads: usize,
) -> f64 {
    let teacher = logits_teacher::TeacherModel::open(model, &[]).expect("model");
    let with_mask = teacher.input("attention_mask").is_some();
    let with_types = teacher.input("token_type_ids").is_some();
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..sessions {
            let teacher = &teacher;
            s.spawn(move || {
                let mut sess = match device() {
                    Some(d) => teacher.device_session(threads, d).expect("session").0,
                    None => teacher.session(threads).expect("session"),
                };
                let mut at = w * batch;
                while at < windows.len() {
                    let chunk = &windows[at..(at + batch).min(windows.len())];
                    let l = chunk.iter().map(Vec::len).max().unwrap_or(1);
                    let mut ids = ndarray::Array2::<i64>::zeros((chunk.len(), l));
                    let mut mask = ndarray::Array2::<i64>::zeros((chunk.len(), l));
                    for (r, w) in chunk.iter().enumerate() {
                        for (p, &t) in w.iter().enumerate() {
                            ids[[r, p]] = t as i64;
                            mask[[r, p]] = 1;
                        }
                    }
                    let types = ndarray::Array2::<i64>::zeros(ids.dim());
                    let ids = ort::value::Tensor::from_array(ids).expect("ids");
                    let mask = ort::value::Tensor::from_array(mask).expect("mask");
                    let types = ort::value::Tensor::from_array(types).expect("types");
                    let out = match (with_mask, with_types) {
                        (true, true) => sess.run(ort::inputs![
                            "input_ids" => ids,
                            "attention_mask" => mask,
                            "token_type_ids" => types
                        ]),
                        (true, false) => {
                            sess.run(ort::inputs!["input_ids" => ids, "attention_mask" => mask])
                        }
                        _ => sess.run(ort::inputs!["input_ids" => ids]),
                    }
                    .expect("run");
                    let (_, logits) = out["logits"].try_extract_tensor::<f32>().expect("logits");
                    std::hint::black_box(logits);
                    at += sessions * batch;
                }
            });
        }
    });
    windows.len() as f64 / t.elapsed().as_secs_f64()
}

/// The per-example part for a classifier that does more work per row than the digits one: a
/// random MLP 784-2048-2048-1000 (ReLU; 16 MFLOP per row, written by the student's exporter)
/// over 100,000 inputs of 784 values quantised like 8-bit pixels (about 10 s a build, so its
/// fixed costs, 0.3 s, are small).
fn wide_classifier(tmp: &Path) {
    use logits_student::mlp::{Activation, Mlp, MlpSpec};
    let widths = vec![784, 2048, 2048, 1000];
    let mlp = Mlp::new(
        MlpSpec {
            widths: widths.clone(),
            embed: None,
            conv: None,
            activation: Activation::Relu,
            layer_norm: false,
            dropout: 0.0,
        },
        3,
    );
    let info = logits_student::student::StudentInfo {
        kind: "mlp".into(),
        widths,
        embed: None,
        conv: None,
        activation: "relu".into(),
        layer_norm: false,
        input: "input".into(),
        dataset_id: "benchmark".into(),
        teacher_sha256: String::new(),
        standardized: false,
        input_norm: None,
    };
    let model = tmp.join("classifier_1k.onnx");
    std::fs::write(
        &model,
        logits_student::export::onnx_bytes(&mlp, &info, Default::default()),
    )
    .expect("model");
    let rows = 100_000usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<f32> = (0..rows * 784)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 256) as f32 / 255.0
        })
        .collect();
    let field = std::sync::Arc::new(arrow_schema::Field::new_list_field(
        arrow_schema::DataType::Float32,
        false,
    ));
    let list = arrow_array::ListArray::new(
        field,
        arrow_buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(784, rows)),
        std::sync::Arc::new(arrow_array::Float32Array::from(data.clone())),
        None,
    );
    let batch =
        RecordBatch::try_from_iter([("input", std::sync::Arc::new(list) as _)]).expect("batch");
    let corpus = tmp.join("classifier_1k.parquet");
    let mut w = ArrowWriter::try_new(File::create(&corpus).expect("create"), batch.schema(), None)
        .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    println!(
        "\nper-example: random MLP classifier 784-2048-2048-1000 (16 MFLOP per row), {rows} rows of 784 inputs, k=5, logZ at 3 temperatures"
    );
    println!(
        "{:>6} {:>9} {:>8} {:>14} {:>14} {:>7}",
        "batch", "sessions", "threads", "bare ORT r/s", "build r/s", "ratio"
    );
    for (batch, sessions, threads) in configs(&[(256, 1, 1), (256, 1, 2), (256, 2, 1)]) {
        let _ = bare_ort(&model, "input", 784, &data, 2000, batch, sessions, threads);
        let bare = bare_ort(&model, "input", 784, &data, rows, batch, sessions, threads);
        let (b, _) = build(&model, &corpus, &tmp.join("c1k"), batch, sessions, threads);
        println!(
            "{batch:>6} {sessions:>9} {threads:>8} {bare:>14.0} {b:>14.0} {:>7.3}",
            b / bare
        );
    }
}

/// The (batch, sessions, threads) rows to measure: `defaults`, or LOGITS_BENCH_CONFIGS as
/// `SxT,...` (sessions × threads, keeping the default batch) for a machine with more cores.
fn configs(defaults: &[(usize, usize, usize)]) -> Vec<(usize, usize, usize)> {
    let Ok(spec) = std::env::var("LOGITS_BENCH_CONFIGS") else {
        return defaults.to_vec();
    };
    let batch = defaults.last().map_or(256, |d| d.0);
    spec.split(',')
        .map(|c| {
            let (s, t) = c.split_once('x').expect("LOGITS_BENCH_CONFIGS: SxT,...");
            (
                batch,
                s.parse().expect("sessions"),
                t.parse().expect("threads"),
            )
        })
        .collect()
}

/// A random GPT-style teacher over a 32,000-entry vocabulary, written by the student's
/// exporter (so no Python is needed to make it).
fn lm_teacher(path: &Path, dim: usize, layers: usize, heads: usize) {
    lm_teacher_vocab(path, 32_000, dim, layers, heads)
}

/// [`lm_teacher`] over `vocab` entries.
fn lm_teacher_vocab(path: &Path, vocab: usize, dim: usize, layers: usize, heads: usize) {
    let spec = logits_student::transformer::GptSpec {
        vocab,
        context: 128,
        dim,
        layers,
        heads,
        tied: true,
        encoder: None,
    };
    let gpt = logits_student::transformer::Gpt::new(spec, 7);
    let bytes = logits_student::export::gpt_onnx_bytes(
        &gpt,
        &serde_json::json!({"random": true}),
        Default::default(),
    );
    std::fs::write(path, bytes).expect("write teacher");
}

/// The per-token part: `name` describes the teacher.
fn lm(root: &Path, tmp: &Path, model: &Path, name: &str) {
    let tok = root.join("fixtures/tinylm/tokenizer.json");
    let src = std::fs::read_to_string(root.join("fixtures/tinylm/train.jsonl")).expect("corpus");
    let c1 = tmp.join("lm_x1.jsonl");
    let c10 = tmp.join("lm_x10.jsonl");
    std::fs::write(&c1, &src).expect("write");
    std::fs::write(&c10, src.repeat(10)).expect("write");
    let (window, batch) = (128usize, 16usize);
    let windows = token_windows(&c1, &tok, window);
    let positions: usize = windows.iter().map(Vec::len).sum();
    // A 1x build lasts a few seconds, of which loading and hashing the model and tokenizing
    // the corpus are a tenth: throughput is measured on 10x.
    let windows10: Vec<Vec<u32>> = std::iter::repeat_n(&windows, 10)
        .flatten()
        .cloned()
        .collect();
    println!(
        "\nper-token: {name}, output axis 32,000, {} windows of <= {window} tokens ({positions} positions; throughput on 10x that), k=32, int8 values, batch {batch}",
        windows.len(),
    );
    println!(
        "{:>9} {:>8} {:>14} {:>14} {:>7}",
        "sessions", "threads", "bare ORT r/s", "build r/s", "ratio"
    );
    let args = [
        "--tokenizer",
        tok.to_str().expect("utf8"),
        "--window",
        "128",
        "--values",
        "int8",
        "-k",
        "32",
    ];
    for (_, sessions, threads) in configs(&[(batch, 1, 1), (batch, 1, 2), (batch, 2, 1)]) {
        let _ = bare_lm(
            model,
            &windows[..windows.len().min(64)],
            batch,
            sessions,
            threads,
        );
        // One run each: at 25-40 s a run, noise is smaller than between the two sides.
        let bare = bare_lm(model, &windows10, batch, sessions, threads);
        let (b, _) = build_with(
            model,
            &c10,
            &tmp.join("lm"),
            batch,
            sessions,
            threads,
            &args,
        );
        println!(
            "{sessions:>9} {threads:>8} {bare:>14.1} {b:>14.1} {:>7.3}",
            b / bare
        );
    }
    let (_, rss1) = build_with(model, &c1, &tmp.join("lm1"), batch, 1, 2, &args);
    let (_, rss10) = build_with(model, &c10, &tmp.join("lm10"), batch, 1, 2, &args);
    println!(
        "peak RSS: 1x {:.1} MiB, 10x {:.1} MiB, growth {:.3}x (target <= 1.1x)",
        rss1 / 1048576.0,
        rss10 / 1048576.0,
        rss10 / rss1
    );
}

fn main() {
    // The same allocator setting as the binaries, so both sides of each ratio run alike.
    logits::keep_freed_memory();
    let _ = DEVICE.set(std::env::var("LOGITS_BENCH_DEVICE").ok().map(|d| {
        d.parse()
            .unwrap_or_else(|e| panic!("LOGITS_BENCH_DEVICE: {e}"))
    }));
    // LOGITS_ROOT: the repository when the benchmark binary runs away from where it was built.
    let root_dir =
        std::env::var("LOGITS_ROOT").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let root = Path::new(&root_dir);
    let dir = tempfile::tempdir().expect("tempdir");
    // `cargo bench` passes `--bench`; any other argument picks the parts to run.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    if run("classifier") {
        classifier(root, dir.path());
    }
    if run("classifier-1k") {
        wide_classifier(dir.path());
    }
    if run("zoo") {
        zoo_cnn(root, dir.path());
        zoo_sequence_classifier(root, dir.path());
    }
    let teachers = [
        (
            "lm",
            (256, 0, 4),
            "random LM with no transformer block (embedding, LayerNorm, 256 -> 32,000 projection)",
        ),
        (
            "lm-small",
            (512, 4, 8),
            "random GPT, 4 blocks of width 512, 8 heads",
        ),
    ];
    if run("postprocess") {
        postprocess(root, dir.path());
    }
    if parts.iter().any(|p| p == "gpu") {
        gpu(root, dir.path());
    }
    for (part, (dim, layers, heads), name) in teachers {
        if run(part) {
            let model = dir.path().join(format!("{part}.onnx"));
            lm_teacher(&model, dim, layers, heads);
            lm(root, dir.path(), &model, name);
        }
    }
}

/// The per-example part: the digits classifier fixture.
fn classifier(root: &Path, tmp: &Path) {
    let model = root.join("fixtures/digits/digits_teacher.onnx");
    let src = read(&root.join("fixtures/digits/train.parquet"));
    let c1 = tmp.join("x10.parquet");
    let c10 = tmp.join("x100.parquet");
    let rows1 = replicate(&src, 10, &c1);
    let rows10 = replicate(&src, 100, &c10);
    // Throughput is measured on the 10x corpus: at a few hundred thousand rows per second the
    // 1x corpus takes a tenth of a second, mostly process start and model load.
    let data10 = pixels(&read(&c1)).repeat(10);
    println!(
        "build benchmark: digits teacher (64-512-512-10), corpus {rows1} rows (1x) and {rows10} rows (10x; throughput measured on it), k=5, logZ at 3 temperatures"
    );
    println!(
        "{:>6} {:>9} {:>8} {:>14} {:>14} {:>7}",
        "batch", "sessions", "threads", "bare ORT r/s", "build r/s", "ratio"
    );
    for (batch, sessions, threads) in configs(&[(64, 1, 1), (256, 1, 1), (256, 1, 2), (256, 2, 1)])
    {
        // Warm both once, then measure each twice and keep the better (noise on 2 vCPUs).
        let _ = bare_ort(
            &model,
            "pixels",
            64,
            &data10,
            rows1.min(2000),
            batch,
            sessions,
            threads,
        );
        let bare = (0..2)
            .map(|_| {
                bare_ort(
                    &model, "pixels", 64, &data10, rows10, batch, sessions, threads,
                )
            })
            .fold(0.0, f64::max);
        let b = (0..2)
            .map(|_| build(&model, &c10, &tmp.join("ds"), batch, sessions, threads).0)
            .fold(0.0, f64::max);
        println!(
            "{batch:>6} {sessions:>9} {threads:>8} {bare:>14.0} {b:>14.0} {:>7.3}",
            b / bare
        );
    }
    let (_, rss1) = build(&model, &c1, &tmp.join("ds1"), 256, 1, 2);
    let (_, rss10) = build(&model, &c10, &tmp.join("ds10"), 256, 1, 2);
    println!(
        "peak RSS: 1x {:.1} MiB, 10x {:.1} MiB, growth {:.3}x (target <= 1.1x)",
        rss1 / 1048576.0,
        rss10 / 1048576.0,
        rss10 / rss1
    );
}

/// The CNN of the teacher-family matrix (torch.onnx export, float [3, 32, 32] images from flat
/// lists shaped by the column's metadata), 24 rows replicated 400 times.
fn zoo_cnn(root: &Path, tmp: &Path) {
    let model = root.join("fixtures/zoo/cnn.onnx");
    let src = read(&root.join("fixtures/zoo/images.parquet"));
    let c = tmp.join("images400.parquet");
    let rows = replicate(&src, 400, &c);
    let data = pixels(&read(&c));
    println!(
        "\nzoo CNN (torch.onnx, 3x32x32 -> 10, conv 16/32/64), {rows} rows, k=5, logZ at 3 temperatures; build with the inputs stored (default) and with --no-inputs"
    );
    println!(
        "{:>6} {:>9} {:>8} {:>14} {:>14} {:>7} {:>16} {:>7}",
        "batch",
        "sessions",
        "threads",
        "bare ORT r/s",
        "build r/s",
        "ratio",
        "--no-inputs r/s",
        "ratio"
    );
    for (batch, sessions, threads) in configs(&[(64, 1, 2), (64, 2, 1)]) {
        let row = [3, 32, 32];
        let _ = bare_ort_shaped(&model, "pixels", &row, &data, 256, batch, sessions, threads);
        let bare = (0..2)
            .map(|_| {
                bare_ort_shaped(
                    &model, "pixels", &row, &data, rows, batch, sessions, threads,
                )
            })
            .fold(0.0, f64::max);
        let b = (0..2)
            .map(|_| build(&model, &c, &tmp.join("cnn"), batch, sessions, threads).0)
            .fold(0.0, f64::max);
        let no_inputs = ["--no-inputs"];
        let n = (0..2)
            .map(|_| {
                build_with(
                    &model,
                    &c,
                    &tmp.join("cnn"),
                    batch,
                    sessions,
                    threads,
                    &no_inputs,
                )
                .0
            })
            .fold(0.0, f64::max);
        println!(
            "{batch:>6} {sessions:>9} {threads:>8} {bare:>14.0} {b:>14.0} {:>7.3} {n:>16.0} {:>7.3}",
            b / bare,
            n / bare
        );
    }
}

/// The BERT sequence classifier of the matrix (transformers, exported by torch.onnx): one
/// target per token window, over the tiny corpus's documents repeated 40 times.
fn zoo_sequence_classifier(root: &Path, tmp: &Path) {
    let model = root.join("fixtures/zoo/bert_seq.onnx");
    let tok = root.join("fixtures/tinylm/tokenizer.json");
    let src = std::fs::read_to_string(root.join("fixtures/zoo/docs.jsonl")).expect("docs");
    let c = tmp.join("docs40.jsonl");
    std::fs::write(&c, src.repeat(40)).expect("write");
    let windows = token_windows(&c, &tok, 64);
    let batch = 32;
    println!(
        "\nzoo BERT sequence classifier (transformers, 2 layers of width 64, 5 classes), {} windows of <= 64 tokens, k=3, batch {batch}",
        windows.len()
    );
    println!(
        "{:>9} {:>8} {:>14} {:>14} {:>7}",
        "sessions", "threads", "bare ORT r/s", "build r/s", "ratio"
    );
    let args = [
        "--tokenizer",
        tok.to_str().expect("utf8"),
        "--window",
        "64",
        "-k",
        "3",
    ];
    for (_, sessions, threads) in configs(&[(batch, 1, 2), (batch, 2, 1)]) {
        let _ = bare_lm(&model, &windows[..64], batch, sessions, threads);
        let bare = (0..2)
            .map(|_| bare_lm(&model, &windows, batch, sessions, threads))
            .fold(0.0, f64::max);
        let b = (0..2)
            .map(|_| {
                build_with(
                    &model,
                    &c,
                    &tmp.join("seq"),
                    batch,
                    sessions,
                    threads,
                    &args,
                )
                .0
            })
            .fold(0.0, f64::max);
        println!(
            "{sessions:>9} {threads:>8} {bare:>14.1} {b:>14.1} {:>7.3}",
            b / bare
        );
    }
}

/// `--postprocess host` against `--postprocess graph` (TopK and ReduceLogSumExp in the teacher
/// graph), same corpus, batch, sessions and threads: the
/// digits classifier, and per token the projection-only and 4-block random LMs over 32,000
/// entries and the projection-only one over 128,256 (a Llama-3-sized vocabulary), whose peak
/// RSS is compared too.
fn postprocess(root: &Path, tmp: &Path) {
    let host = ["--postprocess", "host"];
    let graph = ["--postprocess", "graph"];
    let model = root.join("fixtures/digits/digits_teacher.onnx");
    let src = read(&root.join("fixtures/digits/train.parquet"));
    let c = tmp.join("pp_x100.parquet");
    let rows = replicate(&src, 100, &c);
    println!(
        "\npost-processing on the host vs in the graph: digits teacher, {rows} rows, k=5, logZ at T=1, 2, 4, batch 256"
    );
    println!(
        "{:>9} {:>8} {:>12} {:>12} {:>7}",
        "sessions", "threads", "host r/s", "graph r/s", "ratio"
    );
    for (_, sessions, threads) in configs(&[(256, 1, 1), (256, 1, 2)]) {
        let best = |extra: &[&str]| {
            (0..3)
                .map(|_| build_with(&model, &c, &tmp.join("pp"), 256, sessions, threads, extra).0)
                .fold(0.0, f64::max)
        };
        let (h, g) = (best(&host), best(&graph));
        println!(
            "{sessions:>9} {threads:>8} {h:>12.0} {g:>12.0} {:>7.3}",
            g / h
        );
    }
    let tok = root.join("fixtures/tinylm/tokenizer.json");
    let src = std::fs::read_to_string(root.join("fixtures/tinylm/train.jsonl")).expect("corpus");
    let c3 = tmp.join("pp_lm.jsonl");
    std::fs::write(&c3, src.repeat(3)).expect("write");
    let lm_args = |mode: &'static str| {
        vec![
            "--tokenizer".to_string(),
            tok.display().to_string(),
            "--window".into(),
            "128".into(),
            "--values".into(),
            "int8".into(),
            "-k".into(),
            "32".into(),
            "--temperatures".into(),
            "2".into(),
            "--postprocess".into(),
            mode.into(),
        ]
    };
    println!(
        "\nper token, window 128, batch 16, k=32, int8, logZ at T=1 and 2 (tiny corpus x3): tokens/s as rows/s of windows; peak RSS of the build"
    );
    println!(
        "{:<44} {:>9} {:>8} {:>10} {:>10} {:>7} {:>10} {:>10}",
        "teacher", "sessions", "threads", "host r/s", "graph r/s", "ratio", "host MiB", "graph MiB"
    );
    for (name, vocab, dim, layers, heads) in [
        ("projection-only LM, 32,000 entries", 32_000, 256, 0, 4),
        ("4-block LM (width 512), 32,000 entries", 32_000, 512, 4, 8),
        ("projection-only LM, 128,256 entries", 128_256, 256, 0, 4),
    ] {
        let model = tmp.join(format!("pp_{vocab}_{layers}.onnx"));
        lm_teacher_vocab(&model, vocab, dim, layers, heads);
        for (_, sessions, threads) in configs(&[(16, 1, 2), (16, 2, 1)]) {
            let run = |mode: &'static str| {
                let a = lm_args(mode);
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                (0..2)
                    .map(|_| build_with(&model, &c3, &tmp.join("pplm"), 16, sessions, threads, &a))
                    .fold((0.0, 0.0), |acc, r| {
                        (f64::max(acc.0, r.0), f64::max(acc.1, r.1))
                    })
            };
            let (h, hr) = run("host");
            let (g, gr) = run("graph");
            println!(
                "{name:<44} {sessions:>9} {threads:>8} {h:>10.1} {g:>10.1} {:>7.3} {:>10.1} {:>10.1}",
                g / h,
                hr / 1048576.0,
                gr / 1048576.0
            );
        }
    }
}

/// The GPU check (`scripts/gpu-check.sh`; needs `LOGITS_BENCH_DEVICE=cuda:N` and the GPU build
/// of ONNX Runtime): per token over two teachers written here by the student's exporter, a
/// GPT-2-small-shaped one (12 blocks of width 768, 50,257 entries) and one with Llama-3's
/// vocabulary (128,256 entries, 4 blocks of width 1,024; GPT-2's block design, not Llama's):
/// tokens/s of bare ONNX Runtime on the GPU, of the build on the GPU with the post-processing
/// in the graph and on the host, and of the CPU build; then the GPU and CPU shards compared.
fn gpu(root: &Path, tmp: &Path) {
    let Some(d) = device() else {
        panic!("the gpu part needs LOGITS_BENCH_DEVICE=cuda:N (scripts/gpu-check.sh sets it)");
    };
    let tok = root.join("fixtures/tinylm/tokenizer.json");
    let src = std::fs::read_to_string(root.join("fixtures/tinylm/train.jsonl")).expect("corpus");
    let c = tmp.join("gpu.jsonl");
    std::fs::write(&c, src.repeat(3)).expect("write");
    let windows = token_windows(&c, &tok, 128);
    let batch = 16;
    println!(
        "\nGPU check on {d}: {} windows of <= 128 tokens, batch {batch}, k=32, int8, logZ at T=1 and 2 (rows/s are windows/s)",
        windows.len()
    );
    println!(
        "{:<36} {:>10} {:>10} {:>7} {:>10} {:>7} {:>10} {:>8} {:>10} {:>10}",
        "teacher",
        "bare r/s",
        "graph r/s",
        "ratio",
        "host r/s",
        "ratio",
        "CPU r/s",
        "ids =",
        "values Δ",
        "logZ Δ"
    );
    let args = |mode: &str, dev: &str| -> Vec<String> {
        [
            "--tokenizer",
            tok.to_str().expect("utf8"),
            "--window",
            "128",
            "--values",
            "int8",
            "-k",
            "32",
            "--temperatures",
            "2",
            "--postprocess",
            mode,
            "--device",
            dev,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for (name, vocab, dim, layers, heads) in [
        ("GPT-2-small shape, 50,257 entries", 50_257, 768, 12, 12),
        ("128,256 entries, 4 blocks of 1,024", 128_256, 1024, 4, 16),
    ] {
        let model = tmp.join(format!("gpu_{vocab}.onnx"));
        lm_teacher_vocab(&model, vocab, dim, layers, heads);
        let _ = bare_lm(&model, &windows[..windows.len().min(32)], batch, 1, 1);
        let bare = bare_lm(&model, &windows, batch, 1, 1);
        let run = |mode: &str, dev: &str, out: &str| {
            let a = args(mode, dev);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            build_with(&model, &c, &tmp.join(out), batch, 1, 2, &a).0
        };
        let g = run("graph", &d.to_string(), "gpu_graph");
        let h = run("host", &d.to_string(), "gpu_host");
        let cpu = run("host", "cpu", "gpu_cpu");
        let (same, n, dv, dz) = compare_targets(&tmp.join("gpu_cpu"), &tmp.join("gpu_graph"));
        println!(
            "{name:<36} {bare:>10.1} {g:>10.1} {:>7.3} {h:>10.1} {:>7.3} {cpu:>10.1} {:>7.2}% {dv:>10.2e} {dz:>10.2e}",
            g / bare,
            h / bare,
            100.0 * same as f64 / n.max(1) as f64
        );
    }
}

/// Positions whose ids agree, positions, the largest |value| difference where they agree and
/// the largest relative logZ difference between two builds of the same corpus.
fn compare_targets(a: &Path, b: &Path) -> (usize, usize, f64, f64) {
    use logits_format::{Dataset, ReadOptions};
    let read = |p: &Path| {
        let ds = Dataset::open(p).expect("dataset");
        let mut s = ds.stream(&ReadOptions::default()).expect("stream");
        let mut out = Vec::new();
        while let Some(x) = s.next_rows() {
            out.push(x.expect("batch").targets.expect("targets"));
        }
        out
    };
    let (mut same, mut n, mut dv, mut dz) = (0, 0, 0.0f64, 0.0f64);
    for (x, y) in read(a).iter().zip(&read(b)) {
        let (kx, ky) = (
            x.topk.as_ref().expect("topk"),
            y.topk.as_ref().expect("topk"),
        );
        for p in 0..x.logz.len().min(y.logz.len()) {
            n += 1;
            let (rx, ry) = (
                kx.offsets[p]..kx.offsets[p + 1],
                ky.offsets[p]..ky.offsets[p + 1],
            );
            if kx.ids[rx.clone()] == ky.ids[ry.clone()] {
                same += 1;
                for (u, v) in kx.logits[rx].iter().zip(&ky.logits[ry]) {
                    dv = dv.max((u - v).abs() as f64);
                }
            }
            let (u, v) = (x.logz[p] as f64, y.logz[p] as f64);
            dz = dz.max((u - v).abs() / u.abs().max(1e-30));
        }
    }
    (same, n, dv, dz)
}

/// The token windows (`window` tokens, no overlap) of a JSON-lines text corpus.
fn token_windows(corpus: &Path, tok: &Path, window: usize) -> Vec<Vec<u32>> {
    let corpus = logits_teacher::text::TextCorpus::open(
        &[logits_teacher::text::TextSource::guess(corpus, "text")],
        None,
        tok,
        window,
        window,
    )
    .expect("text corpus");
    let mut windows = Vec::new();
    corpus
        .read_each(0..corpus.rows(), 1024, |b| {
            windows.extend(b.into_iter().map(|w| w.ids));
            true
        })
        .expect("read");
    windows
}
