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

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import Observation
from vla_rl.io.atomic import atomic_directory
from vla_rl.policies.gaussian_chain import FlowChainSampling, flow_transition
from vla_rl.policies.smolvla_model import SmolVLAModel
from vla_rl.policies.vla_checkpoint import (
    RealCheckpoint,
    compute_dtype,
    default_device,
    load_checked,
    load_safetensors_dir,
    pad_last_dim,
    read_config,
    read_normaliser,
    resize_with_pad,
)


def read_smolvla_stats(
    directory: Path, weights: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """MEAN_STD statistics: lerobot >= 0.4's normaliser file, or the buffers older SmolVLA
    checkpoints keep in model.safetensors (normalize_inputs / unnormalize_outputs)."""
    files = sorted(directory.glob("policy_preprocessor_step_*normalizer_processor.safetensors"))
    if files:
        s = read_normaliser(files[0])
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


@dataclass(frozen=True)
class SmolVLALoadOptions:
    """How a SmolVLA checkpoint is loaded (`--base-load.*` with `--base smolvla`)."""

    dtype: str = "auto"
    """auto (bfloat16 on a GPU that supports it, else float32: CPU bf16 matmuls are slow),
    float32 or bfloat16."""
    tokenizer: str | None = None
    """The SmolVLM2 directory (config and tokenizer) the action expert was built on, needed
    when the checkpoint's vlm_model_name is a hub id (lerobot/smolvla_base: SmolVLM2-500M-
    Video-Instruct). None: vlm_model_name, when it is a local directory."""
    chain_std: float = 0.05
    """Std of the noise injected at every Euler step for RL, in the normalised action scale;
    as pi0's (Pi0LoadOptions.chain_std)."""
    num_steps: int | None = None
    """Euler steps K. None keeps the checkpoint's num_steps (lerobot's SmolVLA: 10)."""


class SmolVLAPolicy(FlowChainSampling, RealCheckpoint, BasePolicy):
    policy_type = "smolvla"
    load_options = SmolVLALoadOptions
    deterministic_candidates_differ = True
    bounded_actions = False  # mean/std de-standardised; the benchmark clips

    def __init__(self, directory: str | Path, options: SmolVLALoadOptions | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer

        self.directory = Path(directory)
        self.cfg = read_config(directory, "smolvla")
        if self.cfg.get("type") != "smolvla":
            raise ValueError(f"{directory}/config.json has type {self.cfg.get('type')!r}, not "
                             "'smolvla': not a lerobot SmolVLA checkpoint")  # fmt: skip
        self.options = options = options or self.load_options()
        vlm_dir = Path(options.tokenizer or self.cfg.get("vlm_model_name", ""))
        if not (vlm_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"the SmolVLM config/tokenizer {str(vlm_dir)!r} is not a local directory; pass "
                "--base-load.tokenizer <SmolVLM2-500M-Video-Instruct dir>"
            )
        self.vlm_dir = vlm_dir
        self.tokenizer = AutoTokenizer.from_pretrained(str(vlm_dir))
        self.model = SmolVLAModel(self.cfg, AutoConfig.from_pretrained(str(vlm_dir)))
        weights = load_safetensors_dir(directory)
        self.stats = read_smolvla_stats(self.directory, weights)
        own = {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
        load_checked(self.model, own, "smolvla")
        self.action_dim = len(self.stats["action_mean"])
        self.chunk_size = self.cfg.get("chunk_size", 50)
        self.max_action_dim = self.cfg.get("max_action_dim", 32)
        self.num_steps = options.num_steps or self.cfg.get("num_steps", 10)
        self.chain_std = options.chain_std
        features = self.cfg.get("input_features", {})
        self.num_cameras = sum(1 for f in features.values() if f.get("type") == "VISUAL") or 1
        self.to(device=default_device(), dtype=compute_dtype(options.dtype))

    @property
    def device(self) -> torch.device:
        return self.model.action_out_proj.weight.device

    def get_config(self) -> dict[str, Any]:
        return asdict(self.options)

    @classmethod
    def write_tiny_checkpoint(cls, directory: str | Path, action_dim: int, state_dim: int) -> Path:
        from vla_rl.policies.smolvla_tiny import write_tiny_smolvla

        return write_tiny_smolvla(directory, action_dim, state_dim)

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
