"""Stage `change-score`: the review's change-score head (model/change_score.py) on the frozen tower.

Every training pair is read as `copies` mosaic-like versions (review/augment.py), the after chip's gain
is matched to the before chip and both go through the tower exactly as the engine scores a review
tile (Engine.change_features); the head then learns changeflag from the pooled feature difference,
full batch (one optimizer step per epoch: the pooled inputs of a few thousand pairs fit in memory).
The output is a copy of the input checkpoint with change_score/ added, whose threshold is calibrated
on mosaic-like copies of the val pairs by the same code as `unirs calibrate-threshold`. Deterministic
for its seed; not resumable (a few minutes on a CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..engine import Engine
from ..model.change_score import FOLDER, ChangeScoreHead
from ..model.checkpoint import load_checkpoint, save_change_head
from ..review.augment import read_pairs, review_read_side
from ..review.calibrate import calibrate, store
from ..types import InputKind
from .config import ChangeScoreConfig, ConfigError, DatasetSpec, save_config
from .data import SampleError, read_spec
from .instruct import CHECKPOINT_DIR
from .loop import LOG_FILE


def labelled_pairs(spec: DatasetSpec) -> tuple[list[tuple[str, str]], list[bool]]:
    """(before, after) image paths and changeflags of a LEVIR-CC-format split."""
    samples = [s for s in read_spec(spec) if s.kind is InputKind.PAIR and "changeflag" in s.meta]
    if not samples:
        raise SampleError(f"{spec.task} data at {spec.root} ({spec.split}): no image pairs with a changeflag")
    return [(str(s.images[0]), str(s.images[1])) for s in samples], [bool(s.meta["changeflag"]) for s in samples]


def pooled_inputs(engine: Engine, paths: list[tuple[str, str]], config: ChangeScoreConfig) -> torch.Tensor:
    """(copies x pairs, 2D) pooled feature differences of mosaic-like copies of the pairs, copy by copy."""
    side = review_read_side(engine.preprocess.size)
    pairs = read_pairs(paths, copies=config.copies, seed=config.seed, side=side)
    pooled, batch = [], []
    with tqdm(total=config.copies * len(paths), unit="pair", desc="change-score features") as bar:
        for pair in pairs:
            batch.append(pair)
            if len(batch) == config.batch_size:
                pooled.append(ChangeScoreHead.pool(*engine.change_features(batch, gain_matched=True)))  # (b, 2D)
                bar.update(len(batch))
                batch = []
        if batch:
            pooled.append(ChangeScoreHead.pool(*engine.change_features(batch, gain_matched=True)))
            bar.update(len(batch))
    return torch.cat(pooled)                                                  # (N, 2D)


def fit_head(x: torch.Tensor, y: torch.Tensor, config: ChangeScoreConfig, out: Path) -> tuple[ChangeScoreHead, float]:
    """The head trained on pooled inputs (N, 2D) and labels (N,); returns it (eval mode) and the last loss."""
    torch.manual_seed(config.seed)
    head = ChangeScoreHead(x.shape[1] // 2, config.hidden, config.dropout)
    head.fit_standardisation(x)
    optimizer = torch.optim.AdamW(head.mlp.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = min(config.epochs, config.max_steps) if config.max_steps else config.epochs
    head.train()
    t0, loss = time.perf_counter(), torch.tensor(float("nan"))
    with open(out / LOG_FILE, "w", encoding="utf-8") as log:
        for step in range(1, steps + 1):
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(head.logits(x), y)
            loss.backward()
            optimizer.step()
            if step % config.log_every == 0 or step == steps:
                log.write(json.dumps({"step": step, "epoch": step, "loss": loss.item(), "lr": config.lr,
                                      "elapsed_s": round(time.perf_counter() - t0, 3)}) + "\n")
    return head.eval(), loss.item()


def git_commit() -> str | None:
    """The commit of this source tree (with "+dirty" when it has uncommitted changes), if it is a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def _copy_without_head(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=lambda folder, names: [FOLDER] if Path(folder) == src else [])


def train_change_score(config: ChangeScoreConfig, resume: str | Path | None = None) -> Path:
    """Run the stage; returns out/checkpoint (the input checkpoint plus change_score/)."""
    if resume:
        raise ConfigError("the change-score stage is not resumable (it takes minutes): rerun it without --resume")
    t0 = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "train_config.json")
    train_paths, train_flags = labelled_pairs(config.data)
    val_spec = dataclasses.replace(config.data, split=config.val_split)
    val_paths, val_flags = labelled_pairs(val_spec)

    # CPU, float32: the features (and so the head and its threshold) do not depend on the machine.
    engine = Engine(load_checkpoint(config.model, device="cpu", dtype=torch.float32))
    x = pooled_inputs(engine, train_paths, config)                                        # (N, 2D)
    y = torch.tensor(train_flags * config.copies, dtype=torch.float32)                    # (N,)
    head, loss = fit_head(x, y, config, out)
    train_s = time.perf_counter() - t0

    final, tmp = out / CHECKPOINT_DIR, out / f".{CHECKPOINT_DIR}.tmp-{os.getpid()}"
    _copy_without_head(Path(config.model), tmp)
    save_change_head(head, tmp, {"training": {
        "stage": "unirs train change-score", "model": str(config.model), "data": config.data.root,
        "split": config.data.split, "pairs": len(train_paths), "changed": sum(train_flags),
        "copies": config.copies, "seed": config.seed, "epochs": min(config.epochs, config.max_steps or config.epochs),
        "lr": config.lr, "weight_decay": config.weight_decay, "final_loss": loss,
        "features_and_fit_s": round(train_s, 1), "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}})
    # The threshold as `unirs calibrate-threshold` computes it, on the written checkpoint.
    engine = Engine.load(tmp, device="cpu", dtype="float32")
    calibration = calibrate(engine, val_paths, val_flags, copies=config.val_copies, seed=config.seed)
    store(engine.threshold_config_file(), calibration, f"{val_spec.root} ({val_spec.split})",
          score=engine.change_score, copies=config.val_copies, seed=config.seed)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    print(f"change-score head: loss {loss:.4f} on {len(y)} pairs; threshold {calibration.threshold:.4g}, balanced "
          f"accuracy {100 * calibration.balanced_accuracy:.1f} % on {config.val_copies} mosaic-like copies of the "
          f"{len(val_paths)} {val_spec.split} pairs; {time.perf_counter() - t0:.0f} s")
    return final
