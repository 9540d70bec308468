"""Experiment trackers beside ``metrics.jsonl`` (issue 32): the config's ``logging`` section turns
on a Weights & Biases run fed the same rows as the JSONL file (``MetricsLogger.log`` fans out),
in offline mode without network; the run id lives in ``<run>/wandb_run_id`` so ``--resume``
continues the same W&B run; the run is finished on every way out of training (exit code 130 on
SIGINT); a config that asks for wandb without the package fails with one ConfigError line before
anything is built.

The W&B tests need the ``wandb`` package (the ``test`` extra installs it) and are skipped with a
reason without it; the test of its absence blocks the import instead (``sys.modules['wandb'] =
None``), so it runs either way. Every WANDB_* variable of the caller's environment is removed and
wandb's own directories point into the test's tmp directory.
"""
from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import time
from pathlib import Path

import pytest

from _trainer_util import make_data, tiny_overrides
from mixed_r1.config import ConfigError, LoggingConfig, load_config
from mixed_r1.metrics import WANDB_ID_FILE, MetricsLogger, read_metrics

needs_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None,
    reason="wandb is not installed (optional: pip install wandb; `make install` installs it "
           "with the test extra)")


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """No WANDB_* setting of the caller's environment (WANDB_MODE, WANDB_DIR, an API key...)
    reaches a test; wandb's config, cache and data directories are under tmp, and it is quiet."""
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "wandb-home"
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")


# ----------------------------------------------------------------- reading an offline W&B run
def _wandb_records(path: Path):
    """The protobuf records of an offline run's ``run-<id>.wandb`` file: wandb's LevelDB-log
    framing (a 7-byte ``:W&B`` header, 32 KiB blocks of chunks, each ``crc32 u32, length u16,
    type u8`` then data; type 1 full, 2 first, 3 middle, 4 last) around ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb data file"
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:  # zero padding to the block's end
            pos += left
            continue
        if pos + 7 + n > len(data):  # still being written
            return
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(parts + chunk)
            yield rec
            parts = b""
        else:
            parts = chunk if kind == 2 else parts + chunk


def read_offline_run(run_file: Path, wait_s: float = 20.0) -> dict:
    """One finished offline run: its id, config (nested dict), history rows (``{step: {key:
    value}}``, the W&B step as the key) and exit code. wandb-core's writer may still be flushing
    the file for a moment after ``finish()`` returns (seen with wandb 0.31: a 7-byte file right
    after the first run of a process, complete a few ms later; complete at the latest when the
    process exits), so this waits up to ``wait_s`` for the run's exit record."""
    deadline = time.monotonic() + wait_s
    while True:
        out = _read_offline_run(run_file)
        if out["exit_code"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def _read_offline_run(run_file: Path) -> dict:
    out = {"id": None, "config": {}, "history": {}, "exit_code": None}
    for rec in _wandb_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["id"] = rec.run.run_id
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                   for i in rec.history.item}
            out["history"][rec.history.step.num] = row
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def offline_runs(root: Path) -> list[Path]:
    """The ``run-<id>.wandb`` files under ``<root>/wandb/offline-run-*/``, oldest first."""
    return sorted((root / "wandb").glob("offline-run-*/run-*.wandb"))


