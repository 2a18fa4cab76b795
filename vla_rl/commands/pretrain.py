"""`vla-rl pretrain`: behaviour cloning of a native policy family on a demonstration dataset.

Reads top to bottom: load demonstrations -> build chunk samples -> build (or resume) the policy
-> loop: minibatch BC loss, periodic eval on the eval split, atomic checkpoints -> final policy,
results JSON and learning-curve plot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl.core.benchmark import EnvConfig, apply_policy_observation, get_benchmark
from vla_rl.core.config import ConfigError, parse_cli, to_dict
from vla_rl.core.registry import check_choice
from vla_rl.data.episodes import ChunkData, load_episodes
from vla_rl.evaluation.protocol import curve_point, evaluate
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance
from vla_rl.runs.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint

FAMILIES = ("flow", "tokenvla", "diffusion")
DEFAULT_CHUNK = {"flow": 8, "tokenvla": 4, "diffusion": 8}  # see each family's constructor


def dataset_benchmark(path: str) -> str | None:
    """The benchmark a LeRobot dataset written by `vla-rl collect` names (None otherwise)."""
    import json

    info = Path(path) / "meta" / "info.json"
    if not info.is_file():
        return None
    name = json.loads(info.read_text()).get("vla_rl", {}).get("benchmark")
    return name if isinstance(name, str) else None


@dataclass
class PretrainConfig:
    """`vla-rl pretrain`: behaviour cloning on demonstrations, with periodic eval."""

    dataset: str = ""
    """A LeRobot v3.0 dataset directory (e.g. from `vla-rl collect`) or a LIBERO .hdf5 file."""
    policy: str = "flow"
    """Policy family to train: flow (flow matching), tokenvla (OpenVLA-style token actions) or
    diffusion (DDPM/DDIM)."""
    output_dir: str = "runs/pretrain/flow"
    """Run directory: policy/, checkpoint/, metrics.jsonl, tensorboard/, results.json, plot."""
    benchmark: str = ""
    """Benchmark whose eval split scores the policy during training. Empty: the one the
    dataset was collected on (its meta/info.json, written by `vla-rl collect`), else metaworld."""
    eval_tasks: tuple[str, ...] = ()
    """Tasks for the periodic eval; empty = the dataset's tasks."""
    eval_every: int = 1000
    """Training steps between evaluations (and at the end)."""
    eval_episodes: int = 10
    """Eval episodes per task at each periodic evaluation (the final one uses the same count)."""
    steps: int = 5000
    """Gradient steps."""
    batch_size: int = 256
    """Chunks per gradient step."""
    lr: float = 3e-4
    """Adam learning rate; 3e-4 is the usual Adam rate for small MLP BC policies."""
    grad_clip: float = 1.0
    """Gradient-norm clip, as diffusion-policy and lerobot trainers use."""
    chunk_size: int | None = None
    """Ta: actions per predicted chunk. None: the family's default (flow 8, tokenvla 4,
    diffusion 8; each constructor says why)."""
    hidden: int | None = None
    """Width of the policy's networks. None: the family's default (flow/diffusion 256 MLPs,
    tokenvla a 128-wide transformer)."""
    decoding: str = "autoregressive"
    """tokenvla only: autoregressive (OpenVLA) or parallel (OpenVLA-OFT style) action tokens."""
    images: bool = False
    """Train on the dataset's camera streams as well as the state (needs --env.images in eval)."""
    save_every: int = 1000
    """Steps between checkpoints (written atomically; --resume continues from the last)."""
    resume: bool = False
    """Continue from output_dir/checkpoint if it exists."""
    overwrite: bool = False
    """Replace what an existing output_dir holds (without it, or --resume, a directory that is
    not empty is refused)."""
    seed: int = 0
    logger: str = "tensorboard"
    """Metrics backend beside metrics.jsonl: tensorboard, wandb (offline) or none."""
    progress: bool = True
    env: EnvConfig = field(default_factory=lambda: EnvConfig(video_size=0))


