"""OpenVLA (`--base openvla --base-path <dir>`): the published checkpoint format on native parts.

Loads an `openvla/openvla-7b`-format directory (config.json with `model_type: openvla`,
`norm_stats`, `timm_model_ids`, `text_config`; model*.safetensors with Prismatic names; the Llama
tokenizer files) into `PrismaticVLM` through the one key mapping of prismatic.py.

Exactly as OpenVLA's `predict_action`:
* prompt `"In: What action should the robot take to {instruction.lower()}?\\nOut:"` with BOS, the
  empty "▁" token (id 29871) appended, the 256 projected patch tokens placed right after BOS;
* image: the first camera, PIL-resized (bicubic) to the towers' size, normalised once per tower
  (ImageNet mean/std for DINOv2, 0.5/0.5 for SigLIP), channels stacked (3 per tower);
  `center_crop` (OpenVLA's LIBERO eval for models trained with crop augmentation) first takes
  the central 90% of the area;
* actions: Da tokens, one per dimension, chunk Ta = 1. Token t decodes to bin centre
  `centres[clip(V - t - 1, 0, 254)]` with V = vocab_size - pad_to_multiple_of (32000), i.e. the
  last 256 ids of the Llama vocabulary (31744..31999) with the highest id the lowest value; then
  `a = 0.5 (a_n + 1)(q99 - q01) + q01` where norm_stats' `mask` is true.
For RL every decoding step is restricted to those 256 tokens (VLA-RL's scheme: a sampled token
is always an action), and `log_prob` = the sum over the Da tokens of their log-probabilities under
that restricted softmax at the sampling temperature, teacher-forced in one pass.
Batches of different instructions are padded in the middle ([BOS][patches][pad..][prompt]) with
positions from the attention mask, so every row's prompt ends in the last column and decodes
exactly as it would alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_rl.core import noise
from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import ActionSample, Observation
from vla_rl.io.atomic import atomic_directory
from vla_rl.policies.kv_cache import cache_kwargs, output_cache
from vla_rl.policies.prismatic import IMAGE_STATS, PrismaticVLM, hf_to_timm, timm_to_hf
from vla_rl.policies.vla_checkpoint import (
    RealCheckpoint,
    compute_dtype,
    default_device,
    load_checked,
    load_safetensors_dir,
    pil_resize,
    read_config,
    select_stats,
)

NUM_BINS = 256
EMPTY_TOKEN = 29871  # Llama-2's "▁": OpenVLA appends it after "Out:" as at training time
PROMPT = "In: What action should the robot take to {}?\nOut:"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
)
ALLOW_MISSING = ("mask_token", "layernorm.weight", "layernorm.bias")  # HF-only, never used


def bin_centres() -> torch.Tensor:
    """OpenVLA's 255 bin centres: midpoints of linspace(-1, 1, 256)."""
    bins = torch.linspace(-1, 1, NUM_BINS, dtype=torch.float64)
    return ((bins[:-1] + bins[1:]) / 2).float()


