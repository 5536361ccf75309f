"""temp_files.py: layer exports are the user's only (folder 0700, files 0600), and the folders of
QGIS processes that are gone are swept at the next start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from osgeo import gdal
from qgis.core import QgsRasterLayer

from unirs_engine.testing.rasters import pattern, write_raster
from unirs_qgis import temp_files
from unirs_qgis.layer_source import raster_path_for_engine

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX modes and process probes")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_an_export_is_private_even_under_a_permissive_umask(tmp_path):
    gdal.Translate("/vsimem/private_scene.tif", str(write_raster(tmp_path / "s.tif", pattern(32, 32, seed=1))))
    old_umask = os.umask(0o022)            # GDAL alone would write the export 0644
    try:
        path, temporary = raster_path_for_engine(QgsRasterLayer("/vsimem/private_scene.tif", "s"), None, None)
    finally:
        os.umask(old_umask)
        gdal.Unlink("/vsimem/private_scene.tif")
    try:
        assert temporary
        assert Path(path).parent == Path(temp_files.private_temp_dir())
        assert mode(path) == 0o600
        assert mode(Path(path).parent) == 0o700 and mode(Path(path).parent.parent) == 0o700
        assert Path(path).parent.name == f"qgis-{os.getpid()}"
    finally:
        os.remove(path)


def test_a_loosened_user_folder_is_made_private_again():
    root = Path(temp_files.private_temp_dir()).parent
    os.chmod(root, 0o755)
    temp_files.private_temp_dir()
    assert mode(root) == 0o700


def test_sweep_removes_folders_of_ended_processes_only():
    root = Path(temp_files.private_temp_dir()).parent
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    gone = root / f"qgis-{int(ended.stdout)}"          # a QGIS killed with its export still there
    (gone / "layer_x.tif").parent.mkdir()
    (gone / "layer_x.tif").write_bytes(b"left behind")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    running = root / f"qgis-{alive.pid}"
    running.mkdir()
    unrelated = root / "notes"
    unrelated.mkdir()
    try:
        assert temp_files.sweep_stale() == 1
        assert not gone.exists()
        assert running.is_dir() and unrelated.is_dir() and Path(temp_files.private_temp_dir()).is_dir()
    finally:
        alive.kill()
        alive.wait()
        for folder in (running, unrelated):
            folder.rmdir()


def test_a_link_in_place_of_the_user_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(temp_files.tempfile, "gettempdir", lambda: str(tmp_path))
    user_folder = Path(temp_files._user_root())
    user_folder.rmdir()
    user_folder.symlink_to(tmp_path)                  # someone else's folder could be behind it
    with pytest.raises(temp_files.TempFolderError, match="is not a folder"):
        temp_files.private_temp_dir()
