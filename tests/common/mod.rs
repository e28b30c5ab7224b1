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
