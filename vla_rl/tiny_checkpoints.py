"""Tiny random-weight checkpoints in the REAL on-disk formats of the published VLAs, for tests
and CPU latency figures (nothing here is downloaded; `vla-rl tiny-checkpoint FAMILY DIR`).

Each builder writes what the published checkpoint directory holds, with the same config fields,
tensor names and tokenizer conventions, only with small sizes:
* openvla / openvla-oft: `openvla/openvla-7b` layout: config.json (model_type openvla,
  norm_stats, timm_model_ids, text_config with the real 32064 vocabulary), model.safetensors with
  timm names for both towers, a Llama-2-style tokenizer (32000 tokens, BOS <s>, "▁" at 29871,
  <PAD> = 32000), preprocessor_config.json; OFT adds `action_head--*.pt` and
  `proprio_projector--*.pt` with DDP's "module." prefix, as the OFT training script saves them.
  Tower sizes are not expressible in the real config (they come from the timm ids), so the tiny
  config also carries "vla_rl_vision_towers".
* pi0: transformers' PI0 config.json + model.safetensors with `lerobot/pi0_base`'s names
  (paligemma_with_expert.*), which transformers renames on load; a Gemma-style tokenizer.
* smolvla: `lerobot/smolvla_base` layout: lerobot config.json ("type": "smolvla", features,
  normalisation mapping), model.safetensors with `model.vlm_with_expert.*` names, the
  normaliser statistics as the lerobot processor saves them, and a tiny SmolVLM directory
  (config, tokenizer, processor) that `vlm_model_name` points to.
The vectors are made up; `state_dim` / `action_dim` are the target benchmark's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

OPENVLA_VOCAB = 32000  # Llama-2
EMPTY_TOKEN = 29871


def _llama_tokenizer(directory: Path) -> None:
    """A Llama-2-style byte-fallback BPE tokenizer with Llama's 32000 ids: <unk> <s> </s>, 256
    byte tokens, printable characters, "▁" at 29871, fillers, and the added <PAD> = 32000."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import LlamaTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{i:02X}>": 3 + i for i in range(256)})
    for ch in (chr(c) for c in range(33, 127)):
        vocab[ch] = len(vocab)
    fill = len(vocab)
    while len(vocab) < OPENVLA_VOCAB:
        vocab["▁" if fill == EMPTY_TOKEN else f"<filler_{fill}>"] = fill
        fill += 1
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])  # fmt: skip
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = LlamaTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
    )
    tok.add_special_tokens({"pad_token": "<PAD>"})
    tok.save_pretrained(str(directory))


def _timm_vit(prefix: str, kind: str, d: int, depth: int, mlp: int, patch: int, n: int,
              registers: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """A timm ViT's tensors as Prismatic's checkpoint stores them (random values)."""
    g = torch.Generator().manual_seed(len(prefix) + depth)

    def r(*shape, scale=0.1):
        return scale * torch.randn(*shape, generator=g)

    s = {f"{prefix}patch_embed.proj.weight": r(d, 3, patch, patch),
         f"{prefix}patch_embed.proj.bias": r(d), f"{prefix}pos_embed": r(1, n, d),
         f"{prefix}norm.weight": 1 + r(d), f"{prefix}norm.bias": r(d)}  # fmt: skip
    if kind == "dinov2":
        s[f"{prefix}cls_token"] = r(1, 1, d)
        s[f"{prefix}reg_token"] = r(1, registers, d)
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        s.update({b + "norm1.weight": 1 + r(d), b + "norm1.bias": r(d),
                  b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d),
                  b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
                  b + "norm2.weight": 1 + r(d), b + "norm2.bias": r(d),
                  b + "mlp.fc1.weight": r(mlp, d), b + "mlp.fc1.bias": r(mlp),
                  b + "mlp.fc2.weight": r(d, mlp), b + "mlp.fc2.bias": r(d)})  # fmt: skip
        if kind == "dinov2":
            s[b + "ls1.scale_factor"] = 1 + r(d)
            s[b + "ls2.scale_factor"] = 1 + r(d)
    if kind == "siglip":
        a = f"{prefix}attn_pool."
        s.update({a + "latent": r(1, 1, d), a + "q.weight": r(d, d), a + "q.bias": r(d),
                  a + "kv.weight": r(2 * d, d), a + "kv.bias": r(2 * d), a + "proj.weight": r(d, d),
                  a + "proj.bias": r(d), a + "norm.weight": 1 + r(d), a + "norm.bias": r(d),
                  a + "mlp.fc1.weight": r(mlp, d), a + "mlp.fc1.bias": r(mlp),
                  a + "mlp.fc2.weight": r(d, mlp), a + "mlp.fc2.bias": r(d)})  # fmt: skip
    return s


