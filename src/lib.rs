//! # logits: the front doors
//!
//! The command-line programs in `src/bin/` are thin: they parse flags, call the library crates
//! and print. This library holds the little they share that belongs to neither side — running
//! an arbitrary ONNX file (the exported student, or the teacher for a latency comparison)
//! through ONNX Runtime. The teacher side owns the runtime set-up; the student side never
//! touches ONNX Runtime, so the check of an exported student lives here, where both meet.

pub mod onnx_run;
