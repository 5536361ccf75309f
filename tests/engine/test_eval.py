"""`unirs eval`: the resumable runner on the tiny checkpoint with real rasters and a real video."""

import json
import re

import numpy as np
import pytest

from unirs_engine import prompts
from unirs_engine.engine import Engine
from unirs_engine.evaluate.metrics import normalise_answer
from unirs_engine.evaluate.runner import EvalError, evaluate_samples, to_request
from unirs_engine.testing.rasters import pattern, write_raster, write_video
from unirs_engine.types import InputKind, Sample

VQA = prompts.SHORT_ANSWER_SUFFIX
NO_CHANGE = ["the scene is the same as before", "there is no difference", "no change has occurred",
             "the two images look the same", "nothing has changed"]
BUILT = ["many buildings have been built", "some houses appear on the left", "a road is built",
         "buildings are constructed at the top", "new buildings appear"]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine.load(tiny_checkpoint, device="cpu", max_new_tokens=6)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Three VQA images, two change pairs, a video and a dated frame stack, as the readers give them."""
    d = tmp_path_factory.mktemp("evaldata")
    tif = [write_raster(d / f"img{i}.tif", pattern(64, 64, seed=i)) for i in range(7)]
    frames = np.stack([np.moveaxis(pattern(64, 64, seed=10 + i), 0, -1) for i in range(8)])
    video = write_video(d / "flood.mp4", frames, fps=4)

    def vqa(i, q, a, t):
        return Sample(f"q{i}", InputKind.IMAGE, [str(tif[i])], f"{q}\n{VQA}", [a],
                      meta={"benchmark": "rsvqa", "question_type": t})

    return [
        vqa(0, "Is there a road?", "yes", "presence"),
        vqa(1, "Are there more buildings than trees?", "no", "comp"),
        vqa(2, "Is it a rural or an urban area?", "rural", "rural_urban"),
        Sample("c0", InputKind.PAIR, [str(tif[3]), str(tif[4])], prompts.CHANGE_DESCRIBE_INSTRUCTION,
               BUILT, meta={"benchmark": "levir-cc", "changeflag": 1}),
        Sample("c1", InputKind.PAIR, [str(tif[5]), str(tif[5])], prompts.CHANGE_DESCRIBE_INSTRUCTION,
               NO_CHANGE, meta={"benchmark": "levir-cc", "changeflag": 0}),
        Sample("v0", InputKind.SEQUENCE, [], prompts.classify_instruction(), ["flood"], video=str(video),
               meta={"benchmark": "era", "class": "flood"}),
        Sample("v1", InputKind.SEQUENCE, [str(t) for t in tif[:4]], prompts.classify_instruction(),
               ["fire"], meta={"benchmark": "era", "class": "fire"}),
    ]


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_requests_route_each_kind():
    pair = to_request(Sample("p", InputKind.PAIR, ["a.tif", "b.tif"], "what changed?"), clue=False)
    assert (pair.kind, pair.inputs, pair.raw_instruction) == (InputKind.PAIR, ["a.tif", "b.tif"], False)
    video = to_request(Sample("v", InputKind.SEQUENCE, [], "classify", video="x.mp4"), clue=True)
    assert (video.kind, video.inputs, video.clue) == (InputKind.SEQUENCE, ["x.mp4"], True)
    stack = to_request(Sample("s", InputKind.SEQUENCE, ["t1.tif", "t2.tif"], "classify"), clue=False)
    assert stack.inputs == ["t1.tif", "t2.tif"] and stack.task == "classify"


def test_end_to_end_predictions_and_reports(engine, samples, tmp_path):
    results = evaluate_samples(engine, samples, tmp_path, task="synthetic", batch_size=3, progress=False)

    records = [json.loads(line) for line in _lines(tmp_path / "predictions.jsonl")]
    assert sorted(r["id"] for r in records) == sorted(s.sample_id for s in samples)
    by_id = {r["id"]: r for r in records}
    for s in samples:
        rec = by_id[s.sample_id]
        assert rec["references"] == s.references and rec["meta"] == s.meta
        assert rec["kind"] == s.kind.value and rec["model_id"] == engine.info()["model_id"]
        assert rec["timings"]["total_s"] > 0
    # The recorded answer is what the engine says to that sample alone (batching changes nothing).
    alone = engine.run_batch([to_request(samples[5], clue=False)])[0]
    assert by_id["v0"]["prediction"] == alone.answer

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["samples"] == report["scored"] == 7 and report["skipped"] == []
    assert report["rsvqa"]["n"] == 3
    assert set(report["rsvqa"]["per_type"]) == {"presence", "comp", "rural_urban"}
    right = sum(normalise_answer(by_id[i]["prediction"]) == normalise_answer(a)
                for i, a in (("q0", "yes"), ("q1", "no"), ("q2", "rural")))
    assert report["rsvqa"]["overall"] == right / 3
    change = report["levir-cc"]
    assert (change["all"]["n"], change["changed"]["n"], change["unchanged"]["n"]) == (2, 1, 1)
    assert all(change["all"][m] is not None for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"))
    assert report["era"]["n"] == 2 and report["era"]["confusion"].keys() == {"flood", "fire"}
    assert results["rsvqa"] == report["rsvqa"]

    md = (tmp_path / "report.md").read_text()
    assert "| Model | Presence | Comparison | Rural/Urban | Avg. Accuracy |" in md
    assert re.search(r"\| all \| 2 \|( [0-9.]+ \|){7}", md)            # BLEU-1..4, METEOR, ROUGE-L, CIDEr-D
    era_header = next(line for line in md.splitlines() if line.startswith("| Method |"))
    assert "| flood | fire |" in era_header and era_header.endswith("| OA |")  # ERA class order
    assert not list(tmp_path.glob(".*.tmp"))                            # atomic writes left no temp files


def test_resume_skips_finished_samples(engine, samples, tmp_path):
    subset = [s for s in samples if s.kind is not InputKind.PAIR]       # no pairs: no METEOR java here
    first = evaluate_samples(engine, subset[:2], tmp_path, task="synthetic", progress=False)
    before = _lines(tmp_path / "predictions.jsonl")
    assert len(before) == 2 and first["this_run"]["predicted"] == 2

    second = evaluate_samples(engine, subset, tmp_path, task="synthetic", progress=False)
    after = _lines(tmp_path / "predictions.jsonl")
    assert second["this_run"]["predicted"] == len(subset) - 2            # only the new ones ran
    assert after[:2] == before                                          # untouched, timings included
    assert len(after) == len({json.loads(line)["id"] for line in after}) == len(subset)
    assert second["scored"] == len(subset)

    # A smaller run over the same folder scores only its own samples.
    again = evaluate_samples(engine, subset[:1], tmp_path, task="synthetic", progress=False)
    assert again["this_run"]["predicted"] == 0 and again["scored"] == 1

    fresh = evaluate_samples(engine, subset[:1], tmp_path, task="synthetic", resume=False, progress=False)
    assert fresh["this_run"]["predicted"] == 1 and len(_lines(tmp_path / "predictions.jsonl")) == 1


def test_torn_last_line_is_dropped_and_redone(engine, samples, tmp_path):
    subset = samples[:3]
    evaluate_samples(engine, subset, tmp_path, task="synthetic", progress=False)
    path = tmp_path / "predictions.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[:-25])                                        # killed in the middle of a write

    with pytest.warns(RuntimeWarning, match=r"predictions.jsonl:3: dropped an unfinished last line"):
        out = evaluate_samples(engine, subset, tmp_path, task="synthetic", progress=False)
    assert out["this_run"]["predicted"] == 1 and out["scored"] == 3
    assert [json.loads(line)["id"] for line in _lines(path)] == ["q0", "q1", "q2"]
    assert _lines(path)[:2] == data.decode().splitlines()[:2] and path.read_bytes().endswith(b"\n")

    lines = _lines(path)
    path.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n")
    with pytest.raises(EvalError, match=r"predictions.jsonl:2: not a prediction record"):
        evaluate_samples(engine, subset, tmp_path, task="synthetic", progress=False)


def test_predictions_of_another_run_are_not_mixed_in(engine, samples, tmp_path):
    evaluate_samples(engine, samples[:1], tmp_path, task="synthetic", progress=False)
    with pytest.raises(EvalError, match="another run.*--no-resume"):
        evaluate_samples(engine, samples[:1], tmp_path, task="synthetic", split="val", progress=False)


def test_bad_sample_is_skipped_and_reported(engine, samples, tmp_path):
    missing = tmp_path / "gone" / "img404.tif"
    bad = Sample("q404", InputKind.IMAGE, [str(missing)], f"Is there a road?\n{VQA}", ["yes"],
                 meta={"benchmark": "rsvqa", "question_type": "presence"})
    batch = [samples[0], bad, samples[1]]                                 # the bad one inside a batch
    with pytest.warns(RuntimeWarning, match=r"skipped sample q404 \(.*img404\.tif\)"):
        out = evaluate_samples(engine, batch, tmp_path / "skip", task="synthetic", batch_size=3,
                               progress=False)
    assert [s["id"] for s in out["skipped"]] == ["q404"]
    assert "img404.tif" in out["skipped"][0]["error"] and out["skipped"][0]["inputs"] == [str(missing)]
    assert out["scored"] == 2 and out["samples"] == 3 and out["rsvqa"]["n"] == 2
    assert "Skipped samples: 1" in (tmp_path / "skip" / "report.md").read_text()

    with pytest.raises(EvalError, match=r"sample q404 \(.*img404\.tif\)"):
        evaluate_samples(engine, batch, tmp_path / "raise", task="synthetic", on_error="raise",
                         batch_size=3, progress=False)


def test_samples_without_scoring_facts_are_named(engine, samples, tmp_path):
    no_type = Sample("q9", InputKind.IMAGE, samples[0].images, samples[0].instruction, ["yes"],
                     meta={"benchmark": "rsvqa"})
    with pytest.raises(EvalError, match="q9.*question_type"):
        evaluate_samples(engine, [no_type], tmp_path, task="synthetic", progress=False)
    with pytest.raises(EvalError, match="q0.*twice"):
        evaluate_samples(engine, [samples[0], samples[0]], tmp_path, task="synthetic", progress=False)


def test_set_up_faults_stop_before_any_prediction(engine, samples, tmp_path):
    with pytest.raises(EvalError, match="no clue model"):
        evaluate_samples(engine, samples[:1], tmp_path, task="synthetic", clue=True, progress=False)
    assert not (tmp_path / "predictions.jsonl").exists()


def test_vila_checkpoint_evaluates_pairs_as_two_images(samples, tmp_path):
    from unirs_engine.testing.tiny import build_tiny_vila_checkpoint

    vila = Engine.load(build_tiny_vila_checkpoint(tmp_path / "vila"), device="cpu", max_new_tokens=2)
    pairs = [s for s in samples if s.kind is InputKind.PAIR]
    results = evaluate_samples(vila, pairs, tmp_path / "out", task="synthetic", progress=False)
    assert results["scored"] == len(pairs) > 0 and not results["skipped"]


@pytest.fixture(scope="module")
def rsvqa_lr(tmp_path_factory):
    """An RSVQA-LR test split in the real file layout: one inactive question, one count question
    (left out by the GeoChat protocol) and one whose image file is missing."""
    root = tmp_path_factory.mktemp("rsvqa_lr")
    (root / "Images_LR").mkdir()
    write_raster(root / "Images_LR" / "0.tif", pattern(64, 64, seed=3))
    questions = [("presence", "Is there a road?", "yes", 0),
                 ("count", "How many buildings are there?", "4", 0),
                 ("comp", "Are there more buildings than trees?", "no", 0),
                 ("rural_urban", "Is it a rural or an urban area?", "rural", 1),
                 ("presence", "Is there a water area?", "no", 0)]
    files = {
        "images": [{"id": 0, "questions_ids": [0, 1, 2, 4], "active": True},
                   {"id": 1, "questions_ids": [3], "active": True}],
        "questions": [{"id": i, "img_id": img, "type": t, "question": q, "answers_ids": [i], "active": i != 4}
                      for i, (t, q, _, img) in enumerate(questions)],
        "answers": [{"id": i, "question_id": i, "answer": a, "active": True}
                    for i, (_, _, a, _) in enumerate(questions)],
    }
    for part, records in files.items():
        (root / f"LR_split_test_{part}.json").write_text(json.dumps({part: records}))
    return root


def _eval_cli(tiny_checkpoint, *args):
    from unirs_engine.cli import main

    return main(["eval", "--model", str(tiny_checkpoint), "--max-new-tokens", "4", *args])


def test_unirs_eval_command_on_rsvqa_files(tiny_checkpoint, rsvqa_lr, tmp_path, capsys):
    common = ["--task", "rsvqa-lr", "--data", str(rsvqa_lr), "--out", str(tmp_path)]
    with pytest.warns(UserWarning, match=r"record #3 \(id 3\): image not found: .*1\.tif"):
        assert _eval_cli(tiny_checkpoint, *common, "--limit", "1") == 0
    first = _lines(tmp_path / "predictions.jsonl")
    assert len(first) == 1
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"record #3"):
        assert _eval_cli(tiny_checkpoint, *common, "--batch-size", "2") == 0
    lines = _lines(tmp_path / "predictions.jsonl")
    assert len(lines) == 2 and lines[0] == first[0]                      # resumed: one new prediction
    out = capsys.readouterr().out
    assert "| Model | Presence | Comparison | Avg. Accuracy |" in out and "## Skipped samples" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rsvqa"]["per_type_n"] == {"comp": 1, "presence": 1}    # count left out, #4 inactive
    assert report["skipped"][0]["stage"] == "load" and "1.tif" in report["skipped"][0]["error"]
    assert report["task"] == "rsvqa-lr" and report["device"] == "cpu"
    assert report["this_run"]["predicted"] == 1 and report["scored"] == 2
    assert (tmp_path / "report.md").read_text() in out


def test_unirs_eval_command_stops_on_bad_records_when_asked(tiny_checkpoint, rsvqa_lr, tmp_path, capsys):
    rc = _eval_cli(tiny_checkpoint, "--task", "rsvqa-lr", "--data", str(rsvqa_lr), "--out", str(tmp_path),
                   "--on-error", "raise")
    assert rc == 2
    err = capsys.readouterr().err
    assert re.search(r"unirs eval: error: .*LR_split_test_questions\.json: record #3 .*1\.tif", err)
    assert not (tmp_path / "report.json").exists()


def test_evaluate_reads_levircc_and_era_files(engine, tmp_path):
    from unirs_engine.evaluate.runner import evaluate

    cc = tmp_path / "levircc"
    for folder in ("test/A", "test/B"):
        (cc / "images" / folder).mkdir(parents=True)
    pairs = [("test_000001.png", 1, BUILT), ("test_000002.png", 0, NO_CHANGE), ("train_9.png", 1, BUILT)]
    for i, (name, _, _) in enumerate(pairs[:2]):
        write_raster(cc / "images/test/A" / name, pattern(64, 64, seed=i), driver="PNG", crs=None)
        write_raster(cc / "images/test/B" / name, pattern(64, 64, seed=i + 5), driver="PNG", crs=None)
    (cc / "LevirCCcaptions.json").write_text(json.dumps({"images": [
        {"filename": name, "filepath": "test" if i < 2 else "train", "split": "test" if i < 2 else "train",
         "changeflag": flag, "imgid": i, "sentences": [{"raw": f" {c} ."} for c in caps]}
        for i, (name, flag, caps) in enumerate(pairs)]}))
    out = evaluate(engine, "levir-cc", cc, tmp_path / "out_cc", progress=False)
    assert (out["levir-cc"]["changed"]["n"], out["levir-cc"]["unchanged"]["n"]) == (1, 1)
    assert out["levir-cc"]["change_decision"]["true_changed"] == 1

    era = tmp_path / "era"
    frames = np.stack([np.moveaxis(pattern(64, 64, seed=20 + i), 0, -1) for i in range(6)])
    for rel in ("Flood/flood_001.mp4", "Fire/fire_001.mp4", "Fire/fire_002.mp4"):
        (era / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(era / rel, frames, fps=4)
    (era / "split.json").write_text(json.dumps({"train": ["Fire/fire_002.mp4"],
                                                "test": ["Flood/flood_001.mp4", "Fire/fire_001.mp4"]}))
    out = evaluate(engine, "era", era, tmp_path / "out_era", progress=False)
    assert out["era"]["n"] == 2 and set(out["era"]["confusion"]) == {"flood", "fire"}
    assert None not in (out["era"]["per_class_recall"]["flood"], out["era"]["per_class_recall"]["fire"])


def test_report_prints_scores_as_the_paper_does(tmp_path):
    from unirs_engine.evaluate.report import write_report

    def caps(cider, n):
        return {"BLEU-1": 0.9, "BLEU-2": 0.8, "BLEU-3": 0.7, "BLEU-4": 0.65, "METEOR": None,
                "ROUGE-L": 0.75, "CIDEr-D": cider, "n": n}

    results = {
        "model_id": "unirs-3b",
        "rsvqa": {"overall": 0.92214, "per_type": {"rural_urban": 0.9, "presence": 0.91644, "comp": 0.92676},
                  "per_type_n": {"rural_urban": 100, "presence": 2955, "comp": 4007}, "n": 7062,
                  "out_of_space": {"rural_urban": 0, "presence": 2, "comp": 0}, "out_of_space_n": 2,
                  "out_of_space_examples": [["q7", "no change"], ["q9", "3"]]},
        "levir-cc": {"all": caps(1.39124, 1929), "changed": caps(0.9, 964), "unchanged": caps(2.5, 965),
                     "change_decision": {"accuracy": 0.975, "n": 1929, "predicted_changed": 950,
                                         "true_changed": 964}},
        "era": {"overall_accuracy": 0.878, "unmatched": 3, "n": 100,
                "per_class_precision": {"flood": 0.898, "fire": 1.0, "party": None},
                "per_class_recall": {"flood": 0.9, "fire": 0.5, "party": None}},
    }
    json_path, md_path = write_report(results, tmp_path / "new", "Table check")
    md = md_path.read_text()
    assert "| Model | Presence | Comparison | Rural/Urban | Avg. Accuracy |" in md    # Table III order
    assert "| unirs-3b | 91.64 | 92.68 | 90.00 | 92.21 |" in md
    assert "| questions | 2955 | 4007 | 100 | 7062 |" in md
    assert "| answers | 2 | 0 | 0 | 2 |" in md and "- q7: 'no change'" in md   # out of the answer space
    assert "| all | 1929 | 90.00 | 80.00 | 70.00 | 65.00 | – | 75.00 | 139.12 |" in md
    assert "| unirs-3b (precision) | 89.8 | 100.0 | 87.8 |" in md              # never-seen "party" left out
    assert "97.50 % of 1929 pairs" in md and "METEOR not computed" in md
    assert json.loads(json_path.read_text())["levir-cc"]["all"]["CIDEr-D"] == 1.39124


def test_registering_the_command_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, argparse; from unirs_engine.evaluate.command import register; "
            "register(argparse.ArgumentParser().add_subparsers()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"                 # `unirs --help` stays fast
