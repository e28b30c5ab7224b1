//! `logits-train`: train a student from a logits dataset, evaluate it against the teacher and
//! export it. A thin front door over `logits_student` (training, export) and
//! `logits::student_eval` (evaluation, the report, the ONNX check): this file runs the
//! subcommands; `args` holds the command line, `print` what is printed.
//!
//! Exit codes: 0 success; 1 error (the message names the dataset, column, file or step);
//! 2 usage error; 3 the exported ONNX disagrees with the ndarray forward beyond 1e-5 × max(1, |logit|)
//! (the trained student and its files are kept); 130/143 stopped by SIGINT/SIGTERM (a
//! checkpoint is written first: `--resume` continues).

mod args;
mod print;
mod resolve;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use logits::student_eval::{describe_losses, evaluate, lm_evaluate};
use logits_format::Dataset;
use logits_student::config::TrainConfig;
use logits_student::export::Opset;
use logits_student::fit::Architecture;
use logits_student::train;

use args::{Cli, Command, EvalArgs, GenerateArgs, TrainArgs};
use print::{finish, table};
use resolve::resolve;

fn main() -> ExitCode {
    logits::prepare_process();
    let cli = Cli::parse_with_defaults();
    let stop = logits::stop_on_signals();
    match run(cli, stop) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("logits-train: error: {}", logits::error_text(&e));
            use logits_student::StudentError as E;
            match e.downcast_ref::<E>() {
                Some(E::Interrupted { .. }) => {
                    eprintln!("logits-train: stopped by {}", logits::stop_signal_name());
                    return ExitCode::from(logits::stop_exit_code());
                }
                // A model too large, or settings that contradict each other or the model
                // (lm shape, feature-loss layers): usage errors, as out-of-range options are.
                Some(E::TooLarge { .. } | E::Config(_)) => return ExitCode::from(2),
                _ => {}
            }
            if e.downcast_ref::<logits::UsageError>().is_some() {
                return ExitCode::from(2);
            }
            ExitCode::from(1)
        }
    }
}

/// Runs one subcommand.
fn run(cli: Cli, stop: &'static std::sync::atomic::AtomicBool) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(mut a) => {
            let out = a.out.clone();
            logits::with_output_dir(&out, |dir| {
                a.out = dir.to_path_buf();
                train_cmd(*a, stop)
            })
        }
        Command::Eval(a) => eval_cmd(a),
        Command::Export {
            student,
            out,
            opset,
            tokenizer,
            json,
        } => {
            let say =
                |onnx: &std::path::Path, st: &std::path::Path, hf: Option<&std::path::Path>| {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"onnx": onnx, "safetensors": st, "hf": hf})
                        );
                    } else if let Some(hf) = hf {
                        println!(
                            "wrote {}, {} and {}/",
                            onnx.display(),
                            st.display(),
                            hf.display()
                        );
                    } else {
                        println!("wrote {} and {}", onnx.display(), st.display());
                    }
                };
            let opset = Opset::new(opset).map_err(|e| logits::usage(e.to_string()))?;
            let kind: serde_json::Value = logits_student::student::read_info(&student)?;
            if logits_student::lm::is_transformer(kind["kind"].as_str().unwrap_or("")) {
                let (gpt, info) = logits_student::lm::load(&student)?;
                let bar = stage(json, "exporting ONNX and safetensors");
                let (o, st) = logits_student::export::export_gpt(&gpt, &info, &out, opset)?;
                if gpt.spec.encoder.is_some() {
                    bar.finish_and_clear();
                    say(&o, &st, None);
                    return Ok(ExitCode::SUCCESS);
                }
                bar.set_message("writing the Hugging Face directory");
                let hf = out.join("hf");
                logits::hf_dir::write(&gpt, &info, &hf, tokenizer.as_deref(), None)?;
                bar.finish_and_clear();
                say(&o, &st, Some(&hf));
                return Ok(ExitCode::SUCCESS);
            }
            let (s, info) = logits_student::student::load(&student, None)?;
            let bar = stage(json, "exporting ONNX and safetensors");
            let (o, st) = logits_student::export::export(&s.mlp, &info, &out, opset)?;
            bar.finish_and_clear();
            say(&o, &st, None);
            Ok(ExitCode::SUCCESS)
        }
        Command::Table { runs, json } => table(&runs, json),
        Command::Generate(g) => generate_cmd(g),
    }
}

