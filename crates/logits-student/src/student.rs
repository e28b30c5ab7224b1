//! The trainable student: the MLP plus the learned projections that feature losses need
//! (FitNets' regressors, which are thrown away at export), and its safetensors files.
//!
//! A student file is self-describing: tensors named as [`Params::tensors`] lists them, and a
//! `logits.student` metadata entry holding the shape (widths, activation, layer norm) and
//! where it came from (dataset id, teacher hash, input name), so evaluation and export need
//! nothing but the file.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StudentError, io};
use crate::mlp::{
    Activation, LayerNorm, Linear, Mlp, MlpSpec, slice, slice_mut, slice1, slice1_mut,
};
use crate::params::Params;

/// The MLP and its training-only projections (one per feature loss that needs one).
#[derive(Debug, Clone, PartialEq)]
pub struct Student {
    /// The model that is exported.
    pub mlp: Mlp,
    /// Learned projections, aligned with the run's feature losses (None for relation losses).
    pub projections: Vec<Option<Linear>>,
}

/// What a student file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentInfo {
    /// Always `mlp` for now.
    pub kind: String,
    /// Layer widths, inputs to outputs.
    pub widths: Vec<usize>,
    /// Activation name.
    pub activation: String,
    /// Layer norm before hidden nonlinearities.
    pub layer_norm: bool,
    /// The dataset input the student reads.
    pub input: String,
    /// The dataset it was trained from.
    pub dataset_id: String,
    /// sha256 of the teacher that produced that dataset.
    pub teacher_sha256: String,
}

impl Student {
    /// A zero student of the same shape (gradient accumulator).
    pub fn zeros_like(&self) -> Student {
        Student {
            mlp: self.mlp.zeros_like(),
            projections: self
                .projections
                .iter()
                .map(|p| p.as_ref().map(Linear::zeros_like))
                .collect(),
        }
    }
}

impl Params for Student {
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let mut out = self.mlp.tensors();
        for (i, p) in self.projections.iter().enumerate() {
            if let Some(l) = p {
                out.push((
                    format!("proj.{i}.weight"),
                    l.w.shape().to_vec(),
                    slice(&l.w),
                ));
                out.push((format!("proj.{i}.bias"), vec![l.b.len()], slice1(&l.b)));
            }
        }
        out
    }

    fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out = self.mlp.tensors_mut();
        for l in self.projections.iter_mut().flatten() {
            out.push(slice_mut(&mut l.w));
            out.push(slice1_mut(&mut l.b));
        }
        out
    }
}

/// Serialises named f32 tensors and string metadata to safetensors bytes.
pub fn to_safetensors(
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
            .map_err(|e| StudentError::Config(format!("tensor {name}: {e}")))?;
        views.push((name.clone(), v));
    }
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| StudentError::Config(format!("safetensors: {e}")))
}

/// Named f32 tensors and metadata read from a safetensors file.
pub type Loaded = (
    HashMap<String, (Vec<usize>, Vec<f32>)>,
    HashMap<String, String>,
);

/// Reads every tensor (f32 only) and the metadata of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let bad = |why: String| StudentError::Checkpoint {
        path: path.to_path_buf(),
        why,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, v) in st.tensors() {
        if v.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "tensor {name} is {:?}, expected F32",
                v.dtype()
            )));
        }
        let data = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, (v.shape().to_vec(), data));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Writes `bytes` to `path` through a uniquely named temporary file, file fsync, rename and
/// directory fsync (the one [`logits_format::writer::write_atomic`] shards and manifests use),
/// so a crash or a full disk never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(logits_format::writer::write_atomic(path, bytes)?)
}

/// The safetensors metadata that makes a student file self-describing.
pub fn metadata(info: &impl Serialize) -> Result<HashMap<String, String>> {
    let mut meta = HashMap::new();
    meta.insert(
        "logits.student".to_string(),
        serde_json::to_string(info).map_err(|e| StudentError::Config(e.to_string()))?,
    );
    Ok(meta)
}

/// Saves a student (with its projections, for checkpoints) or just its model (for export).
pub fn save(path: &Path, params: &dyn Params, info: &impl Serialize) -> Result<()> {
    write_atomic(path, &to_safetensors(&params.tensors(), metadata(info)?)?)
}

