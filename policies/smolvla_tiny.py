"""A tiny random-weight SmolVLA checkpoint in the published on-disk format, for tests and CPU
latency figures (nothing is downloaded; `vla-rl tiny-checkpoint --family smolvla`).

The `lerobot/smolvla_base` layout: lerobot config.json ("type": "smolvla", features,
normalisation mapping), model.safetensors with `model.vlm_with_expert.*` names, the normaliser
statistics as the lerobot processor saves them, and a tiny SmolVLM directory (config, tokenizer,
processor) that `vlm_model_name` points to. The statistics are made up; Da / Ds are the target
benchmark's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vla_rl.policies.vla_checkpoint import new_checkpoint_directory


def build_smolvlm(out: str | Path, image_size: int = 32) -> Path:
    """A tiny SmolVLM2-format directory (config, tokenizer with SmolVLM's special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
               "<image>", "<global-img>"]  # fmt: skip
    vocab = {t: i for i, t in enumerate(special)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(special)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>",
                                  eos_token="<end_of_utterance>", pad_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")  # fmt: skip
    tok.save_pretrained(str(out))
    cfg = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=64,
                         intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                         pad_token_id=0),
        image_token_id=vocab["<image>"], scale_factor=2, pad_token_id=0,
    )  # fmt: skip
    cfg.save_pretrained(str(out))
    return out


def build_smolvla(out: str | Path, action_dim: int = 6, state_dim: int = 6, image_size: int = 32,
                  chunk_size: int = 4, vlm_model_name: str | None = None) -> Path:  # fmt: skip
    """A tiny `lerobot/smolvla_base`-format directory with its SmolVLM directory inside (vlm/),
    which config.json's vlm_model_name points to (`vlm_model_name`: where vlm/ will be once
    `out` is moved; None: out/vlm itself)."""
    from safetensors.torch import save_file

    from vla_rl.policies.smolvla_model import SmolVLAModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vlm_dir = build_smolvlm(out / "vlm", image_size)
    cameras = {f"observation.images.camera{i}": {"type": "VISUAL", "shape": [3, 256, 256]}
               for i in (1, 2, 3)}  # fmt: skip
    config = {
        "type": "smolvla",
        "n_obs_steps": 1,
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
        "input_features": {"observation.state": {"type": "STATE", "shape": [state_dim]}, **cameras},
        "output_features": {"action": {"type": "ACTION", "shape": [action_dim]}},
        "device": "cpu",
        "chunk_size": chunk_size,
        "n_action_steps": chunk_size,
        "max_state_dim": 32,
        "max_action_dim": 32,
        "resize_imgs_with_padding": [image_size] * 2,
        "empty_cameras": 0,
        "adapt_to_pi_aloha": False,
        "use_delta_joint_actions_aloha": False,
        "tokenizer_max_length": 16,
        "num_steps": 3,
        "use_cache": True,
        "freeze_vision_encoder": True,
        "train_expert_only": True,
        "train_state_proj": True,
        "vlm_model_name": vlm_model_name or str(vlm_dir),
        "load_vlm_weights": False,
        "add_image_special_tokens": False,
        "attention_mode": "cross_attn",
        "prefix_length": 0,
        "pad_language_to": "max_length",
        "num_expert_layers": 0,
        "num_vlm_layers": 4,
        "self_attn_every_n_layers": 2,
        "expert_width_multiplier": 0.75,
        "min_period": 0.004,
        "max_period": 4.0,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    from transformers import AutoConfig

    torch.manual_seed(0)
    model = SmolVLAModel(config, AutoConfig.from_pretrained(str(vlm_dir)))
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()},
              str(out / "model.safetensors"))  # fmt: skip
    stats = {
        "observation.state.mean": torch.zeros(state_dim),
        "observation.state.std": torch.ones(state_dim),
        "action.mean": torch.zeros(action_dim),
        "action.std": 0.5 * torch.ones(action_dim),
    }
    save_file(stats, str(out / "policy_preprocessor_step_5_normalizer_processor.safetensors"))
    return out


def write_tiny_smolvla(directory: str | Path, action_dim: int, state_dim: int) -> Path:
    """`build_smolvla` into a new directory, atomically; vlm_model_name points to the final
    directory's vlm/, not the temporary one it was written in."""
    with new_checkpoint_directory(directory) as tmp:
        build_smolvla(tmp, action_dim, state_dim, vlm_model_name=str(Path(directory) / "vlm"))
    return Path(directory)
