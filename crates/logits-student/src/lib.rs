//! # logits-student: the student side
//!
//! Trains small models from `logits` datasets without the teacher. It reads datasets only
//! through `logits-format` and never touches the teacher side.
//!
//! Rooms:
//! - [`losses`]: distillation losses with their gradients (response, feature, relation), each
//!   checked against finite differences and golden values from `scripts/kd_reference.py`.
//! - [`mlp`] (with [`conv`], the convolutional front) and [`transformer`] (the causal LM
//!   and the encoder): the students, forward and backward in ndarray; [`params`]: the
//!   named-tensor view optimizers, checkpoints and exports share.
//! - [`fit`]: the one training loop every student runs through (the [`fit::Architecture`]
//!   trait each implements), metrics, checkpoints and exact resume.
//! - [`norm`]: per-feature input standardisation, fitted in one pass, folded into the first
//!   layer at the end so students take raw inputs.
//! - [`optim`]: SGD/AdamW, schedules, clipping. [`config`]: the run configuration.
//! - [`data`] and [`train`]: per-example datasets and the MLP/convolutional student's run;
//!   [`seq_data`] and [`lm`]: sequence datasets (token windows, float sequences) and the
//!   transformer's run.
//! - [`eval`]: evaluation against the teacher from stored targets. [`student`]: student files
//!   (safetensors). [`export`]: ONNX export through `logits-onnx`'s graph builder.
//!
//! It never runs ONNX Runtime: checking an exported file in ONNX Runtime is the front door's
//! job (`src/onnx_run.rs`), where both sides meet.
//!
//! Dependencies, and why: `logits-format` (the only way to read datasets and corpora),
//! `logits-onnx` (writing ONNX), `ndarray` (tensors and GEMM), `rayon` (per-position losses
//! over a vocabulary in parallel), `rand`/`rand_chacha` (seeded, platform-stable
//! initialisation, shuffling and dropout), `safetensors` (the weight files every ML engineer's
//! tools read), `serde`/`serde_json` (configuration, run state, metrics), `thiserror` (typed
//! errors).

pub mod config;
pub mod conv;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod fit;
#[cfg(test)]
mod gradcheck;
pub mod hf;
pub mod lm;
pub mod losses;
pub mod mlp;
pub mod norm;
pub mod optim;
pub mod params;
pub mod seq_data;
pub mod student;
pub mod train;
pub mod transformer;

pub use error::{Result, StudentError};
