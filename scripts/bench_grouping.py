#!/usr/bin/env python
"""Benchmark of batches of one kind (`group_by_modality`) against mixed batches, measured in one run.

    .venv/bin/python scripts/bench_grouping.py [--config configs/demo-instruct.json] [--model models/demo]
        [--set key=value ...] [--batches 16] [--json PATH]

The first `--batches` batches of epoch 0 of both orders are read (untimed), then trained on in turn,
mixed and grouped interleaved so that a change of machine load hits both. A step is what `unirs
train instruct` does with a batch it has read: the frozen tower's forward, then the LLM's forward,
backward and AdamW step. Reading and decoding the pictures is left out: grouping does not change it.

tokens  LLM positions per step, padding included: mixed / grouped
step    seconds per optimizer step: mixed / grouped (the projected epoch times are beside it)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unirs_engine.model.checkpoint import load_checkpoint  # noqa: E402
from unirs_engine.train import loop  # noqa: E402
from unirs_engine.train.config import load_config  # noqa: E402
from unirs_engine.train.data import collate, modality_groups, spliced_length  # noqa: E402
from unirs_engine.train.instruct import MultimodalLoss, tokens_per_slot, vlm_mixture  # noqa: E402


def positions(batch: dict, per_slot: int) -> int:
    """LLM positions of a batch: its longest spliced sequence times its size."""
    lengths = [spliced_length(ids, per_slot) for ids in batch["input_ids"]]
    return max(lengths) * len(lengths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo-instruct.json")
    parser.add_argument("--model", default="models/demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as for `unirs train` (e.g. the data roots)")
    parser.add_argument("--batches", type=int, default=16, help="timed batches of each order")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    config = load_config("instruct", args.config, [f"model={args.model}", "out=unused", *args.set])
    torch.manual_seed(config.seed)
    loaded = load_checkpoint(config.model, device="cpu", dtype=torch.float32)
    model = loaded.model
    model.freeze(vision=True, projector=True)
    dataset = vlm_mixture(config, model, loaded.tokenizer, loaded.image_processor, task_tag=True)
    orders = {"mixed": loop.make_loader(dataset, config, collate),
              "grouped": loop.make_loader(dataset, config, collate, groups=modality_groups(dataset))}
    batches = {name: list(islice(loader, args.batches)) for name, loader in orders.items()}

    step = MultimodalLoss(model, train_vision=False).train()  # the frozen parts stay in eval mode
    optimizer = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=config.lr)
    seconds = {name: [] for name in batches}
    for pair in zip(*batches.values()):
        for name, batch in zip(batches, pair):
            started = time.perf_counter()
            step(batch).backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds[name].append(time.perf_counter() - started)

    per_slot = tokens_per_slot(model)
    steps = len(orders["mixed"])
    figures = {name: {"seconds_per_step": statistics.mean(seconds[name]),
                      "positions_per_step": statistics.mean(positions(b, per_slot) for b in batches[name]),
                      "epoch_minutes": statistics.mean(seconds[name]) * steps / 60}
               for name in batches}
    ratios = {key: figures["mixed"][key] / figures["grouped"][key]
              for key in ("positions_per_step", "seconds_per_step")}
    print(f"{len(dataset)} items, {steps} steps per epoch of batch {config.batch_size}; "
          f"{args.batches} timed steps of each order")
    for name, fig in figures.items():
        print(f"{name:8s} {fig['positions_per_step']:8.0f} positions/step  {fig['seconds_per_step']:.3f} s/step"
              f"  epoch ~{fig['epoch_minutes']:.1f} min")
    print(f"tokens  mixed/grouped {ratios['positions_per_step']:.2f}x")
    print(f"step    mixed/grouped {ratios['seconds_per_step']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "model": config.model, "items": len(dataset),
                                         "steps_per_epoch": steps, "timed_steps": args.batches,
                                         "orders": figures, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
