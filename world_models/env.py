"""`--benchmark worldmodel --env.world-model DIR`: a trained world model behind the Benchmark
interface, so every method trains in it and the eval protocol runs in it unchanged.

Tasks are the dataset's tasks (named as in the benchmark the data came from: `--tasks reach-v3`
means the same task here and in Meta-World). An init id is a row of the stored real starts
(starts.safetensors): train ids are the train episodes' first frames, eval ids the held-out
episodes' (disjoint by initial state, data.split). `reset` shows the real first frame and state;
the K context frames repeat it (gap 0), as in training.

`step` takes action chunks (Ta, Da) for all running slots at once: each chunk is cut into
model steps of at most k = frame_skip actions (a shorter last one when k does not divide Ta),
each a batched few-step sample of the next frame plus the state head and the reflector.
Reward and termination come from the reflector: success (= terminated, sticky, as
ChunkedEnv) when p_success >= the threshold stored with the model for `consecutive` model
steps; the env reward per env step by --env.world-model-reward:

    sparse    1 on the step the reflector calls success, else 0
    relative  p_t - p_{t-1} of the success probability on each model step's last env step
              (RLinf's use_rel_reward; sums to p_T - p_0)
    progress  the progress head's estimate on every env step (a potential in [0, 1]; what
              `--<method>.reward dense_oracle --<method>.shaping.oracle-scale 1` shapes with)

The methods' default `success` reward reads the terminations, so it is the reflector's
success in every mode. Each slot draws its sampling noise from its own generator, seeded by
the episode's noise key (the engine's per-episode stream: vla_rl.core.noise), so a rollout
does not depend on the batch it ran in and repeats under the same seed.

Observations match the real benchmark's: "state" (Ds,) float32 (the state head's prediction
after the first), and with --env.images "image" (1, H, W, 3) uint8 at --env.image-size (the
model's S x S frames resized), so a policy trained on the real benchmark runs here unchanged.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from vla_rl.core.benchmark import Benchmark, EnvConfig, EpisodeSpec, TaskSpec, check_split
from vla_rl.core.config import ConfigError
from vla_rl.core.registry import check_choice
from vla_rl.core.slots import SlotStep
from vla_rl.rollout.batched import BatchedSlotEnv

REWARD_MODES = ("sparse", "relative", "progress")
NEEDS_DIRECTORY = (
    "--benchmark worldmodel needs --env.world-model DIR (a directory written "
    "by `vla-rl world-model train`)"
)


class WorldModelBenchmark(Benchmark):
    """A world model's tasks and starts; `make_env` returns its batched `WorldModelEnv`."""

    name = "worldmodel"
    packages = ("torch", "diffusers")

    def __init__(self, world_model: str | None = None, reward: str = "sparse"):
        self.directory: Path | None = None
        self.reward = reward
        self._tasks: dict[str, dict[str, Any]] = {}
        if world_model is not None:
            self.load(world_model)

    def load(self, path: str | Path) -> None:
        """Read the world model's config.json (the weights wait for make_env)."""
        from vla_rl.world_models.video_model import read_world_model_config

        self.directory, config = read_world_model_config(path)
        env, model = config["env"], config["model"]
        self.action_dim, self.state_dim = model["action_dim"], model["state_dim"]
        self.fps = int(env["fps"] or 0)
        cameras = list(dict.fromkeys(env["cameras"].values()))
        self.camera_names = (cameras[0],) if cameras else ("camera",)
        self.horizon = int(env["horizon"])
        self.source_benchmark: str | None = env["source_benchmark"]
        self.reflector = env["reflector"]
        self.frame_skip = int(model["frame_skip"])
        self._tasks = {t["name"]: t for t in env["tasks"]}

    def use_env_config(self, cfg: EnvConfig) -> None:
        super().use_env_config(cfg)
        self.reward = check_choice("--env.world-model-reward", cfg.world_model_reward, REWARD_MODES)
        if cfg.world_model is not None:
            self.load(cfg.world_model)

    def _require(self) -> None:
        if self.directory is None:
            raise ConfigError(NEEDS_DIRECTORY)

    def task_names(self) -> list[str]:
        self._require()
        return list(self._tasks)

    def tasks(self, split: str, names: Sequence[str] | None = None) -> list[TaskSpec]:
        check_split(split)
        self._require()
        out = []
        for name in self.resolve_task_names(names):
            entry = self._tasks[name]
            ids = tuple(entry["train_ids"] if split == "train" else entry["eval_ids"])
            if not ids:
                raise ConfigError(
                    f"task {name!r} has no {split} start in {self.directory} (its datasets held "
                    "one initial state, kept for training); collect more initial states"
                )
            out.append(TaskSpec(self.name, name, entry["instruction"], split, ids, self.horizon))
        return out

    def env_factory(self, cfg: EnvConfig) -> WorldModelEnvFactory:
        self._require()
        return WorldModelEnvFactory(str(self.directory), cfg)

    def make_env(self, tasks: Sequence[TaskSpec], cfg: EnvConfig | None = None) -> WorldModelEnv:
        foreign = sorted({t.benchmark for t in tasks} - {self.name})
        if foreign:
            raise ValueError(f"tasks of {foreign} cannot run on benchmark {self.name!r}")
        self._require()
        return WorldModelEnv(self, cfg or EnvConfig())


