//! The `ctx-v1` context model: how one position's kept entries become binary decisions and
//! which adaptive counters predict each decision (FORMAT.md, "Context-coded top-k"). One code
//! path serves both directions ([`BitIo`]), so encoder and decoder cannot drift apart.

use super::rc::{Counters, Decoder, Encoder, Mixer, rate_table, stretch_table};

/// log2 of the size of each hashed counter table.
pub(crate) const TABLE_BITS: u32 = 22;
/// Ids rank buckets the id mixer's weights are selected by.
const RANK_BUCKETS: usize = 4;
/// Sentinel for "no token" (no context input) and "no previous id" (rank 0).
pub(crate) const NO_TOKEN: u32 = u32::MAX;

/// One coded binary decision: the encoder codes `bit` and returns it; the decoder ignores it
/// and returns the decoded bit.
pub(crate) trait BitIo {
    /// Codes or decodes one bit with P(1) = `p1` / 2^16.
    fn bit(&mut self, bit: bool, p1: u32) -> bool;

    /// Marks what the next bits code (0 counts, 1 steps, 2 ids): for measurements only.
    #[inline]
    fn section(&mut self, _section: usize) {}
}

impl BitIo for Encoder {
    #[inline]
    fn bit(&mut self, bit: bool, p1: u32) -> bool {
        Encoder::bit(self, bit, p1);
        bit
    }
}

impl BitIo for Decoder<'_> {
    #[inline]
    fn bit(&mut self, _bit: bool, p1: u32) -> bool {
        Decoder::bit(self, p1)
    }
}

/// Tree levels per hashed bucket: a bucket holds one 4-bit subtree's 15 counters (16 cells,
/// one cache line), so an id costs one memory access per model per 4 bits, not per bit.
/// Subtrees start at bits 3, 7, 11, … from the bottom (and at the top bit), so the short one is
/// at the top of the tree, where few nodes exist and their buckets stay in cache.
pub(crate) const CHUNK_BITS: u32 = 4;

/// The first cell of the bucket of context value `a` at tree node `node` in table `salt`.
#[inline]
pub(crate) fn bucket(a: u32, node: u32, salt: u32) -> usize {
    let mut h = a.wrapping_mul(0x9E37_79B1)
        ^ node.wrapping_mul(0x85EB_CA6B).rotate_left(13)
        ^ salt.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    ((h >> (32 - (TABLE_BITS - CHUNK_BITS))) as usize) << CHUNK_BITS
}

/// Bits needed to write every value below `n` (at least 1).
pub(crate) fn bits_for(n: u64) -> u32 {
    (64 - n.saturating_sub(1).leading_zeros()).max(1)
}

/// The adaptive state of one coding block (a row group): reset at every block start.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    axis: u64,
    id_bits: u32,
    k_bits: u32,
    rates: Vec<i32>,
    stretch: Vec<i16>,
    count: Counters,
    steps: Counters,
    /// Order 0, the input token, the previous kept id of the position.
    ids: [Counters; 3],
    mix: Mixer,
}

/// Inputs of the id mixer: one per id model.
const ID_INPUTS: usize = 3;

impl Model {
    /// A fresh model for an output axis of `axis` ids and at most `max_k` entries per position.
    pub fn new(axis: u64, max_k: u64) -> Model {
        let id_bits = bits_for(axis);
        let k_bits = bits_for(max_k + 1);
        let table = |limit| Counters::new(1 << TABLE_BITS, limit);
        Model {
            axis,
            id_bits,
            k_bits,
            rates: rate_table(255),
            stretch: stretch_table(),
            count: Counters::new(1 << k_bits, 255),
            steps: Counters::new(32 * 8 * 256, 255),
            ids: [table(8), table(60), table(60)],
            mix: Mixer::new(ID_INPUTS, 64 * RANK_BUCKETS * 4, 1),
        }
    }

    /// Back to the initial state (the start of a block).
    pub fn reset(&mut self) {
        self.count.reset();
        self.steps.reset();
        for t in &mut self.ids {
            t.reset();
        }
        self.mix.reset();
    }

    /// Codes the number of entries of a position (≤ max_k).
    pub fn code_count<I: BitIo>(&mut self, io: &mut I, k: u64) -> u64 {
        let mut node = 1usize;
        for d in (0..self.k_bits).rev() {
            let want = (k >> d) & 1 == 1;
            let b = io.bit(want, self.count.p(node));
            self.count.update(node, b, &self.rates);
            node = node * 2 + b as usize;
        }
        (node - (1 << self.k_bits)) as u64
    }

    /// Codes the int8 step of rank `r` (the previous rank's step is `prev`).
    pub fn code_step<I: BitIo>(&mut self, io: &mut I, step: u8, r: usize, prev: u8) -> u8 {
        let ctx = (r.min(31) * 8 + (prev as usize).min(7)) << 8;
        let mut node = 1usize;
        for d in (0..8).rev() {
            let want = (step >> d) & 1 == 1;
            let i = ctx | node;
            let b = io.bit(want, self.steps.p(i));
            self.steps.update(i, b, &self.rates);
            node = node * 2 + b as usize;
        }
        (node - 256) as u8
    }

    /// Codes the id of rank `r`, known to be at least `lo` (ties are stored ascending), after
    /// input token `token`; `prev` is the id of rank r − 1 ([`NO_TOKEN`] at rank 0). Returns
    /// the id; a decoded id may reach `axis` only when the stream is damaged (the caller
    /// checks).
    pub fn code_id<I: BitIo>(
        &mut self,
        io: &mut I,
        id: u32,
        lo: u32,
        r: usize,
        token: u32,
        prev: u32,
    ) -> u32 {
        let rb = r.min(RANK_BUCKETS - 1);
        let mut node = 1u32;
        let mut base = 0u64;
        let mut cells = [0usize; 3];
        let mut local = 1usize;
        for d in (0..self.id_bits).rev() {
            if d == self.id_bits - 1 || d % CHUNK_BITS == CHUNK_BITS - 1 {
                cells = [
                    bucket(0, node, 0),
                    bucket(token, node, 1),
                    bucket(prev, node, 2),
                ];
                local = 1;
            }
            let half = 1u64 << d;
            let bit = if base + half <= lo as u64 {
                true
            } else if base + half >= self.axis {
                false
            } else {
                let want = (id >> d) & 1 == 1;
                let p = [
                    self.ids[0].p(cells[0] + local),
                    self.ids[1].p(cells[1] + local),
                    self.ids[2].p(cells[2] + local),
                ];
                // Weights by depth, rank and how often the token's counter has been seen.
                let seen = match self.ids[1].n(cells[1] + local) {
                    0 => 0,
                    1..=3 => 1,
                    4..=15 => 2,
                    _ => 3,
                };
                let sel = ((d as usize).min(63) * RANK_BUCKETS + rb) * 4 + seen;
                let pr = self.mix.mix(&p, sel, &self.stretch);
                let b = io.bit(want, pr);
                self.mix.update(b);
                for (t, &i) in self.ids.iter_mut().zip(&cells) {
                    t.update(i + local, b, &self.rates);
                }
                b
            };
            if bit {
                base += half;
            }
            node = node.wrapping_mul(2) | bit as u32;
            local = local * 2 + bit as usize;
        }
        base.min(u32::MAX as u64) as u32
    }
}
