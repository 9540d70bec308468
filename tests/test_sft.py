"""``mixed-r1 sft`` (mixed_r1/sft.py) and the freeze options (mixed_r1/models/freeze.py) on the HF
backend, float32, the tiny Qwen2.5-VL.

- the SFT loss equals transformers' own ``labels=`` cross-entropy over the answer tokens (prompt
  tokens masked, ``<|im_end|>`` included) on one batch, and its gradient, accumulated over two
  micro-batches, equals the one-batch gradient; token accuracy equals the argmax rate of the
  model's own logits;
- 4 steps straight == 2 steps + resume 2 steps, bit for bit (weights, metrics); the held-out NLL
  falls on a fixed set;
- frozen parts are bit-identical after a step (SFT with a frozen language model, GRPO with a
  frozen vision tower), trainable ones change, AdamW holds no state for frozen ones, and the GRPO
  weight sync sends only the trainable ones to the HF generator (which refuses a partial update
  unless told it is one);
- the CLI runs end to end and GRPO loads the export as ``model.kind=pretrained``.

The megatron backend's SFT step and freeze are checked in the TP=2 run of
tests/test_trainer_mcore.py (tests/sft_checks.py).
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _cli import run_cli
from _trainer_util import (differing_tensors, exported_weights, make_data, spread_rewards,
                           stable_metrics, tiny_overrides, write_config)

ROOT = Path(__file__).resolve().parents[1]
SFT = ["sft.batch_size=4", "sft.micro_batch_size=2", "optim.lr=1e-2"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module", autouse=True)
def one_processor():
    """Every trainer this module builds shares one processor (the real Qwen2.5 tokenizer takes
    seconds to load; it is stateless)."""
    import mixed_r1.trainer as T

    made: dict = {}
    real = T.build_processor

    def cached(cfg):
        key = (cfg.model.kind, cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels)
        if key not in made:
            made[key] = real(cfg)
        return made[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "build_processor", cached)
        yield


def _cfg(data_file, out, *extra):
    from mixed_r1.config import load_config

    return load_config(None, tiny_overrides(data_file, out) + SFT + list(extra))


@pytest.fixture(scope="module")
def sft_trainer(data_file, tmp_path_factory):
    from mixed_r1.sft import build_sft_trainer

    run = tmp_path_factory.mktemp("sft")
    return build_sft_trainer(_cfg(data_file, run), run)


# ----------------------------------------------------------------------------- targets
def test_completion_text_end_of_turn_and_reference_turns():
    from mixed_r1.config import SFTConfig
    from mixed_r1.data.schema import Sample
    from mixed_r1.sft import sft_completion, without_reference_turns

    s = Sample(id="a", task_type="open_ended", question="q", solution="a red  circle on the left")
    assert sft_completion(s, SFTConfig()) == \
        "<think>Look at the image.</think><answer>a red  circle on the left</answer>"
    cut = SFTConfig(target="solution", max_answer_words=3)
    assert sft_completion(s, cut) == "a red circle"
    box = Sample(id="b", task_type="grounding", question="q", solution=[1, 2.6, 30.4, 40])
    assert sft_completion(box, SFTConfig(think="")) == \
        "<think></think><answer>[1, 3, 30, 40]</answer>"  # whole pixels
    # a row's own reasoning (the data engine's "what the image shows") is its think text
    seen = Sample(id="d", task_type="yes_no", question="Is there a red shape?", solution="no",
                  meta={"reasoning": " The image shows a blue circle. "})
    assert sft_completion(seen, SFTConfig()) == \
        "<think>The image shows a blue circle.</think><answer>no</answer>"
    assert sft_completion(seen, SFTConfig(sample_reasoning=False)) == \
        "<think>Look at the image.</think><answer>no</answer>"
    blank = Sample(id="e", task_type="yes_no", question="q", solution="no",
                   meta={"reasoning": ""})
    assert sft_completion(blank, SFTConfig()) == "<think>Look at the image.</think><answer>no</answer>"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"},
             {"role": "user", "content": "and?"}, {"role": "assistant", "content": "ref"}]
    m = Sample(id="c", task_type="open_ended", question="hi", solution="y", messages=turns)
    out, = without_reference_turns([m], "f")
    assert out.messages == turns[:3] and m.messages == turns  # a copy; context kept


def test_sft_progress_line_and_curves():
    from mixed_r1.metrics import plot_figure, step_line

    rows = [{"step": s, "loss": 3.0 - s, "token_acc": 0.1 * s, "grad_norm": 1.0, "lr": 1e-3,
             "tokens": 40.0, "perf/tokens_per_s": 50.0} for s in (1, 2)]
    rows[1]["eval/nll"] = 1.5
    assert step_line(2, 4, rows[1], 1.25, stage="sft") == \
        "sft step 2/4: nll 1.000 acc 0.200 eval nll 1.500 1.2 s 50 tok/s"
    text = " ".join(run_cli("sft", "--help").stdout.split())
    for key in ("sft.target", "sft.max_answer_words", "model.freeze_vision_tower",
                "model.freeze_merger", "model.freeze_language_model", "--resume", "LLaVA stage 1"):
        assert key in text, key
    axes = [ax for ax in plot_figure(rows).axes if ax.axison]
    assert {ax.get_xlabel() for ax in axes} == {"SFT step"}
    lines = {ln.get_gid() for ax in axes for ln in ax.get_lines()}
    assert {"loss", "eval/nll", "token_acc", "grad_norm", "lr"} <= lines


def test_sft_loss_is_the_answer_tokens_cross_entropy(sft_trainer):
    """Two micro-batches through the engine seam vs transformers' ``labels=`` loss on one batch:
    the same NLL (the step's token mean), token accuracy and gradient."""
    from mixed_r1.engine import SFTLoss

    tr = sft_trainer
    rows = [s for s in tr.stream.samples if s.images][:4]
    mbs = tr.micro_batches(rows)
    assert len(mbs) == 2 and all(mb.num_items == sum(float(m.mask.sum()) for m in mbs)
                                 for mb in mbs)
    ref = tr.encode(rows, tr.completion_ids(rows))
    tok = tr.tokenizer
    for b in range(len(rows)):  # the completion: the r1 text, then <|im_end|>; prompt unmasked
        n = int(ref.mask[b].sum())
        text = tok.decode(ref.targets[b, :n])
        think = (rows[b].meta or {}).get("reasoning") or "Look at the image."  # easy-vqa rows
        assert text.startswith(f"<think>{think}</think><answer>"), text
        assert text.endswith("</answer><|im_end|>"), text
    # the prompt is what the GRPO rollout's generator encodes (chat template of the template's
    # messages, images expanded by the processor)
    from mixed_r1.models.processor import encode_prompts
    from mixed_r1.rollout import Prompt

    text = Prompt(messages=tr.template.messages(rows[0]), images=rows[0].images).render(
        tr.processor)
    want = encode_prompts(tr.processor, [text], rows[0].images)["input_ids"][0]
    L, T = ref.inputs["input_ids"].shape[1], ref.targets.shape[1]
    got = ref.inputs["input_ids"][0][:L - T][ref.inputs["attention_mask"][0][:L - T].bool()]
    assert got.tolist() == want.tolist()
    model = tr.policy.model
    tr.policy.zero_grad()
    res = tr.policy.forward_backward(mbs, SFTLoss())
    loss = sum(float(r.loss) * mbs[r.index].scale for r in res)
    acc = sum(float(r.metrics["token_acc"]) * float(mbs[r.index].mask.sum()) for r in res)
    acc /= sum(float(mb.mask.sum()) for mb in mbs)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    tr.policy.zero_grad()

    twin = copy.deepcopy(model)
    ids = ref.inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    labels[:, L - T:] = ref.targets.masked_fill(~ref.mask.bool(), -100)
    out = twin(**ref.inputs, labels=labels, use_cache=False)
    out.loss.backward()
    assert loss == pytest.approx(float(out.loss.detach()), rel=1e-5)
    pick = out.logits[:, L - T - 1:L - 1].argmax(-1)
    want = float(((pick == ref.targets).float() * ref.mask).sum() / ref.mask.sum())
    assert acc == pytest.approx(want, abs=1e-6)
    theirs = {n: p.grad for n, p in twin.named_parameters() if p.grad is not None}
    assert sorted(grads) == sorted(theirs)
    vision = [n for n in grads if ".visual." in n]
    assert vision and all(float(grads[n].abs().max()) > 0 for n in vision[:3])
    for n, g in theirs.items():
        scale = float(g.abs().max()) or 1.0
        assert float((grads[n] - g).abs().max()) <= 1e-4 * scale, n


@pytest.mark.slow  # two short runs with checkpoints and evaluations (~30 s here)
def test_sft_resume_is_exact_and_the_heldout_nll_falls(data_file, tmp_path):
    """4 steps straight vs the same run cut back to its step-2 checkpoint (later checkpoint,
    export and metrics rows removed) and resumed for the last 2: identical metrics and weights,
    bit for bit (float32). The vision tower and merger have their own learning rates
    (``optim.vision_lr`` / ``merger_lr``: AdamW's param groups split by part, restored by part)."""
    import shutil

    from mixed_r1.metrics import read_metrics
    from mixed_r1.sft import run_sft

    extra = ("steps=4", "save_every=2", "keep_last=5", f"data.eval_file={data_file}",
             "sft.eval_every=2", "eval_samples=4", "optim.vision_lr=2e-2",
             "optim.merger_lr=5e-3")
    straight = run_sft(_cfg(data_file, tmp_path / "a", *extra))
    cut = tmp_path / "b"
    shutil.copytree(tmp_path / "a", cut)
    shutil.rmtree(cut / "checkpoints" / "step_00000004")
    shutil.rmtree(cut / "model")
    rest = run_sft(_cfg(data_file, cut, *extra), resume=True)
    assert [r["step"] for r in read_metrics(cut)] == [1, 2, 3, 4]
    assert stable_metrics(rest) == stable_metrics(straight[2:])
    assert stable_metrics(read_metrics(cut)) == stable_metrics(read_metrics(tmp_path / "a"))
    assert differing_tensors(exported_weights(tmp_path / "a"), exported_weights(cut)) == []
    nll = [r["eval/nll"] for r in straight if "eval/nll" in r]  # the same 4 held-out rows
    assert len(nll) == 2 and nll[1] < nll[0] - 0.1, nll
    assert straight[-1]["loss"] < straight[0]["loss"] - 0.5
    assert all(0.0 <= r["token_acc"] <= 1.0 and r["grad_norm"] > 0 for r in straight)


@pytest.mark.slow  # builds an SFT trainer (~5 s with the tokenizer here)
def test_sft_step_with_part_learning_rates(data_file, tmp_path):
    """``optim.lr=1e-4``, ``optim.vision_lr=1e-3``, ``optim.merger_lr=3e-4`` through
    :func:`~mixed_r1.trainer.build_policy`: one SFT step is a bias-corrected first AdamW step, so
    an element with a gradient (clipped or not) moves by lr · |g| / (|g| + 1e-8), about its
    part's rate: the largest change of the vision tower is 1e-3, of the merger 3e-4, of the
    language model 1e-4 (1e-2 relative)."""
    from mixed_r1.models.freeze import model_parts
    from mixed_r1.sft import build_sft_trainer

    tr = build_sft_trainer(_cfg(data_file, tmp_path, "optim.lr=1e-4", "optim.vision_lr=1e-3",
                                "optim.merger_lr=3e-4"), tmp_path)
    parts = model_parts(tr.policy.model)
    before = {id(p): p.detach().clone() for named in parts.values() for _, p in named}
    m = tr.step()
    assert m["update/skipped"] == 0 and m["lr"] == 1e-4
    for part, want in (("vision_tower", 1e-3), ("merger", 3e-4), ("language_model", 1e-4)):
        got = max(float((p.detach() - before[id(p)]).abs().max()) for _, p in parts[part])
        assert got == pytest.approx(want, rel=1e-2), (part, got)


# ----------------------------------------------------------------------------- freezing
def test_freeze_options_are_checked():
    from mixed_r1.config import ConfigError, load_config, validate_model_layout

    with pytest.raises(ConfigError, match="all true: nothing would train"):
        load_config(None, ["model.freeze_vision_tower=true", "model.freeze_merger=true",
                           "model.freeze_language_model=true"])
    with pytest.raises(ConfigError, match="pipeline_parallel=2"):
        load_config(None, ["model.freeze_language_model=true", "parallel.backend=mcore",
                           "parallel.pipeline_parallel=2", "rollout.prompts_per_step=8"])
    text_lm = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 2,
               "num_hidden_layers": 2, "vocab_size": 100, "intermediate_size": 128,
               "max_position_embeddings": 2048}
    for key, msg in (("model.freeze_vision_tower=true", "text-only LM .no vision tower"),
                     ("model.freeze_language_model=true", "leaves nothing to train"),
                     ("optim.vision_lr=1e-3", "'optim.vision_lr': .* text-only LM"),
                     ("optim.merger_lr=1e-3", "'optim.merger_lr': .* text-only LM")):
        cfg = load_config(None, [key])
        with pytest.raises(ConfigError, match=msg):
            validate_model_layout(cfg, text_lm)
    # the parts' own learning rates: positive, and multiples of a positive optim.lr
    for bad, msg in ((["optim.vision_lr=0"], "'optim.vision_lr' must be > 0"),
                     (["optim.merger_lr=-1e-4"], "'optim.merger_lr' must be > 0"),
                     (["optim.vision_lr=.nan"], "'optim.vision_lr' must be > 0"),
                     (["optim.lr=0", "optim.vision_lr=1e-3"], "needs optim.lr > 0")):
        with pytest.raises(ConfigError, match=msg):
            load_config(None, bad)
    assert load_config(None, ["optim.vision_lr=2e-5"]).optim.vision_lr == 2e-5