def default_device() -> str:
    """Where the world model runs: the GPU when there is one (its batched sampling is the
    cost of a rollout), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    from vla_rl.world_models.video_model import resize_frames

    return resize_frames(frames, size)


class WorldModelEnv(BatchedSlotEnv):
    """B slots of one world model, stepped in batched model calls (see the module docstring).

    Per slot: the K context frames (S x S uint8), the gaps between them, the state and the
    previous one, the task id, the reflector's last p and run of successes, a noise generator
    and the frame a video shows (the real start at its own size, then generated frames)."""

    def __init__(self, benchmark: WorldModelBenchmark, cfg: EnvConfig, device: str | None = None):
        from vla_rl.world_models.video_model import load_world_model

        self.device = torch.device(device or default_device())
        self.model, _, starts = load_world_model(benchmark.directory, self.device)
        mcfg = self.model.cfg
        space = gym.spaces.Box(-1.0, 1.0, (mcfg.action_dim,), np.float32)
        super().__init__(cfg.num_envs, space, cfg.max_steps)
        self.cfg, self.benchmark = cfg, benchmark
        self.reward_mode = benchmark.reward
        self.threshold = float(benchmark.reflector["threshold"])
        self.consecutive = int(benchmark.reflector["consecutive"])
        self.starts = starts
        self.task_ids = {name: i for i, name in enumerate(mcfg.tasks)}
        b, n_ctx, s = cfg.num_envs, mcfg.context_frames, mcfg.image_size
        dev = self.device
        self.context = torch.zeros(b, n_ctx, s, s, 3, dtype=torch.uint8, device=dev)
        self.gaps = torch.zeros(b, n_ctx - 1, device=dev)
        self.state = torch.zeros(b, mcfg.state_dim, device=dev)
        self.prev_state = torch.zeros_like(self.state)
        self.task = torch.zeros(b, dtype=torch.long, device=dev)
        self.p_last = torch.zeros(b, device=dev)
        self.run = torch.zeros(b, dtype=torch.long, device=dev)
        self.generators: list[torch.Generator | None] = [None] * b
        self.display: list[torch.Tensor | None] = [None] * b

    # ---- reset -----------------------------------------------------------------------------
    def reset_batch(self, slots: Sequence[int], episodes: Sequence[EpisodeSpec]):
        from vla_rl.core import noise

        rows = []
        for slot, ep in zip(slots, episodes):
            row = int(ep.init_id)
            task = self.task_ids.get(ep.task.name)
            if (
                task is None
                or not 0 <= row < len(self.starts["task"])
                or int(self.starts["task"][row]) != task
            ):
                raise ValueError(
                    f"init id {row} is not a start of task {ep.task.name!r} in "
                    f"{self.benchmark.directory}"
                )
            rows.append(row)
            key = (
                ep.noise_key
                if ep.noise_key is not None
                else noise.episode_key(0, ep.task.name, row, 0)
            )
            self.generators[slot] = torch.Generator().manual_seed(key & ((1 << 63) - 1))
            self.display[slot] = self.starts["first_frames"][row]
        idx = torch.tensor(list(slots), device=self.device)
        r = torch.tensor(rows)
        n_ctx = self.model.cfg.context_frames
        first = self.starts["frames"][r].to(self.device)
        self.context[idx] = first[:, None].expand(-1, n_ctx, -1, -1, -1)
        self.gaps[idx] = 0.0
        self.state[idx] = self.starts["state"][r].to(self.device)
        self.prev_state[idx] = self.state[idx]
        self.task[idx] = self.starts["task"][r].to(self.device)
        self.run[idx] = 0
        with torch.no_grad():
            logits = self.model.reflector(first, self.task[idx])
        self.p_last[idx] = torch.sigmoid(logits[:, 0])
        obs: dict[str, np.ndarray] = {"state": self.state[idx].cpu().numpy().astype(np.float32)}
        if self.cfg.images:
            obs["image"] = resize(self.starts["first_frames"][r], self.cfg.image_size)[:, None]
            obs["image"] = obs["image"].numpy()
        return obs

    # ---- one batched model step --------------------------------------------------------------
    @torch.no_grad()
    def model_step(self, slots: list[int], actions: np.ndarray, m: np.ndarray):
        """Advance `slots` by one model step of m (N,) <= k actions each (actions (N, k, Da),
        zero past m): (frames uint8 (N, S, S, 3), p_success (N,), progress (N,), success (N,))."""
        from vla_rl.world_models.video_model import StepInputs

        cfg = self.model.cfg
        idx = torch.tensor(slots, device=self.device)
        mask = torch.from_numpy((np.arange(cfg.frame_skip)[None] < m[:, None]).astype(np.float32))
        x = StepInputs(
            self.context[idx],
            torch.from_numpy(actions).to(self.device),
            mask.to(self.device),
            self.gaps[idx],
            self.task[idx],
            self.state[idx],
            self.prev_state[idx],
        )
        frame = self.model.sample(x, [self.generators[s] for s in slots])
        new_state = self.model.predict_state(x)
        logits = self.model.reflector(frame, self.task[idx])
        p, progress = torch.sigmoid(logits[:, 0]), torch.sigmoid(logits[:, 1])
        self.context[idx] = torch.cat([self.context[idx][:, 1:], frame[:, None]], 1)
        gap = torch.from_numpy(m.astype(np.float32)).to(self.device)[:, None]
        self.gaps[idx] = torch.cat([self.gaps[idx][:, 1:], gap], 1)
        self.prev_state[idx] = self.state[idx]
        self.state[idx] = new_state
        self.run[idx] = torch.where(p >= self.threshold, self.run[idx] + 1, 0)
        success = self.run[idx] >= self.consecutive
        return frame, p, progress, success

    def step_batch(self, slots, actions):  # one env step = a model step of one action
        n = len(slots)
        padded = np.zeros((n, self.model.cfg.frame_skip, actions.shape[1]), np.float32)
        padded[:, 0] = np.clip(actions, -1.0, 1.0)
        frame, p, progress, success = self.model_step(list(slots), padded, np.ones(n, np.int64))
        rewards = self._rewards(list(slots), p, progress, success)
        return self._observe(list(slots), frame), rewards, success.cpu().numpy()

    def _rewards(self, slots: list[int], p, progress, success) -> np.ndarray:
        """The env reward of one model step per slot (N,), by the reward mode; updates p_last."""
        idx = torch.tensor(slots, device=self.device)
        if self.reward_mode == "sparse":
            reward = success.float()
        elif self.reward_mode == "relative":
            reward = p - self.p_last[idx]
        else:
            reward = progress
        self.p_last[idx] = p
        return reward.cpu().numpy().astype(np.float32)

    def _observe(self, slots: list[int], frames: torch.Tensor) -> dict[str, np.ndarray]:
        idx = torch.tensor(slots, device=self.device)
        obs = {"state": self.state[idx].cpu().numpy().astype(np.float32)}
        frames = frames.cpu()
        for j, slot in enumerate(slots):
            self.display[slot] = frames[j]
        if self.cfg.images:
            obs["image"] = resize(frames, self.cfg.image_size)[:, None].numpy()
        return obs

    # ---- chunks ------------------------------------------------------------------------------
    def step_chunks(self, slots: Sequence[int], chunks: np.ndarray) -> list[SlotStep]:
        """One chunk (Ta, Da) per slot in model steps of up to k actions, batched over the
        slots still running; the episode-end rules of BatchedSlotEnv.step_chunks."""
        slots = list(slots)
        n, ta = len(slots), chunks.shape[1]
        k = self.model.cfg.frame_skip
        chunks = np.clip(chunks, -1.0, 1.0)
        rewards = np.zeros((n, ta), dtype=np.float32)
        steps = np.zeros(n, dtype=np.int64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        frames: list[list[np.ndarray]] = [[] for _ in slots]
        running = np.ones(n, dtype=bool)
        pos = 0
        while pos < ta and running.any():
            rows = np.flatnonzero(running)
            active = [slots[i] for i in rows]
            left = np.array([self._horizon(s) - self._elapsed[s] for s in active])
            m = np.minimum(min(k, ta - pos), left)  # (N,) actions this model step
            actions = np.zeros((len(rows), k, chunks.shape[2]), np.float32)
            for j, i in enumerate(rows):
                actions[j, : m[j]] = chunks[i, pos : pos + m[j]]
            frame, p, progress, success = self.model_step(active, actions, m)
            reward = self._rewards(active, p, progress, success)
            obs = self._observe(active, frame)
            shots = (
                self.render_batch(active) if any(self._record[s] is True for s in active) else None
            )
            success = success.cpu().numpy()
            for j, i in enumerate(rows):
                slot, mj = slots[i], int(m[j])
                self._obs[slot] = {key: value[j] for key, value in obs.items()}
                if self.reward_mode == "progress":  # a potential: its value on every env step
                    rewards[i, pos : pos + mj] = reward[j]
                else:  # an event: on the model step's last env step
                    rewards[i, pos + mj - 1] = reward[j]
                steps[i] += mj
                self._elapsed[slot] += mj
                terminated[i] = bool(success[j])
                truncated[i] = self._elapsed[slot] >= self._horizon(slot)
                running[i] = not (terminated[i] or truncated[i])
                if shots is not None and self._record[slot] is True:
                    frames[i] += [shots[j]] * mj  # one video frame per env step, as ChunkedEnv
            pos += min(k, ta - pos)
        return self.finish_chunks(slots, rewards, steps, terminated, truncated, frames)

    def render_batch(self, slots: Sequence[int]) -> np.ndarray | None:
        if not self.cfg.video_size:
            return None
        shown = [self.display[s] for s in slots]
        return np.stack([resize(f[None], self.cfg.video_size)[0].numpy() for f in shown])

    def close(self) -> None:
        self.model = self.model.cpu()


# ---- one slot as a gym env --------------------------------------------------------------------
@dataclass
class WorldModelEnvFactory:
    """Picklable: builds one world-model slot as a gym env (`env_factory`'s contract)."""

    directory: str
    cfg: EnvConfig

    def __call__(self) -> WorldModelTaskEnv:
        return WorldModelTaskEnv(self.directory, self.cfg)


class WorldModelTaskEnv(gym.Env):
    """One slot of a `WorldModelEnv` behind gym's reset/step, for what hosts per-slot gym envs
    (ChunkedEnv, the process-pool backend). Each `step` is one env step, so one model step of
    one action: the batched `make_env` env is the fast path and runs chunks as k-action model
    steps."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, directory: str, cfg: EnvConfig):
        bench = WorldModelBenchmark(directory, cfg.world_model_reward)
        self.env = WorldModelEnv(bench, dataclasses.replace(cfg, num_envs=1), device="cpu")
        spaces: dict[str, gym.Space] = {
            "state": gym.spaces.Box(-np.inf, np.inf, (bench.state_dim,), np.float32)
        }
        if cfg.images:
            size = cfg.image_size
            spaces["image"] = gym.spaces.Box(0, 255, (1, size, size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = self.env.single_action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if not options or "task" not in options or "init_id" not in options:
            raise ValueError('reset needs options={"task": TaskSpec, "init_id": int}')
        task: TaskSpec = options["task"]
        key = seed if seed is not None else zlib.crc32(f"{task.name}/{options['init_id']}".encode())
        self.env.reset_slots([0], [EpisodeSpec(task, int(options["init_id"]), noise_key=key)])
        return dict(self.env._obs[0]), {"success": False}

    def step(self, action: np.ndarray):
        res = self.env.step_chunks([0], np.asarray(action, np.float32)[None, None])[0]
        self.env._done[0] = res.terminated or res.truncated
        return (
            res.obs,
            float(res.rewards.sum()),
            res.terminated,
            res.truncated,
            {"success": res.success},
        )

    def render(self) -> np.ndarray:
        return self.env.render_batch([0])[0]


def world_model_benchmark(world_model: str, reward: str = "sparse") -> WorldModelBenchmark:
    """The benchmark of the world model in `world_model` (a direct constructor for library
    use; the CLI goes through get_benchmark("worldmodel", env=EnvConfig(world_model=...)))."""
    return WorldModelBenchmark(world_model, check_choice("reward mode", reward, REWARD_MODES))
