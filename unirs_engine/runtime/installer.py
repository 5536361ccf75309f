"""Builds the managed engine environment: a virtual environment under UNIRS_HOME/engine/envs/, made
from a Python that can build one, then `pip install` of the engine's runtime requirements (torch
first, from the source that fits this machine). Never installs into QGIS's own Python.

A setup whose requirements, torch source and Python are those of the current environment is a
no-op. Otherwise the new environment is built beside the old one and only then made current, so a
failed or cancelled setup leaves the previous environment working. One setup runs at a time.
The engine code itself is not copied: it runs from the plugin folder (the worker's PYTHONPATH, and a
`unirs.pth` for terminal use), so a plugin update whose requirements did not change needs no setup.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import UnirsError

from . import paths, requirements
from .environment import EnvRecord, ManagedEnvironment, clean_env, missing_modules

# The CPU build of torch for Linux (PyPI's Linux wheel bundles CUDA: ~3 GB more on a machine without
# an NVIDIA GPU). Used when reachable; otherwise torch comes from the user's pip index.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MIN_PYTHON = (3, 10)
PIP_FLAGS = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--prefer-binary"]

Log = Callable[[str], None]
Progress = Callable[[float, str], None]
IsCancelled = Callable[[], bool]


class SetupError(UnirsError, RuntimeError):
    """The setup failed; str() is one line saying why and what to do. The previous environment (if
    any) is unchanged. `output`: what the failed command printed, when one did."""

    def __init__(self, message: str, output: list[str] | None = None):
        super().__init__(message)
        self.output = output or []


class SetupCancelled(SetupError):
    """is_cancelled() turned True; the previous environment (if any) is unchanged."""


@dataclass
class SetupOutcome:
    record: EnvRecord
    changed: bool                 # False: the environment was already up to date (no-op)
    seconds: float

    def summary(self) -> str:
        r = self.record
        verb = "built" if self.changed else "already up to date"
        return (f"UniRS engine environment {verb} in {self.seconds:.0f} s: python {r.python_version} "
                f"({r.python}), torch {r.torch_version}, device {r.device}, {r.size_mb:.0f} MB")


# ---- what to build --------------------------------------------------------------------------------

def default_base_python() -> str:
    """The Python of the running interpreter's installation (QGIS's bundled Python on Windows and
    macOS, the system python3 on Linux): it matches QGIS and is never a virtual environment."""
    base = Path(sys.base_prefix)
    candidates = [base / "python.exe", base / "python3.exe"] if os.name == "nt" else [
        base / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}", base / "bin" / "python3"]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return shutil.which("python3") or shutil.which("python") or "python3"


def check_base_python(python: str) -> str:
    """'3.11' when `python` can build a virtual environment, else SetupError naming what to install."""
    code = "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                              env=clean_env(engine_importable=False))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"cannot run the Python that builds the engine environment ({python}): {exc}; "
                         "choose another base Python") from exc
    if done.returncode != 0:
        if "venv" in done.stderr or "ensurepip" in done.stderr:
            raise SetupError(_no_venv_message(python))
        raise SetupError(f"the Python at {python} failed: {_last_line(done.stderr)}")
    version = done.stdout.strip()
    if tuple(int(v) for v in version.split(".")) < MIN_PYTHON:
        raise SetupError(f"the Python at {python} is {version}; the engine needs "
                         f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer")
    return version


def _no_venv_message(python: str) -> str:
    return (f"the Python at {python} cannot create a virtual environment (its venv/ensurepip module is "
            "missing): install it, on Debian/Ubuntu `sudo apt install python3-venv`, then set up again")


def detect_nvidia_gpu() -> str | None:
    """The first NVIDIA GPU's name from nvidia-smi, or None (no driver, no GPU)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return names[0] if done.returncode == 0 and names else None


def reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # DNS, refused, proxy, TLS, HTTP error: all mean "not usable from here"
        return False


