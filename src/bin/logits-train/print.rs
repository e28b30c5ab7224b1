//! What `logits-train` prints: a run's report (classifier or language model), runs side by
//! side (`table`), and the exit code a report implies (3 when the ONNX check failed).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use logits::student_eval::Report;

/// Prints `r` (as JSON with `json`) and its warnings; exit 3 when the ONNX check failed.
pub(crate) fn finish(r: &Report, json: bool, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print_report(r, out);
    }
    if let Some(d) = r.onnx_max_abs_diff
        && (d.is_nan() || d > r.onnx_tolerance)
    {
        eprintln!(
            "logits-train: the exported ONNX differs from the ndarray forward by {d:.3e} (> {:e})",
            r.onnx_tolerance
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// A fraction as a percentage, or `-`.
pub(crate) fn pct(v: &serde_json::Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x))
}

/// A number formatted by `fmt`, or `-`.
pub(crate) fn num(v: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    v.map_or("-".into(), fmt)
}

/// The report in words: losses, teacher and student lines, the ONNX check, files written.
pub(crate) fn print_report(r: &Report, out: Option<&Path>) {
    let e = &r.evaluation;
    println!("evaluated on {} of {}", r.rows_evaluated, r.dataset);
    if let Some(l) = &r.losses {
        println!(
            "losses: {l}; {} steps in {:.1}s",
            r.steps.unwrap_or(0),
            r.train_seconds.unwrap_or(0.0)
        );
    }
    if e.get("perplexity").is_some() {
        // Perplexities only where there are labels (a language model's next tokens).
        if e["perplexity"].is_f64() {
            println!(
                "teacher: perplexity ≥ {} (bound from its stored top-k; next token in top-k {}), params {}, bytes {}",
                num(e["teacher_perplexity_at_least"].as_f64(), |x| format!(
                    "{x:.2}"
                )),
                pct(&e["teacher_topk_coverage"]),
                num(r.teacher.params.map(|x| x as f64), |x| format!("{x:.0}")),
                num(r.teacher.bytes.map(|x| x as f64), |x| format!("{x:.0}")),
            );
        }
        let ppl = match e["perplexity"].as_f64() {
            Some(x) => format!("perplexity {x:.2}, "),
            None => String::new(),
        };
        println!(
            "student: {ppl}top-1 agreement with teacher {}, KL(teacher‖student) {}, params {}, bytes {}, sequence latency {} (ndarray) / {} (ONNX Runtime)",
            pct(&e["agreement"]),
            num(e["kl"].as_f64(), |x| format!("{x:.4}")),
            num(r.student.params.map(|x| x as f64), |x| format!("{x:.0}")),
            num(r.student.bytes.map(|x| x as f64), |x| format!("{x:.0}")),
            num(r.student.latency_us, |x| format!("{x:.0} µs")),
            num(r.student.latency_onnx_us, |x| format!("{x:.0} µs")),
        );
    } else {
        print_classifier(r);
    }
    if let Some(d) = r.onnx_max_abs_diff {
        let tol = r.onnx_tolerance;
        let verdict = if d <= tol { "ok" } else { "FAILED" };
        println!(
            "exported ONNX vs ndarray: max |difference|/max(1,|logit|) {d:.2e} (≤ {tol:e}: {verdict})"
        );
    }
    if let Some(o) = out {
        // Language-model runs also write the Hugging Face directory.
        let hf = if o.join("hf").is_dir() { ", hf/" } else { "" };
        println!(
            "wrote {}/student.onnx, student.safetensors, report.json, metrics.jsonl, config.toml{hf}",
            o.display()
        );
    }
}

/// The teacher and student lines of a classifier report, and its most frequent confusion.
pub(crate) fn print_classifier(r: &Report) {
    let e = &r.evaluation;
    println!(
        "teacher: accuracy {} (stored top-1), ECE {}, params {}, bytes {}, latency {} (ONNX Runtime)",
        pct(&e["teacher_accuracy"]),
        num(e["teacher_ece"].as_f64(), |x| format!("{x:.3}")),
        num(r.teacher.params.map(|x| x as f64), |x| format!("{x:.0}")),
        num(r.teacher.bytes.map(|x| x as f64), |x| format!("{x:.0}")),
        num(r.teacher.latency_onnx_us, |x| format!("{x:.1} µs")),
    );
    println!(
        "student: accuracy {}, agreement with teacher {}, KL(teacher‖student) {}, ECE {}, params {}, bytes {}, latency {} (ndarray) / {} (ONNX Runtime)",
        pct(&e["accuracy"]),
        pct(&e["agreement"]),
        num(e["kl"].as_f64(), |x| format!("{x:.4}")),
        num(e["ece"].as_f64(), |x| format!("{x:.3}")),
        num(r.student.params.map(|x| x as f64), |x| format!("{x:.0}")),
        num(r.student.bytes.map(|x| x as f64), |x| format!("{x:.0}")),
        num(r.student.latency_us, |x| format!("{x:.1} µs")),
        num(r.student.latency_onnx_us, |x| format!("{x:.1} µs")),
    );
    if let Some(c) = e["confusion"].as_array() {
        let worst = c
            .iter()
            .enumerate()
            .flat_map(|(l, row)| {
                row.as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter(move |(p, _)| *p != l)
                    .map(move |(p, n)| (n.as_u64().unwrap_or(0), l, p))
            })
            .filter(|x| x.0 > 0)
            .max();
        match worst {
            Some((n, l, p)) => {
                println!("most frequent confusion: label {l} predicted as {p} ({n} rows)")
            }
            None => println!("no confusions"),
        }
    }
}