def _stats(dim: int, low: float, high: float) -> dict[str, list]:
    lo, hi = [low] * dim, [high] * dim
    mid = [(low + high) / 2] * dim
    return {"mean": mid, "std": [(high - low) / 4] * dim, "min": lo, "max": hi, "q01": lo,
            "q99": hi, "mask": [True] * (dim - 1) + [False] if dim > 1 else [True]}  # fmt: skip


def build_openvla(out: str | Path, action_dim: int = 7, state_dim: int = 8, image_size: int = 32,
                  oft: bool = False) -> Path:  # fmt: skip
    """A tiny `openvla/openvla-7b`-format directory (with OFT's head files when `oft`)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _llama_tokenizer(out)
    hidden, patch = 64, 8
    n = (image_size // patch) ** 2
    towers = [dict(kind="dinov2", hidden=32, depth=3, heads=2, mlp=64, patch=patch,
                   image_size=image_size, registers=4),
              dict(kind="siglip", hidden=48, depth=3, heads=2, mlp=96, patch=patch,
                   image_size=image_size)]  # fmt: skip
    text = dict(model_type="llama", vocab_size=OPENVLA_VOCAB + 64, pad_token_id=OPENVLA_VOCAB,
                hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, torch_dtype="bfloat16")  # fmt: skip
    dataset = "libero_spatial_no_noops" if oft else "bridge_orig"
    norm_stats = {dataset: {"action": _stats(action_dim, -0.5, 0.5),
                            "proprio": _stats(state_dim, -1.0, 1.0)},
                  "fractal20220817_data": {"action": _stats(action_dim, -1.0, 1.0),
                                           "proprio": _stats(state_dim, -1.0, 1.0)}}  # fmt: skip
    config = {
        "architectures": ["OpenVLAForActionPrediction"],
        "auto_map": {
            "AutoConfig": "configuration_prismatic.OpenVLAConfig",
            "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
        },
        "model_type": "openvla",
        "arch_specifier": "no-align+fused-gelu-mlp",
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "image_resize_strategy": "resize-naive",
        "image_sizes": [image_size, image_size],
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": 2048,
        "n_action_bins": 256,
        "norm_stats": norm_stats,
        "output_projector_states": False,
        "pad_to_multiple_of": 64,
        "pad_token_id": OPENVLA_VOCAB,
        "text_config": text,
        "timm_model_ids": [
            "vit_large_patch14_reg4_dinov2.lvd142m",
            "vit_so400m_patch14_siglip_224",
        ],
        "timm_override_act_layers": [None, None],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "vla_rl_vision_towers": towers,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    preprocessor = {
        "image_processor_type": "PrismaticImageProcessor", "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, image_size, image_size]] * 2, "interpolations": ["bicubic"] * 2,
        "means": [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]],
        "stds": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]], "use_fused_vision_backbone": True,
        "processor_class": "PrismaticProcessor",
    }  # fmt: skip
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    torch.manual_seed(0)
    state = {}
    for prefix, t in zip(("vision_backbone.featurizer.", "vision_backbone.fused_featurizer."),
                         towers):  # fmt: skip
        state.update(_timm_vit(prefix, t["kind"], t["hidden"], t["depth"], t["mlp"], patch, n,
                               t.get("registers", 0)))  # fmt: skip
    vision = sum(t["hidden"] for t in towers)
    for name, (o, i) in {"fc1": (4 * vision, vision), "fc2": (hidden, 4 * vision),
                         "fc3": (hidden, hidden)}.items():  # fmt: skip
        state[f"projector.{name}.weight"] = 0.1 * torch.randn(o, i)
        state[f"projector.{name}.bias"] = 0.1 * torch.randn(o)
    lm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"}))
    state.update({f"language_model.{k}": v for k, v in lm.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    if oft:
        _oft_heads(out, hidden, action_dim, state_dim)
    return out


def _oft_heads(out: Path, hidden: int, action_dim: int, state_dim: int) -> None:
    """OFT's separate head files: the L1 regression head (MLPResNet, 2 blocks, on Da
    concatenated hidden states per action) and the proprio projector, DDP-prefixed."""
    d_in = hidden * action_dim
    head = {
        "model.layer_norm1.weight": torch.ones(d_in),
        "model.layer_norm1.bias": torch.zeros(d_in),
        "model.fc1.weight": 0.05 * torch.randn(hidden, d_in),
        "model.fc1.bias": torch.zeros(hidden),
        "model.layer_norm2.weight": torch.ones(hidden),
        "model.layer_norm2.bias": torch.zeros(hidden),
        "model.fc2.weight": 0.05 * torch.randn(action_dim, hidden),
        "model.fc2.bias": torch.zeros(action_dim),
    }
    for i in range(2):
        b = f"model.mlp_resnet_blocks.{i}.ffn."
        head.update({b + "0.weight": torch.ones(hidden), b + "0.bias": torch.zeros(hidden),
                     b + "1.weight": 0.05 * torch.randn(hidden, hidden),
                     b + "1.bias": torch.zeros(hidden)})  # fmt: skip
    proprio = {
        "fc1.weight": 0.1 * torch.randn(hidden, state_dim),
        "fc1.bias": torch.zeros(hidden),
        "fc2.weight": 0.1 * torch.randn(hidden, hidden),
        "fc2.bias": torch.zeros(hidden),
    }
    torch.save({f"module.{k}": v for k, v in head.items()}, out / "action_head--10_checkpoint.pt")
    torch.save({f"module.{k}": v for k, v in proprio.items()},
               out / "proprio_projector--10_checkpoint.pt")  # fmt: skip


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
                  chunk_size: int = 4) -> Path:  # fmt: skip
    """A tiny `lerobot/smolvla_base`-format directory with its SmolVLM directory inside (vlm/),
    which config.json's vlm_model_name points to."""
    from safetensors.torch import save_file

    from vla_rl.policies.smolvla import SmolVLAModel

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
        "vlm_model_name": str(vlm_dir),
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


