"""The reward slot: reward models by name (REWARDS), combined with weights, read by every
on-policy method; hand-checked on toy rollouts. A toy reward registered here changes the
advantages exactly as its weight says."""

import dataclasses

import numpy as np
import pytest
import torch
from test_policy_gradient import tiny_flow, toy_trajectories
from toy_benchmark import ToyBenchmark

from vla_rl.commands.finetune import FinetuneConfig, rename_legacy_flags
from vla_rl.core.config import ConfigError, parse_cli
from vla_rl.core.registry import REWARDS, UnknownNameError
from vla_rl.core.reward import (
    SparseSuccessReward,
    WeightedRewards,
    at_last_step,
    build_rewards,
    check_reward_names,
)
from vla_rl.methods.grpo import GRPO, GRPOConfig
from vla_rl.methods.ppo import PPO, PPOConfig
from vla_rl.methods.srpo import LEGACY_FLAGS, SRPOConfig
from vla_rl.rl.advantages import group_advantages


class DistanceBonus:
    """A toy dense reward: -|position - target| at every valid step (what a critic could say)."""

    frame_size = 0

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.metrics = {"calls": 1.0}

    @classmethod
    def build(cls, method_cfg, policy):
        return cls()

    def __call__(self, traj):
        state = traj.obs["state"].float()  # (T, B, 2)
        return -self.scale * (state[..., 0] - state[..., 1]).abs() * traj.valid.float()


@pytest.fixture
def traj():
    return toy_trajectories(tiny_flow())


@pytest.fixture
def toy_reward(monkeypatch):
    monkeypatch.setitem(REWARDS._entries, "distance", DistanceBonus.build)
    monkeypatch.setitem(REWARDS._descriptions, "distance", "toy dense reward (tests)")


def test_at_last_step_by_hand():
    valid = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.bool)  # lengths 2, 1, 3
    rewards = at_last_step(torch.tensor([0.5, 1.0, 0.25]), valid)
    assert rewards.tolist() == [[0.0, 1.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.25]]
    assert torch.equal(rewards.sum(0), torch.tensor([0.5, 1.0, 0.25]))


def test_weighted_rewards_weigh_and_mask(traj):
    traj.valid[-3:, ::2] = False  # shorter episodes: their last 3 steps become padding
    success = SparseSuccessReward()
    dense = DistanceBonus()
    total = WeightedRewards([success, dense], [2.0, 0.5], ["success", "distance"])(traj)
    expected = (2.0 * success(traj) + 0.5 * dense(traj)) * traj.valid.float()
    assert torch.allclose(total, expected)
    assert (total[~traj.valid] == 0).all()
    assert (dense(traj)[~traj.valid] == 0).all() and (total[traj.valid] != 0).any()


def test_unknown_reward_and_weight_count_fail_before_a_run():
    with pytest.raises(UnknownNameError, match="valid choices: success, srpo_progress"):
        check_reward_names(("success", "vlac"), (), "grpo")
    with pytest.raises(ConfigError, match="2 weights for 1 rewards"):
        check_reward_names(("success",), (1.0, 2.0), "ppo")


def test_a_registered_toy_reward_changes_grpo_advantages_by_its_weight(traj, toy_reward):
    bench = ToyBenchmark()
    base = GRPO(GRPOConfig(episodes_per_step=8, group_size=4), tiny_flow(), bench, ["left"])
    mixed_cfg = GRPOConfig(episodes_per_step=8, group_size=4, reward=("success", "distance"),
                           reward_weights=(1.0, 0.3))  # fmt: skip
    mixed = GRPO(mixed_cfg, tiny_flow(), bench, ["left"])
    adv_base, keep_base, _ = base.advantages(traj)
    adv_mixed, keep_mixed, metrics = mixed.advantages(traj)
    assert not torch.allclose(adv_base, adv_mixed)
    # By hand: each rollout's score is its success plus 0.3 x its summed distance penalty.
    scores = traj.success.float() + 0.3 * DistanceBonus()(traj).sum(0)
    expected = group_advantages(scores, traj.group)[None].expand_as(traj.rewards) * traj.valid
    assert torch.allclose(adv_mixed, expected, atol=1e-6)
    # groups are kept by their success contrast, and all-failure groups the dense part ranks
    fails = ~torch.stack([traj.success[traj.group == g].any() for g in traj.group])
    assert torch.equal(keep_mixed, keep_base | fails)
    strict = GRPO(dataclasses.replace(mixed_cfg, keep_scored_failures=False), tiny_flow(), bench,
                  ["left"])  # fmt: skip
    assert torch.equal(strict.advantages(traj)[1], keep_base)  # the released SRPO filter
    assert metrics["distance/calls"] == 1.0  # each model's metrics reach the method's


