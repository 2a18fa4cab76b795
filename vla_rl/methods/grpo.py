"""`--method grpo`: group-relative policy optimisation (SimpleVLA-RL; SRPO's objective, §1.3).

Each RL step draws initial states of the train split and runs K = group_size rollouts from
each. A rollout's score g_i, the total of its reward (`--grpo.reward`: its 0/1 success by
default; srpo_progress gives SRPO), is normalised within its group,
    A_i = (g_i - mean_G g) / (std_G g + 1e-6),
and that one number is every decision step's advantage in rollout i. Groups whose success rate
lies outside [filter_low, filter_high] carry no contrast and are dropped (DAPO's dynamic
sampling; the fraction kept is logged). The loss is the clipped surrogate with clip-higher
(0.2 / 0.28) and dual clip, averaged over every kept action-token (or chain part) ratio.
No critic. `srpo` is this method with the srpo_progress reward selected (vla_rl/methods/srpo.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vla_rl.core.benchmark import group_episodes
from vla_rl.core.config import ConfigError
from vla_rl.methods.on_policy import (
    OnPolicyMethod,
    PolicyGradientConfig,
    auto_episodes_per_step,
    train_on_policy,
)
from vla_rl.rl.advantages import (
    failure_groups_with_spread,
    group_advantages,
    groups_with_contrast,
)


@dataclass
class GRPOConfig(PolicyGradientConfig):
    """Defaults from SRPO's released LIBERO scripts in siiRL (methods.md §1.6) unless stated."""

    lr: float = 1e-4
    """Policy learning rate. SRPO: 5e-6 for a 7B OpenVLA; ours is for full fine-tuning of the
    bundled ~0.4 M-parameter policies (docs/RESULTS.md)."""
    group_size: int = 8
    """K rollouts per initial state (SRPO: 8). episodes_per_step / K initial states per step."""
    clip_high: float = 0.28
    """Clip-higher (SRPO: 0.28, with clip_low 0.2)."""
    dual_clip: float | None = 3.0
    """siiRL's dual clip for negative advantages (3.0)."""
    reduction: str = "token"
    """siiRL forms one ratio per action token and averages the loss over tokens."""
    filter_low: float = 0.1
    """Drop groups whose success rate is below this (SRPO: 0.1)."""
    filter_high: float = 0.9
    """Drop groups whose success rate is above this (SRPO: 0.9)."""
    kl_coef: float = 0.04
    """k3 KL to the frozen base on every rollout, dropped groups included: DeepSeekMath's GRPO
    beta (0.04; SRPO's released scripts: 0). Ours for multi-task runs: a group with no contrast
    is dropped, so without the anchor nothing holds a task whose groups all fail while the
    other tasks move the shared weights (docs/RESULTS.md, MT10 seed 2)."""
    keep_scored_failures: bool = True
    """Keep an all-failure group anyway when its rollouts' rewards differ: SRPO's progress
    reward ranks failures (against the task's successes, or its demonstrations when the batch
    has none), and that ranking is its learning signal where the base starts near 0%. Ours;
    the released SRPO filter drops them. No effect under the sparse success reward (they all
    score 0), so grpo is unchanged."""


class GRPO(OnPolicyMethod):
    name = "grpo"

    @classmethod
    def check_config(cls, pg) -> None:
        # the part of __init__'s rule that needs no task list, so it fails before setup_run
        if pg.group_size < 2 or 0 < pg.episodes_per_step < pg.group_size:
            raise ConfigError(
                f"--{cls.name}.episodes-per-step ({pg.episodes_per_step}) must hold at least one "
                f"group of --{cls.name}.group-size ({pg.group_size}, >= 2)"
            )

    def __init__(self, pg, policy, benchmark, tasks):
        super().__init__(pg, policy, benchmark, tasks)
        self.episodes_per_step = auto_episodes_per_step(pg.episodes_per_step, len(tasks),
                                                        pg.group_size)  # fmt: skip
        per_task = self.episodes_per_step // (self.pg.group_size * len(tasks))
        if self.pg.group_size < 2 or per_task < 1:
            raise ConfigError(
                f"--{self.name}.episodes-per-step ({self.pg.episodes_per_step}) must hold at "
                f"least one group of --{self.name}.group-size ({self.pg.group_size}, >= 2) per "
                f"task ({len(tasks)} tasks; 0 chooses a count that does)"
            )
        self.states_per_task = per_task
        # Each group starts from its own initial state: a world model built from a small
        # dataset may hold fewer train starts than the groups asked for (checked here, before
        # the run writes anything, to name the flags; group_episodes would fail mid-run).
        fewest = min(benchmark.tasks("train", tasks), key=lambda t: len(t.init_ids))
        if per_task > len(fewest.init_ids):
            raise ConfigError(
                f"--{self.name}.episodes-per-step ({self.episodes_per_step}) / "
                f"--{self.name}.group-size ({pg.group_size}) asks for {per_task} distinct train "
                f"initial states per task and step; task {fewest.name!r} has "
                f"{len(fewest.init_ids)}: set --{self.name}.episodes-per-step to at most "
                f"{len(fewest.init_ids) * pg.group_size * len(tasks)}"
            )

    def episodes(self, tasks, rng):
        return group_episodes(tasks, self.states_per_task, self.pg.group_size, rng)

    def advantages(self, traj):
        scores = self.reward(traj).sum(0)  # (B,) each rollout's total reward
        metrics = dict(self.reward.metrics)
        keep = groups_with_contrast(traj.success, traj.group, self.pg.filter_low,
                                    self.pg.filter_high)  # fmt: skip
        if self.pg.keep_scored_failures:
            keep |= failure_groups_with_spread(scores, traj.success, traj.group)
        per_episode = group_advantages(scores, traj.group)
        adv = per_episode[None].expand_as(traj.rewards) * traj.valid.float()
        num_groups = len(traj.group.unique())
        kept = keep[None].expand_as(adv) & traj.valid
        metrics.update(mean_reward=float(scores.mean()),
                       adv_abs_mean=float(adv[kept].abs().mean()) if kept.any() else 0.0,
                       groups_kept=len(traj.group[keep].unique()) / num_groups)  # fmt: skip
        return adv, keep, metrics


def train(cfg, pg: GRPOConfig) -> dict[str, Any]:
    return train_on_policy(cfg, pg, GRPO)
