//! Context-coded top-k (`ctx-v1`): a coded dataset reads back as the same int8 dataset written
//! plain (ids within runs of equal codes in ascending order), however it is read: in order,
//! shuffled, projected, in parts; and validates.

use std::collections::BTreeMap;

use logits_format::manifest::{Granularity, TopK, ValueEncoding};
use logits_format::rows::RowBatch;
use logits_format::synth::{self, SynthSpec};
use logits_format::writer::WriteOptions;
use logits_format::{Dataset, ReadOptions, validate};

fn opts() -> WriteOptions {
    WriteOptions {
        zstd_level: 3,
        // Small row groups: many coding blocks, and writes cut across them.
        row_group_rows: 7,
        ..Default::default()
    }
}

fn spec(g: Granularity, coded: bool) -> SynthSpec {
    SynthSpec {
        granularity: g,
        axis_size: if g == Granularity::Position {
            3_000
        } else {
            100
        },
        topk: Some(if g == Granularity::Position {
            TopK::Adaptive {
                min_k: 2,
                max_k: 12,
                mass: 0.95,
            }
        } else {
            TopK::Fixed { k: 8 }
        }),
        values: ValueEncoding::Int8,
        temperatures: vec![2.0],
        rows: 61,
        positions: (1, 9),
        coded,
        ..Default::default()
    }
}

/// Every row's positions as (logz, entries sorted by id), keyed by row id.
type Rows = BTreeMap<u64, Vec<(u32, Vec<(u32, u32)>)>>;

fn rows_of(batches: &[RowBatch]) -> Rows {
    let mut out = Rows::new();
    for b in batches {
        let t = b.targets.as_ref().unwrap();
        let k = t.topk.as_ref().unwrap();
        for (r, &id) in b.row_ids.iter().enumerate() {
            let mut ps = Vec::new();
            for p in t.row_positions[r]..t.row_positions[r + 1] {
                let mut e: Vec<(u32, u32)> = (k.offsets[p]..k.offsets[p + 1])
                    .map(|i| (k.ids[i], k.logits[i].to_bits()))
                    .collect();
                // Decoded values tie exactly where the codes tie; the order of tied ids is the
                // one thing the coding may change.
                let vals: Vec<u32> = e.iter().map(|x| x.1).collect();
                let mut sorted = vals.clone();
                sorted.sort_by(|a, b| f32::from_bits(*b).total_cmp(&f32::from_bits(*a)));
                assert_eq!(
                    vals, sorted,
                    "row {id}: values must stay in descending order"
                );
                e.sort();
                ps.push((t.logz[p].to_bits(), e));
            }
            assert!(out.insert(id, ps).is_none(), "row {id} read twice");
        }
    }
    out
}

fn read(ds: &Dataset, o: &ReadOptions) -> Vec<RowBatch> {
    let mut s = ds.stream(o).unwrap();
    let mut out = Vec::new();
    while let Some(b) = s.next_rows() {
        out.push(b.unwrap());
    }
    out
}

#[test]
fn coded_datasets_read_back_as_the_plain_int8_dataset() {
    for g in [Granularity::Position, Granularity::Example] {
        let (pd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        synth::write_dataset(&spec(g, false), pd.path(), 25, opts()).unwrap();
        let m = synth::write_dataset(&spec(g, true), cd.path(), 25, opts()).unwrap();
        assert_eq!(m.format_version, "1.2");
        let plain = Dataset::open(pd.path()).unwrap();
        let coded = Dataset::open(cd.path()).unwrap();
        let rep = validate(&coded);
        assert!(rep.is_ok(), "{g:?}: {:?}", rep.problems);
        assert_eq!(rep.rows_checked, 61);
        let want = rows_of(&read(&plain, &ReadOptions::default()));
        assert_eq!(want.len(), 61);
        let o = ReadOptions {
            batch_size: 5,
            ..Default::default()
        };
        assert_eq!(rows_of(&read(&coded, &o)), want, "{g:?}: in order");
        for seed in [1, 2] {
            let o = ReadOptions {
                batch_size: 4,
                shuffle: Some(seed),
                shuffle_buffer: 9,
                ..Default::default()
            };
            assert_eq!(rows_of(&read(&coded, &o)), want, "{g:?}: shuffled");
        }
        let mut parts = Rows::new();
        for i in 0..2 {
            let o = ReadOptions {
                part: Some((i, 2)),
                ..Default::default()
            };
            parts.extend(rows_of(&read(&coded, &o)));
        }
        assert_eq!(parts, want, "{g:?}: parts");
        // Only the ids asked for: the coded column is still decoded, the rest left out.
        let o = ReadOptions {
            columns: Some(vec!["topk_ids".into()]),
            ..Default::default()
        };
        let mut s = coded.stream(&o).unwrap();
        let b = s.next().unwrap().unwrap();
        let names: Vec<String> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["row_id", "topk_ids"]);
        // The files hold the coded column in place of ids and steps.
        let shard = cd.path().join(&m.shards[0].path);
        let f = std::fs::File::open(shard).unwrap();
        let pb = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        let cols: Vec<String> = pb
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert!(cols.contains(&"topk_coded".to_string()), "{cols:?}");
        assert!(!cols.contains(&"topk_ids".to_string()));
        let groups = pb.metadata().num_row_groups();
        assert_eq!(groups, 4, "25 rows in row groups of 7");
    }
}

#[test]
fn coding_needs_int8_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let s = SynthSpec {
        values: ValueEncoding::F16,
        ..spec(Granularity::Position, true)
    };
    let e = synth::write_dataset(&s, dir.path(), 25, opts()).unwrap_err();
    assert!(e.to_string().contains("int8"), "{e}");
}
