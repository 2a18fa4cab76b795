"""Training a `VideoWorldModel` on LeRobot datasets, as library code: the settings
(`WorldModelTrainConfig`), the losses of one step, the generated frames of the reflector,
validation, what a run publishes, and `WorldModelTrainer`, which holds the training state and
takes one step. `vla-rl world-model train` (vla_rl/commands/world_model.py) runs the loop.

One step: EDM loss on sampled windows (+ a few autoregressive steps late in training), the
state head's MSE, the reflector's BCE on real frames (+ generated ones from the middle of
training on), one AdamW step on their sum.

Drift mitigations (world-models.md 3.2): context-noise augmentation (in the model's loss),
`autoregressive_steps` steps late in training whose contexts hold the model's own sampled and
uint8-quantised frames (DIAMOND feeds its predictions back the same way; here with the real
few-step sampler, so training sees exactly what imagination produces), uint8 quantisation of
every generated frame, short imagined horizons from real starts.

The reflector learns from real frames all along and, from step `reflector_generated_from`
on, also from frames the model generated open-loop from real contexts with real actions,
labelled as the real frames they stand for (world-models.md 3.3), so it sees the model's
artefacts and is harder to fool into a hallucinated success.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_rl.core.config import ConfigError, to_dict
from vla_rl.world_models.data import FrameBank, WMEpisode, to_device
from vla_rl.world_models.video_model import (
    STARTS_FILE,
    VideoWorldModel,
    WorldModelConfig,
    resize_frames,
)

GENERATED_BANK = 512  # generated frames the reflector keeps (the newest)


@dataclass
class WorldModelTrainConfig:
    """`vla-rl world-model train`: an action-conditioned video world model + reflector."""

    dataset: tuple[str, ...] = ()
    """LeRobot v3.0 directories with camera frames and actions (`vla-rl collect --env.images
    --no-successes-only`, with --action-noise for failures): its tasks become the world
    model's tasks."""
    camera: str = ""
    """Camera the model predicts. Empty: each dataset's first camera."""
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    """Architecture and diffusion settings (`--model.channels 64 128 128 --model.patch 1` on a
    GPU)."""
    steps: int = 2000
    """Gradient steps. About 25 minutes on one core of the 2-core CPU: 0.59 CPU s per step of
    the default model (measured, one thread), plus the autoregressive steps of the last 30%
    (about 2.7x a plain step) and the validations."""
    batch_size: int = 16
    """Windows per step (DIAMOND 32; 16 halves the CPU step)."""
    lr: float = 3e-4
    """AdamW learning rate, constant (so a resume continues exactly). DIAMOND's 1e-4 is for
    a longer run; a small model trained from scratch for 2k steps takes 3e-4."""
    weight_decay: float = 1e-2
    """AdamW weight decay (DIAMOND)."""
    held_out: float = 0.2
    """Fraction of each task's initial states held out with their episodes: the eval starts
    of --benchmark worldmodel and what validation and `world-model eval` measure on."""
    partial: float = 0.25
    """Fraction of one-step windows whose sub-chunk ends early (m < k actions; see
    FrameBank.sample), for policies whose chunk length k does not divide."""
    autoregressive_steps: int = 2
    """Model steps per window late in training, later ones with the model's own frames as
    context (DIAMOND's num_autoregressive_steps; drift mitigation b). 1 turns it off."""
    autoregressive_from: int = 1400
    """Step after which half of the steps are autoregressive (70% of the default run; a step
    count, not a fraction, so a resumed run with more --steps keeps its schedule)."""
    reflector_batch: int = 32
    """Frames per step for the reflector; a quarter are success frames when any exist (they
    are a few per successful episode, so uniform draws would hardly see them)."""
    reflector_generated_from: int = 1000
    """Step after which half of the reflector's frames are generated ones (half the default
    run, when the model has learnt enough for its frames to be worth learning from)."""
    generated_every: int = 100
    """Steps between refreshes of the generated frames (8 open-loop rollouts of 6 model steps
    from random train contexts)."""
    positive_window: int = 2
    """Env steps before a successful episode's end also labelled success (reflector_labels)."""
    ignore_window: int = 8
    """Env steps before those left unlabelled (look like success, are not yet)."""
    success_threshold: float = 0.5
    """The env's success rule: reflector p >= this (stored with the model; RLinf uses 0.9 with
    a classifier trained on balanced frames; ours sees a quarter of positives)."""
    success_consecutive: int = 1
    """... for this many consecutive model steps (RLinf: 1; 2 trades detection for fewer
    hallucinated successes; `world-model eval` measures both)."""
    val_every: int = 250
    """Steps between validations (and at the end): open-loop error on held-out episodes, a
    video, and the model published to OUTPUT_DIR/model."""
    val_episodes: int = 8
    """Held-out episodes a validation rolls out (the first ones, fixed)."""
    val_horizon: int = 6
    """Model steps of each validation rollout (k env steps each)."""
    videos: int = 2
    """Rollouts shown real | imagined in each validation video (0: none)."""
    save_every: int = 250
    """Steps between checkpoints (atomic; --resume continues from the last)."""
    log_every: int = 10
    """Steps between loss records in train.json (and the first step)."""
    output_dir: str = "runs/world_model"
    """Run directory: model/ (the world model: --env.world-model), checkpoint/, videos/,
    train.json."""
    resume: bool = False
    """Continue from output_dir/checkpoint (a larger --steps trains on)."""
    overwrite: bool = False
    """Replace what an existing output_dir holds."""
    seed: int = 0
    """Seeds the split, the window sampling and the weights."""
    device: str = "cpu"
    """Torch device (cuda on a GPU)."""
    progress: bool = True
    """Show a progress bar."""


