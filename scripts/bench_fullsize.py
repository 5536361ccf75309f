#!/usr/bin/env python
"""The full-size path, measured (issue 18): a random checkpoint at VILA-1.5-3B's real shapes, on this machine.

    .venv/bin/python scripts/bench_fullsize.py [--checkpoint DIR] [--out FILE] [--quick]
        [--devices cpu,cuda] [--dtypes float32,bfloat16] [--tiles 16]
        [--ask-tokens 8] [--describe-tokens 24] [--classify-tokens 12] [--caption-tokens 24]

The checkpoint (SigLIP so400m-patch14-384, mlp_downsample projector, Change Extraction module,
Sheared-LLaMA-2.7B; bf16 on disk, llm/ sharded with model.safetensors.index.json as the release ships
it) is built once, outside the repository: DIR, else $UNIRS_HOME/bench/fullsize[-quick], else
/tmp/unirs-bench/fullsize[-quick]; a complete one there is reused. Each device x dtype then runs in a
child process of its own (its peak RSS is its own ru_maxrss) and measures: load time, peak RSS beside
the size of the weights at that dtype, and the seconds of one cold request each (caches cleared) of
ask, describe_change, classify_sequence (8 frames) and a review of --tiles 384 px tiles (a square
grid; change scores, then a caption for every tile). Random weights never emit EOS: every answer
runs to its token budget. It fails unless the shapes are the real ones (729 patch tokens -> 196
visual tokens per image, CEM 7,006,464 parameters) and the engine took its sizes from the checkpoint.

--quick: 2 vision and 2 LLM layers at the real widths, CPU float32, small budgets, 4 tiles (tests).
Prints one table; writes the figures as JSON (--out, default DIR/bench.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from unirs_engine.argtypes import positive_int

QUESTION = "How many buildings are there in the image?"
# The real sizes (shared/reference/model-architecture.md); the engine must arrive at them from the checkpoint.
REAL = {"image_size": 384, "patch_tokens": 729, "vision_hidden": 1152, "visual_tokens": 196,
        "llm_hidden": 2560, "cem_parameters": 7_006_464, "projector_parameters": 18_364_416,
        "context_tokens": 4096, "num_frames": 8}
TOKENIZER_NOTE = ("prompt token counts are those of the small test tokenizer (testing/tiny.py), not "
                  "LLaMA's: the text part of each prompt differs in length from the real model's")


@dataclass(frozen=True)
class Budget:
    """New tokens per answer (realistic lengths: a short VQA answer, a LEVIR-CC caption) and review tiles."""

    ask: int = 8
    describe: int = 24
    classify: int = 12
    caption: int = 24
    tiles: int = 16


QUICK_BUDGET = Budget(ask=2, describe=4, classify=2, caption=4, tiles=4)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30   # ru_maxrss: KiB on Linux


# ---- checkpoint and inputs (parent) -------------------------------------------------------------

def default_checkpoint(quick: bool) -> Path:
    home = os.environ.get("UNIRS_HOME")
    base = Path(home).expanduser() / "bench" if home else Path(tempfile.gettempdir()) / "unirs-bench"
    return base / ("fullsize-quick" if quick else "fullsize")


def ensure_checkpoint(path: Path, quick: bool) -> float | None:
    """Build the checkpoint at `path` unless a complete one of the right sizes is there; the build
    seconds, or None when reused."""
    from unirs_engine.testing.fullsize import FULL_SPEC, build_fullsize_checkpoint, checkpoint_spec, quick_spec

    spec = quick_spec() if quick else FULL_SPEC
    if (path / "config.json").is_file():   # built aside and renamed into place: present means complete
        found = checkpoint_spec(path)
        if found != spec:
            raise SystemExit(f"{path} holds a checkpoint of other sizes ({found}); expected {spec}: "
                             f"pass another --checkpoint folder")
        log(f"reusing the checkpoint at {path}")
        return None
    log(f"building a {'quick (2-layer) ' if quick else ''}full-width random checkpoint at {path} (once)")
    t0 = time.perf_counter()
    try:
        build_fullsize_checkpoint(path, spec)
    except FileExistsError as exc:   # a folder that is neither empty nor a checkpoint: not ours to replace
        raise SystemExit(str(exc)) from None
    seconds = time.perf_counter() - t0
    log(f"  built in {seconds:.0f} s")
    return seconds


def disk_layout(path: Path) -> dict[str, Any]:
    """Files, bytes and on-disk dtypes of the checkpoint's weights (from the safetensors headers)."""
    from safetensors import safe_open

    files = {}
    for file in sorted(path.rglob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            dtypes = sorted({f.get_slice(name).get_dtype() for name in f.keys()})
        files[str(file.relative_to(path))] = {"bytes": file.stat().st_size, "dtypes": dtypes}
    index = path / "llm" / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else []
    return {"files": files, "llm_shards": shards, "llm_index": index.is_file(),
            "bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file())}


def write_inputs(folder: Path, side: int, frames: int, tiles: int) -> dict[str, Any]:
    """GDAL-written GeoTIFFs at the model's input size: an image, a before/after pair (the after in
    another CRS and resolution), a stack of frames, and two mosaics of sqrt(tiles)^2 tiles of `side` px."""
    from unirs_engine.testing.rasters import ORIGIN, RES, UTM33, grid, pattern, write_pair, write_raster, write_scene

    per_side = math.isqrt(tiles)
    mosaic = side * per_side
    # A changed square in the after mosaic, a third of the way in (some tiles changed, some not).
    corner = (ORIGIN[0] + mosaic * RES / 3, ORIGIN[1] - mosaic * RES / 3)
    square = (corner[0], corner[1] - side * RES / 2, corner[0] + side * RES / 2, corner[1])
    before, after = write_pair(folder / "pair", size=side)
    return {
        "image": str(write_raster(folder / "image.tif", pattern(side, side, seed=1))),
        "pair": [str(before), str(after)],
        "frames": [str(write_raster(folder / f"frame_{i}.tif", pattern(side, side, seed=10 + i)))
                   for i in range(frames)],
        "review": [str(write_scene(folder / f"review_{name}.tif", crs=UTM33, transform=grid(), width=mosaic,
                                   height=mosaic, square=sq))
                   for name, sq in (("before", None), ("after", square))],
        "tile_px": side,
    }


def run_child(plan: dict[str, Any], work: Path) -> dict[str, Any]:
    """One device x dtype in a fresh process; its figures, read back from the file it wrote."""
    name = f"{plan['device']}-{plan['dtype']}"
    plan = {**plan, "result": str(work / f"{name}.json"), "work": str(work / name)}
    plan_file = work / f"{name}-plan.json"
    plan_file.write_text(json.dumps(plan))
    log(f"measuring {plan['device']} {plan['dtype']} in a child process")
    proc = subprocess.run([sys.executable, __file__, "--child", str(plan_file)])
    if proc.returncode != 0:
        raise SystemExit(f"the {name} run failed (exit {proc.returncode}); its output is above")
    return json.loads(Path(plan["result"]).read_text())


# ---- measurement (child) ------------------------------------------------------------------------

class LLMProbe:
    """Times every forward call of the LLM inside generate(): the first of a call is the prefill (it
    gets inputs_embeds: text and visual tokens), each later one decodes one token."""

    def __init__(self, llm) -> None:
        import torch

        self.calls: list[dict[str, Any]] = []
        self._sync = torch.cuda.synchronize if llm.device.type == "cuda" else (lambda: None)
        self._t0 = 0.0
        llm.register_forward_pre_hook(self._before, with_kwargs=True)
        llm.register_forward_hook(self._after)

    def _before(self, module, args, kwargs) -> None:
        embeds = kwargs.get("inputs_embeds")
        self.calls.append({"prefill": embeds is not None,
                           "tokens": int(embeds.shape[1]) if embeds is not None else 1,
                           "batch": int((embeds if embeds is not None else kwargs["input_ids"]).shape[0])})
        self._sync()
        self._t0 = time.perf_counter()

    def _after(self, module, args, output) -> None:
        self._sync()
        self.calls[-1]["s"] = time.perf_counter() - self._t0

    def summary(self) -> dict[str, Any]:
        """Prefills (count, tokens of the longest, seconds) and decode steps (per generate call, s/step)."""
        prefills = [c for c in self.calls if c["prefill"]]
        steps = [c for c in self.calls if not c["prefill"]]
        return {"generate_calls": len(prefills), "batch": max(c["batch"] for c in prefills),
                "prefill_tokens": max(c["tokens"] for c in prefills),
                "prefill_s": sum(c["s"] for c in prefills),
                # new tokens per answer: the prefill's token, then one per decode step
                "new_tokens": 1 + len(steps) // len(prefills),
                "decode_s_per_step": sum(c["s"] for c in steps) / len(steps) if steps else 0.0}


def text_tokens(tokenizer, prompt: str) -> int:
    """Tokens of the text around the <image> markers, cut as prompts.encode cuts it (with BOS)."""
    from unirs_engine import prompts

    return 1 + sum(len(tokenizer(chunk, add_special_tokens=False)["input_ids"])
                   for chunk in prompt.split(prompts.IMAGE_TOKEN) if chunk)


def check_shapes(engine, image: str) -> dict[str, Any]:
    """The real shapes along the path, and the engine's own sizes taken from the checkpoint; raises
    on the first that differs from REAL."""
    import torch
    from unirs_engine.inputs.raster import read_chip
    from unirs_engine.review.augment import review_read_side
    from unirs_engine.types import InputKind

    loaded, model = engine.model, engine.model.model
    frames = engine.num_frames
    pixels = engine.preprocess([read_chip(image)]).to(loaded.device, loaded.dtype)        # (1, 3, S, S)
    with torch.inference_mode():
        feats = model.encode_images(pixels)                                               # (1, P, D)
        image_slots = model.visual_slots(feats, InputKind.IMAGE)                          # (1, T, H)
        pair_slots = model.visual_slots(feats.repeat(2, 1, 1), InputKind.PAIR)            # (1, T, H)
        seq_slots = model.visual_slots(feats.repeat(frames, 1, 1), InputKind.SEQUENCE)    # (N, T, H)
    llm_cfg = model.llm.config
    context = min(llm_cfg.max_position_embeddings, model.config["llm_cfg"]["tokenizer_model_max_length"])
    found = {
        "image_size": (pixels.shape[-1], engine.preprocess.size),
        "patch_tokens": (feats.shape[1],),
        "vision_hidden": (feats.shape[2],),
        "visual_tokens": (image_slots.shape[1], pair_slots.shape[1], seq_slots.shape[1],
                          engine.info()["visual_tokens_per_slot"]),   # the engine's own count per <image> slot
        "llm_hidden": (image_slots.shape[2],),
        "cem_parameters": (sum(p.numel() for p in model.mm_projector.layers["change"].parameters()),),
        "projector_parameters": (sum(p.numel() for p in model.mm_projector.layers["single"].parameters()),),
        "context_tokens": (engine.info()["context_tokens"], context),
        "num_frames": (frames, seq_slots.shape[0]),
    }
    for name, values in found.items():
        if any(int(v) != REAL[name] for v in values):
            raise AssertionError(f"{name}: expected {REAL[name]:,} everywhere, found {[int(v) for v in values]}")
    if (pair_slots.shape[0], image_slots.shape[0]) != (1, 1):
        raise AssertionError(f"an image and a pair fill one slot each, got {image_slots.shape[0]} and "
                             f"{pair_slots.shape[0]}")
    return {"checked": {name: int(values[0]) for name, values in found.items()},
            "review_read_px": review_read_side(engine.preprocess.size)}


def timed_request(engine, probe: LLMProbe, slots: int, call: Callable[[], Any]) -> dict[str, Any]:
    """One cold request (caches cleared): seconds, the engine's stage timings and the LLM's share.
    The LLM's input must be the prompt's text plus `slots` x 196 visual tokens."""
    engine.clear_cache()
    probe.calls.clear()
    t0 = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - t0
    llm = probe.summary()
    text = text_tokens(engine.model.tokenizer, result.prompt)
    if llm["prefill_tokens"] != text + slots * REAL["visual_tokens"]:
        raise AssertionError(f"{result.task}: the LLM read {llm['prefill_tokens']} tokens, expected {text} of "
                             f"text + {slots} x {REAL['visual_tokens']} visual")
    return {"s": seconds, **{k: result.timings[k] for k in ("read_s", "encode_s", "generate_s")},
            "text_tokens": text, "visual_tokens": slots * REAL["visual_tokens"], **llm}


def timed_review(engine, probe: LLMProbe, inputs: dict[str, Any], work: Path) -> dict[str, Any]:
    """A review of the mosaics with every tile captioned; scoring and captioning seconds come from the
    points run_review calls back at: pause() after a batch's scores, progress() after its captions."""
    from unirs_engine.review import ReviewJob, run_review

    marks: list[tuple[str, float]] = []
    job = ReviewJob(*inputs["review"], str(work / "review.gpkg"), tile_size=inputs["tile_px"], caption_all=True)
    engine.clear_cache()
    probe.calls.clear()
    summary = run_review(engine, job, progress=lambda done, total: marks.append(("captioned", time.perf_counter())),
                         pause=lambda: marks.append(("scored", time.perf_counter())))
    spans = {"scored": 0.0, "captioned": 0.0}   # each span ends at its mark, starts at the previous one
    for (_, start), (what, end) in zip(marks, marks[1:]):
        spans[what] += end - start
    if summary.captioned != summary.total_tiles or summary.done != summary.total_tiles:
        raise AssertionError(f"the review captioned {summary.captioned} of {summary.total_tiles} tiles "
                             f"(done {summary.done}, skipped {summary.skipped_nodata} + {summary.skipped_outside})")
    return {"tiles": summary.total_tiles, "tile_px": inputs["tile_px"],
            "score_s": spans["scored"], "caption_s": spans["captioned"], "s": summary.elapsed_s,
            "tiles_per_s": summary.tiles_per_s, **probe.summary()}


def measure(plan: dict[str, Any]) -> dict[str, Any]:
    import torch
    from unirs_engine.engine import Engine

    budget, inputs, work = Budget(**plan["budget"]), plan["inputs"], Path(plan["work"])
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # The review asks for no length: its captions get the engine's max_new_tokens.
    engine = Engine.load(plan["checkpoint"], device=plan["device"], dtype=plan["dtype"],
                         max_new_tokens=budget.caption)
    load_s = time.perf_counter() - t0
    load_rss = peak_rss_gib()
    model = engine.model.model
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    shapes = check_shapes(engine, inputs["image"])
    probe = LLMProbe(model.llm)
    engine.ask(inputs["image"], QUESTION, max_new_tokens=1)   # first-call allocations are no request's
    log(f"  loaded in {load_s:.1f} s, shapes checked; timing ask, describe_change, classify, review")
    requests = {
        "ask": (1, lambda: engine.ask(inputs["image"], QUESTION, max_new_tokens=budget.ask)),
        "describe_change": (1, lambda: engine.describe_change(*inputs["pair"], max_new_tokens=budget.describe)),
        "classify": (len(inputs["frames"]),
                     lambda: engine.classify_sequence(inputs["frames"], max_new_tokens=budget.classify)),
    }
    tasks = {}
    for name, (slots, call) in requests.items():
        tasks[name] = timed_request(engine, probe, slots, call)
        log(f"  {name}: {tasks[name]['s']:.1f} s")   # a full-size run takes a while: show where it is
    review = timed_review(engine, probe, inputs, work)
    log(f"  review: {review['s']:.1f} s")
    info = engine.info()
    return {"device": info["device"], "device_name": info["device_name"], "dtype": info["dtype"],
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "parameters": info["parameters"],
            "load_s": load_s, "weights_gib": gib(weights), "peak_rss_load_gib": load_rss,
            "peak_rss_gib": peak_rss_gib(),
            "cuda_peak_allocated_gib": gib(torch.cuda.max_memory_allocated()) if info["device"].startswith("cuda")
            else None,
            "shapes": shapes, "tasks": tasks, "review": review}


def child_main(plan_file: Path) -> int:
    plan = json.loads(plan_file.read_text())
    figures = measure(plan)
    Path(plan["result"]).write_text(json.dumps(figures, indent=1))
    return 0


# ---- report (parent) ----------------------------------------------------------------------------

def table(runs: list[dict[str, Any]], budget: Budget, frames: int) -> str:
    """Rows = figures, one column per device x dtype."""
    def task(name: str, key: str, fmt: str = "{:.2f}") -> list[str]:
        return [fmt.format(r["tasks"][name][key]) for r in runs]

    def llm_split(entry: Callable[[dict], dict]) -> list[str]:
        return [f"{e['batch']} x {e['prefill_tokens']} tok in {e['prefill_s']:.2f} s; {e['new_tokens']} new at "
                f"{e['decode_s_per_step']:.3f} s/token" for e in map(entry, runs)]

    n = budget.tiles
    rows = [("", [f"{r['device']} {r['dtype']}" for r in runs]),
            ("load (s)", [f"{r['load_s']:.1f}" for r in runs]),
            ("weights at dtype (GiB)", [f"{r['weights_gib']:.2f}" for r in runs]),
            ("peak RSS after load (GiB)", [f"{r['peak_rss_load_gib']:.2f}" for r in runs]),
            ("peak RSS (GiB)", [f"{r['peak_rss_gib']:.2f}" for r in runs])]
    if any(r["cuda_peak_allocated_gib"] is not None for r in runs):
        rows.append(("CUDA peak allocated (GiB)", [f"{r['cuda_peak_allocated_gib'] or 0:.2f}" for r in runs]))
    for name, label, tokens in (("ask", "ask", budget.ask), ("describe_change", "describe_change", budget.describe),
                                ("classify", f"classify, {frames} frames", budget.classify)):
        rows += [(f"{label}, {tokens} tokens (s/request)", task(name, "s")),
                 ("  read / encode / generate (s)",
                  [f"{t['read_s']:.2f} / {t['encode_s']:.2f} / {t['generate_s']:.2f}"
                   for t in (r["tasks"][name] for r in runs)]),
                 ("  LLM prefill; decode", llm_split(lambda r, name=name: r["tasks"][name]))]
    rows += [(f"review {n} tiles: scores (s)", [f"{r['review']['score_s']:.2f}" for r in runs]),
             (f"review {n} tiles: captions, {budget.caption} tokens (s)",
              [f"{r['review']['caption_s']:.2f}" for r in runs]),
             (f"review {n} tiles: total (s)", [f"{r['review']['s']:.2f}" for r in runs]),
             ("review tiles/s", [f"{r['review']['tiles_per_s']:.3f}" for r in runs]),
             ("  caption LLM prefill; decode", llm_split(lambda r: r["review"]))]
    width = max(len(label) for label, _ in rows)
    cols = [max(len(row[1][i]) for row in rows) for i in range(len(runs))]
    lines = [label.ljust(width) + "  " + "  ".join(v.ljust(c) for v, c in zip(values, cols))
             for label, values in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def csv_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names or any(n not in choices for n in names):
            raise argparse.ArgumentTypeError(f"expected some of {','.join(choices)}, got {text!r}")
        return names
    return parse


def square_tiles(text: str) -> int:
    n = positive_int(text)
    if math.isqrt(n) ** 2 != n:
        raise argparse.ArgumentTypeError(f"the review is a square grid: expected 1, 4, 9, 16..., got {text}")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, metavar="DIR", help="where the checkpoint is (reused) or is "
                        "built; default $UNIRS_HOME/bench/fullsize[-quick], else under /tmp")
    parser.add_argument("--out", type=Path, metavar="FILE", help="JSON figures (default DIR/bench.json)")
    parser.add_argument("--quick", action="store_true", help="2 vision + 2 LLM layers at the real widths, "
                        "float32, small budgets, 4 tiles")
    parser.add_argument("--devices", type=csv_list(("cpu", "cuda")), help="default: cpu, and cuda when present")
    parser.add_argument("--dtypes", type=csv_list(("float32", "bfloat16")),
                        help="default: float32,bfloat16 (--quick: float32)")
    parser.add_argument("--tiles", type=square_tiles, help="review tiles, a square number (default 16; --quick 4)")
    for name, full, quick in (("ask", 8, 2), ("describe", 24, 4), ("classify", 12, 2), ("caption", 24, 4)):
        parser.add_argument(f"--{name}-tokens", type=positive_int, metavar="N",
                            help=f"new tokens per {name} answer (default {full}; --quick {quick})")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)   # internal: one measured run
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)

    import torch
    from unirs_engine.testing.fullsize import FULL_SPEC

    defaults = QUICK_BUDGET if args.quick else Budget()
    budget = Budget(**{key: getattr(args, f"{key}_tokens") or value for key, value in asdict(defaults).items()
                       if key != "tiles"}, tiles=args.tiles or defaults.tiles)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "bfloat16"])
    checkpoint = (args.checkpoint or default_checkpoint(args.quick)).expanduser().resolve()
    out = args.out or checkpoint / "bench.json"

    build_s = ensure_checkpoint(checkpoint, args.quick)
    layout = disk_layout(checkpoint)
    with tempfile.TemporaryDirectory(prefix="bench-fullsize-") as tmp:
        work = Path(tmp)
        inputs = write_inputs(work / "inputs", REAL["image_size"], FULL_SPEC.num_video_frames, budget.tiles)
        plan = {"checkpoint": str(checkpoint), "budget": asdict(budget), "inputs": inputs}
        runs = [run_child({**plan, "device": device, "dtype": dtype}, work) for device in devices for dtype in dtypes]

    built = f"built in {build_s:.0f} s" if build_s is not None else "reused"
    print(f"checkpoint: {checkpoint} ({built}; {gib(layout['bytes']):.2f} GiB on disk, llm/ in "
          f"{len(layout['llm_shards'])} shards + index, weights "
          f"{'/'.join(sorted({d for f in layout['files'].values() for d in f['dtypes']}))} on disk)")
    print(f"{'QUICK: 2 vision + 2 LLM layers at the real widths' if args.quick else 'full size'}; "
          f"torch threads {runs[0]['torch_threads']}, {os.cpu_count()} CPUs")
    print(f"new tokens per answer (random weights never emit EOS): ask {budget.ask}, describe {budget.describe}, "
          f"classify {budget.classify}, review captions {budget.caption}; one cold request each "
          f"(caches cleared) after a 1-token warm-up ask")
    print(f"shapes checked: {runs[0]['shapes']['checked']}")
    print(f"note: {TOKENIZER_NOTE}")
    print(table(runs, budget, FULL_SPEC.num_video_frames))

    payload = {"checkpoint": str(checkpoint), "quick": args.quick, "build_s": build_s, "layout": layout,
               "budget": asdict(budget), "tokenizer_note": TOKENIZER_NOTE, "cpu_count": os.cpu_count(),
               "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.part")
    tmp_out.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp_out, out)
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
