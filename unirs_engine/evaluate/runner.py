"""Run a benchmark through the engine, one JSON line per prediction as it comes, then score and report.

out_dir/predictions.jsonl is the run's memory: a rerun skips the samples already in it, so a killed
evaluation resumes where it stopped (the torn last line of a killed write is dropped and redone).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from tqdm import tqdm

from .. import prompts
from ..errors import UnirsError
from ..jsonlines import read_finished
from ..types import TWO_IMAGE_PAIR, InputKind, Result, Sample
from .captions import scores_by_change
from .metrics import classification_report, vqa_accuracy
from .report import write_report

if TYPE_CHECKING:  # the engine (torch) is imported when a run starts, not with the command line
    from ..engine import Engine, Request

TASKS = ("rsvqa-lr", "rsvqa-hr", "levir-cc", "era", "synthetic")
BENCHMARKS = ("rsvqa", "levir-cc", "era")
_TASK_BENCHMARK = {"rsvqa-lr": "rsvqa", "rsvqa-hr": "rsvqa", "levir-cc": "levir-cc", "era": "era"}
_KIND_ORDER = {InputKind.IMAGE: 0, InputKind.PAIR: 1, InputKind.SEQUENCE: 2}
PREDICTIONS = "predictions.jsonl"

Key = tuple[str, str]  # (benchmark, sample id): synthetic ids may repeat across its benchmarks


class EvalError(UnirsError, RuntimeError):
    """An evaluation that cannot go on; the message names the file or record."""


def evaluate(engine: Engine, task: str, data_root: str | Path, out_dir: str | Path, split: str = "test",
             batch_size: int = 8, limit: int | None = None, clue: bool = False, on_error: str = "skip",
             resume: bool = True, progress: bool = True, pairs_as_frames: bool = False) -> dict:
    """Load `task`'s samples from `data_root`, predict the missing ones, score all, write reports."""
    if task not in TASKS:
        raise EvalError(f"unknown evaluation task {task!r}; expected one of {', '.join(TASKS)}")
    from ..data import SkippedRecordWarning, load_samples

    with warnings.catch_warnings(record=True) as caught:  # to list the records the reader skipped
        warnings.simplefilter("always")
        samples = load_samples(task, data_root, split=split, on_error=on_error)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    not_loaded = [{"stage": "load", "error": str(w.message)} for w in caught
                  if issubclass(w.category, SkippedRecordWarning)]
    if limit is not None:
        samples = samples[:limit]
    return evaluate_samples(engine, samples, out_dir, task=task, split=split, batch_size=batch_size,
                            clue=clue, on_error=on_error, resume=resume, progress=progress,
                            not_loaded=not_loaded, pairs_as_frames=pairs_as_frames)


