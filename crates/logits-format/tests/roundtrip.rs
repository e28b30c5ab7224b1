//! Round trips through real shard files: every granularity and encoding, shuffling and
//! projection, validation, the commit protocol, and each kind of corrupt or unsafe input.

use std::fs;
use std::path::Path;

use logits_format::codec::{INT8_EPS, INT8_STEP};
use logits_format::manifest::*;
use logits_format::rows::RowBatch;
use logits_format::synth::{self, SynthSpec};
use logits_format::writer::{self, CreateMode, DatasetWriter, WriteOptions};
use logits_format::{Dataset, ReadOptions, validate};

fn opts() -> WriteOptions {
    WriteOptions {
        zstd_level: 3,
        row_group_rows: 16,
        ..Default::default()
    }
}

fn read_all(ds: &Dataset, o: &ReadOptions) -> Vec<RowBatch> {
    let mut s = ds.stream(o).unwrap();
    let mut out = vec![];
    while let Some(b) = s.next_rows() {
        out.push(b.unwrap());
    }
    out
}

/// Largest decoding error allowed for a T=1 log-prob `l` under an encoding. For int8, `shift`
/// bounds the renormalisation that restores the exact tail.
fn tolerance(enc: ValueEncoding, l: f32, shift: f32) -> f32 {
    match enc {
        ValueEncoding::F32 => 0.0,
        ValueEncoding::F16 => l.abs() * 2f32.powi(-11) + shift + 1e-6,
        ValueEncoding::Bf16 => l.abs() * 2f32.powi(-8) + shift + 1e-6,
        ValueEncoding::Int8 => (l.abs() + INT8_EPS) * (INT8_STEP / 2.0).exp_m1() + shift + 1e-5,
    }
}

