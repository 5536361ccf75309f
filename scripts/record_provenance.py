"""Write where a trained demo checkpoint came from into its folder (scripts/train_demo.sh).

config.json's `_name_or_path` becomes the model id (answers, GeoPackage features, the dock's engine
line and eval reports show it instead of the folder name), and `training.json` records the git
commit, the seed, the synthetic benchmark's arguments and sizes (and those of the instruct stage's
more videos under data/more-videos), each stage's seconds and the machine it ran on.

    python scripts/record_provenance.py CHECKPOINT --run RUN --model-id ID --commit SHA --dirty N
        --seed S --synth "ARGS" [--more-videos "ARGS"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

STAGES = ("vision", "align", "cem", "instruct", "refine", "change-score")


def seconds_of(folder: Path) -> int | None:
    """The seconds train_demo.sh wrote after a stage (summed over resumes), None if not recorded."""
    path = folder / "seconds"
    return int(path.read_text()) if path.is_file() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--run", type=Path, required=True, help="train_demo.sh's run folder")
    p.add_argument("--model-id", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--dirty", type=int, required=True, help="tracked files changed at launch")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--synth", required=True, help="the `unirs synth` arguments after --seed")
    p.add_argument("--more-videos", help="the `unirs synth` arguments of data/more-videos, if any")
    args = p.parse_args()

    config_path = args.checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["_name_or_path"] = args.model_id
    config_path.write_text(json.dumps(config, indent=2))

    data = args.run / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    stage_seconds = {"synth": seconds_of(data)}
    if args.more_videos:
        stage_seconds["more-videos"] = seconds_of(data / "more-videos")
    stage_seconds |= {s: seconds_of(args.run / s) for s in STAGES}
    provenance = {
        "model_id": args.model_id,
        "git_commit": args.commit,
        "git_changed_files_at_launch": args.dirty,
        "seed": args.seed,
        "synth": f"unirs synth --seed {args.seed} {args.synth}",
        "data_counts": manifest["counts"],
        **(_more_videos(data / "more-videos", args.more_videos) if args.more_videos else {}),
        "stage_seconds": stage_seconds,
        "total_seconds": sum(v for v in stage_seconds.values() if v),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"{torch.get_num_threads()} torch threads)",
        "torch": torch.__version__,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (args.checkpoint / "training.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"{args.checkpoint}: model id {args.model_id}, {provenance['total_seconds']} s of training "
          f"recorded, commit {args.commit[:10]}")


def _more_videos(folder: Path, synth_args: str) -> dict:
    """The record of the extra event videos: how they were written and how many of each class."""
    era = json.loads((folder / "manifest.json").read_text())["counts"]["era"]
    return {"more_videos": {"synth": f"unirs synth {synth_args}", "videos": era["videos"], "classes": era["classes"]}}


if __name__ == "__main__":
    main()
