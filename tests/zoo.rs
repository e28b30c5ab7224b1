//! The teacher-family matrix: small ONNX teachers as the real exporters write them
//! (fixtures/zoo, made by scripts/make_teacher_zoo.py with torch.onnx and transformers, and by
//! scripts/make_tf_zoo.py with tf2onnx; one graph written like jax2tf output with onnx.helper). For each family: `inspect-model`
//! recommends the right target, the build runs with no model surgery under a timeout, its
//! dataset matches ONNX Runtime's Python API (when the test command provides the oracle's
//! Python as LOGITS_ORACLE_PY), and a student trains from it where a student of that kind
//! exists.

mod common;

use std::process::Command;

use common::*;

const TOKENIZER: &str = "fixtures/tinylm/tokenizer.json";

/// One family of the matrix.
struct Family {
    name: &'static str,
    model: &'static str,
    corpus: &'static str,
    text: bool,
    /// The target `inspect-model` must recommend.
    target: &'static str,
    args: &'static [&'static str],
    /// Train a student from the dataset (a student of that kind exists).
    student: bool,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "cnn",
        model: "cnn.onnx",
        corpus: "images.parquet",
        text: false,
        target: "logits",
        args: &["-k", "4", "--label-column", "label"],
        student: true,
    },
    Family {
        name: "cnn_uint8",
        model: "cnn_uint8.onnx",
        corpus: "images_uint8.parquet",
        text: false,
        target: "/head/Gemm_output_0",
        args: &["-k", "4", "--feature", "pooled=/ReduceMean_output_0"],
        student: true,
    },
    Family {
        name: "vit",
        model: "vit.onnx",
        corpus: "images.parquet",
        text: false,
        target: "logits",
        args: &["-k", "4", "--input", "pixel_values=pixels"],
        student: true,
    },
    Family {
        name: "bert_seq",
        model: "bert_seq.onnx",
        corpus: "docs.jsonl",
        text: true,
        target: "logits",
        args: &["-k", "3", "--window", "32", "--id-column", "id"],
        student: true,
    },
    Family {
        name: "bert_tok",
        model: "bert_tok.onnx",
        corpus: "docs.jsonl",
        text: true,
        target: "logits",
        args: &["-k", "3", "--window", "32", "--stride", "24"],
        student: true,
    },
    Family {
        name: "llama",
        model: "llama.onnx",
        corpus: "docs.jsonl",
        text: true,
        target: "logits",
        args: &["-k", "8", "--window", "32"],
        student: true,
    },
    Family {
        name: "ctc",
        model: "ctc.onnx",
        corpus: "strips.parquet",
        text: false,
        target: "/head/Add_output_0",
        args: &["-k", "4"],
        student: true,
    },
    Family {
        name: "jaxlike",
        model: "jaxlike.onnx",
        corpus: "tokens_int32.parquet",
        text: false,
        target: "logits",
        args: &["-k", "4", "--feature", "h=hidden"],
        student: true,
    },
    Family {
        name: "tf_bytes",
        model: "tf_bytes.onnx",
        corpus: "tf_bytes.parquet",
        text: false,
        target: "add_1:0",
        args: &["-k", "4", "--feature", "h=Relu:0"],
        student: true,
    },
    Family {
        name: "tf_cnn",
        model: "tf_cnn.onnx",
        corpus: "tf_images.parquet",
        text: false,
        target: "Identity:0",
        args: &["-k", "4", "--feature", "pooled=Mean:0"],
        student: true,
    },
    Family {
        name: "half",
        model: "half.onnx",
        corpus: "features.parquet",
        text: false,
        target: "logits",
        args: &["-k", "4"],
        student: true,
    },
    Family {
        name: "audio",
        model: "audio.onnx",
        corpus: "spectrograms.parquet",
        text: false,
        target: "logits",
        args: &["-k", "3"],
        student: true,
    },
];

fn zoo(f: &str) -> String {
    fixture(&format!("fixtures/zoo/{f}"))
}

/// Runs the build oracle on a dataset when the test command says which Python has it.
fn oracle(f: &Family, ds: &str) {
    let Ok(py) = std::env::var("LOGITS_ORACLE_PY") else {
        eprintln!(
            "{}: oracle not run (LOGITS_ORACLE_PY unset; scripts/test.sh sets it)",
            f.name
        );
        return;
    };
    let mut c = Command::new(py);
    c.arg(fixture("scripts/check_build_oracle.py")).args([
        zoo(f.model),
        zoo(f.corpus),
        ds.to_string(),
    ]);
    if f.text {
        c.arg(fixture(TOKENIZER));
    }
    let o = output_within(c, 300, "the build oracle");
    let t = text(&o);
    assert!(
        o.status.success() && t.contains(" 0 failed"),
        "{}: oracle: {t}",
        f.name
    );
    println!("{}: {}", f.name, t.lines().last().unwrap_or(""));
}

