"""The Coin Flipping Network (CFN, Lobel et al. 2023): a pseudo-count learned by regressing onto
random coin flips. TACO's verifier (../shared/reference/methods.md, section 6.2-6.3).

Every training sample i gets a fixed Rademacher vector c_i in {-1, +1}^d. A network f trained
by min E ||f(z_i) - c_i||^2 predicts, for an input seen m times, the mean of its m coin-flip
vectors, whose expected squared norm is d / m. So

    N(z) = d / ||f(z)||^2

estimates how often z (or inputs the network cannot tell from z) was seen in training.

Architecture (TACO's): features x feature_scale -> Linear(F, width) -> GELU -> LayerNorm ->
`blocks` residual blocks x + MLP(width -> expansion * width -> width, GELU, dropout), each
followed by a LayerNorm (post-LN) -> Linear(width, d). A frozen, randomly initialised copy of the
same network (the random prior) has its output standardised with its per-dimension mean and std
over the training features and added to the trainable output: on inputs unlike the training
data the prior's output stays of unit scale per dimension (N about 1), while on training inputs
the trainable network learns to cancel it.
Shapes: features (N, F), outputs (N, d).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from vla_rl.io.atomic import atomic_directory

VERIFIER_CONFIG = "verifier.json"
VERIFIER_WEIGHTS = "verifier.safetensors"


@dataclass
class CFNConfig:
    """The Coin Flipping Network and its training; defaults are TACO's released ones."""

    coin_dim: int = 20
    """d: coin flips per sample (TACO: 20)."""
    width: int = 1536
    """Hidden width (TACO: 1536)."""
    blocks: int = 3
    """Residual MLP blocks (TACO: 3)."""
    expansion: int = 4
    """Inner width of each block's MLP as a multiple of `width` (TACO: 1536 -> 6144)."""
    dropout: float = 0.1
    """Dropout inside the blocks while training (TACO: 0.1)."""
    feature_scale: float = 10.0
    """Features are multiplied by this first (TACO's 'feature scaling'; its ablation loses 3.7
    points of success without it)."""
    random_prior: bool = True
    """Add the frozen random prior network's standardised output (TACO: on)."""
    epochs: int = 16
    """Passes over the features (TACO: 16)."""
    batch_size: int = 512
    """Samples per gradient computation (TACO: 512)."""
    grad_accum: int = 2
    """Gradients accumulated per optimizer step (TACO: 2, so 1024 samples per update)."""
    min_updates: int = 500
    """At least this many optimizer steps (more epochs on small datasets): TACO's 16 epochs over
    LIBERO-scale data are thousands of updates, over 10 Meta-World demonstrations about 16."""
    lr: float = 1e-3
    """Peak learning rate of Adam's one-cycle schedule with cosine annealing (TACO: 1e-3)."""
    seed: int = 0
    """Seeds the networks' initialisation, the coin flips and the minibatch order."""


def check_cfn_config(cfg: CFNConfig) -> None:
    """Raise ValueError naming the field when a setting cannot train a CFN."""
    positive = ("coin_dim", "width", "expansion", "epochs", "batch_size", "grad_accum")
    bad = [f"--cfn.{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}"
           for name in positive if getattr(cfg, name) < 1]  # fmt: skip
    if cfg.blocks < 0 or cfg.min_updates < 0:
        bad.append("--cfn.blocks and --cfn.min-updates must be >= 0")
    if cfg.lr <= 0 or cfg.feature_scale <= 0:
        bad.append("--cfn.lr and --cfn.feature-scale must be > 0")
    if not 0 <= cfg.dropout < 1:
        bad.append(f"--cfn.dropout must be in [0, 1), got {cfg.dropout}")
    if bad:
        raise ValueError("; ".join(bad))


