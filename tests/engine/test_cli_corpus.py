"""The `unirs` command line on bad and unusual input (issue 21), run as the user runs it: a subprocess.

Every case must end with its exit status and one line on stderr naming the problem (progress bars
aside): no traceback, no answer about nothing on stdout, no file left behind. Inputs are small
GDAL-written rasters; the model is the tiny test checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from unirs_engine.data.synthetic.mosaic import write_mosaic_pair
from unirs_engine.testing.rasters import pattern, write_raster

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300
LONG_ARGV_QUESTION = "How many buildings are there? " * 4_000     # 120,000 characters: argv's limit is 128 KiB
LONG_QUESTION = "How many buildings are there? " * 6_667         # ~200,000 characters, in a batch line
# tqdm's bars (model loading, batches, tiles) share stderr with the message: drop them, up to the end
# of their timing block, e.g. "review:  50%|#####| 8/16 [00:00<00:00, 54.41tile/s]".
PROGRESS = re.compile(r"[^\r\n]*\[\d+:\d\d[<,][^\]\r\n]*\]")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Case:
    id: str
    argv: list[str]                  # after `unirs`; "{name}" is replaced by the corpus path `name`
    returncode: int
    message: str                     # regex the one stderr line must match (case-insensitive)
    stdout: list[str] = field(default_factory=list)  # regexes of stdout lines, in this order (none: empty)
    leaves: set[str] = field(default_factory=set)     # files the case may add under the corpus folder
    run: Callable[[dict, list[str]], Run] | None = None   # default: the command, to its end
    model: bool = True               # add --model TINY


def _message_lines(stderr: str) -> list[str]:
    text = PROGRESS.sub("", stderr)
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def _env(corpus: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "UNIRS_MODEL"}
    return {**env, "UNIRS_HOME": str(corpus["home"]), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}   # no CUDA here, even on a GPU runner


def _command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "unirs_engine.cli", *argv]


def _run(corpus: dict, argv: list[str]) -> Run:
    done = subprocess.run(_command(argv), cwd=corpus["cwd"], env=_env(corpus), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    return Run(done.returncode, done.stdout, done.stderr)


def _interrupt_during_load(corpus: dict, argv: list[str]) -> Run:
    """Ctrl-C once the process maps libtorch: it is then inside main(), loading the engine."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc to see the process load torch")
    # A shell runs background jobs (`cmd &`, as CI may run this suite) with SIGINT ignored, and a
    # child inherits that: Python then installs no KeyboardInterrupt handler. A terminal's Ctrl-C
    # reaches a process whose SIGINT is the default one: give the child that.
    proc = subprocess.Popen(_command(argv), cwd=corpus["cwd"], env=_env(corpus), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text():
                break
        except OSError:
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "the command ended before it loaded torch"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    return Run(proc.returncode, stdout, stderr)


def _second_review_while_one_writes(corpus: dict, argv: list[str]) -> Run:
    """Start a review, freeze it (SIGSTOP) while it holds --out, run the same review: the second is
    the case's result; the first must then finish as if alone."""
    out = corpus["root"] / "busy.gpkg"
    lock = out.with_name(f".{out.name}.lock")
    first = subprocess.Popen(_command(argv), cwd=corpus["cwd"], env=_env(corpus), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while first.poll() is None and not (out.exists() and lock.exists()) and time.monotonic() < deadline:
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None and lock.exists(), "the first review ended before the second started"
        second = _run(corpus, argv)
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=TIMEOUT_S)
    assert first.returncode == 0 and stdout.startswith("review done: 64/64 tiles"), stderr[-2000:]
    assert not lock.exists()
    return second


def _read_only_folder(corpus: dict, argv: list[str]) -> Run:
    folder = corpus["root"] / "read-only"
    if os.access(folder, os.W_OK):   # root writes anywhere: the case "under a file" covers root
        pytest.skip("this user can write into a 0555 folder (root)")
    return _run(corpus, argv)


REVIEW = ["review", "{before}", "{after}", "--tile-size", "16", "--caption-all", "--batch-size", "2",
          "--device", "cpu"]
NO_DATA = r"have data|no data|nodata"

CASES = [
    # -- one input that cannot be answered
    Case("missing file", ["ask", "{root}/missing.tif", "-q", "How many?"], 2, r"missing\.tif.*no such file"),
    Case("directory", ["ask", "{directory}", "-q", "How many?"], 2, r"folder\.tif.*directory"),
    Case("0-byte file", ["ask", "{empty}", "-q", "How many?"], 2, r"empty\.tif.*empty"),
    Case("text named .tif", ["ask", "{text}", "-q", "How many?"], 2, r"text\.tif.*not a raster"),
    Case("all-nodata raster", ["ask", "{nodata}", "-q", "How many buildings?"], 2, rf"nodata\.tif.*({NO_DATA})"),
    Case("all-NaN raster", ["ask", "{nan}", "-q", "How many buildings?"], 2, rf"nan\.tif.*({NO_DATA})"),
    Case("pair sharing 4 valid pixels", ["change", "{good128}", "{four}"], 2, rf"four\.tif.*({NO_DATA})"),
    Case("pair whose after is all nodata", ["change", "{good128}", "{empty_after}"], 2,
         rf"empty_after\.tif.*({NO_DATA})"),
    Case("one-frame stack", ["classify", "{good}"], 2, r"\b1\b.*frame|frame.*\b1\b"),
    Case("120k-character question", ["ask", "{good}", "-q", LONG_ARGV_QUESTION], 2, r"question.*tokens"),
    # -- options out of range: argparse refuses them before anything loads
    Case("--max-new-tokens 0", ["ask", "{good}", "-q", "How many?", "--max-new-tokens", "0"], 2,
         r"^unirs ask: error: argument --max-new-tokens: must be at least 1, got 0"),
    Case("--batch-size 0", ["ask", "{good}", "-q", "How many?", "--batch-size", "0"], 2,
         r"^unirs ask: error: argument --batch-size: must be at least 1, got 0"),
    Case("--frames 0", ["classify", "{good}", "{good}", "--frames", "0"], 2,
         r"^unirs classify: error: argument --frames: must be at least 1, got 0"),
    # -- setup the machine or the model cannot do
    Case("--device cuda without CUDA", ["ask", "{good}", "-q", "How many?", "--device", "cuda"], 2, r"cuda"),
    Case("--dtype int8", ["ask", "{good}", "-q", "How many?", "--dtype", "int8"], 2, r"dtype.*int8|int8.*dtype"),
    Case("--bounds-crs EPSG:999999", ["ask", "{good}", "-q", "How many?", "--bounds", "0", "0", "1", "1",
                                      "--bounds-crs", "EPSG:999999"], 2, r"CRS.*EPSG:999999|EPSG:999999.*CRS"),
    Case("info on a missing file", ["info", "{root}/missing.tif"], 2, r"missing\.tif.*no such file"),
    Case("info on a text file", ["info", "{text}"], 2, r"text\.tif.*not a raster"),
    # -- batch: the file itself, then lines
    Case("batch: missing file", ["batch", "{root}/missing.jsonl"], 2, r"missing\.jsonl.*no such file"),
    Case("batch: not UTF-8", ["batch", "{latin1}"], 2, r"latin1\.jsonl.*not UTF-8"),
    Case("batch: no requests", ["batch", "{blank}"], 2, r"blank\.jsonl.*no requests"),
    Case("batch: bad lines among good ones", ["batch", "{mixed}"], 1,
         r"^unirs batch: 4 of 6 requests failed \(lines 2, 4, 5, 6\)$",
         stdout=[r"^\[line 1: .*good\.tif\] ", r"^\[line 2\] error: not valid JSON",
                 r"^\[line 4\] error: inputs must be a list of file paths",
                 r"^\[line 5\] error: .*missing\.tif.*no such file", r"^\[line 6\] error: .*tokens",
                 r"^\[line 7: .*good\.tif\] "]),
    Case("batch --json: unknown key", ["batch", "{unknown_key}", "--json"], 1,
         r"^unirs batch: 1 of 2 requests failed \(line 2\)$",
         stdout=[r'^\{"line": 1, "task": "ask", "answer": ',
                 r'^\{"line": 2, "error": "unknown key \'foo\' \(known: kind, inputs, instruction, .*\)"\}$']),
    # -- review output that cannot be written
    Case("review --out under a file", [*REVIEW, "--out", "{a_file}/review.gpkg"], 2,
         r"^unirs review: error: cannot write .*a_file/review\.gpkg \(.*a_file is a file, not a folder\)$"),
    Case("review --out in a read-only folder", [*REVIEW, "--out", "{root}/read-only/review.gpkg"], 2,
         r"cannot write .*read-only/review\.gpkg.*permission denied", run=_read_only_folder),
    Case("two reviews on one --out", [*REVIEW, "--out", "{root}/busy.gpkg"], 2,
         r"^unirs review: error: another review is writing .*busy\.gpkg", leaves={"busy.gpkg"},
         run=_second_review_while_one_writes),
    # -- Ctrl-C
    Case("Ctrl-C during model load", ["ask", "{good}", "-q", "How many?"], 130, r"^unirs ask: interrupted$",
         run=_interrupt_during_load),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_checkpoint) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    good = pattern(64, 64)                                                     # (3, 64, 64) uint8
    four = np.zeros((3, 128, 128), np.uint8)
    four[:, 60:62, 60:62] = 200                                                 # 4 of 16,384 pixels hold data
    paths = {
        "good": write_raster(root / "good.tif", good),
        "good128": write_raster(root / "good128.tif", pattern(128, 128, seed=1)),
        "nodata": write_raster(root / "nodata.tif", np.zeros((3, 64, 64), np.uint8), nodata=0),
        "nan": write_raster(root / "nan.tif", np.full((3, 64, 64), np.nan, np.float32)),
        "four": write_raster(root / "four.tif", four, nodata=0),
        "empty_after": write_raster(root / "empty_after.tif", np.zeros((3, 128, 128), np.uint8), nodata=0),
        "directory": root / "folder.tif",
        "empty": root / "empty.tif",
        "text": root / "text.tif",
        "a_file": root / "a_file",
        "latin1": root / "latin1.jsonl",
        "blank": root / "blank.jsonl",
        "mixed": root / "mixed.jsonl",
        "unknown_key": root / "unknown_key.jsonl",
    }
    paths["directory"].mkdir()
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("this is not a raster\n")
    paths["a_file"].write_text("a file where a folder is expected\n")
    ask = {"kind": "image", "inputs": [str(paths["good"])], "instruction": "How many buildings are there?"}
    latin1 = json.dumps({**ask, "instruction": "Wie viele Gebäude?"}, ensure_ascii=False).encode("latin-1")
    paths["latin1"].write_bytes(latin1)
    paths["blank"].write_text("\n  \n")
    paths["mixed"].write_text("\n".join([
        json.dumps(ask),                                                        # 1 answered
        '{"kind": "image", "inputs": [',                                        # 2 not JSON
        "",                                                                     # 3 blank: skipped
        json.dumps({**ask, "inputs": str(paths["good"])}),                      # 4 a string, not a list
        json.dumps({**ask, "inputs": [str(root / "missing.tif")]}),             # 5 no such file
        json.dumps({**ask, "instruction": LONG_QUESTION}),                      # 6 longer than the context
        json.dumps({**ask, "instruction": "Is there a road?"}),                 # 7 answered
    ]) + "\n")
    paths["unknown_key"].write_text(json.dumps(ask) + "\n" + json.dumps({**ask, "foo": 1}) + "\n")
    before, after = write_mosaic_pair(root / "mosaics", size=128, tile=64, seed=1)
    read_only = root / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    home, cwd = root / "home", root / "cwd"
    home.mkdir()
    cwd.mkdir()
    return {**{k: str(v) for k, v in paths.items()}, "root": root, "home": home, "cwd": cwd,
            "before": str(before), "after": str(after), "model": str(tiny_checkpoint)}


def _files(root: Path) -> set[str]:
    """Files under the corpus folder, but UNIRS_HOME's (logs, caches are its business)."""
    rel = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return {str(r) for r in rel if r.parts[0] != "home"}


@pytest.mark.parametrize("case", CASES, ids=[re.sub(r"[^\w.]+", "-", c.id).strip("-") for c in CASES])
def test_cli_corpus(case: Case, corpus: dict):
    argv = [a.format(**corpus) for a in case.argv] + (["--model", corpus["model"]] if case.model else [])
    before = _files(corpus["root"])
    result = (case.run or _run)(corpus, argv)

    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = _message_lines(result.stderr)
    assert len(lines) == 1, f"stderr is not one line: {lines}"
    assert re.search(case.message, lines[0], re.IGNORECASE), lines[0]
    assert result.returncode == case.returncode, lines[0]
    if not case.stdout:
        assert result.stdout == ""                                               # no answer about nothing
    at = 0
    for expected in case.stdout:   # in order; a gibberish answer may hold line breaks of its own
        found = re.compile(expected, re.MULTILINE).search(result.stdout, at)
        assert found, f"no line matching {expected!r} after {result.stdout[:at][-300:]!r}"
        at = found.end()
    assert _files(corpus["root"]) - before == case.leaves                       # no stray output
