"""The base VLM's clue (paper Table II) for every sample of a dataset, for training with clues.

A clue is written exactly as the engine writes it at inference (`--clue --clue-model DIR`): the
same reading, the same Table II prompt without task tag (a pair as two slots, VILA's multi-image
input), the same greedy decoding; so the clues seen in training and at evaluation come from one path.
Output: JSON lines {"id": sample_id, "clue": text}, appended batch by batch; a rerun skips the ids
already written (a torn last line from a killed run is dropped and redone).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .. import prompts
from ..engine import Engine, EngineError, Request
from ..errors import UnirsError
from ..jsonlines import read_finished
from ..stages import clue_item, generate
from ..types import InputKind, Sample
from .data import sample_label


class ClueError(UnirsError, RuntimeError):
    """Clues that cannot be written; the message names the sample or the file."""


def read_clue_ids(path: str | Path) -> set[str]:
    """Ids already in a clue file; an unfinished last line (a killed run) is cut off with a warning."""
    return set(read_finished(path, lambda record: str(record["id"]), lambda where, why: ClueError(
        f"{where}: not a clue record ({why}); expected {{\"id\": ..., \"clue\": ...}}")))


def clue_request(sample: Sample) -> Request:
    """The request whose clue the engine would write for `sample`."""
    inputs = [sample.video] if sample.kind is InputKind.SEQUENCE and sample.video else list(sample.images)
    return Request(sample.kind, inputs, prompts.CLUE_PROMPTS[sample.kind], clue=True)


def write_clues(engine: Engine, samples: Sequence[Sample], out: str | Path, *, batch_size: int = 8,
                progress: bool = True) -> int:
    """Append the clue of every sample not yet in `out` (clues by `engine.clue_model`); returns how
    many records were added. Samples on the same input (RSVQA: several questions per image) share
    one generated clue."""
    if engine.clue_model is None:
        raise ClueError("no clue model loaded: build the engine with clue_model=the base VLM")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_clue_ids(out)
    by_input: dict[tuple, list[Sample]] = {}
    for s in samples:
        if s.sample_id not in done:
            request = clue_request(s)
            by_input.setdefault((request.kind, tuple(map(str, request.inputs))), []).append(s)
    groups = list(by_input.values())
    written = 0
    with out.open("a", encoding="utf-8") as f, \
            tqdm(total=sum(map(len, groups)), unit="sample", desc="clues", disable=not progress) as bar:
        for start in range(0, len(groups), batch_size):
            batch = groups[start:start + batch_size]
            for group, clue in zip(batch, _generate_clues(engine, [g[0] for g in batch])):
                for s in group:
                    f.write(json.dumps({"id": s.sample_id, "clue": clue}, ensure_ascii=False) + "\n")
                written += len(group)
                bar.update(len(group))
            f.flush()
    return written


def _generate_clues(engine: Engine, samples: list[Sample]) -> list[str]:
    """One generate call for the clues of `samples`, read and prompted as the engine's clues are."""
    base = engine.clue_model
    items = []
    for s in samples:
        request = clue_request(s)
        try:
            chips = engine.read(request)
        except EngineError as exc:
            raise ClueError(f"{sample_label(s)}: {exc}") from exc
        items.append(clue_item(s.kind, engine.encode(chips, base)))          # features (N, P, D)
    return generate(base, items, engine.max_new_tokens)
