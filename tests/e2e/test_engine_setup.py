"""A new user's first hour, headless: the plugin from `pb_tool zip` in a fresh QGIS profile with no
engine configured (no UNIRS_ENGINE_PYTHON, no UNIRS_MODEL; only UNIRS_HOME points at a temp folder).
`qgis_process.bin run unirs:setup_engine` builds the managed engine environment from the package
registry, then unirs:ask and unirs:describe_change answer with the embedded demo model. Then: a rerun
is a no-op, a cancelled setup keeps the working environment, and a plugin update that changes the
requirements updates it. The tests build on each other and run in file order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import fresh_profile, qgis_process
from unirs_engine.runtime.environment import ManagedEnvironment, missing_modules
from unirs_engine.runtime.installer import SetupCancelled, setup_engine
from unirs_engine.testing.rasters import pattern, write_pair, write_raster

SETUP_TIMEOUT_S = 1500   # a fresh environment: ~1 min with local wheels, more when pip downloads
PLUGIN = Path("config/profiles/default/python/plugins/unirs")


def pip_configuration() -> dict[str, str]:
    """The tester's pip configuration (its PIP_* variables, its user pip.conf, its cache), as a user's
    QGIS would see theirs: on this machine it names the local CPU torch wheel and package mirrors."""
    pip = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    user_conf = Path.home() / ".config" / "pip" / "pip.conf"
    if user_conf.is_file() and "PIP_CONFIG_FILE" not in pip:
        pip["PIP_CONFIG_FILE"] = str(user_conf)
    pip.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))  # downloads stay bounded across runs
    return pip


@pytest.fixture(scope="module")
def new_user(tmp_path_factory) -> dict[str, str]:
    """qgis_process.bin environment of a user who just installed the zip (their pip configuration is
    the only thing of the tester's environment that comes along)."""
    return fresh_profile(tmp_path_factory.mktemp("new-user"), **pip_configuration())


def run(args: list[str], env: dict[str, str], timeout: int = 600) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = qgis_process(["run", args[0], "--json", "--", *args[1:]], env, timeout=timeout)
    return done, time.monotonic() - started


def results(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(done.stdout[done.stdout.index("{"):])["results"]


def managed(env: dict[str, str]) -> ManagedEnvironment:
    return ManagedEnvironment(env["UNIRS_HOME"])


def disk_mb(folder: str) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def test_before_setup_a_request_says_how_to_set_up(new_user, tmp_path):
    scene = write_raster(tmp_path / "scene.tif", pattern(64, 64))
    done, _ = run(["unirs:ask", f"INPUT={scene}", "QUESTION=What is this?", f"OUTPUT={tmp_path / 'a.gpkg'}"],
                  new_user)
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert ("the UniRS engine is not set up: set up the engine: Raster ▸ UniRS ▸ Set up engine… "
            "(headless: qgis_process.bin run unirs:setup_engine)") in said
    assert "Traceback" not in said and "code 2" not in said
    assert not (tmp_path / "a.gpkg").exists()


def test_setup_builds_the_environment_and_the_plugin_answers(new_user, tmp_path):
    done, seconds = run(["unirs:setup_engine"], new_user, timeout=SETUP_TIMEOUT_S)
    out = results(done)
    record = managed(new_user).record()
    assert record is not None and out["PYTHON"] == str(record.python)
    assert Path(out["PYTHON"]).is_relative_to(new_user["UNIRS_HOME"])   # never inside the plugin folder
    assert out["TORCH"].startswith("2.") and out["DEVICE"] == "cpu" and record.torch_variant == "cpu"
    assert missing_modules(record.python) == []
    assert "UniRS engine environment built in" in done.stdout
    print(f"\nfresh setup: {seconds:.0f} s wall (setup itself {record.seconds:.0f} s), "
          f"{disk_mb(record.env_dir):.0f} MB on disk")

    scene = write_raster(tmp_path / "scene.tif", pattern(64, 64))
    answer = results(run(["unirs:ask", f"INPUT={scene}", "QUESTION=Is there a water area?",
                          f"OUTPUT={tmp_path / 'ask.gpkg'}"], new_user)[0])
    assert Path(answer["OUTPUT"]).exists()
    before, after = write_pair(tmp_path / "pair")
    change = results(run(["unirs:describe_change", f"BEFORE={before}", f"AFTER={after}",
                          f"OUTPUT={tmp_path / 'change.gpkg'}"], new_user)[0])
    assert Path(change["OUTPUT"]).exists()

    from qgis.core import QgsVectorLayer

    for path, column in ((answer["OUTPUT"], "answer"), (change["OUTPUT"], "caption")):
        (feature,) = QgsVectorLayer(path, "out", "ogr").getFeatures()
        assert feature[column] and feature["model"] == "unirs-demo"   # the embedded demo model answered


def test_a_second_setup_is_a_no_op(new_user):
    before = managed(new_user).record()
    done, seconds = run(["unirs:setup_engine"], new_user)
    assert results(done)["PYTHON"] == str(before.python)
    assert "already up to date" in done.stdout and managed(new_user).record() == before
    print(f"\nno-op setup: {seconds:.1f} s wall, qgis_process start included")


def test_check_only_tests_the_engine_end_to_end(new_user):
    out = results(run(["unirs:setup_engine", "CHECK_ONLY=true"], new_user)[0])
    assert out["PYTHON"] == str(managed(new_user).record().python)
    assert out["DEVICE"] == "cpu" and out["TORCH"].startswith("2.")


def test_a_cancelled_setup_keeps_the_working_environment(new_user):
    env = managed(new_user)
    before = env.record()
    lines: list[str] = []
    with pytest.raises(SetupCancelled, match="previous environment is unchanged"):
        setup_engine(home=new_user["UNIRS_HOME"], force=True, log=lines.append,
                     is_cancelled=lambda: any(line.startswith("Collecting") for line in lines))
    assert env.record() == before and missing_modules(before.python) == []
    assert [p.name for p in env.envs.iterdir()] == [Path(before.env_dir).name]   # the half-built one is gone


def test_a_plugin_update_that_changes_the_requirements_updates_the_environment(new_user, tmp_path):
    requirements = Path(new_user["HOME"]) / PLUGIN / "unirs_engine" / "requirements" / "runtime.txt"
    requirements.write_text(requirements.read_text() + "filelock\n")   # as a new plugin version might
    env = managed(new_user)
    before = env.record()
    done, seconds = run(["unirs:setup_engine"], new_user, timeout=SETUP_TIMEOUT_S)
    after = env.record()
    assert results(done)["PYTHON"] == str(after.python) != str(before.python)
    assert after.requirements_hash != before.requirements_hash and not Path(before.env_dir).exists()
    print(f"\nupdate after a requirements change: {seconds:.0f} s wall")
    scene = write_raster(tmp_path / "scene.tif", pattern(32, 32))
    results(run(["unirs:ask", f"INPUT={scene}", "QUESTION=Is there a road?", f"OUTPUT={tmp_path / 'a.gpkg'}"],
                new_user)[0])
    shutil.rmtree(env.root, ignore_errors=True)   # 1.3 GB: not kept past the test
