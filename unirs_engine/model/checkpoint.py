"""Load and save UniRS / VILA-1.5 checkpoints (safetensors only).

Layout: config.json (VILA's top-level keys, UniRS adds chg), llm/ (LlamaForCausalLM + tokenizer.model),
vision_tower/ (SiglipVisionModel + preprocessor_config.json), mm_projector/ (config.json +
model.safetensors with VILA's `layers.{1,2,4}.*` or UniRS' `layers.single.*` + `layers.change.*`),
and optionally change_score/ (config.json + model.safetensors: the review's change-score head,
model/change_score.py; without it the review scores with the CEM's cosine).

Every check that needs no torch (layout, configs, safetensors headers) is checkpoint_info.py's
`inspect_checkpoint`, called first; this module adds what needs the model built: tensor shapes against
a meta-device skeleton, and the loading report.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (LlamaConfig, LlamaForCausalLM, SiglipImageProcessorPil, SiglipVisionConfig,
                          SiglipVisionModel)
from transformers.utils import logging as transformers_logging

from ..checkpoint_info import (DTYPE_ALIASES, IGNORED_TENSORS, INDEX_FILE, VILA_PROJECTOR_KEY, CheckpointError,
                               CheckpointInfo, TensorHeader, default_dtype, dtype_name, inspect_checkpoint,
                               read_json, read_weights)
from .change_score import FOLDER as CHANGE_SCORE_FOLDER, ChangeScoreHead
from .factory import PROJECTOR_CFG
from .projector import MultimodalProjector
from .tokenizer import TOKENIZER_FILE, load_tokenizer
from .unirs import UniRSModel
from .vision import VisionTower

VISION_PREFIX = "vision_model."   # HF SigLIP files name tensors vision_model.*; transformers 5 strips it
DTYPES = {alias: getattr(torch, name) for alias, name in DTYPE_ALIASES.items()}


@dataclass
class LoadedModel:
    model: UniRSModel
    tokenizer: Any                          # transformers LlamaTokenizer, pad = unk
    image_processor: SiglipImageProcessorPil
    model_id: str
    path: Path
    device: torch.device
    dtype: torch.dtype
    checkpoint: CheckpointInfo              # what its files hold (checkpoint_info.inspect_checkpoint)
    change_head: ChangeScoreHead | None = None   # change_score/ when the checkpoint has one
    change_head_config: dict[str, Any] | None = None   # its config.json (architecture, threshold, training)


def pick_device(device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                parameters: int = 0) -> tuple[torch.device, torch.dtype]:
    """CUDA when available, else the CPU; at checkpoint_info.default_dtype for a model of `parameters`
    (bfloat16 on CUDA, float16 where CUDA lacks it; float32 on the CPU unless the model is large and the
    CPU has bfloat16). Either can be forced ("cpu", "bf16"). A device or dtype that cannot be used is
    a one-line CheckpointError."""
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
        chosen = DTYPES[default_dtype(dev.type, parameters)]
        if chosen == torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            chosen = torch.float16
        return dev, chosen
    if isinstance(dtype, torch.dtype):
        return dev, dtype
    return dev, DTYPES[dtype_name(dtype)]


# ---- loading ----------------------------------------------------------------------------------

def _check_shapes(expected: dict[str, torch.Tensor], found: dict[str, TensorHeader],
                  folder: Path, strip_prefix: str = "") -> None:
    """Every saved tensor exists in the model built from config.json, with the same shape."""
    for name, (_, shape, file) in found.items():
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
    index = folder / INDEX_FILE
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
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(LlamaConfig.from_pretrained(folder))
    _check_shapes(skeleton.state_dict(), read_weights(folder), folder)
    llm, info = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True,
                                                 local_files_only=True, output_loading_info=True)
    _check_loading_info(info, folder)
    return llm


def _load_vision(folder: Path, dtype: torch.dtype, select_layer: int) -> VisionTower:
    config = SiglipVisionConfig.from_pretrained(folder)
    config.vision_use_head = False  # features come from hidden_states; a saved head is ignored
    with torch.device("meta"):
        skeleton = SiglipVisionModel(config)
    _check_shapes(skeleton.state_dict(), read_weights(folder), folder, strip_prefix=VISION_PREFIX)
    with _quiet_transformers():
        model, info = SiglipVisionModel.from_pretrained(folder, config=config, dtype=dtype,
                                                        use_safetensors=True, local_files_only=True,
                                                        output_loading_info=True)
    _check_loading_info(info, folder)
    return VisionTower(model, select_layer)


def _projector_state(folder: Path) -> dict[str, torch.Tensor]:
    """The projector's tensors with VILA's `layers.N.*` renamed to UniRS' `layers.single.N.*`
    (inspect_checkpoint refused a file that mixes the two)."""
    state: dict[str, torch.Tensor] = {}
    for file in sorted({t.file for t in read_weights(folder).values()}):
        state.update(load_file(str(file)))
    if any(VILA_PROJECTOR_KEY.match(k) for k in state):
        state = {"layers.single." + k.removeprefix("layers."): v for k, v in state.items()}
    return state


def _load_projector(folder: Path, config: dict[str, Any], grid: int, dtype: torch.dtype) -> MultimodalProjector:
    state = _projector_state(folder)
    weights = folder / "model.safetensors"
    has_change = any(k.startswith("layers.change.") for k in state)
    projector = MultimodalProjector(config["mm_hidden_size"], config["hidden_size"],
                                    change_grid=grid if has_change else None)
    expected = projector.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{weights}: missing tensor {missing[0]!r} (expected "
                              f"{len(expected)} projector tensors)")
    _check_shapes(expected, {k: TensorHeader(str(v.dtype), tuple(v.shape), weights) for k, v in state.items()},
                  folder)
    projector.load_state_dict(state, strict=True)
    return projector.to(dtype)


def _load_change_head(folder: Path, dim: int) -> tuple[ChangeScoreHead, dict[str, Any]]:
    """The checkpoint's change-score head (float32, eval mode) and its config."""
    config = read_json(folder / "config.json", "the change-score head config")
    head = ChangeScoreHead(dim, int(config["hidden"]), float(config["dropout"]))
    shapes = read_weights(folder)
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
    info = inspect_checkpoint(path)
    dev, dt = pick_device(device, dtype, info.total_parameters)
    config = read_json(path / "config.json", "the VILA-1.5 top-level config")
    llm = _load_llm(path / "llm", dt)
    tower = _load_vision(path / "vision_tower", dt, int(config.get("mm_vision_select_layer", -2)))
    projector = _load_projector(path / "mm_projector", config, tower.grid, dt)
    try:
        tokenizer = load_tokenizer(path / "llm")
    except Exception as exc:  # sentencepiece/protobuf/tokenizers each raise their own types
        raise CheckpointError(f"{path / 'llm' / TOKENIZER_FILE}: unreadable tokenizer "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    image_processor = SiglipImageProcessorPil.from_pretrained(path / "vision_tower")
    model = UniRSModel(tower, projector, llm, config).to(dev).eval()
    head = head_config = None
    if (path / CHANGE_SCORE_FOLDER).is_dir():
        head, head_config = _load_change_head(path / CHANGE_SCORE_FOLDER, tower.hidden_size)
        head = head.to(dev)   # float32 whatever the model's dtype: it is tiny
    return LoadedModel(model=model, tokenizer=tokenizer, image_processor=image_processor,
                       model_id=info.model_id, path=path, device=dev, dtype=dt, checkpoint=info,
                       change_head=head, change_head_config=head_config)


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
