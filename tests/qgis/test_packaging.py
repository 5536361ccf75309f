"""The plugin zip built by `pb_tool zip` passes a plugins.qgis.org-equivalent check, has the layout
QGIS expects, and its classFactory loads the provider from the unzipped copy."""

from __future__ import annotations

import configparser
import subprocess
import zipfile

import pytest

from tests.plugin_zip import build_plugin_zip, pb_tool_config, validate_plugin_zip


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    return build_plugin_zip(tmp_path_factory.mktemp("zip"))


def test_zip_passes_the_repository_checks(plugin_zip):
    assert validate_plugin_zip(plugin_zip) == []


def test_zip_layout_and_metadata(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as zf:
        names = set(zf.namelist())
        meta = configparser.ConfigParser()
        meta.read_string(zf.read("unirs/metadata.txt").decode())
    assert pb_tool_config()["plugin"]["name"] == "unirs"
    for required in ("unirs/__init__.py", "unirs/LICENSE", "unirs/unirs_qgis/provider.py",
                     "unirs/unirs_qgis/algorithms/ask.py", "unirs/unirs_engine/worker/__init__.py",
                     "unirs/unirs_engine/engine.py", "unirs/unirs_qgis/icons/unirs.svg",
                     "unirs/unirs_engine/requirements/runtime.txt", "unirs/unirs_engine/runtime/installer.py"):
        assert required in names
    assert not any(n.startswith(("unirs/tests/", "unirs/.venv/", "unirs/unirs.egg-info/")) for n in names)
    general = meta["general"]
    assert general["qgisMinimumVersion"] == "3.22" and general["category"] == "Raster"
    assert general.getboolean("hasProcessingProvider")
    assert "commitSha1" in general or "dateTime" in general  # pb_tool stamped the build


def test_validator_rejects_what_the_repository_rejects(plugin_zip, tmp_path):
    with zipfile.ZipFile(plugin_zip) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}

    def variant(name: str, drop=(), add=None, rename_top=None, meta_edit=None) -> list[str]:
        path = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for member, data in members.items():
                if member in drop:
                    continue
                if meta_edit and member == "unirs/metadata.txt":
                    data = meta_edit(data.decode()).encode()
                if rename_top:
                    member = rename_top + member[len("unirs"):]
                zf.writestr(member, data)
            for member, data in (add or {}).items():
                zf.writestr(member, data)
        return validate_plugin_zip(path)

    assert variant("pyc", add={"unirs/unirs_qgis/__pycache__/plugin.cpython-311.pyc": b"x"})
    assert variant("no_license", drop={"unirs/LICENSE"}) == ["missing unirs/LICENSE"]
    assert variant("two_tops", add={"other/readme.txt": b"x"})[0].startswith("expected one top-level")
    assert "top-level folder name" in variant("bad_name", rename_top="1unirs")[0]
    assert variant("so", add={"unirs/lib/fast.so": b"\x7fELF"}) == ["compiled/binary file 'unirs/lib/fast.so'"]
    assert variant("no_email", meta_edit=lambda t: t.replace("\nemail=", "\nmail=")) == [
        "metadata.txt lacks 'email'"]
    assert variant("bad_version", meta_edit=lambda t: t.replace("version=0.1.0", "version=first")) == [
        "version 'first' is not like 1.2.3"]
    assert variant("bad_url", meta_edit=lambda t: t.replace("tracker=https://", "tracker=")) == [
        "tracker is not a valid URL: 'github.com/unirs-for-qgis/unirs-for-qgis/issues'"]


def test_unzipped_plugin_loads_in_a_fresh_qgis_python(plugin_zip, tmp_path):
    """Outside this venv (Debian's python3 + QGIS), as QGIS does: import the folder as package
    `unirs`, classFactory(None), initProcessing(); the provider lists the algorithms."""
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(tmp_path / "plugins")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from qgis.core import QgsApplication\n"
        "app = QgsApplication([], False); app.initQgis()\n"
        "import unirs\n"
        "plugin = unirs.classFactory(None); plugin.initProcessing()\n"
        "import unirs_qgis, unirs_engine\n"
        "assert unirs_qgis.__file__.startswith(sys.argv[1]), unirs_qgis.__file__\n"
        "assert unirs_engine.__file__.startswith(sys.argv[1]), unirs_engine.__file__\n"
        "print(sorted(a.id() for a in QgsApplication.processingRegistry().providerById('unirs').algorithms()))\n"
        "assert 'torch' not in sys.modules and 'rasterio' not in sys.modules, 'the plugin loads no engine stack'\n"
        "plugin.unload()\n"
    )
    env = {"QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "profile")}
    out = subprocess.run(["/usr/bin/python3", "-c", script, str(tmp_path / "plugins")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "['unirs:ask', 'unirs:classify_sequence', 'unirs:describe_change', 'unirs:review_archive', 'unirs:review_changes', 'unirs:setup_engine']" in out.stdout
