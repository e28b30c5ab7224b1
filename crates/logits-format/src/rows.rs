//! Rows in memory: the columnar Rust structures the writer takes and the reader gives back.
//! Ragged data uses offset vectors (`offsets[r]..offsets[r + 1]` is row `r`'s slice), the same
//! layout Arrow uses, so conversion is a copy at most. Decoded values are always the meaning the
//! spec gives (raw logits, f32 features) whatever the storage encoding.

use std::collections::BTreeMap;

/// Values of one input tensor for a batch of rows, in the stored element type.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValues {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// 32-bit signed integers.
    I32(Vec<i32>),
    /// 32-bit unsigned integers (token ids).
    U32(Vec<u32>),
    /// 16-bit unsigned integers.
    U16(Vec<u16>),
    /// 8-bit signed integers.
    I8(Vec<i8>),
    /// 8-bit unsigned integers.
    U8(Vec<u8>),
}

impl TensorValues {
    /// Number of scalars.
    pub fn len(&self) -> usize {
        match self {
            TensorValues::F32(v) => v.len(),
            TensorValues::F64(v) => v.len(),
            TensorValues::I64(v) => v.len(),
            TensorValues::I32(v) => v.len(),
            TensorValues::U32(v) => v.len(),
            TensorValues::U16(v) => v.len(),
            TensorValues::I8(v) => v.len(),
            TensorValues::U8(v) => v.len(),
        }
    }

    /// True when there are no scalars.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type of these values.
    pub fn dtype(&self) -> crate::manifest::DType {
        use crate::manifest::DType;
        match self {
            TensorValues::F32(_) => DType::Float32,
            TensorValues::F64(_) => DType::Float64,
            TensorValues::I64(_) => DType::Int64,
            TensorValues::I32(_) => DType::Int32,
            TensorValues::U32(_) => DType::Uint32,
            TensorValues::U16(_) => DType::Uint16,
            TensorValues::I8(_) => DType::Int8,
            TensorValues::U8(_) => DType::Uint8,
        }
    }

    /// Little-endian bytes of scalars `range`, as hashed by `sha256-v1`.
    pub fn le_bytes(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        // A loop of fixed-size copies: an iterator flat-mapping each value's bytes cost 5% of
        // a CNN build's CPU time (every input value is hashed).
        macro_rules! bytes {
            ($v:expr) => {{
                let s = &$v[range];
                let mut out = Vec::with_capacity(std::mem::size_of_val(s));
                for x in s {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                out
            }};
        }
        match self {
            TensorValues::F32(v) => bytes!(v),
            TensorValues::F64(v) => bytes!(v),
            TensorValues::I64(v) => bytes!(v),
            TensorValues::I32(v) => bytes!(v),
            TensorValues::U32(v) => bytes!(v),
            TensorValues::U16(v) => bytes!(v),
            TensorValues::I8(v) => bytes!(v),
            TensorValues::U8(v) => bytes!(v),
        }
    }

    /// Scalars `range` converted to f32 (for training inputs).
    pub fn to_f32(&self, range: std::ops::Range<usize>) -> Vec<f32> {
        macro_rules! conv {
            ($v:expr) => {
                $v[range].iter().map(|&x| x as f32).collect()
            };
        }
        match self {
            TensorValues::F32(v) => v[range].to_vec(),
            TensorValues::F64(v) => conv!(v),
            TensorValues::I64(v) => conv!(v),
            TensorValues::I32(v) => conv!(v),
            TensorValues::U32(v) => conv!(v),
            TensorValues::U16(v) => conv!(v),
            TensorValues::I8(v) => conv!(v),
            TensorValues::U8(v) => conv!(v),
        }
    }
}

/// One input tensor for a batch: row `r` is `values[offsets[r]..offsets[r + 1]]`, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct InputValues {
    /// Row offsets into `values`, length rows + 1.
    pub offsets: Vec<usize>,
    /// The scalars.
    pub values: TensorValues,
}

/// Top-k entries: position `p` holds `ids[offsets[p]..offsets[p + 1]]` and the same logits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopKEntries {
    /// Position offsets into `ids`/`logits`, length positions + 1.
    pub offsets: Vec<usize>,
    /// Class/vocabulary ids, by descending logit, ties to the lower id.
    pub ids: Vec<u32>,
    /// Raw teacher logits of those ids.
    pub logits: Vec<f32>,
}