def test_apply_freeze_parts_of_the_tiny_qwen25vl():
    from mixed_r1.config import ModelConfig
    from mixed_r1.models.freeze import apply_freeze, model_parts
    from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

    model = build_tiny_qwen25vl(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                intermediate_size=64, vision_hidden=16, vision_depth=1)
    parts = model_parts(model)
    assert {n for n, _ in parts["merger"]} == {n for n, _ in model.named_parameters()
                                                if n.startswith("model.visual.merger.")}
    assert all(n.startswith(("model.visual.patch_embed.", "model.visual.blocks."))
               for n, _ in parts["vision_tower"]) and parts["vision_tower"]
    lm = {n for n, _ in parts["language_model"]}
    assert all(n.startswith("model.language_model.") or n == "lm_head.weight" for n in lm)
    counts = apply_freeze(model, ModelConfig(freeze_vision_tower=True))
    numel = {k: sum(p.numel() for _, p in v) for k, v in parts.items()}
    assert counts == {"vision_tower": numel["vision_tower"], "merger": 0, "language_model": 0,
                      "trainable": numel["merger"] + numel["language_model"]}
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == \
        [n for n, _ in parts["vision_tower"]]


@pytest.mark.slow  # builds an SFT trainer (~10 s with the tokenizer here)
def test_sft_with_a_frozen_language_model_trains_only_the_vision_side(data_file, tmp_path):
    """LLaVA's stage 1 on a fresh vision tower: the language model (embeddings, decoder, the tied
    head) bit-identical after a step, the vision tower and merger changed; AdamW state only for
    them; the export holds the frozen weights as they were."""
    from mixed_r1.models.freeze import model_parts
    from mixed_r1.sft import build_sft_trainer

    tr = build_sft_trainer(_cfg(data_file, tmp_path, "model.freeze_language_model=true",
                                "sft.target=solution", "sft.max_answer_words=4"), tmp_path)
    model = tr.policy.model
    parts = model_parts(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    from mixed_r1.engine import SFTLoss

    text = [s for s in tr.stream.samples if not s.images][:2]  # no image: no trainable path
    res, = tr.policy.forward_backward([tr.encode(text, tr.completion_ids(text))], SFTLoss())
    assert float(res.loss) > 0 and not any(p.grad is not None for p in model.parameters())
    m = tr.step()
    assert m["update/skipped"] == 0 and m["grad_norm"] > 0
    after = dict(model.named_parameters())
    lm = [n for n, _ in parts["language_model"]]
    vision = [n for n, _ in parts["vision_tower"] + parts["merger"]]
    assert all(torch.equal(before[n], after[n]) for n in lm)
    assert all(not torch.equal(before[n], after[n]) for n in vision)
    opt = tr.policy.optimizer
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(after[n]) for n in vision} == {id(p) for p in opt.state}
    assert not any(p.requires_grad or p.grad is not None for _, p in parts["language_model"])


