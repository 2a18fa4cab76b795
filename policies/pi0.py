"""pi0 (`--base pi0 --base-path <dir>`) on transformers' native `PI0ForConditionalGeneration`.

Loads either transformers' own pi0 format (config.json with model_type "pi0") or a
`lerobot/pi0_base`-style directory (lerobot config.json with "type": "pi0"; its sizes come from
`paligemma_variant` / `action_expert_variant`). In both, model.safetensors may use lerobot's
names (`model.paligemma_with_expert.*`): transformers renames them on load with its own pi0
conversion rules. Statistics: transformers' processor_config.json (`state_mean`, `state_std`,
`actions_mean`, `actions_std`, what `PI0Processor` takes) or lerobot's normaliser file
(`policy_preprocessor_step_*_normalizer_processor.safetensors`). The PaliGemma tokenizer is read
from the directory or from --base-load.tokenizer.

Preprocessing as `PI0Processor`: prompt "<image>" x 256 per camera + BOS + instruction + "\\n";
each camera resized to 224 (bicubic, aspect ratio kept and padded), scaled to [-1, 1]; state
standardised with the dataset mean/std and zero-padded to max_state_dim (32). Output: a chunk of
`chunk_size` (50) actions, the first Da of max_action_dim (32) columns, de-standardised.

Flow matching: x_1 ~ N(0, I) at t = 1 is integrated to t = 0 in K Euler steps of -1/K with the
prefix (images, text) encoded once into the key/value cache. For RL the chain injects Gaussian
noise at each step (a noise-injected chain as in ReinFlow / flow-SDE, with a fixed std
`chain_std` in the normalised action scale), x_{k+1} = x_k - v(t_k, x_k) / K + chain_std * eps,
so `log_prob` of a stored chain is exact (vla_rl.policies.gaussian_chain) and re-scored under the
current weights. `deterministic=True` is the plain ODE (pi0's own sampler).
The chain covers all max_action_dim columns (the model's input); the padded ones carry noise too.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import Observation
from vla_rl.io.atomic import atomic_directory
from vla_rl.policies.gaussian_chain import FlowChainSampling, flow_transition
from vla_rl.policies.kv_cache import cache_kwargs, output_cache
from vla_rl.policies.vla_checkpoint import (
    RealCheckpoint,
    check_loading_info,
    compute_dtype,
    default_device,
    pad_last_dim,
    pil_resize,
    read_config,
    read_normaliser,
    resize_with_pad,
    scan_weight_files,
)

# openpi's Gemma variants, which lerobot's pi0 config names (width, depth, mlp, heads, kv, head).
GEMMA_VARIANTS = {
    "gemma_2b": (2048, 18, 16384, 8, 1, 256),
    "gemma_300m": (1024, 18, 4096, 8, 1, 256),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json")  # fmt: skip


def config_from_lerobot(cfg: dict[str, Any]):
    """transformers' PI0Config for a lerobot pi0 config.json."""
    from transformers import PI0Config

    def gemma(variant: str) -> dict[str, Any]:
        if variant not in GEMMA_VARIANTS:
            raise ValueError(f"unknown Gemma variant {variant!r}; valid choices: "
                             f"{', '.join(GEMMA_VARIANTS)}")  # fmt: skip
        w, depth, mlp, heads, kv, head = GEMMA_VARIANTS[variant]
        return dict(model_type="gemma", hidden_size=w, num_hidden_layers=depth,
                    intermediate_size=mlp, num_attention_heads=heads, num_key_value_heads=kv,
                    head_dim=head)  # fmt: skip

    vlm = PI0Config().vlm_config.to_dict()
    vlm["text_config"].update(gemma(cfg.get("paligemma_variant", "gemma_2b")))
    return PI0Config(
        vlm_config=vlm, dit_config=gemma(cfg.get("action_expert_variant", "gemma_300m")),
        chunk_size=cfg.get("chunk_size", 50), max_state_dim=cfg.get("max_state_dim", 32),
        max_action_dim=cfg.get("max_action_dim", 32),
        num_inference_steps=cfg.get("num_inference_steps", cfg.get("num_steps", 10)),
    )  # fmt: skip


