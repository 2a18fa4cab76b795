"""SmolVLA (`--base smolvla --base-path <dir>`): SmolVLM (native in transformers) + the action
expert, with `lerobot/smolvla_base`'s config fields and tensor names.

Names: model.vlm_with_expert.vlm.{model.vision_model, model.connector, model.text_model, lm_head}
(a SmolVLMForConditionalGeneration whose text model keeps its first `num_vlm_layers` layers),
model.vlm_with_expert.lm_expert.{layers.N.*, norm} (a Llama of width `expert_width_multiplier`
x the VLM's, same heads and head dim; in the cross-attention layers its k_proj / v_proj take the
VLM's key/value width), model.{state_proj, action_in_proj, action_out_proj, action_time_mlp_in,
action_time_mlp_out}. The VLM's own config and tokenizer come from `vlm_model_name` when it is a
local directory, else from --base-load.tokenizer (a SmolVLM2 directory).

Forward, as lerobot's VLAFlowMatching / SmolVLMWithExpertModel:
* prefix: per camera the vision model + connector, scaled by sqrt(D); the instruction + "\\n"
  tokens (padded to tokenizer_max_length), scaled by sqrt(D); the state token (state_proj).
  Images and text attend bidirectionally, the state token sees everything before it. Every VLM
  layer runs over the prefix once; its RoPE'd keys and values are the cache.
* denoising step: action_in_proj(x_t) joined with the sinusoidal time embedding through
  action_time_mlp_in -> SiLU -> action_time_mlp_out. Expert layer i attends to
  [prefix cache_i ; its own keys] (even i, self-attention layers) or cross-attends to the prefix
  cache_i projected by its own k_proj / v_proj (odd i), then its MLP; lm_expert.norm, then
  action_out_proj gives the velocity. RoPE: lerobot's `apply_rope` (base 10000).
Images: resized with padding to `resize_imgs_with_padding` (512 x 512), scaled to [-1, 1]; state
and actions: MEAN_STD with the lerobot normaliser statistics, padded to 32; chunk 50.
Flow chain for RL: the same noise-injected Euler chain as pi0 (see pi0.py).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla_rl.atomic_io import atomic_directory
from vla_rl.policies.gaussian_chain import FlowChainSampling, flow_transition
from vla_rl.policies.vla_checkpoint import (
    RealCheckpoint,
    compute_dtype,
    default_device,
    load_checked,
    load_safetensors_dir,
    pad_last_dim,
    read_config,
    resize_with_pad,
)
from vla_rl.policy import BasePolicy
from vla_rl.types import Observation


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


def read_smolvla_stats(
    directory: Path, weights: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """MEAN_STD statistics: lerobot >= 0.4's normaliser file, or the buffers older SmolVLA
    checkpoints keep in model.safetensors (normalize_inputs / unnormalize_outputs)."""
    files = sorted(directory.glob("policy_preprocessor_step_*normalizer_processor.safetensors"))
    if files:
        from safetensors.torch import load_file

        s = load_file(str(files[0]))
        return {"state_mean": s["observation.state.mean"], "state_std": s["observation.state.std"],
                "action_mean": s["action.mean"], "action_std": s["action.std"]}  # fmt: skip
    old = "normalize_inputs.buffer_observation_state."
    if old + "mean" in weights:
        out = "unnormalize_outputs.buffer_action."
        return {
            "state_mean": weights[old + "mean"],
            "state_std": weights[old + "std"],
            "action_mean": weights[out + "mean"],
            "action_std": weights[out + "std"],
        }
    raise FileNotFoundError(f"{directory} holds no SmolVLA normaliser statistics")


class SmolVLAPolicy(FlowChainSampling, RealCheckpoint, BasePolicy):
    policy_type = "smolvla"
    deterministic_candidates_differ = True

    def __init__(self, directory: str | Path, dtype: str = "auto", tokenizer: str | None = None,
                 chain_std: float = 0.05, num_steps: int | None = None):  # fmt: skip
        """tokenizer: a SmolVLM2 directory (config + tokenizer) when the checkpoint's
        vlm_model_name is a hub id. chain_std / num_steps: as for pi0."""
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer

        self.directory = Path(directory)
        self.cfg = read_config(directory, "smolvla")
        if self.cfg.get("type") != "smolvla":
            raise ValueError(f"{directory}/config.json has type {self.cfg.get('type')!r}, not "
                             "'smolvla': not a lerobot SmolVLA checkpoint")  # fmt: skip
        vlm_dir = Path(tokenizer or self.cfg.get("vlm_model_name", ""))
        if not (vlm_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"the SmolVLM config/tokenizer {str(vlm_dir)!r} is not a local directory; pass "
                "--base-load.tokenizer <SmolVLM2-500M-Video-Instruct dir>"
            )
        self.vlm_dir = vlm_dir
        self.options = {"dtype": dtype, "tokenizer": tokenizer, "chain_std": chain_std,
                        "num_steps": num_steps}  # fmt: skip
        self.tokenizer = AutoTokenizer.from_pretrained(str(vlm_dir))
        self.model = SmolVLAModel(self.cfg, AutoConfig.from_pretrained(str(vlm_dir)))
        weights = load_safetensors_dir(directory)
        self.stats = read_smolvla_stats(self.directory, weights)
        own = {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
        load_checked(self.model, own, "smolvla")
        self.action_dim = len(self.stats["action_mean"])
        self.chunk_size = self.cfg.get("chunk_size", 50)
        self.max_action_dim = self.cfg.get("max_action_dim", 32)
        self.num_steps = num_steps or self.cfg.get("num_steps", 10)
        self.chain_std = chain_std
        features = self.cfg.get("input_features", {})
        self.num_cameras = sum(1 for f in features.values() if f.get("type") == "VISUAL") or 1
        self.to(device=default_device(), dtype=compute_dtype(dtype))

    @property
    def device(self) -> torch.device:
        return self.model.action_out_proj.weight.device

    def get_config(self) -> dict[str, Any]:
        return dict(self.options)

    def save_pretrained(self, directory: str | Path) -> None:
        """lerobot's layout: config.json, model.safetensors (model.* names), the normaliser."""
        from safetensors.torch import save_file

        with atomic_directory(directory) as tmp:
            (tmp / "config.json").write_text(json.dumps(self.cfg, indent=2) + "\n")
            state = {f"model.{k}": v.detach().contiguous().cpu()
                     for k, v in self.model.state_dict().items()}  # fmt: skip
            save_file(state, str(tmp / "model.safetensors"))
            for f in self.directory.glob("policy_*processor*"):
                shutil.copy(f, tmp / f.name)
            self.write_vla_rl_file(tmp)

    # ---- preprocessing and the chain -----------------------------------------------------------
    def prefix(self, obs: Observation):
        if "image" not in obs:
            raise ValueError("smolvla needs camera images; run the env with --env.images")
        images = np.asarray(obs["image"])[:, : self.num_cameras]
        b, n = images.shape[:2]
        pixels = torch.from_numpy(images).flatten(0, 1).permute(0, 3, 1, 2).float().div(255)
        h, w = self.cfg.get("resize_imgs_with_padding", [512, 512])
        pixels = (resize_with_pad(pixels, h, w) * 2 - 1).view(b, n, 3, h, w)
        tasks = [t if t.endswith("\n") else t + "\n" for t in obs["instruction"]]
        text = self.tokenizer(
            tasks,
            padding=self.cfg.get("pad_language_to", "max_length"),
            max_length=self.cfg.get("tokenizer_max_length", 48),
            truncation=True,
            padding_side="right",
            return_tensors="pt",
        )
        state = torch.as_tensor(obs["state"], dtype=torch.float32)
        state = (state - self.stats["state_mean"]) / (self.stats["state_std"] + 1e-8)
        dtype = self.model.action_out_proj.weight.dtype
        state = pad_last_dim(state, self.cfg.get("max_state_dim", 32)).to(self.device, dtype)
        embeds, pad, blocks = self.model.embed_prefix(
            pixels.to(self.device, dtype), text["input_ids"].to(self.device),
            text["attention_mask"].to(self.device), state,
        )  # fmt: skip
        return self.model.prefix_cache(embeds, pad, blocks), pad

    def _transition(self, obs: Observation):
        cache, pad = self.prefix(obs)
        shape = (len(pad), self.chunk_size, self.max_action_dim)
        dtype = self.model.action_out_proj.weight.dtype

        def velocity(t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
            return self.model.velocity(cache, pad, flat.view(shape).to(dtype), t).flatten(1)

        return flow_transition(velocity, self.num_steps, self.chain_std * self.temperature)

    def _unnormalize(self, chunk: torch.Tensor) -> torch.Tensor:
        return chunk * (self.stats["action_std"] + 1e-8) + self.stats["action_mean"]

    def observation_features(self, obs: Observation) -> torch.Tensor:
        """The last VLM layer's values averaged over the real prefix tokens (B, F)."""
        cache, pad = self.prefix(obs)
        v = cache[-1][1].flatten(2).float()
        return (v * pad[..., None]).sum(1) / pad.sum(1, keepdim=True)
