"""A small pairwise progress critic trainable on a CPU (../shared/reference/critics.md 4.3):
VLAC's pair semantics on a few-hundred-thousand-parameter CNN instead of a 2B VLM.

    frame -> resize to S x S -> CNN (+ x, y coordinate channels) -> feature f (F,)
    instruction -> id in a vocabulary built from the training instructions (0: unknown) -> e (E,)
    delta head: MLP([f_a, f_b, f_b - f_a, e]) -> logits over `bins` bins on [-1, 1]; the delta
        is the histogram's mean (HL-Gauss, Farebrother et al. 2024, "Stop Regressing": trained
        with cross-entropy against a Gaussian-smoothed target, `hl_gauss_target`)
    done head:  MLP([f, e]) -> logit; done = sigmoid(logit)

The pure label helpers live here too, so the training command and its tests share them:
`progress_delta` (VLAC's pair value between two progresses; the inverse of `progress_update`)
and `vlac_pair_label` (its value for frames i, j of a successful episode whose progress is
taken to rise linearly with time, VLAC's c = dt / (T - i)).

`save(directory)` writes model.safetensors + config.json (one atomic publish); `load(directory)`
reads them back without unpickling anything. Shapes: n queries, S the critic's image size,
F feature width, E instruction-embedding width, H, W input image size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla_rl.io.atomic import atomic_directory
from vla_rl.rewards.progress_critic import ProgressCritic

FORMAT = "vla-rl-pairwise-critic/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
UNKNOWN = 0  # the instruction id of every instruction not seen in training


# ---- pure label helpers ----------------------------------------------------------------------
def progress_delta(p_a: np.ndarray | float, p_b: np.ndarray | float) -> np.ndarray:
    """VLAC's pair value from progress p_a to p_b (both in [0, 1], elementwise): the fraction of
    the remaining progress gained, (p_b - p_a) / (1 - p_a), when p_b >= p_a; the fraction of the
    achieved progress lost, (p_b - p_a) / p_a, when p_b < p_a. 0 when p_b == p_a (also at p_a = 1).
    It is the inverse of `progress_update`: update(p_a, progress_delta(p_a, p_b)) == p_b."""
    p_a, p_b = np.asarray(p_a, dtype=np.float64), np.asarray(p_b, dtype=np.float64)
    gain = np.divide(p_b - p_a, 1 - p_a, out=np.zeros(np.broadcast(p_a, p_b).shape),
                     where=(p_b > p_a) & (p_a < 1))  # fmt: skip
    loss = np.divide(p_b - p_a, p_a, out=np.zeros_like(gain), where=(p_b < p_a) & (p_a > 0))
    return np.where(p_b >= p_a, gain, loss)


def vlac_pair_label(
    i: np.ndarray | int, j: np.ndarray | int, length: np.ndarray | int
) -> np.ndarray:
    """The label of the pair (frame i, frame j) of a successful episode of `length` frames,
    whose progress is taken as t / (length - 1) (0 at the first frame, 1 at the last);
    i, j, length broadcast elementwise (one length per pair when pairs come from many episodes).

    j > i: (j - i) / (length - 1 - i), VLAC's c = dt / (T - i) with T the last frame's index;
    j < i: -(i - j) / i, the fraction of the achieved progress lost. The paper writes dt / (T - i)
    for negative dt too, which is unbounded below; this form stays in [-1, 0] and makes the
    reverse of a forward pair undo it exactly (critics.md 4.3 deviates on purpose the same way).
    """
    length = np.asarray(length)
    if (length < 2).any():
        raise ValueError(f"a pair label needs episodes of at least 2 frames, got {length.min()}")
    last = length - 1
    return progress_delta(np.asarray(i) / last, np.asarray(j) / last)


def bin_centers(bins: int) -> torch.Tensor:
    """Centres (bins,) of `bins` equal bins covering [-1, 1]."""
    edges = torch.linspace(-1.0, 1.0, bins + 1)
    return (edges[:-1] + edges[1:]) / 2


def hl_gauss_target(labels: torch.Tensor, bins: int, sigma: float) -> torch.Tensor:
    """HL-Gauss targets (n, bins) for labels (n,) in [-1, 1]: the mass a Gaussian N(label,
    sigma^2) puts in each of `bins` equal bins on [-1, 1], renormalised to the mass inside
    [-1, 1] (a label at the edge loses half its Gaussian outside), so each row sums to 1."""
    if bins < 2 or sigma <= 0:
        raise ValueError(f"need bins >= 2 and sigma > 0, got {bins}, {sigma}")
    edges = torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64)
    z = (edges[None, :] - labels.double()[:, None]) / (sigma * math.sqrt(2))
    cdf = 0.5 * (1 + torch.special.erf(z))  # (n, bins + 1)
    mass = cdf[:, 1:] - cdf[:, :-1]
    return (mass / mass.sum(1, keepdim=True)).float()


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames (n, H, W, 3) -> uint8 (n, size, size, 3), antialiased bilinear (unchanged
    when already that size). The training command resizes its frame bank once with this, and
    the critic resizes what it is asked about the same way (rounded back to uint8), so both see
    identical pixels."""
    if frames.shape[1:3] == (size, size):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ---- the network -----------------------------------------------------------------------------
