"""Residual off-policy RL on a frozen base policy (ResFiT, Ankile et al. 2025, arXiv 2509.19301).

The base policy (any BasePolicy, used only through `sample_actions`) stays frozen; its chunks run
open-loop and a small residual actor corrects every control step (`ResidualPolicy`). The
residual and an ensemble of critics learn from sparse success with TD3-style off-policy
actor-critic plus the RLPD/REDQ tricks ResFiT relies on:

* critics: an ensemble of N LayerNorm MLPs; the target takes the min over a random subset of 2
  heads (REDQ); n-step returns; target-policy smoothing noise; Polyak-averaged targets;
* update-to-data ratio > 1 (critic updates per env step), actor updated once every `utd`
  critic updates, and only after a critic-only warm-up;
* every batch is half online replay and half demonstrations (RLPD's symmetric sampling), with the
  demonstrations' "base actions" computed by the base on the demo observations, so a demo step's
  residual is a_demo - a_base;
* the first `learning_starts` env steps act with base + uniform noise to fill the buffer;
* everything happens in the normalised action space [-1, 1]^Da.

The algorithm and its defaults are re-implemented from the description in
../shared/reference/methods.md section 3 (ResFiT's code is CC-BY-NC: nothing is copied).

`train(cfg)` reads top to bottom: build -> demonstrations -> loop (act, store finished episodes
as n-step transitions, update, evaluate, checkpoint) -> final evaluation beside the base.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla_rl.replay_buffer import ReplayBuffer, sample_mixed
from vla_rl.returns import n_step_returns

if TYPE_CHECKING:
    from vla_rl.finetune import FinetuneConfig
    from vla_rl.residual_policy import ResidualPolicy


@dataclass
class ResidualConfig:
    """Hyperparameters of `--method residual`. Sources: ResFiT's released configs and paper
    (../shared/reference/methods.md section 3.5); where a default differs, the reason is given
    (mostly: this runs on 2 CPU cores with a budget of minutes to two hours, not a GPU for days)."""

    action_scale: float = 0.1
    """Bound of the residual in normalised action units. ResFiT: 0.1 (bimanual 0.2)."""
    exploration_std: float = 0.05
    """Std of the Gaussian exploration noise on the residual. ResFiT: 0.05 (Coffee 0.025)."""
    target_noise_clip: float = 0.3
    """Clip of the target-policy smoothing noise (std = exploration_std). ResFiT/TD3: 0.3."""
    warmup_noise: float = 0.1
    """Uniform noise U(-s, s) added to the base action during the buffer warm-up. ResFiT's
    random_action_noise_scale: 0.05-0.2."""
    learning_starts: int = 2_000
    """Env steps of warm-up acting before any update. ResFiT: 10k of a 300k budget; 2k keeps the
    same ~3% share of our 20k-100k budgets."""
    critic_warmup_updates: int = 1_000
    """Critic-only updates after the warm-up, before the actor moves. ResFiT: 10k of 300k env
    steps x UTD 4; scaled down with the budget like learning_starts."""
    utd: int = 2
    """Critic updates per env step (update-to-data ratio). ResFiT: 4 (gains plateau there). 2
    halves the compute per env step, which is the binding cost on a CPU: with 2 the learner
    runs about 31 env steps/s on 2 cores, against ~1000 for the simulator (docs/RESULTS.md)."""
    n_step: int = 3
    """n of the n-step returns. ResFiT: 3 (Coffee 5): >1 is needed for sparse reward."""
    gamma: float = 0.99
    """Discount. ResFiT: 0.99."""
    batch_size: int = 256
    """Transitions per update (half demos, half online). ResFiT: 256."""
    buffer_size: int = 200_000
    """Online replay capacity (transitions). ResFiT: 200k-300k."""
    demo_fraction: float = 0.5
    """Share of each batch drawn from the demo buffer. ResFiT/RLPD: 0.5 (symmetric sampling)."""
    actor_lr: float = 1e-4
    """Actor Adam learning rate. ResFiT: 1e-6 over 300k+ steps; with a budget 10-30x shorter
    the residual would not move, so the actor uses ResFiT's critic rate."""
    critic_lr: float = 1e-4
    """Critic Adam learning rate. ResFiT: 1e-4."""
    grad_clip: float = 1.0
    """Gradient-norm clip for actor and critics. ResFiT: 1.0."""
    tau: float = 0.005
    """Polyak rate of the target critics and target actor. ResFiT/TD3: 0.005."""
    num_critics: int = 4
    """Critic ensemble size N. ResFiT: 10; 4 keeps REDQ's random-pair min at 40% of the
    compute (a batch-256 update of 10 heads of width 256 took 35 ms on one core here)."""
    critic_subset: int = 2
    """Heads in the random subset whose min forms the target (REDQ). ResFiT: 2."""
    hidden: int = 256
    """Width of the actor and critic MLPs (2 LayerNorm layers each). ResFiT: 1024 on image
    features; 256 suffices for state features and is 16x cheaper."""
    actor_l2: float = 0.0
    """Weight of an L2 penalty on the residual in the actor loss. ResFiT: 0 (optional)."""
    demos: str = "scripted"
    """Demonstrations for the demo buffer: "scripted" collects `demo_episodes` per task with the
    benchmark's scripted experts (Meta-World) on the first train initial states, i.e. the same
    demos the bundled base was trained on; a path loads a LeRobot v3.0 dataset or a LIBERO
    .hdf5; "none" trains from online data only."""
    demo_episodes: int = 1
    """Scripted demos per task when demos = "scripted". 1: the bundled base's own data."""
    base_deterministic: bool = True
    """Query the base deterministically (a frozen BC policy as deployed; ResFiT's ACT base is
    deterministic); exploration comes from the residual only."""
    save_every: int = 10_000
    """Env steps between checkpoints (and one at the end). The online buffer is saved with
    them, so --resume continues with the same data; episodes in progress are dropped."""


