//! The manifest: `manifest.json` at the root of a dataset, the commit point of a build and the
//! description every consumer reads first. Field meanings are specified in
//! `schemas/FORMAT.md`; `schemas/manifest-v1.schema.json` is the machine-checkable form.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};

/// The value of the manifest's `format` field.
pub const FORMAT_NAME: &str = "logits-dataset";
/// The format major version this library reads and writes.
pub const FORMAT_MAJOR: u32 = 1;
/// The format minor version this library writes.
pub const FORMAT_MINOR: u32 = 2;
/// The manifest's file name inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The full manifest of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// `major.minor` of the format the dataset follows.
    pub format_version: String,
    /// Random identifier of this dataset, repeated in every shard's key/value metadata.
    pub dataset_id: String,
    /// The program that wrote the dataset.
    pub tool: Tool,
    /// Creation time, RFC 3339 in UTC.
    pub created: String,
    /// The teacher model that produced targets and features.
    pub teacher: Teacher,
    /// Which row keys are stored besides `row_id`.
    #[serde(default)]
    pub row_keys: RowKeys,
    /// Response targets, absent for feature-only datasets.
    #[serde(default)]
    pub targets: Option<TargetSpec>,
    /// Stored feature tensors.
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
    /// Stored model inputs.
    #[serde(default)]
    pub inputs: Vec<InputSpec>,
    /// Stored labels.
    #[serde(default)]
    pub labels: Option<LabelSpec>,
    /// Where the rows came from.
    pub corpus: Corpus,
    /// The tokenizer that made token inputs, for text corpora.
    #[serde(default)]
    pub tokenizer: Option<Tokenizer>,
    /// Terms of use of the teacher's outputs; consumers print them.
    #[serde(default)]
    pub license: License,
    /// Free notes from whoever built the dataset.
    #[serde(default)]
    pub notes: Option<String>,
    /// The committed shards, in row-id order.
    pub shards: Vec<ShardEntry>,
    /// Sums over the shards.
    pub totals: Totals,
    /// The build's parameters, as the builder chose to record them.
    #[serde(default)]
    pub build: serde_json::Value,
}

/// The program that wrote a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Program name, e.g. `logits-build`.
    pub name: String,
    /// Program version.
    pub version: String,
    /// What ran the teacher: the ONNX Runtime version, the devices and execution providers,
    /// and how `--device auto` was resolved. Not part of the dataset's identity: shards are the
    /// same whatever the device (FORMAT.md, determinism).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<serde_json::Value>,
}

/// A tensor element type, named as in ONNX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// 16-bit IEEE float.
    Float16,
    /// 16-bit brain float.
    Bfloat16,
    /// 64-bit signed integer.
    Int64,
    /// 32-bit signed integer.
    Int32,
    /// 16-bit signed integer.
    Int16,
    /// 32-bit unsigned integer.
    Uint32,
    /// 16-bit unsigned integer.
    Uint16,
    /// 8-bit signed integer.
    Int8,
    /// 8-bit unsigned integer.
    Uint8,
    /// Boolean.
    Bool,
    /// UTF-8 string.
    String,
}

impl DType {
    /// How a model input of this type is stored in the shards (and hashed by `sha256-v1`):
    /// the cheapest type that holds its values exactly as a corpus gives them (floats are
    /// read as float32; bool as 0/1 in uint8; int16 in int32). Datasets written before this
    /// rule record their own `stored` type, which readers take as it is.
    pub fn stored_for_input(self) -> DType {
        match self {
            DType::Float32 | DType::Float64 | DType::Float16 | DType::Bfloat16 => DType::Float32,
            DType::Int64 => DType::Int64,
            DType::Int32 | DType::Int16 => DType::Int32,
            DType::Uint32 => DType::Uint32,
            DType::Uint16 => DType::Uint16,
            DType::Int8 => DType::Int8,
            DType::Uint8 | DType::Bool => DType::Uint8,
            DType::String => DType::String,
        }
    }

    /// An integer type (not bool): values a student may read as ids.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DType::Int64
                | DType::Int32
                | DType::Int16
                | DType::Int8
                | DType::Uint32
                | DType::Uint16
                | DType::Uint8
        )
    }

    /// The lowercase ONNX-style name.
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Float16 => "float16",
            DType::Bfloat16 => "bfloat16",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
            DType::Int16 => "int16",
            DType::Uint32 => "uint32",
            DType::Uint16 => "uint16",
            DType::Int8 => "int8",
            DType::Uint8 => "uint8",
            DType::Bool => "bool",
            DType::String => "string",
        }
    }
}

