//! Feeding the teacher: how each model input is made from corpus rows. Tensor corpora: each
//! column converted to the input's element type (with a range check naming the row) and shaped
//! per row from nested lists, the column's declared shape, or the model's own dims; text
//! corpora: token windows padded to the longest of the batch, with the mask, position and
//! token-type inputs a transformer takes.

use std::path::PathBuf;

use logits_format::manifest::DType;
use logits_onnx::model::{Dim as ODim, ElemType};

use super::plan::{Payload, Source};
use crate::corpus::{CorpusBatch, Flat};
use crate::error::{Result, TeacherError};
use crate::teacher::TeacherModel;
use crate::text::Window;

/// An input value for a session run.
pub(super) type SessionInput = ort::session::SessionInputValue<'static>;

/// How a language model's inputs are fed from token windows.
#[derive(Debug, Clone)]
pub(super) struct TextPlan {
    /// The token-id input.
    pub ids: String,
    /// The attention-mask input, if the model takes one.
    pub mask: Option<String>,
    /// The position-ids input, if the model takes one.
    pub positions: Option<String>,
    /// Inputs fed zeros (token types).
    pub zeros: Vec<String>,
    /// The padding id.
    pub pad: i64,
    /// Inputs the model takes as int32 (the rest are int64).
    pub int32: Vec<String>,
}

/// One model input as the pipeline feeds it from a tensor corpus.
#[derive(Debug, Clone)]
pub(super) struct InputPlan {
    /// The input's name.
    pub name: String,
    /// The model's element type for this input (the corpus is converted to it).
    pub elem: ElemType,
    /// Float inputs are read and stored as f32, integer and bool ones as i64 (exact for every
    /// accepted type).
    pub float: bool,
    /// The model's dims after the batch axis, when declared.
    pub dims: Option<Vec<ODim>>,
    /// Made from `input_ids` rather than read from the corpus.
    pub derived: Option<Derived>,
    /// How the shards store it (and `sha256-v1` hashes it): the cheapest exact type.
    pub stored: DType,
}

/// A transformer input that follows from `input_ids` when the corpus has no column for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Derived {
    /// `token_type_ids`: zeros (one segment).
    Zeros,
    /// `attention_mask`: ones (every token real).
    Ones,
    /// `position_ids`: 0, 1, 2, ... along each row.
    Positions,
}

impl Derived {
    /// The inputs that can be derived, by name.
    pub(super) const NAMES: [&str; 3] = ["token_type_ids", "attention_mask", "position_ids"];

    fn of(name: &str) -> Option<Derived> {
        match name {
            "token_type_ids" => Some(Derived::Zeros),
            "attention_mask" => Some(Derived::Ones),
            "position_ids" => Some(Derived::Positions),
            _ => None,
        }
    }

    /// Its manifest name.
    pub(super) fn describe(self) -> &'static str {
        match self {
            Derived::Zeros => "zeros",
            Derived::Ones => "ones",
            Derived::Positions => "positions",
        }
    }
}

/// How inputs are made from corpus rows, for either corpus kind.
#[derive(Debug, Clone)]
pub(super) struct Feed {
    /// The model file (for messages).
    pub model: PathBuf,
    /// Tensor corpora: one plan per model input.
    pub inputs: Vec<InputPlan>,
    /// Text corpora: how windows become inputs.
    pub text: Option<TextPlan>,
}

/// An error about a corpus row that does not fit the model.
pub(super) fn mismatch(model: &std::path::Path, row: u64, msg: String) -> TeacherError {
    TeacherError::Options(format!("{}: row {row}: {msg}", model.display()))
}

