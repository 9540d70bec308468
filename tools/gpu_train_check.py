#!/usr/bin/env python
"""The one-GPU training check: GRPO steps of the tiny Qwen2.5-VL on the megatron-core backend,
bf16 weights with fp32 master weights, HF-generate rollout and the weight sync, end to end.

    python tools/gpu_train_check.py                 # CUDA: NCCL world of one (tools/gpu_check.sh)
    python tools/gpu_train_check.py --device cpu    # the same code on CPU over gloo (the suite)

Runs ``--steps`` steps (default 2) from the tiny test config (synthetic mixed set, real images,
the real Qwen2.5 tokenizer) with ``parallel.backend=mcore`` (TP = PP = DP = 1), bf16, recompute
full, the distributed optimizer and 2 PPO epochs with beta > 0 (old/ref log-probs, KL, clipping).
Checks, each printed as PASS/FAIL:

- the process group runs on NCCL on CUDA (gloo on CPU) and the policy's weights are bf16 while
  its optimizer holds fp32 master weights;
- every step's loss, grad norm and update are finite and the update moved the fp32 masters;
- after each step the generator serves exactly the policy's weights: every tensor of the HF
  generator's model equals the policy's exported tensor of the same name, cast to the
  generator's dtype (bitwise);
- the bf16 weights the policy exports after the steps differ from the start model's (the fp32
  master → model copy happened);

then prints a markdown table of per-phase times and the peak device memory (CUDA). Exit status 1
when a check fails. At most a few minutes on one H100 (mostly start-up).
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


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"[{'PASS' if ok else 'FAIL'}] {name} {detail}".rstrip(), flush=True)
    if not ok:
        FAILS.append(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
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
        "rollout.backend=hf"])
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, out / "run")
    t_build = time.perf_counter() - t0
    policy, gen = trainer.policy, trainer.generator.inner
    backend = dist.get_backend()
    check("process group backend", backend == ("nccl" if device == "cuda" else "gloo"), backend)
    params = [p for p in policy.model.parameters()] if hasattr(policy, "model") else []
    masters = policy.main_params()
    check("bf16 weights, fp32 masters",
          bool(masters) and all(m.dtype == torch.float32 for m in masters)
          and any(p.dtype == torch.bfloat16 for p in params),
          f"{len(masters)} master tensors")
    spread_rewards(trainer)  # a random tiny policy never earns a real reward
    if device == "cuda":
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
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (gloo)"
    print(f"\n### one-GPU training check: {name}, torch {torch.__version__}\n")
    print("| step | generate+reward s | old/ref log-probs s | update s | sync s | step s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, m in enumerate(rows, 1):
        print(f"| {i} | {m['time/generate_and_reward']:.2f} | {m['time/old_ref_logprobs']:.2f} | "
              f"{m['time/update']:.2f} | {m['time/sync']:.2f} | {m['time/step']:.2f} |")
    print(f"\nbuild {t_build:.1f} s, total {time.perf_counter() - t_start:.1f} s, peak device memory "
          f"{peak:.0f} MiB; checks failed: {len(FAILS)}")
    dist.barrier()
    dist.destroy_process_group()
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