/// One dimension of a declared shape: a fixed size or a symbolic name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A known size.
    Fixed(u64),
    /// A symbolic dimension (`batch`, `sequence`...), or `?` when unnamed.
    Named(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Named(s) => write!(f, "{s}"),
        }
    }
}

/// A named tensor of the teacher graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Tensor name in the ONNX graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape including the batch dimension.
    pub shape: Vec<Dim>,
}

/// The teacher model's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Teacher {
    /// File name of the ONNX model (no directory).
    pub file: String,
    /// sha256 of the model file as it is on disk, lowercase hex.
    pub sha256: String,
    /// Size of the model file.
    pub bytes: u64,
    /// Graph inputs.
    #[serde(default)]
    pub inputs: Vec<TensorInfo>,
    /// Graph outputs.
    #[serde(default)]
    pub outputs: Vec<TensorInfo>,
}

/// Optional row keys stored besides `row_id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RowKeys {
    /// A `user_id` string column is present.
    #[serde(default)]
    pub user_id: bool,
    /// An `input_hash` column is present, computed as this scheme says (`sha256-v1`).
    #[serde(default)]
    pub input_hash: Option<String>,
}

/// Whether targets describe a whole example or every real token position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One target distribution per row.
    Example,
    /// One target distribution per real token of the row.
    Position,
}

/// How class/vocabulary ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdEncoding {
    /// Arrow UInt16, for output axes of at most 65,536 entries.
    U16,
    /// Arrow UInt32.
    U32,
}

impl IdEncoding {
    /// The narrowest encoding for an output axis of `axis_size` entries.
    pub fn for_axis(axis_size: u64) -> IdEncoding {
        if axis_size <= 65_536 {
            IdEncoding::U16
        } else {
            IdEncoding::U32
        }
    }
}

/// How top-k values are stored. Decoded, they are always raw teacher logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueEncoding {
    /// Arrow Float32 raw logits.
    F32,
    /// Arrow Float16 of the T=1 log-prob (logit − logz).
    F16,
    /// Arrow UInt16 holding bfloat16 bits of the T=1 log-prob.
    Bf16,
    /// Arrow UInt8 code c with a per-position scale s: log-prob = −c·s.
    Int8,
}

impl ValueEncoding {
    /// Name as written in the manifest and accepted on command lines.
    pub fn name(self) -> &'static str {
        match self {
            ValueEncoding::F32 => "f32",
            ValueEncoding::F16 => "f16",
            ValueEncoding::Bf16 => "bf16",
            ValueEncoding::Int8 => "int8",
        }
    }

    /// Every encoding, for benchmarks and tests.
    pub const ALL: [ValueEncoding; 4] = [
        ValueEncoding::F32,
        ValueEncoding::F16,
        ValueEncoding::Bf16,
        ValueEncoding::Int8,
    ];
}

impl std::str::FromStr for ValueEncoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                format!("unknown value encoding {s:?} (expected f32, f16, bf16 or int8)")
            })
    }
}

/// How feature tensors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureEncoding {
    /// Arrow Float32.
    F32,
    /// Arrow Float16.
    F16,
    /// Arrow Int8 with a symmetric scale per row (or per position): x = q·s.
    Int8,
}

impl FeatureEncoding {
    /// Name as written in the manifest and accepted on command lines.
    pub fn name(self) -> &'static str {
        match self {
            FeatureEncoding::F32 => "f32",
            FeatureEncoding::F16 => "f16",
            FeatureEncoding::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for FeatureEncoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            FeatureEncoding::F32,
            FeatureEncoding::F16,
            FeatureEncoding::Int8,
        ]
        .into_iter()
        .find(|e| e.name() == s)
        .ok_or_else(|| format!("unknown feature encoding {s:?} (expected f32, f16 or int8)"))
    }
}

/// How many entries are kept per distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopK {
    /// Exactly `k` entries (or the whole axis if smaller).
    Fixed {
        /// Entries kept.
        k: u32,
    },
    /// The fewest entries, between `min_k` and `max_k`, whose T=1 probability reaches `mass`.
    Adaptive {
        /// Lower bound on entries kept.
        min_k: u32,
        /// Upper bound on entries kept.
        max_k: u32,
        /// Cumulative probability to reach.
        mass: f64,
    },
}

