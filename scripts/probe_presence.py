"""Do a checkpoint's visual tokens say which land-cover kinds an image holds? Per noun of the
synthetic benchmark: a linear probe on the projected tokens, mean and max pooled (trained on the
train split's presence questions, scored on val), next to the model's own answers to the presence
questions of an eval.

    python scripts/probe_presence.py MODEL SYNTH_DIR [--predictions EVAL/predictions.jsonl] [--images 1500]
                                     [--landcover]

MODEL is a checkpoint folder, or the checkpoint folder of the vision stage alone (vision.json +
vision.safetensors: its tower and projector, before any LLM exists). `--landcover` adds a second
table whose labels come from the benchmark's land-cover files instead of the questions: every noun
of every image, scored on val and test (about six times the questions' images per noun).

A noun whose probe sits at its majority rate is not in the tokens: no LLM training can fix its
answers; the vision stage has to.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from unirs_engine.data.synthetic.landcover import CLASSES, read_landcover
from unirs_engine.data.synthetic.scene import NOUNS
from unirs_engine.evaluate.metrics import normalise_answer
from unirs_engine.inputs.preprocess import ImagePreprocessor
from unirs_engine.inputs.raster import read_chip
from unirs_engine.model.checkpoint import default_image_processor, load_checkpoint
from unirs_engine.model.projector import MultimodalProjector
from unirs_engine.model.vision import VisionTower
from unirs_engine.train.config import DatasetSpec
from unirs_engine.train.data import read_spec
from unirs_engine.train.vision_pretrain import INFO_FILE, PROJECTOR_PREFIX, TOWER_PREFIX, WEIGHTS_FILE, model_spec

Encoder = Callable[[torch.Tensor], torch.Tensor]   # (B, 3, S, S) pixels -> (B, T, H) projected tokens


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


def landcover_labels(paths: list[str]) -> dict[str, np.ndarray]:
    """{noun: (n,) bool}: whether any pixel of each image shows the noun's kind."""
    covers = np.stack([read_landcover(p) for p in paths])                      # (n, C, 32, 32)
    return {noun: covers[:, CLASSES.index(noun)].sum((1, 2)) > 0 for noun in NOUNS}


def encoder(folder: str) -> tuple[ImagePreprocessor, Encoder]:
    """The preprocessing and the tower + projector of a checkpoint or of a vision-stage checkpoint."""
    if (Path(folder) / INFO_FILE).is_file():
        spec = model_spec(json.loads((Path(folder) / INFO_FILE).read_text())["model_spec"])
        weights = load_file(str(Path(folder) / WEIGHTS_FILE))
        tower = VisionTower.from_config(spec.vision_config()).eval()
        has_change = any(k.startswith(PROJECTOR_PREFIX + "layers.change.") for k in weights)
        projector = MultimodalProjector(spec.vision_hidden, spec.llm_hidden,
                                        change_grid=spec.grid if has_change else None).eval()
        for module, prefix in ((tower, TOWER_PREFIX), (projector, PROJECTOR_PREFIX)):
            module.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
        preprocess = ImagePreprocessor(default_image_processor(spec.image_size), spec.image_aspect_ratio)
        return preprocess, lambda pixels: projector.project(tower(pixels))
    loaded = load_checkpoint(folder, device="cpu")
    model = loaded.model
    return (ImagePreprocessor.from_checkpoint(loaded.path),   # the engine's own rule
            lambda pixels: model.mm_projector.project(model.encode_images(pixels.to(loaded.device, loaded.dtype))))


@torch.no_grad()
def token_features(preprocess: ImagePreprocessor, encode: Encoder, paths: list[str], batch: int = 32) -> np.ndarray:
    """(n, 2H): mean and max over each image's projected visual tokens. Pooled, so that one probe
    finds a small object in whichever token it lands."""
    out = []
    for start in range(0, len(paths), batch):
        tokens = encode(preprocess([read_chip(p) for p in paths[start:start + batch]]))  # (B, T, H)
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
    parser.add_argument("model", help="checkpoint folder, or a vision-stage checkpoint folder")
    parser.add_argument("synth", help="folder written by `unirs synth`")
    parser.add_argument("--predictions", help="predictions.jsonl of `unirs eval --task synthetic`")
    parser.add_argument("--images", type=int, default=1500, help="training images for the probes")
    parser.add_argument("--landcover", action="store_true",
                        help="also probe every noun of every image, labelled from the land-cover files")
    args = parser.parse_args(argv)

    preprocess, encode = encoder(args.model)
    root = f"{args.synth}/rsvqa"
    train, val = presence_labels(root, "train"), presence_labels(root, "val")
    train_paths, val_paths = sorted(train)[:args.images], sorted(val)
    x_train, x_val = (token_features(preprocess, encode, paths) for paths in (train_paths, val_paths))
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
    if args.landcover:
        test_paths = sorted(presence_labels(root, "test"))
        scored = val_paths + test_paths
        x_scored = np.concatenate([x_val, token_features(preprocess, encode, test_paths)]) if test_paths else x_val
        y_train, y_scored = landcover_labels(train_paths), landcover_labels(scored)
        print("\n| noun | val + test images | present share | majority | probe on tokens |")
        print("|---|---:|---:|---:|---:|")
        for noun in NOUNS:
            share = y_scored[noun].mean()
            acc = probe_accuracy(x_train, y_train[noun], x_scored, y_scored[noun])
            print(f"| {noun} | {len(scored)} | {share:.2f} | {100 * max(share, 1 - share):.1f} % "
                  f"| {100 * acc:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
