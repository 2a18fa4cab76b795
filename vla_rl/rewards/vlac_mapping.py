"""The one key mapping from the published VLAC-2B checkpoint to transformers' native classes.

VLAC-2B (InternRobotics/VLAC on the hub) is an InternVL2-2B-layout `InternVLChatModel`: a
remote-code checkpoint whose tensors carry InternVL2's own names. transformers (>= 5.24, the
version this project pins) has no InternLM2 class, but it has `InternVLForConditionalGeneration`
(vision tower `InternVLVisionModel`, pixel-shuffle projector, any decoder as text model). InternLM2
is a Llama decoder (RMSNorm, rotate-half RoPE, GQA, SwiGLU) whose attention input projection is
one fused `wqkv` and whose MLP is `w1 w2 w3`, so the text model here is `LlamaModel` and the
mapping splits the fused tensor. Everything is data: `RULES` below is the whole mapping, read in
both directions, with two kinds of fused tensors:

    split "thirds": InternViT's `attn.qkv` rows are [q | k | v], D rows each (the remote code
        reshapes the projection to (..., 3, heads, head_dim)).
    split "gqa": InternLM2's `wqkv` rows are interleaved per key/value head:
        (kv_heads, groups + 2, head_dim) with groups = heads / kv_heads, i.e. for each kv head
        its `groups` query heads, then its key head, then its value head (the remote code's
        rearrange "(h gs d) -> h gs d", gs = 2 + groups). Query head j = h * groups + g uses
        key/value head h, which is Llama's GQA grouping (j // groups), so only rows move.

`to_native` renames and splits a published state dict (every name must match exactly one rule;
anything else is refused in one line), `to_published` is its exact inverse (a round trip returns
the same tensors bit for bit: splits and fuses only move rows). `native_config` translates
config.json into the native `InternVLConfig`, refusing the variants the native classes do not
compute the same way (pixel-shuffle v1, an intermediate vision layer).

Names are the published ones as InternVL2's remote code (modeling_intern_vit.py,
modeling_internlm2.py, modeling_internvl_chat.py) defines them; they were read from public copies
of that code, and the VLAC checkpoint's own key list could not be listed from here (no hub access):
`vla-rl`'s loader checks every key against this table, so a difference shows up as a one-line
error naming the first unknown tensors, not as silently random weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

V = "vision_model.encoder.layers.{i}."
NV = "model.vision_tower.encoder.layer.{i}."
L = "language_model.model.layers.{i}."
NL = "model.language_model.layers.{i}."


@dataclass(frozen=True)
class Rule:
    """One published name pattern and its native name(s). `{i}` is a layer index, `{p}` the
    parameter kind (weight or bias). `split` names how a fused tensor divides into `native`'s
    parts, in order (None: a plain rename, one target)."""

    published: str
    native: tuple[str, ...]
    split: str | None = None


def _rename(published: str, native: str) -> Rule:
    return Rule(published, (native,))


RULES: tuple[Rule, ...] = (
    # InternViT -> InternVLVisionModel
    _rename("vision_model.embeddings.class_embedding", "model.vision_tower.embeddings.cls_token"),
    _rename("vision_model.embeddings.position_embedding",
            "model.vision_tower.embeddings.position_embeddings"),
    _rename("vision_model.embeddings.patch_embedding.{p}",
            "model.vision_tower.embeddings.patch_embeddings.projection.{p}"),
    Rule(V + "attn.qkv.{p}", tuple(NV + f"attention.{x}_proj.{{p}}" for x in "qkv"), "thirds"),
    _rename(V + "attn.proj.{p}", NV + "attention.projection_layer.{p}"),
    _rename(V + "attn.q_norm.weight", NV + "attention.q_norm.weight"),  # InternViT-6B only
    _rename(V + "attn.k_norm.weight", NV + "attention.k_norm.weight"),
    _rename(V + "mlp.fc1.{p}", NV + "mlp.fc1.{p}"),
    _rename(V + "mlp.fc2.{p}", NV + "mlp.fc2.{p}"),
    _rename(V + "norm1.{p}", NV + "layernorm_before.{p}"),
    _rename(V + "norm2.{p}", NV + "layernorm_after.{p}"),
    _rename(V + "ls1", NV + "lambda_1"),  # layer scale: x + ls1 * attn(norm1(x))
    _rename(V + "ls2", NV + "lambda_2"),
    # mlp1 = Sequential(LayerNorm, Linear, GELU, Linear) -> InternVLMultiModalProjector
    _rename("mlp1.0.{p}", "model.multi_modal_projector.layer_norm.{p}"),
    _rename("mlp1.1.{p}", "model.multi_modal_projector.linear_1.{p}"),
    _rename("mlp1.3.{p}", "model.multi_modal_projector.linear_2.{p}"),
    # InternLM2 -> LlamaModel + lm_head
    _rename("language_model.model.tok_embeddings.weight",
            "model.language_model.embed_tokens.weight"),
    Rule(L + "attention.wqkv.{p}", tuple(NL + f"self_attn.{x}_proj.{{p}}" for x in "qkv"), "gqa"),
    _rename(L + "attention.wo.{p}", NL + "self_attn.o_proj.{p}"),
    _rename(L + "feed_forward.w1.weight", NL + "mlp.gate_proj.weight"),  # silu(w1 x) * w3 x
    _rename(L + "feed_forward.w3.weight", NL + "mlp.up_proj.weight"),
    _rename(L + "feed_forward.w2.weight", NL + "mlp.down_proj.weight"),
    _rename(L + "attention_norm.weight", NL + "input_layernorm.weight"),
    _rename(L + "ffn_norm.weight", NL + "post_attention_layernorm.weight"),
    _rename("language_model.model.norm.weight", "model.language_model.norm.weight"),
    _rename("language_model.output.weight", "lm_head.weight"),
)  # fmt: skip


def _pattern(template: str) -> re.Pattern[str]:
    escaped = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(escaped.replace(r"\{p\}", "(?P<p>weight|bias)") + r"\Z")


_PUBLISHED = [(_pattern(rule.published), rule) for rule in RULES]
_NATIVE = [(_pattern(name), rule, k) for rule in RULES for k, name in enumerate(rule.native)]


@dataclass(frozen=True)
class FusedShapes:
    """What the "gqa" split needs from the decoder's config."""

    heads: int
    kv_heads: int

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads


def _fill(template: str, fields: dict[str, str]) -> str:
    return template.format(**fields)


def _split(kind: str, tensor: torch.Tensor, shapes: FusedShapes) -> list[torch.Tensor]:
    """A fused tensor (rows first; a weight (R, in) or a bias (R,)) -> its parts [q, k, v]."""
    if kind == "thirds":
        return [t.clone() for t in tensor.chunk(3, 0)]
    g, h = shapes.groups, shapes.kv_heads
    rows = tensor.shape[0]
    if rows % (h * (g + 2)):
        raise ValueError(
            f"a fused wqkv of {rows} rows does not divide into {h} kv heads x ({g} + 2) heads"
        )
    d = rows // (h * (g + 2))
    grid = tensor.reshape(h, g + 2, d, *tensor.shape[1:])  # per kv head: g queries, k, v
    flat = (-1, *tensor.shape[1:])
    return [grid[:, :g].reshape(flat).clone(), grid[:, g].reshape(flat).clone(),
            grid[:, g + 1].reshape(flat).clone()]  # fmt: skip


def _fuse(kind: str, parts: list[torch.Tensor], shapes: FusedShapes) -> torch.Tensor:
    """The inverse of `_split`."""
    if kind == "thirds":
        return torch.cat(parts, 0)
    q, k, v = parts
    g, h = shapes.groups, shapes.kv_heads
    d = k.shape[0] // h
    rest = q.shape[1:]
    grid = torch.cat([q.reshape(h, g, d, *rest), k.reshape(h, 1, d, *rest),
                      v.reshape(h, 1, d, *rest)], 1)  # fmt: skip
    return grid.reshape(-1, *rest)


def _unknown(names: list[str], side: str) -> ValueError:
    shown = ", ".join(names[:3])
    return ValueError(
        f"{len(names)} {side} tensor name(s) outside the VLAC key mapping (e.g. {shown}); "
        "expected InternVL2's vision_model.* / mlp1.* / language_model.* names"
    )


def _match(table: list[tuple], name: str) -> tuple[dict[str, str], tuple] | None:
    """The first (pattern, *rest) row of `table` whose pattern matches `name`: the pattern's
    named fields that matched, and the rest of its row; None when no pattern matches."""
    for pattern, *rest in table:
        m = pattern.match(name)
        if m:
            return {k: v for k, v in m.groupdict().items() if v is not None}, tuple(rest)
    return None