def tokens_to_unit(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Action token ids -> normalised actions in [-1, 1] (OpenVLA's decoding)."""
    index = (vocab_size - token_ids - 1).clamp(0, NUM_BINS - 2)
    return bin_centres().to(token_ids.device)[index]


def unit_to_tokens(unit: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Normalised actions -> token ids (OpenVLA's encoding: np.digitize on the 256 edges)."""
    edges = torch.linspace(-1, 1, NUM_BINS, dtype=torch.float64)
    digitized = torch.bucketize(unit.double().clamp(-1, 1), edges, right=True)  # 1..256
    return vocab_size - digitized


def unnormalize(unit: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
    """BOUNDS_Q99 un-normalisation of the dims `mask` selects (all when it is absent)."""
    low = torch.as_tensor(stats["q01"], dtype=torch.float32, device=unit.device)
    high = torch.as_tensor(stats["q99"], dtype=torch.float32, device=unit.device)
    mask = torch.as_tensor(stats.get("mask", [True] * len(low)), device=unit.device)
    return torch.where(mask, 0.5 * (unit + 1) * (high - low) + low, unit)


def normalize_bounds(x: torch.Tensor, stats: dict[str, Any]) -> torch.Tensor:
    """The inverse map for proprio (OpenVLA-OFT's BOUNDS_Q99 on the state), clipped to [-1, 1]."""
    low = torch.as_tensor(stats["q01"], dtype=torch.float32, device=x.device)
    high = torch.as_tensor(stats["q99"], dtype=torch.float32, device=x.device)
    mask = torch.as_tensor(stats.get("mask", [True] * len(low)), device=x.device)
    scaled = (2 * (x - low) / (high - low).clamp_min(1e-8) - 1).clamp(-1, 1)
    return torch.where(mask, scaled, x)


@dataclass(frozen=True)
class OpenVLALoadOptions:
    """How an OpenVLA checkpoint is loaded (`--base-load.*` with `--base openvla`)."""

    unnorm_key: str | None = None
    """The norm_stats dataset whose action statistics un-normalise the output (OpenVLA's
    `predict_action(unnorm_key=...)`, e.g. bridge_orig). None: the only one (an error lists
    them if there are several, as in openvla/openvla-7b)."""
    dtype: str = "auto"
    """auto (bfloat16 on a GPU that supports it, the published weights' dtype; else float32:
    CPU bf16 matmuls are slow), float32 or bfloat16."""
    center_crop: bool = False
    """Crop the central 90% of the image area first (OpenVLA's LIBERO evaluation, for
    checkpoints trained with random-crop augmentation). False: OpenVLA's `predict_action`."""


class PrismaticPolicyBase(RealCheckpoint, BasePolicy):
    """What OpenVLA and OpenVLA-OFT share: loading, saving, image and prompt preprocessing."""

    policy_type = "openvla"
    load_options = OpenVLALoadOptions
    num_images = 1  # cameras fed to the towers

    def __init__(self, directory: str | Path, options: OpenVLALoadOptions | None = None):
        super().__init__()
        from transformers import LlamaTokenizerFast

        options = options or self.load_options()
        self.options = options
        unnorm_key, dtype = options.unnorm_key, options.dtype
        self.directory = Path(directory)
        self.hf_config = read_config(directory, self.policy_type)
        if self.hf_config.get("model_type") != "openvla":
            raise ValueError(
                f"{directory}/config.json has model_type {self.hf_config.get('model_type')!r}, "
                f"not 'openvla': not a {self.policy_type} checkpoint"
            )
        self.unnorm_key = unnorm_key
        self.stats = select_stats(self.hf_config["norm_stats"], unnorm_key)
        self.action_stats = self.stats["action"]
        self.action_dim = len(self.action_stats["q01"])
        self.center_crop = options.center_crop
        text = self.hf_config["text_config"]
        self.vocab_size = text["vocab_size"] - self.hf_config.get("pad_to_multiple_of", 64)
        # The Llama class directly: AutoTokenizer would follow config.json's auto_map to the
        # hub's remote code and ask whether to run it.
        self.tokenizer = LlamaTokenizerFast.from_pretrained(str(directory))
        self.vlm = PrismaticVLM(self.hf_config)
        hf_state, self.vlm.unused = timm_to_hf(load_safetensors_dir(directory), self.vlm.specs)
        load_checked(self.vlm, hf_state, self.policy_type, ALLOW_MISSING)
        self.to(device=default_device(), dtype=compute_dtype(dtype))

    @property
    def device(self) -> torch.device:
        return self.vlm.projector.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vlm.projector.fc1.weight.dtype

    def get_config(self) -> dict[str, Any]:
        return asdict(self.options)

    def save_pretrained(self, directory: str | Path) -> None:
        """The same format it loads (config.json, model.safetensors with the checkpoint's own
        names, the tokenizer files) plus vla_rl.json."""
        from safetensors.torch import save_file

        state = hf_to_timm(self.vlm.state_dict(), self.vlm.specs, self.vlm.unused)
        with atomic_directory(directory) as tmp:
            for name in TOKENIZER_FILES:
                if (self.directory / name).is_file():
                    shutil.copy(self.directory / name, tmp / name)
            self.save_parts(tmp)
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                      str(tmp / "model.safetensors"))  # fmt: skip
            (tmp / "config.json").write_text(json.dumps(self.hf_config, indent=2) + "\n")
            self.write_vla_rl_file(tmp)

    # ---- preprocessing ------------------------------------------------------------------------
    def pixel_values(self, obs: Observation) -> torch.Tensor:
        """(B, Ncam, 3 * towers, H, W) in the towers' normalisations."""
        if "image" not in obs:
            raise ValueError(
                f"{self.policy_type} needs camera images; run the env with --env.images"
            )
        images = np.asarray(obs["image"])[:, : self.num_images]
        if images.shape[1] < self.num_images:
            raise ValueError(f"{self.policy_type} takes {self.num_images} cameras; the env gives "
                             f"{images.shape[1]}")  # fmt: skip
        b, n, h, w = images.shape[:4]
        flat = images.reshape(b * n, h, w, 3)
        if self.center_crop:  # the central 90% of the area, as OpenVLA's LIBERO evaluation
            ch, cw = int(round(h * 0.9**0.5)), int(round(w * 0.9**0.5))
            top, left = (h - ch) // 2, (w - cw) // 2
            flat = np.ascontiguousarray(flat[:, top : top + ch, left : left + cw])
        size = self.vlm.specs[0].image_size
        pixels = pil_resize(flat, (size, size))
        parts = []
        for spec in self.vlm.specs:
            mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGE_STATS[spec.kind])
            parts.append((pixels - mean) / std)
        stacked = torch.cat(parts, 1).view(b, n, -1, size, size)
        return stacked.to(self.device, self.dtype)

    def prompt_ids(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) after BOS, right-aligned (left-padded with 0), ending in "▁", and
        their mask. BOS is added separately, before the image patches."""
        rows = []
        for text in instructions:
            ids = self.tokenizer(PROMPT.format(text.lower()))["input_ids"]
            if ids and ids[0] == self.tokenizer.bos_token_id:
                ids = ids[1:]
            if not ids or ids[-1] != EMPTY_TOKEN:
                ids = [*ids, EMPTY_TOKEN]
            rows.append(ids)
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, length - len(r) :] = torch.tensor(r)
            mask[i, length - len(r) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vlm.language_model.get_input_embeddings()(ids)

    def prefix(self, obs: Observation, extra: torch.Tensor | None = None):
        """Embeddings (B, L, D) of [BOS][patches][extra][pad][prompt] and the attention mask."""
        patches = self.vlm.embed_images(self.pixel_values(obs))
        ids, mask = self.prompt_ids(list(obs["instruction"]))
        b = len(ids)
        bos = self.embed(torch.full((b, 1), self.tokenizer.bos_token_id, device=self.device))
        parts = [bos, patches] + ([extra] if extra is not None else []) + [self.embed(ids)]
        embeds = torch.cat(parts, 1)
        ones = torch.ones(b, embeds.shape[1] - ids.shape[1], dtype=torch.long, device=self.device)
        return embeds, torch.cat([ones, mask], 1)

    def _action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits of the 256 action tokens (..., 256), column j = token V - 256 + j."""
        head = self.vlm.language_model.get_output_embeddings().weight
        return F.linear(hidden, head[self.vocab_size - NUM_BINS : self.vocab_size]).float()

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits / self.temperature, -1)

    def _decode(self, columns: torch.Tensor, chunk: int) -> torch.Tensor:
        """Restricted-softmax columns (B, Ta * Da) -> actions (B, Ta, Da) in env units."""
        unit = tokens_to_unit(columns + self.vocab_size - NUM_BINS, self.vocab_size)
        return unnormalize(unit.view(len(columns), chunk, self.action_dim), self.action_stats)


class OpenVLAPolicy(PrismaticPolicyBase):
    """OpenVLA: Da action tokens decoded autoregressively with a KV cache (chunk Ta = 1)."""

    policy_type = "openvla"
    chunk_size = 1
    tiny_options = {"unnorm_key": "bridge_orig"}  # the first of the tiny checkpoint's 2 datasets

    @classmethod
    def write_tiny_checkpoint(cls, directory: str | Path, action_dim: int, state_dim: int) -> Path:
        from vla_rl.policies.openvla_tiny import write_tiny_openvla

        return write_tiny_openvla(directory, action_dim, state_dim, oft=False)

    def _lm(self, embeds, mask, **kwargs):
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        return self.vlm.language_model.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **kwargs
        )

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        embeds, mask = self.prefix(obs)
        out = self._lm(embeds, mask, use_cache=True)
        cache, hidden = output_cache(out), out.last_hidden_state[:, -1]
        keys = noise.noise_keys(obs)  # each row's own stream (vla_rl.core.noise)
        chosen, step_logits = [], []
        for i in range(self.action_dim):
            logits = self._action_logits(hidden)
            column = logits.argmax(-1) if deterministic else noise.categorical(
                logits / self.temperature, keys, f"tokens/{i}")  # fmt: skip
            chosen.append(column)
            step_logits.append(logits)
            if i + 1 < self.action_dim:
                token = column[:, None] + self.vocab_size - NUM_BINS
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                positions = mask.sum(-1, keepdim=True) - 1
                lm = self.vlm.language_model.model
                out = lm(
                    inputs_embeds=self.embed(token), attention_mask=mask, position_ids=positions,
                    use_cache=True, **cache_kwargs(lm, cache),
                )  # fmt: skip
                hidden = out.last_hidden_state[:, -1]
        columns = torch.stack(chosen, 1)
        log_p = self._log_softmax(torch.stack(step_logits, 1))
        return ActionSample(
            actions=self._decode(columns, 1).float(),
            log_prob=log_p.gather(-1, columns[..., None]).squeeze(-1).sum(-1),
            extras={"action_tokens": columns},  # (B, Da): column j = token V - 256 + j
        )

    def action_logits(self, obs: Observation, columns: torch.Tensor) -> torch.Tensor:
        """Teacher-forced restricted logits (B, Da, 256) of every action token."""
        embeds, mask = self.prefix(obs)
        tokens = self.embed(columns[:, :-1] + self.vocab_size - NUM_BINS)
        mask = torch.cat([mask, torch.ones_like(columns[:, :-1])], 1)
        hidden = self._lm(torch.cat([embeds, tokens], 1), mask).last_hidden_state
        return self._action_logits(hidden[:, -self.action_dim :])

    def log_prob(self, obs: Observation, sample: ActionSample) -> torch.Tensor:
        return self.log_prob_terms(obs, sample)[0].sum(-1)

    def log_prob_terms(self, obs: Observation, sample: ActionSample):
        """Per-token log-probabilities (B, Da) and the summed entropy (B,)."""
        columns = sample.extras["action_tokens"].to(self.device)
        log_p = self._log_softmax(self.action_logits(obs, columns))
        entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
        return log_p.gather(-1, columns[..., None]).squeeze(-1), entropy

    def observation_features(self, obs: Observation) -> torch.Tensor:
        """The LM's last hidden state at the last prompt token (B, D)."""
        embeds, mask = self.prefix(obs)
        return self._lm(embeds, mask).last_hidden_state[:, -1].float()