/// Loads every tensor of `model` (by name and shape) from a safetensors file; returns the
/// file's metadata.
pub fn load_into(path: &Path, model: &mut dyn Params) -> Result<HashMap<String, String>> {
    let (mut tensors, meta) = read_safetensors(path)?;
    let wanted: Vec<(String, Vec<usize>)> = model
        .tensors()
        .into_iter()
        .map(|(n, s, _)| (n, s))
        .collect();
    for ((name, shape), dst) in wanted.into_iter().zip(model.tensors_mut()) {
        let (s, v) = tensors
            .remove(&name)
            .ok_or_else(|| StudentError::Checkpoint {
                path: path.to_path_buf(),
                why: format!("tensor {name} is missing"),
            })?;
        if s != shape || v.len() != dst.len() {
            return Err(StudentError::Checkpoint {
                path: path.to_path_buf(),
                why: format!("tensor {name} has shape {s:?}, expected {shape:?}"),
            });
        }
        dst.copy_from_slice(&v);
    }
    Ok(meta)
}

/// The `logits.student` description of a student file, parsed as `T`.
pub fn read_info<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let (_, meta) = read_safetensors(path)?;
    let bad = |why: String| StudentError::Checkpoint {
        path: path.to_path_buf(),
        why,
    };
    let s = meta.get("logits.student").ok_or_else(|| {
        bad("no logits.student metadata: not a student written by logits-train".into())
    })?;
    serde_json::from_str(s).map_err(|e| bad(format!("logits.student metadata: {e}")))
}

/// Loads a student file: its description and the MLP (projections, when present, are loaded
/// into `projections` shaped like `template`'s).
pub fn load(path: &Path, template: Option<&Student>) -> Result<(Student, StudentInfo)> {
    let (mut tensors, meta) = read_safetensors(path)?;
    let bad = |why: String| StudentError::Checkpoint {
        path: path.to_path_buf(),
        why,
    };
    let info: StudentInfo = meta
        .get("logits.student")
        .ok_or_else(|| {
            bad("no logits.student metadata: not a student written by logits-train".into())
        })
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| bad(format!("logits.student metadata: {e}")))
        })?;
    let activation = Activation::parse(&info.activation)
        .ok_or_else(|| bad(format!("unknown activation {:?}", info.activation)))?;
    if info.kind != "mlp" || info.widths.len() < 2 {
        return Err(bad(format!(
            "unsupported student {:?} with widths {:?}",
            info.kind, info.widths
        )));
    }
    let mut take = |name: String, shape: &[usize]| -> Result<Vec<f32>> {
        let (s, v) = tensors
            .remove(&name)
            .ok_or_else(|| bad(format!("tensor {name} is missing")))?;
        if s != shape {
            return Err(bad(format!(
                "tensor {name} has shape {s:?}, expected {shape:?}"
            )));
        }
        Ok(v)
    };
    let mut linear = |prefix: String, i: usize, o: usize| -> Result<Linear> {
        let w = take(format!("{prefix}.weight"), &[i, o])?;
        let b = take(format!("{prefix}.bias"), &[o])?;
        Ok(Linear {
            w: Array2::from_shape_vec((i, o), w).map_err(|e| bad(e.to_string()))?,
            b: Array1::from(b),
        })
    };
    let w = &info.widths;
    let mut layers = Vec::new();
    for (n, io) in w.windows(2).enumerate() {
        layers.push(linear(format!("layers.{n}"), io[0], io[1])?);
    }
    let mut projections = Vec::new();
    if let Some(t) = template {
        for (i, p) in t.projections.iter().enumerate() {
            projections.push(match p {
                Some(l) => Some(linear(format!("proj.{i}"), l.w.nrows(), l.w.ncols())?),
                None => None,
            });
        }
    }
    let mut norms = Vec::new();
    if info.layer_norm {
        for (n, &width) in w[1..w.len() - 1].iter().enumerate() {
            let mut ln = LayerNorm::new(width);
            ln.gamma = Array1::from(take(format!("norms.{n}.gamma"), &[width])?);
            ln.beta = Array1::from(take(format!("norms.{n}.beta"), &[width])?);
            norms.push(ln);
        }
    }
    let mlp = Mlp {
        spec: MlpSpec {
            widths: w.clone(),
            activation,
            layer_norm: info.layer_norm,
            dropout: 0.0,
        },
        layers,
        norms,
    };
    Ok((Student { mlp, projections }, info))
}
