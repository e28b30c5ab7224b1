//! Writes the datasets the Python interoperability check (`scripts/check_interop.py`) reads
//! with pyarrow and DuckDB, and beside them `expected.json`: the rows as they were handed to
//! the writer (exact raw logits, before any storage encoding), so the check compares what the
//! files hold against what was meant, not against this library's own reader.
//!
//! Usage: cargo run -p logits-format --example write_interop -- OUT_DIR

use std::path::PathBuf;

use logits_format::manifest::*;
use logits_format::synth::{self, SynthSpec};
use logits_format::writer::{WriteOptions, hex};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write_interop OUT_DIR")?,
    );
    std::fs::create_dir_all(&out)?;
    let feats = |e: FeatureEncoding, g: Granularity| vec![("hidden".to_string(), 5, e, g)];
    let sets = [
        (
            "example_f32",
            SynthSpec {
                axis_size: 100,
                topk: Some(TopK::Fixed { k: 8 }),
                temperatures: vec![2.0, 4.0],
                sampled: Some(SampledSpec {
                    draws: 12,
                    temperature: 1.0,
                    seed: 3,
                }),
                features: feats(FeatureEncoding::F32, Granularity::Example),
                rows: 45,
                ..Default::default()
            },
        ),
        (
            "position_f16",
            SynthSpec {
                granularity: Granularity::Position,
                axis_size: 3000,
                topk: Some(TopK::Fixed { k: 32 }),
                values: ValueEncoding::F16,
                temperatures: vec![2.0],
                features: feats(FeatureEncoding::F16, Granularity::Position),
                positions: (1, 12),
                rows: 30,
                ..Default::default()
            },
        ),
        (
            "position_bf16",
            SynthSpec {
                granularity: Granularity::Position,
                axis_size: 3000,
                topk: Some(TopK::Adaptive {
                    min_k: 2,
                    max_k: 32,
                    mass: 0.9,
                }),
                values: ValueEncoding::Bf16,
                temperatures: vec![],
                features: vec![],
                positions: (1, 12),
                rows: 30,
                ..Default::default()
            },
        ),
        (
            "position_int8",
            SynthSpec {
                granularity: Granularity::Position,
                axis_size: 3000,
                topk: Some(TopK::Fixed { k: 16 }),
                values: ValueEncoding::Int8,
                temperatures: vec![4.0],
                features: feats(FeatureEncoding::Int8, Granularity::Position),
                positions: (1, 12),
                rows: 30,
                ..Default::default()
            },
        ),
    ];
    let mut expected = serde_json::Map::new();
    for (name, spec) in &sets {
        let dir = out.join(name);
        let m = synth::write_dataset(
            spec,
            &dir,
            16,
            WriteOptions {
                zstd_level: 3,
                row_group_rows: 8,
                ..Default::default()
            },
        )?;
        let b = synth::batch(spec, &m, 0..spec.rows);
        let t = b.targets.as_ref().ok_or("no targets")?;
        let k = t.topk.as_ref().ok_or("no top-k")?;
        let nt = spec.temperatures.len();
        let mut rows = Vec::new();
        for (r, &id) in b.row_ids.iter().enumerate() {
            let positions: Vec<Value> = (t.row_positions[r]..t.row_positions[r + 1])
                .map(|p| {
                    let e = k.offsets[p]..k.offsets[p + 1];
                    let mut v = json!({
                        "ids": &k.ids[e.clone()],
                        "logits": &k.logits[e],
                        "logz": t.logz[p],
                        "logz_temps": &t.logz_temps[p * nt..(p + 1) * nt],
                    });
                    if let Some(s) = &t.sampled {
                        let e = s.offsets[p]..s.offsets[p + 1];
                        v["sample_ids"] = json!(&s.ids[e.clone()]);
                        v["sample_counts"] = json!(&s.counts[e]);
                    }
                    v
                })
                .collect();
            let input = &b.inputs[&m.inputs[0].name];
            let features: serde_json::Map<String, Value> = b
                .features
                .iter()
                .map(|(n, f)| {
                    let w = 5;
                    let vals = &f.values[f.row_positions[r] * w..f.row_positions[r + 1] * w];
                    (n.clone(), json!(vals))
                })
                .collect();
            let input_values = match &input.values {
                logits_format::rows::TensorValues::F32(v) => {
                    json!(&v[input.offsets[r]..input.offsets[r + 1]])
                }
                logits_format::rows::TensorValues::U32(v) => {
                    json!(&v[input.offsets[r]..input.offsets[r + 1]])
                }
                _ => Value::Null,
            };
            rows.push(json!({
                "row_id": id,
                "user_id": b.user_ids.as_ref().map(|u| u[r].clone()),
                "input_hash": b.input_hashes.as_ref().map(|h| hex(&h[r])),
                "label": b.labels.as_ref().map(|l| l[r]),
                "input": input_values,
                "positions": positions,
                "features": features,
            }));
        }
        expected.insert(name.to_string(), json!({ "rows": rows }));
    }
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string(&Value::Object(expected))?,
    )?;
    println!("wrote {} datasets under {}", sets.len(), out.display());
    Ok(())
}
