//! Tensor corpora: Parquet files whose numeric list (or fixed-size-list) columns are mapped to
//! the model's inputs by name, with optional label and id columns. Row ids are positions in
//! the concatenation of the files, in the order given.
//!
//! Both sides read corpora: the teacher side runs the teacher over one; the student side joins
//! a dataset built without its inputs (restricted data) with the corpus held elsewhere, by row
//! id or `sha256-v1` input hash. That is why the reader lives here, with the format, rather
//! than on either side.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

use crate::error::{FormatError, Result};

/// Which corpus column feeds which model input, and which columns hold labels and ids.
#[derive(Debug, Clone, Default)]
pub struct ColumnMap {
    /// (model input, corpus column) pairs; inputs not listed use the column of the same name.
    pub inputs: Vec<(String, String)>,
    /// Label column (class index), if any.
    pub label: Option<String>,
    /// Id column (string or integer), if any.
    pub id: Option<String>,
    /// (model input, per-row shape) pairs given explicitly (`--input-shape NAME=3,48,320`):
    /// how a flat list column is shaped for that input. Otherwise a column's shape comes from
    /// nested lists or from its field metadata (`shape`, as `[3, 48, 320]` or `3,48,320`).
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Model inputs that may have no column (the teacher side makes them: a transformer's
    /// `token_type_ids`, `position_ids`, `attention_mask` beside `input_ids`); they are left
    /// out of the mapping when the corpus lacks them.
    pub optional: Vec<String>,
}

/// Values of one column for a batch, flattened, in f32 or i64 (the model's side decides).
#[derive(Debug, Clone, PartialEq)]
pub enum Flat {
    /// Floating-point values.
    F32(Vec<f32>),
    /// Integer values.
    I64(Vec<i64>),
}

/// A batch of corpus rows.
#[derive(Debug, Clone, Default)]
pub struct CorpusBatch {
    /// Row ids.
    pub row_ids: Vec<u64>,
    /// Per model input: row offsets and flattened values.
    pub inputs: BTreeMap<String, (Vec<usize>, Flat)>,
    /// Labels, when a label column is mapped.
    pub labels: Option<Vec<Option<i64>>>,
    /// Ids, when an id column is mapped.
    pub ids: Option<Vec<Option<String>>>,
    /// Per model input whose row shape the corpus knows (nested lists, the column's `shape`
    /// metadata or an explicit shape): each row's shape. Absent for flat lists of no declared
    /// shape, whose shape is the model's to give.
    pub shapes: BTreeMap<String, Vec<Vec<usize>>>,
}

impl Flat {
    /// Values `range` in the stored type `stored` (exactly: a value the type cannot hold is
    /// an error giving its position in the range and the value).
    pub fn to_stored(
        &self,
        range: Range<usize>,
        stored: crate::manifest::DType,
    ) -> std::result::Result<crate::rows::TensorValues, (usize, String)> {
        use crate::manifest::DType;
        use crate::rows::TensorValues as V;
        fn narrow<T: TryFrom<i64>>(v: &[i64]) -> std::result::Result<Vec<T>, (usize, String)> {
            v.iter()
                .enumerate()
                .map(|(i, &x)| T::try_from(x).map_err(|_| (i, x.to_string())))
                .collect()
        }
        Ok(match (self, stored) {
            (Flat::F32(v), DType::Float32) => V::F32(v[range].to_vec()),
            (Flat::F32(v), DType::Float64) => V::F64(v[range].iter().map(|&x| x as f64).collect()),
            (Flat::I64(v), DType::Int64) => V::I64(v[range].to_vec()),
            (Flat::I64(v), DType::Int32) => V::I32(narrow(&v[range])?),
            (Flat::I64(v), DType::Uint32) => V::U32(narrow(&v[range])?),
            (Flat::I64(v), DType::Uint16) => V::U16(narrow(&v[range])?),
            (Flat::I64(v), DType::Int8) => V::I8(narrow(&v[range])?),
            (Flat::I64(v), DType::Uint8) => V::U8(narrow(&v[range])?),
            (Flat::F32(_), t) => return Err((0, format!("floats, stored as {}", t.name()))),
            (Flat::I64(_), t) => return Err((0, format!("integers, stored as {}", t.name()))),
        })
    }
}

impl CorpusBatch {
    /// The rows `range` of this batch, as a batch of their own.
    pub fn slice(&self, range: Range<usize>) -> CorpusBatch {
        let inputs = self
            .inputs
            .iter()
            .map(|(k, (offsets, flat))| {
                let (lo, hi) = (offsets[range.start], offsets[range.end]);
                let o = offsets[range.start..=range.end]
                    .iter()
                    .map(|&x| x - lo)
                    .collect();
                let v = match flat {
                    Flat::F32(v) => Flat::F32(v[lo..hi].to_vec()),
                    Flat::I64(v) => Flat::I64(v[lo..hi].to_vec()),
                };
                (k.clone(), (o, v))
            })
            .collect();
        CorpusBatch {
            row_ids: self.row_ids[range.clone()].to_vec(),
            inputs,
            labels: self.labels.as_ref().map(|l| l[range.clone()].to_vec()),
            ids: self.ids.as_ref().map(|l| l[range.clone()].to_vec()),
            shapes: self
                .shapes
                .iter()
                .map(|(k, s)| (k.clone(), s[range.clone()].to_vec()))
                .collect(),
        }
    }

