"""An action-conditioned video world model small enough for a CPU: a DIAMOND-style EDM denoiser
on diffusers' `UNet2DModel`, a proprio/state head and a reflector head
(../shared/reference/world-models.md 1.5 and 3).

One model step ("macro-step") predicts the frame m <= k env steps ahead (k = frame_skip):

    context: K frames (B, K, S, S, 3) uint8, the newest last, stacked on channels with the noisy
             target, p x p pixel blocks folded into channels (pixel_unshuffle), plus the step's
             features as constant planes -> UNet2DModel at S / p -> pixel_shuffle -> (B, 3, S, S)
    target:  what is diffused is the change from the newest context frame, scaled to std
             sigma_data (`predict_change`), so copy-last-frame is the zero prediction
    condition (B, C): MLP(Fourier(c_noise), the sub-chunk's m actions (padded to k, with a mask),
             the K - 1 gaps between context frames (env steps), the context-noise level, a task
             embedding), given to the UNet as `class_labels` with class_embed_type="identity":
             it is added to the (constant) time embedding and drives every ResBlock's
             scale-and-shift GroupNorm (resnet_time_scale_shift="scale_shift", DIAMOND's AdaGN)
    state head: MLP(state, its last change, the actions, the gaps) -> the state m steps ahead
    reflector: a small CNN on the frame (+ task embedding) -> success logit and progress

EDM (Karras et al. 2022) with DIAMOND's values: sigma_data 0.5, offset noise 0.3, training
sigma log-normal(-0.4, 1.2) clipped to [2e-3, 20], c_noise = log(sigma) / 4; sampling with a few
Euler steps on a Karras schedule (sigma_max 5, rho 7), every generated frame quantised to uint8
(DIAMOND) before it becomes context. Variable gaps and partial sub-chunks (m < k) let one model
serve any policy chunk size Ta: a chunk of 8 with k = 4 is 2 model steps, Ta = 1 (the residual
method's per-step actions) is 1-step model steps.

Shapes: B batch, K context frames, k = frame_skip, Da action dim, Ds state dim, S image size,
C condition width. Pixels enter the denoiser in [-1, 1].
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vla_rl.core.config import ConfigError
from vla_rl.io.atomic import atomic_directory

FORMAT = "vla-rl-world-model/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STARTS_FILE = "starts.safetensors"  # the stored real start frames (written by train.py)


@dataclass
class WorldModelConfig:
    """The architecture and the diffusion settings (what `load` needs to rebuild the model).

    The data-given fields (action_dim, state_dim, tasks) are filled by the training command."""

    image_size: int = 64
    """S: frames are resized to S x S. 64 is DIAMOND's Atari size and what a 2-core CPU trains
    in tens of minutes; a GPU config raises it (128) with wider channels."""
    context_frames: int = 4
    """K: real or generated frames the denoiser sees (DIAMOND and RLinf-OpenSora: 4)."""
    frame_skip: int = 4
    """k: env steps one model step covers at most. Meta-World runs at 80 steps/s, where one
    step moves the arm by a pixel or less at 64 px; 4 (20 Hz) makes a chunk of 8 two model
    steps (the reference's default macro-step on LIBERO, 1-4 on Meta-World)."""
    patch: int = 2
    """p: the UNet works on p x p pixel blocks folded into channels (space-to-depth, undone
    with pixel_shuffle at its output), at S / p resolution. 2 cuts the cost 4x: the (32, 64, 64)
    UNet is 2.0 GFLOP per frame at 64 x 64 and 0.5 at 32 x 32 (torch's FlopCounterMode), and at
    ~9 GFLOP/s measured on the 2-core CPU only the second trains in tens of minutes. 1: the
    DIAMOND layout (a GPU config)."""
    channels: tuple[int, ...] = (32, 48, 64)
    """UNet block widths, one per resolution (S / p, then halved). Smaller than the reference's
    CPU sizing (32, 64, 64) to fit the measured CPU budget (see `patch`); DIAMOND uses
    (64, 64, 64, 64) at p = 1, a GPU config (128, 256, 256, 512)."""
    action_planes: bool = True
    """Also give the step's features (actions, mask, gaps) to the UNet as constant input
    planes, besides the condition vector: a global scale-and-shift alone is a weak path for
    "move the arm this way". Measured on the toy task of tests/test_world_model.py after 120
    steps (2 seeds): the held-out EDM loss rose by 0.004 and 0.002 when the actions were
    shuffled without the planes, by 0.017 and 0.009 with them. A few input channels; DIAMOND
    has none."""
    predict_change: bool = True
    """Diffuse the change from the newest context frame (scaled to std sigma_data by the
    data's change std) instead of the whole frame: copy-last-frame is then the zero prediction,
    and a small model spends its capacity on what moves. DIAMOND diffuses whole frames; at
    CPU scale most of a Meta-World frame is static background."""
    layers_per_block: int = 1
    """ResBlocks per UNet level (DIAMOND 2; 1 halves the CPU cost)."""
    norm_groups: int = 8
    """GroupNorm groups; must divide every width. 8 keeps groups of 4+ channels at width 32."""
    attention: bool = False
    """Self-attention in the lowest levels and the mid block: off on a CPU (DIAMOND has none);
    a GPU config turns it on."""
    cond_dim: int = 128
    """C: width of the condition vector (the UNet's time-embedding width; 4 x channels[0] as
    diffusers' default)."""
    task_embed_dim: int = 16
    """Width of the task embedding shared by the denoiser condition and the reflector."""
    sigma_data: float = 0.5
    """EDM's data std (DIAMOND)."""
    sigma_offset_noise: float = 0.3
    """Std of a per-channel constant added to the training noise, so the model can change a
    frame's mean brightness (DIAMOND)."""
    train_sigma_loc: float = -0.4
    """Mean of log sigma during training (DIAMOND; EDM uses -1.2 for images)."""
    train_sigma_scale: float = 1.2
    """Std of log sigma during training (DIAMOND, EDM)."""
    train_sigma_min: float = 2e-3
    """Lowest training sigma (DIAMOND)."""
    train_sigma_max: float = 20.0
    """Highest training sigma (DIAMOND)."""
    sample_steps: int = 3
    """Euler steps per generated frame (DIAMOND: 3; RLinf's Wan/OpenSora envs: 5)."""
    sample_sigma_min: float = 2e-3
    """Last sigma of the sampling schedule (DIAMOND)."""
    sample_sigma_max: float = 5.0
    """First sigma of the sampling schedule (DIAMOND)."""
    rho: float = 7.0
    """Karras schedule curvature (EDM, DIAMOND)."""
    context_noise_max: float = 0.3
    """Context-noise augmentation: during training each sample's context frames get Gaussian
    noise of a level drawn from U(0, max) (pixels in [-1, 1]), and the level is part of the
    condition, so generated contexts with artefacts stay in distribution (GameNGen's noise
    augmentation; the reference's drift mitigation a). 0 turns it off."""
    context_noise_sample: float = 0.0
    """The level the model is told (and that is added) when it generates: 0 = clean context,
    the level real starts have."""
    state_hidden: int = 256
    """Width of the state head's MLP."""
    reflector_channels: tuple[int, ...] = (16, 32, 64)
    """Reflector CNN widths (stride-2 convs); small: it sees one frame."""
    action_dim: int = 0
    """Da, from the dataset."""
    state_dim: int = 0
    """Ds, from the dataset (the state the policy reads; 0: the dataset stores none)."""
    tasks: tuple[str, ...] = ()
    """Task names, in task-id order (the dataset's tasks)."""

    def check(self) -> None:
        """ConfigError (one line, naming the flag) for an architecture that cannot be built."""
        divisor = self.patch * 2 ** (len(self.channels) - 1)
        if self.image_size < 8 or self.image_size % divisor:
            raise ConfigError(
                f"--model.image-size must be >= 8 and divisible by {divisor} (--model.patch, "
                f"then one halving per UNet level after the first), got {self.image_size}"
            )
        for name in ("context_frames", "frame_skip", "layers_per_block", "sample_steps", "patch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--model.{name.replace('_', '-')} must be >= 1")
        if not self.channels or any(c % self.norm_groups for c in self.channels):
            raise ConfigError(
                f"--model.channels {list(self.channels)}: each must be divisible by "
                f"--model.norm-groups {self.norm_groups}"
            )
        if self.context_noise_max < 0 or self.context_noise_sample < 0:
            raise ConfigError("--model.context-noise-max / -sample must be >= 0")


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., S, S, 3) -> float (..., 3, S, S) in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float (..., 3, S, S) in [-1, 1] -> uint8 (..., S, S, 3): DIAMOND's 8-bit quantisation
    of every generated frame (drift mitigation c: a fed-back frame carries no sub-level error)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1)


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames (n, H, W, 3) -> uint8 (n, size, size, 3), antialiased bilinear, unchanged
    when already that size: the same resampling as fit-critic's frames
    (vla_rl.rewards.pairwise_critic.resize_frames; an adapter cannot import vla_rl.rewards)."""
    if frames.shape[1:3] == (size, size):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def fourier(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal features (B, dim) of scalars x (B,), log-spaced frequencies 1..64."""
    freqs = torch.exp(torch.linspace(0, math.log(64.0), dim // 2, device=x.device))
    angles = x[:, None] * freqs[None] * math.pi
    return torch.cat([angles.cos(), angles.sin()], 1)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """The EDM sampling schedule (steps + 1,): `steps` sigmas from sigma_max down to sigma_min
    spaced evenly in sigma^(1/rho), then 0."""
    ramp = torch.linspace(0, 1, steps) if steps > 1 else torch.zeros(1)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)])


