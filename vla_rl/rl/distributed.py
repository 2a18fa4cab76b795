"""Data-parallel learning with torch.distributed: the few collectives an on-policy update needs.

N learner processes (torchrun, one per GPU or CPU core group) hold the same weights and the same
batch. Each minibatch is split into N shards (`shard`); every rank backpropagates its share of the
minibatch loss, the gradients are averaged (`average_gradients`), and every rank takes the same
optimizer step, so the weights stay identical without being sent again. Everything here is an
identity when no process group is initialised (one process, the tests, `vla-rl` without
torchrun), so callers never branch on it.

Backend: NCCL when CUDA is available (gradients live on the GPU), else gloo (CPU). A model
that stays on the CPU beside NCCL (the bundled native policies) has its tensors copied to the
GPU and back for each collective.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

S = TypeVar("S", bound=Sequence)
T = TypeVar("T")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(timeout_s: float = 600.0) -> bool:
    """Join the process group torchrun describes in the environment; True when one is running.

    Reads RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/MASTER_PORT (torchrun sets all of them).
    Unset WORLD_SIZE or WORLD_SIZE=1 is a plain single-process run: nothing is initialised.
    A process group that already exists is kept (calling twice is harmless)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return False
    if _active():
        return True
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} unset: launch with "
            "`torchrun --nproc_per_node N ...`, which sets them"
        )
    rank = int(os.environ["RANK"])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # one GPU per process: rank r on this node uses GPU LOCAL_RANK
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )  # fmt: skip
    return True


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without a process group."""
    if not _active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True on the one process that logs, writes checkpoints and results (rank 0)."""
    return world()[0] == 0


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of `rank`'s shard of n items: contiguous, sizes differ by at most one
    (the first n % world_size ranks get the extra item, as torch.tensor_split)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(indices: S, rank: int, world_size: int) -> S:
    """`rank`'s contiguous slice of a minibatch's sample indices.

    Contiguous, not strided: the minibatch is already a random permutation, so either slice is
    an unbiased draw; contiguous slices put back together by plain concatenation in rank order
    (`gather_shards`), which a strided split would have to interleave. Shards may be empty when
    the minibatch is smaller than the world; callers weight by len(shard) / len(indices)."""
    start, end = shard_bounds(len(indices), rank, world_size)
    return indices[start:end]


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each parameter's .grad by its mean over the ranks (all_reduce SUM / world_size).

    One flattened bucket per (device, dtype) and a single all_reduce each: one big message
    instead of one per tensor. A rank whose shard did not touch a parameter (grad None) adds
    zeros, which is its true gradient; a parameter without a gradient on every rank keeps None,
    so optimizers that skip such parameters (Adam's moments) behave as in one process. Each
    bucket carries one presence flag per parameter to tell the two apart. Shards of an FSDP
    layer (vla_rl.rl.fsdp) are skipped: FSDP reduces their gradients itself."""
    if not _active() or dist.get_world_size() == 1:
        return
    world_size = dist.get_world_size()
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.nn.Parameter]] = {}
    for p in params:
        if _is_shard(p):  # FSDP's own reduce-scatter has averaged it (vla_rl.rl.fsdp)
            continue
        buckets.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), group in buckets.items():
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
        present = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=device)
        flat = torch.cat([*grads, present]).to(_collective_device())
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.to(device)
        sizes = [p.numel() for p in group]
        *summed, flags = flat.split([*sizes, len(group)])
        for p, g, flag in zip(group, summed, flags):
            p.grad = (g / world_size).view_as(p) if flag > 0 else None


def _is_shard(p: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy `src`'s parameters and buffers into every rank's module (in place), so all ranks
    start from the same weights whatever their own initialisation drew."""
    if not _active():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            sent = tensor.data.to(_collective_device())  # the tensor itself where it can be
            dist.broadcast(sent, src)
            if sent is not tensor.data:
                tensor.data.copy_(sent)


def _collective_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over the ranks (for metrics: every rank adds its weighted share)."""
    if not _active() or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_equal(values: list[float]) -> bool:
    """Whether every rank passed the same values (exactly: a MAX reduction of the values and of
    their negatives gives each one's largest and smallest over the ranks). True alone."""
    if not _active() or not values:
        return True
    t = torch.tensor([*values, *(-v for v in values)], dtype=torch.float64,
                     device=_collective_device())  # fmt: skip
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    largest, smallest = t[: len(values)], -t[len(values) :]
    return bool(torch.equal(largest, smallest))


def broadcast_object(obj: T, src: int = 0) -> T:
    """`src`'s `obj` (any picklable object) on every rank; `obj` itself alone. For small things
    (a results dict, a small module's state dict); weights go through `broadcast_parameters`."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for alone)."""
    if _active():
        dist.barrier()


def gather_shards(local: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's `shard` of a length-`total` dim 0, concatenated in rank order: the whole
    tensor (total, ...) on every rank. `local` is this rank's shard (it may be empty only if
    its trailing shape is right). all_gather wants equal sizes, so shards are padded to the
    largest and cut back; the sizes come from `shard_bounds`, not from a message."""
    world_size = world()[1]
    if world_size == 1:
        return local
    largest = -(-total // world_size)
    device = local.device
    padded = local.new_zeros((largest, *local.shape[1:])).to(_collective_device())
    padded[: len(local)] = local.to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    sizes = [end - start for start, end in (shard_bounds(total, r, world_size)
                                            for r in range(world_size))]  # fmt: skip
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(device)
