"""Every kind of user error a ``mixed-r1`` command meets is ONE line on stderr, ``error: …``,
naming the file and the row or key, with exit status 2 and no traceback; ``--debug`` (anywhere on
the command line) shows the traceback instead.

Each case runs the real CLI — the console script's ``main`` in this process (tests/_cli.py: a
fresh interpreter per case cost 4-10 s of imports), and ``--debug`` in a subprocess
(``python -m mixed_r1.cli``, the whole path down to Python's exit status): a bad config key (in the
file and on the command line), bad YAML, a data file with a missing image (through ``train``, which
must fail before any model is built or anything is written), a truncated JSONL and a non-finite
box (through ``data select``, which reads its pools first), a truncated safetensors file given to
``eval --model`` and to ``convert hf-to-mcore``, and a model directory whose ``config.json`` is not
JSON.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _trainer_util import make_data, tiny_overrides, write_config

ROOT = Path(__file__).resolve().parents[1]


def _mixed_r1(*args: str, cwd: Path):
    """``mixed-r1 ARGS`` in this process: exit status, stdout, stderr (tests/_cli.py)."""
    from _cli import run_cli

    return run_cli(*args, cwd=cwd)


def _mixed_r1_subprocess(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "mixed_r1.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """A good data set, bad variants of it, configs, and a model dir with a truncated
    safetensors file."""
    root = tmp_path_factory.mktemp("cli")
    good = make_data(root / "data")
    rows = good.read_text().splitlines(keepends=True)
    w: dict = {"root": root, "good": good, "n_rows": len(rows)}

    def data_file(name: str, lines: list[str]) -> Path:
        p = good.parent / name  # beside the good set, so its image paths resolve
        p.write_text("".join(lines))
        return p

    r = json.loads(rows[2])  # row 3
    r["images"] = ["images/no_such_image.png"]
    w["missing_image"] = data_file("missing_image.jsonl", rows[:2] + [json.dumps(r) + "\n"]
                                   + rows[3:])
    w["truncated"] = data_file("truncated.jsonl", rows[:-1] + [rows[-1][: len(rows[-1]) // 2]])
    g = next(i for i, line in enumerate(rows) if json.loads(line)["task_type"] == "grounding")
    r = json.loads(rows[g])
    r["solution"][2] = float("inf")  # json.dumps writes Infinity, which json.loads reads back
    w["nonfinite"], w["nonfinite_row"] = data_file(
        "nonfinite.jsonl", rows[:g] + [json.dumps(r) + "\n"] + rows[g + 1:]), g + 1
    w["nonfinite_box"] = r["solution"]

    w["bad_key"] = write_config(root / "bad_key.yaml",
                                tiny_overrides(good, root / "run_bad_key")
                                + ["model.hiden_size=32"])
    (root / "bad_yaml.yaml").write_text(f"data:\n  train_file: [{good}\nsteps: 3\n")
    w["bad_yaml"] = root / "bad_yaml.yaml"
    w["missing_image_cfg"] = write_config(root / "missing_image.yaml",
                                          tiny_overrides(w["missing_image"], root / "run_mi"))

    from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

    model = root / "model"
    build_tiny_qwen25vl(seed=0).save_pretrained(str(model), safe_serialization=True)
    st = model / "model.safetensors"
    w["st_size"] = st.stat().st_size
    os.truncate(st, w["st_size"] // 2)
    w["model"], w["st"] = model, st
    broken = root / "broken_config"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2_5_vl",\n')
    w["broken_config"] = broken
    return w


def _one_error_line(proc) -> str:
    """The single stderr line of a user error (exit 2, no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    return lines[0]


def test_unknown_config_key_in_the_file(work):
    line = _one_error_line(_mixed_r1("train", "--config", str(work["bad_key"]), cwd=work["root"]))
    assert line.startswith(f"error: {work['bad_key']}: unknown config key 'model.hiden_size' "
                           "(known keys in 'model': kind, path, seed, hidden_size,")


def test_unknown_config_key_on_the_command_line(work):
    line = _one_error_line(_mixed_r1("train", "--config", str(work["missing_image_cfg"]),
                                     "algo.ppo_epoch=2", cwd=work["root"]))
    assert line.startswith("error: command line: unknown config key 'algo.ppo_epoch' (known keys "
                           "in 'algo': ")
    assert "ppo_epochs" in line


def test_bad_yaml(work):
    line = _one_error_line(_mixed_r1("plan", "--config", str(work["bad_yaml"]), cwd=work["root"]))
    assert line == (f"error: {work['bad_yaml']}: not valid YAML at line 3, column 6: expected ',' "
                    "or ']', but got ':' (while parsing a flow sequence started at line 2, "
                    "column 15)")
    # the same line from train, which loads the config the same way
    proc = _mixed_r1("train", "--config", str(work["bad_yaml"]), cwd=work["root"])
    assert _one_error_line(proc) == line


def test_missing_image_through_train(work):
    """``train`` reads the data before building any model and writes nothing into out_dir."""
    run = work["root"] / "run_mi"
    line = _one_error_line(_mixed_r1("train", "--config", str(work["missing_image_cfg"]),
                                     cwd=work["root"]))
    image = work["good"].parent / "images" / "no_such_image.png"
    assert line == (f"error: {work['missing_image']}, row 3, key 'images': image {image} does not "
                    "exist")
    assert not run.exists() or not any(run.iterdir())


def test_truncated_jsonl(work):
    out = work["root"] / "selected_truncated"
    line = _one_error_line(_mixed_r1("data", "select", "--pool", str(work["truncated"]),
                                     "--out", str(out), cwd=work["root"]))
    assert re.fullmatch(rf"error: {re.escape(str(work['truncated']))}, row {work['n_rows']}: "
                        r"invalid JSON: Unterminated string .*", line), line
    assert not out.exists()


def test_non_finite_box(work):
    out = work["root"] / "selected_nonfinite"
    line = _one_error_line(_mixed_r1("data", "select", "--pool", str(work["nonfinite"]),
                                     "--out", str(out), cwd=work["root"]))
    box = ", ".join(str(float(v)) for v in work["nonfinite_box"])
    assert line == (f"error: {work['nonfinite']}, row {work['nonfinite_row']}, key 'solution': "
                    f"box [{box}] holds a non-finite number")
    assert "inf" in box
    assert not out.exists()


def test_truncated_safetensors_given_to_eval(work):
    line = _one_error_line(_mixed_r1("eval", "--model", str(work["model"]), "--data",
                                     str(work["good"]), "--limit", "1", cwd=work["root"]))
    half = work["st_size"] // 2
    assert line == (f"error: {work['st']}: truncated safetensors file ({half} bytes, its header "
                    f"describes {work['st_size']})")


def test_truncated_safetensors_given_to_convert(work):
    out = work["root"] / "mcore"
    line = _one_error_line(_mixed_r1("convert", "hf-to-mcore", "--hf", str(work["model"]),
                                     "--out", str(out), cwd=work["root"]))
    half = work["st_size"] // 2
    assert line == (f"error: {work['st']}: truncated safetensors file ({half} bytes, its header "
                    f"describes {work['st_size']})")
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "convert"])
def test_model_dir_whose_config_is_not_json(work, command):
    d = work["broken_config"]
    args = (["eval", "--model", str(d), "--data", str(work["good"]), "--limit", "1"]
            if command == "eval" else
            ["convert", "hf-to-mcore", "--hf", str(d), "--out", str(work["root"] / "mcore2")])
    line = _one_error_line(_mixed_r1(*args, cwd=work["root"]))
    assert line.startswith(f"error: {d / 'config.json'}: not a readable JSON file: ")


