"""Load and save UniRS / VILA-1.5 checkpoints (safetensors only).

Layout: config.json (VILA's top-level keys, UniRS adds chg), llm/ (LlamaForCausalLM + tokenizer.model),
vision_tower/ (SiglipVisionModel + preprocessor_config.json), mm_projector/ (config.json +
model.safetensors with VILA's `layers.{1,2,4}.*` or UniRS' `layers.single.*` + `layers.change.*`),
and optionally change_score/ (config.json + model.safetensors: the review's change-score head,
model/change_score.py; without it the review scores with the CEM's cosine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (LlamaConfig, LlamaForCausalLM, SiglipImageProcessorPil, SiglipVisionConfig,
                          SiglipVisionModel)
from transformers.utils import logging as transformers_logging

from .change_score import FOLDER as CHANGE_SCORE_FOLDER, KIND as CHANGE_SCORE_KIND, ChangeScoreHead
from .factory import PROJECTOR_CFG
from .projector import MultimodalProjector
from .tokenizer import TOKENIZER_FILE, load_tokenizer
from .unirs import UniRSModel
from .vision import VisionTower

SUBFOLDERS = ("llm", "vision_tower", "mm_projector")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
VISION_PREFIX = "vision_model."   # HF SigLIP files name tensors vision_model.*; transformers 5 strips it
# Tensors a checkpoint may carry that the model rightly lacks: SigLIP's unused pooling head, and
# buffers that older transformers versions saved (rotary inv_freq, position ids).
IGNORED_TENSORS = re.compile(r"^(vision_model\.)?head\.|rotary_emb\.inv_freq$|(^|\.)position_ids$")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the one-line message names the file and what was expected."""


@dataclass
class LoadedModel:
    model: UniRSModel
    tokenizer: Any                          # transformers LlamaTokenizer, pad = unk
    image_processor: SiglipImageProcessorPil
    model_id: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    change_head: ChangeScoreHead | None = None   # change_score/ when the checkpoint has one
    change_head_config: dict[str, Any] | None = None   # its config.json (architecture, threshold, training)


def pick_device(device: str | torch.device | None = None,
                dtype: str | torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA + bfloat16 when available, else CPU + float32; either can be forced ("cpu", "bf16").
    A device or dtype that cannot be used is a one-line CheckpointError."""
    if device is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise CheckpointError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CheckpointError(f"device {device!r} requested but CUDA is not available to this "
                                  f"PyTorch {torch.__version__}; use device 'cpu'")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CheckpointError(f"device {device!r} requested but this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s), numbered from 0")
    if dtype is None:
        if dev.type != "cuda":
            return dev, torch.float32
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if isinstance(dtype, torch.dtype):
        return dev, dtype
    name = str(dtype).removeprefix("torch.").lower()
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; expected one of {', '.join(sorted(DTYPES))}")
    return dev, DTYPES[name]


# ---- loading ----------------------------------------------------------------------------------

def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (expected {what})")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def _expect_type(config: dict[str, Any], key: str, expected: str, path: Path) -> None:
    if config.get(key) != expected:
        raise CheckpointError(f"{path}: {key} is {config.get(key)!r}, expected {expected!r}")


def _weight_shapes(folder: Path) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Tensor name -> (shape, file) over the folder's safetensors; refuses pickles and broken files."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{folder / pickles[0]}: PyTorch pickle weights are refused (unsafe to "
                                  f"load); expected model.safetensors (convert the checkpoint first)")
        raise CheckpointError(f"{folder / 'model.safetensors'}: missing (expected safetensors weights)")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(_read_json(index, "a safetensors index").get("weight_map", {}).values())
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{folder / shard}: missing (listed in {index.name})")
    shapes: dict[str, tuple[tuple[int, ...], Path]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    shapes[name] = (tuple(f.get_slice(name).get_shape()), file)
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
            raise CheckpointError(f"{file}: unreadable or truncated safetensors file ({exc})") from exc
    return shapes


def _check_shapes(expected: dict[str, torch.Tensor], found: dict[str, tuple[tuple[int, ...], Path]],
                  folder: Path, strip_prefix: str = "") -> None:
    """Every saved tensor exists in the model built from config.json, with the same shape."""
    for name, (shape, file) in found.items():
        name = name.removeprefix(strip_prefix)
        if IGNORED_TENSORS.search(name):
            continue
        if name not in expected:
            raise CheckpointError(f"{file}: unexpected tensor {name!r} for the model described by "
                                  f"{folder / 'config.json'}")
        if tuple(expected[name].shape) != shape:
            raise CheckpointError(f"{file}: tensor {name!r} has shape {list(shape)}, expected "
                                  f"{list(expected[name].shape)} from {folder / 'config.json'}")


def _check_loading_info(info: dict[str, Any], folder: Path) -> None:
    """Transformers only warns about missing/unexpected keys; a checkpoint here must be complete."""
    index = folder / "model.safetensors.index.json"
    weights = index if index.is_file() else folder / "model.safetensors"
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        items = sorted(str(k) for k in info.get(kind, []) if not IGNORED_TENSORS.search(str(k)))
        if items:
            raise CheckpointError(f"{weights}: {len(items)} {kind.replace('_', ' ')} for the model "
                                  f"described by config.json, e.g. {items[:3]}")


@contextmanager
def _quiet_transformers():
    """Silence transformers' load report when the only surprise is one we checked and ignore."""
    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


def _load_llm(folder: Path, dtype: torch.dtype) -> LlamaForCausalLM:
    config_path = folder / "config.json"
    config = _read_json(config_path, "the LLM config")
    _expect_type(config, "model_type", "llama", config_path)
    shapes = _weight_shapes(folder)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(LlamaConfig.from_pretrained(folder))
    _check_shapes(skeleton.state_dict(), shapes, folder)
    llm, info = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True,
                                                 local_files_only=True, output_loading_info=True)
    _check_loading_info(info, folder)
    return llm


