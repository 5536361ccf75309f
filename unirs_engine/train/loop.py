"""The training loop every stage shares, on Hugging Face accelerate.

One CPU, one GPU or many (DDP / DeepSpeed / FSDP chosen by `accelerate launch --config_file`) run
the same code. Resumable: `state-<step>/` holds accelerate's state (weights, optimizer, scheduler,
RNGs) plus progress.json; the data order depends only on (seed, epoch), and a resumed run skips the
batches already seen, so it ends on the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from .config import StageConfig

STATE_PREFIX = "state-"
PROGRESS_FILE = "progress.json"
LOG_FILE = "log.jsonl"
LOSSES_FILE = "losses.jsonl"  # LossParts: a loss's parts; log.jsonl has their weighted sum


def make_accelerator(config: StageConfig, find_unused_parameters: bool = False) -> Accelerator:
    """bf16 autocast on a bf16-capable GPU, full precision otherwise, unless `accelerate launch`
    (its config file or --mixed_precision) already chose. `find_unused_parameters`: for models
    whose batches may leave a part without gradient (DDP would take it for an error)."""
    set_seed(config.seed)
    mixed = None
    if "ACCELERATE_MIXED_PRECISION" not in os.environ:
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
    return Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=mixed,
                       kwargs_handlers=[ddp])


class SeededSampler(torch.utils.data.Sampler[int]):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class GroupedSampler(SeededSampler):
    """A SeededSampler whose batches each hold one group (say, images or videos), so that short
    image prompts are not padded to a video's length (LLaVA's modality-length grouping).

    The members of each group are shuffled and cut into batches, the batches shuffled; the groups'
    leftovers (fewer than a batch each) make the last, mixed batches."""

    def __init__(self, groups: Sequence[Hashable], batch_size: int, seed: int) -> None:
        super().__init__(len(groups), seed)
        self.groups, self.batch_size = list(groups), batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        members: dict[Hashable, list[int]] = {}  # first-seen order, so the result is reproducible
        for index in torch.randperm(self.size, generator=generator).tolist():
            members.setdefault(self.groups[index], []).append(index)
        size = self.batch_size
        batches, leftovers = [], []
        for indexes in members.values():
            full = len(indexes) - len(indexes) % size
            batches += [indexes[start:start + size] for start in range(0, full, size)]
            leftovers += indexes[full:]
        order = torch.randperm(len(batches), generator=generator).tolist()
        # every batch before the leftovers is full, so the loader's batches are these lists
        return iter([index for b in order for index in batches[b]] + leftovers)


def make_loader(dataset: Dataset, config: StageConfig, collate_fn: Callable | None,
                groups: Sequence[Hashable] | None = None) -> DataLoader:
    """Shuffled by (seed, epoch) only; accelerate's loader.set_epoch reaches the sampler. `groups`
    (one per item): batches of one group each (GroupedSampler)."""
    sampler = (SeededSampler(len(dataset), config.seed) if groups is None
               else GroupedSampler(groups, config.batch_size, config.seed))
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                      collate_fn=collate_fn, num_workers=config.num_workers,
                      # worker seeds drawn from here, not from the global RNG that dropout uses
                      generator=torch.Generator().manual_seed(config.seed))


def steps_per_epoch(loader: DataLoader, grad_accum: int) -> int:
    """Optimizer steps in one pass (accelerate syncs at the end of the loader)."""
    return math.ceil(len(loader) / grad_accum)


def total_steps(config: StageConfig, loader: DataLoader, grad_accum: int) -> int:
    steps = config.epochs * steps_per_epoch(loader, grad_accum)
    return min(steps, config.max_steps) if config.max_steps else steps


def prepare_adamw_cosine(config: StageConfig, accelerator: Accelerator, module: torch.nn.Module,
                         loader: DataLoader) -> tuple[torch.nn.Module, Any, Any, DataLoader, list]:
    """AdamW over `module`'s trainable parameters and a cosine schedule with `config.warmup_ratio`
    warmup, prepared by accelerate; returns (module, optimizer, scheduler, loader, params)."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    steps = total_steps(config, loader, accelerator.gradient_accumulation_steps)
    # accelerate steps a prepared scheduler once per process per optimizer step
    n = accelerator.num_processes
    scheduler = accelerator.prepare(get_cosine_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * steps) * n, steps * n))
    return module, optimizer, scheduler, loader, params


