//! The dataset card: `README.md` beside `manifest.json`, written at commit from the manifest
//! alone. Its YAML front matter is what the Hugging Face Hub and `datasets.load_dataset(dir)`
//! read (license, tags, `configs` with the data files of each split); its body says in words
//! what a receiving team needs: the teacher, how targets are encoded, the splits.
//!
//! Splits: a shard lies in the held-out split when its first row id is at or past the
//! manifest's `holdout_from`, in the training split when its last row id is before it.
//! `logits-build` restarts shards at the boundary; a shard holding both (a dataset written
//! otherwise) makes file-level splits impossible: the card then declares one split and says
//! which rows are held out.

use crate::manifest::Manifest;

/// File name of the dataset card.
pub const CARD_FILE: &str = "README.md";

/// The shards of each split: (train, held out), or None when a shard straddles the boundary
/// (or no held-out split is declared).
fn split_files(m: &Manifest) -> Option<(Vec<&str>, Vec<&str>)> {
    let h = m.corpus.holdout_from?;
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for s in &m.shards {
        if s.first_row_id >= h {
            held.push(s.path.as_str());
        } else if s.last_row_id < h {
            train.push(s.path.as_str());
        } else {
            return None;
        }
    }
    (!train.is_empty() && !held.is_empty()).then_some((train, held))
}

