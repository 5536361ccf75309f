"""Frames for the SEQUENCE input: uniformly sampled video frames (PyAV) or a dated raster stack."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..types import Chip, GeoRef
from .raster import EmptyFileError, check_path_text, open_raster, read_chip

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v"}
MIN_FRAMES = 2   # one frame is an image, not a sequence: there is no event or motion to classify
ACCEPTS = "classify accepts one video file, or two or more images (frames) in time order"


def read_sequence(paths: list[str | Path], n: int, **raster_kw: Any) -> list[Chip]:
    """The frames of a SEQUENCE request: one video file (any container FFmpeg reads, whatever its
    extension), or a dated stack of two or more rasters; at most `n`, at least MIN_FRAMES."""
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError(f"no input: {ACCEPTS}")
    for path in paths:
        check_path_text(path)
    videos = [p for p in paths if Path(p).suffix.lower() in VIDEO_SUFFIXES]
    if len(paths) == 1:
        chips = _read_single_input(paths[0], n)
    elif videos:
        raise ValueError(f"{videos[0]} is a video among {len(paths)} inputs; {ACCEPTS}")
    else:
        try:
            chips = read_frame_stack(paths, n, **raster_kw)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:   # e.g. a video among the frames: say what is accepted
            raise ValueError(f"{exc}; {ACCEPTS}") from None
    if len(chips) < MIN_FRAMES:
        raise ValueError(f"{paths[0]}: {_frames(len(chips))}; a sequence needs at least {MIN_FRAMES} "
                         f"({ACCEPTS})")
    return chips


def _frames(count: int) -> str:
    return f"{count} frame" if count == 1 else f"{count} frames"


def _read_single_input(path: str, n: int) -> list[Chip]:
    """The frames of a single input: a video by its extension, else whatever FFmpeg decodes and GDAL
    does not open (a lone raster is one frame, refused without reading it)."""
    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        return read_video_frames(path, n)
    try:
        open_raster(path).close()
    except (FileNotFoundError, IsADirectoryError, EmptyFileError):
        raise                          # neither a video: GDAL's reason is the whole story
    except (OSError, ValueError):
        try:
            return read_video_frames(path, n)
        except ValueError:
            raise ValueError(f"{path} is neither a video FFmpeg can read nor a raster GDAL can read; "
                             f"{ACCEPTS}") from None
    raise ValueError(f"{path} is one image ({_frames(1)}); a sequence needs at least {MIN_FRAMES} ({ACCEPTS})")


def read_video_frames(path: str | Path, n: int = 8) -> list[Chip]:
    """`n` frames sampled uniformly over the first video stream, as RGB chips.

    Sampling follows VILA/UniRS training: decoded-frame indexes np.linspace(0, count - 2, n).
    A video with at most `n` frames gives all of them (fewer than `n`; the caller decides)."""
    path = str(path)
    check_path_text(path)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    indexes = frame_indexes(_header_frame_count(path) or _decoded_frame_count(path), n)
    chips = _decode(path, indexes)
    if len(chips) < len(indexes):  # the container's frame count was too high: count for real
        indexes = frame_indexes(_decoded_frame_count(path), n)
        chips = _decode(path, indexes)
    return chips


def read_frame_stack(paths: list[str | Path], n: int | None = None, **raster_kw: Any) -> list[Chip]:
    """Chips of a dated stack of rasters given in time order (each read by read_chip with
    `raster_kw`); when there are more than `n`, `n` spread uniformly from first to last."""
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("a frame stack needs at least one raster")
    if n is not None and len(paths) > n:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]
    return [read_chip(p, **raster_kw) for p in paths]


def frame_indexes(count: int, n: int) -> list[int]:
    """Which of a video's `count` frames read_video_frames keeps for `n`."""
    if count <= n:
        return list(range(count))
    return np.linspace(0, count - 2, n, dtype=int).tolist()  # distinct since count > n


@contextmanager
def _video_stream(path: str) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container and its first video stream; PyAV/FFmpeg errors become one-line ValueErrors."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream in this file")
            yield container, container.streams.video[0]
    except av.error.FFmpegError as exc:
        raise ValueError(f"{path}: cannot read video ({exc})") from exc


def _header_frame_count(path: str) -> int:
    """Frame count stored in the container (0 when it has none, e.g. Matroska)."""
    with _video_stream(path) as (_, stream):
        return stream.frames


def _decoded_frame_count(path: str) -> int:
    with _video_stream(path) as (container, stream):
        count = sum(1 for _ in container.decode(stream))
    if count == 0:
        raise ValueError(f"{path}: the video has no frames")
    return count


def _decode(path: str, indexes: list[int]) -> list[Chip]:
    """Decode up to the last wanted frame, keeping the wanted ones."""
    wanted = set(indexes)
    chips = []
    with _video_stream(path) as (container, stream):
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                image = frame.to_ndarray(format="rgb24")                  # (H, W, 3) uint8
                georef = GeoRef(f"{path}#frame={i}", None, None, None, image.shape[1], image.shape[0])
                chips.append(Chip(image, georef))
            if i >= indexes[-1]:
                break
    return chips
