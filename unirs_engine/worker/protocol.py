"""The worker's wire format: one JSON object per line, UTF-8, over the worker's stdin/stdout.

Requests (client -> worker): {"id": str, "op": str, "params": {...}}. Ops are "hello", "info", "ask",
"change", "classify", whatever server.register_op adds, and two control ops: "cancel"
(params {"target": <request id>}) and "shutdown".

Responses (worker -> client): {"id": str | None, "type": ..., ...}
  ready      {"protocol": int, "info": {...}}   once, id None, after the model loaded
  progress   {"fraction": float, "message": str}
  heartbeat  {}                                 every few seconds per request in progress (id None while loading)
  result     {"result": {...}}                  Result.to_dict() for ask/change/classify
  error      {"error": {"type": str, "message": str}}   id None: the line or the start itself failed;
             message: one line, ready for the user (describe_error); type: the exception's class name
  cancelled  {}
Each request gets exactly one final response: result, error or cancelled. Responses to different
requests may interleave (a "review" lets waiting requests run between its batches): match them by id.
Inputs travel as file paths, never as pixels.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import UnirsError, is_expected

PROTOCOL_VERSION = 1
CONTROL_OPS = ("cancel", "shutdown")
FINAL_TYPES = ("result", "error", "cancelled")
RESPONSE_TYPES = ("ready", "progress", "heartbeat", *FINAL_TYPES)

# Fields each response type must carry, with their JSON types.
_RESPONSE_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "ready": {"protocol": int, "info": dict},
    "progress": {"fraction": (int, float), "message": str},
    "heartbeat": {},
    "result": {"result": dict},
    "error": {"error": dict},
    "cancelled": {},
}


class ProtocolError(UnirsError, ValueError):
    """A line that is not a valid protocol message; the message says what is wrong."""


class RequestError(UnirsError, ValueError):
    """A request the worker cannot run as given (unknown op, a param missing, of the wrong type or a
    relative path); the message says which op and param, and what it must be."""


MESSAGE_LIMIT = 2000  # characters of an error message (a message quoting a huge param stays readable)
# Where a "path" param may point besides an absolute path: GDAL's virtual file systems, URLs and
# GDAL connection strings such as NETCDF:"file.nc":var (a driver name, then a colon).
_VIRTUAL_LOCATION = re.compile(r"^(/vsi[a-z0-9_]+/|[A-Za-z][A-Za-z0-9+.-]*://|[A-Z][A-Z0-9_]+:)")


def is_virtual_location(path: str) -> bool:
    """True for a GDAL virtual path, a URL or a GDAL connection string: not made absolute, not checked."""
    return bool(_VIRTUAL_LOCATION.match(path))


def encode(msg: dict[str, Any]) -> str:
    """`msg` as one protocol line (validated, newline-terminated)."""
    validate(msg)
    # ASCII escapes keep any str intact, even paths with undecodable bytes (lone surrogates).
    return json.dumps(msg, ensure_ascii=True, separators=(",", ":")) + "\n"


def decode(line: str | bytes) -> dict[str, Any]:
    """The message on one protocol line; ProtocolError when it is not one."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"line is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    text = line.strip()
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"line is not JSON ({exc.msg}): {_clip(text)}") from None
    validate(msg)
    return msg


def validate(msg: Any) -> None:
    """Raise ProtocolError naming the first thing wrong with a request or response."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(msg).__name__}")
    if "id" not in msg or not (msg["id"] is None or isinstance(msg["id"], str)):
        raise ProtocolError(f"a message needs an 'id' (string or null): {_clip(msg)}")
    if ("op" in msg) == ("type" in msg):
        raise ProtocolError(f"a message needs exactly one of 'op' (request) or 'type' (response): {_clip(msg)}")
    if "op" in msg:
        _validate_request(msg)
    else:
        _validate_response(msg)


def _validate_request(msg: dict[str, Any]) -> None:
    op = msg["op"]
    if not isinstance(op, str) or not op:
        raise ProtocolError(f"'op' must be a non-empty string: {_clip(msg)}")
    if msg["id"] is None:
        raise ProtocolError(f"request '{op}' needs a string 'id'")
    params = msg.setdefault("params", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"request '{op}' ({msg['id']}): 'params' must be an object")
    if op == "cancel" and not isinstance(params.get("target"), str):
        raise ProtocolError(f"request 'cancel' ({msg['id']}) needs params.target, the id to cancel")


def _validate_response(msg: dict[str, Any]) -> None:
    kind = msg["type"]
    if kind not in _RESPONSE_FIELDS:
        raise ProtocolError(f"unknown response type {kind!r} (expected one of {', '.join(RESPONSE_TYPES)})")
    for name, expected in _RESPONSE_FIELDS[kind].items():
        value = msg.get(name)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ProtocolError(f"'{kind}' response ({msg['id']}) needs '{name}' of type "
                                f"{getattr(expected, '__name__', 'number')}: {_clip(msg)}")
    if kind == "error" and not all(isinstance(msg["error"].get(k), str) for k in ("type", "message")):
        raise ProtocolError(f"'error' response ({msg['id']}) needs error.type and error.message strings")


def describe_error(exc: BaseException) -> str:
    """How a failure reads to the user, on one line: an expected error's own message; an OSError's
    "file: reason"; anything else (a bug) "Type: message", the type helping the bug report.
    Expected errors: errors.py (our requests' own, RequestError and ProtocolError, among them)."""
    if is_expected(exc):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = f"{type(exc).__name__}: {exc}"
    return error_text(text)


def error_text(message: str) -> str:
    """`message` on one line (whitespace runs become one space), clipped to MESSAGE_LIMIT."""
    message = " ".join(message.split())
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT - 3] + "..."


def _clip(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


# ---- message constructors (so both ends spell messages the same way) -------------------------

def request(rid: str, op: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "op": op, "params": params or {}}


def ready(info: dict[str, Any]) -> dict[str, Any]:
    return {"id": None, "type": "ready", "protocol": PROTOCOL_VERSION, "info": info}


def progress(rid: str, fraction: float, message: str) -> dict[str, Any]:
    return {"id": rid, "type": "progress", "fraction": float(fraction), "message": message}


def heartbeat(rid: str | None) -> dict[str, Any]:
    return {"id": rid, "type": "heartbeat"}


def result(rid: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "type": "result", "result": payload}


def error(rid: str | None, exc_type: str, message: str) -> dict[str, Any]:
    """error.type: the exception's class name (diagnostics); error.message: what the user reads."""
    return {"id": rid, "type": "error", "error": {"type": exc_type, "message": message}}


def cancelled(rid: str) -> dict[str, Any]:
    return {"id": rid, "type": "cancelled"}
