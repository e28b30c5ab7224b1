//! Computing stored targets from one full row of teacher logits, exactly as the contract
//! defines them: top-k ids by descending logit with ties to the lower id, logZ as the
//! log-sum-exp over the whole axis (exponentials in f32 per 256-entry block, blocks combined in
//! f64), adaptive k by cumulative mass, and sampled ids with counts. The builder calls these
//! per position; tests and benchmarks use them to make data.
//!
//! Speed matters here: per token, the builder runs this over every position of a
//! vocabulary-sized output. One pass reads each row once (top-k scan and exponential sums per
//! block while it is in the first-level cache), with AVX-512, AVX2 + FMA and portable paths
//! chosen at run time that give the same bits, so workers on different CPUs write identical
//! shards.

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

/// Lanes of the log-sum-exp accumulators: entry i of each block goes to lane i mod 16, on every
/// code path, so the vector paths (two AVX2 registers, one AVX-512 register) and the portable
/// one add the same numbers in the same order.
const SUM_LANES: usize = 16;

/// Entries per block of the log-sum-exp: lanes are summed in f32 within a block, blocks in f64.
const SUM_BLOCK: usize = 256;

/// 2^(j/8) for j = 0..8, correctly rounded to f32.
const EXP2_EIGHTHS: [u32; 8] = [
    0x3f80_0000,
    0x3f8b_95c2,
    0x3f98_37f0,
    0x3fa5_fed7,
    0x3fb5_04f3,
    0x3fc5_672a,
    0x3fd7_44fd,
    0x3fea_c0c7,
];

