//! End-to-end tests of the language-model path on the tiny LM fixture: `logits-build` makes
//! per-token shards, `logits-train` trains the transformer student from them (distillation,
//! next-token cross-entropy, hidden-state hint), exports ONNX that ONNX Runtime agrees with,
//! and `logits-train generate` samples repeatably; bad requests are refused.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{fixture, logits_train, text};
use std::sync::OnceLock;

fn dataset() -> &'static Path {
    static DS: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("tiny");
        let o = common::logits_build(&[
            "build",
            "--model",
            &fixture("fixtures/tinylm/tiny_lm.onnx"),
            "--tokenizer",
            &fixture("fixtures/tinylm/tokenizer.json"),
            "--corpus",
            &fixture("fixtures/tinylm/train.jsonl"),
            "--window",
            "32",
            "--stride",
            "32",
            "-k",
            "16",
            "--temperatures",
            "2",
            "--feature",
            "h=hidden:f16",
            "--holdout-from",
            "300",
            "--quiet",
            "--out",
            &out.display().to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        (dir, out)
    })
    .1
}

fn train(out: &Path, extra: &[&str]) -> Output {
    common::logits_train(&common::tiny_lm_train_args(
        &dataset().display().to_string(),
        &out.display().to_string(),
        extra,
    ))
}

#[test]
fn trains_exports_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lm");
    let o = train(
        &out,
        &[
            "--steps",
            "40",
            "-T",
            "2",
            "--feature-loss",
            "hint:h@0=1",
            "--lr",
            "3e-3",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let e = &r["evaluation"];
    assert!(e["perplexity"].as_f64().unwrap().is_finite(), "{e}");
    assert!(e["kl"].as_f64().unwrap().is_finite(), "{e}");
    assert!(e["positions"].as_u64().unwrap() > 100, "{e}");
    let d = r["onnx_max_abs_diff"].as_f64().unwrap();
    assert!(d <= 1e-4, "ONNX Runtime vs ndarray: {d}");
    // Training lowered the loss.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (first, last) = (&lines[0], &lines[lines.len() - 1]);
    assert!(
        last["kd"].as_f64().unwrap() < first["kd"].as_f64().unwrap(),
        "kd did not fall: {first} → {last}"
    );
    for k in ["kd", "ce", "hint:h", "tokens_per_s"] {
        assert!(last.get(k).is_some(), "{k} missing: {last}");
    }
    let generate = |seed: &str, extra: &[&str]| {
        let student = out.join("student.safetensors").display().to_string();
        let tok = fixture("fixtures/tinylm/tokenizer.json");
        let mut a = vec![
            "generate",
            "--student",
            &student,
            "--tokenizer",
            &tok,
            "--prompt",
            "The module",
            "--max-tokens",
            "12",
            "--seed",
            seed,
        ];
        a.extend(extra);
        let o = logits_train(&a);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let a = generate("1", &[]);
    assert!(a.starts_with("The module"), "{a}");
    assert_eq!(a, generate("1", &[]), "same seed, same text");
    // --json: the ids and the same text.
    let j: serde_json::Value = serde_json::from_str(&generate("1", &["--json"])).unwrap();
    assert_eq!(j["text"].as_str().unwrap(), a.trim_end(), "{j}");
    assert!(!j["ids"].as_array().unwrap().is_empty(), "{j}");
}

#[test]
fn refusals() {
    let tmp = tempfile::tempdir().unwrap();
    // Exit 2 for settings that do not fit the student (usage), 1 for what the dataset lacks.
    let cases: &[(&[&str], &str, i32)] = &[
        (&["-T", "3"], "stores it only at T = 1, 2", 1),
        (
            &["-T", "2", "--feature-loss", "sp:h@0"],
            "feature loss sp:h@0: the language-model student distils its final hidden state",
            2,
        ),
        (
            &["-T", "2", "--feature-loss", "hint:nope@0"],
            "no teacher feature named \"nope\"",
            1,
        ),
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
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[lm]\ndim = 10\nheads = 4\n").unwrap();
    let o = common::logits_train(&[
        "train",
        &dataset().display().to_string(),
        "--out",
        &tmp.path().join("shape").display().to_string(),
        "--config",
        &cfg.display().to_string(),
        "-T",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("multiple of heads"), "{}", text(&o));
}

#[test]
fn resumed_run_ends_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let common = ["--steps", "12", "-T", "2", "--seed", "5"];
    let o = train(&a, &common);
    assert!(o.status.success(), "{}", text(&o));
    let mut args = common.to_vec();
    args.extend(["--checkpoint-every", "5"]);
    let o = train(&b, &args);
    assert!(o.status.success(), "{}", text(&o));
    let ck = b.join("checkpoints");
    std::fs::remove_dir_all(ck.join("step-00000012")).unwrap();
    std::fs::write(ck.join("latest"), "step-00000005").unwrap();
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
}

/// The exported LM as `transformers` users feed it: `input_ids` with `attention_mask`, any
/// length up to the context (32 here), right padding that leaves the real positions' logits
/// as they are, and a longer input refused by a message that says what to do; in an older
/// opset (13) as well.
#[test]
fn exported_lm_takes_attention_mask_and_refuses_inputs_past_its_context() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lm13");
    let o = train(&out, &["--steps", "4", "-T", "2", "--opset", "13"]);
    assert!(o.status.success(), "{}", text(&o));
    let onnx = out.join("student.onnx");
    let m = logits_onnx::load(&onnx).unwrap();
    assert_eq!(m.opset_import[0].version, Some(13));
    let ops: Vec<&str> = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter_map(|n| n.op_type.as_deref())
        .collect();
    assert!(
        !ops.contains(&"Gelu") && !ops.contains(&"LayerNormalization"),
        "opset 13 has neither op: {ops:?}"
    );
    let mut om = logits::onnx_run::OnnxModel::open(&onnx).unwrap();
    let vocab = 512i64;
    let ids =
        |n: usize| ndarray::Array2::from_shape_fn((1, n), |(_, p)| (p as i64 * 37 + 5) % vocab);
    for n in [1, 7, 32] {
        let (shape, v) = om.run_ids(&ids(n)).unwrap();
        assert_eq!(&shape[..2], &[1, n as i64]);
        assert!(v.iter().all(|x| x.is_finite()));
    }
    // Two rows, the second right-padded from 5 to 9 tokens: its first 5 positions match the
    // unpadded run.
    let (_, alone) = om.run_ids(&ids(5)).unwrap();
    let mut batch = ndarray::Array2::<i64>::zeros((2, 9));
    batch.row_mut(0).assign(&ids(9).row(0));
    batch
        .row_mut(1)
        .slice_mut(ndarray::s![..5])
        .assign(&ids(5).row(0));
    let mut mask = ndarray::Array2::<i64>::ones((2, 9));
    mask.row_mut(1).slice_mut(ndarray::s![5..]).fill(0);
    let (shape, padded) = om.run_ids_masked(&batch, &mask).unwrap();
    let v = shape[2] as usize;
    let row1 = &padded[9 * v..9 * v + 5 * v];
    let d = row1
        .iter()
        .zip(&alone)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d <= 1e-4, "padded row vs alone: {d}");
    // Padding keys changes nothing for the real positions; a different pad token neither.
    batch.row_mut(1).slice_mut(ndarray::s![5..]).fill(3);
    let (_, padded3) = om.run_ids_masked(&batch, &mask).unwrap();
    let row1b = &padded3[9 * v..9 * v + 5 * v];
    assert!(row1.iter().zip(row1b).all(|(a, b)| (a - b).abs() <= 1e-5));
    let e = om.run_ids(&ids(33)).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("longer than the student's context of 32 tokens: feed at most 32"),
        "{msg}"
    );
}

