//! Full validation of a dataset: what `logits-inspect --validate` runs and what a merge of
//! job-array workers relies on. Every problem found is reported with the file it is in;
//! validation goes on after a problem so one run lists them all.

use arrow_schema::Schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::codec;
use crate::manifest::ShardEntry;
use crate::reader::{Dataset, check_shard_metadata};
use crate::schema;

/// What validation found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationReport {
    /// Shards examined.
    pub shards_checked: usize,
    /// Rows read.
    pub rows_checked: u64,
    /// Problems, each naming its file (empty when the dataset is valid).
    pub problems: Vec<String>,
}

impl ValidationReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A bitmap of seen row ids, so coverage checks use corpus-rows/8 bytes.
struct Seen {
    bits: Vec<u64>,
}

impl Seen {
    fn new(n: u64) -> Seen {
        Seen {
            bits: vec![0; n.div_ceil(64) as usize],
        }
    }
    /// Marks `id`; false if it was already marked.
    fn mark(&mut self, id: u64) -> bool {
        let (w, b) = ((id / 64) as usize, id % 64);
        let had = self.bits[w] >> b & 1 == 1;
        self.bits[w] |= 1 << b;
        !had
    }
    fn missing(&self, n: u64) -> impl Iterator<Item = u64> + '_ {
        (0..n).filter(|&i| self.bits[(i / 64) as usize] >> (i % 64) & 1 == 0)
    }
}

/// Checks the dataset: every shard's checksum, size, metadata, schema and row count against
/// the manifest; row ids increasing within shards and covering the corpus exactly once (rows
/// skipped on purpose excepted); every row decoding and keeping the contract (ids in range,
/// sorted, finite values, logits not above logZ, logZ consistent with the kept entries,
/// labels in range, inputs of their declared shape and finite, features finite) and its
/// `input_hash` recomputed from the stored inputs.
pub fn validate(ds: &Dataset) -> ValidationReport {
    let m = ds.manifest();
    let mut rep = ValidationReport::default();
    let expected = schema::file_schema(m);
    let corpus_rows = m.corpus.rows;
    let mut seen = Seen::new(corpus_rows);
    for &id in &m.totals.skipped_row_ids {
        if id >= corpus_rows || !seen.mark(id) {
            rep.problems.push(format!(
                "manifest.json: skipped row id {id} is out of range or listed twice"
            ));
        }
    }
    let sums = (
        m.shards.iter().map(|s| s.rows).sum::<u64>(),
        m.shards.iter().map(|s| s.bytes).sum::<u64>(),
    );
    if sums != (m.totals.rows, m.totals.bytes) || m.totals.shards != m.shards.len() as u64 {
        rep.problems.push(format!(
            "manifest.json: totals ({} rows, {} bytes, {} shards) disagree with the shard entries ({} rows, {} bytes, {} shards)",
            m.totals.rows, m.totals.bytes, m.totals.shards, sums.0, sums.1, m.shards.len()
        ));
    }
    for s in &m.shards {
        rep.shards_checked += 1;
        if let Err(p) = check_shard(ds, s, &expected, &mut seen, &mut rep.rows_checked) {
            rep.problems.push(p);
        }
    }
    if ds.is_complete() {
        let missing: Vec<u64> = seen.missing(corpus_rows).take(11).collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(10).map(|i| i.to_string()).collect();
            rep.problems.push(format!(
                "manifest.json: row ids missing from every shard: {}{}",
                shown.join(", "),
                if missing.len() > 10 { ", ..." } else { "" }
            ));
        }
    }
    rep
}

/// [`check_shard_bytes`] with a panic of the Parquet library on damaged pages reported as
/// a problem of that shard.
fn check_shard(
    ds: &Dataset,
    s: &ShardEntry,
    expected: &Schema,
    seen: &mut Seen,
    rows_checked: &mut u64,
) -> Result<(), String> {
    crate::reader::catch_panics(|| check_shard_bytes(ds, s, expected, seen, rows_checked))
        .unwrap_or_else(|p| {
            Err(format!(
                "{}: the file is damaged ({p})",
                ds.shard_name(s).display()
            ))
        })
}

