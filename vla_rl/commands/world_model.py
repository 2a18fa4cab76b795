"""`vla-rl world-model train|eval`: an action-conditioned video world model with a reflector.

    vla-rl world-model train --dataset runs/datasets/mw3 --output-dir runs/wm
    vla-rl world-model eval --world-model runs/wm
    vla-rl finetune --benchmark worldmodel --env.world-model runs/wm ...

train reads top to bottom (as fit-critic): load the datasets' frames -> split episodes into
train and held-out by initial state (fit-critic's split) -> `WorldModelTrainer` (the model and
one training step, world_models/train.py) -> loop: step, periodic validation with the model
published to run/model, atomic checkpoints (exact --resume) -> train.json. The loop lives here
because the run directory, checkpoints and the split are this layer's (vla_rl.runs and the
commands; world_models, an adapter, imports nothing above vla_rl.data).

eval: world_models/evaluate.py (the measurements) on
the held-out episodes of the model's own datasets (or on other datasets, whole): open-loop
prediction per horizon vs copy-last-frame (MSE, PSNR, moving-pixel MSE), the action-shuffle
gap, the reflector's ROC-AUC on real and generated frames, the hallucinated-success rate, and
real | imagined videos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla_rl.core.config import ConfigError, parse_cli, to_dict

SUBCOMMANDS = ("train", "eval")


def train_world_model(cfg) -> dict[str, Any]:
    """`vla-rl world-model train` (cfg: WorldModelTrainConfig): the loop, see the docstring."""
    import time

    import numpy as np
    from tqdm.auto import tqdm

    from vla_rl.commands.fit_critic import initial_state_key, split_episodes
    from vla_rl.io.atomic import atomic_write_json
    from vla_rl.io.provenance import provenance
    from vla_rl.rewards.critic_quality import roc_auc
    from vla_rl.runs.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
    from vla_rl.runs.run import check_run_directory, claim_run_directory
    from vla_rl.world_models.data import load_episodes
    from vla_rl.world_models.train import WorldModelTrainer, check_config, identity, validate

    check_config(cfg)
    run = Path(cfg.output_dir)
    check_run_directory(run, cfg.resume, cfg.overwrite)
    episodes, meta = load_episodes(cfg.dataset, cfg.camera, cfg.model.image_size, initial_state_key)
    if len({e.start for e in episodes}) < 2:
        raise ConfigError(
            "--dataset holds a single initial state; a held-out split needs "
            "episodes from 2 or more resets"
        )
    train_idx, held_idx = split_episodes(episodes, cfg.held_out, cfg.seed)
    trainer = WorldModelTrainer(cfg, episodes, train_idx, held_idx, meta)
    state: dict[str, Any] = {
        "step": 0,
        "wall_s": 0.0,
        "cpu_s": 0.0,
        "losses": [],
        "validation": [],
        "identity": identity(cfg),
    }
    resume_from = find_checkpoint(run / "checkpoint") if cfg.resume else None
    if resume_from is not None:
        tree, saved = load_checkpoint(resume_from)
        if saved.get("identity") != state["identity"]:
            differ = sorted(
                k for k, v in state["identity"].items() if saved.get("identity", {}).get(k) != v
            )
            raise ConfigError(
                f"--resume: the checkpoint in {run} trained with other settings "
                f"({', '.join(differ)}); resume with the run's own settings, or start a new run"
            )
        state = saved
        trainer.restore(tree, state.pop("numpy_rng"), state["step"])

    claim_run_directory(run, cfg.overwrite)  # every check has passed: from here on it writes
    bar = tqdm(
        total=cfg.steps,
        initial=state["step"],
        desc="world-model",
        unit="step",
        disable=not cfg.progress,
    )
    try:
        while state["step"] < cfg.steps:
            wall, cpu = time.perf_counter(), time.process_time()
            losses = trainer.step()
            state["step"] += 1
            # CPU seconds beside wall seconds: on a shared machine the wall clock measures the
            # neighbours (torch's threads spin when they wait for a core)
            state["wall_s"] += time.perf_counter() - wall
            state["cpu_s"] += time.process_time() - cpu
            step = state["step"]
            bar.update(1)
            if step % cfg.log_every == 0 or step == 1:
                state["losses"].append({"step": step, **losses})
                bar.set_postfix(edm=f"{losses['edm']:.3f}", refl=f"{losses['reflector']:.3f}")
            if step % cfg.val_every == 0 or step == cfg.steps:
                point = validate(
                    trainer.model, trainer.held_bank, cfg, run, step, meta["fps"] or 20, roc_auc
                )
                state["validation"].append(point)
                trainer.publish(run / "model")
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_checkpoint(
                    run / "checkpoint", trainer.tree(), dict(state, numpy_rng=trainer.numpy_rng())
                )
    finally:
        bar.close()

    if not (run / "model").is_dir():  # a resumed run that had nothing left to do
        trainer.publish(run / "model")
    model = trainer.model
    steps_run = max(state["step"], 1)
    results = {
        "model_dir": str(run / "model"),
        "datasets": list(cfg.dataset),
        "cameras": meta["cameras"],
        "parameters": {
            "total": model.num_parameters(),
            "unet": model.num_parameters("unet"),
            "reflector": model.num_parameters("reflector"),
        },
        "episodes": {
            "train": len(train_idx),
            "held_out": len(held_idx),
            "frames_train": int(np.sum(trainer.train_bank.length)),
        },
        "held_out_episodes": [episodes[i].source for i in held_idx],
        "steps": state["step"],
        "train_wall_s": round(state["wall_s"], 1),
        "step_s": round(state["wall_s"] / steps_run, 4),
        "step_cpu_s": round(state["cpu_s"] / steps_run, 4),
        "losses": state["losses"],
        "validation": state["validation"],
        "config": to_dict(cfg),
        "provenance": provenance(),
    }
    atomic_write_json(run / "train.json", results)
    return results


@dataclass
class WorldModelEvalConfig:
    """`vla-rl world-model eval`: measure a world model on held-out real episodes."""

    world_model: str = ""
    """The world model: a `world-model train` run directory or its model/."""
    dataset: tuple[str, ...] = ()
    """Datasets to measure on. Empty: the model's own datasets, their held-out episodes only
    (episodes of any other dataset are all used)."""
    horizon: int = 8
    """Open-loop model steps (k env steps each) per rollout; 8 x 4 = 32 env steps, four
    chunks of a Ta = 8 policy."""
    starts_per_episode: int = 4
    """Rollout starts spread over each episode (its first frame included)."""
    episodes: int | None = None
    """Use only the first N held-out episodes (None: all)."""
    reflector_steps: int | None = None
    """Cap, in env steps, of the whole-episode replays the reflector is measured on (None:
    each episode's length)."""
    videos: int = 4
    """Rollouts shown real | imagined in eval/prediction.mp4 (0: none)."""
    output: str = ""
    """Results file. Empty: <world model's run directory>/eval/eval.json."""
    seed: int = 0
    """Seeds the sampling noise and the action shuffle."""
    device: str = "cpu"
    """Torch device."""


def check_eval_config(cfg: WorldModelEvalConfig) -> None:
    if not cfg.world_model:
        raise ConfigError("--world-model is required (a directory from `vla-rl world-model train`)")
    for name in ("horizon", "starts_per_episode"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.episodes is not None and cfg.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1 (or None), got {cfg.episodes}")
    if cfg.videos < 0:
        raise ConfigError(f"--videos must be >= 0, got {cfg.videos}")


def eval_episodes(cfg: WorldModelEvalConfig, model, config: dict[str, Any], start_key):
    """The episodes to measure on (held-out ones of the model's own datasets) as a FrameBank;
    ConfigError for an episode whose task the model was not trained on."""
    from vla_rl.world_models.data import FrameBank, load_episodes

    own = list(config.get("datasets", []))
    paths = list(cfg.dataset) or own
    camera = next(iter(config["env"]["cameras"].values()), "")
    episodes, _ = load_episodes(paths, camera, model.cfg.image_size, start_key)
    env = config["env"]
    held = {env["sources"][i] for t in env["tasks"] for i in t["eval_ids"]}
    trained = {env["sources"][i] for t in env["tasks"] for i in t["train_ids"]}
    chosen = [
        e
        for e in episodes
        if e.source in held or (e.source.rsplit("#", 1)[0] not in own and e.source not in trained)
    ]
    unknown = sorted({e.task for e in chosen} - set(model.cfg.tasks))
    if unknown:
        raise ConfigError(
            f"task {unknown[0]!r} of --dataset is not one the world model was "
            f"trained on; valid choices: {', '.join(model.cfg.tasks)}"
        )
    if cfg.episodes is not None:
        chosen = chosen[: cfg.episodes]
    if not chosen:
        raise ConfigError(f"no held-out episode to measure on in {', '.join(paths)}")
    labels = env.get("labels", {})
    return FrameBank(
        chosen, model.cfg, labels.get("positive_window", 2), labels.get("ignore_window", 8)
    )


def run_eval(cfg: WorldModelEvalConfig) -> dict[str, Any]:
    import torch

    from vla_rl.commands.fit_critic import initial_state_key
    from vla_rl.io.atomic import atomic_write_json, check_output_location
    from vla_rl.io.provenance import provenance
    from vla_rl.io.video import save_video
    from vla_rl.rewards.critic_quality import roc_auc
    from vla_rl.world_models.evaluate import comparison_video, prediction_report, reflector_report
    from vla_rl.world_models.video_model import load_world_model, world_model_directory

    check_eval_config(cfg)
    directory = world_model_directory(cfg.world_model)
    output = (
        Path(cfg.output)
        if cfg.output
        else ((directory.parent if directory.name == "model" else directory) / "eval" / "eval.json")
    )
    check_output_location(output, directory=False, flag="--output")
    torch.manual_seed(cfg.seed)
    model, config, _ = load_world_model(directory, cfg.device)
    bank = eval_episodes(cfg, model, config, initial_state_key)
    episodes = list(range(len(bank.episodes)))
    pred = prediction_report(
        model, bank, episodes, cfg.horizon, cfg.starts_per_episode, seed=cfg.seed
    )
    reflector = config["env"]["reflector"]
    refl = reflector_report(
        model,
        bank,
        episodes,
        reflector["threshold"],
        reflector["consecutive"],
        roc_auc,
        seed=cfg.seed,
        max_steps=cfg.reflector_steps,
    )
    results: dict[str, Any] = {
        "world_model": str(directory),
        "episodes": [e.source for e in bank.episodes],
        "prediction": pred["report"],
        "reflector": refl,
        "config": to_dict(cfg),
        "provenance": provenance(),
    }
    if cfg.videos:
        rows = list(range(min(cfg.videos, pred["rollout"]["frames"].shape[0])))
        video = output.parent / "prediction.mp4"
        fps = max(1, min((config["env"]["fps"] or 20) // model.cfg.frame_skip, 30))
        save_video(video, comparison_video(pred["rollout"], rows), fps=fps)
        results["video"] = str(video)
    atomic_write_json(output, results)
    results["output"] = str(output)
    return results


def fmt(values: list, digits: int = 4) -> str:
    return " ".join("-" if v is None else f"{v:.{digits}f}" for v in values)


def print_eval(res: dict[str, Any]) -> None:
    p, r = res["prediction"], res["reflector"]
    print(
        f"\n{len(res['episodes'])} held-out episodes, {p['rollouts']} open-loop rollouts; "
        f"per horizon (env steps {' '.join(map(str, p['horizon_env_steps']))}):"
    )
    for name in (
        "mse",
        "copy_last_mse",
        "moving_mse",
        "copy_last_moving_mse",
        "psnr",
        "copy_last_psnr",
        "action_shuffle_gap",
        "state_mse",
    ):
        if name in p:
            print(f"  {name:<22} {fmt(p[name], 2 if 'psnr' in name else 5)}")
    print(
        f"reflector ROC-AUC real {r['auc_real']}, generated {r['auc_generated']}; "
        f"hallucinated success {r['hallucinated_success_rate']} of {r['failed_episodes']} "
        f"failed, detected {r['detected_success_rate']} of {r['successful_episodes']} "
        f"successful; results: {res['output']}"
    )


def print_train(res: dict[str, Any], cfg) -> None:
    from vla_rl.world_models.train import mean_of

    last = res["validation"][-1] if res["validation"] else None
    print(
        f"\nworld model of {res['parameters']['total'] / 1e6:.2f} M parameters, "
        f"{res['steps']} steps in {res['train_wall_s']:.0f} s ({res['step_s']:.2f} s/step, "
        f"{res['step_cpu_s']:.2f} CPU s/step)"
    )
    if last is not None:
        print(
            f"held-out open loop (mean over {len(last['mse'])} horizons): MSE "
            f"{mean_of(last['mse'])} vs copy-last {mean_of(last['copy_last_mse'])}; moving "
            f"pixels {mean_of(last['moving_mse'])} vs {mean_of(last['copy_last_moving_mse'])};"
            f" reflector AUC (real) {last['reflector_auc_real']}"
        )
    print(
        f"model: {res['model_dir']} (--benchmark worldmodel --env.world-model "
        f"{res['model_dir']}); details: {Path(cfg.output_dir) / 'train.json'}"
    )


def usage() -> str:
    return (
        "usage: vla-rl world-model {train,eval} [options]   (vla-rl world-model train "
        "--help for its options)"
    )


def main(args: list[str]) -> int:
    from vla_rl.world_models.train import WorldModelTrainConfig

    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    sub, rest = args[0], args[1:]
    if sub not in SUBCOMMANDS:
        raise ConfigError(
            f"unknown world-model subcommand {sub!r}; valid choices: {', '.join(SUBCOMMANDS)}"
        )
    if sub == "train":
        cfg = parse_cli(
            WorldModelTrainConfig,
            rest,
            prog="vla-rl world-model train",
            description=WorldModelTrainConfig.__doc__,
        )
        print_train(train_world_model(cfg), cfg)
        return 0
    ecfg = parse_cli(
        WorldModelEvalConfig,
        rest,
        prog="vla-rl world-model eval",
        description=WorldModelEvalConfig.__doc__,
    )
    print_eval(run_eval(ecfg))
    return 0