    /// Cuts the batch into runs of consecutive rows whose every input has the same length
    /// and shape, so that each run is one rectangular tensor per input (rows of a
    /// spectrogram corpus whose lengths vary, say). A batch whose rows agree comes back whole.
    pub fn split_uniform(self) -> Vec<CorpusBatch> {
        let n = self.row_ids.len();
        let same = |a: usize, b: usize| {
            self.inputs
                .values()
                .all(|(o, _)| o[a + 1] - o[a] == o[b + 1] - o[b])
                && self.shapes.values().all(|s| s[a] == s[b])
        };
        let mut cuts = vec![0];
        for r in 1..n {
            if !same(r - 1, r) {
                cuts.push(r);
            }
        }
        if cuts.len() == 1 {
            return vec![self];
        }
        cuts.push(n);
        cuts.windows(2).map(|w| self.slice(w[0]..w[1])).collect()
    }
}

/// A Parquet tensor corpus.
#[derive(Debug, Clone)]
pub struct TensorCorpus {
    files: Vec<PathBuf>,
    file_rows: Vec<u64>,
    /// (model input, column) for every model input.
    pub mapping: Vec<(String, String)>,
    /// Label column.
    pub label: Option<String>,
    /// Id column.
    pub id: Option<String>,
    /// Declared per-row shape of each model input that has one (explicit or field metadata).
    pub declared: BTreeMap<String, Vec<usize>>,
}

fn corpus_err(path: &Path, message: impl Into<String>) -> FormatError {
    FormatError::Corpus {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl TensorCorpus {
    /// Opens the files and resolves the column map against the model's input names.
    pub fn open(files: &[PathBuf], inputs: &[String], map: &ColumnMap) -> Result<TensorCorpus> {
        if files.is_empty() {
            return Err(FormatError::CorpusOptions("no corpus file given".into()));
        }
        let mut file_rows = Vec::new();
        let mut first_schema = None;
        for f in files {
            let file = File::open(f).map_err(|e| corpus_err(f, format!("cannot open: {e}")))?;
            let b = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| corpus_err(f, format!("not a readable Parquet file: {e}")))?;
            file_rows.push(b.metadata().file_metadata().num_rows().max(0) as u64);
            if first_schema.is_none() {
                first_schema = Some(b.schema().clone());
            }
        }
        let schema =
            first_schema.ok_or_else(|| FormatError::CorpusOptions("no corpus file".into()))?;
        let has = |c: &str| schema.field_with_name(c).is_ok();
        let cols: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        for (input, _) in &map.inputs {
            if !inputs.contains(input) {
                return Err(FormatError::CorpusOptions(format!(
                    "--input {input}=...: the model has no input {input:?} (inputs: {})",
                    inputs.join(", ")
                )));
            }
        }
        for (input, _) in &map.shapes {
            if !inputs.contains(input) {
                return Err(FormatError::CorpusOptions(format!(
                    "--input-shape {input}=...: the model has no input {input:?} (inputs: {})",
                    inputs.join(", ")
                )));
            }
        }
        let mut mapping = Vec::new();
        let mut missing = Vec::new();
        let mut declared = BTreeMap::new();
        for input in inputs {
            let col = map
                .inputs
                .iter()
                .find(|(i, _)| i == input)
                .map(|(_, c)| c.clone())
                .unwrap_or_else(|| input.clone());
            if !has(&col) {
                if !map.optional.contains(input) {
                    missing.push(if col == *input {
                        format!("{input:?}")
                    } else {
                        format!("{input:?} (no column {col:?})")
                    });
                }
                continue;
            }
            let explicit = map.shapes.iter().find(|(i, _)| i == input).map(|(_, s)| s);
            let meta = schema
                .field_with_name(&col)
                .ok()
                .and_then(|f| f.metadata().get("shape"));
            let shape = match (explicit, meta) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(m)) => Some(parse_shape(m).ok_or_else(|| {
                    corpus_err(
                        &files[0],
                        format!(
                            "column {col:?}: its field metadata shape {m:?} is not a list of sizes such as [3, 48, 320]; give the shape with --input-shape {input}=3,48,320"
                        ),
                    )
                })?),
                (None, None) => None,
            };
            if let Some(s) = shape {
                declared.insert(input.clone(), s);
            }
            mapping.push((input.clone(), col));
        }
        if !missing.is_empty() {
            return Err(corpus_err(
                &files[0],
                format!(
                    "no column for model input{} {} (columns: {}); map each with --input INPUT=COLUMN",
                    if missing.len() > 1 { "s" } else { "" },
                    missing.join(", "),
                    cols.join(", ")
                ),
            ));
        }
        for (what, c) in [("label", &map.label), ("id", &map.id)] {
            if let Some(c) = c
                && !has(c)
            {
                return Err(corpus_err(
                    &files[0],
                    format!("no {what} column {c:?} (columns: {})", cols.join(", ")),
                ));
            }
        }
        Ok(TensorCorpus {
            files: files.to_vec(),
            file_rows,
            mapping,
            label: map.label.clone(),
            id: map.id.clone(),
            declared,
        })
    }

