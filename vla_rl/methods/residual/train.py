"""`--method residual`: residual off-policy RL on a frozen base policy (ResFiT, arXiv 2509.19301).

Reads top to bottom: build (base, residual policy, learner, buffers) -> demonstrations -> loop
(act, update while the env steps, store finished episodes, evaluate, checkpoint) -> final
evaluation beside the base. The first `learning_starts` env steps act with base + uniform noise
to fill the buffer; the learner (`learner.py`) holds the update math and schedule.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl.core.benchmark import random_episode
from vla_rl.core.config import to_dict
from vla_rl.methods.residual import inflight
from vla_rl.methods.residual.config import ResidualConfig, check_residual_config
from vla_rl.methods.residual.learner import Residual
from vla_rl.methods.residual.policy import ResidualPolicy
from vla_rl.methods.residual.shaping import Shaping
from vla_rl.methods.residual.transitions import (
    SlotEpisodes,
    demo_buffer,
    load_demos,
    transition_fields,
)
from vla_rl.rl.replay_buffer import ReplayBuffer
from vla_rl.runs.checkpoint import save_checkpoint
from vla_rl.runs.metrics import MetricsLogger
from vla_rl.runs.run import (
    EvalSchedule,
    RunConfig,
    RunSetup,
    finish_run,
    record_eval_point,
    setup_run,
    training_bar,
    training_identity,
)

BUFFER_FILE = "online_buffer.safetensors"  # in the checkpoint, beside policy/


def train(cfg: RunConfig, rcfg: ResidualConfig) -> dict[str, Any]:
    check_residual_config(rcfg)
    setup = setup_run(cfg)
    benchmark, names, tasks, run = setup.benchmark, setup.names, setup.train_tasks, setup.run
    shaping = Shaping.build(rcfg.reward, rcfg.critic, rcfg.shaping, rcfg.gamma)
    frame_size = 0 if shaping is None else shaping.frame_size  # rendered per env step, or 0
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    # the demonstrations before any env of ours exists
    demo_episodes, demo_frames = load_demos(cfg, rcfg, benchmark, tasks, frame_size)
    venv = benchmark.make_env(
        tasks, dataclasses.replace(cfg.env, video_size=frame_size) if frame_size else cfg.env
    )
    space = venv.single_action_space
    policy = ResidualPolicy(
        setup.base, benchmark.state_dim, benchmark.action_dim, names,
        action_low=space.low.tolist(), action_high=space.high.tolist(), hidden=rcfg.hidden,
        action_scale=rcfg.action_scale, exploration_std=rcfg.exploration_std,
        base_deterministic=rcfg.base_deterministic,
    )  # fmt: skip
    venv = policy.wrap_env(venv)
    agent = Residual(policy, rcfg)
    fields = transition_fields(benchmark.state_dim, benchmark.action_dim)
    online = ReplayBuffer(rcfg.buffer_size, fields)
    demos = demo_buffer(demo_episodes, policy, tasks, fields, rcfg, shaping, demo_frames)
    state: dict[str, Any] = {"env_steps": 0, "updates": 0, "episodes": 0, "wall_s": 0.0,
                             "curve": [], "stats_fitted": False}  # fmt: skip
    if setup.saved is not None:
        state = restore(setup, agent, online, rng)
    setup.claim()  # every check has passed: from here on the run writes
    logger = MetricsLogger(run, cfg.logger, to_dict(cfg))

    slots = list(range(venv.num_envs))
    store = SlotEpisodes(policy, venv.num_envs, rcfg.n_step, rcfg.gamma, shaping)

    def begin(new: list[int]) -> None:
        """Reset slots `new` into random train episodes (rendering their first frame when the
        reward scores frames)."""
        record = [True] * len(new) if frame_size else None
        first = venv.reset_slots(new, [random_episode(tasks, rng) for _ in new], record)
        store.start(new, first)

    owed = state.pop("owed", 0.0)  # critic updates due but not yet run (utd per env step)
    metrics: dict[str, Any] = state.pop("last_metrics", {})  # the last update's (tensors)
    if "inflight" in state:  # resumed: continue the episodes the checkpoint caught in progress
        obs, failed = inflight.resume(venv, store, setup.saved_tree["inflight"],
                                      state.pop("inflight"), tasks, bool(frame_size))  # fmt: skip
        if failed:  # their env was lost, or this is not the simulator that ran them
            print(f"resume: {len(failed)} episode(s) in progress did not replay exactly; "
                  "they start afresh", file=sys.stderr)  # fmt: skip
            store.drop(failed)
            begin(failed)
            obs = venv.observe(slots)
    else:
        begin(slots)
        obs = venv.observe(slots)
    if not state["curve"]:  # the residual starts at exactly 0: this point is the base's success
        record_eval_point(policy, setup, cfg, state, logger)
    bar = training_bar(cfg, setup.run, state, f"residual {','.join(names)}", smoothing=0.05,
                       checkpoints=f"every {rcfg.save_every} env steps (episodes in progress "
                       "included)")  # fmt: skip
    evals = EvalSchedule(cfg.eval_every, state["env_steps"])
    last_save = state["env_steps"]
    try:
        while state["env_steps"] < cfg.env_steps:
            start = time.perf_counter()
            warm = state["env_steps"] < rcfg.learning_starts
            base_unit, action_unit = act(policy, obs, warm, rcfg)
            env_action = policy.from_unit(action_unit).numpy()
            ticket = venv.step_async(slots, env_action[:, None])
            if not warm and len(online) > 0:  # the learner and the simulator overlap
                owed += rcfg.utd * len(slots)
                owed, metrics = agent.learn(online, demos, rng, state, owed)
            results = venv.step_wait(ticket)
            lost = [i for i, r in enumerate(results) if r.lost]
            if lost:  # their worker died or hung and was replaced: drop them, start new ones
                store.drop(lost)
                begin(lost)
                state["episodes_lost"] = state.get("episodes_lost", 0) + len(lost)
                logger.log(state["env_steps"], {"train/episodes_lost": state["episodes_lost"]})
            next_obs = venv.observe(slots)  # includes the base action at the next state
            finished = store.record(obs, base_unit, action_unit, env_action, results, next_obs)
            for episode in finished:
                online.add(episode.transitions)
            steps = sum(r.steps for r in results)
            state["env_steps"] += steps
            if finished:
                ended = [episode.slot for episode in finished]
                begin(ended)
                next_obs = venv.observe(slots)
                state["episodes"] += len(ended)
                success = float(np.mean([episode.success for episode in finished]))
                logger.log(state["env_steps"], {
                    "train/episode_success": success, "train/episodes": state["episodes"],
                    **{f"train/{k}": v for k, v in (shaping.metrics if shaping else {}).items()},
                })  # fmt: skip
            obs = next_obs
            state["wall_s"] += time.perf_counter() - start
            bar.update(steps)

            if metrics and state["env_steps"] // 1000 != (state["env_steps"] - len(slots)) // 1000:
                logger.log(state["env_steps"], {f"train/{k}": float(v) for k, v in metrics.items()})
                bar.set_postfix(q=f"{float(metrics['q_target']):.2f}", ep=state["episodes"],
                                eval=f"{state['curve'][-1]['success_rate']:.2f}")  # fmt: skip
            done = state["env_steps"] >= cfg.env_steps
            if evals.due(state["env_steps"], done):
                record_eval_point(policy, setup, cfg, state, logger)
            if state["env_steps"] - last_save >= rcfg.save_every or done:
                last_save = state["env_steps"]
                episodes, specs = inflight.snapshot(venv, store, obs)
                saved = dict(state, numpy_rng=rng.bit_generator.state, owed=owed,
                             last_metrics={k: float(v) for k, v in metrics.items()}, inflight=specs,
                             identity=training_identity(cfg))  # fmt: skip
                checkpoint(run, agent, online, saved, episodes)
    finally:
        bar.close()
        venv.close()
        logger.close()

    extra = {"method": "residual", "env_steps": state["env_steps"], "updates": state["updates"],
             "train_episodes": state["episodes"], "train_wall_s": round(state["wall_s"], 1),
             "demo_transitions": 0 if demos is None else len(demos)}  # fmt: skip
    title = f"residual RL on {cfg.base}: {', '.join(names)}"
    return finish_run(policy, setup, cfg, state, title, extra)


def restore(
    setup: RunSetup, agent: Residual, online: ReplayBuffer, rng: np.random.Generator
) -> dict[str, Any]:
    """Continue from the checkpoint `setup_run` loaded: residual weights, learner, torch and numpy
    RNGs, online buffer; returns the loop's state (counters, curve)."""
    directory, tree = setup.checkpoint, setup.saved_tree
    saved = ResidualPolicy.from_pretrained(directory / "policy")
    agent.policy.load_state_dict(saved.state_dict())
    agent.load_state_dict(tree["learner"])
    torch.random.set_rng_state(tree["torch_rng"])
    online.load(directory / BUFFER_FILE)
    state = setup.saved
    rng.bit_generator.state = state.pop("numpy_rng")
    return state


