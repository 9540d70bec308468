"""HF <-> mcore conversion: bit-exact round trips, resharding, the manifest, and the error paths.

References are the HF checkpoints themselves (saved by transformers from tiny random models).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mixed_r1.models import CheckpointError, UnsupportedConfigError, hf_to_mcore, mcore_to_hf, read_manifest, reshard
from mixed_r1.models import mapping as M
from mixed_r1.models.config import arch_from_hf_config

SMALL = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, num_hidden_layers=4,
             vocab_size=101, max_position_embeddings=64)


def _randomize(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def _save(model, path: Path, dtype=None) -> Path:
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    return path


def _qwen2(tmp: Path, **kw) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return _save(_randomize(Qwen2ForCausalLM(Qwen2Config(**{**SMALL, **kw}))), tmp / "qwen2")


def _llama(tmp: Path, tie: bool, dtype=None) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    return _save(_randomize(LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=tie))),
                 tmp / f"llama_tie{int(tie)}", dtype)


def _qwen25vl(tmp: Path) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    text = dict(SMALL, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=100, video_token_id=99,
                           vision_start_token_id=98, vision_end_token_id=97)
    return _save(_randomize(Qwen2_5_VLForConditionalGeneration(cfg)), tmp / "qwen25vl")


def _all_tensors(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _assert_bit_exact(a: Path, b: Path) -> None:
    ta, tb = _all_tensors(a), _all_tensors(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, k
        assert torch.equal(ta[k].view(torch.uint8) if ta[k].dtype == torch.bfloat16 else ta[k],
                           tb[k].view(torch.uint8) if tb[k].dtype == torch.bfloat16 else tb[k]), k
    for name in ("config.json", "generation_config.json"):
        if (a / name).exists():
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


MODELS = {"qwen2": lambda t: _qwen2(t), "llama_untied": lambda t: _llama(t, False),
          "llama_tied": lambda t: _llama(t, True), "llama_tied_bf16": lambda t: _llama(t, True, torch.bfloat16),
          "qwen25vl": _qwen25vl}


@pytest.mark.parametrize("model", list(MODELS))
def test_round_trip_bit_exact(tmp_path, model):
    hf = MODELS[model](tmp_path)
    for tp in (1, 2):
        for pp in (1, 2):
            m = tmp_path / f"m{tp}{pp}"
            man = hf_to_mcore(hf, m, tp=tp, pp=pp)
            assert (man["tp"], man["pp"]) == (tp, pp)
            assert sorted(p.name for p in m.glob("model_tp*")) == sorted(
                f"model_tp{r}_pp{s}.safetensors" for r in range(tp) for s in range(pp))
            back = tmp_path / f"h{tp}{pp}"
            mcore_to_hf(m, back)
            _assert_bit_exact(hf, back)
    if model == "qwen25vl":
        assert any(n.startswith("visual.") for n in read_manifest(tmp_path / "m22")["files"]["vision.safetensors"])


def test_qkv_layout_is_megatron_per_group(tmp_path):
    """linear_qkv rows of group g = [q heads of g; k_g; v_g], and TP rank r holds whole groups."""
    hf = _qwen2(tmp_path)
    hft = load_file(hf / "model.safetensors")
    hf_to_mcore(hf, tmp_path / "m", tp=2, pp=2)
    arch = arch_from_hf_config(json.loads((hf / "config.json").read_text()))
    hd, hpg = arch.head_dim, arch.heads_per_group
    q, k, v = (hft[f"model.layers.3.self_attn.{x}_proj.weight"] for x in "qkv")
    for r in range(2):
        with safe_open(tmp_path / "m" / f"model_tp{r}_pp1.safetensors", "pt") as f:
            local = f.get_tensor("decoder.layers.1.self_attention.linear_qkv.weight")  # global layer 3
            fc1 = f.get_tensor("decoder.layers.1.mlp.linear_fc1.weight")
        g = r  # 2 groups over 2 ranks
        expect = torch.cat([q[g * hpg * hd:(g + 1) * hpg * hd], k[g * hd:(g + 1) * hd], v[g * hd:(g + 1) * hd]])
        assert torch.equal(local, expect)
        f_half = arch.ffn_hidden_size // 2
        gate, up = hft["model.layers.3.mlp.gate_proj.weight"], hft["model.layers.3.mlp.up_proj.weight"]
        assert torch.equal(fc1, torch.cat([gate[r * f_half:(r + 1) * f_half], up[r * f_half:(r + 1) * f_half]]))


def test_vocab_padding_and_tied_copy_on_last_stage(tmp_path):
    hf = _llama(tmp_path, tie=True)
    hf_to_mcore(hf, tmp_path / "m", tp=2, pp=2)
    man = read_manifest(tmp_path / "m")
    assert man["padded_vocab_size"] == 102 and man["vocab_size"] == 101
    emb = load_file(hf / "model.safetensors")["model.embed_tokens.weight"]
    last = load_file(tmp_path / "m" / "model_tp1_pp1.safetensors")["output_layer.weight"]
    assert last.shape == (51, 64) and torch.equal(last[:50], emb[51:]) and torch.equal(last[50], torch.zeros(64))


@pytest.mark.parametrize("src,dst", [((2, 2), (1, 1)), ((1, 2), (2, 1)), ((2, 1), (1, 4))])
def test_reshard_matches_direct_conversion(tmp_path, src, dst):
    hf = _qwen2(tmp_path)
    hf_to_mcore(hf, tmp_path / "a", *src)
    reshard(tmp_path / "a", tmp_path / "b", *dst)
    hf_to_mcore(hf, tmp_path / "direct", *dst)
    for f in (tmp_path / "direct").glob("model_tp*.safetensors"):
        x, y = load_file(f), load_file(tmp_path / "b" / f.name)
        assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
    mcore_to_hf(tmp_path / "b", tmp_path / "back")
    _assert_bit_exact(hf, tmp_path / "back")


# ------------------------------------------------------------------------------------- errors
def test_unsupported_config_raises_and_leaves_no_output(tmp_path):
    hf = _qwen2(tmp_path)
    with pytest.raises(UnsupportedConfigError, match="num_key_value_heads=2 is not divisible by tp=4"):
        hf_to_mcore(hf, tmp_path / "out", tp=4, pp=1)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["hidden_act"] = "gelu"
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match="hidden_act"):
        hf_to_mcore(hf, tmp_path / "out")
    cfg["hidden_act"], cfg["model_type"] = "silu", "mistral"
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match="mistral"):
        hf_to_mcore(hf, tmp_path / "out")
    assert not list(tmp_path.glob("out*"))


def _rewrite_hf(hf: Path, fn) -> None:
    from safetensors.torch import save_file
    t = load_file(hf / "model.safetensors")
    fn(t)
    save_file(t, str(hf / "model.safetensors"), metadata={"format": "pt"})


def test_missing_and_misshaped_tensor_named(tmp_path):
    hf = _qwen2(tmp_path)
    _rewrite_hf(hf, lambda t: t.pop("model.layers.2.self_attn.k_proj.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.2\.self_attn\.k_proj\.bias"):
        hf_to_mcore(hf, tmp_path / "out", tp=2)
    _rewrite_hf(hf, lambda t: t.update({"model.layers.2.self_attn.k_proj.bias": torch.zeros(31)}))
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.self_attn\.k_proj\.bias has shape \[31\]"):
        hf_to_mcore(hf, tmp_path / "out", tp=2)
    assert not list(tmp_path.glob("out*"))


def test_corrupt_shard_checksum_names_tensor(tmp_path):
    hf = _qwen2(tmp_path)
    hf_to_mcore(hf, tmp_path / "m", tp=2, pp=2)
    shard = tmp_path / "m" / "model_tp1_pp0.safetensors"
    raw = bytearray(shard.read_bytes())
    with safe_open(shard, "pt") as f:
        names = list(f.keys())
    import struct
    hlen = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + hlen])
    victim = "decoder.layers.1.mlp.linear_fc2.weight"
    assert victim in names
    start = 8 + hlen + header[victim]["data_offsets"][0]
    raw[start + 5] ^= 0x40
    shard.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"checksum mismatch for tensor decoder\.layers\.1\.mlp\.linear_fc2\.weight"):
        mcore_to_hf(tmp_path / "m", tmp_path / "back")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        reshard(tmp_path / "m", tmp_path / "r", 1, 1)
    assert not (tmp_path / "back").exists() and not (tmp_path / "r").exists()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_existing_output_refused(tmp_path):
    hf = _qwen2(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(FileExistsError):
        hf_to_mcore(hf, tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "x"


def test_cli_round_trip_and_error_exit(tmp_path, capsys):
    import argparse

    from mixed_r1.convert_cli import register

    parser = argparse.ArgumentParser(prog="mixed-r1")
    register(parser.add_subparsers(dest="cmd", required=True))
    hf = _llama(tmp_path, tie=False)

    def run(*argv):
        args = parser.parse_args(list(argv))
        return args.func(args)

    assert run("convert", "hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "m"), "--tp", "2", "--pp", "2") == 0
    assert run("convert", "reshard", "--mcore", str(tmp_path / "m"), "--out", str(tmp_path / "r"), "--tp", "1",
               "--pp", "4") == 0
    assert run("convert", "mcore-to-hf", "--mcore", str(tmp_path / "r"), "--out", str(tmp_path / "h"),
               "--max-shard-gb", "0.00005") == 0
    assert len(list((tmp_path / "h").glob("model-*-of-*.safetensors"))) > 1
    assert (tmp_path / "h" / "model.safetensors.index.json").exists()
    _assert_bit_exact(hf, tmp_path / "h")
    assert run("convert", "hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "x"), "--tp", "3") == 2
    assert "not divisible by tp=3" in capsys.readouterr().err


def test_mapping_qkv_inverse_and_kinds():
    from transformers import Qwen2Config
    arch = arch_from_hf_config(Qwen2Config(**{**SMALL, "num_attention_heads": 8}).to_dict())
    q, k, v = torch.randn(8 * 8, 64), torch.randn(2 * 8, 64), torch.randn(2 * 8, 64)
    fused = M.fuse_qkv(q, k, v, arch)
    assert all(torch.equal(a, b) for a, b in zip(M.split_qkv(fused, arch), (q, k, v)))
    for kind, t in (("col", fused), ("row", torch.randn(64, 96)), ("fc1", torch.randn(192, 64)),
                    ("vocab", torch.randn(101, 64)), ("rep", torch.randn(64))):
        for tp in (1, 2):
            assert torch.equal(M.tp_merge(M.tp_split(t, kind, tp, arch), kind, arch), t)