# ----------------------------------------------------------------- tests
@needs_wandb
def test_metrics_logger_fans_out_to_an_offline_wandb_run_and_finishes_it(tmp_path):
    """Every ``log`` row reaches the W&B run at W&B step = the given step, with the same values
    as its metrics.jsonl line; the resolved config is the run's config; ``close(130)`` finishes
    the run with that exit code; the id is the one in ``wandb_run_id``."""
    run = tmp_path / "run"
    log = MetricsLogger(run, total_steps=3, tensorboard=False, progress=False,
                        wandb=LoggingConfig(wandb=True), config={"steps": 3, "algo": {"beta": 0.0}})
    for step in (1, 2, 3):
        log.log(step, {"reward/total": 0.25 * step, "loss": -0.5 / step, "note": "x"})
    log.close(130)
    log.close(130)  # idempotent
    (found,) = offline_runs(run)
    got = read_offline_run(found)
    assert got["id"] == (run / WANDB_ID_FILE).read_text().strip()
    assert got["exit_code"] == 130
    assert got["config"]["steps"] == 3 and got["config"]["algo"] == {"beta": 0.0}
    rows = read_metrics(run)
    assert sorted(got["history"]) == [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        h = got["history"][r["step"]]
        assert {k: h[k] for k in ("reward/total", "loss", "note")} == \
               {k: r[k] for k in ("reward/total", "loss", "note")}


@needs_wandb
@pytest.mark.slow
def test_training_logs_to_offline_wandb_and_resume_continues_the_same_run(tmp_path):
    """A tiny 2-step run with ``logging.wandb=true`` (offline, the default) writes an offline W&B
    run under the run directory whose history holds metrics.jsonl's reward/total (and loss) at
    each GRPO step and whose config is the run's resolved config; ``--resume`` to 3 steps logs
    step 3 to a second offline run with the same id (``wandb sync`` merges them)."""
    from mixed_r1.trainer import run_training

    data = make_data(tmp_path / "data")
    run = tmp_path / "run"

    def cfg(steps: int):
        return load_config(None, tiny_overrides(data, run, steps=steps)
                           + ["save_every=1", "logging.wandb=true",
                              "logging.wandb_project=mixed-r1-test"])

    run_training(cfg(2))
    (first,) = offline_runs(run)
    run_id = (run / WANDB_ID_FILE).read_text().strip()
    got = read_offline_run(first)
    assert got["id"] == run_id and first.name == f"run-{run_id}.wandb"
    assert got["exit_code"] == 0
    assert got["config"]["steps"] == 2 and got["config"]["out_dir"] == str(run)
    assert got["config"]["logging"]["wandb"] is True
    assert got["config"]["logging"]["wandb_project"] == "mixed-r1-test"
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == sorted(got["history"]) == [1, 2]
    for r in rows:
        for key in ("reward/total", "loss", "reward/accuracy"):
            assert got["history"][r["step"]][key] == r[key], (r["step"], key)

    run_training(cfg(3), resume=True)
    assert (run / WANDB_ID_FILE).read_text().strip() == run_id
    runs = offline_runs(run)
    assert len(runs) == 2 and first in runs
    (second,) = [p for p in runs if p != first]
    resumed = read_offline_run(second)
    assert resumed["id"] == run_id and resumed["exit_code"] == 0
    row3 = read_metrics(run)[-1]
    assert row3["step"] == 3 and sorted(resumed["history"]) == [3]
    assert resumed["history"][3]["reward/total"] == row3["reward/total"]


@needs_wandb
def test_an_interrupted_training_finishes_its_wandb_run_with_the_signal_exit_code(tmp_path,
                                                                                  monkeypatch):
    """run_training closes the logger on the way out of an interrupted train(): the W&B run is
    finished with TrainingInterrupted's exit code (130 for SIGINT), and the step logged before the
    interrupt is in it. (The trainer is a stand-in: this checks run_training's logger handling.)"""
    import signal

    import mixed_r1.trainer as trainer_mod
    from mixed_r1.checkpoint import TrainingInterrupted

    class Interrupted:
        is_main = True

        def resume(self):
            return 0

        def train(self, logger):
            logger.log(1, {"reward/total": 0.5})
            raise TrainingInterrupted(signal.SIGINT, 1, None)

        def export_model(self):
            raise AssertionError("no export after an interrupt")

    monkeypatch.setattr(trainer_mod, "build_trainer", lambda cfg, run, model=None: Interrupted())
    run = tmp_path / "run"
    cfg = load_config(None, [f"out_dir={run}", "progress=false", "tensorboard=false",
                             "logging.wandb=true"])
    with pytest.raises(TrainingInterrupted):
        trainer_mod.run_training(cfg)
    (found,) = offline_runs(run)
    got = read_offline_run(found)
    assert got["exit_code"] == 130
    assert got["history"][1]["reward/total"] == 0.5


def test_wandb_absent_simulated_by_blocking_its_import_fails_in_one_line_before_building(
        tmp_path, monkeypatch):
    """With ``import wandb`` failing (sys.modules['wandb'] = None: how a missing package looks to
    the import), a config with ``logging.wandb: true`` raises one ConfigError line naming the key
    and the pip command before anything is built (the run directory is not even created);
    ``wandb_mode: disabled`` and ``wandb: false`` need no package."""
    import mixed_r1.trainer as trainer_mod

    monkeypatch.setitem(sys.modules, "wandb", None)
    built = []
    monkeypatch.setattr(trainer_mod, "build_trainer", lambda *a, **k: built.append(1))
    run = tmp_path / "run"
    cfg = load_config(None, [f"out_dir={run}", "logging.wandb=true"])
    with pytest.raises(ConfigError) as e:
        trainer_mod.run_training(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert "logging.wandb" in msg and "pip install wandb" in msg
    assert built == [] and not run.exists()

    from mixed_r1.metrics import check_loggers

    check_loggers(load_config(None, ["logging.wandb=true", "logging.wandb_mode=disabled"]))
    check_loggers(load_config(None, []))
    log = MetricsLogger(tmp_path / "plain", tensorboard=False, progress=False,
                        wandb=LoggingConfig(wandb=False))
    log.log(1, {"reward/total": 1.0})
    log.close()
    assert not (tmp_path / "plain" / "wandb").exists()


def test_logging_section_defaults_and_a_bad_mode():
    """The defaults (off; offline when on; project mixed-r1; the run dir's name; <run>/wandb) and
    an unknown ``logging.wandb_mode`` named in one ConfigError."""
    c = load_config(None, []).logging
    assert (c.wandb, c.wandb_project, c.wandb_entity, c.wandb_run_name, c.wandb_mode,
            c.wandb_dir) == (False, "mixed-r1", None, None, "offline", None)
    with pytest.raises(ConfigError, match=r"logging\.wandb_mode': 'cloud' is not one of"):
        load_config(None, ["logging.wandb_mode=cloud"])