fn build(f: &Family, out: &str, extra: &[&str]) -> std::process::Output {
    let mut a: Vec<String> = [
        "build",
        "--model",
        &zoo(f.model),
        "--corpus",
        &zoo(f.corpus),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if f.text {
        a.extend(["--tokenizer".to_string(), fixture(TOKENIZER)]);
    }
    a.extend(
        f.args
            .iter()
            .chain(extra)
            .chain(&[
                "--out",
                out,
                "--batch-size",
                "5",
                "--temperatures",
                "4",
                "--quiet",
            ])
            .map(|s| s.to_string()),
    );
    output_within(build_command(&a, &[]), 120, f.name)
}

#[test]
fn every_family_builds_as_exported_and_matches_onnx_runtime() {
    let d = tempfile::tempdir().unwrap();
    for f in FAMILIES {
        let o = logits_build(&["inspect-model", "--json", &zoo(f.model)]);
        assert!(o.status.success(), "{}: {}", f.name, text(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            report["recommended_target"]["tensor"], f.target,
            "{}: recommended target",
            f.name
        );
        // Every activation has a shape: declared, or seen on the synthetic probe run.
        let acts = report["activations"].as_array().unwrap();
        assert!(!acts.is_empty(), "{}: no activations", f.name);
        for a in acts {
            assert!(
                a["shape"].is_array() || a["seen_shape"].is_array(),
                "{}: {a} has no shape",
                f.name
            );
        }
        let out = d.path().join(f.name).display().to_string();
        let o = build(f, &out, &["--target", f.target]);
        assert!(o.status.success(), "{}: {}", f.name, text(&o));
        oracle(f, &out);
        if f.student {
            let s = d.path().join(format!("{}-student", f.name));
            let o = output_within(
                {
                    let mut c = Command::new(env!("CARGO_BIN_EXE_logits-train"));
                    c.args(["train", &out, "--out", s.to_str().unwrap()]).args([
                        "--steps",
                        "5",
                        "--batch-size",
                        "8",
                        "--ce",
                        "0",
                        "--quiet",
                    ]);
                    // Image teachers get a convolutional student, its image shape read from
                    // the dataset: [C, H, W] as PyTorch exports them.
                    if f.name.starts_with("cnn") {
                        c.args(["--conv", "4"]);
                    }
                    // TensorFlow's image teacher takes [H, W, C].
                    if f.name == "tf_cnn" {
                        c.args(["--conv", "4", "--channels-last"]);
                    }
                    // tf2onnx's byte classifier (int32 byte values): embedded bytes read by
                    // 1-D convolutions.
                    if f.name == "tf_bytes" {
                        c.args(["--embed", "256:8", "--conv", "8"]);
                    }
                    c
                },
                300,
                f.name,
            );
            assert!(o.status.success(), "{} student: {}", f.name, text(&o));
            assert!(
                s.join("student.onnx").exists(),
                "{}: no student.onnx",
                f.name
            );
            // An int32 input (the jax2tf-like graph's tokens) is embedded without being asked.
            if f.name == "jaxlike" {
                let info: serde_json::Value =
                    logits_student::student::read_info(&s.join("student.safetensors")).unwrap();
                assert_eq!(info["embed"][1], 16, "{}: {info}", f.name);
            }
            // Sequence teachers get the transformer encoder: pooled for one target per row
            // (bert_seq, audio), per position for the token classifier and the CTC
            // recogniser; the float ones read frames under the teacher's input name.
            let encoder = [
                ("bert_seq", "input_ids", true),
                ("bert_tok", "input_ids", false),
                ("ctc", "image", false),
                ("audio", "spectrogram", true),
            ];
            if let Some(&(_, input, pooled)) = encoder.iter().find(|e| e.0 == f.name) {
                let info: serde_json::Value =
                    logits_student::student::read_info(&s.join("student.safetensors")).unwrap();
                assert_eq!(info["kind"], "encoder", "{}: {info}", f.name);
                assert_eq!(
                    info["spec"]["encoder"]["pool"], pooled,
                    "{}: {info}",
                    f.name
                );
                let o = logits_build(&[
                    "inspect-model",
                    "--json",
                    s.join("student.onnx").to_str().unwrap(),
                ]);
                let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                assert_eq!(m["inputs"][0]["name"], input, "{}: {m}", f.name);
                let r: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(s.join("report.json")).unwrap())
                        .unwrap();
                assert!(
                    r["onnx_max_abs_diff"].as_f64().unwrap() <= 1e-4,
                    "{}: {r}",
                    f.name
                );
                // An independent forward in NumPy from the safetensors against ONNX Runtime's
                // Python API on padded batches, and the context refusal.
                if let Ok(py) = std::env::var("LOGITS_ORACLE_PY") {
                    let mut c = Command::new(py);
                    c.arg(fixture("scripts/check_encoder_export.py")).arg(&s);
                    let o = output_within(c, 120, "the encoder export oracle");
                    assert!(
                        o.status.success() && text(&o).contains(" 0 failed"),
                        "{}: {}",
                        f.name,
                        text(&o)
                    );
                }
            }
        }
    }
}

/// Without `--target`, a softmax at an explicit axis of a rank-3 output (the CTC recogniser)
/// and a written-out softmax behind undeclared shapes (the jax2tf-like graph) are recognised:
/// their probabilities are stored as log-probabilities, and the oracle agrees.
#[test]
fn softmax_outputs_are_recognised_as_exported() {
    let d = tempfile::tempdir().unwrap();
    for f in FAMILIES
        .iter()
        .filter(|f| ["ctc", "jaxlike", "cnn_uint8"].contains(&f.name))
    {
        let out = d.path().join(f.name).display().to_string();
        let o = build(f, &out, &[]);
        assert!(o.status.success(), "{}: {}", f.name, text(&o));
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{out}/manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["targets"]["output_is_probability"], true, "{}", f.name);
        assert!(
            m["build"]["output_kind"]
                .as_str()
                .unwrap()
                .contains("ends in a softmax"),
            "{}: {}",
            f.name,
            m["build"]
        );
        oracle(f, &out);
    }
}

