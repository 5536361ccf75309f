"""The one shared engine client of the plugin: created lazily, recreated when settings change.

The client is thread-safe and several requests may be in flight at once (a question from the dock
is answered between the batches of a review that runs in Processing), so Processing algorithms in
background threads and the dock's QgsTasks can all use it. The worker (a subprocess by default) is itself started
lazily by the client on its first request and restarted by it after a crash.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from .settings import PluginSettings

if TYPE_CHECKING:
    from unirs_engine.worker.client import EngineClient

_lock = threading.Lock()
_client: EngineClient | None = None
_client_key: tuple | None = None
_last_info: dict | None = None   # the engine's last info() seen (About shows it without asking)


def engine_key(settings: PluginSettings) -> tuple:
    """The settings that decide which worker we talk to (a change starts another worker; asking
    for a clue is per request, the clue model is loaded by the worker)."""
    return (settings.mode, settings.model_dir, settings.python, settings.device, settings.clue_model_dir)


def get_client(settings: PluginSettings | None = None) -> EngineClient:
    """The shared client for `settings` (default: the saved settings)."""
    # Imported here: the client module is light, but keep plugin import free of engine code paths.
    from unirs_engine.worker.client import make_client

    global _client, _client_key
    settings = settings or PluginSettings.load()
    key = engine_key(settings)
    with _lock:
        if _client is not None and _client_key != key:
            _client.close()
            _client = None
        if _client is None:
            _client = make_client(
                mode=settings.mode,
                model_dir=settings.model_dir or os.environ.get("UNIRS_MODEL") or None,
                python=settings.python or None,
                device=None if settings.device == "auto" else settings.device,
                clue_model_dir=settings.clue_model_dir or None,
            )
            _client_key = key
        return _client


def is_running(client: EngineClient) -> bool:
    """True when `client` has a live worker (its next request does not wait for a model load).
    In-process clients report True: their load is announced by the engine's own progress."""
    return client.mode != "subprocess" or client.pid is not None


def remember_info(info: dict) -> dict:
    """Keep `info` (client.info()) for last_info(); returns it."""
    global _last_info
    _last_info = dict(info)
    return info


def last_info() -> dict | None:
    """The engine's info from the last answer of this session, or None before the first one."""
    return _last_info


def shutdown_client() -> None:
    """Stop the worker (plugin unload); the next get_client() starts afresh."""
    global _client, _client_key
    with _lock:
        if _client is not None:
            _client.close()
        _client, _client_key = None, None


def format_engine(info: dict) -> str:
    """One line for the user: model id, device (with the GPU name on CUDA) and mode."""
    device = str(info.get("device", "?"))
    where = f"CUDA {info.get('device_name', '')}".strip() if device.startswith("cuda") else "CPU"
    text = f"{info.get('model_id', '?')} · {where}"
    if info.get("mode") == "inprocess":
        text += " · in-process"
    if info.get("warning"):   # a large model on the CPU (the engine's estimate is in the warning)
        text += " · slow here"
    return text


def describe_engine(settings: PluginSettings | None = None) -> str:
    """E.g. "UniRS demo · CPU" or "unirs-7b · CUDA NVIDIA RTX 4090" (starts the worker if needed)."""
    return format_engine(get_client(settings).info())
