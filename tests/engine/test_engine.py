"""The inference API on a tiny random checkpoint: routing, georef, batching, caches, cancel, errors.

A random model answers gibberish, so these tests check structure and determinism, never meaning."""

import os

import numpy as np
import pytest

from unirs_engine import prompts
from unirs_engine.engine import Cancelled, Engine, EngineError, InvalidRequest, Request
from unirs_engine.inputs.raster import read_chip
from unirs_engine.testing.rasters import pattern, write_pair, write_raster
from unirs_engine.testing.tiny import build_tiny_vila_checkpoint
from unirs_engine.types import InputKind


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine.load(tiny_checkpoint, device="cpu", max_new_tokens=6)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rasters")
    before, after = write_pair(folder / "pair")
    frames = [write_raster(folder / f"frame_{i}.tif", pattern(64, 64, seed=i)) for i in range(3)]
    return {"image": write_raster(folder / "rgb.tif", pattern(96, 128)), "before": before,
            "after": after, "frames": frames}


def test_ask_returns_georeferenced_result(engine, rasters):
    result = engine.ask(rasters["image"], "How many houses are there?")
    assert result.task == "ask" and isinstance(result.answer, str)
    assert result.georef[0].source == str(rasters["image"]) and result.georef[0].crs
    assert "How many houses are there?" in result.prompt and result.device == "cpu"
    assert set(result.timings) >= {"read_s", "encode_s", "generate_s", "total_s"}


def test_describe_change_reports_score_and_decision(engine, rasters):
    result = engine.describe_change(rasters["before"], rasters["after"])
    assert result.task == "change"
    assert result.extra["changed"] == (not prompts.says_no_change(result.answer))
    assert 0.0 <= result.extra["change_score"] <= 2.0
    # Both chips are described on the before grid.
    assert result.georef[0].transform == result.georef[1].transform


def test_classify_sequence_uses_one_slot_per_frame(engine, rasters):
    result = engine.classify_sequence(rasters["frames"], classes=["flood", "fire"])
    assert result.task == "classify" and result.extra["classes"] == ["flood", "fire"]
    assert result.prompt.count(prompts.IMAGE_TOKEN) == 3
    assert result.extra["frames"] == [str(f) for f in rasters["frames"]]


def test_batch_equals_one_by_one(engine, rasters):
    requests = [Request(InputKind.IMAGE, [rasters["image"]], "What is in the image?"),
                Request(InputKind.PAIR, [rasters["before"], rasters["after"]],
                        prompts.CHANGE_DESCRIBE_INSTRUCTION),
                Request(InputKind.SEQUENCE, rasters["frames"], prompts.classify_instruction(["a", "b"]))]
    engine.clear_cache()
    single = [engine.run_batch([r])[0].answer for r in requests]
    engine.clear_cache()
    batched = engine.run_batch(requests, batch_size=3)
    assert [r.answer for r in batched] == single
    assert all(r.batch_size == 3 and not r.answer_cached for r in batched)


def test_feature_cache_reuses_vision_features(engine, rasters, monkeypatch):
    import unirs_engine.engine as engine_module

    engine.clear_cache()
    calls = []
    vision_pass = engine_module.encode   # the stage the engine caches (stages.encode)
    monkeypatch.setattr(engine_module, "encode", lambda loaded, chips, *a: calls.append(len(chips))
                        or vision_pass(loaded, chips, *a))
    first = engine.ask(rasters["image"], "Is there a road?")
    second = engine.ask(rasters["image"], "Is there a road?")
    assert calls == [1]            # the second request found its features in the cache
    assert first.answer == second.answer


def test_repeated_question_reuses_the_answer(engine, rasters):
    engine.clear_cache()
    first = engine.ask(rasters["image"], "Is there water?")
    again = engine.ask(rasters["image"], "Is there water?")
    other = engine.ask(rasters["image"], "Is there a road?")
    longer = engine.ask(rasters["image"], "Is there water?", max_new_tokens=3)
    assert not first.answer_cached and again.answer_cached and again.batch_size == 0
    assert again.answer == first.answer and again.timings["generate_s"] == 0.0
    assert not other.answer_cached and not longer.answer_cached


def test_change_scores_batched_match_single(engine, rasters):
    before = read_chip(str(rasters["image"]))
    other = read_chip(str(rasters["frames"][0]))
    engine.clear_cache()
    batched = engine.change_scores([(before, before), (before, other)])
    engine.clear_cache()
    single = [engine.change_scores([pair])[0] for pair in ((before, before), (before, other))]
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    assert batched[0] == pytest.approx(0.0, abs=1e-5) and batched[1] > batched[0]


def test_cancel_between_batches(engine, rasters):
    requests = [Request(InputKind.IMAGE, [rasters["image"]], f"Question {i}?") for i in range(4)]
    done = []
    with pytest.raises(Cancelled):
        engine.run_batch(requests, batch_size=2, progress=lambda d, t: done.append(d),
                         is_cancelled=lambda: bool(done))
    assert done == [2]