    /// Total rows.
    pub fn rows(&self) -> u64 {
        self.file_rows.iter().sum()
    }

    /// The corpus files.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// sha256 and size of each file, and a fingerprint over them and the column map.
    pub fn fingerprint(&self) -> Result<(Vec<crate::manifest::Source>, String)> {
        let mut sources = Vec::new();
        let mut h = Sha256::new();
        for f in &self.files {
            let (bytes, sha) = crate::writer::file_sha256(f)?;
            h.update(sha.as_bytes());
            sources.push(crate::manifest::Source {
                path: f.display().to_string(),
                sha256: Some(sha),
                bytes: Some(bytes),
            });
        }
        h.update(format!("{:?}|{:?}|{:?}", self.mapping, self.label, self.id).as_bytes());
        // Shapes change how rows are read, so they are part of the fingerprint; a corpus with
        // none keeps the fingerprint it had before shapes existed.
        if !self.declared.is_empty() {
            h.update(format!("|{:?}", self.declared).as_bytes());
        }
        Ok((sources, crate::writer::hex(&h.finalize())))
    }

    /// Reads rows `range` in batches of at most `batch` rows, handing each to `each`, which
    /// returns false to stop early. Memory holds one batch, whatever the range.
    pub fn read_each(
        &self,
        range: Range<u64>,
        batch: usize,
        mut each: impl FnMut(CorpusBatch) -> bool,
    ) -> Result<()> {
        let mut base = 0u64;
        for (f, &n) in self.files.iter().zip(&self.file_rows) {
            let (lo, hi) = (range.start.max(base), range.end.min(base + n));
            if lo < hi {
                let file = File::open(f).map_err(|e| corpus_err(f, e.to_string()))?;
                let mut cols: Vec<&str> = self.mapping.iter().map(|(_, c)| c.as_str()).collect();
                cols.extend(self.label.as_deref());
                cols.extend(self.id.as_deref());
                let b = ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| corpus_err(f, e.to_string()))?;
                let roots: Vec<usize> = cols
                    .iter()
                    .filter_map(|c| b.schema().index_of(c).ok())
                    .collect();
                let mask = parquet::arrow::ProjectionMask::roots(b.parquet_schema(), roots);
                let reader = b
                    .with_projection(mask)
                    .with_offset((lo - base) as usize)
                    .with_limit((hi - lo) as usize)
                    .with_batch_size(batch.max(1))
                    .build()
                    .map_err(|e| corpus_err(f, e.to_string()))?;
                let mut next = lo;
                let mut reader = reader;
                loop {
                    // A damaged corpus page can make the Parquet library panic: say so, naming
                    // the file, instead of taking the build down.
                    let Some(rb) = crate::reader::catch_panics(|| reader.next())
                        .map_err(|p| corpus_err(f, format!("the file is damaged ({p})")))?
                    else {
                        break;
                    };
                    let rb = rb.map_err(|e| corpus_err(f, e.to_string()))?;
                    let n = rb.num_rows() as u64;
                    if !each(self.convert(f, &rb, next)?) {
                        return Ok(());
                    }
                    next += n;
                }
            }
            base += n;
        }
        Ok(())
    }

    fn convert(&self, f: &Path, rb: &RecordBatch, first: u64) -> Result<CorpusBatch> {
        let rows = rb.num_rows();
        let mut b = CorpusBatch {
            row_ids: (first..first + rows as u64).collect(),
            ..Default::default()
        };
        for (input, col) in &self.mapping {
            let a = rb
                .column_by_name(col)
                .ok_or_else(|| corpus_err(f, format!("column {col:?} missing")))?;
            let (offsets, flat, nested) = flatten(f, col, a, first)?;
            let declared = self.declared.get(input);
            let shapes = match (nested, declared) {
                (Some(rows), Some(d)) => {
                    if let Some(r) = rows.iter().position(|s| s != d) {
                        return Err(corpus_err(
                            f,
                            format!(
                                "row {}: column {col:?} is nested with shape {:?}, but its declared shape is {d:?}",
                                first + r as u64,
                                rows[r]
                            ),
                        ));
                    }
                    Some(rows)
                }
                (Some(rows), None) => Some(rows),
                (None, Some(d)) => {
                    let want: usize = d.iter().product();
                    if let Some(r) = (0..rows).find(|&r| offsets[r + 1] - offsets[r] != want) {
                        return Err(corpus_err(
                            f,
                            format!(
                                "row {}: column {col:?} holds {} values, but its declared shape {d:?} has {want}",
                                first + r as u64,
                                offsets[r + 1] - offsets[r]
                            ),
                        ));
                    }
                    Some(vec![d.clone(); rows])
                }
                (None, None) => None,
            };
            if let Some(s) = shapes {
                b.shapes.insert(input.clone(), s);
            }
            b.inputs.insert(input.clone(), (offsets, flat));
        }
        if let Some(c) = &self.label {
            let a = rb
                .column_by_name(c)
                .ok_or_else(|| corpus_err(f, format!("column {c:?} missing")))?;
            let v: Vec<Option<i64>> = match a.data_type() {
                DataType::Int64 => a.as_primitive::<Int64Type>().iter().collect(),
                DataType::Int32 => a
                    .as_primitive::<Int32Type>()
                    .iter()
                    .map(|x| x.map(i64::from))
                    .collect(),
                t => {
                    return Err(corpus_err(
                        f,
                        format!("label column {c:?} is {t}, expected int32 or int64"),
                    ));
                }
            };
            b.labels = Some(v);
        }
        if let Some(c) = &self.id {
            let a = rb
                .column_by_name(c)
                .ok_or_else(|| corpus_err(f, format!("column {c:?} missing")))?;
            let v = id_strings(a).ok_or_else(|| {
                corpus_err(
                    f,
                    format!(
                        "id column {c:?} is {}, expected strings or integers",
                        a.data_type()
                    ),
                )
            })?;
            b.ids = Some(v);
        }
        Ok(b)
    }
}

