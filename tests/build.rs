//! End-to-end tests of `logits-build` on the digits fixture teacher (and the tiny LM for
//! per-token determinism): determinism across sessions and threads, resume, job-array workers
//! and merge, and every kind of bad input.
//! ONNX Runtime comes from ORT_DYLIB_PATH or the cache scripts/fetch-ort.sh fills.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
fn model() -> String {
    root()
        .join("fixtures/digits/digits_teacher.onnx")
        .display()
        .to_string()
}
fn train() -> String {
    root()
        .join("fixtures/digits/train.parquet")
        .display()
        .to_string()
}

/// The tiny LM fixture: model, tokenizer and held-out text.
fn tinylm() -> (PathBuf, PathBuf, PathBuf) {
    let lm = root().join("fixtures/tinylm");
    (
        lm.join("tiny_lm.onnx"),
        lm.join("tokenizer.json"),
        lm.join("holdout.jsonl"),
    )
}

/// `build` over the tiny LM fixture's held-out text into `out`, then `extra`.
fn tinylm_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let (m, tok, corpus) = tinylm();
    let path = |p: &Path| p.display().to_string();
    let mut a = vec![
        "build".to_string(),
        "--model".into(),
        path(&m),
        "--tokenizer".into(),
        path(&tok),
        "--corpus".into(),
        path(&corpus),
        "--out".into(),
        path(out),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let exe = match bin {
        "build" => env!("CARGO_BIN_EXE_logits-build"),
        _ => env!("CARGO_BIN_EXE_logits-inspect"),
    };
    let mut c = Command::new(exe);
    c.args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn build(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let m = model();
    let c = train();
    let o = out.display().to_string();
    let mut args = vec![
        "build",
        "--model",
        &m,
        "--corpus",
        &c,
        "--out",
        &o,
        "--label-column",
        "label",
        "--id-column",
        "id",
        "-k",
        "4",
        "--temperatures",
        "2,4",
        "--feature",
        "penult=hidden2:f16",
        "--rows-per-shard",
        "300",
        "--batch-size",
        "32",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run("build", &args, env)
}

/// A committed dataset's manifest as JSON.
fn manifest_of(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn shard_hashes(dir: &Path) -> Vec<(String, String)> {
    let m = manifest_of(dir);
    m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["path"].as_str().unwrap().into(),
                s["sha256"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn output_is_identical_whatever_sessions_and_threads() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let o = build(a.path(), &["--sessions", "1", "--threads", "1"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = build(b.path(), &["--sessions", "3", "--threads", "2"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let h = shard_hashes(a.path());
    assert_eq!(h.len(), 5);
    assert_eq!(h, shard_hashes(b.path()), "shards must be byte-identical");
    let v = run("inspect", &[a.path().to_str().unwrap(), "--validate"], &[]);
    assert!(
        v.status.success() && text(&v).contains("validation: OK (5 shards, 1437 rows"),
        "{}",
        text(&v)
    );
}

#[test]
fn per_token_output_is_identical_whatever_sessions_and_threads() {
    // The language-model path: a vocabulary-sized output per position, post-processed while
    // the session runs the next batch, with extra temperatures and sampled targets.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for (dir, (sessions, threads)) in dirs.iter().zip([("1", "1"), ("3", "2")]) {
        let a = tinylm_args(
            dir.path(),
            &[
                "--window",
                "64",
                "--stride",
                "48",
                "-k",
                "16",
                "--temperatures",
                "0.5,2",
                "--sample",
                "8",
                "--rows-per-shard",
                "20",
                "--batch-size",
                "3",
                "--sessions",
                sessions,
                "--threads",
                threads,
                "--quiet",
            ],
        );
        let o = run(
            "build",
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let h = shard_hashes(dirs[0].path());
    assert!(h.len() >= 3, "{h:?}");
    assert_eq!(
        h,
        shard_hashes(dirs[1].path()),
        "shards must be byte-identical"
    );
}

#[test]
fn job_array_workers_resume_and_merge() {
    let single = tempfile::tempdir().unwrap();
    assert!(build(single.path(), &[], &[]).status.success());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    // Worker 1 of 2 from the scheduler's variable, worker 0 from the flag.
    let o = build(
        &out,
        &["--num-workers", "2"],
        &[("SLURM_ARRAY_TASK_ID", "1")],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("other workers' shards pending"),
        "{}",
        text(&o)
    );
    assert!(!out.join("manifest.json").exists());
    // A plain build over an unfinished one is refused, naming --resume.
    let o = build(&out, &[], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--resume"), "{}", text(&o));
    // Merging now is refused: shards are missing.
    let o = run("build", &["merge", out.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("3 of 5 shards are not complete"),
        "{}",
        text(&o)
    );
    // Re-running worker 1 skips its done shards; worker 0 does the rest.
    let o = build(
        &out,
        &["--num-workers", "2", "--worker-index", "1", "--json"],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["shards_written"].as_u64(), v["shards_kept"].as_u64()),
        (Some(0), Some(2))
    );
    let o = build(&out, &["--num-workers", "2", "--worker-index", "0"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    // The last worker to finish commits (all shards are there); merge then validates it.
    assert!(out.join("manifest.json").exists());
    assert_eq!(shard_hashes(&out), shard_hashes(single.path()));
    let o = run("build", &["merge", out.to_str().unwrap(), "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["shards"].as_u64(), Some(5), "{v}");
}

#[test]
fn resume_keeps_completed_shards() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    assert!(
        build(&out, &["--num-workers", "5", "--worker-index", "2"], &[])
            .status
            .success()
    );
    let o = build(&out, &["--resume", "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            v["shards_written"].as_u64(),
            v["shards_kept"].as_u64(),
            v["committed"].as_bool()
        ),
        (Some(4), Some(1), Some(true))
    );
    // A complete dataset is not rebuilt silently; a different one is refused.
    let o = build(&out, &[], &[]);
    assert!(text(&o).contains("already complete"), "{}", text(&o));
    let o = build(&out, &["--zstd-level", "5", "--resume"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("already complete") || text(&o).contains("different dataset"),
        "{}",
        text(&o)
    );
    let o = build(&out, &["--zstd-level", "5", "--overwrite"], &[]);
    assert!(o.status.success(), "{}", text(&o));
}

fn expect_error(args: &[&str], wants: &[&str]) {
    let o = run("build", args, &[]);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
    for w in wants {
        assert!(
            text(&o).contains(w),
            "{args:?}: missing {w:?} in {}",
            text(&o)
        );
    }
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).display().to_string();
    let (m, c) = (model(), train());
    fs::write(p("junk.onnx"), b"this is not a model").unwrap();
    expect_error(
        &[
            "build",
            "--model",
            &p("junk.onnx"),
            "--corpus",
            &c,
            "--out",
            &p("o1"),
        ],
        &["junk.onnx", "not an ONNX model"],
    );
    expect_error(
        &[
            "build",
            "--model",
            &m,
            "--corpus",
            &c,
            "--out",
            &p("o2"),
            "--input",
            "nope=pixels",
        ],
        &["no input \"nope\""],
    );
    expect_error(
        &[
            "build",
            "--model",
            &m,
            "--corpus",
            &c,
            "--out",
            &p("o3"),
            "--input",
            "pixels=nope",
        ],
        &["train.parquet", "no column \"nope\""],
    );
    expect_error(
        &[
            "build",
            "--model",
            &m,
            "--corpus",
            &c,
            "--out",
            &p("o4"),
            "-k",
            "11",
        ],
        &["k = 11", "10 classes"],
    );
    expect_error(
        &[
            "build",
            "--model",
            &m,
            "--corpus",
            &c,
            "--out",
            &p("o5"),
            "--feature",
            "x=hiden2",
        ],
        &["no tensor named \"hiden2\"", "\"hidden2\""],
    );
    common::write_corpus(&d.path().join("empty.parquet"), &[], false);
    expect_error(
        &[
            "build",
            "--model",
            &m,
            "--corpus",
            &p("empty.parquet"),
            "--out",
            &p("o6"),
        ],
        &["empty.parquet", "empty"],
    );
    common::write_corpus(
        &d.path().join("short.parquet"),
        &[vec![0.0; 64], vec![0.0; 63]],
        false,
    );
    expect_error(
        &[
            "build",
            "--model",
            &m,
            "--corpus",
            &p("short.parquet"),
            "--out",
            &p("o7"),
        ],
        &["row 1", "63 values", "64"],
    );
    common::write_corpus(&d.path().join("ints.parquet"), &[vec![1.0; 64]], true);
    expect_error(
        &[
            "build",
            "--model",
            &m,
            "--corpus",
            &p("ints.parquet"),
            "--out",
            &p("o8"),
        ],
        &["row 0", "float32", "integers"],
    );
    let mut nan = vec![vec![0.5f32; 64]; 3];
    nan[2][5] = f32::NAN;
    common::write_corpus(&d.path().join("nan.parquet"), &nan, false);
    expect_error(
        &[
            "build",
            "--model",
            &m,
            "--corpus",
            &p("nan.parquet"),
            "--out",
            &p("o9"),
        ],
        &["row 2", "non-finite", "--skip-non-finite"],
    );
    assert!(
        !d.path().join("o9/manifest.json").exists(),
        "no dataset marked complete"
    );
    let o = run(
        "build",
        &[
            "build",
            "--model",
            &m,
            "--corpus",
            &p("nan.parquet"),
            "--out",
            &p("o10"),
            "--skip-non-finite",
            "--quiet",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let man: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.path().join("o10/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(man["totals"]["skipped_row_ids"], serde_json::json!([2]));
    assert_eq!(man["totals"]["rows"], 2);
    let v = run("inspect", &[&p("o10"), "--validate"], &[]);
    assert!(v.status.success(), "{}", text(&v));
    // An output directory holding something else.
    fs::create_dir_all(d.path().join("o11")).unwrap();
    fs::write(d.path().join("o11/notes.txt"), b"mine").unwrap();
    expect_error(
        &["build", "--model", &m, "--corpus", &c, "--out", &p("o11")],
        &["not empty", "--overwrite"],
    );
    // ONNX Runtime missing.
    let o = Command::new(env!("CARGO_BIN_EXE_logits-build"))
        .args(["build", "--model", &m, "--corpus", &c, "--out", &p("o12")])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("fetch-ort.sh"), "{}", text(&o));
}

#[test]
fn inspect_model_lists_capturable_tensors() {
    let o = run("build", &["inspect-model", &model()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    for w in [
        "pixels",
        "float32 [batch, 64]",
        "logits",
        "float32 [batch, 10]",
        "hidden2",
        "from Relu",
    ] {
        assert!(text(&o).contains(w), "{w}: {}", text(&o));
    }
    let sm = root().join("fixtures/digits/digits_teacher_softmax.onnx");
    let o = run("build", &["inspect-model", sm.to_str().unwrap()], &[]);
    assert!(text(&o).contains("softmax: probabilities"), "{}", text(&o));
}

#[test]
fn text_corpora_build_per_token_targets() {
    let d = tempfile::tempdir().unwrap();
    let (m, tok, corpus) = tinylm();
    let out = d.path().join("lm");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = tinylm_args(
            &out,
            &[
                "--window",
                "32",
                "-k",
                "8",
                "--values",
                "int8",
                "--feature",
                "h=hidden:last",
                "--quiet",
            ],
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let a = args(&[]);
    let o = run(
        "build",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v = run("inspect", &[out.to_str().unwrap(), "--validate"], &[]);
    assert!(
        v.status.success()
            && text(&v).contains("per position")
            && text(&v).contains("tokenizer   tokenizer.json (vocab 1000"),
        "{}",
        text(&v)
    );
    // Bad tokenizers: unreadable, and one whose vocabulary does not fit the model.
    fs::write(d.path().join("bad.json"), b"{not json").unwrap();
    let bad = d.path().join("bad.json").display().to_string();
    expect_error(
        &[
            "build",
            "--model",
            m.to_str().unwrap(),
            "--tokenizer",
            &bad,
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            &d.path().join("x").display().to_string(),
        ],
        &["bad.json", "cannot read the tokenizer"],
    );
    expect_error(
        &[
            "build",
            "--model",
            &model(),
            "--tokenizer",
            tok.to_str().unwrap(),
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            &d.path().join("y").display().to_string(),
        ],
        &[
            "digits_teacher.onnx",
            "no int64 or int32 input to take token ids",
        ],
    );
    // A tokenizer larger than the model's embedding table (GPT-2's 8192 ids for the tiny
    // LM's 1000 rows).
    let gpt2_tok = root().join("fixtures/gpt2/tokenizer.json");
    expect_error(
        &[
            "build",
            "--model",
            m.to_str().unwrap(),
            "--tokenizer",
            gpt2_tok.to_str().unwrap(),
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            &d.path().join("z").display().to_string(),
        ],
        &[
            "vocabulary (8192 ids) is larger",
            "embedding table (1000 rows",
        ],
    );
}

/// A softmax written out as Exp → ReduceSum → Div (as jax2tf writes it) is recognised from the
/// graph; one the graph does not show (the sum as a MatMul with ones) stops the build on its
/// first batch instead of storing probabilities as logits, and with `--output-is-probability`
/// it builds; the manifest records how the output kind was decided.
#[test]
fn probabilities_are_never_stored_as_logits() {
    use logits_onnx::builder::{Attr, Dim, GraphBuilder};
    use logits_onnx::model::ElemType;
    let d = tempfile::tempdir().unwrap();
    let softmax_model = |name: &str, sum_by_matmul: bool| {
        let mut g = GraphBuilder::new();
        let batch = Dim::Named("batch".into());
        let x = g.input(
            "pixels",
            ElemType::Float32,
            &[batch.clone(), Dim::Fixed(64)],
        );
        let w: Vec<f32> = (0..640)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.002)
            .collect();
        let w = g.weight("w", &[64, 10], &w);
        let z = g.node("MatMul", &[&x, &w], &[]);
        let e = g.node("Exp", &[&z], &[]);
        let sum = if sum_by_matmul {
            let ones = g.weight("ones", &[10, 10], &[1.0; 100]);
            g.node("MatMul", &[&e, &ones], &[])
        } else {
            let axes = g.ints("axes", &[1], &[1]);
            g.node("ReduceSum", &[&e, &axes], &[("keepdims", Attr::Int(1))])
        };
        let p = g.node("Div", &[&e, &sum], &[]);
        g.output("probs", &p, ElemType::Float32, &[batch, Dim::Fixed(10)]);
        let model = d.path().join(format!("{name}.onnx"));
        fs::write(
            &model,
            logits_onnx::model::encode(&g.finish(name, 13, "test", "")),
        )
        .unwrap();
        model
    };
    let corpus = train();
    let build_with = |model: &Path, out: &Path, extra: &[&str]| {
        let mut a = vec![
            "build",
            "--model",
            model.to_str().unwrap(),
            "--corpus",
            &corpus,
            "--out",
            out.to_str().unwrap(),
            "-k",
            "3",
            "--quiet",
        ];
        a.extend(extra);
        run("build", &a, &[])
    };
    let rec_out = d.path().join("recognised");
    let o = build_with(&softmax_model("decomposed", false), &rec_out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let m = manifest_of(&rec_out);
    assert_eq!(m["targets"]["output_is_probability"], true);
    assert_eq!(
        m["build"]["output_kind"],
        "probabilities: the graph ends in a softmax"
    );
    let model = softmax_model("hidden_softmax", true);
    let out = d.path().join("out");
    let o = build_with(&model, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("holds probabilities, not logits"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("--output-is-probability"), "{}", text(&o));
    assert!(!out.join("manifest.json").exists());
    // The graph path sees the same from its row sums and minima.
    let o = build_with(&model, &out, &["--postprocess", "graph", "--overwrite"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("holds probabilities, not logits"),
        "{}",
        text(&o)
    );
    assert!(!out.join("manifest.json").exists());
    let o = build_with(&model, &out, &["--output-is-probability", "--overwrite"]);
    assert!(o.status.success(), "{}", text(&o));
    let m = manifest_of(&out);
    assert_eq!(m["targets"]["output_is_probability"], true);
    assert_eq!(
        m["build"]["output_kind"],
        "probabilities: --output-is-probability"
    );
    // A sigmoid (multi-label) output is refused, never treated as softmax logits.
    let mut g = GraphBuilder::new();
    let batch = Dim::Named("batch".into());
    let x = g.input(
        "pixels",
        ElemType::Float32,
        &[batch.clone(), Dim::Fixed(64)],
    );
    let w = g.weight("w", &[64, 10], &[0.01; 640]);
    let z = g.node("MatMul", &[&x, &w], &[]);
    let p = g.node("Sigmoid", &[&z], &[]);
    g.output("probs", &p, ElemType::Float32, &[batch, Dim::Fixed(10)]);
    let sig = d.path().join("sigmoid.onnx");
    fs::write(
        &sig,
        logits_onnx::model::encode(&g.finish("sigmoid", 13, "test", "")),
    )
    .unwrap();
    let o = build_with(&sig, &out, &["--overwrite"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("ends in a Sigmoid"), "{}", text(&o));
}

/// The top-k targets of a committed dataset, row by row (ids and logits).
fn targets_of(ds: &Path) -> Vec<(Vec<u32>, Vec<f32>)> {
    let ds = logits_format::Dataset::open(ds).unwrap();
    let mut s = ds.stream(&logits_format::ReadOptions::default()).unwrap();
    let mut out = Vec::new();
    while let Some(b) = s.next_rows() {
        let t = b.unwrap().targets.unwrap();
        let k = t.topk.unwrap();
        for p in 0..k.offsets.len() - 1 {
            let r = k.offsets[p]..k.offsets[p + 1];
            out.push((k.ids[r.clone()].to_vec(), k.logits[r].to_vec()));
        }
    }
    out
}

/// Models that take int32, uint8 or bool inputs (as TF/JAX exporters and vision models write
/// them) are fed from an integer corpus, converted with a range check, and give exactly the
/// targets of the same network taking float32.
#[test]
fn integer_and_bool_inputs_are_fed_in_the_model_s_type() {
    use logits_onnx::builder::{Attr, Dim, GraphBuilder};
    use logits_onnx::model::ElemType;
    let d = tempfile::tempdir().unwrap();
    let w: Vec<f32> = (0..640)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
        .collect();
    let model = |elem: ElemType, name: &str| {
        let mut g = GraphBuilder::new();
        let batch = Dim::Named("batch".into());
        let x = g.input("pixels", elem, &[batch.clone(), Dim::Fixed(64)]);
        let x = if elem == ElemType::Float32 {
            x
        } else {
            g.node("Cast", &[&x], &[("to", Attr::Int(1))])
        };
        let w = g.weight("w", &[64, 10], &w);
        let z = g.node("MatMul", &[&x, &w], &[]);
        g.output("logits", &z, ElemType::Float32, &[batch, Dim::Fixed(10)]);
        let p = d.path().join(format!("{name}.onnx"));
        fs::write(
            &p,
            logits_onnx::model::encode(&g.finish(name, 13, "test", "")),
        )
        .unwrap();
        p
    };
    let rows: Vec<Vec<f32>> = (0..300)
        .map(|r| (0..64).map(|c| ((r * 7 + c * 3) % 17) as f32).collect())
        .collect();
    let bits: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| r.iter().map(|&x| (x > 8.0) as u8 as f32).collect())
        .collect();
    let (floats, ints, bools) = (
        d.path().join("f.parquet"),
        d.path().join("i.parquet"),
        d.path().join("b.parquet"),
    );
    common::write_corpus(&floats, &rows, false);
    common::write_corpus(&ints, &rows, true);
    common::write_corpus(&d.path().join("bf.parquet"), &bits, false);
    common::write_corpus(&bools, &bits, true);
    let build_ok = |m: &Path, corpus: &Path, out: &str| {
        let out = d.path().join(out);
        let o = run(
            "build",
            &[
                "build",
                "--model",
                m.to_str().unwrap(),
                "--corpus",
                corpus.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "-k",
                "4",
                "--batch-size",
                "32",
                "--quiet",
            ],
            &[],
        );
        assert!(o.status.success(), "{}: {}", m.display(), text(&o));
        out
    };
    let reference = targets_of(&build_ok(&model(ElemType::Float32, "f32"), &floats, "f"));
    assert_eq!(reference.len(), 300);
    for (elem, name) in [
        (ElemType::Int32, "i32"),
        (ElemType::Uint8, "u8"),
        (ElemType::Int8, "i8"),
    ] {
        let got = targets_of(&build_ok(&model(elem, name), &ints, name));
        assert_eq!(got, reference, "{name}");
    }
    let bool_reference = targets_of(&build_ok(
        &model(ElemType::Float32, "f32b"),
        &d.path().join("bf.parquet"),
        "bf",
    ));
    assert_eq!(
        targets_of(&build_ok(&model(ElemType::Bool, "bool"), &bools, "bool")),
        bool_reference
    );
    // A value the model's type cannot hold names its row and value.
    let mut big = rows.clone();
    big[217][5] = 300.0;
    let bad = d.path().join("big.parquet");
    common::write_corpus(&bad, &big, true);
    let m = model(ElemType::Uint8, "u8b");
    let o = run(
        "build",
        &[
            "build",
            "--model",
            m.to_str().unwrap(),
            "--corpus",
            bad.to_str().unwrap(),
            "--out",
            d.path().join("bad").to_str().unwrap(),
            "-k",
            "4",
            "--quiet",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("row 217") && text(&o).contains("value 300 is outside uint8's range"),
        "{}",
        text(&o)
    );
}

/// A built dataset is Hub-ready: it carries a card (`README.md`) whose `configs` give
/// `datasets.load_dataset(dir)` the declared splits (shards restart at the held-out boundary,
/// so each lies on one side of it), its shards decode alone from their
/// Parquet key-value metadata, and a text dataset carries its `tokenizer.json` (checked with
/// Hugging Face `datasets` when the test command names its Python).
#[test]
fn datasets_are_hub_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let digits = tmp.path().join("digits").display().to_string();
    let mut args = common::digits_corpus_args("fixtures/digits/train.parquet", &digits);
    args.extend(["--rows-per-shard".to_string(), "1000".to_string()]);
    let o = common::logits_build(&args);
    assert!(o.status.success(), "{}", text(&o));
    let card = std::fs::read_to_string(format!("{digits}/README.md")).unwrap();
    assert!(
        card.contains("- split: test\n    path:\n    - \"shards/part-00002.parquet\"\n"),
        "{card}"
    );
    let text_ds = tmp.path().join("text").display().to_string();
    let o = common::logits_build(&[
        "build",
        "--model",
        &common::fixture("fixtures/zoo/bert_seq.onnx"),
        "--corpus",
        &common::fixture("fixtures/zoo/docs.jsonl"),
        "--tokenizer",
        &common::fixture("fixtures/tinylm/tokenizer.json"),
        "-k",
        "3",
        "--window",
        "32",
        "--quiet",
        "--out",
        &text_ds,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(format!("{text_ds}/tokenizer.json")).unwrap(),
        std::fs::read(common::fixture("fixtures/tinylm/tokenizer.json")).unwrap()
    );
    if let Ok(py) = std::env::var("LOGITS_ORACLE_PY") {
        for ds in [&digits, &text_ds] {
            let mut c = std::process::Command::new(&py);
            c.arg(common::fixture("scripts/check_hub_dataset.py"))
                .arg(ds);
            let o = common::output_within(c, 300, "the Hub check");
            assert!(
                o.status.success() && text(&o).contains(" 0 failed"),
                "{ds}: {}",
                text(&o)
            );
        }
    }
}

/// A binary copied out of the checkout (no `ORT_DYLIB_PATH`, no repository `.cache` beside it)
/// finds ONNX Runtime in the `onnxruntime` Python package when one is importable, and without
/// one says every way to provide it.
#[test]
fn an_installed_binary_finds_onnx_runtime_from_the_python_package() {
    let Ok(py) = std::env::var("LOGITS_ORACLE_PY") else {
        return;
    };
    // The binary runs elsewhere: a relative interpreter path is made absolute (not resolved:
    // a virtual environment's python is a symlink whose target would lose the environment).
    let py = std::path::absolute(&py).unwrap().display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("logits-build");
    if fs::hard_link(env!("CARGO_BIN_EXE_logits-build"), &bin).is_err() {
        fs::copy(env!("CARGO_BIN_EXE_logits-build"), &bin).unwrap();
    }
    let run = |python: &str| {
        let out = tmp.path().join(format!("ds{}", python.len()));
        let mut c = Command::new(&bin);
        c.args(["build", "--model", &model(), "--corpus"])
            .arg(common::fixture("fixtures/digits/holdout.parquet"))
            .args(["--quiet", "--out"])
            .arg(&out)
            .current_dir(tmp.path())
            .env_remove("ORT_DYLIB_PATH")
            .env_remove("LOGITS_CACHE")
            .env("LOGITS_PYTHON", python);
        common::output_within(c, 120, "an installed logits-build")
    };
    let o = run(&py);
    assert!(o.status.success(), "{}", text(&o));
    let o = run("/nonexistent/python3");
    let t = text(&o);
    assert!(
        !o.status.success()
            && t.contains("pip install onnxruntime")
            && t.contains("ORT_DYLIB_PATH"),
        "{t}"
    );
}

/// The image the scheduler examples run points ORT_DYLIB_PATH at the library version that
/// `scripts/fetch-ort.sh` fetches (scripts/ort-version.txt), so the two cannot drift apart.
#[test]
fn the_dockerfile_loads_the_pinned_onnx_runtime() {
    let root = common::root();
    let version = std::fs::read_to_string(root.join("scripts/ort-version.txt")).unwrap();
    let docker = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let want = format!("libonnxruntime.so.{}", version.trim());
    assert!(
        docker
            .lines()
            .any(|l| l.starts_with("ENV ORT_DYLIB_PATH=") && l.ends_with(&want)),
        "the Dockerfile's ORT_DYLIB_PATH should name {want}"
    );
    for example in [
        "scripts/scheduler/k8s-build-job.yaml",
        "scripts/scheduler/slurm-build.sbatch",
    ] {
        let text = std::fs::read_to_string(root.join(example)).unwrap();
        assert!(
            !text.contains("target/release"),
            "{example} should call the installed binaries"
        );
    }
}

/// `--device`: a GPU the loaded ONNX Runtime cannot use (here: the CPU-only library) is refused
/// at once, naming the provider, the library and what to do, before anything is written;
/// `auto` falls back to the CPU and says so in the manifest; the device is not part of the
/// dataset's identity, so the shards equal a plain CPU build's; an unknown name is a usage
/// error.
#[test]
fn devices_are_chosen_explicitly_and_never_fall_back_silently() {
    let d = tempfile::tempdir().unwrap();
    let run = |name: &str, device: &str| {
        let out = d.path().join(name);
        let mut a = common::digits_build_args(out.to_str().unwrap());
        a.extend(["--device".into(), device.into()]);
        (out, common::logits_build(&a))
    };
    for gpu in ["cuda", "tensorrt:1", "cpu,cuda:0"] {
        let (out, o) = run(&format!("gpu-{}", gpu.replace([':', ','], "-")), gpu);
        let t = common::text(&o);
        assert_eq!(o.status.code(), Some(1), "{gpu}: {t}");
        assert!(
            t.contains("ExecutionProvider")
                && t.contains("libonnxruntime")
                && t.contains("fetch-ort.sh --gpu")
                && t.contains("--device cpu"),
            "{gpu}: {t}"
        );
        assert!(!out.exists(), "{gpu}: nothing should be written");
    }
    let (_, o) = run("bad", "gpu");
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));

    let (cpu, o) = run("cpu", "cpu");
    assert!(o.status.success(), "{}", common::text(&o));
    let (auto, o) = run("auto", "auto");
    assert!(o.status.success(), "{}", common::text(&o));
    let manifest = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("manifest.json")).unwrap()).unwrap()
    };
    let (mc, ma) = (manifest(&cpu), manifest(&auto));
    assert_eq!(mc["tool"]["runtime"]["devices"], serde_json::json!(["cpu"]));
    assert_eq!(
        mc["tool"]["runtime"]["providers"],
        serde_json::json!(["CPUExecutionProvider"])
    );
    assert!(mc["tool"]["runtime"]["note"].is_null(), "{mc}");
    // The default `--postprocess auto` is the host on the CPU, also when `--device auto`
    // found no GPU (its plan for a GPU is made again for the CPU).
    assert_eq!(mc["tool"]["runtime"]["postprocess"], "host");
    assert_eq!(ma["tool"]["runtime"]["postprocess"], "host");
    assert_eq!(ma["tool"]["runtime"]["devices"], serde_json::json!(["cpu"]));
    assert!(
        ma["tool"]["runtime"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("--device auto") && n.contains("CPU")),
        "{ma}"
    );
    assert_eq!(mc["dataset_id"], ma["dataset_id"]);
    for (a, b) in mc["shards"]
        .as_array()
        .unwrap()
        .iter()
        .zip(ma["shards"].as_array().unwrap())
    {
        assert_eq!(a["sha256"], b["sha256"]);
    }
}

/// `--postprocess graph` on the committed fixtures (a classifier with adaptive k and three
/// temperatures, a tiny LM and the GPT-2 LM per token with features) gives the host path's
/// targets: same ids, bit-equal values, logZ within 1e-6 relative; exactly tied logits keep
/// the lower id first as FORMAT.md says; what the graph path cannot do (sampling, a hidden
/// softmax) is refused or caught as on the host.
#[test]
fn in_graph_postprocessing_matches_the_host_on_the_fixtures() {
    use logits_onnx::builder::{Dim, GraphBuilder};
    use logits_onnx::model::ElemType;
    let d = tempfile::tempdir().unwrap();
    let both = |name: &str, args: &[String]| {
        let mut outs = Vec::new();
        for mode in ["host", "graph"] {
            let out = d.path().join(format!("{name}-{mode}"));
            let mut a = args.to_vec();
            a.extend(
                ["--out", out.to_str().unwrap(), "--postprocess", mode]
                    .iter()
                    .map(|s| s.to_string()),
            );
            let o = common::logits_build(&a);
            assert!(o.status.success(), "{name} {mode}: {}", common::text(&o));
            outs.push(out);
        }
        let (n, worst) = common::same_targets(&outs[0], &outs[1]);
        eprintln!("{name}: {n} positions, logZ within {worst:.1e}");
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let digits = common::fixture("fixtures/digits/digits_teacher.onnx");
    let train = common::fixture("fixtures/digits/train.parquet");
    both(
        "digits",
        &s(&[
            "build",
            "--model",
            &digits,
            "--corpus",
            &train,
            "--adaptive-k",
            "2:0.99",
            "-k",
            "8",
            "--temperatures",
            "2,4,8",
            "--quiet",
        ]),
    );
    let tiny = common::fixture("fixtures/tinylm/tiny_lm.onnx");
    let tok = common::fixture("fixtures/tinylm/tokenizer.json");
    let text = common::fixture("fixtures/tinylm/holdout.jsonl");
    both(
        "tinylm",
        &s(&[
            "build",
            "--model",
            &tiny,
            "--tokenizer",
            &tok,
            "--corpus",
            &text,
            "--window",
            "64",
            "--stride",
            "48",
            "-k",
            "16",
            "--adaptive-k",
            "4:0.9",
            "--temperatures",
            "2",
            "--feature",
            "h=hidden:f16",
            "--batch-size",
            "8",
            "--sessions",
            "2",
            "--quiet",
        ]),
    );
    let gpt2 = common::fixture("fixtures/gpt2/gpt2_teacher.onnx");
    let gtok = common::fixture("fixtures/gpt2/tokenizer.json");
    let gtext = common::fixture("fixtures/gpt2/holdout.jsonl");
    both(
        "gpt2",
        &s(&[
            "build",
            "--model",
            &gpt2,
            "--target",
            "logits",
            "--tokenizer",
            &gtok,
            "--corpus",
            &gtext,
            "--window",
            "128",
            "--stride",
            "128",
            "-k",
            "32",
            "--temperatures",
            "2",
            "--quiet",
        ]),
    );

    // A graph whose output holds each input value twice (ids i and i + 8), as float32 or cast
    // to bfloat16 at its end (as mixed-precision exports write it), built from 40 rows of 8
    // values both ways.
    let write_model = |name: &str, g: GraphBuilder, opset: i64| {
        let model = d.path().join(format!("{name}.onnx"));
        fs::write(
            &model,
            logits_onnx::model::encode(&g.finish(name, opset, "test", "")),
        )
        .unwrap();
        model
    };
    // Builds `g` over a corpus of `rows` both ways and compares the targets.
    let compare =
        |name: &str, g: GraphBuilder, opset, rows: Vec<Vec<f32>>, k: &str, temps: &str| {
            let model = write_model(name, g, opset);
            let corpus = d.path().join(format!("{name}.parquet"));
            common::write_corpus(&corpus, &rows, false);
            both(
                name,
                &s(&[
                    "build",
                    "--model",
                    model.to_str().unwrap(),
                    "--corpus",
                    corpus.to_str().unwrap(),
                    "-k",
                    k,
                    "--temperatures",
                    temps,
                    "--quiet",
                ]),
            );
        };
    let doubled = |name: &str, bf16: bool, rows: Vec<Vec<f32>>, k: &str| {
        use logits_onnx::builder::Attr;
        let mut g = GraphBuilder::new();
        let batch = Dim::Named("batch".into());
        let x = g.input("pixels", ElemType::Float32, &[batch.clone(), Dim::Fixed(8)]);
        let mut y = g.node("Concat", &[&x, &x], &[("axis", Attr::Int(1))]);
        let mut elem = ElemType::Float32;
        if bf16 {
            y = g.node("Cast", &[&y], &[("to", Attr::Int(16))]);
            elem = ElemType::BFloat16;
        }
        g.output("logits", &y, elem, &[batch, Dim::Fixed(16)]);
        compare(name, g, 13, rows, k, "2");
    };
    // Ties: exactly tied logits keep the lower id first on both paths.
    doubled(
        "ties",
        false,
        (0..40)
            .map(|r| (0..8).map(|i| ((r * 3 + i * 5) % 4) as f32).collect())
            .collect(),
        "6",
    );
    let t = targets_of(&d.path().join("ties-graph"));
    assert!(
        t.iter().all(|(ids, z)| ids
            .windows(2)
            .zip(z.windows(2))
            .all(|(i, v)| v[0] > v[1] || (v[0] == v[1] && i[0] < i[1]))),
        "ties must keep the lower id first: {:?}",
        &t[..2]
    );
    // bfloat16: TopK and logZ read the rounded values, many of them tied, as the host does.
    doubled(
        "bf16",
        true,
        (0..40)
            .map(|r| {
                (0..8)
                    .map(|i| ((r * 8 + i) as f32 * 0.731).sin() * 6.0)
                    .collect()
            })
            .collect(),
        "6",
    );

    // Wide class axes, which the graph path reduces in chunks of 8,192 classes: 20,000 classes
    // per row (3 chunks) and 2 positions × 10,000 classes (2 chunks, rank 3), at opsets 13
    // and 18 (reduction axes as attributes or inputs).
    for (name, opset, positions) in [("wide13", 13, 1usize), ("wide18", 18, 2)] {
        let classes = 20_000 / positions;
        let mut g = GraphBuilder::new();
        let batch = Dim::Named("batch".into());
        let x = g.input("pixels", ElemType::Float32, &[batch.clone(), Dim::Fixed(8)]);
        let w: Vec<f32> = (0..8 * 20_000)
            .map(|i| ((i as f32) * 0.377).sin() * 2.0)
            .collect();
        let w = g.weight("w", &[8, 20_000], &w);
        let mut y = g.node("MatMul", &[&x, &w], &[]);
        let mut dims = vec![batch, Dim::Fixed(classes as i64)];
        if positions > 1 {
            let shape = g.ints("shape", &[3], &[0, positions as i64, classes as i64]);
            y = g.node("Reshape", &[&y, &shape], &[]);
            dims.insert(1, Dim::Fixed(positions as i64));
        }
        g.output("logits", &y, ElemType::Float32, &dims);
        let rows: Vec<Vec<f32>> = (0..30)
            .map(|r| (0..8).map(|i| ((r * 8 + i) as f32 * 0.913).cos()).collect())
            .collect();
        compare(name, g, opset, rows, "16", "2,4");
    }

    // The probability guard's row sums and minima, combined over 3 chunks, still tell a
    // hidden softmax (Softmax × 1, which the graph reading does not see through).
    let mut g = GraphBuilder::new();
    let batch = Dim::Named("batch".into());
    let x = g.input("pixels", ElemType::Float32, &[batch.clone(), Dim::Fixed(8)]);
    let w: Vec<f32> = (0..8 * 20_000)
        .map(|i| ((i as f32) * 0.377).sin())
        .collect();
    let w = g.weight("w", &[8, 20_000], &w);
    let z = g.node("MatMul", &[&x, &w], &[]);
    let p = g.node(
        "Softmax",
        &[&z],
        &[("axis", logits_onnx::builder::Attr::Int(-1))],
    );
    let one = g.weight("one", &[1], &[1.0]);
    let p = g.node("Mul", &[&p, &one], &[]);
    g.output("probs", &p, ElemType::Float32, &[batch, Dim::Fixed(20_000)]);
    let model = write_model("wide_probs", g, 13);
    let out = d.path().join("wide-probs-graph");
    let o = common::logits_build(&s(&[
        "build",
        "--model",
        model.to_str().unwrap(),
        "--corpus",
        d.path().join("wide13.parquet").to_str().unwrap(),
        "--postprocess",
        "graph",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    assert!(
        common::text(&o).contains("holds probabilities, not logits"),
        "{}",
        common::text(&o)
    );

    // Refused on the graph path, said at once: sampled targets.
    let out = d.path().join("sample-graph");
    let o = common::logits_build(&s(&[
        "build",
        "--model",
        &digits,
        "--corpus",
        &train,
        "-k",
        "4",
        "--sample",
        "8",
        "--postprocess",
        "graph",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", common::text(&o));
    assert!(
        common::text(&o).contains("--sample") && common::text(&o).contains("--postprocess host"),
        "{}",
        common::text(&o)
    );
}

/// `--coded` is for per-token targets: on a classifier (one distribution per row) it is
/// refused before anything is written, saying why and what to do.
#[test]
fn coding_per_example_targets_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("coded");
    let mut a = common::digits_build_args(out.to_str().unwrap());
    a.push("--coded".into());
    let o = common::logits_build(&a);
    let t = common::text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("per-token targets") && t.contains("drop --coded"),
        "{t}"
    );
    assert!(!out.exists(), "nothing should be written");
}

/// The I/O binding that GPU sessions run through (only the kept outputs bound, fresh output
/// buffers every run while the last run's outputs are turned into rows on another thread),
/// forced on the CPU: the same shards, byte for byte, as plain runs — per token with a
/// feature on both post-processing paths with two sessions, and a classifier.
#[test]
fn io_binding_gives_the_same_shards() {
    let d = tempfile::tempdir().unwrap();
    let shards = |out: &std::path::Path| -> Vec<serde_json::Value> {
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
        m["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sha256"].clone())
            .collect()
    };
    let both = |name: &str, args: Vec<String>| {
        let mut got = Vec::new();
        for bind in [false, true] {
            let out = d.path().join(format!("{name}-{bind}"));
            let mut a = args.clone();
            a.extend(["--out".to_string(), out.display().to_string()]);
            let env: &[(&str, &str)] = if bind {
                &[("LOGITS_FAULT", "io-binding:1")]
            } else {
                &[]
            };
            let o = common::output_within(common::build_command(&a, env), 300, name);
            assert!(o.status.success(), "{name} {bind}: {}", common::text(&o));
            got.push(shards(&out));
        }
        assert!(!got[0].is_empty());
        assert_eq!(got[0], got[1], "{name}: shards differ with I/O binding");
    };
    for post in ["host", "graph"] {
        let a: Vec<String> = [
            "build",
            "--model",
            &common::fixture("fixtures/gpt2/gpt2_teacher.onnx"),
            "--target",
            "logits",
            "--tokenizer",
            &common::fixture("fixtures/gpt2/tokenizer.json"),
            "--corpus",
            &common::fixture("fixtures/gpt2/holdout.jsonl"),
            "--window",
            "128",
            "--stride",
            "128",
            "-k",
            "32",
            "--temperatures",
            "2",
            "--feature",
            "h=hidden:f16",
            "--sessions",
            "2",
            "--batch-size",
            "4",
            "--postprocess",
            post,
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        both(&format!("gpt2-{post}"), a);
    }
    let mut a = common::digits_build_args("unused");
    a.retain(|x| x != "--out" && x != "unused");
    a.extend(["--sessions".into(), "2".into()]);
    both("digits", a);
}