def _load_vision(folder: Path, dtype: torch.dtype, select_layer: int) -> VisionTower:
    config_path = folder / "config.json"
    raw = _read_json(config_path, "the SigLIP vision tower config")
    _expect_type(raw, "model_type", "siglip_vision_model", config_path)
    config = SiglipVisionConfig.from_pretrained(folder)
    config.vision_use_head = False  # features come from hidden_states; a saved head is ignored
    shapes = _weight_shapes(folder)
    with torch.device("meta"):
        skeleton = SiglipVisionModel(config)
    _check_shapes(skeleton.state_dict(), shapes, folder, strip_prefix=VISION_PREFIX)
    with _quiet_transformers():
        model, info = SiglipVisionModel.from_pretrained(folder, config=config, dtype=dtype,
                                                        use_safetensors=True, local_files_only=True,
                                                        output_loading_info=True)
    _check_loading_info(info, folder)
    return VisionTower(model, select_layer)


def _projector_state(folder: Path) -> dict[str, torch.Tensor]:
    """The projector's tensors with VILA's `layers.N.*` renamed to UniRS' `layers.single.N.*`."""
    shapes = _weight_shapes(folder)
    state: dict[str, torch.Tensor] = {}
    for file in sorted({f for _, f in shapes.values()}):
        state.update(load_file(str(file)))
    vila = [k for k in state if re.match(r"layers\.\d+\.", k)]
    if vila and len(vila) != len(state):
        raise CheckpointError(f"{folder / 'model.safetensors'}: mixes VILA (layers.N.*) and UniRS "
                              f"(layers.single.*) projector keys")
    if vila:
        state = {"layers.single." + k.removeprefix("layers."): v for k, v in state.items()}
    return state


