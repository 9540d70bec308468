"""`mixed-r1 plan`'s memory model against the measured peak of one real GRPO update on CPU.

    python tools/check_plan.py [--cases NAME,...] [--json OUT]

Each case builds a tiny policy with the project's own engine (megatron-core over a gloo world of
one, or the HF engine on the tiny Qwen2.5-VL with a real image per row), makes one micro-batch of
``B`` full rows of ``P`` prompt + ``T`` completion tokens, runs one ``run_update`` (forward,
backward, fp32 master/Adam update, the update-ratio snapshot) to reach the steady state (Adam's
moments exist), then a second one under ``torch.profiler`` with memory profiling. Measured peak =
the bytes of every live tensor storage before the second update (weights, DDP gradient buffers,
fp32 masters, Adam's moments) + the largest running sum of the allocations and frees the profiler's
memory timeline records during it (:func:`_peak_during`).
Estimate = :func:`mixed_r1.plan.update_peak_bytes` of :func:`mixed_r1.plan.static_memory` and
:func:`mixed_r1.plan.lm_activation_memory` for the same shapes, the numbers ``mixed-r1 plan``
adds up (its CUDA-context line is left out: CPU has none).

Prints one row per case: estimate, measured, estimate / measured. ``tests/test_plan.py`` runs a
few cases and requires the ratio within [0.75, 1.25]. The ``-long`` cases (rows of 1,024 tokens)
are dominated by megatron's local attention scores, so they check
:func:`mixed_r1.plan.local_attention_memory` (its resident buffer, the saved probabilities, the
backward's copies).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20

# name: (backend, dtype, recompute, B, P, T)
CASES = {
    "mcore-fp32-none": ("mcore", "float32", "none", 4, 224, 32),
    "mcore-bf16-none": ("mcore", "bfloat16", "none", 4, 224, 32),
    "mcore-bf16-selective": ("mcore", "bfloat16", "selective", 4, 224, 32),
    "mcore-bf16-full": ("mcore", "bfloat16", "full", 4, 224, 32),
    # long rows: megatron's local attention scores [B·heads, s, s] dominate the peak
    "mcore-bf16-none-long": ("mcore", "bfloat16", "none", 2, 992, 32),
    "mcore-bf16-selective-long": ("mcore", "bfloat16", "selective", 2, 992, 32),
    "mcore-bf16-full-long": ("mcore", "bfloat16", "full", 2, 992, 32),
    "hf-vl-fp32-none": ("hf", "float32", "none", 4, 0, 32),
    "hf-vl-bf16-full": ("hf", "bfloat16", "full", 4, 0, 32),
}
#: the tiny text LM of the megatron cases (Qwen2 shapes, tied embeddings)
TEXT_LM = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=8,
               num_key_value_heads=2, vocab_size=4096, max_position_embeddings=1024)


def _live_bytes() -> int:
    import torch

    gc.collect()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, ReferenceError):
            continue
    return sum(seen.values())


def _peak_during(fn) -> tuple[int, object]:
    """The largest net growth of allocated CPU bytes while ``fn`` runs, and its result.

    Counted allocation by allocation from the profiler's memory timeline
    (``torch.profiler``'s ``_memory_profile().timeline``: every storage's create and destroy in
    time order). The per-op ``self_cpu_memory_usage`` sum is not enough: an autograd node's own
    frees are charged at the node's start, before its children's allocations, which hides
    transients such as the three ``[b·heads, s, s]`` gradients of megatron's local attention
    backward."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        out = fn()
    cur = peak = 0
    for _, action, _, size in sorted(prof._memory_profile().timeline, key=lambda x: x[0]):
        if action == Action.CREATE:
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    return peak, out


def _release_megatron_buffers() -> None:
    """Empty megatron-core's global memory buffer (the local attention's ``[b·heads, s, s]``
    baddbmm input, kept for the life of the process) so that one case's buffer is not in the
    next case's live bytes; megatron re-allocates it at the next forward."""
    ps = sys.modules.get("megatron.core.parallel_state")
    buf = getattr(ps, "_GLOBAL_MEMORY_BUFFER", None) if ps is not None else None
    if buf is not None:
        buf.buffer.clear()
    gc.collect()


def _init_world() -> None:
    from mixed_r1.parallel import ParallelDims, init_parallel
    from mixed_r1.parallel.state import single_process_env

    single_process_env()

    init_parallel(ParallelDims.from_world(tp=1, pp=1), seed=0)


