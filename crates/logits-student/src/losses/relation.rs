//! Relation-based losses: they compare how the rows of a batch relate to each other on the
//! student's side (a hidden layer, any width) and on the teacher's (a stored feature), so no
//! projection is needed. Formulas follow RepDistiller's implementations (the reference
//! conventions are listed in `../shared/KD-REFERENCE.md`); each returns the loss and
//! ∂L/∂student, computed in f64. The teacher side is a constant.
//!
//! Cost: distance, SP and PKT are O(B²·D); the angle loss is O(B³·D), as in the reference.

use ndarray::{Array2, ArrayView2, Axis};

/// Which relation loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// RKD distance: pairwise Euclidean distances, each side divided by the mean of its
    /// positive entries, smooth-L1 between the sides, mean over B².
    RkdDistance,
    /// RKD angle: cosines of the angle at i between j and k, smooth-L1, mean over B³.
    RkdAngle,
    /// Similarity-preserving: G = F·Fᵀ with G's rows L2-normalised, ‖G_t − G_s‖²_F / B².
    Sp,
    /// Probabilistic knowledge transfer: cosine similarities mapped to (c+1)/2, rows
    /// normalised to sum 1, mean over B² of p_t·ln((p_t+ε)/(p_s+ε)), ε = 1e-7.
    Pkt,
}

impl Relation {
    /// The default weight of the loss in RepDistiller / mdistiller.
    pub fn default_weight(self) -> f64 {
        match self {
            Relation::RkdDistance => 25.0,
            Relation::RkdAngle => 50.0,
            Relation::Sp => 3000.0,
            Relation::Pkt => 30000.0,
        }
    }

    /// Loss and gradient with respect to `s` (`rows × d_s`) against `t` (`rows × d_t`).
    pub fn loss(self, s: ArrayView2<f32>, t: ArrayView2<f32>) -> (f64, Array2<f32>) {
        let s = s.mapv(|x| x as f64);
        let t = t.mapv(|x| x as f64);
        let (l, g) = match self {
            Relation::RkdDistance => rkd_distance(&s, &t),
            Relation::RkdAngle => rkd_angle(&s, &t),
            Relation::Sp => sp(&s, &t),
            Relation::Pkt => pkt(&s, &t),
        };
        (l, g.mapv(|x| x as f32))
    }
}

/// Huber with β = 1 (PyTorch's smooth_l1_loss) and its derivative.
fn smooth_l1(x: f64) -> (f64, f64) {
    if x.abs() < 1.0 {
        (0.5 * x * x, x)
    } else {
        (x.abs() - 0.5, x.signum())
    }
}

/// Pairwise distances with a zero diagonal.
fn pdist(x: &Array2<f64>) -> Array2<f64> {
    let b = x.nrows();
    Array2::from_shape_fn((b, b), |(i, j)| {
        if i == j {
            0.0
        } else {
            x.row(i)
                .iter()
                .zip(x.row(j))
                .map(|(a, c)| (a - c) * (a - c))
                .sum::<f64>()
                .sqrt()
        }
    })
}

/// Distances divided by the mean of the positive ones, with that mean and how many there were.
fn normalised(d: &Array2<f64>) -> (Array2<f64>, f64, usize) {
    let pos: Vec<f64> = d.iter().copied().filter(|&v| v > 0.0).collect();
    let mu = if pos.is_empty() {
        1.0
    } else {
        pos.iter().sum::<f64>() / pos.len() as f64
    };
    (d / mu, mu, pos.len())
}

fn rkd_distance(s: &Array2<f64>, t: &Array2<f64>) -> (f64, Array2<f64>) {
    let b = s.nrows();
    let n2 = (b * b).max(1) as f64;
    let ds = pdist(s);
    let (dsn, mu, npos) = normalised(&ds);
    let (dtn, _, _) = normalised(&pdist(t));
    let mut loss = 0.0;
    let mut g = Array2::<f64>::zeros((b, b));
    for ((gij, a), c) in g.iter_mut().zip(&dsn).zip(&dtn) {
        let (l, d) = smooth_l1(a - c);
        loss += l;
        *gij = d / n2;
    }
    // Through d̂ = d / μ, μ = mean of the positive d.
    let gd: f64 = g.iter().zip(&ds).map(|(a, c)| a * c).sum::<f64>();
    let corr = if npos > 0 {
        gd / (mu * mu * npos as f64)
    } else {
        0.0
    };
    let mut out = Array2::<f64>::zeros(s.raw_dim());
    for i in 0..b {
        for j in 0..b {
            let dij = ds[[i, j]];
            if dij <= 0.0 {
                continue;
            }
            let gij = g[[i, j]] / mu - corr;
            for k in 0..s.ncols() {
                let v = gij * (s[[i, k]] - s[[j, k]]) / dij;
                out[[i, k]] += v;
                out[[j, k]] -= v;
            }
        }
    }
    (loss / n2, out)
}

