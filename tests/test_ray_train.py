"""`--ray-train.workers 2`: the data-parallel learner launched by Ray Train's TorchTrainer
(vla_rl/runs/ray_train.py) trains as one process does, as torchrun's ranks do
(tests/test_distributed.py), and writes one run directory from the driver's command. Its own
file: it starts and stops a Ray of its own."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import pytest
from test_distributed import _finetune_config, assert_trained_like_one_process

needs_ray_train = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.train") is None,
    reason="Ray Train not installed: pip install -e '.[ray]'",
)


@pytest.fixture
def own_ray():
    import ray

    if ray.is_initialized():  # another file's Ray: this test starts the one `connect` makes
        ray.shutdown()
    yield
    ray.shutdown()


@needs_ray_train
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated", "fsdp"])
def test_two_ray_train_ranks_finetune_like_one_process(tmp_path, own_ray, fsdp, monkeypatch):
    """The base is a checkpoint directory named relative to the driver's working directory,
    as a user types it: the ranks (which Ray Train starts elsewhere) must find it."""
    import torch.distributed as dist

    import vla_rl
    from vla_rl.commands.finetune import finetune
    from vla_rl.runs.ray_train import RayTrainConfig

    monkeypatch.chdir(tmp_path)
    shutil.copytree(Path(vla_rl.__file__).parent / "checkpoints" / "metaworld-flow", "base")
    cfg = _finetune_config(str(tmp_path / "ranks"), fsdp)
    cfg = dataclasses.replace(cfg, base="base",
                              ray_train=RayTrainConfig(workers=2, cpus_per_worker=1.0))  # fmt: skip
    res = finetune(cfg)
    assert not dist.is_initialized()  # the driver joined no process group: the ranks did
    single = finetune(_finetune_config(str(tmp_path / "single")))

    run = tmp_path / "ranks"
    assert res["policy_dir"] == str(run / "policy")
    assert res["config"]["ray_train"]["workers"] == 2  # the launch is in the resolved config
    assert sorted(p.name for p in run.iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".ray_train")] == []
    assert res["config"]["base"] == "base"
    for key in ("env_steps", "rl_steps", "train_episodes"):
        assert res[key] == single[key], key
    assert_trained_like_one_process(run / "policy", single["policy_dir"])


def test_ray_train_is_refused_for_a_method_without_a_data_parallel_update(tmp_path):
    from vla_rl.commands.finetune import FinetuneConfig, finetune
    from vla_rl.core.config import ConfigError
    from vla_rl.runs.ray_train import RayTrainConfig

    cfg = FinetuneConfig(method="residual", output_dir=str(tmp_path / "run"),
                         ray_train=RayTrainConfig(workers=2))  # fmt: skip
    with pytest.raises(ConfigError, match="--method residual runs in one process"):
        finetune(cfg)
    assert not (tmp_path / "run").exists()
