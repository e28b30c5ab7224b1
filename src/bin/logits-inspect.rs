//! `logits-inspect DATASET`: what a dataset holds, whether it is intact, and whether its
//! targets are any good. A thin front door over `logits_format`.
//!
//! Exit codes: 0 success; 1 error (unreadable dataset, bad arguments to the library);
//! 2 usage error; 3 `--validate` found problems.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use logits_format::manifest::{Granularity, Manifest, TopK};
use logits_format::stats::{self, BINS, TargetStats};
use logits_format::{Dataset, validate};

/// Summarise, validate and measure a logits dataset.
#[derive(Parser, Debug)]
#[command(name = "logits-inspect", version)]
struct Args {
    /// The dataset: a directory holding manifest.json, or an s3://, gs://, az:// or file://
    /// URL (read in place).
    dataset: PathBuf,
    /// Run the full validation: checksums, schema, row counts, row-id coverage, contract.
    #[arg(long)]
    validate: bool,
    /// Print JSON instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Read the completed shards of an unfinished build.
    #[arg(long)]
    partial: bool,
    /// Positions examined for the target statistics (0: skip them).
    #[arg(long, default_value_t = 200_000)]
    stats_positions: u64,
}

fn main() -> ExitCode {
    // SAFETY: setting a signal disposition before any other thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("logits-inspect: error: {}", logits::error_text(&e));
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let ds = if args.partial {
        Dataset::open_partial(&args.dataset)
    } else {
        Dataset::open(&args.dataset)
    }
    // The format's errors name the dataset already: said once.
    .context("cannot open the dataset")?;
    let m = ds.manifest();
    // Validation first: on a damaged dataset it lists every problem (exit 3), where the
    // statistics' reader would stop at the first.
    let report = args.validate.then(|| validate(&ds));
    let damaged = report.as_ref().is_some_and(|r| !r.is_ok());
    let st = if args.stats_positions > 0 && !damaged {
        stats::target_stats(&ds, Some(args.stats_positions))?
    } else {
        None
    };
    let cols = stats::column_bytes(&ds)?;
    if args.json {
        let mut v = serde_json::json!({
            "dataset": args.dataset.display().to_string(),
            "complete": ds.is_complete(),
            "manifest": m,
            "bytes_per_entry": bytes_per_entry(m),
            "column_bytes": cols,
        });
        if let Some(st) = &st {
            v["stats"] = serde_json::json!({
                "positions": st.positions, "mean_k": st.mean_k, "mean_mass": st.mean_mass,
                "mass_hist": st.mass_hist, "mean_entropy_low": st.mean_entropy_low,
                "mean_entropy_high": st.mean_entropy_high, "entropy_hist": st.entropy_hist,
                "max_entropy": st.max_entropy,
            });
        }
        if let Some(r) = &report {
            v["validation"] = serde_json::json!({
                "ok": r.is_ok(), "shards_checked": r.shards_checked,
                "rows_checked": r.rows_checked, "problems": r.problems,
            });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_summary(&ds, m, &cols, st.as_ref());
        if let Some(r) = &report {
            println!();
            if r.is_ok() {
                println!(
                    "validation: OK ({} shards, {} rows checked)",
                    r.shards_checked, r.rows_checked
                );
            } else {
                println!("validation: {} problem(s)", r.problems.len());
                for p in &r.problems {
                    println!("  - {p}");
                }
            }
        }
    }
    Ok(match report {
        Some(r) if !r.is_ok() => ExitCode::from(3),
        _ => ExitCode::SUCCESS,
    })
}

fn bytes_per_entry(m: &Manifest) -> Option<f64> {
    (m.totals.entries > 0).then(|| m.totals.bytes as f64 / m.totals.entries as f64)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
}

fn histogram(title: &str, hist: &[u64; BINS], lo: f64, hi: f64) {
    println!("{title}");
    let max = hist.iter().copied().max().unwrap_or(1).max(1);
    let total: u64 = hist.iter().sum::<u64>().max(1);
    for (i, &n) in hist.iter().enumerate() {
        let a = lo + (hi - lo) * i as f64 / BINS as f64;
        let b = lo + (hi - lo) * (i + 1) as f64 / BINS as f64;
        let bar = "#".repeat((n * 40).div_ceil(max) as usize);
        println!(
            "  [{a:6.2}, {b:6.2}) {:5.1}% {bar}",
            100.0 * n as f64 / total as f64
        );
    }
}

fn print_summary(
    ds: &Dataset,
    m: &Manifest,
    cols: &std::collections::BTreeMap<String, u64>,
    st: Option<&TargetStats>,
) {
    let t = &m.totals;
    println!(
        "dataset     {}{}",
        ds.root().display(),
        if ds.is_complete() {
            ""
        } else {
            "  (UNFINISHED BUILD: completed shards only)"
        }
    );
    println!(
        "format      {} {} (id {})",
        m.format, m.format_version, m.dataset_id
    );
    println!(
        "created     {} by {} {}",
        m.created, m.tool.name, m.tool.version
    );
    println!(
        "rows        {} in {} shards, {} ({} skipped on purpose)",
        t.rows,
        t.shards,
        human(t.bytes),
        t.skipped_row_ids.len()
    );
    println!(
        "teacher     {} ({}, sha256 {})",
        m.teacher.file,
        human(m.teacher.bytes),
        m.teacher.sha256
    );
    if let Some(tg) = &m.targets {
        let g = match tg.granularity {
            Granularity::Example => "per example",
            Granularity::Position => "per position",
        };
        let rule = match &tg.topk {
            Some(TopK::Fixed { k }) => format!("top-{k}"),
            Some(TopK::Adaptive { min_k, max_k, mass }) => {
                format!("adaptive top-k ({min_k}..={max_k}, mass {mass})")
            }
            None => "no top-k".into(),
        };
        println!(
            "targets     {} of output {:?} over {} classes, {g}",
            rule, tg.output, tg.axis_size
        );
        let mut temps = vec!["1".to_string()];
        temps.extend(tg.temperatures.iter().map(|x| x.to_string()));
        println!(
            "            ids {}, values {}, logZ at T = {}{}",
            word(&tg.ids),
            tg.values.name(),
            temps.join(", "),
            if tg.output_is_probability {
                " (teacher output was a probability: values are log-probs)"
            } else {
                ""
            }
        );
        if let Some(c) = &tg.coding {
            println!(
                "            coded ctx-v1 (ids and steps in topk_coded{})",
                c.context
                    .as_ref()
                    .map(|x| format!(", context {x}"))
                    .unwrap_or_default()
            );
        }
        if let Some(s) = &tg.sampled {
            println!(
                "            sampled: {} draws at T={} (seed {})",
                s.draws, s.temperature, s.seed
            );
        }
        println!(
            "            {} positions, {} entries{}",
            t.positions,
            t.entries,
            bytes_per_entry(m)
                .map(|b| format!(", {b:.2} bytes per stored entry (all-in)"))
                .unwrap_or_default()
        );
    }
    for f in &m.features {
        println!(
            "feature     {} <- {:?} per {} {:?} {} pooling {}",
            f.column,
            f.tensor,
            word(&f.granularity),
            f.shape,
            f.encoding.name(),
            word(&f.pooling)
        );
    }
    for i in &m.inputs {
        let shape: Vec<String> = i.shape.iter().map(|d| d.to_string()).collect();
        println!(
            "input       {} <- {:?} {} stored as {} [{}]",
            i.column,
            i.name,
            i.dtype.name(),
            i.stored.name(),
            shape.join(", ")
        );
    }
    if let Some(l) = &m.labels {
        println!("labels      {} classes", l.num_classes);
    }
    println!(
        "corpus      {} rows, fingerprint {}{}",
        m.corpus.rows,
        m.corpus.fingerprint,
        m.corpus
            .split
            .as_ref()
            .map(|s| format!(", split {s}"))
            .unwrap_or_default()
    );
    if let Some(tk) = &m.tokenizer {
        println!(
            "tokenizer   {} (vocab {}, sha256 {})",
            tk.file, tk.vocab_size, tk.sha256
        );
    }
    println!(
        "license     {}",
        m.license.terms.as_deref().unwrap_or("(no terms recorded)")
    );
    if let Some(n) = &m.license.notes {
        println!("            {n}");
    }
    if let Some(n) = &m.notes {
        println!("notes       {n}");
    }
    if t.bytes > 0 {
        println!("bytes by column:");
        let mut v: Vec<_> = cols.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        for (c, b) in v {
            println!(
                "  {c:<24} {:>10}  {:5.1}%",
                human(*b),
                100.0 * *b as f64 / t.bytes as f64
            );
        }
    }
    if let Some(st) = st {
        println!(
            "target statistics over {} positions (mean k {:.1}):",
            st.positions, st.mean_k
        );
        println!(
            "  mean retained mass {:.4}; teacher entropy {:.3}..{:.3} nats (max {:.2})",
            st.mean_mass, st.mean_entropy_low, st.mean_entropy_high, st.max_entropy
        );
        histogram(
            "retained top-k probability mass (T=1):",
            &st.mass_hist,
            0.0,
            1.0,
        );
        histogram(
            "teacher entropy, kept entries + tail as one class (nats):",
            &st.entropy_hist,
            0.0,
            st.max_entropy,
        );
    }
}

/// The manifest's own word for an enumerated value (its JSON name), not a Rust name.
fn word(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => "none".into(),
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}
