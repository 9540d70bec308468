"""Megatron policy vs the HF model (float32 gloo ranks): logits, log-probs, grads.

At TP=2, PP=2 (4 ranks, 4 layers, even split) and at PP=2 with an uneven split of 3 layers (2 ranks,
(2, 1) and (1, 2): megatron's num_layers_in_first/last_pipeline_stage). The reference is an
independent HF ``Qwen2ForCausalLM``; the megatron side is built from the converted mcore checkpoint
and run through megatron-core's 1F1B schedule.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from _trainer_util import free_port

B, S, NMB = 2, 8, 2



def _tiny_qwen2(vocab: int = 101, tie: bool = False, layers: int = 4):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                      num_hidden_layers=layers, vocab_size=vocab, rms_norm_eps=1e-6,
                      max_position_embeddings=64,
                      tie_word_embeddings=tie, rope_parameters={"rope_theta": 5000.0, "rope_type": "default"})
    model = Qwen2ForCausalLM(cfg).float().eval()
    with torch.no_grad():  # non-trivial biases and norms so a mapping slip shows up
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _worker(rank: int, port: int, workdir: str, TP: int, PP: int, split: list[int] | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(TP * PP), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from mixed_r1.models import mapping as M
    from mixed_r1.models.qwen2 import load_policy
    from mixed_r1.parallel import ParallelDims, destroy_parallel, init_parallel, pipeline_logprobs, state

    wd = Path(workdir)
    init_parallel(ParallelDims.from_world(tp=TP, pp=PP))
    model, arch = load_policy(wd / "mcore")  # built with the split the manifest records
    data = load_file(wd / "inputs.safetensors")
    mbs = [{"input_ids": data[f"ids{i}"], "targets": data[f"tgt{i}"], "mask": data[f"mask{i}"]} for i in range(NMB)]

    # 1) logits through the schedule (forward only); gathered over TP in the test only
    logits_out: list[torch.Tensor] = []

    def fwd(it, m):
        mb = next(it)
        out = m(mb["input_ids"] if state.is_first_stage() else None, None, None)

        def loss_func(lg):
            parts = [torch.empty_like(lg) for _ in range(TP)]
            torch.distributed.all_gather(parts, lg.contiguous(), group=state.tp_group())
            logits_out.append(torch.cat(parts, -1)[..., : arch.vocab_size])
            return lg.sum() * 0, {}
        return out, loss_func

    get_forward_backward_func()(forward_step_func=fwd, data_iterator=iter(mbs), model=[model], num_microbatches=NMB,
                                seq_length=S, micro_batch_size=B, forward_only=True)

    # 2) log-probs + grads of the masked NLL through the 1F1B schedule
    model.zero_grad(set_to_none=True)
    res = pipeline_logprobs(model, arch, mbs, forward_only=False)

    grads: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    for unit in M.units(arch):
        if M.unit_stage(arch, unit, PP, split) != state.pp_rank():
            continue
        canon = {}
        for spec in M.unit_specs(arch, unit):
            g = params[M.local_name(arch, spec.name, PP, split)].grad
            parts = [torch.empty_like(g) for _ in range(TP)]
            torch.distributed.all_gather(parts, g.contiguous(), group=state.tp_group())
            canon[spec.name] = M.tp_merge(parts, spec.kind, arch)
        grads.update(M.canonical_to_hf(arch, unit, canon))
    if split is not None:  # a model built with the other split must refuse this checkpoint
        from mixed_r1.models import CheckpointError
        try:
            load_policy(wd / "mcore", pipeline_layers=split[::-1])
        except CheckpointError as e:
            (wd / f"mismatch_rank{rank}.txt").write_text(str(e))
    if state.tp_rank() == 0:
        out = {f"grad/{k}": v.contiguous() for k, v in grads.items()}
        # megatron's 1-based global layer numbers of this stage's decoder.layers.0..
        numbers = [layer.layer_number for layer in model.decoder.layers]
        out[f"layer_numbers{state.pp_rank()}"] = torch.tensor(numbers)
        if state.is_last_stage():
            out.update({f"logits{i}": t.contiguous() for i, t in enumerate(logits_out)})
            out.update({f"logp{i}": t.contiguous() for i, t in enumerate(res.logprobs)})
        save_file(out, str(wd / f"out_pp{state.pp_rank()}.safetensors"))
    destroy_parallel()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


@pytest.mark.multirank  # spawns TP x PP gloo ranks
@pytest.mark.timeout(300)
@pytest.mark.parametrize("tp,pp,layers,split",
                         [(2, 2, 4, None), (1, 2, 3, [2, 1]), (1, 2, 3, [1, 2])],
                         ids=["tp2pp2-even4", "pp2-uneven-2-1", "pp2-uneven-1-2"])
def test_logits_logprobs_grads_match_hf(tmp_path, tp, pp, layers, split):
    from mixed_r1.models.convert import hf_to_mcore

    hf = _tiny_qwen2(layers=layers)
    hf.save_pretrained(tmp_path / "hf")
    hf_to_mcore(tmp_path / "hf", tmp_path / "mcore", tp=tp, pp=pp, pipeline_layers=split)
    g = torch.Generator().manual_seed(1)
    inputs = {}
    for i in range(NMB):
        ids = torch.randint(0, 101, (B, S + 1), generator=g)
        inputs[f"ids{i}"], inputs[f"tgt{i}"] = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        inputs[f"mask{i}"] = (torch.rand(B, S, generator=g) > 0.3).float()
    save_file(inputs, str(tmp_path / "inputs.safetensors"))

    mp.spawn(_worker, args=(free_port(), str(tmp_path), tp, pp, split), nprocs=tp * pp, join=True)

    # reference: HF float32, same loss (mean over microbatches of the masked mean NLL)
    hf.zero_grad()
    total = 0.0
    ref_logits, ref_logp = [], []
    for i in range(NMB):
        logits = hf(input_ids=inputs[f"ids{i}"]).logits
        logp = torch.log_softmax(logits.double(), -1).gather(-1, inputs[f"tgt{i}"][..., None])[..., 0]
        m = inputs[f"mask{i}"].double()
        total = total + (-(logp * m).sum() / m.sum()) / NMB
        ref_logits.append(logits.detach())
        ref_logp.append(logp.detach().float())
    total.backward()

    out = {}
    for s in range(pp):
        out.update(load_file(tmp_path / f"out_pp{s}.safetensors"))
    per_stage = split or [layers // pp] * pp
    for s in range(pp):  # stage s runs HF layers sum(per_stage[:s]) .. (megatron numbers from 1)
        start = sum(per_stage[:s])
        assert out[f"layer_numbers{s}"].tolist() == list(range(start + 1, start + per_stage[s] + 1))
    for i in range(NMB):
        assert _rel(out[f"logits{i}"], ref_logits[i]) < 1e-5
        assert torch.allclose(out[f"logp{i}"], ref_logp[i], atol=1e-5, rtol=1e-5)
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    got = {k[len("grad/"):]: v for k, v in out.items() if k.startswith("grad/")}
    assert set(got) == set(hf_grads)
    for name, ref in hf_grads.items():
        assert _rel(got[name], ref) < 1e-4, name
    if split is not None:
        for r in range(tp * pp):
            msg = (tmp_path / f"mismatch_rank{r}.txt").read_text()
            assert f"checkpoint has pipeline_layers={split}" in msg
            assert f"the model was built with pipeline_layers={split[::-1]}" in msg


def test_prepare_mcore_checkpoint_caches_one_conversion_per_split(tmp_path):
    """Each pipeline split gets its own cache directory (and manifest); a repeat call reuses it."""
    from mixed_r1.models import PipelineLayersError, read_manifest
    from mixed_r1.models.cache import prepare_mcore_checkpoint

    _tiny_qwen2(layers=3).save_pretrained(tmp_path / "hf")
    cache = tmp_path / "cache"
    a = prepare_mcore_checkpoint(tmp_path / "hf", cache, 1, 2, pipeline_layers=[2, 1])
    b = prepare_mcore_checkpoint(tmp_path / "hf", cache, 1, 2, pipeline_layers=(1, 2))
    even = prepare_mcore_checkpoint(tmp_path / "hf", cache, 1, 3)
    assert len({a, b, even}) == 3 and all(p.parent == cache for p in (a, b, even))
    assert even.name == "tp1_pp3"  # the name even caches had before uneven splits
    assert read_manifest(a)["pipeline_layers"] == [2, 1]
    assert read_manifest(b)["pipeline_layers"] == [1, 2]
    assert read_manifest(even)["pipeline_layers"] == [1, 1, 1]
    stamp = (a / "manifest.json").stat().st_mtime_ns
    assert prepare_mcore_checkpoint(tmp_path / "hf", cache, 1, 2, pipeline_layers=[2, 1]) == a
    assert (a / "manifest.json").stat().st_mtime_ns == stamp  # not converted again
    assert prepare_mcore_checkpoint(tmp_path / "hf", cache, 1, 3, pipeline_layers=[1, 1, 1]) == even
    with pytest.raises(PipelineLayersError, match=r"num_hidden_layers=3 is not divisible by pp=2"):
        prepare_mcore_checkpoint(tmp_path / "hf", cache, 1, 2)
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in (a, b, even))


@pytest.mark.parametrize("layers,pp,split", [(4, 2, None), (3, 2, [2, 1]), (3, 2, [1, 2]),
                                             (28, 3, [10, 9, 9]), (30, 4, [6, 8, 8, 8]),
                                             (7, 3, [1, 5, 1])])
def test_megatron_builds_the_resolved_split(layers, pp, split):
    """megatron-core's own per-stage count and layer offset, from the TransformerConfig we build,
    are the split resolve_pipeline_layers decided (no process group needed: pp_rank is explicit)."""
    from types import SimpleNamespace

    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    from mixed_r1.models.config import arch_from_hf_config, transformer_config
    from mixed_r1.models.qwen2.model import model_pipeline_layers
    from mixed_r1.rollout.weight_sync import stream_pipeline_layers

    hf_cfg = _tiny_qwen2(layers=1).config.to_dict()
    arch = arch_from_hf_config({**hf_cfg, "num_hidden_layers": layers})
    cfg = transformer_config(arch, 1, pp, pipeline_layers=split)
    want = split or [layers // pp] * pp
    assert [get_num_layers_to_build(cfg, pp_rank=s) for s in range(pp)] == want
    assert [get_transformer_layer_offset(cfg, pp_rank=s) for s in range(pp)] == \
        [sum(want[:s]) for s in range(pp)]
    model = SimpleNamespace(config=cfg)
    assert model_pipeline_layers(model) == tuple(want)
    assert stream_pipeline_layers(model, arch, pp) == tuple(want)
    if split is not None and split != split[::-1]:
        import re

        msg = f"model was built with pipeline_layers={want}"
        with pytest.raises(ValueError, match=re.escape(msg)):
            stream_pipeline_layers(model, arch, pp, pipeline_layers=split[::-1])
