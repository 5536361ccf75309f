"""One entry point for every dataset: `load_samples(task, root, split)` -> list[Sample]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..types import Sample
from .era import read_era
from .geochat import read_geochat
from .levircc import read_levircc
from .rsvqa import read_rsvqa
from .synthetic.count_questions import read_comparison_questions, read_how_many_questions

# "synthetic-comparisons", "synthetic-counts": training only, more comparisons / "How many ...?" about
# synthetic RSVQA images (count_questions.py)
TASKS = ("rsvqa-lr", "rsvqa-hr", "levir-cc", "era", "geochat", "synthetic", "synthetic-comparisons",
         "synthetic-counts")

# Sub-folders the synthetic generator writes, and the options each of their readers accepts.
SYNTHETIC_PARTS = {"rsvqa": "rsvqa", "levir-cc": "levircc", "era": "era"}
_SYNTHETIC_OPTIONS = {"rsvqa": {"protocol"}, "levir-cc": {"instruction"}, "era": {"classes"}}


def load_samples(task: str, root: str | Path, split: str = "test", on_error: str = "raise",
                 **opts: Any) -> list[Sample]:
    """Samples of `task` under `root`; `opts` go to the task's reader (e.g. protocol="full").

    "synthetic" is the union of the generator's three benchmarks (root/rsvqa, root/levircc,
    root/era), each sample's meta["benchmark"] naming which one it belongs to.
    """
    root = Path(root)
    if task == "rsvqa-lr":
        return read_rsvqa(root, "lr", split, on_error=on_error, **opts)
    if task == "rsvqa-hr":
        return read_rsvqa(root, "hr", split, on_error=on_error, **opts)
    if task == "levir-cc":
        return read_levircc(root, split, on_error=on_error, **opts)
    if task == "era":
        return read_era(root, split, on_error=on_error, **opts)
    if task == "geochat":
        return read_geochat(root, split, on_error=on_error, **opts)
    if task == "synthetic":
        return _load_synthetic(root, split, on_error, opts)
    if task == "synthetic-comparisons":
        return read_comparison_questions(root, split, on_error=on_error, **opts)
    if task == "synthetic-counts":
        return read_how_many_questions(root, split, on_error=on_error, **opts)
    raise ValueError(f"unknown dataset task {task!r}; expected one of {', '.join(TASKS)}")


def _load_synthetic(root: Path, split: str, on_error: str, opts: dict[str, Any]) -> list[Sample]:
    unknown = set(opts) - set().union(*_SYNTHETIC_OPTIONS.values())
    if unknown:
        raise TypeError(f"load_samples('synthetic'): unknown option(s) {', '.join(sorted(unknown))}")
    part = {b: {k: v for k, v in opts.items() if k in names} for b, names in _SYNTHETIC_OPTIONS.items()}
    return [
        *read_rsvqa(root / SYNTHETIC_PARTS["rsvqa"], "lr", split, on_error=on_error, **part["rsvqa"]),
        *read_levircc(root / SYNTHETIC_PARTS["levir-cc"], split, on_error=on_error, **part["levir-cc"]),
        *read_era(root / SYNTHETIC_PARTS["era"], split, on_error=on_error, **part["era"]),
    ]
