"""Which Python runs the engine, and the managed engine environment's record.

Resolution order (first that is set wins; the plugin's settings show which one did):
  1. the plugin setting "Worker Python" (or a `python=` argument)
  2. the environment variable UNIRS_ENGINE_PYTHON
  3. the managed engine environment (UNIRS_HOME/engine, built by `unirs:setup_engine`)
  4. in a repository checkout only: the checkout's .venv
Never silently the first `python3` on PATH: without any of these the engine is "not set up".

The managed environment lives in UNIRS_HOME/engine: envs/<name>/ are virtual environments and
current.json records the one in use. A setup builds a new env beside the old one and then replaces
current.json, so a failed or cancelled setup leaves the previous environment working.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..atomic import write_atomic
from ..errors import UnirsError

from . import paths, requirements

ENV_VARIABLE = "UNIRS_ENGINE_PYTHON"
NOT_SET_UP = f"the UniRS engine is not set up: {requirements.SETUP_HINT}"
# The engine's processes (worker, check, pip) get only these variables of the QGIS process: names,
# and name prefixes. Everything else stays behind: QGIS's Python/GDAL/PROJ/Qt settings (GDAL_SKIP,
# PROJ_LIB, PYTHONPATH... would make another Python read QGIS's data or skip drivers) and whatever
# secrets the parent holds. GDAL_DATA/PROJ_DATA are not needed: rasterio's wheels carry their own and a
# system GDAL finds its compiled-in paths.
ALLOWED_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "USERNAME", "LANG", "LANGUAGE", "TZ",    # who and where
    "TMPDIR", "TEMP", "TMP",                                                     # temp folders
    "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR",    # unirs_home(), pip's config
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",         # thread settings
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",                        # the user's network, for pip
    "http_proxy", "https_proxy", "all_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    # Windows: what Python, sockets, torch and paths.py need to work at all.
    "SYSTEMROOT", "SYSTEMDRIVE", "WINDIR", "COMSPEC", "PATHEXT", "USERPROFILE", "HOMEDRIVE", "HOMEPATH",
    "APPDATA", "LOCALAPPDATA", "PROGRAMDATA", "PROGRAMFILES", "NUMBER_OF_PROCESSORS",
    "PROCESSOR_ARCHITECTURE",
)
ALLOWED_ENV_PREFIXES = (
    "LC_",                                                       # locale
    "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "ROCM_", "HSA_", "PYTORCH_",  # GPUs and torch's allocator
    "MKL_", "KMP_",                                              # thread settings of MKL / Intel OpenMP
    "PIP_",                                                      # the user's pip configuration
    "UNIRS_",                                                    # ours
)
# Names the user adds to the allow-list, comma-separated (e.g. LD_LIBRARY_PATH for a GPU driver
# installed off the usual paths).
EXTRA_ENV_VARIABLE = "UNIRS_WORKER_ENV"

class EngineNotSetUp(UnirsError, RuntimeError):
    """No Python to run the engine was found; str() says what to do."""


@dataclass
class EnvRecord:
    """What a setup installed (UNIRS_HOME/engine/current.json)."""

    env_dir: str
    fingerprint: str              # requirements + torch source + base python: a change means rebuild
    requirements_hash: str        # the requirements alone: a plugin update that changes them -> "update"
    python_version: str
    torch_version: str
    torch_variant: str            # "cpu" | "cuda"
    cuda: str | None              # torch.version.cuda, None for a CPU build
    device: str                   # what torch found at setup: "cpu" or "cuda:0 (<GPU name>)"
    torch_index_url: str          # where torch came from ("" = the user's pip index)
    base_python: str
    created: str                  # ISO time
    seconds: float                # how long the setup took
    size_mb: float                # disk size of env_dir

    @property
    def python(self) -> Path:
        return paths.venv_python(Path(self.env_dir))

    @classmethod
    def from_dict(cls, data: dict) -> EnvRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


class ManagedEnvironment:
    """The managed engine environment under `home` (default: UNIRS_HOME or the user's data folder)."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.root = Path(home or paths.unirs_home()) / "engine"
        self.envs = self.root / "envs"
        self.record_path = self.root / "current.json"

    def record(self) -> EnvRecord | None:
        """The environment in use, or None when there is none (or its record is unreadable)."""
        try:
            return EnvRecord.from_dict(json.loads(self.record_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def python(self) -> Path | None:
        record = self.record()
        return record.python if record is not None and record.python.exists() else None

    def outdated(self) -> bool:
        """The plugin's requirements changed since the current environment was built."""
        record = self.record()
        return record is not None and record.requirements_hash != requirements.fingerprint(requirements.read())

    def write_record(self, record: EnvRecord) -> None:
        """Replace current.json in one step (a reader sees the old record or the new one)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.record_path, json.dumps(record.to_dict(), indent=2))


def is_managed_python(python: str | os.PathLike) -> bool:
    """True when `python` is the managed engine environment's interpreter."""
    managed = ManagedEnvironment().python()
    return managed is not None and Path(python).resolve() == managed.resolve()


@dataclass
class EnginePython:
    python: str
    source: str                   # "setting" | ENV_VARIABLE | "managed environment" | "repository .venv"

    def describe(self) -> str:
        return f"{self.python} ({self.source})"


def resolve_engine_python(setting: str | None = None, home: str | os.PathLike | None = None) -> EnginePython:
    """The Python that runs the engine, by the documented order; EngineNotSetUp when there is none."""
    for value, source in ((setting, "setting"), (os.environ.get(ENV_VARIABLE), ENV_VARIABLE)):
        if value:
            if not Path(value).is_file():
                named_by = "the Worker Python setting" if source == "setting" else source
                raise EngineNotSetUp(f"the engine Python named by {named_by} does not exist: {value}")
            return EnginePython(str(value), source)
    managed = ManagedEnvironment(home).python()
    if managed is not None:
        return EnginePython(str(managed), "managed environment")
    repo_venv = paths.venv_python(paths.PLUGIN_ROOT / ".venv")
    if paths.is_repository_checkout() and repo_venv.exists():
        return EnginePython(str(repo_venv), "repository .venv")
    raise EngineNotSetUp(NOT_SET_UP)


def clean_env(base: dict[str, str] | None = None, *, engine_importable: bool = True) -> dict[str, str]:
    """The environment of every process that runs the engine's Python (the worker, the engine check, the
    setup's pip): only the variables of `base` (default os.environ) named in ALLOWED_ENV, or starting
    with one of ALLOWED_ENV_PREFIXES, or listed in UNIRS_WORKER_ENV (comma-separated names); then
    PYTHONIOENCODING=utf-8, PYTHONUNBUFFERED=1 and, with `engine_importable`, PYTHONPATH = the plugin
    folder (so `-m unirs_engine.worker` imports this engine). An allow-list, not a deny-list: a
    variable of the QGIS process (GDAL_SKIP, PROJ_LIB, a token) cannot change or reach the engine."""
    base = os.environ if base is None else base
    extra = {name.strip() for name in base.get(EXTRA_ENV_VARIABLE, "").split(",") if name.strip()}
    env = {k: v for k, v in base.items()
           if k in ALLOWED_ENV or k.startswith(ALLOWED_ENV_PREFIXES) or k in extra}
    env.update(PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
    if engine_importable:
        env["PYTHONPATH"] = str(paths.PLUGIN_ROOT)
    return env

def missing_modules(python: str | os.PathLike) -> list[str] | None:
    """The runtime modules `python` cannot find (found, not imported: fast); None when it cannot run."""
    code = ("import importlib.util, sys\n"
            "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m.split('.')[0]) is None))")
    try:
        done = subprocess.run([os.fspath(python), "-c", code, *requirements.modules()], capture_output=True,
                              text=True, timeout=60, env=clean_env(engine_importable=False),
                              creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.split() if done.returncode == 0 else None
