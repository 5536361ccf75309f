"""Build the plugin zip with the real `pb_tool zip`, and check it the way plugins.qgis.org does.

Shared by tests/qgis/test_packaging.py and the e2e tests. The validator mirrors
qgis/QGIS-Django `plugins/validator.py` (size, paths, forbidden dirs/.pyc, one top-level folder with
a valid name, __init__.py, metadata.txt [general] with the required keys, URL shape, LICENSE,
author) plus what the site checks elsewhere or we require: version format, qgisMinimumVersion,
icon present, no compiled binaries. Not covered: the site's Bandit scan and URL reachability.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
MAX_SIZE = 25_000_000  # bytes: PLUGIN_MAX_UPLOAD_SIZE of plugins.qgis.org
REQUIRED_METADATA = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about",
                     "tracker", "repository")
PLACEHOLDER_URLS = {"tracker": "http://bugs", "repository": "http://repo", "homepage": "http://homepage"}
VERSION = re.compile(r"^\d+\.\d+(\.\d+)?([-.]?(alpha|beta|rc|dev)\d*)?$")
FOLDER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-_]+$")
COMPILED = (".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib", ".exe", ".bin", ".o", ".a")
BOOLEANS = ("experimental", "deprecated", "server", "hasProcessingProvider")


def pb_tool_config() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "pb_tool.cfg")
    return cfg


def build_plugin_zip(workdir: Path) -> Path:
    """Run `pb_tool zip -q --no-docs` in a staging dir that links to the repo's files, so the build
    leaves nothing in the repo. Returns the zip path."""
    cfg = pb_tool_config()
    stage = workdir / "stage"
    stage.mkdir(parents=True)
    names = {"pb_tool.cfg", *cfg["files"]["python_files"].split(), *cfg["files"]["extras"].split(),
             *cfg["files"]["extra_dirs"].split()}
    for name in names:
        (stage / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pb_tool = Path(sys.executable).with_name("pb_tool")
    subprocess.run([str(pb_tool), "zip", "-q", "--no-docs", "-p", str(workdir / "deployed")],
                   cwd=stage, env=env, check=True, capture_output=True, timeout=120)
    return stage / f"{cfg['plugin']['name']}.zip"


def validate_plugin_zip(path: Path) -> list[str]:
    """Problems plugins.qgis.org would reject the upload for (empty list: acceptable)."""
    problems: list[str] = []
    if path.stat().st_size > MAX_SIZE:
        problems.append(f"zip is {path.stat().st_size} bytes, more than {MAX_SIZE}")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        for name in names:
            parts = name.split("/")
            if ".." in name or name.startswith("/"):
                problems.append(f"path information in {name!r}")
            if any(part in ("__MACOSX", ".git", "__pycache__") for part in parts):
                problems.append(f"forbidden directory in {name!r}")
            if name.lower().endswith(COMPILED):
                problems.append(f"compiled/binary file {name!r}")
        if zf.testzip() is not None:
            problems.append("corrupt zip member")
        tops = sorted({name.split("/")[0] for name in names})
        if len(tops) != 1:
            return problems + [f"expected one top-level folder, found {tops}"]
        top = tops[0]
        if not FOLDER_NAME.match(top):
            problems.append(f"top-level folder name {top!r} is not [A-Za-z][A-Za-z0-9-_]+")
        for required in ("__init__.py", "metadata.txt", "LICENSE"):
            if f"{top}/{required}" not in names:
                problems.append(f"missing {top}/{required}")
        if f"{top}/metadata.txt" not in names:
            return problems
        parser = configparser.ConfigParser()
        parser.optionxform = str
        parser.read_string(zf.read(f"{top}/metadata.txt").decode("utf-8"))
        if not parser.has_section("general"):
            return problems + ["metadata.txt has no [general] section"]
        meta = dict(parser.items("general"))
        problems += [f"metadata.txt lacks {key!r}" for key in REQUIRED_METADATA if not meta.get(key)]
        if not VERSION.match(meta.get("version", "")):
            problems.append(f"version {meta.get('version')!r} is not like 1.2.3")
        if not re.match(r"^\d+\.\d+(\.\d+)?$", meta.get("qgisMinimumVersion", "")):
            problems.append(f"qgisMinimumVersion {meta.get('qgisMinimumVersion')!r} is not like 3.22")
        for key, placeholder in PLACEHOLDER_URLS.items():
            url = meta.get(key)
            if url is not None:
                parsed = urlparse(url)
                if url == placeholder or not (parsed.scheme and parsed.netloc):
                    problems.append(f"{key} is not a valid URL: {url!r}")
        if "/" in meta.get("author", ""):
            problems.append("author contains a slash")
        for key in BOOLEANS:
            if key in meta and meta[key].lower() not in ("true", "false", "yes", "no", "1", "0"):
                problems.append(f"{key}={meta[key]!r} is not a boolean")
        if meta.get("icon") and f"{top}/{meta['icon'].removeprefix('./')}" not in names:
            problems.append(f"icon {meta['icon']!r} is not in the zip")
    return problems
