"""The `unirs` command line: ask, change, classify, batch, info (+ commands registered by subsystems).

Exit status: 0 done; 1 `batch` answered some lines and not others; 2 an error, said on one line
("unirs COMMAND: error: ...", by main(): the one handler); 130 stopped by Ctrl-C. An unexpected exception
keeps its traceback: it is a bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .argtypes import EXIT_ERROR, CommandError, Parser, add_model_arguments, positive_int
from .errors import is_expected
from .types import InputKind

EXIT_SOME_FAILED = 1   # batch: some lines failed, the others were answered
EXIT_INTERRUPTED = 130  # the shell's code for "stopped by Ctrl-C"



def _model_options() -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    g = p.add_argument_group("model")
    add_model_arguments(g, clue_model="base VLM that writes the clue (e.g. VILA-1.5-3B)")
    g.add_argument("--frames", type=positive_int, help="frames sampled from a video or stack (default: model's)")
    g.add_argument("--max-new-tokens", type=positive_int, default=64)
    g.add_argument("--batch-size", type=positive_int,
                   help="requests per generate call (default: as many as the free memory holds, at most 8)")
    g.add_argument("--json", action="store_true", help="one JSON object per result on stdout")
    return p


def _read_options() -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    g = p.add_argument_group("raster reading")
    g.add_argument("--bounds", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                   help="read only this window")
    g.add_argument("--bounds-crs", help="CRS of --bounds (default: the raster's), e.g. EPSG:4326")
    g.add_argument("--bands", type=positive_int, nargs="+", help="1-based bands for R G B (or one for grey)")
    g.add_argument("--clue", action="store_true", help="augment the prompt with the base VLM's clue")
    return p


def _engine(args):
    from .engine import Engine

    return Engine.load(args.model, device=args.device, dtype=args.dtype,
                       clue_model_dir=args.clue_model, num_frames=args.frames,
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)


def _print_result(args, label: str, res) -> None:
    if args.json:
        print(json.dumps(res.to_dict(), ensure_ascii=False))
        return
    print(f"[{label}] {res.answer}")
    if res.clue:
        print(f"  clue: {res.clue}")
    if "changed" in res.extra:
        print(f"  changed: {res.extra['changed']}  score: {res.extra['change_score']:.3f}")
    if res.extra.get("label") is not None:
        print(f"  class: {res.extra['label']}")


def _label(req, res) -> str:
    if req.kind is InputKind.SEQUENCE:
        return f"{len(res.extra.get('frames', []))} frames"
    return " / ".join(str(i) for i in req.inputs)


def _run_requests(args, requests) -> int:
    from tqdm import tqdm

    engine = _engine(args)
    with tqdm(total=len(requests), unit="req", disable=len(requests) < 2, file=sys.stderr) as bar:
        results = engine.run_batch(requests,
                                   progress=lambda done, total: bar.update(done - bar.n))
    for req, res in zip(requests, results):
        _print_result(args, _label(req, res), res)
    return 0


def _cmd_ask(args) -> int:
    from . import prompts
    from .engine import Request

    instruction = prompts.question_instruction(args.question, args.short_answer)
    reqs = [Request(InputKind.IMAGE, [img], instruction, clue=args.clue, bounds=args.bounds,
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


# ---- batch -------------------------------------------------------------------------------------

def _is_list_of(kind, value, n: int | None = None) -> bool:
    return isinstance(value, list) and len(value) > 0 and (n is None or len(value) == n) \
        and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


# What keys of a batch line (Request's fields) must hold: a wrong type gets a message here, not a
# traceback later.
_LINE_TYPES = {
    "kind": (lambda v: v in {k.value for k in InputKind}, f"one of {', '.join(k.value for k in InputKind)}"),
    "inputs": (lambda v: _is_list_of(str, v), "a list of file paths"),
    "instruction": (lambda v: isinstance(v, str), "a string"),
    "clue": (lambda v: isinstance(v, bool), "true or false"),
    "bounds": (lambda v: v is None or _is_list_of((int, float), v, 4), "[xmin, ymin, xmax, ymax] or null"),
    "bounds_crs": (lambda v: v is None or isinstance(v, str), "a CRS such as \"EPSG:4326\" or null"),
    "bands": (lambda v: v is None or (_is_list_of(int, v) and min(v) >= 1), "a list of 1-based band numbers"),
    "raw_instruction": (lambda v: isinstance(v, bool), "true or false"),
    "classes": (lambda v: v is None or _is_list_of(str, v), "a list of labels or null"),
    "task": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "min_valid_fraction": (lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool),
                           "a number from 0 to 1 or null"),
}
_REQUIRED_KEYS = ("kind", "inputs", "instruction")


def _parse_line(text: str):
    """One batch line as a Request, or the reason it is not one (str)."""
    from .engine import Request

    known = [f.name for f in dataclasses.fields(Request)]
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(d, dict):
        return f"a request is a JSON object, got {type(d).__name__}"
    for key in d:
        if key not in known:
            return f"unknown key {key!r} (known: {', '.join(known)})"
    for key in _REQUIRED_KEYS:
        if key not in d:
            return f"missing key {key!r} (a request needs {', '.join(_REQUIRED_KEYS)})"
    for key, value in d.items():
        valid, expected = _LINE_TYPES.get(key, (lambda v: True, ""))
        if not valid(value):
            return f"{key} must be {expected}, got {json.dumps(value)[:80]}"
    return Request(**d)


def _read_batch(path: str) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line; CommandError when the file itself is unusable (an
    OSError with its name when it cannot be read)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise CommandError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                           "save it as UTF-8") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise CommandError(f"{path}: no requests (one JSON object per line)")
    return lines


def _answer_chunk(engine, requests) -> list:
    """Results of one batch of requests, or for each the reason it failed (str): when the batch
    fails, each request is run alone, so a bad input fails only its own line."""
    from .engine import EngineError

    try:
        return engine.run_batch(requests, batch_size=len(requests))
    except EngineError as exc:
        if len(requests) == 1:
            return [one_line(exc)]
    return [_answer_chunk(engine, [req])[0] for req in requests]


def _outcomes(engine, entries, batch_size: int, progress):
    """(line, Result or error text) in input order; good lines answered `batch_size` at a time."""
    from .engine import Request

    good = [(n, e) for n, e in entries if isinstance(e, Request)]
    chunks = (good[i:i + batch_size] for i in range(0, len(good), batch_size))
    ready: dict[int, object] = {}
    for n, entry in entries:
        if isinstance(entry, Request) and n not in ready:   # the next chunk starts at this line
            chunk = next(chunks)
            ready.update(zip([m for m, _ in chunk], _answer_chunk(engine, [r for _, r in chunk])))
            progress(len(chunk))
        yield n, entry, ready.pop(n) if isinstance(entry, Request) else entry


def _cmd_batch(args) -> int:
    lines = _read_batch(args.requests)   # a file that cannot be used is refused before torch loads
    from tqdm import tqdm

    from .engine import Request

    entries = [(n, _parse_line(text)) for n, text in lines]
    todo = sum(isinstance(e, Request) for _, e in entries)
    engine = _engine(args) if todo else None
    failed = []
    with tqdm(total=todo, unit="req", disable=todo < 2, file=sys.stderr) as bar:
        batch_size = engine.batch_size if engine else 1
        for n, req, outcome in _outcomes(engine, entries, batch_size, bar.update):
            if isinstance(outcome, str):
                failed.append(n)
                print(json.dumps({"line": n, "error": outcome}, ensure_ascii=False) if args.json
                      else f"[line {n}] error: {outcome}", flush=True)
            elif args.json:
                print(json.dumps({"line": n, **outcome.to_dict()}, ensure_ascii=False), flush=True)
            else:
                _print_result(args, f"line {n}: {_label(req, outcome)}", outcome)
    if failed:
        print(f"unirs batch: {len(failed)} of {len(entries)} requests failed "
              f"(line{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))})", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _cmd_info(args) -> int:
    """The rasters, then the checkpoint as inspected (configs and safetensors headers: no weights
    loaded, instant even for a 3B model); --load adds the loaded engine's own report."""
    from .checkpoint_info import default_model_dir, describe, expected_memory, inspect_checkpoint

    out = {}
    if args.rasters:
        from .inputs.raster import raster_info

        try:
            out["rasters"] = [raster_info(r) for r in args.rasters]
        except (OSError, ValueError) as exc:   # the reader's messages name the file and why
            raise CommandError(one_line(exc)) from None
    if not args.no_model:
        info = inspect_checkpoint(args.model or default_model_dir())
        clue = inspect_checkpoint(args.clue_model) if args.clue_model else None
        devices = [args.device] if args.device else ["cpu", "cuda"]
        batch = args.batch_size or 1   # the memory of one request unless told
        memory = {m["device"]: m for m in (expected_memory(info, args.dtype, d, batch) for d in devices)}
        out.update(model={**info.to_dict(), "memory": memory}, clue_model=clue.to_dict() if clue else None)
        if args.load:
            out["engine"] = _engine(args).info()
    if args.json:
        print(json.dumps(out, default=str, ensure_ascii=False))
        return 0
    for raster in out.get("rasters", []):
        print(f"Raster: {raster['path']}")
        print("\n".join(f"  {key}: {value}" for key, value in raster.items() if key != "path"))
    if not args.no_model:
        print("\n".join(describe(info, devices, args.dtype, batch, clue)))
    if "engine" in out:
        e = out["engine"]
        print(f"Loaded: on {e['device']} ({e['device_name']}) in {e['dtype']}, torch {e['torch']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="unirs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    model, read = _model_options(), _read_options()

    p = sub.add_parser("ask", parents=[model, read], help="ask a question about raster(s)")
    p.add_argument("images", nargs="+", help="raster files (GeoTIFF, COG, VRT, ...)")
    p.add_argument("-q", "--question", required=True)
    p.add_argument("--long-answer", dest="short_answer", action="store_false",
                   help="ask without the short-answer suffix (default: answer in a word or phrase)")
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

    p = sub.add_parser(
        "batch", parents=[model], help="answer a JSON-lines file of requests",
        description="Each line: {\"kind\": \"image\"|\"pair\"|\"sequence\", \"inputs\": [paths], "
                    "\"instruction\": text, optional \"clue\", \"bounds\", \"bounds_crs\", \"bands\", "
                    "\"classes\"}. Prints one result per line in input order, \"[line N] error: ...\" "
                    "(with --json {\"line\": N, \"error\": ...}) for a line that failed; the other lines "
                    "are answered. Exit status 0: all answered; 1: some lines failed; 2: the file "
                    "cannot be used.")
    p.add_argument("requests", help="UTF-8 file, one JSON request per line")
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser(
        "info", parents=[model], help="describe the model and/or rasters",
        description="Describes the rasters, then the checkpoint read from its configs and safetensors "
                    "headers (no weights loaded): tasks, parameters, dtype on disk, expected memory on "
                    "the CPU and a GPU (or --device) at --dtype for --batch-size requests (default 1), "
                    "calibrated thresholds, the clue model.")
    p.add_argument("rasters", nargs="*")
    p.add_argument("--no-model", action="store_true", help="only describe the rasters")
    p.add_argument("--load", action="store_true", help="also load the model and report the engine "
                   "(device, dtype, torch)")
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


def one_line(exc: BaseException) -> str:
    """An error as one line: an OSError as "FILE: reason", any message's line breaks folded."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _expected(exc: BaseException) -> bool:
    """Bad input or setup (one line, exit 2), not a bug (traceback)."""
    return is_expected(exc) or isinstance(exc, OSError) and exc.filename is not None


def main(argv: list[str] | None = None) -> int:
    """The one handler of every command: a UnirsError (or an OSError naming its file) is said on one line,
    "unirs COMMAND: error: ...", as argparse says a usage error; anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"unirs {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _expected(exc):
            raise
        print(f"unirs {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
