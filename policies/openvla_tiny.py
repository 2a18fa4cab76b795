"""Tiny random-weight OpenVLA and OpenVLA-OFT checkpoints in the published on-disk format, for
tests and CPU latency figures (nothing is downloaded; `vla-rl tiny-checkpoint --family openvla`).

The `openvla/openvla-7b` layout with the same config fields, tensor names and tokenizer
conventions, only small: config.json (model_type openvla, norm_stats, timm_model_ids,
text_config with the real 32064 vocabulary), model.safetensors with timm names for both towers,
a Llama-2-style tokenizer (32000 tokens, BOS <s>, "▁" at 29871, <PAD> = 32000),
preprocessor_config.json. OFT adds `action_head--*.pt` and `proprio_projector--*.pt` with DDP's
"module." prefix, as the OFT training script saves them. Tower sizes are not expressible in the
real config (they come from the timm ids), so the tiny config also carries
"vla_rl_vision_towers". The statistics are made up; Da / Ds are the target benchmark's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vla_rl.policies.vla_checkpoint import new_checkpoint_directory

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


def write_tiny_openvla(directory: str | Path, action_dim: int, state_dim: int, oft: bool) -> Path:
    """`build_openvla` into a new directory, atomically."""
    with new_checkpoint_directory(directory) as tmp:
        build_openvla(tmp, action_dim, state_dim, oft=oft)
    return Path(directory)