impl TopK {
    /// The largest number of entries a position can hold.
    pub fn max_k(&self) -> u32 {
        match self {
            TopK::Fixed { k } => *k,
            TopK::Adaptive { max_k, .. } => *max_k,
        }
    }
}

/// Sampled targets (RS-KD): ids drawn from the teacher distribution, stored with counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampledSpec {
    /// Draws per position.
    pub draws: u32,
    /// Temperature of the distribution drawn from.
    pub temperature: f64,
    /// Base seed; the draws of a row depend only on it and the row id.
    pub seed: u64,
}

/// What was stored of the teacher's output distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// The ONNX output the targets come from.
    pub output: String,
    /// One distribution per example or per real token.
    pub granularity: Granularity,
    /// Size of the class/vocabulary axis.
    pub axis_size: u64,
    /// True when the output was already log-softmax/softmax: stored values are then log-probs
    /// and logz is 0 at T=1.
    #[serde(default)]
    pub output_is_probability: bool,
    /// Id storage.
    pub ids: IdEncoding,
    /// Value storage.
    pub values: ValueEncoding,
    /// Top-k rule; absent when only sampled targets are stored.
    #[serde(default)]
    pub topk: Option<TopK>,
    /// Temperatures besides 1 at which logz is stored (column `logz_temps`, in this order).
    #[serde(default)]
    pub temperatures: Vec<f64>,
    /// Sampled targets, when stored.
    #[serde(default)]
    pub sampled: Option<SampledSpec>,
    /// f16/bf16 values (format 1.1): the exact T=1 tail is stored in `topk_logtail` and the
    /// decoded entries are renormalised to it, as int8's always are. Absent (false) in 1.0
    /// datasets, whose f16/bf16 entries are decoded as stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact_tail: bool,
    /// Context-coded top-k (format 1.2): ids and int8 steps stored together in `topk_coded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coding: Option<Coding>,
}

/// A coding of the top-k entries (FORMAT.md, "Context-coded top-k").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coding {
    /// The coding and its version.
    pub scheme: CodingScheme,
    /// The input column whose value at each position is the id models' context (a token id
    /// column of the same length as the row's positions); absent: no context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// Named, versioned top-k codings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodingScheme {
    /// Adaptive binary range coding of int8 steps and ids, models restarting per row group.
    #[serde(rename = "ctx-v1")]
    CtxV1,
}

impl TargetSpec {
    /// The most entries a position keeps (0 without top-k).
    pub fn max_k(&self) -> u64 {
        match self.topk {
            Some(TopK::Fixed { k }) => (k as u64).min(self.axis_size),
            Some(TopK::Adaptive { max_k, .. }) => (max_k as u64).min(self.axis_size),
            None => 0,
        }
    }

    /// True when shards carry `topk_logtail` (int8, or f16/bf16 with the exact tail).
    pub fn has_logtail(&self) -> bool {
        self.topk.is_some() && (self.values == ValueEncoding::Int8 || self.exact_tail)
    }
}

/// Pooling applied to a per-position feature to make it per example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Kept as computed.
    #[default]
    None,
    /// Mean over real tokens.
    Mean,
    /// The first real token.
    First,
    /// The last real token.
    Last,
}

/// A stored feature tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Short name chosen at build time (letters, digits, `_`, `-`).
    pub name: String,
    /// The tensor name in the teacher graph.
    pub tensor: String,
    /// Arrow column holding it (`feat_<name>`).
    pub column: String,
    /// Per example or per position.
    pub granularity: Granularity,
    /// Shape of one example's (or one position's) value.
    pub shape: Vec<u64>,
    /// Storage encoding.
    pub encoding: FeatureEncoding,
    /// Pooling applied before storage.
    #[serde(default)]
    pub pooling: Pooling,
}

impl FeatureSpec {
    /// Number of scalars per example (or per position).
    pub fn width(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }
}

/// A stored model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// ONNX input name.
    pub name: String,
    /// Arrow column holding it (`in_<name>` with unsafe characters replaced).
    pub column: String,
    /// The ONNX element type the model takes.
    pub dtype: DType,
    /// The element type stored (token ids are stored as uint32 whatever the model takes).
    pub stored: DType,
    /// Per-row shape without the batch dimension; a named dimension varies per row.
    pub shape: Vec<Dim>,
}

