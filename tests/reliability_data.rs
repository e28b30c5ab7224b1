//! End-to-end reliability of what is built and trained: shards are verified before use by
//! every reader (training, inspect, validate), damaged or swapped shards and rows that break
//! the contract are refused with the file, row and column named; a resumed build rewrites
//! shards lost since they were recorded; job-array workers that all run at once commit; a
//! training run is guarded against divergence, bad options, a second writer, a stop signal
//! and a damaged checkpoint. Every run is under a timeout.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type, UInt64Type};
use arrow_array::{ArrayRef, Float32Array, Int64Array, ListArray, RecordBatch, UInt64Array};
use common::{build_command, output_within, text};

fn train_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logits-train"));
    c.args(args);
    c
}

fn inspect(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logits-inspect"));
    c.args(args);
    output_within(c, 120, "logits-inspect")
}

/// The digits dataset (train and holdout corpus, labels, top-5 with logZ at 2 and 4) in
/// shards of 500 rows (unless `extra` says otherwise), at `out`.
fn digits(out: &Path, extra: &[&str]) -> Output {
    let mut a =
        common::digits_corpus_args("fixtures/digits/train.parquet", &out.display().to_string());
    if !extra.contains(&"--rows-per-shard") {
        a.extend(["--rows-per-shard".into(), "500".into()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    output_within(build_command(&a, &[]), 120, "digits build")
}

fn manifest(ds: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ds.join("manifest.json")).expect("manifest"))
        .expect("json")
}

fn shard_hashes(ds: &Path) -> Vec<String> {
    manifest(ds)["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["sha256"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

/// Writes the manifest's size and sha256 of shard `i` from the file as it now is, so the
/// damage is checksum-consistent and only the deeper checks can catch it.
fn reseal(ds: &Path, i: usize) {
    let mut m = manifest(ds);
    let rel = m["shards"][i]["path"].as_str().expect("path").to_string();
    let (n, sha) = logits_format::writer::file_sha256(&ds.join(rel)).expect("hash");
    let old = m["shards"][i]["bytes"].as_u64().unwrap_or(0);
    m["shards"][i]["bytes"] = n.into();
    m["shards"][i]["sha256"] = sha.into();
    let total = m["totals"]["bytes"].as_u64().unwrap_or(0) + n - old;
    m["totals"]["bytes"] = total.into();
    std::fs::write(
        ds.join("manifest.json"),
        serde_json::to_vec_pretty(&m).expect("json"),
    )
    .expect("write manifest");
}

/// Rewrites shard `i`'s rows through `f` (same schema and key/value metadata), resealed.
fn rewrite_shard(ds: &Path, i: usize, f: impl Fn(RecordBatch) -> RecordBatch) {
    let rel = manifest(ds)["shards"][i]["path"]
        .as_str()
        .expect("path")
        .to_string();
    let path = ds.join(rel);
    let file = std::fs::File::open(&path).expect("open");
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("reader");
    let kv = b.metadata().file_metadata().key_value_metadata().cloned();
    let schema = b.schema().clone();
    let batches: Vec<RecordBatch> = b
        .build()
        .expect("build")
        .map(|r| f(r.expect("batch")))
        .collect();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(kv)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).expect("create"),
        schema,
        Some(props),
    )
    .expect("writer");
    for rb in &batches {
        w.write(rb).expect("write");
    }
    w.close().expect("close");
    reseal(ds, i);
}

/// `b` with column `name` replaced by `f(column)`.
fn with_column(b: RecordBatch, name: &str, f: impl Fn(&ArrayRef) -> ArrayRef) -> RecordBatch {
    let i = b.schema().index_of(name).expect("column");
    let mut cols = b.columns().to_vec();
    cols[i] = f(&cols[i]);
    RecordBatch::try_new(b.schema(), cols).expect("batch")
}

fn train_args<'a>(ds: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", ds, "--out", out, "--quiet", "--hidden", "16"];
    a.extend(extra);
    a
}

fn train(ds: &Path, out: &Path, extra: &[&str]) -> Output {
    let (d, o) = (ds.display().to_string(), out.display().to_string());
    output_within(
        train_command(&train_args(&d, &o, extra)),
        300,
        "logits-train",
    )
}

