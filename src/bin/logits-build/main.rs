//! `logits-build`: run an ONNX teacher over a corpus and write a logits dataset. A thin front
//! door over `logits_teacher`.
//!
//! Exit codes: 0 success (or this worker's shards done); 1 error (the message names the model,
//! corpus file, tensor or row); 2 usage error.

use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use logits_format::manifest::{FeatureEncoding, Pooling, SampledSpec};
use logits_format::writer::{CreateMode, WriteOptions};
use logits_teacher::build::TextOptions;
use logits_teacher::corpus::ColumnMap;
use logits_teacher::{BuildOptions, FeatureRequest, TeacherModel};

mod args;
use args::{BuildArgs, Cli, Command, env_index, parse_pooling};

fn main() -> ExitCode {
    logits::prepare_process();
    let cli = Cli::parse();
    let stop = logits::stop_on_signals();
    match run(cli, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("logits-build: error: {}", logits::error_text(&e));
            if let Some(logits_teacher::TeacherError::Interrupted(_)) = e.downcast_ref() {
                eprintln!("logits-build: stopped by {}", logits::stop_signal_name());
                return ExitCode::from(logits::stop_exit_code());
            }
            if e.downcast_ref::<logits::UsageError>().is_some() {
                return ExitCode::from(2);
            }
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli, stop: &'static std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    match cli.command {
        Command::InspectModel {
            model,
            json,
            no_probe,
        } => {
            let m = TeacherModel::open(&model, &[])?;
            let seen = if no_probe || m.bytes > logits_teacher::probe::PROBE_MAX_BYTES {
                Default::default()
            } else {
                // A model that synthetic zeros cannot run still gets its report.
                logits_teacher::probe::probe_shapes(&m).unwrap_or_else(|e| {
                    eprintln!("logits-build: shapes not probed: {e}");
                    Default::default()
                })
            };
            if json {
                let report = logits_teacher::teacher::model_report(&m, &seen);
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", logits_teacher::describe_model(&m, &seen));
            }
            Ok(())
        }
        Command::Merge { out, shards, json } => {
            let m = logits_teacher::merge(&out, shards)?;
            let ds = logits_format::Dataset::open(&out)?;
            let rep = logits_format::validate(&ds);
            if !rep.is_ok() {
                bail!(
                    "merged manifest written but validation found problems:\n  {}",
                    rep.problems.join("\n  ")
                );
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "dataset": out, "dataset_id": m.dataset_id,
                        "shards": m.totals.shards, "rows": m.totals.rows,
                    })
                );
            } else {
                println!(
                    "merged {} shards, {} rows into {}",
                    m.totals.shards,
                    m.totals.rows,
                    out.display()
                );
            }
            Ok(())
        }
        Command::Build(a) => build(*a, stop),
    }
}