/// YAML of a string (JSON strings are valid YAML scalars).
fn y(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The card's text.
pub fn dataset_card(m: &Manifest) -> String {
    let mut fm = String::from("---\n");
    // Free-text terms are not an SPDX id: the Hub's convention for those is `other`.
    if m.license.terms.is_some() {
        fm.push_str("license: other\n");
    }
    fm.push_str("tags:\n- knowledge-distillation\n- teacher-logits\n- logits-dataset\n");
    fm.push_str("configs:\n- config_name: default\n  data_files:\n");
    let splits = split_files(m);
    match &splits {
        Some((train, held)) => {
            for (name, files) in [("train", train), ("test", held)] {
                fm.push_str(&format!("  - split: {name}\n    path:\n"));
                for f in files.iter() {
                    fm.push_str(&format!("    - {}\n", y(f)));
                }
            }
        }
        None => fm.push_str("  - split: train\n    path: \"shards/*.parquet\"\n"),
    }
    fm.push_str("---\n\n");
    let mut b = String::new();
    b.push_str(&format!(
        "# Distillation dataset {}\n\nWritten by {} {} on {} (`{}` {}). {} rows in {} shards.\n\n",
        m.dataset_id,
        m.tool.name,
        m.tool.version,
        m.created,
        m.format,
        m.format_version,
        m.totals.rows,
        m.shards.len()
    ));
    b.push_str(&format!(
        "## Teacher\n\n`{}` ({} bytes, sha256 `{}`).\n\n",
        m.teacher.file, m.teacher.bytes, m.teacher.sha256
    ));
    if let Some(t) = &m.targets {
        let k = match &t.topk {
            Some(k) => serde_json::to_string(k).unwrap_or_default(),
            None => "none (sampled targets only)".into(),
        };
        let temps: Vec<String> = std::iter::once(1.0)
            .chain(t.temperatures.iter().copied())
            .map(|x| x.to_string())
            .collect();
        b.push_str(&format!(
            "## Targets\n\nOutput `{}` over {} classes, {} ({}); top-k: {k}; values encoded as `{}`, ids as `{}`; logZ stored at T = {}. How to decode them: `schemas/FORMAT.md` of the logits project (\"Recovering teacher log-probs\"); each shard also carries these settings in its Parquet key-value metadata (`logits.targets`).\n\n",
            t.output,
            t.axis_size,
            match t.granularity {
                crate::manifest::Granularity::Example => "one distribution per row",
                crate::manifest::Granularity::Position => "one distribution per position",
            },
            if t.output_is_probability {
                "the teacher outputs probabilities; stored as log-probabilities"
            } else {
                "the teacher outputs logits"
            },
            serde_json::to_value(t.values)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            serde_json::to_value(t.ids)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            temps.join(", ")
        ));
        if t.coding.is_some() {
            b.push_str("The top-k ids and values are context-coded (`ctx-v1`, format 1.2) in the binary column `topk_coded`: read them with the `logits` package (Rust or Python), or decode them with the Python reference decoder of `schemas/FORMAT.md` (\"Context-coded top-k\"); plain Parquet readers see only the coded bytes.\n\n");
        }
    }
    if !m.inputs.is_empty() || !m.features.is_empty() {
        b.push_str("## Columns\n\n");
        for i in &m.inputs {
            b.push_str(&format!(
                "- `{}`: the teacher's input `{}` ({:?}, stored as {:?}), per-row shape {:?}\n",
                i.column, i.name, i.dtype, i.stored, i.shape
            ));
        }
        for f in &m.features {
            b.push_str(&format!("- teacher feature `{}`\n", f.name));
        }
        if m.labels.is_some() {
            b.push_str("- `label`: the corpus's label\n");
        }
        b.push('\n');
    }
    if let Some(t) = &m.tokenizer {
        b.push_str(&format!(
            "## Tokenizer\n\n`{}` (vocabulary {}, sha256 `{}`){}.\n\n",
            t.file,
            t.vocab_size,
            t.sha256,
            ", copied beside this card as `tokenizer.json` when the build had it"
        ));
    }
    b.push_str("## Splits\n\n");
    match (m.corpus.holdout_from, &splits) {
        (None, _) => b.push_str("No held-out split declared: every row is for training.\n\n"),
        (Some(h), Some(_)) => b.push_str(&format!(
            "Rows with `row_id` < {h} are the `train` split, the rest (held out) the `test` split; each shard lies in one.\n\n"
        )),
        (Some(h), None) => b.push_str(&format!(
            "Rows with `row_id` ≥ {h} are held out, but a shard holds rows of both, so the files form one `train` split: filter on `row_id`.\n\n"
        )),
    }
    b.push_str("## License and terms\n\n");
    b.push_str(&format!("{}\n", m.license));
    if let Some(n) = &m.notes {
        b.push_str(&format!("\n## Notes\n\n{n}\n"));
    }
    fm + &b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(ranges: &[(u64, u64)], holdout: Option<u64>) -> Manifest {
        let mut m = crate::synth::draft(&crate::synth::SynthSpec::default());
        m.corpus.holdout_from = holdout;
        m.shards = ranges
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| crate::manifest::ShardEntry {
                path: crate::writer::shard_path(i as u32),
                rows: b - a + 1,
                bytes: 0,
                sha256: String::new(),
                first_row_id: a,
                last_row_id: b,
                positions: b - a + 1,
                entries: 0,
            })
            .collect();
        m
    }

    #[test]
    fn splits_follow_the_shards_when_each_lies_on_one_side() {
        let card = dataset_card(&manifest(&[(0, 9), (10, 19), (20, 24)], Some(20)));
        let fm = card.split("---").nth(1).unwrap();
        assert!(fm.contains("- split: train\n    path:\n    - \"shards/part-00000.parquet\"\n    - \"shards/part-00001.parquet\"\n"), "{fm}");
        assert!(
            fm.contains("- split: test\n    path:\n    - \"shards/part-00002.parquet\"\n"),
            "{fm}"
        );
    }

    #[test]
    fn a_straddling_shard_gives_one_split_and_says_which_rows_are_held_out() {
        let card = dataset_card(&manifest(&[(0, 24)], Some(20)));
        assert!(card.contains("path: \"shards/*.parquet\""), "{card}");
        assert!(card.contains("`row_id` ≥ 20 are held out"), "{card}");
        assert!(!card.contains("split: test"), "{card}");
    }
}
