"""bf16 training with fp32 master weights, on both policy backends.

The failure this guards against: AdamW stepping bf16 weights in place. At lr 1e-6 an Adam step
(≈ 1e-6 per element) is far below half a bf16 ulp of a typical weight (≈ 6e-5 at |w| = 0.02), so
almost nothing moves and training is silently flat. With fp32 masters every update lands.

What "the same update as an fp32 run" can mean under bf16 compute, measured on the tiny Qwen2.5-VL
(hidden 32, real 151,665-token vocab, one fixed GRPO batch): the fp32 main gradients of the bf16 run
differ from an fp32-weights run's by 0.6% (the noise of bf16 matmuls); Adam turns that into a 1.2–1.8%
difference of the 5-step master update, because its first steps move every element by ≈ ±lr
whatever the gradient's size, so the few elements whose gradient is near zero (tail-vocab embedding
rows) flip sign. A bf16-only optimizer is off by ~100%. The checks below hold the optimizer path
itself to fp32 exactness (same gradients → same update as a plain fp32 AdamW, 1e-6) and the whole
run to 1e-2 on the gradients and 5e-2 on the update.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _trainer_util import free_port, make_data, tiny_overrides

LR = 1e-6


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("mp_data"))


def _fixed_batch(trainer):
    ro = trainer.rollout(1)
    ro.keep = list(range(len(ro.completions)))
    ro.advantages = torch.tensor([1.0, -1.0] * (len(ro.completions) // 2))
    return trainer.micro_batches(ro, 1)[0]


@pytest.fixture
def hf(data_file, tmp_path):
    """A fresh bf16 trainer (masters equal to the bf16 weights) and one fixed batch."""
    from mixed_r1.config import load_config
    from mixed_r1.trainer import build_trainer

    run = tmp_path
    cfg = load_config(None, tiny_overrides(data_file, run) + ["model.dtype=bfloat16",
                                                                 f"optim.lr={LR}"])
    trainer = build_trainer(cfg, run)
    return trainer, _fixed_batch(trainer)


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).double().square().sum()) for x, y in zip(a, b))
    den = sum(float(y.double().square().sum()) for y in b)
    return (num / den) ** 0.5


def _fp32_twin(engine):
    """An fp32-weights HF engine on exactly the bf16 engine's (rounded) weights."""
    from mixed_r1.engine import HFEngine

    return HFEngine(copy.deepcopy(engine.model).float(), lr=LR)


def _main_grads(engine, mini, loss_cfg):
    from mixed_r1.engine.update import PolicyLoss

    engine.zero_grad()
    engine.forward_backward(mini, PolicyLoss(loss_cfg))
    engine.grad_norm()
    grads = [g.detach().clone() for g in (p.grad for p in engine.main_params())]
    engine.zero_grad()
    return grads


def test_hf_bf16_masters_are_fp32_and_separate(hf):
    trainer, _ = hf
    eng = trainer.policy
    assert all(p.dtype == torch.bfloat16 for p in eng.model.parameters())
    masters = eng.main_params()
    assert masters and all(m.dtype == torch.float32 for m in masters)
    assert all(m.data_ptr() != p.data_ptr() for m, (_, p) in zip(masters, eng._named))


def test_hf_bf16_update_equals_fp32_adamw_on_same_gradients(hf):
    """The mixed-precision optimizer path alone: fed the fp32 main gradients of a bf16 backward,
    the masters move exactly as a plain fp32 torch AdamW (foreach=False, an independent code path)
    moves fp32 copies of them, clipping included; the bf16 weights are the rounded masters."""
    from mixed_r1.engine.update import PolicyLoss

    trainer, mini = hf
    eng = trainer.policy
    ref = [m.detach().clone().requires_grad_(True) for m in eng.main_params()]
    o = trainer.cfg.optim
    ref_opt = torch.optim.AdamW(ref, lr=LR, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=0.0,
                                foreach=False)
    for _ in range(3):
        eng.zero_grad()
        eng.forward_backward(mini, PolicyLoss(trainer.loss_cfg))
        norm = eng.grad_norm()
        grads = [p.grad.detach().clone() for p in eng.main_params()]
        assert norm == pytest.approx(float(torch.cat([g.flatten() for g in grads]).norm()), rel=1e-5)
        coef = min(1.0, o.grad_clip / (norm + 1e-6))
        for r, g in zip(ref, grads):
            r.grad = g * coef
        ref_opt.step()
        eng.step(LR, coef)
        eng.zero_grad()
    assert _rel([m.detach() for m in eng.main_params()], [r.detach() for r in ref]) < 1e-6
    for (_, p), m in zip(eng._named, eng.main_params()):
        assert torch.equal(p.detach(), m.detach().to(torch.bfloat16))


