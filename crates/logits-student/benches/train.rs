//! Training benchmark (issue 4 §10): samples/s of the reference MLP 784-1024-1024-10 at batch
//! 256 (KD 0.9 at T=4 + CE 0.1, AdamW), against two ceilings measured in the same run:
//!   - plain GEMM: the same matrix products one training step performs (3 forward, 5 backward:
//!     the first layer needs no input gradient), on preallocated ndarray arrays, nothing else.
//!     ratio = trainer samples/s ÷ (256 ÷ GEMM time per step); it is also the share of a step
//!     spent in matrix products. Target ≥ 0.50.
//!   - in memory: the same run from the same rows decoded once into memory; ratio = from
//!     shards ÷ in memory. Target ≥ 0.95.
//!
//! The dataset is synthetic (784 f32 inputs, top-5 of 10 classes with logZ at T = 1 and 4,
//! labels), written with the format library into a temporary directory.
//!
//! Run: `cargo bench -p logits-student --bench train [-- --quick]`. Figures: BENCHMARKS.md.

use std::time::Instant;

use logits_format::Dataset;
use logits_format::synth;
#[path = "common/mlp_rate.rs"]
mod mlp_rate;
use mlp_rate::train_samples_per_s;
use ndarray::Array2;
use ndarray::linalg::general_mat_mul;

const IN: usize = 784;
const H: usize = 1024;
const OUT: usize = 10;
const B: usize = 256;

fn write_dataset(root: &std::path::Path, rows: u64) -> Dataset {
    synth::write_dense_dataset(root, rows, IN, OUT as u64, 4096).expect("write dataset");
    Dataset::open(root).expect("open")
}

/// Seconds per step spent in the step's matrix products alone.
fn gemm_seconds_per_step(reps: usize) -> f64 {
    let f = |r: usize, c: usize| {
        Array2::<f32>::from_shape_fn((r, c), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.01)
    };
    let (x, w1, w2, w3) = (f(B, IN), f(IN, H), f(H, H), f(H, OUT));
    let (mut h1, mut h2, mut o) = (f(B, H), f(B, H), f(B, OUT));
    let (mut g1, mut g2, mut g3) = (f(IN, H), f(H, H), f(H, OUT));
    let (mut d2, mut d1) = (f(B, H), f(B, H));
    let d3 = f(B, OUT);
    let mut step = || {
        general_mat_mul(1.0, &x, &w1, 0.0, &mut h1);
        general_mat_mul(1.0, &h1, &w2, 0.0, &mut h2);
        general_mat_mul(1.0, &h2, &w3, 0.0, &mut o);
        general_mat_mul(1.0, &h2.t(), &d3, 0.0, &mut g3);
        general_mat_mul(1.0, &d3, &w3.t(), 0.0, &mut d2);
        general_mat_mul(1.0, &h1.t(), &d2, 0.0, &mut g2);
        general_mat_mul(1.0, &d2, &w2.t(), 0.0, &mut d1);
        general_mat_mul(1.0, &x.t(), &d1, 0.0, &mut g1);
    };
    step();
    let t = Instant::now();
    for _ in 0..reps {
        step();
    }
    std::hint::black_box(&o);
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rows: u64 = if quick { 8192 } else { 32768 };
    let steps: u64 = if quick { 30 } else { 100 };
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let ds = write_dataset(&dir.path().join("ds"), rows);
    println!(
        "dataset: {rows} rows × {IN} f32 inputs, top-5 of {OUT}, written in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let flops = 2.0 * B as f64 * (3.0 * (IN * H + H * H + H * OUT) as f64 - (IN * H) as f64);
    let g = gemm_seconds_per_step(if quick { 10 } else { 30 });
    let ceiling = B as f64 / g;
    println!(
        "GEMM ceiling: {:.1} ms/step of matrix products ({:.1} GFLOP/s) = {:.0} samples/s",
        g * 1e3,
        flops / g / 1e9,
        ceiling
    );
    let mem = train_samples_per_s(&ds, steps, true);
    let shards = train_samples_per_s(&ds, steps, false);
    println!("trainer, rows in memory: {mem:.0} samples/s");
    println!("trainer, from shards:    {shards:.0} samples/s");
    println!(
        "ratio trainer/GEMM ceiling (share of a step in matrix products): {:.2} (target >= 0.50)",
        mem / ceiling
    );
    println!(
        "ratio from shards/in memory: {:.3} (target >= 0.95)",
        shards / mem
    );
}
