"""The "Test engine" check: does this Python run the engine end to end?

    python -m unirs_engine.worker --check [--model DIR] [--device D] [--json]

In the engine's Python (`check_engine`): imports every runtime module, loads the model, answers one
question on a raster it writes, and reports model id, device, GPU name and memory, and timings.
A failure names the missing module or file and the exact fix. From QGIS's side (`run_check`, no
torch): runs that command in a subprocess with the worker's clean environment and reads the report.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import requirements
from .environment import clean_env, is_managed_python

QUESTION = "Is there a water area?"
REPORT_PREFIX = "UNIRS-CHECK "


def check_engine(model_dir: str | None = None, device: str | None = None) -> dict:
    """Run the check in this process; {"ok": bool, ... "problem": one line when not ok}."""
    report: dict = {"ok": False, "python": sys.executable}
    for module in requirements.modules():
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken binary wheel (OSError, AttributeError...)
            detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({type(exc).__name__}: {exc})"
            report["problem"] = requirements.missing_module_message(
                module, sys.executable, is_managed_python(sys.executable)) + detail
            return report
    import torch

    from ..engine import Engine, default_model_dir
    from ..testing.rasters import pattern, write_raster

    report["torch"] = torch.__version__
    started = time.monotonic()
    try:
        model_path = model_dir or default_model_dir()
        engine = Engine.load(model_path, device=device)
    except Exception as exc:
        report["problem"] = (f"could not load the model: {exc}; choose a checkpoint folder "
                             "(config.json, llm/, vision_tower/, mm_projector/) in UniRS settings → Model directory")
        return report
    info = engine.info()
    report.update(model_id=info["model_id"], model_dir=info["model_dir"], device=info["device"],
                  dtype=info["dtype"], load_s=round(time.monotonic() - started, 2))
    if info["device"].startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(info["device"]))
        report.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
    with tempfile.TemporaryDirectory(prefix="unirs-check-") as folder:
        raster = write_raster(Path(folder) / "check.tif", pattern(128, 128))
        started = time.monotonic()
        try:
            result = engine.ask(str(raster), QUESTION)
        except Exception as exc:
            report["problem"] = f"the model loaded but could not answer: {type(exc).__name__}: {exc}"
            return report
    report.update(ok=True, question=QUESTION, answer=result.answer, ask_s=round(time.monotonic() - started, 2))
    return report


def summary(report: dict) -> str:
    """One or two lines for the user."""
    if not report.get("ok"):
        return f"Engine check failed: {report.get('problem', 'no report')}"
    where = f"{report['device']} ({report['gpu']}, {report['gpu_memory_gb']} GB)" if report.get("gpu") \
        else report.get("device", "?")
    return (f"Engine works: {report['model_id']} on {where}, torch {report['torch']}, python {report['python']}\n"
            f"Loaded in {report['load_s']} s; \"{report['question']}\" → \"{report['answer']}\" "
            f"in {report['ask_s']} s")


def main(model_dir: str | None, device: str | None, as_json: bool) -> int:
    """The command-line check; exit code 0 when the engine works."""
    report = check_engine(model_dir, device)
    print(REPORT_PREFIX + json.dumps(report) if as_json else summary(report), flush=True)
    return 0 if report["ok"] else 1


def run_check(python: str, *, model_dir: str | None = None, device: str | None = None,
              timeout: float = 600.0) -> dict:
    """Run the check with `python` in a worker-like subprocess (no torch here); always returns a report."""
    command = [python, "-m", "unirs_engine.worker", "--check", "--json"]
    for flag, value in (("--model", model_dir), ("--device", device)):
        if value:
            command += [flag, value]
    try:
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, env=clean_env(), cwd=tempfile.gettempdir(),
                              creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except subprocess.TimeoutExpired:
        return {"ok": False, "python": python, "problem": f"the check took longer than {timeout:g} s"}
    except OSError as exc:
        return {"ok": False, "python": python, "problem": f"cannot run {python}: {exc}"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(REPORT_PREFIX):
            return json.loads(line[len(REPORT_PREFIX):])
    # The check never ran (e.g. the plugin folder is not importable by that Python): say what it said.
    said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return {"ok": False, "python": python,
            "problem": f"{python} could not run the check (exit {done.returncode}): {said[-1] if said else 'no output'}",
            "stderr": done.stderr[-4000:]}
