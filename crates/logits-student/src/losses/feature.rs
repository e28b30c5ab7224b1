//! Feature-based losses between the student's (projected) features and stored teacher
//! features, row-major `rows × dim` slices, with gradients with respect to the student side.
//! The teacher side is a constant; the learned projection (FitNets' regressor) is a student
//! layer whose backward pass takes the gradient returned here.

/// FitNets hint / hidden MSE: Σ (s − t)² / (rows · dim). Gradient added into `grad` × `w`.
pub fn mse(s: &[f32], t: &[f32], w: f64, grad: &mut [f32]) -> f64 {
    let n = s.len().max(1) as f64;
    let mut l = 0.0;
    for ((a, b), g) in s.iter().zip(t).zip(grad.iter_mut()) {
        let d = (*a - *b) as f64;
        l += d * d;
        *g += (w * 2.0 * d / n) as f32;
    }
    l / n
}

/// Cosine loss: mean over rows of 1 − cos(s_r, t_r). Gradient added into `grad` × `w`.
pub fn cosine(s: &[f32], t: &[f32], dim: usize, w: f64, grad: &mut [f32]) -> f64 {
    let rows = s.len() / dim.max(1);
    let mut l = 0.0;
    for r in 0..rows {
        let (a, b) = (&s[r * dim..(r + 1) * dim], &t[r * dim..(r + 1) * dim]);
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na = a
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        let nb = b
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        let c = dot / (na * nb);
        l += 1.0 - c;
        // d cos / d a = b/(|a||b|) − cos · a/|a|²
        for (j, g) in grad[r * dim..(r + 1) * dim].iter_mut().enumerate() {
            let d = b[j] as f64 / (na * nb) - c * a[j] as f64 / (na * na);
            *g -= (w * d / rows.max(1) as f64) as f32;
        }
    }
    l / rows.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(f: &dyn Fn(&[f32], &mut [f32]) -> f64, s: &[f32]) {
        let mut g = vec![0.0f32; s.len()];
        f(s, &mut g);
        for m in 0..s.len() {
            let h = 1e-3f32;
            let (mut a, mut b) = (s.to_vec(), s.to_vec());
            a[m] += h;
            b[m] -= h;
            let mut sc = vec![0.0f32; s.len()];
            let d = (f(&a, &mut sc) - f(&b, &mut sc)) / (2.0 * h as f64);
            assert!(
                (d - g[m] as f64).abs() < 1e-4 * (1.0 + d.abs()),
                "{m}: fd {d} vs {}",
                g[m]
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let s: Vec<f32> = (0..12)
            .map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3 + 0.1)
            .collect();
        let t: Vec<f32> = (0..12).map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.2).collect();
        fd(&|x, g| mse(x, &t, 1.0, g), &s);
        fd(&|x, g| cosine(x, &t, 4, 1.0, g), &s);
        let mut g = vec![0.0; 12];
        assert!(cosine(&t, &t, 4, 1.0, &mut g).abs() < 1e-12);
        assert!(mse(&t, &t, 1.0, &mut g).abs() < 1e-12);
    }
}