/// 8 / ln 2 in f32.
const EIGHT_OVER_LN2: f32 = 11.541_56;
/// ln 2 / 8 split in two (Cody–Waite): the fused multiply-adds take n·C1 exactly.
const LN2_OVER_8_HI: u32 = 0x3db1_7218;
const LN2_OVER_8_LO: u32 = 0xaf82_e308;
/// Adding 1.5·2^23 rounds to an integer (the ulp there is 1): no rounding instruction needed.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// exp(x) for x ≤ 0 in f32 within ~1 ulp, with no call into libm so loops over it vectorise:
/// x = (8e + j)·ln2/8 + r with |r| ≤ ln2/16, exp(x) = 2^e · 2^(j/8) · p(r), p the degree-4
/// Taylor polynomial (error below 1.4e-9 on that interval). Every step is an IEEE operation or
/// a fused multiply-add, so the AVX2 and AVX-512 paths give the same bits. Arguments below -87
/// give exp(-87) ≈ 1.6e-38 instead of a denormal: they are relative to the row's maximum, where
/// such terms cannot move a sum that holds exp(0) = 1.
#[inline(always)]
pub fn exp_nonpos(x: f32) -> f32 {
    let x = x.max(-87.0);
    let t = x.mul_add(EIGHT_OVER_LN2, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    let ni = t.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let r = n.mul_add(-f32::from_bits(LN2_OVER_8_HI), x);
    let r = n.mul_add(-f32::from_bits(LN2_OVER_8_LO), r);
    let p = r
        .mul_add(1.0 / 24.0, 1.0 / 6.0)
        .mul_add(r, 0.5)
        .mul_add(r, 1.0)
        .mul_add(r, 1.0);
    let y = p * f32::from_bits(EXP2_EIGHTHS[(ni & 7) as usize]);
    f32::from_bits((y.to_bits() as i32).wrapping_add((ni >> 3) << 23) as u32)
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
/// ([`exp_nonpos`]: arguments are ≤ 0) and summed in sixteen f32 lanes over blocks of 256, then
/// in f64: over a 32,000-entry axis this stays within ~1e-6 relative of f64 throughout (checked
/// against an f64 reference in the tests) at a small fraction of its cost. The result is the
/// same to the bit on every code path (AVX-512, AVX2 + FMA, portable), so workers on different
/// CPUs write identical shards.
pub fn logsumexp_from_max(z: &[f32], m: f32, t: f64) -> f64 {
    if !m.is_finite() {
        return m as f64;
    }
    let inv = (1.0 / t) as f32;
    let nmi = -(m * inv);
    let s: f64 = z.chunks(SUM_BLOCK).map(|b| block_sum(b, inv, nmi)).sum();
    m as f64 / t + s.ln()
}

/// Asks the CPU to bring `block` into its second-level cache (a hint; no-op off x86-64).
#[inline(always)]
fn prefetch(block: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in block.chunks(16) {
        // SAFETY: prefetching is a hint that never faults; the address is inside `block`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = block;
}

/// Σ exp(x·inv + nmi) over one block: sixteen lanes in f32, combined in f64 in lane order.
#[inline(always)]
fn block_sum(block: &[f32], inv: f32, nmi: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { block_sum_avx512(block, inv, nmi) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { block_sum_avx2(block, inv, nmi) };
        }
    }
    block_sum_lanes(block, inv, nmi)
}

/// The portable [`block_sum`].
#[inline(always)]
fn block_sum_lanes(block: &[f32], inv: f32, nmi: f32) -> f64 {
    let mut acc = [0.0f32; SUM_LANES];
    // Arrays, not slices: with the length in the type there are no bounds checks to stop the
    // compiler from vectorising.
    let (chunks, rest) = block.as_chunks::<SUM_LANES>();
    for c in chunks {
        for j in 0..SUM_LANES {
            acc[j] += exp_nonpos(c[j].mul_add(inv, nmi));
        }
    }
    for (j, &x) in rest.iter().enumerate() {
        acc[j] += exp_nonpos(x.mul_add(inv, nmi));
    }
    acc.iter().map(|&a| a as f64).sum()
}

/// [`block_sum_lanes`] in AVX2 + FMA: lanes 0..8 in one register, 8..16 in another.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_sum_avx2(block: &[f32], inv: f32, nmi: f32) -> f64 {
    use std::arch::x86_64::*;
    let (vinv, vnmi) = (_mm256_set1_ps(inv), _mm256_set1_ps(nmi));
    let (chunks, rest) = block.as_chunks::<SUM_LANES>();
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for c in chunks {
        // SAFETY: `c` is sixteen readable f32s; loadu has no alignment requirement.
        let (x0, x1) = unsafe {
            (
                _mm256_loadu_ps(c.as_ptr()),
                _mm256_loadu_ps(c.as_ptr().add(8)),
            )
        };
        lo = _mm256_add_ps(lo, exp_nonpos_avx2(_mm256_fmadd_ps(x0, vinv, vnmi)));
        hi = _mm256_add_ps(hi, exp_nonpos_avx2(_mm256_fmadd_ps(x1, vinv, vnmi)));
    }
    let mut acc = [0.0f32; SUM_LANES];
    // SAFETY: `acc` is sixteen writable f32s.
    unsafe {
        _mm256_storeu_ps(acc.as_mut_ptr(), lo);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
    }
    for (j, &x) in rest.iter().enumerate() {
        acc[j] += exp_nonpos(x.mul_add(inv, nmi));
    }
    acc.iter().map(|&a| a as f64).sum()
}

/// [`exp_nonpos`] on eight lanes, operation for operation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_nonpos_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = _mm256_set1_ps;
    let x = _mm256_max_ps(x, c(-87.0));
    let t = _mm256_fmadd_ps(x, c(EIGHT_OVER_LN2), c(ROUND_MAGIC));
    let n = _mm256_sub_ps(t, c(ROUND_MAGIC));
    let ni = _mm256_sub_epi32(
        _mm256_castps_si256(t),
        _mm256_set1_epi32(ROUND_MAGIC.to_bits() as i32),
    );
    let r = _mm256_fmadd_ps(n, c(-f32::from_bits(LN2_OVER_8_HI)), x);
    let r = _mm256_fmadd_ps(n, c(-f32::from_bits(LN2_OVER_8_LO)), r);
    let p = _mm256_fmadd_ps(r, c(1.0 / 24.0), c(1.0 / 6.0));
    let p = _mm256_fmadd_ps(p, r, c(0.5));
    let p = _mm256_fmadd_ps(p, r, c(1.0));
    let p = _mm256_fmadd_ps(p, r, c(1.0));
    let table = _mm256_castsi256_ps(_mm256_setr_epi32(
        EXP2_EIGHTHS[0] as i32,
        EXP2_EIGHTHS[1] as i32,
        EXP2_EIGHTHS[2] as i32,
        EXP2_EIGHTHS[3] as i32,
        EXP2_EIGHTHS[4] as i32,
        EXP2_EIGHTHS[5] as i32,
        EXP2_EIGHTHS[6] as i32,
        EXP2_EIGHTHS[7] as i32,
    ));
    // permutevar8x32 uses the low three bits of each index: j = n mod 8.
    let y = _mm256_mul_ps(p, _mm256_permutevar8x32_ps(table, ni));
    let e = _mm256_slli_epi32::<23>(_mm256_srai_epi32::<3>(ni));
    _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), e))
}

