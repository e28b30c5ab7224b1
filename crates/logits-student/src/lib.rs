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

pub mod losses;
pub mod mlp;