def torch_index(setting: str, gpu: str | None, log: Log) -> str:
    """The index torch is installed from: the user's setting, else the CPU wheel index on Linux
    without an NVIDIA GPU when it can be reached, else "" (the user's pip configuration)."""
    if setting:
        return setting
    if gpu is None and sys.platform.startswith("linux"):
        if reachable(TORCH_CPU_INDEX + "/"):
            return TORCH_CPU_INDEX
        log(f"{TORCH_CPU_INDEX} cannot be reached: torch comes from your pip index "
            "(set a torch index URL in the UniRS settings for a mirror)")
    if gpu is not None and os.name == "nt":
        log("PyPI's torch for Windows has no CUDA: set a CUDA torch index URL in the UniRS settings "
            "(https://download.pytorch.org/whl/ + your CUDA version) to use the GPU")
    return ""


# ---- the setup ------------------------------------------------------------------------------------

def setup_engine(*, home: str | os.PathLike | None = None, base_python: str | None = None,
                 torch_index_url: str = "", force: bool = False, log: Log = print,
                 progress: Progress | None = None, is_cancelled: IsCancelled | None = None) -> SetupOutcome:
    """Make the managed engine environment current (build it when missing or outdated)."""
    started = time.monotonic()
    progress = progress or (lambda fraction, message: None)
    is_cancelled = is_cancelled or (lambda: False)
    env = ManagedEnvironment(home)
    env.root.mkdir(parents=True, exist_ok=True)
    with _exclusive(env.root / "setup.lock"):
        progress(0.01, "checking the Python that builds the environment")
        base = base_python or default_base_python()
        version = check_base_python(base)
        gpu = detect_nvidia_gpu()
        wanted = requirements.read()
        fingerprint = requirements.fingerprint(wanted, f"torch-variant:{'cuda' if gpu else 'cpu'}",
                                               f"torch-index:{torch_index_url}", f"python:{version}")
        current = env.record()
        if current is not None and not force and current.fingerprint == fingerprint \
                and missing_modules(current.python) == []:
            progress(1.0, "already up to date")
            return SetupOutcome(current, False, time.monotonic() - started)
        log(f"building the UniRS engine environment with {base} (Python {version}); "
            f"GPU: {gpu or 'none found'}; requirements: {', '.join(wanted)}")
        _remove_leftovers(env, keep=current)
        target = env.envs / f"{time.strftime('%Y%m%d-%H%M%S')}-{fingerprint[:8]}"
        try:
            record = _build(target, base, version, wanted, fingerprint, gpu, torch_index_url,
                            log, progress, is_cancelled)
            record.seconds = round(time.monotonic() - started, 1)
            env.write_record(record)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        if current is not None and Path(current.env_dir) != target:
            shutil.rmtree(current.env_dir, ignore_errors=True)
        progress(1.0, "done")
        return SetupOutcome(record, True, time.monotonic() - started)


def _build(target: Path, base: str, version: str, wanted: list[str], fingerprint: str, gpu: str | None,
           torch_index_setting: str, log: Log, progress: Progress, is_cancelled: IsCancelled) -> EnvRecord:
    progress(0.03, "creating the virtual environment")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run([base, "-m", "venv", str(target)], log, is_cancelled)
    except SetupError as exc:  # Debian's python3 without python3-venv explains itself over several lines
        raise SetupError(_no_venv_message(base)) if any("ensurepip" in line for line in exc.output) else exc
    python = str(paths.venv_python(target))
    index = torch_index(torch_index_setting, gpu, log)
    torch_line = next(line for line in wanted if requirements.distribution(line) == "torch")
    progress(0.08, f"installing {torch_line} (the largest download)")
    _run([python, "-m", "pip", "install", *PIP_FLAGS, torch_line, *(["--index-url", index] if index else [])],
         log, is_cancelled, _pip_progress(progress, 0.08, 0.6))
    progress(0.6, "installing the other requirements")
    _run([python, "-m", "pip", "install", *PIP_FLAGS, "-r", str(requirements.REQUIREMENTS_DIR / "runtime.txt")],
         log, is_cancelled, _pip_progress(progress, 0.6, 0.92))
    progress(0.93, "checking that every module imports")
    found = _verify(python, log, is_cancelled)
    (Path(found["purelib"]) / "unirs.pth").write_text(str(paths.PLUGIN_ROOT) + "\n", encoding="utf-8")
    return EnvRecord(env_dir=str(target), fingerprint=fingerprint,
                     requirements_hash=requirements.fingerprint(wanted), python_version=version,
                     torch_version=found["torch"], torch_variant="cuda" if found["cuda"] else "cpu",
                     cuda=found["cuda"], device=found["device"], torch_index_url=index, base_python=base,
                     created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=0.0,
                     size_mb=round(_size_bytes(target) / 2**20, 1))


