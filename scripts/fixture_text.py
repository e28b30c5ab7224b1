"""Pieces the language-model fixture scripts share (make_lm_fixture.py, make_tiny_lm_fixture.py):
writing a corpus as JSON Lines and training the byte-level BPE tokenizer both fixtures use
(`<pad>`=0, `<bos>`=1, `<eos>`=2; `<bos> text <eos>` per document)."""

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers


def write_jsonl(path, docs):
    """One {"text": ...} object a line."""
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")


def train_bpe(docs, vocab):
    """A byte-level BPE tokenizer of `vocab` entries trained on `docs`, without padding (the
    callers enable it once they have encoded what must not be padded)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return tok
