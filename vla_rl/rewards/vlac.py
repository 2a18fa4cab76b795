"""VLAC as a `ProgressCritic`: the published VLAC-2B checkpoint on transformers' native classes,
with VLAC's own prompts, image preprocessing and answer parsing (critics.md section 1).

What the published checkpoint is (InternRobotics/VLAC on the hub, the 2B model; read from the
VLAC code, the hub file list quoted in critics.md 1.1 and InternVL2-2B's public files; this
machine cannot reach the hub, so every item below is a thing to confirm on the real files):
* files: config.json, generation_config.json (eos [92542, 92543]), one model.safetensors
  (bf16, ~2.2 B parameters, 4.41 GB), remote code (configuration_intern_vit.py,
  configuration_internlm2.py, configuration_internvl_chat.py, conversation.py,
  modeling_intern_vit.py, modeling_internlm2.py, modeling_internvl_chat.py,
  tokenization_internlm2.py) and InternLM2's tokenizer files (tokenizer.model: SentencePiece
  BPE; tokenizer_config.json; special_tokens_map.json; added_tokens.json).
* config.json: model_type "internvl_chat", architectures ["InternVLChatModel"], auto_map to
  configuration_internvl_chat.InternVLChatConfig / modeling_internvl_chat.InternVLChatModel;
  vision_config an InternVisionModel (InternViT-300M-448px: width 1024, 24 layers, 16 heads,
  layer_norm, qkv_bias, no qk norm, 448 px, patch 14); llm_config an InternLM2ForCausalLM
  (InternLM2-chat-1.8B: width 2048, 24 layers, 16 heads on 8 key/value heads, vocabulary 92553
  = 92544 + InternVL's 9 added tokens, rope_theta 1e6 with "dynamic" scaling); mlp1 projector on
  a 0.5 pixel shuffle ("ps_version" v2) of the last vision layer ("select_layer" -1).
* transformers 5.24 has no InternLM2 class (only InternLM3, a different attention layout), and
  VLAC's remote code targets 4.5x. The route taken: InternLM2 is a Llama decoder with a fused,
  per-key/value-head interleaved `wqkv` and a `w1 w2 w3` SwiGLU, so the checkpoint maps onto
  the native `InternVLForConditionalGeneration` (`InternVLVisionModel` + pixel-shuffle
  `InternVLMultiModalProjector` + `LlamaModel`) through one key mapping, as data, with the two
  fused tensors split (vlac_mapping.py, round-trip tested). No remote code and no
  `trust_remote_code` anywhere; the tokenizer is rebuilt from tokenizer.model
  (vlac_tokenizer.py); the weights are read as safetensors only.

VLAC's conventions, reproduced (evo_vlac's GAC_model, run through ms-swift 3.3's internvl2
template, which VLAC was trained and is served with; the template was read in a 3.x version of
ms-swift, not necessarily 3.3: its BOS (ChatmlTemplateMeta's auto_add_bos) and the newline it
puts after `</img>` are the details to confirm first):
* every frame is resized to 448 x 448 with PIL LANCZOS, no crop (`_process_image_to_pil`); a
  square 448 image is one tile under InternVL's dynamic tiling (no thumbnail), so it becomes
  (448 / 14)^2 x 0.5^2 = 256 `<IMG_CONTEXT>` tokens between `<img>` and `</img>\\n`, pixels
  scaled to [0, 1] and normalised with the ImageNet mean and std.
* the chat: BOS, `<|im_start|>system\\n{VLAC's system prompt}<|im_end|>\\n<|im_start|>user\\n
  {query}<|im_end|>\\n<|im_start|>assistant\\n`; images without an `<image>` tag in the query are
  prepended to it (the done query has none). The strings and these rules are in
  vlac_prompts.py (`pair_query`, `trajectory_query`, `done_query`, `chat_text`), golden-tested
  byte for byte.
* pair answers are a signed integer percent (VLAC decodes greedily: temperature 0.5 with
  top_k 1); here: greedy decoding of at most `max_new_tokens` tokens with a key/value cache,
  parsed as a number; `rich` replaces each digit token by the expectation over the digit tokens
  among its top 10 with probability > 0.1 x the top one (VLAC's `rich=True`; probabilities here
  from the raw logits, which is what swift's logprobs are taken to be). Percent / 100,
  clamped to [-1, 1]. An answer that does not parse (no stop token, not a number) scores 0, the
  neutral delta, and is counted (`VLACModel.parse_failures`, `last_failure`).
* done is not generated: its answer is the token "1" or "0", so done = P("1") / (P("1") + P("0"))
  from the logits at the answer position of one forward pass (after the tokens both answers
  share, e.g. SentencePiece's "▁"). VLAC's rich done is the expectation over the digit tokens
  in the top 10 above 0.1 x the top one: the same number, except that it snaps to 1 (or 0) once
  the other answer falls under a tenth of the top one, where this one stays a probability.
* the one-shot (in-context) pair prompt takes a reference trajectory (VLAC: up to 11 frames,
  `reference`), then the episode's first frame, then the pair. In `VLACCritic` the pair's first
  frame stands for the episode's first frame, which is exact for anchored progress (every pair
  starts at frame 0) and an approximation for chained progress.

Cost per pair query: one prefill of ~2 x 256 image tokens + ~100 text tokens (~650 tokens,
critics.md 1.7) and up to `max_new_tokens` (8) cached decoding steps; a done query: one forward of
~350 tokens. One-shot with R reference frames adds (R + 1) x 256 tokens. A GPU job: batch the
queries (`batch_size`) and score at action-chunk boundaries; on a CPU VLAC-2B takes seconds per
pair (only the tiny checkpoint is for CPUs).

Semantics: VLAC's positive answer is the percent of the *remaining* progress gained, as
`ProgressCritic` defines it; its negative answers were trained with dt / (T - i) (critics.md
1.6), not the fraction of achieved progress lost, so negative deltas follow the paper's scale.

License: VLAC's weights are CC-BY-NC-SA-4.0 (the hub model card; the GitHub code says MIT /
Apache-2.0). vla-rl converts them in memory on the user's machine at load time and never writes,
ships or uploads converted weights.

Parity on real weights (not checkable here: no hub access, no GPU): run the reference (VLAC's
GAC_model on ms-swift 3.3 and transformers 4.51.3, temperature 0.5, top_k 1, its system prompt)
and `load_vlac` on one GPU over VLAC's example images (evo_vlac/examples/images, zero-shot and
one-shot) and ~20 LIBERO / Meta-World frame pairs, and compare per query: the prompt token ids
(`VLACModel.prompt_ids` against swift's `template.encode`: exactly equal), the pixel values
(< 1e-6), the last-position logits (float32 both sides: max |difference| < 1e-3; bf16: < 0.1 with
the same argmax), the greedy pair answers (the same strings; a bf16 mismatch only at a near tie,
top-2 gap < 0.1), and done (against P("1") / (P("1") + P("0")) from the reference's logits:
< 0.01 in float32, < 0.03 in bf16). Compare deltas, not chained values: VLAC's value chain
treats negative answers by another rule than `progress_update`.
Shapes: N queries, H, W frame size, R reference frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl.rewards.progress_critic import Frames, ProgressCritic, _as_frames
from vla_rl.rewards.vlac_prompts import (
    IM_END,
    IMG_CONTEXT,
    SYSTEM_PROMPT,
    chat_chunks,
    done_query,
    pair_query,
    parse_percent,
    preprocess,
    rich_text,
    sample_reference,
    trajectory_query,
)


# ---- the model -------------------------------------------------------------------------------
class VLACModel:
    """VLAC's two questions on a loaded native model, batched: `pair_deltas` (greedy answer,
    parsed) and `done_probs` (answer-token logits). Build it with `load_vlac`.

    max_new_tokens: the pair answer's decoding budget; 8 covers "-100", a possible leading "▁"
        and the stop token. rich: VLAC's expectation over digit tokens (finer than integer
        percents, critics.md 1.9). system: the system prompt (VLAC's).
    """

    def __init__(self, model: Any, tokenizer: Any, stop_ids: Sequence[int], *,
                 max_new_tokens: int = 8, rich: bool = False,
                 system: str = SYSTEM_PROMPT):  # fmt: skip
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stop_ids = sorted(set(stop_ids))
        self.max_new_tokens = max_new_tokens
        self.rich = rich
        self.system = system
        self.tokens_per_image = model.config.image_seq_length
        self.image_size = model.config.vision_config.image_size[0]
        self.context_id = tokenizer.token_id(IMG_CONTEXT)
        ones, zeros = tokenizer.encode("1"), tokenizer.encode("0")
        # Both answers tokenized as swift tokenized its training targets; what they share (e.g.
        # "▁") is fed as prompt, the next token decides.
        if len(ones) != len(zeros) or ones[:-1] != zeros[:-1]:
            raise ValueError(f"the tokenizer splits the done answers unlike each other: "
                             f"'1' -> {ones}, '0' -> {zeros}")  # fmt: skip
        self.answer_prefix, self.yes_id, self.no_id = ones[:-1], ones[-1], zeros[-1]
        self.answers = 0
        """Pair answers decoded so far."""
        self.parse_failures = 0
        """Pair answers that did not parse (scored 0)."""
        self.rich_fallbacks = 0
        """Rich answers that were no number, so the plain greedy answer was parsed instead."""
        self.last_failure: str | None = None
        """The last answer that did not parse (None: no stop token within max_new_tokens)."""

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # ---- inputs ------------------------------------------------------------------------------
    def prompt_ids(self, query: str, num_images: int) -> list[int]:
        """Token ids of one prompt: BOS, each chunk tokenized on its own (as swift does, with
        add_special_tokens=False), `tokens_per_image` context ids per image."""
        tok = self.tokenizer
        ids = [tok.bos_id] if tok.add_bos else []
        for k, chunk in enumerate(chat_chunks(query, num_images, self.system)):
            if k:
                ids += [self.context_id] * self.tokens_per_image
            ids += tok.encode(chunk)
        return ids

    def _batch(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids (N, L) and mask: every row's prompt ends in the last column."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, length - len(r) :] = torch.tensor(r)
            mask[i, length - len(r) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def pixels(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, 3, 448, 448) on the model's device and dtype."""
        return preprocess(frames, self.image_size).to(self.device, self.dtype)

    def _forward(self, ids, mask, pixels=None, cache=None):
        """Logits of the last position (N, 1, V) and the cache. Positions count real tokens
        only, so a left-padded row is computed as it would be alone. `cache`: the keyword of
        transformers >= 5.24 (the pinned floor; policies/kv_cache.py serves older names)."""
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -ids.shape[1] :]
        return self.model(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                          position_ids=positions, use_cache=True, logits_to_keep=1,
                          cache=cache)  # fmt: skip

    # ---- the two questions -------------------------------------------------------------------
    @torch.no_grad()
    def pair_deltas(self, frames_a: Frames, frames_b: Frames, tasks: Sequence[str],
                    reference: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Deltas (N,) in [-1, 1] of frames_b over frames_a (uint8 (N, H, W, 3)), one task each.
        reference: preprocessed frames (R, 3, 448, 448) for the one-shot prompt, or None."""
        a, b = self.pixels(frames_a), self.pixels(frames_b)
        if reference is None:
            queries, images = [pair_query(t) for t in tasks], torch.stack([a, b], 1)
        else:
            ref = reference.to(self.device, self.dtype).expand(len(a), *reference.shape)
            queries = [trajectory_query(t, len(reference)) for t in tasks]
            images = torch.cat([ref, torch.stack([a, a, b], 1)], 1)  # first frame, then the pair
        ids, mask = self._batch([self.prompt_ids(q, images.shape[1]) for q in queries])
        values = []
        for plain, rich in self._greedy(ids, mask, images.flatten(0, 1)):
            self.answers += 1
            percent = None if rich is None else parse_percent(rich)
            if rich is not None and percent is None:
                self.rich_fallbacks += 1  # e.g. digit-by-digit tokens: "1.02.0" is no number
            if percent is None and plain is not None:
                percent = parse_percent(plain)
            if percent is None:
                self.parse_failures += 1
                self.last_failure = plain
                percent = 0.0
            values.append(max(-100.0, min(100.0, percent)) / 100)
        return torch.tensor(values, dtype=torch.float32)

    @torch.no_grad()
    def done_probs(self, frames: Frames, tasks: Sequence[str]) -> torch.Tensor:
        """Done probabilities (N,): P("1") / (P("1") + P("0")) at the answer position."""
        pixels = self.pixels(frames)
        rows = [self.prompt_ids(done_query(t), 1) + self.answer_prefix for t in tasks]
        ids, mask = self._batch(rows)
        logits = self._forward(ids, mask, pixels).logits[:, -1].float()
        pair = torch.stack([logits[:, self.yes_id], logits[:, self.no_id]], -1)
        return pair.softmax(-1)[:, 0].cpu()

    def _greedy(self, ids, mask, pixels) -> list[tuple[str | None, str | None]]:
        """Greedy answers: (the text before the stop token, its rich form where asked), each
        None when no stop token came within max_new_tokens."""
        out = self._forward(ids, mask, pixels)
        chosen, tops = [], []
        stop = torch.tensor(self.stop_ids, device=self.device)
        finished = torch.zeros(len(ids), dtype=torch.bool, device=self.device)
        for step in range(self.max_new_tokens):
            logits = out.logits[:, -1].float()
            token = logits.argmax(-1)
            chosen.append(token)
            tops.append(logits.softmax(-1).topk(10, -1))
            finished |= torch.isin(token, stop)
            if bool(finished.all()) or step + 1 == self.max_new_tokens:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = self._forward(token[:, None], mask, cache=out.cache)
        tokens = torch.stack(chosen, 1).tolist()
        top_ids = torch.stack([t.indices for t in tops], 1).tolist()
        top_probs = torch.stack([t.values for t in tops], 1).tolist()
        return [self._answer(r, i, p) for r, i, p in zip(tokens, top_ids, top_probs)]

    def _answer(self, tokens: list[int], top_ids: list[list[int]], top_probs):
        ends = [k for k, t in enumerate(tokens) if t in self.stop_ids]
        if not ends:
            return None, None
        n = ends[0]
        plain = self.tokenizer.decode(tokens[:n])
        if not self.rich:
            return plain, None
        piece = self._piece  # swift's per-token text: the token decoded alone
        names = [[piece(t) for t in ids] for ids in top_ids[:n]]
        return plain, rich_text([piece(t) for t in tokens[:n]], names, top_probs[:n])

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token])


# ---- loading ---------------------------------------------------------------------------------
EXPECTED = ("expected a VLAC checkpoint directory (config.json with model_type 'internvl_chat' "
            "and an InternLM2ForCausalLM llm_config, model.safetensors, tokenizer.model: the "
            "InternRobotics/VLAC layout)")  # fmt: skip


def _config(directory: Path) -> dict[str, Any]:
    from vla_rl.core.policy import read_json_object

    if not (directory / "config.json").is_file():
        raise ValueError(f"{directory}: no config.json; {EXPECTED}")
    return read_json_object(directory / "config.json")


def _dtype(name: str) -> torch.dtype:
    """auto: bfloat16 on a GPU that has it (the published dtype), else float32 (CPU bf16 matmuls
    are slow)."""
    if name == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if name not in choices:
        raise ValueError(f"unknown dtype {name!r}; valid choices: auto, float32, bfloat16")
    return choices[name]


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards model.safetensors.index.json lists, parsed as
    safetensors only (a pickle in their place is refused unread, vla_rl.core.policy)."""
    from vla_rl.core.policy import read_json_object, read_safetensors

    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif index.is_file():
        files = sorted(set(read_json_object(index).get("weight_map", {}).values()))
    else:
        raise ValueError(f"{directory}: no model.safetensors (nor its index); {EXPECTED}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(read_safetensors(directory / name))
    return state


def is_vlac_dir(directory: str | Path) -> bool:
    """Whether `directory` looks like a VLAC checkpoint (its config.json only; never raises)."""
    try:
        config = _config(Path(directory))
    except (ValueError, OSError):
        return False
    llm = config.get("llm_config")
    arch = (llm.get("architectures") or [None])[0] if isinstance(llm, dict) else None
    return config.get("model_type") == "internvl_chat" and arch == "InternLM2ForCausalLM"


def load_vlac(directory: str | Path, device: str | torch.device | None = None,
              dtype: str = "auto", **options: Any) -> VLACModel:  # fmt: skip
    """The VLAC checkpoint at `directory` on `device` (None: a GPU when there is one) in `dtype`
    (auto: bfloat16 on a GPU that has it, the published dtype; else float32), converted in memory
    through vlac_mapping's table. options: VLACModel's (max_new_tokens, rich, system).
    One-line ValueError for a directory of another kind or tensors outside the mapping."""
    import json

    from transformers import InternVLForConditionalGeneration

    from vla_rl.core.policy import check_state
    from vla_rl.rewards.vlac_mapping import (
        check_published_config,
        fused_shapes,
        native_config,
        to_native,
    )
    from vla_rl.rewards.vlac_tokenizer import load_tokenizer

    directory = Path(directory)
    config = _config(directory)
    try:
        check_published_config(config)
    except ValueError as err:
        raise ValueError(f"{directory}: {err}") from None
    tokenizer = load_tokenizer(directory)
    cfg = native_config(config, tokenizer.token_id(IMG_CONTEXT))
    if len(tokenizer) > cfg.text_config.vocab_size:
        raise ValueError(f"{directory}: the tokenizer has {len(tokenizer)} tokens, the model "
                         f"{cfg.text_config.vocab_size} embeddings")  # fmt: skip
    try:
        state = to_native(read_weights(directory), fused_shapes(config))
    except ValueError as err:
        raise ValueError(f"{directory}/model.safetensors: {err}") from None
    # Built in its dtype (not cast after): a `.to(bfloat16)` would also round RoPE's inverse
    # frequencies, which transformers keeps in float32.
    model = InternVLForConditionalGeneration._from_config(cfg, dtype=_dtype(dtype))
    # Exactly the native model's names and shapes, every tensor finite: one line otherwise.
    check_state(model.state_dict(), state, directory / "model.safetensors",
                "the VLAC architecture its config.json describes")  # fmt: skip
    model.load_state_dict(state)
    del state
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(torch.device(device))
    stop = [tokenizer.token_id(IM_END), tokenizer.eos_id]
    generation = directory / "generation_config.json"
    if generation.is_file():
        eos = json.loads(generation.read_text()).get("eos_token_id", [])
        stop += eos if isinstance(eos, list) else [eos]
    return VLACModel(model, tokenizer, stop, **options)


class VLACCritic(ProgressCritic):
    """A `ProgressCritic` answering with a `VLACModel` (`.vlac`). Frames stay on the CPU (PIL
    resizes them); the model runs on its own device.

    batch_size: queries per model call (memory: ~650 tokens each). reference: uint8 frames
    (F, H, W, 3) of a successful demonstration for VLAC's one-shot prompt, subsampled to
    `ref_num` (VLAC's default 9, at most 11 in its README), or None for zero-shot.
    """

    def __init__(self, vlac: VLACModel, batch_size: int = 8, cache_size: int = 4096,
                 reference: Frames | None = None, ref_num: int = 9):  # fmt: skip
        super().__init__(batch_size=batch_size, cache_size=cache_size, device="cpu")
        self.vlac = vlac
        self.reference = None
        if reference is not None:
            frames = sample_reference(_as_frames(reference, "reference"), ref_num)
            self.reference = preprocess(frames, vlac.image_size)

    def _delta_batch(self, frames_a, frames_b, instructions):
        return self.vlac.pair_deltas(frames_a, frames_b, instructions, self.reference)

    def _done_batch(self, frames, instructions):
        return self.vlac.done_probs(frames, instructions)


def load_critic(directory: str | Path, device: str | torch.device | None = None,
                dtype: str = "auto", batch_size: int = 8, cache_size: int = 4096,
                reference: Frames | None = None, ref_num: int = 9,
                **options: Any) -> VLACCritic:  # fmt: skip
    """The VLAC checkpoint at `directory` as a `ProgressCritic` (see `load_vlac`, `VLACCritic`).
    A directory of another kind: one-line ValueError naming what was expected."""
    directory = Path(directory)
    if not is_vlac_dir(directory):
        config = directory / "config.json"
        found = " (no config.json)"
        if config.is_file():
            try:
                kind = _config(directory).get("model_type")
                found = f" (its config.json has model_type {kind!r})"
            except ValueError:
                found = " (its config.json does not parse)"
        raise ValueError(f"{directory}: not a VLAC checkpoint{found}; {EXPECTED}")
    vlac = load_vlac(directory, device, dtype, **options)
    return VLACCritic(vlac, batch_size, cache_size, reference, ref_num)
