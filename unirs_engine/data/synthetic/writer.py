"""Write the synthetic benchmark in exactly the formats the readers read.

out/rsvqa    RSVQA-LR files (LR_split_{split}_{images,questions,answers}.json, Images_LR/{id}.tif)
out/levircc  LevirCCcaptions.json + images/{split}/{A,B}/{split}_NNNNNN.tif
out/era      <class folder>/<name>.mp4 + split.json; a quarter of the videos (static camera) also
             as a dated GeoTIFF stack in stacks/<name>/frame_NN.tif
out/manifest.json  seed, options, counts, version
out/landcover.json the land-cover classes of the per-picture fractions written beside the RSVQA
             images, both dates of the pairs and the videos (per frame) (<folder>/landcover/<stem>.npy,
             landcover.py), and the kinds of the pictures' object counts (<image folder>/counts/<stem>.npy,
             object_counts.py)

Every item draws from its own generator seeded by (seed, stream, index), so a seed gives the same
benchmark byte for byte in its JSON files. The benchmark is built in a temporary sibling folder
and moved into place at the end: a killed run leaves no half-written benchmark behind.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..era import SPLIT_FILE, class_folder
from ..levircc import CAPTIONS_FILE
from .captions import change_captions
from .events import NO_CHANGE, make_pair, random_event
from .landcover import CLASSES, FOLDER, SCALE, write_landcover, write_video_landcover
from .object_counts import COUNTED, write_counts
from .object_counts import FOLDER as COUNTS_FOLDER
from .questions import scene_questions
from .render import finish, random_georef, render, write_geotiff
from .scene import GRID, make_scene
from .video import FPS, N_FRAMES, VIDEO_CLASSES, video_frames, write_mp4

VERSION = 1
SPLITS = ("train", "val", "test")
_IMAGES, _PAIRS, _VIDEOS, _SPLIT_STREAM = range(4)   # seed streams
STACK_EVERY = 4                                       # every 4th video also as a GeoTIFF stack


def write_benchmark(out_dir: str | Path, *, seed: int, n_images: int, n_pairs: int, n_videos: int,
                    size: int = 256, splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
                    progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Write the benchmark to `out_dir`; returns its manifest."""
    out = Path(out_dir)
    _check_options(out, n_images, n_pairs, n_videos, size, splits, overwrite)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    video_size = min(256, max(64, size // 2)) // 2 * 2
    try:
        with tqdm(total=n_images + n_pairs + n_videos, unit="item", disable=not progress,
                  file=sys.stderr, desc="synth") as bar:
            counts = {
                "rsvqa": _write_rsvqa(tmp / "rsvqa", seed, n_images, size, splits, bar),
                "levircc": _write_levircc(tmp / "levircc", seed, n_pairs, size, splits, bar),
                "era": _write_era(tmp / "era", seed, n_videos, video_size, splits, bar),
            }
        manifest = {
            "version": VERSION, "generator": "unirs_engine.data.synthetic", "seed": seed,
            "options": {"size": size, "video_size": video_size, "video_frames": N_FRAMES, "fps": FPS,
                        "splits": dict(zip(SPLITS, splits)), "n_images": n_images, "n_pairs": n_pairs,
                        "n_videos": n_videos},
            "counts": counts,
        }
        _write_json(tmp / "manifest.json", manifest, indent=2)
        _write_json(tmp / "landcover.json", {"classes": list(CLASSES), "grid": GRID, "scale": SCALE,
                                             "files": f"<image or video folder>/{FOLDER}/<stem>.npy",
                                             "counted": list(COUNTED),
                                             "count_files": f"<image folder>/{COUNTS_FOLDER}/<image stem>.npy"},
                    indent=2)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_options(out: Path, n_images: int, n_pairs: int, n_videos: int, size: int,
                   splits: tuple[float, ...], overwrite: bool) -> None:
    if min(n_images, n_pairs, n_videos) < 0:
        raise ValueError("sample counts must be >= 0")
    if size < 32 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 32, got {size}")
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1) > 1e-6:
        raise ValueError(f"splits must be three fractions (train, val, test) summing to 1, got {splits}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; remove it or pass overwrite")


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def _write_json(path: Path, data: Any, indent: int | None = None) -> None:
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def assign_splits(groups: list[Any], fractions: tuple[float, ...], rng: np.random.Generator) -> list[str]:
    """A split name per item: exact overall shares (rounded), spread evenly over each group.

    Items are ordered group by group (shuffled within), then labelled so that after k items every
    split holds as close to k * fraction as possible; each group thus gets its share too."""
    n = len(groups)
    order = sorted(range(n), key=lambda i: (str(groups[i]), rng.random()))
    given, labels = [0] * len(SPLITS), [""] * n
    for k, i in enumerate(order, 1):
        s = max(range(len(SPLITS)), key=lambda j: k * fractions[j] - given[j])
        given[s] += 1
        labels[i] = SPLITS[s]
    return labels


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


# --- RSVQA ----------------------------------------------------------------------------------------

def _write_rsvqa(root: Path, seed: int, n: int, size: int, fractions, bar) -> dict[str, Any]:
    (root / "Images_LR").mkdir(parents=True)
    layouts = ["urban" if i % 2 else "rural" for i in range(n)]
    split_of = assign_splits(layouts, fractions, _rng(seed, _SPLIT_STREAM, _IMAGES))
    files = {s: {"images": [], "questions": [], "answers": []} for s in SPLITS}
    types: Counter = Counter()
    qid = 0
    for i in range(n):
        rng = _rng(seed, _IMAGES, i)
        scene = make_scene(rng, layouts[i])
        crs, transform = random_georef(rng, size)
        image = write_geotiff(root / "Images_LR" / f"{i}.tif", finish(render(scene, size), rng), crs, transform)
        write_landcover(image, scene, size)   # no random draws: the rest of the benchmark is unchanged
        write_counts(image, scene)
        part, ids = files[split_of[i]], []
        for qtype, question, answer in scene_questions(scene, rng):
            part["questions"].append({"id": qid, "img_id": i, "type": qtype, "question": question,
                                      "answers_ids": [qid], "active": True})
            part["answers"].append({"id": qid, "question_id": qid, "answer": answer, "active": True})
            ids.append(qid)
            types[qtype] += 1
            qid += 1
        part["images"].append({"id": i, "questions_ids": ids, "active": True, "original_name": f"{i}.tif"})
        bar.update()
    for split, part in files.items():
        for key, records in part.items():
            _write_json(root / f"LR_split_{split}_{key}.json", {key: records})
    return {"images": {s: len(files[s]["images"]) for s in SPLITS},
            "questions": {s: len(files[s]["questions"]) for s in SPLITS},
            "question_types": dict(sorted(types.items()))}


# --- LEVIR-CC -------------------------------------------------------------------------------------

def _write_levircc(root: Path, seed: int, n: int, size: int, fractions, bar) -> dict[str, Any]:
    changed = [i % 2 == 1 for i in range(n)]             # half the pairs unchanged
    split_of = assign_splits(changed, fractions, _rng(seed, _SPLIT_STREAM, _PAIRS))
    for split in SPLITS:
        for side in "AB":
            (root / "images" / split / side).mkdir(parents=True)
    records, events, index_in_split = [], Counter(), Counter()
    for i in range(n):
        rng = _rng(seed, _PAIRS, i)
        before, change = make_pair(rng, random_event(rng) if changed[i] else NO_CHANGE)
        split = split_of[i]
        name = f"{split}_{index_in_split[split]:06d}.tif"
        index_in_split[split] += 1
        crs, transform = random_georef(rng, size)
        for side, scene in (("A", before), ("B", change.after)):
            image = write_geotiff(root / "images" / split / side / name, finish(render(scene, size), rng), crs, transform)
            write_landcover(image, scene, size)
            write_counts(image, scene)
        captions = change_captions(change, rng)
        records.append({
            "filename": name, "filepath": split, "split": split, "changeflag": int(changed[i]),
            "imgid": i, "event": change.event, "sentids": [5 * i + j for j in range(len(captions))],
            "sentences": [{"tokens": c.split(), "raw": f" {c} .", "imgid": i, "sentid": 5 * i + j}
                          for j, c in enumerate(captions)],
        })
        events[change.event] += 1
        bar.update()
    _write_json(root / CAPTIONS_FILE, {"images": records})
    return {"pairs": {s: index_in_split[s] for s in SPLITS}, "changed": sum(changed),
            "events": dict(sorted(events.items()))}


# --- ERA ------------------------------------------------------------------------------------------

def _write_era(root: Path, seed: int, n: int, size: int, fractions, bar) -> dict[str, Any]:
    classes = [VIDEO_CLASSES[i % len(VIDEO_CLASSES)] for i in range(n)]
    split_of = assign_splits(classes, fractions, _rng(seed, _SPLIT_STREAM, _VIDEOS))
    lists: dict[str, list[str]] = {s: [] for s in SPLITS}
    stacks = 0
    root.mkdir(parents=True)
    for i, cls in enumerate(classes):
        rng = _rng(seed, _VIDEOS, i)
        as_stack = i % STACK_EVERY == 0
        frames, covers = video_frames(rng, cls, size, pan=not as_stack)
        folder = class_folder(cls)
        name = f"{folder}_{i:05d}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_video_landcover(write_mp4(root / folder / f"{name}.mp4", frames), covers)
        lists[split_of[i]].append(f"{folder}/{name}.mp4")
        if as_stack:
            _write_stack(root / "stacks" / name, frames, rng)
            stacks += 1
        bar.update()
    _write_json(root / SPLIT_FILE, lists, indent=1)
    return {"videos": {s: len(v) for s, v in lists.items()}, "stacks": stacks,
            "classes": dict(sorted(Counter(classes).items()))}


def _write_stack(folder: Path, frames: np.ndarray, rng: np.random.Generator) -> None:
    """The frames as a dated GeoTIFF time series, one frame a day from a random date."""
    folder.mkdir(parents=True)
    crs, transform = random_georef(rng, frames.shape[1])
    start = dt.date(2018, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    for t, rgb in enumerate(frames):
        day = start + dt.timedelta(days=t)
        write_geotiff(folder / f"frame_{t:02d}.tif", rgb, crs, transform,
                      tags={"TIFFTAG_DATETIME": day.strftime("%Y:%m:%d 12:00:00"), "ACQUISITION_DATE": day.isoformat()})
