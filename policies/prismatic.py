"""The Prismatic VLM behind OpenVLA and OpenVLA-OFT, on native transformers parts.

OpenVLA (Kim et al. 2024) = fused vision (DINOv2 ViT-L/14 with 4 registers + SigLIP
SO400M/14, both at 224 px) -> MLP projector -> Llama-2 7B. The hub checkpoints
(`openvla/openvla-7b`, `moojink/openvla-7b-oft-*`) store the vision towers with timm names;
transformers 5 has no OpenVLA class and the hub's remote code does not run on it
(../shared/reference/models.md section 3.4), so the towers here are transformers'
`Dinov2WithRegistersModel` and `SiglipVisionModel`, the language model `LlamaForCausalLM`, and the
checkpoint's tensors go through ONE documented key mapping, `timm_to_hf` (a renaming plus the
split of timm's fused qkv into q, k, v), with `hf_to_timm` as its exact inverse for saving.

Checkpoint names (checked against the published checkpoints, docs/RESULTS.md):
    vision_backbone.featurizer.{cls_token, reg_token, pos_embed, patch_embed.proj.*,
        blocks.N.{norm1, attn.qkv, attn.proj, ls1.scale_factor, norm2, mlp.fc1, mlp.fc2,
        ls2.scale_factor}, norm.*}                                       (DINOv2, timm)
    vision_backbone.fused_featurizer.{pos_embed, patch_embed.proj.*, blocks.N.{norm1, attn.qkv,
        attn.proj, norm2, mlp.fc1, mlp.fc2}, norm.*, attn_pool.*}         (SigLIP, timm)
    projector.{fc1, fc2, fc3}.*                                          (fused-gelu-mlp)
    language_model.model.*, language_model.lm_head.weight               (Llama, HF names)
OpenVLA feeds the projector the patch tokens of each tower's SECOND-TO-LAST block
(timm `get_intermediate_layers(n={depth - 2})`), so the towers here are built one block short:
the last block, SigLIP's attention-pool head and the final norms are never computed. Their
tensors are kept aside unchanged (`unused`) so a saved checkpoint is complete again.
DINOv2's timm `pos_embed` covers the 256 patches only (no class position); the HF embedding
has one more row for the class token, which the mapping fills with zeros (the same sum).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

VISION_PREFIXES = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")


@dataclass(frozen=True)
class TowerSpec:
    """One timm ViT as Prismatic builds it. kind: dinov2 (registers, layer scale, ImageNet
    normalisation) or siglip (no class token, mean = std = 0.5)."""

    kind: str
    hidden: int
    depth: int
    heads: int
    mlp: int
    patch: int
    image_size: int
    registers: int = 0

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch) ** 2


# The timm ids Prismatic's config.json names (`timm_model_ids`), with timm's architecture for
# each at OpenVLA's 224 px. A checkpoint with other towers lists them in config.json under
# "vla_rl_vision_towers" (a field of ours; the tiny test checkpoints use it).
KNOWN_TOWERS = {
    "vit_large_patch14_reg4_dinov2.lvd142m": TowerSpec("dinov2", 1024, 24, 16, 4096, 14, 224, 4),
    "vit_so400m_patch14_siglip_224": TowerSpec("siglip", 1152, 27, 16, 4304, 14, 224),
}
IMAGE_STATS = {  # the (mean, std) each tower's timm data config uses
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def tower_specs(config: dict[str, Any]) -> list[TowerSpec]:
    """The vision towers of a Prismatic config.json, in featurizer order."""
    if "vla_rl_vision_towers" in config:
        return [TowerSpec(**spec) for spec in config["vla_rl_vision_towers"]]
    ids = config.get("timm_model_ids")
    if not ids:
        raise ValueError("config.json names no vision towers (timm_model_ids)")
    unknown = [i for i in ids if i not in KNOWN_TOWERS]
    if unknown:
        raise ValueError(
            f"vision tower {unknown[0]!r} is not supported; "
            f"valid choices: {', '.join(KNOWN_TOWERS)}"
        )
    return [KNOWN_TOWERS[i] for i in ids]


class VisionTower(nn.Module):
    """One tower on transformers' own ViT, `depth - 1` blocks deep: its output is the patch
    tokens (B, num_patches, hidden) of the timm model's second-to-last block."""

    def __init__(self, spec: TowerSpec):
        super().__init__()
        self.spec = spec
        if spec.kind == "dinov2":
            from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

            self.vit = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
                hidden_size=spec.hidden, num_hidden_layers=spec.depth - 1,
                num_attention_heads=spec.heads, mlp_ratio=spec.mlp // spec.hidden,
                image_size=spec.image_size, patch_size=spec.patch,
                num_register_tokens=spec.registers, layer_norm_eps=1e-6,
            ))  # fmt: skip
            self.prefix_tokens = 1 + spec.registers
        elif spec.kind == "siglip":
            from transformers import SiglipVisionConfig, SiglipVisionModel

            self.vit = SiglipVisionModel(SiglipVisionConfig(
                hidden_size=spec.hidden, num_hidden_layers=spec.depth - 1,
                num_attention_heads=spec.heads, intermediate_size=spec.mlp,
                image_size=spec.image_size, patch_size=spec.patch, layer_norm_eps=1e-6,
                vision_use_head=False,
            ))  # fmt: skip
            self.prefix_tokens = 0
        else:
            raise ValueError(f"unknown tower kind {spec.kind!r}; valid choices: dinov2, siglip")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.vit.embeddings(pixels)
        x = self.vit.encoder(x).last_hidden_state if self.spec.kind == "dinov2" else (
            self.vit.encoder(inputs_embeds=x).last_hidden_state
        )  # fmt: skip
        return x[:, self.prefix_tokens :]