fn spec_for(g: Granularity, enc: ValueEncoding, fenc: FeatureEncoding) -> SynthSpec {
    SynthSpec {
        granularity: g,
        // One case crosses 65,536 so u32 ids are exercised; the rest stay small and quick.
        axis_size: match (g, enc) {
            (Granularity::Position, ValueEncoding::F32) => 70_000,
            (Granularity::Position, _) => 3_000,
            _ => 100,
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
        values: enc,
        temperatures: vec![2.0, 4.0],
        sampled: Some(SampledSpec {
            draws: 20,
            temperature: 1.0,
            seed: 9,
        }),
        features: vec![
            ("hidden".into(), 6, fenc, g),
            ("pooled".into(), 3, fenc, Granularity::Example),
        ],
        rows: 53,
        positions: (1, 6),
        ..Default::default()
    }
}

#[test]
fn every_granularity_and_encoding_round_trips() {
    let fencs = [
        FeatureEncoding::F32,
        FeatureEncoding::F16,
        FeatureEncoding::Int8,
    ];
    for g in [Granularity::Example, Granularity::Position] {
        // f16/bf16 also as format 1.0 wrote them (no exact tail), which must stay readable.
        let cases = ValueEncoding::ALL
            .into_iter()
            .enumerate()
            .flat_map(|(i, enc)| {
                let half = matches!(enc, ValueEncoding::F16 | ValueEncoding::Bf16);
                [(i, enc, false)]
                    .into_iter()
                    .chain(half.then_some((i, enc, true)))
            });
        for (i, enc, legacy) in cases {
            let fenc = fencs[i % 3];
            let dir = tempfile::tempdir().unwrap();
            let spec = SynthSpec {
                legacy_half: legacy,
                ..spec_for(g, enc, fenc)
            };
            let m = synth::write_dataset(&spec, dir.path(), 20, opts()).unwrap();
            let t = m.targets.as_ref().unwrap();
            assert_eq!(
                t.has_logtail(),
                enc == ValueEncoding::Int8 || !legacy && enc != ValueEncoding::F32,
                "{enc:?} legacy {legacy}"
            );
            assert_eq!(m.shards.len(), 3);
            assert_eq!(m.totals.rows, 53);
            let ds = Dataset::open(dir.path()).unwrap();
            let rep = validate(&ds);
            assert!(rep.is_ok(), "{g:?} {enc:?}: {:?}", rep.problems);
            assert_eq!(rep.rows_checked, 53);
            let got = read_all(
                &ds,
                &ReadOptions {
                    batch_size: 7,
                    ..Default::default()
                },
            );
            let want = synth::batch(&spec, ds.manifest(), 0..53);
            let ids: Vec<u64> = got.iter().flat_map(|b| b.row_ids.clone()).collect();
            assert_eq!(ids, want.row_ids);
            // Compare batch by batch against the same rows regenerated.
            for b in &got {
                let lo = b.row_ids[0];
                let w = synth::batch(&spec, ds.manifest(), lo..lo + b.len() as u64);
                assert_eq!(b.user_ids, w.user_ids);
                assert_eq!(b.input_hashes, w.input_hashes);
                assert_eq!(b.labels, w.labels);
                assert_eq!(b.inputs, w.inputs);
                let (gt, wt) = (b.targets.as_ref().unwrap(), w.targets.as_ref().unwrap());
                assert_eq!(gt.row_positions, wt.row_positions);
                assert_eq!(gt.logz, wt.logz);
                assert_eq!(gt.logz_temps, wt.logz_temps);
                assert_eq!(gt.sampled, wt.sampled);
                let (gk, wk) = (gt.topk.as_ref().unwrap(), wt.topk.as_ref().unwrap());
                assert_eq!(gk.offsets, wk.offsets);
                assert_eq!(gk.ids, wk.ids, "{g:?} {enc:?}");
                for p in 0..gt.logz.len() {
                    let r = gk.offsets[p]..gk.offsets[p + 1];
                    // Renormalisation moves every log-prob by at most the relative error of
                    // the kept mass (plus the f16 rounding of the stored log tail).
                    let (mut err_mass, mut kept) = (0.0f32, 0.0f32);
                    for i in r.clone() {
                        let l = wk.logits[i] - wt.logz[p];
                        kept += l.exp();
                        err_mass += l.exp() * tolerance(enc, l, 0.0);
                    }
                    let tail = (1.0 - kept).max(0.0);
                    let shift = 2.0 * (err_mass + tail * 0.01) / kept.max(1e-3);
                    if t.has_logtail() {
                        // The decoded kept mass is the exact one (to the f16 rounding of the
                        // stored ln tail), whatever the rounding of the entries.
                        let got: f64 = r
                            .clone()
                            .map(|i| ((gk.logits[i] - wt.logz[p]) as f64).exp())
                            .sum();
                        let want = 1.0 - tail as f64;
                        assert!(
                            (got - want).abs() <= 1e-6 + (tail as f64) * 2e-3,
                            "{g:?} {enc:?} pos {p}: kept mass {got} vs {want}"
                        );
                    }
                    for i in r {
                        let l = wk.logits[i] - wt.logz[p];
                        let err = (gk.logits[i] - wk.logits[i]).abs();
                        // Adding logz back costs one f32 rounding of the sum.
                        let tol = tolerance(enc, l, shift)
                            + 4.0 * f32::EPSILON * wt.logz[p].abs().max(1.0);
                        assert!(
                            err <= tol,
                            "{g:?} {enc:?} pos {p} entry {i}: err {err} > {tol}"
                        );
                    }
                }
                for (name, wf) in &w.features {
                    let gf = &b.features[name];
                    assert_eq!(gf.row_positions, wf.row_positions);
                    let width = if name == "hidden" { 6 } else { 3 };
                    for (c, (gv, wv)) in gf
                        .values
                        .chunks(width)
                        .zip(wf.values.chunks(width))
                        .enumerate()
                    {
                        let max = wv.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                        for (x, y) in gv.iter().zip(wv) {
                            let tol = match fenc {
                                FeatureEncoding::F32 => 0.0,
                                FeatureEncoding::F16 => y.abs() * 2f32.powi(-11) + 1e-7,
                                FeatureEncoding::Int8 => max / 127.0 / 2.0 + 1e-6,
                            };
                            assert!((x - y).abs() <= tol, "{name} chunk {c}: {x} vs {y}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn ids_widen_to_u32_past_65536() {
    let spec = spec_for(
        Granularity::Position,
        ValueEncoding::F32,
        FeatureEncoding::F32,
    );
    let m = synth::draft(&spec);
    assert_eq!(m.targets.unwrap().ids, IdEncoding::U32);
    assert_eq!(IdEncoding::for_axis(65_537), IdEncoding::U32);
    assert_eq!(IdEncoding::for_axis(65_536), IdEncoding::U16);
}

#[test]
fn shuffling_is_seeded_complete_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        rows: 300,
        ..Default::default()
    };
    synth::write_dataset(&spec, dir.path(), 64, opts()).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    let order = |seed: Option<u64>, buffer: usize| -> Vec<u64> {
        let o = ReadOptions {
            batch_size: 10,
            shuffle: seed,
            shuffle_buffer: buffer,
            columns: Some(vec![]),
            ..Default::default()
        };
        let mut s = ds.stream(&o).unwrap();
        let mut ids = vec![];
        for b in s.by_ref() {
            let b = b.unwrap();
            assert!(b.num_rows() <= 10);
            assert_eq!(b.num_columns(), 1, "only row_id was asked for");
            ids.extend(
                logits_format::codec::decode(ds.manifest(), &b)
                    .unwrap()
                    .row_ids,
            );
        }
        ids
    };
    let plain = order(None, 0);
    assert_eq!(plain, (0..300).collect::<Vec<_>>());
    let a = order(Some(5), 50);
    assert_eq!(a, order(Some(5), 50), "same seed, same order");
    assert_ne!(a, order(Some(6), 50));
    assert_ne!(a, plain);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, plain, "every row exactly once");
}

#[test]
fn row_range_and_projection() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        rows: 100,
        ..Default::default()
    };
    synth::write_dataset(&spec, dir.path(), 30, opts()).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    let o = ReadOptions {
        row_range: Some(25..70),
        columns: Some(vec!["label".into()]),
        ..Default::default()
    };
    let got = read_all(&ds, &o);
    let ids: Vec<u64> = got.iter().flat_map(|b| b.row_ids.clone()).collect();
    assert_eq!(ids, (25..70).collect::<Vec<_>>());
    assert!(got[0].labels.is_some() && got[0].targets.is_none() && got[0].inputs.is_empty());
    let bad = ReadOptions {
        columns: Some(vec!["nope".into()]),
        ..Default::default()
    };
    let e = ds.stream(&bad).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");

    // Parts (one per data-loader worker or rank): each shard in exactly one part.
    let shards = ds.manifest().shards.len();
    assert!(shards >= 3, "{shards} shards");
    let mut seen = Vec::new();
    for i in 0..3 {
        let part = read_all(
            &ds,
            &ReadOptions {
                part: Some((i, 3)),
                ..Default::default()
            },
        );
        let ids: Vec<u64> = part.iter().flat_map(|b| b.row_ids.clone()).collect();
        assert!(!ids.is_empty(), "part {i} of 3 is empty");
        seen.extend(ids);
    }
    seen.sort_unstable();
    let all: Vec<u64> = read_all(&ds, &ReadOptions::default())
        .iter()
        .flat_map(|b| b.row_ids.clone())
        .collect();
    assert_eq!(seen, all);
    let e = ds
        .stream(&ReadOptions {
            part: Some((3, 3)),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("part 3 of 3 does not exist"), "{e}");
}

fn small(dir: &Path) -> Manifest {
    synth::write_dataset(
        &SynthSpec {
            rows: 40,
            ..Default::default()
        },
        dir,
        20,
        opts(),
    )
    .unwrap()
}

fn stream_error(dir: &Path) -> String {
    let ds = match Dataset::open(dir) {
        Ok(ds) => ds,
        Err(e) => return e.to_string(),
    };
    let mut s = match ds.stream(&ReadOptions::default()) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    loop {
        match s.next_rows() {
            Some(Err(e)) => return e.to_string(),
            Some(Ok(_)) => {}
            None => return String::new(),
        }
    }
}

#[test]
fn truncated_and_bit_flipped_shards_are_named() {
    for mode in ["truncate", "flip", "missing", "footer"] {
        let dir = tempfile::tempdir().unwrap();
        let m = small(dir.path());
        let shard = dir.path().join(&m.shards[1].path);
        let mut bytes = fs::read(&shard).unwrap();
        match mode {
            "truncate" => bytes.truncate(bytes.len() / 2),
            "flip" => {
                let n = bytes.len();
                bytes[n / 3] ^= 0x10;
            }
            "footer" => {
                let n = bytes.len();
                bytes[n - 12] ^= 0xff;
            }
            _ => {}
        }
        if mode == "missing" {
            fs::remove_file(&shard).unwrap();
        } else {
            fs::write(&shard, &bytes).unwrap();
        }
        let rep = validate(&Dataset::open(dir.path()).unwrap());
        assert!(!rep.is_ok(), "{mode}");
        assert!(
            rep.problems[0].contains("part-00001.parquet"),
            "{mode}: {}",
            rep.problems[0]
        );
        if mode == "truncate" || mode == "missing" {
            // A flipped byte may or may not break decoding (streaming does not hash whole
            // files; validation does). A cut or missing file must fail to stream, named.
            let e = stream_error(dir.path());
            assert!(e.contains("part-00001.parquet"), "{mode}: {e}");
        }
    }
}

#[test]
fn schema_disagreeing_with_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    small(dir.path());
    let path = dir.path().join(MANIFEST_FILE);
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"values\": \"f32\"", "\"values\": \"f16\"");
    fs::write(&path, text).unwrap();
    let rep = validate(&Dataset::open(dir.path()).unwrap());
    assert!(
        rep.problems
            .iter()
            .any(|p| p.contains("schema differs") && p.contains("part-00000")),
        "{:?}",
        rep.problems
    );
    assert!(stream_error(dir.path()).contains("part-0000"));
}

#[test]
fn manifest_versions_and_malformed_manifests() {
    let dir = tempfile::tempdir().unwrap();
    small(dir.path());
    let path = dir.path().join(MANIFEST_FILE);
    let good = fs::read_to_string(&path).unwrap();
    // A newer minor version with an extra field is read.
    let current = format!("\"format_version\": \"1.{FORMAT_MINOR}\"");
    assert!(good.contains(&current), "{good}");
    let newer = good.replacen(
        &current,
        "\"format_version\": \"1.9\", \"future_field\": {\"x\": 1}",
        1,
    );
    fs::write(&path, &newer).unwrap();
    assert!(Dataset::open(dir.path()).is_ok());
    // An unknown major version is refused as such.
    fs::write(
        &path,
        good.replacen(&current, "\"format_version\": \"2.0\"", 1),
    )
    .unwrap();
    let e = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("2.0") && e.contains("manifest.json") && e.contains("not supported"),
        "{e}"
    );
    for (bad, expect) in [
        ("{", "malformed"),
        ("[]", "not a JSON object"),
        ("{\"format\": \"x\"}", "expected \"logits-dataset\""),
        (&good.replacen("\"rows\"", "\"rowz\"", 1), "malformed"),
        (
            &good.replacen(&current, "\"format_version\": 1", 1),
            "format_version",
        ),
    ] {
        fs::write(&path, bad).unwrap();
        let e = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("manifest.json") && e.contains(expect),
            "{bad:.40}: {e}"
        );
    }
}

