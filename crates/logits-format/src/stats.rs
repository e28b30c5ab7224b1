//! Statistics that tell a user whether a dataset's targets are good: how much probability
//! the kept entries retain, and how peaked the teacher is (entropy). Computed from the stored
//! top-k entries and logZ, exactly for the kept part; the tail is one bucket.

use crate::error::Result;
use crate::reader::{Dataset, ReadOptions};
use crate::schema;

/// Number of histogram bins.
pub const BINS: usize = 10;

/// Target statistics over (a prefix of) a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetStats {
    /// Positions examined.
    pub positions: u64,
    /// Mean number of kept entries per position.
    pub mean_k: f64,
    /// Mean probability (T=1) retained by the kept entries.
    pub mean_mass: f64,
    /// Histogram of retained mass over `[0, 1]` in [`BINS`] equal bins.
    pub mass_hist: [u64; BINS],
    /// Mean entropy lower bound (nats): kept entries plus the tail as a single class.
    pub mean_entropy_low: f64,
    /// Mean entropy upper bound (nats): the tail spread evenly over the unkept ids.
    pub mean_entropy_high: f64,
    /// Histogram of the lower bound over `[0, ln V]` in [`BINS`] equal bins.
    pub entropy_hist: [u64; BINS],
    /// ln of the output-axis size, the histogram's upper edge.
    pub max_entropy: f64,
}

fn bin(x: f64, hi: f64) -> usize {
    if hi <= 0.0 {
        return 0;
    }
    ((x / hi * BINS as f64).floor().max(0.0) as usize).min(BINS - 1)
}

/// Computes [`TargetStats`] over at most `max_positions` positions (None: all); `None` when
/// the dataset stores no top-k targets.
pub fn target_stats(ds: &Dataset, max_positions: Option<u64>) -> Result<Option<TargetStats>> {
    let m = ds.manifest();
    let Some(spec) = m.targets.as_ref().filter(|t| t.topk.is_some()) else {
        return Ok(None);
    };
    let v = spec.axis_size as f64;
    let mut st = TargetStats {
        positions: 0,
        mean_k: 0.0,
        mean_mass: 0.0,
        mass_hist: [0; BINS],
        mean_entropy_low: 0.0,
        mean_entropy_high: 0.0,
        entropy_hist: [0; BINS],
        max_entropy: v.ln(),
    };
    let opts = ReadOptions {
        columns: Some(schema::target_columns(spec)),
        batch_size: 1024,
        ..Default::default()
    };
    let mut stream = ds.stream(&opts)?;
    let limit = max_positions.unwrap_or(u64::MAX);
    let mut entries = 0u64;
    'outer: while let Some(rows) = stream.next_rows() {
        let rows = rows?;
        let Some(t) = rows.targets else { continue };
        let Some(k) = t.topk else { continue };
        for p in 0..t.logz.len() {
            if st.positions >= limit {
                break 'outer;
            }
            let (a, e) = (k.offsets[p], k.offsets[p + 1]);
            let mut mass = 0.0f64;
            let mut h = 0.0f64;
            for &z in &k.logits[a..e] {
                let lp = z as f64 - t.logz[p] as f64;
                let q = lp.exp();
                mass += q;
                h -= q * lp;
            }
            let tail = (1.0 - mass).max(0.0);
            let h_low = h - if tail > 0.0 { tail * tail.ln() } else { 0.0 };
            let unkept = (v - (e - a) as f64).max(1.0);
            let h_high = h_low + tail * unkept.ln();
            st.positions += 1;
            entries += (e - a) as u64;
            st.mean_mass += mass.min(1.0);
            st.mean_entropy_low += h_low;
            st.mean_entropy_high += h_high;
            st.mass_hist[bin(mass.min(1.0), 1.0)] += 1;
            st.entropy_hist[bin(h_low, st.max_entropy)] += 1;
        }
    }
    if st.positions > 0 {
        let n = st.positions as f64;
        st.mean_k = entries as f64 / n;
        st.mean_mass /= n;
        st.mean_entropy_low /= n;
        st.mean_entropy_high /= n;
    }
    Ok(Some(st))
}

/// Compressed bytes per top-level column over all shards, read from Parquet footers only,
/// plus `(footer and headers)` for the rest of each file: where a dataset's bytes go.
pub fn column_bytes(ds: &Dataset) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for s in &ds.manifest().shards {
        let path = ds.shard_name(s);
        let f = ds.open_shard(s)?;
        let meta = crate::reader::load_metadata(&path, &f)?;
        let mut counted = 0u64;
        for rg in meta.metadata().row_groups() {
            for c in rg.columns() {
                let top = c.column_path().parts().first().cloned().unwrap_or_default();
                let n = c.compressed_size().max(0) as u64;
                counted += n;
                *out.entry(top).or_insert(0) += n;
            }
        }
        *out.entry("(footer and headers)".into()).or_insert(0) += s.bytes.saturating_sub(counted);
    }
    Ok(out)
}
