//! The transformer student as a Hugging Face `GPT2LMHeadModel` directory, so
//! `transformers.AutoModelForCausalLM.from_pretrained(dir)` loads it as is: `config.json`
//! (`model_type = gpt2`, `activation_function = gelu_new` — the tanh Gelu the student uses —
//! ε = 1e-5, no dropout), `model.safetensors` under GPT-2's tensor names, `generation_config.json`
//! and, when given, the dataset's `tokenizer.json` with a `tokenizer_config.json` for
//! `AutoTokenizer`.
//!
//! The student is GPT-2 weight for weight: GPT-2's `Conv1D` holds its matrices `(in, out)` as
//! the student's `Linear` does, `c_attn` packs query, key and value along its outputs in that
//! order, and heads split the width the same way. Only an untied head is transposed
//! (`lm_head.weight` is `(vocab, dim)`); a tied one is left to `tie_word_embeddings`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use serde_json::json;

use crate::error::{Result, StudentError, io};
use crate::mlp::{LayerNorm, Linear, slice, slice1};
use crate::student::{to_safetensors, write_atomic};
use crate::transformer::Gpt;

/// Special tokens the student's tokenizer may have (the fixtures' BPE tokenizers do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    /// Beginning of sequence: (text, id).
    pub bos: Option<(String, u32)>,
    /// End of sequence: (text, id).
    pub eos: Option<(String, u32)>,
}

/// A named tensor: name, shape, values.
type Named = (String, Vec<usize>, Vec<f32>);

/// Every tensor under GPT-2's names, and whether the head is tied.
fn tensors(gpt: &Gpt) -> (Vec<Named>, bool) {
    let mut out = Vec::new();
    let mut put = |name: String, a: &Array2<f32>| {
        out.push((name, a.shape().to_vec(), slice(a).to_vec()));
    };
    put("transformer.wte.weight".into(), &gpt.wte);
    put("transformer.wpe.weight".into(), &gpt.wpe);
    let mut vecs = Vec::new();
    let ln = |v: &mut Vec<Named>, name: &str, l: &LayerNorm| {
        v.push((
            format!("{name}.weight"),
            vec![l.gamma.len()],
            slice1(&l.gamma).to_vec(),
        ));
        v.push((
            format!("{name}.bias"),
            vec![l.beta.len()],
            slice1(&l.beta).to_vec(),
        ));
    };
    let conv = |v: &mut Vec<Named>, name: &str, l: &Linear| {
        // Conv1D's (in, out), as the student's Linear.
        v.push((
            format!("{name}.weight"),
            l.w.shape().to_vec(),
            slice(&l.w).to_vec(),
        ));
        v.push((
            format!("{name}.bias"),
            vec![l.b.len()],
            slice1(&l.b).to_vec(),
        ));
    };
    for (i, b) in gpt.blocks.iter().enumerate() {
        let p = format!("transformer.h.{i}");
        ln(&mut vecs, &format!("{p}.ln_1"), &b.ln_1);
        conv(&mut vecs, &format!("{p}.attn.c_attn"), &b.attn);
        conv(&mut vecs, &format!("{p}.attn.c_proj"), &b.proj);
        ln(&mut vecs, &format!("{p}.ln_2"), &b.ln_2);
        conv(&mut vecs, &format!("{p}.mlp.c_fc"), &b.fc);
        conv(&mut vecs, &format!("{p}.mlp.c_proj"), &b.fc_out);
    }
    ln(&mut vecs, "transformer.ln_f", &gpt.ln_f);
    out.extend(vecs);
    let tied = match &gpt.head {
        Some(h) => {
            let t = h.t().as_standard_layout().to_owned();
            out.push((
                "lm_head.weight".into(),
                t.shape().to_vec(),
                slice(&t).to_vec(),
            ));
            false
        }
        None => true,
    };
    (out, tied)
}

/// GPT-2's `config.json` for the student's shape.
pub fn config(gpt: &Gpt, special: &SpecialTokens) -> serde_json::Value {
    let sp = &gpt.spec;
    let mut c = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": sp.vocab,
        "n_positions": sp.context,
        "n_ctx": sp.context,
        "n_embd": sp.dim,
        "n_layer": sp.layers,
        "n_head": sp.heads,
        "n_inner": gpt.blocks.first().map_or(4 * sp.dim, |b| b.fc.b.len()),
        "activation_function": "gelu_new",
        // LN_EPS is 1e-5 in f32; written as the decimal GPT-2's configs carry.
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": gpt.head.is_none(),
        "use_cache": true,
        "torch_dtype": "float32",
    });
    if let Some((_, id)) = &special.bos {
        c["bos_token_id"] = json!(id);
    }
    if let Some((_, id)) = &special.eos {
        c["eos_token_id"] = json!(id);
    }
    c
}

