"""LeRobot v3.0 datasets: write/read round trip, reading lerobot-style layouts, `vla-rl collect`."""

import json

import numpy as np
import pytest

from vla_rl.data.lerobot_dataset import Episode, LeRobotDataset, write_dataset


def make_episode(t, task, seed, cams=("front",)):
    rng = np.random.default_rng(seed)
    images = {}
    for k, cam in enumerate(cams):
        frames = np.zeros((t, 32, 32, 3), np.uint8)
        frames[:, :, :, k % 3] = (np.arange(t) * 20 % 256)[:, None, None]  # brightness = time
        images[cam] = frames
    return Episode(
        task=task,
        state=rng.normal(size=(t, 5)).astype(np.float32),
        action=rng.uniform(-1, 1, size=(t, 3)).astype(np.float32),
        reward=rng.normal(size=t).astype(np.float32),
        success=bool(seed % 2),
        images=images,
    )


def test_round_trip_keeps_every_field(tmp_path):
    episodes = [make_episode(7, "open", 1), make_episode(4, "close", 2), make_episode(5, "open", 3)]
    write_dataset(tmp_path / "ds", episodes, fps=10, robot_type="toy")
    ds = LeRobotDataset(tmp_path / "ds")
    assert len(ds) == 3 and ds.fps == 10 and ds.cameras == ["observation.images.front"]
    assert ds.info["total_frames"] == 16 and ds.info["total_tasks"] == 2
    for original, loaded in zip(episodes, ds):
        np.testing.assert_array_equal(original.state, loaded.state)
        np.testing.assert_array_equal(original.action, loaded.action)
        np.testing.assert_array_equal(original.reward, loaded.reward)
        assert (loaded.task, loaded.success) == (original.task, original.success)
        frames = loaded.images["front"]
        assert frames.shape == original.images["front"].shape
        # H.264 is lossy: the per-frame brightness ramp must survive, to a few grey levels
        err = np.abs(frames.astype(int) - original.images["front"].astype(int)).mean()
        assert err < 4, err
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    all_actions = np.concatenate([e.action for e in episodes])
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(0), rtol=1e-5)
    assert stats["action"]["count"] == [16]


