"""Bad input gets a clear one-line error, never a confident answer (issue #21, the engine's side):
prompts longer than the context, inputs without data, rotated rasters, unreadable paths, reads too
large for their overviews, sequences of one frame, parameters out of range.

Every input is GDAL-written; the model is the tiny random checkpoint (its answers mean nothing,
so these tests check what is refused, what is measured and what is read)."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from unirs_engine import prompts
from unirs_engine.engine import (MIN_VALID_FRACTION, Engine, EngineError, InputError, InvalidRequest,
                                 NotEnoughData, PromptTooLong, Request)
from unirs_engine.inputs.pair import read_pair
from unirs_engine.inputs.raster import MAX_READ_PIXELS, raster_info, read_chip
from unirs_engine.model.checkpoint import CheckpointError, load_checkpoint
from unirs_engine.testing.rasters import (ORIGIN, RES, SQUARE, UTM33, grid, pattern, write_big_mosaic,
                                          write_cog, write_raster, write_scene, write_video)
from unirs_engine.types import InputKind


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine.load(tiny_checkpoint, device="cpu", max_new_tokens=4)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_raster(tmp_path_factory.mktemp("good") / "good.tif", pattern(64, 64))


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# ---- the question must fit the model's context ---------------------------------------------

def test_a_question_longer_than_the_context_is_refused_with_its_token_count(engine, tmp_path):
    context = engine.model.model.llm.config.max_position_embeddings                 # 4096
    question = "How many buildings are near the river? " * 500                       # a few k tokens
    missing = tmp_path / "not_read.tif"     # refused before reading: the missing file is never seen
    with pytest.raises(PromptTooLong) as err:
        engine.ask(missing, question)
    instruction = prompts.question_instruction(question)                               # with the short-answer suffix
    ids = prompts.encode(engine.model.tokenizer, prompts.user_message(InputKind.IMAGE, instruction, 1))[0]
    per_slot = engine.model.model.visual_slots(torch.zeros(1, 25, 32), InputKind.IMAGE).shape[1]   # 9
    expected = len(ids) - 1 + per_slot
    assert expected > context
    assert one_line(err) == (f"the question makes a prompt of {expected:,} tokens (template and 1 image "
                             f"slot(s) of {per_slot} included); this model reads at most {context:,} "
                             f"(with 4 kept for the answer)")


def test_a_5_mb_question_is_refused_at_once_without_tokenising_it(engine, good):
    started = time.perf_counter()
    chars = len(prompts.question_instruction("x" * 5_000_000))                       # 5,000,051: the suffix too
    with pytest.raises(PromptTooLong, match=rf"the question is {chars:,} characters, at least [\d,]+ tokens; "
                                            r"this model reads at most 4,096"):
        engine.ask(good, "x" * 5_000_000)
    assert time.perf_counter() - started < 0.5


def test_a_question_that_fits_is_answered_and_the_answer_room_counts(engine, good):
    question = "How many buildings are near the river? " * 60                        # ~ 700 tokens
    assert isinstance(engine.ask(good, question).answer, str)
    with pytest.raises(PromptTooLong, match="with 3,900 kept for the answer"):
        engine.ask(good, question, max_new_tokens=3900)
    with pytest.raises(InvalidRequest, match="max_new_tokens 5,000 leaves no room"):
        engine.ask(good, "Is there a road?", max_new_tokens=5000)


def test_change_and_classify_instructions_are_bounded_too(engine, good):
    with pytest.raises(PromptTooLong, match="the instruction makes a prompt of"):
        engine.describe_change(good, good, "Describe the changes. " * 800)
    classes = [f"class number {i}" for i in range(1500)]
    with pytest.raises(PromptTooLong, match=r"the instruction \(with its class list\) is"):
        engine.classify_sequence([good, good], classes=classes)


def test_a_video_is_counted_again_once_its_frames_are_read(engine, videos):
    """Before reading, a video counts as MIN_FRAMES slots; its real frame count decides after."""
    context, per_slot = 4096, 9
    room = context - engine.max_new_tokens

    def tokens(question: str, slots: int) -> int:
        message = prompts.user_message(InputKind.SEQUENCE, question, slots)
        return len(prompts.encode(engine.model.tokenizer, message)[0]) - slots + slots * per_slot

    words = 1000
    while tokens("fire " * words, 2) <= room:                   # grow until 2 slots no longer fit...
        words += 50
    while tokens("fire " * words, 2) > room:                    # ...then back to the last that fits
        words -= 1
    question = "fire " * words
    assert tokens(question, 5) > room
    request = Request(InputKind.SEQUENCE, [videos["five"]], question, raw_instruction=False)
    with pytest.raises(PromptTooLong, match=r"prompt of [\d,]+ tokens \(template and 5 image slot\(s\)"):
        engine.run_batch([request])


# ---- a minimum fraction of pixels with data ------------------------------------------------

def test_all_nodata_and_all_nan_rasters_are_refused(engine, tmp_path):
    nodata = write_raster(tmp_path / "nodata.tif", np.zeros((3, 32, 32), np.uint8), nodata=0)
    nan = write_raster(tmp_path / "nan.tif", np.full((3, 32, 32), np.nan, np.float32))   # no nodata value
    for path in (nodata, nan):
        with pytest.raises(NotEnoughData) as err:
            engine.ask(path, "How many buildings are there?")
        assert one_line(err) == f"only 0 % of the pixels of {path} have data (minimum 50 %)"


def test_the_valid_fraction_is_measured_reported_and_configurable(engine, tiny_checkpoint, tmp_path):
    data = pattern(40, 40, dtype="float32")
    data[:, :16, :] = np.nan                                                  # 24 of 40 rows: 60 %
    path = write_raster(tmp_path / "sixty.tif", data)
    result = engine.ask(path, "Is there a road?")
    assert result.extra["valid_fraction"] == pytest.approx(0.6)
    with pytest.raises(NotEnoughData, match=r"only 60 % of the pixels of .*sixty\.tif have data \(minimum 70 %\)"):
        engine.run_batch([Request(InputKind.IMAGE, [path], "Is there a road?", min_valid_fraction=0.7)])
    strict = Engine(engine.model, max_new_tokens=4, min_valid_fraction=0.75)
    with pytest.raises(NotEnoughData, match="minimum 75 %"):
        strict.ask(path, "Is there a road?")
    assert MIN_VALID_FRACTION == 0.5
    with pytest.raises(InvalidRequest, match="min_valid_fraction must be a number between 0 and 1, got 1.5"):
        Engine.load(tiny_checkpoint, min_valid_fraction=1.5)


def test_a_pair_counts_the_pixels_valid_in_both_dates(engine, tmp_path):
    before, after = pattern(128, 128), pattern(128, 128, seed=1)
    before[:, 2:, :] = 0                                                      # rows 0-1 have data
    after[:, :, 2:] = 0                                                       # cols 0-1 have data
    b = write_raster(tmp_path / "b.tif", before, nodata=0)
    a = write_raster(tmp_path / "a.tif", after, nodata=0)
    with pytest.raises(NotEnoughData) as err:                                 # 4 of 16,384 pixels
        engine.describe_change(b, a)
    assert one_line(err) == (f"only 0.02441 % of the pixels of {b} and {a} (valid in both) have data "
                             f"(minimum 50 %)")
    empty_after = write_raster(tmp_path / "empty_after.tif", np.zeros((3, 128, 128), np.uint8), nodata=0)
    full_before = write_raster(tmp_path / "full.tif", pattern(128, 128))
    with pytest.raises(NotEnoughData, match="only 0 % of the pixels"):
        engine.describe_change(full_before, empty_after)
    half_after = pattern(128, 128, seed=2)
    half_after[:, :, :40] = 0                                                 # 88 of 128 columns
    result = engine.describe_change(full_before, write_raster(tmp_path / "half.tif", half_after, nodata=0))
    assert result.extra["valid_fraction"] == pytest.approx(88 / 128)


def test_a_sequence_is_refused_when_one_frame_has_no_data(engine, good, tmp_path):
    empty = write_raster(tmp_path / "cloud.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    with pytest.raises(NotEnoughData, match=r"only 0 % of the pixels of .*cloud\.tif have data"):
        engine.classify_sequence([good, empty, good])


# ---- rotated and sheared geotransforms -----------------------------------------------------

def rotated_transform(degrees: float) -> Affine:
    return Affine.translation(*ORIGIN) * Affine.rotation(-degrees) * Affine.scale(RES, -RES)


def test_a_rotated_raster_has_the_footprint_of_its_true_corners(tmp_path):
    transform = rotated_transform(20)
    path = write_raster(tmp_path / "rotated.tif", pattern(64, 64), transform=transform)
    xs, ys = zip(*(transform * corner for corner in ((0, 0), (64, 0), (0, 64), (64, 64))))
    true = (min(xs), min(ys), max(xs), max(ys))                    # 499781, 4499180, 500601, 4500000
    chip = read_chip(path)
    assert chip.georef.bounds == pytest.approx(true, abs=RES)
    assert chip.georef.transform[1] == chip.georef.transform[3] == 0  # the chip grid is north-up
    assert 0.55 < chip.valid.mean() < 0.67          # the corners outside the rotated square: no data
    assert raster_info(path)["bounds"] == pytest.approx(true, abs=RES)


def test_bounds_on_a_rotated_raster_read_the_area_asked_for(tmp_path):
    # The same landscape as everywhere, with its bright square, sampled on a 30 degree rotated grid.
    path = write_scene(tmp_path / "rotated.tif", crs=UTM33, transform=rotated_transform(30),
                       width=80, height=80, square=SQUARE)
    left, bottom, right, top = SQUARE
    asked = (left - 100, bottom - 100, right + 100, top + 100)      # 300 m around the 100 m square
    chip = read_chip(path, bounds=asked)
    assert chip.georef.bounds == pytest.approx(asked, abs=RES)
    bright = np.argwhere((chip.image > 200).all(axis=-1))           # (row, col) of the square
    g = chip.georef
    cols = g.bounds[0] + (bright[:, 1] + 0.5) * g.transform[0]
    rows = g.bounds[3] + (bright[:, 0] + 0.5) * g.transform[4]
    assert len(bright) > 50                                          # ~100 pixels of 10 m
    assert left - RES <= cols.min() and cols.max() <= right + RES
    assert bottom - RES <= rows.min() and rows.max() <= top + RES


# ---- files GDAL cannot open say why --------------------------------------------------------

def test_unreadable_paths_say_what_is_wrong(engine, good, tmp_path):
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n")
    undecodable = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.tif")   # Latin-1 bytes
    cases = {
        folder: f"{folder} is a directory, not a raster file",
        empty: f"{empty} is empty (0 bytes)",
        text: f"{text} is not a raster GDAL can read (no GDAL driver recognises its contents)",
        tmp_path / "missing.tif": f"{tmp_path / 'missing.tif'}: no such file",
        undecodable: f"{tmp_path}/caf\\xe9.tif: the file name is not valid UTF-8, so GDAL cannot open it; "
                     f"rename the file",
    }
    for path, message in cases.items():
        with pytest.raises(InputError) as err:
            engine.ask(path, "Is there a road?")
        assert one_line(err) == message


def test_an_unknown_bounds_crs_is_named(engine, good):
    with pytest.raises(InputError) as err:
        engine.ask(good, "Is there a road?", bounds=(0, 0, 1, 1), bounds_crs="EPSG:999999")
    assert one_line(err).startswith("unknown CRS 'EPSG:999999' for the bounds")


# ---- reads sized to their overviews, and a budget ------------------------------------------

def test_a_huge_raster_without_overviews_is_refused_before_reading(engine, tmp_path):
    big = write_big_mosaic(tmp_path, size=200_000)                  # two 256 px tiles, 200000 px wide
    started = time.perf_counter()
    with pytest.raises(InputError) as err:
        engine.ask(big, "Is there a road?")
    assert time.perf_counter() - started < 1.0
    assert one_line(err) == (
        f"{big}: reading 200,000 x 200,000 pixels at full resolution (no fitting overview) would touch "
        f"40,000,000,000 source pixels, more than the limit of {MAX_READ_PIXELS:,}; give bounds for a "
        f"smaller area, or build overviews (gdaladdo {big})")
    corner = (ORIGIN[0], ORIGIN[1] - 2560, ORIGIN[0] + 2560, ORIGIN[1])
    assert engine.ask(big, "Is there a road?", bounds=corner).georef[0].bounds == corner


def test_overviews_decide_what_a_decimated_read_costs(tmp_path):
    data = pattern(1024, 1024)
    cog = write_cog(tmp_path / "cog.tif", data)                     # overviews 1/2, 1/4
    plain = write_raster(tmp_path / "plain.tif", data)
    assert read_chip(cog, max_size=128, max_read_pixels=100_000).image.shape == (128, 128, 3)   # 65,536 read
    with pytest.raises(ValueError, match=r"1,024 x 1,024 pixels at full resolution .* 1,048,576 source"):
        read_chip(plain, max_size=128, max_read_pixels=100_000)
    with pytest.raises(ValueError, match=r"through its 1/4 overview would touch 65,536 source pixels"):
        read_chip(cog, max_size=128, max_read_pixels=60_000)
    assert read_chip(plain, max_size=128, max_read_pixels=None).image.shape == (128, 128, 3)


def test_the_after_image_of_a_pair_is_warped_from_its_fitting_overview(tmp_path):
    data = pattern(1024, 1024, seed=4)
    cog = write_cog(tmp_path / "after_cog.tif", data)
    plain = write_raster(tmp_path / "after_plain.tif", data)
    # before: the same 10,240 m square at 160 m, 64 x 64 px: the after is decimated 16 times.
    before = write_raster(tmp_path / "before.tif", pattern(64, 64), transform=grid(res=160.0))
    first, second = read_pair(before, cog, max_read_pixels=100_000)           # the 256 x 256 overview
    assert second.image.shape == (64, 64, 3) and second.valid.all()
    with rasterio.open(cog, overview_level=1) as overview:                     # the 1/4 level
        expected = overview.read(out_shape=(3, 64, 64), resampling=rasterio.enums.Resampling.average)
    assert np.abs(second.image.astype(int) - np.moveaxis(expected, 0, -1)).mean() < 8
    with pytest.raises(ValueError, match=r"after_plain\.tif: reading 1,024 x 1,024 pixels at full resolution"):
        read_pair(before, plain, max_read_pixels=100_000)


# ---- sequences: what classify accepts, and at least two frames -----------------------------

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    frames = np.moveaxis(np.stack([pattern(32, 32, seed=i) for i in range(5)]), 1, -1)   # (5, 32, 32, 3)
    five = write_video(folder / "five.mp4", frames)
    odd = shutil.copy(five, folder / "five.footage")                  # an extension nobody lists
    return {"five": five, "odd": odd, "one": write_video(folder / "one.mp4", frames[:1])}


def test_a_video_with_an_unusual_extension_is_read_as_a_video(engine, videos):
    result = engine.classify_sequence(videos["odd"], classes=["flood", "fire"])
    assert result.prompt.count(prompts.IMAGE_TOKEN) == 5
    assert result.extra["frames"][0] == f"{videos['odd']}#frame=0"


def test_one_frame_is_not_a_sequence(engine, good, videos):
    accepts = "classify accepts one video file, or two or more images (frames) in time order"
    with pytest.raises(InputError) as err:
        engine.classify_sequence(videos["one"])
    assert one_line(err) == f"{videos['one']}: 1 frame; a sequence needs at least 2 ({accepts})"
    with pytest.raises(InputError) as err:
        engine.classify_sequence([good])
    assert one_line(err) == f"{good} is one image (1 frame); a sequence needs at least 2 ({accepts})"
    with pytest.raises(InputError) as err:
        engine.classify_sequence([videos["five"], videos["five"]])
    assert one_line(err) == f"{videos['five']} is a video among 2 inputs; {accepts}"


def test_a_file_that_is_neither_video_nor_raster_says_what_classify_accepts(engine, tmp_path):
    empty = tmp_path / "clip.footage"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"clip\.footage is empty \(0 bytes\)"):
        engine.classify_sequence(empty)
    junk = tmp_path / "clip.dat"
    junk.write_bytes(os.urandom(2000))
    with pytest.raises(InputError) as err:
        engine.classify_sequence(junk)
    assert one_line(err) == (f"{junk} is neither a video FFmpeg can read nor a raster GDAL can read; "
                             f"classify accepts one video file, or two or more images (frames) in time order")


# ---- parameters out of range: one line each, before any model load -------------------------

def test_parameters_out_of_range_are_refused(engine, good, tmp_path):
    nowhere = tmp_path / "no-model"                      # refused before the checkpoint is looked at
    for kw, message in [({"num_frames": 0}, "num_frames must be an integer of at least 2, got 0"),
                        ({"num_frames": 1}, "num_frames must be an integer of at least 2, got 1"),
                        ({"max_new_tokens": 0}, "max_new_tokens must be an integer of at least 1, got 0")]:
        with pytest.raises(InvalidRequest) as err:
            Engine.load(nowhere, **kw)
        assert one_line(err) == message
    with pytest.raises(InvalidRequest, match="num_frames must be an integer of at least 2, got 0"):
        Engine(engine.model, num_frames=0)
    request = Request(InputKind.IMAGE, [good], "Is there a road?")
    with pytest.raises(InvalidRequest, match="batch_size must be an integer of at least 1, got 0"):
        engine.run_batch([request], batch_size=0)
    with pytest.raises(InvalidRequest, match="max_new_tokens must be an integer of at least 1, got -1"):
        engine.run_batch([request], max_new_tokens=-1)
    assert issubclass(InvalidRequest, EngineError) and issubclass(InputError, EngineError)


def test_unusable_device_or_dtype_is_a_checkpoint_error(tiny_checkpoint):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny_checkpoint, device="cpu", dtype="int8")
    assert one_line(err).startswith("unknown dtype 'int8'; expected one of bf16, bfloat16, float")
    with pytest.raises(CheckpointError, match="unknown device 'gpu'"):
        load_checkpoint(tiny_checkpoint, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="device 'cuda' requested but CUDA is not available"):
            load_checkpoint(tiny_checkpoint, device="cuda")
