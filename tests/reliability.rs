//! End-to-end reliability of `logits-build`: no stage of the pipeline can make it hang, the
//! first error is reported at once, a stop signal keeps what is complete, and one output has
//! one writer. Every run here is under a timeout that fails the test instead of waiting.
//! Errors are injected with `LOGITS_FAULT` (read by debug builds only) at each stage, at the
//! first batch and at a batch well past the first shard, with several session layouts.

mod common;

use std::path::Path;
use std::process::Output;

use common::{build_command, output_within, text};

/// Rows of the synthetic corpus: 1,500 rows in batches of 16 is 94 batches over 8 shards.
const ROWS: usize = 1500;

/// A digits-shaped corpus (64 values a row in [0, 16]), deterministic, with the row at `nan`
/// (if any) holding a NaN pixel.
fn corpus(path: &Path, nan: Option<usize>) {
    let rows: Vec<Vec<f32>> = (0..ROWS)
        .map(|r| {
            (0..64)
                .map(|c| {
                    if Some(r) == nan && c == 7 {
                        f32::NAN
                    } else {
                        ((r * 31 + c * 17) % 17) as f32
                    }
                })
                .collect()
        })
        .collect();
    common::write_corpus(path, &rows, false);
}

fn args(corpus: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "build",
        "--model",
        &common::fixture("fixtures/digits/digits_teacher.onnx"),
        "--corpus",
        &corpus.display().to_string(),
        "--out",
        &out.display().to_string(),
        "-k",
        "3",
        "--batch-size",
        "16",
        "--rows-per-shard",
        "200",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn build(corpus: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)], what: &str) -> Output {
    output_within(build_command(&args(corpus, out, extra), env), 120, what)
}

fn done_records(out: &Path) -> usize {
    std::fs::read_dir(out.join("_build/done")).map_or(0, |d| d.count())
}

/// The sha256 of every shard, from a committed dataset's manifest.
fn shard_hashes(out: &Path) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("json");
    m["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|s| s["sha256"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn an_error_at_any_stage_is_reported_at_once_and_the_build_resumes() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = d.path().join("corpus.parquet");
    corpus(&c, None);
    let reference = d.path().join("reference");
    let o = build(&c, &reference, &[], &[], "reference build");
    assert!(o.status.success(), "{}", text(&o));
    let want = shard_hashes(&reference);
    assert_eq!(want.len(), 8);

    let layouts: [&[&str]; 4] = [
        &["--sessions", "1", "--threads", "1"],
        &["--sessions", "1", "--threads", "2"],
        &["--sessions", "2", "--threads", "1"],
        &["--sessions", "3", "--threads", "2"],
    ];
    let stages = ["reader", "session", "post", "writer", "disk-full"];
    let mut case = 0;
    for stage in stages {
        for batch in [1u64, 60] {
            for layout in layouts {
                case += 1;
                let out = d.path().join(format!("out-{case}"));
                let fault = format!("{stage}:{batch}");
                let what = format!("{fault} with {layout:?}");
                let o = build(&c, &out, layout, &[("LOGITS_FAULT", &fault)], &what);
                assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
                let said = text(&o);
                let expected = if stage == "disk-full" {
                    "No space left on device".to_string()
                } else {
                    format!("injected fault in the {stage} stage at batch {batch}")
                };
                assert!(said.contains(&expected), "{what}: {said}");
                assert!(!out.join("manifest.json").exists(), "{what}: committed");
                if batch == 60 {
                    // Batch 60 is in the fifth shard (13 batches a shard): the four shards
                    // before it were read in full, so they are completed (the batches in
                    // flight drain, whatever the number of sessions) and stay so; resuming
                    // finishes the same dataset.
                    assert_eq!(done_records(&out), 4, "{what}");
                    if layout == layouts[0] || layout == layouts[3] {
                        let o = build(&c, &out, &["--resume"], &[], &what);
                        assert!(o.status.success(), "{what} resume: {}", text(&o));
                        assert_eq!(shard_hashes(&out), want, "{what}: resumed dataset differs");
                    }
                }
            }
        }
    }
}

#[test]
fn bad_rows_past_the_first_batches_fail_fast_with_the_row() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = d.path().join("nan.parquet");
    corpus(&c, Some(1234));
    for layout in [&["--sessions", "1"][..], &["--sessions", "2"]] {
        let out = d.path().join(format!("out{}", layout[1]));
        let o = build(&c, &out, layout, &[], "NaN row");
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("row 1234"),
            "the message names the row: {}",
            text(&o)
        );
        let o = build(
            &c,
            &out,
            &["--resume", "--skip-non-finite"],
            &[],
            "NaN resume",
        );
        assert!(
            !o.status.success(),
            "a resume with other options is a different build"
        );
    }
}