/// Writes the `GPT2LMHeadModel` directory `dir` for `gpt` (with `tokenizer` copied in when
/// given); returns the files written. `describe` is the student's description, kept in the
/// weights' metadata as in `student.safetensors`.
pub fn export(
    gpt: &Gpt,
    describe: &impl serde::Serialize,
    dir: &Path,
    tokenizer: Option<(&Path, &SpecialTokens)>,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let special = tokenizer.map(|(_, s)| s.clone()).unwrap_or_default();
    let (tensors, _) = tensors(gpt);
    let views: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    let mut meta = crate::student::metadata(describe)?;
    meta.insert("format".into(), "pt".into());
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = dir.join(name);
        write_atomic(&p, bytes)?;
        written.push(p);
        Ok(())
    };
    let pretty = |v: &serde_json::Value| -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(v).map_err(|e| StudentError::Config(e.to_string()))
    };
    put("model.safetensors", &to_safetensors(&views, meta)?)?;
    put("config.json", &pretty(&config(gpt, &special))?)?;
    // No max_length: transformers would warn beside every max_new_tokens; the context is in
    // config.json (n_positions).
    let mut generation = json!({});
    if let Some((_, id)) = &special.bos {
        generation["bos_token_id"] = json!(id);
    }
    if let Some((_, id)) = &special.eos {
        generation["eos_token_id"] = json!(id);
    }
    put("generation_config.json", &pretty(&generation)?)?;
    if let Some((path, s)) = tokenizer {
        let bytes = std::fs::read(path).map_err(io(path))?;
        put("tokenizer.json", &bytes)?;
        let mut tc: HashMap<&str, serde_json::Value> = HashMap::new();
        tc.insert("tokenizer_class", json!("PreTrainedTokenizerFast"));
        tc.insert("model_max_length", json!(gpt.spec.context));
        if let Some((t, _)) = &s.bos {
            tc.insert("bos_token", json!(t));
        }
        if let Some((t, _)) = &s.eos {
            tc.insert("eos_token", json!(t));
        }
        let tc: std::collections::BTreeMap<_, _> = tc.into_iter().collect();
        put("tokenizer_config.json", &pretty(&json!(tc))?)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::GptSpec;

    fn gpt(tied: bool) -> Gpt {
        Gpt::new(
            GptSpec {
                vocab: 11,
                context: 8,
                dim: 12,
                layers: 2,
                heads: 3,
                tied,
                encoder: None,
            },
            4,
        )
    }

    #[test]
    fn names_and_shapes_are_gpt2s() {
        for tied in [true, false] {
            let g = gpt(tied);
            let (t, is_tied) = tensors(&g);
            assert_eq!(is_tied, tied);
            let shape = |n: &str| t.iter().find(|x| x.0 == n).map(|x| x.1.clone());
            assert_eq!(shape("transformer.wte.weight"), Some(vec![11, 12]));
            assert_eq!(shape("transformer.wpe.weight"), Some(vec![8, 12]));
            assert_eq!(
                shape("transformer.h.1.attn.c_attn.weight"),
                Some(vec![12, 36])
            );
            assert_eq!(
                shape("transformer.h.1.attn.c_proj.weight"),
                Some(vec![12, 12])
            );
            assert_eq!(shape("transformer.h.0.mlp.c_fc.weight"), Some(vec![12, 48]));
            assert_eq!(
                shape("transformer.h.0.mlp.c_proj.weight"),
                Some(vec![48, 12])
            );
            assert_eq!(shape("transformer.ln_f.bias"), Some(vec![12]));
            assert_eq!(shape("lm_head.weight").is_some(), !tied);
            // 2 embeddings, 12 per block, 2 for ln_f, and the untied head.
            assert_eq!(t.len(), 2 + 12 * 2 + 2 + usize::from(!tied));
            let c = config(&g, &SpecialTokens::default());
            assert_eq!(c["tie_word_embeddings"], tied);
            assert_eq!(c["n_inner"], 48);
        }
    }

    #[test]
    fn writes_a_loadable_directory() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("tokenizer.json");
        std::fs::write(&tok, b"{}").unwrap();
        let special = SpecialTokens {
            bos: Some(("<bos>".into(), 1)),
            eos: Some(("<eos>".into(), 2)),
        };
        let out = dir.path().join("hf");
        let files = export(
            &gpt(true),
            &json!({"kind": "gpt"}),
            &out,
            Some((&tok, &special)),
        )
        .unwrap();
        assert_eq!(files.len(), 5);
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(c["eos_token_id"], 2);
        let (t, meta) = crate::student::read_safetensors(&out.join("model.safetensors")).unwrap();
        assert_eq!(meta["format"], "pt");
        assert_eq!(t["transformer.h.0.attn.c_attn.bias"].0, vec![36]);
    }
}