class PrismaticProjector(nn.Module):
    """no-align+fused-gelu-mlp: fc1 (F -> 4F) GELU fc2 (-> D) GELU fc3 (D -> D);
    no-align+gelu-mlp (one tower): fc1 (F -> D) GELU fc2 (D -> D)."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(x)))
        return self.fc3(self.act(x)) if self.fused else x


class PrismaticVLM(nn.Module):
    """vision_backbone (1-2 towers, features concatenated) + projector + language_model.
    `embed_images(pixels)` gives the projected patch embeddings (B, Ncam * P, D) for
    pixel_values (B, Ncam, 3 * towers, H, W): each camera's patches, cameras one after another
    (OpenVLA-OFT's multi-image input)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.specs = tower_specs(config)
        self.towers = nn.ModuleList(VisionTower(s) for s in self.specs)
        llm = LlamaConfig(**{k: v for k, v in config["text_config"].items() if k != "model_type"})
        llm.tie_word_embeddings = False
        self.language_model = LlamaForCausalLM(llm)
        vision_dim = sum(s.hidden for s in self.specs)
        fused = config.get("arch_specifier", "no-align+fused-gelu-mlp").endswith("fused-gelu-mlp")
        self.projector = PrismaticProjector(vision_dim, llm.hidden_size, fused)
        self.num_patches = self.specs[0].num_patches
        self.unused: dict[str, torch.Tensor] = {}  # checkpoint tensors never computed (see top)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        b, n = pixels.shape[:2]
        flat = pixels.flatten(0, 1)  # (B * Ncam, 3 * towers, H, W)
        feats = [t(flat[:, 3 * i : 3 * i + 3]) for i, t in enumerate(self.towers)]
        patches = self.projector(torch.cat(feats, -1))  # (B * Ncam, P, D)
        return patches.reshape(b, n * patches.shape[1], -1)


# ---- the key mapping ---------------------------------------------------------------------------
def _tower_rename(spec: TowerSpec, rest: str) -> str | None:
    """timm name (after the featurizer prefix) -> HF name inside VisionTower.vit, or None for
    tensors this model never computes. qkv is handled by the caller."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
    if m:
        block, field = int(m.group(1)), m.group(2)
        if block >= spec.depth - 1:
            return None
        if spec.kind == "dinov2":
            names = {"norm1": "norm1", "attn.proj": "attention.o_proj", "ls1.scale_factor":
                     "layer_scale1.lambda1", "norm2": "norm2", "mlp.fc1": "mlp.fc1",
                     "mlp.fc2": "mlp.fc2", "ls2.scale_factor": "layer_scale2.lambda1"}  # fmt: skip
            layer = f"encoder.layer.{block}."
        else:
            names = {
                "norm1": "layer_norm1",
                "attn.proj": "self_attn.out_proj",
                "norm2": "layer_norm2",
                "mlp.fc1": "mlp.fc1",
                "mlp.fc2": "mlp.fc2",
            }
            layer = f"encoder.layers.{block}."
        for src, dst in names.items():
            if field == src or field.startswith(src + "."):
                return layer + dst + field[len(src) :]
        return None
    if spec.kind == "dinov2":
        table = {
            "cls_token": "embeddings.cls_token",
            "reg_token": "embeddings.register_tokens",
            "pos_embed": "embeddings.position_embeddings",
            "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
            "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        }
    else:
        table = {"pos_embed": "embeddings.position_embedding.weight",
                 "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
                 "patch_embed.proj.bias": "embeddings.patch_embedding.bias"}  # fmt: skip
    return table.get(rest)


def _attn_names(spec: TowerSpec, block: int) -> list[str]:
    if spec.kind == "dinov2":
        return [f"encoder.layer.{block}.attention.{p}_proj" for p in "qkv"]
    return [f"encoder.layers.{block}.self_attn.{p}_proj" for p in "qkv"]


def timm_to_hf(
    state: dict[str, torch.Tensor], specs: list[TowerSpec]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Checkpoint tensors -> (PrismaticVLM state dict, tensors never computed)."""
    out: dict[str, torch.Tensor] = {}
    unused: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        tower = next((i for i, p in enumerate(VISION_PREFIXES) if name.startswith(p)), None)
        if tower is None or tower >= len(specs):
            out[name] = value
            continue
        spec, rest = specs[tower], name[len(VISION_PREFIXES[tower]) :]
        prefix = f"towers.{tower}.vit."
        m = re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", rest)
        if m and int(m.group(1)) < spec.depth - 1:
            for target, part in zip(_attn_names(spec, int(m.group(1))), value.chunk(3, 0)):
                out[f"{prefix}{target}.{m.group(2)}"] = part.clone()
            continue
        target = _tower_rename(spec, rest)
        if target is None:
            unused[name] = value
        elif spec.kind == "dinov2" and rest == "pos_embed":  # prepend the class position (zero)
            out[prefix + target] = torch.cat([torch.zeros_like(value[:, :1]), value], 1)
        elif spec.kind == "siglip" and rest == "pos_embed":
            out[prefix + target] = value[0]
        else:
            out[prefix + target] = value
    return out, unused


def hf_to_timm(
    state: dict[str, torch.Tensor], specs: list[TowerSpec], unused: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The exact inverse of `timm_to_hf`: PrismaticVLM state dict -> checkpoint names."""
    inverse: dict[str, str] = {}
    for t, spec in enumerate(specs):
        base = VISION_PREFIXES[t]
        rests = ["cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight",
                 "patch_embed.proj.bias"]  # fmt: skip
        for block in range(spec.depth - 1):
            for field in ("norm1", "attn.proj", "ls1.scale_factor", "norm2", "mlp.fc1", "mlp.fc2",
                          "ls2.scale_factor"):  # fmt: skip
                rests += [f"blocks.{block}.{field}.{s}" for s in ("weight", "bias")]
                rests.append(f"blocks.{block}.{field}")
        for rest in rests:
            target = _tower_rename(spec, rest)
            if target is not None:
                inverse[f"towers.{t}.vit.{target}"] = base + rest
    out: dict[str, torch.Tensor] = dict(unused)
    for name, value in state.items():
        m = re.fullmatch(r"towers\.(\d+)\.vit\.(.+)\.(q|k|v)_proj\.(weight|bias)", name)
        if m:
            if m.group(3) != "q":
                continue
            t, spec = int(m.group(1)), specs[int(m.group(1))]
            block = int(re.search(r"\.(\d+)\.", m.group(2)).group(1))
            parts = [state[f"towers.{t}.vit.{n}.{m.group(4)}"] for n in _attn_names(spec, block)]
            out[f"{VISION_PREFIXES[t]}blocks.{block}.attn.qkv.{m.group(4)}"] = torch.cat(parts, 0)
            continue
        if (
            name.endswith("embeddings.mask_token")
            or ".layernorm." in name
            or (".post_layernorm." in name)
        ):
            continue  # HF-only tensors (the mask token; final norms live in `unused`)
        if name.startswith("towers."):
            source = inverse[name]
            if source.endswith("pos_embed"):
                value = value[:, 1:] if specs[int(name.split(".")[1])].kind == "dinov2" else (
                    value[None]
                )  # fmt: skip
            out[source] = value
        else:
            out[name] = value
    return out
