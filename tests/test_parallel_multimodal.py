"""Qwen2.5-VL policy on megatron-core (HF vision tower + GPTModel with 3-D mrope) vs the HF model.

The reference is ``Qwen2_5_VLForConditionalGeneration`` (float32) fed the same real processor outputs
(an easy_vqa image through the offline Qwen2.5-VL processor: pixel_values, image_grid_thw,
mm_token_type_ids); the megatron side is loaded from the converted mcore checkpoint (vision tower from
vision.safetensors) and run through megatron-core's 1F1B schedule at TP=2, PP=2 on 4 gloo ranks, at
TP=1, PP=1, and (a 3-layer model) at PP=2 with the uneven split (2, 1). Logits must match within
1e-5 relative (to the largest |logit|), log-probs within 1e-5, and every gradient of the masked
log-prob loss — language model and vision tower, in HF names — within 1e-4.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from _trainer_util import free_port

NMB = 2  # image+text microbatches (b=2 each); one text-only microbatch (b=2)
MIN_PIXELS = MAX_PIXELS = 160 * 160  # easy_vqa's 64x64 images -> 168x168: a 12x12 patch grid, 36 image tokens



def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def _worker(rank: int, port: int, workdir: str, tp: int, pp: int,
            split: list[int] | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(tp * pp),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from mixed_r1.models import mapping as M
    from mixed_r1.parallel import ParallelDims, destroy_parallel, init_parallel, pipeline_logprobs, state
    from mixed_r1.models.qwen25vl.model import load_vl_policy

    wd = Path(workdir)
    init_parallel(ParallelDims.from_world(tp=tp, pp=pp))
    policy, arch = load_vl_policy(wd / f"mcore_tp{tp}_pp{pp}")  # the split the manifest records
    assert (policy.visual is not None) == state.is_first_stage()
    data = load_file(wd / "inputs.safetensors")
    keys = ("input_ids", "targets", "mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    img_mbs = [{k: data[f"img{i}/{k}"] for k in keys} for i in range(NMB)]
    txt_mbs = [{k: data[f"txt/{k}"] for k in ("input_ids", "targets", "mask")}]
    out: dict[str, torch.Tensor] = {}

    def logits_through_schedule(mbs, tag):
        mbs = [policy.prepare_microbatch(mb) for mb in mbs]  # mrope position ids on every stage
        got: list[torch.Tensor] = []

        def fwd(it, m):
            mb = next(it)
            first = state.is_first_stage()
            mm = {k: mb[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids") if first and k in mb}
            o = m(mb["input_ids"] if first else None, mb["position_ids"], None, **mm)

            def loss_func(lg):
                parts = [torch.empty_like(lg) for _ in range(tp)]
                dist.all_gather(parts, lg.contiguous(), group=state.tp_group())
                got.append(torch.cat(parts, -1)[..., : arch.vocab_size])
                return lg.sum() * 0, {}
            return o, loss_func

        b, s = mbs[0]["input_ids"].shape
        with torch.no_grad():
            get_forward_backward_func()(forward_step_func=fwd, data_iterator=iter(mbs), model=[policy],
                                        num_microbatches=len(mbs), seq_length=s, micro_batch_size=b,
                                        forward_only=True)
        for i, t in enumerate(got):
            out[f"{tag}/logits{i}"] = t.contiguous()

    def grads_through_schedule(mbs, tag):
        policy.zero_grad(set_to_none=True)
        res = pipeline_logprobs(policy, arch, mbs, forward_only=False)  # prepares position ids itself
        lm = policy.language_model
        if arch.tie_embeddings and pp > 1 and (state.is_first_stage() or state.is_last_stage()):
            w = lm.shared_embedding_or_output_weight()  # megatron's tied-embedding grad all-reduce
            dist.all_reduce(w.grad, group=ps.get_embedding_group())
        params = dict(lm.named_parameters())
        grads: dict[str, torch.Tensor] = {}
        for unit in M.units(arch):
            if M.unit_stage(arch, unit, pp, split) != state.pp_rank():
                continue
            canon = {}
            for spec in M.unit_specs(arch, unit):
                g = params[M.local_name(arch, spec.name, pp, split)].grad
                parts = [torch.empty_like(g) for _ in range(tp)]
                dist.all_gather(parts, g.contiguous(), group=state.tp_group())
                canon[spec.name] = M.tp_merge(parts, spec.kind, arch)
            grads.update(M.canonical_to_hf(arch, unit, canon))
        if policy.visual is not None:
            for n, p in policy.visual.named_parameters():
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                parts = [torch.empty_like(g) for _ in range(tp)]
                dist.all_gather(parts, g.contiguous(), group=state.tp_group())
                # replicated tower: every TP rank must hold the same full gradient
                spread = max(float((q - parts[0]).abs().max()) for q in parts)
                out[f"{tag}/vision_tp_spread/{n}"] = torch.tensor(spread)
                grads["model.visual." + n] = g
        out.update({f"{tag}/grad/{k}": v.contiguous() for k, v in grads.items()})
        for i, t in enumerate(res.logprobs):
            out[f"{tag}/logp{i}"] = t.contiguous()

    logits_through_schedule(img_mbs, "img")
    logits_through_schedule(txt_mbs, "txt")
    grads_through_schedule(img_mbs, "img")
    grads_through_schedule(txt_mbs, "txt")
    if state.tp_rank() == 0:
        save_file(out, str(wd / f"out_tp{tp}_pp{pp}_stage{state.pp_rank()}.safetensors"))
    destroy_parallel()


def _perturbed_tiny_vl(num_layers: int = 2):
    from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

    model = build_tiny_qwen25vl(seed=0, num_layers=num_layers)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial biases and norms so a mapping slip shows up
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n or "ln_q" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.float().eval()


def _inputs(processor) -> dict[str, torch.Tensor]:
    import easy_vqa
    from PIL import Image

    paths = easy_vqa.get_train_image_paths()
    questions = ["What shape is in the image?", "What color is in the image?"]  # same length: one p2p shape
    g = torch.Generator().manual_seed(5)
    inputs: dict[str, torch.Tensor] = {}
    for i in range(NMB):
        images = [Image.open(paths[2 * i + j]).convert("RGB") for j in range(2)]
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[i]}]}],
            add_generation_prompt=True, tokenize=False) + "The answer is"
        enc = processor(text=[text, text], images=images, return_tensors="pt")
        assert bool(enc["attention_mask"].all())
        ids = enc["input_ids"]
        inputs.update({f"img{i}/input_ids": ids, f"img{i}/pixel_values": enc["pixel_values"].float(),
                       f"img{i}/image_grid_thw": enc["image_grid_thw"],
                       f"img{i}/mm_token_type_ids": enc["mm_token_type_ids"]})
        targets = torch.roll(ids, -1, dims=1)
        mask = (torch.rand(ids.shape, generator=g) > 0.3).float()
        mask[:, -1] = 0
        inputs[f"img{i}/targets"], inputs[f"img{i}/mask"] = targets, mask
    assert inputs["img0/input_ids"].shape == inputs["img1/input_ids"].shape
    tok = processor.tokenizer
    rows = [tok("A red circle sits next to a blue square on a white page.")["input_ids"],
            tok("Count the triangles, then name the colour of the largest one.")["input_ids"]]
    s = min(len(r) for r in rows)
    ids = torch.tensor([r[:s] for r in rows])
    mask = (torch.rand(ids.shape, generator=g) > 0.3).float()
    mask[:, -1] = 0
    inputs.update({"txt/input_ids": ids, "txt/targets": torch.roll(ids, -1, dims=1), "txt/mask": mask})
    return inputs


@pytest.fixture(scope="module")
def vl_setup(tmp_path_factory):
    from mixed_r1.models.convert import hf_to_mcore
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor

    wd = tmp_path_factory.mktemp("vl")
    hf = _perturbed_tiny_vl()
    hf.save_pretrained(wd / "hf")
    for tp, pp in ((1, 1), (2, 2)):
        hf_to_mcore(wd / "hf", wd / f"mcore_tp{tp}_pp{pp}", tp=tp, pp=pp)
    inputs = _inputs(build_qwen25vl_processor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS))
    save_file(inputs, str(wd / "inputs.safetensors"))
    ref = _reference(hf, inputs)
    return wd, hf, inputs, ref


def _reference(hf, inputs) -> dict[str, dict]:
    """HF float32 logits, float64 log-probs, and grads of mean-over-microbatches masked mean NLL."""
    out: dict[str, dict] = {}
    for tag, names in (("img", [f"img{i}" for i in range(NMB)]), ("txt", ["txt"])):
        hf.zero_grad(set_to_none=True)
        total = 0.0
        logits_l, logp_l = [], []
        for n in names:
            kw = {}
            if tag == "img":
                kw = dict(pixel_values=inputs[f"{n}/pixel_values"], image_grid_thw=inputs[f"{n}/image_grid_thw"],
                          mm_token_type_ids=inputs[f"{n}/mm_token_type_ids"])
            logits = hf(input_ids=inputs[f"{n}/input_ids"], **kw).logits
            logp = torch.log_softmax(logits.double(), -1).gather(-1, inputs[f"{n}/targets"][..., None])[..., 0]
            m = inputs[f"{n}/mask"].double()
            total = total + (-(logp * m).sum() / m.sum()) / len(names)
            logits_l.append(logits.detach())
            logp_l.append(logp.detach().float())
        total.backward()
        grads = {k: p.grad.detach().clone() for k, p in hf.named_parameters() if p.grad is not None}
        out[tag] = {"logits": logits_l, "logp": logp_l, "grads": grads}
    return out


def _run(wd: Path, tp: int, pp: int, split: list[int] | None = None) -> dict[str, torch.Tensor]:
    mp.spawn(_worker, args=(free_port(), str(wd), tp, pp, split), nprocs=tp * pp, join=True)
    out: dict[str, torch.Tensor] = {}
    for s in range(pp):
        out.update(load_file(wd / f"out_tp{tp}_pp{pp}_stage{s}.safetensors"))
    return out


def _check(out: dict[str, torch.Tensor], ref: dict[str, dict], hf) -> dict[str, float]:
    worst: dict[str, float] = {}
    for tag in ("img", "txt"):
        r = ref[tag]
        for i, lg in enumerate(r["logits"]):
            e = _rel(out[f"{tag}/logits{i}"], lg)
            worst[f"{tag}/logits"] = max(worst.get(f"{tag}/logits", 0.0), e)
            assert e < 1e-5, (tag, i, e)
            assert torch.allclose(out[f"{tag}/logp{i}"], r["logp"][i], atol=1e-5, rtol=1e-5), (tag, i)
        got = {k[len(f"{tag}/grad/"):]: v for k, v in out.items() if k.startswith(f"{tag}/grad/")}
        names = {n for n, _ in hf.named_parameters()}
        assert set(got) == names, sorted(set(got) ^ names)[:5]
        for name in names:
            ref_g = r["grads"].get(name)
            if ref_g is None:  # text-only: the vision tower gets no gradient on either side
                assert tag == "txt" and name.startswith("model.visual.") and not got[name].any(), name
                continue
            e = _rel(got[name], ref_g)
            key = f"{tag}/grad/{'vision' if name.startswith('model.visual.') else 'lm'}"
            worst[key] = max(worst.get(key, 0.0), e)
            assert e < 1e-4, (tag, name, e)
        spread = [float(v) for k, v in out.items() if k.startswith(f"{tag}/vision_tp_spread/")]
        assert spread and max(spread) == 0.0, max(spread)
    return worst


def test_mrope_position_ids_match_hf(vl_setup):
    """Our [3, b, s] positions are HF's get_rope_index output, and text-only ones are arange."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    from mixed_r1.models.qwen25vl.model import mrope_position_ids

    _, hf, inputs, _ = vl_setup
    ids, grid, tt = inputs["img0/input_ids"], inputs["img0/image_grid_thw"], inputs["img0/mm_token_type_ids"]
    want, _ = Qwen2_5_VLModel.get_rope_index(hf.model, ids, mm_token_type_ids=tt, image_grid_thw=grid)
    got = mrope_position_ids(hf.config, ids, tt, grid)
    assert got.shape == (3, *ids.shape) and torch.equal(got, want)
    assert torch.equal(mrope_position_ids(hf.config, ids, None, grid), want)  # token types from image_token_id
    assert not torch.equal(got[1], got[2])  # real 3-D positions: height and width differ on the image
    s = inputs["txt/input_ids"].shape[1]
    assert torch.equal(mrope_position_ids(hf.config, inputs["txt/input_ids"]),
                       torch.arange(s).expand(3, 2, s))


