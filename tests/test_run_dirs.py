"""Run directories a user can trust (issue 16), on the HF backend in process and on the megatron
backend at TP=2 over gloo (one spawned 2-rank job, ``tests/mcore_run_dir_checks.py``):

- training into a finished run directory is refused; ``overwrite`` clears it and starts over (and
  deletes nothing a run did not write); ``resume`` of a missing directory is refused, and a resume
  says which step it continues from;
- a damaged newest checkpoint (optimizer deleted, model or optimizer truncated, a flipped byte,
  manifest missing) is named in a warning, moved aside, and the resume falls back to the older
  complete one and then computes exactly what an uninterrupted run computed;
- SIGINT during a step finishes the step, writes a checkpoint (exit status 130), and resuming it
  gives the uninterrupted run's metrics and weights; a second SIGINT stops at once.

"Exactly" is bit-identical metrics (all but wall-clock) and final weights, against a reference run
of the same config that nothing interrupted; its step 3 has non-zero advantages, so the weights
do move after every resume point used here.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _trainer_util import (differing_tensors, exported_weights, free_port, make_data,
                           stable_metrics, tiny_overrides)
from mixed_r1.checkpoint import (CheckpointError, TrainingInterrupted, list_checkpoints,
                                 newest_complete_checkpoint, verify_checkpoint)
from mixed_r1.config import load_config
from mixed_r1.metrics import read_metrics
from mixed_r1.trainer import run_training

STEPS = 3
STEP2, STEP3 = "step_00000002", "step_00000003"


def _cfg(data: Path, run: Path, steps: int = STEPS, save_every: int = 1):
    return load_config(None, tiny_overrides(data, run, steps=steps)
                       + [f"save_every={save_every}", "keep_last=10"])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def ref(data, tmp_path_factory) -> dict:
    """An uninterrupted 3-step run with a checkpoint after every step."""
    run = tmp_path_factory.mktemp("ref") / "run"
    old = os.umask(0o022)  # a shared cluster's usual umask: group and others may read
    try:
        run_training(_cfg(data, run))
    finally:
        os.umask(old)
    from safetensors.torch import load_file

    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[2]["adv/abs_mean"] > 0, "step 3 learned nothing: exactness would be vacuous"
    ck = run / "checkpoints"
    assert differing_tensors(load_file(str(ck / STEP2 / "model.safetensors")),
                             load_file(str(ck / STEP3 / "model.safetensors"))), \
        "the weights did not change in step 3"
    return {"run": run, "metrics": stable_metrics(rows), "weights": exported_weights(run)}


def _listing(run: Path) -> dict[str, int]:
    """Every file under ``run`` with its size."""
    return {str(p.relative_to(run)): p.stat().st_size for p in sorted(run.rglob("*"))
            if p.is_file()}


def _copy_run(src: Path, dst: Path, checkpoints: tuple[str, ...] = (STEP2, STEP3)) -> Path:
    """A run directory as a crash would leave it: config, metrics and some checkpoints; no
    final export."""
    (dst / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy2(src / name, dst / name)
    for ck in checkpoints:
        shutil.copytree(src / "checkpoints" / ck, dst / "checkpoints" / ck)
    return dst


def _assert_matches_ref(run: Path, ref: dict) -> None:
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert stable_metrics(rows) == ref["metrics"]
    assert differing_tensors(exported_weights(run), ref["weights"]) == []


# ------------------------------------------------------------------ run directories
def test_a_run_respects_the_umask(ref):
    """Written under umask 022, every file of the run (checkpoints, model, metrics) is 0644 and
    every directory 0755, as ``open``/``mkdir`` make them: temporaries renamed into place must
    not keep mkstemp's 0600 / mkdtemp's 0700 (issue 31, item 5)."""
    modes = {str(p.relative_to(ref["run"])): oct(p.stat().st_mode & 0o777)
             for p in [ref["run"], *ref["run"].rglob("*")]}
    wrong = {k: m for k, m in modes.items()
             if m != oct(0o755 if (ref["run"] / k).is_dir() else 0o644)}
    assert wrong == {}
    assert any(k.endswith("model.safetensors") for k in modes)


def test_rerun_into_a_finished_run_is_refused(ref, data):
    """Without resume/overwrite a non-empty run dir is refused before anything is built or
    written: the old metrics, checkpoints and model stay as they were."""
    run = ref["run"]
    before = _listing(run)
    with pytest.raises(FileExistsError) as e:
        run_training(_cfg(data, run))
    msg = str(e.value)
    assert msg.startswith(f"{run}: the run directory is not empty (")
    assert "checkpoints" in msg and "metrics.jsonl" in msg and "model" in msg
    assert "--resume" in msg and "--overwrite" in msg
    assert _listing(run) == before


def test_overwrite_clears_the_run_and_starts_over(ref, data, tmp_path):
    """``overwrite`` deletes the earlier run's checkpoints, export and metrics (and a stale
    temporary) and trains from step 0: its step 1 is the reference's step 1."""
    run = _copy_run(ref["run"], tmp_path / "run", checkpoints=(STEP2, STEP3))
    shutil.copytree(ref["run"] / "model", run / "model")
    (run / "checkpoints" / ".tmp-step_00000004").mkdir()
    (run / ".tmp-model-123").mkdir()
    run_training(_cfg(data, run, steps=1), overwrite=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml",
                                                     "metrics.jsonl", "model"]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1]
    assert stable_metrics(rows) == ref["metrics"][:1]
    from safetensors.torch import load_file

    got = load_file(str(run / "checkpoints" / "step_00000001" / "model.safetensors"))
    want = load_file(str(ref["run"] / "checkpoints" / "step_00000001" / "model.safetensors"))
    assert differing_tensors(got, want) == []