def evaluate_samples(engine: Engine, samples: Sequence[Sample], out_dir: str | Path, *, task: str,
                     split: str = "test", batch_size: int = 8, clue: bool = False,
                     on_error: str = "skip", resume: bool = True, progress: bool = True,
                     not_loaded: Sequence[dict] = (), pairs_as_frames: bool = False) -> dict:
    """`evaluate` on samples already loaded; returns the results dict written to report.json.

    `not_loaded`: records the dataset reader skipped, listed in the report with the skipped samples.
    `pairs_as_frames`: image pairs go in as two images in one prompt under the change instruction
    (pair mode "two-images", the way a model trained without the CEM saw them, paper IV-E2) even when
    the model has a CEM; a model without one takes pairs that way anyway.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PREDICTIONS
    info = engine.info()
    run = {"task": task, "split": split, "model_id": info["model_id"], "clue": clue}
    if pairs_as_frames:  # only then: prediction files of earlier runs lack the key
        run["pairs_as_frames"] = True
    keyed = _key_samples(samples, task)
    _check_engine(info, clue)
    if not resume:
        path.unlink(missing_ok=True)
    records = read_predictions(path)
    _check_same_run(records, path, run)

    # Same-kind batches: similar prompt lengths and one routing per generate call.
    todo = sorted(((k, s) for k, s in keyed.items() if k not in records),
                  key=lambda ks: _KIND_ORDER[ks[1].kind])
    t0 = time.perf_counter()
    skipped = _predict(engine, todo, path, records, run, batch_size, on_error, progress, pairs_as_frames)
    seconds = time.perf_counter() - t0
    n_new = len(todo) - len(skipped)

    # Predictions from the file, ground truth from the dataset as it is now.
    scored = [{**records[k], "references": s.references, "meta": s.meta}
              for k, s in keyed.items() if k in records]
    results = {
        **run, "device": info["device"], "dtype": info["dtype"],
        "samples": len(keyed), "scored": len(scored), "skipped": [*not_loaded, *skipped],
        "this_run": {"predicted": n_new, "seconds": seconds,
                     "seconds_per_sample": seconds / n_new if n_new else None, "batch_size": batch_size},
        "predictions": str(path),
        **score_predictions(scored),
    }
    write_report(results, out_dir, title=f"UniRS evaluation: {task} ({split})")
    return results


def _key_samples(samples: Iterable[Sample], task: str) -> dict[Key, Sample]:
    keyed: dict[Key, Sample] = {}
    for s in samples:
        bench = s.meta.get("benchmark") or _TASK_BENCHMARK.get(task)
        if bench not in BENCHMARKS:
            raise EvalError(f"sample {s.sample_id}: no benchmark to score it by (task {task!r}, "
                            f"meta benchmark {s.meta.get('benchmark')!r}); expected one of {BENCHMARKS}")
        if (bench, s.sample_id) in keyed:
            raise EvalError(f"sample id {s.sample_id!r} appears twice in benchmark {bench}")
        keyed[(bench, s.sample_id)] = s
    return keyed


def _check_engine(info: dict, clue: bool) -> None:
    """Faults of the set-up, not of a sample: stop before every sample is skipped for them."""
    if clue and not info["clue_model_id"]:
        raise EvalError("clue prompts were asked for but no clue model is loaded (--clue-model DIR)")


def read_predictions(path: Path) -> dict[Key, dict]:
    """Records of a predictions file by key; an unfinished last line is cut off with a warning."""
    return read_finished(path, lambda record: (record["benchmark"], record["id"]), lambda where, why: EvalError(
        f"{where}: not a prediction record ({why}); move the file away or run without resume"))


def _check_same_run(records: dict[Key, dict], path: Path, run: dict) -> None:
    for rec in records.values():
        theirs = {k: rec.get(k) for k in run}
        if theirs != run:
            raise EvalError(f"{path} holds predictions of another run ({theirs}, this run: {run}); "
                            "use --no-resume to replace them or choose another --out")


def to_request(sample: Sample, clue: bool, pairs_as_frames: bool = False) -> Request:
    """The engine request of a sample; the engine adds the task tag and the template."""
    from ..engine import Request

    inputs = [sample.video] if sample.kind is InputKind.SEQUENCE and sample.video else list(sample.images)
    # Two images under the change tag and instruction: the prompt train.data builds for `pair_as_frames`.
    pair_mode = TWO_IMAGE_PAIR if pairs_as_frames and sample.kind is InputKind.PAIR else None
    return Request(sample.kind, inputs, sample.instruction, clue=clue, pair_mode=pair_mode)


def _predict(engine: Engine, todo: list[tuple[Key, Sample]], path: Path, records: dict[Key, dict],
             run: dict, batch_size: int, on_error: str, progress: bool,
             pairs_as_frames: bool) -> list[dict]:
    """Answer `todo` batch by batch, appending and flushing each batch's records; returns the skipped."""
    skipped: list[dict] = []
    with path.open("a", encoding="utf-8") as f, \
            tqdm(total=len(todo), unit="sample", desc=f"eval {run['task']}", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            for (key, sample), result in _answer(engine, batch, run["clue"], on_error, skipped,
                                                 pairs_as_frames):
                records[key] = _record(key, sample, result, run)
                f.write(json.dumps(records[key], ensure_ascii=False, default=str) + "\n")
            f.flush()
            bar.update(len(batch))
    return skipped


def _answer(engine: Engine, batch: list[tuple[Key, Sample]], clue: bool, on_error: str,
            skipped: list[dict], pairs_as_frames: bool) -> list[tuple[tuple[Key, Sample], Result]]:
    """((key, sample), Result) pairs; if the batch fails, its samples go one by one to find the bad one."""
    from ..engine import EngineError

    requests = [to_request(s, clue, pairs_as_frames) for _, s in batch]
    try:
        return list(zip(batch, engine.run_batch(requests, batch_size=len(requests))))
    except EngineError:
        pass  # find the bad sample(s) below
    answered = []
    for (key, sample), request in zip(batch, requests):
        try:
            answered.append(((key, sample), engine.run_batch([request])[0]))
        except EngineError as exc:
            where = f"sample {sample.sample_id} ({', '.join(map(str, request.inputs))})"
            if on_error == "raise":
                raise EvalError(f"{where}: {exc}") from exc
            warnings.warn(f"skipped {where}: {exc}", RuntimeWarning, stacklevel=2)
            skipped.append({"stage": "predict", "id": sample.sample_id,
                            "inputs": [str(i) for i in request.inputs], "error": str(exc)})
    return answered


def _record(key: Key, sample: Sample, result: Result, run: dict) -> dict:
    return {"id": sample.sample_id, "benchmark": key[0], **run, "kind": sample.kind.value,
            "instruction": sample.instruction, "prediction": result.answer, "clue_text": result.clue,
            "references": sample.references, "meta": sample.meta, "timings": result.timings}


def _meta(rec: dict, field: str):
    if field not in rec["meta"]:
        raise EvalError(f"prediction {rec['id']} ({rec['benchmark']}): its sample meta has no "
                        f"{field!r}, needed to score it")
    return rec["meta"][field]


def _references(rec: dict) -> list[str]:
    if not rec["references"]:
        raise EvalError(f"prediction {rec['id']} ({rec['benchmark']}): its sample has no reference answer")
    return rec["references"]


def score_predictions(records: Iterable[dict]) -> dict:
    """Scores per benchmark present: "rsvqa" (VQA accuracy), "levir-cc" (captions), "era" (classes)."""
    groups: dict[str, dict[str, dict]] = {b: {} for b in BENCHMARKS}
    for rec in records:
        groups[rec["benchmark"]][rec["id"]] = rec
    out = {}
    if groups["rsvqa"]:
        g = groups["rsvqa"]
        out["rsvqa"] = vqa_accuracy({i: r["prediction"] for i, r in g.items()},
                                    {i: _references(r)[0] for i, r in g.items()},
                                    {i: _meta(r, "question_type") for i, r in g.items()})
    if groups["levir-cc"]:
        g = groups["levir-cc"]
        out["levir-cc"] = scores_by_change({i: r["prediction"] for i, r in g.items()},
                                           {i: _references(r) for i, r in g.items()},
                                           {i: _meta(r, "changeflag") for i, r in g.items()})
    if groups["era"]:
        g = groups["era"]
        out["era"] = classification_report(
            {i: prompts.match_class(r["prediction"], prompts.ERA_CLASSES) for i, r in g.items()},
            {i: _meta(r, "class") for i, r in g.items()}, prompts.ERA_CLASSES)
    return out
