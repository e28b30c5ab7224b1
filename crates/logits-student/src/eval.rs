//! Evaluation against the teacher, from the dataset alone: top-1 agreement, KL(teacher‖student)
//! from the stored targets, accuracy and expected calibration error of both sides when labels
//! are stored (the teacher's top-1 and its exact probability are in the targets), and a
//! confusion summary; plus the student's size and single-row latency through ndarray.

use std::time::Instant;

use ndarray::Array2;
use serde::Serialize;

use crate::data::Batch;
use crate::losses::response::softmax;
use crate::mlp::Mlp;
use crate::params::Params;

/// Bins of the expected calibration error (the common choice since Guo et al. 2017).
pub const ECE_BINS: usize = 15;

/// What evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Rows evaluated.
    pub rows: usize,
    /// Share of rows where the student's top-1 is the teacher's.
    pub agreement: Option<f64>,
    /// Mean KL(teacher‖student) at T = 1 over the kept ids plus the exact tail bucket.
    pub kl: Option<f64>,
    /// Student accuracy against labels.
    pub accuracy: Option<f64>,
    /// Teacher accuracy against labels (its stored top-1).
    pub teacher_accuracy: Option<f64>,
    /// Student expected calibration error.
    pub ece: Option<f64>,
    /// Teacher expected calibration error (from its stored top-1 probability).
    pub teacher_ece: Option<f64>,
    /// Confusion counts, `confusion[label][prediction]`, when labels are stored.
    pub confusion: Option<Vec<Vec<u64>>>,
}

/// KL(teacher‖student) of one position over the kept ids plus the exact tail bucket, from
/// the student's probabilities `q` and the teacher's kept log-probs; also the teacher's tail
/// mass.
pub fn kl_tail_bucket(q: &[f64], ids: &[u32], lp: &[f64]) -> (f64, f64) {
    let (mut kl, mut qk, mut pk) = (0.0, 0.0, 0.0);
    for (&i, &l) in ids.iter().zip(lp) {
        let qi = q.get(i as usize).copied().unwrap_or(0.0).max(1e-30);
        kl += l.exp() * (l - qi.ln());
        qk += qi;
        pk += l.exp();
    }
    let (pt, qt) = ((1.0 - pk).max(0.0), (1.0 - qk).max(1e-30));
    if pt > 0.0 {
        kl += pt * (pt.ln() - qt.ln());
    }
    (kl, pt)
}

/// Expected calibration error of (confidence, correct) pairs.
pub fn ece(pairs: &[(f64, bool)]) -> f64 {
    let mut bins = vec![(0usize, 0.0f64, 0.0f64); ECE_BINS];
    for &(c, ok) in pairs {
        let b = ((c * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += c;
        bins[b].2 += ok as u8 as f64;
    }
    let n = pairs.len().max(1) as f64;
    bins.iter()
        .filter(|b| b.0 > 0)
        .map(|&(k, conf, acc)| (k as f64 / n) * ((acc - conf) / k as f64).abs())
        .sum()
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Evaluates student logits (`rows × classes`) against a batch's stored targets and labels.
pub fn evaluate(logits: &Array2<f32>, b: &Batch) -> Evaluation {
    let rows = b.len();
    let classes = logits.ncols();
    let preds: Vec<usize> = logits
        .rows()
        .into_iter()
        .map(|r| argmax(&r.to_vec()))
        .collect();
    let probs: Vec<Vec<f64>> = logits
        .rows()
        .into_iter()
        .map(|r| softmax(&r.to_vec(), 1.0))
        .collect();
    let mut e = Evaluation {
        rows,
        agreement: None,
        kl: None,
        accuracy: None,
        teacher_accuracy: None,
        ece: None,
        teacher_ece: None,
        confusion: None,
    };
    let teacher_top: Option<Vec<(usize, f64)>> = b.teacher.as_ref().map(|t| {
        (0..rows)
            .map(|r| {
                let lp = t.logprobs(r, 1.0).unwrap_or_default();
                (
                    t.ids(r).first().copied().unwrap_or(0) as usize,
                    lp.first().map_or(0.0, |l| l.exp()),
                )
            })
            .collect()
    });
    if let (Some(t), Some(top)) = (&b.teacher, &teacher_top) {
        let agree = preds.iter().zip(top).filter(|(p, t)| **p == t.0).count();
        e.agreement = Some(agree as f64 / rows.max(1) as f64);
        let mut kl = 0.0;
        for (r, q) in probs.iter().enumerate() {
            let lp = t.logprobs(r, 1.0).unwrap_or_default();
            kl += kl_tail_bucket(q, t.ids(r), &lp).0;
        }
        e.kl = Some(kl / rows.max(1) as f64);
    }
    if let Some(labels) = &b.labels {
        let mut conf = vec![vec![0u64; classes]; classes];
        let (mut n, mut ok, mut tok) = (0usize, 0usize, 0usize);
        let (mut sp, mut tp) = (Vec::new(), Vec::new());
        for (r, l) in labels.iter().enumerate() {
            let Some(l) = l.map(|l| l as usize).filter(|&l| l < classes) else {
                continue;
            };
            n += 1;
            ok += (preds[r] == l) as usize;
            conf[l][preds[r]] += 1;
            sp.push((probs[r][preds[r]], preds[r] == l));
            if let Some(top) = &teacher_top {
                tok += (top[r].0 == l) as usize;
                tp.push((top[r].1, top[r].0 == l));
            }
        }
        if n > 0 {
            e.accuracy = Some(ok as f64 / n as f64);
            e.ece = Some(ece(&sp));
            e.confusion = Some(conf);
            if teacher_top.is_some() {
                e.teacher_accuracy = Some(tok as f64 / n as f64);
                e.teacher_ece = Some(ece(&tp));
            }
        }
    }
    e
}

/// Median single-row latency of `mlp.predict` in microseconds over `iters` runs.
pub fn latency_us(mlp: &Mlp, row: &Array2<f32>, iters: usize) -> f64 {
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(mlp.predict(row.view()));
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Parameter count and f32 bytes of an MLP.
pub fn size(mlp: &Mlp) -> (usize, usize) {
    let n = mlp.parameter_count();
    (n, n * 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_of_perfect_and_overconfident() {
        assert_eq!(ece(&[(1.0, true), (1.0, true)]), 0.0);
        let e = ece(&[(0.9, false), (0.9, true)]);
        assert!((e - 0.4).abs() < 1e-12, "{e}");
    }
}
