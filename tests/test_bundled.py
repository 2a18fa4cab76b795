"""The bundled base checkpoint loads by name and acts in its benchmark."""

import numpy as np
import pytest
import torch

from vla_rl.core.benchmark import EnvConfig, get_benchmark
from vla_rl.core.policy import load_policy


@pytest.mark.parametrize(
    ("name", "policy_type", "chunk"),
    [("metaworld-flow", "flow", 8), ("metaworld-tokenvla", "tokenvla", 4)],
)
def test_bundled_policy_loads_by_name_and_runs(name, policy_type, chunk):
    from vla_rl.evaluation.protocol import evaluate

    bench = get_benchmark("metaworld")
    policy = load_policy(name, bench)
    assert policy.policy_type == policy_type and policy.chunk_size == chunk
    obs = {"state": np.zeros((2, 39), np.float32), "instruction": ["reach the goal position"] * 2,
           "task": ["reach-v3"] * 2}  # fmt: skip
    with torch.no_grad():
        sample = policy.sample_actions(obs)
        torch.testing.assert_close(policy.log_prob(obs, sample), sample.log_prob, atol=1e-3, rtol=0)
    assert sample.actions.shape == (2, chunk, 4) and sample.actions.abs().max() <= 1.0 + 1e-6
    results = evaluate(policy, bench, task_names=["drawer-close-v3"], episodes_per_task=2,
                       env_cfg=EnvConfig(num_envs=2, num_workers=0), progress=False)  # fmt: skip
    assert results["num_episodes"] == 2


def test_bundled_checkpoint_refuses_other_benchmarks():
    class Other:
        name = "libero_spatial"

    with pytest.raises(ValueError, match="trained for 'metaworld'"):
        load_policy("metaworld-flow", Other())


def test_bundled_checkpoint_runs_in_a_world_model_of_its_benchmark():
    """`vla-rl eval --policy metaworld-flow --benchmark worldmodel`: a world model of
    Meta-World's tasks has Meta-World's spaces; one of LIBERO's does not."""

    class WorldModel:
        name = "worldmodel"
        source_benchmark = "metaworld"

    assert load_policy("metaworld-flow", WorldModel()) is not None
    WorldModel.source_benchmark = "libero_spatial"
    with pytest.raises(ValueError, match="trained for 'metaworld', not 'worldmodel'"):
        load_policy("metaworld-flow", WorldModel())