#[test]
fn shard_paths_cannot_escape() {
    let dir = tempfile::tempdir().unwrap();
    let m = small(dir.path());
    let path = dir.path().join(MANIFEST_FILE);
    let good = fs::read_to_string(&path).unwrap();
    for bad in ["../outside.parquet", "/etc/passwd", "shards/../../x"] {
        fs::write(&path, good.replace(&m.shards[0].path, bad)).unwrap();
        let e = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not allowed") && e.contains(bad), "{e}");
    }
    // A symlink inside the dataset leading out of it.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("x.parquet");
    fs::copy(dir.path().join(&m.shards[0].path), &target).unwrap();
    fs::write(&path, &good).unwrap();
    let link = dir.path().join(&m.shards[0].path);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let rep = validate(&Dataset::open(dir.path()).unwrap());
    assert!(
        rep.problems
            .iter()
            .any(|p| p.contains("outside the dataset")),
        "{:?}",
        rep.problems
    );
    assert!(stream_error(dir.path()).contains("outside the dataset"));
}

#[test]
fn gaps_duplicates_and_totals_are_found() {
    let dir = tempfile::tempdir().unwrap();
    small(dir.path());
    let path = dir.path().join(MANIFEST_FILE);
    let good = fs::read_to_string(&path).unwrap();
    let mut m: Manifest = serde_json::from_str(&good).unwrap();
    m.corpus.rows = 41;
    fs::write(&path, m.to_json()).unwrap();
    let rep = validate(&Dataset::open(dir.path()).unwrap());
    assert!(
        rep.problems
            .iter()
            .any(|p| p.contains("missing from every shard: 40")),
        "{:?}",
        rep.problems
    );
    let mut m: Manifest = serde_json::from_str(&good).unwrap();
    m.shards.push(m.shards[0].clone());
    m.totals.rows += m.shards[0].rows;
    m.totals.bytes += m.shards[0].bytes;
    m.totals.shards += 1;
    fs::write(&path, m.to_json()).unwrap();
    // A shard listed twice is refused as soon as the manifest is read.
    let e = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("out of order") || e.contains("listed twice"),
        "{e}"
    );
}

