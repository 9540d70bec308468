"""A Qwen2.5-VL policy with a real language model, assembled offline (issue 33, first part): a
Llama checkpoint with SmolLM2's tokenizer and chat template (random weights, 2 layers: the suite's
short version; README gives the same check on SmolLM2-135M itself) as the decoder, a fresh vision
tower, the vision tokens added to the tokenizer. On a text-only prompt it renders the same tokens
and computes the same logits as the Llama (float32, <= 1e-4); it loads as an ordinary Qwen2.5-VL
directory (transformers, the project's processor loader) and its generator suppresses its own
vision token ids; an LM the decoder cannot compute is refused naming the key."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def assembled(tmp_path_factory):
    from _trainer_util import assembled_vl_dir

    return assembled_vl_dir(tmp_path_factory.mktemp("vl"))  # 4 heads over 2 KV groups


@pytest.mark.slow  # the module fixture builds a Llama and assembles it (~9 s here)
def test_text_prompts_compute_what_the_language_model_computes(assembled):
    from transformers import AutoModelForCausalLM

    from mixed_r1.engine import load_pretrained_model
    from mixed_r1.models.processor import chat_prompt, load_processor

    lm_dir, vl_dir = assembled
    lm_tok = load_processor(lm_dir)
    proc = load_processor(vl_dir)
    messages = [{"role": "user", "content": "Is 21 greater than 4? Answer with yes or no."}]
    text = chat_prompt(proc, messages)
    assert text == chat_prompt(lm_tok, messages)  # SmolLM2's own system prompt and ChatML
    assert "You are a helpful AI assistant named SmolLM" in text
    ids = lm_tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, proc.tokenizer(text, add_special_tokens=False,
                                           return_tensors="pt")["input_ids"])
    lm = AutoModelForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32).eval()
    vl = load_pretrained_model(vl_dir).eval()
    assert type(vl).__name__ == "Qwen2_5_VLForConditionalGeneration"
    with torch.no_grad():
        ref = lm(input_ids=ids).logits
        got = vl(input_ids=ids).logits
    vocab = ref.shape[-1]
    assert got.shape[-1] == vocab + 5  # the five vision tokens after SmolLM2's 49,152
    assert (got[..., :vocab] - ref).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_it_loads_as_a_qwen25vl_directory_and_suppresses_its_own_vision_tokens(assembled):
    from PIL import Image

    from mixed_r1.engine import load_pretrained_model
    from mixed_r1.models.processor import encode_prompts, is_multimodal, load_processor
    from mixed_r1.rollout.hf import HFGenerator

    _, vl_dir = assembled
    cfg = json.loads((vl_dir / "config.json").read_text())
    proc = load_processor(vl_dir, max_pixels=56 * 56 * 4)
    assert is_multimodal(proc)
    tok = proc.tokenizer
    new = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>",
                                                     "<|vision_pad|>", "<|image_pad|>",
                                                     "<|video_pad|>")}
    assert sorted(new.values()) == list(range(49152, 49157))
    assert (cfg["image_token_id"], cfg["vision_start_token_id"]) == (
        new["<|image_pad|>"], new["<|vision_start|>"])
    model = load_pretrained_model(vl_dir).eval()
    gen = HFGenerator(model, proc)
    assert sorted(gen.suppress) == sorted(new.values())
    img = Image.new("RGB", (112, 112), (200, 30, 30))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    from mixed_r1.models.processor import chat_prompt

    enc = encode_prompts(proc, [chat_prompt(proc, msgs)], [img])
    assert (enc["input_ids"] == new["<|image_pad|>"]).sum().item() == 16  # 112/14/2 squared
    with torch.no_grad():
        out = model(**enc)
    assert torch.isfinite(out.logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("pp", [1, 2])
def test_megatron_conversion_at_tp2_round_trips_bit_exact(assembled, tmp_path, pp):
    """``mixed-r1 convert hf-to-mcore --tp 2`` and ``mcore-to-hf`` back reproduce every tensor of
    the assembled directory bit for bit, and its side files byte for byte. The vocabulary (49,157:
    SmolLM2's 49,152 and the vision tokens) is odd: each TP rank holds 24,579 embedding rows, the
    last one a zero pad row that the way back drops. Embeddings stay tied (no lm_head either side;
    at PP=2 the last stage carries megatron's copy of the embedding as its output layer); the
    zero q/k/v biases and the vision tower travel too."""
    from safetensors.torch import load_file

    from mixed_r1.cli import main
    from mixed_r1.models import read_manifest

    _, vl_dir = assembled
    m, back = tmp_path / "mcore", tmp_path / "hf"
    assert main(["convert", "hf-to-mcore", "--hf", str(vl_dir), "--out", str(m), "--tp", "2",
                 "--pp", str(pp)]) == 0
    assert main(["convert", "mcore-to-hf", "--mcore", str(m), "--out", str(back)]) == 0
    man = read_manifest(m)
    assert (man["vocab_size"], man["padded_vocab_size"], man["tie_embeddings"]) == (
        49157, 49158, True)
    src = load_file(str(vl_dir / "model.safetensors"))
    got = load_file(str(back / "model.safetensors"))
    embed = next(k for k in src if k.endswith("embed_tokens.weight"))
    assert src[embed].shape == (49157, 64)
    assert not any(k.endswith("lm_head.weight") for k in src)  # tied: saved once
    assert any(k.endswith("self_attn.q_proj.bias") for k in src)
    assert any(k.startswith(("visual.", "model.visual.")) for k in src)
    shards = [load_file(str(m / f"model_tp{r}_pp0.safetensors")) for r in range(2)]
    emb = [s["embedding.word_embeddings.weight"] for s in shards]
    assert [tuple(e.shape) for e in emb] == [(24579, 64)] * 2
    assert torch.equal(torch.cat(emb)[:49157], src[embed]) and not emb[1][-1].any()
    if pp == 2:
        last = [load_file(str(m / f"model_tp{r}_pp1.safetensors")) for r in range(2)]
        assert all(torch.equal(t["output_layer.weight"], e) for t, e in zip(last, emb))
    assert sorted(got) == sorted(src)
    bad = [k for k in src if src[k].dtype != got[k].dtype or not torch.equal(src[k], got[k])]
    assert not bad, bad[:5]
    side = sorted(p.name for p in vl_dir.iterdir() if not p.name.endswith(".safetensors"))
    assert side == sorted(p.name for p in back.iterdir() if not p.name.endswith(".safetensors"))
    for name in side:
        assert (vl_dir / name).read_bytes() == (back / name).read_bytes(), name


def test_an_lm_the_decoder_cannot_compute_is_refused(tmp_path):
    from mixed_r1.cli import main
    from mixed_r1.models.qwen25vl.assemble import UnsupportedLMError, assemble_qwen25vl

    d = tmp_path / "gelu"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_act": "gelu", "hidden_size": 64, "num_attention_heads": 2,
        "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 100}))
    with pytest.raises(UnsupportedLMError, match=r"config.json: hidden_act 'gelu'"):
        assemble_qwen25vl(d, tmp_path / "out")
    assert main(["convert", "lm-to-qwen25vl", "--lm", str(d), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()
