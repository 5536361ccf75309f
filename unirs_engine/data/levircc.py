"""LEVIR-CC change captioning (Liu et al.): Karpathy-style `LevirCCcaptions.json` + image pairs.

Layout: `LevirCCcaptions.json` {"images": [{"filename", "filepath", "split", "changeflag", "imgid",
"sentences": [{"raw": " the scene is the same as before .", ...} x5]}]} and
`images/{filepath}/{A,B}/{filename}` (A before, B after).
"""

from __future__ import annotations

from pathlib import Path

from .. import prompts
from ..types import InputKind, Sample
from .records import DataError, check_on_error, read_json, report, require_file

CAPTIONS_FILE = "LevirCCcaptions.json"


def read_levircc(root: str | Path, split: str = "test", *, on_error: str = "raise",
                 instruction: str = prompts.CHANGE_DESCRIBE_INSTRUCTION) -> list[Sample]:
    """One PAIR sample per image pair of `split`; references = its captions, cleaned."""
    check_on_error(on_error)
    root = Path(root)
    source = root / CAPTIONS_FILE
    data = read_json(source)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(source, "expected an object with an 'images' list")
    samples = []
    for n, rec in enumerate(data["images"]):
        if not isinstance(rec, dict) or rec.get("split") != split:
            continue
        try:
            samples.append(_sample(rec, n, source, root, instruction))
        except DataError as exc:
            report(exc, on_error)
    return samples


def clean_caption(raw: str) -> str:
    """' the scene is the same as before .' -> 'the scene is the same as before'."""
    return raw.strip().removesuffix(".").strip()


def _sample(rec: dict, n: int, source: Path, root: Path, instruction: str) -> Sample:
    record = f"#{n} ({rec.get('filename')})"
    for key in ("filename", "filepath", "changeflag", "sentences"):
        if key not in rec:
            raise DataError(source, f"pair has no {key!r}", record)
    refs = [clean_caption(s["raw"]) for s in rec["sentences"] if isinstance(s, dict) and s.get("raw")]
    if not refs:
        raise DataError(source, "pair has no caption ('raw' sentences)", record)
    folder = root / "images" / rec["filepath"]
    before = require_file(folder / "A" / rec["filename"], source, record, "before image")
    after = require_file(folder / "B" / rec["filename"], source, record, "after image")
    return Sample(
        sample_id=Path(rec["filename"]).stem,
        kind=InputKind.PAIR,
        images=[before, after],
        instruction=instruction,
        references=refs,
        meta={"benchmark": "levir-cc", "changeflag": int(rec["changeflag"]), "split": rec["split"],
              "imgid": rec.get("imgid")},
    )
