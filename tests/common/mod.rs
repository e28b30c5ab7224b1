//! Helpers the end-to-end tests share: where the fixtures are, and running the real binaries.
#![allow(dead_code)] // each test file uses its own subset

pub mod moto;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Int64Array, ListArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under the repository root, as a string argument.
pub fn fixture(p: &str) -> String {
    root().join(p).display().to_string()
}

/// `logits-build build` arguments for the digits dataset most end-to-end tests train on: the
/// train and holdout corpus (held out from row 1437), top-5 with logZ at T = 2, 4, a teacher
/// feature, labels, written to `out`.
pub fn digits_build_args(out: &str) -> Vec<String> {
    let mut a = digits_corpus_args("fixtures/digits/train.parquet", out);
    a.extend(["--feature".to_string(), "penult=hidden2:f16".to_string()]);
    a
}

/// The same build from another training corpus (a fixture path), without the feature.
pub fn digits_corpus_args(train: &str, out: &str) -> Vec<String> {
    [
        "build",
        "--model",
        &fixture("fixtures/digits/digits_teacher.onnx"),
        "--corpus",
        &fixture(train),
        &fixture("fixtures/digits/holdout.parquet"),
        "--holdout-from",
        "1437",
        "--label-column",
        "label",
        "-k",
        "5",
        "--temperatures",
        "2,4",
        "--quiet",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `logits-train train` arguments for a tiny transformer student (width 16, 1 block, 2 heads,
/// 8 windows a step) from dataset `ds` (a path or URL) into `out`, then `extra`.
pub fn tiny_lm_train_args(ds: &str, out: &str, extra: &[&str]) -> Vec<String> {
    [
        "train",
        ds,
        "--out",
        out,
        "--quiet",
        "--lm-dim",
        "16",
        "--lm-layers",
        "1",
        "--lm-heads",
        "2",
        "--batch-size",
        "8",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `logits-build` with `args` (job-array variables removed from the environment).
pub fn logits_build<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logits-build"))
        .args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .expect("run logits-build")
}

/// Runs `logits-train` with `args`.
pub fn logits_train<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_logits-train"))
        .args(args)
        .output()
        .expect("run logits-train")
}

/// Runs `cmd` to its end, failing the test if it is still running after `secs` seconds (it is
/// killed first): the check that a program never hangs.
pub fn output_within(mut cmd: Command, secs: u64, what: &str) -> Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Pipes are drained on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed().as_secs() >= secs {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&e.join().unwrap_or_default()).to_string();
            panic!("{what}: still running after {secs} s (hung); killed. stderr:\n{stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
    }
}

/// A `logits-build` command with `args` and `env`, job-array variables removed.
pub fn build_command<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_logits-build"));
    c.args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("LOGITS_FAULT");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Writes a tensor corpus: one list column `pixels` (float32, or int64 with `ints`) a row.
pub fn write_corpus(path: &Path, rows: &[Vec<f32>], ints: bool) {
    let offsets: Vec<i32> = std::iter::once(0)
        .chain(rows.iter().scan(0, |a, r| {
            *a += r.len() as i32;
            Some(*a)
        }))
        .collect();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let (child, dt): (ArrayRef, DataType) = if ints {
        (
            Arc::new(Int64Array::from(
                flat.iter().map(|&x| x as i64).collect::<Vec<_>>(),
            )),
            DataType::Int64,
        )
    } else {
        (Arc::new(Float32Array::from(flat)), DataType::Float32)
    };
    let field = Arc::new(Field::new_list_field(dt, true));
    let list = ListArray::new(
        field.clone(),
        arrow_buffer::OffsetBuffer::new(offsets.into()),
        child,
        None,
    );
    let schema = Arc::new(Schema::new(vec![Field::new(
        "pixels",
        DataType::List(field),
        true,
    )]));
    let rb = RecordBatch::try_new(schema.clone(), vec![Arc::new(list)]).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&rb).unwrap();
    w.close().unwrap();
}

/// Compares the targets of two datasets built from the same teacher and corpus, one with
/// `--postprocess host` and one with `--postprocess graph`: the same rows and positions, the
/// same ids in the same order, bit-equal values, logZ at every temperature within 1e-6
/// relative. Returns the positions compared and the largest logZ difference.
pub fn same_targets(host: &Path, graph: &Path) -> (usize, f64) {
    use logits_format::{Dataset, ReadOptions};
    let read = |p: &Path| {
        let ds = Dataset::open(p).unwrap();
        let mut s = ds.stream(&ReadOptions::default()).unwrap();
        let mut out = Vec::new();
        while let Some(b) = s.next_rows() {
            out.push(b.unwrap());
        }
        out
    };
    let (a, b) = (read(host), read(graph));
    assert_eq!(a.len(), b.len(), "{host:?} vs {graph:?}: batches");
    let (mut positions, mut worst) = (0usize, 0.0f64);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.row_ids, y.row_ids);
        let (tx, ty) = (x.targets.as_ref().unwrap(), y.targets.as_ref().unwrap());
        assert_eq!(tx.row_positions, ty.row_positions, "{graph:?}: positions");
        let (kx, ky) = (tx.topk.as_ref().unwrap(), ty.topk.as_ref().unwrap());
        assert_eq!(kx.offsets, ky.offsets, "{graph:?}: entries per position");
        assert_eq!(kx.ids, ky.ids, "{graph:?}: ids");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&kx.logits), bits(&ky.logits), "{graph:?}: values");
        for (u, v) in tx
            .logz
            .iter()
            .chain(&tx.logz_temps)
            .zip(ty.logz.iter().chain(&ty.logz_temps))
        {
            let d = ((u - v) as f64).abs() / (*u as f64).abs().max(1e-30);
            worst = worst.max(d);
            assert!(d <= 1e-6, "{graph:?}: logZ {u} vs {v}");
        }
        positions += tx.logz.len();
    }
    assert!(positions > 0, "{host:?}: no positions compared");
    (positions, worst)
}
