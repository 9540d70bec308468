"""GRPO steps on the megatron-core policy backend, run under torchrun (gloo ranks, float32).

    torchrun --nproc_per_node N tests/mcore_trainer_checks.py OUT DATA BACKEND TP [resume] [dp=D] [pp=P]
        [distopt] [overlap]

The platform is the environment's (``MIXED_R1_PLATFORM=cuda-shaped``: the CUDA decisions on CPU
tensors, see :mod:`mixed_r1.parallel.platform`); ``result.json`` records its name.

Builds the trainer from the tiny test config (tiny Qwen2.5-VL, HF generator on rank 0) with
``parallel.backend=BACKEND`` (``mcore`` or ``hf``), ``parallel.tensor_parallel=TP`` and
``parallel.data_parallel=D``, ``parallel.pipeline_parallel=P`` (default 1; N = TP·PP·DP) and, with
``distopt``, megatron-core's distributed optimizer (``overlap``: with ``overlap_grad_reduce``),
runs two
GRPO steps (2 PPO epochs, beta > 0: old/ref log-probs, KL, clipping all exercised), then streams the
weights out (``export_hf_weights``) and saves a checkpoint. Rank 0 writes ``OUT/result.json``
(metrics, rewards and sampled tokens of every step; the total reward is replaced by a
deterministic hash of the completion text so that advantages are non-zero; ``update_logprob_diff``:
max |ratio - 1| over the tokens of the step's first update, whose weights are the ones the old
log-probs came from — so it checks that the training forward of every DP replica reproduces the
forward-only log-probs) and ``OUT/weights.safetensors`` (the streamed HF tensors). With ``resume``
(mcore only), a second trainer is built on the same run dir, resumes from the checkpoint, and its
streamed weights and optimizer state (fp32 masters and moments) must equal the first trainer's:
``resume_exact`` in the result.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    from safetensors.torch import save_file

    import mixed_r1.trainer as trainer_mod
    from _trainer_util import spread_rewards, tiny_overrides
    from mixed_r1.config import load_config
    from mixed_r1.trainer import build_trainer

    out, data, backend, tp = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    extra = sys.argv[5:]
    with_resume = "resume" in extra
    dp = next((int(a[3:]) for a in extra if a.startswith("dp=")), 1)
    pp = next((int(a[3:]) for a in extra if a.startswith("pp=")), 1)
    run = out / "run"
    overrides = tiny_overrides(data, run, steps=2) + [
        "model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=4",
        "model.num_kv_heads=2", "algo.ppo_epochs=2", "algo.beta=0.05",
        f"parallel.backend={backend}", f"parallel.tensor_parallel={tp}",
        f"parallel.data_parallel={dp}", f"parallel.pipeline_parallel={pp}",
        f"parallel.distributed_optimizer={'distopt' in extra}",
        f"parallel.overlap_grad_reduce={'overlap' in extra}"]
    cfg = load_config(None, overrides)
    trainer = build_trainer(cfg, run)
    spread_rewards(trainer)  # non-zero advantages from a random tiny policy
    rows, rollouts = [], []
    sample = trainer.rollout

    def recording_rollout(step):  # keep each step's rewards and sampled token ids
        ro = sample(step)
        rollouts.append({"rewards": [float(r) for r in ro.rewards.total],
                         "tokens": [list(c.token_ids) for c in ro.completions]})
        return ro

    trainer.rollout = recording_rollout
    generated = [0]  # prompts this rank's generator sampled (one HF generator per replica)
    inner = getattr(trainer.generator, "inner", None)
    if inner is not None:
        inner_generate = inner.generate

        def counting_generate(prompts, n, params):
            generated[0] += len(prompts)
            return inner_generate(prompts, n, params)

        inner.generate = counting_generate
    update_lp_diff: list[float] = []
    run_update = trainer_mod.run_update

    def recording_run_update(engine, micro_batches, *args, **kw):  # the step's first update
        out = run_update(engine, micro_batches, *args, **kw)
        if len(update_lp_diff) < len(rollouts):  # pre-update weights: the ratio is exactly 1
            update_lp_diff.append(max(out["ratio_max"] - 1.0, 1.0 - out["ratio_min"]))
        return out

    trainer_mod.run_update = recording_run_update
    for _ in range(2):
        m = trainer.step()
        rows.append({k: v for k, v in m.items() if not k.startswith(("time/", "perf/"))}
                    | rollouts[-1] | {"update_logprob_diff": update_lp_diff[-1]})
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in trainer.policy.export_hf_weights()}
    from mixed_r1.parallel.platform import current_platform

    result = {"metrics": rows, "n_weights": len(weights), "platform": current_platform().name}
    import torch.distributed as dist

    if dist.is_initialized():
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, generated[0])
        result["generated_per_rank"] = per_rank
    if backend == "mcore":
        ck = trainer.save()
        result["ckpt_files"] = sorted(p.name for p in ck.iterdir()) if trainer.is_main else []
        if with_resume:
            import torch.distributed as dist

            second = build_trainer(cfg, run)
            step = second.resume()
            again = {k: v.detach().cpu().clone() for k, v in second.policy.export_hf_weights()}
            def tensors(obj):  # every tensor of a nested optimizer state, in order
                if torch.is_tensor(obj):
                    return [obj]
                if isinstance(obj, dict):
                    return [t for k in sorted(obj, key=str) for t in tensors(obj[k])]
                if isinstance(obj, (list, tuple)):
                    return [t for v in obj for t in tensors(v)]
                return []

            opt_a = tensors(trainer.policy.state_dict_for_checkpoint()["optimizer"])
            opt_b = tensors(second.policy.state_dict_for_checkpoint()["optimizer"])
            ok = step == 2 and sorted(again) == sorted(weights) and all(
                torch.equal(again[k], weights[k]) for k in weights) and len(opt_a) == len(opt_b) \
                and len(opt_a) > 0 and all(torch.equal(a, b) for a, b in zip(opt_a, opt_b))
            flag = torch.tensor([0.0 if ok else 1.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            result["resume_exact"] = bool(flag.item() == 0)
    if trainer.is_main:
        save_file(weights, str(out / "weights.safetensors"))
        (out / "result.json").write_text(json.dumps(result))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    os._exit(0)