def run(config: StageConfig, accelerator: Accelerator, model: torch.nn.Module, optimizer, scheduler,
        loader: DataLoader, compute_loss: Callable[[Any], torch.Tensor], *,
        params: list[torch.nn.Parameter], resume: str | Path | None = None, desc: str = "train") -> int:
    """Train `model` (already `accelerator.prepare`d with optimizer, scheduler and loader) until
    `config.epochs` or `config.max_steps`; returns the last optimizer step. `compute_loss(batch)`
    returns the mean loss of one micro-batch; `params` are clipped to `config.max_grad_norm`."""
    out = Path(config.out)
    accum = accelerator.gradient_accumulation_steps  # DeepSpeed's config may have overridden ours
    per_epoch = steps_per_epoch(loader, accum)
    last = total_steps(config, loader, accum)
    step = 0
    if resume:
        step = load_state(accelerator, resume)
    start = time.perf_counter()
    bar = tqdm(total=last, initial=step, desc=desc, unit="step", disable=not accelerator.is_main_process,
               dynamic_ncols=True)
    window: list[float] = []
    model.train()
    while step < last:
        epoch, done_in_epoch = divmod(step, per_epoch)
        batches = loader
        if done_in_epoch:  # resumed mid-epoch: skip what the interrupted run already trained on
            batches = accelerator.skip_first_batches(loader, done_in_epoch * accum)
        batches.set_epoch(epoch)  # the shuffle of this epoch (accelerate would count from 0)
        for batch in batches:
            with accelerator.accumulate(model):
                loss = compute_loss(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            window.append(accelerator.reduce(loss.detach(), "mean").item())
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
            if step % config.log_every == 0 or step == last:
                _log(accelerator, out, {"step": step, "epoch": epoch, "loss": sum(window) / len(window),
                                        "lr": scheduler.get_last_lr()[0],
                                        "elapsed_s": round(time.perf_counter() - start, 3)})
            window = []
            if config.save_every and step % config.save_every == 0 and step < last:
                save_state(accelerator, out, step, config.keep_states)
            if step >= last:
                break
    bar.close()
    return step


class LossParts:
    """loop.run's compute_loss for a model with a loss of several parts: the model's loss; the parts
    it leaves in its `losses` dict, named in `parts`, go to out/losses.jsonl on the steps log.jsonl
    logs (mean over the step's micro-batches, as there; NaN for a part no micro-batch had, e.g. no
    picture with land cover)."""

    def __init__(self, model: torch.nn.Module, accelerator: Accelerator, out: Path, parts: Sequence[str],
                 log_every: int, last: int, step: int) -> None:
        self.model, self.accelerator, self.out, self.parts = model, accelerator, out, tuple(parts)
        self.log_every, self.last, self.step = log_every, last, step   # step: where a resumed run starts
        self.window: dict[str, list[torch.Tensor]] = {name: [] for name in self.parts}

    def __call__(self, batch: dict[str, list]) -> torch.Tensor:
        loss = self.model(batch)
        for name, value in self.accelerator.unwrap_model(self.model).losses.items():
            self.window[name].append(value)
        if self.accelerator.sync_gradients:   # this micro-batch ends an optimizer step
            self.step += 1
            if self.step % self.log_every == 0 or self.step == self.last:
                nan = torch.tensor(float("nan"), device=loss.device)
                # every process reduces the same parts in the same order
                record = {name: self.accelerator.reduce(torch.stack(values).mean() if values else nan,
                                                        "mean").item()
                          for name, values in self.window.items()}
                if self.accelerator.is_main_process:
                    with open(self.out / LOSSES_FILE, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"step": self.step, **record}) + "\n")
            self.window = {name: [] for name in self.parts}
        return loss


def _log(accelerator: Accelerator, out: Path, record: dict[str, Any]) -> None:
    if accelerator.is_main_process:
        with open(out / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def save_state(accelerator: Accelerator, out: Path, step: int, keep: int) -> Path:
    """accelerate's state + progress.json into out/state-<step> (written under a temp name first);
    only the newest `keep` states are kept."""
    final, tmp = out / f"{STATE_PREFIX}{step}", out / f".{STATE_PREFIX}{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / PROGRESS_FILE).write_text(json.dumps({"step": step}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        states = sorted(out.glob(f"{STATE_PREFIX}*"), key=lambda p: int(p.name[len(STATE_PREFIX):]))
        for old in states[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resumed_step(resume: str | Path | None) -> int:
    """The optimizer step a run resumed from state folder `resume` starts at (0 when fresh)."""
    progress = Path(resume or "") / PROGRESS_FILE
    return int(json.loads(progress.read_text())["step"]) if resume and progress.is_file() else 0


def load_state(accelerator: Accelerator, state_dir: str | Path) -> int:
    """Restore a state written by save_state; returns its optimizer step."""
    state_dir = Path(state_dir)
    progress = state_dir / PROGRESS_FILE
    if not progress.is_file():
        raise FileNotFoundError(f"{progress}: missing (expected a state-<step> folder written by "
                                f"`unirs train`)")
    step = int(json.loads(progress.read_text())["step"])
    accelerator.load_state(str(state_dir))
    return step


def prepare_out(config: StageConfig, accelerator: Accelerator) -> Path:
    out = Path(config.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return out
