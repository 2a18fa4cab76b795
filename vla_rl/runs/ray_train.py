"""The data-parallel learner launched by Ray Train (`--ray-train.workers N`) instead of torchrun.

`ray.train.torch.TorchTrainer` starts N Ray actors, joins them in one torch.distributed process
group (gloo, or NCCL with a GPU each) and sets RANK, WORLD_SIZE and LOCAL_RANK as torchrun
would; each actor then runs the same `finetune` as a torchrun rank (vla_rl.rl.distributed
keeps the group Ray Train made), so the update, the one writer and the checkpoints are
torchrun's, on whatever nodes the Ray cluster has. The driver (`vla-rl finetune` itself) only
places the workers, waits, and reads rank 0's results.json.

Where things are on a cluster: the run directory must be on a filesystem every node sees (rank
0 writes it wherever Ray placed it; the driver reads it). Each rank's rollout workers are its
own processes beside it (--<method>.rollout-workers), outside Ray's CPU accounting; ask for
their CPUs with --ray-train.cpus-per-worker. Ray Train's own storage (it writes nothing this
run needs) goes beside the run directory and is removed when the run succeeds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla_rl.core.config import ConfigError

# The process group's timeout: rank 0 evaluates alone while the others wait in a collective
# (the torchrun path's, vla_rl.methods.on_policy.train_on_policy).
GROUP_TIMEOUT_S = 24 * 3600


@dataclass
class RayTrainConfig:
    """Launch on Ray Train (pip install -e '.[ray]'): the on-policy update data-parallel over
    Ray actors, on the cluster at --env.ray-address or a Ray started here."""

    workers: int = 0
    """Ranks to start (TorchTrainer's num_workers); 0: no Ray Train, this process runs the job
    (or the ranks torchrun started)."""
    cpus_per_worker: float = 1.0
    """CPUs each rank asks Ray for; its rollout workers run beside it outside Ray's count, so
    on a cluster count them in (1 + --<method>.rollout-workers)."""
    use_gpu: bool = False
    """One GPU per rank and NCCL (not run here: no GPU on the reference machine); without, gloo
    on the CPU."""


def check_ray_train_config(rt: RayTrainConfig, method: str, data_parallel: bool) -> None:
    """`data_parallel`: whether the method's update runs over ranks (ppo, grpo, srpo)."""
    if rt.workers < 0 or rt.cpus_per_worker <= 0:
        raise ConfigError("--ray-train.workers must be >= 0 and --ray-train.cpus-per-worker > 0")
    if rt.workers and not data_parallel:
        raise ConfigError(
            f"--ray-train.workers: --method {method} runs in one process; the data-parallel "
            "update is ppo's, grpo's and srpo's"
        )


def inside_ray_train() -> bool:
    """Whether this process is one of Ray Train's ranks (its process group is up)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def launch(cfg: Any, run: Callable[[Any], Any], run_dir: Path) -> dict:
    """Run `run(cfg)` on cfg.ray_train.workers Ray Train ranks writing `run_dir` (resolved to
    an absolute path, which every rank is given); rank 0's results. `run` must be importable
    by the workers (a module-level function)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from vla_rl.rollout.ray_backend import connect

    rt = cfg.ray_train
    run_dir = run_dir.resolve()
    rank_cfg = dataclasses.replace(cfg, output_dir=str(run_dir))
    # the ranks' output (rank 0's progress bar and errors) is the run's: show it here
    connect(ray, cfg.env.ray_address, rt.workers * rt.cpus_per_worker, log_to_driver=True)
    storage = run_dir.parent / f".{run_dir.name}.ray_train"
    trainer = TorchTrainer(
        _rank_loop,
        train_loop_config={"cfg": rank_cfg, "run": run, "cwd": os.getcwd()},
        scaling_config=ScalingConfig(num_workers=rt.workers, use_gpu=rt.use_gpu,
                                     resources_per_worker={"CPU": rt.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if rt.use_gpu else "gloo",
                                 timeout_s=GROUP_TIMEOUT_S),
        run_config=RunConfig(name="ranks", storage_path=str(storage)),
    )  # fmt: skip
    trainer.fit()  # raises if a rank failed, with its traceback
    shutil.rmtree(storage, ignore_errors=True)
    return json.loads((run_dir / "results.json").read_text())


def _rank_loop(config: dict) -> None:
    """One Ray Train rank: the command's own job, in the process group Ray Train made. Ray Train
    starts each rank in a trial directory of its own, where a relative path of the command line
    (--base-path, --<method>.critic) would name nothing: the rank moves to the driver's working
    directory where it exists (on its machine, or a shared filesystem)."""
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    config["run"](config["cfg"])
