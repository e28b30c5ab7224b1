//! Per-feature input standardisation, as a PyTorch user would apply it before an MLP:
//! `(x − mean) / std` with the mean and the (population) standard deviation of every input value
//! over the training rows, fitted in one streaming pass (Chan's merge of per-batch moments, in
//! f64, so the order of batches does not matter beyond rounding).
//!
//! Training feeds standardised inputs; at the end the transform is folded into the first linear
//! layer (`W' = diag(1/std)·W`, `b' = b − (mean/std)·W`), so the saved student, its ONNX export
//! and PyTorch all take the raw inputs the teacher took. A value that is constant over the
//! training rows (std below [`MIN_STD`]) is only centred, as scikit-learn's `StandardScaler`
//! does, so a padding byte never divides by zero.

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::mlp::Linear;

/// Standard deviations below this are treated as 1 (the value is constant in training).
pub const MIN_STD: f64 = 1e-6;

/// The mean and standard deviation of every input value over the training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputNorm {
    /// Mean per input value.
    pub mean: Vec<f32>,
    /// Standard deviation per input value (1 where the value was constant).
    pub std: Vec<f32>,
    /// Training rows the statistics were computed over.
    pub rows: u64,
}

/// Running moments of a stream of batches (Chan et al.'s parallel update).
#[derive(Debug, Clone)]
pub struct Moments {
    n: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Moments {
    /// Empty moments over `width` values per row.
    pub fn new(width: usize) -> Moments {
        Moments {
            n: 0,
            mean: vec![0.0; width],
            m2: vec![0.0; width],
        }
    }

    /// Adds the rows of one batch.
    pub fn add(&mut self, x: ArrayView2<f32>) {
        let nb = x.nrows() as u64;
        if nb == 0 {
            return;
        }
        let fb = nb as f64;
        let mut bmean = vec![0.0f64; self.mean.len()];
        for row in x.axis_iter(Axis(0)) {
            for (m, &v) in bmean.iter_mut().zip(row.iter()) {
                *m += v as f64;
            }
        }
        bmean.iter_mut().for_each(|m| *m /= fb);
        let mut bm2 = vec![0.0f64; self.mean.len()];
        for row in x.axis_iter(Axis(0)) {
            for ((s, &m), &v) in bm2.iter_mut().zip(&bmean).zip(row.iter()) {
                let d = v as f64 - m;
                *s += d * d;
            }
        }
        let (na, n) = (self.n as f64, (self.n + nb) as f64);
        for i in 0..self.mean.len() {
            let delta = bmean[i] - self.mean[i];
            self.mean[i] += delta * fb / n;
            self.m2[i] += bm2[i] + delta * delta * na * fb / n;
        }
        self.n += nb;
    }

    /// The standardisation these moments give (None before any row).
    pub fn finish(&self) -> Option<InputNorm> {
        if self.n == 0 {
            return None;
        }
        let n = self.n as f64;
        Some(InputNorm {
            mean: self.mean.iter().map(|&m| m as f32).collect(),
            std: self
                .m2
                .iter()
                .map(|&s| {
                    let sd = (s / n).max(0.0).sqrt();
                    if sd < MIN_STD { 1.0 } else { sd as f32 }
                })
                .collect(),
            rows: self.n,
        })
    }
}

impl InputNorm {
    /// Standardises a batch of rows in place.
    pub fn apply(&self, x: &mut Array2<f32>) {
        for mut row in x.axis_iter_mut(Axis(0)) {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }

    /// Folds the standardisation into `first` (the layer that reads the inputs), so that it
    /// computes on raw inputs what it computed on standardised ones.
    pub fn fold_into(&self, first: &mut Linear) {
        let mut shift = vec![0.0f64; first.b.len()];
        for (i, mut row) in first.w.axis_iter_mut(Axis(0)).enumerate() {
            let (m, s) = (self.mean[i] as f64, self.std[i] as f64);
            for (acc, w) in shift.iter_mut().zip(row.iter_mut()) {
                let scaled = *w as f64 / s;
                *acc += m * scaled;
                *w = scaled as f32;
            }
        }
        for (b, s) in first.b.iter_mut().zip(shift) {
            *b = (*b as f64 - s) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn data(rows: usize, width: usize, seed: u64) -> Array2<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((rows, width), |(_, j)| match j {
            0 => r.random_range(0..=255) as f32,
            1 => 7.0,
            _ => r.random_range(-3.0..3.0f32) * j as f32 + 100.0,
        })
    }

    /// Two-pass statistics, computed the plain way (the oracle).
    fn two_pass(x: &Array2<f32>) -> (Vec<f64>, Vec<f64>) {
        let n = x.nrows() as f64;
        let mean: Vec<f64> = (0..x.ncols())
            .map(|j| x.column(j).iter().map(|&v| v as f64).sum::<f64>() / n)
            .collect();
        let sd = (0..x.ncols())
            .map(|j| {
                (x.column(j)
                    .iter()
                    .map(|&v| (v as f64 - mean[j]).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt()
            })
            .collect();
        (mean, sd)
    }

    #[test]
    fn streaming_moments_equal_two_pass_statistics_whatever_the_batches() {
        let x = data(1000, 5, 1);
        let (mean, sd) = two_pass(&x);
        for bs in [1, 7, 64, 1000] {
            let mut m = Moments::new(5);
            for chunk in x.axis_chunks_iter(Axis(0), bs) {
                m.add(chunk);
            }
            let norm = m.finish().unwrap();
            assert_eq!(norm.rows, 1000);
            for j in 0..5 {
                assert!((norm.mean[j] as f64 - mean[j]).abs() < 1e-4 * mean[j].abs().max(1.0));
                let want = if sd[j] < MIN_STD { 1.0 } else { sd[j] };
                assert!(
                    (norm.std[j] as f64 - want).abs() < 1e-5 * want,
                    "batch {bs} column {j}: {} vs {want}",
                    norm.std[j]
                );
            }
            // The constant column is centred only.
            assert_eq!(norm.std[1], 1.0);
            assert_eq!(norm.mean[1], 7.0);
        }
        assert!(Moments::new(3).finish().is_none());
    }

    #[test]
    fn standardised_columns_have_zero_mean_and_unit_variance() {
        let mut x = data(500, 4, 2);
        let mut m = Moments::new(4);
        m.add(x.view());
        let norm = m.finish().unwrap();
        norm.apply(&mut x);
        let (mean, sd) = two_pass(&x);
        for j in [0, 2, 3] {
            assert!(mean[j].abs() < 1e-4, "{mean:?}");
            assert!((sd[j] - 1.0).abs() < 1e-4, "{sd:?}");
        }
        assert!(x.column(1).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_folded_layer_computes_on_raw_inputs_what_the_layer_computed_on_standardised_ones() {
        let raw = data(64, 6, 3);
        let mut m = Moments::new(6);
        m.add(raw.view());
        let norm = m.finish().unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut layer = Linear::glorot(6, 3, &mut rng);
        layer.b = ndarray::Array1::from(vec![0.5, -1.0, 2.0]);
        let mut std_x = raw.clone();
        norm.apply(&mut std_x);
        let want = layer.forward(std_x.view());
        let mut folded = layer.clone();
        norm.fold_into(&mut folded);
        let got = folded.forward(raw.view());
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