#[test]
fn options_out_of_range_are_usage_errors() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = d.path().join("corpus.parquet");
    corpus(&c, None);
    let cases: [(&[&str], &str); 10] = [
        (&["--zstd-level", "23"], "--zstd-level 23"),
        (&["--sessions", "0"], "--sessions"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--sample", "0"], "--sample"),
        (&["--temperatures", "2,2"], "listed twice"),
        (&["--temperatures", "NaN"], "--temperatures"),
        (&["--temperatures=-1"], "--temperatures"),
        (
            &["--sample", "4", "--sample-temperature", "0"],
            "--sample-temperature",
        ),
        (
            &["--sample", "4", "--sample-temperature", "NaN"],
            "--sample-temperature",
        ),
        (&["--adaptive-k", "2:1.5"], "MASS"),
    ];
    for (extra, wants) in cases {
        let out = d.path().join("out");
        let o = build(&c, &out, extra, &[], &format!("{extra:?}"));
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", text(&o));
        assert!(text(&o).contains(wants), "{extra:?}: {}", text(&o));
        assert!(
            !out.join("_build").exists(),
            "{extra:?} left a draft behind"
        );
    }
}

/// Starts a build into `out` whose teacher runs each sleep 50 ms (a test-only fault point, so
/// the build lasts ~5 s) and returns it, with its start time, once its first shard is complete.
fn slow_build_with_a_shard_done(c: &Path, out: &Path) -> (std::process::Child, std::time::Instant) {
    let mut cmd = build_command(&args(c, out, &[]), &[("LOGITS_FAULT", "delay-ms:50")]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    while done_records(out) == 0 {
        assert!(start.elapsed().as_secs() < 60, "no shard completed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (child, start)
}

/// Sends `sig` to the child once its first shard is complete; the build stops, keeps what
/// is complete, exits 128 + sig and says how to resume; the resume finishes the same dataset.
#[cfg(unix)]
fn stop_with(sig: i32, name: &str) {
    let d = tempfile::tempdir().expect("tempdir");
    let c = d.path().join("corpus.parquet");
    corpus(&c, None);
    let reference = d.path().join("reference");
    let o = build(&c, &reference, &[], &[], "reference");
    assert!(o.status.success(), "{}", text(&o));
    let out = d.path().join("out");
    let (child, start) = slow_build_with_a_shard_done(&c, &out);
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    let o = child.wait_with_output().expect("wait");
    assert!(start.elapsed().as_secs() < 30, "the stop took too long");
    assert_eq!(o.status.code(), Some(128 + sig), "{}", text(&o));
    let said = text(&o);
    assert!(said.contains(name) && said.contains("--resume"), "{said}");
    assert!(!out.join("manifest.json").exists());
    assert!(done_records(&out) >= 1);
    let o = build(&c, &out, &["--resume"], &[], "resume after signal");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(shard_hashes(&out), shard_hashes(&reference));
}

#[cfg(unix)]
#[test]
fn sigterm_and_sigint_stop_a_build_resumably() {
    stop_with(15, "SIGTERM");
    stop_with(2, "SIGINT");
}

#[test]
fn a_second_writer_is_refused_while_a_build_runs() {
    let d = tempfile::tempdir().expect("tempdir");
    let c = d.path().join("corpus.parquet");
    corpus(&c, None);
    let out = d.path().join("out");
    let (child, _) = slow_build_with_a_shard_done(&c, &out);
    for flags in [&[][..], &["--resume"], &["--overwrite"]] {
        let o = build(&c, &out, flags, &[], "second writer");
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {}", text(&o));
        let said = text(&o);
        assert!(
            said.contains(&format!("a build by pid {}", child.id())) && said.contains("on host"),
            "{flags:?}: {said}"
        );
    }
    let o = child.wait_with_output().expect("wait");
    assert!(
        o.status.success(),
        "the first build was disturbed: {}",
        text(&o)
    );
    assert!(out.join("manifest.json").exists());
    assert!(
        !out.join(".logits.lock").exists(),
        "the lock is removed at the end"
    );
}

/// The per-token pipeline (text corpus, tokenizer, windows) stops the same way: an error at
/// any stage, at the first batch and at a later one, with two sessions.
#[test]
fn the_per_token_pipeline_cannot_hang_either() {
    let d = tempfile::tempdir().expect("tempdir");
    let lm = common::root().join("fixtures/tinylm");
    for stage in ["reader", "session", "post", "writer", "disk-full"] {
        for batch in [1u64, 6] {
            let out = d.path().join(format!("{stage}-{batch}"));
            let args: Vec<String> = [
                "build",
                "--model",
                &lm.join("tiny_lm.onnx").display().to_string(),
                "--tokenizer",
                &lm.join("tokenizer.json").display().to_string(),
                "--corpus",
                &lm.join("holdout.jsonl").display().to_string(),
                "--out",
                &out.display().to_string(),
                "--window",
                "16",
                "-k",
                "4",
                "--batch-size",
                "2",
                "--rows-per-shard",
                "4",
                "--sessions",
                "2",
                "--quiet",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let fault = format!("{stage}:{batch}");
            let o = output_within(
                build_command(&args, &[("LOGITS_FAULT", &fault)]),
                120,
                &fault,
            );
            assert_eq!(o.status.code(), Some(1), "{fault}: {}", text(&o));
            assert!(!out.join("manifest.json").exists(), "{fault}");
            if batch == 6 {
                let mut resume = args.clone();
                resume.push("--resume".into());
                let o = output_within(build_command(&resume, &[]), 120, &fault);
                assert!(o.status.success(), "{fault} resume: {}", text(&o));
            }
        }
    }
}
