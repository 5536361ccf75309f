#!/usr/bin/env python3
"""The ablation table: mean ± std over seeds of each variant's `unirs eval` scores, as Markdown.

Reads ROOT/<variant>/seed<N>/eval/<task>/report.json (the layout scripts/ablate_demo.sh writes: one
`unirs eval` per task of a run) and prints one row per variant: VQA accuracy, change decision
accuracy, CIDEr-D, classification accuracy (all x100, the papers' scale), each over the seeds that
scored that benchmark, and the number of seeds.

    python scripts/ablation_table.py runs/ablation [--out runs/ablation/table.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from pathlib import Path

# The variants of scripts/ablate_demo.sh in table order, with what they change against "joint".
VARIANTS = {
    "joint": "joint training, CEM (UniRS)",
    "rsvqa": "single-task: RSVQA only",
    "levircc": "single-task: LEVIR-CC only",
    "era": "single-task: ERA only",
    "joint-nocem": "joint, without CEM (pair as 2 frames)",
    "levircc-nocem": "LEVIR-CC only, without CEM (pair as 2 frames)",
    "joint-clue": "joint, with clue (prompt augmentation)",
}
# column -> (benchmark in report.json, path to the score inside it)
COLUMNS = {
    "VQA acc.": ("rsvqa", ("overall",)),
    "change decision acc.": ("levir-cc", ("change_decision", "accuracy")),
    "CIDEr-D": ("levir-cc", ("all", "CIDEr-D")),
    "classification acc.": ("era", ("overall_accuracy",)),
}
SEED_DIR = re.compile(r"seed(\d+)$")


class TableError(ValueError):
    """A run folder or report that cannot be read; the message names the file."""


def read_runs(root: Path) -> dict[str, dict[int, dict]]:
    """{variant: {seed: scores}}: the benchmarks' scores of every ROOT/<variant>/seed<N>/eval/*/
    report.json of a run, merged (each report scores its own benchmark)."""
    runs: dict[str, dict[int, dict]] = {}
    for report in sorted(root.glob("*/seed*/eval/*/report.json")):
        seed_dir = report.parent.parent.parent
        match = SEED_DIR.match(seed_dir.name)
        if not match:
            continue
        try:
            results = json.loads(report.read_text())
        except json.JSONDecodeError as exc:
            raise TableError(f"{report}: not JSON (line {exc.lineno}: {exc.msg})") from exc
        scores = runs.setdefault(seed_dir.parent.name, {}).setdefault(int(match[1]), {})
        for benchmark in dict.fromkeys(b for b, _ in COLUMNS.values()):
            if results.get(benchmark):
                if benchmark in scores:
                    raise TableError(f"{report}: a second report of {benchmark} for this run")
                scores[benchmark] = results[benchmark]
    return runs


def score(report: dict, benchmark: str, path: tuple[str, ...]) -> float | None:
    """A score of report.json, or None when the run did not evaluate that benchmark."""
    value = report.get(benchmark)
    for key in path:
        if value is None:
            return None
        value = value.get(key)
    return value


def cell(values: list[float]) -> str:
    """'mean ± std (x100)' with the sample standard deviation; '–' without values."""
    if not values:
        return "–"
    mean = 100 * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def render(runs: dict[str, dict[int, dict]]) -> str:
    order = [v for v in VARIANTS if v in runs] + sorted(set(runs) - set(VARIANTS))
    header = ["variant", "what", *COLUMNS, "seeds"]
    rule = "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    for variant in order:
        reports = runs[variant]
        cells = [cell([s for s in (score(r, b, p) for r in reports.values()) if s is not None])
                 for b, p in COLUMNS.values()]
        seeds = ", ".join(map(str, sorted(reports)))
        lines.append(f"| {variant} | {VARIANTS.get(variant, '')} | " + " | ".join(cells)
                     + f" | {len(reports)} ({seeds}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the ablation folder (scripts/ablate_demo.sh's ABL)")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    try:
        runs = read_runs(args.root)
    except TableError as exc:
        print(f"ablation_table: error: {exc}", file=sys.stderr)
        return 2
    if not runs:
        print(f"ablation_table: error: no {args.root}/<variant>/seed<N>/eval/<task>/report.json found",
              file=sys.stderr)
        return 2
    table = ("Scores x100 on the held-out test split: mean ± sample std over seeds (one value: "
             "a single seed).\n\n" + render(runs))
    print(table, end="")
    if args.out:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(table, encoding="utf-8")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
