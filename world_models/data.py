"""The world model's data: LeRobot datasets with camera frames and actions -> episodes at the
model's resolution (each with its initial-state key), the window sampler of the training loop,
and the reflector's per-frame labels.

Splitting is the command's: fit-critic's rule (`vla_rl.commands.fit_critic.split_episodes`,
which reads an episode's .instruction and .start): per instruction, a fraction of its distinct
initial states is held out with every episode that starts there. The held-out episodes are the
eval starts of `--benchmark worldmodel` and what `world-model eval` measures on; the train
episodes are its train starts. So the two never share a reset.

Shapes: N frames in a bank, T an episode's frames, S model image size, K context frames,
k = frame_skip, Da, Ds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl.core.config import ConfigError
from vla_rl.data.lerobot_dataset import Episode, LeRobotDataset
from vla_rl.world_models.video_model import StepInputs, WorldModelConfig


@dataclass
class WMEpisode:
    """One real episode as the world model reads it.

    frames: uint8 (T, S, S, 3) at the model size; first_frame: uint8 (H0, W0, 3) at the
    dataset's own size (what a reset shows the policy); state (T, Ds), action (T, Da) float32,
    the action taken at each frame; success: the dataset's outcome; task: its task name;
    instruction: its language instruction; start: the initial-state key (the split's unit);
    source: "dataset#index"."""

    frames: np.ndarray
    first_frame: np.ndarray
    state: np.ndarray
    action: np.ndarray
    success: bool
    task: str
    instruction: str
    start: bytes
    source: str

    @property
    def length(self) -> int:
        return len(self.frames)


def task_names_of(info: dict[str, Any], instructions: Sequence[str]) -> dict[str, str]:
    """instruction -> task name: the source benchmark's own names when the dataset says which
    benchmark it was collected on (`vla-rl collect` records it), so `--tasks reach-v3` means
    the same task in the world model and in the real simulator; else the instruction itself."""
    from vla_rl.core.benchmark import get_benchmark
    from vla_rl.core.registry import BENCHMARKS

    source = (info.get("vla_rl") or {}).get("benchmark") or info.get("robot_type")
    names = {s: s for s in instructions}
    if isinstance(source, str) and source in BENCHMARKS:
        try:
            bench = get_benchmark(source)
            by_instruction = {t.instruction: t.name for t in bench.tasks("train")}
        except ImportError:  # a LIBERO dataset without the extra installed: keep instructions
            return names
        names.update({s: by_instruction[s] for s in instructions if s in by_instruction})
    return names


def source_benchmark(info: dict[str, Any]) -> str | None:
    """The registered benchmark a dataset was collected on, or None."""
    from vla_rl.core.registry import BENCHMARKS

    source = (info.get("vla_rl") or {}).get("benchmark") or info.get("robot_type")
    return source if isinstance(source, str) and source in BENCHMARKS else None


def load_episodes(
    paths: Sequence[str],
    camera: str,
    image_size: int,
    start_key: Callable[[Episode], bytes] | None = None,
):
    """(episodes, metadata) of every dataset in `paths`, frames of one camera resized to
    image_size. start_key: an episode's initial-state key (the commands pass fit-critic's
    `initial_state_key`); None: its first state's bytes. metadata: camera per dataset, fps,
    the source benchmark (or None), action and state dims. One-line ConfigErrors name the flag
    and the valid choices."""
    from vla_rl.world_models.video_model import resize_frames

    start_key = start_key or (lambda ep: np.round(ep.state[0], 3).tobytes())

    if not paths:
        raise ConfigError(
            "--dataset is required (LeRobot v3.0 directories with camera images "
            "and actions, from `vla-rl collect --env.images`)"
        )
    episodes: list[WMEpisode] = []
    meta: dict[str, Any] = {"cameras": {}, "fps": None, "source": None, "dims": None}
    for path in paths:
        if not Path(path).is_dir():
            raise ConfigError(f"--dataset {path}: no such dataset directory")
        try:
            ds = LeRobotDataset(path)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"--dataset {path}: {err}") from None
        cams = [key.removeprefix("observation.images.") for key in ds.cameras]
        if not cams:
            raise ConfigError(
                f"--dataset {path} holds no camera images; the world model learns "
                "from frames (collect with --env.images)"
            )
        action = ds.features.get("action", {})
        if not action or not action.get("shape") or int(np.prod(action["shape"])) < 1:
            raise ConfigError(
                f"--dataset {path} has no 'action' feature (features: {', '.join(ds.features)})"
                "; the world model is conditioned on the actions taken"
            )
        cam = camera or cams[0]
        if cam not in cams:
            raise ConfigError(
                f"--camera {cam!r} is not in {path}; valid choices: {', '.join(cams)}"
            )
        meta["cameras"][path] = cam
        meta["fps"] = meta["fps"] or ds.fps
        meta["source"] = meta["source"] or source_benchmark(ds.info)
        names = task_names_of(ds.info, list(ds.tasks.values()))
        for i in range(len(ds)):
            ep = ds.episode(i)
            if ep.length < 2:
                continue  # no transition to learn from
            dims = (ep.action.shape[1], ep.state.shape[1])
            if meta["dims"] is not None and dims != meta["dims"]:
                raise ConfigError(
                    f"--dataset {path}: action/state dims {dims} differ from the "
                    f"first dataset's {meta['dims']}"
                )
            meta["dims"] = dims
            frames = ep.images[cam]
            small = resize_frames(torch.from_numpy(frames), image_size).numpy()
            episodes.append(
                WMEpisode(
                    small,
                    frames[0],
                    ep.state,
                    ep.action,
                    ep.success,
                    names.get(ep.task, ep.task),
                    ep.task,
                    start_key(ep),
                    f"{path}#{i}",
                )
            )
    if not episodes:
        raise ConfigError(f"--dataset {', '.join(paths)}: no episode of 2 or more frames")
    return episodes, meta


# ---- reflector labels --------------------------------------------------------------------------
def reflector_labels(length: int, success: bool, positive_window: int, ignore_window: int):
    """(success label, progress label) per frame (T,) float32 of one episode; -1 = no label.

    success: 1 for the last `positive_window` + 1 frames of a successful episode (the benchmark
    stopped it when it succeeded, so its last frame is the success), ignored for the
    `ignore_window` frames before those (a frame a step before success looks like it; as
    fit-critic leaves 0.8-0.95 T unlabelled), 0 elsewhere and on every frame of a failure.
    progress: t / (T - 1) on successful episodes, unlabelled on failures (how far a failure
    got is unknown)."""
    t = np.arange(length)
    last = length - 1
    succ = np.zeros(length, np.float32)
    prog = np.full(length, -1.0, np.float32)
    if success:
        succ[t >= last - positive_window] = 1.0
        succ[(t < last - positive_window) & (t >= last - positive_window - ignore_window)] = -1.0
        prog = (t / max(last, 1)).astype(np.float32)
    return succ, prog


# ---- the frame bank and its window sampler ----------------------------------------------------
class FrameBank:
    """Episodes concatenated: frames uint8 (N, S, S, 3), state (N, Ds), action (N, Da), and per
    episode its first row, length and task id; reflector labels per frame (N,)."""

    def __init__(
        self,
        episodes: list[WMEpisode],
        cfg: WorldModelConfig,
        positive_window: int = 2,
        ignore_window: int = 8,
    ):
        self.cfg = cfg
        self.episodes = episodes
        self.frames = torch.from_numpy(np.concatenate([e.frames for e in episodes]))
        self.state = torch.from_numpy(
            np.concatenate([e.state for e in episodes]).astype(np.float32)
        )
        self.action = torch.from_numpy(
            np.concatenate([e.action for e in episodes]).astype(np.float32)
        )
        self.length = np.array([e.length for e in episodes])
        self.start = np.concatenate([[0], np.cumsum(self.length)[:-1]])
        task_id = {name: i for i, name in enumerate(cfg.tasks)}
        self.task = np.array([task_id[e.task] for e in episodes])
        labels = [
            reflector_labels(e.length, e.success, positive_window, ignore_window) for e in episodes
        ]
        self.success_label = torch.from_numpy(np.concatenate([s for s, _ in labels]))
        self.progress_label = torch.from_numpy(np.concatenate([p for _, p in labels]))
        self.frame_task = torch.from_numpy(np.repeat(self.task, self.length))

    def statistics(self) -> dict[str, torch.Tensor]:
        """Normalisation statistics for the model's buffers: action and state mean / std, the
        std of k-step state changes and of k-step pixel changes (in [-1, 1] units)."""
        k = self.cfg.frame_skip
        rows = np.concatenate(
            [s + np.arange(max(n - k, 0)) for s, n in zip(self.start, self.length)]
        )
        if len(rows) == 0:  # every episode shorter than k: use 1-step changes
            rows = np.concatenate([s + np.arange(n - 1) for s, n in zip(self.start, self.length)])
            k = 1
        rows_t = torch.from_numpy(rows)
        delta = self.state[rows_t + k] - self.state[rows_t]
        pick = rows_t[torch.linspace(0, len(rows_t) - 1, min(len(rows_t), 512)).long()]
        change = (self.frames[pick + k].float() - self.frames[pick].float()) / 127.5
        return {
            "action_mean": self.action.mean(0),
            "action_std": self.action.std(0).clamp_min(1e-3),
            "state_mean": self.state.mean(0),
            "state_std": self.state.std(0).clamp_min(1e-3),
            "delta_std": delta.std(0).clamp_min(1e-4),
            "change_std": change.std().clamp_min(1e-3),
        }

    # ---- windows -------------------------------------------------------------------------------
    def sample(
        self, rng: np.random.Generator, batch: int, steps: int = 1, partial: float = 0.25
    ) -> Window:
        """`batch` training windows of `steps` consecutive model steps.

        Per window: an episode (weighted by its transitions), a gap s between frames (k half
        of the time, the chunked policies' case; else uniform in 1..k, down to the Ta = 1 of
        per-step policies), a current frame t, the K context frames t - (K-1) s .. t (clamped
        at the first frame: a reset repeats it, gap 0), and targets t + s, t + 2 s, ... With
        one step, `partial` of the windows end a sub-chunk early (m < s actions: a chunk
        whose length k does not divide)."""
        k, n_ctx = self.cfg.frame_skip, self.cfg.context_frames
        usable = np.flatnonzero(self.length > steps)
        weights = (self.length[usable] - 1) / (self.length[usable] - 1).sum()
        ep = rng.choice(usable, size=batch, p=weights)
        last = self.length[ep] - 1
        s = np.where(rng.random(batch) < 0.5, k, rng.integers(1, k + 1, size=batch))
        s = np.minimum(s, last // steps)
        t = rng.integers(0, last - steps * s + 1)
        m = s.copy()
        if steps == 1:
            cut = rng.random(batch) < partial
            m = np.where(cut, rng.integers(1, k + 1, size=batch), s)
            m = np.minimum(m, last - t)
        offsets = np.arange(-(n_ctx - 1), 1)[None] * s[:, None]  # (B, K)
        ctx = np.maximum(t[:, None] + offsets, 0)
        targets = [t + m] if steps == 1 else [t + (j + 1) * s for j in range(steps)]
        sizes = [m] if steps == 1 else [s] * steps
        return Window(self.start[ep], ep, ctx, np.diff(ctx, axis=1), targets, sizes)

    def step_inputs(
        self,
        window: Window,
        j: int,
        context: torch.Tensor | None = None,
        gaps: np.ndarray | None = None,
    ) -> StepInputs:
        """StepInputs of step j of `window` (its real context unless `context` (B, K, S, S, 3),
        generated frames, replaces it)."""
        k = self.cfg.frame_skip
        base = window.base
        cur = window.context[:, -1] if j == 0 else window.targets[j - 1]
        prev = (
            window.context[:, -2]
            if j == 0 and window.context.shape[1] > 1
            else (window.targets[j - 2] if j >= 2 else window.context[:, -1])
        )
        m = window.sizes[j]
        idx = cur[:, None] + np.arange(k)[None]  # (B, k) rows of the sub-chunk's actions
        mask = (np.arange(k)[None] < m[:, None]).astype(np.float32)
        rows = torch.from_numpy(
            base[:, None] + np.minimum(idx, self.length[window.episode, None] - 1)
        )
        actions = self.action[rows] * torch.from_numpy(mask)[..., None]
        if context is None:
            context = self.frames[torch.from_numpy(base[:, None] + window.context)]
        if gaps is None:
            gaps = window.gaps
        return StepInputs(
            context=context,
            actions=actions,
            mask=torch.from_numpy(mask),
            gaps=torch.from_numpy(gaps.astype(np.float32)),
            tasks=torch.from_numpy(self.task[window.episode]),
            state=self.state[torch.from_numpy(base + cur)],
            prev_state=self.state[torch.from_numpy(base + prev)],
        )

    def target_frames(self, window: Window, j: int) -> torch.Tensor:
        return self.frames[torch.from_numpy(window.base + window.targets[j])]

    def target_states(self, window: Window, j: int) -> torch.Tensor:
        return self.state[torch.from_numpy(window.base + window.targets[j])]


@dataclass
class Window:
    """Sampled windows (see `FrameBank.sample`): base (B,) first bank row of each episode;
    episode (B,); context (B, K) frame indices within the episode; gaps (B, K - 1); targets:
    per step, the target frame index (B,); sizes: per step, its actions m (B,)."""

    base: np.ndarray
    episode: np.ndarray
    context: np.ndarray
    gaps: np.ndarray
    targets: list[np.ndarray]
    sizes: list[np.ndarray]


def to_device(x: StepInputs, device: torch.device | str) -> StepInputs:
    return StepInputs(
        **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.__dict__.items()}
    )
