"""Contract tests over the method, reward and backend registries: every entry resolves, and
what `vla-rl finetune` needs for it exists (a settings field named as the method)."""

import dataclasses

import pytest

from vla_rl.commands.finetune import FinetuneConfig, method_config
from vla_rl.core.config import ConfigError
from vla_rl.core.registry import BACKENDS, METHODS, REWARDS, UnknownNameError
from vla_rl.core.reward import RewardModel
from vla_rl.methods.on_policy import PolicyGradientConfig


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_has_a_train_function_and_a_settings_field(name):
    assert callable(METHODS.get(name))
    cfg = FinetuneConfig(method=name)
    settings = method_config(cfg)
    assert dataclasses.is_dataclass(settings)
    assert settings is getattr(cfg, name.replace("-", "_"))


def test_an_unknown_method_names_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid choices: residual, ppo, grpo, srpo"):
        method_config(FinetuneConfig(method="dpo"))


@pytest.mark.parametrize("name", REWARDS.names())
def test_every_reward_builds_from_default_settings(name, tmp_path):
    from test_policy_gradient import tiny_flow

    from vla_rl.rewards.pairwise_critic import PairwiseProgressCritic

    pg = PolicyGradientConfig(reward=(name,))
    pg.progress.encoder = "policy"  # no weights to load; the reward's own logic is the same
    # the one setting without a default: the critic reward's critic directory
    pg.critic = str(PairwiseProgressCritic(["a task"]).save(tmp_path / "critic"))
    model = REWARDS.get(name)(pg, tiny_flow())
    assert isinstance(model, RewardModel) and model.frame_size >= 0


@pytest.mark.parametrize("name", BACKENDS.names())
def test_every_backend_hosts_the_toy_benchmark(name):
    from toy_benchmark import ToyBenchmark

    from vla_rl.core.benchmark import EnvConfig

    env = ToyBenchmark().make_env([], EnvConfig(num_envs=2, num_workers=0, backend=name))
    try:
        assert env.num_envs == 2
    finally:
        env.close()


def test_method_config_refuses_a_method_without_settings(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "nosettings", lambda cfg, mcfg: {})
    with pytest.raises(ConfigError, match="no settings field"):
        method_config(FinetuneConfig(method="nosettings"))
