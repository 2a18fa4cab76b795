"""OpenVLA-OFT (`--base openvla-oft --base-path <dir>`): parallel decoding of a whole chunk.

Loads a `moojink/openvla-7b-oft-finetuned-libero-*`-format directory: the OpenVLA files (see
openvla.py) plus the separate head files the OFT training script writes, `action_head--*.pt`
(the L1 regression head) and `proprio_projector--*.pt`, whose names carry DDP's "module." prefix.

Exactly as OFT's `predict_action`: the sequence is [BOS][patches of each camera][proprio token]
[prompt, ending in "▁"][Ta * Da placeholder tokens, embeddings zeroed][stop token </s>], run in
ONE forward pass with bidirectional (non-causal) attention, as OFT's transformers fork does. The
hidden states at the Ta * Da positions from the last prompt token on feed the head:
* l1 (continuous): `L1RegressionActionHead` = MLPResNet (LayerNorm, fc1, ReLU, 2 residual blocks
  LayerNorm-Linear-ReLU, LayerNorm, fc2) on the Da hidden states of each action concatenated,
  giving normalised actions; no likelihood of its own. `scale_head` gaussian | laplace adds a
  learned per-dimension scale on the same features (World-Env's stochastic head), initialised
  to `init_scale`: sampling draws around the L1 mean and `log_prob` is exact; the mean is the
  deterministic action, so the loaded policy is unchanged until RL moves it.
* tokens (checkpoints without an action head): the LM head's restricted logits at those
  positions, one independent token per dimension, decoded with OpenVLA's bins.
Proprio: the state, BOUNDS_Q99-normalised with norm_stats[unnorm_key]["proprio"], projected by
`ProprioProjector` (fc1, GELU, fc2) into one token after the patches. Cameras: the first
`num_images` (LIBERO OFT checkpoints: 2, third-person then wrist). Chunk size Ta: OFT's constants
per platform, chosen from the unnorm key (libero 8, aloha 25, bridge 5) or given.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla_rl.core import noise
from vla_rl.core.types import ActionSample, Observation
from vla_rl.policies.gaussian_chain import gaussian_log_prob
from vla_rl.policies.openvla import (
    OpenVLALoadOptions,
    PrismaticPolicyBase,
    normalize_bounds,
    unnormalize,
)

CHUNK_BY_PLATFORM = {"libero": 8, "aloha": 25, "bridge": 5}  # OFT's NUM_ACTIONS_CHUNK
STOP_TOKEN = 2


class MLPResNet(nn.Module):
    """OFT's MLPResNet: layer_norm1, fc1, ReLU, residual blocks (LayerNorm, Linear, ReLU),
    layer_norm2, fc2."""

    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.mlp_resnet_blocks = nn.ModuleList(
            nn.ModuleDict({"ffn": nn.Sequential(nn.LayerNorm(hidden_dim),
                                                nn.Linear(hidden_dim, hidden_dim), nn.ReLU())})
            for _ in range(num_blocks)
        )  # fmt: skip
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = x + block["ffn"](x)
        return self.fc2(self.layer_norm2(x))


class ProprioProjector(nn.Module):
    def __init__(self, llm_dim: int, proprio_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


def _latest(directory: Path, stem: str) -> Path | None:
    """The `stem--<step>_checkpoint.pt` file with the highest step."""
    files = list(directory.glob(f"{stem}--*.pt"))
    step = lambda p: int(m.group(1)) if (m := re.search(r"--(\d+)", p.name)) else -1  # noqa: E731
    return max(files, key=step) if files else None


def _load_module_file(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state.items()}


@dataclass(frozen=True)
class OpenVLAOFTLoadOptions(OpenVLALoadOptions):
    """How an OpenVLA-OFT checkpoint is loaded (`--base-load.*` with `--base openvla-oft`): the
    OpenVLA options (unnorm_key, dtype, center_crop) and OFT's own."""

    num_images: int = 1
    """Cameras fed to the towers, the first ones of the observation (OFT's
    `num_images_in_input`). 1: the first camera, as OpenVLA; the LIBERO OFT checkpoints take 2
    (third-person + wrist)."""
    chunk_size: int | None = None
    """Ta, actions per chunk. None: OFT's NUM_ACTIONS_CHUNK for the platform in the unnorm key
    (libero 8, aloha 25, bridge 5); a key naming no platform needs it given."""
    scale_head: str = "gaussian"
    """With the L1 head: gaussian, laplace or none. The learned per-dimension scale that gives
    the deterministic L1 head a likelihood for RL (World-Env's stochastic head); none keeps
    OFT's head as published, which then samples its mean and has no log_prob."""
    init_scale: float = 0.05
    """The scale head's initial value in the [-1, 1] action units (ours: small, so early samples
    stay near the L1 mean the checkpoint was trained to output); a saved scale head overrides
    it."""


