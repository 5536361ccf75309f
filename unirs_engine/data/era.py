"""ERA event recognition videos (Mou et al.): `<root>/<class>/<video>.mp4` plus a split list.

Split list, first found: `<root>/split.json` = {"train": ["flood/flood_001.mp4", ...], "test": [...]}
(paths relative to root, first folder = class), else `<root>/<split>.txt` with one such path a line.
Class folders name the class with separators as "_" and any case ("Traffic_congestion",
"parade_protest" for "parade/protest"); see class_folder().
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from .. import prompts
from ..types import InputKind, Sample
from .records import DataError, check_on_error, read_json, report, require_file

SPLIT_FILE = "split.json"


def class_folder(name: str) -> str:
    """The folder name of a class: 'parade/protest' -> 'parade_protest', 'Post-Earthquake' -> 'post_earthquake'."""
    return re.sub(r"[\s_/-]+", "_", name.strip().lower())


def read_era(root: str | Path, split: str = "test", *, on_error: str = "raise",
             classes: tuple[str, ...] | list[str] = prompts.ERA_CLASSES) -> list[Sample]:
    """One SEQUENCE sample (video file) per listed video; references = [class name]."""
    check_on_error(on_error)
    root = Path(root)
    classes = tuple(classes)
    by_folder = {class_folder(c): c for c in classes}
    instruction = prompts.classify_instruction(classes)
    source, paths = _split_list(root, split)
    samples = []
    for n, rel in enumerate(paths):
        record = f"#{n} ({rel})"
        try:
            parts = PurePosixPath(rel).parts
            if len(parts) < 2:
                raise DataError(source, "expected '<class>/<video>' path", record)
            name = by_folder.get(class_folder(parts[0]))
            if name is None:
                raise DataError(source, f"unknown class folder {parts[0]!r}; "
                                        f"expected one of {', '.join(sorted(by_folder))}", record)
            video = require_file(root / rel, source, record, "video")
        except DataError as exc:
            report(exc, on_error)
            continue
        samples.append(Sample(
            sample_id=str(PurePosixPath(rel).with_suffix("")),
            kind=InputKind.SEQUENCE,
            images=[],
            video=video,
            instruction=instruction,
            references=[name],
            meta={"benchmark": "era", "class": name, "split": split},
        ))
    return samples


def _split_list(root: Path, split: str) -> tuple[Path, list[str]]:
    """(file it came from, relative video paths of `split`)."""
    json_file, text_file = root / SPLIT_FILE, root / f"{split}.txt"
    if json_file.is_file():
        data = read_json(json_file)
        if not isinstance(data, dict) or not isinstance(data.get(split), list) \
                or not all(isinstance(p, str) for p in data[split]):
            raise DataError(json_file, f"expected {{{split!r}: [relative video paths]}}")
        return json_file, data[split]
    if text_file.is_file():
        lines = text_file.read_text(encoding="utf-8").splitlines()
        return text_file, [line.strip() for line in lines if line.strip()]
    raise DataError(root, f"no split list: expected {SPLIT_FILE} or {split}.txt")