/// `train`: an MLP run (or a transformer run on sequences), then evaluate and export.
fn train_cmd(
    a: TrainArgs,
    stop: &'static std::sync::atomic::AtomicBool,
) -> anyhow::Result<ExitCode> {
    let opset = Opset::new(a.opset).map_err(|e| logits::usage(e.to_string()))?;
    let mut cfg = resolve(&a)?;
    cfg.run.stop = logits_student::config::StopFlag(Some(stop));
    let ds = Dataset::open(&a.dataset)?;
    let lic = &ds.manifest().license;
    // The terms travel with the data: said on every run that has some, not when none exist.
    let terms = if lic.terms.is_some() || lic.notes.is_some() {
        format!(": license/terms: {lic}")
    } else {
        String::new()
    };
    eprintln!(
        "dataset {} (teacher {}){terms}",
        a.dataset.display(),
        ds.manifest().teacher.file,
    );
    if !a.resume && train::RunDir(a.out.clone()).latest()?.is_some() {
        bail!(
            "{} already holds a training run; pass --resume to continue it or choose another --out",
            a.out.display()
        );
    }
    // Defaults left as they are fit what the dataset holds (a resumed run keeps its saved
    // configuration, which already says what was fitted).
    if !a.resume {
        let chosen = resolve::chosen(&a);
        for note in train::fit_defaults(&ds, &mut cfg, chosen)? {
            eprintln!("note: {note}");
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let cfg_path = a.out.join("config.toml");
    if !a.resume || !cfg_path.is_file() {
        logits_student::student::write_atomic(&cfg_path, toml::to_string(&cfg)?.as_bytes())?;
    }
    let bar = progress_bar(a.quiet || a.json, "steps {msg}");
    if logits_student::lm::wants_transformer(&ds, &cfg) {
        return lm_train_cmd(&a, &cfg, &ds, bar, opset);
    }
    let join = a.join.open(&ds, cfg.model.input.as_deref())?;
    let t0 = Instant::now();
    let run = train::train(
        &ds,
        &cfg,
        &a.out,
        a.resume,
        join.clone(),
        &mut |step, total, line| {
            bar.set_length(total);
            bar.set_position(step);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} rows/s",
                line["loss"].as_f64().unwrap_or(f64::NAN),
                line["lr"].as_f64().unwrap_or(0.0),
                line["samples_per_s"].as_f64().unwrap_or(0.0)
            ));
        },
    )?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let xbar = stage(a.quiet || a.json, "exporting ONNX and safetensors");
    let (onnx, st) = run.student.export(&run.info, &a.out, opset)?;
    xbar.finish_and_clear();
    let mut report = evaluate(
        &ds,
        &st,
        Some(&onnx),
        a.teacher.as_deref(),
        cfg.data.holdout_from,
        join,
    )?;
    report.steps = Some(run.steps);
    report.train_seconds = Some(secs);
    report.losses = Some(describe_losses(&cfg));
    logits_student::student::write_atomic(
        &a.out.join("report.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    finish(&report, a.json, Some(&a.out))
}

/// `eval`: re-evaluate a student file.
fn eval_cmd(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let ds = Dataset::open(&a.dataset)?;
    let kind: serde_json::Value = logits_student::student::read_info(&a.student)?;
    if logits_student::lm::is_transformer(kind["kind"].as_str().unwrap_or("")) {
        let bar = progress_bar(a.json, "batches evaluated");
        let r = lm_evaluate(
            &ds,
            &a.student,
            a.onnx.as_deref(),
            a.teacher.as_deref(),
            a.holdout_from,
            &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            },
        )?;
        bar.finish_and_clear();
        return finish(&r, a.json, None);
    }
    let (_, info) = logits_student::student::load(&a.student, None)?;
    let join = a.join.open(&ds, Some(&info.input))?;
    let report = evaluate(
        &ds,
        &a.student,
        a.onnx.as_deref(),
        a.teacher.as_deref(),
        a.holdout_from,
        join,
    )?;
    finish(&report, a.json, None)
}

