"""bf16 with fp32 masters on the megatron-core backend, run under torchrun (gloo ranks).

    torchrun --nproc_per_node 2 tests/mixed_precision_checks.py OUT DATA

A world of 2 ranks: DP=2 with megatron-core's distributed optimizer (fp32 masters and Adam moments
sharded over DP, gradients reduce-scattered in fp32). The trainer's policy is the tiny Qwen2.5-VL in
bf16. Every step below is fed the same micro-batches (one GRPO rollout with fixed advantages), so
only the precision differs between the runs compared:

- ``grad_rel_diff``: ‖g_bf16 − g_fp32‖ / ‖g_fp32‖ of the fp32 main gradients of the first update,
  against an fp32-weights engine built on the same (bf16-rounded) weights and layout;
- ``changed_frac``: fraction of fp32 master elements changed by 5 updates at lr 1e-6;
  ``bf16_changed_frac``: the same for the bf16 compute weights (what a bf16-only optimizer keeps);
- ``update_rel_diff``: ‖Δ_bf16 − Δ_fp32‖ / ‖Δ_fp32‖ of the 5-update master change;
- ``rel_change_err``: |logged update/rel_change − ‖θ_after − θ_before‖/‖θ_before‖| / the latter,
  recomputed here in float64 from the masters of the last update;
- ``resume_exact``: a second trainer resumed from the checkpoint of the first holds bit-identical
  weights, masters and moments, and one more identical update leaves both bit-identical.

Rank 0 writes ``OUT/result.json``.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

LR = 1e-6


def main() -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from _trainer_util import tiny_overrides
    from mixed_r1.config import load_config
    from mixed_r1.engine import run_update
    from mixed_r1.engine.megatron import MegatronEngine
    from mixed_r1.engine.update import PolicyLoss
    from mixed_r1.trainer import build_trainer

    out, data = Path(sys.argv[1]), Path(sys.argv[2])
    run = out / "run"
    cfg = load_config(None, tiny_overrides(data, run, steps=1) + [
        "model.dtype=bfloat16", f"optim.lr={LR}", "parallel.backend=mcore",
        "parallel.data_parallel=2", "parallel.distributed_optimizer=true"])
    trainer = build_trainer(cfg, run)
    bf = trainer.policy
    ro = trainer.rollout(1)
    ro.keep = list(range(len(ro.completions)))
    ro.advantages = torch.tensor([1.0, -1.0] * (len(ro.completions) // 2))
    mini = trainer.micro_batches(ro, 1)[0]
    o = cfg.optim
    fp = MegatronEngine.from_hf(run / "init_model", run / "mcore_init", pad_id=trainer.pad_id,
                                params_dtype=torch.float32, lr=o.lr, betas=(o.beta1, o.beta2),
                                eps=o.eps, use_distributed_optimizer=True)
    with torch.no_grad():  # the fp32 run starts from exactly the bf16 run's weights
        own = bf.module.state_dict()
        for k, v in fp.module.state_dict().items():
            if not k.endswith("_extra_state"):
                v.copy_(own[k])
    fp.optimizer.reload_model_params()
    from megatron.core import parallel_state as ps

    dp_group = ps.get_data_parallel_group()

    def full(engine, kind: str) -> list[torch.Tensor]:
        """Whole-parameter float64 main gradients or fp32 masters, assembled from the DP shards
        (the bf16 and fp32 runs shard their buffers differently, so shards are not comparable)."""
        opts = getattr(engine.optimizer, "chained_optimizers", None) or [engine.optimizer]
        out = []
        for p in engine.module.parameters():
            buf = torch.zeros(p.numel(), dtype=torch.float64, device=engine.device)
            for o in opts:
                try:
                    r = o._get_model_param_range_map(p)["param"]
                except KeyError:  # no part of this parameter lives in this rank's shard
                    continue
                if kind == "grad":
                    src = p.main_grad.view(-1)[r.start:r.end]
                elif getattr(p, "main_param", None) is not None:  # bf16: the fp32 master shard
                    src = p.main_param.view(-1)
                else:  # fp32: the parameter is its own master
                    src = p.detach().view(-1)[r.start:r.end]
                buf[r.start:r.end] = src.double()
            dist.all_reduce(buf, group=dp_group)
            out.append(buf)
        return out

    def rel(a, b) -> float:
        return (sum(float((x - y).square().sum()) for x, y in zip(a, b))
                / sum(float(y.square().sum()) for y in b)) ** 0.5

    def main_grads(engine):
        engine.zero_grad()
        engine.forward_backward(mini, PolicyLoss(trainer.loss_cfg))  # reduce-scattered over DP
        grads = full(engine, "grad")
        engine.zero_grad()
        return grads

    result = {"grad_rel_diff": rel(main_grads(bf), main_grads(fp))}
    m0, f0 = full(bf, "master"), full(fp, "master")
    assert rel(m0, f0) == 0.0, "both runs must start from the same weights"
    w0 = [p.detach().clone() for p in bf.module.parameters()]
    for _ in range(4):
        run_update(bf, mini, trainer.loss_cfg, LR, grad_clip=o.grad_clip)
        run_update(fp, mini, trainer.loss_cfg, LR, grad_clip=o.grad_clip)
    before = full(bf, "master")
    last = run_update(bf, mini, trainer.loss_cfg, LR, grad_clip=o.grad_clip)
    run_update(fp, mini, trainer.loss_cfg, LR, grad_clip=o.grad_clip)
    m5, f5 = full(bf, "master"), full(fp, "master")
    want = rel(m5, before)  # ‖θ_after − θ_before‖ / ‖θ_before‖, float64
    result["rel_change_err"] = abs(last["update/rel_change"] - want) / want
    db = [a - b for a, b in zip(m5, m0)]
    df = [a - b for a, b in zip(f5, f0)]
    result["changed_frac"] = sum(int((d != 0).sum()) for d in db) / sum(d.numel() for d in db)
    result["update_rel_diff"] = rel(db, df)
    result["bf16_changed_frac"] = (sum(int((p.detach() != w).sum())
                                       for p, w in zip(bf.module.parameters(), w0))
                                   / sum(w.numel() for w in w0))

    # exact resume of weights, fp32 masters and moments (each DP rank its optimizer shard)
    trainer.step_count = 5
    trainer.save()
    second = build_trainer(cfg, run)
    step = second.resume()

    def tensors(obj):
        if torch.is_tensor(obj):
            return [obj]
        if isinstance(obj, dict):
            return [t for k in sorted(obj, key=str) for t in tensors(obj[k])]
        if isinstance(obj, (list, tuple)):
            return [t for v in obj for t in tensors(v)]
        return []

    def same(a, b) -> bool:
        ta = tensors(a.state_dict_for_checkpoint())
        tb = tensors(b.state_dict_for_checkpoint())
        return len(ta) == len(tb) > 0 and all(torch.equal(x, y) for x, y in zip(ta, tb))

    ok = step == 5 and same(bf, second.policy)
    run_update(bf, mini, trainer.loss_cfg, LR, grad_clip=o.grad_clip)
    run_update(second.policy, mini, trainer.loss_cfg, LR, grad_clip=o.grad_clip)
    ok = ok and same(bf, second.policy)
    flag = torch.tensor([0.0 if ok else 1.0], device=bf.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    result["resume_exact"] = bool(flag.item() == 0)
    result["optimizer_files"] = sorted(p.name for p in (run / "checkpoints").glob("step_*/optimizer_*"))
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":
    main()
