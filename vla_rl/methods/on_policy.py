"""What ppo, grpo and srpo share: on-policy RL steps that update the base policy's own weights.

One RL step: roll out whole episodes with the current policy (stochastic, at the sampling
temperature), let the method turn them into per-step advantages (GAE with a critic, or group-
normalised trajectory scores) from the method's reward (`--<method>.reward`, the REWARDS registry:
success, srpo_progress, ...), then take clipped policy-gradient steps on the stored samples:

    old log-probs: recomputed with the training model before the first update (methods.md
                   section 0.1: sampling-time log-probs can differ from the training forward);
    loss         = clipped surrogate on exp(reduce(log pi) - reduce(log pi_old)) with the
                   method's advantage, averaged over every kept decision step (and part, for the
                   token-level reduction), + kl_coef * k3 KL to the reference policy
                   - entropy_coef * entropy per part.

Padded steps never enter a loss: samples are gathered by index from the valid steps only.
A method is a small class (`OnPolicyMethod`) that picks each step's episodes, turns the rewards
into advantages, and may train something of its own (PPO's critic); `train_on_policy` is the loop.
The loop gets everything from the method explicitly: its settings (`method.pg`, passed in), the
episodes to run, whether rollouts render frames (`method.rollout_frame_size`, from its reward).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vla_rl.core.benchmark import Benchmark, EpisodeSpec, TaskSpec, random_episode
from vla_rl.core.config import ConfigError, to_dict
from vla_rl.core.policy import BasePolicy
from vla_rl.core.reward import RewardContext, build_rewards, check_reward_names
from vla_rl.core.trajectories import EpisodeRecord, Trajectories
from vla_rl.rewards.critic_reward import CriticRewardConfig, check_critic_reward
from vla_rl.rewards.srpo_progress import ProgressRewardConfig
from vla_rl.rl.distributed import (
    all_equal,
    all_sum,
    average_gradients,
    barrier,
    broadcast_object,
    broadcast_parameters,
    gather_shards,
    init_from_env,
    shard,
    world,
)
from vla_rl.rl.fsdp import (
    by_name,
    clip_grad_norm,
    full_optimizer_state,
    full_state_dict,
    is_sharded,
    load_optimizer_state,
    shard_policy,
)
from vla_rl.rl.losses import REDUCTIONS, clipped_surrogate, k3_kl, reduce_terms
from vla_rl.rollout.engine import RolloutEngine
from vla_rl.runs.checkpoint import save_checkpoint
from vla_rl.runs.metrics import MetricsLogger
from vla_rl.runs.run import (
    EvalSchedule,
    RunConfig,
    finish_run,
    record_eval_point,
    setup_run,
    training_bar,
    training_identity,
)


@dataclass
class PolicyGradientConfig:
    """Settings every on-policy method shares. Each method's subclass sets its own defaults and
    says where they come from."""

    episodes_per_step: int = 0
    """Rollouts per RL step (whole episodes). 0 (auto): the least count >= 64 that gives every
    task the same number of whole groups (`auto_episodes_per_step`): 64 on one task, 80 on
    MT10 with groups of 8 (one per task), 70 for ppo on MT10. 64 is what the bundled Meta-World
    policies were measured with on one task (lr 1e-4, docs/RESULTS.md: a step near a minute on a
    2-core CPU); SRPO's released scripts use 512 (64 prompts x 8)."""
    lr: float = 1e-5
    """Adam learning rate of the policy (or its LoRA adapters)."""
    epochs: int = 1
    """Passes over each step's samples (SRPO and VLA-RL: 1)."""
    minibatch_size: int = 512
    """Decision steps per gradient step."""
    clip_low: float = 0.2
    """Lower clip: ratios below 1 - clip_low stop pushing (PPO's epsilon)."""
    clip_high: float = 0.2
    """Upper clip: ratios above 1 + clip_high stop pushing; > clip_low is DAPO's clip-higher."""
    dual_clip: float | None = None
    """Cap -A * c on the loss of negative-advantage samples (siiRL: 3.0); None: off."""
    reduction: str = "sum"
    """How a decision step's log-prob parts form ratios: sum (one ratio from the summed
    log-prob), mean (one ratio from the mean), token (one ratio per part, loss averaged)."""
    temperature: float = 1.0
    """Sampling temperature of training rollouts (token logits / T; chain noise std * T).
    VLA-RL uses 1.5 and SRPO 1.6 on OpenVLA's peaked token head; 1.0 on the bundled policies,
    whose stochastic rollouts already differ within a group (docs/RESULTS.md)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the frozen starting policy (0 = no reference copy is kept)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus per log-prob part (SRPO and VLA-RL: 0)."""
    grad_clip: float = 1.0
    """Max global gradient norm (SRPO and VLA-RL: 1.0)."""
    lora_rank: int = 0
    """LoRA rank (peft, every linear layer); 0 trains every weight (right for small policies).
    VLA-RL and SRPO train 7B bases with rank 32."""
    lora_alpha: float = 16.0
    """LoRA alpha (VLA-RL: 16)."""
    fsdp: bool = False
    """Under torchrun, shard the policy's weights, gradients and Adam moments over the ranks
    (FSDP2, vla_rl.rl.fsdp) instead of replicating them: for a policy whose training state
    does not fit one device. The update is the replicated one's (tests/test_distributed.py).
    No effect in one process; not with lora_rank > 0."""
    rollout_envs: int = 16
    """Env slots of the training rollouts (eval points use --env). On-policy steps alternate
    rollout and update, so rollouts get every core."""
    rollout_workers: int = 2
    """Worker processes of the training rollouts (2 = the reference machine's cores)."""
    save_every: int = 1
    """RL steps between checkpoints (a checkpoint is small: weights, optimizer, RNG)."""
    reward: tuple[str, ...] = ("success",)
    """Reward models (the REWARDS registry, `vla-rl benchmarks` lists them): success (sparse
    0/1 at the step that succeeded), srpo_progress (SRPO's progress from embedded videos),
    critic (success plus a progress critic's shaping: set `critic`), or several, summed with
    reward_weights (critic already includes success: do not list both). ppo runs GAE on the
    per-step sum; grpo and srpo normalise each rollout's total within its group."""
    reward_weights: tuple[float, ...] = ()
    """One weight per reward model; empty: 1 each."""
    progress: ProgressRewardConfig = field(default_factory=ProgressRewardConfig)
    """Settings of the srpo_progress reward (encoder, frames, cap, steepness, DBSCAN); unused
    unless it is selected."""
    critic: str | None = None
    """The progress critic of the `critic` reward: a directory from `vla-rl fit-critic`, or a
    VLAC checkpoint; frozen for the whole run. Unused unless `critic` is in reward."""
    shaping: CriticRewardConfig = field(default_factory=CriticRewardConfig)
    """How the critic's answers become rewards (potential-based shaping, or VLAC's raw delta)."""