@pytest.mark.multirank
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tp1_pp1_matches_hf(vl_setup):
    wd, hf, _, ref = vl_setup
    worst = _check(_run(wd, 1, 1), ref, hf)
    print("tp1 pp1 max relative errors:", worst)


@pytest.mark.multirank
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tp2_pp2_logits_logprobs_grads_match_hf(vl_setup):
    wd, hf, _, ref = vl_setup
    worst = _check(_run(wd, 2, 2), ref, hf)
    print("tp2 pp2 max relative errors:", worst)


@pytest.fixture(scope="module")
def vl_setup_3_layers(tmp_path_factory):
    """A 3-layer tiny Qwen2.5-VL converted at TP=1, PP=2 with the uneven split (2, 1)."""
    from mixed_r1.models.convert import hf_to_mcore
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor

    wd = tmp_path_factory.mktemp("vl3")
    hf = _perturbed_tiny_vl(num_layers=3)
    hf.save_pretrained(wd / "hf")
    hf_to_mcore(wd / "hf", wd / "mcore_tp1_pp2", tp=1, pp=2, pipeline_layers=[2, 1])
    inputs = _inputs(build_qwen25vl_processor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS))
    save_file(inputs, str(wd / "inputs.safetensors"))
    return wd, hf, inputs, _reference(hf, inputs)


@pytest.mark.multirank
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pp2_uneven_split_matches_hf(vl_setup_3_layers):
    """load_vl_policy builds the language model with the manifest's (2, 1) split (megatron's
    num_layers_in_first/last_pipeline_stage): logits, log-probs and grads equal HF's."""
    wd, hf, _, ref = vl_setup_3_layers
    worst = _check(_run(wd, 1, 2, [2, 1]), ref, hf)
    print("tp1 pp2 (2, 1) max relative errors:", worst)