#[test]
fn damaged_swapped_and_missing_shards_are_refused_by_every_reader() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = tmp.path().join("good");
    let o = digits(&good, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(manifest(&good)["shards"].as_array().map(Vec::len), Some(4));
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 6] = [
        (
            "flipped byte",
            |d| {
                let p = d.join("shards/part-00001.parquet");
                let mut b = std::fs::read(&p).expect("read");
                let at = b.len() / 2;
                b[at] ^= 0x10;
                std::fs::write(&p, b).expect("write");
            },
            "sha256",
        ),
        (
            "truncated",
            |d| {
                let p = d.join("shards/part-00002.parquet");
                let b = std::fs::read(&p).expect("read");
                std::fs::write(&p, &b[..b.len() - 100]).expect("write");
            },
            "truncated or replaced",
        ),
        (
            "missing",
            |d| std::fs::remove_file(d.join("shards/part-00003.parquet")).expect("rm"),
            "part-00003.parquet",
        ),
        (
            "swapped, checksums swapped too",
            |d| {
                let (a, b) = (
                    d.join("shards/part-00000.parquet"),
                    d.join("shards/part-00001.parquet"),
                );
                let tmp = d.join("swap");
                std::fs::rename(&a, &tmp).expect("mv");
                std::fs::rename(&b, &a).expect("mv");
                std::fs::rename(&tmp, &b).expect("mv");
                reseal(d, 0);
                reseal(d, 1);
            },
            "swapped",
        ),
        (
            "duplicated over another, resealed",
            |d| {
                std::fs::copy(
                    d.join("shards/part-00000.parquet"),
                    d.join("shards/part-00002.parquet"),
                )
                .expect("cp");
                reseal(d, 2);
            },
            "part-00002.parquet",
        ),
        (
            "footer byte flipped, resealed",
            |d| {
                let p = d.join("shards/part-00001.parquet");
                let mut b = std::fs::read(&p).expect("read");
                // Inside the Thrift footer, before its 4-byte length and the magic.
                let at = b.len() - 8 - 40;
                b[at] ^= 0xff;
                std::fs::write(&p, b).expect("write");
                reseal(d, 1);
            },
            "part-00001.parquet",
        ),
    ];
    for (i, (what, damage, wants)) in cases.into_iter().enumerate() {
        let ds = tmp.path().join(format!("ds{i}"));
        copy_dir(&good, &ds);
        damage(&ds);
        let out = tmp.path().join(format!("run{i}"));
        let o = train(&ds, &out, &["--steps", "20"]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        assert!(
            text(&o).contains(wants),
            "{what}: wanted {wants:?} in {}",
            text(&o)
        );
        assert!(!text(&o).contains("panicked"), "{what}: {}", text(&o));
        assert!(
            !out.join("student.onnx").exists(),
            "{what}: a student was exported"
        );
        let ds_s = ds.display().to_string();
        let o = inspect(&[&ds_s, "--validate"]);
        assert!(
            matches!(o.status.code(), Some(1) | Some(3)),
            "{what}: {}",
            text(&o)
        );
        assert!(!text(&o).contains("panicked"), "{what}: {}", text(&o));
    }
}

