"""Do a checkpoint's visual tokens say which land-cover kinds an image holds? Per noun of the
synthetic benchmark: a linear probe on the projected tokens, mean and max pooled (trained on the
train split's presence questions, scored on val), next to the model's own answers to the presence
questions of an eval.

    python scripts/probe_presence.py MODEL SYNTH_DIR [--predictions EVAL/predictions.jsonl] [--images 1500]

A noun whose probe sits at its majority rate is not in the tokens: no LLM training can fix its
answers; the vision stage has to.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch

from unirs_engine.data.synthetic.scene import NOUNS
from unirs_engine.evaluate.metrics import normalise_answer
from unirs_engine.inputs.preprocess import ImagePreprocessor
from unirs_engine.inputs.raster import read_chip
from unirs_engine.model.checkpoint import load_checkpoint
from unirs_engine.train.config import DatasetSpec
from unirs_engine.train.data import read_spec


def noun_of(question: str) -> str:
    question = question.lower()
    return next(kind for kind, forms in NOUNS.items() if any(form in question for form in forms))


def presence_labels(root: str, split: str) -> dict[str, dict[str, bool]]:
    """{image path: {noun: present}} from the presence questions of one split."""
    labels: dict[str, dict[str, bool]] = defaultdict(dict)
    for s in read_spec(DatasetSpec("rsvqa-lr", root, split, options={"protocol": "full"})):
        if s.meta.get("question_type") == "presence":
            labels[s.images[0]][noun_of(s.instruction)] = s.answer == "yes"
    return labels


@torch.no_grad()
def token_features(loaded, paths: list[str], batch: int = 32) -> np.ndarray:
    """(n, 2H): mean and max over each image's projected visual tokens. Pooled, so that one probe
    finds a small object in whichever token it lands."""
    model = loaded.model
    preprocess = ImagePreprocessor.from_checkpoint(loaded.path)   # the engine's own rule
    out = []
    for start in range(0, len(paths), batch):
        pixels = preprocess([read_chip(p) for p in paths[start:start + batch]]).to(loaded.device, loaded.dtype)
        tokens = model.mm_projector.project(model.encode_images(pixels))       # (B, T, H)
        out.append(torch.cat([tokens.mean(1), tokens.amax(1)], -1).float().cpu().numpy())  # (B, 2H)
    return np.concatenate(out)


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> float:
    """L2-regularised logistic regression (L-BFGS) on standardised features; val accuracy."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x = torch.tensor((x_train - mean) / std)
    y = torch.tensor(y_train, dtype=torch.float32)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 1e-2 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    logits = torch.tensor((x_val - mean) / std) @ w + b
    return float(((logits > 0).numpy() == y_val).mean())


def answer_accuracy(predictions: str) -> dict[str, float]:
    """Per noun, the share of presence questions the eval answered right."""
    right: dict[str, list[int]] = defaultdict(list)
    with open(predictions, encoding="utf-8") as lines:
        for row in map(json.loads, lines):
            if row["meta"].get("question_type") == "presence":
                said, truth = normalise_answer(row["prediction"]), normalise_answer(row["references"][0])
                right[noun_of(row["instruction"])].append(said == truth)
    return {noun: float(np.mean(hits)) for noun, hits in right.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("synth", help="folder written by `unirs synth`")
    parser.add_argument("--predictions", help="predictions.jsonl of `unirs eval --task synthetic`")
    parser.add_argument("--images", type=int, default=1500, help="training images for the probes")
    args = parser.parse_args(argv)

    loaded = load_checkpoint(args.model, device="cpu")
    root = f"{args.synth}/rsvqa"
    train, val = presence_labels(root, "train"), presence_labels(root, "val")
    train_paths, val_paths = sorted(train)[:args.images], sorted(val)
    x_train, x_val = token_features(loaded, train_paths), token_features(loaded, val_paths)
    answers = answer_accuracy(args.predictions) if args.predictions else {}

    print("| noun | val questions | yes share | majority | probe on tokens | model's answers (eval) |")
    print("|---|---:|---:|---:|---:|---:|")
    for noun in NOUNS:
        rows_t = [i for i, p in enumerate(train_paths) if noun in train[p]]
        rows_v = [i for i, p in enumerate(val_paths) if noun in val[p]]
        y_train = np.array([train[train_paths[i]][noun] for i in rows_t])
        y_val = np.array([val[val_paths[i]][noun] for i in rows_v])
        said = f"{100 * answers[noun]:.1f} %" if noun in answers else "–"
        if len(set(y_train)) < 2 or not len(y_val):   # nothing to fit or to score
            print(f"| {noun} | {len(rows_v)} | – | – | – | {said} |")
            continue
        acc = probe_accuracy(x_train[rows_t], y_train, x_val[rows_v], y_val)
        print(f"| {noun} | {len(rows_v)} | {y_val.mean():.2f} | {100 * max(y_val.mean(), 1 - y_val.mean()):.1f} % "
              f"| {100 * acc:.1f} % | {said} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