def build_policy(cfg: PretrainConfig, data: ChunkData, instructions: list[str]):
    """A fresh policy of family cfg.policy with normalisation statistics from the data."""
    from vla_rl.policies.obs_encoder import InstructionTokenizer

    common: dict[str, Any] = dict(
        state_dim=data.state.shape[1],
        action_dim=data.actions.shape[2],
        vocab=InstructionTokenizer.train(instructions).vocab,
        chunk_size=data.actions.shape[1],
        num_cameras=0 if data.image is None else data.image.shape[1],
    )
    if cfg.hidden is not None:
        common["hidden"] = cfg.hidden
    if cfg.policy == "flow":
        from vla_rl.policies.flow_chunk import FlowChunkPolicy

        policy = FlowChunkPolicy(**common)
    elif cfg.policy == "diffusion":
        from vla_rl.policies.diffusion_chunk import DiffusionChunkPolicy

        policy = DiffusionChunkPolicy(**common)
    else:
        from vla_rl.policies.token_vla import TokenVLAPolicy

        words = max(len(InstructionTokenizer.words(i)) for i in instructions)
        policy = TokenVLAPolicy(**common, max_words=words, decoding=cfg.decoding)
    policy.normalizer.fit(data.state, data.actions[:, 0])
    return policy


def checkpoint(run: Path, policy, optimizer, state: dict) -> None:
    """The optimizer and torch RNG (tensor tree), state.json (step, curve, numpy RNG) and policy/,
    published in one atomic rename (`vla_rl.runs.checkpoint`)."""
    tree = {"optimizer": optimizer.state_dict(), "torch_rng": torch.random.get_rng_state()}
    save_checkpoint(run / "checkpoint", tree, state, partial(write_policy, policy))


def write_policy(policy, directory: Path) -> None:
    policy.save_pretrained(directory / "policy")


