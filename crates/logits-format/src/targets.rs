//! Computing stored targets from one full row of teacher logits, exactly as the contract
//! defines them: top-k ids by descending logit with ties to the lower id, logZ as the
//! log-sum-exp over the whole axis (accumulated in f64), adaptive k by cumulative mass, and
//! sampled ids with counts. The builder calls these per position; tests and benchmarks use
//! them to make data.

use rand::RngExt;

/// One position's targets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PositionTargets {
    /// Kept ids, by descending logit, ties to the lower id.
    pub ids: Vec<u32>,
    /// Their raw logits.
    pub logits: Vec<f32>,
    /// logZ at T=1.
    pub logz: f32,
    /// logZ at each extra temperature.
    pub logz_temps: Vec<f32>,
}

/// Independent accumulators in the loops over a row: a float sum or maximum carried in one
/// variable is a dependency chain the compiler may not reorder, so it is not vectorised; eight
/// lanes are (SSE2 and AVX alike), and the lanes are combined at the end.
const LANES: usize = 8;

/// exp(x) for x ≤ 0 in f32 within ~2 ulp (the Cephes `expf` polynomial), with no call into
/// libm, so loops over it vectorise. Arguments below -87.3 give exp(-87.3) ≈ 1.2e-38 instead of
/// a denormal: they are relative to the row's maximum, where such terms cannot move a sum that
/// holds exp(0) = 1.
#[inline(always)]
pub fn exp_nonpos(x: f32) -> f32 {
    // round(x·log2 e) by adding 1.5·2^23, whose ulp is 1: no rounding instruction needed.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.max(-87.3);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    // ln 2 split in two so n·ln 2 is exact in f32 for |n| ≤ 126.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    y * f32::from_bits(((ni + 127) as u32) << 23)
}

/// The largest entry of `z`, or `None` when an entry is NaN or infinite (one pass).
pub fn finite_max(z: &[f32]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { finite_max_avx2(z) };
    }
    finite_max_lanes(z)
}

/// [`finite_max_lanes`] in AVX2 intrinsics.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn finite_max_avx2(z: &[f32]) -> Option<f32> {
    use std::arch::x86_64::*;
    let (chunks, rest) = z.as_chunks::<LANES>();
    let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let big = _mm256_set1_ps(f32::MAX);
    for c in chunks {
        // SAFETY: `c` is eight readable f32s; loadu has no alignment requirement.
        let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        mx = _mm256_max_ps(x, mx);
        // |x| <= MAX is false for NaN and both infinities.
        ok = _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_and_ps(x, abs), big));
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` is eight writable f32s.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mx) };
    let mut fine = _mm256_movemask_ps(ok) == 0xff;
    let mut m = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &x in rest {
        m = m.max(x);
        fine &= x.abs() <= f32::MAX;
    }
    fine.then_some(m)
}

#[inline(always)]
fn finite_max_lanes(z: &[f32]) -> Option<f32> {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut ok = [true; LANES];
    // Arrays, not slices: with the length in the type there are no bounds checks to stop
    // the compiler from vectorising.
    let (chunks, rest) = z.as_chunks::<LANES>();
    for c in chunks {
        for j in 0..LANES {
            mx[j] = if c[j] > mx[j] { c[j] } else { mx[j] };
            ok[j] &= c[j].abs() <= f32::MAX;
        }
    }
    for &x in rest {
        mx[0] = if x > mx[0] { x } else { mx[0] };
        ok[0] &= x.abs() <= f32::MAX;
    }
    ok.iter()
        .all(|&o| o)
        .then(|| mx.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)))
}

/// log Σ exp(z_i / t) given the maximum `m` of `z`. The exponentials are taken in f32
/// ([`exp_nonpos`]: arguments are ≤ 0) and summed in f32 lanes over blocks of 256, then in f64:
/// over a 32,000-entry axis this stays within ~1e-6 relative of f64 throughout (checked against
/// an f64 reference in the tests) at a small fraction of its cost.
pub fn logsumexp_from_max(z: &[f32], m: f32, t: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { logsumexp_avx2(z, m, t) };
    }
    logsumexp_lanes(z, m, t)
}

/// [`logsumexp_lanes`] in AVX2 intrinsics: the same operations in the same order per lane
/// (eight lanes in one register), no FMA, so the result is bit-identical to the portable
/// path and workers on different CPUs write identical shards (a test checks the bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn logsumexp_avx2(z: &[f32], m: f32, t: f64) -> f64 {
    use std::arch::x86_64::*;
    if !m.is_finite() {
        return m as f64;
    }
    let inv = (1.0 / t) as f32;
    let (vm, vinv) = (_mm256_set1_ps(m), _mm256_set1_ps(inv));
    let mut s = 0.0f64;
    for block in z.chunks(256) {
        let (chunks, rest) = block.as_chunks::<LANES>();
        let mut acc = _mm256_setzero_ps();
        for c in chunks {
            // SAFETY: `c` is eight readable f32s; loadu has no alignment requirement.
            let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            acc = _mm256_add_ps(
                acc,
                exp_nonpos_avx2(_mm256_mul_ps(_mm256_sub_ps(x, vm), vinv)),
            );
        }
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` is eight writable f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        for &x in rest {
            lanes[0] += exp_nonpos((x - m) * inv);
        }
        s += lanes.iter().map(|&a| a as f64).sum::<f64>();
    }
    m as f64 / t + s.ln()
}

