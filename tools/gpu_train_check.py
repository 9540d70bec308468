#!/usr/bin/env python
"""The one-GPU training check: GRPO steps of the tiny Qwen2.5-VL on the megatron-core backend,
bf16 weights with fp32 master weights, HF-generate rollout and the weight sync, end to end.

    python tools/gpu_train_check.py                 # CUDA: NCCL world of one (tools/gpu_check.sh)
    python tools/gpu_train_check.py --device cpu    # the same code on CPU over gloo (the suite)

Runs ``--steps`` steps (default 2) from the test config (synthetic mixed set, real images, the
real Qwen2.5 tokenizer, V = 151,665) with ``parallel.backend=mcore`` (TP = PP = DP = 1), bf16,
recompute full, the distributed optimizer and 2 PPO epochs with beta > 0 (old/ref log-probs, KL,
clipping). ``--size real`` (the default on CUDA) gives the policy Qwen2.5-VL-7B's attention and MLP
shapes (hidden 3,584, 28 query / 4 KV heads of head_dim 128, intermediate 18,944) in 2 layers and a
rollout of 4 × 8 completions of up to 128 tokens, so each micro-batch's log-probs run over a few
thousand tokens × 151,665 vocab in bf16; ``--size tiny`` (the default on CPU) is the trainer
tests' model (hidden 32, 2/1 heads), small enough for the 2-core CPU. The device is decided by
:func:`mixed_r1.parallel.platform.current_platform` (``--device cpu`` sets ``MIXED_R1_PLATFORM=cpu``
unless it is set). Checks, each printed as PASS/FAIL:

- the process group runs on NCCL on CUDA (gloo on CPU) and the policy's weights are bf16 while
  its optimizer holds fp32 master weights;
- every step's loss, grad norm and update are finite and the update moved the fp32 masters;
- after each step the generator serves exactly the policy's weights: every tensor of the HF
  generator's model equals the policy's exported tensor of the same name, cast to the
  generator's dtype (bitwise);
- the bf16 weights the policy exports after the steps differ from the start model's (the fp32
  master → model copy happened);
- the fused GRPO loss (:func:`mixed_r1.kernels.grpo_loss`, Triton on CUDA) on real shapes:
  ``[1, N, V]`` bf16 logits from the policy's own LM head (N = 4,096 tokens with ``--size real``,
  64 with ``tiny``), value and gradient against float32 log-softmax + :mod:`mixed_r1.algo` in
  float64;

then prints a markdown table of per-phase times, the peak device memory (CUDA) and a last
``SUMMARY:`` line (tools/gpu_check.sh's table). Exit status 1 when a check fails, 2 when
``--device cuda`` is asked for without a GPU. At most a few minutes on one H100 (mostly start-up).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
FAILS: list[str] = []
CHECKS: list[str] = []

#: policy and rollout sizes (config overrides after the tiny test config's)
SIZES = {
    "tiny": [],  # tests/_trainer_util.tiny_overrides: hidden 32, 2 query / 1 KV heads, 2 layers
    "real": ["model.hidden_size=3584", "model.num_heads=28", "model.num_kv_heads=4",
             "model.num_layers=2", "model.intermediate_size=18944", "model.vision_hidden=64",
             "model.max_pixels=50176", "rollout.prompts_per_step=4", "rollout.group_size=8",
             "rollout.max_new_tokens=128", "algo.micro_batch_size=8", "optim.lr=1e-4"],
}
LOSS_TOKENS = {"tiny": 64, "real": 4096}  # tokens of the fused-loss check


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"[{'PASS' if ok else 'FAIL'}] {name} {detail}".rstrip(), flush=True)
    CHECKS.append(name)
    if not ok:
        FAILS.append(name)


def fused_loss_check(weight, n_tokens: int, seed: int = 0) -> None:
    """:func:`mixed_r1.kernels.grpo_loss` on ``[1, n_tokens, V]`` bf16 logits = random hidden
    states @ the policy's LM head ``weight`` [V, H], against the same loss from float32
    log-softmax log-probs (:func:`mixed_r1.algo.compute_policy_loss` in float64): value within
    1e-4 relative, gradient within 1e-2 relative L2 (a bf16 gradient)."""
    import torch

    from mixed_r1 import algo
    from mixed_r1.kernels import grpo_loss

    dev, (V, H) = weight.device, weight.shape
    g = torch.Generator(device=dev).manual_seed(seed)
    hidden = torch.randn(n_tokens, H, device=dev, generator=g, dtype=torch.float32)
    logits = (hidden.to(weight.dtype) @ weight.detach().t()).float()
    logits = (logits * (4.0 / logits.std())).to(torch.bfloat16)[None]  # spread like a trained head
    tg = torch.randint(0, V, (1, n_tokens), device=dev, generator=g)
    adv = torch.randn(1, device=dev, generator=g)
    mask = torch.rand(1, n_tokens, device=dev, generator=g) > 0.1
    temp, kw = 0.9, dict(beta=0.04, eps_low=0.2, eps_high=0.28, loss_type="dapo")
    with torch.no_grad():
        base = torch.log_softmax(logits.float() / temp, -1).gather(-1, tg[..., None])[..., 0]
    old = base + 0.2 * torch.randn(base.shape, device=dev, generator=g)
    ref = base + 0.1 * torch.randn(base.shape, device=dev, generator=g)
    x = logits.detach().requires_grad_()
    loss, _ = grpo_loss(x, tg, adv, mask, old, ref, temperature=temp, **kw)
    loss.backward()
    x32 = logits.detach().float().requires_grad_()
    lp = torch.log_softmax(x32 / temp, -1).gather(-1, tg[..., None])[..., 0]
    lref, _ = algo.compute_policy_loss(lp.double(), adv.double(), mask.double(), old.double(),
                                       ref.double(), **kw)
    lref.backward()
    verr = abs(loss.item() - lref.item()) / max(1.0, abs(lref.item()))
    gerr = ((x.grad.float() - x32.grad).norm() / x32.grad.norm()).item()
    check("fused GRPO loss on real shapes", verr < 1e-4 and gerr < 1e-2,
          f"[1, {n_tokens:,}, {V:,}] bf16 on {dev.type}: value rel err {verr:.1e}, "
          f"grad rel L2 {gerr:.1e}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="cuda | cpu (default: what the platform detects)")
    ap.add_argument("--size", choices=tuple(SIZES), default=None,
                    help="policy and rollout sizes (default: real on CUDA, tiny on CPU)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mixed_r1.parallel.platform import ENV, current_platform

    if args.device == "cpu":
        os.environ.setdefault(ENV, "cpu")  # CPU tensors even where a GPU is visible
    plat = current_platform()
    device = args.device or plat.device_type
    if device != plat.device_type:
        print(f"gpu_train_check: --device {device}, but the platform is {plat.name} (tensors on "
              f"{plat.device_type}; {ENV}={os.environ.get(ENV, '')!r})", file=sys.stderr)
        return 2
    size = args.size or ("real" if plat.on_gpu else "tiny")
    if not plat.on_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch
    import torch.distributed as dist

    from mixed_r1.parallel.state import single_process_env

    single_process_env()

    from _trainer_util import make_data, spread_rewards, tiny_overrides
    from mixed_r1.config import load_config
    from mixed_r1.trainer import build_trainer

    t_start = time.perf_counter()
    tmp_dir = None if args.out else tempfile.TemporaryDirectory(prefix="gpu-train-check-")
    out = Path(args.out or tmp_dir.name)  # a temporary one is removed at exit
    data = make_data(out / "data")
    cfg = load_config(None, tiny_overrides(data, out / "run", steps=args.steps) + [
        f"device={device}", "parallel.backend=mcore", "parallel.distributed_optimizer=true",
        "model.dtype=bfloat16", "model.recompute=full", "algo.ppo_epochs=2", "algo.beta=0.05",
        "rollout.backend=hf"] + SIZES[size])
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, out / "run")
    t_build = time.perf_counter() - t0
    policy, gen = trainer.policy, trainer.generator.inner
    backend = dist.get_backend()
    check("process group backend", backend == plat.dist_backend, backend)
    params = [p for p in policy.model.parameters()] if hasattr(policy, "model") else []
    masters = policy.main_params()
    check("bf16 weights, fp32 masters",
          bool(masters) and all(m.dtype == torch.float32 for m in masters)
          and any(p.dtype == torch.bfloat16 for p in params),
          f"{len(masters)} master tensors")
    spread_rewards(trainer)  # a random tiny policy never earns a real reward
    if plat.on_gpu:
        torch.cuda.reset_peak_memory_stats()
    rows = []
    first_export = {k: v.detach().to("cpu").clone() for k, v in policy.export_hf_weights()}
    for _ in range(args.steps):
        before = [m.detach().clone() for m in masters]
        m = trainer.step()
        moved = any(not torch.equal(a, b) for a, b in zip(before, masters))
        finite = all(torch.isfinite(torch.tensor(m[k])) for k in ("loss", "grad_norm"))
        check(f"step {trainer.step_count}: finite, masters moved", finite and moved,
              f"loss {m['loss']:.4f}, grad norm {m['grad_norm']:.3f}, "
              f"rel change {m['update/rel_change']:.2e}")
        exported = {k: v.detach().to("cpu") for k, v in policy.export_hf_weights()}
        served = {k: v.detach().to("cpu") for k, v in gen.model.state_dict().items()}
        missing = sorted(set(exported) - set(served))
        # the generator holds the policy's tensors in its own dtype (norms may be fp32 in the
        # policy and bf16 in the generator): equal after that one cast
        diff = [k for k in exported if k in served
                and not torch.equal(exported[k].to(served[k].dtype), served[k])]
        check(f"step {trainer.step_count}: generator serves the policy's weights",
              not missing and not diff and len(exported) > 0,
              f"{len(exported)} tensors" + (f"; differ: {diff[:3]}" if diff else "")
              + (f"; missing: {missing[:3]}" if missing else ""))
        rows.append(m)
    check("the bf16 weights moved with the masters",
          any(not torch.equal(a, exported[k]) for k, a in first_export.items() if k in exported),
          "exported tensors differ from the start model's")
    head = next((v for k, v in exported.items() if k.endswith("lm_head.weight")),
                next((v for k, v in exported.items() if k.endswith("embed_tokens.weight")), None))
    if head is None:
        check("fused GRPO loss on real shapes", False, "no LM head among the exported tensors")
    else:
        try:
            fused_loss_check(head.to(plat.device()), LOSS_TOKENS[size])
        except Exception as exc:  # noqa: BLE001 -- a failed check; the table still prints
            check("fused GRPO loss on real shapes", False, f"{type(exc).__name__}: {exc}")
    peak = torch.cuda.max_memory_allocated() / 2**20 if plat.on_gpu else float("nan")
    name = torch.cuda.get_device_name(0) if plat.on_gpu else f"CPU ({backend})"
    c = cfg.model
    shape = (f"{size}: hidden {c.hidden_size}, {c.num_heads} query / {c.num_kv_heads} KV heads "
             f"(head_dim {c.hidden_size // c.num_heads}), {c.num_layers} layers")
    print(f"\n### one-GPU training check: {name}, torch {torch.__version__}; {shape}\n")
    print("| step | generate+reward s | old/ref log-probs s | update s | sync s | step s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, m in enumerate(rows, 1):
        print(f"| {i} | {m['time/generate_and_reward']:.2f} | {m['time/old_ref_logprobs']:.2f} | "
              f"{m['time/update']:.2f} | {m['time/sync']:.2f} | {m['time/step']:.2f} |")
    print(f"\nbuild {t_build:.1f} s, total {time.perf_counter() - t_start:.1f} s, peak device "
          f"memory {peak:.0f} MiB; checks failed: {len(FAILS)}")
    last = rows[-1] if rows else {}
    perf = (f"; last step {last['time/step']:.1f} s, {last.get('perf/gen_tokens', 0):,.0f} "
            f"tokens generated, update {last.get('perf/train_tokens_per_s', 0):,.0f} tokens/s"
            ) if last else ""
    mem = f"; peak {peak:,.0f} MiB" if plat.on_gpu else ""
    print(f"SUMMARY: {len(CHECKS) - len(FAILS)}/{len(CHECKS)} checks passed; {shape}{perf}{mem}")
    dist.barrier()
    dist.destroy_process_group()
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