impl Feed {
    /// Plans the inputs of `teacher` for `corpus`.
    pub(super) fn new(teacher: &TeacherModel, corpus: &Source) -> Result<Feed> {
        let model = teacher.path.display().to_string();
        let names: Vec<String> = teacher
            .summary
            .inputs
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let mut feed = Feed {
            model: teacher.path.clone(),
            inputs: vec![],
            text: None,
        };
        if let Source::Text(tc) = corpus {
            let is_int = |e: Option<ElemType>| matches!(e, Some(ElemType::Int64 | ElemType::Int32));
            let ids = teacher
                .summary
                .inputs
                .iter()
                .find(|i| i.name == "input_ids")
                .or_else(|| teacher.summary.inputs.iter().find(|i| is_int(i.elem)))
                .ok_or_else(|| {
                    TeacherError::Options(format!(
                        "{model}: no int64 or int32 input to take token ids (inputs: {})",
                        names.join(", ")
                    ))
                })?;
            let mut plan = TextPlan {
                ids: ids.name.clone(),
                mask: None,
                positions: None,
                zeros: vec![],
                pad: tc.pad_id() as i64,
                int32: teacher
                    .summary
                    .inputs
                    .iter()
                    .filter(|i| i.elem == Some(ElemType::Int32))
                    .map(|i| i.name.clone())
                    .collect(),
            };
            for i in &teacher.summary.inputs {
                if i.name == ids.name {
                    continue;
                }
                if !is_int(i.elem) {
                    return Err(TeacherError::Options(format!(
                        "{model}: input {:?} is {} and cannot be fed from text (token models take int64 or int32 inputs)",
                        i.name,
                        i.describe()
                    )));
                }
                match i.name.as_str() {
                    "attention_mask" => plan.mask = Some(i.name.clone()),
                    "position_ids" => plan.positions = Some(i.name.clone()),
                    "token_type_ids" => plan.zeros.push(i.name.clone()),
                    other => {
                        return Err(TeacherError::Options(format!(
                            "{model}: input {other:?} cannot be fed from text (known: input_ids, attention_mask, position_ids, token_type_ids)"
                        )));
                    }
                }
            }
            feed.text = Some(plan);
            return Ok(feed);
        }
        for i in &teacher.summary.inputs {
            let elem = i.elem.ok_or_else(|| {
                TeacherError::Options(format!("{model}: input {:?} has no declared type", i.name))
            })?;
            let float = match elem {
                ElemType::Float32 | ElemType::Float64 | ElemType::Float16 | ElemType::BFloat16 => {
                    true
                }
                ElemType::Int64
                | ElemType::Int32
                | ElemType::Uint32
                | ElemType::Uint16
                | ElemType::Int16
                | ElemType::Int8
                | ElemType::Uint8
                | ElemType::Bool => false,
                other => {
                    return Err(TeacherError::Options(format!(
                        "{model}: input {:?} is {}; logits-build feeds float16, bfloat16, float32, float64, int64, int32, int16, uint32, uint16, int8, uint8 and bool inputs",
                        i.name,
                        other.name()
                    )));
                }
            };
            let mapped = match corpus {
                Source::Tensor(c) => c.mapping.iter().any(|(m, _)| *m == i.name),
                Source::Text(_) => true,
            };
            feed.inputs.push(InputPlan {
                name: i.name.clone(),
                elem,
                float,
                dims: i
                    .shape
                    .as_ref()
                    .map(|s| s.iter().skip(1).cloned().collect()),
                derived: if mapped { None } else { Derived::of(&i.name) },
                stored: super::draft::dtype_of(elem)
                    .map_or(DType::Float32, DType::stored_for_input),
            });
        }
        Ok(feed)
    }

    /// The teacher's inputs for a batch of either kind.
    pub(super) fn inputs_for(&self, batch: &Payload) -> Result<Vec<(String, SessionInput)>> {
        match batch {
            Payload::Tensor(b) => self.tensor_inputs(b),
            Payload::Text(w) => self.text_inputs(w),
        }
    }