# Settings a resumed run may change (the budget and how it is watched).
RUN_ONLY = (
    "steps",
    "log_every",
    "save_every",
    "val_every",
    "videos",
    "output_dir",
    "resume",
    "overwrite",
    "progress",
    "device",
)


def check_config(cfg: WorldModelTrainConfig) -> None:
    """One-line ConfigErrors for bad values, before any dataset is read."""
    if not cfg.dataset:
        raise ConfigError(
            "--dataset is required (LeRobot v3.0 directories with camera images "
            "and actions, from `vla-rl collect --env.images`)"
        )
    for name in (
        "steps",
        "batch_size",
        "reflector_batch",
        "save_every",
        "log_every",
        "val_every",
        "val_episodes",
        "val_horizon",
        "generated_every",
        "autoregressive_steps",
        "success_consecutive",
    ):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not 0 < cfg.held_out < 1:
        raise ConfigError(f"--held-out must be in (0, 1), got {cfg.held_out}")
    for name in ("partial", "success_threshold"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1]")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {cfg.lr}")
    for name in (
        "videos",
        "positive_window",
        "ignore_window",
        "autoregressive_from",
        "reflector_generated_from",
    ):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    cfg.model.check()


def identity(cfg: WorldModelTrainConfig) -> dict[str, Any]:
    """The settings that shape the training (a resume must match them), through JSON."""
    return json.loads(json.dumps({k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY}))


# ---- the losses of one step ------------------------------------------------------------------
def world_model_losses(
    model: VideoWorldModel,
    bank: FrameBank,
    rng: np.random.Generator,
    cfg: WorldModelTrainConfig,
    steps: int,
) -> dict[str, torch.Tensor]:
    """EDM loss (mean over `steps` model steps; steps after the first see the model's own
    sampled frames as context) and the state head's loss on the first step."""
    dev = torch.device(cfg.device)
    window = bank.sample(rng, cfg.batch_size, steps, cfg.partial)
    x = to_device(bank.step_inputs(window, 0), dev)
    first = x
    edm, _ = model.edm_loss(x, bank.target_frames(window, 0).to(dev))
    losses = [edm]
    context, gaps = x.context, window.gaps
    for j in range(1, steps):
        with torch.no_grad():  # the frame imagination would have produced, as the next context
            frame = model.sample(x)
        context = torch.cat([context[:, 1:], frame[:, None]], 1)
        gaps = np.concatenate([gaps[:, 1:], window.sizes[j - 1][:, None]], 1)
        x = to_device(bank.step_inputs(window, j, context=context.cpu(), gaps=gaps), dev)
        loss, _ = model.edm_loss(x, bank.target_frames(window, j).to(dev))
        losses.append(loss)
    out = {"edm": torch.stack(losses).mean()}
    if model.state_head is not None:
        out["state"] = model.state_loss(first, bank.target_states(window, 0).to(dev))
    return out


