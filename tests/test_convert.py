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


def _llama(tmp: Path, tie: bool, dtype=None, layers: int = 4) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**{**SMALL, "num_hidden_layers": layers}, tie_word_embeddings=tie)
    return _save(_randomize(LlamaForCausalLM(cfg)), tmp / f"llama_tie{int(tie)}", dtype)


def _qwen25vl(tmp: Path, layers: int = 4) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = dict(SMALL, num_hidden_layers=layers, rope_parameters=rope)
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


MODELS = {"qwen2": lambda t, n: _qwen2(t, num_hidden_layers=n),
          "llama_untied": lambda t, n: _llama(t, False, layers=n),
          "llama_tied": lambda t, n: _llama(t, True, layers=n),
          "llama_tied_bf16": lambda t, n: _llama(t, True, torch.bfloat16, layers=n),
          "qwen25vl": lambda t, n: _qwen25vl(t, layers=n)}

# (num_hidden_layers, [(tp, pp, pipeline_layers), ...]): the even splits of 4 layers, and 3 layers
# on 2 stages split unevenly both ways (megatron's num_layers_in_first/last_pipeline_stage).
SPLITS = {"even4": (4, [(tp, pp, None) for tp in (1, 2) for pp in (1, 2)]),
          "uneven3": (3, [(tp, 2, pl) for tp in (1, 2) for pl in ((2, 1), (1, 2))])}


def _stage_layers_in_shards(m: Path, pp: int) -> list[list[int]]:
    """For every stage, the sorted stage-local layer indices its tp0 shard file holds."""
    out = []
    for s in range(pp):
        with safe_open(m / f"model_tp0_pp{s}.safetensors", "pt") as f:
            out.append(sorted({int(k.split(".")[2]) for k in f.keys()
                               if k.startswith("decoder.layers.")}))
    return out


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("model", list(MODELS))
def test_round_trip_bit_exact(tmp_path, model, split):
    n_layers, configs = SPLITS[split]
    hf = MODELS[model](tmp_path, n_layers)
    hft = _all_tensors(hf)
    lp = "model.language_model.layers" if model == "qwen25vl" else "model.layers"
    if not any(k.startswith(lp) for k in hft):
        lp = "model.layers"  # the legacy Qwen2.5-VL spelling
    for tp, pp, pl in configs:
        tag = f"{tp}{pp}" + ("" if pl is None else "_" + "-".join(map(str, pl)))
        m = tmp_path / f"m{tag}"
        man = hf_to_mcore(hf, m, tp=tp, pp=pp, pipeline_layers=pl)
        want = list(pl) if pl is not None else [n_layers // pp] * pp
        assert (man["tp"], man["pp"], man["pipeline_layers"]) == (tp, pp, want)
        bounds = [sum(want[:s]) for s in range(pp + 1)]
        assert man["layer_ranges"] == [[bounds[s], bounds[s + 1]] for s in range(pp)]
        assert read_manifest(m)["pipeline_layers"] == want
        assert sorted(p.name for p in m.glob("model_tp*")) == sorted(
            f"model_tp{r}_pp{s}.safetensors" for r in range(tp) for s in range(pp))
        # stage s holds want[s] layers, named decoder.layers.0.. and equal to HF layers bounds[s]..
        assert _stage_layers_in_shards(m, pp) == [list(range(n)) for n in want]
        for s in range(pp):
            for local in range(want[s]):
                with safe_open(m / f"model_tp0_pp{s}.safetensors", "pt") as f:
                    got = f.get_tensor(f"decoder.layers.{local}.input_layernorm.weight")
                want_t = hft[f"{lp}.{bounds[s] + local}.input_layernorm.weight"]
                assert torch.equal(got, want_t), (s, local)
        back = tmp_path / f"h{tag}"
        mcore_to_hf(m, back)
        _assert_bit_exact(hf, back)
    if model == "qwen25vl" and split == "even4":
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


@pytest.mark.parametrize("src,dst", [((2, 2), (1, 1)), ((1, 2), (2, 1)), ((2, 1), (1, 4)),
                                     ((2, 2), (1, 2, (3, 1))), ((1, 2, (1, 3)), (2, 2)),
                                     ((2, 1), (1, 3, (1, 2, 1))),
                                     ((1, 3, (2, 1, 1)), (2, 2, (1, 3)))])
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


def test_reshard_even_to_uneven_and_back_is_bit_exact(tmp_path):
    """tp2/pp2 even -> tp1/pp2 (3, 1) -> tp2/pp2 even gives back the original shards exactly."""
    hf = _llama(tmp_path, tie=True)
    hf_to_mcore(hf, tmp_path / "a", tp=2, pp=2)
    man_b = reshard(tmp_path / "a", tmp_path / "b", tp=1, pp=2, pipeline_layers=[3, 1])
    assert man_b["pipeline_layers"] == [3, 1] and man_b["layer_ranges"] == [[0, 3], [3, 4]]
    assert _stage_layers_in_shards(tmp_path / "b", 2) == [[0, 1, 2], [0]]
    man_c = reshard(tmp_path / "b", tmp_path / "c", tp=2, pp=2)
    assert man_c["pipeline_layers"] == [2, 2]
    for f in (tmp_path / "a").glob("model_tp*.safetensors"):
        x, y = load_file(f), load_file(tmp_path / "c" / f.name)
        assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x), f.name
    assert read_manifest(tmp_path / "a")["files"] == read_manifest(tmp_path / "c")["files"]