#[test]
fn commit_protocol_resume_and_partial_reads() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        rows: 60,
        ..Default::default()
    };
    let draft = synth::draft(&spec);
    let mut w = DatasetWriter::create(dir.path(), draft.clone(), opts(), CreateMode::New).unwrap();
    // Shard 0 complete, shard 1 interrupted mid-way (dropped without finish).
    let mut s = w.shard(0).unwrap();
    s.write(&synth::batch(&spec, w.draft(), 0..20)).unwrap();
    let rec = s.finish().unwrap();
    w.record(rec).unwrap();
    let mut s = w.shard(1).unwrap();
    s.write(&synth::batch(&spec, w.draft(), 20..30)).unwrap();
    drop(s);
    drop(w);
    assert!(!dir.path().join(MANIFEST_FILE).exists());
    let names: Vec<String> = fs::read_dir(dir.path().join("shards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(
        names,
        vec!["part-00000.parquet".to_string()],
        "no partial file is left"
    );
    let e = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("not complete") && e.contains("1 shards done"),
        "{e}"
    );
    // Training may start on the completed part when asked explicitly.
    let part = Dataset::open_partial(dir.path()).unwrap();
    assert!(!part.is_complete());
    assert_eq!(part.manifest().totals.rows, 20);
    assert!(validate(&part).is_ok());
    // A new build without --resume is refused; so is a different dataset.
    let e = DatasetWriter::create(dir.path(), draft.clone(), opts(), CreateMode::New)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let mut other = draft.clone();
    other.corpus.fingerprint = "other".into();
    let e = DatasetWriter::create(dir.path(), other.clone(), opts(), CreateMode::Resume)
        .unwrap_err()
        .to_string();
    assert!(e.contains("different dataset"), "{e}");
    // Committing with a shard missing is refused.
    let e = writer::commit(dir.path(), Some(3)).unwrap_err().to_string();
    assert!(
        e.contains("2 of 3 shards") && e.contains("part-00001"),
        "{e}"
    );
    // Resume: shard 0 is kept, the rest is written, the commit succeeds.
    let mut w =
        DatasetWriter::create(dir.path(), draft.clone(), opts(), CreateMode::Resume).unwrap();
    assert_eq!(w.completed().keys().copied().collect::<Vec<_>>(), vec![0]);
    for i in 1..3u32 {
        let lo = i as u64 * 20;
        let mut s = w.shard(i).unwrap();
        s.write(&synth::batch(&spec, w.draft(), lo..lo + 20))
            .unwrap();
        let rec = s.finish().unwrap();
        w.record(rec).unwrap();
    }
    let m = w.commit(3).unwrap();
    assert_eq!(m.totals.rows, 60);
    assert!(!dir.path().join("_build").exists());
    let ds = Dataset::open(dir.path()).unwrap();
    assert!(validate(&ds).is_ok());
    // A complete dataset is not silently rebuilt, and a different one is refused.
    let e = DatasetWriter::create(dir.path(), draft.clone(), opts(), CreateMode::New)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already complete"), "{e}");
    let e = DatasetWriter::create(dir.path(), other, opts(), CreateMode::Join)
        .unwrap_err()
        .to_string();
    assert!(e.contains("different dataset"), "{e}");
    // A shard changed after its completion record is caught at merge.
    let dir2 = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(dir2.path(), draft, opts(), CreateMode::New).unwrap();
    let mut s = w.shard(0).unwrap();
    s.write(&synth::batch(&spec, w.draft(), 0..60)).unwrap();
    let rec = s.finish().unwrap();
    w.record(rec).unwrap();
    fs::write(dir2.path().join("shards/part-00000.parquet"), b"garbage").unwrap();
    let e = w.commit(1).unwrap_err().to_string();
    assert!(
        e.contains("part-00000.parquet") && e.contains("completion record"),
        "{e}"
    );
    assert!(
        !dir2.path().join(MANIFEST_FILE).exists(),
        "nothing marked complete"
    );
}