/// Unit difference vectors e[i][j] = (x_j − x_i)/‖x_j − x_i‖ (zero when i = j), as B
/// matrices `B × D`, with the norms.
fn unit_differences(x: &Array2<f64>) -> (Vec<Array2<f64>>, Array2<f64>) {
    let b = x.nrows();
    let mut norms = Array2::<f64>::zeros((b, b));
    let e = (0..b)
        .map(|i| {
            let mut m = x - &x.row(i);
            for (j, mut r) in m.axis_iter_mut(Axis(0)).enumerate() {
                let n = r.dot(&r).sqrt();
                norms[[i, j]] = n;
                // F.normalize divides by max(‖v‖, 1e-12).
                r /= n.max(1e-12);
            }
            m
        })
        .collect();
    (e, norms)
}

fn rkd_angle(s: &Array2<f64>, t: &Array2<f64>) -> (f64, Array2<f64>) {
    let b = s.nrows();
    let n3 = (b * b * b).max(1) as f64;
    let (es, ns) = unit_differences(s);
    let (et, _) = unit_differences(t);
    let mut loss = 0.0;
    let mut out = Array2::<f64>::zeros(s.raw_dim());
    for i in 0..b {
        let a_s = es[i].dot(&es[i].t());
        let a_t = et[i].dot(&et[i].t());
        let mut g = Array2::<f64>::zeros((b, b));
        for ((gjk, x), y) in g.iter_mut().zip(&a_s).zip(&a_t) {
            let (l, d) = smooth_l1(x - y);
            loss += l;
            *gjk = d / n3;
        }
        // A = E·Eᵀ → ∂L/∂E = (G + Gᵀ)·E; then through e = v/‖v‖, v = x_j − x_i.
        let de = (&g + &g.t()).dot(&es[i]);
        for j in 0..b {
            let n = ns[[i, j]];
            if n <= 1e-12 {
                continue;
            }
            let e = es[i].row(j);
            let gr = de.row(j);
            let proj = e.dot(&gr);
            for k in 0..s.ncols() {
                let dv = (gr[k] - e[k] * proj) / n;
                out[[j, k]] += dv;
                out[[i, k]] -= dv;
            }
        }
    }
    (loss / n3, out)
}

/// Rows of G = X·Xᵀ divided by their L2 norms, with the norms.
fn sp_matrix(x: &Array2<f64>) -> (Array2<f64>, Vec<f64>) {
    let mut g = x.dot(&x.t());
    let mut norms = Vec::with_capacity(g.nrows());
    for mut r in g.axis_iter_mut(Axis(0)) {
        let n = r.dot(&r).sqrt().max(1e-12);
        r /= n;
        norms.push(n);
    }
    (g, norms)
}

fn sp(s: &Array2<f64>, t: &Array2<f64>) -> (f64, Array2<f64>) {
    let b = s.nrows();
    let n2 = (b * b).max(1) as f64;
    let (gs, norms) = sp_matrix(s);
    let (gt, _) = sp_matrix(t);
    let diff = &gt - &gs;
    let loss = diff.iter().map(|x| x * x).sum::<f64>() / n2;
    let h = diff.mapv(|x| -2.0 * x / n2);
    let mut dg = Array2::<f64>::zeros((b, b));
    for i in 0..b {
        let gi = gs.row(i);
        let hi = h.row(i);
        let proj = gi.dot(&hi);
        for j in 0..b {
            dg[[i, j]] = (hi[j] - gi[j] * proj) / norms[i];
        }
    }
    (loss, (&dg + &dg.t()).dot(s))
}

const PKT_EPS: f64 = 1e-7;

