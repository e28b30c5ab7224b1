//! Helpers the end-to-end tests share: where the fixtures are, and running the real binaries.
#![allow(dead_code)] // each test file uses its own subset

pub mod moto;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under the repository root, as a string argument.
pub fn fixture(p: &str) -> String {
    root().join(p).display().to_string()
}

/// `logits-build build` arguments for the digits dataset most end-to-end tests train on: the
/// train and holdout corpus (held out from row 1437), top-5 with logZ at T = 2, 4, a teacher
/// feature, labels, written to `out`.
pub fn digits_build_args(out: &str) -> Vec<String> {
    let mut a = digits_corpus_args("fixtures/digits/train.parquet", out);
    a.extend(["--feature".to_string(), "penult=hidden2:f16".to_string()]);
    a
}

/// The same build from another training corpus (a fixture path), without the feature.
pub fn digits_corpus_args(train: &str, out: &str) -> Vec<String> {
    [
        "build",
        "--model",
        &fixture("fixtures/digits/digits_teacher.onnx"),
        "--corpus",
        &fixture(train),
        &fixture("fixtures/digits/holdout.parquet"),
        "--holdout-from",
        "1437",
        "--label-column",
        "label",
        "-k",
        "5",
        "--temperatures",
        "2,4",
        "--quiet",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `logits-train train` arguments for a tiny transformer student (width 16, 1 block, 2 heads,
/// 8 windows a step) from dataset `ds` (a path or URL) into `out`, then `extra`.
pub fn tiny_lm_train_args(ds: &str, out: &str, extra: &[&str]) -> Vec<String> {
    [
        "train",
        ds,
        "--out",
        out,
        "--quiet",
        "--lm-dim",
        "16",
        "--lm-layers",
        "1",
        "--lm-heads",
        "2",
        "--batch-size",
        "8",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `logits-build` with `args` (job-array variables removed from the environment).
pub fn logits_build<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logits-build"))
        .args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .expect("run logits-build")
}

/// Runs `logits-train` with `args`.
pub fn logits_train<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logits-train"))
        .args(args)
        .output()
        .expect("run logits-train")
}
