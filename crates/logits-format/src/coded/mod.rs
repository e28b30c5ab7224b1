//! Context-coded top-k (`targets.coding = "ctx-v1"`, format 1.2; FORMAT.md, "Context-coded
//! top-k"). A shard of such a dataset stores each row's kept ids and int8 steps in one binary
//! column, `topk_coded`, written by an adaptive binary range coder whose models (the input
//! token at the position, the previous kept id, the rank) learn over a coding
//! block — one Parquet row group — and restart at the next, so every row group, and every
//! shard, decodes on its own. Readers turn the column back into the plain `topk_ids` and
//! `topk_values` of the int8 encoding ([`arrow`]); nothing downstream sees the coding.

pub(crate) mod arrow;
mod model;
mod rc;

use model::{BitIo, Model, NO_TOKEN};
use rc::{Decoder, Encoder};

/// Flag bit of a row blob's first byte: the models restart before this row.
const RESET: u8 = 1;

/// One row's kept entries in the plain int8 layout: per position, ids and steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PlainRow {
    /// Entry offsets per position (positions + 1 values).
    pub offsets: Vec<usize>,
    /// Kept ids, per position in stored order.
    pub ids: Vec<u32>,
    /// int8 steps, aligned with `ids`.
    pub steps: Vec<u8>,
}

impl PlainRow {
    /// Orders the ids of every run of equal int8 codes (zero steps) ascending — the form the
    /// coding stores, and the order rule of FORMAT.md for tied decoded values.
    pub fn canonicalise(&mut self) {
        for p in 0..self.offsets.len().saturating_sub(1) {
            let (a, e) = (self.offsets[p], self.offsets[p + 1]);
            let mut s = a;
            while s < e {
                let mut t = s + 1;
                while t < e && self.steps[t] == 0 {
                    t += 1;
                }
                self.ids[s..t].sort_unstable();
                s = t;
            }
        }
    }
}

/// Why a row blob could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damaged(pub String);

/// The coding state of one shard: rows are coded in order; the models restart every
/// `block_rows` rows (the writer's row-group size).
#[derive(Debug)]
pub(crate) struct BlockCoder {
    model: Model,
    axis: u64,
    max_k: u64,
    /// Rows coded since the last restart; None before the first row.
    in_block: Option<u64>,
}

/// The input token at position `p`, or [`NO_TOKEN`] without a context input.
fn token(tokens: &[u32], p: usize) -> u32 {
    tokens.get(p).copied().unwrap_or(NO_TOKEN)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Result<u64, Damaged> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b
            .get(*at)
            .ok_or_else(|| Damaged("the row's header is cut short".into()))?;
        *at += 1;
        v |= ((byte & 0x7F) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Damaged("the row's header holds an overlong number".into()))
}

impl BlockCoder {
    /// A coder for an axis of `axis` ids and at most `max_k` entries per position.
    pub fn new(axis: u64, max_k: u64) -> BlockCoder {
        BlockCoder {
            model: Model::new(axis, max_k),
            axis,
            max_k,
            in_block: None,
        }
    }

    /// Codes one row (already canonical, see [`PlainRow::canonicalise`]) whose positions
    /// follow `tokens` (the context input's values; empty when there is none). `restart`
    /// starts a new block at this row.
    pub fn encode_row(&mut self, row: &PlainRow, tokens: &[u32], restart: bool) -> Vec<u8> {
        let index = self.begin(restart);
        let mut out = vec![if restart { RESET } else { 0 }];
        put_varint(&mut out, index);
        let positions = row.offsets.len().saturating_sub(1);
        put_varint(&mut out, positions as u64);
        let mut e = Encoder::new(out);
        for p in 0..positions {
            let (a, b) = (row.offsets[p], row.offsets[p + 1]);
            let mut ids = row.ids[a..b].to_vec();
            let mut steps = row.steps[a..b].to_vec();
            self.position(&mut e, &mut ids, &mut steps, token(tokens, p));
        }
        e.finish()
    }

