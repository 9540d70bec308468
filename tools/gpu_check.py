#!/usr/bin/env python
"""GPU check of mixed_r1.kernels at real sizes: correctness against references, then a markdown table of
time, achieved bandwidth and peak extra memory vs torch eager, torch.compile and Liger-Kernel (when
importable), with the HBM floor = bytes that must move / measured device copy bandwidth.

Bytes that must move (eb = bytes per logit):
  grpo_loss fwd+bwd        2·N·V·eb  read the logits once, write d logits once (the loss coefficient of a
                                     row is known in the forward, so one fused pass can do both)
  grpo_loss fwd (no grad)  1·N·V·eb
  token_logprobs fwd+bwd   3·N·V·eb  the upstream gradient is only known in backward: read, read, write
  vocab_parallel (1 rank)  3·N·V·eb  as token_logprobs
linear_token_logprobs is compute bound: reported in TFLOP/s (8·N·H·V flops for fwd+bwd with recompute).

    python tools/gpu_check.py --no-compile        # B·T = 32,768, V = 151,665, bf16 (defaults)
    python tools/gpu_check.py --compile-only      # only the torch.compile columns beside ours
    python tools/gpu_check.py --cpu-smoke         # tiny sizes on CPU under TRITON_INTERPRET=1 (script test)

tools/gpu_check.sh runs it twice: --no-compile first (its "kernels" part), --compile-only last and
only when asked (torch.compile builds over 151k-wide reductions take minutes). The last line
starting "SUMMARY: " holds the key numbers for that script's table.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback

if "--cpu-smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from mixed_r1 import algo  # noqa: E402
from mixed_r1.kernels import (grpo_loss, linear_token_logprobs, token_logprobs,  # noqa: E402
                              vocab_parallel_token_logprobs)

try:
    from liger_kernel.transformers.grpo_loss import triton_grpo_loss as liger_grpo_loss
    LIGER = None
except Exception as exc:  # optional peer
    liger_grpo_loss = None
    LIGER = f"liger-kernel not importable ({type(exc).__name__}); its column is skipped"

FAILS: list[str] = []
CHECKS: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"[{'PASS' if ok else 'FAIL'}] {name} {detail}", flush=True)
    CHECKS.append(name)
    if not ok:
        FAILS.append(name)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(fn, dev, reps: int, warmup: int = 1) -> tuple[float, float]:
    """(median seconds, peak extra bytes over the memory allocated before the first call)."""
    for _ in range(warmup):
        fn()
    sync(dev)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() - base if dev.type == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak


def copy_bandwidth(dev, nbytes: int) -> float:
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=dev)
    y = torch.empty_like(x)
    t, _ = bench(lambda: y.copy_(x), dev, reps=10, warmup=3)
    del x, y
    return 2 * nbytes / t


def ref_rows_logp64(flat, tg, rows, temp):
    return algo.token_logprobs_ref(flat[rows].double().unsqueeze(0), tg[rows].unsqueeze(0), temp,
                                   dtype=torch.float64)[0]


def ref_logp32(flat, tg, temp, chunk=1024):
    """Independent full reference: float32 log_softmax per chunk of rows."""
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for i in range(0, flat.shape[0], chunk):
        out[i:i + chunk] = torch.log_softmax(flat[i:i + chunk].float() / temp, -1).gather(
            -1, tg[i:i + chunk, None]).squeeze(-1)
    return out


def ref_grad_rows64(flat, tg, rows, temp, dlogp):
    """d logits for ``rows`` given d loss/d logp (float64): dlogp/T * (onehot - softmax)."""
    x = flat[rows].double() / temp
    g = -torch.softmax(x, -1)
    g[torch.arange(len(rows)), tg[rows]] += 1
    return g * (dlogp[rows].double() / temp)[:, None]


def summary(a, results: dict, rows: list, floor: float) -> str:
    """The line tools/gpu_check.sh puts in its table: checks passed, grpo_loss fwd+bwd against the
    HBM floor and Liger (or, with --compile-only, ours against torch.compile), rows that errored."""
    parts = [] if a.compile_only else [f"{len(CHECKS) - len(FAILS)}/{len(CHECKS)} checks passed"]
    ours = results.get(("grpo_loss fwd+bwd", "ours (Triton)"))
    if ours:
        parts.append(f"grpo_loss fwd+bwd {ours[0] * 1e3:.2f} ms = {ours[0] / floor:.2f}× HBM floor")
        for peer, label in (("Liger triton_grpo_loss", "Liger"), ("torch.compile", "torch.compile")):
            if ("grpo_loss fwd+bwd", peer) in results:
                parts.append(f"{ours[0] / results[('grpo_loss fwd+bwd', peer)][0]:.2f}× {label}'s time")
    errors = [f"{r[0]}/{r[1]}" for r in rows if r[2].startswith(("error", "OOM"))]
    if errors:
        parts.append(f"{len(errors)} timing rows failed ({', '.join(errors[:3])})")
    return "SUMMARY: " + "; ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=151665)
    ap.add_argument("--hidden", type=int, default=3584, help="LM-head width for linear_token_logprobs")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--compile-only", action="store_true",
                    help="skip the correctness checks; time only torch.compile and ours")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU, Triton interpreted")
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args()
    if a.no_compile and a.compile_only:
        ap.error("--no-compile and --compile-only exclude each other")
    if a.cpu_smoke:
        a.batch, a.seq, a.vocab, a.hidden, a.reps = 2, 16, 5000, 32, 1
        dev = torch.device("cpu")
    else:
        from mixed_r1.parallel.platform import current_platform

        if not current_platform().on_gpu:
            print("no CUDA device: run on a GPU machine (or --cpu-smoke to test this script)")
            return 2
        dev = torch.device("cuda")
    B, T, V, H = a.batch, a.seq, a.vocab, a.hidden
    N = B * T
    dt = torch.bfloat16
    eb = 2
    temp, beta, eps_low, eps_high = 0.9, 0.04, 0.2, 0.28
    card = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (interpreter smoke test)"
    print(f"device: {card}; torch {torch.__version__}; B·T = {N:,}, V = {V:,}, H = {H}, {dt}", flush=True)
    if LIGER:
        print(f"note: {LIGER}")
    g = torch.Generator(device=dev).manual_seed(0)
    # one buffer [B, T+1, V] so Liger (which takes T+1 rows) and ours (a [:, :T] view) share it
    buf = torch.empty(B, T + 1, V, dtype=dt, device=dev)
    for b in range(B):
        buf[b].normal_(0, 2, generator=g)
    logits = buf[:, :T]
    tg = torch.randint(0, V, (B, T), device=dev, generator=g)
    adv = torch.randn(B, device=dev, generator=g)
    mask = torch.rand(B, T, device=dev, generator=g) > 0.1
    flat_view = buf.view(B * (T + 1), V)
    rows_all = (torch.arange(B, device=dev)[:, None] * (T + 1) + torch.arange(T, device=dev)).reshape(-1)
    flat = flat_view  # row r of ours is flat_view[rows_all[r]]
    tg_flat_pad = torch.zeros(B * (T + 1), dtype=torch.long, device=dev)
    tg_flat_pad[rows_all] = tg.reshape(-1)
    sample = torch.randperm(N, device=dev, generator=g)[:64]
    srows = rows_all[sample]

    # ---------------- correctness
    ref32 = torch.empty(N, device=dev)
    for i in range(0, N, 1024):
        r = rows_all[i:i + 1024]
        ref32[i:i + 1024] = torch.log_softmax(flat[r].float() / temp, -1).gather(-1, tg_flat_pad[r, None]).squeeze(-1)
    ref32 = ref32.view(B, T)
    ref64_s = ref_rows_logp64(flat, tg_flat_pad, srows, temp)
    old = ref32 + 0.2 * torch.randn(B, T, device=dev, generator=g)
    ref = ref32 + 0.1 * torch.randn(B, T, device=dev, generator=g)

    x = logits.detach().requires_grad_()  # a view of buf; its .grad is a fresh [B, T, V] bf16 tensor
    if not a.compile_only:  # the correctness checks ran in the --no-compile pass
        try:
            lp = token_logprobs(x, tg, temp)
            err = (lp.reshape(-1)[sample].double() - ref64_s).abs().max().item()
            err32 = (lp - ref32).abs().max().item()
            check("token_logprobs forward vs float64 (64 rows) / float32 (all rows)", err < 1e-3 and err32 < 1e-3,
                  f"max err {err:.2e} / {err32:.2e}")
            gout = torch.randn(B, T, device=dev, generator=g)
            (lp * gout).sum().backward()
            dl = torch.zeros(B * (T + 1), dtype=torch.float64, device=dev)
            dl[rows_all] = gout.reshape(-1).double()
            gref = ref_grad_rows64(flat, tg_flat_pad, srows, temp, dl)
            gerr = (x.grad.reshape(N, V)[sample].double() - gref).abs().max().item()
            scale = gref.abs().max().item()
            check("token_logprobs backward vs float64 (64 rows)", gerr < 1e-2 * scale,
                  f"max err {gerr:.2e} (scale {scale:.1e}, bf16 gradient)")
        except Exception:
            traceback.print_exc()
            check("token_logprobs", False)
        x.grad = None

        try:
            loss, met = grpo_loss(x, tg, adv, mask, old, ref, beta=beta, eps_low=eps_low, eps_high=eps_high,
                                  temperature=temp, loss_type="dapo")
            leaf = ref32.double().requires_grad_()
            lref, mref = algo.compute_policy_loss(leaf, adv.double(), mask.double(), old.double(), ref.double(), beta=beta,
                                                  eps_low=eps_low, eps_high=eps_high, loss_type="dapo")
            (dlogp,) = torch.autograd.grad(lref, leaf)
            loss.backward()
            lerr = abs(loss.item() - lref.item())
            check("grpo_loss value vs algo (float64 on float32 log-probs)", lerr < 1e-4 * max(1, abs(lref.item())),
                  f"|d| {lerr:.2e}")
            check("grpo_loss clip_frac vs algo", abs(met["clip_frac"].item() - mref["clip_frac"].item()) < 1e-3)
            dl = torch.zeros(B * (T + 1), dtype=torch.float64, device=dev)
            dl[rows_all] = dlogp.reshape(-1)
            gref = ref_grad_rows64(flat, tg_flat_pad, srows, temp, dl)
            gerr = (x.grad.reshape(N, V)[sample].double() - gref).abs().max().item()
            scale = gref.abs().max().item()
            check("grpo_loss backward vs float64 (64 rows)", gerr < 1e-2 * scale + 1e-7, f"max err {gerr:.2e} (scale {scale:.1e})")
        except Exception:
            traceback.print_exc()
            check("grpo_loss", False)
        x.grad = None

        try:
            import torch.distributed as dist
            if not dist.is_initialized():
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29533")
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=0, world_size=1)
            lpv = vocab_parallel_token_logprobs(x, tg, 0, temperature=temp)
            verr = (lpv - ref32).abs().max().item()
            check("vocab_parallel_token_logprobs (1 rank) vs float32 reference", verr < 1e-3, f"max err {verr:.2e}")
            del lpv
        except Exception:
            traceback.print_exc()
            check("vocab_parallel_token_logprobs", False)

        Nl = min(N, 8192)  # linear check on a slice of tokens (the reference materializes its logits)
        try:
            hid = (torch.randn(1, Nl, H, device=dev, generator=g) * 0.5).to(dt).requires_grad_()
            w = (torch.randn(V, H, device=dev, generator=g) / H ** 0.5).to(dt).requires_grad_()
            tgl = torch.randint(0, V, (1, Nl), device=dev, generator=g)
            lpl = linear_token_logprobs(hid, w, tgl, temp)
            lg = (hid.detach() @ w.detach().t())[0]  # bf16 logits, as the chunked path sees them
            r32 = ref_logp32(lg, tgl[0], temp)
            lerr = (lpl[0] - r32).abs().max().item()
            check("linear_token_logprobs forward vs materialized logits", lerr < 1e-3, f"max err {lerr:.2e}")
            lpl.sum().backward()
            h2, w2 = hid.detach().float().requires_grad_(), w.detach().float().requires_grad_()
            ok = True
            for i in range(0, Nl, 1024):  # float32 reference gradient, chunked
                lgc = h2[0, i:i + 1024] @ w2.t()
                torch.log_softmax(lgc / temp, -1).gather(-1, tgl[0, i:i + 1024, None]).sum().backward()
            rel = lambda u, v: ((u.float() - v).norm() / v.norm()).item()  # noqa: E731
            eh, ew = rel(hid.grad[0], h2.grad[0]), rel(w.grad, w2.grad)
            ok = eh < 2e-2 and ew < 2e-2
            check("linear_token_logprobs backward vs float32 (relative L2)", ok, f"d hidden {eh:.1e}, d weight {ew:.1e}")
            del lg, h2, w2, hid, w, lpl
        except Exception:
            traceback.print_exc()
            check("linear_token_logprobs", False)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # ---------------- timing
    bw = copy_bandwidth(dev, min(4 << 30, N * V * eb) if dev.type == "cuda" else 1 << 24)
    print(f"measured copy bandwidth: {bw / 1e9:,.0f} GB/s", flush=True)
    nve = N * V * eb
    rows = []

    def naive_logp(z):
        return torch.log_softmax(z.float() / temp, -1).gather(-1, tg.unsqueeze(-1)).squeeze(-1)

    def naive_grpo(z):
        lp_ = naive_logp(z)
        return algo.compute_policy_loss(lp_, adv, mask.float(), old, ref, beta=beta, eps_low=eps_low,
                                        eps_high=eps_high, loss_type="dapo")[0]

    compiled = {}
    if not a.no_compile:
        compiled = {"logp": torch.compile(naive_logp), "grpo": torch.compile(naive_grpo)}

    def fb(f):  # forward+backward of a scalar-producing f on a fresh leaf view
        def run():
            z = logits.detach().requires_grad_()
            out = f(z)
            (out if out.dim() == 0 else out.sum()).backward()
            del z
        return run

    def fwd(f):
        def run():
            with torch.no_grad():
                f(logits)
        return run

    def liger_fb():
        z = buf.detach().requires_grad_()
        lo, _ = liger_grpo_loss(z, old, ref, tg, adv, mask.to(torch.int32), temperature=temp, beta=beta,
                                eps_low=eps_low, eps_high=eps_high, inplace=False, loss_type="dapo", reduce=True)
        lo.backward()

    def liger_f():
        with torch.no_grad():
            liger_grpo_loss(buf, old, ref, tg, adv, mask.to(torch.int32), temperature=temp, beta=beta,
                            eps_low=eps_low, eps_high=eps_high, inplace=False, loss_type="dapo", reduce=True)

    ours_grpo = lambda z: grpo_loss(z, tg, adv, mask, old, ref, beta=beta, eps_low=eps_low, eps_high=eps_high,  # noqa: E731
                                    temperature=temp, loss_type="dapo")[0]
    ours_tlp = lambda z: token_logprobs(z, tg, temp)  # noqa: E731
    ours_vp = lambda z: vocab_parallel_token_logprobs(z, tg, 0, temperature=temp)  # noqa: E731
    cases = [
        ("grpo_loss fwd+bwd", 2 * nve, [("ours (Triton)", fb(ours_grpo)), ("torch eager", fb(naive_grpo)),
                                        ("torch.compile", fb(compiled["grpo"]) if compiled else None),
                                        ("Liger triton_grpo_loss", liger_fb if liger_grpo_loss else None)]),
        ("grpo_loss fwd", nve, [("ours (Triton)", fwd(ours_grpo)), ("torch eager", fwd(naive_grpo)),
                                ("torch.compile", fwd(compiled["grpo"]) if compiled else None),
                                ("Liger triton_grpo_loss", liger_f if liger_grpo_loss else None)]),
        ("token_logprobs fwd+bwd", 3 * nve, [("ours (Triton)", fb(ours_tlp)), ("torch eager", fb(naive_logp)),
                                             ("torch.compile", fb(compiled["logp"]) if compiled else None)]),
        ("vocab_parallel fwd+bwd (1 rank)", 3 * nve, [("ours (Triton)", fb(ours_vp))]),
    ]
    if a.compile_only:  # torch.compile beside ours (the ratio from one run); the rest ran before
        cases = [(op, must, [(n, f) for n, f in impls if n in ("ours (Triton)", "torch.compile")])
                 for op, must, impls in cases if any(n == "torch.compile" for n, _ in impls)]
    results = {}
    for op, must, impls in cases:
        floor = must / bw
        for name, fn in impls:
            if fn is None:
                rows.append((op, name, "skipped", "", "", ""))
                continue
            try:
                t, peak = bench(fn, dev, a.reps)
                results[(op, name)] = (t, peak)
                rows.append((op, name, f"{t * 1e3:.2f}", f"{must / t / 1e9:,.0f}", f"{t / floor:.2f}",
                             f"{peak / 2**20:,.0f}" if peak == peak else "n/a"))
            except torch.cuda.OutOfMemoryError:
                rows.append((op, name, "OOM", "", "", ""))
            except Exception as exc:
                rows.append((op, name, f"error: {type(exc).__name__}", "", "", ""))
                traceback.print_exc()
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        rows.append((op, "HBM floor", f"{floor * 1e3:.2f}", f"{bw / 1e9:,.0f}", "1.00", ""))

    # linear: compute bound
    del buf, logits, x
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    hid = (torch.randn(1, N, H, device=dev, generator=g) * 0.5).to(dt)
    w = (torch.randn(V, H, device=dev, generator=g) / H ** 0.5).to(dt)
    tgl = torch.randint(0, V, (1, N), device=dev, generator=g)
    flops = 8 * N * H * V

    def lin(f):
        def run():
            h_, w_ = hid.detach().requires_grad_(), w.detach().requires_grad_()
            f(h_, w_).sum().backward()
        return run

    naive_lin = lambda h_, w_: torch.log_softmax((h_ @ w_.t()).float() / temp, -1).gather(  # noqa: E731
        -1, tgl.unsqueeze(-1)).squeeze(-1)
    lin_rows = []
    lin_impls = [("ours (chunked)", lambda h_, w_: linear_token_logprobs(h_, w_, tgl, temp)),
                 ("torch eager", naive_lin),
                 ("torch.compile", torch.compile(naive_lin) if not a.no_compile else None)]
    for name, f in lin_impls if not a.compile_only else [lin_impls[0], lin_impls[2]]:
        if f is None:
            lin_rows.append((name, "skipped", "", ""))
            continue
        try:
            t, peak = bench(lin(f), dev, a.reps)
            lin_rows.append((name, f"{t * 1e3:.2f}", f"{flops / t / 1e12:.0f}",
                             f"{peak / 2**20:,.0f}" if peak == peak else "n/a"))
        except torch.cuda.OutOfMemoryError:
            lin_rows.append((name, "OOM", "", ""))
        except Exception as exc:
            lin_rows.append((name, f"error: {type(exc).__name__}", "", ""))
            traceback.print_exc()
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    lines = [f"Device: {card}, torch {torch.__version__}. B·T = {N:,}, V = {V:,}, bf16 logits, T = {temp}, "
             f"dapo, beta = {beta}. Median of {a.reps}. Copy bandwidth {bw / 1e9:,.0f} GB/s.", "",
             "| op | implementation | ms | GB/s (must-move bytes / time) | × floor | peak extra MiB |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += ["", f"linear_token_logprobs fwd+bwd, H = {H} ({flops / 1e12:.1f} TFLOP incl. recompute):", "",
              "| implementation | ms | TFLOP/s | peak extra MiB |", "|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(r)} |" for r in lin_rows]
    if LIGER:
        lines += ["", f"Note: {LIGER}."]
    ours = results.get(("grpo_loss fwd+bwd", "ours (Triton)"))
    if ours:
        floor = 2 * nve / bw
        lines += ["", f"grpo_loss fwd+bwd: {ours[0] / floor:.2f}× the HBM floor (target ≤ 1.3); peak extra "
                      f"{ours[1] / 2**20:,.0f} MiB vs one float32 [tokens, vocab] buffer {N * V * 4 / 2**20:,.0f} MiB"]
        if dev.type == "cuda":
            check("grpo_loss: no extra [tokens, vocab] float32 buffer", ours[1] < N * V * 4,
                  f"(peak extra {ours[1] / 2**20:,.0f} MiB)")
        lg = results.get(("grpo_loss fwd+bwd", "Liger triton_grpo_loss"))
        if lg:
            lines.append(f"grpo_loss fwd+bwd vs Liger: {ours[0] / lg[0]:.2f}× Liger's time (target < 1)")
    text = "\n".join(lines)
    print("\n" + text)
    print(summary(a, results, rows + [("linear", *r) for r in lin_rows], 2 * nve / bw))
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(a.out + ".tmp", a.out)
    if FAILS:
        print(f"\n{len(FAILS)} check(s) failed: {', '.join(FAILS)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
