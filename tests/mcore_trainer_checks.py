"""GRPO steps on the megatron-core policy backend, run under torchrun (gloo ranks, float32).

    torchrun --nproc_per_node N tests/mcore_trainer_checks.py OUT DATA BACKEND TP [resume] [dp=D] [pp=P]
        [distopt] [overlap] [sft] [partlr] [assembled=VL_DIR vl_data=FILE]

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

With ``sft`` / ``partlr``, an SFT trainer is then built in the same world for one step
(tests/sft_checks.py: ``sft`` with a frozen vision tower, ``partlr`` with the parts' own learning
rates): ``sft`` / ``part_lr`` in the result.

With ``assembled=VL_DIR`` (mcore, PP = DP = 1), a second trainer is then built in the same world on
an assembled Qwen2.5-VL directory (``model.kind=pretrained``, ``model.path=VL_DIR``, prompts from
``vl_data``) and runs one GRPO step (:func:`assembled_step`): ``assembled`` in the result, its first
update's micro-batches and gradients in ``OUT/assembled_batch.safetensors`` /
``OUT/assembled_grads.safetensors``, its streamed weights after the step in
``OUT/assembled_weights.safetensors``.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def hf_named_grads(engine) -> dict:
    """The megatron engine's accumulated gradients (DDP's fp32 ``main_grad``) as full tensors under
    the HF parameter names: each language-model unit gathered over TP and mapped back by
    :mod:`mixed_r1.models.mapping`, the replicated vision tower's as they are (PP = 1)."""
    import torch
    import torch.distributed as dist

    from mixed_r1.models import mapping as M
    from mixed_r1.parallel import state

    arch, tp = engine.arch, state.tp_size()
    params = dict(engine.module.language_model.named_parameters())
    out = {}
    for unit in M.units(arch):
        canon = {}
        for spec in M.unit_specs(arch, unit):
            g = params[M.local_name(arch, spec.name, 1)].main_grad.detach().contiguous()
            parts = [torch.empty_like(g) for _ in range(tp)]
            dist.all_gather(parts, g, group=state.tp_group())
            canon[spec.name] = M.tp_merge(parts, spec.kind, arch)
        out.update(M.canonical_to_hf(arch, unit, canon))
    for n, p in engine.module.visual.named_parameters():
        out[arch.names.vision_prefix + n] = p.main_grad.detach()
    return {k: v.float().contiguous().clone() for k, v in out.items()}


def assembled_step(vl_dir: Path, data: Path, out: Path, tp: int) -> dict:
    """One GRPO step of a trainer built on ``vl_dir`` (``model.kind=pretrained``,
    ``parallel.backend=mcore``, TP = ``tp``). Before the step's first update, the engine's
    gradient of that update's loss on its micro-batches (rows with images) is taken on its own
    and written with the micro-batches to ``OUT/assembled_batch.safetensors`` /
    ``OUT/assembled_grads.safetensors`` (the test recomputes it on the HF backend). Returns the
    step's metrics, the loss config, the micro-batch count and each micro-batch's loss."""
    import dataclasses

    import torch.distributed as dist
    from safetensors.torch import save_file

    import mixed_r1.trainer as trainer_mod
    from _trainer_util import spread_rewards, tiny_overrides
    from mixed_r1.config import load_config
    from mixed_r1.engine import PolicyLoss
    from mixed_r1.trainer import build_trainer

    cfg = load_config(None, tiny_overrides(data, out / "run_vl", steps=1) + [
        "model.kind=pretrained", f"model.path={vl_dir}", "rollout.max_prompt_length=256",
        "rollout.prompts_per_step=1", "algo.micro_batch_size=2", "algo.beta=0",
        "parallel.backend=mcore", f"parallel.tensor_parallel={tp}"])
    trainer = build_trainer(cfg, out / "run_vl")
    spread_rewards(trainer)
    real_update = trainer_mod.run_update
    seen: dict = {}

    def capturing_update(engine, micro_batches, loss_cfg, *args, **kw):
        if not seen:
            engine.zero_grad()
            res = engine.forward_backward(micro_batches, PolicyLoss(loss_cfg))
            grads = hf_named_grads(engine)
            tensors = {}
            for i, mb in enumerate(micro_batches):
                fields = {"targets": mb.targets, "mask": mb.mask, "advantages": mb.advantages,
                          "old_logprobs": mb.old_logprobs, "ref_logprobs": mb.ref_logprobs,
                          "rollout_logprobs": mb.rollout_logprobs, **{
                              f"inputs.{k}": v for k, v in mb.inputs.items()}}
                tensors.update({f"mb{i}/{k}": v.detach().cpu().contiguous()
                                for k, v in fields.items() if v is not None})
            for r in res:
                tensors[f"mb{r.index}/result.logprobs"] = r.logprobs.cpu().contiguous()
            seen.update(loss_cfg=dataclasses.asdict(loss_cfg), n=len(micro_batches),
                        optim=dataclasses.asdict(cfg.optim),
                        scale=[mb.scale for mb in micro_batches],
                        num_items=[mb.num_items for mb in micro_batches],
                        loss=[float(r.loss) for r in sorted(res, key=lambda r: r.index)])
            if dist.get_rank() == 0:
                save_file(tensors, str(out / "assembled_batch.safetensors"))
                save_file(grads, str(out / "assembled_grads.safetensors"))
        return real_update(engine, micro_batches, loss_cfg, *args, **kw)

    trainer_mod.run_update = capturing_update
    try:
        m = trainer.step()
    finally:
        trainer_mod.run_update = real_update
    weights = {k: v.detach().cpu().clone() for k, v in trainer.policy.export_hf_weights()}
    if dist.get_rank() == 0:
        save_file(weights, str(out / "assembled_weights.safetensors"))
    return {"metrics": {k: v for k, v in m.items() if not k.startswith(("time/", "perf/"))},
            **seen}


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
    if "sft" in extra:  # one SFT step with a frozen vision tower, same world (sft_checks.py)
        from sft_checks import sft_step

        trainer_mod.run_update = run_update
        result["sft"] = sft_step(overrides, out)
    if "partlr" in extra:  # one SFT step with the parts' own learning rates, same world
        from sft_checks import part_lr_step

        trainer_mod.run_update = run_update
        result["part_lr"] = part_lr_step(overrides, out, processor=trainer.processor)
    assembled = next((a[len("assembled="):] for a in extra if a.startswith("assembled=")), None)
    if assembled:  # a second trainer in the same world, on an assembled Qwen2.5-VL directory
        vl_data = next(a[len("vl_data="):] for a in extra if a.startswith("vl_data="))
        trainer_mod.run_update = run_update
        result["assembled"] = assembled_step(Path(assembled), Path(vl_data), out, tp)
    if trainer.is_main:
        save_file(weights, str(out / "weights.safetensors"))
        (out / "result.json").write_text(json.dumps(result))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    os._exit(0)
