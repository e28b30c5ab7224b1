//! `logits-train`: train a student from a logits dataset, evaluate it against the teacher and
//! export it. A thin front door over `logits_student`; the exported ONNX file is checked
//! through ONNX Runtime here, where the two sides meet.
//!
//! Exit codes: 0 success; 1 error (the message names the dataset, column, file or step);
//! 2 usage error; 3 the exported ONNX disagrees with the ndarray forward beyond 1e-5 × max(1, |logit|)
//! (the trained student and its files are kept); 130/143 stopped by SIGINT/SIGTERM (a
//! checkpoint is written first: `--resume` continues).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use logits::onnx_run::OnnxModel;
use logits_format::Dataset;
use logits_student::config::{FeatureLoss, TrainConfig, parse_name};
use logits_student::data::{Join, JoinBy, Loader};
use logits_student::eval::{self, Evaluation};
use logits_student::export::Opset;
use logits_student::train::{self, Split};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Train a small student from a logits dataset, without the teacher.
#[derive(Parser, Debug)]
#[command(name = "logits-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train, then evaluate on the held-out rows and export (student.onnx, student.safetensors).
    Train(Box<TrainArgs>),
    /// Evaluate a trained student on a dataset.
    Eval(EvalArgs),
    /// Export a student or checkpoint file to ONNX and safetensors.
    Export {
        /// A student.safetensors (a run's output or a checkpoint's).
        #[arg(long)]
        student: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// ONNX opset of student.onnx (13 to 21).
        #[arg(long, default_value_t = logits_student::export::OPSET)]
        opset: i64,
        /// Language-model students: the dataset's tokenizer.json, copied into hf/.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
    /// Sample text from a language-model student.
    Generate(GenerateArgs),
    /// Print runs' reports side by side (teacher first), e.g. label-only vs distilled.
    Table {
        /// Run directories written by `train`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// The student.safetensors of a language-model run.
    #[arg(long)]
    student: PathBuf,
    /// The tokenizer.json of the dataset it was trained from (a path or a URL).
    #[arg(long)]
    tokenizer: PathBuf,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Tokens to add at most.
    #[arg(long, default_value_t = 40)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// The dataset: a directory, or an s3://, gs://, az:// or file:// URL (read in place by
    /// range requests; LOGITS_CACHE_DIR keeps what was read for the next epochs).
    dataset: PathBuf,
    /// Output directory: config.toml, metrics.jsonl, checkpoints/, student.onnx,
    /// student.safetensors, report.json. A store URL works too: the run is staged locally and
    /// uploaded at the end (also when it fails); --resume continues a run kept there.
    #[arg(long)]
    out: PathBuf,
    /// A TOML configuration (see README); flags given here win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// The teacher's ONNX file, to time it beside the student (never needed to train).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Seed for initialisation, shuffling and dropout.
    #[arg(long)]
    seed: Option<u64>,
    /// Hidden widths, comma-separated (e.g. 128,64).
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// relu, gelu or tanh.
    #[arg(long)]
    activation: Option<String>,
    /// Layer norm before each hidden nonlinearity.
    #[arg(long)]
    layer_norm: bool,
    /// Dropout after each hidden layer.
    #[arg(long)]
    dropout: Option<f32>,
    /// VOCAB:DIM — the inputs are ids below VOCAB (bytes: 256), each embedded in DIM learned
    /// values before the first layer (not standardised).
    #[arg(long)]
    embed: Option<String>,
    /// The stored input to train from (default: the only one).
    #[arg(long)]
    input: Option<String>,
    /// Language-model student: residual width.
    #[arg(long)]
    lm_dim: Option<usize>,
    /// Language-model student: blocks.
    #[arg(long)]
    lm_layers: Option<usize>,
    /// Language-model student: attention heads.
    #[arg(long)]
    lm_heads: Option<usize>,
    /// Language-model student: an untied LM head.
    #[arg(long)]
    lm_untied: bool,
    /// Weight of the response (KD) loss on top-k targets.
    #[arg(long)]
    kd: Option<f64>,
    /// Weight of cross-entropy on labels.
    #[arg(long)]
    ce: Option<f64>,
    /// Weight of the RS-KD loss on sampled targets.
    #[arg(long)]
    sampled: Option<f64>,
    /// Distillation temperature.
    #[arg(long, short = 'T')]
    temperature: Option<f64>,
    /// forward_kl, reverse_kl or jsd.
    #[arg(long)]
    divergence: Option<String>,
    /// β of the generalised JSD.
    #[arg(long)]
    jsd_beta: Option<f64>,
    /// tail (exact tail bucket) or renormalize.
    #[arg(long)]
    topk: Option<String>,
    /// Feature or relation loss KIND:FEATURE@LAYER[=WEIGHT] (KIND: hint, cosine, rkd_distance,
    /// rkd_angle, sp, pkt); repeatable; replaces the configuration file's list.
    #[arg(long = "feature-loss")]
    feature_loss: Vec<String>,
    /// adamw or sgd.
    #[arg(long)]
    optimizer: Option<String>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// SGD momentum.
    #[arg(long)]
    momentum: Option<f32>,
    /// SGD Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// Weight decay (matrices only).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Clip the global gradient norm (0 disables).
    #[arg(long)]
    clip_norm: Option<f64>,
    /// Warm-up steps.
    #[arg(long)]
    warmup: Option<u64>,
    /// cosine, linear or constant.
    #[arg(long)]
    decay: Option<String>,
    /// Rows per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Passes over the training rows.
    #[arg(long)]
    epochs: Option<u64>,
    /// Total steps (overrides --epochs).
    #[arg(long)]
    steps: Option<u64>,
    /// Rows with id ≥ N are held out (default: the dataset's split).
    #[arg(long)]
    holdout_from: Option<u64>,
    /// Decode the training rows once and train from memory.
    #[arg(long)]
    in_memory: bool,
    /// Feed the inputs as stored, without per-feature standardisation (by default each input
    /// value is standardised by its training-rows mean and std, folded into the saved student).
    #[arg(long)]
    no_standardize: bool,
    /// Language-model students: the dataset's tokenizer.json (sha256 checked against the
    /// dataset), copied into the Hugging Face directory hf/ beside the ONNX export.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// ONNX opset of the exported student.onnx (13 to 21; older ops stand in for Gelu and
    /// LayerNormalization where the opset lacks them).
    #[arg(long, default_value_t = logits_student::export::OPSET)]
    opset: i64,
    /// Checkpoint every N steps (always at the end).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Metrics line every N steps.
    #[arg(long)]
    log_every: Option<u64>,
    #[command(flatten)]
    join: JoinArgs,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Inputs of a dataset built without them (`logits-build --no-inputs`): read from the corpus.
#[derive(Args, Debug, Clone)]
struct JoinArgs {
    /// The corpus the dataset was built from (Parquet, in the same order), held elsewhere
    /// (paths or URLs).
    #[arg(long = "join-corpus", num_args = 1..)]
    join_corpus: Vec<PathBuf>,
    /// row-id (corpus position, hash checked) or hash (look rows up by input hash).
    #[arg(long, default_value = "row-id")]
    join_by: String,
}

impl JoinArgs {
    fn open(&self, ds: &Dataset, input: Option<&str>) -> anyhow::Result<Option<Arc<Join>>> {
        if self.join_corpus.is_empty() {
            return Ok(None);
        }
        let by = match self.join_by.as_str() {
            "row-id" => JoinBy::RowId,
            "hash" => JoinBy::Hash,
            other => bail!("--join-by {other:?}: expected row-id or hash"),
        };
        let files = self
            .join_corpus
            .iter()
            .map(|p| logits::local_input(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(Arc::new(Join::open(ds, &files, input, by)?)))
    }
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// The dataset: a directory or a URL.
    dataset: PathBuf,
    /// The student.safetensors to evaluate.
    #[arg(long)]
    student: PathBuf,
    /// Its exported ONNX file, to check and time through ONNX Runtime.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// The teacher's ONNX file, to time it.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Rows with id ≥ N are evaluated (default: the dataset's split; all rows without one).
    #[arg(long)]
    holdout_from: Option<u64>,
    #[command(flatten)]
    join: JoinArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Side {
    params: Option<u64>,
    bytes: Option<u64>,
    latency_us: Option<f64>,
    latency_onnx_us: Option<f64>,
}

/// What `train` and `eval` print and save.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Report {
    dataset: String,
    rows_evaluated: String,
    evaluation: serde_json::Value,
    teacher: Side,
    student: Side,
    onnx_max_abs_diff: Option<f64>,
    /// The bound the ONNX check holds the export to.
    onnx_tolerance: f64,
    steps: Option<u64>,
    train_seconds: Option<f64>,
    losses: Option<String>,
}

const ONNX_TOLERANCE: f64 = 1e-5;

fn main() -> ExitCode {
    // SAFETY: setting a signal disposition before any other thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    logits::keep_freed_memory();
    let cli = Cli::parse();
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
        } => {
            let opset = Opset::new(opset).map_err(|e| logits::usage(e.to_string()))?;
            let kind: serde_json::Value = logits_student::student::read_info(&student)?;
            if kind["kind"] == "gpt" {
                let (gpt, info) = logits_student::lm::load(&student)?;
                let (o, st) = logits_student::export::export_gpt(&gpt, &info, &out, opset)?;
                let hf = out.join("hf");
                logits::hf_dir::write(&gpt, &info, &hf, tokenizer.as_deref(), None)?;
                println!(
                    "wrote {}, {} and {}/",
                    o.display(),
                    st.display(),
                    hf.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let (s, info) = logits_student::student::load(&student, None)?;
            let (o, st) = logits_student::export::export(&s.mlp, &info, &out, opset)?;
            println!("wrote {} and {}", o.display(), st.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Table { runs } => table(&runs),
        Command::Generate(g) => generate_cmd(g),
    }
}

fn name<T: serde::de::DeserializeOwned>(what: &str, s: &str, choices: &str) -> anyhow::Result<T> {
    parse_name(s).ok_or_else(|| logits::usage(format!("--{what} {s:?}: expected one of {choices}")))
}

fn resolve(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let saved = a.out.join("config.toml");
    let base = match (&a.config, a.resume && saved.is_file()) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(saved),
        (None, false) => None,
    };
    let mut c: TrainConfig = match base {
        Some(p) => {
            let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", p.display()))?
        }
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($flag:expr, $field:expr) => {
            if let Some(v) = $flag.clone() {
                $field = v;
            }
        };
    }
    set!(a.seed, c.seed);
    set!(a.hidden, c.model.hidden);
    if let Some(s) = &a.activation {
        c.model.activation = name("activation", s, "relu, gelu, tanh")?;
    }
    c.model.layer_norm |= a.layer_norm;
    set!(a.dropout, c.model.dropout);
    if a.input.is_some() {
        c.model.input = a.input.clone();
    }
    if let Some(e) = &a.embed {
        let parsed = e
            .split_once(':')
            .and_then(|(v, d)| Some([v.trim().parse().ok()?, d.trim().parse().ok()?]));
        c.model.embed = Some(parsed.ok_or_else(|| {
            logits::usage(format!(
                "--embed {e:?}: expected VOCAB:DIM, e.g. 256:16 for byte inputs"
            ))
        })?);
    }
    set!(a.lm_dim, c.lm.dim);
    set!(a.lm_layers, c.lm.layers);
    set!(a.lm_heads, c.lm.heads);
    if a.lm_untied {
        c.lm.tied = false;
    }
    set!(a.kd, c.loss.kd);
    set!(a.ce, c.loss.ce);
    set!(a.sampled, c.loss.sampled);
    set!(a.temperature, c.loss.temperature);
    if let Some(s) = &a.divergence {
        c.loss.divergence = name("divergence", s, "forward_kl, reverse_kl, jsd")?;
    }
    set!(a.jsd_beta, c.loss.jsd_beta);
    if let Some(s) = &a.topk {
        c.loss.topk = name("topk", s, "tail, renormalize")?;
    }
    if !a.feature_loss.is_empty() {
        c.loss.features = a
            .feature_loss
            .iter()
            .map(|s| FeatureLoss::parse(s))
            .collect::<Result<_, _>>()
            .map_err(|e| logits::usage(e.to_string()))?;
    }
    if let Some(s) = &a.optimizer {
        c.optim.method = name("optimizer", s, "adamw, sgd")?;
    }
    set!(a.lr, c.optim.lr);
    set!(a.momentum, c.optim.momentum);
    c.optim.nesterov |= a.nesterov;
    set!(a.weight_decay, c.optim.weight_decay);
    if let Some(v) = a.clip_norm {
        // 0 turns clipping off; anything else must be a valid norm (checked below).
        c.optim.clip_norm = (v != 0.0).then_some(v);
    }
    set!(a.warmup, c.optim.warmup);
    if let Some(s) = &a.decay {
        c.optim.decay = name("decay", s, "cosine, linear, constant")?;
    }
    set!(a.batch_size, c.data.batch_size);
    set!(a.epochs, c.data.epochs);
    if a.steps.is_some() {
        c.data.steps = a.steps;
    }
    if a.holdout_from.is_some() {
        c.data.holdout_from = a.holdout_from;
    }
    c.data.in_memory |= a.in_memory;
    if a.no_standardize {
        c.data.standardize = false;
    }
    set!(a.checkpoint_every, c.run.checkpoint_every);
    set!(a.log_every, c.run.log_every);
    c.check().map_err(|e| logits::usage(e.to_string()))?;
    Ok(c)
}

fn describe_losses(c: &TrainConfig) -> String {
    let mut v = Vec::new();
    // The names the options and config.toml use (forward_kl, tail, hint), not Rust's.
    let word = |v: serde_json::Value| v.as_str().map(String::from).unwrap_or_default();
    if c.loss.kd > 0.0 {
        let mut div = word(serde_json::json!(c.loss.divergence));
        if div == "jsd" {
            div = format!("jsd β={}", c.loss.jsd_beta);
        }
        v.push(format!(
            "kd {} ({div}, T={}, top-k {})",
            c.loss.kd,
            c.loss.temperature,
            word(serde_json::json!(c.loss.topk))
        ));
    }
    if c.loss.ce > 0.0 {
        v.push(format!("ce {}", c.loss.ce));
    }
    if c.loss.sampled > 0.0 {
        v.push(format!("sampled {}", c.loss.sampled));
    }
    for f in &c.loss.features {
        v.push(format!(
            "{} {}@{} ×{}",
            word(serde_json::json!(f.kind)),
            f.feature,
            f.layer,
            f.weight()
        ));
    }
    v.join(" + ")
}

fn train_cmd(
    a: TrainArgs,
    stop: &'static std::sync::atomic::AtomicBool,
) -> anyhow::Result<ExitCode> {
    let opset = Opset::new(a.opset).map_err(|e| logits::usage(e.to_string()))?;
    let mut cfg = resolve(&a)?;
    cfg.run.stop = logits_student::config::StopFlag(Some(stop));
    let ds = Dataset::open(&a.dataset)?;
    let lic = &ds.manifest().license;
    eprintln!(
        "dataset {} (teacher {}): license/terms: {lic}",
        a.dataset.display(),
        ds.manifest().teacher.file,
    );
    if !a.resume && train::RunDir(a.out.clone()).latest()?.is_some() {
        bail!(
            "{} already holds a training run; pass --resume to continue it or choose another --out",
            a.out.display()
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let cfg_path = a.out.join("config.toml");
    if !a.resume || !cfg_path.is_file() {
        logits_student::student::write_atomic(&cfg_path, toml::to_string(&cfg)?.as_bytes())?;
    }
    let bar = if a.quiet || a.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed}<{eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let per_token = ds
        .manifest()
        .targets
        .as_ref()
        .is_some_and(|t| t.granularity == logits_format::manifest::Granularity::Position);
    if per_token {
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
    let (onnx, st) = logits_student::export::export(&run.student.mlp, &run.info, &a.out, opset)?;
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

fn eval_cmd(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let ds = Dataset::open(&a.dataset)?;
    let kind: serde_json::Value = logits_student::student::read_info(&a.student)?;
    if kind["kind"] == "gpt" {
        let r = lm_evaluate(
            &ds,
            &a.student,
            a.onnx.as_deref(),
            a.teacher.as_deref(),
            a.holdout_from,
        )?;
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

fn finish(r: &Report, json: bool, out: Option<&Path>) -> anyhow::Result<ExitCode> {
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

fn evaluate(
    ds: &Dataset,
    student_file: &Path,
    onnx: Option<&Path>,
    teacher: Option<&Path>,
    holdout_from: Option<u64>,
    join: Option<Arc<Join>>,
) -> anyhow::Result<Report> {
    let (s, info) = logits_student::student::load(student_file, None)?;
    let m = ds.manifest();
    if info.teacher_sha256 != m.teacher.sha256 {
        eprintln!(
            "warning: {} was trained from teacher {}, this dataset's teacher is {}",
            student_file.display(),
            info.teacher_sha256,
            m.teacher.sha256
        );
    }
    let cfg = TrainConfig {
        loss: logits_student::config::LossConfig {
            kd: if m.targets.is_some() { 1.0 } else { 0.0 },
            ce: if m.labels.is_some() { 1.0 } else { 0.0 },
            ..Default::default()
        },
        data: logits_student::config::DataConfig {
            holdout_from,
            ..Default::default()
        },
        ..Default::default()
    };
    let needs = train::needs(&cfg);
    let loader = match join {
        Some(j) => Loader::joined(ds, j, needs)?,
        None => Loader::new(ds, Some(&info.input), needs)?,
    };
    if loader.input_width != s.mlp.input_width() {
        bail!(
            "{}: the student reads {} values, the dataset's input {:?} has {}",
            student_file.display(),
            s.mlp.input_width(),
            info.input,
            loader.input_width
        );
    }
    let (range, rows_label) = eval_rows(ds, &cfg, &info.dataset_id, "rows");
    let batch = loader.load(range)?;
    if batch.is_empty() {
        bail!(
            "{}: no rows to evaluate in {rows_label}",
            ds.root().display()
        );
    }
    train::check_ids(&s.mlp, &batch, &info.input)
        .with_context(|| ds.root().display().to_string())?;
    let logits = s.mlp.predict(batch.x.view());
    let e: Evaluation = eval::evaluate(&logits, &batch);
    let row = batch.x.slice(ndarray::s![0..1, ..]).to_owned();
    let (params, _) = eval::size(&s.mlp);
    let mut student = Side {
        params: Some(params as u64),
        bytes: std::fs::metadata(student_file).ok().map(|m| m.len()),
        latency_us: Some(eval::latency_us(&s.mlp, &row, 2000)),
        latency_onnx_us: None,
    };
    let mut diff = None;
    if let Some(o) = onnx {
        let mut om = OnnxModel::open(o)?;
        let y = om.run(&batch.x, None)?;
        let d = logits::onnx_run::max_scaled_diff(y.iter().copied().zip(logits.iter().copied()));
        diff = Some(d);
        student.latency_onnx_us = Some(om.latency_us(&row, None, 2000)?);
        student.bytes = std::fs::metadata(o).ok().map(|m| m.len());
    }
    let mut t = Side {
        bytes: Some(m.teacher.bytes),
        ..Default::default()
    };
    if let Some(tp) = teacher {
        let proto = logits_onnx::load(tp)?;
        t.params = Some(logits_onnx::model::parameter_count(&proto));
        let mut tm = OnnxModel::open(tp)?;
        let shape: Vec<usize> = m
            .inputs
            .iter()
            .find(|i| i.name == info.input)
            .map(|i| {
                i.shape
                    .iter()
                    .filter_map(|d| match d {
                        logits_format::manifest::Dim::Fixed(n) => Some(*n as usize),
                        logits_format::manifest::Dim::Named(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        t.latency_onnx_us = Some(tm.latency_us(&row, Some(&shape), 2000)?);
    }
    Ok(Report {
        dataset: ds.root().display().to_string(),
        rows_evaluated: format!("{} {rows_label}", batch.len()),
        evaluation: serde_json::to_value(&e)?,
        teacher: t,
        student,
        onnx_max_abs_diff: diff,
        onnx_tolerance: ONNX_TOLERANCE,
        steps: None,
        train_seconds: None,
        losses: None,
    })
}

fn pct(v: &serde_json::Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x))
}

fn num(v: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    v.map_or("-".into(), fmt)
}

fn print_report(r: &Report, out: Option<&Path>) {
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
        println!(
            "teacher: perplexity ≥ {} (bound from its stored top-k; next token in top-k {}), params {}, bytes {}",
            num(e["teacher_perplexity_at_least"].as_f64(), |x| format!(
                "{x:.2}"
            )),
            pct(&e["teacher_topk_coverage"]),
            num(r.teacher.params.map(|x| x as f64), |x| format!("{x:.0}")),
            num(r.teacher.bytes.map(|x| x as f64), |x| format!("{x:.0}")),
        );
        println!(
            "student: held-out perplexity {}, top-1 agreement with teacher {}, KL(teacher‖student) {}, params {}, bytes {}, window latency {} (ndarray) / {} (ONNX Runtime)",
            num(e["perplexity"].as_f64(), |x| format!("{x:.2}")),
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

fn print_classifier(r: &Report) {
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

fn table(runs: &[PathBuf]) -> anyhow::Result<ExitCode> {
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
    let (onnx, st) =
        logits_student::export::export_gpt(&run.student.gpt, &run.info, &a.out, opset)?;
    logits::hf_dir::write(
        &run.student.gpt,
        &run.info,
        &a.out.join("hf"),
        tokenizer.as_deref(),
        tokenizer_sha.as_deref(),
    )?;
    let mut report = lm_evaluate(
        ds,
        &st,
        Some(&onnx),
        a.teacher.as_deref(),
        cfg.data.holdout_from,
    )?;
    report.steps = Some(run.steps);
    report.train_seconds = Some(secs);
    report.losses = Some(describe_losses(cfg));
    logits_student::student::write_atomic(
        &a.out.join("report.json"),
        &serde_json::to_vec_pretty(&report)?,
    )?;
    finish(&report, a.json, Some(&a.out))
}

/// ONNX check tolerance of the language-model export (longer chains of f32 operations).
const LM_ONNX_TOLERANCE: f64 = 1e-4;

fn lm_evaluate(
    ds: &Dataset,
    student_file: &Path,
    onnx: Option<&Path>,
    teacher: Option<&Path>,
    holdout_from: Option<u64>,
) -> anyhow::Result<Report> {
    let (gpt, info) = logits_student::lm::load(student_file)?;
    let cfg = TrainConfig {
        loss: logits_student::config::LossConfig {
            kd: 1.0,
            ce: 1.0,
            ..Default::default()
        },
        data: logits_student::config::DataConfig {
            holdout_from,
            ..Default::default()
        },
        ..Default::default()
    };
    let loader = logits_student::lm::LmLoader::new(ds, train::needs(&cfg))?;
    let (range, rows_label) = eval_rows(ds, &cfg, &info.dataset_id, "windows");
    let batches = logits_student::lm::load_split(&loader, range)?;
    if batches.is_empty() {
        bail!(
            "{}: no windows to evaluate in {rows_label}",
            ds.root().display()
        );
    }
    let e = logits_student::lm::evaluate(&gpt, &batches);
    let first = &batches[0];
    let len0 = first.tokens.lens[0];
    let one = logits_student::transformer::Tokens {
        ids: first
            .tokens
            .ids
            .slice(ndarray::s![0..1, 0..len0])
            .to_owned(),
        lens: vec![len0],
    };
    let t = Instant::now();
    let reps = 20;
    for _ in 0..reps {
        std::hint::black_box(gpt.predict(&one));
    }
    let mut student = Side {
        params: Some(logits_student::params::Params::parameter_count(&gpt) as u64),
        bytes: std::fs::metadata(student_file).ok().map(|m| m.len()),
        latency_us: Some(t.elapsed().as_secs_f64() * 1e6 / reps as f64),
        latency_onnx_us: None,
    };
    let mut diff = None;
    if let Some(o) = onnx {
        let mut om = OnnxModel::open(o)?;
        let mut worst = 0.0f64;
        for b in batches.iter().take(4) {
            let want = gpt.predict(&b.tokens);
            let t = b.tokens.ids.ncols();
            for (r, &len) in b.tokens.lens.iter().enumerate() {
                let ids =
                    ndarray::Array2::from_shape_fn((1, len), |(_, p)| b.tokens.ids[[r, p]] as i64);
                let (_, got) = om.run_ids(&ids)?;
                let v = want.ncols();
                for p in 0..len {
                    let w = want.row(r * t + p);
                    let d = logits::onnx_run::max_scaled_diff(
                        w.iter().enumerate().map(|(j, &x)| (got[p * v + j], x)),
                    );
                    worst = if d.is_nan() { d } else { worst.max(d) };
                }
            }
        }
        diff = Some(worst);
        let ids = ndarray::Array2::from_shape_fn((1, len0), |(_, p)| one.ids[[0, p]] as i64);
        let t = Instant::now();
        for _ in 0..reps {
            om.run_ids(&ids)?;
        }
        student.latency_onnx_us = Some(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
        student.bytes = std::fs::metadata(o).ok().map(|m| m.len());
    }
    let m = ds.manifest();
    let mut tside = Side {
        bytes: Some(m.teacher.bytes),
        ..Default::default()
    };
    if let Some(tp) = teacher {
        let proto = logits_onnx::load(tp)?;
        tside.params = Some(logits_onnx::model::parameter_count(&proto));
    }
    Ok(Report {
        dataset: ds.root().display().to_string(),
        rows_evaluated: format!("{} {rows_label}", e.rows),
        evaluation: serde_json::to_value(&e)?,
        teacher: tside,
        student,
        onnx_max_abs_diff: diff,
        onnx_tolerance: LM_ONNX_TOLERANCE,
        steps: None,
        train_seconds: None,
        losses: None,
    })
}

fn generate_cmd(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let (gpt, _) = logits_student::lm::load(&a.student)?;
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
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn lm_table(reports: &[(String, Report)]) -> anyhow::Result<ExitCode> {
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

/// Which rows evaluation reads, and how the report names them: the held-out split when there
/// is one; else every row, said to be training rows only when the student was trained on this
/// very dataset.
fn eval_rows(
    ds: &Dataset,
    cfg: &TrainConfig,
    trained_on: &str,
    unit: &str,
) -> (Option<std::ops::Range<u64>>, String) {
    match Split::of(ds, cfg).holdout {
        Some(r) => {
            let label = format!("held-out {unit} (row id ≥ {})", r.start);
            (Some(r), label)
        }
        None if trained_on != ds.manifest().dataset_id => (
            None,
            format!("all {unit} of a dataset the student was not trained on"),
        ),
        None => (
            None,
            format!("all {unit} (no held-out split declared: these are training rows)"),
        ),
    }
}
