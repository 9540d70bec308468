"""vocab_parallel_token_logprobs over 2 gloo ranks against the unsharded float64 reference
(values and each rank's shard of the gradient), for the torch and the Triton (interpreted) path."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mixed_r1 import algo
from mixed_r1.kernels import HAS_TRITON, force_backend, vocab_parallel_token_logprobs

from _trainer_util import free_port

pytestmark = pytest.mark.multirank
D = torch.float64



def _worker(rank: int, world: int, port: int, backends: list[str]):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(0)  # same full tensors on every rank
        B, T, temp = 2, 5, 0.8
        for V, splits, dtype in [(1000, (500, 500), torch.float32), (1001, (400, 601), torch.bfloat16)]:
            full = (4 * torch.randn(B, T, V, generator=g)).to(dtype)
            tg = torch.randint(0, V, (B, T), generator=g)
            tg[0, 0], tg[1, 0] = 0, V - 1  # first and last id, one on each rank
            gout = torch.randn(B, T, generator=g)
            xr = full.to(D).requires_grad_()
            ref = algo.token_logprobs_ref(xr, tg, temp, dtype=D)
            (ref * gout.to(D)).sum().backward()
            start = sum(splits[:rank])
            shard = full[..., start:start + splits[rank]].clone()
            explicit = splits[0] != splits[1]
            for backend in backends:
                x = shard.clone().requires_grad_()
                with force_backend(backend):
                    lp = vocab_parallel_token_logprobs(x, tg, start if explicit else None, temperature=temp)
                (lp * gout).sum().backward()
                torch.testing.assert_close(lp.to(D), ref.detach(), atol=2e-5, rtol=2e-5)
                tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
                torch.testing.assert_close(x.grad.to(D), xr.grad[..., start:start + splits[rank]], **tol)
                assert x.grad.dtype == dtype
        # entropy from the same pass equals -sum p log p of the unsharded float64 softmax, also
        # when a shard ends in -inf columns (the padded vocab rows megatron adds under TP)
        full = 3 * torch.randn(B, T, 12, generator=g)
        full[..., -3:] = float("-inf")
        tg = torch.randint(0, 9, (B, T), generator=g)
        p = torch.softmax(full.to(D) / temp, -1)
        want = -(p * torch.log_softmax(full.to(D) / temp, -1).nan_to_num(neginf=0.0)).sum(-1)
        for backend in backends:
            with force_backend(backend):
                lp, ent = vocab_parallel_token_logprobs(full[..., rank * 6:(rank + 1) * 6].clone(), tg,
                                                        temperature=temp, return_entropy=True)
            torch.testing.assert_close(ent.to(D), want, atol=2e-5, rtol=2e-5)
            assert not ent.requires_grad
        # a target outside every shard is an error on every rank, not a silent -lse
        shard = torch.randn(B, T, 8)
        bad = torch.zeros(B, T, dtype=torch.long)
        bad[1, 2] = 16  # shards cover [0, 16)
        with pytest.raises(ValueError, match=r"target 16 \(row 7\) is owned by no rank"):
            vocab_parallel_token_logprobs(shard, bad)
    finally:
        dist.destroy_process_group()


def test_vocab_parallel_two_gloo_ranks():
    backends = ["torch"] + (["triton"] if HAS_TRITON else [])
    mp.spawn(_worker, args=(2, free_port(), backends), nprocs=2, join=True)


def test_vocab_parallel_needs_process_group():
    if dist.is_initialized():
        pytest.skip(reason="another test left a default process group initialized")
    with pytest.raises(ValueError, match="process group"):
        vocab_parallel_token_logprobs(torch.randn(1, 2, 4), torch.zeros(1, 2, dtype=torch.long))