    /// The teacher's inputs for a batch of corpus rows of one shape, checked against the
    /// model's shapes.
    fn tensor_inputs(&self, b: &CorpusBatch) -> Result<Vec<(String, SessionInput)>> {
        let n = b.row_ids.len();
        let mut values: Vec<(String, SessionInput)> = Vec::new();
        for ip in &self.inputs {
            if let Some(d) = ip.derived {
                // Shaped like the ids (every row of a batch has one length).
                let (o, _) = b.inputs.get("input_ids").ok_or_else(|| {
                    TeacherError::Pipeline("derived input without input_ids".into())
                })?;
                let l = o[1] - o[0];
                let v: Vec<i64> = match d {
                    Derived::Zeros => vec![0; n * l],
                    Derived::Ones => vec![1; n * l],
                    Derived::Positions => (0..n).flat_map(|_| 0..l as i64).collect(),
                };
                let offsets: Vec<usize> = (0..=n).map(|r| r * l).collect();
                let flat = Flat::I64(v);
                values.push((
                    ip.name.clone(),
                    self.convert(ip, b, vec![n, l], &offsets, &flat)?,
                ));
                continue;
            }
            let (offsets, flat) = b.inputs.get(&ip.name).ok_or_else(|| {
                TeacherError::Pipeline(format!("input {:?} missing from the batch", ip.name))
            })?;
            let shapes = b.shapes.get(&ip.name);
            let row = ip
                .row_shape(offsets[1] - offsets[0], shapes.map(|s| s[0].as_slice()))
                .map_err(|m| mismatch(&self.model, b.row_ids[0], m))?;
            let want: usize = row.iter().product();
            for r in 1..n {
                let len = offsets[r + 1] - offsets[r];
                let other = shapes.is_some_and(|s| s[r] != s[0]);
                if len != want || other {
                    return Err(mismatch(
                        &self.model,
                        b.row_ids[r],
                        format!(
                            "input {:?} has {len} values where the rows before it in the batch have shape {row:?}",
                            ip.name
                        ),
                    ));
                }
            }
            let dims: Vec<usize> = std::iter::once(n).chain(row).collect();
            values.push((ip.name.clone(), self.convert(ip, b, dims, offsets, flat)?));
        }
        Ok(values)
    }

    /// One input's values in the model's element type.
    fn convert(
        &self,
        ip: &InputPlan,
        b: &CorpusBatch,
        dims: Vec<usize>,
        offsets: &[usize],
        flat: &Flat,
    ) -> Result<SessionInput> {
        match (flat, ip.float) {
            (Flat::F32(v), true) if ip.elem == ElemType::Float64 => {
                self.tensor(dims, v.iter().map(|&x| x as f64).collect())
            }
            (Flat::F32(v), true) if ip.elem == ElemType::Float16 => {
                // float16 holds magnitudes up to 65504: a larger value would become infinite.
                if let Some(at) = v.iter().position(|x| x.is_finite() && x.abs() > 65504.0) {
                    let r = offsets.partition_point(|&o| o <= at).saturating_sub(1);
                    return Err(mismatch(
                        &self.model,
                        b.row_ids[r],
                        format!(
                            "input {:?}: value {} is outside float16's range (|x| <= 65504)",
                            ip.name, v[at]
                        ),
                    ));
                }
                self.tensor(dims, v.iter().map(|&x| half::f16::from_f32(x)).collect())
            }
            (Flat::F32(v), true) if ip.elem == ElemType::BFloat16 => {
                self.tensor(dims, v.iter().map(|&x| half::bf16::from_f32(x)).collect())
            }
            (Flat::F32(v), true) => self.tensor(dims, v.clone()),
            (Flat::I64(v), false) => {
                // The corpus holds i64; the model's narrower type is checked value by value,
                // so an out-of-range value names its row instead of wrapping silently.
                let narrow = |lo: i64, hi: i64| -> Result<()> {
                    match v.iter().position(|&x| x < lo || x > hi) {
                        None => Ok(()),
                        Some(at) => {
                            let r = offsets.partition_point(|&o| o <= at).saturating_sub(1);
                            Err(mismatch(
                                &self.model,
                                b.row_ids[r],
                                format!(
                                    "input {:?}: value {} is outside {}'s range {lo}..={hi}",
                                    ip.name,
                                    v[at],
                                    ip.elem.name()
                                ),
                            ))
                        }
                    }
                };
                match ip.elem {
                    ElemType::Int32 => {
                        narrow(i32::MIN as i64, i32::MAX as i64)?;
                        self.tensor(dims, v.iter().map(|&x| x as i32).collect())
                    }
                    ElemType::Uint32 => {
                        narrow(0, u32::MAX as i64)?;
                        self.tensor(dims, v.iter().map(|&x| x as u32).collect())
                    }
                    ElemType::Int16 => {
                        narrow(i16::MIN as i64, i16::MAX as i64)?;
                        self.tensor(dims, v.iter().map(|&x| x as i16).collect())
                    }
                    ElemType::Uint16 => {
                        narrow(0, u16::MAX as i64)?;
                        self.tensor(dims, v.iter().map(|&x| x as u16).collect())
                    }
                    ElemType::Int8 => {
                        narrow(i8::MIN as i64, i8::MAX as i64)?;
                        self.tensor(dims, v.iter().map(|&x| x as i8).collect())
                    }
                    ElemType::Uint8 => {
                        narrow(0, u8::MAX as i64)?;
                        self.tensor(dims, v.iter().map(|&x| x as u8).collect())
                    }
                    ElemType::Bool => {
                        narrow(0, 1)?;
                        self.tensor(dims, v.iter().map(|&x| x != 0).collect())
                    }
                    _ => self.tensor(dims, v.clone()),
                }
            }
            (flat, _) => {
                let holds = if matches!(flat, Flat::I64(_)) {
                    "integers"
                } else {
                    "floats"
                };
                Err(mismatch(
                    &self.model,
                    b.row_ids[0],
                    format!(
                        "input {:?} is {} in the model but the corpus column holds {holds}",
                        ip.name,
                        ip.elem.name()
                    ),
                ))
            }
        }
    }

