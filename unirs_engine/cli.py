"""The `unirs` command line: ask, change, classify, batch, info (+ commands registered by subsystems)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .types import InputKind


def _model_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="DIR", help="UniRS/VILA-1.5 checkpoint directory "
                   "(default: $UNIRS_MODEL, else the embedded demo model)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present, else CPU)")
    g.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--clue-model", metavar="DIR", help="base VLM that writes the clue (e.g. VILA-1.5-3B)")
    g.add_argument("--frames", type=int, help="frames sampled from a video or stack (default: model's)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--json", action="store_true", help="one JSON object per result on stdout")
    return p


def _read_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("raster reading")
    g.add_argument("--bounds", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                   help="read only this window")
    g.add_argument("--bounds-crs", help="CRS of --bounds (default: the raster's), e.g. EPSG:4326")
    g.add_argument("--bands", type=int, nargs="+", help="1-based bands for R G B (or one for grey)")
    g.add_argument("--clue", action="store_true", help="augment the prompt with the base VLM's clue")
    return p


def _engine(args):
    from .engine import Engine

    return Engine.load(args.model, device=args.device, dtype=args.dtype,
                       clue_model_dir=args.clue_model, num_frames=args.frames,
                       max_new_tokens=args.max_new_tokens)


def _run_requests(args, requests) -> int:
    from tqdm import tqdm

    engine = _engine(args)
    with tqdm(total=len(requests), unit="req", disable=len(requests) < 2, file=sys.stderr) as bar:
        results = engine.run_batch(requests, batch_size=args.batch_size,
                                   progress=lambda done, total: bar.update(done - bar.n))
    for req, res in zip(requests, results):
        if args.json:
            print(json.dumps(res.to_dict(), ensure_ascii=False))
        else:
            label = " / ".join(str(i) for i in req.inputs) if req.kind is not InputKind.SEQUENCE \
                else f"{len(res.extra.get('frames', []))} frames"
            print(f"[{label}] {res.answer}")
            if res.clue:
                print(f"  clue: {res.clue}")
            if "changed" in res.extra:
                print(f"  changed: {res.extra['changed']}  score: {res.extra['change_score']:.3f}")
            if res.extra.get("label") is not None:
                print(f"  class: {res.extra['label']}")
    return 0


def _cmd_ask(args) -> int:
    from .engine import Request

    reqs = [Request(InputKind.IMAGE, [img], args.question, clue=args.clue, bounds=args.bounds,
                    bounds_crs=args.bounds_crs, bands=args.bands) for img in args.images]
    return _run_requests(args, reqs)


def _cmd_change(args) -> int:
    from . import prompts
    from .engine import Request

    req = Request(InputKind.PAIR, [args.before, args.after],
                  args.instruction or prompts.CHANGE_DESCRIBE_INSTRUCTION, clue=args.clue,
                  bounds=args.bounds, bounds_crs=args.bounds_crs, bands=args.bands)
    return _run_requests(args, [req])


def _cmd_classify(args) -> int:
    from . import prompts
    from .engine import Request

    classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else prompts.ERA_CLASSES
    req = Request(InputKind.SEQUENCE, list(args.frames_or_video), prompts.classify_instruction(classes),
                  clue=args.clue, bands=args.bands, classes=classes)
    return _run_requests(args, [req])


def _cmd_batch(args) -> int:
    """JSON lines of {"kind", "inputs", "instruction", optional "clue", "bounds", "bounds_crs", "bands"}."""
    from .engine import Request

    reqs = []
    for n, line in enumerate(Path(args.requests).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            kind = InputKind(d.pop("kind"))
            reqs.append(Request(kind, d.pop("inputs"), d.pop("instruction"), **d))
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"unirs batch: {args.requests}:{n}: bad request ({exc})")
    return _run_requests(args, reqs)


def _cmd_info(args) -> int:
    out = {}
    if args.rasters:
        from .inputs.raster import raster_info

        out["rasters"] = [raster_info(r) for r in args.rasters]
    if not args.no_model:
        out["engine"] = _engine(args).info()
    print(json.dumps(out, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unirs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    model, read = _model_options(), _read_options()

    p = sub.add_parser("ask", parents=[model, read], help="ask a question about raster(s)")
    p.add_argument("images", nargs="+", help="raster files (GeoTIFF, COG, VRT, ...)")
    p.add_argument("-q", "--question", required=True)
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("change", parents=[model, read], help="describe change between two dates")
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--instruction", help="default: the paper's change-captioning instruction")
    p.set_defaults(func=_cmd_change)

    p = sub.add_parser("classify", parents=[model, read], help="classify a video or dated stack")
    p.add_argument("frames_or_video", nargs="+", help="one video file, or rasters in date order")
    p.add_argument("--classes", help="comma-separated labels (default: the 25 ERA classes)")
    p.set_defaults(func=_cmd_classify)

    p = sub.add_parser("batch", parents=[model], help="answer a JSON-lines file of requests")
    p.add_argument("requests")
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("info", parents=[model], help="describe the model and/or rasters")
    p.add_argument("rasters", nargs="*")
    p.add_argument("--no-model", action="store_true", help="only describe the rasters")
    p.set_defaults(func=_cmd_info)

    for register in _registered_commands():
        register(sub)
    return parser


def _registered_commands():
    """Commands that live with their subsystem (datasets, evaluation, training, review)."""
    from .data.synthetic.command import register as synth
    from .evaluate.command import register as evaluate
    from .review.command import register as review
    from .train.command import register as train

    return [synth, evaluate, train, review]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .engine import EngineError
    from .model.checkpoint import CheckpointError

    try:
        return args.func(args) or 0
    except (EngineError, CheckpointError) as exc:
        print(f"unirs: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