def test_manifest_without_pipeline_layers_means_even(tmp_path):
    """Manifests written before uneven splits lack ``pipeline_layers``: they mean the even split."""
    from mixed_r1.models import manifest_pipeline_layers

    hf = _qwen2(tmp_path)
    hf_to_mcore(hf, tmp_path / "m", tp=1, pp=2)
    path = tmp_path / "m" / "manifest.json"
    man = json.loads(path.read_text())
    del man["pipeline_layers"]
    path.write_text(json.dumps(man))
    assert manifest_pipeline_layers(read_manifest(tmp_path / "m")) == (2, 2)
    mcore_to_hf(tmp_path / "m", tmp_path / "back")
    _assert_bit_exact(hf, tmp_path / "back")
    man["pipeline_layers"] = [1, 2]  # does not sum to the model's 4 layers
    path.write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match=r"pipeline_layers=\[1, 2\]\) is not usable.*sums to"):
        mcore_to_hf(tmp_path / "m", tmp_path / "back2")


# ------------------------------------------------------------------------- pipeline split helper
def test_resolve_pipeline_layers_even_and_uneven():
    from mixed_r1.models.config import (megatron_pipeline_kwargs, resolve_pipeline_layers,
                                        stage_of_layer)

    assert resolve_pipeline_layers(4, 2) == (2, 2)
    assert resolve_pipeline_layers(4, 1) == (4,)
    assert resolve_pipeline_layers(3, 2, [2, 1]) == (2, 1)
    assert resolve_pipeline_layers(28, 3, (10, 9, 9)) == (10, 9, 9)
    assert resolve_pipeline_layers(30, 4, [6, 8, 8, 8]) == (6, 8, 8, 8)
    assert resolve_pipeline_layers(4, 2, [2, 2]) == (2, 2)
    assert megatron_pipeline_kwargs((2, 2)) == {}
    assert megatron_pipeline_kwargs((10, 9, 9)) == {"num_layers_in_first_pipeline_stage": 10,
                                                   "num_layers_in_last_pipeline_stage": 9}
    assert [stage_of_layer((1, 2), i) for i in range(3)] == [(0, 0), (1, 0), (1, 1)]
    arch = arch_from_hf_config({"model_type": "qwen2", **SMALL, "num_hidden_layers": 3})
    assert [M.unit_stage(arch, u, 2, [1, 2]) for u in M.units(arch)] == [0, 0, 1, 1, 1]
    assert M.local_name(arch, "decoder.layers.2.mlp.linear_fc2.weight", 2, [1, 2]) == \
        "decoder.layers.1.mlp.linear_fc2.weight"
    assert arch.layer_range(1, 2, [2, 1]) == (2, 3)


def _split_error(num_layers, pp, layers=None) -> str:
    from mixed_r1.models.config import PipelineLayersError, resolve_pipeline_layers

    with pytest.raises(PipelineLayersError) as e:
        resolve_pipeline_layers(num_layers, pp, layers)
    return str(e.value)


def test_resolve_pipeline_layers_not_divisible_names_layers_and_pp():
    msg = _split_error(3, 2)
    assert msg.startswith("num_hidden_layers=3 is not divisible by pp=2: pass pipeline_layers")
    assert msg.endswith("e.g. pipeline_layers=[2, 1]")
    assert _split_error(28, 3).endswith("e.g. pipeline_layers=[10, 9, 9]")


