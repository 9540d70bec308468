"""Datasets as users have them (issue 32): a ``datasets.save_to_disk`` directory and a folder of
Parquet shards as ``data.train_file``, other schemas' column names mapped by ``data.columns``,
a default ``data.task_type``, and images given as paths, bytes or HF ``Image`` features — with
errors naming the file (shard), row and the user's column. Real easy-vqa images throughout."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mixed_r1.data.io import load_samples
from mixed_r1.data.schema import DataError


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MIXED_R1_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


@pytest.fixture(scope="module")
def vqa() -> list[tuple[str, str, str]]:
    """(question, answer, image path) of six real easy-vqa items."""
    import easy_vqa

    texts, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    return [(texts[i], answers[i], paths[image_ids[i]]) for i in range(6)]


def _sha(p: str | Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


COLUMNS = {"question": "query", "solution": "label", "images": "image"}


def test_a_save_to_disk_directory_with_image_features_and_column_mapping(tmp_path, cache, vqa):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"query": [q for q, _, _ in vqa], "label": [a for _, a, _ in vqa],
         "image": [p for _, _, p in vqa], "n": list(range(len(vqa)))},
        features=datasets.Features({"query": datasets.Value("string"),
                                    "label": datasets.Value("string"),
                                    "image": datasets.Image(), "n": datasets.Value("int64")}))
    ds = ds.cast_column("image", datasets.Image())  # stored as the files' bytes
    d = tmp_path / "vqa"
    ds.save_to_disk(str(d))
    samples, rep = load_samples(d, columns=COLUMNS, task_type="open_ended")
    assert rep.loaded == len(vqa) and [s.task_type for s in samples] == ["open_ended"] * len(vqa)
    assert [s.question for s in samples] == [q for q, _, _ in vqa]
    assert [s.solution for s in samples] == [a for _, a, _ in vqa]
    assert [s.id for s in samples] == [f"vqa-{i:06d}" for i in range(1, len(vqa) + 1)]
    for s, (_, _, src) in zip(samples, vqa):  # the image bytes, written once to the cache
        (img,) = s.images
        assert Path(img).parent == cache and _sha(img) == _sha(src)

    dd = datasets.DatasetDict({"train": ds, "test": ds})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"a DatasetDict directory: give one split's directory "
                                        r"\(.*dd/train, .*dd/test\)"):
        load_samples(tmp_path / "dd", columns=COLUMNS, task_type="open_ended")
    samples2, _ = load_samples(tmp_path / "dd" / "train", columns=COLUMNS, task_type="open_ended")
    assert [s.images for s in samples2] == [s.images for s in samples]


def test_parquet_shards_with_struct_bytes_and_paths_and_errors_naming_the_shard(tmp_path, cache,
                                                                               vqa):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "shards" / "data"
    d.mkdir(parents=True)
    (d.parent / "images").mkdir()
    rel = []
    for i, (_, _, src) in enumerate(vqa[3:]):  # shard 2 gives paths relative to the shard
        dst = d / f"img{i}.png"
        dst.write_bytes(Path(src).read_bytes())
        rel.append(dst.name)
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({
        "query": [q for q, _, _ in vqa[:3]], "label": [a for _, a, _ in vqa[:3]],
        "image": pa.array([{"bytes": Path(p).read_bytes(), "path": None} for _, _, p in vqa[:3]],
                          img)}), d / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({
        "query": [q for q, _, _ in vqa[3:]], "label": [a for _, a, _ in vqa[3:]],
        "image": rel}), d / "train-00001-of-00002.parquet")
    samples, _ = load_samples(tmp_path / "shards", columns=COLUMNS, task_type="yes_no"
                              if all(a in ("yes", "no") for _, a, _ in vqa) else "open_ended")
    assert [s.question for s in samples] == [q for q, _, _ in vqa]  # shards in path order
    assert [_sha(s.images[0]) for s in samples] == [_sha(p) for _, _, p in vqa]
    assert Path(samples[0].images[0]).parent == cache and Path(samples[4].images[0]).parent == d

    # a row whose mapped question is empty, in shard 2 row 2: file, row and the user's column
    pq.write_table(pa.table({"query": ["ok?", " "], "label": ["a", "b"], "image": rel[:2]}),
                   d / "train-00001-of-00002.parquet")
    with pytest.raises(DataError) as e:
        load_samples(tmp_path / "shards", columns=COLUMNS, task_type="open_ended")
    assert str(e.value) == (f"{d / 'train-00001-of-00002.parquet'}, row 2, key 'query': missing "
                            "question (or user message) (read as the question)")
    with pytest.raises(DataError) as e:  # a mapped column the data lacks
        load_samples(tmp_path / "shards", columns={**COLUMNS, "options": "choices"},
                     task_type="open_ended")
    assert str(e.value).startswith(f"{d / 'train-00000-of-00002.parquet'}, row 1, key "
                                   "'choices': no column 'choices' (mapped to options); the row "
                                   "has query, label, image")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.parquet").write_bytes(b"PAR1" + b"\0" * 20)
    pq.write_table(pa.table({"query": ["q"], "label": ["a"],
                             "image": pa.array([{"bytes": b"not an image", "path": None}], img)}),
                   bad / "y.parquet")
    with pytest.raises(DataError, match=r"x.parquet: unreadable Parquet file"):
        load_samples(bad, columns=COLUMNS, task_type="open_ended")
    (bad / "x.parquet").unlink()
    with pytest.raises(DataError, match=r"y.parquet, row 1, key 'image': image bytes are not a "
                                        r"readable image"):
        load_samples(bad, columns=COLUMNS, task_type="open_ended")


def test_the_trainer_reads_a_mapped_datasets_directory(tmp_path, cache, vqa):
    """``data.train_file`` = a save_to_disk directory with ``data.columns`` and
    ``data.task_type`` through the config, and one-line config errors for bad mappings."""
    import datasets

    from mixed_r1.config import ConfigError, load_config
    from mixed_r1.trainer import load_train_samples

    d = tmp_path / "vqa"
    datasets.Dataset.from_dict({"q": [q for q, _, _ in vqa], "a": [a for _, a, _ in vqa],
                                "img": [p for _, _, p in vqa]}).cast_column(
        "img", datasets.Image()).save_to_disk(str(d))
    cfg = load_config(None, [f"data.train_file={d}", "data.columns.question=q",
                             "data.columns.solution=a", "data.columns.images=img",
                             "data.task_type=open_ended"])
    samples = load_train_samples(cfg)
    assert [s.solution for s in samples] == [a for _, a, _ in vqa]
    with pytest.raises(ConfigError, match="config key 'data.columns.answer': not a sample field"):
        load_config(None, [f"data.train_file={d}", "data.columns.answer=a"])
    with pytest.raises(ConfigError, match="config key 'data.task_type': 'vqa' is not one of"):
        load_config(None, [f"data.train_file={d}", "data.task_type=vqa"])
    json.dumps(cfg.to_dict())  # the run's config.yaml keeps the mapping