/// What the matrix cannot build says so at once: a sigmoid multi-label classifier is refused
/// with a message that says why; an image fed in the wrong layout names the row, the input, the
/// expected and the found shape; a ragged spectrogram batch is cut by shape, not refused.
#[test]
fn what_does_not_fit_is_refused_clearly() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("ml").display().to_string();
    let o = logits_build(&[
        "build",
        "--model",
        &zoo("multilabel.onnx"),
        "--corpus",
        &zoo("features.parquet"),
        "--out",
        &out,
    ]);
    let t = text(&o);
    assert!(
        o.status.code() == Some(1) && t.contains("Sigmoid") && t.contains("multi-label"),
        "{t}"
    );
    assert!(!d.path().join("ml/manifest.json").exists());
    let o = logits_build(&[
        "build",
        "--model",
        &zoo("cnn.onnx"),
        "--corpus",
        &zoo("images.parquet"),
        "--input-shape",
        "pixels=32,32,3",
        "--out",
        &d.path().join("hwc").display().to_string(),
    ]);
    let t = text(&o);
    assert!(
        !o.status.success()
            && t.contains("row 0")
            && t.contains("\"pixels\"")
            && t.contains("[3, 32, 32]")
            && t.contains("[32, 32, 3]"),
        "{t}"
    );
    // A value float16 cannot hold, fed to a half-precision teacher, names its row.
    let big = d.path().join("big.parquet");
    let mut rows = vec![vec![0.5f32; 24]; 10];
    rows[7][3] = 1e5;
    write_corpus(&big, &rows, false);
    let o = logits_build(&[
        "build",
        "--model",
        &zoo("half.onnx"),
        "--corpus",
        big.to_str().unwrap(),
        "--input",
        "features=pixels",
        "--out",
        &d.path().join("half").display().to_string(),
    ]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("row 7") && t.contains("float16's range"),
        "{t}"
    );
    let o = logits_build(&[
        "build",
        "--input-shape",
        "pixels=3,x",
        "--model",
        "m",
        "--corpus",
        "c",
        "--out",
        "o",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// A transformer classifier fed pre-tokenized ids from a Parquet column (rows of several
/// lengths): `token_type_ids` and `attention_mask` have no column and are made from the ids
/// (recorded in the manifest), rows of one length run together, and the oracle agrees.
#[test]
fn pre_tokenized_ids_feed_a_transformer_classifier() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("ids.parquet");
    let rows: Vec<Vec<f32>> = (0..20)
        .map(|r| {
            let len = [8, 8, 12, 5][r % 4];
            (0..len)
                .map(|p| ((r * 37 + p * 11) % 990 + 3) as f32)
                .collect()
        })
        .collect();
    write_corpus(&corpus, &rows, true);
    let out = d.path().join("seq").display().to_string();
    let model = zoo("bert_seq.onnx");
    let o = output_within(
        build_command(
            &[
                "build",
                "--model",
                &model,
                "--corpus",
                corpus.to_str().unwrap(),
                "--input",
                "input_ids=pixels",
                "-k",
                "3",
                "--batch-size",
                "6",
                "--out",
                &out,
                "--quiet",
            ],
            &[],
        ),
        120,
        "pre-tokenized build",
    );
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{out}/manifest.json")).unwrap())
            .unwrap();
    let derived = &m["corpus"]["options"]["derived"];
    assert_eq!(derived["token_type_ids"], "zeros", "{derived}");
    assert_eq!(derived["attention_mask"], "ones", "{derived}");
    if let Ok(py) = std::env::var("LOGITS_ORACLE_PY") {
        let mut c = Command::new(py);
        c.arg(fixture("scripts/check_build_oracle.py")).args([
            model.as_str(),
            corpus.to_str().unwrap(),
            out.as_str(),
        ]);
        let o = output_within(c, 300, "the build oracle");
        assert!(
            o.status.success() && text(&o).contains(" 0 failed"),
            "{}",
            text(&o)
        );
    }
    // Without the mapping, every missing input is listed at once.
    let o = logits_build(&[
        "build",
        "--model",
        &model,
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        &d.path().join("x").display().to_string(),
    ]);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("\"input_ids\"") && t.contains("--input"),
        "{t}"
    );
}