fn build(a: BuildArgs, stop: &'static std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    let mut columns = ColumnMap {
        label: a.label_column.clone(),
        id: a.id_column.clone(),
        ..Default::default()
    };
    for m in &a.input_shapes {
        let shape = m
            .split_once('=')
            .and_then(|(i, s)| Some((i.to_string(), logits_format::corpus::parse_shape(s)?)))
            .ok_or_else(|| {
                logits::usage(format!(
                    "--input-shape {m:?}: expected INPUT=D1,D2,... with sizes of at least 1"
                ))
            })?;
        columns.shapes.push(shape);
    }
    for m in &a.inputs {
        let (i, c) = m
            .split_once('=')
            .ok_or_else(|| logits::usage(format!("--input {m:?}: expected INPUT=COLUMN")))?;
        columns.inputs.push((i.to_string(), c.to_string()));
    }
    let mut features = Vec::new();
    for f in &a.features {
        let (name, rest) = f.split_once('=').ok_or_else(|| {
            logits::usage(format!(
                "--feature {f:?}: expected NAME=TENSOR[:ENCODING][:POOLING]"
            ))
        })?;
        // Tensor names may contain ':' themselves: peel known suffixes from the right.
        let (mut tensor, mut encoding, mut pooling) = (rest, FeatureEncoding::F32, Pooling::None);
        while let Some((t, tail)) = tensor.rsplit_once(':') {
            if let Ok(e) = tail.parse::<FeatureEncoding>() {
                encoding = e;
            } else if let Some(p) = parse_pooling(tail) {
                pooling = p;
            } else {
                break;
            }
            tensor = t;
        }
        features.push(FeatureRequest {
            name: name.into(),
            tensor: tensor.into(),
            encoding,
            pooling,
        });
    }
    let adaptive = match &a.adaptive_k {
        None => None,
        Some(s) => {
            let (m, mass) = s
                .split_once(':')
                .ok_or_else(|| logits::usage(format!("--adaptive-k {s:?}: expected MIN:MASS")))?;
            Some((
                m.parse().map_err(|_| {
                    logits::usage(format!("--adaptive-k {s:?}: MIN is not a count"))
                })?,
                mass.parse().map_err(|_| {
                    logits::usage(format!("--adaptive-k {s:?}: MASS is not a number"))
                })?,
            ))
        }
    };
    if a.resume && a.overwrite {
        return Err(logits::usage(
            "--resume and --overwrite contradict each other",
        ));
    }
    let worker = match a.num_workers {
        None => None,
        Some(n) => {
            let i = a.worker_index.or_else(env_index).ok_or_else(|| {
                logits::usage(
                    "--num-workers needs --worker-index (or SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX)",
                )
            })?;
            if n == 0 || i >= n {
                return Err(logits::usage(format!(
                    "worker index {i} is not below --num-workers {n}"
                )));
            }
            Some((i, n))
        }
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let sessions = a.sessions;
    // Inputs given as URLs are fetched once; the manifest names the corpus as given.
    let corpus_names: Vec<String> = a.corpus.iter().map(|p| p.display().to_string()).collect();
    let corpus = a
        .corpus
        .iter()
        .map(|p| logits::local_input(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tokenizer = a
        .tokenizer
        .as_deref()
        .map(logits::local_input)
        .transpose()?;
    let opts = BuildOptions {
        model: logits::local_input(&a.model)?,
        corpus,
        corpus_names,
        text: tokenizer.map(|t| TextOptions {
            tokenizer: t,
            field: a.text_field.clone(),
            window: a.window,
            stride: a.stride.unwrap_or(a.window),
        }),
        columns,
        out: a.out.clone(),
        target: a.target,
        k: a.k,
        adaptive,
        temperatures: a.temperatures,
        values: match (a.values, a.coded) {
            (None, coded) => {
                if coded {
                    logits_format::manifest::ValueEncoding::Int8
                } else {
                    logits_format::manifest::ValueEncoding::F32
                }
            }
            (Some(v), true) if v != logits_format::manifest::ValueEncoding::Int8 => {
                return Err(logits::usage(format!(
                    "--coded codes int8 values; drop --values {} or use --values int8",
                    v.name()
                )));
            }
            (Some(v), _) => v,
        },
        coded: a.coded,
        sample: a.sample.map(|draws| SampledSpec {
            draws,
            temperature: a.sample_temperature,
            seed: a.seed,
        }),
        features,
        store_inputs: !a.no_inputs,
        output_is_probability: a.output_is_probability,
        rows_per_shard: a.rows_per_shard,
        batch_size: a.batch_size,
        sessions,
        devices: a.device.0.clone(),
        postprocess: match a.postprocess {
            args::Postprocess::Host => logits_teacher::Postprocess::Host,
            args::Postprocess::Graph => logits_teacher::Postprocess::Graph,
            args::Postprocess::Auto => logits_teacher::Postprocess::Auto,
        },
        intra_threads: a.threads.unwrap_or((cores / sessions.max(1)).max(1)),
        // A job-array worker always joins the shared build (with or without --resume): it
        // shares the output with the other workers.
        mode: if a.overwrite {
            CreateMode::Overwrite
        } else if worker.is_some() {
            CreateMode::Join
        } else if a.resume {
            CreateMode::Resume
        } else {
            CreateMode::New
        },
        worker,
        skip_non_finite: a.skip_non_finite,
        write: WriteOptions {
            zstd_level: a.zstd_level,
            faults: logits::faults_from_env()?,
            ..Default::default()
        },
        license: a.license,
        notes: a.notes,
        split: a.split,
        holdout_from: a.holdout_from,
        stop: Some(stop),
    };
    opts.check().map_err(logits::usage)?;
    let bar = if a.quiet || a.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {bar:40} {pos}/{len} rows  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let report = logits_teacher::build(&opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    for (i, why) in &report.healed {
        eprintln!(
            "logits-build: {}: {why}; it was written again",
            logits_format::writer::shard_path(*i)
        );
    }
    let summary = serde_json::json!({
        "out": a.out.display().to_string(),
        "corpus_rows": report.corpus_rows,
        "plan_shards": report.plan_shards,
        "shards_written": report.shards_written,
        "shards_kept": report.shards_kept,
        "rows_written": report.rows_written,
        "rows_skipped": report.rows_skipped,
        "seconds": report.seconds,
        "rows_per_second": report.rows_written as f64 / report.seconds.max(1e-9),
        "committed": report.manifest.is_some(),
        "healed_shards": report.healed.iter().map(|(i, _)| i).collect::<Vec<_>>(),
        "peak_rss_bytes": report.peak_rss_bytes,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{} rows in {} shards written ({} kept from before, {} rows skipped) in {:.2}s ({:.0} rows/s); {}",
            report.rows_written,
            report.shards_written,
            report.shards_kept,
            report.rows_skipped,
            report.seconds,
            report.rows_written as f64 / report.seconds.max(1e-9),
            if report.manifest.is_some() {
                format!("dataset committed at {}", a.out.display())
            } else {
                "other workers' shards pending; run `logits-build merge` when all are done".into()
            }
        );
    }
    Ok(())
}
