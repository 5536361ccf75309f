"""Tower features computed once, for the LLM stages whose vision tower is frozen.

With the tower frozen (instruct; align after the vision stage) every epoch reads, decodes and
encodes the same pictures again, and a mixture lists each picture many times (questions per image,
captions per pair, repeats). `cache_vision_features` encodes every distinct input once before the
first step and keeps its (N, P, D) features in memory; the items then carry a key instead of
pixels. It costs N x P x D numbers per distinct input (at the demo size 8 x 64 x 192 floats,
393 KB, per video), so it is for datasets whose features fit in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from .data import InstructionDataset, SampleError


@dataclass(frozen=True)
class CachedInputs:
    """What the datasets need to build items from the cache (small, goes to the loader workers)."""

    frames: dict[str, int]        # input key -> N, its number of pictures
    unreadable: dict[str, str]    # input key -> why it could not be read


class _DistinctInputs(Dataset):
    """(key, (N, 3, S, S) pixels or the SampleError message) of one item per distinct input."""

    def __init__(self, firsts: list[tuple[str, InstructionDataset, int]]) -> None:
        self.firsts = firsts

    def __len__(self) -> int:
        return len(self.firsts)

    def __getitem__(self, n: int) -> tuple[str, torch.Tensor | str]:
        key, dataset, index = self.firsts[n]
        try:
            return key, dataset.read_pixels(index)
        except SampleError as exc:
            return key, str(exc)


def cache_tower_features(model, mixture: ConcatDataset, accelerator, *, num_workers: int,
                         frames_per_batch: int = 64) -> dict[str, torch.Tensor]:
    """Encode every distinct input of `mixture` (InstructionDatasets) once with the frozen tower,
    switch the datasets to items that name their input, and return {key: (N, P, D) features} on
    the CPU. Inputs that cannot be read are left to the datasets to report when an item needs them."""
    firsts: dict[str, tuple[str, InstructionDataset, int]] = {}
    for dataset in {id(d): d for d in mixture.datasets}.values():   # a repeated dataset once
        for index in range(len(dataset)):
            key = dataset.input_key(index)
            firsts.setdefault(key, (key, dataset, index))
    loader = DataLoader(_DistinctInputs(list(firsts.values())), batch_size=None, num_workers=num_workers)
    started = time.perf_counter()
    features: dict[str, torch.Tensor] = {}
    unreadable: dict[str, str] = {}
    pending: list[tuple[str, torch.Tensor]] = []

    def encode() -> None:
        pixels = torch.cat([p for _, p in pending]).to(accelerator.device)        # (sum N, 3, S, S)
        with torch.no_grad(), accelerator.autocast():
            encoded = model.encode_images(pixels).cpu()                           # (sum N, P, D)
        for (key, _), part in zip(pending, encoded.split([p.shape[0] for _, p in pending])):
            features[key] = part.clone()    # its own storage, not a view of the batch
        pending.clear()

    for key, pixels in tqdm(loader, desc="tower features", unit="input",
                            disable=not accelerator.is_local_main_process):
        if isinstance(pixels, str):
            unreadable[key] = pixels
            continue
        pending.append((key, pixels))
        if sum(p.shape[0] for _, p in pending) >= frames_per_batch:
            encode()
    if pending:
        encode()

    cached = CachedInputs({key: f.shape[0] for key, f in features.items()}, unreadable)
    for dataset in mixture.datasets:
        dataset.cached = cached
    megabytes = sum(f.numel() * f.element_size() for f in features.values()) / 2 ** 20
    accelerator.print(f"tower features of {len(features)} distinct inputs cached in "
                      f"{time.perf_counter() - started:.0f} s ({megabytes:.0f} MB); "
                      f"{len(unreadable)} unreadable")
    return features