/// The values of an id column as text: strings as they are, integers in decimal; None for a
/// column of another type.
pub fn id_strings(a: &ArrayRef) -> Option<Vec<Option<String>>> {
    Some(match a.data_type() {
        DataType::Utf8 => a
            .as_string::<i32>()
            .iter()
            .map(|x| x.map(str::to_string))
            .collect(),
        DataType::LargeUtf8 => a
            .as_string::<i64>()
            .iter()
            .map(|x| x.map(str::to_string))
            .collect(),
        DataType::Int64 => a
            .as_primitive::<Int64Type>()
            .iter()
            .map(|x| x.map(|v| v.to_string()))
            .collect(),
        DataType::Int32 => a
            .as_primitive::<Int32Type>()
            .iter()
            .map(|x| x.map(|v| v.to_string()))
            .collect(),
        _ => return None,
    })
}

/// Parses a declared shape: `[3, 48, 320]`, `3,48,320` or `3x48x320`.
pub fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let s = s
        .trim()
        .trim_start_matches(['[', '('])
        .trim_end_matches([']', ')']);
    let dims: Option<Vec<usize>> = s
        .split([',', 'x'])
        .map(|d| d.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect();
    dims.filter(|d| !d.is_empty())
}

/// One level of a list column: entry offsets into the child array, and the child.
fn list_level(a: &ArrayRef) -> Option<(Vec<usize>, ArrayRef)> {
    Some(match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let o = l.value_offsets();
            let base = o[0] as usize;
            (
                o.iter().map(|&x| x as usize - base).collect(),
                l.values().slice(base, o[o.len() - 1] as usize - base),
            )
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let o = l.value_offsets();
            let base = o[0] as usize;
            (
                o.iter().map(|&x| x as usize - base).collect(),
                l.values().slice(base, o[o.len() - 1] as usize - base),
            )
        }
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            let n = *n as usize;
            (
                (0..=l.len()).map(|i| i * n).collect(),
                l.values().slice(l.offset() * n, l.len() * n),
            )
        }
        _ => return None,
    })
}