def coin_flips(num_samples: int, dim: int, seed: int) -> torch.Tensor:
    """Fixed Rademacher targets (N, d) in {-1, +1}: row i belongs to sample i for the whole
    training run."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (num_samples, dim), generator=generator).float() * 2 - 1


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int, expansion: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, expansion * width), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(expansion * width, width), nn.Dropout(dropout),
        )  # fmt: skip
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.mlp(x))


def cfn_network(feature_dim: int, cfg: CFNConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(feature_dim, cfg.width), nn.GELU(), nn.LayerNorm(cfg.width),
        *[ResidualMLPBlock(cfg.width, cfg.expansion, cfg.dropout) for _ in range(cfg.blocks)],
        nn.Linear(cfg.width, cfg.coin_dim),
    )  # fmt: skip


class CoinFlipNetwork(nn.Module):
    """f(z) = net(scale * z) + (prior(scale * z) - mean) / std; pseudo_count(z) = d / ||f(z)||^2."""

    def __init__(self, feature_dim: int, cfg: CFNConfig):
        super().__init__()
        self.feature_dim, self.cfg = feature_dim, cfg
        self.net = cfn_network(feature_dim, cfg)
        self.prior = cfn_network(feature_dim, cfg) if cfg.random_prior else None
        if self.prior is not None:
            self.prior.requires_grad_(False)
        self.register_buffer("prior_mean", torch.zeros(cfg.coin_dim))
        self.register_buffer("prior_std", torch.ones(cfg.coin_dim))

    def _prior(self, x: torch.Tensor) -> torch.Tensor:
        self.prior.eval()  # the prior is a fixed function: no dropout, ever
        return self.prior(x)

    @torch.no_grad()
    def fit_prior_stats(self, features: torch.Tensor, batch: int = 4096) -> None:
        """Per-dimension mean and std of the prior's output over the training features. The
        prior is frozen and the features fixed, so these are exact (TACO keeps running
        estimates of the same quantities)."""
        if self.prior is None:
            return
        out = torch.cat([self._prior(features[i : i + batch] * self.cfg.feature_scale)
                         for i in range(0, len(features), batch)])  # fmt: skip
        self.prior_mean.copy_(out.mean(0))
        self.prior_std.copy_(out.std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"this verifier was fitted on {self.feature_dim}-D policy features, got "
                f"{features.shape[-1]}-D ones: fit a verifier for this policy with "
                "`vla-rl fit-verifier`"
            )
        x = features.float() * self.cfg.feature_scale
        out = self.net(x)
        if self.prior is not None:
            out = out + (self._prior(x) - self.prior_mean) / self.prior_std
        return out

    @torch.no_grad()
    def pseudo_count(self, features: torch.Tensor) -> torch.Tensor:
        """N(z) = d / ||f(z)||^2 (N,), in eval mode (no dropout)."""
        was_training = self.training
        self.eval()
        out = self(features)
        self.train(was_training)
        return self.cfg.coin_dim / out.pow(2).sum(-1).clamp_min(1e-12)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path, info: dict | None = None) -> None:
        """Write verifier.json (architecture + `info`) and verifier.safetensors, atomically."""
        from safetensors.torch import save_file

        config = {"verifier_type": "taco-cfn", "feature_dim": self.feature_dim,
                  "cfn": asdict(self.cfg), **(info or {})}  # fmt: skip
        with atomic_directory(directory) as tmp:
            (tmp / VERIFIER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / VERIFIER_WEIGHTS))

    @classmethod
    def load(cls, directory: str | Path) -> CoinFlipNetwork:
        from vla_rl.core.policy import read_safetensors  # refuses pickles unread, one-line errors

        directory = Path(directory)
        if not (directory / VERIFIER_CONFIG).is_file():
            raise FileNotFoundError(
                f"{directory} is not a TACO verifier (no {VERIFIER_CONFIG}); "
                "`vla-rl fit-verifier --policy <policy> --dataset <dir>` writes one"
            )
        config = json.loads((directory / VERIFIER_CONFIG).read_text())
        model = cls(config["feature_dim"], CFNConfig(**config["cfn"]))
        model.load_state_dict(read_safetensors(directory / VERIFIER_WEIGHTS))
        return model.eval()


def training_epochs(num_samples: int, cfg: CFNConfig) -> int:
    """cfg.epochs, or more where that is fewer than cfg.min_updates optimizer steps."""
    batches_per_epoch = math.ceil(num_samples / cfg.batch_size)
    return max(cfg.epochs, math.ceil(cfg.min_updates * cfg.grad_accum / batches_per_epoch))


def train_cfn(
    features: torch.Tensor,
    cfg: CFNConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[CoinFlipNetwork, list[float]]:
    """Train a CFN on features (N, F) with fixed coin-flip targets; returns the network (in eval
    mode) and the mean training loss of each epoch. Adam with a one-cycle schedule (cosine) to
    `cfg.lr`, minibatches of `cfg.batch_size`, `cfg.grad_accum` of them per optimizer step,
    `cfg.epochs` epochs or as many more as `cfg.min_updates` needs."""
    torch.manual_seed(cfg.seed)
    features = features.detach().float()
    model = CoinFlipNetwork(features.shape[1], cfg)
    model.fit_prior_stats(features)
    targets = coin_flips(len(features), cfg.coin_dim, cfg.seed)
    epochs = training_epochs(len(features), cfg)
    total_updates = max(1, math.ceil(math.ceil(len(features) / cfg.batch_size) * epochs
                                     / cfg.grad_accum))  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=total_updates, anneal_strategy="cos"
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses, micro, updates = [], 0, 0
    for epoch in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for start in range(0, len(features), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = (model(features[idx]) - targets[idx]).pow(2).sum(-1).mean()
            (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) * len(idx)
            micro += 1
            if micro % cfg.grad_accum == 0 and updates < total_updates:
                optimizer.step()
                optimizer.zero_grad()
                schedule.step()
                updates += 1
        losses.append(total / len(features))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return model.eval(), losses