    /// A session input of `dims` holding `values` (any element type ONNX Runtime takes).
    fn tensor<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        &self,
        dims: Vec<usize>,
        values: Vec<T>,
    ) -> Result<SessionInput> {
        let a = ndarray::ArrayD::from_shape_vec(dims, values)
            .map_err(|e| TeacherError::Pipeline(e.to_string()))?;
        Ok(ort::value::Tensor::from_array(a)
            .map_err(|e| TeacherError::Session {
                model: self.model.clone(),
                message: e.to_string(),
            })?
            .into())
    }

    /// The teacher's inputs for a batch of token windows, padded to the longest.
    fn text_inputs(&self, windows: &[Window]) -> Result<Vec<(String, SessionInput)>> {
        let tp = self
            .text
            .as_ref()
            .ok_or_else(|| TeacherError::Pipeline("text batch without a text plan".into()))?;
        let (n, l) = (windows.len(), padded_len(windows));
        let mut ids = vec![tp.pad; n * l];
        let mut mask = vec![0i64; n * l];
        for (r, w) in windows.iter().enumerate() {
            for (p, &t) in w.ids.iter().enumerate() {
                ids[r * l + p] = t as i64;
                mask[r * l + p] = 1;
            }
        }
        let shaped = |name: &str, v: Vec<i64>| -> Result<(String, SessionInput)> {
            let t = if tp.int32.iter().any(|i| i == name) {
                // Token ids, masks and positions are small: exact in int32.
                self.tensor(vec![n, l], v.into_iter().map(|x| x as i32).collect())?
            } else {
                self.tensor(vec![n, l], v)?
            };
            Ok((name.to_string(), t))
        };
        let mut values = vec![shaped(&tp.ids, ids)?];
        if let Some(m) = &tp.mask {
            values.push(shaped(m, mask)?);
        }
        if let Some(p) = &tp.positions {
            values.push(shaped(p, (0..n).flat_map(|_| 0..l as i64).collect())?);
        }
        for z in &tp.zeros {
            values.push(shaped(z, vec![0i64; n * l])?);
        }
        Ok(values)
    }
}

/// The length a batch of windows is padded to: the longest.
pub(super) fn padded_len(windows: &[Window]) -> usize {
    windows
        .iter()
        .map(|w| w.ids.len())
        .max()
        .unwrap_or(0)
        .max(1)
}

