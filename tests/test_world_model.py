"""The world model (world_models/): pure helpers by hand, a short training run on a toy task (a
square that the actions move) whose loss falls and whose predictions use the actions, exact
resume, save/load, the `worldmodel` benchmark's env contract (reset from stored real frames,
B slots stepped per model step, seeded, reward and termination from the reflector, disjoint
starts), and the one-line errors of bad input (exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vla_rl.commands.world_model import train_world_model
from vla_rl.core.benchmark import EnvConfig, check_disjoint, first_episodes, get_benchmark
from vla_rl.data.lerobot_dataset import Episode, LeRobotDataset, write_dataset
from vla_rl.world_models.data import FrameBank, load_episodes, reflector_labels
from vla_rl.world_models.train import WorldModelTrainConfig
from vla_rl.world_models.video_model import (
    WorldModelConfig,
    karras_sigmas,
    load_world_model,
    to_uint8,
    to_unit,
)

SIZE, HORIZON = 16, 16
TASKS = {"move the square right": (1, 0), "move the square down": (0, 1)}


# ---- pure helpers by hand ---------------------------------------------------------------------
def test_karras_schedule_and_uint8_round_trip():
    sigmas = karras_sigmas(3, 0.002, 5.0, 7.0)
    assert sigmas.shape == (4,) and sigmas[-1] == 0
    np.testing.assert_allclose(
        sigmas[:3].numpy(), [5.0, (5 ** (1 / 7) / 2 + 0.002 ** (1 / 7) / 2) ** 7, 0.002], rtol=1e-5
    )
    frames = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    assert torch.equal(to_uint8(to_unit(frames)), frames)
    assert to_unit(frames).shape == (2, 3, 4, 4)


def test_reflector_labels_of_a_success_and_a_failure():
    succ, prog = reflector_labels(8, True, positive_window=1, ignore_window=2)
    assert succ.tolist() == [0, 0, 0, 0, -1, -1, 1, 1]
    np.testing.assert_allclose(prog, np.arange(8) / 7)
    succ, prog = reflector_labels(5, False, positive_window=1, ignore_window=2)
    assert succ.tolist() == [0] * 5 and prog.tolist() == [-1] * 5


# ---- a toy dataset: the actions move a square ---------------------------------------------------
def render(pos: np.ndarray) -> np.ndarray:
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    frame[..., 2] = 40
    x, y = np.round(pos).astype(int)
    frame[y : y + 3, x : x + 3] = (255, 200, 0)
    return frame


def make_dataset(root, seed=0, images=True, action_dim=2, tasks=TASKS, state_dim=2, **info):
    """Per task 8 episodes from random starts: position += 2 x action (clipped to the frame),
    actions drawn around the task's direction in 6 of 8, uniformly in the others; success
    (which ends the episode) when the square reaches the task's edge. State and actions are
    cut or zero-padded to state_dim / action_dim; info: write_dataset's (robot_type)."""

    def fit(x, dim):  # (T, 2) -> (T, dim)
        return np.pad(np.array(x, np.float32), ((0, 0), (0, max(0, dim - 2))))[:, :dim]

    rng = np.random.default_rng(seed)
    episodes = []
    for task, (dx, dy) in tasks.items():
        for k in range(8):
            pos = rng.uniform(1, 5, size=2)
            frames, states, actions, success = [], [], [], False
            for _ in range(HORIZON):
                frames.append(render(pos))
                states.append(pos.copy())
                bias = 0.5 * np.array([dx, dy]) if k % 4 != 3 else 0.0
                action = np.clip(bias + rng.uniform(-1, 1, 2), -1, 1)
                actions.append(action)
                if (dx and pos[0] >= SIZE - 4) or (dy and pos[1] >= SIZE - 4):
                    success = True
                    break
                pos = np.clip(pos + 2.0 * action, 0, SIZE - 3)
            t = len(frames)
            episodes.append(
                Episode(
                    task,
                    fit(states, state_dim),
                    fit(actions, action_dim),
                    np.zeros(t, np.float32),
                    success,
                    {"top": np.stack(frames)} if images else {},
                )
            )
    return write_dataset(root, episodes, fps=10, **info)