/// [`block_sum_lanes`] in AVX-512: all sixteen lanes in one register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_sum_avx512(block: &[f32], inv: f32, nmi: f32) -> f64 {
    use std::arch::x86_64::*;
    let (vinv, vnmi) = (_mm512_set1_ps(inv), _mm512_set1_ps(nmi));
    let (chunks, rest) = block.as_chunks::<SUM_LANES>();
    let mut acc = _mm512_setzero_ps();
    for c in chunks {
        // SAFETY: `c` is sixteen readable f32s; loadu has no alignment requirement.
        let x = unsafe { _mm512_loadu_ps(c.as_ptr()) };
        acc = _mm512_add_ps(acc, exp_nonpos_avx512(_mm512_fmadd_ps(x, vinv, vnmi)));
    }
    if !rest.is_empty() {
        // The tail (all of a classifier's row) in one masked step: entry j still goes to lane
        // j, added once, as on the other paths.
        let k: __mmask16 = (1u16 << rest.len()) - 1;
        // SAFETY: the mask covers only the `rest.len()` readable entries; masked-off lanes are
        // not read.
        let x = unsafe { _mm512_maskz_loadu_ps(k, rest.as_ptr()) };
        let e = exp_nonpos_avx512(_mm512_fmadd_ps(x, vinv, vnmi));
        acc = _mm512_mask_add_ps(acc, k, acc, e);
    }
    let mut lanes = [0.0f32; SUM_LANES];
    // SAFETY: `lanes` is sixteen writable f32s.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    lanes.iter().map(|&a| a as f64).sum()
}

/// [`exp_nonpos`] on sixteen lanes, operation for operation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_nonpos_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = _mm512_set1_ps;
    let x = _mm512_max_ps(x, c(-87.0));
    let t = _mm512_fmadd_ps(x, c(EIGHT_OVER_LN2), c(ROUND_MAGIC));
    let n = _mm512_sub_ps(t, c(ROUND_MAGIC));
    let ni = _mm512_sub_epi32(
        _mm512_castps_si512(t),
        _mm512_set1_epi32(ROUND_MAGIC.to_bits() as i32),
    );
    let r = _mm512_fmadd_ps(n, c(-f32::from_bits(LN2_OVER_8_HI)), x);
    let r = _mm512_fmadd_ps(n, c(-f32::from_bits(LN2_OVER_8_LO)), r);
    let p = _mm512_fmadd_ps(r, c(1.0 / 24.0), c(1.0 / 6.0));
    let p = _mm512_fmadd_ps(p, r, c(0.5));
    let p = _mm512_fmadd_ps(p, r, c(1.0));
    let p = _mm512_fmadd_ps(p, r, c(1.0));
    let t8 = EXP2_EIGHTHS.map(|b| b as i32);
    let table = _mm512_castsi512_ps(_mm512_setr_epi32(
        t8[0], t8[1], t8[2], t8[3], t8[4], t8[5], t8[6], t8[7], t8[0], t8[1], t8[2], t8[3], t8[4],
        t8[5], t8[6], t8[7],
    ));
    // permutexvar uses the low four bits of each index; the table repeats after eight.
    let y = _mm512_mul_ps(p, _mm512_permutexvar_ps(ni, table));
    let e = _mm512_slli_epi32::<23>(_mm512_srai_epi32::<3>(ni));
    _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), e))
}

