"""LLaMA-style sentencepiece tokenizer: train a small one, load one from a checkpoint's llm/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
from transformers import LlamaTokenizer

TOKENIZER_FILE = "tokenizer.model"


def train_sentencepiece(lines: Iterable[str], out_dir: str | Path, vocab_size: int) -> Path:
    """Train a BPE sentencepiece model with LLaMA's conventions; returns `out_dir/tokenizer.model`.

    unk=0, bos=1, eos=2, no pad; byte fallback so any text encodes; digits split; no normalisation.
    `vocab_size` must exceed 259 (the 256 byte pieces and 3 specials) plus the corpus' characters.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = [line.replace("\n", " ") for line in lines if line.strip()]
    if not corpus:
        raise ValueError("train_sentencepiece needs at least one non-empty line")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_prefix=str(out_dir / "tokenizer"),
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,        # a tiny corpus may not fill the vocabulary
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.vocab").unlink(missing_ok=True)
    return out_dir / TOKENIZER_FILE


def load_tokenizer(llm_dir: str | Path) -> LlamaTokenizer:
    """The LLaMA tokenizer of `llm_dir` (tokenizer.model / tokenizer.json); pad = unk as in VILA,
    padding side from llm/config.json's `tokenizer_padding_side` (default right)."""
    llm_dir = Path(llm_dir)
    if not (llm_dir / TOKENIZER_FILE).is_file() and not (llm_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{llm_dir / TOKENIZER_FILE}: missing (expected the LLaMA "
                                f"sentencepiece tokenizer of the checkpoint)")
    config_path = llm_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    tokenizer = LlamaTokenizer.from_pretrained(llm_dir)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = config.get("tokenizer_padding_side", "right")
    tokenizer.model_max_length = config.get("tokenizer_model_max_length", tokenizer.model_max_length)
    return tokenizer
