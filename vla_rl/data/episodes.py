"""Demonstration episodes, whatever their source: a LeRobot v3.0 directory or a LIBERO .hdf5 file
(`load_episodes`), or rollouts of the engine (`records_to_episodes`); and the (frame, chunk)
pairs behaviour cloning and the TACO verifier train on (`ChunkData`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl.core.benchmark import Benchmark
from vla_rl.core.trajectories import EpisodeRecord
from vla_rl.data.lerobot_dataset import Episode, LeRobotDataset


def records_to_episodes(records: list[EpisodeRecord], benchmark: Benchmark) -> list[Episode]:
    """One dataset frame per env step: the observation and the action taken from it."""
    episodes = []
    for r in records:
        state = np.concatenate([o["state"] for o in r.observations]).astype(np.float32)
        action = np.concatenate([s.actions[:, 0].numpy() for s in r.samples]).astype(np.float32)
        images = {}
        if "image" in r.observations[0]:
            stacked = np.concatenate([o["image"] for o in r.observations])  # (T, Ncam, H, W, 3)
            images = {cam: stacked[:, i] for i, cam in enumerate(benchmark.camera_names)}
        reward = np.asarray(r.rewards, dtype=np.float32)
        extras = {}
        if "sim_state" in r.observations[0]:  # LIBERO: frames can be rendered from it later
            sim = np.concatenate([o["sim_state"] for o in r.observations]).astype(np.float32)
            extras["observation.sim_state"] = sim
        episodes.append(
            Episode(r.spec.task.instruction, state, action, reward, r.success, images, extras)
        )
    return episodes


def load_episodes(path: str | Path, images: bool) -> list[Episode]:
    path = Path(path)
    if path.suffix in (".hdf5", ".h5"):
        from vla_rl.data.libero_hdf5 import read_libero_hdf5

        return read_libero_hdf5(path, load_images=images)
    dataset = LeRobotDataset(path)
    return [dataset.episode(i, load_images=images) for i in range(len(dataset))]


@dataclass
class ChunkData:
    """Every (frame, following chunk) pair of the demonstrations: chunks past an episode's end
    repeat its last action (the robot holds still), as Diffusion Policy pads."""

    state: np.ndarray  # (N, Ds)
    instruction: list[str]  # N
    actions: np.ndarray  # (N, Ta, Da)
    image: np.ndarray | None  # (N, Ncam, H, W, 3)

    @classmethod
    def build(cls, episodes: list[Episode], chunk_size: int, images: bool) -> ChunkData:
        states, instructions, chunks, frames = [], [], [], []
        for ep in episodes:
            t = ep.length
            idx = np.minimum(np.arange(t)[:, None] + np.arange(chunk_size)[None], t - 1)
            chunks.append(ep.action[idx])
            states.append(ep.state)
            instructions += [ep.task] * t
            if images:
                frames.append(np.stack([ep.images[c] for c in sorted(ep.images)], 1))
        return cls(
            np.concatenate(states).astype(np.float32),
            instructions,
            np.concatenate(chunks).astype(np.float32),
            np.concatenate(frames) if images else None,
        )

    def batch(self, idx: np.ndarray) -> tuple[dict, torch.Tensor]:
        obs: dict[str, Any] = {
            "state": self.state[idx],
            "instruction": [self.instruction[i] for i in idx],
            "task": [""] * len(idx),
        }
        if self.image is not None:
            obs["image"] = self.image[idx]
        return obs, torch.as_tensor(self.actions[idx])