TINY = dict(
    image_size=SIZE,
    patch=1,
    channels=(16, 32),
    norm_groups=8,
    cond_dim=64,
    context_frames=2,
    frame_skip=2,
    state_hidden=32,
    reflector_channels=(8, 16),
    task_embed_dim=8,
)


def config(dataset, out, **kw) -> WorldModelTrainConfig:
    base = dict(
        dataset=(str(dataset),),
        model=WorldModelConfig(**TINY),
        steps=120,
        batch_size=8,
        reflector_batch=16,
        lr=2e-3,
        val_every=60,
        save_every=60,
        val_horizon=3,
        held_out=0.25,
        videos=1,
        output_dir=str(out),
        progress=False,
    )
    return WorldModelTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "squares")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("wm") / "run"
    return out, train_world_model(config(dataset, out))


def held_out_bank(res, dataset, model) -> FrameBank:
    episodes, _ = load_episodes([str(dataset)], "", SIZE)
    held = set(res["held_out_episodes"])
    return FrameBank([e for e in episodes if e.source in held], model.cfg)


def fixed_batch_loss(model, bank, shuffle: bool) -> float:
    """The EDM loss on one fixed batch of 128 windows and fixed noise (4 draws), with the
    windows' own actions or with the actions permuted across windows."""
    rng = np.random.default_rng(123)
    torch.manual_seed(123)
    window = bank.sample(rng, 128, 1, partial=0.0)
    x = bank.step_inputs(window, 0)
    if shuffle:
        x.actions = x.actions[torch.from_numpy(np.random.default_rng(5).permutation(128))]
    with torch.no_grad():
        return float(
            np.mean([model.edm_loss(x, bank.target_frames(window, 0))[0].item() for _ in range(4)])
        )


def test_short_training_lowers_the_loss_and_uses_the_actions(trained, dataset):
    out, res = trained
    fit = json.loads((out / "train.json").read_text())
    assert fit["steps"] == 120 and fit["parameters"]["total"] < 500_000
    assert [v["step"] for v in fit["validation"]] == [60, 120]
    assert (out / "videos" / "val_000120.mp4").is_file()
    model, config_json, starts = load_world_model(out)
    fresh = type(model)(model.cfg)  # the same architecture, untrained (statistics copied)
    for name in ("action_mean", "action_std", "state_mean", "state_std", "delta_std", "change_std"):
        getattr(fresh, name).copy_(getattr(model, name))
    bank = held_out_bank(res, dataset, model)
    trained_loss = fixed_batch_loss(model, bank, shuffle=False)
    assert trained_loss < 0.8 * fixed_batch_loss(fresh.eval(), bank, shuffle=False)
    # It reads its actions: the same held-out windows with other windows' actions fit worse.
    assert trained_loss < fixed_batch_loss(model, bank, shuffle=True)
    # And it beats copy-last-frame on the moving pixels one step ahead, on held-out episodes.
    last = fit["validation"][-1]
    assert last["moving_mse"][0] < last["copy_last_moving_mse"][0]
    assert set(starts) == {"first_frames", "frames", "state", "task"}


def test_resume_continues_exactly(dataset, tmp_path):
    # autoregressive steps and generated reflector frames both happen after the cut
    kw = dict(steps=8, val_every=4, save_every=4, autoregressive_from=2, log_every=1,
              reflector_generated_from=2, generated_every=3, videos=0)  # fmt: skip
    whole = train_world_model(config(dataset, tmp_path / "whole", **kw))
    train_world_model(config(dataset, tmp_path / "cut", **{**kw, "steps": 4}))
    resumed = train_world_model(config(dataset, tmp_path / "cut", resume=True, **kw))
    assert resumed["steps"] == 8 and resumed["losses"] == whole["losses"]
    assert any(point["autoregressive"] == 2 for point in whole["losses"])
    a, _, _ = load_world_model(tmp_path / "whole")
    b, _, _ = load_world_model(tmp_path / "cut")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(ValueError, match="trained with other settings"):
        train_world_model(config(dataset, tmp_path / "cut", resume=True, **{**kw, "lr": 1e-3}))


