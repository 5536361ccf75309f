"""`unirs train {align,cem,instruct} --config FILE [--set key=value ...] [--resume DIR]`.

The same command runs on one CPU, one GPU or many:
`accelerate launch [--config_file configs/accelerate-multigpu.yaml] -m unirs_engine.cli train ...`.
"""

from __future__ import annotations

import argparse
import sys

from .config import STAGES, ConfigError, load_config


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a UniRS model (stages: align, cem, instruct)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=list(STAGES),
                   help="align: demo model from scratch; cem: Chg2Cap-style Change Extraction "
                        "pretraining; instruct: joint instruction tuning")
    p.add_argument("--config", metavar="FILE", required=True, help="stage settings (JSON)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a setting (JSON value; dotted keys: data.1.repeat=5); repeatable")
    p.add_argument("--resume", metavar="DIR", help="continue from a state-<step> folder of the run")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    try:
        config = load_config(args.stage, args.config, args.overrides)
    except ConfigError as exc:
        print(f"unirs train: error: {exc}", file=sys.stderr)
        return 2
    # imported here: `unirs --help` should not load torch
    from ..data import DataError
    from .data import SampleError

    if args.stage == "align":
        from .align import train_align as train
    elif args.stage == "cem":
        from .cem_pretrain import train_cem as train
    else:
        from .instruct import train_instruct as train
    try:
        final = train(config, resume=args.resume)
    except (ConfigError, DataError, SampleError, FileNotFoundError) as exc:
        print(f"unirs train: error: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint: {final}")
    return 0