def test_overwrite_deletes_only_what_a_run_writes(ref, data, tmp_path):
    """A file no run writes (a mistyped out_dir pointing at someone's files) is named and nothing
    is deleted."""
    run = _copy_run(ref["run"], tmp_path / "run", checkpoints=(STEP3,))
    (run / "notes.txt").write_text("mine")
    before = _listing(run)
    with pytest.raises(FileExistsError, match=r"--overwrite deletes only what a training run "
                                              r"writes, and .*/run/notes\.txt is not that"):
        run_training(_cfg(data, run), overwrite=True)
    assert _listing(run) == before


def test_overwrite_waits_for_the_build(ref, data, tmp_path, monkeypatch):
    """``overwrite`` deletes the earlier run only once the new one is built: a data error (the
    train file missing) and an error raised after the build wrote into the directory (as the
    megatron build writes ``init_model``) both leave every file as it was, and nothing new."""
    import mixed_r1.trainer as trainer_mod

    run = _copy_run(ref["run"], tmp_path / "run", checkpoints=(STEP3,))
    shutil.copytree(ref["run"] / "model", run / "model")
    before, metrics = _listing(run), (run / "metrics.jsonl").read_bytes()
    cfg = _cfg(data, run)
    cfg.data.train_file = str(tmp_path / "missing.jsonl")
    with pytest.raises(Exception, match="missing.jsonl"):
        run_training(cfg, overwrite=True)
    assert _listing(run) == before and (run / "metrics.jsonl").read_bytes() == metrics

    def build_fails(cfg, run_dir, model=None):
        assert sorted(p.name for p in run_dir.iterdir()) == [f".tmp-overwritten-{os.getpid()}"]
        (run_dir / "init_model").mkdir()
        (run_dir / "init_model" / "config.json").write_text("{}")
        (run_dir / ".tmp-mcore_init-1").mkdir()
        raise RuntimeError("the model failed to load")
    monkeypatch.setattr(trainer_mod, "build_trainer", build_fails)
    with pytest.raises(RuntimeError, match="failed to load"):
        run_training(_cfg(data, run), overwrite=True)
    assert _listing(run) == before and (run / "metrics.jsonl").read_bytes() == metrics
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "model"]