impl InputPlan {
    /// The per-row shape to feed a row of `len` values whose shape the corpus knows
    /// (`known`) or not: the corpus's shape, else the model's dims (one symbolic dim is
    /// solved from the length), else a flat row. Checked against the model's declared dims;
    /// the message names the input, the expected and the found shape.
    pub(super) fn row_shape(
        &self,
        len: usize,
        known: Option<&[usize]>,
    ) -> std::result::Result<Vec<usize>, String> {
        let show = |m: &[ODim]| {
            let d: Vec<String> = m.iter().map(|d| d.to_string()).collect();
            format!("[{}]", d.join(", "))
        };
        let shape = match (known, &self.dims) {
            (Some(s), _) => s.to_vec(),
            (None, None) => vec![len],
            (None, Some(m)) => {
                let fixed: usize = m
                    .iter()
                    .map(|d| match d {
                        ODim::Fixed(n) if *n > 0 => *n as usize,
                        _ => 1,
                    })
                    .product();
                let open = m
                    .iter()
                    .filter(|d| !matches!(d, ODim::Fixed(n) if *n > 0))
                    .count();
                match open {
                    0 => m
                        .iter()
                        .map(|d| match d {
                            ODim::Fixed(n) => *n as usize,
                            _ => 1,
                        })
                        .collect(),
                    1 if len.is_multiple_of(fixed) => m
                        .iter()
                        .map(|d| match d {
                            ODim::Fixed(n) if *n > 0 => *n as usize,
                            _ => len / fixed,
                        })
                        .collect(),
                    _ if m.len() == 1 => vec![len],
                    _ => {
                        return Err(format!(
                            "input {:?} takes {} per row, but its corpus column is a flat list of {len} values with no declared shape: give it with --input-shape {}=D1,D2,..., or store the column as nested lists or with a `shape` field metadata",
                            self.name,
                            show(m),
                            self.name
                        ));
                    }
                }
            }
        };
        let holds: usize = shape.iter().product();
        if holds != len {
            return Err(format!(
                "input {:?} has {len} values, but its shape {shape:?} holds {holds}",
                self.name
            ));
        }
        if let Some(m) = &self.dims {
            let fits = m.len() == shape.len()
                && m.iter()
                    .zip(&shape)
                    .all(|(d, &s)| !matches!(d, ODim::Fixed(n) if *n > 0 && *n as usize != s));
            if !fits {
                return Err(format!(
                    "input {:?}: the model takes {} per row, the corpus row has shape {shape:?}",
                    self.name,
                    show(m)
                ));
            }
        }
        Ok(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(dims: Option<Vec<ODim>>) -> InputPlan {
        InputPlan {
            name: "x".into(),
            elem: ElemType::Float32,
            float: true,
            dims,
            derived: None,
            stored: DType::Float32,
        }
    }

    #[test]
    fn row_shapes_come_from_the_corpus_or_the_model() {
        let f = ODim::Fixed;
        let w = || ODim::Symbolic("width".into());
        let img = input(Some(vec![f(3), f(4), f(5)]));
        assert_eq!(img.row_shape(60, None), Ok(vec![3, 4, 5]));
        assert_eq!(img.row_shape(60, Some(&[3, 4, 5])), Ok(vec![3, 4, 5]));
        let e = img.row_shape(60, Some(&[4, 5, 3])).unwrap_err();
        assert!(e.contains("[3, 4, 5]") && e.contains("[4, 5, 3]"), "{e}");
        assert!(img.row_shape(59, None).unwrap_err().contains("59 values"));
        // One symbolic dim is solved from the length.
        let open = input(Some(vec![f(3), f(4), w()]));
        assert_eq!(open.row_shape(36, None), Ok(vec![3, 4, 3]));
        // Two cannot be.
        let two = input(Some(vec![w(), f(4), w()]));
        assert!(
            two.row_shape(36, None)
                .unwrap_err()
                .contains("--input-shape x=")
        );
        assert_eq!(two.row_shape(36, Some(&[3, 4, 3])), Ok(vec![3, 4, 3]));
        // A flat input and an undeclared one take the row as it is.
        assert_eq!(input(Some(vec![w()])).row_shape(7, None), Ok(vec![7]));
        assert_eq!(input(None).row_shape(7, None), Ok(vec![7]));
    }
}
