"""Change Extraction module pretraining, Chg2Cap style (paper Sec. IV-A; reference §3).

The frozen SigLIP tower encodes both dates; the CEM fuses them; a one-layer, 8-head transformer
decoder (d_model = vision width, feed-forward 4x, sinusoidal positions, post-norm) learns to
caption the change with cross-entropy over a word vocabulary built from the training captions.
Afterwards the CEM goes into the checkpoint's mm_projector (layers.change.*); the decoder is
thrown away.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..inputs.preprocess import ImagePreprocessor
from ..model.change import ChangeExtraction
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..model.vision import VisionTower
from ..types import InputKind, Sample
from . import loop
from .config import CemConfig, save_config
from .data import SampleError, SkippingDataset, read_chips, read_spec, sample_label
from .instruct import CHECKPOINT_DIR

SPECIALS = ("<NULL>", "<UNK>", "<START>", "<END>")   # Chg2Cap's ids 0..3
NULL, UNK, START, END = range(4)


def caption_words(text: str) -> list[str]:
    """Chg2Cap tokenisation: lowercase, ',' and ';' kept as words, '.' and '?' dropped."""
    text = re.sub(r"([,;])", r" \1 ", text.lower()).replace(".", " ").replace("?", " ")
    return text.split()


class WordVocab:
    """Word <-> id with Chg2Cap's specials; words seen fewer than `min_count` times become <UNK>."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int) -> "WordVocab":
        counts = Counter(w for c in captions for w in caption_words(c))
        return cls([*SPECIALS, *sorted(w for w, n in counts.items() if n >= min_count)])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str, length: int) -> list[int]:
        """<START> words <END>, cut to `length` (keeping <END>) and padded with <NULL>."""
        ids = [self.index.get(w, UNK) for w in caption_words(caption)][:length - 2]
        ids = [START, *ids, END]
        return ids + [NULL] * (length - len(ids))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({w: i for i, w in enumerate(self.words)}, indent=1) + "\n")


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The fixed transformer position code, (length, dim)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)            # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe


class CaptionDecoder(nn.Module):
    """Chg2Cap's caption head: word embedding + positions -> 1 decoder layer over the CEM map."""

    def __init__(self, vocab_size: int, dim: int, heads: int, dropout: float, max_length: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"the decoder width {dim} is not divisible by {heads} heads")
        self.embed = nn.Embedding(vocab_size, dim)
        self.register_buffer("positions", sinusoidal_positions(max_length, dim), persistent=False)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerDecoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=1)
        self.to_words = nn.Linear(dim, vocab_size)
        # Chg2Cap's init of the embedding and output layer
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.to_words.weight, -0.1, 0.1)
        nn.init.zeros_(self.to_words.bias)

    def forward(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """memory (B, P, D), tokens (B, L) -> next-word logits (B, L, V)."""
        length = tokens.shape[1]
        x = self.dropout(self.embed(tokens) + self.positions[:length])            # (B, L, D)
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)  # True = hidden
        x = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True,
                         tgt_key_padding_mask=tokens == NULL)                     # (B, L, D)
        return self.to_words(x)                                                  # (B, L, V)


class ChangeCaptioner(nn.Module):
    """Frozen tower -> CEM -> decoder; forward(batch) is the mean caption cross-entropy."""

    def __init__(self, tower: VisionTower, change: ChangeExtraction, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.tower, self.change, self.decoder = tower, change, decoder
        self.tower.requires_grad_(False)

    def train(self, mode: bool = True) -> "ChangeCaptioner":
        super().train(mode)
        self.tower.eval()  # frozen encoder, as in Chg2Cap's fine_tune_encoder=False
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels, tokens = batch["pixel_values"], batch["tokens"]                  # (B, 2, 3, S, S), (B, L)
        with torch.no_grad():
            feats = self.tower(pixels.flatten(0, 1)).unflatten(0, pixels.shape[:2])  # (B, 2, P, D)
        fused = self.change(feats[:, 0], feats[:, 1])                           # (B, P, D)
        logits = self.decoder(fused, tokens[:, :-1])                             # (B, L-1, V)
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=NULL)