def reflector_losses(
    model: VideoWorldModel,
    bank: FrameBank,
    generated: dict | None,
    rng: np.random.Generator,
    cfg: WorldModelTrainConfig,
) -> dict:
    """BCE of the success logit (labelled frames) and of the progress logit (frames of
    successful episodes), on real frames and, when `generated` holds some, half generated."""
    n = cfg.reflector_batch
    n_gen = n // 2 if generated is not None and len(generated["frames"]) else 0
    labelled = torch.nonzero(bank.success_label >= 0).squeeze(1).numpy()
    positive = torch.nonzero(bank.success_label > 0).squeeze(1).numpy()
    n_real = n - n_gen
    n_pos = n_real // 4 if len(positive) else 0
    rows = np.concatenate(
        [
            rng.choice(positive, n_pos) if n_pos else np.zeros(0, int),
            rng.choice(labelled, n_real - n_pos),
        ]
    ).astype(np.int64)
    rows_t = torch.from_numpy(rows)
    frames = bank.frames[rows_t]
    succ, prog, tasks = (
        bank.success_label[rows_t],
        bank.progress_label[rows_t],
        bank.frame_task[rows_t],
    )
    if n_gen:
        pick = torch.from_numpy(rng.integers(0, len(generated["frames"]), n_gen))
        frames = torch.cat([frames, generated["frames"][pick]])
        succ = torch.cat([succ, generated["success"][pick]])
        prog = torch.cat([prog, generated["progress"][pick]])
        tasks = torch.cat([tasks, generated["tasks"][pick]])
    dev = torch.device(cfg.device)
    logits = model.reflector(frames.to(dev), tasks.to(dev))
    succ, prog = succ.to(dev), prog.to(dev)
    keep_s, keep_p = succ >= 0, prog >= 0
    zero = logits.sum() * 0
    s_loss = (
        F.binary_cross_entropy_with_logits(logits[keep_s, 0], succ[keep_s])
        if keep_s.any()
        else zero
    )
    p_loss = (
        F.binary_cross_entropy_with_logits(logits[keep_p, 1], prog[keep_p])
        if keep_p.any()
        else zero
    )
    return {"reflector": s_loss, "progress": p_loss}


@torch.no_grad()
def generate_frames(
    model: VideoWorldModel,
    bank: FrameBank,
    rng: np.random.Generator,
    rollouts: int = 8,
    horizon: int = 6,
) -> dict[str, torch.Tensor]:
    """Frames the model generates open-loop from random train contexts with real actions,
    with the labels of the real frames they stand for: frames (n, S, S, 3), success, progress,
    tasks (n,)."""
    from vla_rl.world_models.evaluate import open_loop

    k = bank.cfg.frame_skip
    eps = rng.integers(0, len(bank.episodes), rollouts)
    starts = [int(rng.integers(0, max(int(bank.length[e]) - 1 - k, 0) + 1)) for e in eps]
    was_training = model.training
    model.eval()
    roll = open_loop(model, bank, eps.tolist(), starts, horizon, seed=int(rng.integers(1 << 30)))
    model.train(was_training)
    valid = roll["valid"]
    idx = np.minimum(
        np.asarray(starts)[:, None] + (np.arange(horizon)[None] + 1) * k, bank.length[eps, None] - 1
    )
    rows = torch.from_numpy(bank.start[eps, None] + idx)
    return {
        "frames": roll["frames"][valid],
        "success": bank.success_label[rows][valid],
        "progress": bank.progress_label[rows][valid],
        "tasks": roll["tasks"][:, None].expand(valid.shape)[valid],
    }


def keep_newest(old: dict | None, new: dict, size: int = GENERATED_BANK) -> dict:
    if old is None:
        return {k: v[-size:] for k, v in new.items()}
    return {k: torch.cat([old[k], new[k]])[-size:] for k in new}