def _load_projector(folder: Path, config: dict[str, Any], ckpt_config_path: Path, grid: int,
                    dtype: torch.dtype) -> MultimodalProjector:
    config_path = folder / "config.json"
    _expect_type(_read_json(config_path, "the projector config"), "mm_projector_type",
                 "mlp_downsample", config_path)
    state = _projector_state(folder)
    weights = folder / "model.safetensors"
    has_change = any(k.startswith("layers.change.") for k in state)
    if config.get("chg") and not has_change:
        raise CheckpointError(f"{weights}: no layers.change.* tensors, but {ckpt_config_path} says "
                              f"chg true (expected the Change Extraction module)")
    try:
        projector = MultimodalProjector(int(config["mm_hidden_size"]), int(config["hidden_size"]),
                                        change_grid=grid if has_change else None)
    except KeyError as exc:
        raise CheckpointError(f"{ckpt_config_path}: missing key {exc} (expected VILA's hidden sizes)") from exc
    expected = projector.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{weights}: missing tensor {missing[0]!r} (expected "
                              f"{len(expected)} projector tensors)")
    _check_shapes(expected, {k: (tuple(v.shape), weights) for k, v in state.items()}, folder)
    projector.load_state_dict(state, strict=True)
    return projector.to(dtype)


def _load_change_head(folder: Path, dim: int) -> tuple[ChangeScoreHead, dict[str, Any]]:
    """The checkpoint's change-score head (float32, eval mode) and its config."""
    config_path = folder / "config.json"
    config = _read_json(config_path, "the change-score head config")
    _expect_type(config, "type", CHANGE_SCORE_KIND, config_path)
    if config.get("dim") != dim:
        raise CheckpointError(f"{config_path}: dim is {config.get('dim')!r}, expected the vision tower's "
                              f"width {dim} (the head belongs to another tower)")
    try:
        head = ChangeScoreHead(dim, int(config["hidden"]), float(config["dropout"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: missing or bad key {exc} (expected hidden and dropout)") from exc
    shapes = _weight_shapes(folder)
    expected = head.state_dict()
    _check_shapes(expected, shapes, folder)
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise CheckpointError(f"{folder / 'model.safetensors'}: missing tensor {missing[0]!r}")
    head.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return head.eval(), config


def load_checkpoint(path: str | Path, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = None) -> LoadedModel:
    """A UniRS or VILA-1.5 checkpoint directory -> model (eval mode), tokenizer, image processor."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder (expected config.json, llm/, "
                              f"vision_tower/, mm_projector/)")
    dev, dt = pick_device(device, dtype)
    config_path = path / "config.json"
    config = _read_json(config_path, "the VILA-1.5 top-level config")
    _expect_type(config, "model_type", "llava_llama", config_path)
    for sub in SUBFOLDERS:
        if not (path / sub).is_dir():
            raise CheckpointError(f"{path / sub}: missing folder (a VILA-1.5 checkpoint has "
                                  f"{', '.join(SUBFOLDERS)})")
    llm = _load_llm(path / "llm", dt)
    tower = _load_vision(path / "vision_tower", dt, int(config.get("mm_vision_select_layer", -2)))
    projector = _load_projector(path / "mm_projector", config, config_path, tower.grid, dt)
    try:
        tokenizer = load_tokenizer(path / "llm")
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from exc
    except Exception as exc:  # sentencepiece/protobuf/tokenizers each raise their own types
        raise CheckpointError(f"{path / 'llm' / TOKENIZER_FILE}: unreadable tokenizer "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    processor_dir = path / "vision_tower"
    _read_json(processor_dir / "preprocessor_config.json", "the SigLIP image processor config")
    image_processor = SiglipImageProcessorPil.from_pretrained(processor_dir)
    model = UniRSModel(tower, projector, llm, config).to(dev).eval()
    head = head_config = None
    if (path / CHANGE_SCORE_FOLDER).is_dir():
        head, head_config = _load_change_head(path / CHANGE_SCORE_FOLDER, tower.hidden_size)
        head = head.to(dev)   # float32 whatever the model's dtype: it is tiny
    return LoadedModel(model=model, tokenizer=tokenizer, image_processor=image_processor,
                       model_id=config.get("_name_or_path") or path.name, path=path,
                       device=dev, dtype=dt, change_head=head, change_head_config=head_config)


# ---- saving -----------------------------------------------------------------------------------

def default_image_processor(image_size: int) -> SiglipImageProcessorPil:
    """SigLIP's preprocessing: bicubic resize to the tower size, rescale 1/255, mean = std = 0.5."""
    return SiglipImageProcessorPil(size={"height": image_size, "width": image_size}, resample=3,
                                   do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                   image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def _top_config(model: UniRSModel, name: str) -> dict[str, Any]:
    """The model's top-level config refreshed from its live parts; `name` becomes its model id."""
    config = dict(model.config)
    config.update(
        _name_or_path=name,
        llm_cfg=model.llm.config.to_dict(),
        vision_tower_cfg=model.vision_tower.config.to_dict(),
        mm_projector_cfg=dict(PROJECTOR_CFG),
        hidden_size=model.llm.config.hidden_size,
        mm_hidden_size=model.vision_tower.hidden_size,
        mm_vision_select_layer=model.vision_tower.select_layer,
        model_dtype=str(model.llm.dtype),
    )
    if model.mm_projector.has_change:
        config.update(chg=True, chg_type="Chg2Cap", cc_n_layers=0)
    else:
        for key in ("chg", "chg_type", "cc_n_layers"):
            config.pop(key, None)
    return config


def _save_tensors(state: dict[str, torch.Tensor], file: Path, prefix: str = "") -> None:
    tensors = {prefix + k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(file), metadata={"format": "pt"})


def save_checkpoint(model: UniRSModel | LoadedModel, path: str | Path, tokenizer=None,
                    image_processor: SiglipImageProcessorPil | None = None) -> Path:
    """Write `model` in the VILA-1.5 layout at `path` (built aside, then moved into place).

    A change-score head is not written: it was trained on one tower's features, and a stage that
    saves a model may have changed them (`unirs train change-score` adds it to a checkpoint)."""
    if isinstance(model, LoadedModel):
        tokenizer = tokenizer or model.tokenizer
        image_processor = image_processor or model.image_processor
        model = model.model
    if tokenizer is None:
        raise ValueError("save_checkpoint needs the tokenizer (its tokenizer.model goes into llm/)")
    sp_model = Path(getattr(tokenizer, "vocab_file", None) or "")
    if not sp_model.is_file():
        raise ValueError(f"the tokenizer has no sentencepiece file to copy ({sp_model or 'none'}); "
                         f"load it from a folder holding {TOKENIZER_FILE}")
    image_processor = image_processor or default_image_processor(model.vision_tower.config.image_size)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    (tmp / "config.json").write_text(json.dumps(_top_config(model, path.name), indent=2))
    model.llm.save_pretrained(tmp / "llm")
    tokenizer.save_pretrained(tmp / "llm")
    shutil.copyfile(sp_model, tmp / "llm" / TOKENIZER_FILE)
    # Tensors named vision_model.* as in the released SigLIP/VILA files.
    model.vision_tower.config.architectures = ["SiglipVisionModel"]
    model.vision_tower.config.save_pretrained(tmp / "vision_tower")
    _save_tensors(model.vision_tower.model.state_dict(), tmp / "vision_tower" / "model.safetensors",
                  prefix=VISION_PREFIX)
    image_processor.save_pretrained(tmp / "vision_tower")
    (tmp / "mm_projector").mkdir()
    (tmp / "mm_projector" / "config.json").write_text(json.dumps(PROJECTOR_CFG, indent=2))
    _save_tensors(model.mm_projector.state_dict(), tmp / "mm_projector" / "model.safetensors")

    _move_into_place(tmp, path)
    return path


def save_change_head(head: ChangeScoreHead, checkpoint: str | Path, config: dict[str, Any]) -> Path:
    """Write the head into `checkpoint`/change_score/ (config.json = its architecture + `config`,
    model.safetensors), replacing one that is there; built aside, then moved into place."""
    folder = Path(checkpoint) / CHANGE_SCORE_FOLDER
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps({**head.architecture(), **config}, indent=2))
    _save_tensors(head.state_dict(), tmp / "model.safetensors")
    _move_into_place(tmp, folder)
    return folder


def _move_into_place(tmp: Path, path: Path) -> None:
    """Replace `path` by the finished folder `tmp`; the old one is moved aside first, so no reader
    ever sees half of either."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
