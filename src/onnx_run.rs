//! Running one f32 input through an ONNX file with ONNX Runtime, for checking an exported
//! student against its ndarray forward and for timing models on single rows.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::{Array2, ArrayD, IxDyn};

/// An ONNX Runtime session over one model file: one f32 input, or token ids with an optional
/// `attention_mask`.
pub struct OnnxModel {
    session: ort::session::Session,
    input: String,
    has_mask: bool,
    path: std::path::PathBuf,
}

impl OnnxModel {
    /// Opens `path` (one intra-op thread: the single-row latency a small server sees).
    pub fn open(path: &Path) -> Result<OnnxModel> {
        let m = logits_teacher::TeacherModel::open(path, &[])?;
        let input = m
            .summary
            .inputs
            .first()
            .map(|i| i.name.clone())
            .with_context(|| format!("{}: the model has no inputs", path.display()))?;
        let has_mask = m.summary.inputs.iter().any(|i| i.name == "attention_mask");
        Ok(OnnxModel {
            session: m.session(1)?,
            input,
            has_mask,
            path: path.to_path_buf(),
        })
    }

    /// Runs `x` (`rows × width`; reshaped to `row_shape` per row when given) and returns the
    /// first output as `rows × rest`.
    pub fn run(&mut self, x: &Array2<f32>, row_shape: Option<&[usize]>) -> Result<Array2<f32>> {
        let rows = x.nrows();
        let mut dims = vec![rows];
        match row_shape {
            Some(s) => dims.extend(s),
            None => dims.push(x.ncols()),
        }
        let a = ArrayD::from_shape_vec(IxDyn(&dims), x.iter().copied().collect())
            .with_context(|| format!("{}: input shape {dims:?}", self.path.display()))?;
        let (shape, data) = self.first_output(ort::value::Tensor::from_array(a)?.into())?;
        let cols = shape.iter().skip(1).product::<i64>().max(1) as usize;
        Ok(Array2::from_shape_vec((rows, cols), data)?)
    }

    /// Runs the inputs and returns the first output's shape and values.
    fn first_output_of(
        &mut self,
        inputs: Vec<(String, ort::session::SessionInputValue<'_>)>,
    ) -> Result<(Vec<i64>, Vec<f32>)> {
        let out = self
            .session
            .run(inputs)
            .with_context(|| format!("{}: run failed", self.path.display()))?;
        let (shape, data) = out[0]
            .try_extract_tensor::<f32>()
            .with_context(|| format!("{}: first output is not f32", self.path.display()))?;
        Ok((shape.iter().copied().collect(), data.to_vec()))
    }

    /// Runs one input value and returns the first output's shape and values.
    fn first_output(
        &mut self,
        v: ort::session::SessionInputValue<'_>,
    ) -> Result<(Vec<i64>, Vec<f32>)> {
        self.first_output_of(vec![(self.input.clone(), v)])
    }

    /// Runs int64 token ids (`rows × length`, no padding: a model with an `attention_mask`
    /// input gets all ones) and returns the first output, flattened, with its shape.
    pub fn run_ids(&mut self, ids: &ndarray::Array2<i64>) -> Result<(Vec<i64>, Vec<f32>)> {
        let ones = ndarray::Array2::<i64>::ones(ids.dim());
        self.run_ids_masked(ids, &ones)
    }

    /// Runs int64 token ids with their `attention_mask` (1 token, 0 padding; ignored by a
    /// model without that input) and returns the first output, flattened, with its shape.
    pub fn run_ids_masked(
        &mut self,
        ids: &ndarray::Array2<i64>,
        mask: &ndarray::Array2<i64>,
    ) -> Result<(Vec<i64>, Vec<f32>)> {
        let mut inputs = vec![(
            self.input.clone(),
            ort::session::SessionInputValue::from(ort::value::Tensor::from_array(ids.clone())?),
        )];
        if self.has_mask {
            inputs.push((
                "attention_mask".to_string(),
                ort::value::Tensor::from_array(mask.clone())?.into(),
            ));
        }
        self.first_output_of(inputs)
    }

    /// Median single-row latency in microseconds over `iters` runs (after warm-up).
    pub fn latency_us(
        &mut self,
        row: &Array2<f32>,
        row_shape: Option<&[usize]>,
        iters: usize,
    ) -> Result<f64> {
        for _ in 0..10 {
            self.run(row, row_shape)?;
        }
        let mut t = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            let s = Instant::now();
            self.run(row, row_shape)?;
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    }
}

/// The largest difference between exported-model outputs and the reference forward, scaled
/// as |got − want| / max(1, |want|) (logits of magnitude 10 agree to float rounding at ~1e-6
/// relative, not 1e-6 absolute). Any non-finite value on either side gives NaN, which no
/// tolerance accepts.
pub fn max_scaled_diff(pairs: impl Iterator<Item = (f32, f32)>) -> f64 {
    let mut worst = 0.0f64;
    for (got, want) in pairs {
        if !got.is_finite() || !want.is_finite() {
            return f64::NAN;
        }
        let d = (got as f64 - want as f64).abs() / (want.abs() as f64).max(1.0);
        worst = worst.max(d);
    }
    worst
}

#[cfg(test)]
mod tests {
    #[test]
    fn scaled_diff_is_relative_and_nan_is_never_ok() {
        let d = super::max_scaled_diff([(10.00002f32, 10.0f32), (0.5, 0.5)].into_iter());
        assert!(d < 1e-5 && d > 1e-6, "{d}");
        assert!(super::max_scaled_diff([(f32::NAN, f32::NAN)].into_iter()).is_nan());
        assert!(super::max_scaled_diff([(1.0, f32::INFINITY)].into_iter()).is_nan());
    }
}