AUTO_EPISODES = 64  # the rollouts per RL step the defaults were measured with (one task)


def auto_episodes_per_step(requested: int, num_tasks: int, group_size: int = 1) -> int:
    """`requested`, or for 0 the least multiple of group_size x num_tasks that is at least
    AUTO_EPISODES: every task gets the same number of whole groups, and a step holds about as
    many rollouts as the single-task runs the learning rates were chosen for."""
    if requested:
        return requested
    unit = group_size * num_tasks
    return unit * math.ceil(AUTO_EPISODES / unit)


def check_pg_config(pg: PolicyGradientConfig, flag: str) -> None:
    if pg.episodes_per_step < 0:
        raise ConfigError(f"--{flag}.episodes-per-step must be >= 1, or 0 (auto)")
    for name in ("epochs", "minibatch_size", "rollout_envs", "save_every"):
        if getattr(pg, name) < 1:
            raise ConfigError(f"--{flag}.{name.replace('_', '-')} must be >= 1")
    if pg.reduction not in REDUCTIONS:
        raise ConfigError(
            f"--{flag}.reduction {pg.reduction!r} is not one of: {', '.join(REDUCTIONS)}"
        )
    if pg.temperature <= 0 or pg.lr <= 0:
        raise ConfigError(f"--{flag}.temperature and --{flag}.lr must be > 0")
    if not (0 <= pg.clip_low < 1 and pg.clip_high >= 0):
        raise ConfigError(f"--{flag}.clip-low must be in [0, 1) and --{flag}.clip-high >= 0")
    if pg.dual_clip is not None and not pg.dual_clip > 1:  # c <= 1 would cap below the clip
        raise ConfigError(f"--{flag}.dual-clip must be > 1 or None (off), got {pg.dual_clip}")
    if pg.lora_rank < 0:
        raise ConfigError(f"--{flag}.lora-rank must be >= 0")
    if pg.rollout_workers < 0:
        raise ConfigError(f"--{flag}.rollout-workers must be >= 0, got {pg.rollout_workers}")
    if pg.grad_clip <= 0 or pg.kl_coef < 0:
        raise ConfigError(f"--{flag}.grad-clip must be > 0 and --{flag}.kl-coef >= 0")
    if pg.fsdp and pg.lora_rank:
        raise ConfigError(  # the end of a LoRA run merges the adapters: not built for shards
            f"--{flag}.fsdp does not take LoRA adapters; use it with --{flag}.lora-rank 0"
        )
    check_reward_names(pg.reward, pg.reward_weights, flag)
    if "critic" in pg.reward:
        check_critic_reward(pg.critic, pg.shaping, flag)


