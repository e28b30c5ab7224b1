//! The trainer benchmarks' shared measurement: samples/s of the reference MLP
//! 784-1024-1024-10 at batch 256, shared by `benches/train.rs` here and the workspace's
//! `benches/store.rs`.

use logits_format::Dataset;
use logits_student::config::TrainConfig;

/// Samples/s of a training run of `steps` steps (steady state: metrics windows after the first).
pub fn train_samples_per_s(ds: &Dataset, steps: u64, in_memory: bool) -> f64 {
    let mut cfg = TrainConfig::default();
    cfg.model.hidden = vec![1024, 1024];
    cfg.data.batch_size = 256;
    cfg.data.steps = Some(steps);
    cfg.data.in_memory = in_memory;
    cfg.run.log_every = 5;
    let out = tempfile::tempdir().expect("tempdir");
    let mut rates = Vec::new();
    logits_student::train::train(ds, &cfg, out.path(), false, None, &mut |_, _, line| {
        rates.push(line["samples_per_s"].as_f64().unwrap_or(0.0));
    })
    .expect("train");
    let steady = &rates[1.min(rates.len().saturating_sub(1))..];
    steady.iter().sum::<f64>() / steady.len().max(1) as f64
}
