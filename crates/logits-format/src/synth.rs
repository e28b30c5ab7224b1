//! Synthetic datasets for tests, benchmarks and interoperability checks: deterministic rows
//! (each row depends only on the seed and its id) with realistically peaked teacher logits.
//!
//! The logits of a position are a Zipf-like prior over the axis (id order stands for
//! frequency, as in BPE vocabularies where early merges are frequent), Gaussian noise, and a
//! few context tokens boosted well above the rest, so that the top few entries hold most of the
//! mass, as a trained language model's next-token distributions do.

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::manifest::*;
use crate::rows::*;
use crate::targets::{position_targets, sample_counts};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Per example or per position targets.
    pub granularity: Granularity,
    /// Output-axis size.
    pub axis_size: u64,
    /// Top-k rule (None: sampled only).
    pub topk: Option<TopK>,
    /// Value encoding.
    pub values: ValueEncoding,
    /// Extra temperatures.
    pub temperatures: Vec<f64>,
    /// Sampled targets.
    pub sampled: Option<SampledSpec>,
    /// Features: (name, width, encoding, granularity).
    pub features: Vec<(String, u64, FeatureEncoding, Granularity)>,
    /// Store an input (float vector for per-example data, token ids per position).
    pub inputs: bool,
    /// Store labels.
    pub labels: bool,
    /// Store user ids and input hashes.
    pub keys: bool,
    /// Positions per row: uniform in this range (per-position data).
    pub positions: (usize, usize),
    /// Rows in the corpus.
    pub rows: u64,
    /// Seed.
    pub seed: u64,
    /// Write f16/bf16 values as format 1.0 did: without the exact tail (older datasets).
    pub legacy_half: bool,
    /// Context-coded top-k (`ctx-v1`, int8 values; no context input).
    pub coded: bool,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            granularity: Granularity::Example,
            axis_size: 10,
            topk: Some(TopK::Fixed { k: 4 }),
            values: ValueEncoding::F32,
            temperatures: vec![2.0],
            sampled: None,
            features: vec![],
            inputs: true,
            labels: true,
            keys: true,
            positions: (1, 1),
            rows: 100,
            seed: 1,
            legacy_half: false,
            coded: false,
        }
    }
}

/// Width of the synthetic per-example input.
pub const INPUT_WIDTH: u64 = 8;