#[test]
fn rows_that_break_the_contract_are_refused_with_row_and_column() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = tmp.path().join("good");
    let o = digits(&good, &[]);
    assert!(o.status.success(), "{}", text(&o));
    type Edit = fn(RecordBatch) -> RecordBatch;
    let cases: [(&str, Edit, &str); 6] = [
        (
            "NaN logZ",
            |b| {
                with_column(b, "logz", |c| {
                    let mut x = c.as_primitive::<Float32Type>().values().to_vec();
                    x[3] = f32::NAN;
                    Arc::new(Float32Array::from(x))
                })
            },
            "logz",
        ),
        (
            "logZ below the kept entries",
            |b| {
                with_column(b, "logz", |c| {
                    let mut x = c.as_primitive::<Float32Type>().values().to_vec();
                    x[3] -= 30.0;
                    Arc::new(Float32Array::from(x))
                })
            },
            "logz",
        ),
        (
            "label out of range",
            |b| {
                with_column(b, "label", |c| {
                    let mut x: Vec<Option<i64>> = c.as_primitive::<Int64Type>().iter().collect();
                    x[3] = Some(99);
                    Arc::new(Int64Array::from(x))
                })
            },
            "label 99 outside 0..10",
        ),
        (
            "duplicate row id",
            |b| {
                with_column(b, "row_id", |c| {
                    let mut x = c.as_primitive::<UInt64Type>().values().to_vec();
                    x[4] = x[3];
                    Arc::new(UInt64Array::from(x))
                })
            },
            "appears twice",
        ),
        (
            "NaN input",
            |b| {
                with_column(b, "in_pixels", |c| {
                    let l = c.as_list::<i32>();
                    let mut x = l.values().as_primitive::<Float32Type>().values().to_vec();
                    x[3 * 64 + 5] = f32::NAN;
                    let (field, offsets, _, nulls) = l.clone().into_parts();
                    Arc::new(ListArray::new(
                        field,
                        offsets,
                        Arc::new(Float32Array::from(x)),
                        nulls,
                    ))
                })
            },
            "NaN or infinite",
        ),
        (
            "wrong k in a row",
            |b| {
                // Row 3 gives its last entry to row 4 (4 entries, then 6), ids and values alike.
                let shift = |c: &ArrayRef| -> ArrayRef {
                    let (field, offsets, values, nulls) = c.as_list::<i32>().clone().into_parts();
                    let mut o: Vec<i32> = offsets.iter().copied().collect();
                    o[4] -= 1;
                    let offsets = arrow_buffer::OffsetBuffer::new(o.into());
                    Arc::new(ListArray::new(field, offsets, values, nulls))
                };
                with_column(with_column(b, "topk_ids", shift), "topk_values", shift)
            },
            "entries",
        ),
    ];
    for (i, (what, edit, wants)) in cases.into_iter().enumerate() {
        let ds = tmp.path().join(format!("ds{i}"));
        copy_dir(&good, &ds);
        rewrite_shard(&ds, 1, edit);
        let out = tmp.path().join(format!("run{i}"));
        let o = train(&ds, &out, &["--steps", "20", "--in-memory"]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        assert!(
            text(&o).contains(wants),
            "{what}: wanted {wants:?} in {}",
            text(&o)
        );
        let ds_s = ds.display().to_string();
        let o = inspect(&[&ds_s, "--validate", "--stats-positions", "0"]);
        assert_eq!(o.status.code(), Some(3), "{what}: {}", text(&o));
        assert!(text(&o).contains("part-00001"), "{what}: {}", text(&o));
    }
}

