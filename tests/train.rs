//! End-to-end tests of `logits-train` on a dataset built by `logits-build` from the digits
//! fixture teacher: a real run learns (held-out accuracy and agreement), its exported ONNX runs
//! in ONNX Runtime and matches the ndarray forward, a resumed run ends bit-identical to an
//! uninterrupted one, feature and relation losses train, and bad requests are refused with a
//! message naming what is wrong.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{fixture, logits_build, logits_train, text};
use std::sync::OnceLock;

/// One digits dataset for all tests: train + holdout corpus, held out from row 1437,
/// top-5 with logZ at T = 2, 4, a teacher feature, labels.
fn dataset() -> &'static Path {
    static DS: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("digits");
        let o = common::logits_build(&common::digits_build_args(&out.display().to_string()));
        assert!(o.status.success(), "{}", text(&o));
        (dir, out)
    })
    .1
}

fn train(out: &Path, extra: &[&str]) -> Output {
    let ds = dataset().display().to_string();
    let o = out.display().to_string();
    let mut args = vec!["train", &ds, "--out", &o, "--quiet", "--hidden", "32"];
    args.extend_from_slice(extra);
    common::logits_train(&args)
}

/// `logits-train eval --json` of the student.safetensors and student.onnx in `dir`, on the
/// shared dataset.
fn eval_run_files(dir: &Path) -> serde_json::Value {
    let ev = common::logits_train(&[
        "eval",
        &dataset().display().to_string(),
        "--student",
        &dir.join("student.safetensors").display().to_string(),
        "--onnx",
        &dir.join("student.onnx").display().to_string(),
        "--json",
    ]);
    assert!(ev.status.success(), "{}", text(&ev));
    serde_json::from_slice(&ev.stdout).unwrap()
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json"))
        .expect("report json")
}

#[test]
fn distils_evaluates_and_exports_a_student_that_onnx_runtime_agrees_with() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(&out, &["--epochs", "30", "--lr", "1e-2"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    // No terms were recorded for this dataset: no license line (the byte test has one).
    assert!(!t.contains("license/terms"), "{t}");
    assert!(t.contains("exported ONNX vs ndarray"), "{t}");
    let r = report(&out);
    let e = &r["evaluation"];
    assert_eq!(e["rows"], 360, "evaluated on the 360 held-out rows");
    // A 64-32-10 student distilled for 30 epochs: a real run, not a constant predictor.
    assert!(e["accuracy"].as_f64().unwrap() > 0.9, "{e}");
    assert!(e["agreement"].as_f64().unwrap() > 0.9, "{e}");
    assert!(e["teacher_accuracy"].as_f64().unwrap() > 0.95, "{e}");
    assert!(e["kl"].as_f64().unwrap() < 0.5, "{e}");
    let d = r["onnx_max_abs_diff"].as_f64().unwrap();
    assert!(d <= 1e-5, "ONNX Runtime vs ndarray: {d}");
    assert_eq!(r["student"]["params"], 64 * 32 + 32 + 32 * 10 + 10);
    // Metrics: one line per 10 steps, with every loss term.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    for k in ["kd", "ce", "lr", "loss", "samples_per_s", "grad_norm"] {
        assert!(last.get(k).is_some(), "metrics line lacks {k}: {last}");
    }
    // The saved configuration trains the same run again.
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("temperature = 4.0"), "{cfg}");
    // eval and export work from the files alone.
    let er = eval_run_files(&out);
    assert_eq!(er["evaluation"]["accuracy"], e["accuracy"]);
}

/// A convolutional student resumes bit-identically too: its per-channel standardisation
/// (buffers fitted before the first step) and kernels come back from the checkpoint.
#[test]
fn resumed_convolutional_run_ends_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let common = [
        "--conv",
        "4",
        "--image",
        "1,8,8",
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--seed",
        "7",
    ];
    assert!(train(&a, &common).status.success());
    let mut args = common.to_vec();
    args.extend(["--checkpoint-every", "10"]);
    assert!(train(&b, &args).status.success());
    let ck = b.join("checkpoints");
    std::fs::remove_dir_all(ck.join("step-00000020")).unwrap();
    std::fs::write(ck.join("latest"), "step-00000010").unwrap();
    args.push("--resume");
    let o = train(&b, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read(a.join("student.safetensors")).unwrap()
            == std::fs::read(b.join("student.safetensors")).unwrap(),
        "resumed weights differ from the uninterrupted run"
    );
}

