"""Weight sync from a megatron policy into VLLMGenerator, run under torchrun (2 gloo ranks).

    torchrun --nproc_per_node 2 tests/rollout/sync_checks.py WORKDIR TP PP [vllm | split=N0,N1,..]

Rank 0 builds two tiny HF Qwen2 models, A (seed 0, what vLLM starts from) and B (seed 1,
converted to mcore at TP/PP and loaded into the megatron policy). With ``split=2,1`` both have
sum(split) layers and B is converted with that uneven pipeline split. Every rank streams the
policy's shards; the streamed HF tensors must equal B's bit for bit. With ``vllm``: a vLLM
engine (external launcher, TP = the training TP) serving A receives the stream and must then
decode like transformers does with B. Rank 0 prints one ``RESULT {json}`` line.
"""
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, str(Path(__file__).parent))

if __name__ == "__main__":
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file

    from vllm_checks import build_tiny, hf_greedy

    workdir, tp, pp = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    with_vllm = len(sys.argv) > 4 and sys.argv[4] == "vllm"
    split = None
    if len(sys.argv) > 4 and sys.argv[4].startswith("split="):
        split = [int(x) for x in sys.argv[4][len("split="):].split(",")]
    n_layers = 2 if split is None else sum(split)
    torch.set_num_threads(1)
    from mixed_r1.models.qwen2 import load_policy
    from mixed_r1.parallel import ParallelDims, init_parallel

    init_parallel(ParallelDims.from_world(tp=tp, pp=pp))
    rank = dist.get_rank()
    if rank == 0:
        from mixed_r1.models import hf_to_mcore

        build_tiny(str(workdir / "A"), seed=0, num_layers=n_layers)
        build_tiny(str(workdir / "B"), seed=1, num_layers=n_layers)
        hf_to_mcore(workdir / "B", workdir / "mcore", tp=tp, pp=pp, pipeline_layers=split)
    dist.barrier()
    model, arch = load_policy(workdir / "mcore")
    from mixed_r1.rollout.weight_sync import MegatronWeightStream, sync_weights

    reference = {}
    for f in sorted((workdir / "B").glob("*.safetensors")):
        reference.update(load_file(f))
    result = {}
    stream = MegatronWeightStream(model, arch, bucket_bytes=20_000)  # several buckets
    got = dict(stream)
    result["names_equal"] = sorted(got) == sorted(reference)
    result["bit_exact"] = all(torch.equal(got[k], reference[k]) for k in reference if k in got)
    result["specs_match"] = stream.specs() == {k: tuple(v.shape) for k, v in reference.items()}
    result["n_buckets"] = sum(1 for _ in stream._buckets())
    result["stream_layers"] = list(stream.layers)
    stage_layers = [None] * dist.get_world_size()  # what megatron built on each rank's stage
    dist.all_gather_object(stage_layers, (dist.get_rank(), len(model.decoder.layers)))
    result["built_layers"] = [n for _, n in sorted(stage_layers)]
    if with_vllm:
        from mixed_r1.rollout.base import Prompt, SamplingParams
        from mixed_r1.rollout.vllm_backend import VLLMGenerator
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(workdir / "A")
        gen = VLLMGenerator(workdir / "A", dtype="float32", tensor_parallel_size=tp,
                            max_model_len=256, max_num_seqs=8, tokenizer=tok)
        texts = ["abc", "hello world", "the quick brown fox"]
        prompts = [Prompt(text=t) for t in texts]
        greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
        result["before"] = [c.token_ids for c in gen.generate(prompts, 1, greedy)]
        start = time.perf_counter()
        sync_weights(MegatronWeightStream(model, arch, bucket_bytes=20_000), gen)
        result["sync_s"] = time.perf_counter() - start
        result["after"] = [c.token_ids for c in gen.generate(prompts, 1, greedy)]
        if rank == 0:
            from transformers import AutoModelForCausalLM

            b = AutoModelForCausalLM.from_pretrained(workdir / "B", dtype=torch.float32).eval()
            ids = [tok.encode(t, add_special_tokens=False) for t in texts]
            result["hf_b"] = hf_greedy(b, ids, 16)
    dist.barrier()
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    if with_vllm:
        gen.close()
    os._exit(0)  # skip vLLM/gloo teardown