#[test]
fn a_resume_rewrites_shards_lost_or_damaged_since_they_were_recorded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reference = tmp.path().join("reference");
    assert!(digits(&reference, &[]).status.success());
    let out = tmp.path().join("out");
    // Stop the build in its fourth shard (batches of 64: 8 a shard), then lose shard 0 and
    // damage shard 1, as a crash and a bad disk might.
    let mut a =
        common::digits_corpus_args("fixtures/digits/train.parquet", &out.display().to_string());
    a.extend(["--rows-per-shard".into(), "500".into()]);
    let o = output_within(
        build_command(&a, &[("LOGITS_FAULT", "post:27")]),
        120,
        "faulty build",
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    std::fs::remove_file(out.join("shards/part-00000.parquet")).expect("rm");
    let p = out.join("shards/part-00001.parquet");
    let mut b = std::fs::read(&p).expect("read");
    b[100] ^= 1;
    std::fs::write(&p, b).expect("write");
    let o = digits(&out, &["--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("part-00000.parquet") && said.contains("part-00001.parquet"),
        "{said}"
    );
    assert_eq!(shard_hashes(&out), shard_hashes(&reference));
}

#[test]
fn job_array_workers_running_at_once_commit_the_dataset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reference = tmp.path().join("reference");
    assert!(
        digits(&reference, &["--rows-per-shard", "100"])
            .status
            .success()
    );
    for round in 0..2 {
        let out = tmp.path().join(format!("out{round}"));
        let children: Vec<_> = (0..4)
            .map(|i| {
                let mut a = common::digits_corpus_args(
                    "fixtures/digits/train.parquet",
                    &out.display().to_string(),
                );
                a.extend(
                    [
                        "--rows-per-shard",
                        "100",
                        "--num-workers",
                        "4",
                        "--worker-index",
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
                a.push(i.to_string());
                build_command(&a, &[])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        let mut committed = 0;
        for c in children {
            let o = c.wait_with_output().expect("wait");
            assert!(o.status.success(), "{}", text(&o));
            committed += text(&o).contains("dataset committed") as usize;
        }
        assert!(committed >= 1, "no worker committed");
        assert!(out.join("manifest.json").exists());
        assert!(!out.join("_build").exists());
        assert!(!out.join(".logits.lock").exists());
        assert_eq!(shard_hashes(&out), shard_hashes(&reference));
    }
}

#[test]
fn a_diverged_or_misconfigured_student_is_never_exported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    assert!(digits(&ds, &[]).status.success());
    let out = tmp.path().join("diverged");
    let o = train(&ds, &out, &["--lr", "1e30", "--steps", "50"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("non-finite value at step"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("lower the learning rate"), "{}", text(&o));
    assert!(!out.join("student.onnx").exists());
    let usage: [(&[&str], &str); 12] = [
        (&["--lr", "inf"], "--lr"),
        (&["--lr", "NaN"], "--lr"),
        (&["--weight-decay", "NaN"], "--weight-decay"),
        (&["--kd", "NaN"], "--kd"),
        (&["--kd=-1"], "--kd"),
        (&["--ce", "NaN"], "--ce"),
        (&["--momentum", "5"], "--momentum"),
        (&["--momentum", "NaN"], "--momentum"),
        (&["--epochs", "0"], "--epochs"),
        (&["--steps", "0"], "--steps"),
        (&["--clip-norm=-1"], "--clip-norm"),
        (&["--feature-loss", "sp:penult@0=-3"], "weight"),
    ];
    for (i, (args, wants)) in usage.into_iter().enumerate() {
        let out = tmp.path().join(format!("u{i}"));
        let o = train(&ds, &out, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(wants), "{args:?}: {}", text(&o));
    }
    let o = train(
        &ds,
        &tmp.path().join("huge"),
        &["--hidden", "1000000,1000000"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("GiB"), "{}", text(&o));
}

/// Waits until `out/metrics.jsonl` has a line (the run is training).
fn wait_training(out: &Path) {
    let start = std::time::Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |s| s.lines().count()) < 2 {
        assert!(start.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(unix)]
#[test]
fn a_stopped_training_run_resumes_and_a_second_writer_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    assert!(digits(&ds, &[]).status.success());
    let out = tmp.path().join("run");
    let (d, o_) = (ds.display().to_string(), out.display().to_string());
    let args = train_args(&d, &o_, &["--steps", "3000"]);
    let child = train_command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_training(&out);
    let second = output_within(
        train_command(&train_args(&d, &o_, &["--steps", "3000", "--resume"])),
        60,
        "second run",
    );
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(
        text(&second).contains(&format!("a training run by pid {}", child.id())),
        "{}",
        text(&second)
    );
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(128 + libc::SIGTERM), "{}", text(&o));
    assert!(text(&o).contains("--resume"), "{}", text(&o));
    assert!(!out.join("student.onnx").exists());
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).expect("a checkpoint");
    assert!(latest.starts_with("step-"), "{latest}");
    let o = output_within(
        train_command(&train_args(&d, &o_, &["--steps", "3000", "--resume"])),
        300,
        "resume",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("student.onnx").exists());
    assert!(!out.join(".logits.lock").exists());
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ds = tmp.path().join("ds");
    assert!(digits(&ds, &[]).status.success());
    let out = tmp.path().join("run");
    let o = train(&ds, &out, &["--steps", "200", "--checkpoint-every", "50"]);
    assert!(o.status.success(), "{}", text(&o));
    let latest: PathBuf = out.join("checkpoints").join(
        std::fs::read_to_string(out.join("checkpoints/latest"))
            .expect("latest")
            .trim(),
    );
    let f = latest.join("student.safetensors");
    let b = std::fs::read(&f).expect("read");
    std::fs::write(&f, &b[..b.len() / 2]).expect("truncate");
    let o = train(
        &ds,
        &out,
        &["--steps", "200", "--checkpoint-every", "50", "--resume"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("damaged") && text(&o).contains("step-00000150"),
        "{}",
        text(&o)
    );
}
