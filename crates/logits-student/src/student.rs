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
use crate::norm::InputNorm;
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
    /// Layer widths, the first layer's inputs to outputs.
    pub widths: Vec<usize>,
    /// `[vocab, dim]` when the inputs are ids embedded before the first layer (which then
    /// reads `widths[0] / dim` ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<[usize; 2]>,
    /// The convolutional front (`kind = cnn`): the input image and each block's channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<crate::conv::ConvSpec>,
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
    /// The first layer includes the training rows' per-feature standardisation: the weights
    /// take raw inputs (what the saved student and its exports always are).
    #[serde(default)]
    pub standardized: bool,
    /// Present in checkpoints only: the weights expect inputs standardised by this, and
    /// [`load`] folds it into the first layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_norm: Option<InputNorm>,
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

/// Serialises named f32 tensors and string metadata to safetensors bytes. The header is
/// written here rather than by the `safetensors` crate, whose metadata map comes out in
/// hash order: with keys sorted, the same student is the same bytes in every process (resumed
/// runs are compared byte for byte).
pub fn to_safetensors(
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut header = std::collections::BTreeMap::new();
    let mut offset = 0usize;
    for (name, shape, v) in tensors {
        if shape.iter().product::<usize>() != v.len() || name == "__metadata__" {
            return Err(StudentError::Config(format!(
                "tensor {name}: shape {shape:?} does not hold {} values",
                v.len()
            )));
        }
        let end = offset + 4 * v.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let sorted: std::collections::BTreeMap<_, _> = metadata.into_iter().collect();
    header.insert("__metadata__".to_string(), serde_json::json!(sorted));
    let mut text =
        serde_json::to_string(&header).map_err(|e| StudentError::Config(e.to_string()))?;
    // The data starts 8-byte aligned, as the format's own writer pads it.
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    for (_, _, v) in tensors {
        for x in v.iter() {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(out)
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

/// The metadata key that marks a student file written in PyTorch's layout.
pub const LAYOUT_KEY: &str = "logits.layout";

/// Saves an MLP as `torch.nn` would hold it, so a `state_dict` of `nn.Linear` and
/// `nn.LayerNorm` modules loads it as is: `layers.{i}.weight` (out × in), `layers.{i}.bias`,
/// `norms.{i}.weight`, `norms.{i}.bias` (and `embed.weight`, vocab × dim, as `nn.Embedding`);
/// metadata `format = pt` (as PyTorch's own safetensors
/// files), `logits.layout = torch`, and the description under `logits.student`.
pub fn save_torch(path: &Path, mlp: &Mlp, info: &impl Serialize) -> Result<()> {
    let transposed: Vec<Array2<f32>> = mlp
        .layers
        .iter()
        .map(|l| l.w.t().as_standard_layout().to_owned())
        .collect();
    let mut tensors = Vec::new();
    if let Some(t) = &mlp.embed {
        // nn.Embedding holds vocab × dim, as here.
        tensors.push(("embed.weight".to_string(), t.shape().to_vec(), slice(t)));
    }
    if let Some(c) = &mlp.conv {
        // Buffers, then nn.Conv2d's (O, C, kh, kw): the same memory order as O × C·kh·kw.
        tensors.push(("input.mean".into(), vec![c.mean.len()], slice1(&c.mean)));
        tensors.push(("input.scale".into(), vec![c.scale.len()], slice1(&c.scale)));
        for (i, l) in c.layers.iter().enumerate() {
            let (o, k) = l.w.dim();
            let (kh, kw) = c.spec.kernel(i);
            tensors.push((
                format!("conv.{i}.weight"),
                vec![o, k / (kh * kw), kh, kw],
                slice(&l.w),
            ));
            tensors.push((format!("conv.{i}.bias"), vec![l.b.len()], slice1(&l.b)));
        }
    }
    for (i, (l, wt)) in mlp.layers.iter().zip(&transposed).enumerate() {
        tensors.push((format!("layers.{i}.weight"), wt.shape().to_vec(), slice(wt)));
        tensors.push((format!("layers.{i}.bias"), vec![l.b.len()], slice1(&l.b)));
    }
    for (i, n) in mlp.norms.iter().enumerate() {
        let len = vec![n.gamma.len()];
        tensors.push((format!("norms.{i}.weight"), len.clone(), slice1(&n.gamma)));
        tensors.push((format!("norms.{i}.bias"), len, slice1(&n.beta)));
    }
    let mut meta = metadata(info)?;
    meta.insert("format".into(), "pt".into());
    meta.insert(LAYOUT_KEY.into(), "torch".into());
    write_atomic(path, &to_safetensors(&tensors, meta)?)
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
/// into `projections` shaped like `template`'s). Both layouts load: checkpoints' (weights
/// in × out, norms `gamma`/`beta`) and exports' PyTorch layout ([`save_torch`]). A
/// checkpoint's input standardisation is folded into the first layer, so the student returned
/// always takes raw inputs.
pub fn load(path: &Path, template: Option<&Student>) -> Result<(Student, StudentInfo)> {
    let (mut tensors, meta) = read_safetensors(path)?;
    let bad = |why: String| StudentError::Checkpoint {
        path: path.to_path_buf(),
        why,
    };
    let mut info: StudentInfo = meta
        .get("logits.student")
        .ok_or_else(|| {
            bad("no logits.student metadata: not a student written by logits-train".into())
        })
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| bad(format!("logits.student metadata: {e}")))
        })?;
    let activation = Activation::parse(&info.activation)
        .ok_or_else(|| bad(format!("unknown activation {:?}", info.activation)))?;
    if !(info.kind == "mlp" || info.kind == "cnn") || info.widths.len() < 2 {
        return Err(bad(format!(
            "unsupported student {:?} with widths {:?}",
            info.kind, info.widths
        )));
    }
    let torch = meta.get(LAYOUT_KEY).is_some_and(|l| l == "torch");
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
    let mut linear = |prefix: String, i: usize, o: usize, torch: bool| -> Result<Linear> {
        let w = if torch {
            let w = take(format!("{prefix}.weight"), &[o, i])?;
            Array2::from_shape_vec((o, i), w)
                .map_err(|e| bad(e.to_string()))?
                .t()
                .as_standard_layout()
                .to_owned()
        } else {
            let w = take(format!("{prefix}.weight"), &[i, o])?;
            Array2::from_shape_vec((i, o), w).map_err(|e| bad(e.to_string()))?
        };
        let b = take(format!("{prefix}.bias"), &[o])?;
        Ok(Linear {
            w,
            b: Array1::from(b),
        })
    };
    let w = &info.widths;
    let embed_spec = match info.embed {
        Some([vocab, dim]) if vocab >= 1 && dim >= 1 && w[0].is_multiple_of(dim) => {
            Some(crate::mlp::EmbedSpec { vocab, dim })
        }
        Some(e) => {
            return Err(bad(format!(
                "embedding {e:?} does not fit a first layer of {} inputs",
                w[0]
            )));
        }
        None => None,
    };
    let mut layers = Vec::new();
    for (n, io) in w.windows(2).enumerate() {
        layers.push(linear(format!("layers.{n}"), io[0], io[1], torch)?);
    }
    let mut projections = Vec::new();
    if let Some(t) = template {
        for (i, p) in t.projections.iter().enumerate() {
            projections.push(match p {
                Some(l) => Some(linear(
                    format!("proj.{i}"),
                    l.w.nrows(),
                    l.w.ncols(),
                    false,
                )?),
                None => None,
            });
        }
    }
    let mut norms = Vec::new();
    let embed = match embed_spec {
        Some(e) => Some(
            Array2::from_shape_vec(
                (e.vocab, e.dim),
                take("embed.weight".into(), &[e.vocab, e.dim])?,
            )
            .map_err(|e| bad(e.to_string()))?,
        ),
        None => None,
    };
    let conv = match &info.conv {
        // The front must feed the first layer: a file that says otherwise is damaged.
        Some(spec)
            if spec.out_width() != w[0]
                || embed_spec.is_some_and(|e| spec.image != [e.dim, 1, spec.image[2]]) =>
        {
            return Err(bad(format!(
                "its convolutions ({:?} over {:?}) do not fit a first layer of {} inputs",
                spec.channels, spec.image, w[0]
            )));
        }
        Some(spec) => {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
            let mut stack = crate::conv::ConvStack::new(spec.clone(), &mut rng);
            let c = spec.image[0];
            stack.mean = Array1::from(take("input.mean".into(), &[c])?);
            stack.scale = Array1::from(take("input.scale".into(), &[c])?);
            for (i, l) in stack.layers.iter_mut().enumerate() {
                let (o, k) = l.w.dim();
                let (kh, kw) = spec.kernel(i);
                let shape = if torch {
                    vec![o, k / (kh * kw), kh, kw]
                } else {
                    vec![o, k]
                };
                l.w = Array2::from_shape_vec((o, k), take(format!("conv.{i}.weight"), &shape)?)
                    .map_err(|e| bad(e.to_string()))?;
                l.b = Array1::from(take(format!("conv.{i}.bias"), &[o])?);
            }
            Some(stack)
        }
        None => None,
    };
    let (gain, shift) = if torch {
        ("weight", "bias")
    } else {
        ("gamma", "beta")
    };
    if info.layer_norm {
        for (n, &width) in w[1..w.len() - 1].iter().enumerate() {
            let mut ln = LayerNorm::new(width);
            ln.gamma = Array1::from(take(format!("norms.{n}.{gain}"), &[width])?);
            ln.beta = Array1::from(take(format!("norms.{n}.{shift}"), &[width])?);
            norms.push(ln);
        }
    }
    if let Some(norm) = info.input_norm.take() {
        if norm.mean.len() != w[0] || norm.std.len() != w[0] || embed.is_some() {
            return Err(bad(format!(
                "its input standardisation has {} values, the first layer reads {}",
                norm.mean.len(),
                w[0]
            )));
        }
        if let Some(first) = layers.first_mut() {
            norm.fold_into(first);
        }
        info.standardized = true;
    }
    let mlp = Mlp {
        spec: MlpSpec {
            widths: w.clone(),
            embed: embed_spec,
            conv: info.conv.clone(),
            activation,
            layer_norm: info.layer_norm,
            dropout: 0.0,
        },
        layers,
        norms,
        embed,
        conv,
    };
    Ok((Student { mlp, projections }, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> Mlp {
        Mlp::new(
            MlpSpec {
                widths: vec![3, 4, 2],
                embed: None,
                conv: None,
                activation: Activation::Gelu,
                layer_norm: true,
                dropout: 0.0,
            },
            7,
        )
    }

    fn info() -> StudentInfo {
        StudentInfo {
            kind: "mlp".into(),
            widths: vec![3, 4, 2],
            embed: None,
            conv: None,
            activation: "gelu".into(),
            layer_norm: true,
            input: "x".into(),
            dataset_id: "d".into(),
            teacher_sha256: "t".into(),
            standardized: false,
            input_norm: None,
        }
    }

    #[test]
    fn safetensors_bytes_are_canonical_and_read_back_by_the_format_crate() {
        let m = mlp();
        let mut meta = metadata(&info()).unwrap();
        for k in ["b", "a", "z", "format"] {
            meta.insert(k.into(), k.into());
        }
        let a = to_safetensors(&m.tensors(), meta.clone()).unwrap();
        // Another insertion order (another hash order) gives the same bytes.
        let mut other: HashMap<String, String> = HashMap::new();
        let mut keys: Vec<_> = meta.keys().cloned().collect();
        keys.reverse();
        for k in keys {
            other.insert(k.clone(), meta[&k].clone());
        }
        assert_eq!(a, to_safetensors(&m.tensors(), other).unwrap());
        let n = u64::from_le_bytes(a[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 8, 0, "data 8-byte aligned");
        let st = safetensors::SafeTensors::deserialize(&a).unwrap();
        for (name, shape, v) in m.tensors() {
            let t = st.tensor(&name).unwrap();
            assert_eq!(t.shape(), &shape[..]);
            let back: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(back, v);
        }
    }

    #[test]
    fn the_pytorch_layout_loads_back_to_the_same_student() {
        let dir = tempfile::tempdir().unwrap();
        let (m, info) = (mlp(), info());
        let torch = dir.path().join("t.safetensors");
        save_torch(&torch, &m, &info).unwrap();
        let (tensors, meta) = read_safetensors(&torch).unwrap();
        assert_eq!(meta["format"], "pt");
        // nn.Linear holds (out, in): layer 0 maps 3 inputs to 4.
        let (shape, w) = &tensors["layers.0.weight"];
        assert_eq!(shape, &[4, 3]);
        assert_eq!(
            w[1],
            m.layers[0].w[[1, 0]],
            "row 0 of (out, in) is column 0 of (in, out)"
        );
        assert!(tensors.contains_key("norms.0.weight"));
        let (back, _) = load(&torch, None).unwrap();
        assert_eq!(back.mlp, m);
        let internal = dir.path().join("i.safetensors");
        save(&internal, &m, &info).unwrap();
        assert_eq!(load(&internal, None).unwrap().0.mlp, m);
        // With an embedding (2 ids of a 5-id vocabulary, 3 values each): both layouts.
        let e = Mlp::new(
            MlpSpec {
                widths: vec![6, 4, 2],
                embed: Some(crate::mlp::EmbedSpec { vocab: 5, dim: 3 }),
                ..m.spec.clone()
            },
            3,
        );
        let info = StudentInfo {
            widths: vec![6, 4, 2],
            embed: Some([5, 3]),
            ..info
        };
        save_torch(&torch, &e, &info).unwrap();
        assert_eq!(
            read_safetensors(&torch).unwrap().0["embed.weight"].0,
            [5, 3]
        );
        assert_eq!(load(&torch, None).unwrap().0.mlp, e);
        save(&internal, &e, &info).unwrap();
        assert_eq!(load(&internal, None).unwrap().0.mlp, e);
        // A description whose convolutions do not feed the first layer is refused, not run.
        let wrong = StudentInfo {
            conv: Some(crate::conv::ConvSpec {
                image: [1, 4, 4],
                channels: vec![2],
                channels_last: false,
            }),
            embed: None,
            ..info
        };
        save(&internal, &e, &wrong).unwrap();
        let err = load(&internal, None).unwrap_err().to_string();
        assert!(
            err.contains("do not fit a first layer of 6 inputs"),
            "{err}"
        );
    }
}