impl InputSpec {
    /// The fixed dimensions of a row's shape, in order (named ones left out).
    pub fn fixed_dims(&self) -> Vec<usize> {
        self.shape
            .iter()
            .filter_map(|d| match d {
                Dim::Fixed(n) => Some(*n as usize),
                Dim::Named(_) => None,
            })
            .collect()
    }
}

/// What kind of label a dataset stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelKind {
    /// A class index in `[0, num_classes)`, Arrow Int64, null when unknown.
    Class,
}

/// Stored labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelSpec {
    /// Arrow column (`label`).
    pub column: String,
    /// Kind of label.
    pub kind: LabelKind,
    /// Number of classes.
    pub num_classes: u64,
    /// Optional class names.
    #[serde(default)]
    pub names: Vec<String>,
}

/// A corpus source file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Path or URL as given to the builder.
    pub path: String,
    /// sha256 of the file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Size of the file.
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// Where the rows came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Corpus {
    /// Source files.
    #[serde(default)]
    pub sources: Vec<Source>,
    /// sha256 over the sources' hashes and the corpus options: equal corpora, equal fingerprint.
    pub fingerprint: String,
    /// Rows the corpus yields (row ids are `0..rows`).
    pub rows: u64,
    /// Split name (`train`, `validation`...).
    #[serde(default)]
    pub split: Option<String>,
    /// Held-out rows declared with the dataset: row ids `>= holdout_from` are held out.
    #[serde(default)]
    pub holdout_from: Option<u64>,
    /// Corpus-reader options (column mapping, window length, stride...).
    #[serde(default)]
    pub options: serde_json::Value,
}

/// The tokenizer used for text corpora.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokenizer {
    /// File name of the `tokenizer.json`.
    pub file: String,
    /// sha256 of the file.
    pub sha256: String,
    /// Vocabulary size including added tokens.
    pub vocab_size: u64,
}

/// Terms attached to the teacher's outputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct License {
    /// The terms, verbatim.
    #[serde(default)]
    pub terms: Option<String>,
    /// Free notes about use.
    #[serde(default)]
    pub notes: Option<String>,
}

impl std::fmt::Display for License {
    /// The terms and notes as a person reads them, or that none were recorded.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.terms, &self.notes) {
            (None, None) => write!(f, "none recorded (ask the dataset's maker)"),
            (Some(t), None) => write!(f, "{t}"),
            (None, Some(n)) => write!(f, "(no terms) {n}"),
            (Some(t), Some(n)) => write!(f, "{t} ({n})"),
        }
    }
}

/// One committed shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Path relative to the dataset directory, `/`-separated.
    pub path: String,
    /// Rows in the shard.
    pub rows: u64,
    /// File size.
    pub bytes: u64,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
    /// Smallest row id in the shard.
    pub first_row_id: u64,
    /// Largest row id in the shard.
    pub last_row_id: u64,
    /// Target positions in the shard (rows for per-example targets).
    #[serde(default)]
    pub positions: u64,
    /// Stored top-k entries in the shard.
    #[serde(default)]
    pub entries: u64,
}

/// Sums over the shards and what was left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Rows over all shards.
    pub rows: u64,
    /// Bytes over all shards.
    pub bytes: u64,
    /// Number of shards.
    pub shards: u64,
    /// Target positions over all shards.
    #[serde(default)]
    pub positions: u64,
    /// Top-k entries over all shards.
    #[serde(default)]
    pub entries: u64,
    /// Row ids skipped on purpose (non-finite teacher output with the skip flag), sorted.
    #[serde(default)]
    pub skipped_row_ids: Vec<u64>,
}

/// A parsed `major.minor` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Incompatible changes bump this.
    pub major: u32,
    /// Compatible additions bump this.
    pub minor: u32,
}

