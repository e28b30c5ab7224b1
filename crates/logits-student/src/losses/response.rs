//! Response-based losses for one position (one example, or one token), from stored top-k
//! targets, with gradients with respect to the student's logits.
//!
//! The teacher side is what the dataset stores: the kept ids, their exact log-probs at
//! temperature T (stored logit / T − stored logZ_T) and therefore the exact tail mass. The
//! student side is the full softmax of its logits at T. Two conventions for the unkept ids
//! (see `../shared/KD-REFERENCE.md` and schemas/FORMAT.md):
//! - [`TopKMode::TailBucket`]: both distributions get one extra "rest" class holding the mass
//!   of every unkept id (TRL's `loss_add_tail`, DistillKit's `symmetric_uniform`);
//! - [`TopKMode::Renormalize`]: both are renormalised over the kept ids (TRL without tail).
//!
//! Every divergence is written as a function L(P, Q̄) of the teacher and student bucket
//! distributions, with its partial derivatives g = ∂L/∂Q̄; the chain rule through the softmax
//! is shared ([`backprop`]), so each loss is a few lines and one derivation.
//!
//! Conventions: Hinton KD = T²·KL(P‖Q); reverse KL and generalised JSD are not scaled by T²
//! (TRL, Liger); batch reduction ("batchmean": mean over positions) is the caller's.

/// How the ids the teacher did not keep are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopKMode {
    /// Kept ids plus one "rest" class on both sides (exact teacher tail).
    TailBucket,
    /// Both sides renormalised over the kept ids.
    Renormalize,
}

/// Which divergence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Divergence {
    /// T²·KL(P‖Q) (Hinton).
    ForwardKl,
    /// KL(Q‖P), mode-seeking.
    ReverseKl,
    /// Generalised Jensen–Shannon with weight β on P: β·KL(P‖M) + (1−β)·KL(Q‖M),
    /// M = βP + (1−β)Q; β = 0 is forward KL and β = 1 reverse KL (TRL's special cases).
    Jsd(f64),
}

/// The teacher's side of one position at temperature T.
#[derive(Debug, Clone, Copy)]
pub struct TeacherTargets<'a> {
    /// Kept ids.
    pub ids: &'a [u32],
    /// Exact teacher log-probs of those ids at T.
    pub logprobs: &'a [f64],
}

