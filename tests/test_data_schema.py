"""Schema, JSONL/Parquet/datasets round trips and every validation error."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from mixed_r1.data import DataError, Sample, load_samples, parse_box, write_samples


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    p = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(p)
    return p


def _samples(image: Path) -> list[Sample]:
    return [
        Sample(id="a", task_type="yes_no", question="Is it green?", solution="yes",
               images=[str(image)], source="t"),
        Sample(id="b", task_type="multiple_choice", question="Colour?", solution="B",
               options=["red", "green", "blue"], images=[str(image)], source="t",
               meta={"k": [1, 2]}),
        Sample(id="c", task_type="chart", question="Value?", solution="12.5", images=[str(image)]),
        Sample(id="d", task_type="math", question="1+1?", solution="\\frac{1}{2}"),
        Sample(id="e", task_type="grounding", question="Where?", solution=[1.0, 2.5, 30.0, 20.0],
               images=[str(image)]),
        Sample(id="f", task_type="open_ended", question="Describe.", solution="A green image.",
               messages=[{"role": "user", "content": [{"type": "image"},
                                                      {"type": "text", "text": "Describe."}]}],
               images=[str(image)]),
    ]


def _write_raw(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_parquet_datasets_round_trip(tmp_path: Path, image: Path) -> None:
    import datasets

    orig = _samples(image)
    j = write_samples(orig, tmp_path / "set.jsonl")
    from_j, rep = load_samples(j)
    assert rep.loaded == 6 and rep.n_skipped == 0
    assert [s.to_dict() for s in from_j] == [s.to_dict() for s in orig]
    # image paths are stored relative to the file's directory
    assert json.loads(j.read_text().splitlines()[0])["images"] == ["img.png"]

    pq = write_samples(from_j, tmp_path / "set.parquet")
    from_pq, _ = load_samples(pq)
    assert [s.to_dict() for s in from_pq] == [s.to_dict() for s in orig]

    ds = datasets.Dataset.from_parquet(str(pq))
    assert ds.num_rows == 6
    assert ds[4]["solution"] == "[1, 2.5, 30, 20]"
    assert ds[1]["options"] == ["red", "green", "blue"]
    # rows read by `datasets` validate back into the same samples
    from mixed_r1.data import sample_from_dict

    back = [sample_from_dict(r, base_dir=tmp_path) for r in ds]
    assert [s.to_dict() for s in back] == [s.to_dict() for s in orig]


def test_write_is_atomic(tmp_path: Path, image: Path, monkeypatch) -> None:
    path = write_samples(_samples(image)[:1], tmp_path / "x.jsonl")
    before = path.read_bytes()

    class Boom(Exception):
        pass

    def bad_dumps(*a, **k):
        raise Boom

    monkeypatch.setattr("mixed_r1.data.io.json.dumps", bad_dumps)
    with pytest.raises(Boom):
        write_samples(_samples(image), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


GOOD = {"id": "g", "task_type": "yes_no", "question": "q?", "solution": "no"}


@pytest.mark.parametrize("record,reason,needle", [
    ({**GOOD, "images": ["missing.png"]}, "missing_image", "does not exist"),
    ({**GOOD, "images": ["broken.png"]}, "unreadable_image", "unreadable"),
    ({**GOOD, "task_type": "poetry"}, "unknown_task_type", "unknown task type 'poetry'"),
    ({**GOOD, "task_type": "grounding", "solution": [1, 2, 3]}, "bad_box", "expected 4"),
    ({**GOOD, "task_type": "grounding", "solution": [5, 2, 3, 9]}, "bad_box", "x1 < x2"),
    ({**GOOD, "task_type": "grounding", "solution": [1, 9, 3, 2]}, "bad_box", "x1 < x2"),
    ({**GOOD, "task_type": "grounding", "solution": [1, 2, float("inf"), 9]}, "bad_box",
     "non-finite"),
    ({**GOOD, "task_type": "grounding", "solution": "[1, 2, nan, 4]"}, "bad_box", "four numbers"),
    # a box outside its 40x30 image (slack max(2 px, 1% of the side) = 2 px per side)
    ({**GOOD, "task_type": "grounding", "images": ["img.png"], "solution": [800, 300, 2400, 1500]},
     "bad_box", "box [800, 300, 2400, 1500] lies outside its 40x30 image"),
    ({**GOOD, "task_type": "grounding", "images": ["img.png"], "solution": [1, 2, 42.5, 30]},
     "bad_box", "allowed: x in [-2, 42], y in [-2, 32] pixels"),
    ({**GOOD, "task_type": "grounding", "images": ["img.png"], "solution": [1, -3, 20, 10]},
     "bad_box", "outside its 40x30 image"),
    ({**GOOD, "task_type": "multiple_choice", "options": ["x", "y"], "solution": "C"},
     "solution_not_in_options", "not among the options"),
    ({**GOOD, "task_type": "multiple_choice", "options": ["x", "y"], "solution": "z"},
     "solution_not_in_options", "not among the options"),
    ({**GOOD, "solution": None}, "missing_field", "key 'solution'"),
])
def test_validation_errors_raise_and_skip(tmp_path: Path, image: Path, record, reason,
                                          needle) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    rows = [GOOD, {**GOOD, "id": "g2"}, record]
    path = _write_raw(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as ei:
        load_samples(path)
    msg = str(ei.value)
    assert str(path) in msg and "row 3" in msg and needle in msg, msg
    assert ei.value.reason == reason
    samples, rep = load_samples(path, on_error="skip")
    assert [s.id for s in samples] == ["g", "g2"]
    assert rep.rows == 3 and rep.loaded == 2 and dict(rep.skipped) == {reason: 1}
    assert "row 3" in rep.errors[0]


def test_invalid_json_line_and_on_error_value(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(DataError, match="row 2.*invalid JSON"):
        load_samples(path)
    _, rep = load_samples(path, on_error="skip")
    assert dict(rep.skipped) == {"malformed": 1}
    with pytest.raises(ValueError, match="on_error"):
        load_samples(path, on_error="ignore")


def test_mcq_option_text_becomes_letter_and_box_text(tmp_path: Path) -> None:
    rows = [{**GOOD, "task_type": "multiple_choice", "options": ["cat", "dog"], "solution": "Dog"},
            {**GOOD, "id": "b", "task_type": "grounding", "solution": "[1, 2.5, 3e1, 40]"}]
    samples, _ = load_samples(_write_raw(tmp_path / "d.jsonl", rows))
    assert samples[0].solution == "B"
    assert samples[1].solution == [1.0, 2.5, 30.0, 40.0]
    assert samples[1].solution_text() == "[1, 2.5, 30, 40]"


def test_grounding_box_is_checked_against_its_image_at_load(tmp_path: Path) -> None:
    # issue 31 item 6: the box the old refcoco --coords norm conversion wrote for a 200x100
    # image loaded without complaint; it is refused naming the file and the row, in JSONL and
    # Parquet alike
    Image.new("RGB", (200, 100), (255, 255, 255)).save(tmp_path / "img.png")
    box = {"id": "r", "task_type": "grounding", "question": "Where is the red box?",
           "images": ["img.png"]}
    rows = [{**box, "id": "whole", "solution": [0, 0, 200, 100]},
            {**box, "id": "edge", "solution": [-2, -2, 202, 102]},  # within the 2 px slack
            {**box, "id": "issue", "solution": [4000.0, 1000.0, 12000.0, 5000.0]}]
    path = _write_raw(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as ei:
        load_samples(path)
    assert str(ei.value).startswith(
        f"{path}, row 3, key 'solution': box [4000, 1000, 12000, 5000] lies outside its 200x100 "
        f"image {tmp_path / 'img.png'} (allowed: x in [-2, 202], y in [-2, 102] pixels)"), ei.value
    assert ei.value.reason == "bad_box"
    samples, rep = load_samples(path, on_error="skip")
    assert [(s.id, s.solution) for s in samples] == [("whole", [0.0, 0.0, 200.0, 100.0]),
                                                     ("edge", [-2.0, -2.0, 202.0, 102.0])]
    assert dict(rep.skipped) == {"bad_box": 1} and "row 3" in rep.errors[0]
    # Parquet (the box as text) goes through the same check
    pq = write_samples([Sample(id=r["id"], task_type="grounding", question=r["question"],
                               solution=r["solution"], images=[str(tmp_path / "img.png")])
                        for r in rows], tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d\.parquet, row 3, key 'solution': .*outside its 200"):
        load_samples(pq)
    # without image checks no image is opened, so the box is not checked against one
    assert len(load_samples(path, check_images=False)[0]) == 3


def test_box_tolerance_grows_with_the_image() -> None:
    from mixed_r1.data.schema import box_tolerance, check_box_in_image

    assert box_tolerance(100) == 2.0 and box_tolerance(200) == 2.0 and box_tolerance(1000) == 10.0
    check_box_in_image([-10, 0, 1010, 500], 1000, 500)  # 10 px = 1% of 1000 on x
    with pytest.raises(ValueError, match="outside its 1000x500 image"):
        check_box_in_image([0, 0, 1000, 505.5], 1000, 500)  # y slack is 5 px


@pytest.mark.parametrize("bad", [[0, 0, 0, 1], [True, 0, 2, 2], ["1", 0, 2, 2], "1,2,3",
                                 [0, 0, math.nan, 1], {"x": 1}])
def test_parse_box_rejects(bad) -> None:
    with pytest.raises(ValueError):
        parse_box(bad)
