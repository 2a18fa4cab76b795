"""Pieces shared by the native policy families: an offline instruction tokenizer, normalisation
statistics stored with the checkpoint, and an observation encoder (state, instruction, cameras).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vla_rl.core.types import Observation

PAD, UNK = "<pad>", "<unk>"


class InstructionTokenizer:
    """A word-level tokenizer trained on the benchmark's instructions (works offline, tiny).

    Words never seen in training map to <unk>, so a new phrasing still runs (and shows up as
    <unk> tokens rather than a crash). The vocabulary is saved in the policy's config.json.
    """

    def __init__(self, vocab: Sequence[str]):
        self.vocab = list(vocab)
        if self.vocab[:2] != [PAD, UNK]:
            raise ValueError(f"vocab must start with {PAD!r}, {UNK!r}")
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    @classmethod
    def train(cls, instructions: Sequence[str]) -> InstructionTokenizer:
        words = sorted({w for text in instructions for w in cls.words(text)})
        return cls([PAD, UNK, *words])

    def encode(self, texts: Sequence[str], max_len: int = 32) -> torch.Tensor:
        """Token ids (B, L), padded with 0 to the longest text (at most max_len words)."""
        ids = [[self.index.get(w, 1) for w in self.words(t)][:max_len] or [1] for t in texts]
        out = torch.zeros(len(ids), max(len(x) for x in ids), dtype=torch.long)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = torch.tensor(seq)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [" ".join(self.vocab[i] for i in row.tolist() if i != 0) for row in ids]


def benchmark_vocab(benchmark: Any) -> list[str]:
    """The vocabulary of a benchmark's train-split instructions (what `pretrain` trains on)."""
    return InstructionTokenizer.train([t.instruction for t in benchmark.tasks("train")]).vocab


class Normalizer(nn.Module):
    """State standardisation and action scaling to [-1, 1], stored as buffers (so they travel in
    model.safetensors with the weights) and applied on the way in and out."""

    def __init__(self, state_dim: int, action_dim: int):
        super().__init__()
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("action_low", -torch.ones(action_dim))
        self.register_buffer("action_high", torch.ones(action_dim))

    def fit(self, states: np.ndarray, actions: np.ndarray) -> None:
        """Statistics from demonstrations: states (N, Ds), actions (N, Da)."""
        self.state_mean.copy_(torch.as_tensor(states.mean(0)))
        self.state_std.copy_(torch.as_tensor(states.std(0)).clamp_min(1e-3))
        low, high = torch.as_tensor(actions.min(0)), torch.as_tensor(actions.max(0))
        span = (high - low).clamp_min(1e-3)  # constant dims: keep a usable range
        self.action_low.copy_(low)
        self.action_high.copy_(low + span)

    def state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.state_mean) / self.state_std

    def action_to_unit(self, action: torch.Tensor) -> torch.Tensor:
        return 2 * (action - self.action_low) / (self.action_high - self.action_low) - 1

    def action_from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        return self.action_low + (unit.clamp(-1, 1) + 1) / 2 * (self.action_high - self.action_low)


class ObservationEncoder(nn.Module):
    """obs -> feature (B, hidden): state MLP + mean of instruction word embeddings + an optional
    small CNN per camera, concatenated and mixed by one layer."""

    def __init__(self, state_dim: int, vocab_size: int, hidden: int, num_cameras: int = 0):
        super().__init__()
        self.state_net = nn.Sequential(nn.Linear(state_dim, hidden), nn.GELU())
        self.words = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.num_cameras = num_cameras
        self.cnn = (
            nn.Sequential(
                nn.Conv2d(3, 16, 5, stride=2),
                nn.GELU(),
                nn.Conv2d(16, 32, 3, stride=2),
                nn.GELU(),
                nn.Conv2d(32, 32, 3, stride=2),
                nn.GELU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(32, hidden),
                nn.GELU(),
            )  # fmt: skip
            if num_cameras
            else None
        )
        self.mix = nn.Sequential(nn.Linear(hidden * (2 + num_cameras), hidden), nn.GELU())

    def forward(self, state: torch.Tensor, tokens: torch.Tensor, image: torch.Tensor | None):
        """state (B, Ds) normalised; tokens (B, L); image (B, Ncam, H, W, 3) uint8 or None."""
        parts = [self.state_net(state)]
        mask = (tokens != 0).float()[..., None]
        parts.append((self.words(tokens) * mask).sum(1) / mask.sum(1).clamp_min(1))
        if self.cnn is not None:
            if image is None:
                raise ValueError("this policy was built for camera images; the env gives none")
            b, n = image.shape[:2]
            pixels = image.float().div(255).flatten(0, 1).permute(0, 3, 1, 2)  # (B*Ncam, 3, H, W)
            parts.append(self.cnn(pixels).view(b, n, -1).flatten(1))
        return self.mix(torch.cat(parts, -1))


def obs_tensors(obs: Observation, normalizer: Normalizer, tokenizer: InstructionTokenizer):
    """The tensors an ObservationEncoder takes, from a raw observation batch."""
    state = normalizer.state(torch.as_tensor(obs["state"], dtype=torch.float32))
    tokens = tokenizer.encode(obs["instruction"])
    image = torch.as_tensor(obs["image"]) if "image" in obs else None
    return state, tokens, image
