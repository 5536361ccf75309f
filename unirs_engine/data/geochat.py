"""GeoChat / LLaVA-style instruction data: a JSON list of conversations about one image each.

Record: {"id", "image": "rel/path.jpg", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}, ...]}. Each human/gpt turn becomes one Sample (meta "turn");
a trainer that wants the whole dialogue in one sequence can join the turns of one "image_id".
"""

from __future__ import annotations

from pathlib import Path

from .. import prompts
from ..types import InputKind, Sample
from .records import DataError, check_on_error, read_json, report, require_file


def read_geochat(root: str | Path, split: str = "train", *, on_error: str = "raise",
                 annotations: str | Path | None = None, image_folder: str | Path | None = None
                 ) -> list[Sample]:
    """IMAGE samples, one per turn.

    `annotations`: the JSON file (default `<root>/<split>.json`; a root that is a .json file is
    used as is). `image_folder`: where "image" paths start (default: the annotation file's folder).
    """
    check_on_error(on_error)
    root = Path(root)
    source = root if root.suffix == ".json" else root / (annotations or f"{split}.json")
    images = Path(image_folder) if image_folder else source.parent
    data = read_json(source)
    if not isinstance(data, list):
        raise DataError(source, "expected a list of conversation records")
    samples = []
    for n, rec in enumerate(data):
        try:
            samples += _turns(rec, n, source, images, split)
        except DataError as exc:
            report(exc, on_error)
    return samples


def _turns(rec: dict, n: int, source: Path, images: Path, split: str) -> list[Sample]:
    record = f"#{n} (id {rec.get('id') if isinstance(rec, dict) else None})"
    if not isinstance(rec, dict) or not rec.get("image") or not isinstance(rec.get("conversations"), list):
        raise DataError(source, "expected 'id', 'image' and a 'conversations' list", record)
    image = require_file(images / rec["image"], source, record, "image")
    conv = rec["conversations"]
    if not conv or len(conv) % 2:
        raise DataError(source, "conversations must alternate human/gpt and end with gpt", record)
    rec_id = str(rec.get("id", n))
    out = []
    for turn in range(len(conv) // 2):
        human, gpt = conv[2 * turn], conv[2 * turn + 1]
        if not (isinstance(human, dict) and isinstance(gpt, dict)
                and human.get("from") == "human" and gpt.get("from") == "gpt"
                and isinstance(human.get("value"), str) and isinstance(gpt.get("value"), str)):
            raise DataError(source, f"turn {turn} is not a human/gpt pair with text values", record)
        out.append(Sample(
            sample_id=f"{rec_id}-{turn}",
            kind=InputKind.IMAGE,
            images=[image],
            instruction=human["value"].replace(prompts.IMAGE_TOKEN, "").strip(),
            references=[gpt["value"].strip()],
            meta={"image_id": rec_id, "turn": turn, "split": split},
        ))
    return out