def to_native(state: dict[str, torch.Tensor], shapes: FusedShapes) -> dict[str, torch.Tensor]:
    """Published tensor names -> native `InternVLForConditionalGeneration` names, fused tensors
    split. ValueError (one line) for names no rule matches."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        found = _match(_PUBLISHED, name)
        if found is None:
            unknown.append(name)
            continue
        fields, (rule,) = found
        targets = [_fill(t, fields) for t in rule.native]
        parts = [tensor] if rule.split is None else _split(rule.split, tensor, shapes)
        out.update(zip(targets, parts))
    if unknown:
        raise _unknown(unknown, "published")
    return out


def to_published(state: dict[str, torch.Tensor], shapes: FusedShapes) -> dict[str, torch.Tensor]:
    """The exact inverse of `to_native`: native names back to the published ones, split parts
    fused again. ValueError for names no rule matches or a fused tensor missing a part."""
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, tuple[Rule, dict[int, torch.Tensor]]] = {}
    unknown = []
    for name, tensor in state.items():
        found = _match(_NATIVE, name)
        if found is None:
            unknown.append(name)
            continue
        fields, (rule, k) = found
        target = _fill(rule.published, fields)
        if rule.split is None:
            out[target] = tensor
        else:
            pending.setdefault(target, (rule, {}))[1][k] = tensor
    if unknown:
        raise _unknown(unknown, "native")
    for target, (rule, parts) in pending.items():
        if len(parts) != len(rule.native):
            raise ValueError(f"{target}: {len(parts)} of its {len(rule.native)} parts present")
        out[target] = _fuse(rule.split, [parts[k] for k in range(len(rule.native))], shapes)
    return out


# ---- config.json -> InternVLConfig -----------------------------------------------------------
def check_published_config(config: dict[str, Any]) -> None:
    """Refuse (one line) a config.json this mapping does not compute identically: not an
    InternVL2 chat model with an InternLM2 decoder, or settings the native classes lack."""
    llm = config.get("llm_config") or {}
    arch = (llm.get("architectures") or [None])[0]
    if config.get("model_type") != "internvl_chat" or arch != "InternLM2ForCausalLM":
        raise ValueError(
            f"config.json: model_type {config.get('model_type')!r} with an {arch!r} decoder; "
            "expected a VLAC checkpoint (model_type 'internvl_chat', llm_config.architectures "
            "['InternLM2ForCausalLM'], as InternRobotics/VLAC)"
        )
    checks = [
        # v1 skips the last transpose of the pixel shuffle; the native projector does v2
        (config.get("ps_version", "v1") == "v2", f"ps_version {config.get('ps_version')!r} (v2)"),
        # native InternVL drops the CLS token and shuffles the last layer's patches
        (config.get("select_layer", -1) == -1, f"select_layer {config.get('select_layer')} (-1)"),
        (llm.get("pretraining_tp", 1) == 1, f"pretraining_tp {llm.get('pretraining_tp')} (1)"),
    ]
    bad = [what for ok, what in checks if not ok]
    if bad:
        raise ValueError(f"config.json: {', '.join(bad)} not supported (expected in brackets)")


def native_config(config: dict[str, Any], image_token_id: int):
    """The native `InternVLConfig` (Llama text model) computing what config.json describes;
    image_token_id: the tokenizer's `<IMG_CONTEXT>` id (92546 in InternVL2-2B's vocabulary)."""
    from transformers import InternVLConfig, InternVLVisionConfig, LlamaConfig

    check_published_config(config)
    vision, llm = config["vision_config"], config["llm_config"]
    size = config.get("force_image_size") or vision["image_size"]
    vision_config = InternVLVisionConfig(
        hidden_size=vision["hidden_size"], num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        intermediate_size=vision["intermediate_size"], hidden_act=vision.get("hidden_act", "gelu"),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6), image_size=size,
        patch_size=vision["patch_size"], num_channels=vision.get("num_channels", 3),
        norm_type=vision.get("norm_type", "rms_norm"),  # InternViT's own default
        attention_bias=vision.get("qkv_bias", False),
        use_qk_norm=vision.get("qk_normalization", False),
        use_mean_pooling=True,  # = no final layernorm: InternViT has none
        use_absolute_position_embeddings=True, use_mask_token=False,
    )  # fmt: skip
    # InternLM2's "dynamic" rope (NTK, recomputed only beyond max_position_embeddings) is
    # transformers' "dynamic" type; below 32768 tokens both equal plain RoPE.
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 1e4))}
    scaling = llm.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "dynamic":
        rope.update(rope_type="dynamic", factor=float(scaling["factor"]))
    elif kind not in (None, "default"):
        raise ValueError(f"config.json: llm_config.rope_scaling type {kind!r} not supported")
    text_config = LlamaConfig(
        vocab_size=llm["vocab_size"], hidden_size=llm["hidden_size"],
        intermediate_size=llm["intermediate_size"], num_hidden_layers=llm["num_hidden_layers"],
        num_attention_heads=llm["num_attention_heads"],
        num_key_value_heads=llm.get("num_key_value_heads", llm["num_attention_heads"]),
        hidden_act=llm.get("hidden_act", "silu"),
        max_position_embeddings=llm.get("max_position_embeddings", 32768),
        rms_norm_eps=llm.get("rms_norm_eps", 1e-6), rope_parameters=rope,
        attention_bias=bool(llm.get("bias", False)), mlp_bias=False,  # w1 w2 w3 have no bias
        tie_word_embeddings=False, bos_token_id=llm.get("bos_token_id", 1),
        eos_token_id=llm.get("eos_token_id", 2), pad_token_id=llm.get("pad_token_id", 2),
    )  # fmt: skip
    patches = (size // vision["patch_size"]) ** 2
    ratio = config.get("downsample_ratio", 0.5)
    return InternVLConfig(
        vision_config=vision_config, text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=int(patches * ratio**2), downsample_ratio=ratio,
        projector_hidden_act="gelu",  # mlp1's nn.GELU(): exact erf GELU
        vision_feature_layer=-1, vision_feature_select_strategy="default",  # drop CLS
        tie_word_embeddings=False,
    )  # fmt: skip


def fused_shapes(config: dict[str, Any]) -> FusedShapes:
    llm = config["llm_config"]
    heads = llm["num_attention_heads"]
    return FusedShapes(heads=heads, kv_heads=llm.get("num_key_value_heads", heads))
