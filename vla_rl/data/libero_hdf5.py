"""Read LIBERO's original demonstration files (robomimic-style HDF5) into `Episode`s.

Layout of a LIBERO `<task>_demo.hdf5` (one file per task, 50 human demonstrations each):

    data                      attrs: problem_info = JSON with "language_instruction", env_args, ...
    data/demo_<i>/actions     (T, 7) OSC_POSE delta + gripper, in [-1, 1]
    data/demo_<i>/rewards     (T,)   1 where the goal holds
    data/demo_<i>/dones       (T,)   1 at the end
    data/demo_<i>/obs/ee_states        (T, 6) eef position + axis-angle orientation
    data/demo_<i>/obs/gripper_states   (T, 2) finger positions
    data/demo_<i>/obs/agentview_rgb    (T, H, W, 3) uint8, stored upside down
    data/demo_<i>/obs/eye_in_hand_rgb  (T, H, W, 3) uint8, stored upside down

The state built here is ee_states + gripper_states (8-D), the same as the `libero_*` benchmarks
give, and images are rotated by 180 degrees as the benchmarks rotate their camera frames, so a
policy trained on these files sees what it will see in the simulator. Needs h5py
(`pip install -e '.[libero]'`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from vla_rl.data.lerobot_dataset import Episode

CAMERAS = {"agentview": "agentview_rgb", "wrist": "eye_in_hand_rgb"}


def read_libero_hdf5(path: str | Path, load_images: bool = True) -> list[Episode]:
    """Every demonstration in one LIBERO HDF5 file, in demo index order."""
    try:
        import h5py
    except ImportError as err:
        raise ImportError("reading LIBERO HDF5 files needs h5py: pip install h5py") from err

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such LIBERO demonstration file: {path}")
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise ValueError(f"{path}: no 'data' group; not a LIBERO/robomimic demo file")
        data = f["data"]
        info = json.loads(data.attrs.get("problem_info", "{}"))
        instruction = info.get("language_instruction")
        if not instruction:  # older files: the instruction is the file name
            instruction = re.sub(r"_demo$", "", path.stem).replace("_", " ")
        names = sorted((k for k in data if k.startswith("demo_")), key=lambda k: int(k[5:]))
        episodes = []
        for name in names:
            demo = data[name]
            obs = demo["obs"]
            state = np.concatenate(
                [np.asarray(obs["ee_states"]), np.asarray(obs["gripper_states"])], axis=1
            ).astype(np.float32)
            rewards = np.asarray(demo["rewards"], dtype=np.float32)
            dones = np.asarray(demo["dones"])
            images = {}
            if load_images:
                for cam, key in CAMERAS.items():
                    if key in obs:
                        images[cam] = np.ascontiguousarray(np.asarray(obs[key])[:, ::-1, ::-1])
            episodes.append(
                Episode(
                    task=str(instruction),
                    state=state,
                    action=np.asarray(demo["actions"], dtype=np.float32),
                    reward=rewards,
                    success=bool(rewards.max(initial=0) > 0 or dones[-1]),
                    images=images,
                )
            )
    return episodes