def test_ppo_reads_a_dense_reward_through_the_same_slot(traj, toy_reward):
    bench = ToyBenchmark()
    torch.manual_seed(0)
    sparse = PPO(PPOConfig(), tiny_flow(), bench, ["left", "right"])
    torch.manual_seed(0)  # the same critic initialisation
    dense = PPO(PPOConfig(reward=("distance",)), tiny_flow(), bench, ["left", "right"])
    adv_sparse, _, m_sparse = sparse.advantages(traj)
    adv_dense, _, m_dense = dense.advantages(traj)
    assert m_dense["mean_reward"] < 0 <= m_sparse["mean_reward"]
    assert not torch.allclose(adv_sparse, adv_dense)


def test_srpo_is_grpo_with_the_progress_reward():
    grpo = dataclasses.asdict(GRPOConfig(reward=("srpo_progress",)))
    assert dataclasses.asdict(SRPOConfig()) == grpo
    reward = build_rewards(("success",), (), GRPOConfig(), None)
    assert reward.frame_size == 0  # success renders nothing


def test_srpo_progress_asks_for_frames_only_when_its_encoder_reads_them():
    policy = tiny_flow()
    cfg = GRPOConfig(reward=("srpo_progress",))
    cfg.progress.encoder, cfg.progress.frame_size = "policy", 48
    assert build_rewards(cfg.reward, (), cfg, policy).frame_size == 0
    cfg.progress.encoder = "efficientnet"
    reward = build_rewards(cfg.reward, (), cfg, policy)
    assert reward.frame_size == 48
    assert reward.frames_sampled == cfg.progress.frames == 16  # only the encoder's 16 kept


def test_rollouts_keep_only_sampled_frames_when_every_frame_reader_samples_the_same():
    def model(size, sampled=None):
        m = type("M", (), {"frame_size": size})()
        if sampled is not None:
            m.frames_sampled = sampled
        return m

    def sampled(*models):
        return WeightedRewards(list(models), [1.0] * len(models)).frames_sampled

    assert sampled(model(0), model(64, 16)) == 16  # a reward reading no frames does not count
    assert sampled(model(64, 16), model(32, 16)) == 16
    assert sampled(model(64, 16), model(64)) == 0  # one reads every frame (a critic): all
    assert sampled(model(64, 16), model(64, 8)) == 0  # two clips: all, each samples its own
    assert sampled(model(0)) == 0


def test_srpo_progress_scores_failures_below_successes(traj):
    cfg = GRPOConfig(reward=("srpo_progress",))
    cfg.progress.encoder, cfg.progress.frames = "policy", 2
    reward = build_rewards(cfg.reward, (), cfg, tiny_flow())
    traj.success[::3] = True  # the random tiny policy never succeeds: mark some as successes
    scores = reward(traj).sum(0)
    success = traj.success
    assert torch.equal(scores[success], torch.ones(int(success.sum())))
    assert (scores[~success] >= 0).all() and (scores[~success] < cfg.progress.cap).all()
    assert "failure_reward" in reward.metrics


def test_old_srpo_flags_still_work():
    args = ["--method", "srpo", "--srpo.encoder", "policy", "--srpo.frame_size=64",
            "--srpo.reward.cap", "0.5", "--srpo.reward.normalization=rank",
            "--grpo.lr", "1e-3"]  # fmt: skip
    renamed = rename_legacy_flags(args, LEGACY_FLAGS)
    assert renamed == ["--method", "srpo", "--srpo.progress.encoder", "policy",
                       "--srpo.progress.frame-size=64", "--srpo.progress.cap", "0.5",
                       "--srpo.progress.normalization=rank", "--grpo.lr", "1e-3"]  # fmt: skip
    cfg = parse_cli(FinetuneConfig, renamed, prog="vla-rl finetune")
    assert cfg.srpo.progress.encoder == "policy" and cfg.srpo.progress.frame_size == 64
    assert cfg.srpo.progress.cap == 0.5 and cfg.srpo.progress.normalization == "rank"
    assert cfg.srpo.reward == ("srpo_progress",) and cfg.grpo.lr == 1e-3


def test_reward_flags_parse_on_every_on_policy_method():
    args = ["--ppo.reward", "success", "srpo_progress", "--ppo.reward-weights", "1", "0.5"]
    cfg = parse_cli(FinetuneConfig, args, prog="vla-rl finetune")
    assert cfg.ppo.reward == ("success", "srpo_progress")
    assert cfg.ppo.reward_weights == (1.0, 0.5)
    assert np.isclose(cfg.grpo.progress.cap, 0.6)  # the released SRPO default, on grpo too


def test_a_bad_old_style_srpo_flag_exits_2_before_anything_is_written(tmp_path, capsys):
    from vla_rl.cli import main

    run = tmp_path / "run"
    code = main(["finetune", "--method", "srpo", "--srpo.reward.cap", "2",
                 "--output-dir", str(run)])  # fmt: skip
    assert code == 2 and not run.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cap must be in (0, 1)" in err[0]
