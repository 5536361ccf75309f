"""What a checkpoint folder holds, read without torch: its config files and safetensors headers only.

`inspect_checkpoint` makes every check of the loader that needs no torch (model/checkpoint.py calls
it first, so both refuse a folder with the same line) and describes the model: the tasks it can do
and how each input reaches the LLM, parameters and dtype on disk per part, calibrated thresholds.
`expected_memory` estimates what running it takes. Stdlib only, no torch and no numpy: the QGIS
plugin calls it in-process, and `unirs info` answers at once even for a 3B model.

A safetensors file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}, "__metadata__": ...} and the tensors' bytes; only the first two are read.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from .errors import UnirsError
from .review.schema import COSINE_SCORE, FEATURE_SCORE, HEAD_SCORE, SCORE_MEANINGS, SCORES, THRESHOLD_KEYS
from .runtime.paths import PLUGIN_ROOT
from .thresholds import checkpoint_calibration

SUBFOLDERS = ("llm", "vision_tower", "mm_projector")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
INDEX_FILE = "model.safetensors.index.json"   # sharded weights: tensor name -> shard file
# The names below are also those of modules that import torch or numpy, which this one must not:
TOKENIZER_FILE = "tokenizer.model"                                        # model/tokenizer.py
CHANGE_SCORE_FOLDER, CHANGE_SCORE_KIND = "change_score", "unirs-change-score"   # model/change_score.py
CEM_PAIR, TWO_IMAGE_PAIR = "cem", "two-images"                            # types.py's PAIR_MODES
DEMO_MODEL_DIR = PLUGIN_ROOT / "models" / "demo"                          # engine.DEFAULT_MODEL_DIR

# Tensors a checkpoint may carry that the model rightly lacks: SigLIP's unused pooling head, and
# buffers that older transformers versions saved (rotary inv_freq, position ids).
IGNORED_TENSORS = re.compile(r"^(vision_model\.)?head\.|rotary_emb\.inv_freq$|(^|\.)position_ids$")
# Saved statistics that are not parameters: the CEM's BatchNorm, the change-score head's input scaling.
BUFFERS = re.compile(r"\.(running_mean|running_var|num_batches_tracked)$|^input_(mean|std)$")
VILA_PROJECTOR_KEY = re.compile(r"layers\.\d+\.")   # VILA's `layers.N.*`; UniRS has `layers.single.N.*`

# What the engine runs at unless told otherwise (default_dtype; model/checkpoint.py's pick_device).
CPU_DTYPE, GPU_DTYPE = "float32", "bfloat16"
# From this size on, a CPU with native bfloat16 (AVX512-BF16 or AMX) runs the model in bfloat16:
# scripts/bench_fullsize.py measured the 3B shapes 2.4x (ask) to 3.6x (8-frame sequence) faster than
# in float32 on 2 AVX512-BF16 cores, at half the memory. Smaller models (the demo) stay exact in float32.
LARGE_MODEL_PARAMETERS = 1_000_000_000
DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "float": "float32",
                 "bfloat16": "bfloat16", "bf16": "bfloat16",
                 "float16": "float16", "fp16": "float16", "half": "float16"}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEVICE_KINDS = ("cpu", "cuda")
SAFETENSORS_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "BF16": ("bfloat16", 2),
                      "F16": ("float16", 2), "F8_E4M3": ("float8_e4m3", 1), "F8_E5M2": ("float8_e5m2", 1),
                      "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
                      "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
                      "BOOL": ("bool", 1)}
# transformers' defaults for a key a config leaves out (LlamaConfig, SiglipVisionConfig).
LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                  "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 2048}
SIGLIP_DEFAULTS = {"hidden_size": 768, "image_size": 224, "patch_size": 16}

PARTS = ("vision_tower", "mm_projector", "cem", "llm", "change_score_head")
PART_NAMES = {"vision_tower": "vision tower", "mm_projector": "projector", "cem": "CEM", "llm": "LLM",
              "change_score_head": "change-score head"}
MIB = 2 ** 20
# Memory besides the model's tensors: the Python, torch, transformers and GDAL libraries (CPU, about
# 400 MiB resident measured with the demo model), or the CUDA context and its kernels (GPU).
RUNTIME_BYTES = {"cpu": 512 * MIB, "cuda": 512 * MIB}


class CheckpointError(UnirsError, ValueError):
    """A checkpoint that cannot be loaded; the one-line message names the file and what was expected."""


class TensorHeader(NamedTuple):
    dtype: str                  # safetensors' name: F32, BF16, F16, I64...
    shape: tuple[int, ...]
    file: Path


@dataclass
class CheckpointInfo:
    model_id: str                   # config.json's _name_or_path, else the folder name (as the loader)
    path: str
    kind: str                       # "UniRS" (mm_projector holds the CEM) or "VILA-1.5"
    pair_mode: str                  # how a pair reaches the LLM: CEM_PAIR (one fused slot) or TWO_IMAGE_PAIR
    image_size: int                 # the vision tower's input side, px
    patch_size: int
    grid: int                       # patches per side
    tokens_per_image: int           # visual tokens of one <image> slot
    num_video_frames: int           # frames a sequence is sampled to
    context_tokens: int             # the most tokens the LLM reads, prompt and answer
    llm: dict[str, int]             # layers, hidden, intermediate, kv_heads, head_dim, vocab
    parameters: dict[str, int]      # per part of PARTS (0: the checkpoint has no such part)
    dtypes: dict[str, str]          # per part it has: the dtype(s) on disk, e.g. "bfloat16"
    change_scores: list[str]        # the review scores it can give; the first is its default
    thresholds: dict[str, dict[str, Any] | None]  # per score: {threshold, file, balanced_accuracy} or None

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_parameters": self.total_parameters}


# ---- reading ----------------------------------------------------------------------------------

def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; CheckpointError saying `what` was expected when it is not one."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (expected {what})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object (expected {what})")
    return data


def _expect_type(config: dict[str, Any], key: str, expected: str, path: Path) -> None:
    if config.get(key) != expected:
        raise CheckpointError(f"{path}: {key} is {config.get(key)!r}, expected {expected!r}")


def _int(config: dict[str, Any], key: str, default: int, path: Path) -> int:
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{path}: {key} is {value!r}, expected a whole number")
    return value


def _read_header(file: Path) -> dict[str, TensorHeader]:
    """The tensors a safetensors file describes; its size must be exactly what the header says."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{size} bytes, not even the header length")
            (length,) = struct.unpack("<Q", prefix)
            if 8 + length > size:
                raise ValueError(f"a header of {length} bytes in a file of {size}")
            header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        tensors, end = {}, 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                width = SAFETENSORS_DTYPES[entry["dtype"]][1]
                shape = tuple(int(n) for n in entry["shape"])
                begin, stop = (int(n) for n in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"tensor {name!r} has no valid dtype, shape and data_offsets") from None
            if stop - begin != math.prod(shape) * width:
                raise ValueError(f"tensor {name!r} spans {stop - begin} bytes, its shape "
                                 f"{list(shape)} of {entry['dtype']} needs {math.prod(shape) * width}")
            tensors[name] = TensorHeader(entry["dtype"], shape, file)
            end = max(end, stop)
        if size != 8 + length + end:
            raise ValueError(f"the file has {size} bytes, its header describes {8 + length + end}")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: unreadable or truncated safetensors file ({exc})") from exc
    return tensors


