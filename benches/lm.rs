//! Language-model training benchmark (issue: language-model student):
//!   1. training tokens/s of the transformer student (width 64, 2 blocks, 4 heads, tied head,
//!      vocabulary 8,192, 16 windows of 128 tokens per step, KD on top-32 targets + CE) from
//!      per-token shards, against a plain GEMM ceiling measured in the same run: the step's
//!      matrix products (forward and backward, per head for attention) on preallocated ndarray
//!      arrays. ratio = trainer ÷ ceiling (also the share of a step in matrix products).
//!   2. one epoch from shards against online distillation, where every step first runs the
//!      teacher through ONNX Runtime on its windows and extracts top-k and logZ (what the
//!      shards hold): online time = the offline epoch + the teacher's work on the same
//!      batches, measured batch by batch. ratio = online ÷ offline (target ≥ 10).
//!
//! Two teachers: the trained GPT-2 fixture (fixtures/gpt2, 1.7 M parameters — smaller than a
//! real teacher), and a teacher of GPT-2 small's shape (12 blocks, width 768, 12 heads; ~90 M
//! parameters with this vocabulary) with random weights, written at run time by the student
//! side's own ONNX exporter into a temporary directory (speed does not depend on the weights;
//! the file is ~360 MB, so it is never committed). The shards are built by `logits-build` from
//! the fixture's held-out text (501 windows, 45 k tokens, tokenizer of the fixture).
//!
//! Run: `cargo bench --bench lm [-- --quick]` (ONNX Runtime from ORT_DYLIB_PATH or
//! scripts/fetch-ort.sh's cache; `--quick` skips the GPT-2-small teacher). Figures are
//! recorded in BENCHMARKS.md.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use logits_format::Dataset;
use logits_student::config::TrainConfig;
use logits_student::lm::LmLoader;
use ndarray::Array2;
use ndarray::linalg::general_mat_mul;

