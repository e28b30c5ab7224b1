//! The teacher model: its file identity (sha256 of the file as it is on disk), what the graph
//! declares, an in-memory copy rewritten to expose requested intermediate tensors, and ONNX
//! Runtime sessions over that copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use logits_onnx::model::{Dim, ElemType, ModelSummary, TensorSummary};
use logits_onnx::surgery::{self, OutputKind};
use sha2::{Digest, Sha256};

use crate::error::{Result, TeacherError};
use crate::runtime::{self, Device};

/// The message of a session error without the model path it would repeat.
fn error_detail(e: &TeacherError) -> String {
    match e {
        TeacherError::Session { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// A loaded teacher.
#[derive(Debug, Clone)]
pub struct TeacherModel {
    /// The model file.
    pub path: PathBuf,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
    /// File size.
    pub bytes: u64,
    /// What the original graph declares.
    pub summary: ModelSummary,
    /// How the graph's outputs (and the exposed tensors) relate to probabilities, by name.
    pub kinds: Vec<(String, OutputKind)>,
    /// What `inspect-model` recommends as target and feature.
    pub recommendation: logits_onnx::inspect::Recommendation,
    /// The graph's activations (no weights, constants or shape arithmetic), in graph order.
    pub activations: Vec<String>,
    /// Rows of the embedding table each integer input indexes (a token model's vocabulary),
    /// where the graph shows it: a Gather of an initializer by that input.
    pub embedding_rows: Vec<(String, u64)>,
    /// The serialised copy that sessions run (original plus exposed tensors).
    run_bytes: Vec<u8>,
}

impl TeacherModel {
    /// Loads `path` and exposes the intermediate tensors `expose` as extra outputs.
    pub fn open(path: &Path, expose: &[String]) -> Result<TeacherModel> {
        let bytes = std::fs::read(path).map_err(|e| TeacherError::Corpus {
            path: path.to_path_buf(),
            message: format!("cannot read the model: {e}"),
        })?;
        // The file's hash (a tenth of a second per 100 MB) is taken beside the decoding.
        let (sha256, parsed) = std::thread::scope(|s| {
            let hash = s.spawn(|| hex(&Sha256::digest(&bytes)));
            let parsed = (|| {
                let proto = logits_onnx::load_bytes(path, &bytes)?;
                let mut summary = logits_onnx::model::summary(&proto);
                // Exporters often declare no type for internal tensors: fill in what follows
                // from the declared ones, so reports and manifests say float32, not "?".
                let types = surgery::elem_types(&proto);
                for t in summary
                    .intermediates
                    .iter_mut()
                    .filter(|t| t.elem.is_none())
                {
                    t.elem = types.get(&t.name).map(|&e| ElemType::from_onnx(e));
                }
                let kinds: Vec<(String, OutputKind)> = summary
                    .outputs
                    .iter()
                    .map(|o| &o.name)
                    .chain(expose)
                    .map(|n| (n.clone(), surgery::output_kind(&proto, n)))
                    .collect();
                let embedding_rows = summary
                    .inputs
                    .iter()
                    .filter_map(|i| {
                        Some((
                            i.name.clone(),
                            logits_onnx::inspect::embedding_rows(&proto, &i.name)?,
                        ))
                    })
                    .collect();
                // The output a build would choose by default: the only one with a class axis.
                let chosen = summary
                    .outputs
                    .iter()
                    .filter(|o| o.elem.is_none_or(ElemType::is_float))
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>();
                let recommendation = logits_onnx::inspect::recommend(
                    &proto,
                    if chosen.len() == 1 {
                        Some(chosen[0])
                    } else {
                        None
                    },
                );
                let activations = logits_onnx::inspect::activations(&proto);
                let exposed = if expose.is_empty() {
                    None
                } else {
                    let exposed = surgery::expose(&proto, expose, &path.display().to_string())?;
                    Some(logits_onnx::model::encode(&exposed))
                };
                Ok::<_, TeacherError>((
                    summary,
                    kinds,
                    embedding_rows,
                    recommendation,
                    activations,
                    exposed,
                ))
            })();
            // Hashing cannot fail on any input; a panic there is a bug and stays one.
            let sha = hash.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            (sha, parsed)
        });
        let (summary, kinds, embedding_rows, recommendation, activations, exposed) = parsed?;
        Ok(TeacherModel {
            path: path.to_path_buf(),
            sha256,
            bytes: bytes.len() as u64,
            summary,
            kinds,
            embedding_rows,
            recommendation,
            activations,
            run_bytes: exposed.unwrap_or(bytes),
        })
    }

    /// Moves the build's post-processing of `target` into the graph the sessions run
    /// ([`logits_onnx::postprocess::append_postprocess`]: TopK of `k` and logZ at T = 1 and
    /// `temps`, in chunks of the `classes` on the target's last axis), so only those leave
    /// the runtime.
    pub fn postprocess_in_graph(
        &mut self,
        target: &str,
        k: usize,
        temps: &[f64],
        classes: usize,
    ) -> Result<()> {
        let model = self.path.display().to_string();
        let proto = logits_onnx::load_bytes(&self.path, &self.run_bytes)?;
        let rewritten = logits_onnx::postprocess::append_postprocess(
            &proto,
            target,
            k,
            temps,
            Some(classes).filter(|&c| c > 0),
            &model,
        )?;
        self.run_bytes = logits_onnx::model::encode(&rewritten);
        Ok(())
    }

    /// A new ONNX Runtime session over the (rewritten) model, with ONNX Runtime's defaults.
    pub fn session(&self, intra_threads: usize) -> Result<ort::session::Session> {
        self.session_with(intra_threads, true)
    }

    /// A session for the build pipeline: its intra-op threads sleep instead of spinning
    /// between operators, because the build's own post-processing threads need those cores
    /// (measured 6% faster end to end at 1 session × 2 threads on 2 cores; no change otherwise).
    pub fn build_session(&self, intra_threads: usize) -> Result<ort::session::Session> {
        self.session_with(intra_threads, false)
    }

    /// A build session on `device`, and the device it runs on (the CPU when [`Device::Auto`]
    /// found no usable GPU; the reason is returned beside it). A GPU device whose provider
    /// the loaded ONNX Runtime library lacks, or that has no such GPU, is an error that says
    /// what was looked for.
    pub fn device_session(
        &self,
        intra_threads: usize,
        device: Device,
    ) -> Result<(ort::session::Session, Device, Option<String>)> {
        let gpu = |d: Device| -> Result<ort::session::Session> {
            let cuda = |i: u32| {
                ort::ep::CUDA::default()
                    .with_device_id(i as i32)
                    .build()
                    .error_on_failure()
            };
            let eps = match d {
                Device::Cuda(i) => vec![cuda(i)],
                // What TensorRT cannot take (the double-precision logZ of the in-graph
                // post-processing: TensorRT has no float64) runs on the same GPU through CUDA,
                // not on the CPU, which would copy every logit out again.
                Device::TensorRt(i) => vec![
                    ort::ep::TensorRT::default()
                        .with_device_id(i as i32)
                        .build()
                        .error_on_failure(),
                    cuda(i),
                ],
                Device::Cpu | Device::Auto => return self.session_with(intra_threads, false),
            };
            self.session_on(intra_threads, false, eps).map_err(|e| {
                let lib = runtime::library_in_use()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(none found)".into());
                TeacherError::Session {
                    model: self.path.clone(),
                    message: format!(
                        "--device {d}: ONNX Runtime could not start its {} ({}); the library in use is {lib}. A GPU build is needed (the onnxruntime-gpu wheel's library: scripts/fetch-ort.sh --gpu, then ORT_DYLIB_PATH), with the NVIDIA driver, CUDA and cuDNN it was built for and a GPU numbered {}; --device cpu runs on the CPU",
                        d.provider(),
                        error_detail(&e),
                        match d {
                            Device::Cuda(i) | Device::TensorRt(i) => i,
                            _ => 0,
                        }
                    ),
                }
            })
        };
        match device {
            Device::Auto => match gpu(Device::Cuda(0)) {
                Ok(s) => Ok((s, Device::Cuda(0), None)),
                Err(e) => Ok((
                    self.session_with(intra_threads, false)?,
                    Device::Cpu,
                    Some(format!(
                        "--device auto: no usable CUDA device, so the CPU ran the teacher ({})",
                        error_detail(&e)
                    )),
                )),
            },
            d => Ok((gpu(d)?, d, None)),
        }
    }

    fn session_with(&self, intra_threads: usize, spin: bool) -> Result<ort::session::Session> {
        let cpu = ort::ep::CPU::default().with_arena_allocator(true).build();
        self.session_on(intra_threads, spin, vec![cpu])
    }

    fn session_on(
        &self,
        intra_threads: usize,
        spin: bool,
        eps: Vec<ort::ep::ExecutionProviderDispatch>,
    ) -> Result<ort::session::Session> {
        let env = runtime::environment()?;
        let err = |e: String| TeacherError::Session {
            model: self.path.clone(),
            message: e,
        };
        let builder = ort::session::Session::builder(env).map_err(|e| err(e.to_string()))?;
        // Batches of token windows vary in padded length, and ONNX Runtime's memory patterns
        // keep a plan per input shape seen, so peak memory grew with the corpus (1.31x for a
        // 10x corpus); without them it stays flat (1.05x) at the same speed. The arena stays on:
        // without it every run pays for fresh vocabulary-sized buffers (30% slower).
        let mut builder = builder
            .with_intra_threads(intra_threads.max(1))
            .map_err(|e| err(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| err(e.to_string()))?
            .with_memory_pattern(false)
            .map_err(|e| err(e.to_string()))?
            .with_intra_op_spinning(spin)
            .map_err(|e| err(e.to_string()))?
            .with_execution_providers(eps)
            .map_err(|e| err(e.to_string()))?;
        builder
            .commit_from_memory(&self.run_bytes)
            .map_err(|e| err(e.to_string()))
    }

    /// What the graph declares of each activation, in graph order.
    pub fn activation_summaries(&self) -> Vec<&TensorSummary> {
        let s = &self.summary;
        let by_name: std::collections::HashMap<&str, &TensorSummary> = s
            .intermediates
            .iter()
            .chain(&s.outputs)
            .map(|t| (t.name.as_str(), t))
            .collect();
        self.activations
            .iter()
            .filter_map(|a| by_name.get(a.as_str()).copied())
            .collect()
    }

    /// The graph input called `name`.
    pub fn input(&self, name: &str) -> Option<&TensorSummary> {
        self.summary.inputs.iter().find(|i| i.name == name)
    }

    /// How output `name` relates to probabilities.
    pub fn kind(&self, name: &str) -> OutputKind {
        self.kinds
            .iter()
            .find(|(n, _)| n == name)
            .map_or(OutputKind::Logits, |(_, k)| *k)
    }

    /// Chooses the target: `name` if given (a graph output, or any tensor of the graph, such
    /// as the logits feeding a final softmax: it must have been exposed when opening), else the
    /// only float output whose last axis has a fixed size (the class/vocabulary axis), or the
    /// only float output when none declares a fixed last axis.
    pub fn target_output(&self, name: Option<&str>) -> Result<&TensorSummary> {
        let outs = &self.summary.outputs;
        if let Some(n) = name {
            return outs
                .iter()
                .chain(&self.summary.intermediates)
                .find(|o| o.name == n)
                .ok_or_else(|| {
                    TeacherError::Options(format!(
                        "{}: no tensor named {n:?}; outputs are {} (any tensor of the graph can be the target: `logits-build inspect-model` lists them)",
                        self.path.display(),
                        names(outs)
                    ))
                });
        }
        let floats: Vec<&TensorSummary> = outs
            .iter()
            .filter(|o| o.elem.is_none_or(ElemType::is_float))
            .collect();
        let mut candidates: Vec<&TensorSummary> = floats
            .iter()
            .copied()
            .filter(|o| matches!(o.shape.as_ref().and_then(|s| s.last()), Some(Dim::Fixed(n)) if *n > 1))
            .collect();
        if candidates.is_empty() && floats.len() == 1 {
            // A converter that declares no class axis (tf2onnx's `unk__1`): the first batch
            // will tell.
            candidates = floats;
        }
        match candidates.as_slice() {
            [one] => Ok(one),
            [] => Err(TeacherError::Options(format!(
                "{}: no float output with a fixed last (class) axis; outputs are {}; choose one with --target",
                self.path.display(),
                names(outs)
            ))),
            many => Err(TeacherError::Options(format!(
                "{}: several outputs could be the targets ({}); choose one with --target",
                self.path.display(),
                many.iter()
                    .map(|o| format!("{:?} {}", o.name, o.describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Size of the last axis of an output (the class/vocabulary axis), when fixed.
    pub fn axis_size(t: &TensorSummary) -> Option<u64> {
        match t.shape.as_ref()?.last()? {
            Dim::Fixed(n) if *n > 0 => Some(*n as u64),
            _ => None,
        }
    }
}

fn names(ts: &[TensorSummary]) -> String {
    ts.iter()
        .map(|t| format!("{:?} {}", t.name, t.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The tensors of a model a user can name, as `inspect-model` shows them: inputs, outputs
/// (with how they relate to probabilities), the recommended target and feature, and the
/// activations (no weights, constants or shape arithmetic) with their declared shapes.
///
/// `seen` holds shapes seen on a probe run ([`crate::probe`]), reported beside the declared
/// ones for tensors that declare none.
pub fn model_report(m: &TeacherModel, seen: &HashMap<String, Vec<i64>>) -> serde_json::Value {
    let s = &m.summary;
    let tensor = |t: &TensorSummary| {
        let mut v = serde_json::json!({
            "name": t.name,
            "type": t.elem.map(|e| e.name()),
            "shape": t.shape.as_ref().map(|d| d.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
            "op": t.op,
        });
        if t.shape.is_none()
            && let Some(s) = seen.get(&t.name)
        {
            v["seen_shape"] = serde_json::json!(s);
        }
        v
    };
    let kind = |name: &str| match m.kind(name) {
        OutputKind::Logits => "logits",
        OutputKind::Softmax => "probabilities (softmax)",
        OutputKind::LogSoftmax => "log-probabilities (log-softmax)",
        OutputKind::Sigmoid => "independent per-class probabilities (sigmoid)",
    };
    serde_json::json!({
        "model": m.path.display().to_string(),
        "sha256": m.sha256,
        "bytes": m.bytes,
        "producer": s.producer,
        "opset": s.opset,
        "inputs": s.inputs.iter().map(tensor).collect::<Vec<_>>(),
        "outputs": s.outputs.iter().map(|o| {
            let mut v = tensor(o);
            v["kind"] = serde_json::json!(kind(&o.name));
            v
        }).collect::<Vec<_>>(),
        "recommended_target": m.recommendation.target.as_ref().map(|(t, why)| serde_json::json!({"tensor": t, "why": why})),
        "recommended_feature": m.recommendation.feature,
        "activations": m.activation_summaries().into_iter().map(tensor).collect::<Vec<_>>(),
    })
}

/// A printable report of a model: inputs, outputs, the recommended target and feature, and
/// the activations that can be captured or chosen as the target (an undeclared shape shown as
/// `seen` on the probe run, when there was one).
pub fn describe_model(m: &TeacherModel, seen: &HashMap<String, Vec<i64>>) -> String {
    let s = &m.summary;
    let mut out = format!(
        "model       {}\nsha256      {}\nbytes       {}\nproducer    {}\nopset       {}\n",
        m.path.display(),
        m.sha256,
        m.bytes,
        if s.producer.is_empty() {
            "?"
        } else {
            &s.producer
        },
        s.opset.map_or("?".into(), |o| o.to_string())
    );
    out += "inputs:\n";
    for i in &s.inputs {
        out += &format!("  {:<28} {}\n", i.name, i.describe());
    }
    out += "outputs:\n";
    for o in &s.outputs {
        let kind = match m.kind(&o.name) {
            OutputKind::Logits => "",
            OutputKind::Softmax => "  (softmax: probabilities)",
            OutputKind::LogSoftmax => "  (log-softmax: log-probabilities)",
            OutputKind::Sigmoid => "  (sigmoid: independent per-class probabilities)",
        };
        out += &format!("  {:<28} {}{kind}\n", o.name, o.describe());
    }
    match &m.recommendation.target {
        Some((t, why)) => out += &format!("recommended target: --target {t}   ({why})\n"),
        None => out += "recommended target: none found (choose one with --target)\n",
    }
    if let Some(f) = &m.recommendation.feature {
        out +=
            &format!("likely feature:     --feature NAME={f}   (what the classifier head reads)\n");
    }
    out += &format!(
        "activations ({}), capturable with --feature NAME=TENSOR or usable as --target{}:\n",
        m.activations.len(),
        if seen.is_empty() {
            " (undeclared shapes are read off the first batch of a build)"
        } else {
            " (\"seen\": an undeclared shape as one probe run gave it, batch 1 and other symbolic dims 8)"
        }
    );
    for t in m.activation_summaries() {
        let shape = match (&t.shape, seen.get(&t.name)) {
            (None, Some(s)) => {
                let d: Vec<String> = s.iter().map(|x| x.to_string()).collect();
                format!(
                    "{} [{}] seen",
                    t.elem.map_or("?".into(), |e| e.name()),
                    d.join(", ")
                )
            }
            _ => t.describe(),
        };
        out += &format!(
            "  {:<28} {:<28} from {}\n",
            t.name,
            shape,
            t.op.as_deref().unwrap_or("?")
        );
    }
    out
}