@dataclass
class StepInputs:
    """What conditions one model step, for B rows.

    context: uint8 (B, K, S, S, 3), newest last; actions: float (B, k, Da) in env units, zero
    past m; mask: (B, k) 1 for the m real actions; gaps: (B, K - 1) env steps between
    consecutive context frames (0 where a start repeats its first frame); tasks: (B,) int64;
    state, prev_state: (B, Ds) the state at the newest and the previous context frame."""

    context: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    gaps: torch.Tensor
    tasks: torch.Tensor
    state: torch.Tensor
    prev_state: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class VideoWorldModel(nn.Module):
    """Denoiser, state head and reflector (see the module docstring). Normalisation statistics
    are buffers, so they travel in model.safetensors with the weights."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        from diffusers import UNet2DModel

        cfg.check()
        self.cfg = cfg
        k, da, ds, n_ctx = cfg.frame_skip, cfg.action_dim, cfg.state_dim, cfg.context_frames
        levels = len(cfg.channels)
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if cfg.attention:  # attention at the two lowest resolutions only (cost grows with S^4)
            down[-2:] = ["AttnDownBlock2D"] * min(2, levels)
            up[:2] = ["AttnUpBlock2D"] * min(2, levels)
        pp = cfg.patch**2
        step_dim = k * da + k + (n_ctx - 1)  # actions, mask, gaps (step_features)
        self.unet = UNet2DModel(
            sample_size=cfg.image_size // cfg.patch,
            in_channels=3 * pp * (n_ctx + 1) + (step_dim if cfg.action_planes else 0),
            out_channels=3 * pp,
            block_out_channels=tuple(cfg.channels),
            layers_per_block=cfg.layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            norm_num_groups=cfg.norm_groups,
            add_attention=cfg.attention,
            resnet_time_scale_shift="scale_shift",
            class_embed_type="identity",
            time_embedding_dim=cfg.cond_dim,
        )
        num_tasks = max(len(cfg.tasks), 1)
        self.task_embed = nn.Embedding(num_tasks, cfg.task_embed_dim)
        self.cond = nn.Sequential(
            nn.Linear(2 * 32 + step_dim + cfg.task_embed_dim, cfg.cond_dim),
            nn.SiLU(),
            nn.Linear(cfg.cond_dim, cfg.cond_dim),
        )
        self.state_head = (
            nn.Sequential(
                nn.Linear(2 * ds + step_dim, cfg.state_hidden),
                nn.SiLU(),
                nn.Linear(cfg.state_hidden, cfg.state_hidden),
                nn.SiLU(),
                nn.Linear(cfg.state_hidden, ds),
            )
            if ds
            else None
        )
        self.reflector = Reflector(cfg)
        # Filled from the training data (fit_normalisation); identity until then.
        self.register_buffer("action_mean", torch.zeros(da))
        self.register_buffer("action_std", torch.ones(da))
        self.register_buffer("state_mean", torch.zeros(ds))
        self.register_buffer("state_std", torch.ones(ds))
        self.register_buffer("delta_std", torch.ones(ds))  # std of the k-step state change
        self.register_buffer("change_std", torch.ones(()))  # std of a k-step pixel change

    # ---- conditioning ---------------------------------------------------------------------------
    def step_features(self, x: StepInputs) -> torch.Tensor:
        """(B, k Da + k + K - 1): normalised actions (zero past m), the mask, gaps / k."""
        a = (x.actions - self.action_mean) / self.action_std * x.mask[..., None]
        return torch.cat([a.flatten(1), x.mask, x.gaps / self.cfg.frame_skip], 1)

    def condition(self, c_noise: torch.Tensor, level: torch.Tensor, x: StepInputs):
        """The condition vector (B, C) for noise c_noise (B,) and context-noise level (B,)."""
        scale = max(self.cfg.context_noise_max, 1e-6)
        parts = [
            fourier(c_noise, 32),
            fourier(level / scale, 32),
            self.step_features(x),
            self.task_embed(x.tasks),
        ]
        return self.cond(torch.cat(parts, 1))

    # ---- the EDM denoiser -----------------------------------------------------------------------
    def denoise(
        self,
        noisy: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        cond_inputs: tuple[torch.Tensor, StepInputs],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """EDM's preconditioned D(x; sigma): (denoised (B, 3, S, S), raw network output F).
        noisy (B, 3, S, S); sigma (B,); context (B, 3K, S, S) in [-1, 1]."""
        sd = self.cfg.sigma_data
        s = sigma[:, None, None, None]
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        level, inputs = cond_inputs
        cond = self.condition(sigma.log() / 4, level, inputs)
        zero_t = torch.zeros(len(noisy), device=noisy.device)  # the noise enters via `cond`
        p = self.cfg.patch
        folded = (
            F.pixel_unshuffle(torch.cat([context, c_in * noisy], 1), p)
            if p > 1
            else torch.cat([context, c_in * noisy], 1)
        )
        if self.cfg.action_planes:
            feats = self.step_features(inputs)[:, :, None, None]
            folded = torch.cat([folded, feats.expand(-1, -1, *folded.shape[-2:])], 1)
        out = self.unet(folded, zero_t, class_labels=cond).sample
        out = F.pixel_shuffle(out, p) if p > 1 else out
        return c_skip * noisy + c_out * out, out

    def context_input(self, x: StepInputs, level: torch.Tensor, noise: torch.Tensor | None):
        """The K context frames as (B, 3K, S, S) in [-1, 1], plus `level` x noise."""
        ctx = to_unit(x.context).flatten(1, 2)
        if noise is not None:
            ctx = ctx + level[:, None, None, None] * noise
        return ctx

    def encode_target(self, x: StepInputs, frames: torch.Tensor) -> torch.Tensor:
        """What is diffused for target frames uint8 (B, S, S, 3): the frame in [-1, 1], or its
        change from the newest context frame scaled to std sigma_data (`predict_change`)."""
        if not self.cfg.predict_change:
            return to_unit(frames)
        change = to_unit(frames) - to_unit(x.context[:, -1])
        return change / self.change_std * self.cfg.sigma_data

    def decode_target(self, x: StepInputs, x0: torch.Tensor) -> torch.Tensor:
        """The frame, uint8 (B, S, S, 3), of a diffused sample x0 (`encode_target`'s inverse)."""
        if self.cfg.predict_change:
            x0 = to_unit(x.context[:, -1]) + x0 * self.change_std / self.cfg.sigma_data
        return to_uint8(x0)

    def edm_loss(self, x: StepInputs, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, denoised frames uint8): EDM's weighted MSE, as DIAMOND writes it (the network
        output F against (x0 - c_skip x_noisy) / c_out), for target frames uint8 (B, S, S, 3).
        Noise from torch's global generator (saved in checkpoints: a resume repeats exactly)."""
        cfg, b = self.cfg, len(target)
        x0 = self.encode_target(x, target)
        dev = x0.device
        log_sigma = torch.randn(b, device=dev) * cfg.train_sigma_scale + cfg.train_sigma_loc
        sigma = log_sigma.exp().clamp(cfg.train_sigma_min, cfg.train_sigma_max)
        eps = torch.randn_like(x0) + cfg.sigma_offset_noise * torch.randn(b, 3, 1, 1, device=dev)
        s = sigma[:, None, None, None]
        noisy = x0 + s * eps
        level = torch.rand(b, device=dev) * cfg.context_noise_max
        ctx = self.context_input(
            x, level, torch.randn(b, 3 * cfg.context_frames, *x0.shape[-2:], device=dev)
        )
        denoised, out = self.denoise(noisy, sigma, ctx, (level, x))
        sd = cfg.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        loss = F.mse_loss(out, (x0 - c_skip * noisy) / c_out)
        return loss, self.decode_target(x, denoised.detach())

    @torch.no_grad()
    def sample(self, x: StepInputs, noise: torch.Tensor | Sequence[torch.Generator] | None = None):
        """The next frame, uint8 (B, S, S, 3), by `sample_steps` Euler steps of EDM's ODE.
        noise: per-row generators (the env's seeded streams: a row's frame does not depend on
        the batch it ran in), or None for torch's global generator."""
        cfg = self.cfg
        b, size, dev = len(x.context), cfg.image_size, x.context.device
        shape = (3, size, size)

        def randn() -> torch.Tensor:
            if noise is None:
                return torch.randn(b, *shape, device=dev)
            return torch.stack([torch.randn(shape, generator=g) for g in noise]).to(dev)

        level = torch.full((b,), cfg.context_noise_sample, device=dev)
        ctx = self.context_input(
            x,
            level,
            None
            if not cfg.context_noise_sample
            else torch.randn(b, 3 * cfg.context_frames, size, size, device=dev),
        )
        sigmas = karras_sigmas(
            cfg.sample_steps, cfg.sample_sigma_min, cfg.sample_sigma_max, cfg.rho
        ).to(dev)
        frame = randn() * sigmas[0]
        for i in range(cfg.sample_steps):
            denoised, _ = self.denoise(frame, sigmas[i].expand(b), ctx, (level, x))
            frame = frame + (frame - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return self.decode_target(x, frame)

    # ---- the state head -------------------------------------------------------------------------
    def state_residual(self, x: StepInputs) -> torch.Tensor:
        """The head's normalised state change (B, Ds) over the step."""
        assert self.state_head is not None
        s = (x.state - self.state_mean) / self.state_std
        v = (x.state - x.prev_state) / self.delta_std
        return self.state_head(torch.cat([s, v, self.step_features(x)], 1))

    def state_loss(self, x: StepInputs, next_state: torch.Tensor) -> torch.Tensor:
        """MSE of the normalised state change against the real one."""
        return F.mse_loss(self.state_residual(x), (next_state - x.state) / self.delta_std)

    @torch.no_grad()
    def predict_state(self, x: StepInputs) -> torch.Tensor:
        """The state (B, Ds) after the step (an empty (B, 0) when the model has no state)."""
        if self.state_head is None:
            return x.state
        return x.state + self.state_residual(x) * self.delta_std

    # ---- files ----------------------------------------------------------------------------------
    def num_parameters(self, part: str | None = None) -> int:
        module = self if part is None else getattr(self, part)
        return sum(p.numel() for p in module.parameters())

    def save(
        self,
        directory: str | Path,
        extra_files: dict[str, dict[str, torch.Tensor]] | None = None,
        info: dict[str, Any] | None = None,
    ) -> Path:
        """config.json (format, the config, `info`) + model.safetensors (+ `extra_files`, each a
        safetensors file of tensors: the start frames), in one atomic publish."""
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            for name, tensors in (extra_files or {}).items():
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / name))
            config = {"format": FORMAT, "model": asdict(self.cfg), **(info or {})}
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory


