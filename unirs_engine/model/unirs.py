"""UniRS: SigLIP tower -> (Change Extraction for pairs) -> mlp_downsample projector -> LLaMA.

Each `<image>` placeholder (IMAGE_TOKEN_INDEX) in the token ids is replaced by one visual slot of
T embeddings. The input kind decides the slots, never the number of frames:
IMAGE -> 1 slot, PAIR -> 1 fused slot (CEM) or 2 slots in date order (no CEM), SEQUENCE of N frames -> N slots.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM

from ..prompts import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..types import CEM_PAIR, PAIR_MODES, TWO_IMAGE_PAIR, InputKind
from .projector import MultimodalProjector
from .vision import VisionTower


class UniRSModel(nn.Module):
    def __init__(self, vision_tower: VisionTower, mm_projector: MultimodalProjector,
                 llm: LlamaForCausalLM, config: dict[str, Any]) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.mm_projector = mm_projector
        self.llm = llm
        self.config = config  # the checkpoint's top-level config.json (VILA keys + UniRS' chg)
        self._frozen: list[nn.Module] = []

    # ---- vision side ------------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, P, D) tower features; cacheable per image."""
        return self.vision_tower(pixel_values)

    @property
    def pair_mode(self) -> str:
        """How this model takes a pair unless told otherwise: through its CEM when it has one."""
        return CEM_PAIR if self.mm_projector.has_change else TWO_IMAGE_PAIR

    def visual_slots(self, features: torch.Tensor, kind: InputKind,
                     pair_mode: str | None = None) -> torch.Tensor:
        """(N, P, D) features of one input -> (n_slots, T, H) LLM embeddings; a pair goes in by
        `pair_mode` (default: the model's)."""
        kind = InputKind(kind)
        n = features.shape[0]
        if kind is InputKind.IMAGE:
            if n != 1:
                raise ValueError(f"an image input needs 1 feature map, got {n}")
            slots = self.mm_projector.project(features)                          # (1, T, H)
        elif kind is InputKind.PAIR:
            if n != 2:
                raise ValueError(f"a pair input needs 2 feature maps (before, after), got {n}")
            pair_mode = pair_mode or self.pair_mode
            if pair_mode not in PAIR_MODES:
                raise ValueError(f"unknown pair mode {pair_mode!r}; expected one of {PAIR_MODES}")
            if pair_mode == CEM_PAIR:
                fused = self.mm_projector.fuse_pair(features[:1], features[1:])  # (1, P, D)
                slots = self.mm_projector.project(fused)                         # (1, T, H)
            else:
                slots = self.mm_projector.project(features)                      # (2, T, H)
        elif kind is InputKind.SEQUENCE:
            if n < 1:
                raise ValueError("a sequence input needs at least one frame")
            slots = self.mm_projector.project(features)                          # (N, T, H)
        else:
            raise ValueError(f"unknown input kind {kind!r}")
        return slots.to(self.llm.dtype)

    # ---- splice -----------------------------------------------------------------------------

    @property
    def pad_token_id(self) -> int:
        pad = self.llm.config.pad_token_id
        return 0 if pad is None else int(pad)  # LLaMA/VILA: pad = unk = 0

    def embed(self, batch_ids: list[list[int]], batch_slots: list[torch.Tensor],
              labels: list[list[int]] | None = None,
              padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Token ids with IMAGE_TOKEN_INDEX placeholders + slots -> padded inputs_embeds (B, L, H),
        attention_mask (B, L) and, when labels are given, labels (B, L) with visual positions ignored."""
        if not batch_ids:
            raise ValueError("embed needs at least one token sequence")
        if len(batch_ids) != len(batch_slots) or (labels is not None and len(labels) != len(batch_ids)):
            raise ValueError("embed needs one slot tensor (and one label list) per token sequence")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        table = self.llm.get_input_embeddings()
        device = table.weight.device
        seqs, seq_labels = [], []
        for i, (ids, slots) in enumerate(zip(batch_ids, batch_slots)):
            ids_t = torch.as_tensor(ids, dtype=torch.long, device=device)       # (L_text,)
            lab_t = torch.as_tensor(labels[i] if labels is not None else ids, dtype=torch.long,
                                    device=device)
            if lab_t.shape != ids_t.shape:
                raise ValueError(f"sample {i}: {len(ids)} ids but {len(lab_t)} labels")
            marks = (ids_t == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            if len(marks) != slots.shape[0]:
                raise ValueError(f"sample {i}: {len(marks)} <image> placeholder(s) in the ids but "
                                 f"{slots.shape[0]} visual slot(s)")
            text = table(ids_t.clamp(min=0))                                     # (L_text, H)
            parts, part_labels, start = [], [], 0
            for slot, pos in zip(slots, marks):
                parts += [text[start:pos], slot.to(device, text.dtype)]         # slot: (T, H)
                part_labels += [lab_t[start:pos],
                                lab_t.new_full((slot.shape[0],), IGNORE_INDEX)]
                start = pos + 1
            parts.append(text[start:])
            part_labels.append(lab_t[start:])
            seqs.append(torch.cat(parts))                                        # (L_i, H)
            seq_labels.append(torch.cat(part_labels))                            # (L_i,)

        length = max(s.shape[0] for s in seqs)
        pad_vec = table(torch.tensor(self.pad_token_id, device=device))          # (H,)
        embeds, masks, out_labels = [], [], []
        for seq, lab in zip(seqs, seq_labels):
            n_pad = length - seq.shape[0]
            fill = pad_vec.expand(n_pad, -1)
            ones, zeros = lab.new_ones(seq.shape[0]), lab.new_zeros(n_pad)
            ignore = lab.new_full((n_pad,), IGNORE_INDEX)
            if padding_side == "left":
                embeds.append(torch.cat([fill, seq]))
                masks.append(torch.cat([zeros, ones]))
                out_labels.append(torch.cat([ignore, lab]))
            else:
                embeds.append(torch.cat([seq, fill]))
                masks.append(torch.cat([ones, zeros]))
                out_labels.append(torch.cat([lab, ignore]))
        out = {"inputs_embeds": torch.stack(embeds),                             # (B, L, H)
               "attention_mask": torch.stack(masks)}                             # (B, L)
        if labels is not None:
            out["labels"] = torch.stack(out_labels)                              # (B, L)
        return out

    # ---- LLM --------------------------------------------------------------------------------

    def forward(self, batch_ids: list[list[int]], batch_slots: list[torch.Tensor],
                labels: list[list[int]]) -> torch.Tensor:
        """Mean next-token loss over answer tokens (right padding, as in training)."""
        inputs = self.embed(batch_ids, batch_slots, labels, padding_side="right")
        return self.llm(**inputs).loss

    @torch.no_grad()
    def generate(self, batch_ids: list[list[int]], batch_slots: list[torch.Tensor],
                 max_new_tokens: int = 64, **gen_kwargs: Any) -> list[list[int]]:
        """New token ids per sample (up to, not including, EOS); greedy unless told otherwise."""
        inputs = self.embed(batch_ids, batch_slots, padding_side="left")
        eos = self.llm.config.eos_token_id
        gen_kwargs = {"do_sample": False, "pad_token_id": self.pad_token_id, "eos_token_id": eos,
                      **gen_kwargs}
        if not gen_kwargs["do_sample"]:
            # Sampling knobs saved in generation_config would only trigger warnings under greedy.
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.llm.generate(**inputs, max_new_tokens=max_new_tokens, **gen_kwargs)  # (B, new)
        stops = set(eos if isinstance(eos, list) else [eos])
        results = []
        for row in out.tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            results.append(row[:cut])
        return results

    # ---- training helpers -------------------------------------------------------------------

    def freeze(self, vision: bool = True, projector: bool = True) -> None:
        """Stop gradients to the tower and/or projector (incl. the CEM) and keep them in eval mode,
        so BatchNorm statistics of the CEM never move."""
        parts = ((self.vision_tower, vision), (self.mm_projector, projector))
        for module, frozen in parts:
            module.requires_grad_(not frozen)
        self._frozen = [module for module, frozen in parts if frozen]
        self.train(self.training)

    def train(self, mode: bool = True) -> "UniRSModel":
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self