/// [`exp_nonpos`] on eight lanes, operation for operation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn exp_nonpos_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    const MAGIC: f32 = 12_582_912.0;
    let c = _mm256_set1_ps;
    let x = _mm256_max_ps(x, c(-87.3));
    let t = _mm256_add_ps(_mm256_mul_ps(x, c(std::f32::consts::LOG2_E)), c(MAGIC));
    let n = _mm256_sub_ps(t, c(MAGIC));
    let ni = _mm256_sub_epi32(
        _mm256_castps_si256(t),
        _mm256_set1_epi32(MAGIC.to_bits() as i32),
    );
    let r = _mm256_add_ps(
        _mm256_sub_ps(x, _mm256_mul_ps(n, c(0.693_359_4))),
        _mm256_mul_ps(n, c(2.121_944_4e-4)),
    );
    let mut p = _mm256_add_ps(_mm256_mul_ps(c(1.987_569_1e-4), r), c(1.398_199_9e-3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), c(8.333_452e-3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), c(4.166_579_6e-2));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), c(0.166_666_65));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), c(0.5));
    let y = _mm256_add_ps(
        _mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r),
        c(1.0),
    );
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        ni,
        _mm256_set1_epi32(127),
    )));
    _mm256_mul_ps(y, scale)
}

#[inline(always)]
fn logsumexp_lanes(z: &[f32], m: f32, t: f64) -> f64 {
    if !m.is_finite() {
        return m as f64;
    }
    let inv = (1.0 / t) as f32;
    let mut s = 0.0f64;
    for block in z.chunks(256) {
        let mut acc = [0.0f32; LANES];
        let (chunks, rest) = block.as_chunks::<LANES>();
        for c in chunks {
            for j in 0..LANES {
                acc[j] += exp_nonpos((c[j] - m) * inv);
            }
        }
        for &x in rest {
            acc[0] += exp_nonpos((x - m) * inv);
        }
        s += acc.iter().map(|&a| a as f64).sum::<f64>();
    }
    m as f64 / t + s.ln()
}

/// log Σ exp(z_i / t) around the maximum (see [`logsumexp_from_max`]).
pub fn logsumexp(z: &[f32], t: f64) -> f64 {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    logsumexp_from_max(z, m, t)
}

/// The `n` largest entries of `z` as (id, logit), by descending logit, ties to the lower id;
/// `None` when an entry is NaN or infinite. One pass: the finiteness check rides along the
/// candidate scan, so the row is read from memory once for both.
pub fn top_n(z: &[f32], n: usize) -> Option<Vec<(u32, f32)>> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { top_n_avx2(z, n) };
    }
    let mut ok = true;
    let top = top_n_lanes(z, n, |c, th| {
        ok &= c.iter().fold(true, |a, &x| a & (x.abs() <= f32::MAX));
        c.iter().fold(false, |a, &x| a | (x >= th))
    });
    ok.then_some(top).filter(|_| rest_finite(z))
}

/// True when the entries after the last full lane are finite.
fn rest_finite(z: &[f32]) -> bool {
    z.as_chunks::<LANES>().1.iter().all(|x| x.is_finite())
}

