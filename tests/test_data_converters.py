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


def _image_200x100(tmp_path: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (200, 100), (255, 255, 255))
    ImageDraw.Draw(img).rectangle((20, 10, 79, 49), fill=(200, 0, 0))  # pixel box [20, 10, 80, 50]
    img.save(tmp_path / "img.png")
    return tmp_path / "img.png"


def test_refcoco_pixel_box_read_as_norm_is_refused(tmp_path: Path) -> None:
    # issue 31 item 6: a pixel xywh box converted with coords=norm became [4000, 1000, 16000, 5000]
    # for a 200x100 image and was written; it is a bad_box row naming the file and the row
    _image_200x100(tmp_path)
    p = tmp_path / "r.jsonl"
    rows = [{"id": "ok", "image": "img.png", "bbox": [0.1, 0.1, 0.3, 0.4], "expression": "red"},
            {"id": "px", "image": "img.png", "bbox": [20, 10, 60, 40], "expression": "the red box"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for check_images in (True, False):  # the size is read for norm coords either way
        with pytest.raises(DataError) as ei:
            convert_refcoco(p, box_format="xywh", coords="norm", check_images=check_images)
        msg = str(ei.value)
        assert msg.startswith(f"{p}, row 2, key 'bbox': bbox [20, 10, 60, 40] read as xywh norm: "
                              "box [4000, 1000, 16000, 5000] lies outside its 200x100 image"), msg
        assert ei.value.reason == "bad_box" and ei.value.row == 2
    samples, rep = convert_refcoco(p, box_format="xywh", coords="norm", on_error="skip")
    assert [(s.id, s.solution) for s in samples] == [("ok-0", pytest.approx([20, 10, 80, 50]))]
    assert rep.rows == 2 and rep.loaded == 1 and dict(rep.skipped) == {"bad_box": 1}
    assert "row 2" in rep.errors[0] and "outside its 200x100 image" in rep.errors[0]


def test_cli_convert_refcoco_pixel_box_as_norm_writes_nothing(tmp_path: Path, capsys) -> None:
    from mixed_r1.cli import main

    _image_200x100(tmp_path)
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"id": "px", "image": "img.png", "bbox": [20, 10, 60, 40],
                             "expression": "the red box"}) + "\n")
    out = tmp_path / "ref.jsonl"
    assert main(["data", "convert", "refcoco", "--input", str(p), "--out", str(out),
                 "--coords", "norm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {p}, row 1, key 'bbox': bbox [20, 10, 60, 40] read as xywh "
                          "norm: box [4000, 1000, 16000, 5000] lies outside its 200x100 image"), err
    assert not out.exists()


def test_refcoco_box_outside_image_in_pixels(tmp_path: Path) -> None:
    _image_200x100(tmp_path)
    p = tmp_path / "r.jsonl"
    # tolerance max(2, 1% of the side) = 2 px here: x in [-2, 202], y in [-2, 102]
    rows = [{"id": "edge", "image": "img.png", "bbox": [-2, -1.5, 202, 102], "expression": "a"},
            {"id": "full", "image": "img.png", "bbox": [0, 0, 200, 100], "expression": "b"},
            {"id": "out", "image": "img.png", "bbox": [150, 10, 202.5, 50], "expression": "c"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 3, key 'bbox': .*outside its 200x100 image"):
        convert_refcoco(p, box_format="xyxy", coords="pixel")
    samples, rep = convert_refcoco(p, box_format="xyxy", coords="pixel", on_error="skip")
    assert [(s.id, s.solution) for s in samples] == [("edge-0", [-2.0, -1.5, 202.0, 102.0]),
                                                     ("full-0", [0.0, 0.0, 200.0, 100.0])]
    assert dict(rep.skipped) == {"bad_box": 1}
    # the whole image in 0..1000 coords is exactly the image's edges
    assert to_pixel_xyxy([0, 0, 1000, 1000], box_format="xyxy", coords="norm1000", width=200,
                         height=100) == [0.0, 0.0, 200.0, 100.0]
    with pytest.raises(DataError, match="outside its 200x100 image"):
        to_pixel_xyxy([0, 0, 1, 1.05], box_format="xyxy", coords="norm", width=200, height=100)


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


# ------------------------------------------------------------------ math golds (MATH conventions)
@pytest.mark.parametrize("solution,gold", [
    # issue cases: an \fbox and a brace-less \boxed (MATH reference forms)
    ("Thus the total is $\\fbox{12}$.", "12"),
    ("So we get $\\boxed 5$.", "5"),
    ("nested: $\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}"),
    ("first $\\boxed{1}$, finally $\\fbox{2}$", "2"),            # the last box wins
    ("first $\\fbox{1}$, finally $\\boxed{2}$", "2"),
    ("$\\boxed{\\boxed{7}}$", "7"),
    # the MATH normaliser's rules
    ("$\\boxed{\\dfrac{3}{4}}$", "\\frac{3}{4}"), ("$\\boxed{\\tfrac{1}{3}}$", "\\frac{1}{3}"),
    ("$\\boxed{\\left( 1, 2 \\right)}$", "(1,2)"), ("$\\boxed{90^\\circ}$", "90"),
    ("$\\boxed{90^{\\circ}}$", "90"), ("$\\boxed{\\$1.50}$", "1.50"),
    ("$\\boxed{5\\text{ cm}}$", "5"),
    ("$\\boxed{50\\%}$", "50"), ("$\\boxed{.5}$", "\\frac{1}{2}"), ("$\\boxed{x = 5}$", "5"),
    ("$\\boxed{\\sqrt3}$", "\\sqrt{3}"), ("$\\boxed{\\frac12}$", "\\frac{1}{2}"),
    ("$\\boxed{\\frac1{2}}$", "\\frac{1}{2}"), ("$\\boxed{3/4}$", "\\frac{3}{4}"),
    ("$\\boxed{10,\\!000}$", "10,000"), ("$\\boxed{1\\,000}$", "1000"),
    ("$\\boxed{0.5}$", "\\frac{1}{2}"),
    ("$\\boxed{2 \\pi r}$", "2\\pi r"),  # a command's space before a letter is kept
    ("$\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}$", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    # GSM8K tails and bare answers
    ("so 12 - 2 = 10\n#### 1,010", "1010"), ("1024", "1024"), ("$2^{10}$", "2^{10}"),
])
def test_math_gold_extraction_and_normalisation(solution, gold):
    assert extract_math_answer(solution) == gold


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


MATH_ROWS = [
    {"id": "fbox", "problem": "Add.", "solution": "Thus the total is $\\fbox{12}$."},
    {"id": "bspace", "problem": "Five.", "solution": "So we get $\\boxed 5$."},
    {"id": "empty-frac", "problem": "?", "solution": "Hence $\\boxed{\\frac{1}{}}$."},
    {"id": "prose", "problem": "?", "solution": "The total is twelve."},
    {"id": "paren", "problem": "?", "answer": "()"},
]


def test_math_converter_extracts_golds_and_names_unparseable_rows(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "m.jsonl", MATH_ROWS)
    samples, rep = convert_math(src, on_error="skip")
    assert [(s.id, s.solution) for s in samples] == [("fbox", "12"), ("bspace", "5")]
    assert dict(rep.skipped) == {"unparseable_gold": 2, "no_final_answer": 1}
    assert any("row 3" in e and "math-verify cannot parse" in e for e in rep.errors)
    assert any("row 5" in e and "math-verify cannot parse" in e for e in rep.errors)
    assert any("row 4" in e and "no \\boxed" in e for e in rep.errors)
    with pytest.raises(DataError,
                       match=r"m\.jsonl, row 3, key 'solution'.*math-verify cannot parse"):
        convert_math(src)


def test_load_rejects_a_math_gold_the_verifier_cannot_parse(tmp_path: Path) -> None:
    rows = [{"id": "ok", "task_type": "math", "question": "q", "solution": "\\frac{3}{4}"},
            {"id": "bad", "task_type": "math", "question": "q", "solution": "\\sqrt{}"}]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d\.jsonl, row 2, key 'solution': math solution"):
        load_samples(path)
    samples, rep = load_samples(path, on_error="skip")
    assert [s.id for s in samples] == ["ok"] and dict(rep.skipped) == {"unparseable_gold": 1}


def test_cli_convert_math_reports_unparseable_golds(tmp_path: Path, capsys) -> None:
    from mixed_r1.cli import main

    src = _write_jsonl(tmp_path / "m.jsonl", MATH_ROWS)
    out = tmp_path / "m_out.jsonl"
    assert main(["data", "convert", "math", "--input", str(src), "--out", str(out),
                 "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["samples"] == 2 and summary["unparseable_golds"] == 2
    assert "unparseable gold:" in captured.err
    assert "row 3" in captured.err and "row 5" in captured.err
    assert [s.solution for s in load_samples(out)[0]] == ["12", "5"]


def test_cli_convert_exits_non_zero_when_nothing_was_converted(tmp_path: Path, capsys) -> None:
    from mixed_r1.cli import main

    src = _write_jsonl(tmp_path / "bad.jsonl", MATH_ROWS[2:])
    out = tmp_path / "nothing.jsonl"
    assert main(["data", "convert", "math", "--input", str(src), "--out", str(out),
                 "--on-error", "skip"]) == 1
    assert not out.exists()
    assert "nothing converted" in capsys.readouterr().err


# ------------------------------------------------------------------ ChartQA labels, image paths
def test_chartqa_label_as_a_list_or_its_csv_text(tmp_path: Path) -> None:
    img = str(FIX / "images/chart_b.png")
    rows = [{"imgname": img, "query": "q1", "label": ["14"]},      # the Hugging Face form
            {"imgname": img, "query": "q2", "label": "15"},
            {"imgname": img, "query": "q3", "label": ["Blue "]}]
    (tmp_path / "c.json").write_text(json.dumps(rows))
    samples, _ = convert_chartqa(tmp_path / "c.json")
    assert [s.solution for s in samples] == ["14", "15", "Blue"]
    csv_text = f"imgname,query,label\n{img},q,['14']\n{img},q,\"[\"\"7\"\"]\"\n"
    (tmp_path / "c.csv").write_text(csv_text)
    samples, _ = convert_chartqa(tmp_path / "c.csv")
    assert [s.solution for s in samples] == ["14", "7"]
    two = [{"imgname": img, "query": "q", "label": ["1", "2"]}]
    (tmp_path / "two.json").write_text(json.dumps(two))
    with pytest.raises(DataError, match=r"two\.json, row 1, key 'label'.*not one answer"):
        convert_chartqa(tmp_path / "two.json")


def test_converted_image_paths_are_relative_to_the_output_file(tmp_path: Path) -> None:
    import shutil

    from mixed_r1.data import write_samples

    src = tmp_path / "set" / "raw"
    (src / "images").mkdir(parents=True)
    shutil.copy(FIX / "images/chart_b.png", src / "images/chart_b.png")
    (src / "c.json").write_text(json.dumps([{"imgname": "images/chart_b.png", "query": "q",
                                             "label": ["3"]}]))
    samples, _ = convert_chartqa(src / "c.json")
    out = write_samples(samples, tmp_path / "set" / "converted" / "chart.jsonl")
    assert json.loads(out.read_text())["images"] == ["../raw/images/chart_b.png"]
    moved = shutil.move(str(tmp_path / "set"), str(tmp_path / "moved"))  # the dataset moves
    back, _ = load_samples(Path(moved) / "converted" / "chart.jsonl")
    assert back[0].images == [str((Path(moved) / "raw/images/chart_b.png").resolve())]
