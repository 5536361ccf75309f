"""Render a Scene to RGB (per-class colours, mild texture, shadows) and write it as a GeoTIFF.

Textures are seeded per object (scene.texture_seed, object uid), so an object that did not change
looks the same in every image of a pair or video; only illumination and sensor noise differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import Affine

from .scene import GRID, Obj, Scene

ROOF_COLOURS = ((205, 205, 200), (170, 85, 65), (225, 212, 185), (95, 115, 150), (150, 150, 160))
FIELD_TONES = ((80, 140, 60), (100, 150, 55), (120, 160, 70))
HARVESTED, PLOUGHED = (208, 186, 100), (118, 88, 62)   # straw yellow, dark furrows
BARE_TONES = ((176, 152, 130), (186, 166, 144), (165, 142, 122))   # greyer than any field
WATER, ROAD, TREE, GRASS = (38, 68, 105), (108, 108, 112), (38, 78, 38), (96, 118, 70)
CAR_COLOURS = ((220, 35, 35), (240, 240, 240), (30, 30, 30), (35, 65, 200), (225, 205, 45))
BURNT, FLAME, SMOKE, SITE, HARVESTER = (42, 36, 32), (235, 125, 35), (205, 205, 205), (150, 142, 128), (200, 40, 30)
# Painting order: later kinds cover earlier ones.
Z_ORDER = ("field", "bare", "water", "trees", "burn", "site", "road", "building", "car", "harvester", "smoke")


def pixel_centres(size: int) -> np.ndarray:
    """Cell coordinates of the pixel centres of a size x size render."""
    return (np.arange(size) + 0.5) * GRID / size


def render(scene: Scene, size: int, *, shadows: bool = True) -> np.ndarray:
    """(size, size, 3) float32 RGB in 0..255, before illumination jitter and sensor noise."""
    coords = pixel_centres(size)
    px = size / GRID                                            # pixels per cell
    ground = np.random.default_rng([scene.texture_seed, 1_000_003])
    tint = ground.uniform(-8, 8, 3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.asarray(GRASS, np.float32) + tint
    img += smooth_noise(ground, size, 8)[..., None] * 10 + ground.normal(0, 4, (size, size, 1))
    shadow = max(1, round(0.35 * px))                           # sun from the top left
    for obj in sorted(scene.objects, key=lambda o: Z_ORDER.index(o.kind)):
        rng = np.random.default_rng([scene.texture_seed, obj.uid])
        rs, cs, m = obj.mask(coords)
        if not m.any():
            continue
        if shadows and obj.kind in ("building", "trees"):
            _shade(img, rs, cs, m, shadow)
        _PAINTERS[obj.kind](img[rs, cs], m, obj, rng, coords[rs], coords[cs], px)
    return img


def finish(img: np.ndarray, rng: np.random.Generator, *, gain: np.ndarray | None = None,
           noise: float = 3.0) -> np.ndarray:
    """Illumination (per-channel gain, drawn when not given) and sensor noise -> uint8 in 1..255
    (0 stays free for nodata)."""
    if gain is None:
        gain = illumination(rng)
    out = img * gain + rng.normal(0, noise, img.shape)
    return np.clip(out, 1, 255).astype(np.uint8)


def illumination(rng: np.random.Generator) -> np.ndarray:
    """A per-channel gain: overall brightness +-8 % and colour balance +-3 %."""
    return (rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, 3)).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) low-frequency noise in about -1..1: a cells x cells random grid, bilinear-upsampled."""
    coarse = Image.fromarray(rng.normal(0, 0.5, (cells, cells)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.BILINEAR))


# --- painters: fill `win` (a view of the image) where `m` is True ---------------------------------

def _fill(win: np.ndarray, m: np.ndarray, colour, rng: np.random.Generator, sigma: float) -> None:
    win[m] = np.asarray(colour, np.float32) + rng.normal(0, sigma, (int(m.sum()), 1))


def _shade(img: np.ndarray, rs: slice, cs: slice, m: np.ndarray, d: int) -> None:
    """Darken the object's footprint shifted `d` pixels down-right (its shadow)."""
    h, w = img.shape[:2]
    r0, c0 = rs.start + d, cs.start + d
    r1, c1 = min(h, r0 + m.shape[0]), min(w, c0 + m.shape[1])
    if r1 > r0 and c1 > c0:
        sub = m[: r1 - r0, : c1 - c0]
        img[r0:r1, c0:c1][sub] *= 0.6


def _building(win, m, obj: Obj, rng, ys, xs, px) -> None:
    colour = np.asarray(ROOF_COLOURS[obj.params.get("roof", 0)], np.float32)
    _fill(win, m, colour, rng, 3)
    r0, c0, r1, c1 = obj.box
    if c1 - c0 >= r1 - r0:   # gable roof: the half facing the sun is brighter
        lit = (ys < (r0 + r1) / 2)[:, None] & m
    else:
        lit = (xs < (c0 + c1) / 2)[None, :] & m
    win[lit] *= 1.08
    win[m & ~lit] *= 0.92
    if px >= 4:              # a darker outline one pixel wide
        edge = m.copy()
        edge[1:-1, 1:-1] = ~(m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]) & m[1:-1, 1:-1]
        win[edge] *= 0.8


