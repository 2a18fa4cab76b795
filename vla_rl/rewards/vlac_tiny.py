"""A tiny random-weight VLAC checkpoint in the published on-disk layout, for tests and CPU timing
(nothing is downloaded; the real one is InternRobotics/VLAC, CC-BY-NC-SA weights we never ship).

The files the published InternVL2-2B-layout repository holds, with the same names and fields:
config.json (model_type internvl_chat, architectures InternVLChatModel, the remote-code
auto_map, llm_config of an InternLM2ForCausalLM, vision_config of an InternVisionModel,
ps_version v2, select_layer -1, force_image_size 448), generation_config.json (eos
<|im_end|> 92542 and 92543), model.safetensors with InternVL2's tensor names in bfloat16,
InternLM2's tokenizer files (a SentencePiece BPE tokenizer.model with byte fallback, the real
92544 + 9 vocabulary size so every special id is the published one, tokenizer_config.json,
special_tokens_map.json, added_tokens.json) and the remote-code file names. Those .py files are
stubs that raise when imported: vla-rl reads the directory without ever running them, and a test
holds it to that. Only the sizes are tiny (vision width 32, decoder width 32, 2 layers each);
the image size (448), patch (14), pixel shuffle (0.5) and so 256 tokens per image are the real
ones, so prompts have their real lengths.

The tensors are written from the published schema directly (not through vlac_mapping's table),
so loading them is a test of that table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 92544  # InternLM2's SentencePiece pieces
INTERNLM2_SPECIALS = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>",
                      "<|im_end|>", "<|im_start|>"]  # 92538 .. 92543  # fmt: skip
INTERNVL_ADDED = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>",
                  "<box>", "</box>"]  # 92544 .. 92552  # fmt: skip
# Multi-character pieces (a few merge chains of the prompts' words), best-scored first, so the
# BPE merges are exercised; every other character is a piece of its own or byte fallback.
MERGED = ["▁t", "▁th", "▁the", "▁i", "▁im", "ag", "age", "▁image", "▁s", "▁sc", "or", "ore",
          "▁score", "in", "▁in", "ta", "sk", "task", "▁task"]  # fmt: skip
REMOTE_CODE = ["configuration_intern_vit.py", "configuration_internlm2.py",
               "configuration_internvl_chat.py", "conversation.py", "modeling_intern_vit.py",
               "modeling_internlm2.py", "modeling_internvl_chat.py",
               "tokenization_internlm2.py"]  # fmt: skip
STUB = ('raise RuntimeError("vla-rl test stub of the published remote code: it must never be '
        'imported (vla-rl loads VLAC without trust_remote_code)")\n')  # fmt: skip


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def sentencepiece_model(path: Path, add_dummy_prefix: bool = True) -> None:
    """An InternLM2-shaped SentencePiece BPE model: <unk> <s> </s>, 256 byte pieces, "▁", the
    printable ASCII characters, "\\n", `MERGED`, single private-use characters filling the ids
    up to 92538 (they never merge with anything), then InternLM2's six chat specials."""
    from transformers.convert_slow_tokenizer import import_protobuf

    pb = import_protobuf()
    m = pb.ModelProto()
    m.trainer_spec.model_type = 2  # BPE
    m.trainer_spec.vocab_size = VOCAB
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id = 0, 1, 2
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = add_dummy_prefix
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True

    def piece(text: str, kind: int, score: float = 0.0) -> None:
        p = m.pieces.add()
        p.piece, p.type, p.score = text, kind, score

    piece("<unk>", 2)
    piece("<s>", 3)
    piece("</s>", 3)
    for b in range(256):
        piece(f"<0x{b:02X}>", 6)
    singles = ["▁", "\n", *(chr(c) for c in range(33, 127))]
    for k, text in enumerate(MERGED + singles):
        piece(text, 1, -float(k))  # SentencePiece: higher score = merged first
    fill = 0
    while len(m.pieces) < VOCAB - len(INTERNLM2_SPECIALS):
        piece(chr(0xF0000 + fill), 1, -1e4 - fill)  # plane-15 private use: never in a prompt
        fill += 1
    for text in INTERNLM2_SPECIALS:
        piece(text, 4)
    path.write_bytes(m.SerializeToString())


def tokenizer_files(out: Path, add_dummy_prefix: bool = True) -> None:
    """tokenizer.model + InternVL2-2B's tokenizer_config.json, special_tokens_map.json and
    added_tokens.json (ids 92544..92552)."""
    sentencepiece_model(out / "tokenizer.model", add_dummy_prefix)

    def entry(content: str) -> dict:
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True}  # fmt: skip

    decoder = {str(i): entry(t) for i, t in enumerate(["<unk>", "<s>", "</s>"])}
    specials = INTERNLM2_SPECIALS + INTERNVL_ADDED
    first = VOCAB - len(INTERNLM2_SPECIALS)
    decoder.update({str(first + k): entry(t) for k, t in enumerate(specials)})
    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": list(reversed(INTERNLM2_SPECIALS)) + INTERNVL_ADDED,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>",
        "model_max_length": 8192, "pad_token": "</s>", "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    })  # fmt: skip
    _write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": list(reversed(INTERNLM2_SPECIALS)) + INTERNVL_ADDED,
        "bos_token": entry("<s>"), "eos_token": entry("</s>"), "pad_token": entry("</s>"),
        "unk_token": entry("<unk>"),
    })  # fmt: skip
    _write_json(out / "added_tokens.json", {t: VOCAB + k for k, t in enumerate(INTERNVL_ADDED)})