def _text_batch(B: int, P: int, T: int, vocab: int):
    import torch

    from mixed_r1.engine import PolicyBatch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (B, P + T), generator=g)
    mb = PolicyBatch(inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                     targets=ids[:, P:].clone(), mask=torch.ones(B, T),
                     advantages=torch.randn(B, generator=g))
    mb.num_items = float(B * T)
    return mb


def _vl_batch(processor, B: int, T: int, max_pixels: int):
    import easy_vqa
    import torch
    from PIL import Image

    from mixed_r1.data.prompts import encode_rows
    from mixed_r1.engine import PolicyBatch

    paths = easy_vqa.get_train_image_paths()
    images = [[Image.open(paths[i]).convert("RGB")] for i in range(B)]
    text = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What shape is in the "
            "image? Answer in one word.<|im_end|>\n<|im_start|>assistant\n")
    g = torch.Generator().manual_seed(0)
    comps = [torch.randint(1, 1000, (T,), generator=g).tolist() for _ in range(B)]
    inputs, targets, mask = encode_rows(processor, [text] * B, images, comps, 151643)
    mb = PolicyBatch(inputs=inputs, targets=targets, mask=mask,
                     advantages=torch.randn(B, generator=g))
    mb.num_items = float(mask.sum())
    return mb


def run_case(name: str) -> dict:
    """Estimate and measured peak (bytes) of one case (see the module docstring)."""
    import torch

    from mixed_r1.engine import LossConfig, run_update
    from mixed_r1.plan import lm_activation_memory, static_memory, update_peak_bytes

    backend, dtype_name, recompute, B, P, T = CASES[name]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    tmp_dir = tempfile.TemporaryDirectory(prefix="check-plan-")  # removed when collected or at exit
    tmp = Path(tmp_dir.name)
    if backend == "mcore":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        from mixed_r1.engine.megatron import MegatronEngine

        _init_world()
        hf_cfg = Qwen2Config(tie_word_embeddings=True, **TEXT_LM)
        Qwen2ForCausalLM(hf_cfg).save_pretrained(tmp / "hf")
        engine = MegatronEngine.from_hf(tmp / "hf", tmp / "mcore", params_dtype=dtype,
                                        recompute=recompute, lr=1e-4)
        mb = _text_batch(B, P, T, TEXT_LM["vocab_size"])
        seq, impl, images, max_pixels = P + T, "mcore-local", 0, 0
        hf = hf_cfg.to_dict()
    else:
        from mixed_r1.engine.hf import HFEngine
        from mixed_r1.models.qwen25vl import build_qwen25vl_processor, build_tiny_qwen25vl

        max_pixels = 12544 * 4
        model = build_tiny_qwen25vl(seed=0).to(dtype).train()
        if recompute == "full":
            model.gradient_checkpointing_enable()
        engine = HFEngine(model, lr=1e-4)
        processor = build_qwen25vl_processor(min_pixels=max_pixels, max_pixels=max_pixels)
        mb = _vl_batch(processor, B, T, max_pixels)
        seq, impl, images = mb.inputs["input_ids"].shape[1], "hf", 1
        hf = model.config.to_dict()
    loss = LossConfig(loss_type="dapo", max_completion_length=T)
    run_update(engine, [mb], loss, 1e-4)  # steady state: Adam's moments exist from here on
    base = _live_bytes()
    peak, _ = _peak_during(lambda: run_update(engine, [mb], loss, 1e-4))
    measured = base + peak
    st, = static_memory(hf, tp=1, pp=1, dp=1, dtype=dtype_name)
    act = lm_activation_memory(hf, seq=seq, micro_batch=B, dtype=dtype_name, recompute=recompute,
                               impl=impl, device="cpu", images_per_row=images,
                               max_pixels=max_pixels, scored_tokens=T)
    estimate = update_peak_bytes(st, act)
    tmp_dir.cleanup()
    del engine, mb
    _release_megatron_buffers()
    return {"case": name, "seq": seq, "rows": B, "estimate": estimate, "measured": measured,
            "static": st.total, "activations": act.total, "ratio": estimate / measured}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = [run_case(c) for c in args.cases.split(",")]
    print(f"{'case':<24}{'rows x seq':>12}{'estimate MiB':>14}{'measured MiB':>14}{'est/meas':>10}")
    for r in rows:
        print(f"{r['case']:<24}{str(r['rows']) + ' x ' + str(r['seq']):>12}"
              f"{r['estimate'] / MIB:>14.1f}{r['measured'] / MIB:>14.1f}{r['ratio']:>10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