def read_weights(folder: Path) -> dict[str, TensorHeader]:
    """Tensor name -> header over the folder's safetensors files (one, or an index and its shards);
    refuses pickles, missing shards and files that are truncated or not safetensors."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{folder / pickles[0]}: PyTorch pickle weights are refused (unsafe to "
                                  f"load); expected model.safetensors (convert the checkpoint first)")
        raise CheckpointError(f"{folder / 'model.safetensors'}: missing (expected safetensors weights)")
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, "a safetensors index").get("weight_map", {})
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: weight_map is not a JSON object (expected tensor name -> file)")
        for shard in sorted({str(s) for s in weight_map.values()}):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{folder / shard}: missing (listed in {index.name})")
    tensors: dict[str, TensorHeader] = {}
    for file in files:
        tensors.update(_read_header(file))
    return tensors


def _read_part(folder: Path, what: str, key: str, expected: str) -> tuple[dict[str, Any], dict[str, TensorHeader]]:
    """A checkpoint part's config.json (its `key` must be `expected`) and weight headers."""
    config_path = folder / "config.json"
    config = read_json(config_path, what)
    _expect_type(config, key, expected, config_path)
    return config, read_weights(folder)


def _check_projector(weights: dict[str, TensorHeader], config: dict[str, Any], path: Path) -> bool:
    """Whether the projector holds the Change Extraction module; refuses mixed key styles and a config
    that promises a CEM the weights lack."""
    folder = path / "mm_projector"
    vila = [k for k in weights if VILA_PROJECTOR_KEY.match(k)]
    if vila and len(vila) != len(weights):
        raise CheckpointError(f"{folder / 'model.safetensors'}: mixes VILA (layers.N.*) and UniRS "
                              f"(layers.single.*) projector keys")
    has_change = any(k.startswith("layers.change.") for k in weights)
    if config.get("chg") and not has_change:
        raise CheckpointError(f"{folder / 'model.safetensors'}: no layers.change.* tensors, but "
                              f"{path / 'config.json'} says chg true (expected the Change Extraction module)")
    for key in ("mm_hidden_size", "hidden_size"):
        if key not in config:
            raise CheckpointError(f"{path / 'config.json'}: missing key {key!r} (expected VILA's hidden sizes)")
        if isinstance(config[key], bool) or not isinstance(config[key], int):
            raise CheckpointError(f"{path / 'config.json'}: {key} is {config[key]!r}, expected a whole number")
    return has_change