@pytest.mark.slow  # builds a GRPO trainer and takes one step (~15 s here)
def test_grpo_step_with_a_frozen_vision_tower(data_file, tmp_path):
    from mixed_r1.models.freeze import model_parts
    from mixed_r1.trainer import build_trainer

    cfg = _cfg(data_file, tmp_path, "model.freeze_vision_tower=true")
    tr = build_trainer(cfg, tmp_path)
    spread_rewards(tr)
    parts = model_parts(tr.policy.model)
    tower = [n for n, _ in parts["vision_tower"]]
    assert tr.partial_sync and tower
    sent = [n for n, _ in tr.export_weights()]
    assert not set(sent) & set(tower) and "model.visual.merger.mlp.0.weight" in sent
    gen = dict(tr.generator.model.named_parameters())
    with pytest.raises(ValueError, match="not in the update"):  # partial only when told so
        tr.generator.update_weights(tr.export_weights())
    before = {n: p.detach().clone() for n, p in tr.policy.model.named_parameters()}
    m = tr.step()
    assert m["update/count"] == 1 and m["update/skipped"] == 0
    after = dict(tr.policy.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in tower)
    changed = [n for n in after if n not in tower and not torch.equal(before[n], after[n])]
    assert any(n.startswith("model.language_model.") for n in changed)
    assert all(torch.equal(gen[n], after[n].detach()) for n in gen)  # the generator in sync
    held = {id(p) for g in tr.policy.optimizer.param_groups for p in g["params"]}
    assert not held & {id(after[n]) for n in tower}


