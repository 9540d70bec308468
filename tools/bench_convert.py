#!/usr/bin/env python
"""Conversion benchmark: throughput (MB/s) and peak RSS of `mixed-r1 convert` on SmolLM2-135M (float32).

Each measured step runs in its own child process and reports its VmHWM (peak resident set; unlike
``ru_maxrss`` it is not inherited from the parent across fork+exec), so each number is that step's alone. Baselines in
the same run: a child that only imports the converter (fixed RSS cost), and a plain
``safetensors.load_file`` + ``save_file`` copy of the same checkpoint (what "hold the whole model" costs).

    .venv/bin/python tools/bench_convert.py [--tp 1] [--pp 2] [--dtype float32]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time, resource
step, a, b, tp, pp = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
import torch
from mixed_r1.models import hf_to_mcore, mcore_to_hf, reshard
from safetensors.torch import load_file, save_file
t0 = time.perf_counter()
if step == "import":
    pass
elif step == "copy":
    save_file(load_file(a + "/model.safetensors"), b)
elif step == "hf-to-mcore":
    hf_to_mcore(a, b, tp=tp, pp=pp)
elif step == "mcore-to-hf":
    mcore_to_hf(a, b)
elif step == "reshard":
    reshard(a, b, tp=tp, pp=pp)
dt = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"seconds": dt, "maxrss_mb": int(hwm) / 1024}))
"""


def _child(step: str, a: str, b: str, tp: int, pp: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, step, a, b, str(tp), str(pp)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()
    import torch

    from mixed_r1.models.gguf import SMOLLM2, gguf_to_hf

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf = gguf_to_hf(SMOLLM2, tmp / "hf", dtype=args.dtype)
        size_mb = sum(f.stat().st_size for f in hf.glob("*.safetensors")) / 2 ** 20
        rows = [("import only (baseline)", _child("import", "", "", 1, 1), None),
                ("load_file+save_file copy (baseline)", _child("copy", str(hf), str(tmp / "copy.st"), 1, 1), size_mb),
                (f"hf-to-mcore tp={args.tp} pp={args.pp}",
                 _child("hf-to-mcore", str(hf), str(tmp / "m"), args.tp, args.pp), size_mb),
                ("mcore-to-hf", _child("mcore-to-hf", str(tmp / "m"), str(tmp / "back"), 1, 1), size_mb),
                (f"reshard -> tp=1 pp={1 if args.pp > 1 else 2}",
                 _child("reshard", str(tmp / "m"), str(tmp / "r"), 1, 1 if args.pp > 1 else 2), size_mb)]
    base_rss = rows[0][1]["maxrss_mb"]
    copy_s = rows[1][1]["seconds"]
    print(f"SmolLM2-135M {args.dtype}: {size_mb:.0f} MB of weights; CPU, {torch.get_num_threads()} threads")
    print(f"{'step':40s} {'s':>7s} {'MB/s':>8s} {'x copy time':>11s} {'peak RSS MB':>12s} {'RSS - import':>12s}")
    for name, r, mb in rows:
        mbs = f"{mb / r['seconds']:8.0f}" if mb else f"{'-':>8s}"
        ratio = f"{r['seconds'] / copy_s:11.2f}" if mb else f"{'-':>11s}"
        print(f"{name:40s} {r['seconds']:7.2f} {mbs} {ratio} {r['maxrss_mb']:12.0f} {r['maxrss_mb'] - base_rss:12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