def pretrain(cfg: PretrainConfig) -> dict:
    from tqdm.auto import tqdm

    from vla_rl.core.policy import load_policy
    from vla_rl.runs.metrics import MetricsLogger
    from vla_rl.runs.plots import plot_learning_curve
    from vla_rl.runs.run import check_run_directory, claim_run_directory

    check_choice("policy family", cfg.policy, FAMILIES)
    if not cfg.dataset:
        raise ConfigError("--dataset is required (a LeRobot v3.0 directory or a LIBERO .hdf5)")
    check_choice("decoding", cfg.decoding, ("autoregressive", "parallel"))
    for name in ("steps", "batch_size", "eval_every", "save_every", "eval_episodes", "chunk_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.hidden is not None and cfg.hidden < 1:
        raise ConfigError(f"--hidden must be >= 1, got {cfg.hidden}")
    for name in ("lr", "grad_clip"):  # non-finite values are rejected by parse_cli already
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    if not cfg.benchmark:
        cfg.benchmark = dataset_benchmark(cfg.dataset) or "metaworld"
    benchmark = get_benchmark(cfg.benchmark, env=cfg.env)
    episodes = load_episodes(cfg.dataset, cfg.images)
    if not episodes:
        raise ValueError(f"{cfg.dataset} holds no episodes")
    data = ChunkData.build(episodes, cfg.chunk_size or DEFAULT_CHUNK[cfg.policy], cfg.images)
    instructions = sorted({ep.task for ep in episodes})
    by_instruction = {t.instruction: t.name for t in benchmark.tasks("eval")}
    eval_tasks = list(cfg.eval_tasks) or [
        by_instruction[i] for i in instructions if i in by_instruction
    ]
    if not eval_tasks:
        raise ValueError(
            f"none of the dataset's instructions is a {cfg.benchmark} task; pass --eval-tasks"
        )
    benchmark.resolve_task_names(eval_tasks)  # validate names before training starts

    run = Path(cfg.output_dir)
    check_run_directory(run, cfg.resume, cfg.overwrite)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    state: dict[str, Any] = {"step": 0, "wall_s": 0.0, "curve": []}
    resume_from = find_checkpoint(run / "checkpoint") if cfg.resume else None
    if resume_from is not None:  # an old pickled checkpoint raises CheckpointError (exit 2)
        tree, state = load_checkpoint(resume_from)
        policy = load_policy(str(resume_from / "policy"))
        rng.bit_generator.state = state.pop("numpy_rng")
    else:
        policy = build_policy(cfg, data, instructions)
    # A dataset of LIBERO's object state trains a policy that needs it in eval too.
    cfg.env = apply_policy_observation(benchmark, cfg.env, policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    if resume_from is not None:
        optimizer.load_state_dict(tree["optimizer"])
        torch.random.set_rng_state(tree["torch_rng"])

    claim_run_directory(run, cfg.overwrite)  # every check has passed: from here on it writes
    logger = MetricsLogger(run, cfg.logger, to_dict(cfg))

    def run_eval(step: int) -> dict:
        res = evaluate(
            policy,
            benchmark,
            task_names=eval_tasks,
            episodes_per_task=cfg.eval_episodes,
            env_cfg=cfg.env,
            seed=cfg.seed,
            progress=False,
        )
        logger.log(step, {"eval/success_rate": res["success_rate"]})
        return {"step": step, "wall_s": round(state["wall_s"], 1), **curve_point(res)}

    bar = tqdm(total=cfg.steps, initial=state["step"], desc=f"pretrain {cfg.policy}",
               unit="step", disable=not cfg.progress)  # fmt: skip
    policy.train()
    try:
        while state["step"] < cfg.steps:
            start = time.perf_counter()
            obs, actions = data.batch(rng.integers(len(data.state), size=cfg.batch_size))
            loss = policy.bc_loss(obs, actions)
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            optimizer.step()
            state["step"] += 1
            state["wall_s"] += time.perf_counter() - start
            step = state["step"]
            bar.update(1)
            if step % 50 == 0 or step == 1:
                logger.log(
                    step, {"train/bc_loss": loss.item(), "train/grad_norm": grad_norm.item()}
                )
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % cfg.eval_every == 0 or step == cfg.steps:
                policy.eval()
                state["curve"].append(run_eval(step))
                policy.train()
                bar.set_postfix(loss=f"{loss.item():.4f}",
                                success=f"{state['curve'][-1]['success_rate']:.2f}")  # fmt: skip
            if step % cfg.save_every == 0 or step == cfg.steps:
                saved = dict(state, numpy_rng=rng.bit_generator.state)
                checkpoint(run, policy, optimizer, saved)
    finally:
        bar.close()
        logger.close()

    policy.save_pretrained(run / "policy")
    final = state["curve"][-1]
    results = {
        "policy_dir": str(run / "policy"),
        "dataset": cfg.dataset,
        "demonstrations": len(episodes),
        "frames": int(len(data.state)),
        "steps": state["step"],
        "train_wall_s": round(state["wall_s"], 1),
        "final_eval": final,
        "curve": state["curve"],
        "config": to_dict(cfg),
        "provenance": provenance(),
    }
    atomic_write_json(run / "results.json", results)
    plot_learning_curve(
        state["curve"], run / "learning_curve.png",
        title=f"{cfg.policy} BC on {Path(cfg.dataset).name} ({len(episodes)} demos)",
    )  # fmt: skip
    return results


def main(args: list[str]) -> int:
    cfg = parse_cli(
        PretrainConfig, args, prog="vla-rl pretrain", description=PretrainConfig.__doc__
    )
    res = pretrain(cfg)
    final = res["final_eval"]
    lo, hi = final["ci95"]
    print(
        f"\n{res['demonstrations']} demos, {res['steps']} steps in {res['train_wall_s']:.0f} s; "
        f"eval success {final['success_rate']:.3f} [{lo:.3f}, {hi:.3f}]; "
        f"policy: {res['policy_dir']} (plot: {Path(cfg.output_dir) / 'learning_curve.png'})"
    )
    return 0
