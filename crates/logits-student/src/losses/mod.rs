//! Distillation losses, each with its gradient: response-based in [`response`] (from stored
//! top-k or sampled targets), feature-based in [`feature`] (hint MSE, cosine) and
//! relation-based in [`relation`] (RKD distance and angle, SP, PKT).

pub mod feature;
pub mod relation;
pub mod response;
