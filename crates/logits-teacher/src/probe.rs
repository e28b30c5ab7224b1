//! Shapes nobody declared, seen: one run of the teacher on a synthetic batch (zeros, ones for
//! masks; batch 1 and every other symbolic dimension 8) with every activation exposed, so that
//! `inspect-model` can show the shapes exporters leave out (torch.onnx's TorchScript exporter,
//! tf2onnx and paddle2onnx write no value_info for internal tensors). A build probes with the
//! corpus's first row instead, where the shapes are the real ones.

use std::collections::HashMap;

use logits_onnx::model::{Dim, ElemType};

use crate::error::{Result, TeacherError};
use crate::teacher::TeacherModel;

/// Models larger than this are not probed (a second copy of the model in memory, and every
/// activation kept alive for the run).
pub const PROBE_MAX_BYTES: u64 = 1 << 30;

/// The size a probe gives each symbolic dimension other than the batch.
pub const PROBE_SYMBOLIC: usize = 8;

/// The shapes of every activation and output of `m` on one synthetic row, by tensor name.
pub fn probe_shapes(m: &TeacherModel) -> Result<HashMap<String, Vec<i64>>> {
    let exposed = TeacherModel::open(&m.path, &m.activations)?;
    let mut session = exposed.session(1)?;
    let err = |message: String| TeacherError::Session {
        model: m.path.clone(),
        message,
    };
    let mut inputs: Vec<(String, ort::session::SessionInputValue<'static>)> = Vec::new();
    for i in &m.summary.inputs {
        let dims: Vec<usize> = i
            .shape
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .map(|(k, d)| match d {
                Dim::Fixed(n) if *n > 0 => *n as usize,
                _ if k == 0 => 1,
                _ => PROBE_SYMBOLIC,
            })
            .collect();
        let n: usize = dims.iter().product();
        let one = i.name.to_lowercase().contains("mask");
        fn value<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
            dims: &[usize],
            v: Vec<T>,
        ) -> std::result::Result<ort::session::SessionInputValue<'static>, String> {
            let a = ndarray::ArrayD::from_shape_vec(dims.to_vec(), v).map_err(|e| e.to_string())?;
            Ok(ort::value::Tensor::from_array(a)
                .map_err(|e| e.to_string())?
                .into())
        }
        let ints = |x: i64| vec![if one { 1 } else { x }; n];
        let v = match i.elem {
            Some(ElemType::Float32) => value(&dims, vec![if one { 1.0f32 } else { 0.0 }; n]),
            Some(ElemType::Float64) => value(&dims, vec![if one { 1.0f64 } else { 0.0 }; n]),
            Some(ElemType::Float16) => value(
                &dims,
                vec![half::f16::from_f32(f32::from(u8::from(one))); n],
            ),
            Some(ElemType::BFloat16) => value(
                &dims,
                vec![half::bf16::from_f32(f32::from(u8::from(one))); n],
            ),
            Some(ElemType::Int64) => value(&dims, ints(0)),
            Some(ElemType::Int32) => value(&dims, ints(0).into_iter().map(|x| x as i32).collect()),
            Some(ElemType::Int16) => value(&dims, ints(0).into_iter().map(|x| x as i16).collect()),
            Some(ElemType::Int8) => value(&dims, ints(0).into_iter().map(|x| x as i8).collect()),
            Some(ElemType::Uint8) => value(&dims, ints(0).into_iter().map(|x| x as u8).collect()),
            Some(ElemType::Uint16) => value(&dims, ints(0).into_iter().map(|x| x as u16).collect()),
            Some(ElemType::Uint32) => value(&dims, ints(0).into_iter().map(|x| x as u32).collect()),
            Some(ElemType::Bool) => value(&dims, vec![one; n]),
            other => Err(format!(
                "input {:?} is {}: no synthetic value for it",
                i.name,
                other.map_or("undeclared".into(), |e| e.name())
            )),
        }
        .map_err(err)?;
        inputs.push((i.name.clone(), v));
    }
    let out = session.run(inputs).map_err(|e| err(e.to_string()))?;
    Ok(out
        .iter()
        .filter_map(|(name, v)| Some((name.to_string(), v.dtype().tensor_shape()?.to_vec())))
        .collect())
}
