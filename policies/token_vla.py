"""An OpenVLA-style token VLA: actions as language-model tokens.

Architecture (OpenVLA, Kim et al. 2024, shrunk to CPU size): a small vision encoder (a CNN whose
4 x 4 feature map gives 16 patch tokens per camera) and a projector into the language model's
embedding space, a state projector (one token), the instruction as text tokens, and a causal
transformer language model (transformers' `LlamaForCausalLM` built from a small config, never
downloaded). Each action dimension is normalised to [-1, 1] and discretised into 256 uniform bins
(OpenVLA's scheme); bin b of any dimension is vocabulary token `text_vocab + b`, i.e. the LAST
256 ids of the vocabulary are reserved for actions, as OpenVLA overwrites Llama's last 256 tokens.

Sequence: [state] [16 tokens per camera] [instruction, padded to `max_words`] [Ta * Da actions].
Padding is a learned token rather than masked, so every sequence has the same length and
positions, which keeps batched decoding simple and exactly reproducible.

Decoding:
* "autoregressive" (OpenVLA): the Ta * Da action tokens one at a time with a KV cache, each
  conditioned on the previous ones;
* "parallel" (OpenVLA-OFT style): Ta * Da learned query embeddings after the prefix, all action
  tokens predicted in one forward pass, independently given the observation.
Logits are restricted to the 256 action tokens when decoding and scoring, so every sampled
token is a valid bin and `log_prob` = sum over the Ta * Da action tokens of log p(token) under
the same restricted softmax. `deterministic=True` takes the argmax bin.
Shapes: chunk (B, Ta, Da); tokens (B, Ta * Da), time-major then dimension (a_0 dims, a_1 dims..).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vla_rl.core import noise
from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import ActionSample, Observation, obs_batch_size
from vla_rl.policies.kv_cache import cache_kwargs, output_cache
from vla_rl.policies.obs_encoder import InstructionTokenizer, Normalizer, benchmark_vocab

NUM_BINS = 256  # OpenVLA's bins per action dimension


class ActionTokenizer:
    """[-1, 1] <-> NUM_BINS uniform bins; decoding returns bin centres, so a round trip is off
    by at most half a bin width (1 / bins in the [-1, 1] scale)."""

    def __init__(self, bins: int = NUM_BINS):
        self.bins = bins
        self.centres = -1 + (torch.arange(bins, dtype=torch.float32) + 0.5) * (2 / bins)

    def encode(self, unit: torch.Tensor) -> torch.Tensor:
        """Bin index (long, same shape) of values in [-1, 1] (clipped first)."""
        scaled = (unit.clamp(-1, 1) + 1) / 2 * self.bins
        return scaled.floor().long().clamp(0, self.bins - 1)

    def decode(self, bins: torch.Tensor) -> torch.Tensor:
        return self.centres.to(bins.device)[bins]


class PatchEncoder(nn.Module):
    """Camera image -> 16 patch tokens: 3 strided convolutions, a 4 x 4 average pool, and a
    projector MLP into the language model's width (the vision encoder + projector of a VLM)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2), nn.GELU(), nn.Conv2d(16, 32, 3, stride=2), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2), nn.GELU(), nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.projector = nn.Sequential(nn.Linear(64, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, Ncam, H, W, 3) uint8 -> (B, Ncam * 16, hidden)."""
        b, n = image.shape[:2]
        pixels = image.float().div(255).flatten(0, 1).permute(0, 3, 1, 2)
        patches = self.cnn(pixels).flatten(2).transpose(1, 2)  # (B * Ncam, 16, 64)
        return self.projector(patches).reshape(b, n * 16, -1)


