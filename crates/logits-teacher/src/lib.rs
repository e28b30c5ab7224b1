//! # logits-teacher: the teacher side
//!
//! Runs an ONNX teacher through ONNX Runtime over a corpus and writes what it knows as a
//! `logits` dataset. It reads models through `logits-onnx` and writes datasets only through
//! `logits-format`; it never touches the student side.
//!
//! Rooms:
//! - [`runtime`]: finding and loading the ONNX Runtime library (`ort`, `load-dynamic`).
//! - [`teacher`]: the model file, its summary, graph rewriting for features, sessions.
//! - [`corpus`]: Parquet tensor corpora (re-exported from `logits-format`, which students use
//!   too); [`text`]: text corpora and tokenizers.
//! - [`probe`]: shapes the graph does not declare, seen on one synthetic run (`inspect-model`).
//! - [`build`]: the pipeline (reader thread, one session per worker thread, ordered writer),
//!   resume, job-array workers and the merge step.
//!
//! Dependencies, and why: `ort` (ONNX Runtime, loaded at run time so nothing is linked or
//! downloaded at build time), `ndarray` (the tensors `ort` takes), `rayon` (top-k and logZ over
//! the rows of a batch), `arrow-*`/`parquet` (reading corpora), `sha2` (model and corpus
//! fingerprints), `rand`/`rand_chacha` (sampled targets seeded per row), `serde_json` (manifest
//! fields), `thiserror` (typed errors).

pub mod build;
/// Parquet tensor corpora: the reader lives in the format crate, shared with the student side.
pub use logits_format::corpus;
pub mod error;
pub mod probe;
pub mod runtime;
pub mod teacher;
pub mod text;

pub use build::{BuildOptions, BuildReport, FeatureRequest, Postprocess, build, merge};
pub use error::{Result, TeacherError};
pub use teacher::{TeacherModel, describe_model};