    /// Decodes one row blob; `tokens` as given to [`BlockCoder::encode_row`].
    pub fn decode_row(&mut self, blob: &[u8], tokens: &[u32]) -> Result<PlainRow, Damaged> {
        let flags = *blob
            .first()
            .ok_or_else(|| Damaged("the row's blob is empty".into()))?;
        let restart = flags & RESET != 0;
        if self.in_block.is_none() && !restart {
            return Err(Damaged(
                "a row group does not start a coding block (rows must be read from the start \
                 of their row group)"
                    .into(),
            ));
        }
        let mut at = 1;
        let index = get_varint(blob, &mut at)?;
        let expected = self.begin(restart);
        if index != expected {
            return Err(Damaged(format!(
                "row {index} of its coding block read where row {expected} was expected"
            )));
        }
        let positions = get_varint(blob, &mut at)? as usize;
        if !tokens.is_empty() && tokens.len() != positions {
            return Err(Damaged(format!(
                "{positions} coded positions but {} context tokens",
                tokens.len()
            )));
        }
        // A coded decision costs at least -log2(4095/4096) bits, so a well-predicted position
        // may take far less than a bit: the bound only stops absurd headers; a damaged stream
        // is caught as it runs past its end (below, per position).
        if positions > blob.len().saturating_mul(1 << 14) + 64 {
            return Err(Damaged(format!(
                "{positions} positions in {} bytes",
                blob.len()
            )));
        }
        let mut d = Decoder::new(blob.get(at..).unwrap_or(&[]));
        let mut row = PlainRow {
            offsets: vec![0],
            ..PlainRow::default()
        };
        for p in 0..positions {
            let mut ids = Vec::new();
            let mut steps = Vec::new();
            self.position(&mut d, &mut ids, &mut steps, token(tokens, p));
            if let Some(&bad) = ids.iter().find(|&&i| i as u64 >= self.axis) {
                return Err(Damaged(format!(
                    "position {p}: id {bad} is outside the axis"
                )));
            }
            row.ids.extend_from_slice(&ids);
            row.steps.extend_from_slice(&steps);
            row.offsets.push(row.ids.len());
            if d.overrun() > 4 {
                return Err(Damaged("the row's coded data is cut short".into()));
            }
        }
        if d.overrun() > 4 {
            return Err(Damaged("the row's coded data is cut short".into()));
        }
        Ok(row)
    }

    /// Runs one row through the models with `io` (a measuring [`BitIo`]), as
    /// [`BlockCoder::encode_row`] would code it.
    #[cfg(test)]
    pub(crate) fn meter_row<I: BitIo>(
        &mut self,
        row: &PlainRow,
        tokens: &[u32],
        restart: bool,
        io: &mut I,
    ) {
        self.begin(restart);
        for p in 0..row.offsets.len().saturating_sub(1) {
            let (a, b) = (row.offsets[p], row.offsets[p + 1]);
            let mut ids = row.ids[a..b].to_vec();
            let mut steps = row.steps[a..b].to_vec();
            self.position(io, &mut ids, &mut steps, token(tokens, p));
        }
    }

    /// Forgets the block being read (a new shard starts; its first row must restart).
    pub fn forget(&mut self) {
        self.in_block = None;
    }

    fn begin(&mut self, restart: bool) -> u64 {
        if restart {
            self.model.reset();
            self.in_block = Some(0);
        }
        let i = self.in_block.unwrap_or(0);
        self.in_block = Some(i + 1);
        i
    }

    /// Codes one position: its entry count, its steps, then its ids (a zero step means a tie
    /// with the previous entry, whose id is then smaller). Decoding fills `ids` and `steps`.
    fn position<I: BitIo>(
        &mut self,
        io: &mut I,
        ids: &mut Vec<u32>,
        steps: &mut Vec<u8>,
        token: u32,
    ) {
        io.section(0);
        let k = self.model.code_count(io, ids.len() as u64).min(self.max_k) as usize;
        ids.resize(k, 0);
        steps.resize(k, 0);
        io.section(1);
        let mut prev = 0u8;
        for (r, s) in steps.iter_mut().enumerate() {
            *s = self.model.code_step(io, *s, r, prev);
            prev = *s;
        }
        io.section(2);
        let mut prev_id = NO_TOKEN;
        for r in 0..k {
            let lo = if r > 0 && steps[r] == 0 {
                prev_id.saturating_add(1)
            } else {
                0
            };
            ids[r] = self.model.code_id(io, ids[r], lo, r, token, prev_id);
            prev_id = ids[r];
        }
    }
}

#[cfg(test)]
mod tests;