/// log Σ exp(z_i / t) around the maximum (see [`logsumexp_from_max`]).
pub fn logsumexp(z: &[f32], t: f64) -> f64 {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    logsumexp_from_max(z, m, t)
}

/// The `n` largest entries of `z` as (id, logit), by descending logit, ties to the lower id;
/// `None` when an entry is NaN or infinite (the scan of [`position_targets`] without its sums).
pub fn top_n(z: &[f32], n: usize) -> Option<Vec<(u32, f32)>> {
    row_pass(z, &[], n.min(z.len()), &[]).map(|(top, _, _)| top)
}

/// Entries per step of the top-k scan: one comparison of their maximum with the threshold
/// skips them all, and a row of logits is mostly entries below the threshold.
const SCAN: usize = 32;

/// A bounded candidate buffer for the top-n: cheaper than sorting the whole axis when n is
/// much smaller than the axis.
struct TopN {
    n: usize,
    buf: Vec<(u32, f32)>,
    threshold: f32,
}

impl TopN {
    fn new(n: usize) -> Self {
        TopN {
            n,
            buf: Vec::with_capacity(2 * n + 1),
            threshold: f32::NEG_INFINITY,
        }
    }

    /// Descending logit, ties to the lower id.
    fn before(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
    }

    /// Offers entries `at..at + c.len()` whose maximum is `mx`.
    #[inline(always)]
    fn offer(&mut self, at: usize, c: &[f32], mx: f32) {
        // NaN fails `>=` and is skipped here; the caller's finiteness check refuses the row.
        if mx >= self.threshold || self.buf.len() < self.n {
            for (j, &x) in c.iter().enumerate() {
                self.push(at + j, x);
            }
        }
    }

    #[inline(always)]
    fn push(&mut self, i: usize, x: f32) {
        if self.buf.len() >= self.n && x < self.threshold {
            return;
        }
        self.buf.push((i as u32, x));
        if self.buf.len() == 2 * self.n + 1 {
            self.buf.select_nth_unstable_by(self.n - 1, Self::before);
            self.buf.truncate(self.n);
            self.threshold = self.buf.iter().fold(f32::INFINITY, |a, e| a.min(e.1));
        }
    }

    fn finish(mut self) -> Vec<(u32, f32)> {
        self.buf.sort_unstable_by(Self::before);
        self.buf.truncate(self.n);
        self.buf
    }
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
    position_targets_ahead(z, &[], k, adaptive, temps)
}

/// [`position_targets`] for one row of many: `next`, the row the caller reads after this one,
/// is fetched into the cache while this row is worked on (same result; less waiting on
/// memory when rows are vocabulary-sized and were written long ago).
pub fn position_targets_ahead(
    z: &[f32],
    next: &[f32],
    k: usize,
    adaptive: Option<(usize, f64)>,
    temps: &[f64],
) -> Option<PositionTargets> {
    let all: Vec<f64> = std::iter::once(1.0).chain(temps.iter().copied()).collect();
    let (top, m, sums) = row_pass(z, next, k.min(z.len()), &all)?;
    let logz: Vec<f64> = (0..all.len())
        .map(|i| m as f64 / all[i] + sums[i].ln())
        .collect();
    Some(targets_from_top(top, &logz, adaptive))
}

/// A position's targets from its top entries (by descending logit, ties to the lower id) and
/// its logZ at T=1 then at each extra temperature, with the adaptive rule applied: the fewest
/// entries from `min_k` whose T=1 probability reaches `mass`. Shared by the host computation
/// and the teacher graph's own TopK and ReduceLogSumExp, so both keep the same entries.
pub fn targets_from_top(
    mut top: Vec<(u32, f32)>,
    logz: &[f64],
    adaptive: Option<(usize, f64)>,
) -> PositionTargets {
    let z1 = logz.first().copied().unwrap_or(0.0);
    if let Some((min_k, mass)) = adaptive {
        let mut cum = 0.0f64;
        let mut keep = top.len();
        for (i, &(_, x)) in top.iter().enumerate() {
            cum += (x as f64 - z1).exp();
            if i + 1 >= min_k && cum >= mass {
                keep = i + 1;
                break;
            }
        }
        top.truncate(keep);
    }
    PositionTargets {
        ids: top.iter().map(|e| e.0).collect(),
        logits: top.iter().map(|e| e.1).collect(),
        logz: z1 as f32,
        logz_temps: logz.iter().skip(1).map(|&l| l as f32).collect(),
    }
}