def _check_change_head(folder: Path, dim: int) -> dict[str, TensorHeader]:
    """The change-score head's weight headers, once its config says it reads features of width `dim`."""
    config_path = folder / "config.json"
    config = read_json(config_path, "the change-score head config")
    _expect_type(config, "type", CHANGE_SCORE_KIND, config_path)
    if config.get("dim") != dim:
        raise CheckpointError(f"{config_path}: dim is {config.get('dim')!r}, expected the vision tower's "
                              f"width {dim} (the head belongs to another tower)")
    try:
        int(config["hidden"]), float(config["dropout"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: missing or bad key {exc} (expected hidden and dropout)") from exc
    return read_weights(folder)


# ---- describing -------------------------------------------------------------------------------

def _count(weights: dict[str, TensorHeader]) -> tuple[int, str]:
    """(parameters, dtype(s) on disk) of weight headers, without the tensors the loader ignores and
    without saved statistics."""
    kept = [t for name, t in weights.items() if not IGNORED_TENSORS.search(name) and not BUFFERS.search(name)]
    dtypes = sorted({SAFETENSORS_DTYPES[t.dtype][0] for t in kept})
    return sum(math.prod(t.shape) for t in kept), "+".join(dtypes)


def _thresholds(path: Path, scores: list[str]) -> dict[str, dict[str, Any] | None]:
    """The threshold calibrated in the checkpoint for each score (review/schema.py's THRESHOLD_KEYS)."""
    out: dict[str, dict[str, Any] | None] = {}
    for score in scores:
        file = THRESHOLD_KEYS[score][0]
        threshold, how = checkpoint_calibration(path / file, score)
        valid = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        accuracy = how.get("balanced_accuracy") if isinstance(how, dict) else None
        out[score] = {"threshold": float(threshold), "file": file, "balanced_accuracy": accuracy} if valid else None
    return out


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """A UniRS or VILA-1.5 checkpoint folder, checked as far as the loader can without torch and
    described; CheckpointError (the loader's own line) when it cannot be loaded."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder (expected config.json, llm/, "
                              f"vision_tower/, mm_projector/)")
    config_path = path / "config.json"
    config = read_json(config_path, "the VILA-1.5 top-level config")
    _expect_type(config, "model_type", "llava_llama", config_path)
    for sub in SUBFOLDERS:
        if not (path / sub).is_dir():
            raise CheckpointError(f"{path / sub}: missing folder (a VILA-1.5 checkpoint has "
                                  f"{', '.join(SUBFOLDERS)})")
    llm_config, llm_weights = _read_part(path / "llm", "the LLM config", "model_type", "llama")
    vision_config, vision_weights = _read_part(path / "vision_tower", "the SigLIP vision tower config",
                                               "model_type", "siglip_vision_model")
    _, projector_weights = _read_part(path / "mm_projector", "the projector config", "mm_projector_type",
                                      "mlp_downsample")
    has_change = _check_projector(projector_weights, config, path)
    llm_dir = path / "llm"
    if not (llm_dir / TOKENIZER_FILE).is_file() and not (llm_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{llm_dir / TOKENIZER_FILE}: missing (expected the LLaMA "
                              f"sentencepiece tokenizer of the checkpoint)")
    read_json(path / "vision_tower" / "preprocessor_config.json", "the SigLIP image processor config")

    vision_path, llm_path = path / "vision_tower" / "config.json", llm_dir / "config.json"
    vision = {k: _int(vision_config, k, v, vision_path) for k, v in SIGLIP_DEFAULTS.items()}
    head_weights = {}
    if (path / CHANGE_SCORE_FOLDER).is_dir():
        head_weights = _check_change_head(path / CHANGE_SCORE_FOLDER, vision["hidden_size"])
    llm = {k: _int(llm_config, k, v, llm_path) for k, v in LLAMA_DEFAULTS.items()}
    heads = llm["num_attention_heads"]
    kv_heads = _int(llm_config, "num_key_value_heads", heads, llm_path)
    head_dim = _int(llm_config, "head_dim", llm["hidden_size"] // max(heads, 1), llm_path)
    context = llm["max_position_embeddings"]
    context = min(context, _int(llm_config, "tokenizer_model_max_length", context, llm_path))

    cem = {k: t for k, t in projector_weights.items() if k.startswith("layers.change.")}
    parts = {"vision_tower": vision_weights, "mm_projector": {k: t for k, t in projector_weights.items()
                                                              if k not in cem},
             "cem": cem, "llm": llm_weights, "change_score_head": head_weights}
    counted = {part: _count(weights) for part, weights in parts.items()}
    grid = vision["image_size"] // vision["patch_size"]
    has = {HEAD_SCORE: bool(head_weights), COSINE_SCORE: has_change, FEATURE_SCORE: True}
    scores = [score for score in SCORES if has[score]]
    return CheckpointInfo(
        model_id=config.get("_name_or_path") or path.name, path=str(path),
        kind="UniRS" if has_change else "VILA-1.5", pair_mode=CEM_PAIR if has_change else TWO_IMAGE_PAIR,
        image_size=vision["image_size"], patch_size=vision["patch_size"], grid=grid,
        # mlp_downsample zero-pads an odd grid to even, then merges 2x2 patches (model/projector.py)
        tokens_per_image=((grid + 1) // 2) ** 2,
        num_video_frames=_int(config, "num_video_frames", 8, config_path),
        context_tokens=context,
        llm={"layers": llm["num_hidden_layers"], "hidden": llm["hidden_size"],
             "intermediate": llm["intermediate_size"], "kv_heads": kv_heads, "head_dim": head_dim,
             "vocab": llm["vocab_size"]},
        parameters={part: n for part, (n, _) in counted.items()},
        dtypes={part: dtype for part, (n, dtype) in counted.items() if n},
        change_scores=scores, thresholds=_thresholds(path, scores))


def default_model_dir() -> Path:
    """The model the engine runs when none is named: UNIRS_MODEL, else the embedded demo model."""
    return Path(os.environ.get("UNIRS_MODEL") or DEMO_MODEL_DIR)


def cpu_has_native_bf16() -> bool:
    """The CPU computes in bfloat16 natively (AVX512-BF16 or AMX; read from /proc/cpuinfo, so False
    off Linux: float32 is the safe guess there)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_dtype(device_kind: str, parameters: int) -> str:
    """The dtype a model of `parameters` runs at on `device_kind` ("cpu" or "cuda") unless told:
    GPU_DTYPE on a GPU; on the CPU bfloat16 for a large model when the CPU has it natively, else
    CPU_DTYPE (see LARGE_MODEL_PARAMETERS)."""
    if device_kind == "cuda":
        return GPU_DTYPE
    return "bfloat16" if parameters >= LARGE_MODEL_PARAMETERS and cpu_has_native_bf16() else CPU_DTYPE


def dtype_name(dtype: str) -> str:
    """The canonical name of a dtype given as 'bf16', 'torch.float16'..., else CheckpointError."""
    name = str(dtype).removeprefix("torch.").lower()
    if name not in DTYPE_ALIASES:
        raise CheckpointError(f"unknown dtype {dtype!r}; expected one of {', '.join(sorted(DTYPE_ALIASES))}")
    return DTYPE_ALIASES[name]


def request_memory(info: CheckpointInfo, dtype: str, tokens: int) -> dict[str, int]:
    """Bytes one request of `tokens` tokens needs beyond the weights, at `dtype`:

      kv_cache     2 (keys, values) x layers x kv_heads x head_dim x tokens x bytes
      activations  tokens x (3 x hidden + 2 x intermediate) x bytes, one decoder layer's working set
                   in the prefill (SDPA never holds the tokens^2 scores), + vocab x 4 for the float32
                   next-token logits

    Left out: saved statistics (BatchNorm) and the vision tower's activations (megabytes)."""
    width = DTYPE_BYTES[dtype_name(dtype)]
    llm = info.llm
    return {"kv_cache": 2 * llm["layers"] * llm["kv_heads"] * llm["head_dim"] * tokens * width,
            "activations": tokens * (3 * llm["hidden"] + 2 * llm["intermediate"]) * width + llm["vocab"] * 4}


def expected_memory(info: CheckpointInfo, dtype: str | None = None, device: str = "cpu",
                    batch_size: int = 1) -> dict[str, Any]:
    """Bytes expected to run the model on `device` ("cpu", "cuda", "cuda:N") at `dtype` (default:
    default_dtype()) answering `batch_size` requests at once, each of which
    may fill the context: the weights (parameters x bytes per element; the change-score head stays
    float32), request_memory() per request, and RUNTIME_BYTES of the device."""
    kind = device.split(":")[0]
    if kind not in DEVICE_KINDS:
        raise CheckpointError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")
    name = dtype_name(dtype or default_dtype(kind, info.total_parameters))
    weights = {part: n * (4 if part == "change_score_head" else DTYPE_BYTES[name])
               for part, n in info.parameters.items() if n}
    per_request = request_memory(info, name, info.context_tokens)
    kv_cache, activations = (batch_size * per_request[key] for key in ("kv_cache", "activations"))
    runtime = RUNTIME_BYTES[kind]
    return {"device": kind, "dtype": name, "batch_size": batch_size, "weights": weights,
            "kv_cache": kv_cache, "activations": activations, "runtime": runtime,
            "total": sum(weights.values()) + kv_cache + activations + runtime}


def _size(n: float) -> str:
    if n >= 2 ** 30:
        return f"{n / 2 ** 30:.2f} GiB"
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n / 1024:.0f} KiB"


def _params(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


def headline(info: CheckpointInfo) -> str:
    """Model id, kind, size and folder in a few words."""
    return f"{info.model_id} ({info.kind}, {_params(info.total_parameters)} parameters) in {info.path}"


def describe(info: CheckpointInfo, devices: Sequence[str] = ("cpu", "cuda"), dtype: str | None = None,
             batch_size: int = 1, clue: CheckpointInfo | None = None) -> list[str]:
    """Human-readable lines, "Label: text": what the model can do and what it needs, with the expected
    memory on each of `devices` at `dtype` (default: the device's) for `batch_size` requests, and the
    clue model when there is one."""
    tokens, frames = info.tokens_per_image, info.num_video_frames
    if info.pair_mode == CEM_PAIR:
        change = f"before and after fused by the Change Extraction module (CEM) → one slot of {tokens} tokens"
    else:
        change = f"two images in one prompt (no CEM) → 2 slots of {tokens} tokens"
    parts = ", ".join(f"{PART_NAMES[p]} {_params(n)}" for p, n in info.parameters.items() if n)
    dtypes = set(info.dtypes.values())
    on_disk = dtypes.pop() if len(dtypes) == 1 else ", ".join(f"{PART_NAMES[p]} {d}" for p, d in info.dtypes.items())
    lines = [f"Model: {headline(info)}",
             f"Questions (VQA): one image → {tokens} visual tokens ({info.image_size} px, "
             f"{info.grid}×{info.grid} patches of {info.patch_size} px)",
             f"Change: {change}",
             f"Sequences: {frames} frames (config num_video_frames) → {frames} slots, {frames * tokens} tokens",
             f"Context: {info.context_tokens:,} tokens (prompt and answer)",
             f"Parameters: {_params(info.total_parameters)} — {parts}",
             f"On disk: {on_disk}"]
    for device in devices:
        m = expected_memory(info, dtype, device, batch_size)
        where = "GPU" if m["device"] == "cuda" else "CPU"
        requests = "1 request" if batch_size == 1 else f"{batch_size} requests at once"
        lines.append(f"Memory on {where}: about {_size(m['total'])} in {m['dtype']} for {requests} (weights "
                     f"{_size(sum(m['weights'].values()))} + KV cache {_size(m['kv_cache'])} + activations "
                     f"{_size(m['activations'])} + runtime {_size(m['runtime'])})")
    default, *others = info.change_scores
    lines.append(f"Change score: {default}, {SCORE_MEANINGS[default]}"
                 + (f"; also {', '.join(others)}" if others else ""))
    calibrated = []
    for score, t in info.thresholds.items():
        if t is None:
            calibrated.append(f"{score} not calibrated")
            continue
        accuracy = t["balanced_accuracy"]
        how = f", balanced accuracy {accuracy * 100:.1f} %" if isinstance(accuracy, (int, float)) else ""
        calibrated.append(f"{score} {t['threshold']:.3g} ({t['file']}{how})")
    lines.append(f"Thresholds: {', '.join(calibrated)}")
    if clue:
        lines.append(f"Clue model: {headline(clue)}")
    return lines
