"""Short UAV-like videos of events with an ERA class: the scene evolves frame by frame.

constructing: buildings rise one after another on a bare patch (foundation, then roof);
flood: a lake or river grows; harvesting: fields turn brown row by row behind a harvester;
traffic congestion: roads packed with slow cars; fire: a burnt area with a flaming rim spreads
under a drifting smoke plume; non-event: a static scene (a car or two passing at most).
The camera may drift slowly; every frame gets the same illumination and fresh sensor noise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from .landcover import CLASSES, cell_fractions, shown_kinds
from .render import finish, illumination, render
from .scene import GRID, ROOFS, Obj, Scene, make_scene, random_box

VIDEO_CLASSES = ("constructing", "flood", "harvesting", "traffic congestion", "fire", "non-event")
N_FRAMES, FPS = 12, 4
CAR_LENGTH, CAR_WIDTH = 1.5, 0.8      # cells


def video_frames(rng: np.random.Generator, cls: str, size: int, *, n_frames: int = N_FRAMES,
                 pan: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(n_frames, size, size, 3) uint8 frames of a `cls` event (size even, for yuv420p), and their
    (n_frames, len(CLASSES), GRID, GRID) land-cover fractions (landcover.py), cells of the frame."""
    if cls not in _STATES:
        raise ValueError(f"unknown video class {cls!r}; expected one of {VIDEO_CLASSES}")
    states = _STATES[cls](rng, n_frames)
    pad = 2 * round(0.04 * size) if pan else 0           # room for the camera to drift
    start, end = rng.integers(0, pad + 1, size=(2, 2))
    gain = illumination(rng)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    covers = np.empty((n_frames, len(CLASSES), GRID, GRID), np.float32)
    for t, scene in enumerate(states):
        oy, ox = np.round(start + (end - start) * t / max(1, n_frames - 1)).astype(int)
        canvas = render(scene, size + pad)
        frames[t] = finish(canvas[oy:oy + size, ox:ox + size], rng, gain=gain, noise=2.0)
        covers[t] = cell_fractions(shown_kinds(scene, size + pad)[oy:oy + size, ox:ox + size])
    return frames, covers


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = FPS, *, near_lossless: bool = False) -> Path:
    """H.264 (MPEG-4 part 2 where PyAV lacks libx264), yuv420p, one frame per array `(N, H, W, 3)`
    uint8, H and W even. `near_lossless` keeps colours within a few levels (for tests)."""
    if "libx264" in av.codecs_available:
        codec, options = "libx264", {"crf": "1" if near_lossless else "18"}
    else:
        codec, options = "mpeg4", {"qscale": "1" if near_lossless else "3"}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())   # flush delayed frames
    return Path(path)


# --- per-class scene states, one Scene per frame ---------------------------------------------------

def _frame(base: Scene, objects: list[Obj]) -> Scene:
    return Scene(base.layout, objects, base.texture_seed, base.next_uid)


def _ramp(t: int, n: int) -> float:
    return t / max(1, n - 1)


def _constructing(rng, n):
    k, side = int(rng.integers(3, 7)), 9
    r, c = (int(v) for v in rng.integers(0, GRID - side + 1, size=2))
    patch = (r, c, r + side, c + side)
    base = make_scene(rng, reserve=[patch])
    base.add("bare", "rect", patch, tone=int(rng.integers(3)))
    local = np.zeros((GRID, GRID), bool)
    plans = []
    for t_up in np.linspace(2, n - 1, k).round().astype(int):
        box = random_box(rng, local, int(rng.integers(2, 4)), int(rng.integers(2, 4)), within=patch)
        if box is not None:
            local[box[0]:box[2], box[1]:box[3]] = True
            site = base.add("site", "rect", box)
            plans.append((int(t_up), site, Obj(site.uid, "building", "rect", box, {"roof": int(rng.integers(ROOFS))})))
    dynamic = {p[1].uid for p in plans}
    static = [o for o in base.objects if o.uid not in dynamic]
    return [_frame(base, static + [b if t >= t_up else s for t_up, s, b in plans if t >= t_up - 2])
            for t in range(n)]


def _flood(rng, n):
    base = make_scene(rng, need={"water": 1})
    water = base.of("water")[int(rng.integers(base.count("water")))]
    others = [o for o in base.objects if o.uid != water.uid]
    frames = []
    g, angle = float(rng.uniform(1.6, 2.0)), float(rng.uniform(0, 2 * np.pi))
    for t in range(n):
        s = _ramp(t, n)
        if water.shape == "ellipse":
            cy, cx, ry, rx = water.geom
            f = 1 + (g - 1) * s
            geom = (cy + 0.8 * ry * (f - 1) * np.sin(angle), cx + 0.8 * rx * (f - 1) * np.cos(angle), ry * f, rx * f)
        else:
            *rest, hw = water.geom
            geom = (*rest, hw * (1 + (g + 0.6 - 1) * s))
        frames.append(_frame(base, others + [Obj(water.uid, "water", water.shape, geom, water.params)]))
    return frames


