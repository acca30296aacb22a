"""The reference models' character-level tokenizer, in Hugging Face format.

One token per printable ASCII character plus newline, and special tokens for
sequence bounds and the process-reward model's judgements. Built with the
``tokenizers`` library so every engine loads it from ``tokenizer.json``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
GOOD, BAD = "<good>", "<bad>"
SPECIALS = [PAD, BOS, EOS, UNK, GOOD, BAD]
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token; [\s\S] also matches the newline.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[GOOD, BAD],
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def save_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    tok = build_tokenizer()
    tok.save_pretrained(str(path))
    return tok
