"""The engine's runtime without QGIS: one list of requirements, which Python runs the engine (the
documented order), the setup's refusals, and the "Test engine" check through real subprocesses.
The full build of a managed environment is tested end to end in tests/e2e/test_engine_setup.py."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from unirs_engine.runtime import paths, requirements
from unirs_engine.runtime.check import run_check
from unirs_engine.runtime.environment import (ENV_VARIABLE, EngineNotSetUp, EnvRecord, ManagedEnvironment,
                                              clean_env, missing_modules, resolve_engine_python)
from unirs_engine.runtime.installer import SetupError, _exclusive, setup_engine

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))
SYSTEM_PYTHON = "/usr/bin/python3"   # Debian's: rasterio yes, torch no


def normalised(lines) -> set[str]:
    return {str(Requirement(line)) for line in lines}


def test_the_package_metadata_is_read_from_the_shipped_requirement_files():
    declared = importlib.metadata.requires("unirs")
    runtime = {r for r in declared if "extra ==" not in r}
    assert normalised(runtime) == normalised(requirements.read("runtime"))
    for extra in ("eval", "train", "test"):
        of_extra = {r.split(";")[0].strip() for r in declared if f'extra == "{extra}"' in r}
        assert normalised(of_extra) == normalised(requirements.read(extra)), extra
    assert "qtpy" not in {requirements.distribution(r) for r in requirements.read()}  # never imported
    assert requirements.modules()["google.protobuf"] == "protobuf" and requirements.modules()["PIL"] == "pillow"


def fake_python(folder: Path) -> Path:
    python = paths.venv_python(folder)
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text("")
    return python


def record_for(env_dir: Path, requirements_hash: str = "") -> EnvRecord:
    return EnvRecord(env_dir=str(env_dir), fingerprint="f", requirements_hash=requirements_hash,
                     python_version="3.11", torch_version="2.13.0+cpu", torch_variant="cpu", cuda=None,
                     device="cpu", torch_index_url="", base_python="/usr/bin/python3", created="now",
                     seconds=1.0, size_mb=1.0)


def test_the_engine_python_is_resolved_in_the_documented_order(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VARIABLE, raising=False)
    home = tmp_path / "home"
    from_setting, from_env = fake_python(tmp_path / "setting"), fake_python(tmp_path / "env")
    managed = ManagedEnvironment(home)
    managed.write_record(record_for(tmp_path / "managed"))
    managed_python = fake_python(tmp_path / "managed")
    monkeypatch.setenv(ENV_VARIABLE, str(from_env))

    assert resolve_engine_python(str(from_setting), home).source == "setting"
    assert resolve_engine_python("", home).python == str(from_env)
    monkeypatch.delenv(ENV_VARIABLE)
    found = resolve_engine_python(None, home)
    assert (found.python, found.source) == (str(managed_python), "managed environment")
    managed.record_path.unlink()
    if paths.is_repository_checkout() and VENV_PYTHON.exists():   # this checkout's .venv, last
        assert resolve_engine_python(None, home).source == "repository .venv"
    monkeypatch.setattr(paths, "is_repository_checkout", lambda: False)   # as installed from the zip
    with pytest.raises(EngineNotSetUp, match=r"^the UniRS engine is not set up: set up the engine: Raster ▸ UniRS ▸ "
                                             r"Set up engine… \(headless: qgis_process.bin run unirs:setup_engine\)$"):
        resolve_engine_python(None, home)   # never the first python3 on PATH
    with pytest.raises(EngineNotSetUp, match="named by the Worker Python setting does not exist: .*nowhere"):
        resolve_engine_python(str(tmp_path / "nowhere"), home)


def test_an_environment_built_for_other_requirements_is_outdated(tmp_path):
    env = ManagedEnvironment(tmp_path)
    assert not env.outdated()   # none yet: nothing to update
    env.write_record(record_for(tmp_path / "e", requirements.fingerprint(requirements.read())))
    assert not env.outdated()
    env.write_record(record_for(tmp_path / "e", "built-for-an-older-plugin"))
    assert env.outdated()


def wrapper(tmp_path: Path, fails_on: str) -> str:
    """A python3 as Debian's without python3-venv: it runs, but where `fails_on` is in its arguments it
    fails the way Debian's does (the reason over several lines, the failing command last)."""
    script = tmp_path / "python3"
    script.write_text("#!/bin/sh\n"
                      f'case "$*" in *"{fails_on}"*) cat >&2 <<EOF\n'
                      "The virtual environment was not created successfully because ensurepip is not\n"
                      "available.  On Debian/Ubuntu systems, you need to install the python3-venv\n"
                      "package using the following command.\n\n    apt install python3.11-venv\n\n"
                      "You may need to use sudo with that command.\n\nFailing command: $0\nEOF\n"
                      "exit 1;; esac\n"
                      f'exec {SYSTEM_PYTHON} "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("fails_on", ["ensurepip", "-m venv"])
def test_a_base_python_without_venv_gets_a_clear_message(tmp_path, fails_on):
    home = tmp_path / "home"
    with pytest.raises(SetupError, match=r"cannot create a virtual environment \(its venv/ensurepip module is "
                                         r"missing\): install it, on Debian/Ubuntu `sudo apt install python3-venv`"):
        setup_engine(home=home, base_python=wrapper(tmp_path, fails_on), log=lambda line: None)
    env = ManagedEnvironment(home)
    assert env.record() is None and not any(env.envs.glob("*"))   # nothing half-built is left


def test_only_one_setup_runs_at_a_time(tmp_path):
    env = ManagedEnvironment(tmp_path)
    env.root.mkdir(parents=True)
    with _exclusive(env.root / "setup.lock"):
        with pytest.raises(SetupError, match="another UniRS engine setup is running"):
            setup_engine(home=tmp_path, log=lambda line: None)


@pytest.mark.skipif(subprocess.run([SYSTEM_PYTHON, "-c", "import torch"], capture_output=True).returncode == 0,
                    reason=f"{SYSTEM_PYTHON} has torch")
def test_the_check_names_a_missing_module_and_the_fix():
    assert "torch" in missing_modules(SYSTEM_PYTHON)
    report = run_check(SYSTEM_PYTHON)
    assert report["ok"] is False
    assert report["problem"].startswith(f"the engine's Python ({SYSTEM_PYTHON}) has no module 'torch': set up the "
                                        "engine: Raster ▸ UniRS ▸ Set up engine…")


def test_the_check_answers_with_a_real_checkpoint(tiny_checkpoint):
    assert missing_modules(PYTHON) == []
    report = run_check(PYTHON, model_dir=str(tiny_checkpoint), device="cpu")
    assert report["ok"] is True, report
    assert report["model_id"] == "unirs-tiny" and report["device"] == "cpu" and report["torch"].startswith("2.")
    assert isinstance(report["answer"], str) and report["ask_s"] >= 0 and "gpu" not in report


def test_the_check_says_when_a_folder_is_not_a_checkpoint(tmp_path):
    report = run_check(PYTHON, model_dir=str(tmp_path), device="cpu")
    assert report["ok"] is False
    assert report["problem"].startswith("could not load the model: ") and "config.json" in report["problem"]
    assert "Model directory" in report["problem"]


@pytest.mark.skipif(subprocess.run([SYSTEM_PYTHON, "-c", "import torch"], capture_output=True).returncode == 0,
                    reason=f"{SYSTEM_PYTHON} has torch")
def test_in_process_mode_without_torch_says_so(tmp_path):
    """QGIS's own Python (here Debian's, as QGIS uses it) without torch, in in-process mode."""
    code = ("from unirs_engine.worker.client import EngineUnavailable, InProcessClient\n"
            "try:\n    InProcessClient().info()\n"
            "except EngineUnavailable as exc:\n    print(exc)\n")
    done = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, text=True, env=clean_env(),
                          cwd=tmp_path, timeout=60)
    assert done.stdout.startswith("in-process mode needs torch and the engine's other modules in QGIS's own "
                                  f"Python ({SYSTEM_PYTHON}), which lacks 'torch': set Engine mode to subprocess")
    assert "Traceback" not in done.stderr


def test_per_user_folders_follow_unirs_home(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIRS_HOME", str(tmp_path / "h"))
    assert paths.unirs_home() == tmp_path / "h" and paths.cache_dir() == tmp_path / "h" / "cache"
    assert ManagedEnvironment().root == tmp_path / "h" / "engine"
    monkeypatch.delenv("UNIRS_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert paths.unirs_home() == tmp_path / "data" / "unirs"
    assert not str(paths.unirs_home()).startswith(str(paths.PLUGIN_ROOT))   # survives plugin updates