impl Version {
    /// Parses `major.minor`.
    pub fn parse(s: &str) -> Option<Version> {
        let (a, b) = s.split_once('.')?;
        Some(Version {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }

    /// The version this library writes.
    pub fn current() -> Version {
        Version {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Checks a version string found in `path`: any minor of the known major is accepted.
pub fn check_version(path: &Path, found: &str) -> Result<Version> {
    match Version::parse(found) {
        Some(v) if v.major == FORMAT_MAJOR => Ok(v),
        _ => Err(FormatError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: found.to_string(),
            supported: FORMAT_MAJOR,
        }),
    }
}

impl Manifest {
    /// Parses manifest text read from `path`, checking the format name and version first so
    /// that a newer major version is reported as such, not as a field mismatch.
    pub fn from_json(path: &Path, text: &str) -> Result<Manifest> {
        let malformed = |message: String| FormatError::MalformedManifest {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| malformed("the top level is not a JSON object".into()))?;
        match obj.get("format").and_then(|v| v.as_str()) {
            Some(FORMAT_NAME) => {}
            Some(other) => {
                return Err(malformed(format!(
                    "format is {other:?}, expected {FORMAT_NAME:?}"
                )));
            }
            None => return Err(malformed("missing string field \"format\"".into())),
        }
        let version = obj
            .get("format_version")
            .and_then(|v| v.as_str())
            .ok_or_else(|| malformed("missing string field \"format_version\"".into()))?;
        check_version(path, version)?;
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
        manifest.check(path)?;
        Ok(manifest)
    }

    /// Reads and parses `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| FormatError::io(&path, e))?;
        Manifest::from_json(&path, &text)
    }

    /// Serialises to pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain data structures to a String cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The parsed format version.
    pub fn version(&self) -> Option<Version> {
        Version::parse(&self.format_version)
    }

    /// Consistency checks that do not need the shards: safe shard paths, coherent specs.
    pub fn check(&self, path: &Path) -> Result<()> {
        for shard in &self.shards {
            check_relative_path(path, &shard.path)?;
        }
        // Shards sorted by first row id, with disjoint row ranges and distinct paths: a row
        // id belongs to one shard (a duplicated entry would feed its rows twice).
        let malformed = |message: String| FormatError::MalformedManifest {
            path: path.to_path_buf(),
            message,
        };
        for w in self.shards.windows(2) {
            if w[1].first_row_id <= w[0].last_row_id && w[0].rows > 0 && w[1].rows > 0 {
                return Err(malformed(format!(
                    "shards {} (rows {}..={}) and {} (rows {}..={}) overlap or are out of order",
                    w[0].path,
                    w[0].first_row_id,
                    w[0].last_row_id,
                    w[1].path,
                    w[1].first_row_id,
                    w[1].last_row_id
                )));
            }
        }
        let mut paths: Vec<&str> = self.shards.iter().map(|s| s.path.as_str()).collect();
        paths.sort_unstable();
        if let Some(w) = paths.windows(2).find(|w| w[0] == w[1]) {
            return Err(malformed(format!("shard {} is listed twice", w[0])));
        }
        for s in &self.shards {
            if s.rows > 0
                && (s.last_row_id < s.first_row_id || s.rows > s.last_row_id - s.first_row_id + 1)
            {
                return Err(malformed(format!(
                    "shard {}: {} rows cannot fit in row ids {}..={}",
                    s.path, s.rows, s.first_row_id, s.last_row_id
                )));
            }
        }
        self.check_spec()
            .map_err(|message| FormatError::MalformedManifest {
                path: path.to_path_buf(),
                message,
            })
    }

    /// Checks the column specs against each other, returning a message on the first problem.
    pub fn check_spec(&self) -> std::result::Result<(), String> {
        let mut columns = std::collections::BTreeSet::new();
        for fixed in crate::schema::RESERVED_COLUMNS {
            columns.insert(fixed.to_string());
        }
        let mut claim = |c: &str, what: &str| -> std::result::Result<(), String> {
            if !is_safe_column(c) {
                return Err(format!(
                    "{what} column {c:?} must match [A-Za-z0-9_-]+ (no dots)"
                ));
            }
            if !columns.insert(c.to_string()) {
                return Err(format!("{what} column {c:?} is used twice"));
            }
            Ok(())
        };
        for f in &self.features {
            claim(&f.column, "feature")?;
            if f.shape.is_empty() || f.width() == 0 {
                return Err(format!("feature {:?} has an empty shape", f.name));
            }
        }
        for i in &self.inputs {
            claim(&i.column, "input")?;
            crate::schema::stored_input_type(i.stored).ok_or_else(|| {
                format!("input {:?}: cannot store dtype {}", i.name, i.stored.name())
            })?;
        }
        if let Some(l) = &self.labels
            && l.column != "label"
        {
            return Err(format!(
                "label column must be \"label\", not {:?}",
                l.column
            ));
        }
        if let Some(t) = &self.targets {
            if t.topk.is_none() && t.sampled.is_none() {
                return Err("targets store neither top-k nor sampled entries".into());
            }
            if t.axis_size == 0 {
                return Err("targets.axis_size is 0".into());
            }
            if t.ids == IdEncoding::U16 && t.axis_size > 65_536 {
                return Err(format!(
                    "u16 ids cannot address an axis of {} entries",
                    t.axis_size
                ));
            }
            if let Some(c) = &t.coding {
                if t.topk.is_none() || t.values != ValueEncoding::Int8 {
                    return Err("coded top-k (targets.coding) needs top-k with int8 values".into());
                }
                if let Some(col) = &c.context {
                    let input = self.inputs.iter().find(|i| &i.column == col);
                    let integer = input.is_some_and(|i| {
                        matches!(
                            i.stored,
                            DType::Int64
                                | DType::Int32
                                | DType::Uint32
                                | DType::Uint16
                                | DType::Int8
                                | DType::Uint8
                        )
                    });
                    if !integer {
                        return Err(format!(
                            "the coding's context {col:?} is not an integer input column"
                        ));
                    }
                }
            }
            if let Some(k) = &t.topk {
                match k {
                    TopK::Fixed { k } if *k == 0 => return Err("top-k with k = 0".into()),
                    TopK::Adaptive { min_k, max_k, mass }
                        if *min_k == 0 || min_k > max_k || !(*mass > 0.0 && *mass <= 1.0) =>
                    {
                        return Err(format!(
                            "adaptive top-k needs 1 <= min_k <= max_k and 0 < mass <= 1 (got {min_k}, {max_k}, {mass})"
                        ));
                    }
                    _ => {}
                }
            }
            for &temp in &t.temperatures {
                if !(temp.is_finite() && temp > 0.0) {
                    return Err(format!("temperature {temp} is not a positive number"));
                }
            }
        }
        Ok(())
    }

    /// Row ids that must be covered by the shards: `0..corpus.rows` minus the skipped ones,
    /// restricted to `row_range` when the build was split (job arrays write one manifest
    /// for the whole corpus, so this is the whole corpus).
    pub fn expected_rows(&self) -> u64 {
        self.corpus.rows - self.totals.skipped_row_ids.len() as u64
    }
}

/// True when `c` is a safe Arrow column name (dots would be split by Parquet projections).
pub fn is_safe_column(c: &str) -> bool {
    !c.is_empty()
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
}

/// Makes a safe column-name fragment from a tensor name (`input.1` → `input_1`).
pub fn sanitize_column(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// Refuses shard paths that could leave the dataset directory.
pub fn check_relative_path(manifest: &Path, shard: &str) -> Result<()> {
    let refuse = |why: &'static str| FormatError::UnsafePath {
        path: manifest.to_path_buf(),
        shard: shard.to_string(),
        why,
    };
    if shard.is_empty() {
        return Err(refuse("it is empty"));
    }
    if shard.contains('\\') || shard.contains('\0') {
        return Err(refuse("it contains a backslash or NUL"));
    }
    let p = Path::new(shard);
    if p.is_absolute() || shard.starts_with('/') {
        return Err(refuse("absolute paths are not allowed"));
    }
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::CurDir => return Err(refuse("`.` components are not allowed")),
            Component::ParentDir => return Err(refuse("`..` components are not allowed")),
            _ => return Err(refuse("only plain relative paths are allowed")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_refuse_unknown_major() {
        let p = Path::new("m.json");
        assert!(check_version(p, "1.0").is_ok());
        assert!(check_version(p, "1.7").is_ok());
        let e = check_version(p, "2.0").unwrap_err().to_string();
        assert!(e.contains("2.0") && e.contains("m.json"), "{e}");
        assert!(check_version(p, "one").is_err());
    }

    #[test]
    fn shard_paths_must_stay_inside() {
        let m = Path::new("manifest.json");
        assert!(check_relative_path(m, "shards/part-00000.parquet").is_ok());
        for bad in [
            "/etc/passwd",
            "../x.parquet",
            "shards/../../x",
            "./a",
            "",
            "a\\b",
        ] {
            assert!(check_relative_path(m, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn column_names() {
        assert_eq!(sanitize_column("input.1"), "input_1");
        assert_eq!(sanitize_column("/layer/Relu:0"), "_layer_Relu_0");
        assert!(!is_safe_column("a.b"));
    }
}