# ---- scoring and updating on a batch of trajectories --------------------------------------
def score(policy: BasePolicy, traj: Trajectories, t_idx, b_idx, batch: int) -> torch.Tensor:
    """Log-prob parts (S, N) of the given steps under `policy`, without gradients."""
    out = []
    with torch.no_grad():
        for i in range(0, len(t_idx), batch):
            t, b = t_idx[i : i + batch], b_idx[i : i + batch]
            out.append(policy.log_prob_terms(traj.gather_obs(t, b), traj.gather_samples(t, b))[0])
    return torch.cat(out)


def policy_update(
    policy: BasePolicy,
    optimizer: torch.optim.Optimizer,
    traj: Trajectories,
    advantages: torch.Tensor,
    keep: torch.Tensor,
    pg: PolicyGradientConfig,
    reference: BasePolicy | None,
    rng: torch.Generator,
) -> dict[str, float]:
    """Clipped policy-gradient steps on the valid steps of the kept episodes, plus (with a
    reference) kl_coef times the k3 KL to it on the valid steps of every episode.

    advantages (T, B): per decision step; keep (B,) bool. Returns the step's metrics: clip
    fraction, approx-KL (k3, new vs old), entropy per part, gradient norm (before clipping),
    policy loss, and KL to the reference when kl_coef > 0.
    """
    # The policy gradient trains on the kept groups; the KL to the reference anchors every
    # rollout of the step, dropped groups included: a dropped group carries no contrast, so
    # without the anchor nothing holds a task whose groups all fail (or all succeed) while the
    # other tasks' gradients move the shared weights (MT10 grpo seed 2 lost drawer-open-v3
    # that way, docs/RESULTS.md). Without a reference the two sets are the same.
    scored = traj.valid & (keep[None] | (reference is not None))
    t_idx, b_idx = torch.nonzero(scored, as_tuple=True)
    if len(t_idx) == 0:
        return {}
    adv = advantages[t_idx, b_idx]
    trained = keep[b_idx]  # (S,) the steps of kept groups
    # Data-parallel (vla_rl.rl.distributed; identities without a process group): the N ranks
    # hold the same batch, weights and `rng`, score their shard of the old log-probs and train
    # on their shard of every minibatch. Rule: a term that is a mean over a set of the
    # minibatch's samples enters a rank's loss as the sum over its shard's part of the set,
    # times N / (the set's size in the whole minibatch), so the mean over ranks of the
    # gradients is the gradient of the whole minibatch's loss, unequal shards included. The
    # policy-gradient terms are means over the minibatch's kept steps, the KL a mean over all
    # of them. Metrics are weighted alike.
    rank, world_size = world()
    # Sharded weights (--<method>.fsdp, vla_rl.rl.fsdp): every forward and backward gathers or
    # reduces weights with the other ranks, so every rank makes the same calls: shards are
    # padded to the largest with repeats of a real step, and the padding enters no term.
    lockstep = world_size > 1 and is_sharded(policy)

    def padded(rows: torch.Tensor, size: int, fill: torch.Tensor) -> torch.Tensor:
        if not lockstep or len(rows) == size:
            return rows
        return torch.cat([rows, fill[:1].expand(size - len(rows))])

    def score_all(p: BasePolicy) -> torch.Tensor:  # (S, N) for every scored step
        if world_size == 1 or len(t_idx) < world_size:
            return score(p, traj, t_idx, b_idx, pg.minibatch_size)
        mine = shard(torch.arange(len(t_idx)), rank, world_size)
        rows = padded(mine, -(-len(t_idx) // world_size), torch.zeros(1, dtype=torch.long))
        local = score(p, traj, t_idx[rows], b_idx[rows], pg.minibatch_size)[: len(mine)]
        return gather_shards(local, len(t_idx))

    old = score_all(policy)  # recomputed, not sampling-time
    ref = score_all(reference) if reference else None
    gradient_terms = ["policy_loss", "clip_fraction", "approx_kl", "entropy"]
    names = [*gradient_terms, *(["kl_to_reference"] if ref is not None else [])]
    sums: dict[str, float] = {}
    count = 0
    trainable = [p for p in policy.parameters() if p.requires_grad]
    policy.train()
    for _ in range(pg.epochs):
        order = torch.randperm(len(t_idx), generator=rng)
        for i in range(0, len(order), pg.minibatch_size):
            minibatch = order[i : i + pg.minibatch_size]
            mb = shard(minibatch, rank, world_size)
            real = len(mb)
            share = real / len(minibatch)  # this rank's part of the minibatch mean
            mine = trained[mb]  # (real,) which of this shard's steps the gradient trains on
            kept_total = int(trained[minibatch].sum())  # the same on every rank
            kept_share = int(mine.sum()) / kept_total if kept_total else 0.0
            optimizer.zero_grad(set_to_none=True)
            metrics = dict.fromkeys(names, 0.0)  # an empty shard adds nothing
            if real or lockstep:
                rows = padded(mb, -(-len(minibatch) // world_size), minibatch)
                t, b = t_idx[rows], b_idx[rows]
                obs, samples = traj.gather_obs(t, b), traj.gather_samples(t, b)
                terms, entropy = policy.log_prob_terms(obs, samples)
                all_lp = reduce_terms(terms, pg.reduction)  # (rows, M)
                # the padding's zero keeps every shard in the backward on every rank
                loss = 0.0 * all_lp.sum() if lockstep else all_lp.new_zeros(())
                new_lp = all_lp[:real]
                if mine.any():
                    log_ratio = new_lp[mine] - reduce_terms(old[mb][mine], pg.reduction)
                    loss_parts, clipped = clipped_surrogate(
                        log_ratio, adv[mb][mine, None], pg.clip_low, pg.clip_high, pg.dual_clip
                    )
                    pg_sum = loss_parts.mean(1).sum()  # over the kept steps of the shard
                    entropy_per_part = entropy[:real][mine] / terms.shape[1]  # per token/part
                    metrics.update(
                        policy_loss=loss_parts.mean().item(),
                        clip_fraction=float(clipped.float().mean()),
                        approx_kl=float(k3_kl(log_ratio.detach()).mean()),
                        entropy=entropy_per_part.mean().item(),
                    )
                    if pg.entropy_coef:
                        pg_sum = pg_sum - pg.entropy_coef * entropy_per_part.sum()
                    loss = loss + pg_sum * (world_size / kept_total)
                if ref is not None and real:
                    kl = k3_kl(reduce_terms(ref[mb], pg.reduction) - new_lp).mean(1)  # (real,)
                    loss = loss + pg.kl_coef * kl.sum() * (world_size / len(minibatch))
                    metrics["kl_to_reference"] = kl.mean().item()
                loss.backward()
            average_gradients(trainable)  # before clipping: the norm is the whole minibatch's
            if lockstep:
                grad_norm = clip_grad_norm(trainable, pg.grad_clip)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, pg.grad_clip)
            optimizer.step()
            for k, v in metrics.items():
                weight = kept_share if k in gradient_terms else share
                sums[k] = sums.get(k, 0.0) + weight * v
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm) / world_size
            count += 1
    totals = all_sum(list(sums.values()))  # the ranks' shares add up to the minibatch's value
    out = {k: v / count for k, v in zip(sums, totals)}
    out["samples"] = float(int(trained.sum()))
    if ref is not None:
        out["kl_samples"] = float(len(t_idx))
    return out


def per_task_success(traj: Trajectories) -> dict[str, float]:
    """success/<task>: the training rollouts' success rate of each task in the batch."""
    tasks = np.asarray(traj.tasks)
    success = traj.success.numpy()
    return {f"success/{t}": float(success[tasks == t].mean()) for t in sorted(set(traj.tasks))}


# ---- the method interface ------------------------------------------------------------------
class OnPolicyMethod:
    """What distinguishes ppo, grpo and srpo; the loop in `train_on_policy` does the rest."""

    name = "on-policy"  # the --method name, used in flags of error messages

    def __init__(
        self, pg: PolicyGradientConfig, policy: BasePolicy, benchmark: Benchmark, tasks: list[str]
    ):
        """pg: this method's settings; tasks: the resolved names of the tasks trained on."""
        self.pg, self.policy, self.benchmark, self.tasks = pg, policy, benchmark, tasks
        self.reward = build_rewards(pg.reward, pg.reward_weights, pg, policy)
        self.episodes_per_step = auto_episodes_per_step(pg.episodes_per_step, len(tasks))
        """This run's rollouts per RL step (pg.episodes_per_step resolved)."""

    @classmethod
    def check_config(cls, pg: PolicyGradientConfig) -> None:
        """Raise ConfigError for this method's settings that cannot run; called before anything
        is loaded or written (rules that need the resolved tasks stay in __init__)."""

    @property
    def rollout_frame_size(self) -> int:
        """H = W of the frames the rollouts render for the reward (0: none)."""
        return self.reward.frame_size

    @property
    def rollout_frames_per(self) -> str | int:
        """Which frames the rollouts keep for the reward: "chunk" (one per decision step and the
        first) or F (only the F the reward samples: `WeightedRewards.frames_sampled`)."""
        return self.reward.frames_sampled or "chunk"

    def episodes(self, tasks: list[TaskSpec], rng: np.random.Generator) -> list[EpisodeSpec]:
        """This step's episodes: random initial states of the train split."""
        return [random_episode(tasks, rng) for _ in range(self.episodes_per_step)]

    def advantages(self, traj: Trajectories) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(advantages (T, B), kept episodes (B,) bool, metrics incl. "mean_reward"), from
        `self.reward(traj)` (T, B)."""
        raise NotImplementedError

    def updates_policy(self, rl_step: int) -> bool:
        """Whether this step updates the policy (False during PPO's critic warm-up)."""
        return True

    def extra_update(self, traj: Trajectories) -> dict[str, float]:
        """Train the method's own parts on this step's data (PPO's critic)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def train_on_policy(
    cfg: RunConfig, pg: PolicyGradientConfig, method_cls: type[OnPolicyMethod]
) -> dict[str, Any]:
    """The on-policy loop: RL steps until cfg.env_steps, eval points, checkpoints, results.

    Under `torchrun --nproc_per_node N` (vla_rl.rl.distributed) the N ranks run the same loop
    on the same data: every rank runs the same seeded rollouts (the engine is deterministic
    given the seed and the episodes' noise keys, so the ranks get identical trajectories,
    checked by a checksum every step) and each rank trains on its shard of every minibatch
    (`policy_update`, PPO's critic). Data parallelism thus speeds up the update only, which is
    where a large model spends its time on a GPU; spreading rollouts over machines is the Ray
    backend's job. Rank 0 alone writes (run directory, metrics, checkpoints, results) and
    evaluates; every rank returns rank 0's results. One process (no process group): as ever.
    """
    from vla_rl.rl.lora import add_lora, merge_lora

    # Before anything is written. The others wait in their next collective while rank 0
    # evaluates alone (the final evaluation of the result and the base on the whole eval split:
    # hours for a 7B VLA on LIBERO), so the timeout must outlast it; a rank that dies still ends
    # the job at once (torchrun stops the others).
    init_from_env(timeout_s=24 * 3600)
    rank, world_size = world()
    main = rank == 0
    name = method_cls.name
    check_pg_config(pg, name)
    method_cls.check_config(pg)  # the method's own rules, also before setup_run

    # ---- build: benchmark, tasks, policy (+ LoRA), reference, method, optimizer -------------
    setup = setup_run(cfg)
    benchmark, names, train_tasks = setup.benchmark, setup.names, setup.train_tasks
    base, run, saved = setup.base, setup.run, setup.saved
    if type(base).log_prob_terms is BasePolicy.log_prob_terms:
        raise ConfigError(
            f"--base {cfg.base}: policy type {base.policy_type!r} has no per-part log-probs; "
            f"--method {name} updates the policy's weights and needs them (the native families "
            "flow, diffusion and tokenvla have them; use --method residual for others)"
        )
    policy = copy.deepcopy(base)
    sharded = pg.fsdp and world_size > 1
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    trainable = add_lora(policy, pg.lora_rank, pg.lora_alpha) if pg.lora_rank else None
    reference = None
    if pg.kl_coef > 0:
        reference = copy.deepcopy(base).eval().requires_grad_(False)
        reference.temperature = pg.temperature
    method = method_cls(pg, policy, benchmark, names)
    # rewards that need reference data (SRPO's demonstrations) get it before anything is written
    method.reward.prepare(RewardContext(benchmark, train_tasks, cfg.env))

    state: dict[str, Any] = {"env_steps": 0, "rl_steps": 0, "episodes": 0, "wall_s": 0.0,
                             "curve": [], "timing": []}  # fmt: skip
    learner = setup.saved_tree if saved is not None else None
    if learner is not None:
        policy.load_state_dict(learner["policy"])
    if world_size > 1:  # rank 0's weights everywhere, whatever a rank's initialisation drew
        broadcast_parameters(policy)  # (the reference is the base as read from disk)
    if sharded:  # each rank keeps its slice of the (equal) weights; an unsharded copy evaluates
        shard_policy(policy)
        if reference is not None:
            shard_policy(reference)
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=pg.lr)
    if learner is not None:
        if sharded or by_name(learner["optimizer"]):  # a sharded run's is keyed by name
            load_optimizer_state(policy, optimizer, learner["optimizer"])
        else:
            optimizer.load_state_dict(learner["optimizer"])
        method.load_state_dict(learner["method"])
        torch.random.set_rng_state(learner["torch_rng"])
        state = saved
        rng.bit_generator.state = state.pop("numpy_rng")
        shuffle.set_state(learner["shuffle_rng"])  # the minibatch order continues exactly
    if world_size > 1:
        method.load_state_dict(broadcast_object(method.state_dict()))  # PPO's critic

    def unsharded() -> BasePolicy:
        """The policy to evaluate and write: itself, or under --fsdp an unsharded copy of its
        weights on rank 0 (gathering them is a collective: every rank calls this)."""
        if not sharded:
            return policy
        weights = full_state_dict(policy)
        if not main:
            return policy  # unused: rank 0 alone evaluates and writes
        plain = copy.deepcopy(base)
        plain.load_state_dict(weights)
        plain.temperature = policy.temperature
        return plain

    barrier()  # every rank has read the checkpoint and checked the directory: rank 0 may write
    logger = None
    if main:  # one writer: the others would race for the directory and duplicate every line
        setup.claim()  # every check has passed: from here on the run writes
        logger = MetricsLogger(run, cfg.logger, to_dict(cfg))
    rollout_env = dataclasses.replace(
        cfg.env, num_envs=pg.rollout_envs, num_workers=pg.rollout_workers,
        video_size=method.rollout_frame_size,
    )  # fmt: skip
    venv = policy.wrap_env(benchmark.make_env(train_tasks, rollout_env))
    engine = RolloutEngine(venv, rollout_env.pipeline_groups)

    # Eval points: rank 0 alone (they log, and their curve goes into checkpoints and results;
    # the other ranks' curve stays empty). Evaluation leaves torch's global RNG as it found it
    # (the engine restores it), so the ranks that skip it stay in step.
    if not state["curve"]:  # before any update: the base's own success
        view = unsharded()
        if main:
            record_eval_point(view, setup, cfg, state, logger, rl_steps=state["rl_steps"])
    bar_cfg = cfg if main else dataclasses.replace(cfg, progress=False)  # one bar, rank 0's
    bar = training_bar(bar_cfg, setup.run, state, f"{name} {','.join(names)}", smoothing=0.3,
                       checkpoints=f"every {pg.save_every} RL step(s)")  # fmt: skip
    evals = EvalSchedule(cfg.eval_every, state["env_steps"])
    try:
        while state["env_steps"] < cfg.env_steps:
            # -- rollout ------------------------------------------------------------------
            t0 = time.perf_counter()
            episodes = method.episodes(train_tasks, rng)
            policy.temperature = pg.temperature
            records: list[EpisodeRecord] = engine.run(
                policy, episodes, keep_steps=True, seed=cfg.seed * 1_000_003 + state["rl_steps"],
                record_video=(lambda i, s: True) if method.rollout_frame_size else None,
                frames_per=method.rollout_frames_per,
            )  # fmt: skip
            traj = Trajectories.from_episodes(records)
            t1 = time.perf_counter()
            # -- rewards and advantages ---------------------------------------------------
            advantages, keep, metrics = method.advantages(traj)
            steps = sum(r.env_steps for r in records)
            # A rank whose batch differs would make the averaged gradient silently wrong (and
            # a different step count would desynchronise the loops): compare cheap checksums.
            checksum = [float(traj.actions.sum()), float(traj.rewards.sum()),
                        float(advantages.sum()), float(keep.sum()), float(steps)]  # fmt: skip
            if not all_equal(checksum):
                raise RuntimeError(
                    f"rank {rank} of {world_size}: this step's rollouts differ between the ranks "
                    f"(rank {rank}'s checksum: actions, rewards, advantages, kept, env steps = "
                    f"{checksum}); data-parallel training needs the same batch on every rank: "
                    "the same config and seed, and deterministic envs"
                )
            t2 = time.perf_counter()
            # -- update --------------------------------------------------------------------
            metrics.update(method.extra_update(traj))
            if method.updates_policy(state["rl_steps"]) and keep.any():
                metrics.update(
                    policy_update(policy, optimizer, traj, advantages, keep, pg, reference, shuffle)
                )
            t3 = time.perf_counter()

            state["env_steps"] += steps
            state["rl_steps"] += 1
            state["episodes"] += len(records)
            state["wall_s"] += t3 - t0
            timing = {"rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2}
            state["timing"].append({k: round(v, 2) for k, v in timing.items()})
            metrics["episodes_rerun"] = float(engine.last_stats.episodes_rerun)  # lost workers
            metrics.update(success_rate=float(traj.success.float().mean()),
                           episodes=float(len(records)), **timing)  # fmt: skip
            if len(names) > 1:  # per task: a task that collapses shows here before an eval
                metrics.update(per_task_success(traj))
            bar.update(steps)
            if main:  # the one writer; the postfix reads the curve, which only rank 0 has
                logger.log(state["env_steps"], {f"train/{k}": v for k, v in metrics.items()})
                bar.set_postfix(step=state["rl_steps"], train=f"{metrics['success_rate']:.2f}",
                                eval=f"{state['curve'][-1]['success_rate']:.2f}")  # fmt: skip

            # -- evaluate and checkpoint (rank 0: the eval points, the one writer) ---------
            done = state["env_steps"] >= cfg.env_steps
            if evals.due(state["env_steps"], done):
                view = unsharded()
                if main:
                    record_eval_point(view, setup, cfg, state, logger, rl_steps=state["rl_steps"])
            if state["rl_steps"] % pg.save_every == 0 or done:
                # Training weights (LoRA adapters included), optimizer, the method's own parts
                # (PPO's critic) and torch's RNG; counters, curve and numpy's RNG in state.json.
                # Under --fsdp the weights and Adam's moments are gathered whole (a collective),
                # so the checkpoint resumes on any number of ranks.
                weights = full_state_dict(policy) if sharded else policy.state_dict()
                moments = (full_optimizer_state(policy, optimizer) if sharded
                           else optimizer.state_dict())  # fmt: skip
            if main and (state["rl_steps"] % pg.save_every == 0 or done):
                learner = {"policy": weights, "optimizer": moments,
                           "method": method.state_dict(),
                           "torch_rng": torch.random.get_rng_state(),
                           "shuffle_rng": shuffle.get_state()}  # fmt: skip
                save_checkpoint(run / "checkpoint", learner,
                                dict(state, numpy_rng=rng.bit_generator.state,
                                     identity=training_identity(cfg)))  # fmt: skip
    finally:
        bar.close()
        venv.close()
        if logger is not None:
            logger.close()

    if trainable is not None:
        merge_lora(policy)  # the result is a plain checkpoint of the base's family
    policy.temperature = type(policy).temperature
    result_policy = unsharded()
    timing = {k: round(float(np.mean([t[k] for t in state["timing"]])), 2)
              for k in ("rollout_s", "reward_s", "update_s")}  # fmt: skip
    extra = {
        "method": name,
        "env_steps": state["env_steps"],
        "rl_steps": state["rl_steps"],
        "train_episodes": state["episodes"],
        "episodes_per_step": method.episodes_per_step,
        "train_wall_s": round(state["wall_s"], 1),
        "mean_step_timing_s": timing,
        "lora_trainable_params": trainable,
    }
    results = None
    if main:  # the result's files and the final evaluation: written once, by rank 0
        title = f"{name} on {cfg.base}: {', '.join(names)}"
        results = finish_run(result_policy, setup, cfg, state, title, extra)
    # rank 0's results on every rank (the caller prints them), once its files are written
    return broadcast_object(results)
