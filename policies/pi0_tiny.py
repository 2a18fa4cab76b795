"""A tiny random-weight pi0 checkpoint in the published on-disk format, for tests and CPU latency
figures (nothing is downloaded; `vla-rl tiny-checkpoint --family pi0`): transformers' PI0
config.json, model.safetensors with `lerobot/pi0_base`'s tensor names
(paligemma_with_expert.*), which transformers renames on load, processor_config.json statistics
and a Gemma-style tokenizer. The statistics are made up; Da / Ds are the target benchmark's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vla_rl.policies.vla_checkpoint import new_checkpoint_directory


def _gemma_tokenizer(directory: Path, extra: list[str]) -> int:
    """A PaliGemma-style tokenizer: <pad> <eos> <bos> <unk>, byte fallback, characters, "▁",
    then the special tokens `extra` (e.g. <image>). Returns its size."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({f"<0x{i:02X}>": 4 + i for i in range(256)})
    for ch in [*(chr(c) for c in range(33, 127)), "▁", *extra]:
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse()])  # fmt: skip
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")  # fmt: skip
    tok.add_special_tokens({"additional_special_tokens": extra})
    tok.save_pretrained(str(directory))
    return len(vocab)


def build_pi0(out: str | Path, action_dim: int = 7, state_dim: int = 8, image_size: int = 32,
              chunk_size: int = 4) -> Path:  # fmt: skip
    """A tiny pi0 directory: transformers' PI0 config.json, model.safetensors with
    `lerobot/pi0_base`'s tensor names, processor_config.json statistics, a tokenizer."""
    from safetensors.torch import save_file
    from transformers import PI0Config, PI0ForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = _gemma_tokenizer(out, ["<image>"])
    cfg = PI0Config(
        vlm_config=dict(
            model_type="paligemma", projection_dim=64, image_token_id=size - 1,
            text_config=dict(model_type="gemma", hidden_size=64, num_hidden_layers=2,
                             intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
                             head_dim=32, vocab_size=512),
            vision_config=dict(model_type="siglip_vision_model", hidden_size=32,
                               intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               patch_size=8, image_size=image_size, vision_use_head=False)),
        dit_config=dict(model_type="gemma", hidden_size=48, num_hidden_layers=2,
                        intermediate_size=96, num_attention_heads=2, num_key_value_heads=1,
                        head_dim=32),
        chunk_size=chunk_size, max_state_dim=32, max_action_dim=32, num_inference_steps=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = PI0ForConditionalGeneration(cfg)
    renames = [("model.vlm.language_model.embed_tokens", "paligemma_with_expert.paligemma.lm_head"),
               ("model.dit.embed_tokens", "paligemma_with_expert.gemma_expert.lm_head"),
               ("model.vlm", "paligemma_with_expert.paligemma.model"),
               ("model.dit", "paligemma_with_expert.gemma_expert.model"),
               ("embed_action_time.", "")]  # fmt: skip

    def lerobot_name(name: str) -> str:  # lerobot/pi0_base's names (transformers maps them back)
        for hf, lr in renames:
            if name.startswith(hf):
                return "model." + lr + name[len(hf) :]
        return "model." + name

    state = {lerobot_name(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    cfg.save_pretrained(str(out))
    stats = {"state_mean": [0.0] * state_dim, "state_std": [1.0] * state_dim,
             "actions_mean": [0.0] * action_dim, "actions_std": [0.5] * action_dim}  # fmt: skip
    (out / "processor_config.json").write_text(json.dumps(stats, indent=2) + "\n")
    return out


def write_tiny_pi0(directory: str | Path, action_dim: int, state_dim: int) -> Path:
    """`build_pi0` into a new directory, atomically."""
    with new_checkpoint_directory(directory) as tmp:
        build_pi0(tmp, action_dim, state_dim)
    return Path(directory)
