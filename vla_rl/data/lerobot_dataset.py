"""Demonstration datasets in the LeRobot v3.0 on-disk format, written and read with pyarrow.

The lerobot library cannot be installed beside this toolkit on Python 3.11 (its 3.11 release
pins an older CUDA torch and needs torchvision; see ../shared/reference/models.md), so the
format is implemented here from its published layout:

    meta/info.json                          codebase_version "v3.0", fps, features, path templates
    meta/stats.json                         per-feature mean / std / min / max / count
    meta/tasks.parquet                      task string -> task_index
    meta/episodes/chunk-000/file-000.parquet  one row per episode: length, tasks, frame range,
                                            file locations, video time ranges, per-episode stats
    data/chunk-000/file-000.parquet         one row per frame: observation.state, action,
                                            timestamp, frame_index, episode_index, index,
                                            task_index, next.reward, next.done, next.success
    videos/<key>/chunk-000/file-000.mp4     camera streams; episodes are concatenated and found
                                            through from_timestamp / to_timestamp

One data file holds all frames (datasets here are small); readers follow the path templates, so
datasets split over many files (as lerobot writes large ones) read the same way. Writing is
atomic: the dataset directory appears complete or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_rl.io.atomic import atomic_directory

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
CHUNKS_SIZE = 1000  # lerobot's default files per chunk folder
EXTRA_FEATURES = ("observation.sim_state",)  # per-frame features read into Episode.extras


@dataclass
class Episode:
    """One demonstration, time-major with T frames.

    state: (T, Ds) float32; action: (T, Da) float32, the action taken at each frame;
    images: camera name -> (T, H, W, 3) uint8; reward: (T,) reward after each action;
    success: whether the episode reached the goal; task: the language instruction;
    extras: more per-frame float32 features, feature name -> (T, D), e.g.
    "observation.sim_state" (LIBERO's flattened MuJoCo state, from which `vla-rl render-dataset`
    renders camera frames after the fact).
    """

    task: str
    state: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    success: bool
    images: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = len(self.state)
        if len(self.action) != t or len(self.reward) != t:
            raise ValueError(
                f"episode arrays disagree on T: state {len(self.state)}, "
                f"action {len(self.action)}, reward {len(self.reward)}"
            )
        for name, frames in self.images.items():
            if len(frames) != t:
                raise ValueError(f"camera {name!r} has {len(frames)} frames, expected {t}")
        for name, values in self.extras.items():
            if len(values) != t:
                raise ValueError(f"feature {name!r} has {len(values)} frames, expected {t}")

    @property
    def length(self) -> int:
        return len(self.state)


def _stats(values: np.ndarray) -> dict[str, list]:
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    return {
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "count": [len(values)],
    }


def _tasks_table(tasks: list[str]):
    """tasks.parquet as pandas writes a frame indexed by task string (how lerobot stores it):
    a "task" column declared as the index in the pandas schema metadata."""
    import pyarrow as pa

    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": tasks})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "vla-rl"},
    }  # fmt: skip
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def video_key(camera: str) -> str:
    return f"observation.images.{camera}"


def write_dataset(
    root: str | Path,
    episodes: Sequence[Episode],
    fps: int,
    robot_type: str = "unknown",
    extra_info: dict[str, Any] | None = None,
) -> Path:
    """Write `episodes` as a LeRobot v3.0 dataset at `root` (atomically); returns `root`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not episodes:
        raise ValueError("no episodes to write")
    first = episodes[0]
    cameras = sorted(first.images)
    for ep in episodes:
        if sorted(ep.images) != cameras or ep.state.shape[1:] != first.state.shape[1:]:
            raise ValueError("all episodes must have the same cameras and state/action shapes")
        if sorted(ep.extras) != sorted(first.extras):
            raise ValueError("all episodes must have the same extra features")
    tasks = list(dict.fromkeys(ep.task for ep in episodes))  # first-seen order
    task_index = {task: i for i, task in enumerate(tasks)}
    loc = {"chunk_index": 0, "file_index": 0}

    with atomic_directory(root) as tmp:
        # ---- frames ---------------------------------------------------------------------------
        state = np.concatenate([ep.state for ep in episodes]).astype(np.float32)
        action = np.concatenate([ep.action for ep in episodes]).astype(np.float32)
        lengths = np.array([ep.length for ep in episodes])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        frame_index = np.concatenate([np.arange(n) for n in lengths])
        done = np.concatenate([np.arange(n) == n - 1 for n in lengths])
        success = np.concatenate([(np.arange(n) == n - 1) & ep.success
                                  for n, ep in zip(lengths, episodes)])  # fmt: skip
        columns = {
            "observation.state": pa.array(list(state), type=pa.list_(pa.float32())),
            "action": pa.array(list(action), type=pa.list_(pa.float32())),
            "timestamp": pa.array(frame_index / fps, type=pa.float32()),
            "frame_index": pa.array(frame_index, type=pa.int64()),
            "episode_index": pa.array(np.repeat(np.arange(len(episodes)), lengths), pa.int64()),
            "index": pa.array(np.arange(len(state)), type=pa.int64()),
            "task_index": pa.array(
                np.repeat([task_index[ep.task] for ep in episodes], lengths), pa.int64()
            ),
            "next.reward": pa.array(np.concatenate([ep.reward for ep in episodes]), pa.float32()),
            "next.done": pa.array(done),
            "next.success": pa.array(success),
        }
        for name in sorted(first.extras):  # lists: a suite's scenes may differ in their size
            values = [row for ep in episodes for row in np.asarray(ep.extras[name], np.float32)]
            columns[name] = pa.array(values, type=pa.list_(pa.float32()))
        data_file = tmp / DATA_PATH.format(**loc)
        data_file.parent.mkdir(parents=True)
        pq.write_table(pa.table(columns), data_file)

        # ---- videos: one MP4 per camera, episodes back to back --------------------------------
        for cam in cameras:
            from vla_rl.io.video import save_video

            frames = np.concatenate([ep.images[cam] for ep in episodes])
            save_video(tmp / VIDEO_PATH.format(video_key=video_key(cam), **loc), list(frames), fps)

        # ---- per-episode metadata -------------------------------------------------------------
        rows: dict[str, list] = {
            "episode_index": list(range(len(episodes))),
            "tasks": [[ep.task] for ep in episodes],
            "length": lengths.tolist(),
            "dataset_from_index": starts.tolist(),
            "dataset_to_index": (starts + lengths).tolist(),
            "data/chunk_index": [0] * len(episodes),
            "data/file_index": [0] * len(episodes),
            "meta/episodes/chunk_index": [0] * len(episodes),
            "meta/episodes/file_index": [0] * len(episodes),
            "success": [bool(ep.success) for ep in episodes],
        }
        for cam in cameras:
            key = video_key(cam)
            rows[f"videos/{key}/chunk_index"] = [0] * len(episodes)
            rows[f"videos/{key}/file_index"] = [0] * len(episodes)
            rows[f"videos/{key}/from_timestamp"] = (starts / fps).tolist()
            rows[f"videos/{key}/to_timestamp"] = ((starts + lengths) / fps).tolist()
        for name, get in (("observation.state", lambda e: e.state), ("action", lambda e: e.action)):
            per_ep = [_stats(get(ep)) for ep in episodes]
            for stat in ("mean", "std", "min", "max", "count"):
                rows[f"stats/{name}/{stat}"] = [s[stat] for s in per_ep]
        episodes_file = tmp / EPISODES_PATH.format(**loc)
        episodes_file.parent.mkdir(parents=True)
        pq.write_table(pa.table(rows), episodes_file)

        pq.write_table(_tasks_table(tasks), tmp / "meta" / "tasks.parquet")
        stats = {"observation.state": _stats(state), "action": _stats(action)}
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")

        features: dict[str, Any] = {
            "observation.state": {"dtype": "float32", "shape": [state.shape[1]], "names": None},
            "action": {"dtype": "float32", "shape": [action.shape[1]], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
            "next.reward": {"dtype": "float32", "shape": [1], "names": None},
            "next.done": {"dtype": "bool", "shape": [1], "names": None},
            "next.success": {"dtype": "bool", "shape": [1], "names": None},
        }
        for name in sorted(first.extras):  # the first episode's size (see the columns above)
            dim = int(np.asarray(first.extras[name]).shape[1])
            features[name] = {"dtype": "float32", "shape": [dim], "names": None}
        for cam in cameras:
            h, w = first.images[cam].shape[1:3]
            features[video_key(cam)] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {"video.fps": fps, "video.codec": "h264", "video.pix_fmt": "yuv420p"},
            }
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": len(episodes),
            "total_frames": int(len(state)),
            "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE,
            "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if cameras else None,
            "features": features,
            **(extra_info or {}),
        }
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return Path(root)


