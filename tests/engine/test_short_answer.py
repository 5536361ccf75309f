"""A question about one image asks for a short answer by default (prompts.question_instruction),
and the embedded demo model then answers in the question's answer space: without the suffix it
answered "no change" to "Is it a rural or an urban area?" (the dock's questions carry no suffix)."""

from __future__ import annotations

import json

import pytest

from unirs_engine import prompts
from unirs_engine.checkpoint_info import default_model_dir
from unirs_engine.data.rsvqa import read_rsvqa
from unirs_engine.data.synthetic.writer import write_benchmark
from unirs_engine.engine import Engine
from unirs_engine.evaluate.metrics import ANSWER_SPACES, normalise_answer

SUFFIX = "\n" + prompts.SHORT_ANSWER_SUFFIX


def test_the_suffix_is_added_once_and_only_for_a_short_answer():
    assert prompts.question_instruction(" Is there a road? ") == "Is there a road?" + SUFFIX
    assert prompts.question_instruction("Is there a road?" + SUFFIX) == "Is there a road?" + SUFFIX
    assert prompts.question_instruction("Describe the scene.", short_answer=False) == "Describe the scene."


@pytest.fixture(scope="module")
def demo_engine():
    return Engine.load(default_model_dir(), device="cpu")


def test_the_demo_model_answers_plain_questions_in_their_answer_space(demo_engine, tmp_path):
    write_benchmark(tmp_path / "synth", seed=11, n_images=6, n_pairs=2, n_videos=2, size=256, progress=False,
                    splits=(0.0, 0.0, 1.0))
    questions = read_rsvqa(tmp_path / "synth" / "rsvqa", split="test", protocol="full")
    assert {q.meta["question_type"] for q in questions} == set(ANSWER_SPACES)
    for q in questions:   # asked as a user types it: no suffix
        plain = q.instruction.removesuffix(SUFFIX)
        result = demo_engine.ask(q.images[0], plain)
        assert ANSWER_SPACES[q.meta["question_type"]](normalise_answer(result.answer)), (plain, result.answer)
        assert result.prompt.count(prompts.SHORT_ANSWER_SUFFIX) == 1 and plain + SUFFIX in result.prompt
    free = demo_engine.ask(questions[0].images[0], "Is it a rural or an urban area?", short_answer=False)
    assert prompts.SHORT_ANSWER_SUFFIX not in free.prompt


def test_unirs_ask_takes_long_answer(tiny_checkpoint, tmp_path, capsys):
    from unirs_engine.cli import main
    from unirs_engine.testing.rasters import pattern, write_raster

    image = str(write_raster(tmp_path / "scene.tif", pattern(32, 32)))
    prompts_sent = []
    for extra in ([], ["--long-answer"]):
        assert main(["ask", image, "-q", "Is there a road?", "--json", "--model", str(tiny_checkpoint), *extra]) == 0
        prompts_sent.append(json.loads(capsys.readouterr().out)["prompt"])
    assert [prompts.SHORT_ANSWER_SUFFIX in p for p in prompts_sent] == [True, False]
