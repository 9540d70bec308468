"""Run directories on the megatron backend at TP=2 (2 gloo ranks, float32), for
``tests/test_run_dirs.py``.

    torchrun --nproc_per_node 2 tests/mcore_run_dir_checks.py OUT DATA

One job, every case in turn (all through :func:`mixed_r1.trainer.run_training`, 3 steps of the
tiny Qwen2.5-VL at hidden size 64, HF generator on rank 0):

- ``OUT/ref``: an uninterrupted run, a checkpoint after every step; then a rerun into it (refused:
  the message each rank got, and whether any file changed);
- ``OUT/cut``: no checkpoint due (save_every=10); SIGINT sent to rank 0 alone while step 2
  samples; every rank's ``TrainingInterrupted`` (exit code, step, checkpoint); then resumed;
- ``OUT/dmg``: ref's step-2 and step-3 checkpoints with step 3's rank-1 model shard truncated (a
  file rank 0 never reads), resumed.

Rank 0 writes ``OUT/result.json``: what each case did, the stable metrics of every run and which
exported tensors differ from ref's; the test asserts on it.
"""
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    from _trainer_util import differing_tensors, exported_weights, stable_metrics, tiny_overrides
    from mixed_r1.checkpoint import TrainingInterrupted, list_checkpoints, prepare_run_dir
    from mixed_r1.config import load_config
    from mixed_r1.metrics import MetricsLogger, read_metrics
    from mixed_r1.trainer import build_trainer, run_training

    out, data = Path(sys.argv[1]), Path(sys.argv[2])
    STEP2, STEP3 = "step_00000002", "step_00000003"

    def cfg(run: Path, save_every: int = 1):
        return load_config(None, tiny_overrides(data, run, steps=3) + [
            "model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=4",
            "model.num_kv_heads=2", "parallel.backend=mcore", "parallel.tensor_parallel=2",
            f"save_every={save_every}", "keep_last=10"])

    def listing(run: Path) -> dict:
        return {str(p.relative_to(run)): p.stat().st_size for p in sorted(run.rglob("*"))
                if p.is_file()}

    def gather(obj) -> list:
        got = [None] * dist.get_world_size()
        dist.all_gather_object(got, obj)
        return got

    class Warnings(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    def resume(run: Path, c) -> tuple[str, list[str]]:
        """run_training(resume=True): (rank 0's stdout, its 'damaged checkpoint' warnings)."""
        caught = Warnings()
        logging.getLogger("mixed_r1.trainer").addHandler(caught)
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                run_training(c, resume=True)
        finally:
            logging.getLogger("mixed_r1.trainer").removeHandler(caught)
        sys.stdout.write(buf.getvalue())
        return buf.getvalue(), [m for m in caught.messages if "damaged checkpoint" in m]

    result: dict = {}
    ref, cut, dmg = out / "ref", out / "cut", out / "dmg"

    # ---------------------------------------------------------------- ref, and a rerun into it
    run_training(cfg(ref))
    rank = dist.get_rank()
    main = rank == 0
    if main:
        result["ref_metrics"] = stable_metrics(read_metrics(ref))
    before = listing(ref) if main else None
    try:
        run_training(cfg(ref))
        refused = "not refused"
    except FileExistsError as exc:
        refused = f"FileExistsError: {exc}"
    result["rerun_refused"] = gather(refused)
    if main:
        result["ref_listing_unchanged"] = listing(ref) == before

    # ---------------------------------------------------------------- SIGINT on rank 0 alone
    prepare_run_dir(cut)
    c = cfg(cut, save_every=10)
    trainer = build_trainer(c, cut)
    sample = trainer.rollout

    def rollout(step):
        if step == 2 and main:
            os.kill(os.getpid(), signal.SIGINT)
        return sample(step)

    trainer.rollout = rollout
    logger = MetricsLogger(cut, total_steps=3, tensorboard=False, progress=False) if main else None
    got = None
    try:
        trainer.train(logger)
    except TrainingInterrupted as exc:
        got = [exc.exit_code, exc.step, str(exc.checkpoint)]
    finally:
        if logger is not None:
            logger.close()
    result["interrupted"] = gather(got)
    del trainer, sample
    if main:
        result["cut_checkpoints"] = [p.name for p in list_checkpoints(cut / "checkpoints")]
        result["cut_files"] = sorted(p.name for p in (cut / "checkpoints" / STEP2).iterdir())
    stdout, _ = resume(cut, c)
    if main:
        result["cut_resume_stdout"] = stdout
        result["cut_metrics"] = stable_metrics(read_metrics(cut))
        result["cut_weights_differ"] = differing_tensors(exported_weights(cut),
                                                         exported_weights(ref))

    # ---------------------------------------------------------------- a damaged rank-1 shard
    if main:
        shutil.copytree(ref, dmg, ignore=lambda d, names: [
            n for n in names if n in ("model", "step_00000001")])
        bad = dmg / "checkpoints" / STEP3 / "model_tp01_pp000.safetensors"
        os.truncate(bad, bad.stat().st_size // 2)
    dist.barrier()
    stdout, warned = resume(dmg, cfg(dmg))
    if main:
        result["dmg_resume_stdout"] = stdout
        result["dmg_warnings"] = warned
        result["dmg_checkpoints"] = [p.name for p in list_checkpoints(dmg / "checkpoints")]
        result["dmg_aside"] = (dmg / "checkpoints" / f"{STEP3}.damaged").is_dir()
        result["dmg_metrics"] = stable_metrics(read_metrics(dmg))
        result["dmg_weights_differ"] = differing_tensors(exported_weights(dmg),
                                                         exported_weights(ref))
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    os._exit(0)