/// PKT's row-stochastic similarity matrix, with the normalised rows, their norms and the row
/// sums of (M + 1)/2.
fn pkt_matrix(x: &Array2<f64>) -> (Array2<f64>, Array2<f64>, Vec<f64>, Vec<f64>) {
    let mut n = x.clone();
    let mut norms = Vec::with_capacity(x.nrows());
    for mut r in n.axis_iter_mut(Axis(0)) {
        let a = r.dot(&r).sqrt();
        r /= a + PKT_EPS;
        norms.push(a);
    }
    let mut m = n.dot(&n.t()).mapv(|c| (c + 1.0) / 2.0);
    let mut sums = Vec::with_capacity(m.nrows());
    for mut r in m.axis_iter_mut(Axis(0)) {
        let sum = r.sum();
        r /= sum;
        sums.push(sum);
    }
    (m, n, norms, sums)
}

fn pkt(s: &Array2<f64>, t: &Array2<f64>) -> (f64, Array2<f64>) {
    let b = s.nrows();
    let n2 = (b * b).max(1) as f64;
    let (ps, ns, norms, sums) = pkt_matrix(s);
    let (pt, _, _, _) = pkt_matrix(t);
    let mut loss = 0.0;
    let mut g = Array2::<f64>::zeros((b, b));
    for ((gij, a), c) in g.iter_mut().zip(&pt).zip(&ps) {
        loss += a * ((a + PKT_EPS) / (c + PKT_EPS)).ln();
        *gij = -a / (c + PKT_EPS) / n2;
    }
    // Through the row normalisation, then M' = (M + 1)/2, then M = N·Nᵀ.
    let mut dm = Array2::<f64>::zeros((b, b));
    for i in 0..b {
        let proj: f64 = g.row(i).dot(&ps.row(i));
        for j in 0..b {
            dm[[i, j]] = 0.5 * (g[[i, j]] - proj) / sums[i];
        }
    }
    let dn = (&dm + &dm.t()).dot(&ns);
    let mut out = Array2::<f64>::zeros(s.raw_dim());
    for i in 0..b {
        let a = norms[i];
        let sd: f64 = s.row(i).dot(&dn.row(i));
        for k in 0..s.ncols() {
            let mut v = dn[[i, k]] / (a + PKT_EPS);
            if a > 0.0 {
                v -= s[[i, k]] * sd / (a * (a + PKT_EPS).powi(2));
            }
            out[[i, k]] = v;
        }
    }
    (loss / n2, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(rows: usize, d: usize, seed: f32) -> Array2<f32> {
        Array2::from_shape_fn((rows, d), |(i, j)| {
            ((i * d + j) as f32 * 0.731 + seed).sin() * (1.0 + i as f32 * 0.1)
        })
    }

    #[test]
    fn gradients_match_finite_differences() {
        let s = data(5, 4, 0.3);
        let t = data(5, 7, 1.1);
        for rel in [
            Relation::RkdDistance,
            Relation::RkdAngle,
            Relation::Sp,
            Relation::Pkt,
        ] {
            let (_, g) = rel.loss(s.view(), t.view());
            // Finite differences in f64 on the f64 path, so the check is tight.
            let sd = s.mapv(|x| x as f64);
            let td = t.mapv(|x| x as f64);
            let f = |x: &Array2<f64>| match rel {
                Relation::RkdDistance => rkd_distance(x, &td).0,
                Relation::RkdAngle => rkd_angle(x, &td).0,
                Relation::Sp => sp(x, &td).0,
                Relation::Pkt => pkt(x, &td).0,
            };
            for idx in 0..sd.len() {
                let (i, j) = (idx / sd.ncols(), idx % sd.ncols());
                let h = 1e-6;
                let (mut a, mut b) = (sd.clone(), sd.clone());
                a[[i, j]] += h;
                b[[i, j]] -= h;
                let fd = (f(&a) - f(&b)) / (2.0 * h);
                let an = g[[i, j]] as f64;
                assert!(
                    (fd - an).abs() < 1e-5 * (1.0 + fd.abs()) + 1e-7,
                    "{rel:?} [{i},{j}]: fd {fd} vs {an}"
                );
            }
        }
    }

    #[test]
    fn zero_when_relations_agree() {
        // A scaled copy has the same normalised distances, angles, SP and PKT matrices.
        let t = data(6, 5, 0.7);
        let s = t.mapv(|x| 3.0 * x);
        for rel in [
            Relation::RkdDistance,
            Relation::RkdAngle,
            Relation::Sp,
            Relation::Pkt,
        ] {
            let (l, _) = rel.loss(s.view(), t.view());
            assert!(l.abs() < 1e-10, "{rel:?}: {l}");
        }
        let (l, _) = Relation::Sp.loss(data(6, 5, 2.0).view(), t.view());
        assert!(l > 1e-3);
    }
}
