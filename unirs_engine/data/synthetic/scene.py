"""A procedural land-cover scene: roads, buildings, water, trees, fields and bare soil on a cell grid.

Geometry lives in cell units on a GRID x GRID layout (any render size shows the same scene), so
questions and captions are derived from the object list, never from pixels. Urban scenes have
roads lined with many buildings; rural ones have fields, trees, water and few buildings.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GRID = 32                      # cells per side
Box = tuple[float, float, float, float]  # (row0, col0, row1, col1) in cells, end exclusive

# What questions count, with their singular and plural nouns.
NOUNS = {
    "building": ("building", "buildings"),
    "road": ("road", "roads"),
    "water": ("water area", "water areas"),
    "field": ("field", "fields"),
    "trees": ("group of trees", "groups of trees"),
    "bare": ("bare area", "bare areas"),
}
ROOFS = 5                      # roof colour variants (render.ROOF_COLOURS)
URBAN_MIN_BUILDINGS, RURAL_MAX_BUILDINGS = 5, 3


@dataclass
class Obj:
    """One object. `shape` says how `geom` is read:

    rect (r0, c0, r1, c1) | parts ((r0, c0, r1, c1), ...) | ellipse (cy, cx, ry, rx) |
    river (vertical, centre, amplitude, period, phase, half_width) | circles ((cy, cx, r), ...)
    """

    uid: int
    kind: str
    shape: str
    geom: tuple
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def box(self) -> Box:
        g = self.geom
        if self.shape == "rect":
            return g
        if self.shape == "parts":
            return (min(p[0] for p in g), min(p[1] for p in g), max(p[2] for p in g), max(p[3] for p in g))
        if self.shape == "ellipse":
            cy, cx, ry, rx = g
            return (cy - ry, cx - rx, cy + ry, cx + rx)
        if self.shape == "circles":
            return (min(y - r for y, _, r in g), min(x - r for _, x, r in g),
                    max(y + r for y, _, r in g), max(x + r for _, x, r in g))
        if self.shape == "river":
            vertical, centre, amp, _, _, hw = g
            lo, hi = centre - amp - hw, centre + amp + hw
            return (0, lo, GRID, hi) if vertical else (lo, 0, hi, GRID)
        raise ValueError(f"unknown shape {self.shape!r}")

    @property
    def centre(self) -> tuple[float, float]:
        r0, c0, r1, c1 = self.box
        return (r0 + r1) / 2, (c0 + c1) / 2

    def mask(self, coords: np.ndarray) -> tuple[slice, slice, np.ndarray]:
        """(rows, cols, mask): the pixels covered, on a square grid whose pixel centres sit at
        `coords` (cell units, increasing), restricted to the object's bounding window."""
        r0, c0, r1, c1 = self.box
        rs = slice(int(np.searchsorted(coords, r0)), int(np.searchsorted(coords, r1)))
        cs = slice(int(np.searchsorted(coords, c0)), int(np.searchsorted(coords, c1)))
        y, x = coords[rs][:, None], coords[cs][None, :]        # (h, 1), (1, w)
        g = self.geom
        if self.shape == "rect":
            m = np.ones((y.shape[0], x.shape[1]), bool)
        elif self.shape == "parts":
            m = np.zeros((y.shape[0], x.shape[1]), bool)
            for p0, q0, p1, q1 in g:
                m |= (y >= p0) & (y < p1) & (x >= q0) & (x < q1)
        elif self.shape == "ellipse":
            cy, cx, ry, rx = g
            m = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        elif self.shape == "circles":
            m = np.zeros((y.shape[0], x.shape[1]), bool)
            for cy, cx, r in g:
                m |= (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        else:  # river: a sine band across the scene
            vertical, centre, amp, period, phase, hw = g
            along, across = (y, x) if vertical else (x, y)
            m = np.abs(across - (centre + amp * np.sin(2 * np.pi * along / period + phase))) <= hw
        return rs, cs, m


@dataclass
class Scene:
    """A layout ("urban" | "rural"), its objects and the seed of their textures."""

    layout: str
    objects: list[Obj]
    texture_seed: int
    next_uid: int = 0

    def add(self, kind: str, shape: str, geom: tuple, **params: Any) -> Obj:
        obj = Obj(self.next_uid, kind, shape, geom, params)
        self.next_uid += 1
        self.objects.append(obj)
        return obj

    def remove(self, obj: Obj) -> None:
        self.objects = [o for o in self.objects if o.uid != obj.uid]

    def of(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o.kind == kind]

    def count(self, kind: str) -> int:
        return len(self.of(kind))

    def copy(self) -> "Scene":
        return copy.deepcopy(self)

    def occupancy(self) -> np.ndarray:
        """(GRID, GRID) bool: cells taken (bounding boxes; roads and rivers by their mask)."""
        occ = np.zeros((GRID, GRID), bool)
        cells = np.arange(GRID) + 0.5
        for o in self.objects:
            if o.shape in ("parts", "river"):
                rs, cs, m = o.mask(cells)
                occ[rs, cs] |= m
            else:
                r0, c0, r1, c1 = o.box
                occ[max(0, int(r0)):int(np.ceil(r1)), max(0, int(c0)):int(np.ceil(c1))] = True
        return occ


# --- regions: where a change happened, in words -------------------------------------------------

REGION_NAMES = {
    (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
    (1, 0): "on the left", (1, 1): "in the centre", (1, 2): "on the right",
    (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
}


def region_of(row: float, col: float) -> tuple[int, int]:
    """Which third of the scene (row, col) falls in, as (0..2, 0..2)."""
    third = GRID / 3
    return min(2, int(row // third)), min(2, int(col // third))


def region_box(region: tuple[int, int]) -> Box:
    third = GRID / 3
    i, j = region
    return (round(i * third), round(j * third), round((i + 1) * third), round((j + 1) * third))


# --- placement ------------------------------------------------------------------------------------

def is_free(occ: np.ndarray, box: Box, margin: int = 1) -> bool:
    """True when `box` lies inside the grid and no cell within `margin` of it is taken."""
    r0, c0, r1, c1 = (int(v) for v in box)
    if r0 < 0 or c0 < 0 or r1 > GRID or c1 > GRID:
        return False
    return not occ[max(0, r0 - margin):r1 + margin, max(0, c0 - margin):c1 + margin].any()


def take(occ: np.ndarray, box: Box) -> None:
    r0, c0, r1, c1 = (int(v) for v in box)
    occ[r0:r1, c0:c1] = True


def random_box(rng: np.random.Generator, occ: np.ndarray, h: int, w: int, within: Box = (0, 0, GRID, GRID),
               margin: int = 1, tries: int = 60) -> Box | None:
    """A free h x w box inside `within`, or None."""
    r0, c0, r1, c1 = (int(v) for v in within)
    if r1 - r0 < h or c1 - c0 < w:
        return None
    for _ in range(tries):
        r, c = int(rng.integers(r0, r1 - h + 1)), int(rng.integers(c0, c1 - w + 1))
        if is_free(occ, (r, c, r + h, c + w), margin):
            return (r, c, r + h, c + w)
    return None


def boxes_along_roads(rng: np.random.Generator, scene: Scene, occ: np.ndarray, n: int,
                      within: Box = (0, 0, GRID, GRID), sizes: tuple[int, int] = (2, 4)) -> list[Box]:
    """Up to `n` building boxes one cell off a road, inside `within` (taken in `occ`)."""
    wr0, wc0, wr1, wc1 = within
    roads = scene.of("road")
    found: list[Box] = []
    for _ in range(n * 25 if roads else 0):
        if len(found) == n:
            break
        part = roads[int(rng.integers(len(roads)))].geom
        r0, c0, r1, c1 = part[int(rng.integers(len(part)))]
        h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        side = rng.integers(2)
        if c1 - c0 > r1 - r0:   # horizontal road: a building above or below it
            c = int(rng.integers(max(c0, wc0), max(max(c0, wc0) + 1, min(c1, wc1) - w + 1)))
            r = r0 - 1 - h if side == 0 else r1 + 1
        else:                   # vertical road: left or right of it
            r = int(rng.integers(max(r0, wr0), max(max(r0, wr0) + 1, min(r1, wr1) - h + 1)))
            c = c0 - 1 - w if side == 0 else c1 + 1
        box = (r, c, r + h, c + w)
        if wr0 <= r and r + h <= wr1 and wc0 <= c and c + w <= wc1 and is_free(occ, box):
            take(occ, box)
            found.append(box)
    return found


def tree_crowns(rng: np.random.Generator, box: Box) -> tuple[tuple[float, float, float], ...]:
    """Round crowns scattered in `box` (about one per 2.5 cells)."""
    r0, c0, r1, c1 = box
    n = max(3, int((r1 - r0) * (c1 - c0) / 2.5))
    crowns = []
    for _ in range(n):
        r = float(rng.uniform(0.7, 1.3))
        crowns.append((float(rng.uniform(r0 + r, r1 - r)), float(rng.uniform(c0 + r, c1 - r)), r))
    return tuple(crowns)


# --- layout ---------------------------------------------------------------------------------------

def make_scene(rng: np.random.Generator, layout: str | None = None, *, need: dict[str, int] | None = None,
               reserve: Sequence[Box] = (), tries: int = 50) -> Scene:
    """A random scene. `need`: minimum object counts (e.g. {"water": 1}); `reserve`: boxes left empty."""
    need = need or {}
    for _ in range(tries):
        scene = _draw_scene(rng, layout or ("urban" if rng.random() < 0.5 else "rural"), need, reserve)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not lay out a {layout or 'random'} scene with {need} in {tries} tries")


def _draw_scene(rng: np.random.Generator, layout: str, need: dict[str, int], reserve: Sequence[Box]) -> Scene | None:
    urban = layout == "urban"
    scene = Scene(layout, [], texture_seed=int(rng.integers(2**31)))
    occ = np.zeros((GRID, GRID), bool)
    for box in reserve:
        take(occ, box)
    blocked = occ.copy()   # roads may cross roads, never a reserved box

    n_roads = max(need.get("road", 0), int(rng.integers(1, 3)) if urban else int(rng.random() < 0.5))
    _add_roads(rng, scene, occ, blocked, n_roads)
    n_water = max(need.get("water", 0), int(rng.random() < 0.3) if urban else int(rng.integers(0, 3)))
    _add_water(rng, scene, occ, n_water)
    n_buildings = max(need.get("building", 0),
                      int(rng.integers(URBAN_MIN_BUILDINGS, 10)) if urban else int(rng.integers(0, RURAL_MAX_BUILDINGS + 1)))
    near_road = boxes_along_roads(rng, scene, occ, n_buildings if urban or rng.random() < 0.7 else 0)
    for box in near_road:
        scene.add("building", "rect", box, roof=int(rng.integers(ROOFS)))
    for _ in range(n_buildings - len(near_road)):
        _add_rect(rng, scene, occ, "building", (2, 4), roof=int(rng.integers(ROOFS)))
    n_fields = max(need.get("field", 0), int(rng.integers(0, 2)) if urban else int(rng.integers(2, 6)))
    for _ in range(n_fields):
        state = "crop" if rng.random() < 0.75 else str(rng.choice(["harvested", "ploughed"]))
        _add_rect(rng, scene, occ, "field", (5, 9), state=state, rows=int(rng.integers(2)),
                  tone=int(rng.integers(3)))
    n_trees = max(need.get("trees", 0), int(rng.integers(0, 3)) if urban else int(rng.integers(0, 4)))
    for _ in range(n_trees):
        box = random_box(rng, occ, int(rng.integers(4, 8)), int(rng.integers(4, 8)))
        if box is not None:
            take(occ, box)
            scene.add("trees", "circles", tree_crowns(rng, box))
    for _ in range(int(rng.integers(0, 2)) if urban else int(rng.integers(0, 3))):
        _add_rect(rng, scene, occ, "bare", (4, 8), tone=int(rng.integers(3)))

    counts_ok = all(scene.count(k) >= n for k, n in need.items())
    layout_ok = (scene.count("building") >= URBAN_MIN_BUILDINGS and scene.count("road") >= 1) if urban \
        else scene.count("building") <= RURAL_MAX_BUILDINGS
    return scene if counts_ok and layout_ok else None


def _add_rect(rng: np.random.Generator, scene: Scene, occ: np.ndarray, kind: str, sizes: tuple[int, int],
              **params: Any) -> Obj | None:
    box = random_box(rng, occ, int(rng.integers(sizes[0], sizes[1] + 1)), int(rng.integers(sizes[0], sizes[1] + 1)))
    if box is None:
        return None
    take(occ, box)
    return scene.add(kind, "rect", box, **params)


def road_parts(rng: np.random.Generator, vertical: bool, at: int, l_shape: bool) -> tuple[Box, ...]:
    """A straight road two cells wide across the scene at row/col `at`, or an L bending at a random point."""
    straight = (0, at, GRID, at + 2) if vertical else (at, 0, at + 2, GRID)
    if not l_shape:
        return (straight,)
    bend = int(rng.integers(6, GRID - 8))
    if vertical:  # vertical from the top down to `bend`, then horizontal to the left or right edge
        leg = (bend, 0, bend + 2, at + 2) if rng.random() < 0.5 else (bend, at, bend + 2, GRID)
        return ((0, at, bend + 2, at + 2), leg)
    leg = (0, bend, at + 2, bend + 2) if rng.random() < 0.5 else (at, bend, GRID, bend + 2)
    return ((at, 0, at + 2, bend + 2), leg)


def _add_roads(rng: np.random.Generator, scene: Scene, occ: np.ndarray, blocked: np.ndarray, n: int) -> None:
    cells = np.arange(GRID) + 0.5
    first_vertical = bool(rng.random() < 0.5)
    for i in range(n):
        vertical = first_vertical if i == 0 else (not first_vertical if rng.random() < 0.6 else first_vertical)
        for _ in range(20):
            at = int(rng.integers(3, GRID - 5))
            parts = road_parts(rng, vertical, at, l_shape=n == 1 and rng.random() < 0.3)
            probe = Obj(-1, "road", "parts", parts)
            rs, cs, m = probe.mask(cells)
            near_parallel = any(o.geom[0][1 if vertical else 0] in range(at - 8, at + 9)
                                for o in scene.of("road") if _is_vertical(o.geom[0]) == vertical)
            if not (blocked[rs, cs] & m).any() and not near_parallel:
                occ[rs, cs] |= m
                scene.add("road", "parts", parts)
                break


def _is_vertical(part: Box) -> bool:
    return part[2] - part[0] > part[3] - part[1]


def _add_water(rng: np.random.Generator, scene: Scene, occ: np.ndarray, n: int) -> None:
    cells = np.arange(GRID) + 0.5
    for _ in range(n):
        if not scene.of("road") and not scene.of("water") and rng.random() < 0.35:
            vertical = int(rng.integers(2))
            geom = (vertical, float(rng.uniform(8, GRID - 8)), float(rng.uniform(1, 3)),
                    float(rng.uniform(20, 40)), float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(1.3, 2.2)))
            river = Obj(-1, "water", "river", geom)
            rs, cs, m = river.mask(cells)
            if not (occ[rs, cs] & m).any():
                occ[rs, cs] |= m
                scene.add("water", "river", geom, name="river")
                continue
        box = random_box(rng, occ, int(rng.integers(6, 12)), int(rng.integers(6, 12)))
        if box is not None:
            take(occ, box)
            r0, c0, r1, c1 = box
            scene.add("water", "ellipse", ((r0 + r1) / 2, (c0 + c1) / 2, (r1 - r0) / 2, (c1 - c0) / 2), name="lake")