class LeRobotDataset:
    """Read a LeRobot v3.0 dataset directory (ours or lerobot's) into `Episode`s.

    Only what behaviour cloning here needs is read: state, action, reward/success when present,
    the task string, and camera streams (decoded from the MP4 files on request).
    """

    def __init__(self, root: str | Path):
        import pyarrow.parquet as pq

        self.root = Path(root)
        info_file = self.root / "meta" / "info.json"
        if not info_file.is_file():
            raise FileNotFoundError(f"{self.root} is not a LeRobot dataset (no meta/info.json)")
        self.info = json.loads(info_file.read_text())
        version = self.info.get("codebase_version")
        if version != CODEBASE_VERSION:
            raise ValueError(f"{self.root}: LeRobot format {version!r}; only v3.0 is read")
        self.fps = self.info["fps"]
        self.features = self.info["features"]
        self.cameras = [k for k, v in self.features.items() if v.get("dtype") == "video"]
        episode_files = sorted((self.root / "meta" / "episodes").rglob("*.parquet"))
        self.episodes = [
            row for f in episode_files for row in pq.read_table(f).to_pylist()
        ]  # one dict per episode, in file order
        self.episodes.sort(key=lambda r: r["episode_index"])
        tasks = pq.read_table(self.root / "meta" / "tasks.parquet").to_pydict()
        names = tasks.get("task") or tasks.get("__index_level_0__")
        self.tasks = dict(zip(tasks["task_index"], names))
        stats_file = self.root / "meta" / "stats.json"
        self.stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        self._tables: dict[tuple[int, int], Any] = {}

    def __len__(self) -> int:
        return len(self.episodes)

    def _data_table(self, chunk: int, file: int):
        import pyarrow.parquet as pq

        key = (chunk, file)
        if key not in self._tables:
            path = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=file)
            self._tables[key] = pq.read_table(path)
        return self._tables[key]

    def episode(self, i: int, load_images: bool = True) -> Episode:
        meta = self.episodes[i]
        table = self._data_table(meta["data/chunk_index"], meta["data/file_index"])
        index = np.asarray(table.column("index"))
        start = int(np.searchsorted(index, meta["dataset_from_index"]))
        n = meta["dataset_to_index"] - meta["dataset_from_index"]
        rows = table.slice(start, n)
        state = np.asarray(rows.column("observation.state").to_pylist(), dtype=np.float32)
        action = np.asarray(rows.column("action").to_pylist(), dtype=np.float32)
        names = rows.column_names
        reward = (
            np.asarray(rows.column("next.reward"), dtype=np.float32)
            if "next.reward" in names
            else np.zeros(n, np.float32)
        )
        success = bool(meta.get("success", False))
        if "next.success" in names:
            success = success or bool(np.asarray(rows.column("next.success")).any())
        task = meta["tasks"][0] if meta.get("tasks") else self.tasks[rows.column("task_index")[0]]
        extras = {
            key: np.asarray(rows.column(key).to_pylist(), dtype=np.float32)
            for key in EXTRA_FEATURES
            if key in names
        }
        images = {}
        if load_images:
            for key in self.cameras:
                images[key.removeprefix("observation.images.")] = self._frames(meta, key, n)
        return Episode(str(task), state, action, reward, success, images, extras)

    def _frames(self, meta: dict, key: str, n: int) -> np.ndarray:
        import imageio.v2 as imageio

        path = self.root / self.info["video_path"].format(
            video_key=key,
            chunk_index=meta[f"videos/{key}/chunk_index"],
            file_index=meta[f"videos/{key}/file_index"],
        )
        first = round(meta[f"videos/{key}/from_timestamp"] * self.fps)
        with imageio.get_reader(path) as reader:
            frames = [reader.get_data(first + k) for k in range(n)]
        return np.stack(frames)

    def __iter__(self):
        return (self.episode(i) for i in range(len(self)))