const B: usize = 16;
const T: usize = 128;
const D: usize = 64;
const L: usize = 2;
const H: usize = 4;
const V: usize = 8192;
const K: u32 = 32;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Seconds per step spent in the student step's matrix products alone.
fn gemm_seconds_per_step(reps: usize) -> f64 {
    let n = B * T;
    let hd = D / H;
    let f = |r: usize, c: usize| {
        Array2::<f32>::from_shape_fn((r, c), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.01)
    };
    // (m, k, n) of every product of one step: forward, then two per forward product backward
    // (input and weight gradients), the embedding gradient of the tied head included.
    let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
    for _ in 0..L {
        for &(i, o) in &[(D, 3 * D), (D, D), (D, 4 * D), (4 * D, D)] {
            shapes.push((n, i, o));
            shapes.push((n, o, i));
            shapes.push((i, n, o));
        }
        for _ in 0..B * H {
            shapes.push((T, hd, T)); // scores
            shapes.push((T, T, hd)); // P·V
            shapes.push((T, T, hd)); // dV = Pᵀ·dO
            shapes.push((T, hd, T)); // dP = dO·Vᵀ
            shapes.push((T, T, hd)); // dQ
            shapes.push((T, T, hd)); // dK
        }
    }
    shapes.push((n, D, V));
    shapes.push((n, V, D));
    shapes.push((V, n, D));
    let mats: Vec<(Array2<f32>, Array2<f32>, Array2<f32>)> = shapes
        .iter()
        .map(|&(m, k, nn)| (f(m, k), f(k, nn), Array2::zeros((m, nn))))
        .collect();
    let mut mats = mats;
    let mut step = || {
        for (a, b, c) in mats.iter_mut() {
            general_mat_mul(1.0, a, b, 0.0, c);
        }
    };
    step();
    let t = Instant::now();
    for _ in 0..reps {
        step();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn config(steps: u64) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.lm.dim = D;
    c.lm.layers = L;
    c.lm.heads = H;
    c.loss.temperature = 1.0;
    c.data.batch_size = B;
    c.data.steps = Some(steps);
    c.run.log_every = 2;
    c
}

fn build_shards(model: &std::path::Path, out: &std::path::Path) -> Dataset {
    let fx = |p: &str| root().join("fixtures/gpt2").join(p).display().to_string();
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_logits-build"))
        .args([
            "build",
            "--model",
            &model.display().to_string(),
            "--tokenizer",
            &fx("tokenizer.json"),
            "--corpus",
            &fx("holdout.jsonl"),
            "--target",
            "logits",
            "--window",
            &T.to_string(),
            "--stride",
            &T.to_string(),
            "-k",
            &K.to_string(),
            "--quiet",
            "--out",
            &out.display().to_string(),
        ])
        .output()
        .expect("logits-build");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ds = Dataset::open(out).expect("dataset");
    println!(
        "shards: {} windows of ≤{T} tokens, top-{K} of {V}, built in {:.1}s",
        ds.manifest().totals.rows,
        t.elapsed().as_secs_f64()
    );
    ds
}

/// Offline epoch seconds, online epoch seconds (offline + the teacher's work per batch).
fn offline_vs_online(ds: &Dataset, teacher_path: &std::path::Path) -> (f64, f64, f64) {
    let rows = ds.manifest().totals.rows;
    let per_epoch = rows.div_ceil(B as u64);
    let out = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    logits_student::lm::train(ds, &config(per_epoch), out.path(), false, &mut |_, _, _| {})
        .expect("train");
    let offline = t.elapsed().as_secs_f64();
    let cfg = config(per_epoch);
    let loader = LmLoader::new(ds, None, logits_student::train::needs(&cfg)).expect("loader");
    let teacher = logits_teacher::TeacherModel::open(teacher_path, &[]).expect("teacher");
    let has_mask = teacher
        .summary
        .inputs
        .iter()
        .any(|i| i.name == "attention_mask");
    let mut session = teacher.session(2).expect("session");
    let mut teacher_secs = 0.0;
    for b in loader.stream(None, B, None, 0, 2).expect("stream") {
        let b = b.expect("batch");
        let (nb, t_len) = b.tokens.ids.dim();
        let ids = Array2::from_shape_fn((nb, t_len), |(r, p)| b.tokens.ids[[r, p]] as i64);
        let mask = Array2::from_shape_fn((nb, t_len), |(r, p)| (p < b.tokens.lens[r]) as i64);
        let s = Instant::now();
        let mut inputs = vec![(
            "input_ids".to_string(),
            ort::session::SessionInputValue::from(
                ort::value::Tensor::from_array(ids).expect("ids"),
            ),
        )];
        if has_mask {
            inputs.push((
                "attention_mask".to_string(),
                ort::session::SessionInputValue::from(
                    ort::value::Tensor::from_array(mask).expect("mask"),
                ),
            ));
        }
        let outputs = session.run(inputs).expect("teacher run");
        let (_, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .expect("logits");
        for (r, &len) in b.tokens.lens.iter().enumerate() {
            for p in 0..len {
                let z = &logits[(r * t_len + p) * V..(r * t_len + p + 1) * V];
                std::hint::black_box(logits_format::targets::position_targets(
                    z,
                    K as usize,
                    None,
                    &[],
                ));
            }
        }
        teacher_secs += s.elapsed().as_secs_f64();
    }
    (offline, offline + teacher_secs, teacher_secs)
}

fn main() {
    logits::keep_freed_memory();
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = root().join("fixtures/gpt2/gpt2_teacher.onnx");
    let ds = build_shards(&fixture, &dir.path().join("gpt2"));

    // 1. Trainer against the GEMM ceiling.
    let g = gemm_seconds_per_step(3);
    let ceiling = (B * T) as f64 / g;
    let mut rates = Vec::new();
    let out = tempfile::tempdir().expect("tempdir");
    logits_student::lm::train(&ds, &config(12), out.path(), false, &mut |_, _, line| {
        rates.push(line["tokens_per_s"].as_f64().unwrap_or(0.0));
    })
    .expect("train");
    let steady = &rates[1..];
    let trainer = steady.iter().sum::<f64>() / steady.len().max(1) as f64;
    println!(
        "GEMM ceiling: {:.0} ms/step of matrix products = {ceiling:.0} tokens/s",
        g * 1e3
    );
    println!("trainer from shards: {trainer:.0} tokens/s");
    println!("ratio trainer/GEMM ceiling: {:.2}", trainer / ceiling);

    // 2. One epoch from shards against online distillation, for each teacher.
    let per_epoch = ds.manifest().totals.rows.div_ceil(B as u64);
    let (off, on, teach) = offline_vs_online(&ds, &fixture);
    println!(
        "fixture teacher (1.7 M parameters): one epoch ({per_epoch} steps) from shards {off:.2}s; online {on:.2}s (teacher + top-k {teach:.2}s); ratio online/offline {:.2}",
        on / off
    );
    if quick {
        return;
    }
    let spec = logits_student::transformer::GptSpec {
        vocab: V,
        context: T,
        dim: 768,
        layers: 12,
        heads: 12,
        tied: true,
        encoder: None,
    };
    let big = logits_student::transformer::Gpt::new(spec.clone(), 1);
    let params = logits_student::params::Params::parameter_count(&big);
    let path = dir.path().join("gpt2_small_shape.onnx");
    std::fs::write(
        &path,
        logits_student::export::gpt_onnx_bytes(
            &big,
            &serde_json::json!({"random": true}),
            Default::default(),
        ),
    )
    .expect("write teacher");
    drop(big);
    let ds_big = build_shards(&path, &dir.path().join("big"));
    let (off, on, teach) = offline_vs_online(&ds_big, &path);
    println!(
        "GPT-2-small-shaped teacher ({:.1} M parameters): one epoch from shards {off:.2}s; online {on:.2}s (teacher + top-k {teach:.2}s); ratio online/offline {:.2} (target >= 10)",
        params as f64 / 1e6,
        on / off
    );
}