/// Sampled entries: position `p` holds `ids[offsets[p]..offsets[p + 1]]` with their counts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SampledEntries {
    /// Position offsets, length positions + 1.
    pub offsets: Vec<usize>,
    /// Distinct sampled ids, ascending.
    pub ids: Vec<u32>,
    /// Draw counts of those ids (they sum to the manifest's draws).
    pub counts: Vec<u32>,
}

/// Response targets for a batch of rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Targets {
    /// Row offsets into positions, length rows + 1 (per example: `0, 1, 2, ...`).
    pub row_positions: Vec<usize>,
    /// Top-k entries, when stored.
    pub topk: Option<TopKEntries>,
    /// logZ at T=1 per position.
    pub logz: Vec<f32>,
    /// logZ at the manifest's extra temperatures, `positions × temperatures`, row-major.
    pub logz_temps: Vec<f32>,
    /// Sampled entries, when stored.
    pub sampled: Option<SampledEntries>,
}

impl Targets {
    /// Number of positions.
    pub fn positions(&self) -> usize {
        self.logz.len()
    }

    /// An empty batch of targets to fill with [`Targets::push_position`] and
    /// [`Targets::end_row`], holding top-k and/or sampled entries.
    pub fn empty(topk: bool, sampled: bool) -> Targets {
        Targets {
            row_positions: vec![0],
            topk: topk.then(|| TopKEntries {
                offsets: vec![0],
                ..Default::default()
            }),
            sampled: sampled.then(|| SampledEntries {
                offsets: vec![0],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Appends one position: its top-k entries and logZ values, and its sampled ids and counts
    /// when this batch holds sampled entries.
    pub fn push_position(
        &mut self,
        pt: &crate::targets::PositionTargets,
        sample: Option<&(Vec<u32>, Vec<u32>)>,
    ) {
        if let Some(k) = self.topk.as_mut() {
            k.ids.extend(&pt.ids);
            k.logits.extend(&pt.logits);
            k.offsets.push(k.ids.len());
        }
        self.logz.push(pt.logz);
        self.logz_temps.extend(&pt.logz_temps);
        if let (Some(s), Some((ids, counts))) = (self.sampled.as_mut(), sample) {
            s.ids.extend(ids);
            s.counts.extend(counts);
            s.offsets.push(s.ids.len());
        }
    }

    /// Closes the current row after its positions were pushed.
    pub fn end_row(&mut self) {
        self.row_positions.push(self.logz.len());
    }
}

/// A feature tensor for a batch: position `p` is `values[p * width..(p + 1) * width]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeatureValues {
    /// Row offsets into positions, length rows + 1 (per example: `0, 1, 2, ...`).
    pub row_positions: Vec<usize>,
    /// The scalars, positions × width.
    pub values: Vec<f32>,
}

/// A batch of rows, columnar. Writers fill every part the manifest declares; readers fill the
/// parts that were projected.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowBatch {
    /// Stable row ids, strictly increasing within a shard.
    pub row_ids: Vec<u64>,
    /// Optional user ids.
    pub user_ids: Option<Vec<Option<String>>>,
    /// sha256 of each row's stored inputs.
    pub input_hashes: Option<Vec<[u8; 32]>>,
    /// Inputs by ONNX input name.
    pub inputs: BTreeMap<String, InputValues>,
    /// Class labels (null when unknown).
    pub labels: Option<Vec<Option<i64>>>,
    /// Response targets.
    pub targets: Option<Targets>,
    /// Features by feature name.
    pub features: BTreeMap<String, FeatureValues>,
}

impl RowBatch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.row_ids.len()
    }

    /// True when the batch holds no row.
    pub fn is_empty(&self) -> bool {
        self.row_ids.is_empty()
    }
}

/// The `sha256-v1` input hash of one row: for each stored input in manifest order, the input
/// name, one zero byte, the row's scalars as little-endian bytes of the stored type, and the
/// number of scalars as a little-endian u64.
pub fn input_hash_v1(parts: &[(&str, Vec<u8>, usize)]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, bytes, n) in parts {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update(bytes);
        h.update((*n as u64).to_le_bytes());
    }
    h.finalize().into()
}