def read_stats(directory: Path) -> dict[str, np.ndarray]:
    """state_mean / state_std / actions_mean / actions_std of the checkpoint's dataset."""
    processor = directory / "processor_config.json"
    if processor.is_file():
        cfg = json.loads(processor.read_text())
        return {k: np.asarray(cfg[k], np.float32) for k in
                ("state_mean", "state_std", "actions_mean", "actions_std")}  # fmt: skip
    files = sorted(directory.glob("policy_preprocessor_step_*normalizer_processor.safetensors"))
    if files:
        s = read_normaliser(files[0])
        return {
            "state_mean": s["observation.state.mean"].numpy(),
            "state_std": s["observation.state.std"].numpy(),
            "actions_mean": s["action.mean"].numpy(),
            "actions_std": s["action.std"].numpy(),
        }
    raise FileNotFoundError(
        f"{directory} holds no dataset statistics (processor_config.json with state_mean/"
        "state_std/actions_mean/actions_std, or lerobot's policy_preprocessor_step_*_normalizer_"
        "processor.safetensors)"
    )


@dataclass(frozen=True)
class Pi0LoadOptions:
    """How a pi0 checkpoint is loaded (`--base-load.*` with `--base pi0`)."""

    dtype: str = "auto"
    """auto (bfloat16 on a GPU that supports it, else float32: CPU bf16 matmuls are slow),
    float32 or bfloat16."""
    tokenizer: str | None = None
    """A PaliGemma tokenizer directory. None: the checkpoint directory (an error says so when
    it holds no tokenizer files)."""
    chain_std: float = 0.05
    """Std of the noise injected at every Euler step for RL, in the normalised action scale
    (ours: small, so the noisy chain's samples stay near those of pi0's own noise-free ODE;
    ReinFlow learns a bounded std instead)."""
    num_steps: int | None = None
    """Euler steps K. None keeps the checkpoint's num_inference_steps (pi0: 10)."""