/// Softmax of `s / t` in f64, stable.
pub fn softmax(s: &[f32], t: f64) -> Vec<f64> {
    let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = s.iter().map(|&x| ((x as f64 - m) / t).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

const TINY: f64 = 1e-30;

/// Loss and gradient (∂L/∂s, written into `grad`, accumulated with weight `w`) of one position.
pub fn response_loss(
    s: &[f32],
    teacher: TeacherTargets<'_>,
    t: f64,
    div: Divergence,
    mode: TopKMode,
    w: f64,
    grad: &mut [f32],
) -> f64 {
    response_loss_q(&softmax(s, t), teacher, t, div, mode, w, grad)
}

/// [`response_loss`] from the student's softmax at T already computed (`q = softmax(s/T)`),
/// so a caller that also needs it (cross-entropy at T = 1) pays for it once.
pub fn response_loss_q(
    q: &[f64],
    teacher: TeacherTargets<'_>,
    t: f64,
    div: Divergence,
    mode: TopKMode,
    w: f64,
    grad: &mut [f32],
) -> f64 {
    let k = teacher.ids.len();
    let qk: Vec<f64> = teacher.ids.iter().map(|&i| q[i as usize]).collect();
    // The student's rest mass summed over the unkept ids, not as 1 − Σ kept: when the kept
    // ids hold nearly all the mass, the difference is rounding noise and its reciprocal (in
    // the KL gradient) would swamp everything else.
    let q_rest = rest_mass(q, teacher.ids);
    let pk: Vec<f64> = teacher.logprobs.iter().map(|&l| l.exp()).collect();
    let (p, qb) = match mode {
        TopKMode::TailBucket => {
            let mut p = pk.clone();
            p.push((1.0 - pk.iter().sum::<f64>()).max(0.0));
            let mut qb = qk.clone();
            qb.push(q_rest.max(TINY));
            (p, qb)
        }
        TopKMode::Renormalize => {
            let (sp, sq): (f64, f64) = (pk.iter().sum(), qk.iter().sum());
            (
                pk.iter().map(|x| x / sp).collect(),
                qk.iter().map(|x| (x / sq).max(TINY)).collect(),
            )
        }
    };
    let (loss, g) = divergence(&p, &qb, div);
    let scale = if div == Divergence::ForwardKl {
        t * t
    } else {
        1.0
    };
    // Bucket gradient g over Q̄ → gradient over the kept student probabilities q_i (and the
    // rest, for the tail bucket).
    let (gk, g_rest): (Vec<f64>, f64) = match mode {
        TopKMode::TailBucket => (g[..k].to_vec(), g[k]),
        TopKMode::Renormalize => {
            let sq: f64 = qk.iter().sum::<f64>().max(TINY);
            let mean: f64 = g.iter().zip(&qb).map(|(a, b)| a * b).sum();
            (g.iter().map(|gi| (gi - mean) / sq).collect(), 0.0)
        }
    };
    backprop(q, teacher.ids, &gk, g_rest, q_rest, t, w * scale, grad);
    loss * scale
}

/// Σ of `q` over the ids not in `ids` (one pass, no vocabulary-sized buffer: `ids` is short).
fn rest_mass(q: &[f64], ids: &[u32]) -> f64 {
    let mut kept: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
    kept.sort_unstable();
    kept.dedup();
    let mut next = kept.iter().peekable();
    let mut sum = 0.0;
    for (m, &v) in q.iter().enumerate() {
        if next.peek() == Some(&&m) {
            next.next();
        } else {
            sum += v;
        }
    }
    sum
}

/// Chain rule through q = softmax(s/T) for a loss whose gradient is `gk[i]` on the kept
/// student probabilities q_{ids[i]} and `g_rest` on the rest mass q_rest (every other id):
/// with G_m = g_m for kept m and g_rest otherwise,
/// ∂L/∂s_m = (1/T)·q_m·(G_m − Σ_j q_j·G_j), where Σ_j q_j·G_j = Σ_kept q_i·g_i + q_rest·g_rest.
/// Written this way no two large terms cancel (g_rest can be huge when q_rest is tiny, but
/// q_rest·g_rest stays finite).
#[allow(clippy::too_many_arguments)]
pub fn backprop(
    q: &[f64],
    ids: &[u32],
    gk: &[f64],
    g_rest: f64,
    q_rest: f64,
    t: f64,
    w: f64,
    grad: &mut [f32],
) {
    let mean: f64 = ids
        .iter()
        .zip(gk)
        .map(|(&i, g)| g * q[i as usize])
        .sum::<f64>()
        + q_rest * g_rest;
    let mut kept: Vec<(usize, f64)> = ids
        .iter()
        .map(|&i| i as usize)
        .zip(gk.iter().copied())
        .collect();
    kept.sort_unstable_by_key(|&(i, _)| i);
    let mut next = kept.iter().peekable();
    let c = w / t;
    for (m, (gm, &qm)) in grad.iter_mut().zip(q).enumerate() {
        let mut gg = g_rest;
        while let Some(&&(i, g)) = next.peek() {
            if i > m {
                break;
            }
            if i == m {
                gg = g;
            }
            next.next();
        }
        *gm += (c * qm * (gg - mean)) as f32;
    }
}

/// A divergence between bucket distributions and its gradient with respect to `q`.
pub fn divergence(p: &[f64], q: &[f64], div: Divergence) -> (f64, Vec<f64>) {
    let lg = |x: f64| x.max(TINY).ln();
    match div {
        Divergence::ForwardKl | Divergence::Jsd(0.0) => {
            let l = p
                .iter()
                .zip(q)
                .map(|(&a, &b)| if a > 0.0 { a * (lg(a) - lg(b)) } else { 0.0 })
                .sum();
            (
                l,
                p.iter().zip(q).map(|(&a, &b)| -a / b.max(TINY)).collect(),
            )
        }
        Divergence::ReverseKl | Divergence::Jsd(1.0) => {
            let l = p.iter().zip(q).map(|(&a, &b)| b * (lg(b) - lg(a))).sum();
            (
                l,
                p.iter()
                    .zip(q)
                    .map(|(&a, &b)| lg(b) + 1.0 - lg(a))
                    .collect(),
            )
        }
        Divergence::Jsd(beta) => {
            let m: Vec<f64> = p
                .iter()
                .zip(q)
                .map(|(&a, &b)| beta * a + (1.0 - beta) * b)
                .collect();
            let kl = |x: &[f64]| -> f64 {
                x.iter()
                    .zip(&m)
                    .map(|(&a, &mm)| if a > 0.0 { a * (lg(a) - lg(mm)) } else { 0.0 })
                    .sum()
            };
            let l = beta * kl(p) + (1.0 - beta) * kl(q);
            (
                l,
                q.iter()
                    .zip(&m)
                    .map(|(&b, &mm)| (1.0 - beta) * (lg(b) - lg(mm)))
                    .collect(),
            )
        }
    }
}

/// Cross-entropy of un-tempered student logits against a hard label, with its gradient.
pub fn cross_entropy(s: &[f32], label: usize, w: f64, grad: &mut [f32]) -> f64 {
    cross_entropy_q(&softmax(s, 1.0), label, w, grad)
}

/// [`cross_entropy`] from `q = softmax(s)` already computed.
pub fn cross_entropy_q(q: &[f64], label: usize, w: f64, grad: &mut [f32]) -> f64 {
    for (m, gm) in grad.iter_mut().enumerate() {
        *gm += (w * (q[m] - if m == label { 1.0 } else { 0.0 })) as f32;
    }
    -q[label].max(TINY).ln()
}

/// RS-KD sampled targets: cross-entropy of softmax(s/T) against the empirical distribution of
/// the sampled ids (counts / draws), scaled by T²; an unbiased estimate of the forward-KL
/// gradient up to the teacher's entropy.
pub fn sampled_kd(s: &[f32], ids: &[u32], counts: &[u32], t: f64, w: f64, grad: &mut [f32]) -> f64 {
    let q = softmax(s, t);
    let n: f64 = counts.iter().map(|&c| c as f64).sum::<f64>().max(1.0);
    let mut loss = 0.0;
    let scale = w * t;
    for (m, gm) in grad.iter_mut().enumerate() {
        *gm += (scale * q[m]) as f32;
    }
    for (&i, &c) in ids.iter().zip(counts) {
        // The reader refuses ids outside the class axis; a caller passing one anyway gets it
        // ignored rather than an out-of-bounds panic.
        let (Some(&qi), Some(gi)) = (q.get(i as usize), grad.get_mut(i as usize)) else {
            continue;
        };
        let pi = c as f64 / n;
        loss -= pi * qi.max(TINY).ln();
        *gi -= (scale * pi) as f32;
    }
    loss * t * t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (Vec<f32>, Vec<u32>, Vec<f64>) {
        let s: Vec<f32> = (0..12)
            .map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.7 + i as f32 * 0.05)
            .collect();
        // A teacher over 12 classes; keep its top 4 at T = 2.
        let z: Vec<f64> = (0..12).map(|i| ((i * 5 % 7) as f64) * 0.9 - 1.0).collect();
        let t = 2.0;
        let lz = z.iter().map(|x| (x / t).exp()).sum::<f64>().ln();
        let mut order: Vec<usize> = (0..12).collect();
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
        let ids: Vec<u32> = order[..4].iter().map(|&i| i as u32).collect();
        let lp = ids.iter().map(|&i| z[i as usize] / t - lz).collect();
        (s, ids, lp)
    }

    fn check_fd(div: Divergence, mode: TopKMode) {
        let (s, ids, lp) = fixture();
        let t = 2.0;
        let tt = TeacherTargets {
            ids: &ids,
            logprobs: &lp,
        };
        let mut g = vec![0.0f32; s.len()];
        response_loss(&s, tt, t, div, mode, 1.0, &mut g);
        for m in 0..s.len() {
            let h = 1e-3f32;
            let (mut a, mut b) = (s.clone(), s.clone());
            a[m] += h;
            b[m] -= h;
            let mut scratch = vec![0.0f32; s.len()];
            let la = response_loss(&a, tt, t, div, mode, 1.0, &mut scratch);
            let lb = response_loss(&b, tt, t, div, mode, 1.0, &mut scratch);
            let fd = (la - lb) / (2.0 * h as f64);
            assert!(
                (fd - g[m] as f64).abs() < 2e-4 * (1.0 + fd.abs()),
                "{div:?} {mode:?} logit {m}: fd {fd} vs {}",
                g[m]
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for mode in [TopKMode::TailBucket, TopKMode::Renormalize] {
            for div in [
                Divergence::ForwardKl,
                Divergence::ReverseKl,
                Divergence::Jsd(0.5),
                Divergence::Jsd(0.1),
                Divergence::Jsd(0.0),
                Divergence::Jsd(1.0),
            ] {
                check_fd(div, mode);
            }
        }
    }

    #[test]
    fn ce_and_sampled_gradients() {
        let (s, _, _) = fixture();
        let ids = [1u32, 4, 9];
        let counts = [5u32, 3, 2];
        for which in 0..2 {
            let f = |x: &[f32], g: &mut [f32]| {
                if which == 0 {
                    cross_entropy(x, 3, 1.0, g)
                } else {
                    sampled_kd(x, &ids, &counts, 2.0, 1.0, g)
                }
            };
            let mut g = vec![0.0f32; s.len()];
            f(&s, &mut g);
            for m in 0..s.len() {
                let h = 1e-3f32;
                let (mut a, mut b) = (s.clone(), s.clone());
                a[m] += h;
                b[m] -= h;
                let mut sc = vec![0.0f32; s.len()];
                let fd = (f(&a, &mut sc) - f(&b, &mut sc)) / (2.0 * h as f64);
                assert!(
                    (fd - g[m] as f64).abs() < 2e-4 * (1.0 + fd.abs()),
                    "{which} {m}: {fd} vs {}",
                    g[m]
                );
            }
        }
    }

    /// Every class kept (k = axis) but the stored log-probs, rounded through f32, sum to
    /// 1 − 1e-7: the teacher's "tail" is rounding noise and the student's is exactly 0. The
    /// gradient must still be the closed form of forward KL at T = 1, q_m − p_m (the rest
    /// bucket is constant). Computing the student's rest as 1 − Σ kept made it ~1e23 here.
    #[test]
    fn tail_bucket_gradient_is_stable_when_every_id_is_kept() {
        let z: Vec<f64> = vec![16.0, 0.5, -0.2, -1.5, -2.8, -3.5, -5.1, -6.7, -6.9, -16.0];
        let lz = z.iter().map(|x| x.exp()).sum::<f64>().ln();
        let ids: Vec<u32> = (0..10).collect();
        let lp: Vec<f64> = z.iter().map(|&v| ((v - lz) as f32) as f64 - 1e-7).collect();
        let s: Vec<f32> = vec![12.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -14.0];
        let mut g = vec![0.0f32; 10];
        let tt = TeacherTargets {
            ids: &ids,
            logprobs: &lp,
        };
        response_loss(
            &s,
            tt,
            1.0,
            Divergence::ForwardKl,
            TopKMode::TailBucket,
            1.0,
            &mut g,
        );
        let q = softmax(&s, 1.0);
        for m in 0..10 {
            let want = q[m] - lp[m].exp();
            assert!(
                (g[m] as f64 - want).abs() < 1e-6,
                "logit {m}: {} vs {want}",
                g[m]
            );
        }
    }

    #[test]
    fn kd_is_zero_when_student_matches_teacher() {
        let (_, ids, lp) = fixture();
        let z: Vec<f32> = (0..12)
            .map(|i| (((i * 5 % 7) as f64) * 0.9 - 1.0) as f32)
            .collect();
        let mut g = vec![0.0f32; 12];
        let l = response_loss(
            &z,
            TeacherTargets {
                ids: &ids,
                logprobs: &lp,
            },
            2.0,
            Divergence::ForwardKl,
            TopKMode::TailBucket,
            1.0,
            &mut g,
        );
        assert!(l.abs() < 1e-9, "{l}");
        assert!(g.iter().all(|x| x.abs() < 1e-6));
    }
}