/// A draft manifest for `spec`.
pub fn draft(spec: &SynthSpec) -> Manifest {
    let per_pos = spec.granularity == Granularity::Position;
    let inputs = if spec.inputs {
        vec![InputSpec {
            name: if per_pos {
                "input_ids".into()
            } else {
                "input".into()
            },
            column: if per_pos {
                "in_input_ids".into()
            } else {
                "in_input".into()
            },
            dtype: if per_pos {
                DType::Int64
            } else {
                DType::Float32
            },
            stored: if per_pos {
                DType::Uint32
            } else {
                DType::Float32
            },
            shape: if per_pos {
                vec![Dim::Named("sequence".into())]
            } else {
                vec![Dim::Fixed(INPUT_WIDTH)]
            },
        }]
    } else {
        vec![]
    };
    Manifest {
        format: FORMAT_NAME.into(),
        format_version: Version::current().to_string(),
        dataset_id: String::new(),
        tool: Tool {
            runtime: None,
            name: "logits-format synth".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        created: crate::writer::now_rfc3339(),
        teacher: Teacher {
            file: "synthetic.onnx".into(),
            sha256: "0".repeat(64),
            bytes: 0,
            inputs: vec![],
            outputs: vec![TensorInfo {
                name: "logits".into(),
                dtype: DType::Float32,
                shape: vec![Dim::Named("batch".into()), Dim::Fixed(spec.axis_size)],
            }],
        },
        row_keys: RowKeys {
            user_id: spec.keys,
            input_hash: spec.keys.then(|| "sha256-v1".into()),
        },
        targets: Some(TargetSpec {
            output: "logits".into(),
            granularity: spec.granularity,
            axis_size: spec.axis_size,
            output_is_probability: false,
            ids: IdEncoding::for_axis(spec.axis_size),
            values: spec.values,
            topk: spec.topk.clone(),
            temperatures: spec.temperatures.clone(),
            sampled: spec.sampled.clone(),
            exact_tail: !spec.legacy_half
                && matches!(spec.values, ValueEncoding::F16 | ValueEncoding::Bf16),
            coding: spec.coded.then_some(Coding {
                scheme: CodingScheme::CtxV1,
                context: None,
            }),
        }),
        features: spec
            .features
            .iter()
            .map(|(n, w, e, g)| FeatureSpec {
                name: n.clone(),
                tensor: format!("/{n}/output_0"),
                column: format!("feat_{n}"),
                granularity: *g,
                shape: vec![*w],
                encoding: *e,
                pooling: Pooling::None,
            })
            .collect(),
        inputs,
        labels: spec.labels.then(|| LabelSpec {
            column: "label".into(),
            kind: LabelKind::Class,
            num_classes: spec.axis_size,
            names: vec![],
        }),
        corpus: Corpus {
            sources: vec![],
            fingerprint: format!("synthetic-{}", spec.seed),
            rows: spec.rows,
            split: Some("train".into()),
            holdout_from: None,
            options: serde_json::Value::Null,
        },
        tokenizer: None,
        license: License {
            terms: Some("synthetic data, no restrictions".into()),
            notes: None,
        },
        notes: None,
        shards: vec![],
        totals: Totals::default(),
        build: serde_json::json!({"generator": "synth"}),
    }
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// One position's full logits row: Zipf prior, noise, and a few boosted context tokens.
pub fn peaked_logits(rng: &mut ChaCha8Rng, axis: usize) -> Vec<f32> {
    let mut z: Vec<f32> = (0..axis)
        .map(|i| -1.1 * ((i + 2) as f32).ln() + 1.0 * gaussian(rng))
        .collect();
    let boosts = rng.random_range(1..=4);
    for _ in 0..boosts {
        // Context tokens are themselves drawn from a Zipf-like law over the axis.
        let u: f64 = rng.random();
        let id = ((axis as f64).powf(u) - 1.0).floor() as usize;
        z[id.min(axis - 1)] += rng.random_range(6.0..14.0);
    }
    z
}

/// The rows with ids in `ids`, as the writer takes them.
pub fn batch(spec: &SynthSpec, m: &Manifest, ids: std::ops::Range<u64>) -> RowBatch {
    let t = m.targets.as_ref();
    let axis = spec.axis_size as usize;
    let (k, adaptive) = match &spec.topk {
        Some(TopK::Fixed { k }) => (*k as usize, None),
        Some(TopK::Adaptive { min_k, max_k, mass }) => {
            (*max_k as usize, Some((*min_k as usize, *mass)))
        }
        None => (0, None),
    };
    let mut b = RowBatch::default();
    let mut targets = Targets::empty(spec.topk.is_some(), spec.sampled.is_some());
    let mut input = InputValues {
        offsets: vec![0],
        values: if spec.granularity == Granularity::Position {
            TensorValues::U32(vec![])
        } else {
            TensorValues::F32(vec![])
        },
    };
    let mut feats: BTreeMap<String, FeatureValues> = BTreeMap::new();
    let (mut users, mut hashes, mut labels) = (vec![], vec![], vec![]);
    for id in ids {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let npos = match spec.granularity {
            Granularity::Example => 1,
            Granularity::Position => rng.random_range(spec.positions.0..=spec.positions.1),
        };
        let mut label = 0;
        for p in 0..npos {
            let z = peaked_logits(&mut rng, axis);
            let pt = position_targets(&z, k, adaptive, &spec.temperatures).unwrap_or_default();
            if p == 0 {
                label = pt.ids.first().copied().unwrap_or(0) as i64;
            }
            let sample = spec.sampled.as_ref().map(|rule| {
                let mut srng = ChaCha8Rng::seed_from_u64(rule.seed ^ id ^ ((p as u64) << 40));
                sample_counts(&z, rule.temperature, rule.draws, &mut srng)
            });
            targets.push_position(&pt, sample.as_ref());
            match &mut input.values {
                TensorValues::U32(v) => v.push(rng.random_range(0..spec.axis_size as u32)),
                TensorValues::F32(v) => v.extend((0..INPUT_WIDTH).map(|_| gaussian(&mut rng))),
                _ => {}
            }
        }
        targets.end_row();
        input.offsets.push(input.values.len());
        for (name, w, _, g) in &spec.features {
            let f = feats.entry(name.clone()).or_insert_with(|| FeatureValues {
                row_positions: vec![0],
                values: vec![],
            });
            let n = if *g == Granularity::Position { npos } else { 1 };
            for _ in 0..n * *w as usize {
                f.values.push(gaussian(&mut rng) * 3.0);
            }
            let last = *f.row_positions.last().unwrap_or(&0);
            f.row_positions.push(last + n);
        }
        b.row_ids.push(id);
        users.push(if id % 7 == 3 {
            None
        } else {
            Some(format!("doc-{id}"))
        });
        labels.push(if id % 11 == 5 { None } else { Some(label) });
        let start = input.offsets[input.offsets.len() - 2];
        let end = input.values.len();
        hashes.push(input_hash_v1(&[(
            m.inputs.first().map_or("input", |i| i.name.as_str()),
            input.values.le_bytes(start..end),
            end - start,
        )]));
    }
    if t.is_some() {
        b.targets = Some(targets);
    }
    if spec.inputs {
        b.inputs.insert(m.inputs[0].name.clone(), input);
    }
    if spec.keys {
        b.user_ids = Some(users);
        b.input_hashes = Some(hashes);
    }
    if spec.labels {
        b.labels = Some(labels);
    }
    b.features = feats;
    b
}

/// Writes a whole synthetic dataset to `root` in shards of `shard_rows` rows.
pub fn write_dataset(
    spec: &SynthSpec,
    root: &std::path::Path,
    shard_rows: u64,
    options: crate::writer::WriteOptions,
) -> crate::Result<Manifest> {
    let m = draft(spec);
    let mut w = crate::writer::DatasetWriter::create(
        root,
        m,
        options,
        crate::writer::CreateMode::Overwrite,
    )?;
    let n = spec.rows.div_ceil(shard_rows.max(1)) as u32;
    for i in 0..n {
        let lo = i as u64 * shard_rows;
        let hi = (lo + shard_rows).min(spec.rows);
        let mut s = w.shard(i)?;
        let mut at = lo;
        while at < hi {
            let end = (at + 256).min(hi);
            s.write(&batch(spec, w.draft(), at..end))?;
            at = end;
        }
        let rec = s.finish()?;
        w.record(rec)?;
    }
    w.commit(n)
}

/// Writes a dense classification dataset for benchmarks: `rows` rows of `width` random f32
/// inputs, top-5 of `classes` with logZ at T = 4, labels, in shards of `per_shard` rows. `root`
/// may be a store URL.
pub fn write_dense_dataset(
    root: &std::path::Path,
    rows: u64,
    width: usize,
    classes: u64,
    per_shard: u64,
) -> crate::Result<Manifest> {
    let spec = SynthSpec {
        granularity: Granularity::Example,
        axis_size: classes,
        topk: Some(TopK::Fixed { k: 5 }),
        temperatures: vec![4.0],
        features: vec![],
        inputs: true,
        labels: true,
        keys: false,
        rows,
        ..Default::default()
    };
    let mut m = draft(&spec);
    m.inputs[0].shape = vec![Dim::Fixed(width as u64)];
    let mut w = crate::writer::DatasetWriter::create(
        root,
        m,
        crate::writer::WriteOptions::default(),
        crate::writer::CreateMode::Overwrite,
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let shards = rows.div_ceil(per_shard.max(1)) as u32;
    for i in 0..shards {
        let mut s = w.shard(i)?;
        let (lo, hi) = (i as u64 * per_shard, ((i as u64 + 1) * per_shard).min(rows));
        let mut at = lo;
        while at < hi {
            let end = (at + 256).min(hi);
            let mut b = batch(&spec, w.draft(), at..end);
            let n = (end - at) as usize;
            for iv in b.inputs.values_mut() {
                iv.offsets = (0..=n).map(|r| r * width).collect();
                iv.values =
                    TensorValues::F32((0..n * width).map(|_| rng.random::<f32>()).collect());
            }
            s.write(&b)?;
            at = end;
        }
        let rec = s.finish()?;
        w.record(rec)?;
    }
    w.commit(shards)
}