def tiny_config(vision_width: int = 32, text_width: int = 32, layers: int = 2) -> dict:
    """config.json with VLAC / InternVL2-2B's fields and tiny sizes (4 query heads on 2 key/value
    heads, so the grouped wqkv split is exercised)."""
    llm = {
        "_name_or_path": "internlm/internlm2-chat-1_8b", "architectures": ["InternLM2ForCausalLM"],
        "attn_implementation": "flash_attention_2",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "bias": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": text_width, "initializer_range": 0.02, "intermediate_size": 2 * text_width,
        "max_position_embeddings": 32768, "model_type": "internlm2", "num_attention_heads": 4,
        "num_hidden_layers": layers, "num_key_value_heads": 2, "pad_token_id": 2,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 2.0, "type": "dynamic"}, "rope_theta": 1000000,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "vocab_size": VOCAB + len(INTERNVL_ADDED),
    }  # fmt: skip
    vision = {
        "architectures": ["InternVisionModel"], "attention_dropout": 0.0, "drop_path_rate": 0.0,
        "dropout": 0.0, "hidden_act": "gelu", "hidden_size": vision_width, "image_size": 448,
        "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 2 * vision_width,
        "layer_norm_eps": 1e-06, "model_type": "intern_vit_6b", "norm_type": "layer_norm",
        "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": layers,
        "patch_size": 14, "qk_normalization": False, "qkv_bias": True, "torch_dtype": "bfloat16",
        "use_flash_attn": True,
    }  # fmt: skip
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                     "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": 448,
        "llm_config": llm, "max_dynamic_patch": 12, "min_dynamic_patch": 1,
        "model_type": "internvl_chat", "ps_version": "v2", "select_layer": -1,
        "template": "internlm2-chat", "torch_dtype": "bfloat16", "transformers_version": "4.51.3",
        "use_backbone_lora": 0, "use_llm_lora": 0, "use_thumbnail": True, "vision_config": vision,
    }  # fmt: skip


def published_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with InternVL2's published names and shapes for `config` (float32)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.1, base: float = 0.0) -> torch.Tensor:
        return base + scale * torch.randn(*shape, generator=g)

    v, t = config["vision_config"], config["llm_config"]
    d, f, patch = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    n = (config["force_image_size"] // patch) ** 2
    s = {"vision_model.embeddings.class_embedding": r(1, 1, d),
         "vision_model.embeddings.patch_embedding.weight": r(d, 3, patch, patch, scale=0.02),
         "vision_model.embeddings.patch_embedding.bias": r(d),
         "vision_model.embeddings.position_embedding": r(1, n + 1, d)}  # fmt: skip
    for i in range(v["num_hidden_layers"]):
        b = f"vision_model.encoder.layers.{i}."
        s.update({b + "attn.qkv.weight": r(3 * d, d), b + "attn.qkv.bias": r(3 * d),
                  b + "attn.proj.weight": r(d, d), b + "attn.proj.bias": r(d),
                  b + "mlp.fc1.weight": r(f, d), b + "mlp.fc1.bias": r(f),
                  b + "mlp.fc2.weight": r(d, f), b + "mlp.fc2.bias": r(d),
                  b + "norm1.weight": r(d, base=1.0), b + "norm1.bias": r(d),
                  b + "norm2.weight": r(d, base=1.0), b + "norm2.bias": r(d),
                  b + "ls1": r(d, base=0.5), b + "ls2": r(d, base=0.5)})  # fmt: skip
    h, vocab = t["hidden_size"], t["vocab_size"]
    shuffled = d * 4  # pixel shuffle 0.5: 2 x 2 patches per token
    s.update({"mlp1.0.weight": r(shuffled, base=1.0), "mlp1.0.bias": r(shuffled),
              "mlp1.1.weight": r(h, shuffled), "mlp1.1.bias": r(h),
              "mlp1.3.weight": r(h, h), "mlp1.3.bias": r(h),
              "language_model.model.tok_embeddings.weight": r(vocab, h, scale=0.5),
              "language_model.model.norm.weight": r(h, base=1.0),
              "language_model.output.weight": r(vocab, h, scale=0.5)})  # fmt: skip
    heads, kv = t["num_attention_heads"], t["num_key_value_heads"]
    head_dim, ff = h // heads, t["intermediate_size"]
    for i in range(t["num_hidden_layers"]):
        b = f"language_model.model.layers.{i}."
        s.update({b + "attention.wqkv.weight": r((heads + 2 * kv) * head_dim, h, scale=0.3),
                  b + "attention.wo.weight": r(h, heads * head_dim),
                  b + "feed_forward.w1.weight": r(ff, h), b + "feed_forward.w3.weight": r(ff, h),
                  b + "feed_forward.w2.weight": r(h, ff),
                  b + "attention_norm.weight": r(h, base=1.0),
                  b + "ffn_norm.weight": r(h, base=1.0)})  # fmt: skip
    return s


def build_vlac(out: str | Path, add_dummy_prefix: bool = True, seed: int = 0) -> Path:
    """Write a tiny VLAC-layout directory to `out` (created if needed)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = tiny_config()
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json",
                {"eos_token_id": [92542, 92543], "transformers_version": "4.51.3"})  # fmt: skip
    tokenizer_files(out, add_dummy_prefix)
    for name in REMOTE_CODE:
        (out / name).write_text(STUB)
    tensors = published_tensors(config, seed)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def write_tiny_vlac(directory: str | Path) -> Path:
    """`build_vlac` into a new directory, atomically (an existing one is refused: a tiny
    checkpoint never replaces anything)."""
    from vla_rl.io.atomic import atomic_directory

    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} exists; choose a new directory")
    with atomic_directory(directory) as tmp:
        build_vlac(tmp)
    return directory
