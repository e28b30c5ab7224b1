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
        let mut mapping = Vec::new();
        for input in inputs {
            let col = map
                .inputs
                .iter()
                .find(|(i, _)| i == input)
                .map(|(_, c)| c.clone())
                .unwrap_or_else(|| input.clone());
            if !has(&col) {
                return Err(corpus_err(
                    &files[0],
                    format!(
                        "no column {col:?} for model input {input:?} (columns: {}); map one with --input {input}=COLUMN",
                        cols.join(", ")
                    ),
                ));
            }
            mapping.push((input.clone(), col));
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
            b.inputs.insert(input.clone(), flatten(f, col, a, first)?);
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
            let v: Vec<Option<String>> = match a.data_type() {
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
                t => {
                    return Err(corpus_err(
                        f,
                        format!("id column {c:?} is {t}, expected a string or int64"),
                    ));
                }
            };
            b.ids = Some(v);
        }
        Ok(b)
    }
}

/// Flattens a list or fixed-size-list column of numbers into offsets and values.
fn flatten(f: &Path, col: &str, a: &ArrayRef, first: u64) -> Result<(Vec<usize>, Flat)> {
    let (offsets, child): (Vec<usize>, ArrayRef) = match a.data_type() {
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
        t => {
            return Err(corpus_err(
                f,
                format!(
                    "column {col:?} is {t}; inputs must be lists of numbers (one tensor per row, flattened)"
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
    Ok((offsets, flat))
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