def test_debug_shows_the_traceback(work):
    """``--debug``, before the command or after its arguments, re-raises: a traceback ending in
    the error itself, and Python's exit status 1."""
    for args in (["--debug", "train", "--config", str(work["bad_key"])],
                 ["train", "--config", str(work["bad_key"]), "--debug"]):
        proc = _mixed_r1_subprocess(*args, cwd=work["root"])
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("Traceback (most recent call last):"), proc.stderr
        assert proc.stderr.splitlines()[-1].startswith(
            f"mixed_r1.config.ConfigError: {work['bad_key']}: unknown config key "
            "'model.hiden_size'")


@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143)])
def test_interrupted_training_exits_128_plus_the_signal(signum, code, capsys, tmp_path):
    """run_command turns TrainingInterrupted (raised by GRPOTrainer.train on SIGINT/SIGTERM after
    its checkpoint) into one line saying where the checkpoint is, and exit status 128 + signal."""
    from mixed_r1.checkpoint import TrainingInterrupted
    from mixed_r1.cli import run_command

    ck = tmp_path / "checkpoints" / "step_00000005"

    def train():
        raise TrainingInterrupted(signum, 5, ck)

    assert run_command(train) == code
    name = {2: "SIGINT", 15: "SIGTERM"}[signum]
    assert capsys.readouterr().err == (f"interrupted by {name} after step 5: checkpoint {ck}; "
                                       "continue with --resume\n")
    with pytest.raises(TrainingInterrupted):
        run_command(train, debug=True)