def test_cancel_stops_generation_mid_answer(engine, rasters):
    polls = []

    def cancel_after_three_tokens():
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(Cancelled):
        engine.ask(rasters["image"], "Describe the image.", max_new_tokens=50,
                   is_cancelled=cancel_after_three_tokens)
    assert len(polls) < 10      # generation stopped at the next token, not after 50


def test_vila_checkpoint_describes_change_through_two_images(tmp_path, rasters):
    vila = Engine.load(build_tiny_vila_checkpoint(tmp_path / "vila"), device="cpu", max_new_tokens=4)
    result = vila.describe_change(rasters["before"], rasters["after"])
    assert result.extra["pair_mode"] == "two-images" and result.extra["change_score_kind"] == "feature-cosine"
    assert result.prompt.count(prompts.IMAGE_TOKEN) == 2 and prompts.TASK_TAGS[InputKind.PAIR] in result.prompt
    assert 0 <= result.extra["change_score"] <= 2 and len(result.georef) == 2
    assert vila.info()["pair_mode"] == "two-images" and vila.info()["change_scores"] == ["feature-cosine"]
    with pytest.raises(InvalidRequest, match="no Change Extraction module.*'two-images' works"):
        vila.describe_change(rasters["before"], rasters["after"], pair_mode="cem")


def test_two_image_pair_is_the_two_frame_prompt(engine, rasters):
    """A CEM model asked for two images answers exactly as the 2-frame sequence under the change
    instruction that the "without CEM" ablation trains on (train.data's pair_as_frames)."""
    pair = engine.describe_change(rasters["before"], rasters["after"], pair_mode="two-images")
    message = prompts.user_message(InputKind.PAIR, prompts.CHANGE_DESCRIBE_INSTRUCTION, 2)
    frames = engine.run_batch([Request(InputKind.SEQUENCE, [rasters["before"], rasters["after"]], message,
                                       raw_instruction=True)])[0]
    fused = engine.describe_change(rasters["before"], rasters["after"])
    assert pair.prompt == frames.prompt and pair.answer == frames.answer
    assert pair.extra["pair_mode"] == "two-images" and fused.extra["pair_mode"] == "cem"
    assert fused.prompt.count(prompts.IMAGE_TOKEN) == 1
    with pytest.raises(InvalidRequest, match="pair_mode must be one of cem, two-images"):
        engine.describe_change(rasters["before"], rasters["after"], pair_mode="fused")


def test_clue_needs_a_clue_model(engine, rasters):
    with pytest.raises(EngineError, match="no clue model"):
        engine.ask(rasters["image"], "What is here?", clue=True)


def test_clue_is_written_once_and_added_to_the_prompt(tiny_checkpoint, rasters):
    engine = Engine.load(tiny_checkpoint, device="cpu", clue_model_dir=tiny_checkpoint, max_new_tokens=4)
    first = engine.ask(rasters["image"], "What is here?", clue=True)
    second = engine.ask(rasters["image"], "Anything else?", clue=True)
    assert isinstance(first.clue, str) and first.clue == second.clue
    assert first.clue in first.prompt


def test_unreadable_input_names_the_file(engine, tmp_path):
    missing = tmp_path / "nope.tif"
    with pytest.raises(EngineError, match="nope.tif"):
        engine.ask(missing, "What is here?")
    with pytest.raises(EngineError, match="needs 2 input"):
        engine.run_batch([Request(InputKind.PAIR, [missing], "x")])


def test_a_repeated_read_comes_from_memory_until_the_file_changes(engine, tmp_path):
    path = write_raster(tmp_path / "site.tif", pattern(48, 48, seed=1))
    ask = Request(InputKind.IMAGE, [str(path)], "What is in the image?")
    chips = engine.read(ask)
    assert engine.read(ask) is chips                    # same file, same region: no second read

    write_raster(path, pattern(48, 48, seed=2))          # rewritten in place: size or mtime differ
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    fresh = engine.read(ask)
    assert fresh is not chips and not np.array_equal(fresh[0].image, chips[0].image)


def test_the_default_model_is_the_embedded_demo(monkeypatch, tmp_path):
    from unirs_engine.engine import DEFAULT_MODEL_DIR
    from unirs_engine.review import DEFAULT_THRESHOLD

    monkeypatch.delenv("UNIRS_MODEL", raising=False)
    engine = Engine.load()
    assert engine.model.path.resolve() == DEFAULT_MODEL_DIR.resolve() and engine.model.model_id == "unirs-demo"
    assert engine.model.model.mm_projector.has_change and engine.change_threshold != DEFAULT_THRESHOLD
    before, after = write_pair(tmp_path)
    result = engine.describe_change(str(before), str(after))
    assert result.answer.strip() and result.task == "change"