def test_save_load_round_trip_gives_identical_frames(trained, tmp_path):
    out, _ = trained
    model, cfg_json, starts = load_world_model(out / "model")
    model.save(
        tmp_path / "again",
        {"starts.safetensors": starts},
        {k: v for k, v in cfg_json.items() if k not in ("format", "model")},
    )
    again, _, _ = load_world_model(tmp_path / "again")
    bench = get_benchmark("worldmodel", env=EnvConfig(world_model=str(out)))
    task = bench.tasks("eval")[0]

    def frames(m):
        from vla_rl.world_models.video_model import StepInputs

        row = task.init_ids[0]
        ctx = starts["frames"][row][None, None].expand(1, 2, -1, -1, -1)
        x = StepInputs(
            ctx,
            torch.ones(1, 2, 2),
            torch.ones(1, 2),
            torch.zeros(1, 1),
            starts["task"][row : row + 1],
            starts["state"][row : row + 1],
            starts["state"][row : row + 1],
        )
        return m.sample(x, [torch.Generator().manual_seed(0)])

    assert torch.equal(frames(model), frames(again))


# ---- the benchmark and its env ----------------------------------------------------------------
def benchmark(out, **env):
    return get_benchmark("worldmodel", env=EnvConfig(world_model=str(out), **env))


def test_tasks_and_starts_come_from_the_dataset_and_are_disjoint(trained, dataset):
    out, res = trained
    bench = benchmark(out)
    assert sorted(bench.task_names()) == sorted(TASKS)
    train, eval_ = bench.tasks("train"), bench.tasks("eval")
    check_disjoint(train, eval_)
    info = json.loads((out / "model" / "config.json").read_text())["env"]
    held = {info["sources"][i] for t in eval_ for i in t.init_ids}
    assert held == set(res["held_out_episodes"])
    # disjoint by initial state, not only by id: no eval start repeats a train start's frame
    _, _, starts = load_world_model(out)
    train_frames = {starts["first_frames"][i].numpy().tobytes() for t in train for i in t.init_ids}
    assert all(
        starts["first_frames"][i].numpy().tobytes() not in train_frames
        for t in eval_
        for i in t.init_ids
    )
    assert all(t.max_steps == HORIZON for t in train)  # the longest episode (no source benchmark)


def test_the_benchmark_contract_holds_through_the_gym_env_factory(trained):
    # tests/test_benchmark_contract.py's checks (they need a trained directory, so they run
    # here), on the one-slot gym view `env_factory` builds
    import test_benchmark_contract as contract

    from vla_rl.rollout.chunked_env import ChunkedEnv

    out, _ = trained
    bench = benchmark(out)
    env = ChunkedEnv(bench.env_factory(EnvConfig(world_model=str(out), video_size=0))())
    try:
        contract.test_splits_are_disjoint_and_described((bench, env))
        contract.test_reset_and_step_shapes_dtypes_and_success_flag((bench, env))
        contract.test_reset_is_deterministic_given_the_init_id((bench, env))
    finally:
        env.close()


def test_reset_shows_the_stored_real_frame_and_state(trained, dataset):
    out, res = trained
    bench = benchmark(out, images=True, image_size=SIZE)
    env = bench.make_env(
        [], EnvConfig(world_model=str(out), images=True, image_size=SIZE, num_envs=2)
    )
    task = bench.tasks("eval")[0]
    episodes = first_episodes([task], 1) * 2
    env.reset_slots([0, 1], episodes)
    obs = env.observe([0, 1])
    info = json.loads((out / "model" / "config.json").read_text())["env"]
    source = info["sources"][task.init_ids[0]]
    real = LeRobotDataset(dataset).episode(int(source.rsplit("#", 1)[1]))
    assert obs["image"].shape == (2, 1, SIZE, SIZE, 3) and obs["image"].dtype == np.uint8
    assert np.array_equal(obs["image"][0, 0], real.images["top"][0])
    np.testing.assert_allclose(obs["state"][0], real.state[0])
    assert obs["state"].dtype == np.float32 and obs["instruction"] == [task.instruction] * 2