/// The run writes the student as a Hugging Face `GPT2LMHeadModel` directory (`hf/`): GPT-2's
/// config and tensor names, the dataset's tokenizer when given (a different file is refused by
/// its sha256). `scripts/check_hf_export.py` loads it with `transformers` outside CI (figures
/// in BENCHMARKS.md).
#[test]
fn writes_a_hugging_face_directory_with_the_datasets_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    let tok = fixture("fixtures/tinylm/tokenizer.json");
    let o = train(&out, &["--steps", "2", "-T", "2", "--tokenizer", &tok]);
    assert!(o.status.success(), "{}", text(&o));
    let hf = out.join("hf");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "gpt2");
    assert_eq!(cfg["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(cfg["n_embd"], 16);
    assert_eq!(cfg["n_positions"], 32);
    assert_eq!(cfg["activation_function"], "gelu_new");
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(
        std::fs::read(hf.join("tokenizer.json")).unwrap(),
        std::fs::read(&tok).unwrap()
    );
    assert!(hf.join("tokenizer_config.json").is_file());
    assert!(hf.join("generation_config.json").is_file());
    let bytes = std::fs::read(hf.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(
        header["transformer.h.0.attn.c_attn.weight"]["shape"],
        serde_json::json!([16, 48])
    );
    assert_eq!(
        header["transformer.wpe.weight"]["shape"],
        serde_json::json!([32, 16])
    );
    assert_eq!(header["__metadata__"]["format"], "pt");
    // Another tokenizer than the dataset's is refused, naming both hashes' owner.
    let o = train(
        &tmp.path().join("wrong"),
        &[
            "--steps",
            "2",
            "-T",
            "2",
            "--tokenizer",
            &fixture("fixtures/gpt2/tokenizer.json"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("is not the dataset's tokenizer"),
        "{}",
        text(&o)
    );
}

#[test]
fn trains_from_a_context_coded_dataset_and_refuses_coding_other_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("coded");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "build",
            "--model",
            &fixture("fixtures/tinylm/tiny_lm.onnx"),
            "--tokenizer",
            &fixture("fixtures/tinylm/tokenizer.json"),
            "--corpus",
            &fixture("fixtures/tinylm/train.jsonl"),
            "--window",
            "32",
            "-k",
            "16",
            "--quiet",
            "--out",
            &out.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let o = common::logits_build(&args(&["--coded", "--values", "f16"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--coded codes int8 values"),
        "{}",
        text(&o)
    );
    let o = common::logits_build(&args(&["--coded"]));
    assert!(o.status.success(), "{}", text(&o));
    let m = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(
        m.contains("\"ctx-v1\"") && m.contains("\"in_input_ids\""),
        "{m}"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_logits-inspect"))
        .arg(&out)
        .arg("--validate")
        .output()
        .unwrap();
    assert!(
        o.status.success() && text(&o).contains("validation: OK"),
        "{}",
        text(&o)
    );
    let run = dir.path().join("run");
    let o = common::logits_train(&common::tiny_lm_train_args(
        &out.display().to_string(),
        &run.display().to_string(),
        &["--steps", "3"],
    ));
    assert!(o.status.success(), "{}", text(&o));
}