fn check_shard_bytes(
    ds: &Dataset,
    s: &ShardEntry,
    expected: &Schema,
    seen: &mut Seen,
    rows_checked: &mut u64,
) -> Result<(), String> {
    let m = ds.manifest();
    let path = ds.shard_name(s);
    let name = path.display().to_string();
    let (bytes, sha, input) = ds.shard_checksum(s).map_err(|e| e.to_string())?;
    if bytes != s.bytes {
        return Err(format!(
            "{name}: {bytes} bytes, the manifest says {} (truncated or replaced)",
            s.bytes
        ));
    }
    if sha != s.sha256 {
        return Err(format!(
            "{name}: sha256 {sha} differs from the manifest's {} (corrupted)",
            s.sha256
        ));
    }
    let meta = crate::reader::load_metadata(&path, &input).map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(input, meta);
    check_shard_metadata(&path, builder.metadata(), &m.dataset_id).map_err(|e| e.to_string())?;
    let found = Schema::new(builder.schema().fields().clone());
    if found != *expected {
        return Err(format!(
            "{name}: schema differs from the manifest's\n  expected: {expected}\n  found:    {found}"
        ));
    }
    let meta_rows = builder.metadata().file_metadata().num_rows() as u64;
    if meta_rows != s.rows {
        return Err(format!(
            "{name}: {meta_rows} rows, the manifest says {}",
            s.rows
        ));
    }
    let reader = builder
        .with_batch_size(1024)
        .build()
        .map_err(|e| format!("{name}: {e}"))?;
    let mut last: Option<u64> = None;
    let (mut first, mut positions, mut entries) = (None, 0u64, 0u64);
    let coded = m.targets.as_ref().filter(|t| t.coding.is_some());
    let mut coder = coded.map(|t| crate::coded::BlockCoder::new(t.axis_size, t.max_k()));
    let plain = schema::shard_schema(m);
    for b in reader {
        let b = b.map_err(|e| format!("{name}: parquet: {e}"))?;
        let b = match (coded, coder.as_mut()) {
            (Some(t), Some(c)) => crate::coded::arrow::decode_batch(t, &b, &plain, c)
                .map_err(|e| format!("{name}: {e}"))?,
            _ => b,
        };
        let rows = codec::decode(m, &b).map_err(|e| format!("{name}: {e}"))?;
        for &id in &rows.row_ids {
            if last.is_some_and(|l| id <= l) {
                return Err(format!(
                    "{name}: row id {id} follows {} (ids must increase)",
                    last.unwrap_or(0)
                ));
            }
            if id >= m.corpus.rows {
                return Err(format!(
                    "{name}: row id {id} is outside the corpus (0..{})",
                    m.corpus.rows
                ));
            }
            if !seen.mark(id) {
                return Err(format!(
                    "{name}: row id {id} appears in another shard too (or is listed as skipped)"
                ));
            }
            first = first.or(Some(id));
            last = Some(id);
        }
        *rows_checked += rows.len() as u64;
        codec::check_rows(m, &rows).map_err(|e| format!("{name}: {e}"))?;
        check_input_hashes(m, &rows).map_err(|e| format!("{name}: {e}"))?;
        if let Some(t) = &rows.targets {
            positions += t.positions() as u64;
            entries += t.topk.as_ref().map_or(0, |k| k.ids.len() as u64);
        }
    }
    if s.rows > 0 && (first != Some(s.first_row_id) || last != Some(s.last_row_id)) {
        let found = match (first, last) {
            (Some(a), Some(b)) => format!("run {a}..={b}"),
            _ => "are absent (no rows)".to_string(),
        };
        return Err(format!(
            "{name}: row ids {found}, the manifest says {}..={}",
            s.first_row_id, s.last_row_id
        ));
    }
    if m.targets.is_some() && (positions != s.positions || entries != s.entries) {
        return Err(format!(
            "{name}: {positions} positions and {entries} entries, the manifest says {} and {}",
            s.positions, s.entries
        ));
    }
    Ok(())
}

/// Recomputes each row's `input_hash` from its stored inputs (when every input is stored) and
/// compares it with the stored one.
fn check_input_hashes(m: &crate::Manifest, rows: &crate::RowBatch) -> Result<(), String> {
    let Some(hashes) = &rows.input_hashes else {
        return Ok(());
    };
    if m.inputs.is_empty() || m.inputs.iter().any(|s| !rows.inputs.contains_key(&s.name)) {
        return Ok(());
    }
    for (r, stored) in hashes.iter().enumerate() {
        let parts: Vec<(&str, Vec<u8>, usize)> = m
            .inputs
            .iter()
            .filter_map(|s| {
                let v = rows.inputs.get(&s.name)?;
                let range = v.offsets[r]..v.offsets[r + 1];
                Some((
                    s.name.as_str(),
                    v.values.le_bytes(range.clone()),
                    range.len(),
                ))
            })
            .collect();
        if crate::rows::input_hash_v1(&parts) != *stored {
            return Err(format!(
                "row {}: input_hash does not match the stored inputs (inputs or hash altered)",
                rows.row_ids[r]
            ));
        }
    }
    Ok(())
}