class PairwiseNet(nn.Module):
    """Encoder, instruction embedding and the two heads (see the module docstring).

    num_instructions: known instructions; ids 1..num_instructions, 0 is `UNKNOWN`.
    bins: delta histogram bins on [-1, 1]. feature_dim F, embed_dim E, hidden: head width.
    """

    def __init__(self, num_instructions: int, bins: int = 51, feature_dim: int = 128,
                 embed_dim: int = 32, hidden: int = 256):  # fmt: skip
        super().__init__()
        # Coordinate channels: progress in manipulation is mostly *where* things are, and a CNN
        # with zero padding only sees absolute position weakly (CoordConv, Liu et al. 2018).
        self.conv = nn.Sequential(
            nn.Conv2d(5, 32, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, feature_dim), nn.ReLU())
        self.embed = nn.Embedding(num_instructions + 1, embed_dim)
        self.delta_head = nn.Sequential(
            nn.Linear(3 * feature_dim + embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, bins)
        )
        self.done_head = nn.Sequential(
            nn.Linear(feature_dim + embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self.register_buffer("centers", bin_centers(bins), persistent=False)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (n, S, S, 3) -> features (n, F)."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        n, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(n, 1, h, w)
        return self.project(self.conv(torch.cat([x, ys, xs], 1)))

    def delta_logits(self, f_a: torch.Tensor, f_b: torch.Tensor, ids: torch.Tensor):
        """Histogram logits (n, bins) of the delta from features f_a to f_b (n, F), ids (n,)."""
        return self.delta_head(torch.cat([f_a, f_b, f_b - f_a, self.embed(ids)], 1))

    def done_logit(self, f: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Done logits (n,) of features f (n, F), ids (n,)."""
        return self.done_head(torch.cat([f, self.embed(ids)], 1)).squeeze(1)

    def expected_delta(self, logits: torch.Tensor) -> torch.Tensor:
        """The histogram's mean (n,) in [-1, 1] of logits (n, bins)."""
        return logits.softmax(1) @ self.centers


# ---- the critic ------------------------------------------------------------------------------
class PairwiseProgressCritic(ProgressCritic):
    """A `ProgressCritic` answering with a `PairwiseNet` (held as `.net`; train it directly, then
    call `clear_cache()`, since cached answers belong to the old weights).

    instructions: the training instructions (the vocabulary, in id order from 1); any other
        instruction gets the id `UNKNOWN`, which training teaches to answer delta 0, done 0;
        `knows(instruction)` tells a caller which case it is in.
    image_size: S, the side every frame is resized to. 64: enough for a gripper and an object
        to be told apart at 128 px renders, and a CPU step of a few ms per frame.
    bins, sigma: the HL-Gauss histogram; sigma = 0.75 bin widths, the ratio "Stop Regressing"
        found best. 51 bins: 0.04 wide, finer than a one-step delta of a 25-frame episode.
    """

    def __init__(self, instructions: Sequence[str], image_size: int = 64, bins: int = 51,
                 sigma: float | None = None, feature_dim: int = 128, embed_dim: int = 32,
                 hidden: int = 256, batch_size: int = 32, cache_size: int = 4096,
                 device: str | torch.device = "cpu"):  # fmt: skip
        super().__init__(batch_size=batch_size, cache_size=cache_size, device=device)
        names = list(instructions)
        if len(set(names)) != len(names) or not all(isinstance(s, str) for s in names):
            raise ValueError("instructions must be distinct str")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.instructions = tuple(names)
        self._ids = {s: k + 1 for k, s in enumerate(names)}
        self.image_size = image_size
        self.bins = bins
        self.sigma = sigma if sigma is not None else 0.75 * 2.0 / bins
        self.arch = {"feature_dim": feature_dim, "embed_dim": embed_dim, "hidden": hidden}
        self.net = PairwiseNet(len(names), bins, **self.arch).to(self.device).eval()

    def knows(self, instruction: str) -> bool:
        """Whether `instruction` was in the training vocabulary (else it is read as UNKNOWN)."""
        return instruction in self._ids

    def instruction_ids(self, instructions: Sequence[str]) -> torch.Tensor:
        """Ids (n,) int64 on the critic's device; UNKNOWN for instructions not in training."""
        ids = [self._ids.get(s, UNKNOWN) for s in instructions]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def _delta_batch(self, frames_a, frames_b, instructions):
        ids = self.instruction_ids(instructions)
        f = self.net.encode(resize_frames(torch.cat([frames_a, frames_b]), self.image_size))
        f_a, f_b = f.split(len(frames_a))
        return self.net.expected_delta(self.net.delta_logits(f_a, f_b, ids))

    def _done_batch(self, frames, instructions):
        f = self.net.encode(resize_frames(frames, self.image_size))
        return torch.sigmoid(self.net.done_logit(f, self.instruction_ids(instructions)))

    # ---- files --------------------------------------------------------------------------------
    def config(self) -> dict:
        """What `load` needs to rebuild the network (config.json)."""
        return {"format": FORMAT, "instructions": list(self.instructions),
                "image_size": self.image_size, "bins": self.bins, "sigma": self.sigma,
                **self.arch}  # fmt: skip

    def save(self, directory: str | Path) -> Path:
        """Write config.json + model.safetensors to `directory` in one atomic publish."""
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu",
             **critic_options) -> PairwiseProgressCritic:  # fmt: skip
        """The critic `save` wrote to `directory`; a one-line ValueError for anything else.
        critic_options: batch_size, cache_size (not stored: they are the caller's choice)."""
        from vla_rl.core.policy import read_safetensors  # refuses pickles, never unpickles

        directory = Path(directory)
        expected = f"expected a pairwise progress critic ({CONFIG_FILE} of format {FORMAT!r}"
        expected += f" and {WEIGHTS_FILE}, as `vla-rl fit-critic` writes)"
        config_path = directory / CONFIG_FILE
        if not config_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise ValueError(f"{directory}: {expected}")
        try:
            config = json.loads(config_path.read_text())
        except ValueError as err:
            raise ValueError(f"{config_path}: not JSON ({err}); {expected}") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            found = config.get("format") if isinstance(config, dict) else type(config).__name__
            raise ValueError(f"{directory}: format {found!r}; {expected}")
        options = {k: config[k] for k in ("image_size", "bins", "sigma", "feature_dim",
                                          "embed_dim", "hidden")}  # fmt: skip
        critic = cls(config["instructions"], device=device, **options, **critic_options)
        state = read_safetensors(directory / WEIGHTS_FILE)
        try:
            critic.net.load_state_dict(state)
        except RuntimeError as err:  # torch lists every mismatched key on many lines
            first = str(err).strip().splitlines()[0]
            raise ValueError(f"{directory}: weights do not fit its config.json ({first})") from None
        return critic