def act(
    policy: ResidualPolicy, obs: dict, warm: bool, rcfg: ResidualConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(base action, executed action), normalised, (B, Da): base + residual + Gaussian noise, or
    base + uniform noise during the warm-up."""
    state = torch.as_tensor(obs["state"], dtype=torch.float32)
    base_unit = policy.to_unit(torch.as_tensor(obs["base_action"], dtype=torch.float32))
    with torch.no_grad():
        if warm:
            residual = (torch.rand_like(base_unit) * 2 - 1) * rcfg.warmup_noise
        else:
            feat = policy.features(state, policy.task_ids(obs["task"]), base_unit)
            residual = policy.residual(feat) + rcfg.exploration_std * torch.randn_like(base_unit)
    return base_unit, (base_unit + residual).clamp(-1, 1)


def checkpoint(
    run: Path, agent: Residual, online: ReplayBuffer, state: dict, episodes: list[dict]
) -> None:
    """The learner's tensors, the torch RNG and the episodes in progress (`inflight.py`),
    state.json (counters, curve, numpy RNG), policy/ and the online buffer, published in one
    atomic rename (`vla_rl.runs.checkpoint`)."""
    tree = {"learner": agent.state_dict(), "torch_rng": torch.random.get_rng_state(),
            "inflight": episodes}  # fmt: skip
    save_checkpoint(run / "checkpoint", tree, state, partial(write_extra, agent.policy, online))


def write_extra(policy: ResidualPolicy, online: ReplayBuffer, directory: Path) -> None:
    """What the checkpoint holds beside the tensor tree: policy/ (loadable) and the buffer."""
    policy.save_pretrained(directory / "policy")
    online.save(directory / BUFFER_FILE)
