"""`vla-rl render-dataset`: turn a state-only LIBERO dataset into an image dataset, rendering
both cameras from the simulator states it recorded (`observation.sim_state`), without running
the policy again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vla_rl.core.benchmark import EnvConfig
from vla_rl.core.config import ConfigError, parse_cli


@dataclass
class RenderDatasetConfig:
    """`vla-rl render-dataset`: camera frames for a dataset from its recorded simulator states."""

    dataset: str = ""
    """A LeRobot dataset written by `vla-rl collect` on a LIBERO suite (it records the
    simulator state of every frame as observation.sim_state)."""
    output: str = ""
    """The image dataset to write (replaced atomically if it exists): the same frames, states,
    actions and rewards, plus the suite's cameras."""
    progress: bool = True
    """Show a progress bar (episodes)."""
    env: EnvConfig = field(default_factory=lambda: EnvConfig(images=True, video_size=0))
    """The cameras' settings (--env.image-size, --env.no-fast-render); images are always on."""


def render_dataset(cfg: RenderDatasetConfig) -> dict:
    import dataclasses

    from vla_rl.core.benchmark import get_benchmark
    from vla_rl.data.lerobot_dataset import Episode, LeRobotDataset, write_dataset
    from vla_rl.io.atomic import check_output_location

    if not cfg.dataset or not cfg.output:
        raise ConfigError("--dataset and --output are both required")
    check_output_location(cfg.output, directory=True, flag="--output")
    source = LeRobotDataset(cfg.dataset)
    if "observation.sim_state" not in source.features:
        raise ConfigError(
            f"--dataset {cfg.dataset}: no observation.sim_state feature (collect it on a LIBERO "
            "suite with this version of vla-rl)"
        )
    meta = source.info.get("vla_rl", {})
    benchmark = get_benchmark(meta.get("benchmark", ""))
    by_instruction: dict[str, list] = {}
    for task in benchmark.tasks("train"):
        by_instruction.setdefault(task.instruction, []).append(task)
    env_cfg = dataclasses.replace(cfg.env, images=True, video_size=0, object_state=False)
    env = benchmark.env_factory(env_cfg)()
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(source), desc="render", unit="ep")
    episodes = []
    try:
        for i in range(len(source)):
            ep = source.episode(i, load_images=False)
            tasks = by_instruction.get(ep.task, [])
            if len(tasks) != 1:
                raise ValueError(
                    f"episode {i}: instruction {ep.task!r} names {len(tasks)} tasks of "
                    f"{benchmark.name}; expected one"
                )
            frames = env.render_states(tasks[0], ep.extras["observation.sim_state"])
            images = {cam: frames[:, k] for k, cam in enumerate(benchmark.camera_names)}
            episodes.append(
                Episode(ep.task, ep.state, ep.action, ep.reward, ep.success, images, ep.extras)
            )
            if bar is not None:
                bar.update(1)
    finally:
        env.close()
        if bar is not None:
            bar.close()
    info = dict(meta)
    info["rendered_from"] = {"dataset": str(Path(cfg.dataset)), "image_size": env_cfg.image_size,
                             "fast_render": env_cfg.fast_render}  # fmt: skip
    write_dataset(cfg.output, episodes, fps=source.fps, robot_type=source.info.get("robot_type",
                  benchmark.name), extra_info={"vla_rl": info})  # fmt: skip
    return {"episodes": len(episodes), "frames": sum(e.length for e in episodes)}


def main(args: list[str]) -> int:
    cfg = parse_cli(
        RenderDatasetConfig, args, prog="vla-rl render-dataset",
        description=RenderDatasetConfig.__doc__ or "",
    )  # fmt: skip
    out = render_dataset(cfg)
    print(f"\n{out['episodes']} episodes ({out['frames']} frames) rendered to {cfg.output}")
    return 0
