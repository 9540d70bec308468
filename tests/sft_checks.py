"""One ``mixed-r1 sft`` step with ``model.freeze_vision_tower``, run inside another check's process
(tests/mcore_trainer_checks.py with ``sft``: the megatron-core backend under torchrun, or the HF
backend in one process), so the megatron check costs no extra spawn.

:func:`sft_step` builds the SFT trainer from the caller's overrides (its own run directory), takes
one step on the stream's first batch (the same rows on both backends: same seed and data), and
reports its metrics and what it checked on every rank (all-reduced): the vision tower streamed out
bit-identical after the step, the language model and merger changed, no optimizer state or
gradient buffer for a frozen parameter, and a trainable-only export without the tower.

:func:`part_lr_step` (``partlr``) builds another SFT trainer in the same world with nothing frozen
and the parts' own learning rates (:data:`PART_LRS`: ``optim.lr`` 1e-4, ``optim.vision_lr`` 1e-3,
``optim.merger_lr`` 3e-4), takes one step and reports each part's largest weight change: the
step is a bias-corrected first AdamW step, so it is about the part's rate.
"""
from __future__ import annotations

from pathlib import Path

SFT_OVERRIDES = ["sft.batch_size=4", "sft.micro_batch_size=2", "optim.lr=1e-2",
                 "model.freeze_vision_tower=true", "steps=1"]


def sft_step(overrides: list[str], out: Path) -> dict:
    import torch
    import torch.distributed as dist

    from mixed_r1.config import load_config
    from mixed_r1.sft import build_sft_trainer

    run = Path(out) / "run_sft"
    cfg = load_config(None, list(overrides) + SFT_OVERRIDES + [f"out_dir={run}"])
    tr = build_sft_trainer(cfg, run)
    engine = tr.policy

    def weights() -> dict:  # collective on megatron: every rank iterates the stream
        return {k: v.detach().cpu().clone() for k, v in engine.export_hf_weights()}

    before = weights()
    m = tr.step()
    after = weights()
    sent = [k for k, _ in engine.export_hf_weights(trainable_only=True)]

    def tower(name: str) -> bool:
        return ".visual." in f".{name}" and ".merger." not in name

    ok = {
        "tower_unchanged": all(torch.equal(before[k], after[k]) for k in before if tower(k)),
        "tower_present": any(tower(k) for k in before),
        "lm_changed": any(not torch.equal(before[k], after[k]) for k in before
                          if ".visual." not in f".{k}"),
        "merger_changed": any(not torch.equal(before[k], after[k]) for k in before
                              if ".merger." in k),
        "tower_not_sent": not any(tower(k) for k in sent) and any(".merger." in k for k in sent),
    }
    module = getattr(engine, "module", engine.model)  # megatron: this rank's shard
    frozen = [p for p in module.parameters() if not p.requires_grad]
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    opt = getattr(engine, "_optimizer_params", None)
    held = (opt() if opt is not None else
            [p for g in engine.optimizer.param_groups for p in g["params"]])
    ok["optimizer_trainable_only"] = (bool(frozen) and sum(p.numel() for p in held) == trainable
                                      and not {id(p) for p in held} & {id(p) for p in frozen})
    ok["no_frozen_grads"] = all(getattr(p, "main_grad", None) is None and p.grad is None
                                for p in frozen)
    if dist.is_initialized():  # every rank's verdict
        flags = torch.tensor([0.0 if v else 1.0 for v in ok.values()])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        ok = {k: bool(f == 0) for k, f in zip(ok, flags.tolist())}
    keep = ("loss", "token_acc", "grad_norm", "tokens", "update/rel_change", "update/skipped")
    return {"metrics": {k: m[k] for k in keep}, "checks": ok,
            "frozen_counts": getattr(engine, "frozen_counts", None)}


PART_LRS = {"vision_tower": 1e-3, "merger": 3e-4, "language_model": 1e-4}


def hf_part(name: str) -> str:
    """The part (:data:`mixed_r1.models.freeze.PARTS`) of an HF-named policy tensor."""
    if ".merger." in name:
        return "merger"
    return "vision_tower" if ".visual." in f".{name}" else "language_model"


def part_lr_step(overrides: list[str], out: Path, processor=None) -> dict:
    """One SFT step of a trainer built from ``overrides`` with :data:`PART_LRS` (own run
    directory; ``processor``: reuse this one instead of loading the tokenizer again). Returns
    ``max_change``: per part, the largest |Δw| of the streamed HF tensors (every rank), the
    step's ``lr``, the optimizer's param groups as ``(lr_mult, wd_mult)`` pairs, ``reloaded``
    (the step's checkpoint state loads back into the engine, each group keeping its
    ``lr_mult``) and the check's wall time ``seconds``."""
    import time

    import mixed_r1.trainer as trainer_mod
    from mixed_r1.config import load_config
    from mixed_r1.sft import build_sft_trainer

    t0 = time.perf_counter()
    run = Path(out) / "run_part_lr"
    cfg = load_config(None, list(overrides) + [
        "sft.batch_size=4", "sft.micro_batch_size=2", "steps=1",
        *(f"optim.{k}={PART_LRS[p]}" for k, p in (("lr", "language_model"),
                                                   ("vision_lr", "vision_tower"),
                                                   ("merger_lr", "merger"))),
        f"out_dir={run}"])
    real = trainer_mod.build_processor
    if processor is not None:
        trainer_mod.build_processor = lambda cfg: processor
    try:
        tr = build_sft_trainer(cfg, run)
    finally:
        trainer_mod.build_processor = real
    before = {k: v.detach().cpu().clone() for k, v in tr.policy.export_hf_weights()}
    m = tr.step()
    change: dict = {}
    for k, v in tr.policy.export_hf_weights():  # collective on megatron
        part = hf_part(k)
        d = float((v.detach().cpu() - before[k]).abs().max())
        change[part] = max(change.get(part, 0.0), d)
    # the optimizer's param groups as (lr_mult, wd_mult) (megatron-core's groups carry wd_mult:
    # 0 for biases and 1-D parameters; the HF engine's carry weight_decay instead: None)
    groups = sorted({(round(g["lr_mult"], 6), g.get("wd_mult"))
                     for g in tr.policy.optimizer.param_groups}, key=str)
    # this step's checkpoint state loaded back (what a resume does): the groups fit, lr_mult kept
    mults = [g["lr_mult"] for g in tr.policy.optimizer.param_groups]
    state = tr.policy.state_dict_for_checkpoint()
    tr.policy.load(state["model"], state["optimizer"])
    reloaded = [g["lr_mult"] for g in tr.policy.optimizer.param_groups] == mults
    return {"max_change": change, "lr": m["lr"], "skipped": m["update/skipped"],
            "groups": groups, "reloaded": reloaded, "seconds": time.perf_counter() - t0}

