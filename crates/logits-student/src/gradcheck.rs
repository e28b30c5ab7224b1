//! Test support: every parameter's analytic gradient against central finite differences, for
//! any model with named parameters ([`Params`]). Used by the students' gradient tests.

use crate::params::Params;

/// Checks `g` (the gradient of `loss` at `m`, same shape) tensor by tensor. A coordinate whose
/// differences at two step sizes disagree sits next to a kink (ReLU, max-pooling) and is
/// skipped; at most a tenth may be. Buffers (`input.*`) must have no gradient at all.
pub(crate) fn check<M: Params + Clone>(m: &M, g: &M, loss: impl Fn(&M) -> f64, what: &str) {
    let analytic: Vec<Vec<f32>> = g
        .tensors()
        .into_iter()
        .map(|(_, _, v)| v.to_vec())
        .collect();
    let names: Vec<String> = m.tensors().into_iter().map(|(n, _, _)| n).collect();
    let (mut checked, mut skipped) = (0, 0);
    for (ti, name) in names.iter().enumerate() {
        if name.starts_with("input.") {
            assert!(analytic[ti].iter().all(|v| *v == 0.0), "{what} {name}");
            continue;
        }
        for (k, &an) in analytic[ti].iter().enumerate() {
            let fd = |h: f32| {
                let (mut a, mut b) = (m.clone(), m.clone());
                a.tensors_mut()[ti][k] += h;
                b.tensors_mut()[ti][k] -= h;
                (loss(&a) - loss(&b)) / (2.0 * h as f64)
            };
            let (coarse, fine) = (fd(2e-3), fd(5e-4));
            if (coarse - fine).abs() > 1e-2 * (1.0 + fine.abs()) {
                skipped += 1;
                continue;
            }
            let an = an as f64;
            assert!(
                (coarse - an).abs() < 2e-2 * (1.0 + coarse.abs()),
                "{what} {name}[{k}]: fd {coarse} vs {an}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "{what}: nothing checked");
    assert!(
        skipped * 10 <= checked + skipped,
        "{what}: {skipped} kinks of {}",
        checked + skipped
    );
}