def test_resume_of_a_missing_run_dir_is_refused(data, tmp_path):
    run = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError,
                       match=f"^{re.escape(str(run))}: no such run directory to resume"):
        run_training(_cfg(data, run), resume=True)
    assert not run.exists()
    with pytest.raises(ValueError, match="pass one of them"):
        run_training(_cfg(data, tmp_path), resume=True, overwrite=True)


# ------------------------------------------------------------------ damaged checkpoints
def _truncate(f: Path) -> None:
    os.truncate(f, f.stat().st_size // 2)


def _flip_byte(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.seek(f.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))


DAMAGE = {  # variant: (bad file, what to do to it, what the warning says about it)
    "optimizer_deleted": ("optimizer.pt", Path.unlink, r"missing \(the manifest lists it\)"),
    "model_truncated": ("model.safetensors", _truncate,
                        r"\d+ bytes, the manifest says \d+ \(truncated or overwritten\)"),
    "optimizer_truncated": ("optimizer.pt", _truncate,
                            r"\d+ bytes, the manifest says \d+ \(truncated or overwritten\)"),
    "rng_byte_flipped": ("rng.pt", _flip_byte, r"sha256 differs from the manifest's"),
    "manifest_deleted": ("manifest.json", Path.unlink, r"missing \(an incomplete checkpoint"),
}


@pytest.mark.slow  # five damaged runs resumed (integration, > 5 s here)
@pytest.mark.parametrize("variant", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_named_and_fallen_back_from(variant, ref, data, tmp_path,
                                                                  caplog, capsys):
    """The newest checkpoint (step 3) is damaged: the resume warns naming the bad file, moves the
    checkpoint aside to ``step_00000003.damaged``, says it resumes from step 2, and recomputes
    step 3 exactly."""
    name, damage, why = DAMAGE[variant]
    run = _copy_run(ref["run"], tmp_path / "run")
    bad = run / "checkpoints" / STEP3 / name
    damage(bad)
    with caplog.at_level(logging.WARNING, logger="mixed_r1.trainer"):
        run_training(_cfg(data, run), resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "damaged checkpoint" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert re.search(f"{STEP3}: {re.escape(str(bad))}: {why}", warnings[0]), warnings[0]
    assert f"resuming from {STEP2} instead" in warnings[0]
    assert f"resuming {run} from step 2 ({run / 'checkpoints' / STEP2})" in capsys.readouterr().out
    aside = run / "checkpoints" / f"{STEP3}.damaged"
    assert aside.is_dir() and (aside / name).exists() != (variant.endswith("_deleted"))
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [STEP2, STEP3]
    verify_checkpoint(run / "checkpoints" / STEP3)  # the recomputed one is complete
    _assert_matches_ref(run, ref)


def test_no_complete_checkpoint_names_every_problem_and_moves_nothing(ref, tmp_path):
    """When every checkpoint is damaged the resume fails naming each one, and leaves them in
    place, so a second resume fails the same way instead of finding no checkpoint and starting
    over."""
    from mixed_r1.checkpoint import checkpoint_files

    run = _copy_run(ref["run"], tmp_path / "run")
    ck = run / "checkpoints"
    (ck / STEP3 / "optimizer.pt").unlink()
    _truncate(ck / STEP2 / "model.safetensors")
    names = checkpoint_files(None, None, optimizer=True)
    for _ in range(2):
        with pytest.raises(CheckpointError) as e:
            newest_complete_checkpoint(ck, names)
        msg = str(e.value)
        assert msg.startswith(f"{ck}: no complete checkpoint to resume from (")
        assert f"{STEP3}: {ck / STEP3 / 'optimizer.pt'}: missing" in msg
        assert f"{STEP2}: {ck / STEP2 / 'model.safetensors'}: " in msg
        assert [p.name for p in list_checkpoints(ck)] == [STEP2, STEP3]
        assert not list(ck.glob("*.damaged"))


def test_checkpoints_without_optimizer_state_export_but_do_not_resume(data, tmp_path):
    """``save_optimizer: false`` (issue 31, item 10: a 135M model's checkpoint is 1.8 GB, most
    of it AdamW state): the checkpoints hold weights, RNG and trainer state but no optimizer.pt,
    verify as complete, the final export is written, and ``--resume`` is refused in one line
    that names the checkpoint instead of moving it aside as damaged."""
    run = tmp_path / "run"
    run_training(load_config(None, tiny_overrides(data, run, steps=2)
                             + ["save_every=1", "keep_last=5", "save_optimizer=false"]))
    cks = list_checkpoints(run / "checkpoints")
    assert [p.name for p in cks] == ["step_00000001", STEP2]
    for ck in cks:
        assert sorted(p.name for p in ck.iterdir()) == [
            "config.yaml", "manifest.json", "model.safetensors", "rng.pt", "trainer_state.json"]
        verify_checkpoint(ck)
    assert (run / "model" / "model.safetensors").is_file()
    with pytest.raises(CheckpointError) as e:
        run_training(load_config(None, tiny_overrides(data, run, steps=3)), resume=True)
    assert str(e.value).startswith(f"{cks[-1]}: written with save_optimizer: false (no "
                                   "optimizer state), so it cannot resume the run")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [p.name for p in cks]
    assert not list((run / "checkpoints").glob("*.damaged"))


# ------------------------------------------------------------------ SIGINT
@pytest.mark.slow
def test_sigint_during_a_checkpoint_write_says_what_happens(data, tmp_path, capsys):
    """A SIGINT that lands while step 1's checkpoint is written: the message says that
    checkpoint is finished and training stops, and the exception agrees (step 1); it used to say
    "finishing step 2" and then "interrupted after step 1"."""
    from mixed_r1.checkpoint import prepare_run_dir
    from mixed_r1.trainer import build_trainer

    run = prepare_run_dir(tmp_path / "run")
    trainer = build_trainer(_cfg(data, run, save_every=1), run)
    save = trainer.save

    def save_interrupted():
        os.kill(os.getpid(), signal.SIGINT)
        return save()

    trainer.save = save_interrupted
    with pytest.raises(TrainingInterrupted) as e:
        trainer.train()
    assert e.value.step == 1 and e.value.checkpoint == run / "checkpoints" / "step_00000001"
    err = capsys.readouterr().err
    assert "SIGINT: finishing the checkpoint of step 1, then stopping" in err
    assert "step 2" not in err


@pytest.mark.slow  # training interrupted and resumed (integration, > 5 s here)
def test_sigint_writes_a_checkpoint_that_resumes_exactly(ref, data, tmp_path, capsys):
    """SIGINT arrives while step 2 samples: the step finishes, a checkpoint of step 2 is written
    (none is due: save_every=10), TrainingInterrupted carries exit status 130 and the checkpoint,
    and the previous handler is back. A second run of the same trainer gets two SIGINTs in step 3
    and stops at once, without a checkpoint. Resuming gives the uninterrupted run's metrics and
    weights."""
    from mixed_r1.checkpoint import prepare_run_dir
    from mixed_r1.metrics import MetricsLogger
    from mixed_r1.trainer import build_trainer

    run = prepare_run_dir(tmp_path / "run")
    cfg = _cfg(data, run, save_every=10)
    trainer = build_trainer(cfg, run)
    sample = trainer.rollout
    kills = {2: 1, 3: 2}  # step: SIGINTs sent while it samples

    def rollout(step):
        for _ in range(kills.get(step, 0)):
            os.kill(os.getpid(), signal.SIGINT)
        return sample(step)

    trainer.rollout = rollout
    handler = signal.getsignal(signal.SIGINT)
    logger = MetricsLogger(run, total_steps=STEPS, tensorboard=False, progress=False)
    with pytest.raises(TrainingInterrupted) as e:
        trainer.train(logger)
    logger.close()
    err = e.value
    assert (err.signum, err.exit_code, err.step) == (signal.SIGINT, 130, 2)
    assert err.checkpoint == run / "checkpoints" / STEP2
    assert f"interrupted by SIGINT after step 2: checkpoint {err.checkpoint}" in str(err)
    assert "SIGINT: finishing step 2, then writing its checkpoint" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [STEP2]
    verify_checkpoint(err.checkpoint)
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert not (run / "model").exists()

    with pytest.raises(KeyboardInterrupt) as e2:  # the second SIGINT: no checkpoint of step 3
        trainer.train()
    assert not isinstance(e2.value, TrainingInterrupted)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [STEP2]
    assert signal.getsignal(signal.SIGINT) is handler
    del trainer

    run_training(cfg, resume=True)
    assert f"resuming {run} from step 2" in capsys.readouterr().out
    _assert_matches_ref(run, ref)


# ------------------------------------------------------------------ megatron, TP=2 over gloo
@pytest.mark.multirank
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_megatron_tp2_run_dirs_damage_and_sigint(data, tmp_path):
    """On 2 gloo ranks at TP=2 (``tests/mcore_run_dir_checks.py``): a rerun into the finished run
    is refused on both ranks; SIGINT sent to rank 0 alone in step 2 stops both ranks after step 2
    with one sharded checkpoint (exit status 130 on both), which resumes to the uninterrupted
    run's metrics and weights; a truncated model shard that only rank 1 reads fails the newest
    checkpoint on both ranks, is named, and the resume from step 2 recomputes step 3 exactly."""
    script = Path(__file__).parent / "mcore_run_dir_checks.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), str(script), str(tmp_path), str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1100,
                          cwd=Path(__file__).parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    result_file = tmp_path / "result.json"
    assert proc.returncode == 0 and result_file.is_file(), \
        proc.stdout[-3000:] + proc.stderr[-6000:]
    r = json.loads(result_file.read_text())
    ref, cut, dmg = tmp_path / "ref", tmp_path / "cut", tmp_path / "dmg"

    assert [m["step"] for m in r["ref_metrics"]] == [1, 2, 3]
    assert r["ref_metrics"][2]["adv/abs_mean"] > 0

    # a rerun into the finished run: refused on both ranks, nothing touched
    assert r["rerun_refused"] == [f"FileExistsError: {ref}: the run directory is not empty "
                                  "(checkpoints, config.yaml, init_model, mcore_init, "
                                  "metrics.jsonl, model); pass --resume to continue that run or "
                                  "--overwrite to delete it and start over"] * 2
    assert r["ref_listing_unchanged"]

    # SIGINT on rank 0 only: both ranks stop after step 2 with the same checkpoint
    assert r["interrupted"] == [[130, 2, str(cut / "checkpoints" / STEP2)]] * 2
    assert r["cut_checkpoints"] == [STEP2]
    assert r["cut_files"] == ["config.yaml", "manifest.json", "model_tp00_pp000.safetensors",
                              "model_tp01_pp000.safetensors", "optimizer_tp00_pp000.pt",
                              "optimizer_tp01_pp000.pt", "rng.pt", "trainer_state.json"]
    assert f"resuming {cut} from step 2" in r["cut_resume_stdout"]
    assert r["cut_metrics"] == r["ref_metrics"]
    assert r["cut_weights_differ"] == []

    # the newest checkpoint's rank-1 shard truncated: named, moved aside, step 3 recomputed
    bad = dmg / "checkpoints" / STEP3 / "model_tp01_pp000.safetensors"
    assert len(r["dmg_warnings"]) == 1
    assert f"{STEP3}: {bad}: " in r["dmg_warnings"][0]
    assert "(truncated or overwritten)" in r["dmg_warnings"][0]
    assert f"resuming {dmg} from step 2" in r["dmg_resume_stdout"]
    assert r["dmg_checkpoints"] == [STEP2, STEP3] and r["dmg_aside"]
    assert r["dmg_metrics"] == r["ref_metrics"]
    assert r["dmg_weights_differ"] == []