class Reflector(nn.Module):
    """The "instant reflector": frame (B, 3, S, S) in [-1, 1] + task -> success logit (B,) and
    progress logit (B,) (sigmoid: the fraction of a successful episode done). Termination is the
    success decision (`WorldModelEnv`: p >= threshold for `consecutive` model steps), as in
    RLinf's world-model envs: in the benchmarks here an episode terminates exactly when it
    succeeds, so a second head would learn the same labels."""

    def __init__(self, cfg: WorldModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = 5  # RGB + x, y coordinate channels (CoordConv: success is mostly *where*)
        for c in cfg.reflector_channels:
            layers += [nn.Conv2d(width, c, 3, stride=2, padding=1), nn.SiLU()]
            width = c
        self.conv = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.task_embed = nn.Embedding(max(len(cfg.tasks), 1), cfg.task_embed_dim)
        self.head = nn.Sequential(
            nn.Linear(16 * width + cfg.task_embed_dim, 128), nn.SiLU(), nn.Linear(128, 2)
        )

    def forward(self, frames: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Logits (B, 2): [success, progress] for uint8 frames (B, S, S, 3)."""
        x = to_unit(frames)
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        features = self.conv(torch.cat([x, ys, xs], 1))
        return self.head(torch.cat([features, self.task_embed(tasks)], 1))


# ---- loading ----------------------------------------------------------------------------------
def world_model_directory(path: str | Path) -> Path:
    """The directory holding a world model's config.json: `path` itself, or its model/
    subfolder (a `vla-rl world-model train` run directory). ConfigError otherwise."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ConfigError(
        f"--env.world-model {path}: no {CONFIG_FILE} there or in {path / 'model'}; expected a "
        "directory written by `vla-rl world-model train`"
    )


def read_world_model_config(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(directory, its config.json) after checking it is a world model; one-line ConfigError
    for another kind of directory (a policy, a critic) or damaged files."""
    directory = world_model_directory(path)
    expected = (
        f"expected a world model ({CONFIG_FILE} of format {FORMAT!r} with {WEIGHTS_FILE}"
        f" and {STARTS_FILE}, as `vla-rl world-model train` writes)"
    )
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{directory / CONFIG_FILE}: not JSON ({err}); {expected}") from None
    found = config.get("format") if isinstance(config, dict) else type(config).__name__
    if not isinstance(config, dict) or found != FORMAT:
        kind = (
            f"policy_type {config['policy_type']!r}"
            if isinstance(config, dict) and "policy_type" in config
            else f"format {found!r}"
        )
        raise ConfigError(f"--env.world-model {path}: {kind}; {expected}")
    for name in (WEIGHTS_FILE, STARTS_FILE):
        if not (directory / name).is_file():
            raise ConfigError(f"--env.world-model {path}: {name} is missing; {expected}")
    return directory, config


def load_world_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, config.json dict, start tensors dict) from a world-model
    directory; nothing is unpickled (safetensors and JSON only)."""
    from vla_rl.core.policy import read_safetensors

    directory, config = read_world_model_config(path)
    fields = dict(config["model"])
    for name in ("channels", "reflector_channels", "tasks"):
        fields[name] = tuple(fields[name])
    model = VideoWorldModel(WorldModelConfig(**fields))
    try:
        model.load_state_dict(read_safetensors(directory / WEIGHTS_FILE))
    except RuntimeError as err:  # torch lists every mismatched key on many lines
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"{directory}: weights do not fit its config.json ({first})") from None
    starts = read_safetensors(directory / STARTS_FILE)
    return model.to(device).eval(), config, starts