# ---- networks ---------------------------------------------------------------------------------
class EnsembleLinear(nn.Module):
    """N independent Linear layers applied in one batched matmul: (N, B, in) -> (N, B, out)."""

    def __init__(self, n: int, inputs: int, outputs: int):
        super().__init__()
        bound = 1 / math.sqrt(inputs)  # nn.Linear's default init, per head
        self.weight = nn.Parameter(torch.empty(n, inputs, outputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, outputs).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class CriticEnsemble(nn.Module):
    """N Q-heads Q_j(features, action): 2 x (Linear, LayerNorm, ReLU) + Linear, per head."""

    def __init__(self, n: int, inputs: int, hidden: int):
        super().__init__()
        self.n = n
        self.layers = nn.ModuleList(
            [EnsembleLinear(n, inputs, hidden), EnsembleLinear(n, hidden, hidden)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(hidden), nn.LayerNorm(hidden)])
        self.head = EnsembleLinear(n, hidden, 1)

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """features (B, F), action (B, Da) -> Q (N, B)."""
        x = torch.cat([features, action], -1).expand(self.n, -1, -1)
        for layer, norm in zip(self.layers, self.norms):
            x = F.relu(norm(layer(x)))
        return self.head(x).squeeze(-1)


def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)


# ---- transitions ------------------------------------------------------------------------------
def transition_fields(state_dim: int, action_dim: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """The columns of one n-step transition. Actions are normalised to [-1, 1]."""
    return {
        "state": ((state_dim,), np.float32),
        "task": ((), np.int64),
        "base": ((action_dim,), np.float32),  # a_base at s_t
        "action": ((action_dim,), np.float32),  # executed a_t = clamp(a_base + residual)
        "ret": ((), np.float32),  # sum_{i<k} gamma^i r_{t+i}
        "next_state": ((state_dim,), np.float32),  # s_{t+k}
        "next_base": ((action_dim,), np.float32),  # a_base at s_{t+k}
        "discount": ((), np.float32),  # gamma^k, or 0 past a terminal (success) state
    }


def episode_transitions(
    states: np.ndarray,
    bases: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminated: bool,
    task: int,
    n: int,
    gamma: float,
) -> dict[str, np.ndarray]:
    """The L n-step transitions of one episode of L steps.

    states, bases: (L + 1, .) including the state after the last step and the base action there
    (irrelevant when the episode terminated); actions (L, Da); rewards (L,).
    """
    ret, nxt, discount = n_step_returns(rewards, terminated, n, gamma)
    length = len(actions)
    return {
        "state": states[:length],
        "task": np.full(length, task, dtype=np.int64),
        "base": bases[:length],
        "action": actions,
        "ret": ret,
        "next_state": states[nxt],
        "next_base": bases[nxt],
        "discount": discount,
    }


def demo_transitions(
    episodes: list, policy: ResidualPolicy, task_of: dict[str, tuple[str, int]], cfg: ResidualConfig
) -> dict[str, np.ndarray] | None:
    """Successful demonstrations as n-step transitions with base actions computed the way the
    BaseActionQueue computes them online: the base is queried on the demo observation at every
    chunk start and its chunk is read open-loop (ResFiT's use_base_policy_for_base_actions)."""
    rows = []
    for ep in episodes:
        if not ep.success or ep.task not in task_of:
            continue  # only demonstrations of this run's tasks that reached the goal
        name, task = task_of[ep.task]
        length = ep.length
        starts = np.arange(0, length, policy.base.chunk_size)
        obs = {"state": ep.state[starts], "instruction": [ep.task] * len(starts),
               "task": [name] * len(starts)}  # fmt: skip
        with torch.no_grad():
            chunks = policy.base.sample_actions(obs, policy.config["base_deterministic"]).actions
        base = policy.to_unit(chunks).reshape(-1, chunks.shape[-1])[:length].numpy()
        states = np.concatenate([ep.state, ep.state[-1:]])  # the final state is terminal
        bases = np.concatenate([base, base[-1:]])
        actions = policy.to_unit(torch.as_tensor(ep.action)).clamp(-1, 1).numpy()
        rewards = np.zeros(length, dtype=np.float32)
        rewards[-1] = 1.0  # sparse success reward on the step that reached the goal
        rows.append(episode_transitions(states, bases, actions, rewards, True, task,
                                        cfg.n_step, cfg.gamma))  # fmt: skip
    if not rows:
        return None
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


# ---- the learner ------------------------------------------------------------------------------
class Residual:
    """Owns the critics, target networks and optimisers; `update` is one critic step and,
    when asked, one actor step."""

    def __init__(self, policy: ResidualPolicy, cfg: ResidualConfig):
        self.policy, self.cfg = policy, cfg
        action_dim = policy.action_dim
        self.critic = CriticEnsemble(cfg.num_critics, policy.feature_dim + action_dim, cfg.hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_target = copy.deepcopy(policy.actor).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(policy.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)

    def _tensors(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v) for k, v in batch.items()}

    def critic_loss(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over heads of (Q_j(s, a) - y)^2, y the n-step target; returns (loss, y)."""
        cfg, pol = self.cfg, self.policy
        with torch.no_grad():
            next_feat = pol.features(b["next_state"], b["task"], b["next_base"])
            next_res = pol.action_scale * torch.tanh(self.actor_target(next_feat))
            smoothing = (torch.randn_like(next_res) * cfg.exploration_std).clamp(
                -cfg.target_noise_clip, cfg.target_noise_clip
            )
            next_action = (b["next_base"] + next_res + smoothing).clamp(-1, 1)
            q_next = self.critic_target(next_feat, next_action)  # (N, B)
            subset = torch.randperm(cfg.num_critics)[: cfg.critic_subset]  # REDQ
            target = b["ret"] + b["discount"] * q_next[subset].min(0).values
        q = self.critic(pol.features(b["state"], b["task"], b["base"]), b["action"])
        return ((q - target) ** 2).mean(), target

    def actor_loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """-mean_j Q_j(s, clamp(a_base + residual(s, a_base))), deterministic residual (TD3)."""
        feat = self.policy.features(b["state"], b["task"], b["base"])
        residual = self.policy.residual(feat)
        action = (b["base"] + residual).clamp(-1, 1)
        loss = -self.critic(feat, action).mean()
        if self.cfg.actor_l2:
            loss = loss + self.cfg.actor_l2 * (residual**2).sum(-1).mean()
        return loss

    def update(self, batch: dict[str, np.ndarray], update_actor: bool) -> dict[str, float]:
        b = self._tensors(batch)
        cfg = self.cfg
        loss, target = self.critic_loss(b)
        self.critic_opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_opt.step()
        metrics = {"critic_loss": loss.item(), "q_target": target.mean().item()}
        if update_actor:
            actor_loss = self.actor_loss(b)
            self.actor_opt.zero_grad()
            actor_loss.backward()
            nn.utils.clip_grad_norm_(self.policy.actor.parameters(), cfg.grad_clip)
            self.actor_opt.step()
            polyak(self.actor_target, self.policy.actor, cfg.tau)
            metrics["actor_loss"] = actor_loss.item()
        polyak(self.critic_target, self.critic, cfg.tau)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])


# ---- the training loop ------------------------------------------------------------------------
def load_demos(cfg: FinetuneConfig, benchmark, tasks) -> list:
    """Demonstration episodes for the demo buffer (see ResidualConfig.demos)."""
    rcfg = cfg.residual
    if rcfg.demos == "none":
        return []
    if rcfg.demos == "scripted":
        from vla_rl.benchmark import first_episodes
        from vla_rl.collect import records_to_episodes
        from vla_rl.policy import load_policy
        from vla_rl.rollout import RolloutEngine

        if benchmark.name != "metaworld":
            raise ValueError(
                f"--residual.demos scripted needs scripted experts, which only metaworld has; "
                f"pass a dataset path or 'none' for {benchmark.name!r}"
            )
        expert = load_policy("scripted", benchmark)
        venv = benchmark.make_env(tasks, cfg.env)
        try:
            records = RolloutEngine(venv, cfg.env.pipeline_groups).run(
                expert, first_episodes(tasks, rcfg.demo_episodes), keep_steps=True, seed=cfg.seed
            )
        finally:
            venv.close()
        return records_to_episodes(records, benchmark)
    from vla_rl.pretrain import load_episodes

    if not Path(rcfg.demos).exists():
        raise FileNotFoundError(
            f"--residual.demos {rcfg.demos!r} does not exist; valid choices: scripted, none, "
            "or a LeRobot v3.0 dataset directory / LIBERO .hdf5 file"
        )
    return load_episodes(rcfg.demos, images=False)


def save_checkpoint(run: Path, agent: Residual, online: ReplayBuffer, state: dict) -> None:
    """policy/ + learner.pt (critics, targets, optimisers, RNG) + the online buffer + state.json,
    published in one atomic rename."""
    from vla_rl.atomic_io import atomic_directory

    with atomic_directory(run / "checkpoint") as tmp:
        agent.policy.save_pretrained(tmp / "policy")
        torch.save({**agent.state_dict(), "torch_rng": torch.random.get_rng_state()},
                   tmp / "learner.pt")  # fmt: skip
        online.save(tmp / "online_buffer.npz")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")


def train(cfg: FinetuneConfig) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from vla_rl.config import ConfigError, to_dict
    from vla_rl.finetune import eval_point, final_results, setup_run
    from vla_rl.metrics import MetricsLogger
    from vla_rl.plots import plot_learning_curve
    from vla_rl.residual_policy import ResidualPolicy

    rcfg = cfg.residual
    if rcfg.utd < 1 or rcfg.n_step < 1 or rcfg.batch_size < 1 or rcfg.num_critics < 1:
        raise ConfigError("--residual.utd, n-step, batch-size and num-critics must be >= 1")
    if not 1 <= rcfg.critic_subset <= rcfg.num_critics:
        raise ConfigError(f"--residual.critic-subset must be in 1..{rcfg.num_critics}")
    if not 0.0 <= rcfg.demo_fraction < 1.0:
        raise ConfigError(f"--residual.demo-fraction must be in [0, 1), got {rcfg.demo_fraction}")
    if rcfg.action_scale < 0:
        raise ConfigError(f"--residual.action-scale must be >= 0, got {rcfg.action_scale}")

    # ---- build: benchmark, tasks, base, residual policy, learner ------------------------------
    setup = setup_run(cfg)
    benchmark, names, train_tasks = setup.benchmark, setup.names, setup.train_tasks
    base, run, saved = setup.base, setup.run, setup.saved
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    demo_episodes = load_demos(cfg, benchmark, train_tasks)  # before any env of ours exists
    venv = benchmark.make_env(train_tasks, cfg.env)
    space = venv.single_action_space
    policy = ResidualPolicy(
        base, benchmark.state_dim, benchmark.action_dim, names,
        action_low=space.low.tolist(), action_high=space.high.tolist(), hidden=rcfg.hidden,
        action_scale=rcfg.action_scale, exploration_std=rcfg.exploration_std,
        base_deterministic=rcfg.base_deterministic,
    )  # fmt: skip
    venv = policy.wrap_env(venv)
    agent = Residual(policy, rcfg)
    fields = transition_fields(benchmark.state_dim, benchmark.action_dim)
    online = ReplayBuffer(rcfg.buffer_size, fields)

    # ---- demonstrations -> demo buffer (rebuilt on resume: it is a function of the config) ----
    task_of = {t.instruction: (t.name, i) for i, t in enumerate(train_tasks)}
    demo_rows = demo_transitions(demo_episodes, policy, task_of, rcfg)
    demos = None
    if demo_rows is not None:
        demos = ReplayBuffer(len(demo_rows["ret"]), fields)
        demos.add(demo_rows)

    state: dict[str, Any] = {"env_steps": 0, "updates": 0, "episodes": 0, "wall_s": 0.0,
                             "curve": [], "stats_fitted": False}  # fmt: skip
    if saved is not None:
        ckpt = run / "checkpoint"
        policy.load_state_dict(ResidualPolicy.from_pretrained(ckpt / "policy").state_dict())
        learner = torch.load(ckpt / "learner.pt", weights_only=False)
        agent.load_state_dict(learner)
        torch.random.set_rng_state(learner["torch_rng"])
        online.load(ckpt / "online_buffer.npz")
        state = saved
        rng.bit_generator.state = state.pop("numpy_rng")

    logger = MetricsLogger(run, cfg.logger, to_dict(cfg))

    def next_episode():
        from vla_rl.benchmark import EpisodeSpec

        task = train_tasks[int(rng.integers(len(train_tasks)))]
        return EpisodeSpec(task, int(task.init_ids[int(rng.integers(len(task.init_ids)))]))

    def evaluate_now() -> None:
        policy.eval()
        point = eval_point(policy, benchmark, cfg, names, state)
        policy.train()
        state["curve"].append(point)
        logger.log(state["env_steps"], {"eval/success_rate": point["success_rate"]})

    slots = list(range(venv.num_envs))
    # Per-slot episode in progress: states, normalised base actions, actions, rewards.
    episodes = [dict(states=[], bases=[], actions=[], rewards=[]) for _ in slots]
    venv.reset_slots(slots, [next_episode() for _ in slots])
    obs = venv.observe(slots)
    if not state["curve"]:
        evaluate_now()  # the residual starts at exactly 0: this point is the base's success
    bar = tqdm(total=cfg.env_steps, initial=state["env_steps"], unit="step", smoothing=0.05,
               desc=f"residual {','.join(names)[:40]}", disable=not cfg.progress,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)  # fmt: skip
    pending_updates = 0.0
    last_eval = state["env_steps"] - state["env_steps"] % cfg.eval_every
    last_save = state["env_steps"]
    metrics: dict[str, float] = {}
    try:
        while state["env_steps"] < cfg.env_steps:
            start = time.perf_counter()
            # -- act: base + residual (+ noise), or base + uniform noise during the warm-up --
            state_t = torch.as_tensor(obs["state"], dtype=torch.float32)
            base_unit = policy.to_unit(torch.as_tensor(obs["base_action"], dtype=torch.float32))
            warm = state["env_steps"] < rcfg.learning_starts
            with torch.no_grad():
                if warm:
                    residual = (torch.rand_like(base_unit) * 2 - 1) * rcfg.warmup_noise
                else:
                    feat = policy.features(state_t, policy.task_ids(obs["task"]), base_unit)
                    residual = policy.residual(feat) + rcfg.exploration_std * torch.randn_like(
                        base_unit
                    )
            action_unit = (base_unit + residual).clamp(-1, 1)
            ticket = venv.step_async(slots, policy.from_unit(action_unit)[:, None].numpy())

            # -- update while the env steps (the learner and the simulator overlap) ----------
            learning = not warm and len(online) > 0
            if learning and not state["stats_fitted"]:
                # State statistics from the warm-up data and demos, fixed from here on so the
                # critics' inputs mean the same thing for the whole run.
                parts = [online.data["state"][: len(online)]]
                if demos is not None:
                    parts.append(demos.data["state"][: len(demos)])
                policy.fit_state_stats(np.concatenate(parts))
                for _ in range(rcfg.critic_warmup_updates):
                    batch = sample_mixed(online, demos, rcfg.batch_size, rcfg.demo_fraction, rng)
                    metrics = agent.update(batch, update_actor=False)
                state["updates"] += rcfg.critic_warmup_updates
                state["stats_fitted"] = True
            if learning:
                pending_updates += rcfg.utd * len(slots)
                while pending_updates >= 1:
                    pending_updates -= 1
                    state["updates"] += 1
                    actor_step = state["updates"] % rcfg.utd == 0
                    batch = sample_mixed(online, demos, rcfg.batch_size, rcfg.demo_fraction, rng)
                    metrics = agent.update(batch, update_actor=actor_step)
            results = venv.step_wait(ticket)
            next_obs = venv.observe(slots)  # includes the base action at the next state

            # -- store: finished episodes become n-step transitions ------------------------
            ended, finished = [], []
            for i, res in enumerate(results):
                ep = episodes[i]
                ep["states"].append(obs["state"][i])
                ep["bases"].append(base_unit[i].numpy())
                ep["actions"].append(action_unit[i].numpy())
                ep["rewards"].append(1.0 if res.terminated else 0.0)  # sparse success
                if res.terminated or res.truncated:
                    states = np.stack(ep["states"] + [next_obs["state"][i]])
                    final_base = policy.to_unit(torch.as_tensor(next_obs["base_action"][i]))
                    bases = np.stack(ep["bases"] + [final_base.numpy()])
                    task = policy.task_index[obs["task"][i]]
                    online.add(episode_transitions(
                        states, bases, np.stack(ep["actions"]), np.array(ep["rewards"]),
                        res.terminated, task, rcfg.n_step, rcfg.gamma,
                    ))  # fmt: skip
                    episodes[i] = dict(states=[], bases=[], actions=[], rewards=[])
                    ended.append(i)
                    finished.append(res.success)
            state["env_steps"] += sum(r.steps for r in results)
            if ended:
                venv.reset_slots(ended, [next_episode() for _ in ended])
                next_obs = venv.observe(slots)
                state["episodes"] += len(ended)
                logger.log(state["env_steps"], {"train/episode_success": float(np.mean(finished)),
                                                "train/episodes": state["episodes"]})  # fmt: skip
            obs = next_obs
            state["wall_s"] += time.perf_counter() - start
            bar.update(sum(r.steps for r in results))

            if metrics and state["env_steps"] // 1000 != (state["env_steps"] - len(slots)) // 1000:
                logger.log(state["env_steps"], {f"train/{k}": v for k, v in metrics.items()})
                last = state["curve"][-1]["success_rate"]
                bar.set_postfix(q=f"{metrics['q_target']:.2f}", ep=state["episodes"],
                                eval=f"{last:.2f}")  # fmt: skip
            # -- evaluate and checkpoint -----------------------------------------------------
            done = state["env_steps"] >= cfg.env_steps
            if state["env_steps"] - last_eval >= cfg.eval_every or done:
                last_eval = state["env_steps"] - state["env_steps"] % cfg.eval_every
                evaluate_now()
            if state["env_steps"] - last_save >= rcfg.save_every or done:
                last_save = state["env_steps"]
                save_checkpoint(run, agent, online, dict(state, numpy_rng=rng.bit_generator.state))
    finally:
        bar.close()
        venv.close()
        logger.close()

    policy.eval()
    policy.save_pretrained(run / "policy")
    plot_learning_curve(
        state["curve"], run / "learning_curve.png", x_keys=("env_steps", "wall_s"),
        title=f"residual RL on {cfg.base}: {', '.join(names)}",
    )  # fmt: skip
    extra = {
        "method": "residual",
        "policy_dir": str(run / "policy"),
        "env_steps": state["env_steps"],
        "updates": state["updates"],
        "train_episodes": state["episodes"],
        "train_wall_s": round(state["wall_s"], 1),
        "demo_transitions": 0 if demos is None else len(demos),
        "curve": state["curve"],
    }
    return final_results(policy, base, benchmark, cfg, names, run, extra)
