"""The `critic` reward (vla_rl/rewards/critic_reward.py): potential-based shaping by hand, the
telescoping that makes grpo rank failures by final progress, the alarm, and the bad-input
rules of `--<method>.reward critic`."""

import json

import numpy as np
import pytest
import torch
from test_policy_gradient import tiny_flow
from toy_benchmark import ToyBenchmark

from vla_rl.cli import main as cli_main
from vla_rl.core.benchmark import EnvConfig
from vla_rl.core.trajectories import Trajectories
from vla_rl.methods.grpo import GRPOConfig, group_episodes
from vla_rl.rewards.critic_reward import (
    CriticReward,
    CriticRewardConfig,
    batch_auc,
    potential_bonus,
)
from vla_rl.rewards.pairwise_critic import PairwiseProgressCritic, progress_delta
from vla_rl.rewards.progress_critic import ProgressCritic
from vla_rl.rollout.engine import RolloutEngine


class ColumnCritic(ProgressCritic):
    """A critic that knows the toy task: progress = the bright column's position / (W - 1)
    (toward the right), or its reverse when `flipped` (a critic that is exactly wrong)."""

    image_size = 8

    def __init__(self, flipped: bool = False):
        super().__init__()
        self.flipped = flipped

    def _progress(self, frames: torch.Tensor) -> np.ndarray:
        column = frames[:, 0, :, 0].float().argmax(1).numpy() / (frames.shape[2] - 1)
        return 1 - column if self.flipped else column

    def _delta_batch(self, frames_a, frames_b, instructions):
        d = progress_delta(self._progress(frames_a), self._progress(frames_b))
        return torch.as_tensor(d, dtype=torch.float32)

    def _done_batch(self, frames, instructions):
        return torch.as_tensor(self._progress(frames) > 0.95, dtype=torch.float32)


def toy_rollouts(horizon: int = 12) -> Trajectories:
    """Grouped toy rollouts with a frame before the first decision step and after each."""
    bench = ToyBenchmark(horizon=horizon)
    tasks = bench.tasks("train", ["right"])
    episodes = group_episodes(tasks, 3, 4, np.random.default_rng(0))
    venv = bench.make_env(tasks, EnvConfig(num_envs=4, num_workers=0, video_size=8))
    try:
        records = RolloutEngine(venv).run(
            tiny_flow(), episodes, keep_steps=True, seed=0,
            record_video=lambda i, s: True, frames_per="chunk",
        )  # fmt: skip
    finally:
        venv.close()
    return Trajectories.from_episodes(records)


def test_potential_bonus_by_hand():
    """Episode 0: 2 steps, success at the second (its next state is absorbing, potential 0);
    episode 1: 3 steps, truncated (the last potential is the critic's)."""
    phi = torch.tensor([[0.0, 0.0], [0.4, 0.2], [0.9, 0.5], [7.0, 0.6]])  # 7: padding
    valid = torch.tensor([[True, True], [True, True], [False, True]])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])
    bonus = potential_bonus(phi, valid, terminated, gamma=0.5)
    expected = torch.tensor([[0.5 * 0.4 - 0, 0.5 * 0.2], [0.5 * 0 - 0.4, 0.5 * 0.5 - 0.2],
                             [0.0, 0.5 * 0.6 - 0.5]])  # fmt: skip
    assert torch.allclose(bonus, expected)
    # gamma = 1 telescopes: a success sums to -phi_0 = 0, a truncation to its last potential
    sums = potential_bonus(phi, valid, terminated, gamma=1.0).sum(0)
    assert torch.allclose(sums, torch.tensor([0.0, 0.6]))


def test_batch_auc_by_hand():
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    assert batch_auc(scores, np.array([True, True, False, False])) == pytest.approx(0.875)
    assert batch_auc(scores, np.array([True, True, True, True])) is None


def test_grpo_scores_are_success_plus_lambda_times_final_progress():
    traj = toy_rollouts()
    assert traj.frames is not None and not traj.success.all()
    critic = ColumnCritic()
    reward = CriticReward(critic, CriticRewardConfig(weight=0.3), gamma=1.0)
    totals = reward(traj).sum(0)
    for b in range(traj.batch_size):
        n = int(traj.valid[:, b].sum())
        assert len(traj.frames[b]) == n + 1  # one frame before the first step, one per step
        final = critic.progress(traj.frames[b], "move to the right")[-1]
        expected = 1.0 if traj.success[b] else 0.3 * float(final)
        assert totals[b].item() == pytest.approx(expected, abs=1e-5)
    failures = totals[~traj.success]
    assert (failures > 0).any() and (failures <= 0.3).all()  # ranked, at most lam < 1
    assert reward.metrics["critic/score_failure"] == pytest.approx(float(failures.mean()) / 0.3)
    assert torch.all(reward(traj)[~traj.valid] == 0)


def test_a_wrong_critic_raises_the_alarm_and_a_right_one_does_not(caplog):
    traj = toy_rollouts(horizon=30)
    assert traj.success.any() and not traj.success.all()
    right = CriticReward(ColumnCritic(), CriticRewardConfig(), gamma=0.99)
    right(traj)
    assert right.metrics["critic/auc"] > 0.6 and right.metrics["critic/alarm"] == 0.0
    wrong = CriticReward(ColumnCritic(flipped=True), CriticRewardConfig(), gamma=0.99)
    with caplog.at_level("WARNING"):
        wrong(traj)
    assert wrong.metrics["critic/alarm"] == 1.0 and "critic alarm" in caplog.text


