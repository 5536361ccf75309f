"""The engine's requirements as shipped in unirs_engine/requirements/ (the one list), and what a
missing one means for the user."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

REQUIREMENTS_DIR = Path(__file__).resolve().parents[1] / "requirements"
# Distribution name -> the module the engine imports, where they differ.
IMPORT_NAMES = {"protobuf": "google.protobuf", "pillow": "PIL"}
SETUP_HINT = ("set up the engine: Raster ▸ UniRS ▸ Set up engine… "
              "(headless: qgis_process.bin run unirs:setup_engine)")


def read(extra: str = "runtime") -> list[str]:
    """Requirement lines of requirements/<extra>.txt, comments and blanks dropped."""
    path = REQUIREMENTS_DIR / f"{extra}.txt"
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def distribution(requirement: str) -> str:
    """'affine<3' -> 'affine'."""
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower()


def modules(extra: str = "runtime") -> dict[str, str]:
    """{import name: distribution} for every requirement of `extra`."""
    dists = [distribution(r) for r in read(extra)]
    return {IMPORT_NAMES.get(d, d): d for d in dists}


def missing_here(extra: str = "runtime") -> list[str]:
    """The modules of `extra` this Python cannot find (looked up, not imported: fast)."""
    return [m for m in modules(extra) if importlib.util.find_spec(m.split(".")[0]) is None]


def fingerprint(requirements: list[str], *extra_parts: str) -> str:
    """A short hash of what an environment was built from (requirements + torch source + python)."""
    text = "\n".join(sorted(requirements) + list(extra_parts))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def missing_module_message(module: str, python: str, managed: bool) -> str:
    """One line naming the missing module and the exact fix."""
    dist = modules().get(module) or modules().get(module.split(".")[0]) or module.split(".")[0]
    if managed:
        fix = f"the managed engine environment is incomplete: {SETUP_HINT}"
    else:
        fix = f"{SETUP_HINT}; or, for a Python you manage yourself: {python} -m pip install {dist}"
    return f"the engine's Python ({python}) has no module '{module}': {fix}"