def test_chunks_step_all_slots_per_model_step_with_the_episode_end_rules(trained):
    out, _ = trained
    env = benchmark(out).make_env([], EnvConfig(world_model=str(out), num_envs=3))
    bench = benchmark(out)
    episodes = first_episodes(bench.tasks("train"), 2)[:3]
    env.reset_slots([0, 1, 2], episodes)
    calls = []
    sample = env.model.sample
    env.model.sample = lambda x, noise=None: calls.append(len(x.context)) or sample(x, noise)
    env.threshold = 2.0  # the reflector never calls success here: only the horizon ends
    chunk = np.full((3, 3, 2), 0.5, np.float32)  # Ta = 3, k = 2: a 2-step and a 1-step model step
    steps = env.step_wait(env.step_async([0, 1, 2], chunk))
    assert calls == [3, 3]  # one batched call per model step for all slots
    assert [s.steps for s in steps] == [3, 3, 3] and all(len(s.rewards) == 3 for s in steps)
    assert all(s.obs["state"].shape == (2,) for s in steps)
    assert env.gaps[0].tolist() == [1.0]  # the context's last gap: the 1-action step
    while not steps[0].truncated:  # the horizon truncates, counting env steps
        steps = env.step_wait(env.step_async([0], chunk[:1]))
    assert env._elapsed[0] == HORIZON and not steps[0].terminated
    with pytest.raises(RuntimeError, match="reset them first"):
        env.step_async([0], chunk[:1])


