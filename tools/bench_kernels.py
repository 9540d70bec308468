#!/usr/bin/env python
"""CPU benchmark of the kernels' torch paths: peak extra memory and time vs naive torch.

Memory method: each scenario runs in a fresh subprocess with MALLOC_MMAP_THRESHOLD_=65536, so glibc
serves every allocation >= 64 KiB with its own mmap and returns it on free; resident memory then tracks
live tensors. After the inputs are built (filled in place, no temporaries) the probe resets the kernel's
high-water mark (write "5" to /proc/self/clear_refs), runs the op, and reads VmHWM from /proc/self/status:
extra = VmHWM - VmRSS(before). "excl. grad" subtracts the gradient buffers autograd must return
(d logits, d hidden, d weight), which every method pays. One thread, so the times are comparable.

    python tools/bench_kernels.py            # the tables (grpo_loss [8,512,32000] fp32; linear at B·T = 4·512
                                             # and 4·64 tokens, H = 896, V = 151,665: issue 8/9's shapes)
    python tools/bench_kernels.py --probe grpo_fused_fwdbwd --shape 8,512,32000   # one scenario, JSON
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GRPO = ["grpo_naive_fwd", "grpo_fused_fwd", "grpo_naive_fwdbwd", "grpo_fused_fwdbwd", "grpo_fused_fwdbwd_inplace"]
LINEAR = ["linear_naive_fwd", "linear_chunked_fwd", "linear_naive_fwdbwd", "linear_chunked_fwdbwd"]


def _mem() -> tuple[int, int]:
    s = open("/proc/self/status").read()
    kb = lambda k: int(re.search(rf"{k}:\s+(\d+)", s).group(1)) * 1024  # noqa: E731
    return kb("VmHWM"), kb("VmRSS")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def touch_probe() -> dict:
    """Seconds to fill 1 GiB of freshly mapped memory (page faults + zeroing by the kernel + the fill)
    and to fill it again (the fill alone): the first-touch cost naive's fresh [N, V] buffers pay, which
    varies with the host (a VM's faults cost several times a bare machine's)."""
    import torch

    torch.set_num_threads(1)
    x = torch.empty(1 << 28)  # 1 GiB of float32, not yet touched
    t0 = time.perf_counter()
    x.fill_(1.0)
    t1 = time.perf_counter()
    x.fill_(2.0)
    t2 = time.perf_counter()
    return dict(name="touch", first=t1 - t0, again=t2 - t1)


def probe(name: str, shape: tuple[int, ...]) -> dict:
    """Run one scenario in this process; return bytes and seconds."""
    import torch
    if name == "touch":
        return touch_probe()
    sys.path.insert(0, ROOT)
    from mixed_r1 import algo
    from mixed_r1.kernels import force_backend, grpo_loss, linear_token_logprobs

    torch.set_num_threads(1)

    def build(shape):
        torch.manual_seed(0)
        grad_bytes = 0
        if name.startswith("grpo"):
            B, T, V = shape
            leaf = torch.empty(B, T, V).normal_()
            tg = torch.randint(0, V, (B, T))
            adv = torch.randn(B)
            mask = torch.rand(B, T) > 0.1
            old = -torch.rand(B, T) * 10
            ref = old + 0.1 * torch.randn(B, T)
            bwd = name.endswith("fwdbwd")
            leaf.requires_grad_(bwd)
            kw = dict(beta=0.04, eps_low=0.2, eps_high=0.28, loss_type="dapo")

            def run():
                logits = leaf.view(B, T, V)  # a non-leaf view, like a model's output
                if "naive" in name:
                    logp = torch.log_softmax(logits.float(), -1).gather(-1, tg.unsqueeze(-1)).squeeze(-1)
                    loss, _ = algo.compute_policy_loss(logp, adv, mask.float(), old, ref, **kw)
                else:
                    with force_backend("torch"):
                        loss, _ = grpo_loss(logits, tg, adv, mask, old, ref, inplace="inplace" in name, **kw)
                if bwd:
                    loss.backward()
                return loss

            if bwd and "inplace" not in name:
                grad_bytes = leaf.numel() * leaf.element_size()
            ctx = torch.enable_grad() if bwd else torch.no_grad()
        else:
            N, H, V = shape
            h = torch.empty(1, N, H).normal_()
            w = torch.empty(V, H).normal_().mul_(0.05)
            tg = torch.randint(0, V, (1, N))
            bwd = name.endswith("fwdbwd")
            h.requires_grad_(bwd)
            w.requires_grad_(bwd)

            def run():
                if "naive" in name:
                    logp = torch.log_softmax(h @ w.t(), -1).gather(-1, tg.unsqueeze(-1)).squeeze(-1)
                else:
                    with force_backend("torch"):
                        logp = linear_token_logprobs(h, w, tg)
                if bwd:
                    logp.sum().backward()
                return logp

            if bwd:
                grad_bytes = (h.numel() + w.numel()) * 4
            ctx = torch.enable_grad() if bwd else torch.no_grad()
        return run, ctx, grad_bytes

    # warm-up on a small input of the same scenario: the first call of an op faults in library code
    # pages and one-time caches (8-22 MB here, varying between installs), which are not the op's memory
    small = (2, 16, shape[2]) if name.startswith("grpo") else (64, shape[1], shape[2])
    run, ctx, _ = build(small)
    with ctx:
        run()
    run, ctx, grad_bytes = build(shape)
    with ctx:
        _reset_peak()
        _, before = _mem()
        t0 = time.perf_counter()
        run()
        secs = time.perf_counter() - t0
        peak, _ = _mem()
    elems = shape[0] * shape[1] * shape[2] if name.startswith("grpo") else shape[0] * shape[2]
    return dict(name=name, shape=list(shape), extra=peak - before, grad_bytes=grad_bytes, seconds=secs,
                logits_fp32_bytes=elems * 4)


def run_probe(name: str, shape: tuple[int, ...]) -> dict:
    """``probe`` in a fresh subprocess with mmap-backed allocations (see module docstring)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1", MIXED_R1_KERNEL_BACKEND="torch")
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--probe", name,
                          "--shape", ",".join(map(str, shape))], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"probe {name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe")
    ap.add_argument("--shape")
    ap.add_argument("--grpo-shape", default="8,512,32000")
    ap.add_argument("--linear-shapes", default="2048,896,151665 256,896,151665",
                    help="space-separated N tokens,H,V")
    ap.add_argument("--repeats", type=int, default=3, help="linear_token_logprobs: fresh-process runs per scenario")
    a = ap.parse_args()
    if a.probe:
        print(json.dumps(probe(a.probe, tuple(int(v) for v in a.shape.split(",")))))
        return
    gs = tuple(int(v) for v in a.grpo_shape.split(","))
    lss = [tuple(int(v) for v in x.split(",")) for x in a.linear_shapes.split()]
    r = {n: run_probe(n, gs) for n in GRPO}
    mb = lambda b: f"{b / 2**20:,.0f}"  # noqa: E731
    print(f"CPU, torch paths, 1 thread, float32. grpo_loss [B,T,V]={list(gs)} (dapo, beta=0.04, old+ref); "
          f"linear_token_logprobs [N,H,V] in {[list(x) for x in lss]}. Extra = peak RSS over the inputs (MiB).\n")
    print("| op | mode | naive extra MiB | ours extra MiB | ratio | naive s | ours s | time ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")

    def row(op, mode, n, o, sub_grad):
        ne = n["extra"] - (n["grad_bytes"] if sub_grad else 0)
        oe = o["extra"] - (o["grad_bytes"] if sub_grad else 0)
        print(f"| {op} | {mode} | {mb(ne)} | {mb(oe)} | {oe / ne:.3f} | {n['seconds']:.2f} | {o['seconds']:.2f} "
              f"| {o['seconds'] / n['seconds']:.2f} |")

    row("grpo_loss", "forward (no grad)", r["grpo_naive_fwd"], r["grpo_fused_fwd"], False)
    row("grpo_loss", "fwd+bwd, excl. d logits", r["grpo_naive_fwdbwd"], r["grpo_fused_fwdbwd"], True)
    row("grpo_loss", "fwd+bwd total, inplace=True", r["grpo_naive_fwdbwd"], r["grpo_fused_fwdbwd_inplace"], False)
    row("grpo_loss", "fwd+bwd total, inplace=False", r["grpo_naive_fwdbwd"], r["grpo_fused_fwdbwd"], False)
    print()
    t = run_probe("touch", (0,))
    print(f"First touch of 1 GiB of fresh memory on this host now: {t['first']:.2f} s (filling it again: "
          f"{t['again']:.2f} s); naive pays it for each [N, V] buffer it allocates, the tiled op for one tile.\n")
    print("| N tokens, H | mode | materialized logits MiB | naive extra MiB | ours extra MiB | ours / logits "
          "| naive s | ours s | time ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for ls in lss:  # interleaved naive / ours, each in a fresh process; time = min over the repeats
        runs = [{n: run_probe(n, ls) for n in LINEAR} for _ in range(a.repeats)]
        r = {n: dict(runs[0][n], seconds=min(x[n]["seconds"] for x in runs)) for n in LINEAR}
        lg = r["linear_naive_fwd"]["logits_fp32_bytes"]
        for mode, n, o, sub in [("forward (no grad)", "linear_naive_fwd", "linear_chunked_fwd", False),
                                ("fwd+bwd, excl. d hidden/d weight", "linear_naive_fwdbwd", "linear_chunked_fwdbwd",
                                 True)]:
            oe = r[o]["extra"] - (r[o]["grad_bytes"] if sub else 0)
            ne = r[n]["extra"] - (r[n]["grad_bytes"] if sub else 0)
            print(f"| {ls[0]:,}, {ls[1]} | {mode} | {mb(lg)} | {mb(ne)} | {mb(oe)} | {oe / lg:.3f} "
                  f"| {r[n]['seconds']:.2f} | {r[o]['seconds']:.2f} | {r[o]['seconds'] / r[n]['seconds']:.2f} |")


if __name__ == "__main__":
    main()