def test_resolve_pipeline_layers_bad_sum():
    assert _split_error(3, 2, [2, 2]) == ("pipeline_layers=[2, 2] sums to 4, but the model has "
                                          "num_hidden_layers=3")


def test_resolve_pipeline_layers_wrong_length():
    msg = _split_error(3, 2, [1, 1, 1])
    assert msg == "pipeline_layers=[1, 1, 1] has 3 entries, expected one per pipeline stage (pp=2)"


def test_resolve_pipeline_layers_non_positive_or_non_integer():
    msg = _split_error(3, 2, [3, 0])
    assert msg == "pipeline_layers=[3, 0]: every stage needs at least one layer"
    assert "must be a list of integers" in _split_error(3, 2, [1.5, 1.5])


def test_resolve_pipeline_layers_not_representable_by_megatron():
    from mixed_r1.models.config import PipelineLayersError, UnsupportedConfigError

    msg = _split_error(10, 4, [2, 3, 4, 1])
    assert msg.startswith("pipeline_layers=[2, 3, 4, 1] cannot be represented by megatron-core: ")
    assert "num_layers_in_first_pipeline_stage" in msg
    assert "num_layers_in_last_pipeline_stage" in msg
    assert "only the first and the last stage may differ" in msg
    assert msg.endswith("(stages 1..2 hold [3, 4])")
    assert issubclass(PipelineLayersError, UnsupportedConfigError)


def test_uneven_split_errors_reach_conversion(tmp_path):
    hf = _qwen2(tmp_path, num_hidden_layers=3)
    with pytest.raises(UnsupportedConfigError, match=r"num_hidden_layers=3 is not divisible by pp"):
        hf_to_mcore(hf, tmp_path / "out", tp=1, pp=2)
    with pytest.raises(UnsupportedConfigError, match=r"pipeline_layers=\[1, 1\] sums to 2"):
        hf_to_mcore(hf, tmp_path / "out", tp=1, pp=2, pipeline_layers=[1, 1])
    assert not list(tmp_path.glob("out*"))


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

    from mixed_r1.cli.convert import register

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


def test_cli_uneven_pipeline_layers_and_flag_errors(tmp_path, capsys):
    import argparse

    from mixed_r1.cli.convert import register

    parser = argparse.ArgumentParser(prog="mixed-r1")
    register(parser.add_subparsers(dest="cmd", required=True))
    hf = _qwen2(tmp_path, num_hidden_layers=3)

    def run(*argv):
        args = parser.parse_args(list(argv))
        return args.func(args)

    def err() -> list[str]:
        return [ln for ln in capsys.readouterr().err.splitlines() if ln]

    m = tmp_path / "m"
    assert run("convert", "hf-to-mcore", "--hf", str(hf), "--out", str(m), "--tp", "2", "--pp", "2",
               "--pipeline-layers", "1,2") == 0
    assert read_manifest(m)["pipeline_layers"] == [1, 2]
    assert run("convert", "reshard", "--mcore", str(m), "--out", str(tmp_path / "r"), "--pp", "2",
               "--pipeline-layers", "2,1") == 0
    assert read_manifest(tmp_path / "r")["pipeline_layers"] == [2, 1]
    assert run("convert", "mcore-to-hf", "--mcore", str(tmp_path / "r"),
               "--out", str(tmp_path / "h")) == 0
    _assert_bit_exact(hf, tmp_path / "h")
    capsys.readouterr()
    bad = [(("--pp", "2"), r"^error: --pp: num_hidden_layers=3 is not divisible by pp=2"),
           (("--pp", "2", "--pipeline-layers", "2,x"),
            r"^error: --pipeline-layers: '2,x' is not a comma-separated"),
           (("--pp", "2", "--pipeline-layers", "2,2"),
            r"^error: --pipeline-layers: pipeline_layers=\[2, 2\] sums to 4"),
           (("--pp", "3", "--pipeline-layers", "2,1"),
            r"^error: --pipeline-layers: .*has 2 entries.*\(pp=3\)")]
    import re
    for flags, pattern in bad:
        for cmd in (("hf-to-mcore", "--hf", str(hf)), ("reshard", "--mcore", str(m))):
            assert run("convert", *cmd, "--out", str(tmp_path / "x"), *flags) == 2
            lines = err()
            assert len(lines) == 1 and re.search(pattern, lines[0]), (cmd, flags, lines)
    assert not list(tmp_path.glob("x*"))


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
