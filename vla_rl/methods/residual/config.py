"""`--method residual`'s settings (ResidualConfig) and their checks, before anything is built."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla_rl.core.config import ConfigError
from vla_rl.methods.residual.shaping import check_shaping
from vla_rl.rewards.critic_reward import CriticRewardConfig


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
    benchmark's scripted experts (Meta-World, LIBERO) on the first train initial states, i.e.
    demos the bundled bases were trained on; a path loads a LeRobot v3.0 dataset or a LIBERO
    .hdf5; "none" trains from online data only."""
    demo_episodes: int = 1
    """Scripted demos per task when demos = "scripted". 1: the bundled base's own data."""
    base_deterministic: bool = True
    """Query the base deterministically (a frozen BC policy as deployed; ResFiT's ACT base is
    deterministic); exploration comes from the residual only."""
    reward: str = "success"
    """The reward the critics learn from: success (sparse, 1 on the step that reaches the goal:
    ResFiT's), critic (success plus a frozen progress critic's potential-based shaping: set
    `critic`), or dense_oracle (the same shaping with the simulator's dense reward as the
    potential: a privileged reference, never a label). vla_rl/methods/residual/shaping.py."""
    critic: str | None = None
    """The progress critic of the `critic` reward: a directory from `vla-rl fit-critic`, or a
    VLAC checkpoint; frozen for the whole run. Unused unless reward is critic."""
    shaping: CriticRewardConfig = field(default_factory=CriticRewardConfig)
    """Shaping weight lam (0.5, as for the on-policy methods), the critic's batch and the
    oracle's scale. Only mode potential: the raw delta's sum does not telescope."""
    save_every: int = 10_000
    """Env steps between checkpoints (and one at the end). The online buffer is saved with
    them, and the episodes in progress, so --resume continues exactly where the run was."""


def check_residual_config(rcfg: ResidualConfig) -> None:
    """Raise ConfigError for settings the loop cannot run with (the CLI prints it, exit 2)."""
    check_shaping(rcfg.reward, rcfg.critic, rcfg.shaping)
    if rcfg.utd < 1 or rcfg.n_step < 1 or rcfg.batch_size < 1 or rcfg.num_critics < 1:
        raise ConfigError("--residual.utd, n-step, batch-size and num-critics must be >= 1")
    if not 1 <= rcfg.critic_subset <= rcfg.num_critics:
        raise ConfigError(f"--residual.critic-subset must be in 1..{rcfg.num_critics}")
    if not 0.0 <= rcfg.demo_fraction < 1.0:
        raise ConfigError(f"--residual.demo-fraction must be in [0, 1), got {rcfg.demo_fraction}")
    if rcfg.action_scale < 0:
        raise ConfigError(f"--residual.action-scale must be >= 0, got {rcfg.action_scale}")
    if rcfg.save_every < 1 or rcfg.buffer_size < 1:
        raise ConfigError(
            f"--residual.save-every and buffer-size must be >= 1, got {rcfg.save_every} and "
            f"{rcfg.buffer_size}"
        )
    if rcfg.learning_starts < 0 or rcfg.critic_warmup_updates < 0:
        raise ConfigError("--residual.learning-starts and critic-warmup-updates must be >= 0")
    for name in ("gamma", "tau"):  # a discount or Polyak rate of 0 learns nothing, > 1 diverges
        if not 0.0 < getattr(rcfg, name) <= 1.0:
            raise ConfigError(f"--residual.{name} must be in (0, 1], got {getattr(rcfg, name)}")
    for name in ("actor_lr", "critic_lr", "grad_clip"):
        if getattr(rcfg, name) <= 0:
            flag = name.replace("_", "-")
            raise ConfigError(f"--residual.{flag} must be > 0, got {getattr(rcfg, name)}")
    for name in ("exploration_std", "target_noise_clip", "warmup_noise"):
        if getattr(rcfg, name) < 0:
            flag = name.replace("_", "-")
            raise ConfigError(f"--residual.{flag} must be >= 0, got {getattr(rcfg, name)}")