/// What one pass over a row yields: the top-n (id, logit), the row's maximum, and for each
/// temperature Σ exp((z_i - max) / t).
type RowPass = (Vec<(u32, f32)>, f32, Vec<f64>);

/// One pass over a row, block by block (256 entries, 1 KB, which stay in the first-level
/// cache between the two steps): scan the block (finiteness, its maximum, top-k candidates),
/// then add its exponentials relative to the running maximum, rescaling the sums when the
/// maximum grows. The row is read from memory once, and the exponentials are computed while
/// the next blocks stream in. `None` when an entry is NaN or infinite.
fn row_pass(z: &[f32], next: &[f32], n: usize, temps: &[f64]) -> Option<RowPass> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        let wide = std::is_x86_feature_detected!("avx512f");
        // SAFETY: the CPU has AVX2 and FMA (and AVX-512F when `wide`), checked just above.
        return unsafe { row_pass_avx2(z, next, n, temps, wide) };
    }
    row_pass_portable(z, n, temps)
}

/// Running maximum and per-temperature sums of a row pass.
struct Sums<'t> {
    temps: &'t [f64],
    max: f32,
    sums: Vec<f64>,
}

impl<'t> Sums<'t> {
    fn new(temps: &'t [f64]) -> Self {
        Sums {
            temps,
            max: f32::NEG_INFINITY,
            sums: vec![0.0; temps.len()],
        }
    }

    /// Adds a block whose maximum is `bm`, with `sum(block, 1/t, -max/t)` its exponential sum.
    #[inline(always)]
    fn absorb(&mut self, block: &[f32], bm: f32, sum: impl Fn(&[f32], f32, f32) -> f64) {
        if bm > self.max {
            if self.max > f32::NEG_INFINITY {
                for (s, &t) in self.sums.iter_mut().zip(self.temps) {
                    *s *= ((self.max as f64 - bm as f64) / t).exp();
                }
            }
            self.max = bm;
        }
        for (s, &t) in self.sums.iter_mut().zip(self.temps) {
            let inv = (1.0 / t) as f32;
            *s += sum(block, inv, -(self.max * inv));
        }
    }
}

/// The portable [`row_pass`].
fn row_pass_portable(z: &[f32], n: usize, temps: &[f64]) -> Option<RowPass> {
    let mut top = TopN::new(n);
    let mut sums = Sums::new(temps);
    let mut fine = true;
    for (b, block) in z.chunks(SUM_BLOCK).enumerate() {
        let at = b * SUM_BLOCK;
        let mut bm = f32::NEG_INFINITY;
        let (groups, rest) = block.as_chunks::<SCAN>();
        for (g, c) in groups.iter().enumerate() {
            fine &= c.iter().fold(true, |a, &x| a & (x.abs() <= f32::MAX));
            let mx = c.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            bm = bm.max(mx);
            if n > 0 {
                top.offer(at + g * SCAN, c, mx);
            }
        }
        for (j, &x) in rest.iter().enumerate() {
            fine &= x.abs() <= f32::MAX;
            bm = bm.max(x);
            if n > 0 {
                top.push(at + groups.len() * SCAN + j, x);
            }
        }
        sums.absorb(block, bm, block_sum_lanes);
    }
    fine.then(|| (top.finish(), sums.max, sums.sums))
}

