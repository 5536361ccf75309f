"""report.json and report.md: the evaluation results laid out like the UniRS paper's tables
(RSVQA: Table III, LEVIR-CC: captioning scores x100, ERA: Table VII)."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_atomic
from .captions import METRICS

# RSVQA question types in Table III order, then HR's extra ones.
VQA_COLUMNS = {"presence": "Presence", "comp": "Comparison", "rural_urban": "Rural/Urban",
               "count": "Count", "area": "Area"}
CHANGE_SUBSETS = ("all", "changed", "unchanged")
MAX_LISTED = 20  # skipped samples named in report.md; report.json lists all


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _vqa_section(r: dict, model: str) -> list[str]:
    types = [t for t in VQA_COLUMNS if t in r["per_type"]] + sorted(set(r["per_type"]) - set(VQA_COLUMNS))
    header = ["Model", *(VQA_COLUMNS.get(t, t) for t in types), "Avg. Accuracy"]
    rows = [[model, *(_pct(r["per_type"][t]) for t in types), _pct(r["overall"])],
            ["questions", *(str(r["per_type_n"][t]) for t in types), str(r["n"])]]
    lines = ["## RSVQA (accuracy %, GeoChat protocol)", "",
             "Exact match after lowercasing and removing spaces and \".\"; the average weighs every "
             "question equally.", "", *_table(header, rows)]
    if "out_of_space" in r:  # reports written before the count have none
        rows = [["answers", *(str(r["out_of_space"][t]) for t in types), str(r["out_of_space_n"])]]
        lines += ["", "Answers outside their question type's answer space (yes/no, rural/urban, a "
                  "number; a change caption, say), counted wrong above:", "",
                  *_table(["Outside", *(VQA_COLUMNS.get(t, t) for t in types), "All"], rows)]
        lines += [f"- {i}: {answer!r}" for i, answer in r["out_of_space_examples"]]
    return lines


def _caption_section(r: dict) -> list[str]:
    header = ["Pairs", "n", *METRICS]
    rows = [[s, str(r[s]["n"]), *(_pct(r[s][m]) for m in METRICS)] for s in CHANGE_SUBSETS]
    d = r["change_decision"]
    lines = ["## LEVIR-CC change captioning (scores x100)", "",
             "pycocoevalcap Bleu(4), Meteor, Rouge (ROUGE-L), Cider (CIDEr-D) on word tokens: lowercased, "
             "\".\" removed, \",\" and \";\" split off.", "", *_table(header, rows), "",
             f"Change decision (caption says \"no change\" or not, against changeflag): "
             f"{_pct(d['accuracy'])} % of {d['n']} pairs ({d['predicted_changed']} captioned as changed, "
             f"{d['true_changed']} changed)."]
    if r["all"]["n"] and r["all"]["METEOR"] is None:
        lines.append("METEOR not computed: java was not found.")
    return lines


def _classification_section(r: dict, model: str) -> list[str]:
    prec, rec = r["per_class_precision"], r["per_class_recall"]
    classes = [c for c in prec if prec[c] is not None or rec[c] is not None]
    header = ["Method", *classes, "OA"]
    rows = [[f"{model} (precision)", *(_pct(prec[c], 1) for c in classes), _pct(r["overall_accuracy"], 1)],
            [f"{model} (recall)", *(_pct(rec[c], 1) for c in classes), ""]]
    return ["## ERA video scene classification (%)", "",
            "Per-class precision and overall accuracy (Table VII layout); classes seen in the "
            "ground truth or the answers.", "", *_table(header, rows), "",
            f"Answers naming no class (counted wrong): {r['unmatched']} of {r['n']}."]


def render_markdown(results: dict, title: str) -> str:
    """The Markdown report of an evaluation results dict (sections for the benchmarks present)."""
    model = results.get("model_id", "model")
    lines = [f"# {title}", ""]
    facts = [("Model", results.get("model_id")), ("Device", results.get("device")),
             ("Task", results.get("task")), ("Split", results.get("split")),
             ("Clue", results.get("clue")), ("Scored samples", results.get("scored"))]
    lines += [f"- {k}: {v}" for k, v in facts if v is not None]
    run = results.get("this_run")
    if run and run["predicted"]:
        lines.append(f"- This run: {run['predicted']} predictions in {run['seconds']:.1f} s "
                     f"({run['seconds_per_sample']:.3f} s per sample, batch size {run['batch_size']})")
    skipped = results.get("skipped") or []
    if skipped:
        lines.append(f"- Skipped samples: {len(skipped)} (see below)")
    lines.append("")
    if results.get("rsvqa"):
        lines += _vqa_section(results["rsvqa"], model) + [""]
    if results.get("levir-cc"):
        lines += _caption_section(results["levir-cc"]) + [""]
    if results.get("era"):
        lines += _classification_section(results["era"], model) + [""]
    if skipped:
        lines += ["## Skipped samples", "", *(f"- {s['error']}" if s.get("id") is None else
                                               f"- {s['id']}: {s['error']}" for s in skipped[:MAX_LISTED])]
        if len(skipped) > MAX_LISTED:
            lines.append(f"- ... and {len(skipped) - MAX_LISTED} more in report.json")
        lines.append("")
    return "\n".join(lines)


def write_report(results: dict, out_dir: str | Path, title: str) -> tuple[Path, Path]:
    """Write out_dir/report.json and out_dir/report.md (atomically); return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_atomic(json_path, json.dumps({"title": title, **results}, indent=2, ensure_ascii=False,
                                       allow_nan=False) + "\n")
    write_atomic(md_path, render_markdown(results, title))
    return json_path, md_path
