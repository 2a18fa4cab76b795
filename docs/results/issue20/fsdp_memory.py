"""What --<method>.fsdp saves per rank: the bytes of the training state (weights, gradients,
Adam's two moments) that each of N gloo ranks holds between calls, for the bundled bases,
against one process. The gradients are set to zeros of each parameter's shape and one Adam
step makes the moments, as a training step would. During a call of the policy's compute
methods the weights are gathered whole (vla_rl/rl/fsdp.py), so the peak adds one whole copy of
the weights on top of the numbers here. Usage:

    python docs/results/issue20/fsdp_memory.py OUT.json
"""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from vla_rl.core.policy import load_policy
from vla_rl.io.provenance import provenance
from vla_rl.rl.fsdp import shard_policy

BASES = ("metaworld-flow", "metaworld-tokenvla")


def local_bytes(tensors) -> int:
    """Bytes this rank holds of the tensors: a shard's local part, a plain tensor whole."""
    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def training_state(base: str, shard: bool) -> dict:
    policy = load_policy(base)
    if shard:
        shard_policy(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.Adam(params, lr=1e-4)
    optimizer.step()
    moments = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    return {
        "weights_mb": local_bytes(params) / 2**20,
        "gradients_mb": local_bytes(p.grad for p in params) / 2**20,
        "adam_moments_mb": local_bytes(moments) / 2**20,
    }


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(HF_HUB_OFFLINE="1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)  # fmt: skip
    try:
        result = {base: training_state(base, shard=True) for base in BASES}
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    out = sys.argv[1]
    rows = {base: {"1 process": training_state(base, shard=False)} for base in BASES}
    for n in (2, 4):
        torch.multiprocessing.spawn(worker, args=(n, free_port(), out), nprocs=n, join=True)
        for r in range(n):
            with open(f"{out}.rank{r}.json") as f:
                for base, state in json.load(f).items():
                    rows[base][f"{n} ranks, rank {r}"] = state
            os.remove(f"{out}.rank{r}.json")
    for base, by_run in rows.items():
        print(base)
        for run, state in by_run.items():
            total = sum(state.values())
            print(f"  {run:18s} " + "  ".join(f"{k} {v:7.3f}" for k, v in state.items())
                  + f"  total {total:7.3f} MB")  # fmt: skip
    with open(out, "w") as f:
        json.dump({"rows": rows, "provenance": provenance()}, f, indent=1)
