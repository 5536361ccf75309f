"""An archive manifest: the dated mosaic pairs of `unirs review-archive`, from CSV or JSON. No rasterio here.

CSV: a header row, then one pair per row. JSON: a list of objects, or {"pairs": [...]}. Keys:
`before`, `after` (paths, relative to the manifest's folder, or GDAL URLs such as /vsicurl/https://...),
optional `name` (the pair's GeoPackage is <out>/<name>.gpkg; default <before>_<after> file stems),
`date_before`, `date_after` (ISO dates) and `extent` ("left,bottom,right,top" in the grid CRS).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .job import ReviewError, ReviewJob, absolute_source

KEYS = ("name", "before", "after", "date_before", "date_after", "extent")


@dataclass(frozen=True)
class ArchivePair:
    name: str
    before: str
    after: str
    date_before: str | None = None
    date_after: str | None = None
    extent: tuple[float, float, float, float] | None = None

    def job(self, out_dir: str | os.PathLike, **options) -> ReviewJob:
        """This pair's review: the archive's shared options, its own inputs, dates, extent and output."""
        return ReviewJob(self.before, self.after, str(Path(out_dir) / f"{self.name}.gpkg"),
                         date_before=self.date_before, date_after=self.date_after, extent=self.extent, **options)


def read_manifest(path: str | os.PathLike) -> list[ArchivePair]:
    """The pairs of a CSV or JSON manifest, checked: ReviewError naming the row and key of the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewError(f"{path}: cannot read the manifest ({exc})") from None
    rows = _json_rows(path, text) if path.suffix.lower() == ".json" else _csv_rows(path, text)
    if not rows:
        raise ReviewError(f"{path}: the manifest lists no pairs")
    pairs = [_pair(path, where, row) for where, row in rows]
    seen: dict[str, str] = {}
    for (where, _), pair in zip(rows, pairs):
        if pair.name in seen:
            raise ReviewError(f"{path}: {seen[pair.name]} and {where} both write {pair.name}.gpkg; "
                              "give them different names")
        seen[pair.name] = where
    return pairs


def _json_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReviewError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("pairs")
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ReviewError(f"{path}: a JSON manifest is a list of pair objects, or {{\"pairs\": [...]}}")
    return [(f"pair {number}", row) for number, row in enumerate(data, start=1)]


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))   # a quoted cell may hold a line break
    missing = [key for key in ("before", "after") if key not in (reader.fieldnames or [])]
    if missing:
        raise ReviewError(f"{path}: the CSV header must name the columns before and after "
                          f"(missing {', '.join(missing)}); found {reader.fieldnames}")
    # line_num: the row's line in the file (blank lines are skipped); empty cells are absent keys
    return [(f"line {reader.line_num}", {k: v for k, v in row.items() if v not in ("", None)}) for row in reader]


def _pair(path: Path, label: str, row: dict) -> ArchivePair:
    where = f"{path}: {label}"
    unknown = sorted(set(row) - set(KEYS))
    if unknown:
        raise ReviewError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(KEYS)})")
    for key in ("before", "after"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ReviewError(f"{where}: {key} must be a raster path or GDAL URL, got {row.get(key)!r}")
    before, after = (_source(path, row[key].strip()) for key in ("before", "after"))
    name = row.get("name") or f"{_stem(before)}_{_stem(after)}"
    safe = re.sub(r"[^\w.-]+", "_", str(name)).strip("._")
    if not safe:
        raise ReviewError(f"{where}: name {name!r} leaves no file name")
    pair = dict(name=safe, before=before, after=after, date_before=row.get("date_before"),
                date_after=row.get("date_after"), extent=_extent(where, row.get("extent")))
    try:   # the dates and extent are checked as a review checks them
        ArchivePair(**pair).job(path.parent)
    except ReviewError as exc:
        raise ReviewError(f"{where}: {str(exc).removeprefix('bad review job: ')}") from None
    return ArchivePair(**pair)


def _source(manifest: Path, text: str) -> str:
    """A GDAL URL as given; a path relative to the manifest's folder made absolute."""
    if text.startswith("/vsi") or "://" in text:
        return text
    return absolute_source(manifest.parent / Path(text).expanduser())


def _stem(source: str) -> str:
    return Path(source.rstrip("/").split("?")[0]).stem or "mosaic"


def _extent(where: str, value) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 4:
        raise ReviewError(f"{where}: extent must be left,bottom,right,top (4 numbers), got {value!r}")
    return numbers