/// The sequence students refuse what they cannot learn, at once and saying what to do:
/// cross-entropy asked for on a token classifier's dataset (no per-token labels are stored;
/// left at its default it is turned off with a note), and text generation from an encoder.
#[test]
fn sequence_students_refuse_what_they_cannot_learn() {
    let d = tempfile::tempdir().unwrap();
    let fam = |n: &str| FAMILIES.iter().find(|f| f.name == n).unwrap();
    let tok = d.path().join("tok").display().to_string();
    let o = build(fam("bert_tok"), &tok, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let train = |ds: &str, out: &str, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_logits-train"));
        c.args(["train", ds, "--out", out, "--steps", "2", "--quiet"])
            .args(extra);
        output_within(c, 120, "a sequence student")
    };
    // The default cross-entropy is turned off with a note; asked for, it is refused.
    let o = train(&tok, &d.path().join("a").display().to_string(), &[]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("no labels"), "{t}");
    let o = train(
        &tok,
        &d.path().join("b").display().to_string(),
        &["--ce", "0.1"],
    );
    let t = text(&o);
    assert!(
        o.status.code() == Some(1) && t.contains("labels") && t.contains("--ce 0"),
        "{t}"
    );
    let seq = d.path().join("seq").display().to_string();
    let o = build(fam("bert_seq"), &seq, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let s = d.path().join("s").display().to_string();
    let o = train(&seq, &s, &["--ce", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = output_within(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_logits-train"));
            c.args([
                "generate",
                "--student",
                &format!("{s}/student.safetensors"),
                "--tokenizer",
                &fixture(TOKENIZER),
                "--prompt",
                "hello",
            ]);
            c
        },
        60,
        "generate from an encoder",
    );
    let t = text(&o);
    assert!(
        o.status.code() == Some(1) && t.contains("not a language model"),
        "{t}"
    );
    assert!(
        !std::path::Path::new(&s).join("hf").exists(),
        "an encoder got a GPT-2 directory"
    );
}

/// `--postprocess graph` (TopK and ReduceLogSumExp appended to the teacher graph) gives the
/// host's targets on every family as exported: the same ids, bit-equal values, logZ within
/// 1e-6 relative (opsets from 13 to 18, float16 outputs, per-position and per-example
/// targets, masks, text and tensor corpora). The float16 MLP is the case where ONNX Runtime
/// would otherwise hand the appended nodes the unrounded float32 values (logZ 7e-5 off).
#[test]
fn in_graph_postprocessing_matches_the_host_on_every_family() {
    let d = tempfile::tempdir().unwrap();
    for f in FAMILIES {
        let host = d.path().join(format!("{}-host", f.name));
        let graph = d.path().join(format!("{}-graph", f.name));
        for (out, mode) in [(&host, "host"), (&graph, "graph")] {
            let o = build(
                f,
                out.to_str().unwrap(),
                &["--target", f.target, "--postprocess", mode],
            );
            assert!(o.status.success(), "{} {mode}: {}", f.name, text(&o));
        }
        let (n, worst) = common::same_targets(&host, &graph);
        eprintln!(
            "{}: {n} positions, logZ within {worst:.1e} relative",
            f.name
        );
    }
}
