"""Two GRPO updates of a tiny text LM on the megatron-core engine, at any TP/PP/DP layout (gloo ranks).

    torchrun --nproc_per_node N tests/engine_checks.py HF_DIR OUT TP PP [dist_opt] [layers=a,b]
        [recompute=selective|full] [packed]

Every rank builds the same fixed micro-batches (4 of 2 rows: left-padded prompts of 3–6 tokens,
right-padded completions of 2–5 tokens, seeded), takes old log-probs with ``forward_logprobs``
(PPO-style, so the second update clips), reference log-probs 0.1 below them (β = 0.05, k3 KL), and
runs ``run_update`` twice at lr 1e-3 (float32). DP = N / (TP·PP). Rank 0 writes ``OUT/result.json``
(the update metrics, the old log-probs, the completion tokens and the positions each rank's LM
head computed, every rank's optimizer-state bytes: Adam moments plus
separate fp32 masters; the number of megatron activation-checkpoint forwards) and
``OUT/weights.safetensors`` (the updated weights streamed to HF names). ``packed``: the same rows
packed into one sequence per micro-batch (:func:`mixed_r1.data.prompts.pack_rows`, megatron-core THD).
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def batches(vocab: int):
    import torch

    from mixed_r1.engine import PolicyBatch

    g = torch.Generator().manual_seed(7)
    P, T, B = 6, 5, 2
    out = []
    for _ in range(4):
        ids = torch.zeros(B, P + T, dtype=torch.long)
        am = torch.zeros(B, P + T, dtype=torch.long)
        targets = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T)
        for r in range(B):
            p = int(torch.randint(3, P + 1, (1,), generator=g))
            t = int(torch.randint(2, T + 1, (1,), generator=g))
            ids[r, P - p:P] = torch.randint(1, vocab, (p,), generator=g)
            am[r, P - p:P] = 1
            comp = torch.randint(1, vocab, (t,), generator=g)
            ids[r, P:P + t] = comp
            am[r, P:P + t] = 1
            targets[r, :t] = comp
            mask[r, :t] = 1
        out.append(PolicyBatch(inputs={"input_ids": ids, "attention_mask": am}, targets=targets,
                               mask=mask, advantages=torch.randn(B, generator=g)))
    ntok = float(sum(mb.mask.sum() for mb in out))
    for mb in out:
        mb.num_items = ntok
    return out


def packed(mbs):
    """The same micro-batches with their rows packed into one ``[1, N]`` sequence without padding."""
    from mixed_r1.data.prompts import pack_rows
    from mixed_r1.engine import PolicyBatch

    out = []
    for mb in mbs:
        ids, am = mb.inputs["input_ids"], mb.inputs["attention_mask"]
        P = ids.shape[1] - mb.targets.shape[1]
        prompts = [ids[r, :P][am[r, :P].bool()].tolist() for r in range(ids.shape[0])]
        comps = [mb.targets[r][mb.mask[r].bool()].tolist() for r in range(ids.shape[0])]
        inputs, targets, mask, index = pack_rows(prompts, comps, 0)
        out.append(PolicyBatch(inputs=inputs, targets=targets, mask=mask, logit_index=index,
                               advantages=mb.advantages, num_items=mb.num_items))
    return out


def main() -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    from megatron.core.tensor_parallel import random as mrandom

    from mixed_r1.engine import LossConfig, run_update
    from mixed_r1.engine.megatron import MegatronEngine
    from mixed_r1.parallel import ParallelDims, init_parallel

    calls = [0]
    checkpoint_forward = mrandom.CheckpointFunction.forward

    def counting_forward(ctx, *args):  # recompute is real only if megatron checkpoints layers
        calls[0] += 1
        return checkpoint_forward(ctx, *args)

    mrandom.CheckpointFunction.forward = staticmethod(counting_forward)

    hf_dir, out, tp, pp = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    extra = sys.argv[5:]
    layers = next((tuple(int(x) for x in a[7:].split(",")) for a in extra
                   if a.startswith("layers=")), None)
    init_parallel(ParallelDims.from_world(tp=tp, pp=pp), seed=0)
    kw = {"pipeline_layers": layers} if layers else {}
    recompute = next((a[len("recompute="):] for a in extra if a.startswith("recompute=")), None)
    if recompute:
        kw["recompute"] = recompute
    eng = MegatronEngine.from_hf(hf_dir, out / "mcore", lr=1e-3, weight_decay=0.01,
                                 use_distributed_optimizer="dist_opt" in extra, **kw)
    from mixed_r1.parallel.schedule import find_output_layer

    head_rows = [0]  # positions that went through the LM head (this rank's last stage)
    head = find_output_layer(eng.model)
    if head is not None:
        head.register_forward_hook(
            lambda mod, args, out: head_rows.__setitem__(0, head_rows[0] + args[0].shape[0]
                                                         * args[0].shape[1]))
    mbs = batches(eng.arch.vocab_size)
    if "packed" in extra:
        mbs = packed(mbs)
    old = []
    for mb in mbs:
        mb.old_logprobs = eng.forward_logprobs(mb)
        mb.ref_logprobs = mb.old_logprobs - 0.1 * mb.mask
        old.append(mb.old_logprobs.tolist())
    cfg = LossConfig(beta=0.05, eps_low=0.2, eps_high=0.28)
    updates = [run_update(eng, mbs, cfg, 1e-3, grad_clip=1.0) for _ in range(2)]
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in eng.export_hf_weights()}

    def nbytes(t) -> int:
        return t.numel() * t.element_size()

    own = 0
    for o in eng._inner_optimizers():
        for st in o.state.values():
            own += sum(nbytes(v) for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0)
    if eng.params_dtype != torch.float32:
        own += sum(nbytes(p) for p in eng._optimizer_params())
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, own)
    heads = [None] * dist.get_world_size()
    dist.all_gather_object(heads, head_rows[0])
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(out / "weights.safetensors"))
        (out / "result.json").write_text(json.dumps({"updates": updates, "old": old,
                                                     "optimizer_bytes": per_rank,
                                                     "head_positions": heads,
                                                     "tokens": sum(float(mb.mask.sum())
                                                                   for mb in mbs),
                                                     "checkpoint_calls": calls[0]}))
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":
    main()