/// Leaf offsets of a list column's entries and the leaf array; with nested lists, also each
/// entry's shape (every sub-list of an entry must have the same shape: a tensor, not a ragged
/// list). `Err(i)` names the entry that is ragged.
#[allow(clippy::type_complexity)]
fn nest(
    a: &ArrayRef,
) -> std::result::Result<Option<(Vec<usize>, Option<Vec<Vec<usize>>>, ArrayRef)>, usize> {
    let Some((offsets, child)) = list_level(a) else {
        return Ok(None);
    };
    let inner = match nest(&child) {
        Ok(x) => x,
        // A ragged sub-list: name the entry of this level that holds it.
        Err(j) => return Err(offsets.partition_point(|&o| o <= j).saturating_sub(1)),
    };
    let Some((child_offsets, child_shapes, leaf)) = inner else {
        return Ok(Some((offsets, None, child)));
    };
    let child_shapes = child_shapes.unwrap_or_else(|| {
        child_offsets
            .windows(2)
            .map(|w| vec![w[1] - w[0]])
            .collect()
    });
    let mut shapes = Vec::with_capacity(offsets.len().saturating_sub(1));
    for (i, w) in offsets.windows(2).enumerate() {
        let subs = &child_shapes[w[0]..w[1]];
        if subs.iter().any(|s| s != &subs[0]) {
            return Err(i);
        }
        let mut shape = vec![w[1] - w[0]];
        shape.extend(subs.first().cloned().unwrap_or_default());
        shapes.push(shape);
    }
    let leaf_offsets = offsets.iter().map(|&o| child_offsets[o]).collect();
    Ok(Some((leaf_offsets, Some(shapes), leaf)))
}

