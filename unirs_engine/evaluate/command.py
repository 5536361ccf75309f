"""`unirs eval`: score a checkpoint on RSVQA, LEVIR-CC, ERA or the synthetic benchmark."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..argtypes import add_model_arguments, positive_int
from .runner import PREDICTIONS, TASKS


def register(subparsers) -> None:
    """Add the `eval` subcommand to the `unirs` command line."""
    p = subparsers.add_parser(
        "eval", help="evaluate a model on a benchmark (resumable)",
        description="Predict every test sample (appending to OUT/predictions.jsonl, so a rerun "
                    "resumes), score it the way the UniRS paper does, write OUT/report.{json,md}.")
    add_model_arguments(p, clue_model="base VLM that writes the clue (needed by --clue)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data", required=True, metavar="DIR", help="dataset root")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for predictions and reports")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N samples")
    p.add_argument("--clue", action="store_true", help="augment prompts with the clue model's clue")
    p.add_argument("--pairs-as-frames", action="store_true",
                   help="give image pairs to the model as two images in one prompt under the change "
                        "instruction, even when it has a Change Extraction module (a checkpoint without "
                        "one takes pairs that way anyway)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="discard predictions already in --out and start over")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="bad samples (missing or unreadable files): skip and report, or stop")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from ..engine import Engine
    from .runner import evaluate

    engine = Engine.load(args.model, device=args.device, dtype=args.dtype,
                         clue_model_dir=args.clue_model, max_new_tokens=args.max_new_tokens)
    if args.pairs_as_frames:
        print("unirs eval: image pairs go in as 2-frame sequences (no Change Extraction module)",
              file=sys.stderr)
    try:
        evaluate(engine, args.task, args.data, args.out, split=args.split, batch_size=args.batch_size,
                 limit=args.limit, clue=args.clue, on_error=args.on_error, resume=args.resume,
                 pairs_as_frames=args.pairs_as_frames)
    except KeyboardInterrupt:
        print(f"unirs eval: interrupted; finished predictions are in {Path(args.out) / PREDICTIONS}, "
              "run the same command again to resume", file=sys.stderr)
        return 130
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    return 0
