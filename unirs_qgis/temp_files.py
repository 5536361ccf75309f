"""A private place for the layer exports the engine reads, and the sweep of what a killed QGIS left.

Exports of map layers are the user's imagery: they go to <temp>/unirs-<user>/qgis-<pid>/, the
user's folder readable by the user only (0700) and each file 0600. A QGIS that was killed leaves
its process folder behind; the next start removes folders whose QGIS process is gone (on Windows,
where a process cannot be probed without side effects, folders older than a day).
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import stat
import tempfile
import time

from unirs_engine.errors import UnirsError

PRIVATE = 0o700
STALE_AFTER_S = 24 * 3600        # Windows only: no safe liveness probe there
_PROCESS_FOLDER = re.compile(r"^qgis-(\d+)$")


class TempFolderError(UnirsError, RuntimeError):
    """The private temporary folder cannot be made safe."""


def _user_root() -> str:
    """<temp>/unirs-<user>, created 0700; refused when another user owns it or it is a link."""
    try:
        user = re.sub(r"[^A-Za-z0-9_.-]", "_", getpass.getuser())
    except (KeyError, OSError):  # no user name (a container without passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    root = os.path.join(tempfile.gettempdir(), f"unirs-{user}")
    os.makedirs(root, mode=PRIVATE, exist_ok=True)
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise TempFolderError(f"{root} is not a folder: remove it, then try again")
    if hasattr(os, "getuid"):
        if info.st_uid != os.getuid():
            raise TempFolderError(f"{root} belongs to another user: remove it, then try again")
        if stat.S_IMODE(info.st_mode) != PRIVATE:
            os.chmod(root, PRIVATE)
    return root


def private_temp_dir() -> str:
    """This QGIS process's folder for temporary exports (created on first use, 0700)."""
    folder = os.path.join(_user_root(), f"qgis-{os.getpid()}")
    os.makedirs(folder, mode=PRIVATE, exist_ok=True)
    return folder


def make_private(path: str) -> None:
    """Files written by GDAL get the umask's mode (often 0644): only the user may read exports."""
    os.chmod(path, 0o600)


def _is_stale(folder: str, pid: int) -> bool:
    if pid == os.getpid():
        return False
    if os.name == "nt":
        return time.time() - os.path.getmtime(folder) > STALE_AFTER_S
    try:
        os.kill(pid, 0)      # signal 0 only probes: no such process -> stale
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of someone else (a reused pid): not ours to judge
        return False
    return False


def sweep_stale() -> int:
    """Remove the process folders of QGIS sessions that ended without cleaning up; how many went."""
    try:
        root = _user_root()
    except (OSError, TempFolderError):
        return 0  # nothing we may sweep; the next export reports the problem
    removed = 0
    for name in os.listdir(root):
        match = _PROCESS_FOLDER.match(name)
        folder = os.path.join(root, name)
        if match and os.path.isdir(folder) and _is_stale(folder, int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
