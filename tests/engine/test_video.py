"""Video frames through PyAV and dated raster stacks, sampled uniformly."""

from __future__ import annotations

import av
import numpy as np
import pytest

from unirs_engine.inputs.video import read_frame_stack, read_video_frames
from unirs_engine.testing.rasters import ORIGIN, RES, grid, pattern, write_raster, write_video

COLOURS = np.random.default_rng(0).integers(20, 236, (40, 3))   # one distinct solid colour per frame


def solid_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    return np.broadcast_to(COLOURS[:count, None, None, :], (count, height, width, 3)).astype(np.uint8)


def frame_index(chip) -> int:
    return int(chip.georef.source.rsplit("#frame=", 1)[1])


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_video_round_trip_samples_8_of_40_frames_uniformly(tmp_path, suffix):
    path = write_video(tmp_path / f"clip.{suffix}", solid_frames(40))
    with av.open(str(path)) as container:
        header_count = container.streams.video[0].frames
    assert header_count == (40 if suffix == "mp4" else 0)     # Matroska stores no count: decode to count
    chips = read_video_frames(path, n=8)
    indexes = [frame_index(c) for c in chips]
    assert indexes == np.linspace(0, 38, 8, dtype=int).tolist() == [0, 5, 10, 16, 21, 27, 32, 38]
    for chip, i in zip(chips, indexes):
        assert chip.image.shape == (48, 64, 3) and chip.image.dtype == np.uint8
        assert (chip.georef.width, chip.georef.height, chip.georef.crs, chip.georef.bounds) == (64, 48, None, None)
        assert chip.georef.source == f"{path}#frame={i}"
        mean = chip.image.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - COLOURS[i]).max() < 6                            # codec tolerance
        assert np.abs(COLOURS[:40] - mean).sum(axis=1).argmin() == i         # and no other frame's colour


def test_short_video_gives_all_its_frames(tmp_path):
    chips = read_video_frames(write_video(tmp_path / "short.mp4", solid_frames(5)), n=8)
    assert [frame_index(c) for c in chips] == [0, 1, 2, 3, 4]


def test_unreadable_or_missing_video_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(ValueError, match=r"junk\.mp4: cannot read video"):
        read_video_frames(junk)
    with pytest.raises(ValueError, match=r"missing\.mp4: cannot read video"):
        read_video_frames(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="n must be >= 1"):
        read_video_frames(junk, n=0)


def test_frame_stack_samples_uniformly_from_first_to_last(tmp_path):
    paths = [write_raster(tmp_path / f"t{i:02d}.tif", np.full((3, 8, 8), 10 * i, np.uint8)) for i in range(10)]
    chips = read_frame_stack(paths, n=4)
    assert [c.georef.source for c in chips] == [str(paths[i]) for i in (0, 3, 6, 9)]
    assert [int(c.image[0, 0, 0]) for c in chips] == [0, 30, 60, 90]
    assert len(read_frame_stack(paths)) == 10 and len(read_frame_stack(paths[:3], n=8)) == 3
    with pytest.raises(ValueError, match="at least one raster"):
        read_frame_stack([])


def test_frame_stack_passes_window_and_size_to_every_raster(tmp_path):
    paths = [write_raster(tmp_path / f"t{i}.tif", pattern(64, 64, seed=i)) for i in range(3)]
    bounds = (ORIGIN[0], ORIGIN[1] - 40 * RES, ORIGIN[0] + 40 * RES, ORIGIN[1])
    chips = read_frame_stack(paths, bounds=bounds, max_size=20, bands=(3, 2, 1))
    for chip in chips:
        assert chip.image.shape == (20, 20, 3) and chip.georef.bands == (3, 2, 1)
        assert chip.georef.bounds == pytest.approx(bounds)
        assert chip.georef.transform == pytest.approx(tuple(grid(res=2 * RES))[:6])
