"""Every tensor a collective receives during a GRPO step lives on the device (NCCL's rule), checked
on CPU/gloo under a CUDA-like device map. Run under torchrun:

    torchrun --nproc_per_node 4 tests/collective_device_checks.py OUT DATA

On a GPU job the default device is the host: a tensor created without ``device=`` (or moved with
``.cpu()``) is a host tensor, and NCCL rejects it. On this CPU machine host and device are both
"cpu", so the check tracks where each tensor *would* live on a GPU:

- a :class:`torch.overrides.TorchFunctionMode` marks tensors made by factory functions without a
  ``device`` (``torch.zeros(3)``, ``torch.tensor([...])``), ``.cpu()`` and ``.to("cpu")`` results,
  as *host*; results of ops whose tensor inputs are all host are host; ``.to(<torch.device>)`` /
  ``.cuda()`` give device tensors; everything else (parameters, activations, tensors made with
  ``device=``) is device. (An explicit ``device=torch.device("cpu")`` cannot be told from the rank's
  device on a CPU-only machine; the project passes the engine's device object for that.)
- every tensor-carrying collective of ``torch.distributed`` (wrapped before megatron-core imports
  it) records each tensor it receives, and a host tensor or one off the rank's device is a violation.

The step: tiny Qwen2.5-VL, bf16, megatron-core backend at TP=2 × DP=2 with the distributed optimizer
and PP-free weight sync, HF generation on rank 0. A negative control (a host tensor all-reduced
under the same tracker) must be caught. Rank 0 writes ``OUT/result.json`` with the collectives
seen per kind and the violations (with the calling frame) of every rank.
"""
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.distributed_c10d as c10d  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "_all_gather_base",
               "reduce_scatter", "reduce_scatter_tensor", "_reduce_scatter_base", "reduce", "send",
               "recv", "isend", "irecv", "all_to_all", "all_to_all_single", "gather", "scatter")
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.arange,
             torch.as_tensor, torch.randn, torch.rand, torch.randint, torch.randperm, torch.linspace,
             torch.eye}
SEEN: dict[str, int] = {}
VIOLATIONS: list[str] = []
EXPECTED = torch.device("cpu")
ACTIVE = [False]


def _is_host(t: torch.Tensor) -> bool:
    return bool(getattr(t, "_host_tensor", False))


def _tag(out, inputs, host: bool) -> None:
    ids = {id(t) for t in inputs}
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor) and id(t) not in ids:  # in-place results keep their tag
            t._host_tensor = host


class HostTracker(TorchFunctionMode):
    """Marks tensors that would live on the host of a GPU job (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        out = func(*args, **kwargs)
        if func in FACTORIES:
            _tag(out, inputs, host=kwargs.get("device") is None)
        elif func is torch.Tensor.cpu:
            if out is args[0]:
                out = out.clone()
            _tag(out, [], host=True)
        elif func in (torch.Tensor.to, torch.Tensor.cuda) and \
                _device_move(func, args, kwargs) is not None:
            to_device = _device_move(func, args, kwargs)
            if out is args[0] and _is_host(out) == to_device:
                out = out.clone()  # on a GPU this is a copy between host and device
            _tag(out, [], host=not to_device)
        elif inputs:
            _tag(out, inputs, host=all(_is_host(t) for t in inputs))
        return out


def _device_move(func, args, kwargs) -> bool | None:
    """For ``Tensor.to``/``Tensor.cuda``: True when it targets the compute device (``.cuda()``, or a
    ``torch.device``/tensor argument, as code that means the rank's device passes), False for a
    literal ``"cpu"`` string (a host move on a GPU job), None when it moves no device (dtype only)."""
    if func is torch.Tensor.cuda:
        return True
    dev = kwargs.get("device", args[1] if len(args) > 1 else None)
    if isinstance(dev, str):
        return not dev.startswith("cpu")
    if isinstance(dev, (torch.device, torch.Tensor)):
        return True
    return None


DEPTH = [0]  # > 0 inside a recorded call (c10d re-enters through __torch_function__)


def _record(name: str, orig):
    def wrapper(*args, **kwargs):
        if ACTIVE[0] and DEPTH[0] == 0:
            SEEN[name] = SEEN.get(name, 0) + 1
            if name not in OBJECT_COLLECTIVES:  # those place their own buffers (torch's rule)
                for t in tree_flatten((args, kwargs))[0]:
                    if isinstance(t, torch.Tensor) and (_is_host(t) or t.device != EXPECTED):
                        where = " | ".join(line.strip() for line in
                                           traceback.format_stack(limit=5)[:-1])
                        VIOLATIONS.append(f"rank {dist.get_rank()} {name}: tensor {tuple(t.shape)} "
                                          f"{t.dtype} {'host' if _is_host(t) else t.device} at "
                                          f"{where}")
        DEPTH[0] += 1
        try:
            return orig(*args, **kwargs)
        finally:
            DEPTH[0] -= 1

    return wrapper


# Object collectives pickle into byte tensors that torch itself places on the group's device
# (``_get_object_coll_device``: the current CUDA device for NCCL); they are counted, not checked.
OBJECT_COLLECTIVES = ("broadcast_object_list", "all_gather_object", "gather_object",
                      "scatter_object_list")
for _name in COLLECTIVES + OBJECT_COLLECTIVES:  # before megatron-core binds any of them
    if hasattr(c10d, _name):
        _w = _record(_name, getattr(c10d, _name))
        setattr(c10d, _name, _w)
        if hasattr(dist, _name):
            setattr(dist, _name, _w)


def main() -> None:
    torch.set_num_threads(1)
    from _trainer_util import spread_rewards, tiny_overrides
    from mixed_r1.config import load_config
    from mixed_r1.trainer import build_trainer

    out, data = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = load_config(None, tiny_overrides(data, out / "run", steps=1) + [
        "model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=4",
        "model.num_kv_heads=2", "model.dtype=bfloat16", "parallel.backend=mcore", "parallel.tensor_parallel=2",
        "parallel.data_parallel=2", "parallel.distributed_optimizer=true", "algo.ppo_epochs=2",
        "algo.beta=0.05"])
    trainer = build_trainer(cfg, out / "run")
    global EXPECTED
    EXPECTED = trainer.policy.device
    spread_rewards(trainer)  # non-zero advantages from a random tiny policy
    with HostTracker():
        ACTIVE[0] = True
        metrics = trainer.step()
        n_step = len(VIOLATIONS)
        dist.all_reduce(torch.zeros(1))  # negative control: a host tensor
        ACTIVE[0] = False
    caught = len(VIOLATIONS) == n_step + 1
    del VIOLATIONS[n_step:]
    report = {"seen": SEEN, "violations": VIOLATIONS, "control_caught": caught,
              "updates": metrics.get("update/count", 0.0), "skipped": metrics.get("update/skipped")}
    reports = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(reports))
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":
    main()