/// Runs side by side from their report.json files, teacher first.
pub(crate) fn table(runs: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for r in runs {
        let p = r.join("report.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
        let rep: Report =
            serde_json::from_str(&text).with_context(|| format!("{}", p.display()))?;
        reports.push((
            r.file_name()
                .map_or("run".into(), |n| n.to_string_lossy().to_string()),
            rep,
        ));
    }
    let Some((_, first)) = reports.first() else {
        bail!("no runs given");
    };
    if json {
        let all: serde_json::Map<String, serde_json::Value> = reports
            .iter()
            .map(|(n, r)| Ok((n.clone(), serde_json::to_value(r)?)))
            .collect::<anyhow::Result<_>>()?;
        println!("{}", serde_json::Value::Object(all));
        return Ok(ExitCode::SUCCESS);
    }
    if first.evaluation.get("perplexity").is_some() {
        return lm_table(&reports);
    }
    println!(
        "{:<22} {:>9} {:>10} {:>9} {:>10} {:>10} {:>12} {:>12}",
        "model", "accuracy", "agreement", "KL", "params", "bytes", "latency", "ONNX check"
    );
    let e = &first.evaluation;
    println!(
        "{:<22} {:>9} {:>10} {:>9} {:>10} {:>10} {:>12} {:>12}",
        "teacher",
        pct(&e["teacher_accuracy"]),
        "-",
        "-",
        num(first.teacher.params.map(|x| x as f64), |x| format!(
            "{x:.0}"
        )),
        num(first.teacher.bytes.map(|x| x as f64), |x| format!("{x:.0}")),
        num(first.teacher.latency_onnx_us, |x| format!("{x:.1}µs ort")),
        "-"
    );
    for (n, r) in &reports {
        let e = &r.evaluation;
        println!(
            "{:<22} {:>9} {:>10} {:>9} {:>10} {:>10} {:>12} {:>12}",
            n,
            pct(&e["accuracy"]),
            pct(&e["agreement"]),
            num(e["kl"].as_f64(), |x| format!("{x:.4}")),
            num(r.student.params.map(|x| x as f64), |x| format!("{x:.0}")),
            num(r.student.bytes.map(|x| x as f64), |x| format!("{x:.0}")),
            num(r.student.latency_onnx_us, |x| format!("{x:.1}µs ort")),
            num(r.onnx_max_abs_diff, |d| format!(
                "{d:.1e} {}",
                if d <= r.onnx_tolerance { "ok" } else { "FAIL" }
            )),
        );
    }
    println!("(evaluated on {})", first.rows_evaluated);
    Ok(ExitCode::SUCCESS)
}

/// The language-model runs' table (perplexity, agreement, KL).
pub(crate) fn lm_table(reports: &[(String, Report)]) -> anyhow::Result<ExitCode> {
    let first = &reports[0].1;
    println!(
        "{:<22} {:>11} {:>10} {:>9} {:>10} {:>10} {:>12}",
        "model", "perplexity", "agreement", "KL", "params", "steps", "ONNX check"
    );
    println!(
        "{:<22} {:>11} {:>10} {:>9} {:>10} {:>10} {:>12}",
        "teacher",
        num(
            first.evaluation["teacher_perplexity_at_least"].as_f64(),
            |x| format!("≥{x:.2}")
        ),
        "-",
        "-",
        num(first.teacher.params.map(|x| x as f64), |x| format!(
            "{x:.0}"
        )),
        "-",
        "-"
    );
    for (n, r) in reports {
        let e = &r.evaluation;
        println!(
            "{:<22} {:>11} {:>10} {:>9} {:>10} {:>10} {:>12}",
            n,
            num(e["perplexity"].as_f64(), |x| format!("{x:.2}")),
            pct(&e["agreement"]),
            num(e["kl"].as_f64(), |x| format!("{x:.4}")),
            num(r.student.params.map(|x| x as f64), |x| format!("{x:.0}")),
            num(r.steps.map(|x| x as f64), |x| format!("{x:.0}")),
            num(r.onnx_max_abs_diff, |d| format!(
                "{d:.1e} {}",
                if d <= r.onnx_tolerance { "ok" } else { "FAIL" }
            )),
        );
    }
    println!("(evaluated on {})", first.rows_evaluated);
    Ok(ExitCode::SUCCESS)
}
