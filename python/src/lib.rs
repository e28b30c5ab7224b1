//! # logits._native: the dataset reader of `logits-format`, for Python
//!
//! This room only carries data across: it opens a dataset (a directory or an object-store
//! URL) with [`logits_format::Dataset`], streams it with [`logits_format::BatchStream`] — the
//! same shard checks and value decoding as the Rust tools — and hands each decoded
//! [`RowBatch`] to Python as flat little-endian buffers with their dtype and shape. Padding,
//! numpy arrays and everything torch live in the Python half (`python/logits/`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use logits_format::rows::TensorValues;
use logits_format::{BatchStream, Dataset, ReadOptions, RowBatch};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyTuple};

/// Turns a format error into a Python exception that keeps the whole message (cause chain
/// included), so the file, shard or row it names reaches the user.
fn err(e: logits_format::FormatError) -> PyErr {
    PyRuntimeError::new_err(logits_store::distinct_chain(&e))
}

/// An opened dataset.
#[pyclass(module = "logits._native")]
struct NativeDataset {
    ds: Dataset,
}

#[pymethods]
impl NativeDataset {
    /// Opens the dataset at `path` (directory or `s3://`, `gs://`, `az://`, `file://` URL).
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let ds = py.detach(|| Dataset::open(&path)).map_err(err)?;
        Ok(NativeDataset { ds })
    }

    /// The manifest as JSON text.
    fn manifest_json(&self) -> PyResult<String> {
        serde_json::to_string(self.ds.manifest()).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The columns a shard holds, in schema order.
    fn columns(&self) -> Vec<String> {
        self.ds.columns()
    }

    /// Starts a stream of decoded batches.
    // The Python keyword arguments of `Dataset.batches`, one by one.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (batch_size, columns=None, shuffle=None, shuffle_buffer=8192, row_range=None, part=None))]
    fn stream(
        &self,
        py: Python<'_>,
        batch_size: usize,
        columns: Option<Vec<String>>,
        shuffle: Option<u64>,
        shuffle_buffer: usize,
        row_range: Option<(u64, u64)>,
        part: Option<(usize, usize)>,
    ) -> PyResult<NativeStream> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let options = ReadOptions {
            columns,
            batch_size,
            shuffle,
            shuffle_buffer,
            row_range: row_range.map(|(a, b)| a..b),
            part,
            ..Default::default()
        };
        let stream = py.detach(|| self.ds.stream(&options)).map_err(err)?;
        Ok(NativeStream {
            stream: Mutex::new(Some(stream)),
        })
    }
}

/// A stream of decoded batches; each item is a dict of `(dtype, shape, bytearray)` triples.
#[pyclass(module = "logits._native")]
struct NativeStream {
    stream: Mutex<Option<BatchStream>>,
}

#[pymethods]
impl NativeStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let next = py.detach(|| {
            let mut guard = self.stream.lock().unwrap_or_else(|p| p.into_inner());
            let item = guard.as_mut().and_then(|s| s.next_rows());
            if item.is_none() {
                // Ends the reading thread as soon as the stream is exhausted.
                guard.take();
            }
            item
        });
        match next {
            None => Ok(None),
            Some(Err(e)) => {
                self.close();
                Err(err(e))
            }
            Some(Ok(b)) => Ok(Some(to_dict(py, &b)?)),
        }
    }

    /// Stops the reading thread now (also done when the stream is dropped or ends).
    fn close(&self) {
        self.stream.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// One flat array for Python: numpy dtype string, shape, little-endian bytes.
struct Flat {
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

macro_rules! flat {
    ($dtype:expr, $v:expr) => {{
        let v = $v;
        let mut bytes = Vec::with_capacity(std::mem::size_of_val(&v[..]));
        for x in v.iter() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        Flat {
            dtype: $dtype,
            shape: vec![v.len()],
            bytes,
        }
    }};
}

fn usizes(v: &[usize]) -> Flat {
    let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    flat!("<i8", v)
}

fn tensor(v: &TensorValues) -> Flat {
    match v {
        TensorValues::F32(v) => flat!("<f4", v),
        TensorValues::F64(v) => flat!("<f8", v),
        TensorValues::I64(v) => flat!("<i8", v),
        TensorValues::I32(v) => flat!("<i4", v),
        TensorValues::U32(v) => flat!("<u4", v),
        TensorValues::U16(v) => flat!("<u2", v),
        TensorValues::I8(v) => flat!("|i1", v),
        TensorValues::U8(v) => flat!("|u1", v),
    }
}

/// The flat arrays of a decoded batch, by name (see `python/logits/__init__.py` for what
/// each means).
fn flatten(b: &RowBatch) -> BTreeMap<String, Flat> {
    let mut out = BTreeMap::new();
    out.insert("row_id".into(), flat!("<u8", &b.row_ids));
    if let Some(labels) = &b.labels {
        let v: Vec<i64> = labels.iter().map(|l| l.unwrap_or(-1)).collect();
        out.insert("label".into(), flat!("<i8", v));
    }
    if let Some(t) = &b.targets {
        out.insert("row_positions".into(), usizes(&t.row_positions));
        out.insert("logz".into(), flat!("<f4", &t.logz));
        out.insert("logz_temps".into(), flat!("<f4", &t.logz_temps));
        if let Some(k) = &t.topk {
            out.insert("topk_offsets".into(), usizes(&k.offsets));
            out.insert("topk_ids".into(), flat!("<u4", &k.ids));
            out.insert("topk_logits".into(), flat!("<f4", &k.logits));
        }
        if let Some(s) = &t.sampled {
            out.insert("sampled_offsets".into(), usizes(&s.offsets));
            out.insert("sampled_ids".into(), flat!("<u4", &s.ids));
            out.insert("sampled_counts".into(), flat!("<u4", &s.counts));
        }
    }
    for (name, f) in &b.features {
        out.insert(
            format!("feature_positions:{name}"),
            usizes(&f.row_positions),
        );
        out.insert(format!("feature:{name}"), flat!("<f4", &f.values));
    }
    for (name, i) in &b.inputs {
        out.insert(format!("input_offsets:{name}"), usizes(&i.offsets));
        out.insert(format!("input:{name}"), tensor(&i.values));
    }
    out
}

fn to_dict<'py>(py: Python<'py>, b: &RowBatch) -> PyResult<Bound<'py, PyDict>> {
    let flats = py.detach(|| flatten(b));
    let d = PyDict::new(py);
    for (name, f) in flats {
        let bytes = PyByteArray::new(py, &f.bytes);
        d.set_item(
            name,
            PyTuple::new(
                py,
                [
                    f.dtype.into_pyobject(py)?.into_any(),
                    f.shape.into_pyobject(py)?,
                    bytes.into_any(),
                ],
            )?,
        )?;
    }
    Ok(d)
}

/// The native half of the `logits` Python package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeDataset>()?;
    m.add_class::<NativeStream>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