#[test]
fn writer_refuses_rows_breaking_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        rows: 10,
        ..Default::default()
    };
    let w =
        DatasetWriter::create(dir.path(), synth::draft(&spec), opts(), CreateMode::New).unwrap();
    let good = synth::batch(&spec, w.draft(), 0..10);
    type Corrupt = Box<dyn Fn(&mut RowBatch)>;
    let cases: Vec<(&str, Corrupt)> = vec![
        (
            "is NaN",
            Box::new(|b| b.targets.as_mut().unwrap().topk.as_mut().unwrap().logits[13] = f32::NAN),
        ),
        (
            "outside 0..10",
            Box::new(|b| b.targets.as_mut().unwrap().topk.as_mut().unwrap().ids[13] = 10),
        ),
        (
            "sorted",
            Box::new(|b| {
                b.targets
                    .as_mut()
                    .unwrap()
                    .topk
                    .as_mut()
                    .unwrap()
                    .logits
                    .swap(12, 13)
            }),
        ),
        (
            "logZ is inf",
            Box::new(|b| b.targets.as_mut().unwrap().logz[3] = f32::INFINITY),
        ),
        (
            "exceeds logZ",
            Box::new(|b| b.targets.as_mut().unwrap().logz[3] = -100.0),
        ),
        ("row ids must increase", Box::new(|b| b.row_ids.swap(2, 3))),
        (
            "label 99",
            Box::new(|b| b.labels.as_mut().unwrap()[3] = Some(99)),
        ),
        (
            "do not fit the declared shape",
            Box::new(|b| b.inputs.get_mut("input").unwrap().offsets[4] -= 1),
        ),
    ];
    for (expect, corrupt) in cases {
        let mut b = good.clone();
        corrupt(&mut b);
        let mut s = w.shard(0).unwrap();
        let e = s.write(&b).unwrap_err().to_string();
        assert!(e.contains(expect), "{expect}: {e}");
        assert!(
            e.contains("row 3") || expect.contains("increase"),
            "names the row: {e}"
        );
    }
}

