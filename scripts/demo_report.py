"""Print a change review GeoPackage (best tiles first) and score it against the mosaics' ground truth:
the review's "changed" (score at or above its threshold), and for comparison what the captions say.

    python scripts/demo_report.py REVIEW.gpkg CHANGES.json [--top 8]
"""

from __future__ import annotations

import argparse
import json
import sys

from osgeo import ogr

ogr.UseExceptions()


def truth_tile(truth: dict, x: float, y: float) -> tuple[int, int]:
    """(row, col) of the ground-truth tile holding the point (x, y) of the before CRS."""
    a, _, c, _, e, f = truth["transform"]          # x = a*col + c, y = e*row + f
    return int((y - f) / e) // truth["tile"], int((x - c) / a) // truth["tile"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gpkg")
    parser.add_argument("truth", help="changes.json written by `unirs synth-mosaic`")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)

    truth = json.load(open(args.truth, encoding="utf-8"))
    changed_truth = {(t["row"], t["col"]): t for t in truth["changed"]}
    dataset = ogr.Open(args.gpkg)   # keep a reference: its layers die with it (a crash, not an error)
    layer = dataset.GetLayerByName("changes")
    tiles = []
    for feat in layer:
        centre = feat.GetGeometryRef().Centroid()   # in the review grid CRS = the before CRS here
        tiles.append({"score": feat["score"], "changed": bool(feat["score_above_threshold"]),
                      "caption_says": feat["caption_says_change"], "caption": feat["caption"],
                      "truth": truth_tile(truth, centre.GetX(), centre.GetY())})
    if not tiles:
        print(f"{args.gpkg}: no reviewed tiles", file=sys.stderr)
        return 1

    tiles.sort(key=lambda t: -t["score"])
    print(f"\n{len(tiles)} tiles reviewed, {sum(t['changed'] for t in tiles)} changed. Best first:")
    for t in [t for t in tiles if t["changed"]][: args.top]:
        real = changed_truth.get(t["truth"])
        print(f"  tile {t['truth']}  score {t['score']:.3g}  {t['caption']!r}")
        print(f"      ground truth: {real['captions'][0]!r}" if real else "      ground truth: unchanged")

    print(f"\nagainst the ground truth: {scored(tiles, changed_truth, 'changed')}")
    captioned = [t for t in tiles if t["caption_says"] is not None]
    if captioned:
        print(f"what the captions say, on the {len(captioned)} captioned tiles: "
              f"{scored(captioned, changed_truth, 'caption_says')}")
    return 0


def scored(tiles: list[dict], changed_truth: dict, key: str) -> str:
    """Tiles decided right, precision and recall of the decision in tile[key]."""
    hits = sum(bool(t[key]) and t["truth"] in changed_truth for t in tiles)
    predicted = sum(bool(t[key]) for t in tiles)
    actual = sum(t["truth"] in changed_truth for t in tiles)
    right = sum(bool(t[key]) == (t["truth"] in changed_truth) for t in tiles)
    return (f"{right}/{len(tiles)} tiles decided right, precision {hits / max(predicted, 1):.2f}, "
            f"recall {hits / max(actual, 1):.2f}")


if __name__ == "__main__":
    sys.exit(main())