#[test]
fn resumed_run_ends_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let common = [
        "--steps",
        "40",
        "--batch-size",
        "32",
        "--dropout",
        "0.1",
        "--seed",
        "7",
    ];
    let o = train(&a, &common);
    assert!(o.status.success(), "{}", text(&o));
    let mut args = common.to_vec();
    args.extend(["--checkpoint-every", "15"]);
    let o = train(&b, &args);
    assert!(o.status.success(), "{}", text(&o));
    // Pretend the run died after step 30: drop the final checkpoint.
    let ck = b.join("checkpoints");
    std::fs::remove_dir_all(ck.join("step-00000040")).unwrap();
    std::fs::write(ck.join("latest"), "step-00000030").unwrap();
    // Resuming without --resume is refused; with it, the run completes.
    let o = train(&b, &common);
    assert!(!o.status.success());
    assert!(text(&o).contains("--resume"), "{}", text(&o));
    let mut args = common.to_vec();
    args.push("--resume");
    let o = train(&b, &args);
    assert!(o.status.success(), "{}", text(&o));
    let wa = std::fs::read(a.join("student.safetensors")).unwrap();
    let wb = std::fs::read(b.join("student.safetensors")).unwrap();
    assert!(
        wa == wb,
        "resumed weights differ from the uninterrupted run"
    );
    // A resume with other settings is refused.
    let mut args = common.to_vec();
    args.extend(["--resume", "--lr", "0.5"]);
    let o = train(&b, &args);
    assert!(!o.status.success());
    assert!(text(&o).contains("configuration differs"), "{}", text(&o));
    // A resume on a dataset from another teacher is refused.
    let other = tmp.path().join("other");
    let o = common::logits_build(&[
        "build",
        "--model",
        &fixture("fixtures/digits/digits_teacher_softmax.onnx"),
        "--corpus",
        &fixture("fixtures/digits/holdout.parquet"),
        "--label-column",
        "label",
        "-k",
        "5",
        "--temperatures",
        "2,4",
        "--quiet",
        "--out",
        &other.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut args: Vec<String> = vec![
        "train".into(),
        other.display().to_string(),
        "--out".into(),
        b.display().to_string(),
        "--resume".into(),
        "--quiet".into(),
    ];
    args.extend(common.iter().map(|s| s.to_string()));
    let o = common::logits_train(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("teacher"), "{}", text(&o));
    assert!(text(&o).contains("refusing to resume"), "{}", text(&o));
}

#[test]
fn feature_and_relation_losses_train() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f");
    let o = train(
        &out,
        &[
            "--epochs",
            "3",
            "--feature-loss",
            "hint:penult@0=1",
            "--feature-loss",
            "rkd_distance:penult@0",
            "--feature-loss",
            "rkd_angle:penult@0",
            "--feature-loss",
            "sp:penult@0",
            "--feature-loss",
            "pkt:penult@0",
            "--feature-loss",
            "cosine:penult@0",
            "--layer-norm",
            "--activation",
            "gelu",
            "--batch-size",
            "32",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for k in [
        "hint:penult@0",
        "rkd_distance:penult@0",
        "rkd_angle:penult@0",
        "sp:penult@0",
        "pkt:penult@0",
        "cosine:penult@0",
    ] {
        assert!(
            first[k].as_f64().is_some_and(f64::is_finite),
            "{k}: {first}"
        );
    }
    let r = report(&out);
    assert!(r["onnx_max_abs_diff"].as_f64().unwrap() <= 1e-5, "{r}");
}

#[test]
fn refusals_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    // Exit 2 for options wrong whatever the dataset (usage), 1 for what this dataset lacks.
    let cases: &[(&[&str], &str, i32)] = &[
        (&["-T", "3"], "stores it only at T = 1, 2, 4", 1),
        (
            &["--feature-loss", "hint:nope@0"],
            "no teacher feature named \"nope\"",
            1,
        ),
        (&["--feature-loss", "sp:penult@4"], "hidden layer 4", 2),
        (
            &["--input", "pixelz"],
            "no stored input named \"pixelz\"",
            1,
        ),
        (&["--divergence", "kl"], "possible values: forward_kl", 2),
        (&["--kd", "0", "--ce", "0"], "nothing to train", 2),
        (&["--sampled", "1"], "no sampled targets", 1),
    ];
    for (i, (args, want, code)) in cases.iter().enumerate() {
        let o = train(&tmp.path().join(format!("r{i}")), args);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(want),
            "{args:?}: wanted {want:?} in {}",
            text(&o)
        );
    }
    // Renormalised targets need no stored logZ, so T = 3 trains there.
    let o = train(
        &tmp.path().join("renorm"),
        &["-T", "3", "--topk", "renormalize", "--steps", "5"],
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// The demo's claim, as a test: on the mostly-unlabelled corpus (100 of 1,437 rows labelled),
/// a 64-32-10 student distilled from the stored targets beats the same student trained on the
/// labels alone and comes within two points of the teacher, at under a tenth of its
/// parameters.
#[test]
fn distillation_beats_labels_alone_on_the_few_labels_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("few");
    let o = common::logits_build(&common::digits_corpus_args(
        "fixtures/digits/train_100_labels.parquet",
        &ds.display().to_string(),
    ));
    assert!(o.status.success(), "{}", text(&o));
    let run = |name: &str, extra: &[&str]| -> serde_json::Value {
        let out = tmp.path().join(name);
        let mut args = vec![
            "train".to_string(),
            ds.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--quiet".into(),
        ];
        for a in [
            "--hidden", "32", "--lr", "1e-2", "--epochs", "60", "--seed", "0",
        ]
        .iter()
        .chain(extra)
        {
            args.push(a.to_string());
        }
        let o = common::logits_train(&args);
        assert!(o.status.success(), "{}", text(&o));
        report(&out)
    };
    let labels = run("label-only", &["--kd", "0", "--ce", "1"]);
    let kd = run("distilled", &[]);
    let acc = |r: &serde_json::Value| r["evaluation"]["accuracy"].as_f64().unwrap();
    let teacher = kd["evaluation"]["teacher_accuracy"].as_f64().unwrap();
    assert!(
        acc(&kd) > acc(&labels) + 0.03,
        "distilled {} vs label-only {}",
        acc(&kd),
        acc(&labels)
    );
    assert!(
        acc(&kd) > teacher - 0.02,
        "distilled {} vs teacher {teacher}",
        acc(&kd)
    );
    let params = kd["student"]["params"].as_f64().unwrap();
    assert!(params * 10.0 < 301_066.0, "{params}");
}

/// A dataset built without its inputs (restricted data) trains when joined with the corpus:
/// by row id (hash-checked: the corpus in another order is refused, naming the row) or by
/// input hash (any order works).
#[test]
fn joins_a_dataset_built_without_inputs_with_its_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("noinputs");
    let (tr, ho) = (
        fixture("fixtures/digits/train.parquet"),
        fixture("fixtures/digits/holdout.parquet"),
    );
    let o = common::logits_build(&[
        "build",
        "--model",
        &fixture("fixtures/digits/digits_teacher.onnx"),
        "--corpus",
        &tr,
        &ho,
        "--holdout-from",
        "1437",
        "--no-inputs",
        "-k",
        "5",
        "--temperatures",
        "4",
        "--quiet",
        "--out",
        &ds.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let run = |name: &str, extra: &[&str]| -> Output {
        let out = tmp.path().join(name);
        let mut args: Vec<String> = vec![
            "train".into(),
            ds.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--quiet".into(),
            "--ce".into(),
            "0".into(),
            "--kd".into(),
            "1".into(),
            "--epochs".into(),
            "20".into(),
            "--lr".into(),
            "1e-2".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        common::logits_train(&args)
    };
    let o = run("none", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("stores no inputs"), "{}", text(&o));
    let o = run("byid", &["--join-corpus", &tr, &ho]);
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&tmp.path().join("byid"));
    assert!(r["evaluation"]["agreement"].as_f64().unwrap() > 0.9, "{r}");
    // The corpus in another order: row 0 is now a holdout image.
    let o = run("swapped", &["--join-corpus", &ho, &tr]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("input hash differs"), "{}", text(&o));
    let o = run("byhash", &["--join-corpus", &ho, &tr, "--join-by", "hash"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The `logits.student` description inside a student file.
fn student_info(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).expect("student file");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_str(header["__metadata__"]["logits.student"].as_str().unwrap()).unwrap()
}

#[test]
fn inputs_are_standardised_in_training_and_the_saved_student_takes_raw_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (on, off) = (tmp.path().join("on"), tmp.path().join("off"));
    let o = train(
        &on,
        &["--steps", "60", "--lr", "1e-2", "--checkpoint-every", "30"],
    );
    assert!(o.status.success(), "{}", text(&o));
    // The saved student has the standardisation folded in; the checkpoint keeps the weights as
    // trained with the statistics beside them (64 pixels, 1437 training rows).
    let saved = student_info(&on.join("student.safetensors"));
    assert_eq!(saved["standardized"], true, "{saved}");
    assert!(saved.get("input_norm").is_none(), "{saved}");
    let ck = on.join("checkpoints/step-00000060/student.safetensors");
    let info = student_info(&ck);
    assert_eq!(info["input_norm"]["rows"], 1437, "{info}");
    assert_eq!(info["input_norm"]["mean"].as_array().unwrap().len(), 64);
    // Pixels that are 0 in every training image are centred only.
    assert!(
        info["input_norm"]["std"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == 1.0),
        "{info}"
    );
    // Evaluated from raw inputs, the checkpoint (folded on load) and the saved student agree;
    // the ONNX export (raw inputs too) matched the ndarray forward during the run.
    let r = report(&on);
    assert!(r["onnx_max_abs_diff"].as_f64().unwrap() <= 1e-5, "{r}");
    let ev = common::logits_train(&[
        "eval",
        &dataset().display().to_string(),
        "--student",
        &ck.display().to_string(),
        "--json",
    ]);
    assert!(ev.status.success(), "{}", text(&ev));
    let er: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(er["evaluation"]["accuracy"], r["evaluation"]["accuracy"]);
    let (a, b) = (
        er["evaluation"]["kl"].as_f64().unwrap(),
        r["evaluation"]["kl"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-4 * b.max(1e-3), "{a} vs {b}");
    // The export keeps the teacher's input name.
    let onnx = logits_onnx::load(&on.join("student.onnx")).unwrap();
    let graph = onnx.graph.unwrap();
    assert_eq!(graph.input[0].name.as_deref(), Some("pixels"));
    // --no-standardize trains on the values as stored.
    let o = train(&off, &["--steps", "60", "--lr", "1e-2", "--no-standardize"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        student_info(&off.join("student.safetensors"))["standardized"],
        false
    );
    let cfg = std::fs::read_to_string(off.join("config.toml")).unwrap();
    assert!(cfg.contains("standardize = false"), "{cfg}");
}

/// Exports that load where users deploy: student.safetensors in PyTorch's layout (checked with
/// the `safetensors` package and a torch.nn-semantics forward against ONNX Runtime's Python API
/// when the test command provides that Python), the description in `metadata_props`, and older
/// opsets where Gelu and LayerNormalization are written with older ops.
#[test]
fn exports_load_as_pytorch_state_dicts_and_in_older_opsets() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gelu13");
    let o = train(
        &out,
        &[
            "--steps",
            "40",
            "--lr",
            "1e-2",
            "--activation",
            "gelu",
            "--layer-norm",
            "--opset",
            "13",
        ],
    );
    // The run's own check: ONNX Runtime on the opset-13 graph vs the ndarray forward.
    assert!(o.status.success(), "{}", text(&o));
    assert!(report(&out)["onnx_max_abs_diff"].as_f64().unwrap() <= 1e-5);
    let ops_of = |p: &Path| -> (i64, Vec<String>, Vec<(String, String)>) {
        let m = logits_onnx::load(p).unwrap();
        let ops = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter_map(|n| n.op_type.clone())
            .collect();
        let props = m
            .metadata_props
            .iter()
            .map(|e| (e.key.clone().unwrap(), e.value.clone().unwrap()))
            .collect();
        (m.opset_import[0].version.unwrap(), ops, props)
    };
    let (opset, ops, props) = ops_of(&out.join("student.onnx"));
    assert_eq!(opset, 13);
    assert!(
        !ops.iter().any(|o| o == "Gelu" || o == "LayerNormalization"),
        "{ops:?}"
    );
    assert!(
        props
            .iter()
            .any(|(k, v)| k == "logits.input" && v == "pixels"),
        "{props:?}"
    );
    assert!(
        props.iter().any(|(k, _)| k == "logits.student"),
        "{props:?}"
    );
    // PyTorch's layout: nn.Linear weights are (out, in), LayerNorm's gain is `weight`.
    let bytes = std::fs::read(out.join("student.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(
        header["layers.0.weight"]["shape"],
        serde_json::json!([32, 64])
    );
    assert_eq!(
        header["layers.1.weight"]["shape"],
        serde_json::json!([10, 32])
    );
    assert!(header.get("norms.0.weight").is_some(), "{header}");
    assert_eq!(header["__metadata__"]["format"], "pt");
    if let Ok(py) = std::env::var("LOGITS_ORACLE_PY") {
        let mut c = std::process::Command::new(py);
        c.arg(fixture("scripts/check_student_export.py")).args([
            &out.display().to_string(),
            "--opset",
            "13",
            "--input",
            "pixels",
        ]);
        let o = common::output_within(c, 120, "the exported-student check");
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("oracle: 7 passed, 0 failed"),
            "{}",
            text(&o)
        );
    } else {
        eprintln!(
            "exported-student check not run (LOGITS_ORACLE_PY unset; scripts/test.sh sets it)"
        );
    }
    // `export` re-reads the PyTorch-layout file and writes opset 17 (LayerNormalization, no
    // Gelu); the same student evaluates the same from either file.
    let again = tmp.path().join("again");
    let o = common::logits_train(&[
        "export",
        "--student",
        &out.join("student.safetensors").display().to_string(),
        "--out",
        &again.display().to_string(),
        "--opset",
        "17",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (opset, ops, _) = ops_of(&again.join("student.onnx"));
    assert_eq!(opset, 17);
    assert!(ops.iter().any(|o| o == "LayerNormalization"), "{ops:?}");
    assert!(!ops.iter().any(|o| o == "Gelu"), "{ops:?}");
    assert_eq!(
        std::fs::read(again.join("student.safetensors")).unwrap(),
        bytes,
        "a PyTorch-layout file round-trips byte for byte"
    );
    let er = eval_run_files(&again);
    assert_eq!(
        er["evaluation"]["accuracy"],
        report(&out)["evaluation"]["accuracy"]
    );
    assert!(er["onnx_max_abs_diff"].as_f64().unwrap() <= 1e-5, "{er}");
    // Opsets the exports cannot be written in are usage errors.
    for bad in ["12", "22"] {
        let o = common::logits_train(&[
            "export",
            "--student",
            &out.join("student.safetensors").display().to_string(),
            "--out",
            &again.display().to_string(),
            "--opset",
            bad,
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("opsets 13 to 21"), "{}", text(&o));
    }
}

/// Byte inputs through an embedding (`--embed 256:D`) on the byte-sequence teacher fixture (a
/// uint8 `[b, 128]` input, next-byte targets): trains, exports an ONNX graph that looks the
/// ids up (checked against the ndarray forward and, with the test command's Python, against
/// nn.Embedding + nn.Linear on the PyTorch-layout safetensors); values that are not ids of
/// the vocabulary are refused naming the row; a malformed --embed is a usage error.
#[test]
fn byte_inputs_train_through_an_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("bytes");
    let o = common::logits_build(&[
        "build",
        "--model",
        &fixture("fixtures/bytes/byte_teacher.onnx"),
        "--corpus",
        &fixture("fixtures/bytes/train.parquet"),
        &fixture("fixtures/bytes/holdout.parquet"),
        "--holdout-from",
        "12000",
        "--label-column",
        "label",
        "--id-column",
        "id",
        "-k",
        "8",
        "--temperatures",
        "4",
        "--license",
        "fixture text, MIT",
        "--quiet",
        "--out",
        &ds.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let run = |out: &Path, extra: &[&str]| {
        let (d, o) = (ds.display().to_string(), out.display().to_string());
        let mut args = vec![
            "train",
            &d,
            "--out",
            &o,
            "--quiet",
            "--hidden",
            "32",
            "--steps",
            "30",
            "--batch-size",
            "64",
        ];
        args.extend_from_slice(extra);
        common::logits_train(&args)
    };
    let out = tmp.path().join("embed");
    let o = run(&out, &["--embed", "256:4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("license/terms: fixture text, MIT"),
        "{}",
        text(&o)
    );
    let r = report(&out);
    assert!(r["onnx_max_abs_diff"].as_f64().unwrap() <= 1e-5, "{r}");
    assert_eq!(r["evaluation"]["rows"], 1500);
    let info = student_info(&out.join("student.safetensors"));
    assert_eq!(info["embed"], serde_json::json!([256, 4]), "{info}");
    assert_eq!(info["widths"][0], 128 * 4, "{info}");
    assert_eq!(
        info["standardized"], false,
        "ids are not standardised: {info}"
    );
    let onnx = logits_onnx::load(&out.join("student.onnx")).unwrap();
    let g = onnx.graph.unwrap();
    assert_eq!(g.input[0].name.as_deref(), Some("bytes"));
    assert!(
        g.node
            .iter()
            .any(|n| n.op_type.as_deref() == Some("Gather"))
    );
    if let Ok(py) = std::env::var("LOGITS_ORACLE_PY") {
        let mut c = std::process::Command::new(py);
        c.arg(fixture("scripts/check_student_export.py")).args([
            &out.display().to_string(),
            "--input",
            "bytes",
        ]);
        let o = common::output_within(c, 120, "the exported-student check");
        assert!(o.status.success(), "{}", text(&o));
    }
    // Embedded bytes read by 1-D convolutions: 4 channels × 1 × 128 positions.
    let seq = tmp.path().join("embed_conv");
    let o = run(&seq, &["--embed", "256:4", "--conv", "8"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(report(&seq)["onnx_max_abs_diff"].as_f64().unwrap() <= 1e-5);
    let info = student_info(&seq.join("student.safetensors"));
    assert_eq!(
        info["conv"]["image"],
        serde_json::json!([4, 1, 128]),
        "{info}"
    );
    assert_eq!(info["widths"][0], 8 * 64, "{info}");
    if let Ok(py) = std::env::var("LOGITS_ORACLE_PY") {
        let mut c = std::process::Command::new(py);
        c.arg(fixture("scripts/check_student_export.py")).args([
            &seq.display().to_string(),
            "--input",
            "bytes",
        ]);
        let o = common::output_within(c, 120, "the exported-student check");
        assert!(o.status.success(), "{}", text(&o));
    }
    // Text bytes go past 100: the first such value is named with its row.
    let o = run(&tmp.path().join("small"), &["--embed", "100:4"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("not an id below 100") && t.contains("row "),
        "{t}"
    );
    for bad in ["1:4", "256", "256:x"] {
        let o = run(&tmp.path().join("bad"), &["--embed", bad]);
        assert_eq!(o.status.code(), Some(2), "--embed {bad}: {}", text(&o));
        assert!(text(&o).contains("embed"), "{}", text(&o));
    }
}

/// A convolutional student (`--conv`) on the digits images (64 values read as `--image 1,8,8`):
/// trains, its ONNX (Reshape, per-channel standardisation, Conv/Relu/MaxPool, Flatten) matches
/// the ndarray forward, and with the test command's Python the PyTorch-layout safetensors
/// (`conv.{i}.weight` as `nn.Conv2d`'s `(O, C, 3, 3)`) computed with NumPy matches ONNX Runtime;
/// a row that is not an image without `--image`, a wrong `--image` and `--conv` with `--embed`
/// are refused.
#[test]
fn convolutional_students_train_on_images() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cnn");
    let o = train(
        &out,
        &[
            "--conv", "4,8", "--image", "1,8,8", "--steps", "60", "--lr", "1e-2",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let r = report(&out);
    assert!(r["onnx_max_abs_diff"].as_f64().unwrap() <= 1e-5, "{r}");
    // 60 steps from 100-odd rows per step: well above chance (10%).
    assert!(r["evaluation"]["agreement"].as_f64().unwrap() > 0.5, "{r}");
    let info = student_info(&out.join("student.safetensors"));
    assert_eq!(info["kind"], "cnn", "{info}");
    assert_eq!(info["conv"]["image"], serde_json::json!([1, 8, 8]));
    // 8 channels of 2 × 2 after two poolings feed the hidden layer.
    assert_eq!(info["widths"], serde_json::json!([32, 32, 10]));
    let onnx = logits_onnx::load(&out.join("student.onnx")).unwrap();
    let ops: Vec<String> = onnx
        .graph
        .unwrap()
        .node
        .iter()
        .filter_map(|n| n.op_type.clone())
        .collect();
    for op in ["Conv", "MaxPool", "Flatten"] {
        assert!(ops.iter().any(|o| o == op), "{op} missing: {ops:?}");
    }
    if let Ok(py) = std::env::var("LOGITS_ORACLE_PY") {
        let mut c = std::process::Command::new(py);
        c.arg(fixture("scripts/check_student_export.py")).args([
            &out.display().to_string(),
            "--input",
            "pixels",
        ]);
        let o = common::output_within(c, 120, "the exported-student check");
        assert!(o.status.success(), "{}", text(&o));
    }
    let cases: &[(&[&str], &str, i32)] = &[
        (&["--conv", "4"], "pass --image C,H,W", 1),
        (&["--conv", "4", "--image", "1,8,9"], "72 values", 1),
        (&["--conv", "4", "--embed", "10:2"], "not an id below 10", 1),
        (&["--conv", "4", "--image", "8,8"], "expected C,H,W", 2),
    ];
    for (i, (args, want, code)) in cases.iter().enumerate() {
        let mut a = args.to_vec();
        a.extend(["--steps", "1"]);
        let o = train(&tmp.path().join(format!("bad{i}")), &a);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
}

/// `logits-build build --model M --corpus C -k 5 --out D` followed by `logits-train train D
/// --out X` works out of the box: the trainer's default T = 4 falls back to the T = 1 the build
/// stores by default, and its default cross-entropy is off without labels, each said in a
/// note and recorded in the saved configuration; the same settings chosen explicitly are
/// refused, saying what to do.
#[test]
fn the_build_defaults_train_with_the_trainer_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("plain").display().to_string();
    let o = logits_build(&[
        "build",
        "--model",
        &fixture("fixtures/digits/digits_teacher.onnx"),
        "--corpus",
        &fixture("fixtures/digits/train.parquet"),
        "-k",
        "5",
        "--quiet",
        "--out",
        &ds,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = tmp.path().join("run");
    let o = logits_train(&[
        "train",
        &ds,
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "5",
        "--quiet",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("note: the dataset stores logZ only at T = 1")
            && t.contains("distilling at T = 1"),
        "{t}"
    );
    assert!(t.contains("note: the dataset has no labels"), "{t}");
    let cfg: toml::Value =
        toml::from_str(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    assert_eq!(cfg["loss"]["temperature"].as_float(), Some(1.0));
    assert_eq!(cfg["loss"]["ce"].as_float(), Some(0.0));
    for (args, want) in [
        (&["-T", "4"][..], "needs logZ at that temperature"),
        (&["--ce", "0.1"][..], "--label-column"),
    ] {
        let dir = tmp.path().join(format!("x{}", args[0]));
        let mut a = vec!["train", &ds, "--out", dir.to_str().unwrap(), "--steps", "2"];
        a.extend(args);
        let o = logits_train(&a);
        assert!(
            o.status.code() == Some(1) && text(&o).contains(want),
            "{args:?}: {}",
            text(&o)
        );
    }
}

/// `table`, `export` and `generate` print JSON with `--json` (as `train` and `eval` do).
#[test]
fn every_train_subcommand_speaks_json() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = train(&run, &["--steps", "5"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = logits_train(&["table", run.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(t["run"]["evaluation"]["agreement"].is_f64(), "{t}");
    let out = tmp.path().join("exported");
    let o = logits_train(&[
        "export",
        "--student",
        run.join("student.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        std::path::Path::new(e["onnx"].as_str().unwrap()).is_file() && e["hf"].is_null(),
        "{e}"
    );
}

/// `train --help` shows what a run without each flag uses: the configuration's defaults.
#[test]
fn train_help_shows_the_defaults() {
    let o = common::logits_train(&["train", "--help"]);
    let help = common::text(&o);
    assert!(o.status.success(), "{help}");
    for want in [
        "Peak learning rate [default: 0.001]",
        "[default: 4 (1 when the dataset lacks logZ at 4)]",
        "Rows per step [default: 64]",
        "[default: forward_kl]",
    ] {
        assert!(help.contains(want), "{want:?} missing from:\n{help}");
    }
    assert!(help.matches("[default:").count() >= 25, "{help}");
}

/// Datasets whose f16 values carry the exact tail (format 1.1) train: the loader reads the
/// tail column they are decoded against.
#[test]
fn half_precision_datasets_with_the_exact_tail_train() {
    let d = tempfile::tempdir().unwrap();
    let ds = d.path().join("f16");
    let mut a = common::digits_build_args(ds.to_str().unwrap());
    a.extend(["--values".to_string(), "f16".to_string()]);
    let o = common::logits_build(&a);
    assert!(o.status.success(), "{}", common::text(&o));
    let out = d.path().join("run");
    let o = common::logits_train(&[
        "train",
        ds.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "2",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", common::text(&o));
}