class TokenVLAPolicy(BasePolicy):
    policy_type = "tokenvla"

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        vocab: list[str],
        chunk_size: int = 4,
        hidden: int = 128,
        layers: int = 2,
        heads: int = 4,
        max_words: int = 16,
        num_cameras: int = 0,
        decoding: str = "autoregressive",
    ):
        """chunk_size (Ta): 4 actions = 16 tokens on Meta-World (OpenVLA uses 1 action of 7
        tokens; a short chunk keeps autoregressive decoding cheap per env step).
        hidden / layers / heads: a 2-layer, 128-wide Llama, about 0.5 M parameters, the size
        that trains in minutes on 2 CPU cores. max_words: instruction tokens kept (padded)."""
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        if decoding not in ("autoregressive", "parallel"):
            raise ValueError(
                f"unknown decoding {decoding!r}; valid choices: autoregressive, parallel"
            )
        self.config = dict(
            state_dim=state_dim, action_dim=action_dim, vocab=list(vocab), chunk_size=chunk_size,
            hidden=hidden, layers=layers, heads=heads, max_words=max_words,
            num_cameras=num_cameras, decoding=decoding,
        )  # fmt: skip
        self.chunk_size, self.action_dim, self.decoding = chunk_size, action_dim, decoding
        self.max_words, self.num_cameras = max_words, num_cameras
        self.num_action_tokens = chunk_size * action_dim
        self.tokenizer = InstructionTokenizer(vocab)
        self.action_tokenizer = ActionTokenizer()
        self.text_vocab = len(vocab)
        self.prefix_len = 1 + 16 * num_cameras + max_words
        self.normalizer = Normalizer(state_dim, action_dim)
        self.lm = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=self.text_vocab + NUM_BINS, hidden_size=hidden,
                intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads,
                max_position_embeddings=self.prefix_len + self.num_action_tokens,
                tie_word_embeddings=False, attn_implementation="eager",
            )
        )  # fmt: skip
        self.state_proj = nn.Sequential(nn.Linear(state_dim, hidden), nn.GELU(),
                                        nn.Linear(hidden, hidden))  # fmt: skip
        self.vision = PatchEncoder(hidden) if num_cameras else None
        if decoding == "parallel":
            self.action_queries = nn.Parameter(0.02 * torch.randn(self.num_action_tokens, hidden))

    def get_config(self) -> dict[str, Any]:
        return dict(self.config)

    @classmethod
    def contract_instance(cls, benchmark: Any, directory: Path) -> TokenVLAPolicy:
        """A tiny random-weight instance (Ta = 2, a 1-layer 32-wide Llama) for the contract
        test."""
        return cls(benchmark.state_dim, benchmark.action_dim, benchmark_vocab(benchmark),
                   chunk_size=2, hidden=32, layers=1, heads=2)  # fmt: skip

    # ---- sequence pieces ----------------------------------------------------------------------
    def prefix(self, obs: Observation) -> torch.Tensor:
        """(B, prefix_len, hidden): state token, image tokens, instruction tokens."""
        state = self.normalizer.state(torch.as_tensor(obs["state"], dtype=torch.float32))
        parts = [self.state_proj(state)[:, None]]
        if self.vision is not None:
            if "image" not in obs:
                raise ValueError("this policy was built for camera images; the env gives none")
            parts.append(self.vision(torch.as_tensor(obs["image"])))
        words = self.tokenizer.encode(obs["instruction"], self.max_words)
        words = F.pad(words, (0, self.max_words - words.shape[1]))  # PAD id 0 to max_words
        parts.append(self.lm.get_input_embeddings()(words))
        return torch.cat(parts, 1)

    def _action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits restricted to the 256 reserved action tokens: (..., NUM_BINS)."""
        head = self.lm.get_output_embeddings()
        return F.linear(hidden, head.weight[self.text_vocab :])

    def _hidden(self, embeds: torch.Tensor, **kwargs):
        return self.lm.model(inputs_embeds=embeds, **kwargs)

    def _query_hidden(self, prefix: torch.Tensor) -> torch.Tensor:
        """Parallel decoding: the last layer's hidden states (B, Ta * Da, hidden) at the action
        queries placed after the prefix."""
        queries = self.action_queries.expand(len(prefix), -1, -1)
        hidden = self._hidden(torch.cat([prefix, queries], 1)).last_hidden_state
        return hidden[:, -self.num_action_tokens :]

    def action_logits(self, obs: Observation, bins: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced logits (B, Ta * Da, NUM_BINS) of every action token; `bins` (B, Ta * Da)
        are the previous tokens for autoregressive decoding (ignored by parallel decoding)."""
        prefix = self.prefix(obs)
        if self.decoding == "parallel":
            return self._action_logits(self._query_hidden(prefix))
        tokens = self.lm.get_input_embeddings()(bins[:, :-1] + self.text_vocab)
        hidden = self._hidden(torch.cat([prefix, tokens], 1)).last_hidden_state
        return self._action_logits(hidden[:, self.prefix_len - 1 :])  # position p predicts p + 1

    # ---- behaviour cloning --------------------------------------------------------------------
    def bc_loss(self, obs: Observation, actions: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the demonstrated chunk's action tokens; actions (B, Ta, Da)."""
        bins = self.action_tokenizer.encode(self.normalizer.action_to_unit(actions)).flatten(1)
        logits = self.action_logits(obs, bins)
        return F.cross_entropy(logits.reshape(-1, NUM_BINS), bins.reshape(-1))

    # ---- sampling and likelihood -------------------------------------------------------------
    def _action_log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the 256 bins at the sampling temperature."""
        return torch.log_softmax(logits / self.temperature, -1)

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        return self.sample_candidates(obs, 1, deterministic)

    def sample_candidates(
        self,
        obs: Observation,
        num_candidates: int,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActionSample:
        """K chunks per observation (rows observation-major) with the prefix encoded once.

        Autoregressive decoding runs the prefix through the language model once, repeats its
        key/value cache K times, and decodes the K candidates' tokens together. extras["feature"]
        is the last layer's hidden state at the last action token (B * K, hidden), OpenVLA's
        TACO feature: one more cached decoding step feeds the last sampled token so the feature
        has seen the whole chunk. Parallel decoding predicts every token from the prefix alone,
        so its candidates differ only in the sampled bins and share one feature (TACO cannot
        rank them; README.md says so).
        With a `generator` the sampling noise is a Gumbel bank shared by all observations
        (token = argmax(logits / T + g), the same distribution as plain sampling); without one,
        Gumbel noise from each row's keyed stream (obs["noise_key"], vla_rl.core.noise) or, with
        no keys, tokens drawn as `sample_actions` always drew them; K = 1 is `sample_actions`.
        """
        k, n = num_candidates, self.num_action_tokens
        gumbel = None
        keys = noise.noise_keys(obs)
        if generator is not None and not deterministic:
            bank = noise.to_gumbel(torch.rand(k, n, NUM_BINS, generator=generator))
            gumbel = bank.repeat(obs_batch_size(obs), 1, 1)
        elif keys is not None and not deterministic:  # each row's own stream (vla_rl.core.noise)
            gumbel = noise.gumbel(keys, obs_batch_size(obs), (n, NUM_BINS), "tokens", k)

        def pick(logits: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
            if deterministic:
                return logits.argmax(-1)
            if g is None:
                return torch.distributions.Categorical(logits=logits / self.temperature).sample()
            return (logits / self.temperature + g).argmax(-1)

        prefix = self.prefix(obs)
        if self.decoding == "parallel":
            hidden = self._query_hidden(prefix)
            logits = self._action_logits(hidden).repeat_interleave(k, 0)
            bins = pick(logits, gumbel)
            feature = hidden[:, -1].repeat_interleave(k, 0)
        else:  # one token at a time, reusing the keys/values of everything before it
            out = self._hidden(prefix, use_cache=True)
            cache = output_cache(out)
            if k > 1:
                cache.batch_repeat_interleave(k)
            step_logits = self._action_logits(out.last_hidden_state[:, -1]).repeat_interleave(k, 0)
            chosen, all_logits = [], []
            for i in range(n):
                token = pick(step_logits, None if gumbel is None else gumbel[:, i])
                chosen.append(token)
                all_logits.append(step_logits)
                embed = self.lm.get_input_embeddings()(token[:, None] + self.text_vocab)
                out = self._hidden(embed, use_cache=True, **cache_kwargs(self.lm.model, cache))
                if i + 1 < n:
                    step_logits = self._action_logits(out.last_hidden_state[:, -1])
            bins = torch.stack(chosen, 1)
            logits = torch.stack(all_logits, 1)
            feature = out.last_hidden_state[:, -1]
        log_prob = self._action_log_softmax(logits).gather(-1, bins[..., None]).squeeze(-1).sum(-1)
        unit = self.action_tokenizer.decode(bins).view(-1, self.chunk_size, self.action_dim)
        return ActionSample(
            actions=self.normalizer.action_from_unit(unit),
            log_prob=log_prob,
            extras={"action_tokens": bins, "feature": feature},  # (B, Ta * Da), (B, hidden)
        )

    def log_prob(self, obs: Observation, sample: ActionSample) -> torch.Tensor:
        """Sum of the action tokens' log-probabilities (B,), teacher-forced, differentiable."""
        return self.log_prob_terms(obs, sample)[0].sum(-1)

    def log_prob_terms(self, obs: Observation, sample: ActionSample):
        """Per-token log-probabilities (B, Ta * Da) and the summed entropy (B,) of the
        per-token distributions (for autoregressive decoding, each given the sampled prefix)."""
        bins = sample.extras["action_tokens"]
        log_p = self._action_log_softmax(self.action_logits(obs, bins))
        entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
        return log_p.gather(-1, bins[..., None]).squeeze(-1), entropy

    def observation_features(self, obs: Observation) -> torch.Tensor:
        """The language model's last hidden state at the last prefix token (B, hidden): the
        state VLA-RL's critic reads, before any action token."""
        return self._hidden(self.prefix(obs)).last_hidden_state[:, -1]