/// [`top_n_lanes`] with AVX2: one compare and mask per lane for the scan and the check.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn top_n_avx2(z: &[f32], n: usize) -> Option<Vec<(u32, f32)>> {
    use std::arch::x86_64::*;
    let mut ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let big = _mm256_set1_ps(f32::MAX);
    let top = top_n_lanes(z, n, |c, th| {
        // SAFETY: `c` is eight readable f32s; loadu has no alignment requirement.
        let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        // |x| <= MAX is false for NaN and both infinities.
        ok = _mm256_and_ps(ok, _mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_and_ps(x, abs), big));
        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(th))) != 0
    });
    (_mm256_movemask_ps(ok) == 0xff && rest_finite(z)).then_some(top)
}

/// The candidate-buffer scan of [`top_n`]; `lane(c, t)` is called on every full lane and says
/// whether an entry of it is ≥ t.
#[inline(always)]
fn top_n_lanes(
    z: &[f32],
    n: usize,
    mut lane: impl FnMut(&[f32; LANES], f32) -> bool,
) -> Vec<(u32, f32)> {
    let n = n.min(z.len());
    if n == 0 {
        return Vec::new();
    }
    let before = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // A bounded candidate buffer: cheaper than sorting the whole axis when n << len. Once it
    // is full, whole lanes below the threshold are skipped with one vectorised comparison.
    let mut buf: Vec<(u32, f32)> = Vec::with_capacity(2 * n + 1);
    let mut threshold = f32::NEG_INFINITY;
    let push = |i: usize, x: f32, buf: &mut Vec<(u32, f32)>, threshold: &mut f32| {
        if buf.len() >= n && x < *threshold {
            return;
        }
        buf.push((i as u32, x));
        if buf.len() == 2 * n + 1 {
            buf.select_nth_unstable_by(n - 1, before);
            buf.truncate(n);
            *threshold = buf.iter().fold(f32::INFINITY, |a, e| a.min(e.1));
        }
    };
    let (chunks, rest) = z.as_chunks::<LANES>();
    let mut at = 0;
    for c in chunks {
        let any = lane(c, threshold);
        if any || buf.len() < n {
            for (j, &x) in c.iter().enumerate() {
                push(at + j, x, &mut buf, &mut threshold);
            }
        }
        at += LANES;
    }
    for (j, &x) in rest.iter().enumerate() {
        push(at + j, x, &mut buf, &mut threshold);
    }
    buf.sort_unstable_by(before);
    buf.truncate(n);
    buf
}

/// Targets of one position: `k` entries (or, with `adaptive = Some((min_k, mass))`, the
/// fewest entries from `min_k` up to `k` whose T=1 probability reaches `mass`), logZ at T=1 and
/// at `temps`. Returns `None` if any logit is not finite.
pub fn position_targets(
    z: &[f32],
    k: usize,
    adaptive: Option<(usize, f64)>,
    temps: &[f64],
) -> Option<PositionTargets> {
    // The largest kept logit is the maximum; only without top-k is a separate pass needed.
    let mut top = top_n(z, k)?;
    let m = match top.first() {
        Some(e) => e.1,
        None => finite_max(z)?,
    };
    let logz = logsumexp_from_max(z, m, 1.0);
    if let Some((min_k, mass)) = adaptive {
        let mut cum = 0.0f64;
        let mut keep = top.len();
        for (i, &(_, x)) in top.iter().enumerate() {
            cum += (x as f64 - logz).exp();
            if i + 1 >= min_k && cum >= mass {
                keep = i + 1;
                break;
            }
        }
        top.truncate(keep);
    }
    Some(PositionTargets {
        ids: top.iter().map(|e| e.0).collect(),
        logits: top.iter().map(|e| e.1).collect(),
        logz: logz as f32,
        logz_temps: temps
            .iter()
            .map(|&t| logsumexp_from_max(z, m, t) as f32)
            .collect(),
    })
}