class CaptionPairDataset(SkippingDataset):
    """Each (pair, caption) once, as Chg2Cap lists every training pair with each of its captions."""

    def __init__(self, samples: Sequence[Sample], vocab: WordVocab, preprocessor: ImagePreprocessor,
                 length: int, skip_log: Path | None = None) -> None:
        super().__init__(skip_log)
        self.samples, self.vocab, self.preprocessor, self.length = list(samples), vocab, preprocessor, length
        self.items = [(i, j) for i, s in enumerate(self.samples) for j in range(len(s.references))]
        if not self.items:
            raise SampleError("no captioned image pairs to pretrain the Change Extraction module on")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict[str, Any]:
        i, j = self.items[index]
        sample = self.samples[i]
        try:
            chips = read_chips(sample, num_frames=2)
        except (ValueError, OSError) as exc:
            raise SampleError(f"{sample_label(sample)}: {exc}") from exc
        return {"pixel_values": self.preprocessor(chips),                               # (2, 3, S, S)
                "tokens": torch.tensor(self.vocab.encode(sample.references[j], self.length))}


def pair_samples(config: CemConfig) -> list[Sample]:
    """The captioned PAIR samples of the stage's dataset."""
    spec = config.data
    samples = read_spec(spec)
    pairs = [s for s in samples if s.kind is InputKind.PAIR and s.references]
    if not pairs:
        raise SampleError(f"{spec.task} data at {spec.root} ({spec.split}): no captioned image pairs")
    return pairs


def train_cem(config: CemConfig, resume: str | Path | None = None) -> Path:
    """Run the stage; returns the checkpoint folder (out/checkpoint) holding the pretrained CEM."""
    accelerator = loop.make_accelerator(config)
    out = loop.prepare_out(config, accelerator)
    loaded = load_checkpoint(config.model, device="cpu", dtype=torch.float32)
    model = loaded.model
    model.config.pop("_name_or_path", None)  # a new model, named after the folder it is saved in
    if not model.mm_projector.has_change:  # a plain VILA-1.5: the CEM starts from Chg2Cap's init
        model.mm_projector.layers["change"] = ChangeExtraction(model.vision_tower.hidden_size,
                                                               model.vision_tower.grid)
    samples = pair_samples(config)
    vocab = WordVocab.build((c for s in samples for c in s.references), config.min_word_count)
    preprocessor = ImagePreprocessor.for_config(loaded.image_processor, model.config)
    dataset = CaptionPairDataset(samples, vocab, preprocessor, config.max_caption_length,
                                 skip_log=out / "skipped.jsonl")
    captioner = ChangeCaptioner(model.vision_tower, model.mm_projector.layers["change"],
                                CaptionDecoder(len(vocab), model.vision_tower.hidden_size,
                                               config.decoder_heads, config.dropout,
                                               config.max_caption_length))
    loader = loop.make_loader(dataset, config, collate_fn=None)
    params = [p for p in captioner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    captioner, optimizer, loader = accelerator.prepare(captioner, optimizer, loader)
    # Chg2Cap halves the rate every `lr_step_epochs` epochs; accelerate steps it once per process
    step_size = config.lr_step_epochs * loop.steps_per_epoch(loader, accelerator.gradient_accumulation_steps)
    scheduler = accelerator.prepare(torch.optim.lr_scheduler.StepLR(
        optimizer, step_size * accelerator.num_processes, gamma=config.lr_gamma))
    if accelerator.is_main_process:
        save_config(config, out / "train_config.json")
        vocab.save(out / "vocab.json")
    loop.run(config, accelerator, captioner, optimizer, scheduler, loader, captioner,
             params=params, resume=resume, desc="cem")
    accelerator.wait_for_everyone()
    final = out / CHECKPOINT_DIR
    if accelerator.is_main_process:
        model.mm_projector.layers["change"] = accelerator.unwrap_model(captioner).change
        save_checkpoint(model.eval(), final, loaded.tokenizer, loaded.image_processor)
    accelerator.wait_for_everyone()
    return final
