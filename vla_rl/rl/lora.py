"""LoRA adapters (peft) on any policy, and merging them back so the result saves in its family's
own checkpoint format (loadable by `vla-rl eval` without peft)."""

from __future__ import annotations

from torch import nn


def add_lora(policy: nn.Module, rank: int, alpha: float) -> int:
    """Inject LoRA adapters of `rank` into every linear layer of `policy` (peft's "all-linear"),
    freeze everything else, and return the number of trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear"),
                            policy)  # fmt: skip
    for name, param in policy.named_parameters():
        param.requires_grad_("lora_" in name)
    return sum(p.numel() for p in policy.parameters() if p.requires_grad)


def merge_lora(policy: nn.Module) -> None:
    """Fold every adapter into its base layer's weight and put the plain layer back in place, so
    the parameter names are the family's own again."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, m) for name, m in policy.named_modules() if isinstance(m, LoraLayer)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = policy.get_submodule(parent_name) if parent_name else policy
        setattr(parent, child, module.get_base_layer())
    for param in policy.parameters():
        param.requires_grad_(True)