#[test]
fn a_dataset_in_a_store_reads_and_validates_like_a_local_one() {
    // A file:// URL goes through the object-store path (upload, conditional finalize, markers,
    // remote merge, range reads) without a server.
    let spec = spec_for(
        Granularity::Position,
        ValueEncoding::F16,
        FeatureEncoding::F16,
    );
    let local = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let url = format!("file://{}/ds", store.path().display());
    let ml = synth::write_dataset(&spec, local.path(), 20, opts()).unwrap();
    let mr = synth::write_dataset(&spec, Path::new(&url), 20, opts()).unwrap();
    assert_eq!(
        ml.shards, mr.shards,
        "same shard bytes (sha256) wherever built"
    );
    assert!(
        !store.path().join("ds/_build").exists(),
        "build records removed"
    );
    let (dl, dr) = (
        Dataset::open(local.path()).unwrap(),
        Dataset::open(Path::new(&url)).unwrap(),
    );
    assert!(dr.is_remote() && !dl.is_remote());
    let rep = validate(&dr);
    assert!(rep.is_ok(), "{:?}", rep.problems);
    for columns in [None, Some(vec!["topk_ids".to_string()])] {
        let o = ReadOptions {
            batch_size: 5,
            shuffle: Some(4),
            shuffle_buffer: 17,
            columns,
            ..Default::default()
        };
        assert_eq!(read_all(&dl, &o), read_all(&dr, &o));
    }
    // A corrupted object is named by its URL.
    let shard = store.path().join("ds").join(&mr.shards[1].path);
    let mut bytes = fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&shard, bytes).unwrap();
    let rep = validate(&Dataset::open(Path::new(&url)).unwrap());
    assert!(!rep.is_ok());
    let msg = rep.problems.join("\n");
    assert!(
        msg.contains(&format!("{url}/{}", mr.shards[1].path)),
        "{msg}"
    );
    // Overwriting replaces the dataset and nothing else under the prefix.
    fs::write(store.path().join("ds/NOTES.txt"), "not a dataset file").unwrap();
    synth::write_dataset(&spec, Path::new(&url), 20, opts()).unwrap();
    assert!(store.path().join("ds/NOTES.txt").exists());
    // Building the same location again without --overwrite is refused.
    let e = DatasetWriter::create(Path::new(&url), ml.clone(), opts(), CreateMode::New)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already complete"), "{e}");
}

