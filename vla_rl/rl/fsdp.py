"""Sharded weights for the data-parallel learner: FSDP2 (`torch.distributed.fsdp.fully_shard`).

With `--<method>.fsdp` under torchrun, every rank holds 1/N of the policy's weights, gradients
and Adam moments between calls instead of all of them (vla_rl.rl.distributed replicates them).
FSDP gathers a module's weights in the hooks of its `forward` and frees them after; a policy's
compute enters through its own methods (`sample_actions`, `log_prob_terms`,
`observation_features`), not `forward`, so `shard_policy` registers those methods for the
hooks (`register_fsdp_forward_method`): the whole policy is gathered for the length of one
call. A family can declare smaller units (`BasePolicy.fsdp_units`: blocks whose weights only
their own forward reads; no family does yet), gathered one at a time inside a call. Sharding
each torch.nn layer blindly is wrong: a layer's weight read outside its forward (the token
head of `tokenvla`, `nn.MultiheadAttention`'s output projection) would be a shard there.

What that asks of the caller, because every gather and every gradient reduction is a
collective:
- all ranks run the same calls in the same order (the same rollouts, shards padded to equal
  length: `vla_rl.methods.on_policy.policy_update`);
- code that runs on rank 0 alone (evaluation, writing the result) works on an unsharded copy
  made from `full_state_dict`, which every rank calls;
- gradient clipping sums the squared norms of the shards over the ranks (`clip_grad_norm`);
- checkpoints hold the full weights and optimizer state (`full_state_dict`,
  `full_optimizer_state`), so a run resumes with any number of ranks, or none, and a run
  without --fsdp resumes with it and back (`load_optimizer_state` reads both formats).

Backends: gloo with the policy on the CPU (tested here: tests/test_distributed.py), NCCL with
the policy on its rank's GPU (not run here: no GPU on the reference machine).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor

from vla_rl.core.policy import BasePolicy

# The policy methods that compute with its weights (vla_rl.core.policy.BasePolicy); others
# (log_prob, sample_candidates) go through these, and a registered method must not call
# another registered one.
FORWARD_METHODS = ("sample_actions", "log_prob_terms", "observation_features")


def shard_policy(policy: BasePolicy) -> int:
    """fully_shard the policy's declared units (`BasePolicy.fsdp_units`) and then
    the policy itself, in place, with its compute methods registered for FSDP's hooks; returns
    how many units were sharded, the policy included. Call after the weights are loaded and
    equal on every rank (fully_shard keeps each rank's slice of the weights it finds)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    units = list(policy.fsdp_units())
    for unit in [*units, policy]:
        # Explicitly True: the policy is FSDP's root, and by default a root keeps its weights
        # gathered after its forward, which would leave them whole between calls.
        fully_shard(unit, reshard_after_forward=True)
    for name in FORWARD_METHODS:
        if hasattr(policy, name):
            register_fsdp_forward_method(policy, name)
    return len(units) + 1


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether any of the module's parameters is a shard (shard_policy ran on it)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with every shard gathered into the whole tensor, on the CPU.
    A collective when the module is sharded: every rank must call it, in the same order."""
    out = {}
    for name, value in module.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[name] = value.detach().cpu().clone()
    return out


def full_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict with the shards of its moments gathered (keyed as
    module.state_dict()'s names), loadable by `load_optimizer_state` with any number of ranks.
    A collective: every rank calls it; rank 0 gets the whole state, the others an empty dict
    (torch's rule with cpu_offload: the one writer holds it, not N copies on the CPU)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(module, optimizer, options=options)


def by_name(optimizer_state: dict) -> bool:
    """Whether an optimizer state dict is `full_optimizer_state`'s (keyed by parameter name)
    rather than torch's own (keyed by index)."""
    groups = optimizer_state.get("param_groups", [])
    return any(isinstance(i, str) for g in groups for i in g.get("params", []))


def load_optimizer_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load an optimizer state into the optimizer of `module`, sharded or not, whichever format
    it is in: `full_optimizer_state`'s (by name) or torch's own (by index, in the order of the
    optimizer's parameters), so a run resumes under --fsdp from a run without it and back. A
    collective when the module is sharded: every rank calls it with the same state (each rank
    keeps its slice)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not by_name(state):
        state = keyed_by_name(module, optimizer, state)
    # the loaded param groups carry the writer's settings; foreach must stay the reader's
    # (Adam's multi-tensor path cannot mix shards and plain tensors)
    foreach = [group.get("foreach") for group in optimizer.param_groups]
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(module, optimizer, state, options=options)
    for group, value in zip(optimizer.param_groups, foreach, strict=True):
        group["foreach"] = value


def keyed_by_name(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """torch's optimizer state dict (keyed by each parameter's index in the optimizer's
    groups) keyed by the parameters' names in `module` instead, as `full_optimizer_state`
    writes it."""
    names = {id(p): n for n, p in module.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]
        ],  # fmt: skip
    }


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over sharded and replicated gradients together: the
    total norm squares each shard's local part, sums that over the ranks, and adds the
    replicated gradients once (they are equal on every rank after `average_gradients`).
    Returns the norm before clipping (the same on every rank)."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    local = torch.zeros((), dtype=torch.float64)
    for g in sharded:
        local += g.detach().double().pow(2).sum().cpu()
    if sharded and dist.is_initialized():
        device = sharded[0].device  # the collective's device: where the shards live
        local = local.to(device)
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
        local = local.cpu()
    for g in plain:
        local += g.detach().double().pow(2).sum().cpu()
    norm = local.sqrt()
    scale = max_norm / (float(norm) + 1e-6)
    if scale < 1.0:  # torch's rule: scale by max_norm / (norm + 1e-6) when the norm exceeds it
        for g in grads:  # a shard scales in place like any tensor
            g.mul_(scale)
    return norm.float()