def test_hf_bf16_run_tracks_fp32_run(hf):
    """5 updates at lr 1e-6 on one fixed batch: ≥ 99% of the fp32 masters change (a bf16-only AdamW
    changes almost none), and the update follows an fp32-weights run (see the module docstring)."""
    from mixed_r1.engine import run_update

    trainer, mini = hf
    bf = trainer.policy
    fp = _fp32_twin(bf)
    gb, gf = _main_grads(bf, mini, trainer.loss_cfg), _main_grads(fp, mini, trainer.loss_cfg)
    assert _rel(gb, gf) < 1e-2
    # what the old code did: torch AdamW stepping the bf16 weights in place
    naive = copy.deepcopy(bf.model)
    for p in naive.parameters():
        p.requires_grad_(True)
    naive_opt = torch.optim.AdamW([p for p in naive.parameters()], lr=LR, weight_decay=0.0)
    b0 = [p.detach().clone() for p in naive.parameters()]
    m0 = [m.detach().clone() for m in bf.main_params()]
    f0 = [m.detach().clone() for m in fp.main_params()]
    for _ in range(5):
        out = run_update(bf, mini, trainer.loss_cfg, LR, grad_clip=trainer.cfg.optim.grad_clip)
        run_update(fp, mini, trainer.loss_cfg, LR, grad_clip=trainer.cfg.optim.grad_clip)
        assert out["skipped"] == 0 and out["update/rel_change"] > 0
        naive_opt.zero_grad()
        for p, g in zip(naive.parameters(), gb):
            p.grad = g.to(torch.bfloat16)
        naive_opt.step()
    db = [m.detach() - x for m, x in zip(bf.main_params(), m0)]
    df = [m.detach() - x for m, x in zip(fp.main_params(), f0)]
    changed = sum(int((d != 0).sum()) for d in db) / sum(d.numel() for d in db)
    naive_changed = sum(int((p.detach() != x).sum()) for p, x in zip(naive.parameters(), b0)) \
        / sum(x.numel() for x in b0)
    assert changed >= 0.99, changed
    assert naive_changed < 0.2, naive_changed  # the failure mode is real at this lr
    assert _rel(db, df) < 5e-2
    dn = [(p.detach().float() - x.float()) for p, x in zip(naive.parameters(), b0)]
    assert _rel(dn, df) > 0.5  # a bf16-only update is nowhere near the fp32 run's


def test_hf_rel_change_metric(hf):
    """``update/rel_change`` = ‖θ_after − θ_before‖ / ‖θ_before‖ over the fp32 masters, against a
    float64 recomputation (the metric sums fp32 norms of 65,536-element chunks: ~1e-6 relative)."""
    from mixed_r1.engine import run_update

    trainer, mini = hf
    before = [m.detach().double().clone() for m in trainer.policy.main_params()]
    out = run_update(trainer.policy, mini, trainer.loss_cfg, 1e-3)
    after = [m.detach().double() for m in trainer.policy.main_params()]
    want = (sum(float((a - b).square().sum()) for a, b in zip(after, before))
            / sum(float(b.square().sum()) for b in before)) ** 0.5
    assert out["update/rel_change"] == pytest.approx(want, rel=1e-5)


@pytest.mark.slow  # trains, saves and resumes (integration, > 5 s here)
def test_hf_bf16_resume_is_exact(data_file, tmp_path):
    """A bf16 run checkpointed after two steps and resumed holds bit-identical masters and moments
    (the checkpoint carries the fp32 masters) and then takes bit-identical updates."""
    from mixed_r1.config import load_config
    from mixed_r1.engine import run_update
    from mixed_r1.trainer import build_trainer

    cfg = load_config(None, tiny_overrides(data_file, tmp_path, steps=2) + ["model.dtype=bfloat16"])
    a = build_trainer(cfg, tmp_path)
    for _ in range(2):
        a.step()
    a.save()
    b = build_trainer(cfg, tmp_path)
    assert b.resume() == 2
    sa, sb = a.policy.state_dict_for_checkpoint(), b.policy.state_dict_for_checkpoint()
    masters = sa["optimizer"]["main_params"]
    assert masters and all(v.dtype == torch.float32 for v in masters.values())
    for k, v in masters.items():
        assert torch.equal(v, sb["optimizer"]["main_params"][k]), k
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    mini = _fixed_batch(a)
    run_update(a.policy, mini, a.loss_cfg, 1e-3)
    run_update(b.policy, mini, b.loss_cfg, 1e-3)
    for x, y in zip(a.policy.main_params(), b.policy.main_params()):
        assert torch.equal(x, y)



@pytest.mark.multirank
@pytest.mark.slow
def test_megatron_bf16_masters_distributed_optimizer(data_file, tmp_path):
    """The same claims on the megatron-core backend (Float16 params, distributed optimizer over
    DP=2, fp32 gradient reduce-scatter): see tests/mixed_precision_checks.py."""
    script = Path(__file__).parent / "mixed_precision_checks.py"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(free_port()), str(script), str(tmp_path), str(data_file)],
        capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and (tmp_path / "result.json").is_file(), \
        proc.stdout[-3000:] + proc.stderr[-6000:]
    r = json.loads((tmp_path / "result.json").read_text())
    print("megatron bf16:", r)
    assert r["changed_frac"] >= 0.99
    assert r["bf16_changed_frac"] < 0.2
    assert r["grad_rel_diff"] < 1e-2
    assert r["update_rel_diff"] < 5e-2
    assert r["rel_change_err"] < 1e-5
    assert r["resume_exact"]
    # the distributed optimizer's state is a DP shard: one file per DP rank
    assert r["optimizer_files"] == ["optimizer_tp00_pp000_dp000.pt", "optimizer_tp00_pp000_dp001.pt"]