# ----------------------------------------------------------------------------- the CLI
@pytest.mark.slow  # a CLI run in a subprocess, then GRPO built on its export (~40 s here)
def test_sft_cli_end_to_end_and_grpo_loads_its_model(data_file, tmp_path):
    from mixed_r1.config import load_config
    from mixed_r1.metrics import plot_run, read_metrics
    from mixed_r1.trainer import build_trainer

    cfg = write_config(tmp_path / "sft.yaml", tiny_overrides(data_file, tmp_path / "run", steps=2)
                       + SFT + ["model.freeze_vision_tower=true", "progress=true"])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mixed_r1.cli", "sft", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert "sft step 2/2: nll " in proc.stdout and "model.path=" in proc.stdout, proc.stdout
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(k in rows[0] for k in ("loss", "token_acc", "grad_norm", "lr", "tokens"))
    assert (run / "checkpoints" / "step_00000002" / "manifest.json").is_file()
    assert (run / "config.yaml").is_file() and (run / "model" / "prompt_template.json").is_file()
    assert plot_run(run).is_file()
    for args, msg in ((["--config", str(cfg)], "--overwrite"),  # a used run directory
                      (["--config", str(cfg), "sft.target=captions"], "sft.target"),
                      (["--config", str(tmp_path / "nope.yaml")], "config file not found")):
        again = run_cli("sft", *args)  # refused before anything trains: one line, exit 2
        assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
        line, = [x for x in again.stderr.splitlines() if x.strip()]
        assert line.startswith("error: ") and msg in line, line
    grpo = load_config(None, tiny_overrides(data_file, tmp_path / "grpo") + [
        "model.kind=pretrained", f"model.path={run / 'model'}"])
    tr = build_trainer(grpo, tmp_path / "grpo")
    got = {k: v.detach() for k, v in tr.policy.model.state_dict().items()}
    from safetensors.torch import load_file

    last = load_file(str(run / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert last and all(torch.equal(got[k], v) for k, v in last.items())  # the SFT weights