def test_reads_a_lerobot_style_layout(tmp_path):
    """Episodes spread over two data files, tasks indexed the pandas way, no next.* columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "lr"
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    info = {
        "codebase_version": "v3.0", "fps": 30, "chunks_size": 1000,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None,
        "features": {"observation.state": {"dtype": "float32", "shape": [2]},
                     "action": {"dtype": "float32", "shape": [1]}},
    }  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(info))
    for file_index, (start, n) in enumerate([(0, 3), (3, 2)]):
        idx = np.arange(start, start + n)
        pq.write_table(
            pa.table({
                "observation.state": [[float(i), -float(i)] for i in idx],
                "action": [[float(i) / 10] for i in idx],
                "episode_index": [file_index] * n, "frame_index": list(range(n)),
                "index": idx.tolist(), "task_index": [0] * n,
                "timestamp": [k / 30 for k in range(n)],
            }),
            root / f"data/chunk-000/file-{file_index:03d}.parquet",
        )  # fmt: skip
    pq.write_table(
        pa.table({
            "episode_index": [0, 1], "tasks": [["stack"], ["stack"]], "length": [3, 2],
            "dataset_from_index": [0, 3], "dataset_to_index": [3, 5],
            "data/chunk_index": [0, 0], "data/file_index": [0, 1],
        }),
        root / "meta/episodes/chunk-000/file-000.parquet",
    )  # fmt: skip
    pq.write_table(
        pa.table({"task_index": [0], "__index_level_0__": ["stack"]}), root / "meta/tasks.parquet"
    )
    ds = LeRobotDataset(root)
    second = ds.episode(1)
    np.testing.assert_array_equal(second.state, [[3, -3], [4, -4]])
    np.testing.assert_allclose(second.action[:, 0], [0.3, 0.4], rtol=1e-6)
    assert second.task == "stack" and not second.success and second.reward.tolist() == [0, 0]


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset"):
        LeRobotDataset(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(json.dumps({"codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match="only v3.0"):
        LeRobotDataset(tmp_path)
    with pytest.raises(ValueError, match="disagree"):
        Episode("t", np.zeros((3, 2)), np.zeros((2, 1)), np.zeros(3), True)


def test_collect_writes_train_split_demos_that_replay_to_success(tmp_path):
    from vla_rl.cli import main
    from vla_rl.core.benchmark import EnvConfig, get_benchmark

    out = tmp_path / "demos"
    code = main(["collect", "--output", str(out), "--tasks", "reach-v3", "--episodes", "2",
                 "--env.num-envs", "2", "--env.num-workers", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    ds = LeRobotDataset(out)
    meta = ds.info["vla_rl"]
    assert meta["split"] == "train" and meta["init_ids"]["reach-v3"] == [0, 1]
    bench = get_benchmark("metaworld")
    eval_ids = set(bench.tasks("eval", ["reach-v3"])[0].init_ids)
    assert not eval_ids & set(meta["init_ids"]["reach-v3"])
    # Replaying the recorded actions from the same initial state reproduces the success.
    task = bench.tasks("train", ["reach-v3"])[0]
    env = bench.env_factory(EnvConfig(video_size=0))()
    for i, init_id in enumerate(meta["init_ids"]["reach-v3"]):
        episode = ds.episode(i)
        assert episode.success and episode.task == task.instruction
        obs, _ = env.reset(options={"task": task, "init_id": init_id})
        np.testing.assert_allclose(obs["state"], episode.state[0], atol=1e-6)
        for action in episode.action:
            obs, _, _, _, info = env.step(action)
        assert info["success"]
    env.close()


def test_collect_records_a_chunked_policys_rollouts_failures_included(tmp_path):
    """The bundled flow base (Ta = 8) with action noise: one frame and action per env step, its
    failures kept, and the recorded actions replay the recorded states exactly."""
    from vla_rl.cli import main
    from vla_rl.core.benchmark import EnvConfig, get_benchmark

    out = tmp_path / "rollouts"
    args = ["collect", "--policy", "metaworld-flow", "--output", str(out), "--tasks",
            "reach-v3", "--episodes", "2", "--env.max-steps", "20", "--env.num-envs", "2",
            "--env.num-workers", "0", "--no-progress", "--no-successes-only"]  # fmt: skip
    assert main([*args, "--action-noise", "0.3"]) == 0
    ds = LeRobotDataset(out)
    assert len(ds) == 2
    bench = get_benchmark("metaworld")
    task = bench.tasks("train", ["reach-v3"])[0]
    env = bench.env_factory(EnvConfig(video_size=0))()
    noisy = []
    for i, init_id in enumerate(ds.info["vla_rl"]["init_ids"]["reach-v3"]):
        episode = ds.episode(i)
        assert not episode.success and len(episode.action) == 20  # 20 steps, not 3 chunks
        obs, _ = env.reset(options={"task": task, "init_id": init_id})
        for t, action in enumerate(episode.action[:-1]):
            obs, *_ = env.step(action)
            np.testing.assert_allclose(obs["state"], episode.state[t + 1], atol=1e-5)
        noisy.append(episode.action)
    env.close()
    assert main([*args, "--output", str(tmp_path / "clean")]) == 0
    clean = LeRobotDataset(tmp_path / "clean").episode(0).action
    assert 0.1 < np.abs(noisy[0] - clean).mean() < 0.5  # the noise is there, at its scale


def test_collect_with_nothing_to_keep_writes_nothing(tmp_path, capsys):
    from vla_rl.cli import main

    out = tmp_path / "none"
    code = main(["collect", "--policy", "zero", "--output", str(out), "--tasks", "reach-v3",
                 "--episodes", "1", "--env.max-steps", "5", "--env.num-workers", "0",
                 "--no-progress"])  # fmt: skip
    assert code == 2 and "no episode succeeded" in capsys.readouterr().err
    assert not out.exists()


def test_pretrain_runs_checkpoints_and_resumes(tmp_path):
    from vla_rl.cli import main
    from vla_rl.core.policy import load_policy

    data = tmp_path / "demos"
    assert main(["collect", "--output", str(data), "--tasks", "reach-v3", "--episodes", "2",
                 "--env.num-workers", "0", "--no-progress"]) == 0  # fmt: skip
    run = tmp_path / "run"
    args = ["pretrain", "--dataset", str(data), "--output-dir", str(run), "--batch-size", "16",
            "--hidden", "16", "--eval-every", "20", "--save-every", "20", "--eval-episodes", "1",
            "--env.num-envs", "1", "--env.num-workers", "0", "--env.max-steps", "40",
            "--logger", "none", "--no-progress"]  # fmt: skip
    assert main([*args, "--steps", "20"]) == 0
    first = json.loads((run / "checkpoint/state.json").read_text())
    assert first["step"] == 20 and len(first["curve"]) == 1
    files = {p.name for p in (run / "checkpoint").iterdir()}  # safetensors + JSON, no pickle
    assert {"tensors.safetensors", "tree.json", "policy"} <= files and "trainer.pt" not in files
    # a second invocation with --resume continues from step 20 instead of starting over
    assert main([*args, "--steps", "40", "--resume"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 40 and [p["step"] for p in results["curve"]] == [20, 40]
    assert (run / "learning_curve.png").stat().st_size > 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert any("train/bc_loss" in line for line in lines)
    policy = load_policy(str(run / "policy"))
    assert policy.policy_type == "flow" and policy.chunk_size == 8
    # normalisation statistics travel with the checkpoint
    actions = np.concatenate([e.action for e in LeRobotDataset(data)])
    np.testing.assert_allclose(policy.normalizer.action_low.numpy(), actions.min(0), rtol=1e-5)


def test_pretrain_bad_input(tmp_path, capsys):
    from vla_rl.cli import main

    assert main(["pretrain", "--dataset", str(tmp_path / "nope")]) == 2
    assert "not a LeRobot dataset" in capsys.readouterr().err
    assert main(["pretrain", "--dataset", "x", "--policy", "token"]) == 2
    assert "valid choices: flow" in capsys.readouterr().err


@pytest.mark.parametrize(("family", "extra", "chunk"), [("tokenvla", ["--decoding", "parallel"], 4),
                                                        ("diffusion", [], 8)])  # fmt: skip
def test_pretrain_other_families(tmp_path, family, extra, chunk):
    from vla_rl.cli import main
    from vla_rl.core.policy import load_policy

    data = tmp_path / "demos"
    assert main(["collect", "--output", str(data), "--tasks", "reach-v3", "--episodes", "1",
                 "--env.num-workers", "0", "--no-progress"]) == 0  # fmt: skip
    run = tmp_path / family
    assert main(["pretrain", "--policy", family, *extra, "--dataset", str(data), "--output-dir",
                 str(run), "--batch-size", "16", "--hidden", "32", "--steps", "10",
                 "--eval-every", "10", "--eval-episodes", "1", "--env.num-envs", "1",
                 "--env.num-workers", "0", "--env.max-steps", "20", "--logger", "none",
                 "--no-progress"]) == 0  # fmt: skip
    policy = load_policy(str(run / "policy"))
    assert policy.policy_type == family and policy.chunk_size == chunk
    assert json.loads((run / "results.json").read_text())["steps"] == 10