# ---- what the run publishes --------------------------------------------------------------------
def start_tensors(episodes: list[WMEpisode], model: VideoWorldModel) -> dict[str, torch.Tensor]:
    """starts.safetensors: per episode (in order; an env init id is a row) its first frame at
    the dataset's size (first_frames (N, H0, W0, 3)) and the model's (frames (N, S, S, 3)), its
    first state (N, Ds) and task id (N,)."""
    h0 = episodes[0].first_frame.shape[0]
    native = torch.cat([resize_frames(torch.from_numpy(e.first_frame)[None], h0) for e in episodes])
    task_id = {name: i for i, name in enumerate(model.cfg.tasks)}
    return {
        "first_frames": native,
        "frames": torch.from_numpy(np.stack([e.frames[0] for e in episodes])),
        "state": torch.from_numpy(np.stack([e.state[0] for e in episodes]).astype(np.float32)),
        "task": torch.tensor([task_id[e.task] for e in episodes], dtype=torch.int64),
    }


def env_info(
    episodes: list[WMEpisode],
    train: list[int],
    held: list[int],
    meta: dict,
    cfg: WorldModelTrainConfig,
) -> dict[str, Any]:
    """The config.json section `WorldModelBenchmark` reads: tasks with their train / eval
    start ids (rows of starts.safetensors), the horizon, fps, the source benchmark."""
    from vla_rl.core.benchmark import get_benchmark

    tasks = []
    for name in cfg.model.tasks:
        instruction = next(e.instruction for e in episodes if e.task == name)
        tasks.append(
            {
                "name": name,
                "instruction": instruction,
                "train_ids": [i for i in train if episodes[i].task == name],
                "eval_ids": [i for i in held if episodes[i].task == name],
            }
        )
    horizon = int(max(e.length for e in episodes))
    source = meta["source"]
    if source is not None:  # the real benchmark's horizon, so both count the same budget
        try:
            horizon = get_benchmark(source).tasks("train", [cfg.model.tasks[0]])[0].max_steps
        except (ImportError, KeyError, ValueError):
            pass
    return {
        "tasks": tasks,
        "horizon": horizon,
        "fps": meta["fps"],
        "source_benchmark": source,
        "cameras": meta["cameras"],
        "sources": [e.source for e in episodes],
        "reflector": {"threshold": cfg.success_threshold, "consecutive": cfg.success_consecutive},
        "labels": {"positive_window": cfg.positive_window, "ignore_window": cfg.ignore_window},
    }