class OpenVLAOFTPolicy(PrismaticPolicyBase):
    policy_type = "openvla-oft"
    load_options = OpenVLAOFTLoadOptions
    # The tiny checkpoint's LIBERO-named dataset, and a 2-action chunk instead of LIBERO's 8.
    tiny_options = {"unnorm_key": "libero_spatial_no_noops", "chunk_size": 2}

    def __init__(self, directory: str | Path, options: OpenVLAOFTLoadOptions | None = None):
        options = options or self.load_options()
        super().__init__(directory, options)
        scale_head, chunk_size = options.scale_head, options.chunk_size
        if scale_head not in ("gaussian", "laplace", "none"):
            raise ValueError(f"unknown scale_head {scale_head!r}; valid choices: gaussian, "
                             "laplace, none")  # fmt: skip
        self.num_images, self.scale_kind = options.num_images, scale_head
        self.init_scale = options.init_scale
        key = self.unnorm_key or next(iter(self.hf_config["norm_stats"]))
        platform = next((p for p in CHUNK_BY_PLATFORM if p in key.lower()), None)
        if chunk_size is None and platform is None:
            raise ValueError(f"no OFT chunk size is known for {key!r}; pass "
                             "--base-load.chunk-size")  # fmt: skip
        self.chunk_size = chunk_size or CHUNK_BY_PLATFORM[platform]
        self.options = replace(options, chunk_size=self.chunk_size)  # a saved copy keeps it
        self.num_action_tokens = self.chunk_size * self.action_dim
        hidden = self.vlm.language_model.config.hidden_size
        directory = Path(directory)
        head_file, proprio_file = (
            _latest(directory, "action_head"),
            _latest(directory, "proprio_projector"),
        )
        self.head_kind = "l1" if head_file else "tokens"
        self.action_head = self.proprio_projector = self.scale_head = None
        if head_file:
            self.action_head = nn.ModuleDict({"model": MLPResNet(
                2, hidden * self.action_dim, hidden, self.action_dim)})  # fmt: skip
            self.action_head.load_state_dict(_load_module_file(head_file))
            if scale_head != "none":
                self.scale_head = nn.Linear(hidden * self.action_dim, self.action_dim)
                nn.init.zeros_(self.scale_head.weight)
                nn.init.constant_(self.scale_head.bias, math.log(self.init_scale))
                scale_file = directory / "scale_head--vla_rl.pt"
                if scale_file.is_file():
                    self.scale_head.load_state_dict(_load_module_file(scale_file))
        if proprio_file:
            weight = _load_module_file(proprio_file)
            self.proprio_projector = ProprioProjector(hidden, weight["fc1.weight"].shape[1])
            self.proprio_projector.load_state_dict(weight)
        self.to(device=self.device, dtype=self.dtype)

    def get_config(self) -> dict[str, Any]:
        return asdict(self.options)

    @classmethod
    def write_tiny_checkpoint(cls, directory: str | Path, action_dim: int, state_dim: int) -> Path:
        from vla_rl.policies.openvla_tiny import write_tiny_openvla

        return write_tiny_openvla(directory, action_dim, state_dim, oft=True)

    def save_parts(self, directory: Path) -> None:
        """The head files in OFT's own format (DDP prefix), beside the VLA."""
        for stem, module in (("action_head--0_checkpoint", self.action_head),
                             ("proprio_projector--0_checkpoint", self.proprio_projector),
                             ("scale_head--vla_rl", self.scale_head)):  # fmt: skip
            if module is not None:
                state = {f"module.{k}": v.detach().cpu() for k, v in module.state_dict().items()}
                torch.save(state, directory / f"{stem}.pt")

    # ---- the one forward pass -----------------------------------------------------------------
    def action_hidden(self, obs: Observation) -> torch.Tensor:
        """Last-layer hidden states (B, Ta * Da, D) at the positions that predict the chunk."""
        extra = None
        if self.proprio_projector is not None:
            state = torch.as_tensor(obs["state"], dtype=torch.float32, device=self.device)
            proprio = normalize_bounds(state, self.stats["proprio"]).to(self.dtype)
            extra = self.proprio_projector(proprio)[:, None]
        embeds, mask = self.prefix(obs, extra)
        b, n = len(embeds), self.num_action_tokens
        stop = self.embed(torch.full((b, 1), STOP_TOKEN, device=self.device))
        embeds = torch.cat([embeds, embeds.new_zeros(b, n, embeds.shape[-1]), stop], 1)
        mask = torch.cat([mask, mask.new_ones(b, n + 1)], 1)
        # Bidirectional: every position sees every non-padding position.
        blocked = torch.finfo(embeds.dtype).min
        attn = torch.zeros(
            b, 1, mask.shape[1], mask.shape[1], dtype=embeds.dtype, device=self.device
        )
        attn = attn.masked_fill(mask[:, None, None, :] == 0, blocked)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        hidden = self.vlm.language_model.model(
            inputs_embeds=embeds, attention_mask=attn, position_ids=positions
        ).last_hidden_state
        return hidden[:, -(n + 2) : -2]

    def _head(self, hidden: torch.Tensor):
        """L1 mean (B, Ta, Da) in [-1, 1] units and the log-scale (or None)."""
        per_action = hidden.reshape(len(hidden), self.chunk_size, -1)
        mean = self.action_head["model"](per_action).float()
        log_scale = None if self.scale_head is None else self.scale_head(per_action).float()
        return mean, log_scale

    def _continuous_log_prob(self, unit, mean, log_scale):
        if self.scale_kind == "laplace":
            scale = log_scale.exp() * self.temperature
            return -(unit - mean).abs() / scale - torch.log(2 * scale)
        return gaussian_log_prob(unit, mean, log_scale.exp() * self.temperature)

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        hidden = self.action_hidden(obs)
        keys = noise.noise_keys(obs)  # each row's own stream (vla_rl.core.noise)
        if self.head_kind == "tokens":
            logits = self._action_logits(hidden)
            columns = logits.argmax(-1) if deterministic else noise.categorical(
                logits / self.temperature, keys, "tokens")  # fmt: skip
            log_p = self._log_softmax(logits).gather(-1, columns[..., None]).squeeze(-1)
            return ActionSample(self._decode(columns, self.chunk_size).float(), log_p.sum(-1),
                                {"action_tokens": columns})  # fmt: skip
        mean, log_scale = self._head(hidden)
        if deterministic or log_scale is None:
            unit, log_prob = mean, None
        else:
            scale = log_scale.exp() * self.temperature
            shape = tuple(mean.shape[1:])
            if self.scale_kind == "laplace":  # inverse CDF of Laplace(mean, scale)
                u = noise.uniform(keys, len(mean), shape, "laplace", device=mean.device) - 0.5
                u = u.clamp(-0.5 + 1e-7, 0.5 - 1e-7)
                unit = mean - scale * u.sign() * torch.log1p(-2 * u.abs())
            else:
                eps = noise.standard_normal(keys, len(mean), shape, "normal", device=mean.device)
                unit = mean + scale * eps
            log_prob = self._continuous_log_prob(unit, mean, log_scale).flatten(1).sum(-1)
        actions = unnormalize(unit.clamp(-1, 1), self.action_stats)
        return ActionSample(actions.float(), log_prob, {"unit_actions": unit})  # (B, Ta, Da)

    def log_prob(self, obs: Observation, sample: ActionSample) -> torch.Tensor:
        return self.log_prob_terms(obs, sample)[0].sum(-1)

    def log_prob_terms(self, obs: Observation, sample: ActionSample):
        """Per (action, dim) log-likelihood terms (B, Ta * Da) and their summed entropy (B,)."""
        hidden = self.action_hidden(obs)
        if self.head_kind == "tokens":
            columns = sample.extras["action_tokens"].to(self.device)
            log_p = self._log_softmax(self._action_logits(hidden))
            entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
            return log_p.gather(-1, columns[..., None]).squeeze(-1), entropy
        if self.scale_head is None:
            return super().log_prob_terms(obs, sample)  # the clear "no likelihood" error
        mean, log_scale = self._head(hidden)
        unit = sample.extras["unit_actions"].to(self.device)
        terms = self._continuous_log_prob(unit, mean, log_scale).flatten(1)
        scale = (log_scale.exp() * self.temperature).flatten(1)
        if self.scale_kind == "laplace":
            entropy = (1 + torch.log(2 * scale)).sum(-1)
        else:
            entropy = (0.5 * math.log(2 * math.pi * math.e) + torch.log(scale)).sum(-1)
        return terms, entropy

    def observation_features(self, obs: Observation) -> torch.Tensor:
        """Mean of the action positions' hidden states (B, D)."""
        return self.action_hidden(obs).mean(1).float()
