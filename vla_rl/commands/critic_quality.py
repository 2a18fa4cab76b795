"""`vla-rl critic-quality --critic DIR --datasets D [...]`: how good a progress critic is as a
dense reward, on episodes it did not train on (../shared/reference/critics.md sections 3, 4.5).

Reads top to bottom: load the critic (a `vla-rl fit-critic` directory or a VLAC checkpoint) ->
the datasets' episodes (one camera), restricted to a fit's held-out episodes with `--fit` ->
`critic_quality` (VOC on successful episodes, success/failure ROC-AUC of final progress and
of done, the reversed / static / shuffled / wrong-instruction probes, each against its target)
-> the critic's cost (milliseconds per scored pair at batch 1 and 64, uncached) -> a JSON
file written atomically, and a plot of predicted progress next to the frames of a few
episodes. The simulator's success flag in the dataset is the truth here; the critic never saw
it as a label.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_rl.core.config import ConfigError, parse_cli, to_dict
from vla_rl.io.atomic import atomic_write_json
from vla_rl.io.provenance import provenance
from vla_rl.rewards.critic_quality import CriticEpisode, critic_quality, plot_progress
from vla_rl.rewards.progress_critic import MODES


@dataclass
class CriticQualityConfig:
    """`vla-rl critic-quality`: a progress critic's quality on held-out episodes."""

    critic: str = ""
    """The critic: a directory from `vla-rl fit-critic` (its critic/ folder) or a VLAC
    checkpoint."""
    datasets: tuple[str, ...] = ()
    """LeRobot v3.0 directories with camera images (`vla-rl collect --env.images`), successful
    and failed episodes; each episode's success flag is the truth the critic is judged by."""
    fit: str | None = None
    """A fit.json of `vla-rl fit-critic`: score only its held-out episodes (the others were
    trained on). None: every episode of the datasets (give held-out datasets then)."""
    camera: str = ""
    """Camera whose frames the critic reads. Empty: each dataset's first camera."""
    mode: str = "anchored"
    """Progress mode: anchored (delta from the first frame: the shaping potential) or chained
    (VLAC's value chain, for parity with its published VOC)."""
    other_instruction: str = ""
    """The wrong-instruction probe's instruction for every episode. Empty: each task gets the
    next task's instruction of the datasets (sorted, cyclic), or one never trained on when
    there is a single task."""
    plot_episodes: int = 4
    """Episodes in the progress plot (successes first, then failures); 0 draws no plot."""
    timing_pairs: int = 64
    """Pairs timed at each batch size (batch 1 and 64), cache off; 0 skips the timing."""
    output: str = "runs/critic_quality/quality.json"
    """Results JSON (written atomically); the plot goes beside it as progress.png."""
    seed: int = 0
    """Seeds the shuffled probe."""


def check_config(cfg: CriticQualityConfig) -> None:
    if not cfg.critic:
        raise ConfigError("--critic is required: a `vla-rl fit-critic` critic or a VLAC directory")
    if not cfg.datasets:
        raise ConfigError("--datasets is required (LeRobot v3.0 directories with camera images)")
    if cfg.mode not in MODES:
        raise ConfigError(f"--mode {cfg.mode!r} is not one of: {', '.join(MODES)}")
    if cfg.plot_episodes < 0 or cfg.timing_pairs < 0:
        raise ConfigError("--plot-episodes and --timing-pairs must be >= 0")
    if cfg.fit is not None and not Path(cfg.fit).is_file():
        raise FileNotFoundError(f"--fit {cfg.fit}: no such file (a fit-critic fit.json)")


def load_episodes(cfg: CriticQualityConfig) -> list:
    """The datasets' episodes (fit-critic's loader), only the fit's held-out ones with --fit."""
    from vla_rl.commands.fit_critic import FitCriticConfig, load_data

    episodes, _ = load_data(FitCriticConfig(datasets=cfg.datasets, camera=cfg.camera))
    if cfg.fit is None:
        return episodes
    held = set(json.loads(Path(cfg.fit).read_text()).get("held_out_episodes", []))
    kept = [e for e in episodes if e.source in held]
    if not kept:
        raise ValueError(
            f"--fit {cfg.fit}: none of its held-out episodes is in --datasets "
            f"({', '.join(cfg.datasets)}); pass the datasets the critic was fitted on"
        )
    return kept