#[test]
fn manifests_listing_a_shard_twice_or_overlapping_ranges_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let m = small(d.path());
    let write = |m: &Manifest| fs::write(d.path().join(MANIFEST_FILE), m.to_json()).unwrap();
    let mut twice = m.clone();
    twice.shards[1] = twice.shards[0].clone();
    twice.shards[1].first_row_id = 20;
    twice.shards[1].last_row_id = 39;
    write(&twice);
    assert!(
        stream_error(d.path()).contains("listed twice"),
        "{}",
        stream_error(d.path())
    );
    let mut overlap = m.clone();
    overlap.shards[1].first_row_id = 10;
    write(&overlap);
    assert!(
        stream_error(d.path()).contains("overlap"),
        "{}",
        stream_error(d.path())
    );
    let mut crowded = m.clone();
    crowded.shards[0].rows = 500;
    write(&crowded);
    assert!(
        stream_error(d.path()).contains("cannot fit"),
        "{}",
        stream_error(d.path())
    );
    // A manifest entry whose range does not match the shard's rows (a checksum-consistent
    // swap of entries) is caught by the reader's row-id check.
    let mut shifted = m.clone();
    shifted.shards[1].first_row_id = 21;
    shifted.shards[1].last_row_id = 40;
    write(&shifted);
    assert!(
        stream_error(d.path()).contains("outside the shard's range"),
        "{}",
        stream_error(d.path())
    );
    write(&m);
    assert_eq!(stream_error(d.path()), "");
}

#[test]
fn a_joining_worker_removes_only_dead_processes_temporaries() {
    let d = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        rows: 40,
        ..Default::default()
    };
    let draft = synth::draft(&spec);
    let w = DatasetWriter::create(d.path(), draft.clone(), opts(), CreateMode::Join).unwrap();
    drop(w);
    let host = logits_format::host::host_name();
    // A process that has ended: its pid names no running process now.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let live = format!(".part-00001.parquet.{host}.{}.0.tmp", std::process::id());
    let stale = format!(".part-00002.parquet.{host}.{dead}.0.tmp");
    let foreign = ".part-00003.parquet.some-other-host.1.0.tmp".to_string();
    for n in [&live, &stale, &foreign] {
        fs::write(d.path().join("shards").join(n), b"partial").unwrap();
    }
    let w = DatasetWriter::create(d.path(), draft, opts(), CreateMode::Join).unwrap();
    drop(w);
    let shards = d.path().join("shards");
    assert!(
        shards.join(&live).exists(),
        "a live worker's file was removed"
    );
    assert!(
        !shards.join(&stale).exists(),
        "a dead worker's file was kept"
    );
    assert!(
        shards.join(&foreign).exists(),
        "another host's file was removed"
    );
}