class Pi0Policy(FlowChainSampling, RealCheckpoint, BasePolicy):
    policy_type = "pi0"
    load_options = Pi0LoadOptions
    deterministic_candidates_differ = True
    bounded_actions = False  # mean/std de-standardised; the benchmark clips

    def __init__(self, directory: str | Path, options: Pi0LoadOptions | None = None):
        super().__init__()
        from transformers import AutoTokenizer, PI0Config, PI0ForConditionalGeneration
        from transformers.utils import logging as transformers_logging

        self.directory = Path(directory)
        raw = read_config(directory, "pi0")
        if raw.get("model_type") == "pi0":
            cfg = PI0Config.from_pretrained(str(directory))
        elif raw.get("type") == "pi0":
            cfg = config_from_lerobot(raw)
        else:
            raise ValueError(f"{directory}/config.json is neither a transformers pi0 config "
                             "(model_type pi0) nor a lerobot one (type pi0)")  # fmt: skip
        self.options = options = options or self.load_options()
        tokenizer, num_steps = options.tokenizer, options.num_steps
        torch_dtype = compute_dtype(options.dtype)
        scan_weight_files(directory)  # from_pretrained checks neither finiteness nor names
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # its load report: one line of ours instead
        try:
            self.model, info = PI0ForConditionalGeneration.from_pretrained(
                str(directory), config=cfg, dtype=torch_dtype, output_loading_info=True,
                ignore_mismatched_sizes=True,  # report wrong shapes in `info`, checked below
            )  # fmt: skip
        finally:
            transformers_logging.set_verbosity(verbosity)
        check_loading_info(info, self.directory, "pi0")
        self.model.to(default_device())
        self.tokenizer_dir = Path(tokenizer) if tokenizer else self.directory
        if not (self.tokenizer_dir / "tokenizer_config.json").is_file():
            raise FileNotFoundError(f"no PaliGemma tokenizer in {self.tokenizer_dir}; pass "
                                    "--base-load.tokenizer <dir with tokenizer files>")  # fmt: skip
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
        self.image_token = "<image>"
        if self.tokenizer.convert_tokens_to_ids(self.image_token) != cfg.vlm_config.image_token_id:
            raise ValueError("the tokenizer's <image> id differs from the config's image_token_id")
        stats = read_stats(self.directory)
        self.stats = {k: torch.as_tensor(v) for k, v in stats.items()}
        self.action_dim = len(stats["actions_mean"])
        self.chunk_size = cfg.chunk_size
        self.max_action_dim = cfg.max_action_dim
        self.num_steps = num_steps or cfg.num_inference_steps
        self.chain_std = options.chain_std
        vision = cfg.vlm_config.vision_config
        self.image_size = vision.image_size
        self.image_seq_len = (vision.image_size // vision.patch_size) ** 2

    @property
    def device(self) -> torch.device:
        return self.model.action_out_proj.weight.device

    def get_config(self) -> dict[str, Any]:
        return asdict(self.options)

    def loading_options(self) -> dict[str, Any]:
        return asdict(replace(self.options, tokenizer=None))  # a saved copy holds the tokenizer

    @classmethod
    def write_tiny_checkpoint(cls, directory: str | Path, action_dim: int, state_dim: int) -> Path:
        from vla_rl.policies.pi0_tiny import write_tiny_pi0

        return write_tiny_pi0(directory, action_dim, state_dim)

    def save_pretrained(self, directory: str | Path) -> None:
        """transformers' pi0 format (its own names), the statistics, the tokenizer files."""
        with atomic_directory(directory) as tmp:
            self.model.save_pretrained(str(tmp))
            stats = {k: v.tolist() for k, v in self.stats.items()}
            (tmp / "processor_config.json").write_text(json.dumps(stats, indent=2) + "\n")
            for name in TOKENIZER_FILES:
                if (self.tokenizer_dir / name).is_file():
                    shutil.copy(self.tokenizer_dir / name, tmp / name)
            self.write_vla_rl_file(tmp)

    # ---- preprocessing (PI0Processor's) --------------------------------------------------------
    def inputs(self, obs: Observation) -> dict[str, torch.Tensor]:
        if "image" not in obs:
            raise ValueError("pi0 needs camera images; run the env with --env.images")
        images = np.asarray(obs["image"])
        b, n, h, w = images.shape[:4]
        flat = images.reshape(b * n, h, w, 3)
        if h == w:
            pixels = pil_resize(flat, (self.image_size, self.image_size))
        else:
            pixels = torch.from_numpy(flat).permute(0, 3, 1, 2).float().div(255)
            pixels = resize_with_pad(pixels, self.image_size, self.image_size)
        pixels = (pixels * 2 - 1).view(b, n, 3, self.image_size, self.image_size)
        prompts = [self.image_token * self.image_seq_len * n + self.tokenizer.bos_token + t + "\n"
                   for t in obs["instruction"]]  # fmt: skip
        text = self.tokenizer(prompts, padding="longest", padding_side="right",
                              add_special_tokens=False, return_tensors="pt")  # fmt: skip
        state = torch.as_tensor(obs["state"], dtype=torch.float32)
        state = (state - self.stats["state_mean"]) / (self.stats["state_std"] + 1e-8)
        dtype, dev = self.model.action_out_proj.weight.dtype, self.device
        return {
            "input_ids": text["input_ids"].to(dev),
            "attention_mask": text["attention_mask"].to(dev),
            "pixel_values": pixels.to(dev, dtype),
            "pixel_attention_mask": torch.ones(b, n, dtype=torch.bool, device=dev),
            "state": pad_last_dim(state, self.model.config.max_state_dim).to(dev, dtype),
        }

    def _prefix(self, x: dict[str, torch.Tensor]):
        """Run the VLM once over images + text (its key/value cache is the flow's prefix)."""
        m = self.model
        embeds = m.model.embed_prefix(x["input_ids"], x["pixel_values"], x["pixel_attention_mask"])
        return m.model.vlm(
            inputs_embeds=embeds, attention_mask=x["attention_mask"],
            position_ids=x["attention_mask"].cumsum(-1) - 1,
            token_type_ids=torch.zeros_like(x["input_ids"]), use_cache=True,
        )  # fmt: skip

    def _prefix_cache(self, x: dict[str, torch.Tensor]):
        cache = output_cache(self._prefix(x))
        return cache, cache.get_seq_length()

    def _transition(self, obs: Observation):
        """The noise-injected Euler chain over the flattened chunk (B, Ta * 32)."""
        x = self.inputs(obs)
        cache, length = self._prefix_cache(x)
        shape = (len(x["state"]), self.chunk_size, self.max_action_dim)

        def velocity(t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
            out = self.model(state=x["state"], noise=flat.view(shape).to(x["state"].dtype),
                             timestep=t, attention_mask=x["attention_mask"],
                             pixel_attention_mask=x["pixel_attention_mask"],
                             **cache_kwargs(self.model, cache))  # fmt: skip
            cache.crop(length - cache.get_seq_length())  # later steps see the prefix only
            return out.logits.flatten(1)

        return flow_transition(velocity, self.num_steps, self.chain_std * self.temperature)

    def _unnormalize(self, chunk: torch.Tensor) -> torch.Tensor:
        return chunk * (self.stats["actions_std"] + 1e-8) + self.stats["actions_mean"]

    def observation_features(self, obs: Observation) -> torch.Tensor:
        """The VLM's last hidden state at each row's last prompt token (B, D)."""
        x = self.inputs(obs)
        hidden = self._prefix(x).last_hidden_state
        last = x["attention_mask"].sum(-1) - 1
        return hidden[torch.arange(len(hidden)), last].float()