def pair_milliseconds(critic, frames: np.ndarray, instruction: str, pairs: int) -> dict:
    """Milliseconds per scored pair at batch 1 and 64 (cache off, the critic's own batching
    restored after), timed on `pairs` pairs of `frames` (T, H, W, 3)."""
    batch, cache = critic.batch_size, critic.cache_size
    critic.cache_size = 0
    critic.clear_cache()
    a = frames[np.arange(pairs) % (len(frames) - 1)]
    b = frames[np.arange(pairs) % (len(frames) - 1) + 1]
    out = {}
    try:
        for size in (1, 64):
            critic.batch_size = size
            critic.delta(a[:size], b[:size], instruction)  # warm-up (allocations, threads)
            start = time.perf_counter()
            critic.delta(a, b, instruction)
            out[f"batch_{size}"] = round(1000 * (time.perf_counter() - start) / pairs, 3)
    finally:
        critic.batch_size, critic.cache_size = batch, cache
        critic.clear_cache()
    return out


def other_instructions(cfg: CriticQualityConfig, instructions: list[str]) -> dict[str, str]:
    from vla_rl.commands.fit_critic import other_instructions as next_task

    if cfg.other_instruction:
        return {s: cfg.other_instruction for s in instructions}
    return next_task(instructions)


def run_quality(cfg: CriticQualityConfig) -> dict:
    from vla_rl.rewards.critic_reward import load_critic

    check_config(cfg)
    critic = load_critic(cfg.critic, flag="--critic")
    episodes = load_episodes(cfg)
    scored = [CriticEpisode(e.frames, e.instruction, e.success) for e in episodes]
    instructions = sorted({e.instruction for e in episodes})
    knows = getattr(critic, "knows", None)
    unknown = [s for s in instructions if knows is not None and not knows(s)]
    if unknown:  # a warning, not an error: the number is still what the critic does there
        print(f"warning: the critic never saw {len(unknown)} instruction(s), e.g. {unknown[0]!r}")
    start = time.perf_counter()
    quality = critic_quality(critic, scored, other_instructions(cfg, instructions), cfg.mode,
                             cfg.seed)  # fmt: skip
    wall = time.perf_counter() - start
    first = next(e for e in scored if len(e.frames) >= 2)
    timing = (pair_milliseconds(critic, first.frames, first.instruction, cfg.timing_pairs)
              if cfg.timing_pairs else {})  # fmt: skip
    out = Path(cfg.output)
    results = {
        "critic": cfg.critic,
        "datasets": list(cfg.datasets),
        "episodes_scored": [e.source for e in episodes],
        "unknown_instructions": unknown,
        "quality": quality,
        "milliseconds_per_pair": timing,
        "scoring_wall_s": round(wall, 1),
        "config": to_dict(cfg),
        "provenance": provenance(),
    }
    if cfg.plot_episodes:
        successes = [e for e in scored if e.success]
        failures = [e for e in scored if not e.success]
        n_failed = min(len(failures), cfg.plot_episodes // 2)
        picked = successes[: cfg.plot_episodes - n_failed] + failures[:n_failed]
        out.parent.mkdir(parents=True, exist_ok=True)
        plot_progress(critic, picked, out.parent / "progress.png", mode=cfg.mode)
        results["plot"] = str(out.parent / "progress.png")
    atomic_write_json(out, results)
    return results


def main(args: list[str]) -> int:
    cfg = parse_cli(CriticQualityConfig, args, prog="vla-rl critic-quality",
                    description=CriticQualityConfig.__doc__)  # fmt: skip
    res = run_quality(cfg)
    q = res["quality"]

    def show(x) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    print(
        f"{q['episodes']['successful']} successful, {q['episodes']['failed']} failed episodes: "
        f"VOC {show(q['voc']['mean'])}, AUC final progress "
        f"{show(q['auc_final_progress']['value'])}, AUC done {show(q['auc_done']['value'])}, "
        f"reversed mean delta {show(q['probes']['reversed']['mean_delta'])}, static "
        f"|delta| {show(q['probes']['static']['mean_abs_delta'])}; every target met: "
        f"{q['passes']}; {res['milliseconds_per_pair']} ms/pair -> {cfg.output}"
    )
    return 0