/// `train` with the transformer student (per-token datasets, sequence inputs): its ONNX export,
/// and a language model's Hugging Face directory.
fn lm_train_cmd(
    a: &TrainArgs,
    cfg: &TrainConfig,
    ds: &Dataset,
    bar: ProgressBar,
    opset: Opset,
) -> anyhow::Result<ExitCode> {
    let tokenizer = a
        .tokenizer
        .as_deref()
        .map(logits::local_input)
        .transpose()?;
    let tokenizer_sha = ds.manifest().tokenizer.as_ref().map(|t| t.sha256.clone());
    if let Some(t) = &tokenizer {
        logits::hf_dir::check_tokenizer(t, tokenizer_sha.as_deref())?;
    }
    let t0 = Instant::now();
    let run = logits_student::lm::train(ds, cfg, &a.out, a.resume, &mut |step, total, line| {
        bar.set_length(total);
        bar.set_position(step);
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tokens/s",
            line["loss"].as_f64().unwrap_or(f64::NAN),
            line["lr"].as_f64().unwrap_or(0.0),
            line["tokens_per_s"].as_f64().unwrap_or(0.0)
        ));
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let xbar = stage(a.quiet || a.json, "exporting ONNX, safetensors and hf/");
    let (onnx, st) = run.student.export(&run.info, &a.out, opset)?;
    // A causal LM also goes out as a transformers GPT2LMHeadModel directory.
    if run.info.spec.encoder.is_none() {
        logits::hf_dir::write(
            &run.student.gpt,
            &run.info,
            &a.out.join("hf"),
            tokenizer.as_deref(),
            // Checked against the dataset before training.
            None,
        )?;
    }
    xbar.finish_and_clear();
    let ebar = progress_bar(a.quiet || a.json, "batches evaluated");
    let mut report = lm_evaluate(
        ds,
        &st,
        Some(&onnx),
        a.teacher.as_deref(),
        cfg.data.holdout_from,
        &mut |done, total| {
            ebar.set_length(total as u64);
            ebar.set_position(done as u64);
        },
    )?;
    ebar.finish_and_clear();
    report.steps = Some(run.steps);
    report.train_seconds = Some(secs);
    report.losses = Some(describe_losses(cfg));
    logits_student::student::write_atomic(
        &a.out.join("report.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    finish(&report, a.json, Some(&a.out))
}

/// `generate`: sample text from a language-model student.
fn generate_cmd(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let (gpt, info) = logits_student::lm::load(&a.student)?;
    if gpt.spec.encoder.is_some() {
        bail!(
            "{}: a {} student (a classifier), not a language model: there is nothing to generate",
            a.student.display(),
            info.kind
        );
    }
    let tok = tokenizers::Tokenizer::from_file(logits::local_input(&a.tokenizer)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.tokenizer.display()))?;
    let enc = tok
        .encode(a.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizing the prompt: {e}"))?;
    let mut ids: Vec<u32> = Vec::new();
    if let Some(bos) = tok.token_to_id("<bos>") {
        ids.push(bos);
    }
    ids.extend(enc.get_ids());
    if let Some(&big) = ids.iter().find(|&&i| i as usize >= gpt.spec.vocab) {
        bail!(
            "{}: token id {big} is outside the student's vocabulary of {}: is this the dataset's tokenizer?",
            a.tokenizer.display(),
            gpt.spec.vocab
        );
    }
    let s = logits_student::lm::Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        max_tokens: a.max_tokens,
        stop: tok.token_to_id("<eos>"),
    };
    let out = logits_student::lm::generate(&gpt, &ids, &s);
    let text = tok
        .decode(&out, true)
        .map_err(|e| anyhow::anyhow!("detokenizing: {e}"))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"prompt_ids": ids, "ids": out, "text": text})
        );
    } else {
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr counting `unit` (hidden when `hidden`: --quiet, --json).
fn progress_bar(hidden: bool, unit: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(0);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed}}<{{eta}}]"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// A spinner on stderr naming a stage without a count (an export), hidden when `hidden`.
fn stage(hidden: bool, what: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    b.set_message(what.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    b
}
