"""`unirs train {vision,align,cem,instruct,change-score} --config FILE [--set key=value ...] [--resume DIR]` and
`unirs clues` (the base VLM's clue for every training sample, for `clues` in a data spec).

The same command runs on one CPU, one GPU or many:
`accelerate launch [--config_file configs/accelerate-multigpu.yaml] -m unirs_engine.cli train ...`.
"""

from __future__ import annotations

import argparse

from ..argtypes import CommandError, add_model_arguments, key_value, positive_int
from .config import STAGES, load_config

CLUE_TASKS = ("rsvqa-lr", "rsvqa-hr", "levir-cc", "era", "geochat", "synthetic-comparisons", "synthetic-counts")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a UniRS model (stages: vision, align, cem, instruct, "
                                            "change-score)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=list(STAGES),
                   help="vision: demo tower + projector + CEM from scratch; align: demo model "
                        "from scratch; cem: Chg2Cap-style Change Extraction pretraining; instruct: "
                        "joint instruction tuning; change-score: the review's change-score head on "
                        "the frozen tower (adds change_score/ to a copy of the checkpoint)")
    p.add_argument("--config", metavar="FILE", required=True, help="stage settings (JSON)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a setting (JSON value; dotted keys: data.1.repeat=5); repeatable")
    p.add_argument("--resume", metavar="DIR", help="continue from a state-<step> folder of the run")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "clues", help="write the base VLM's clue for every sample of a dataset (JSON lines)",
        description="The clue the engine writes at inference (paper Table II prompts), for every "
                    "sample, appended to OUT as {\"id\", \"clue\"} lines (a rerun resumes); give OUT "
                    "as a data spec's `clues` to train with clues.")
    add_model_arguments(p, model_required=True, model_help="the base VLM (VILA-1.5; the demo: "
                                                           "runs/demo/align/checkpoint)")
    p.add_argument("--task", required=True, choices=CLUE_TASKS)
    p.add_argument("--data", required=True, metavar="DIR", help="dataset root")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, metavar="FILE", help="clue file (JSON lines)")
    p.add_argument("--option", dest="options", metavar="KEY=VALUE", type=key_value, action="append", default=[],
                   help="dataset reader option as in a data spec's options (JSON value), e.g. "
                        "protocol=full; repeatable")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--max-new-tokens", type=positive_int, default=64,
                   help="as `unirs eval`, so that training and evaluation clues match")
    p.set_defaults(func=run_clues)


def run_train(args) -> int:
    config = load_config(args.stage, args.config, args.overrides)
    # imported here: `unirs --help` should not load torch
    if args.stage == "vision":
        from .vision_pretrain import train_vision as train
    elif args.stage == "align":
        from .align import train_align as train
    elif args.stage == "cem":
        from .cem_pretrain import train_cem as train
    elif args.stage == "change-score":
        from .change_score import train_change_score as train
    else:
        from .instruct import train_instruct as train
    try:
        final = train(config, resume=args.resume)
    except FileNotFoundError as exc:   # a data or checkpoint folder named in the config
        raise CommandError(str(exc)) from None
    print(f"checkpoint: {final}")
    return 0


def run_clues(args) -> int:
    options = dict(args.options)
    from ..data import DataError, load_samples
    from ..engine import Engine
    from ..model.checkpoint import load_checkpoint
    from .clues import write_clues

    try:
        samples = load_samples(args.task, args.data, split=args.split, on_error="skip", **options)
    except (DataError, TypeError) as exc:  # TypeError: an option the reader does not take
        raise CommandError(f"{args.task} data at {args.data}: {exc}") from None
    base = load_checkpoint(args.model, device=args.device, dtype=args.dtype)
    engine = Engine(base, clue_model=base, max_new_tokens=args.max_new_tokens)
    written = write_clues(engine, samples, args.out, batch_size=args.batch_size)
    print(f"{args.out}: {written} clues written, {len(samples) - written} already there")
    return 0