def _road(win, m, obj: Obj, rng, ys, xs, px) -> None:
    _fill(win, m, ROAD, rng, 4)
    if px < 4:
        return
    for r0, c0, r1, c1 in obj.geom:   # dashed white centre line along each straight part
        if c1 - c0 > r1 - r0:
            line = (np.abs(ys - (r0 + r1) / 2) <= 0.6 / px)[:, None] & ((xs // 1.5) % 2 == 0)[None, :]
            line &= (xs >= c0)[None, :] & (xs < c1)[None, :]
        else:
            line = (np.abs(xs - (c0 + c1) / 2) <= 0.6 / px)[None, :] & ((ys // 1.5) % 2 == 0)[:, None]
            line &= (ys >= r0)[:, None] & (ys < r1)[:, None]
        win[line & m] = (225, 225, 215)


def _water(win, m, obj, rng, ys, xs, px) -> None:
    _fill(win, m, WATER, rng, 2)
    ripple = smooth_noise(rng, max(win.shape[:2]), 6)[: win.shape[0], : win.shape[1]]
    win[m] += (ripple[m] * 6)[:, None]


def _trees(win, m, obj: Obj, rng, ys, xs, px) -> None:
    win[m] = np.asarray(TREE, np.float32) + rng.normal(0, 5, (int(m.sum()), 1))
    for cy, cx, r in obj.geom:   # each crown lit from the top left
        d2 = (ys[:, None] - cy + 0.3 * r) ** 2 + (xs[None, :] - cx + 0.3 * r) ** 2
        crown = m & ((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2 <= r * r)
        win[crown] += (25 * np.clip(1 - d2 / (r * r), 0, 1))[crown][:, None]


def _field(win, m, obj: Obj, rng, ys, xs, px) -> None:
    state, rows = obj.params.get("state", "crop"), obj.params.get("rows", 0)
    colour = {"crop": FIELD_TONES[obj.params.get("tone", 0)], "harvested": HARVESTED, "ploughed": PLOUGHED}[state]
    _fill(win, m, colour, rng, 3)
    r0, c0, r1, c1 = obj.box
    # Rows run along x (rows=0) or y (rows=1); harvesting advances row by row, across them.
    across, start, end = (ys[:, None] + 0 * xs[None, :], r0, r1) if rows == 0 else (xs[None, :] + 0 * ys[:, None], c0, c1)
    if state == "crop" and obj.params.get("progress", 0) > 0:   # partly harvested (videos)
        done = m & (across < start + obj.params["progress"] * (end - start))
        win[done] = np.asarray(HARVESTED, np.float32) + rng.normal(0, 3, (int(done.sum()), 1))
    stripes = 0.84 + 0.16 * np.sin(2 * np.pi * across / 0.45)  # crop rows, ~0.45 cell apart
    win[m] *= stripes[m][:, None]


def _bare(win, m, obj: Obj, rng, ys, xs, px) -> None:
    _fill(win, m, BARE_TONES[obj.params.get("tone", 0)], rng, 6)


def _site(win, m, obj, rng, ys, xs, px) -> None:
    _fill(win, m, SITE, rng, 4)


def _car(win, m, obj: Obj, rng, ys, xs, px) -> None:
    win[m] = CAR_COLOURS[obj.params.get("colour", 0)]


def _harvester(win, m, obj, rng, ys, xs, px) -> None:
    win[m] = HARVESTER


def _burn(win, m, obj: Obj, rng, ys, xs, px) -> None:
    _fill(win, m, BURNT, rng, 5)
    cy, cx, ry, rx = obj.geom
    rim = m & (((ys[:, None] - cy) / ry) ** 2 + ((xs[None, :] - cx) / rx) ** 2 > 0.8)
    win[rim] = np.asarray(FLAME, np.float32) + rng.normal(0, 10, (int(rim.sum()), 1))


def _smoke(win, m, obj: Obj, rng, ys, xs, px) -> None:
    alpha = np.zeros(m.shape, np.float32)
    for cy, cx, r in obj.geom:   # soft puffs, densest at their centres
        d2 = ((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2) / (r * r)
        alpha = np.maximum(alpha, 0.85 * np.clip(1.3 * (1 - d2), 0, 1))
    a = alpha[..., None]
    win[:] = win * (1 - a) + np.asarray(SMOKE, np.float32) * a


_PAINTERS = {"building": _building, "road": _road, "water": _water, "trees": _trees, "field": _field,
             "bare": _bare, "site": _site, "car": _car, "harvester": _harvester, "burn": _burn, "smoke": _smoke}


# --- GeoTIFF --------------------------------------------------------------------------------------

def random_georef(rng: np.random.Generator, size: int) -> tuple[str, Affine]:
    """A random place in a northern UTM zone, with a pixel size from 0.5 to 10 m."""
    zone = int(rng.integers(1, 61))
    res = float(rng.choice([0.5, 1.0, 2.0, 3.0, 5.0, 10.0]))
    east = round(float(rng.uniform(300_000, 700_000 - size * res)) / res) * res
    north = round(float(rng.uniform(1_000_000, 7_000_000)) / res) * res
    return f"EPSG:{32600 + zone}", Affine(res, 0, east, 0, -res, north)


def geotiff_profile(width: int, height: int, crs: str, transform: Affine, **extra) -> dict:
    """Tiled, LZW-compressed, 3-band uint8 RGB."""
    block = 256 if min(width, height) >= 256 else max(16, -(-min(width, height) // 16) * 16)
    return dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs=crs,
                transform=transform, compress="lzw", tiled=True, blockxsize=block, blockysize=block,
                photometric="RGB", **extra)


def write_geotiff(path: str | Path, rgb: np.ndarray, crs: str, transform: Affine,
                  tags: dict[str, str] | None = None) -> Path:
    """Write (H, W, 3) uint8 as a georeferenced GeoTIFF."""
    height, width = rgb.shape[:2]
    with rasterio.open(path, "w", **geotiff_profile(width, height, crs, transform)) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))                      # (3, H, W)
        if tags:
            dst.update_tags(**tags)
    return Path(path)
