//! # logits-student: the student side
//!
//! Trains small models from `logits` datasets without the teacher. It reads datasets only
//! through `logits-format` and never touches the teacher side.
//!
//! Rooms (growing):
//! - [`losses`]: distillation losses with their gradients, each checked against finite
//!   differences and against golden values from `scripts/kd_reference.py` (NumPy).
//! - [`mlp`]: the MLP student, forward and backward in ndarray.
//!
//! Dependencies, and why: `ndarray` (tensors and GEMM), `rand`/`rand_chacha` (seeded,
//! platform-stable initialisation), `thiserror` (typed errors).

pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod lm;
pub mod losses;
pub mod mlp;
pub mod optim;
pub mod params;
pub mod student;
pub mod train;
pub mod transformer;

pub use error::{Result, StudentError};
