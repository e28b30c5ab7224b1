//! # logits-student: the student side
//!
//! Trains small models from `logits` datasets without the teacher. It reads datasets only
//! through `logits-format` and never touches the teacher side.
//!
//! Rooms (growing):
//! - [`losses`]: distillation losses with their gradients, each checked against finite
//!   differences and against golden values from `scripts/kd_reference.py` (NumPy).
//!
//! Dependencies, and why: `thiserror` (typed errors).

pub mod losses;