def test_delta_mode_sums_the_raw_deltas():
    traj = toy_rollouts()
    critic = ColumnCritic()
    reward = CriticReward(critic, CriticRewardConfig(mode="delta", weight=1.0), gamma=1.0)
    rewards = reward(traj)
    b = int(torch.nonzero(~traj.success)[0])
    frames = traj.frames[b]
    raw = critic.delta(frames[:-1], frames[1:], "move to the right")
    assert torch.allclose(rewards[: len(raw), b], raw)


def test_the_reward_builds_from_a_fitted_critic_directory(tmp_path):
    PairwiseProgressCritic(["move to the right"], image_size=16).save(tmp_path / "critic")
    pg = GRPOConfig(reward=("critic",), critic=str(tmp_path / "critic"))
    reward = CriticReward.build(pg)
    assert reward.frame_size == 16 and reward.gamma == 1.0


def _finetune(tmp_path, *flags):
    out = tmp_path / "run"
    code = cli_main(["finetune", "--method", "grpo", "--output-dir", str(out), "--logger", "none",
                     "--grpo.reward", "critic", *flags])  # fmt: skip
    return code, out


def test_bad_critic_settings_exit_2_and_write_nothing(tmp_path, capsys):
    code, out = _finetune(tmp_path)
    assert code == 2 and not out.exists()
    assert "--grpo.critic" in capsys.readouterr().err
    wrong = tmp_path / "not_a_critic"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"format": "something else"}))
    code, out = _finetune(tmp_path, "--grpo.critic", str(wrong))
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "not a progress critic" in err and len(err.strip().splitlines()) == 1
    code, out = _finetune(tmp_path, "--grpo.critic", str(tmp_path / "missing"))
    assert code == 2 and not out.exists()
    code, out = _finetune(tmp_path, "--grpo.critic", str(wrong), "--grpo.shaping.mode", "raw")
    assert code == 2 and not out.exists() and "potential, delta" in capsys.readouterr().err


@pytest.mark.slow
def test_grpo_trains_with_a_fitted_critic_and_logs_its_view(tmp_path):
    from vla_rl.commands.finetune import FinetuneConfig, finetune
    from vla_rl.core.benchmark import get_benchmark

    task = "button-press-topdown-v3"
    instruction = get_benchmark("metaworld").tasks("train", [task])[0].instruction
    PairwiseProgressCritic([instruction], image_size=16).save(tmp_path / "critic")
    run = tmp_path / "run"
    cfg = FinetuneConfig(
        method="grpo", tasks=(task,), env_steps=700, eval_every=700, eval_episodes=1,
        final_eval_episodes=1, videos=0, output_dir=str(run), logger="none", progress=False,
        env=EnvConfig(num_envs=2, num_workers=0, video_size=0, max_steps=82),
    )  # fmt: skip
    g = cfg.grpo
    g.episodes_per_step, g.group_size, g.rollout_envs, g.rollout_workers = 8, 4, 4, 0
    g.reward, g.critic, g.minibatch_size = ("critic",), str(tmp_path / "critic"), 16
    finetune(cfg)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "train/rollout_s" in x]
    assert train and all("train/critic/bonus_per_episode" in x for x in train)


def test_dense_oracle_uses_the_env_reward_per_env_step_as_its_potential():
    from vla_rl.rewards.critic_reward import DenseOracleReward

    traj = toy_rollouts()
    reward = DenseOracleReward(CriticRewardConfig(weight=1.0, oracle_scale=-1.0), gamma=1.0)
    # the toy env's reward is -|position - target| <= 0: scale -1 maps it to a distance >= 0
    totals = reward(traj).sum(0)
    for b in range(traj.batch_size):
        n = int(traj.valid[:, b].sum())
        per_step = traj.rewards[n - 1, b] / traj.chunk_steps[n - 1, b] / -1.0
        expected = 1.0 if traj.success[b] else float(per_step.clamp(0, 1))
        assert totals[b].item() == pytest.approx(expected, abs=1e-5)
    assert int(traj.chunk_steps[~traj.valid].abs().sum()) == 0


def test_the_reward_builds_from_a_vlac_checkpoint_and_scores_a_rollout(tmp_path):
    from vla_rl.rewards.vlac import VLACCritic
    from vla_rl.rewards.vlac_tiny import write_tiny_vlac

    write_tiny_vlac(tmp_path / "vlac")
    reward = CriticReward.build(GRPOConfig(reward=("critic",), critic=str(tmp_path / "vlac")))
    assert isinstance(reward.critic, VLACCritic)
    traj = toy_rollouts(horizon=2)  # VLAC reads every frame at 448 px: keep it short
    rewards = reward(traj)  # a random tiny VLAC: any value, but finite, masked and in range
    assert rewards.shape == traj.valid.shape and torch.isfinite(rewards).all()
    assert torch.all(rewards[~traj.valid] == 0) and rewards.abs().max() <= 1 + 0.5 * 1.0