class FixedReflector(torch.nn.Module):
    """Success logits rising by one per call (p = sigmoid(-2), sigmoid(-1), ...), progress 0."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, frames, tasks):
        logit = float(self.calls) - 2.0
        self.calls += 1
        return torch.tensor([[logit, 0.0]] * len(frames))


@pytest.mark.parametrize("mode", ["sparse", "relative", "progress"])
def test_reward_and_termination_come_from_the_reflector(trained, mode):
    out, _ = trained
    bench = benchmark(out, world_model_reward=mode)
    env = bench.make_env([], EnvConfig(world_model=str(out), world_model_reward=mode, num_envs=1))
    env.model.reflector = FixedReflector()
    env.threshold = 0.6  # sigmoid(0) = 0.5 < 0.6 <= sigmoid(1): success on the 3rd model step
    env.reset_slots([0], first_episodes(bench.tasks("eval"), 1)[:1])  # call 0: p = sigmoid(-2)
    step = env.step_wait(env.step_async([0], np.zeros((1, 8, 2), np.float32)))[0]
    assert step.terminated and step.success and step.steps == 6  # 3 model steps of k = 2
    p = torch.sigmoid(torch.tensor([-2.0, -1.0, 0.0, 1.0])).numpy()
    if mode == "sparse":
        np.testing.assert_allclose(step.rewards, [0, 0, 0, 0, 0, 1])
    elif mode == "relative":  # p_t - p_{t-1} on each model step's last env step
        np.testing.assert_allclose(
            step.rewards, [0, p[1] - p[0], 0, p[2] - p[1], 0, p[3] - p[2]], rtol=1e-5
        )
    else:  # the progress head (sigmoid(0)) on every env step
        np.testing.assert_allclose(step.rewards, [0.5] * 6)


def test_rollouts_are_seeded_and_the_eval_protocol_runs_unchanged(trained):
    from vla_rl.evaluation.protocol import evaluate
    from vla_rl.policies.trivial import RandomPolicy
    from vla_rl.rollout.engine import RolloutEngine

    out, _ = trained
    bench = benchmark(out)
    cfg = EnvConfig(world_model=str(out), num_envs=2, max_steps=6, video_size=0)
    episodes = first_episodes(bench.tasks("eval"), 2)

    def run(seed):
        env = bench.make_env([], cfg)
        policy = RandomPolicy.for_benchmark(bench)
        torch.manual_seed(0)
        records = RolloutEngine(env, 1).run(policy, episodes, seed=seed, keep_steps=True)
        return [np.concatenate([o["state"] for o in r.observations]) for r in records]

    first, again, other = run(0), run(0), run(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    res = evaluate(
        RandomPolicy.for_benchmark(bench), bench, episodes_per_task=2, env_cfg=cfg, progress=False
    )
    assert res["num_episodes"] == 4 and set(res["per_task"]) == set(TASKS)


def test_world_model_eval_reports_every_measurement(trained, tmp_path):
    from vla_rl.commands.world_model import WorldModelEvalConfig, run_eval

    out, _ = trained
    res = run_eval(
        WorldModelEvalConfig(
            world_model=str(out),
            horizon=3,
            starts_per_episode=2,
            output=str(tmp_path / "e" / "eval.json"),
            videos=2,
        )
    )
    p, r = res["prediction"], res["reflector"]
    for name in (
        "mse",
        "copy_last_mse",
        "psnr",
        "copy_last_psnr",
        "moving_mse",
        "copy_last_moving_mse",
        "action_shuffle_gap",
        "state_mse",
    ):
        assert len(p[name]) == 3
    assert p["horizon_env_steps"] == [2, 4, 6]
    assert r["auc_real"] is not None and 0 <= r["auc_real"] <= 1
    assert {"auc_generated", "hallucinated_success_rate", "detected_success_rate"} <= set(r)
    assert (tmp_path / "e" / "prediction.mp4").is_file()
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["reflector"] == r


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------
def test_bad_input_exits_2_with_one_line_and_writes_nothing(trained, tmp_path, capsys):
    from vla_rl.cli import main

    out, _ = trained
    no_images = make_dataset(tmp_path / "no_images", images=False)
    no_actions = make_dataset(tmp_path / "no_actions", action_dim=0)
    other_task = make_dataset(tmp_path / "other", tasks={"move the square up": (0, -1)})
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "config.json").write_text('{"policy_type": "flow"}')
    run = tmp_path / "run"
    train = ["world-model", "train", "--output-dir", str(run)]
    cases = [
        (train + ["--dataset", str(no_images)], "holds no camera images"),
        (train + ["--dataset", str(no_actions)], "has no 'action' feature"),
        (train + ["--dataset", str(tmp_path / "missing")], "no such dataset directory"),
        (train, "--dataset is required"),
        (
            train + ["--dataset", str(no_images), "--model.channels", "12", "24"],
            "divisible by --model.norm-groups",
        ),
        (["world-model", "fly"], "valid choices: train, eval"),
        (
            [
                "world-model",
                "eval",
                "--world-model",
                str(policy_dir),
                "--output",
                str(run / "e.json"),
            ],
            "policy_type 'flow'; expected a world model",
        ),
        (
            [
                "world-model",
                "eval",
                "--world-model",
                str(out),
                "--dataset",
                str(other_task),
                "--output",
                str(run / "e.json"),
            ],
            "not one the world model was trained on",
        ),
        (
            ["eval", "--policy", "random", "--benchmark", "worldmodel", "--output-dir", str(run)],
            "needs --env.world-model",
        ),
        (
            [
                "eval",
                "--policy",
                "random",
                "--benchmark",
                "worldmodel",
                "--env.world-model",
                str(out),
                "--tasks",
                "reach-v3",
                "--output-dir",
                str(run),
            ],
            "unknown task 'reach-v3'",
        ),
        (
            [
                "eval",
                "--policy",
                "random",
                "--benchmark",
                "worldmodel",
                "--env.world-model",
                str(out),
                "--env.world-model-reward",
                "dense",
                "--output-dir",
                str(run),
            ],
            "sparse, relative, progress",
        ),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not run.exists(), args


# ---- training in the world model, evaluated in the real simulator -----------------------------
MW_TASK = "button-press-topdown-v3"


@pytest.fixture(scope="module")
def metaworld_model(tmp_path_factory):
    """A world model with one Meta-World task's name, instruction and spaces (Ds 39, Da 4: the
    squares zero-padded), trained for 2 steps: enough to run in, not to be right."""
    from vla_rl.benchmarks.metaworld import ACTION_DIM, INSTRUCTIONS, STATE_DIM

    root = tmp_path_factory.mktemp("mw")
    # robot_type names the source benchmark: the task is then named as in Meta-World
    tasks = {INSTRUCTIONS[MW_TASK]: (1, 0)}
    data = make_dataset(root / "data", tasks=tasks, state_dim=STATE_DIM, action_dim=ACTION_DIM,
                        robot_type="metaworld")  # fmt: skip
    train_world_model(config(data, root / "wm", steps=2, val_every=2, save_every=2, videos=0))
    return root / "wm"


def finetune_args(model, run, *extra):
    return ["finetune", "--base", "metaworld-flow", "--method", "grpo", "--benchmark",
            "worldmodel", "--env.world-model", str(model), "--eval-benchmark", "metaworld",
            "--env-steps", "1", "--eval-episodes", "1", "--final-eval-episodes", "1",
            "--videos", "0", "--env.max-steps", "8", "--env.num-envs", "1",
            "--env.num-workers", "0", "--grpo.group-size", "2", "--grpo.episodes-per-step", "2",
            "--grpo.rollout-envs", "2", "--grpo.rollout-workers", "0", "--logger", "none",
            "--no-progress", "--output-dir", str(run), *extra]  # fmt: skip


def test_finetune_in_the_world_model_evaluates_in_metaworld(metaworld_model, tmp_path, capsys):
    from vla_rl.cli import main

    run = tmp_path / "run"
    assert main(finetune_args(metaworld_model, run)) == 0
    capsys.readouterr()
    res = json.loads((run / "results.json").read_text())
    assert res["rl_steps"] == 1 and res["config"]["benchmark"] == "worldmodel"
    assert res["config"]["eval_benchmark"] == "metaworld"
    # the result, the base and every curve point ran on Meta-World's eval split
    for side in (res, res["base"]):
        assert side["protocol"]["benchmark"] == "metaworld" and list(side["per_task"]) == [MW_TASK]
        assert side["protocol"]["benchmark_version"].keys() == {"metaworld", "mujoco"}
        assert side["episodes"][0]["init_id"] == 1_000_000  # Meta-World's first eval seed
    assert len(res["curve"]) == 2 and all(list(p["per_task"]) == [MW_TASK] for p in res["curve"])


def test_eval_benchmark_mismatches_exit_2_with_one_line(trained, metaworld_model, tmp_path, capsys):
    from vla_rl.cli import main
    from vla_rl.core.config import ConfigError
    from vla_rl.runs.run import check_same_spaces

    squares, _ = trained
    run = tmp_path / "run"
    starts = len(benchmark(metaworld_model).tasks("train")[0].init_ids)
    cases = [
        (finetune_args(squares, run, "--tasks", "move the square right"),
         "task 'move the square right' of --benchmark worldmodel is not one of its tasks"),
        (finetune_args(metaworld_model, run, "--grpo.episodes-per-step", str(2 * (starts + 1))),
         f"task {MW_TASK!r} has {starts}: set --grpo.episodes-per-step to at most {2 * starts}"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not run.exists(), args
    world = benchmark(metaworld_model)
    world.state_dim = 7  # the check setup_run makes once the base is loaded
    with pytest.raises(
        ConfigError, match="worldmodel has 7-D states, --eval-benchmark metaworld 39-D"
    ):
        check_same_spaces(world, get_benchmark("metaworld"))


def test_group_episodes_beyond_the_starts_is_a_config_error(metaworld_model):
    from vla_rl.core.benchmark import group_episodes
    from vla_rl.core.config import ConfigError

    tasks = benchmark(metaworld_model).tasks("train")
    n = len(tasks[0].init_ids)
    assert len(group_episodes(tasks, n, 2, np.random.default_rng(0))) == 2 * n
    with pytest.raises(ConfigError, match=f"has {n} train initial states; asked for {n + 1}"):
        group_episodes(tasks, n + 1, 2, np.random.default_rng(0))
