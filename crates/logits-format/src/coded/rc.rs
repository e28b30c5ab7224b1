//! The binary range coder of the `ctx-v1` coding (LZMA's, with 16-bit probabilities) and the
//! integer probability machinery around it: adaptive bit counters, the logistic mixer and its
//! squash/stretch tables. Everything is integer arithmetic so that the Python reference
//! decoder in FORMAT.md reproduces it bit for bit.

/// Probabilities are P(bit = 1) in 16 bits.
pub(crate) const PROB_BITS: u32 = 16;
const TOP: u32 = 1 << 24;

/// Encodes bits into bytes (LZMA's carry-propagating range encoder).
#[derive(Debug)]
pub(crate) struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    /// The coded bytes so far.
    pub out: Vec<u8>,
}

impl Encoder {
    /// A fresh encoder writing after `out`'s current contents.
    pub fn new(out: Vec<u8>) -> Encoder {
        Encoder {
            low: 0,
            range: u32::MAX,
            cache: 0,
            cache_size: 1,
            out,
        }
    }

    /// Codes `bit` with P(bit = 1) = `p1` / 2^16 (1 ≤ p1 < 2^16).
    #[inline]
    pub fn bit(&mut self, bit: bool, p1: u32) {
        let bound = (self.range >> PROB_BITS) * p1;
        if bit {
            self.range = bound;
        } else {
            self.low += bound as u64;
            self.range -= bound;
        }
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut temp = self.cache;
            loop {
                self.out.push(temp.wrapping_add(carry));
                temp = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = ((self.low >> 24) & 0xFF) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    /// Flushes the coder state and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

/// Decodes what [`Encoder`] wrote. Reading past the end yields zero bytes (the caller's
/// checks on the decoded values catch damage; the coder itself cannot fail or loop).
#[derive(Debug)]
pub(crate) struct Decoder<'a> {
    code: u32,
    range: u32,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// Starts decoding `data` (the encoder's first byte is always 0 and is skipped).
    pub fn new(data: &'a [u8]) -> Decoder<'a> {
        let mut d = Decoder {
            code: 0,
            range: u32::MAX,
            data,
            pos: 1,
        };
        for _ in 0..4 {
            d.code = (d.code << 8) | d.byte() as u32;
        }
        d
    }

    #[inline]
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// Decodes one bit coded with P(bit = 1) = `p1` / 2^16.
    #[inline]
    pub fn bit(&mut self, p1: u32) -> bool {
        let bound = (self.range >> PROB_BITS) * p1;
        let bit = self.code < bound;
        if bit {
            self.range = bound;
        } else {
            self.code -= bound;
            self.range -= bound;
        }
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | self.byte() as u32;
        }
        bit
    }

    /// Bytes consumed beyond the input (0 for an intact stream).
    pub fn overrun(&self) -> usize {
        self.pos.saturating_sub(self.data.len())
    }
}

/// Adaptation rate of a counter seen `n` times: 2^16 / (n + 1.5), so that early updates
/// average (a context seen once predicts what it saw) and later ones track slowly.
pub(crate) fn rate_table(limit: usize) -> Vec<i32> {
    (0..=limit).map(|n| 131_072 / (2 * n as i32 + 3)).collect()
}

/// A table of adaptive bit counters, each P(1) in 16 bits (low half) and how often it was
/// updated (bits 16..24) in one u32, so that a 4-bit subtree's 15 counters share a cache line.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    c: Vec<u32>,
    limit: u32,
}

/// `size` cells at [`INIT`]. Large tables ask Linux for huge pages before their first touch:
/// lookups land anywhere in tens of megabytes, and with 4 KiB pages most of them missed the TLB
/// as well as the cache (measured in BENCHMARKS.md).
fn table(size: usize) -> Vec<u32> {
    let mut v: Vec<u32> = Vec::with_capacity(size);
    #[cfg(target_os = "linux")]
    if size >= 1 << 19 {
        // madvise wants a page-aligned start: the allocation's first page is included (it
        // holds the allocator's header, whose contents the advice does not change).
        let start = v.as_mut_ptr() as usize;
        let aligned = start & !4095;
        // SAFETY: the range covers the vector's own allocation (capacity ≥ size), rounded down
        // to its first page; MADV_HUGEPAGE is advice only and changes no memory contents.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                size * std::mem::size_of::<u32>() + (start - aligned),
                libc::MADV_HUGEPAGE,
            );
        }
    }
    v.resize(size, INIT);
    v
}

/// Counters never reach certainty (the coder needs 1 ≤ p < 2^16).
const P_MIN: i32 = 32;
const P_MAX: i32 = 65_536 - 32;
const INIT: u32 = 32_768;

impl Counters {
    /// `size` counters at P(1) = 1/2, adapting down to rate 1/(`limit` + 1.5).
    pub fn new(size: usize, limit: u8) -> Counters {
        Counters {
            c: table(size),
            limit: limit as u32,
        }
    }

    /// Back to the initial state.
    pub fn reset(&mut self) {
        self.c.fill(INIT);
    }

    /// P(1) of counter `i`, 16 bits.
    #[inline]
    pub fn p(&self, i: usize) -> u32 {
        self.c[i] & 0xFFFF
    }

