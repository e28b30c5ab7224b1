//! Distillation losses. Response-based losses live in [`response`]; feature- and
//! relation-based losses join them as the student side grows.

pub mod response;