/// Flattens a list, fixed-size-list or nested-list column of numbers into row offsets and
/// values, with each row's shape when the lists are nested.
#[allow(clippy::type_complexity)]
fn flatten(
    f: &Path,
    col: &str,
    a: &ArrayRef,
    first: u64,
) -> Result<(Vec<usize>, Flat, Option<Vec<Vec<usize>>>)> {
    let (offsets, shapes, child) = match nest(a) {
        Ok(Some(x)) => x,
        Ok(None) => {
            return Err(corpus_err(
                f,
                format!(
                    "column {col:?} is {}; inputs must be lists of numbers (one tensor per row: flat with a shape, or nested)",
                    a.data_type()
                ),
            ));
        }
        Err(r) => {
            return Err(corpus_err(
                f,
                format!(
                    "row {}: column {col:?} is a ragged nested list (its sub-lists differ in length); each row must be a tensor",
                    first + r as u64
                ),
            ));
        }
    };
    if a.null_count() > 0 || child.null_count() > 0 {
        let r = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
        return Err(corpus_err(
            f,
            format!("row {}: column {col:?} holds a null", first + r as u64),
        ));
    }
    let flat = match child.data_type() {
        DataType::Float32 => Flat::F32(child.as_primitive::<Float32Type>().values().to_vec()),
        DataType::Float64 => Flat::F32(
            child
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .map(|&x| x as f32)
                .collect(),
        ),
        DataType::Int64 => Flat::I64(child.as_primitive::<Int64Type>().values().to_vec()),
        DataType::Int32 => widen::<Int32Type>(&child),
        DataType::Int16 => widen::<Int16Type>(&child),
        DataType::Int8 => widen::<Int8Type>(&child),
        DataType::UInt32 => widen::<UInt32Type>(&child),
        DataType::UInt16 => widen::<UInt16Type>(&child),
        DataType::UInt8 => widen::<UInt8Type>(&child),
        DataType::Boolean => Flat::I64(child.as_boolean().values().iter().map(i64::from).collect()),
        t => {
            return Err(corpus_err(
                f,
                format!(
                    "column {col:?} holds {t}; expected float32/64, int8/16/32/64, uint8/16/32 or bool"
                ),
            ));
        }
    };
    Ok((offsets, flat, shapes))
}

/// Integer values of any narrower type as i64 (exact).
fn widen<T: arrow_array::types::ArrowPrimitiveType>(a: &arrow_array::ArrayRef) -> Flat
where
    T::Native: Into<i64>,
{
    Flat::I64(
        a.as_primitive::<T>()
            .values()
            .iter()
            .map(|&x| x.into())
            .collect(),
    )
}

#[cfg(test)]
mod shape_tests {
    use super::*;
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder};
    use std::sync::Arc;

    #[test]
    fn nested_lists_give_each_row_its_shape() {
        // Two rows of [2, 3] as a list of fixed-size lists.
        let mut b = ListBuilder::new(FixedSizeListBuilder::new(Float32Builder::new(), 3));
        for r in 0..2 {
            for i in 0..2 {
                for j in 0..3 {
                    b.values().values().append_value((r * 6 + i * 3 + j) as f32);
                }
                b.values().append(true);
            }
            b.append(true);
        }
        let a: ArrayRef = Arc::new(b.finish());
        let (offsets, flat, shapes) = flatten(Path::new("c.parquet"), "x", &a, 0).unwrap();
        assert_eq!(offsets, vec![0, 6, 12]);
        assert_eq!(shapes, Some(vec![vec![2, 3], vec![2, 3]]));
        assert_eq!(flat, Flat::F32((0..12).map(|x| x as f32).collect()));
    }

    #[test]
    fn a_ragged_nested_list_names_its_row() {
        let mut b = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
        for sub in [vec![2usize, 2], vec![2, 3]] {
            for len in sub {
                for _ in 0..len {
                    b.values().values().append_value(1.0);
                }
                b.values().append(true);
            }
            b.append(true);
        }
        let a: ArrayRef = Arc::new(b.finish());
        let e = flatten(Path::new("c.parquet"), "x", &a, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 11") && e.contains("ragged"), "{e}");
    }

    #[test]
    fn shapes_parse_in_the_usual_spellings() {
        assert_eq!(parse_shape("[3, 48, 320]"), Some(vec![3, 48, 320]));
        assert_eq!(parse_shape("3,48,320"), Some(vec![3, 48, 320]));
        assert_eq!(parse_shape("28x28"), Some(vec![28, 28]));
        assert_eq!(parse_shape("3,0"), None);
        assert_eq!(parse_shape("a"), None);
    }

    #[test]
    fn batches_split_where_row_shapes_change() {
        let b = CorpusBatch {
            row_ids: vec![0, 1, 2, 3],
            inputs: [(
                "x".to_string(),
                (vec![0, 2, 4, 7, 9], Flat::I64((0..9).collect())),
            )]
            .into(),
            labels: Some(vec![Some(0), Some(1), Some(2), Some(3)]),
            ..Default::default()
        };
        let parts = b.split_uniform();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].row_ids, vec![0, 1]);
        assert_eq!(parts[1].inputs["x"], (vec![0, 3], Flat::I64(vec![4, 5, 6])));
        assert_eq!(parts[2].labels, Some(vec![Some(3)]));
    }
}
