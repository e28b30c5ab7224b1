//! Distillation losses: response-based in [`response`], feature-based in [`feature`];
//! relation-based losses join them as the student side grows.

pub mod feature;
pub mod response;
