//! End-to-end tests of the `logits-inspect` binary on datasets written by the format library.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use logits_format::manifest::{Granularity, TopK, ValueEncoding};
use logits_format::synth::{self, SynthSpec};
use logits_format::writer::WriteOptions;

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logits-inspect"))
        .args(args)
        .output()
        .expect("run logits-inspect")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn dataset(dir: &Path) {
    let spec = SynthSpec {
        granularity: Granularity::Position,
        axis_size: 500,
        topk: Some(TopK::Fixed { k: 16 }),
        values: ValueEncoding::Int8,
        positions: (2, 8),
        rows: 64,
        ..Default::default()
    };
    synth::write_dataset(&spec, dir, 20, WriteOptions::default()).unwrap();
}

#[test]
fn summary_json_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let d = dir.path().to_str().unwrap();
    let o = inspect(&[d, "--validate"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for want in [
        "64 in 4 shards",
        "top-16",
        "per position",
        "bytes per stored entry",
        "license     synthetic data",
        "retained top-k probability mass",
        "validation: OK (4 shards, 64 rows checked)",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    let o = inspect(&[d, "--json", "--validate"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"]["totals"]["rows"], 64);
    assert_eq!(v["validation"]["ok"], true);
    let mass: u64 = v["stats"]["mass_hist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(mass, v["manifest"]["totals"]["positions"].as_u64().unwrap());
}

#[test]
fn corrupt_dataset_fails_validation_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let shard = dir.path().join("shards/part-00002.parquet");
    let mut b = fs::read(&shard).unwrap();
    let n = b.len();
    b[n / 2] ^= 1;
    fs::write(&shard, b).unwrap();
    let o = inspect(&[
        dir.path().to_str().unwrap(),
        "--validate",
        "--stats-positions",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("part-00002.parquet: sha256"),
        "{}",
        text(&o)
    );
}

#[test]
fn unreadable_inputs_exit_1_with_the_file_named() {
    let o = inspect(&["/nonexistent/dataset"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("/nonexistent/dataset"), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let m = dir.path().join("manifest.json");
    let s = fs::read_to_string(&m).unwrap().replacen(
        "\"format_version\": \"1.",
        "\"format_version\": \"3.",
        1,
    );
    fs::write(&m, s).unwrap();
    let o = inspect(&[dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("format version 3.") && text(&o).contains("is not supported"),
        "{}",
        text(&o)
    );

    let o = inspect(&[]);
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn unfinished_build_needs_partial() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    // Turn the committed dataset back into an unfinished build with two completed shards.
    let m: logits_format::Manifest =
        serde_json::from_str(&fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    fs::create_dir_all(dir.path().join("_build/done")).unwrap();
    let mut draft = m.clone();
    draft.shards.clear();
    fs::write(dir.path().join("_build/draft.json"), draft.to_json()).unwrap();
    for (i, s) in m.shards.iter().take(2).enumerate() {
        let rec = logits_format::writer::ShardRecord {
            index: i as u32,
            entry: s.clone(),
            skipped_row_ids: vec![],
        };
        fs::write(
            dir.path().join(format!("_build/done/part-{i:05}.json")),
            serde_json::to_string(&rec).unwrap(),
        )
        .unwrap();
    }
    fs::remove_file(dir.path().join("manifest.json")).unwrap();
    let d = dir.path().to_str().unwrap();
    let o = inspect(&[d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("--partial") && text(&o).contains("2 shards done"),
        "{}",
        text(&o)
    );
    let o = inspect(&[d, "--partial", "--validate"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("UNFINISHED BUILD") && text(&o).contains("40 in 2 shards"),
        "{}",
        text(&o)
    );
}
