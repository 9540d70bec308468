"""Every converter against its shipped fixture (tests/fixtures/data)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixed_r1.data import DataError, load_samples
from mixed_r1.data.converters import (convert_chartqa, convert_llava, convert_math,
                                      convert_refcoco, extract_math_answer, to_pixel_xyxy)

FIX = Path(__file__).parent / "fixtures" / "data"


def test_llava() -> None:
    samples, rep = convert_llava(FIX / "llava.json")
    assert rep.rows == 2 and rep.loaded == 2 and not rep.skipped
    got = [(s.id, s.task_type, s.solution, s.options) for s in samples]
    assert got == [("lv1-0", "yes_no", "yes", None),
                   ("lv1-1", "multiple_choice", "B", ["black", "white", "green"]),
                   ("lv2-0", "open_ended", "A blue rectangle on a white background.", None)]
    assert samples[0].question == "Is there a red square in the image?"
    assert samples[1].question == "What colour is the background?"
    assert samples[0].images == [str(FIX / "images/scene_a.png")]


def test_chartqa_json_and_csv() -> None:
    js, _ = convert_chartqa(FIX / "chartqa.json")
    cs, _ = convert_chartqa(FIX / "chartqa.csv")
    assert [(s.task_type, s.question, s.solution) for s in js] == [
        ("chart", "What is the value of the blue bar?", "30"),
        ("chart", "Which colour is the bar?", "blue")]
    assert [(s.question, s.solution) for s in cs] == [("How many bars are there?", "1"),
                                                      ("What is the sum, in percent?", "12.5")]
    assert cs[1].images == [str(FIX / "images/scene_a.png")]


def test_refcoco_pixel_xywh() -> None:
    samples, rep = convert_refcoco(FIX / "refcoco.jsonl", box_format="xywh", coords="pixel")
    assert rep.loaded == 2
    assert [(s.id, s.solution) for s in samples] == [
        ("7-0", [10.0, 8.0, 30.0, 28.0]), ("7-1", [10.0, 8.0, 30.0, 28.0]),
        ("8-0", [40.0, 20.0, 60.0, 50.0])]
    assert samples[1].question == "Locate red box on the left in the image and give its bounding box."


def test_refcoco_normalised_matches_pixel_box() -> None:
    # the fixture's 0..1000 box is the red square's pixel box [10, 8, 30, 28] of a 64x48 image
    samples, _ = convert_refcoco(FIX / "refcoco_norm1000.jsonl", box_format="xyxy",
                                 coords="norm1000")
    assert samples[0].solution == pytest.approx([10.0, 8.0, 30.0, 28.0], abs=1e-3)
    assert to_pixel_xyxy([0.25, 0.5, 0.75, 1.0], box_format="xyxy", coords="norm", width=64,
                         height=48) == [16.0, 24.0, 48.0, 48.0]


def test_refcoco_bad_box_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    rows = [{"image": str(FIX / "images/scene_a.png"), "bbox": [5, 5, 0, 4], "expression": "x"},
            {"image": str(FIX / "images/scene_a.png"), "bbox": [5, 5, 3, 4], "expression": "y"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 1.*x1 < x2"):
        convert_refcoco(p)
    samples, rep = convert_refcoco(p, on_error="skip")
    assert len(samples) == 1 and dict(rep.skipped) == {"bad_box": 1}


def test_math() -> None:
    samples, _ = convert_math(FIX / "math.jsonl")
    assert [(s.id, s.solution, len(s.images)) for s in samples] == [
        ("gsm1", "10", 0), ("math1", "\\frac{3}{4}", 0), ("plain1", "1024", 1)]
    assert extract_math_answer("so $\\boxed{\\sqrt{\\frac{1}{2}}}$ done") == "\\sqrt{\\frac{1}{2}}"
    assert extract_math_answer("#### 1,234") == "1234"


def test_converted_sets_round_trip(tmp_path: Path) -> None:
    from mixed_r1.data import write_samples

    for conv, name in ((convert_llava, "llava.json"), (convert_math, "math.jsonl")):
        samples, _ = conv(FIX / name)
        back, _ = load_samples(write_samples(samples, tmp_path / f"{name}.parquet"))
        assert [s.to_dict() for s in back] == [s.to_dict() for s in samples]


def test_cli_convert(tmp_path: Path, capsys) -> None:
    from mixed_r1.cli import main

    out = tmp_path / "ref.jsonl"
    assert main(["data", "convert", "refcoco", "--input", str(FIX / "refcoco.jsonl"),
                 "--out", str(out)]) == 0
    samples, _ = load_samples(out)
    assert len(samples) == 3 and samples[2].solution == [40.0, 20.0, 60.0, 50.0]