/// [`row_pass`] with AVX2 (scan) and AVX2 + FMA or, when `wide`, AVX-512 (exponentials);
/// the next row is prefetched a block per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_pass_avx2(
    z: &[f32],
    next: &[f32],
    n: usize,
    temps: &[f64],
    wide: bool,
) -> Option<RowPass> {
    use std::arch::x86_64::*;
    let mut top = TopN::new(n);
    let mut sums = Sums::new(temps);
    let magnitude = _mm256_set1_epi32(0x7fff_ffff);
    let mut worst = _mm256_setzero_si256();
    let mut fine = true;
    let mut ahead = next.chunks(SUM_BLOCK);
    for (b, block) in z.chunks(SUM_BLOCK).enumerate() {
        if let Some(nb) = ahead.next() {
            prefetch(nb);
        }
        let at = b * SUM_BLOCK;
        let mut bmv = _mm256_set1_ps(f32::NEG_INFINITY);
        let (groups, rest) = block.as_chunks::<SCAN>();
        for (g, c) in groups.iter().enumerate() {
            // Written out, not through arrays or closures: those went through the stack.
            // SAFETY: `c` is 32 readable f32s; loadu has no alignment requirement.
            let (x0, x1, x2, x3) = unsafe {
                let p = c.as_ptr();
                (
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                )
            };
            let a01 = _mm256_max_epi32(
                _mm256_and_si256(_mm256_castps_si256(x0), magnitude),
                _mm256_and_si256(_mm256_castps_si256(x1), magnitude),
            );
            let a23 = _mm256_max_epi32(
                _mm256_and_si256(_mm256_castps_si256(x2), magnitude),
                _mm256_and_si256(_mm256_castps_si256(x3), magnitude),
            );
            worst = _mm256_max_epi32(worst, _mm256_max_epi32(a01, a23));
            let mx = _mm256_max_ps(_mm256_max_ps(x0, x1), _mm256_max_ps(x2, x3));
            bmv = _mm256_max_ps(bmv, mx);
            if n == 0 {
                continue;
            }
            let th = _mm256_set1_ps(top.threshold);
            if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(mx, th)) != 0 {
                // Only the entries at or above the threshold are offered, one bit each.
                let ge = |x| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(x, th)) as u32;
                let mut bits = ge(x0) | ge(x1) << 8 | ge(x2) << 16 | ge(x3) << 24;
                while bits != 0 {
                    let j = bits.trailing_zeros() as usize;
                    top.push(at + g * SCAN + j, c[j]);
                    bits &= bits - 1;
                }
            }
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` is eight writable f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), bmv) };
        let mut bm = lanes.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        for (j, &x) in rest.iter().enumerate() {
            fine &= x.abs() <= f32::MAX;
            bm = bm.max(x);
            if n > 0 {
                top.push(at + groups.len() * SCAN + j, x);
            }
        }
        if wide {
            // SAFETY: the caller checked AVX-512F when it set `wide`.
            sums.absorb(block, bm, |b, i, m| unsafe { block_sum_avx512(b, i, m) });
        } else {
            // SAFETY: this function's own features.
            sums.absorb(block, bm, |b, i, m| unsafe { block_sum_avx2(b, i, m) });
        }
    }
    for nb in ahead {
        prefetch(nb);
    }
    fine &= _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(
        worst,
        _mm256_set1_epi32(f32::MAX.to_bits() as i32),
    ))) == 0;
    fine.then(|| (top.finish(), sums.max, sums.sums))
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
                assert_eq!(
                    row_pass_portable(&z, n.min(len), &[]).map(|r| r.0),
                    Some(all.clone())
                );
                assert_eq!(top_n(&z, n), Some(all), "len {len} n {n}");
            }
        }
    }

    #[test]
    fn polynomial_exp_is_within_about_one_ulp_of_f64() {
        let mut worst = 0.0f64;
        for i in 0..=400_000 {
            let x = -87.0f32 * i as f32 / 400_000.0;
            let got = exp_nonpos(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 1.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert!(exp_nonpos(-1000.0) < 1.7e-38 && exp_nonpos(-1000.0) > 1.6e-38);
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
        // Every block length a row can end with, at several temperatures, on every path this
        // CPU has.
        for t in [1.0f64, 0.7, 2.0, 4.0] {
            let inv = (1.0 / t) as f32;
            let nmi = -(m * inv);
            for len in [1usize, 7, 15, 16, 17, 100, 255, 256] {
                let block = &z[1000..1000 + len];
                let portable = block_sum_lanes(block, inv, nmi).to_bits();
                #[cfg(target_arch = "x86_64")]
                {
                    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU has AVX2 and FMA, checked just above.
                        let v = unsafe { block_sum_avx2(block, inv, nmi) };
                        assert_eq!(v.to_bits(), portable, "avx2, t {t}, len {len}");
                    }
                    if std::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU has AVX-512F, checked just above.
                        let v = unsafe { block_sum_avx512(block, inv, nmi) };
                        assert_eq!(v.to_bits(), portable, "avx512, t {t}, len {len}");
                    }
                }
                assert_eq!(block_sum(block, inv, nmi).to_bits(), portable);
            }
            // And lane by lane, the vector exponentials against the scalar one.
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                use std::arch::x86_64::*;
                for c in z.as_chunks::<8>().0.iter().take(500) {
                    let mut got = [0.0f32; 8];
                    // SAFETY: AVX2 and FMA checked above; `c` and `got` are eight f32s.
                    unsafe {
                        let x = _mm256_fmadd_ps(
                            _mm256_loadu_ps(c.as_ptr()),
                            _mm256_set1_ps(inv),
                            _mm256_set1_ps(nmi),
                        );
                        _mm256_storeu_ps(got.as_mut_ptr(), exp_nonpos_avx2(x));
                    }
                    for j in 0..8 {
                        let want = exp_nonpos(c[j].mul_add(inv, nmi));
                        assert_eq!(got[j].to_bits(), want.to_bits(), "x {}", c[j]);
                    }
                }
            }
        }
    }

    #[test]
    fn one_pass_targets_match_f64_and_agree_across_paths() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let temps = [1.0f64, 0.5, 2.0, 8.0];
        for len in [1usize, 10, 255, 256, 257, 1000, 32_000, 50_257] {
            // A drift upwards puts the maximum late, so the running maximum grows many times
            // and the sums are rescaled; and a flat row, where it never does.
            for drift in [0.0f32, 40.0] {
                let z: Vec<f32> = (0..len)
                    .map(|i| rng.random_range(-30.0f32..20.0) + drift * i as f32 / len as f32)
                    .collect();
                let t = position_targets(&z, 8, None, &temps[1..]).unwrap();
                let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                for (i, &tt) in temps.iter().enumerate() {
                    let exact = m / tt
                        + z.iter()
                            .map(|&x| ((x as f64 - m) / tt).exp())
                            .sum::<f64>()
                            .ln();
                    let got = if i == 0 { t.logz } else { t.logz_temps[i - 1] } as f64;
                    assert!(
                        (got - exact).abs() <= 2e-6 * exact.abs().max(1.0),
                        "len {len} drift {drift} t {tt}: {got} vs {exact}"
                    );
                }
                let portable = row_pass_portable(&z, 8, &temps).unwrap();
                let here = row_pass(&z, &[], 8, &temps).unwrap();
                assert_eq!(portable.0, here.0);
                assert_eq!(portable.1.to_bits(), here.1.to_bits());
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&portable.2), bits(&here.2), "len {len} drift {drift}");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: AVX2 and FMA checked just above; `wide` false needs no more.
                    let narrow = unsafe { row_pass_avx2(&z, &z, 8, &temps, false) }.unwrap();
                    assert_eq!(bits(&portable.2), bits(&narrow.2), "avx2, len {len}");
                    assert_eq!(portable.0, narrow.0);
                }
            }
        }
    }

    #[test]
    fn top_n_refuses_nan_and_infinity_anywhere() {
        let z: Vec<f32> = (0..1000).map(|i| ((i * 37) % 1000) as f32).collect();
        for at in [0usize, 5, 31, 32, 500, 990, 999] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
                let mut w = z.clone();
                w[at] = bad;
                for n in [0usize, 1, 32] {
                    assert_eq!(top_n(&w, n), None, "at {at} bad {bad} n {n}");
                }
                assert!(
                    row_pass_portable(&w, 32, &[1.0]).is_none(),
                    "at {at} bad {bad}"
                );
            }
        }
        assert_eq!(top_n(&z, 0), Some(vec![]));
        assert_eq!(top_n(&z, 1), Some(vec![(27, 999.0)]));
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
