"""SmolVLA's network (`SmolVLAModel`): SmolVLM's vision + text layers and the action expert, with
`lerobot/smolvla_base`'s tensor names. The policy adapter around it (loading, normalisation, the
flow chain for RL) is vla_rl/policies/smolvla.py, which documents the forward pass; the tiny
checkpoint writer (smolvla_tiny.py) builds this network without the adapter, so the two share
it from here instead of importing each other.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def apply_rope(x: torch.Tensor, positions: torch.Tensor, max_wavelength: float = 10_000.0):
    """RoPE on x (B, L, H, hd) at positions (B, L), rotating the two halves (lerobot's form)."""
    half = x.shape[-1] // 2
    freq = max_wavelength ** ((2.0 / x.shape[-1]) * torch.arange(half, device=x.device).float())
    radians = (positions[..., None].float() / freq)[..., None, :]
    sin, cos = radians.sin(), radians.cos()
    x1, x2 = x.float().split(half, -1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


def expert_intermediate_size(hidden: int, multiplier: int = 4, multiple_of: int = 256) -> int:
    hidden = int(multiplier * int(2 * hidden / 3))
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def block_mask(pad: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """(B, L, L) bool: query i sees key j when j's block <= i's block and both are real tokens.
    blocks (B, L): 1 where a new block starts (lerobot's att_masks)."""
    cum = blocks.long().cumsum(1)
    return (cum[:, None, :] <= cum[:, :, None]) & (pad[:, None, :] & pad[:, :, None])


def sinusoidal_time(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0):
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None] * t[:, None].double()
    return torch.cat([angle.sin(), angle.cos()], 1).float()


class SmolVLAModel(nn.Module):
    """`model.*` of a SmolVLA checkpoint."""

    def __init__(self, cfg: dict[str, Any], vlm_config):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel, SmolVLMForConditionalGeneration

        self.cfg = cfg
        wrapper = nn.Module()
        wrapper.vlm = SmolVLMForConditionalGeneration(vlm_config)
        text = wrapper.vlm.model.text_model
        text.layers = text.layers[: cfg.get("num_vlm_layers", 16)]
        self.num_layers = len(text.layers)
        self.every = cfg.get("self_attn_every_n_layers", 2)
        tc = vlm_config.text_config
        ec = LlamaConfig(**copy.deepcopy(tc.to_dict()))
        ec.hidden_size = int(tc.hidden_size * cfg.get("expert_width_multiplier", 0.75))
        ec.intermediate_size = expert_intermediate_size(ec.hidden_size)
        ec.num_hidden_layers = self.num_layers
        ec.head_dim = tc.head_dim
        expert = LlamaModel(ec)
        kv = tc.num_key_value_heads * tc.head_dim
        for i, layer in enumerate(expert.layers):
            if self.every > 0 and i % self.every == 0:
                continue
            layer.self_attn.k_proj = nn.Linear(kv, ec.num_key_value_heads * ec.head_dim, bias=False)
            layer.self_attn.v_proj = nn.Linear(kv, ec.num_key_value_heads * ec.head_dim, bias=False)
        expert.embed_tokens = None
        wrapper.lm_expert = expert
        self.vlm_with_expert = wrapper
        self.heads, self.kv_heads, self.head_dim = (
            tc.num_attention_heads,
            tc.num_key_value_heads,
            tc.head_dim,
        )
        max_state, max_action = cfg.get("max_state_dim", 32), cfg.get("max_action_dim", 32)
        self.state_proj = nn.Linear(max_state, tc.hidden_size)
        self.action_in_proj = nn.Linear(max_action, ec.hidden_size)
        self.action_out_proj = nn.Linear(ec.hidden_size, max_action)
        self.action_time_mlp_in = nn.Linear(2 * ec.hidden_size, ec.hidden_size)
        self.action_time_mlp_out = nn.Linear(ec.hidden_size, ec.hidden_size)
        self.expert_hidden = ec.hidden_size

    @property
    def vlm(self):
        return self.vlm_with_expert.vlm.model

    def attention(self, q, k, v, mask):
        """Eager attention with grouped KV heads, float32 softmax: q (B, S, H, hd),
        k / v (B, L, Hkv, hd), mask (B, S, L) bool -> (B, S, H * hd)."""
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, 2), v.repeat_interleave(groups, 2)
        scores = torch.einsum("bshd,blhd->bhsl", q.float(), k.float()) * self.head_dim**-0.5
        scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
        probs = scores.softmax(-1).to(v.dtype)
        return torch.einsum("bhsl,blhd->bshd", probs, v).flatten(2)

    def embed_prefix(self, images: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                     state: torch.Tensor):  # fmt: skip
        """images (B, Ncam, 3, H, W) in [-1, 1] -> embeddings (B, P, D), pad mask, block starts."""
        b, n = images.shape[:2]
        feats = self.vlm.vision_model(pixel_values=images.flatten(0, 1)).last_hidden_state
        feats = self.vlm.connector(feats)
        feats = feats * math.sqrt(feats.shape[-1])
        img = feats.reshape(b, n * feats.shape[1], -1)
        lang = self.vlm.text_model.get_input_embeddings()(tokens)
        lang = lang * math.sqrt(lang.shape[-1])
        embeds = torch.cat([img, lang, self.state_proj(state)[:, None]], 1)
        pad = torch.cat(
            [
                torch.ones(b, img.shape[1], dtype=torch.bool, device=img.device),
                token_mask.bool(),
                torch.ones(b, 1, dtype=torch.bool, device=img.device),
            ],
            1,
        )
        blocks = torch.zeros_like(pad)
        blocks[:, -1] = True  # the state token starts its own block
        return embeds, pad, blocks

    def prefix_cache(self, embeds, pad, blocks):
        """Run the VLM layers over the prefix: per layer the RoPE'd keys and the values."""
        mask = block_mask(pad, blocks)
        positions = pad.long().cumsum(1) - 1
        cache, h = [], embeds
        for layer in self.vlm.text_model.layers:
            x = layer.input_layernorm(h)
            shape = (*x.shape[:2], -1, self.head_dim)
            q = apply_rope(layer.self_attn.q_proj(x).view(shape), positions)
            k = apply_rope(layer.self_attn.k_proj(x).view(shape), positions)
            v = layer.self_attn.v_proj(x).view(shape)
            cache.append((k, v))
            h = h + layer.self_attn.o_proj(self.attention(q, k, v, mask).to(h.dtype))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return cache

    def velocity(self, cache, pad: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One denoising step: v (B, Ta, max_action_dim) at noisy chunk x and times t (B,)."""
        a = self.action_in_proj(x)
        time = sinusoidal_time(t, self.expert_hidden).to(a.dtype)[:, None].expand_as(a)
        h = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([a, time], -1))))
        b, s = h.shape[:2]
        prefix_mask = pad[:, None, :].expand(b, s, pad.shape[1])
        offsets = pad.long().sum(1, keepdim=True)
        own_pos = torch.arange(s, device=h.device)[None].expand(b, s)
        for i, layer in enumerate(self.vlm_with_expert.lm_expert.layers):
            x_n = layer.input_layernorm(h)
            shape = (b, s, -1, self.head_dim)
            pk, pv = cache[i]
            if self.every > 0 and i % self.every == 0:  # self-attention over [prefix; suffix]
                q = apply_rope(layer.self_attn.q_proj(x_n).view(shape), offsets + own_pos)
                k = apply_rope(layer.self_attn.k_proj(x_n).view(shape), offsets + own_pos)
                v = layer.self_attn.v_proj(x_n).view(shape)
                k, v = torch.cat([pk, k], 1), torch.cat([pv, v], 1)
                causal = torch.ones(s, s, dtype=torch.bool, device=h.device).tril()
                mask = torch.cat([prefix_mask, causal.expand(b, s, s)], 2)  # each action a block
            else:  # cross-attention to the prefix's keys/values, projected by the expert
                q = apply_rope(layer.self_attn.q_proj(x_n).view(shape), own_pos)
                k = layer.self_attn.k_proj(pk.flatten(2)).view(*pk.shape[:2], -1, self.head_dim)
                v = layer.self_attn.v_proj(pv.flatten(2)).view(*pv.shape[:2], -1, self.head_dim)
                mask = prefix_mask
            h = h + layer.self_attn.o_proj(self.attention(q, k, v, mask).to(h.dtype))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.action_out_proj(self.vlm_with_expert.lm_expert.norm(h))
