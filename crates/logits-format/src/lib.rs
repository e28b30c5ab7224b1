//! # logits-format: the dataset contract
//!
//! This crate is the only code that reads or writes `logits` datasets. The teacher side
//! (`logits-teacher`, which builds datasets) and the student side (`logits-student`, which
//! trains from them) both depend on it and never on each other. It knows nothing of ONNX
//! Runtime or of training: it holds the schema, the manifest, the shard writer and reader,
//! validation and statistics.
//!
//! The contract itself is written down in `schemas/FORMAT.md` (human) and
//! `schemas/manifest-v1.schema.json` (machine); this crate implements it.
//!
//! Rooms:
//! - [`manifest`]: the typed `manifest.json`, versioning, path safety.
//! - [`schema`]: the Arrow schema a manifest implies, column by column.
//! - [`rows`]: the columnar Rust structures callers hold ([`RowBatch`]).
//! - [`codec`]: `RowBatch` ⇄ Arrow, applying the storage encodings and checking the contract.
//! - [`writer`]: shard files and the commit protocol (temporary names, fsync, rename,
//!   completion records, manifest last).
//! - [`location`]: where a dataset lives (a directory or an object-store prefix) and the
//!   commit protocol on a store (upload, conditional finalize, markers, remote merge).
//! - [`reader`]: opening datasets and streaming rows (projection, shuffle, prefetch).
//! - [`corpus`]: Parquet tensor corpora (read by the teacher pass, and joined by students
//!   with datasets built without their inputs).
//! - [`host`]: facts about this machine (host name, live processes, available memory).
//! - [`lock`]: one writer per output (advisory lock with the owner's pid and host).
//! - [`fault`]: fault points armed by tests (debug builds only).
//! - [`validate`]: full validation. [`stats`]: target-quality statistics.
//!
//! Dependencies, and why: `arrow-*` and `parquet` (the storage, without the heavy `arrow`
//! facade), `serde`/`serde_json` (the manifest), `sha2` (checksums and content ids), `half`
//! (f16/bf16 encodings), `rand`/`rand_chacha` (seeded shuffling that is stable across
//! platforms and versions), `time` (RFC 3339 timestamps), `thiserror` (typed errors), `logits-store` (datasets in
//! object storage: the one crate that talks to S3, GCS and Azure).

pub mod card;
pub mod codec;
pub(crate) mod coded;
pub mod corpus;
pub mod error;
pub mod fault;
pub mod host;
pub mod location;
pub mod lock;
pub mod manifest;
pub mod reader;
pub mod rows;
pub mod schema;
pub mod stats;
pub mod synth;
pub mod targets;
pub mod validate;
pub mod writer;

pub use error::{FormatError, Result};
pub use manifest::Manifest;
pub use reader::{BatchStream, Dataset, ReadOptions};
pub use rows::RowBatch;
pub use validate::{ValidationReport, validate};
pub use writer::{CreateMode, DatasetWriter, WriteOptions};
