"""Change events between two dates (Changen2's change-event simulation, done procedurally).

Each event lays out a "before" scene suited to it and returns the changed copy plus what a caption
needs: how many objects changed, in which third of the scene, and in what setting. "none" changes
nothing: the two images then differ only by illumination and sensor noise (render.finish).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .render import pixel_centres
from .scene import (GRID, ROOFS, Obj, Scene, boxes_along_roads, make_scene, random_box, region_box,
                    region_of, road_parts)

CHANGE_EVENTS = ("construction", "demolition", "road", "flood", "harvest", "trees_cut")
EVENT_WEIGHTS = (0.35, 0.15, 0.14, 0.12, 0.12, 0.12)   # LEVIR-CC is mostly about buildings
NO_CHANGE = "none"
# How many buildings a construction adds: equal shares for the words a / two / several / many.
_BUILD_COUNTS, _BUILD_P = (1, 2, 3, 4, 5, 6), (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)


@dataclass
class Change:
    event: str                          # one of CHANGE_EVENTS or NO_CHANGE
    after: Scene
    count: int = 0                      # objects that changed
    region: tuple[int, int] | None = None  # third of the scene (row, col) where it happened
    context: str | None = None          # "along the road", "on the bare land", "across the bare land"
    water: str | None = None            # "lake" | "river" (floods)


def random_event(rng: np.random.Generator) -> str:
    return str(rng.choice(CHANGE_EVENTS, p=EVENT_WEIGHTS))


def make_pair(rng: np.random.Generator, event: str, tries: int = 50) -> tuple[Scene, Change]:
    """A before scene and its Change for `event` (CHANGE_EVENTS or NO_CHANGE)."""
    if event not in _EVENTS:
        raise ValueError(f"unknown change event {event!r}; expected one of {(*CHANGE_EVENTS, NO_CHANGE)}")
    for _ in range(tries):
        pair = _EVENTS[event](rng)
        if pair is not None:
            return pair
    raise RuntimeError(f"could not simulate a {event!r} change in {tries} tries")


def _no_change(rng):
    before = make_scene(rng)
    return before, Change(NO_CHANGE, before.copy())


def _construction(rng):
    k = int(rng.choice(_BUILD_COUNTS, p=_BUILD_P))
    sizes = (3, 4) if k <= 2 else (2, 3)     # cells; one or two new buildings are bigger, to be seen
    if rng.random() < 0.5:
        before = make_scene(rng, need={"road": 1})
        after, context = before.copy(), "along the road"
        occ = before.occupancy()
        regions = [(i, j) for i in range(3) for j in range(3)]
        boxes: list = []
        for n in rng.permutation(len(regions)):
            boxes = boxes_along_roads(rng, before, occ, k, within=region_box(regions[n]), sizes=sizes)
            if boxes:
                break
    else:  # on a bare patch reserved in the before scene
        side = 5 if k == 1 else 7 if k <= 4 else 9
        r, c = (int(v) for v in rng.integers(0, GRID - side + 1, size=2))
        patch = (r, c, r + side, c + side)
        before = make_scene(rng, reserve=[patch])
        before.add("bare", "rect", patch, tone=int(rng.integers(3)))
        after, context = before.copy(), "on the bare land"
        local = np.zeros((GRID, GRID), bool)
        boxes = []
        for _ in range(k):
            box = random_box(rng, local, *(int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2)), within=patch)
            if box is not None:
                local[box[0]:box[2], box[1]:box[3]] = True
                boxes.append(box)
    if not boxes:
        return None
    for box in boxes:
        after.add("building", "rect", box, roof=int(rng.integers(ROOFS)))
    return before, Change("construction", after, len(boxes), _region_of_boxes(boxes), context)


def _demolition(rng):
    before = make_scene(rng, "urban")
    victims = _pick_group(rng, before.of("building"))
    after = before.copy()
    for obj in victims:
        after.remove(obj)
        after.add("bare", "rect", obj.geom, tone=int(rng.integers(3)))
    return before, Change("demolition", after, len(victims), _region_of_objs(victims))


def _road(rng):
    vertical = bool(rng.random() < 0.5)
    strip = road_parts(rng, vertical, int(rng.integers(3, GRID - 5)), l_shape=False)[0]
    r0, c0, r1, c1 = strip
    before = make_scene(rng, reserve=[(max(0, r0 - 1), max(0, c0 - 1), min(GRID, r1 + 1), min(GRID, c1 + 1))])
    context = None
    after = before.copy()
    if rng.random() < 0.5:   # the road is laid on a strip of bare land cleared before
        before.add("bare", "rect", strip, tone=int(rng.integers(3)))
        context = "across the bare land"
    after.add("road", "parts", (strip,))
    return before, Change("road", after, 1, region_of((r0 + r1) / 2, (c0 + c1) / 2), context)


def _flood(rng):
    before = make_scene(rng, need={"water": 1})
    water = before.of("water")[int(rng.integers(before.count("water")))]
    after = before.copy()
    grown = next(o for o in after.objects if o.uid == water.uid)
    if grown.shape == "ellipse":   # grows mostly towards one side
        cy, cx, ry, rx = grown.geom
        g, angle = float(rng.uniform(1.5, 1.9)), float(rng.uniform(0, 2 * np.pi))
        grown.geom = (cy + 0.8 * ry * (g - 1) * np.sin(angle), cx + 0.8 * rx * (g - 1) * np.cos(angle), ry * g, rx * g)
    else:                          # the river overflows its banks
        *rest, hw = grown.geom
        grown.geom = (*rest, hw * float(rng.uniform(2.0, 2.8)))
    region = _region_of_added(water, grown)
    return before, Change("flood", after, 1, region, water=water.params["name"])


def _harvest(rng):
    before = make_scene(rng, "rural", need={"field": 2})
    crops = [f for f in before.of("field") if f.params["state"] == "crop"]
    if not crops:
        return None
    fields = _pick_group(rng, crops)
    after = before.copy()
    for obj in after.objects:
        if obj.uid in {f.uid for f in fields}:
            obj.params["state"] = "harvested"
    return before, Change("harvest", after, len(fields), _region_of_objs(fields))


def _trees_cut(rng):
    before = make_scene(rng, need={"trees": 1})
    groups = _pick_group(rng, before.of("trees"))
    after = before.copy()
    for obj in groups:
        after.remove(obj)
        after.add("bare", "rect", tuple(float(v) for v in obj.box), tone=int(rng.integers(3)))
    return before, Change("trees_cut", after, len(groups), _region_of_objs(groups))


_EVENTS: dict[str, Callable] = {
    NO_CHANGE: _no_change, "construction": _construction, "demolition": _demolition, "road": _road,
    "flood": _flood, "harvest": _harvest, "trees_cut": _trees_cut,
}


def _pick_group(rng: np.random.Generator, objs: list[Obj]) -> list[Obj]:
    """Some of the objects that share one third of the scene (so the caption can say where)."""
    by_region: dict[tuple[int, int], list[Obj]] = {}
    for o in objs:
        by_region.setdefault(region_of(*o.centre), []).append(o)
    group = list(by_region.values())[int(rng.integers(len(by_region)))]
    k = int(rng.integers(1, len(group) + 1))
    return [group[i] for i in sorted(rng.choice(len(group), k, replace=False))]


def _region_of_objs(objs: list[Obj]) -> tuple[int, int]:
    return region_of(float(np.mean([o.centre[0] for o in objs])), float(np.mean([o.centre[1] for o in objs])))


def _region_of_boxes(boxes: list) -> tuple[int, int]:
    return region_of(float(np.mean([(b[0] + b[2]) / 2 for b in boxes])), float(np.mean([(b[1] + b[3]) / 2 for b in boxes])))


def _region_of_added(old: Obj, new: Obj, size: int = 64) -> tuple[int, int]:
    """The third of the scene holding the centre of the area `new` covers and `old` did not."""
    coords = pixel_centres(size)
    area = np.zeros((2, size, size), bool)
    for layer, obj in zip(area, (old, new)):
        rs, cs, m = obj.mask(coords)
        layer[rs, cs] = m
    ys, xs = np.nonzero(area[1] & ~area[0])
    return region_of(float(coords[ys].mean()), float(coords[xs].mean()))