/// Draws `draws` ids from softmax(z / t) and returns the distinct ids ascending with counts.
/// The caller seeds `rng` per row (and position) so results do not depend on batching.
pub fn sample_counts<R: rand::Rng>(
    z: &[f32],
    t: f64,
    draws: u32,
    rng: &mut R,
) -> (Vec<u32>, Vec<u32>) {
    let lz = logsumexp(z, t);
    let mut u: Vec<f64> = (0..draws).map(|_| rng.random::<f64>()).collect();
    u.sort_unstable_by(f64::total_cmp);
    let (mut ids, mut counts) = (Vec::new(), Vec::new());
    let mut cum = 0.0f64;
    let mut j = 0;
    for (i, &x) in z.iter().enumerate() {
        cum += ((x as f64) / t - lz).exp();
        let mut c = 0;
        while j < u.len() && (u[j] < cum || i + 1 == z.len()) {
            c += 1;
            j += 1;
        }
        if c > 0 {
            ids.push(i as u32);
            counts.push(c);
        }
        if j == u.len() {
            break;
        }
    }
    (ids, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn top_n_matches_full_sort_with_ties() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for len in [1usize, 5, 100, 3000] {
            // Few distinct values: many ties.
            let z: Vec<f32> = (0..len)
                .map(|_| (rng.random_range(0..20) as f32) * 0.5)
                .collect();
            for n in [1usize, 3, 32, 200] {
                let mut all: Vec<(u32, f32)> =
                    z.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                all.truncate(n.min(len));
                assert_eq!(top_n(&z, n), Some(all), "len {len} n {n}");
            }
        }
    }

    #[test]
    fn polynomial_exp_is_within_two_ulp_of_f64() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0f32 * i as f32 / 200_000.0;
            let got = exp_nonpos(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert!(exp_nonpos(-1000.0) < 1.3e-38 && exp_nonpos(-1000.0) > 0.0);
    }

    #[test]
    fn finite_max_finds_the_max_and_refuses_nan_and_infinity() {
        let mut z: Vec<f32> = (0..1001)
            .map(|i| ((i * 37) % 1000) as f32 - 500.0)
            .collect();
        assert_eq!(finite_max(&z), Some(499.0));
        z[1000] = 600.0; // in the remainder past the last full lane
        assert_eq!(finite_max(&z), Some(600.0));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut w = z.clone();
            w[513] = bad;
            assert_eq!(finite_max(&w), None);
            assert_eq!(top_n(&w, 5), None);
            w[513] = 0.0;
            w[1000] = bad; // in the remainder
            assert_eq!(top_n(&w, 5), None);
            assert_eq!(finite_max(&w), None);
        }
    }

    #[test]
    fn vector_and_baseline_paths_agree_to_the_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let z: Vec<f32> = (0..32_003)
            .map(|_| rng.random_range(-30.0f32..20.0))
            .collect();
        let m = finite_max_lanes(&z).unwrap();
        assert_eq!(finite_max(&z), Some(m));
        for t in [1.0, 2.0, 4.0] {
            assert_eq!(
                logsumexp_from_max(&z, m, t).to_bits(),
                logsumexp_lanes(&z, m, t).to_bits()
            );
        }
    }

    #[test]
    fn fast_logsumexp_matches_f64() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for len in [1usize, 10, 1000, 32_000, 128_000] {
            let z: Vec<f32> = (0..len).map(|_| rng.random_range(-30.0f32..20.0)).collect();
            for t in [0.5, 1.0, 2.0, 8.0] {
                let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let exact = m / t
                    + z.iter()
                        .map(|&x| ((x as f64 - m) / t).exp())
                        .sum::<f64>()
                        .ln();
                let got = logsumexp(&z, t);
                assert!(
                    (got - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                    "len {len} t {t}: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn logz_and_adaptive_k() {
        let z = [2.0f32, 1.0, 0.0, -1.0];
        let lz = (2f64.exp() + 1f64.exp() + 1.0 + (-1f64).exp()).ln();
        let t = position_targets(&z, 4, None, &[2.0]).unwrap();
        assert!((t.logz as f64 - lz).abs() < 1e-6);
        let lz2 = (1f64.exp() + 0.5f64.exp() + 1.0 + (-0.5f64).exp()).ln();
        assert!((t.logz_temps[0] as f64 - lz2).abs() < 1e-6);
        // p = 0.64, 0.24, 0.09, 0.03: mass 0.8 needs two entries, min_k 3 forces three.
        assert_eq!(
            position_targets(&z, 4, Some((1, 0.8)), &[]).unwrap().ids,
            vec![0, 1]
        );
        assert_eq!(
            position_targets(&z, 4, Some((3, 0.8)), &[]).unwrap().ids,
            vec![0, 1, 2]
        );
        assert!(position_targets(&[1.0, f32::NAN], 1, None, &[]).is_none());
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let z = [3.0f32, 2.0, 0.0, -5.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (ids, counts) = sample_counts(&z, 1.0, 100_000, &mut rng);
        assert_eq!(counts.iter().sum::<u32>(), 100_000);
        let lz = logsumexp(&z, 1.0);
        for (i, c) in ids.iter().zip(&counts) {
            let p = (z[*i as usize] as f64 - lz).exp();
            assert!((*c as f64 / 1e5 - p).abs() < 0.01, "id {i}");
        }
    }
}
