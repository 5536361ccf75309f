"""Dataset readers on small fixtures written here in the real formats (RSVQA, LEVIR-CC, ERA, GeoChat)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from unirs_engine import prompts
from unirs_engine.data import TASKS, DataError, SkippedRecordWarning, load_samples
from unirs_engine.data.era import class_folder
from unirs_engine.testing.rasters import pattern, write_png, write_raster, write_video
from unirs_engine.types import InputKind

SUFFIX = "\n" + prompts.SHORT_ANSWER_SUFFIX


def _dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def _in_new_folder(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- RSVQA ----------------------------------------------------------------------------------------

QUESTIONS = [  # (id, img_id, type, question, answer, question active, answer active)
    (0, 0, "presence", "Is there a road?", "yes", True, True),
    (1, 0, "comp", "Are there more buildings than water areas?", "no", True, True),
    (2, 0, "rural_urban", "Is it a rural or an urban area?", "rural", True, True),
    (3, 0, "count", "How many buildings are there?", "12", True, True),
    (4, 0, "presence", "Is there a forest?", "no", False, False),   # inactive question
    (5, 1, "presence", "Is there a water area?", "no", True, True),
    (6, 2, "presence", "Is there a lake?", "yes", True, True),      # its image is inactive
    (7, 1, "area", "What is the area covered by buildings?", "0m2", True, True),
]


def write_rsvqa(root: Path, prefix: str = "LR_split", split: str = "test", image_dir: str = "Images_LR") -> Path:
    for img_id in (0, 1):
        write_raster(_in_new_folder(root / image_dir / f"{img_id}.tif"), pattern(16, 16, seed=img_id))
    images = [{"id": 0, "questions_ids": [0, 1, 2, 3, 4], "active": True},
              {"id": 1, "questions_ids": [5, 7], "active": True},
              {"id": 2, "questions_ids": [6], "active": False}]
    questions = [{"id": q, "img_id": i, "type": t, "question": text, "answers_ids": [q], "active": qa,
                  "date_added": 1.5e9} for q, i, t, text, _, qa, _ in QUESTIONS]
    answers = [{"id": q, "question_id": q, "answer": a, "active": aa} for q, _, _, _, a, _, aa in QUESTIONS]
    for key, records in (("images", images), ("questions", questions), ("answers", answers)):
        _dump(root / f"{prefix}_{split}_{key}.json", {key: records})
    return root


def test_rsvqa_geochat_protocol_keeps_presence_comp_rural_urban(tmp_path):
    root = write_rsvqa(tmp_path / "lr")
    samples = load_samples("rsvqa-lr", root)
    assert [s.sample_id for s in samples] == ["0", "1", "2", "5"]
    first = samples[0]
    assert first.kind is InputKind.IMAGE
    assert first.images == [str(root / "Images_LR" / "0.tif")]
    assert first.instruction == "Is there a road?" + SUFFIX
    assert first.references == ["yes"]
    assert first.meta == {"benchmark": "rsvqa", "question_type": "presence", "image_id": 0,
                          "question_id": 0, "split": "test"}
    assert [s.meta["question_type"] for s in samples] == ["presence", "comp", "rural_urban", "presence"]


def test_rsvqa_full_protocol_keeps_count_and_area(tmp_path):
    samples = load_samples("rsvqa-lr", write_rsvqa(tmp_path / "lr"), protocol="full")
    assert {s.sample_id: s.references[0] for s in samples} == {"0": "yes", "1": "no", "2": "rural", "3": "12",
                                                               "5": "no", "7": "0m2"}


def test_rsvqa_hr_reads_usgs_files_and_test_phili_split(tmp_path):
    root = write_rsvqa(tmp_path / "hr", prefix="USGS_split", split="test_phili", image_dir="Data")
    samples = load_samples("rsvqa-hr", root, split="test_phili")
    assert [s.sample_id for s in samples] == ["0", "1", "2", "5"]   # area and count dropped
    assert samples[0].images == [str(root / "Data" / "0.tif")]


def test_rsvqa_missing_image_names_file_and_record(tmp_path):
    root = write_rsvqa(tmp_path / "lr")
    (root / "Images_LR" / "1.tif").unlink()
    with pytest.raises(DataError) as err:
        load_samples("rsvqa-lr", root)
    assert "LR_split_test_questions.json" in str(err.value) and "id 5" in str(err.value)
    assert "1.tif" in str(err.value)
    with pytest.warns(SkippedRecordWarning, match="image not found") as caught:
        samples = load_samples("rsvqa-lr", root, on_error="skip", protocol="full")
    assert [s.sample_id for s in samples] == ["0", "1", "2", "3"]
    assert ["id 5" in str(w.message) for w in caught] == [True, False]   # questions 5 and 7 lost their image


def test_rsvqa_question_without_answer(tmp_path):
    root = write_rsvqa(tmp_path / "lr")
    path = root / "LR_split_test_answers.json"
    answers = json.loads(path.read_text())
    answers["answers"] = [a for a in answers["answers"] if a["id"] != 1]
    _dump(path, answers)
    with pytest.raises(DataError, match=r"LR_split_test_questions\.json: record #1 \(id 1\): question without"):
        load_samples("rsvqa-lr", root)


def test_rsvqa_question_about_an_unlisted_image(tmp_path):
    root = write_rsvqa(tmp_path / "lr")
    path = root / "LR_split_test_images.json"
    images = json.loads(path.read_text())
    images["images"] = [i for i in images["images"] if i["id"] != 1]
    _dump(path, images)
    with pytest.raises(DataError, match=r"record #5 \(id 5\): image 1 is not listed in the images file"):
        load_samples("rsvqa-lr", root)


def test_rsvqa_malformed_and_missing_json(tmp_path):
    root = write_rsvqa(tmp_path / "lr")
    path = root / "LR_split_test_questions.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(DataError, match=r"LR_split_test_questions\.json: malformed JSON at line \d+"):
        load_samples("rsvqa-lr", root)
    with pytest.raises(DataError, match=r"LR_split_val_images\.json: file not found"):
        load_samples("rsvqa-lr", root, split="val")
    with pytest.raises(ValueError, match="protocol"):
        load_samples("rsvqa-lr", root, protocol="lrben")


# --- LEVIR-CC -------------------------------------------------------------------------------------

def write_levircc(root: Path) -> Path:
    records = []
    for imgid, (name, split, flag, raw) in enumerate([
        ("test_000000.png", "test", 0, [" the scene is the same as before .", " there is no difference ."]),
        ("test_000001.png", "test", 1, [" many buildings are built along the road . ", "a road appears"]),
        ("train_000000.png", "train", 1, [" some trees are removed ."]),
    ]):
        sentences = [{"tokens": r.split()[:-1], "raw": r, "imgid": imgid, "sentid": 10 * imgid + j}
                     for j, r in enumerate(raw)]
        records.append({"filename": name, "filepath": split, "split": split, "changeflag": flag, "imgid": imgid,
                        "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
        for side, seed in (("A", 0), ("B", 1)):
            write_png(_in_new_folder(root / "images" / split / side / name), np.moveaxis(pattern(16, 16, seed=seed + imgid), 0, -1))
    _dump(root / "LevirCCcaptions.json", {"images": records})
    return root


def test_levircc_pairs_with_cleaned_references(tmp_path):
    root = write_levircc(tmp_path / "levir")
    samples = load_samples("levir-cc", root)
    assert [s.sample_id for s in samples] == ["test_000000", "test_000001"]
    same, built = samples
    assert same.kind is InputKind.PAIR
    assert same.images == [str(root / "images/test/A/test_000000.png"), str(root / "images/test/B/test_000000.png")]
    assert same.instruction == prompts.CHANGE_DESCRIBE_INSTRUCTION
    assert same.references == ["the scene is the same as before", "there is no difference"]
    assert built.references == ["many buildings are built along the road", "a road appears"]
    assert same.meta == {"benchmark": "levir-cc", "changeflag": 0, "split": "test", "imgid": 0}
    assert built.meta["changeflag"] == 1
    train = load_samples("levir-cc", root, split="train", instruction=prompts.CHANGE_INSTRUCTION)
    assert [(s.sample_id, s.instruction) for s in train] == [("train_000000", prompts.CHANGE_INSTRUCTION)]


def test_levircc_missing_after_image_and_skip(tmp_path):
    root = write_levircc(tmp_path / "levir")
    (root / "images/test/B/test_000001.png").unlink()
    with pytest.raises(DataError) as err:
        load_samples("levir-cc", root)
    message = str(err.value)
    assert "LevirCCcaptions.json: record #1 (test_000001.png): after image not found" in message
    with pytest.warns(SkippedRecordWarning, match="test_000001"):
        assert [s.sample_id for s in load_samples("levir-cc", root, on_error="skip")] == ["test_000000"]


def test_levircc_pair_without_sentences(tmp_path):
    root = write_levircc(tmp_path / "levir")
    data = json.loads((root / "LevirCCcaptions.json").read_text())
    data["images"][0]["sentences"] = []
    _dump(root / "LevirCCcaptions.json", data)
    with pytest.raises(DataError, match=r"record #0 \(test_000000.png\): pair has no caption"):
        load_samples("levir-cc", root)


# --- ERA ------------------------------------------------------------------------------------------

def write_era(root: Path, paths: dict[str, list[str]]) -> Path:
    frames = np.moveaxis(pattern(16, 16, seed=0), 0, -1)[None].repeat(4, axis=0)   # (4, 16, 16, 3)
    for rel in {p for split in paths.values() for p in split}:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, frames, fps=4)
    _dump(root / "split.json", paths)
    return root


def test_era_videos_by_class_folder(tmp_path):
    root = write_era(tmp_path / "era", {"train": ["flood/f1.mp4"],
                                        "test": ["flood/f2.mp4", "Traffic_Congestion/t1.mp4", "parade_protest/p.mp4"]})
    samples = load_samples("era", root)
    assert [s.sample_id for s in samples] == ["flood/f2", "Traffic_Congestion/t1", "parade_protest/p"]
    assert [s.references for s in samples] == [["flood"], ["traffic congestion"], ["parade/protest"]]
    first = samples[0]
    assert first.kind is InputKind.SEQUENCE and first.images == []
    assert first.video == str(root / "flood/f2.mp4")
    assert first.instruction == prompts.classify_instruction(prompts.ERA_CLASSES)
    assert first.meta == {"benchmark": "era", "class": "flood", "split": "test"}
    mine = load_samples("era", root, split="train", classes=("flood", "fire"))
    assert mine[0].instruction == prompts.classify_instruction(("flood", "fire"))


def test_era_plain_text_split_list(tmp_path):
    root = write_era(tmp_path / "era", {"train": ["fire/a.mp4"]})
    (root / "split.json").unlink()
    (root / "val.txt").write_text("fire/a.mp4\n\n")
    assert [s.meta["class"] for s in load_samples("era", root, split="val")] == ["fire"]
    with pytest.raises(DataError, match="no split list: expected split.json or test.txt"):
        load_samples("era", root)


def test_era_unknown_class_and_missing_video(tmp_path):
    root = write_era(tmp_path / "era", {"test": ["fire/a.mp4", "dragons/d.mp4"]})
    with pytest.raises(DataError, match=r"split\.json: record #1 \(dragons/d\.mp4\): unknown class folder 'dragons'"):
        load_samples("era", root)
    (root / "fire/a.mp4").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_samples("era", root, on_error="skip") == []
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedRecordWarning)]
    assert len(messages) == 2 and "video not found" in messages[0] and "dragons" in messages[1]


def test_class_folder_names():
    assert class_folder("parade/protest") == "parade_protest"
    assert class_folder("Post-Earthquake") == "post_earthquake"
    assert class_folder("traffic congestion") == class_folder("Traffic_Congestion")


# --- GeoChat --------------------------------------------------------------------------------------

def test_geochat_one_sample_per_turn_and_bad_records(tmp_path):
    root = tmp_path / "geochat"
    write_raster(_in_new_folder(root / "imgs" / "a.tif"), pattern(16, 16))
    records = [
        {"id": "a", "image": "imgs/a.tif", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": "A harbour. "},
            {"from": "human", "value": "How many ships?"}, {"from": "gpt", "value": "3"}]},
        {"id": "b", "image": "imgs/missing.tif", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
        {"id": "c", "image": "imgs/a.tif", "conversations": [{"from": "human", "value": "<image>\nQ"}]},
    ]
    _dump(root / "train.json", records)
    with pytest.raises(DataError, match=r"train\.json: record #1 \(id b\): image not found"):
        load_samples("geochat", root, split="train")
    with pytest.warns(SkippedRecordWarning) as caught:
        samples = load_samples("geochat", root, split="train", on_error="skip")
    assert len(caught) == 2 and "alternate human/gpt" in str(caught[1].message)
    assert [s.sample_id for s in samples] == ["a-0", "a-1"]
    assert [s.instruction for s in samples] == ["What is in the image?", "How many ships?"]
    assert [s.references for s in samples] == [["A harbour."], ["3"]]
    assert samples[1].meta == {"image_id": "a", "turn": 1, "split": "train"}
    assert samples[0].images == [str(root / "imgs" / "a.tif")]
    # A root that is the JSON file itself, with images in another folder.
    with pytest.warns(SkippedRecordWarning):
        other = load_samples("geochat", root / "train.json", on_error="skip", image_folder=root)
    assert [s.sample_id for s in other] == ["a-0", "a-1"]


# --- registry -------------------------------------------------------------------------------------

def test_registry_tasks_and_bad_arguments(tmp_path):
    assert TASKS == ("rsvqa-lr", "rsvqa-hr", "levir-cc", "era", "geochat", "synthetic", "synthetic-comparisons",
                     "synthetic-counts")
    with pytest.raises(ValueError, match="unknown dataset task 'coco'"):
        load_samples("coco", tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        load_samples("levir-cc", write_levircc(tmp_path / "levir"), on_error="ignore")
    with pytest.raises(TypeError, match="unknown option"):
        load_samples("synthetic", tmp_path, colour="red")