def _harvesting(rng, n):
    base = make_scene(rng, "rural", need={"field": 2})
    fields = base.of("field")
    for f in fields:
        f.params.update(state="crop", progress=0.0)
    order = [fields[i] for i in rng.permutation(len(fields))[:3]]
    moving, machine_uid = {f.uid for f in order}, base.next_uid
    frames = []
    for t in range(n):
        done = _ramp(t, n) * len(order)         # fields harvested so far, fractional
        objs = [o for o in base.objects if o.uid not in moving]
        for i, f in enumerate(order):
            progress = float(np.clip(done - i, 0, 1))
            objs.append(Obj(f.uid, "field", "rect", f.geom, {**f.params, "progress": progress}))
            if 0 < progress < 1:                # the harvester works along the front
                r0, c0, r1, c1 = f.geom
                if f.params["rows"] == 0:
                    y = r0 + progress * (r1 - r0)
                    box = (y - 0.4, (c0 + c1) / 2 - 0.8, y + 0.4, (c0 + c1) / 2 + 0.8)
                else:
                    x = c0 + progress * (c1 - c0)
                    box = ((r0 + r1) / 2 - 0.8, x - 0.4, (r0 + r1) / 2 + 0.8, x + 0.4)
                objs.append(Obj(machine_uid, "harvester", "rect", box))
        frames.append(_frame(base, objs))
    return frames


def _cars(rng, base: Scene, n: int, spacing: tuple[float, float], speed: float, max_cars: int | None):
    """Per frame, car objects driving along both lanes of every road part."""
    lanes = []
    for road in base.of("road"):
        for r0, c0, r1, c1 in road.geom:
            vertical = r1 - r0 > c1 - c0
            centre, (lo, hi) = ((c0 + c1) / 2, (r0, r1)) if vertical else ((r0 + r1) / 2, (c0, c1))
            for side in (-1, 1):
                pos = lo + float(rng.uniform(0, spacing[1]))
                while pos < hi - CAR_LENGTH:
                    lanes.append((vertical, centre + side * 0.5, pos, side, int(rng.integers(5))))
                    pos += CAR_LENGTH + float(rng.uniform(*spacing))
    if max_cars is not None:
        lanes = [lanes[i] for i in rng.permutation(len(lanes))[:max_cars]]
    uid0 = base.next_uid
    per_frame = []
    for t in range(n):
        cars = []
        for i, (vertical, across, pos, side, colour) in enumerate(lanes):
            p = pos + side * speed * t
            box = (p, across - CAR_WIDTH / 2, p + CAR_LENGTH, across + CAR_WIDTH / 2) if vertical \
                else (across - CAR_WIDTH / 2, p, across + CAR_WIDTH / 2, p + CAR_LENGTH)
            cars.append(Obj(uid0 + i, "car", "rect", box, {"colour": colour}))
        per_frame.append(cars)
    return per_frame


def _traffic_congestion(rng, n):
    base = make_scene(rng, "urban", need={"road": 1})
    cars = _cars(rng, base, n, spacing=(0.3, 0.9), speed=0.12, max_cars=None)
    return [_frame(base, base.objects + cars[t]) for t in range(n)]


def _non_event(rng, n):
    base = make_scene(rng)
    cars = _cars(rng, base, n, spacing=(6.0, 20.0), speed=0.9, max_cars=int(rng.integers(0, 3)))
    return [_frame(base, base.objects + cars[t]) for t in range(n)]


def _fire(rng, n):
    base = make_scene(rng, need={"trees": 1})
    cy, cx = base.of("trees")[int(rng.integers(base.count("trees")))].centre
    r_end = float(rng.uniform(5, 8))
    # The wind blows roughly towards the middle of the scene, so the plume stays in view.
    wind = float(np.arctan2(GRID / 2 - cy, GRID / 2 - cx) + rng.uniform(-0.8, 0.8))
    dy, dx = np.sin(wind), np.cos(wind)
    uid = base.next_uid
    frames = []
    for t in range(n):
        s = _ramp(t, n)
        r = 1.0 + (r_end - 1.0) * s
        burn = Obj(uid, "burn", "ellipse", (cy, cx, r, r * 1.15))
        puffs = []   # the plume lengthens as the fire grows and drifts downwind
        for i in range(2 + int(4 * s)):
            d = 0.5 * r + 1.6 * i + 0.25 * t
            puffs.append((cy + dy * d, cx + dx * d, 1.5 + 0.35 * i + 0.5 * s))
        frames.append(_frame(base, base.objects + [burn, Obj(uid + 1, "smoke", "circles", tuple(puffs))]))
    return frames


_STATES: dict[str, Callable[[np.random.Generator, int], list[Scene]]] = {
    "constructing": _constructing, "flood": _flood, "harvesting": _harvesting,
    "traffic congestion": _traffic_congestion, "fire": _fire, "non-event": _non_event,
}