BUILDERS = {
    "openvla": lambda out, a, s: build_openvla(out, a, s),
    "openvla-oft": lambda out, a, s: build_openvla(out, a, s, oft=True),
    "pi0": build_pi0,
    "smolvla": build_smolvla,
}


@dataclass
class TinyCheckpointConfig:
    """`vla-rl tiny-checkpoint`: write a tiny random-weight checkpoint of a real VLA family in
    its published on-disk format (for trying `--base <family> --base-path` and timing)."""

    family: str = "openvla"
    """openvla, openvla-oft, pi0 or smolvla."""
    output_dir: str = "runs/tiny-checkpoints/openvla"
    """Directory to write (must not exist yet)."""
    action_dim: int = 7
    """Da of the made-up dataset statistics (7: LIBERO; 4: Meta-World)."""
    state_dim: int = 8
    """Ds of the proprio statistics (8: LIBERO; 39: Meta-World)."""


def write_tiny_checkpoint(cfg: TinyCheckpointConfig) -> Path:
    from vla_rl.atomic_io import atomic_directory
    from vla_rl.registry import check_choice

    check_choice("family", cfg.family, list(BUILDERS))
    if cfg.action_dim < 1 or cfg.state_dim < 1:
        raise ValueError("--action-dim and --state-dim must be >= 1")
    out = Path(cfg.output_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new --output-dir")
    with atomic_directory(out) as tmp:
        BUILDERS[cfg.family](tmp, cfg.action_dim, cfg.state_dim)
    if cfg.family == "smolvla":  # vlm_model_name pointed into the temporary directory
        config = json.loads((out / "config.json").read_text())
        config["vlm_model_name"] = str(out / "vlm")
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