    /// How often counter `i` was updated (saturating at the table's limit).
    #[inline]
    pub fn n(&self, i: usize) -> u32 {
        self.c[i] >> 16
    }

    /// Moves counter `i` towards `bit`.
    #[inline]
    pub fn update(&mut self, i: usize, bit: bool, rates: &[i32]) {
        let cell = self.c[i];
        let p = (cell & 0xFFFF) as i32;
        let n = cell >> 16;
        let target = if bit { 65_535 } else { 0 };
        let step = ((target - p) as i64 * rates[n as usize] as i64) >> 16;
        let p = (p + step as i32).clamp(P_MIN, P_MAX);
        self.c[i] = p as u32 | (n + (n < self.limit) as u32) << 16;
    }
}

/// lpaq's squash: 4096 / (1 + e^{−d/256}) by interpolation in a 33-entry table.
pub(crate) fn squash(d: i32) -> i32 {
    const T: [i32; 33] = [
        1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994,
        3348, 3607, 3785, 3901, 3975, 4024, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094,
    ];
    if d > 2047 {
        return 4095;
    }
    if d < -2047 {
        return 1;
    }
    let w = d & 127;
    let i = ((d >> 7) + 16) as usize;
    (T[i] * (128 - w) + T[i + 1] * w + 64) >> 7
}

/// The inverse of [`squash`] over 12-bit probabilities.
pub(crate) fn stretch_table() -> Vec<i16> {
    let mut t = vec![2047i16; 4096];
    let mut pi = 0usize;
    for x in -2047..=2047 {
        let v = squash(x) as usize;
        for slot in t.iter_mut().take(v + 1).skip(pi) {
            *slot = x as i16;
        }
        pi = pi.max(v + 1);
    }
    t
}

/// Mixer weights stay within ±256 (16-bit fractions), so every sum fits its integer type.
const W_LIMIT: i32 = 1 << 24;

/// Inputs a mixer combines at most.
pub(crate) const MAX_INPUTS: usize = 8;

/// A gated logistic mixer: P = squash(Σ w_i · stretch(p_i)), one weight vector per selector.
#[derive(Debug, Clone)]
pub(crate) struct Mixer {
    n: usize,
    w: Vec<i32>,
    init: i32,
    st: [i32; MAX_INPUTS],
    sel: usize,
    pr: i32,
    lr: i32,
}

impl Mixer {
    /// `n` inputs, `selectors` weight vectors, learning rate `lr`.
    pub fn new(n: usize, selectors: usize, lr: i32) -> Mixer {
        let init = 65_536 / n as i32;
        Mixer {
            n,
            w: vec![init; n * selectors],
            init,
            st: [0; MAX_INPUTS],
            sel: 0,
            pr: 2048,
            lr,
        }
    }

    /// Back to the initial weights.
    pub fn reset(&mut self) {
        self.w.fill(self.init);
    }

    /// Mixes 16-bit probabilities `p` with weight vector `sel`; returns P(1) in 16 bits.
    #[inline]
    pub fn mix(&mut self, p: &[u32], sel: usize, stretch: &[i16]) -> u32 {
        self.sel = sel * self.n;
        let mut dot: i64 = 0;
        for (i, &pi) in p.iter().enumerate().take(self.n) {
            let s = stretch[(pi >> 4) as usize] as i32;
            self.st[i] = s;
            dot += self.w[self.sel + i] as i64 * s as i64;
        }
        self.pr = squash((dot >> 16) as i32);
        (self.pr as u32) << 4
    }

    /// Learns from the coded bit.
    #[inline]
    pub fn update(&mut self, bit: bool) {
        let err = (((bit as i32) << 12) - self.pr) * self.lr;
        for i in 0..self.n {
            let w = self.w[self.sel + i] + ((self.st[i] * err) >> 11);
            self.w[self.sel + i] = w.clamp(-W_LIMIT, W_LIMIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_through_the_coder_at_every_probability() {
        let mut e = Encoder::new(Vec::new());
        let mut bits = Vec::new();
        let mut x = 12345u32;
        for i in 0..20_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let p = 1 + (i * 7919) % 65_535;
            let bit = (x >> 16) % 65_536 < p;
            bits.push((bit, p));
            e.bit(bit, p);
        }
        let out = e.finish();
        let mut d = Decoder::new(&out);
        for (i, &(bit, p)) in bits.iter().enumerate() {
            assert_eq!(d.bit(p), bit, "bit {i}");
        }
        assert_eq!(d.overrun(), 0);
    }

    #[test]
    fn stretch_inverts_squash() {
        let st = stretch_table();
        for d in (-2000..2000).step_by(37) {
            let p = squash(d);
            assert!((squash(st[p as usize] as i32) - p).abs() <= 1, "{d}");
        }
        assert!(st.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn counters_learn_a_skewed_bit() {
        let rates = rate_table(30);
        let mut c = Counters::new(1, 30);
        for _ in 0..100 {
            c.update(0, true, &rates);
        }
        assert!(c.p(0) > 60_000);
        c.reset();
        assert_eq!(c.p(0), 32_768);
    }
}