# Imports every runtime module in the new environment and reports torch's build and the device.
_VERIFY = """
import importlib, json, sys, sysconfig
for name in sys.argv[1:]:
    importlib.import_module(name)
import torch
cuda = torch.cuda.is_available()
device = "cuda:0 (%s)" % torch.cuda.get_device_name(0) if cuda else "cpu"
print("UNIRS-VERIFY " + json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
      "device": device, "purelib": sysconfig.get_paths()["purelib"]}))
"""


def _verify(python: str, log: Log, is_cancelled: IsCancelled) -> dict:
    lines = _run([python, "-c", _VERIFY, *requirements.modules()], log, is_cancelled)
    reports = [line for line in lines if line.startswith("UNIRS-VERIFY ")]
    if not reports:
        raise SetupError("the new environment did not report its torch build")
    return json.loads(reports[-1].split(" ", 1)[1])


def _remove_leftovers(env: ManagedEnvironment, keep: EnvRecord | None) -> None:
    """Environments of killed setups (not current) are removed before a new one is built."""
    if env.envs.is_dir():
        for child in env.envs.iterdir():
            if keep is None or child != Path(keep.env_dir):
                shutil.rmtree(child, ignore_errors=True)


def _pip_progress(progress: Progress, start: float, end: float) -> Callable[[str], None]:
    """Moves the bar through [start, end) as pip collects and installs, with pip's line as text."""
    seen = [0]

    def on_line(line: str) -> None:
        if line.startswith(("Collecting", "Downloading", "Processing", "Installing collected")):
            seen[0] += 1
            share = 0.95 if line.startswith("Installing collected") else seen[0] / (seen[0] + 10)
            progress(start + (end - start) * share, line[:120])

    return on_line


def _run(command: list[str], log: Log, is_cancelled: IsCancelled,
         on_line: Callable[[str], None] | None = None) -> list[str]:
    """Run `command`, streaming its output lines to `log`; SetupCancelled kills it (and its children)
    within a fraction of a second; a non-zero exit is a SetupError with its last error line."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, encoding="utf-8", errors="replace", bufsize=1,
                            env=clean_env(engine_importable=False), start_new_session=(os.name != "nt"),
                            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    lines: queue.Queue = queue.Queue()

    def read() -> None:  # a thread, so cancel is seen even while the command prints nothing
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    output: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        while True:
            if is_cancelled():
                _kill(proc)
                raise SetupCancelled("the engine setup was cancelled; the previous environment is unchanged")
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            line = line.rstrip()
            if line:
                output.append(line)
                tail.append(line)
                log(line)
                if on_line:
                    on_line(line)
        code = proc.wait()
    finally:
        reader.join(5.0)  # the pipe ends once the process (group) is gone
        proc.stdout.close()
    if code != 0:
        errors = [line for line in tail if line.startswith("ERROR") or "Error" in line] or list(tail)
        raise SetupError(f"{Path(command[0]).name} {' '.join(command[1:3])} failed (exit {code}): "
                         f"{errors[-1] if errors else 'no output'}", output)
    return output


def _kill(proc: subprocess.Popen) -> None:
    try:
        if os.name != "nt":
            os.killpg(proc.pid, signal.SIGKILL)  # pip's own children too
        else:
            proc.kill()
    except (OSError, ProcessLookupError):
        pass
    proc.wait()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _size_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One setup at a time (QGIS and qgis_process may both try); a second one fails at once."""
    handle = open(lock_path, "a+")
    try:
        try:
            if os.name == "nt":
                import msvcrt
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SetupError("another UniRS engine setup is running; wait for it to finish") from None
        yield
    finally:
        handle.close()  # closing releases the lock
