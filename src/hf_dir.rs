//! A language-model student's Hugging Face directory with the dataset's tokenizer: reads the
//! `tokenizer.json` (checked against the dataset's recorded sha256 when one is known) for its
//! special tokens, then has `logits_student::hf` write the `GPT2LMHeadModel` files.

use std::path::Path;

use anyhow::{Context, bail};
use logits_student::hf::SpecialTokens;
use logits_student::transformer::Gpt;

/// The beginning- and end-of-sequence tokens a tokenizer defines, by the usual names.
fn special_tokens(path: &Path) -> anyhow::Result<SpecialTokens> {
    let tok = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{}: not a tokenizer.json: {e}", path.display()))?;
    let find = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| tok.token_to_id(n).map(|id| (n.to_string(), id)))
    };
    Ok(SpecialTokens {
        bos: find(&["<bos>", "<s>", "<|endoftext|>"]),
        eos: find(&["<eos>", "</s>", "<|endoftext|>"]),
    })
}

/// Refuses a tokenizer file other than the one the dataset recorded (by sha256), so a run
/// can say so before it trains.
pub fn check_tokenizer(path: &Path, expected_sha256: Option<&str>) -> anyhow::Result<()> {
    if let Some(want) = expected_sha256 {
        let (_, got) = logits_format::writer::file_sha256(path)?;
        if got != want {
            bail!(
                "{}: sha256 {got} is not the dataset's tokenizer ({want}): pass the tokenizer.json the dataset was built with",
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes `dir` (`config.json`, `model.safetensors`, `generation_config.json`, and with a
/// tokenizer `tokenizer.json` and `tokenizer_config.json`); `expected_sha256` is the dataset's
/// record of its tokenizer, and a different file is refused.
pub fn write(
    gpt: &Gpt,
    describe: &impl serde::Serialize,
    dir: &Path,
    tokenizer: Option<&Path>,
    expected_sha256: Option<&str>,
) -> anyhow::Result<()> {
    let tok = match tokenizer {
        Some(p) => {
            check_tokenizer(p, expected_sha256)?;
            Some((p, special_tokens(p)?))
        }
        None => None,
    };
    logits_student::hf::export(gpt, describe, dir, tok.as_ref().map(|(p, s)| (*p, s)))
        .with_context(|| format!("writing the Hugging Face directory {}", dir.display()))?;
    Ok(())
}
