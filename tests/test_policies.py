"""Trivial and scripted policies' specifics, loading by name and its errors (what every family
shares, sampling shapes, re-scoring and save/load round trips: test_policy_contract.py)."""

import numpy as np
import pytest
import torch

from vla_rl.core.benchmark import get_benchmark
from vla_rl.core.policy import load_policy
from vla_rl.core.registry import UnknownNameError
from vla_rl.core.types import ActionSample
from vla_rl.policies.trivial import RandomPolicy, ZeroPolicy


def obs(b=4, ds=39):
    return {
        "state": np.zeros((b, ds), np.float32),
        "instruction": [""] * b,
        "task": ["reach-v3"] * b,
    }


def test_zero_policy_uses_the_benchmark_noop_and_round_trips(tmp_path):
    policy = ZeroPolicy([0.0, 0.0, -1.0], chunk_size=2)
    policy.save_pretrained(tmp_path / "z")
    loaded = load_policy(str(tmp_path / "z"))
    actions = loaded.sample_actions(obs(2)).actions
    assert actions.shape == (2, 2, 3) and torch.all(actions[..., 2] == -1)
    state = loaded.state_dict()["_noop"]
    assert torch.equal(state, torch.tensor([0.0, 0.0, -1.0]))


def test_random_policy_log_prob_is_consistent():
    policy = RandomPolicy(action_dim=2, chunk_size=5)
    sample = policy.sample_actions(obs(3))
    again = policy.log_prob(obs(3), ActionSample(sample.actions))
    assert torch.allclose(sample.log_prob, again)
    assert torch.allclose(again, torch.full((3,), -10 * np.log(2.0)))


def test_load_policy_by_name_and_errors():
    bench = get_benchmark("metaworld")
    scripted = load_policy("scripted", bench)
    sample = scripted.sample_actions(obs(2))
    assert sample.actions.shape == (2, 1, 4) and sample.log_prob is None
    far = obs(2)
    far["state"][:, 36:39] = 5.0  # a goal far away: the raw expert action would exceed 1
    assert scripted.sample_actions(far).actions.abs().max() <= 1.0
    with pytest.raises(NotImplementedError, match="no tractable log-likelihood"):
        scripted.log_prob(obs(2), sample)
    with pytest.raises(UnknownNameError, match="valid choices"):
        load_policy("nope", bench)