def validate(
    model,
    held_bank: FrameBank,
    cfg: WorldModelTrainConfig,
    run: Path,
    step: int,
    fps: int,
    roc_auc: Callable,
) -> dict[str, Any]:
    """Open-loop error vs copy-last on the first `val_episodes` held-out episodes (one start
    each), the reflector's ROC-AUC on their real frames (`roc_auc`: see reflector_report), and
    a real | imagined video."""
    from vla_rl.io.video import save_video
    from vla_rl.world_models.evaluate import comparison_video, prediction_report, reflector_report

    model.eval()
    episodes = list(range(min(cfg.val_episodes, len(held_bank.episodes))))
    pred = prediction_report(
        model, held_bank, episodes, cfg.val_horizon, per_episode=1, seed=cfg.seed
    )
    refl = reflector_report(
        model,
        held_bank,
        episodes,
        cfg.success_threshold,
        cfg.success_consecutive,
        roc_auc,
        seed=cfg.seed,
        max_steps=cfg.val_horizon * cfg.model.frame_skip,
    )
    model.train()
    r = pred["report"]
    point = {
        "step": step,
        "mse": r["mse"],
        "copy_last_mse": r["copy_last_mse"],
        "moving_mse": r["moving_mse"],
        "copy_last_moving_mse": r["copy_last_moving_mse"],
        "state_mse": r["state_mse"],
        "action_shuffle_gap": r.get("action_shuffle_gap"),
        "reflector_auc_real": refl["auc_real"],
    }
    if cfg.videos:
        rows = list(range(min(cfg.videos, pred["rollout"]["frames"].shape[0])))
        frames = comparison_video(pred["rollout"], rows)
        path = run / "videos" / f"val_{step:06d}.mp4"
        save_video(path, frames, fps=max(1, min(fps // cfg.model.frame_skip, 30)))
        point["video"] = str(path)
    return point


def mean_of(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 6) if kept else None


class WorldModelTrainer:
    """What a world-model run trains and one step of it: the model and its optimizer, the train
    and held-out frame banks, the numpy RNG of the window sampling and the generated frames of
    the reflector. `vla-rl world-model train` (vla_rl/commands/world_model.py) runs the loop
    around it: the run directory, checkpoints (`tree` / `restore`), validation, the progress
    bar, train.json.

    episodes: every episode of the datasets (`load_episodes`); train, held: the split's episode
    indices (disjoint by initial state); meta: `load_episodes`' metadata."""

    def __init__(
        self,
        cfg: WorldModelTrainConfig,
        episodes: list[WMEpisode],
        train: list[int],
        held: list[int],
        meta: dict[str, Any],
    ):
        da, ds = meta["dims"]
        cfg.model.action_dim, cfg.model.state_dim = int(da), int(ds)
        cfg.model.tasks = tuple(sorted({e.task for e in episodes}))
        missing = sorted({e.task for e in episodes} - {episodes[i].task for i in train})
        if missing:
            raise ConfigError(
                f"task(s) {', '.join(missing)} have no train episode; add initial "
                "states or lower --held-out"
            )
        self.cfg, self.meta = cfg, meta
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.device = torch.device(cfg.device)
        self.model = VideoWorldModel(cfg.model)
        windows = (cfg.positive_window, cfg.ignore_window)
        self.train_bank = FrameBank([episodes[i] for i in train], cfg.model, *windows)
        self.held_bank = FrameBank([episodes[i] for i in held], cfg.model, *windows)
        for name, value in self.train_bank.statistics().items():
            getattr(self.model, name).copy_(value)
        self.model.to(self.device).train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.generated: dict[str, torch.Tensor] | None = None
        self.steps_done = 0
        self.info = {
            "env": env_info(episodes, train, held, meta, cfg),
            "datasets": list(cfg.dataset),
        }
        self.starts = {STARTS_FILE: start_tensors(episodes, self.model)}

    def step(self) -> dict[str, float]:
        """One gradient step: losses (floats) and "autoregressive", the model steps per window."""
        cfg = self.cfg
        late = self.steps_done >= cfg.autoregressive_from
        steps = cfg.autoregressive_steps if late and self.rng.random() < 0.5 else 1
        gen_phase = self.steps_done >= cfg.reflector_generated_from
        if gen_phase and (self.generated is None or self.steps_done % cfg.generated_every == 0):
            new = generate_frames(self.model, self.train_bank, self.rng)
            self.generated = keep_newest(self.generated, new)
        losses = world_model_losses(self.model, self.train_bank, self.rng, cfg, steps)
        losses.update(
            reflector_losses(
                self.model, self.train_bank, self.generated if gen_phase else None, self.rng, cfg
            )
        )
        loss = sum(losses.values())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.steps_done += 1
        return {"autoregressive": steps, **{k: round(v.item(), 5) for k, v in losses.items()}}

    def tree(self) -> dict[str, Any]:
        """The tensors a checkpoint holds (`vla_rl.runs.checkpoint.save_checkpoint`'s tree)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.random.get_rng_state(),
            "generated": self.generated or {},
        }

    def numpy_rng(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def restore(self, tree: dict[str, Any], numpy_rng: dict[str, Any], steps_done: int) -> None:
        """Continue exactly from a checkpoint's tree, numpy RNG state and step count."""
        self.model.load_state_dict(tree["model"])
        self.optimizer.load_state_dict(tree["optimizer"])
        torch.random.set_rng_state(tree["torch_rng"])
        self.generated = tree["generated"] or None
        self.rng.bit_generator.state = numpy_rng
        self.steps_done = steps_done

    def publish(self, directory: Path) -> Path:
        """The world model as --env.world-model reads it: config.json, model.safetensors,
        starts.safetensors (one atomic publish)."""
        return self.model.save(directory, self.starts, self.info)
