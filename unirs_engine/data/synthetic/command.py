"""`unirs synth` (the synthetic benchmark) and `unirs synth-mosaic` (a large dated mosaic pair)."""

from __future__ import annotations

import argparse
import time

from ...argtypes import CommandError


def register(subparsers) -> None:
    """Add the `synth` and `synth-mosaic` subcommands to the `unirs` command line."""
    p = subparsers.add_parser(
        "synth", help="write the synthetic multi-temporal benchmark (RSVQA, LEVIR-CC, ERA formats)",
        description="Procedural scenes, change pairs and event videos, written in the formats of "
                    "RSVQA-LR, LEVIR-CC and ERA (read back with `unirs eval --task synthetic`).")
    p.add_argument("--out", required=True, metavar="DIR", help="benchmark folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=1000, help="single images (6 questions each)")
    p.add_argument("--pairs", type=int, default=1000, help="change pairs (about half unchanged)")
    p.add_argument("--videos", type=int, default=300, help="event videos")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (videos: half, 64-256)")
    p.add_argument("--splits", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_synth)

    p = subparsers.add_parser(
        "synth-mosaic", help="write two large dated GeoTIFF mosaics with known changed tiles",
        description="Before/after mosaics (tiled, LZW, overviews) of one area plus changes.json "
                    "listing the tiles that changed; written window by window.")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--size", type=int, default=2048, help="mosaic side in pixels (before)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=256, help="tile side in pixels (multiple of 16)")
    p.add_argument("--change-fraction", type=float, default=0.2)
    p.add_argument("--after-crs", help="CRS of the after mosaic, e.g. EPSG:3857 (default: the before's)")
    p.add_argument("--after-res-factor", type=float, default=1.0, help="after pixel size / before pixel size")
    p.add_argument("--nodata-hole", action="store_true", help="leave a nodata square in the after mosaic")
    p.set_defaults(func=run_synth_mosaic)


def run_synth(args: argparse.Namespace) -> int:
    from .writer import write_benchmark

    t0 = time.perf_counter()
    try:
        manifest = write_benchmark(args.out, seed=args.seed, n_images=args.images, n_pairs=args.pairs,
                                   n_videos=args.videos, size=args.size, splits=tuple(args.splits),
                                   progress=not args.quiet, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:   # the writer's refusals of sizes and folders
        raise CommandError(str(exc)) from None
    seconds = time.perf_counter() - t0
    c = manifest["counts"]
    n_samples = sum(c["rsvqa"]["questions"].values()) + sum(c["levircc"]["pairs"].values()) \
        + sum(c["era"]["videos"].values())
    print(f"wrote {args.out} (seed {args.seed}) in {seconds:.1f} s, {n_samples / seconds:.1f} samples/s")
    print(f"  rsvqa:   {_splits(c['rsvqa']['images'])} images, {_splits(c['rsvqa']['questions'])} questions")
    print(f"  levircc: {_splits(c['levircc']['pairs'])} pairs, {c['levircc']['changed']} changed")
    print(f"  era:     {_splits(c['era']['videos'])} videos, {c['era']['stacks']} also as GeoTIFF stacks")
    return 0


def run_synth_mosaic(args: argparse.Namespace) -> int:
    from .mosaic import GROUND_TRUTH, write_mosaic_pair

    t0 = time.perf_counter()
    try:
        before, after = write_mosaic_pair(args.out, size=args.size, seed=args.seed, tile=args.tile,
                                          change_fraction=args.change_fraction, after_crs=args.after_crs,
                                          after_res_factor=args.after_res_factor, nodata_hole=args.nodata_hole)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {before} and {after} in {time.perf_counter() - t0:.1f} s; changed tiles in "
          f"{before.parent / GROUND_TRUTH}")
    return 0


def _splits(counts: dict[str, int]) -> str:
    return f"{sum(counts.values())} ({'/'.join(str(v) for v in counts.values())} train/val/test)"
