"""LIBERO's original HDF5 demonstration files: a tiny file in the real layout, read back."""

import json

import numpy as np
import pytest

h5py = pytest.importorskip("h5py", reason="h5py not installed (pip install -e '.[test]')")

from vla_rl.data.libero_hdf5 import read_libero_hdf5  # noqa: E402


def write_tiny_libero_file(path, lengths=(4, 3), size=8):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps(
            {"problem_name": "libero_tabletop_manipulation",
             "language_instruction": "put the bowl on the plate"}
        )  # fmt: skip
        data.attrs["env_args"] = json.dumps({"env_name": "Libero_Tabletop_Manipulation"})
        for i, t in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            demo.create_dataset("actions", data=rng.uniform(-1, 1, (t, 7)))
            demo.create_dataset("rewards", data=np.eye(t)[-1])  # goal reached at the last step
            demo.create_dataset("dones", data=np.eye(t)[-1].astype(np.uint8))
            demo.create_dataset("states", data=rng.normal(size=(t, 45)))
            obs = demo.create_group("obs")
            obs.create_dataset("ee_states", data=rng.normal(size=(t, 6)))
            obs.create_dataset("gripper_states", data=rng.normal(size=(t, 2)))
            obs.create_dataset("joint_states", data=rng.normal(size=(t, 7)))
            image = np.zeros((t, size, size, 3), np.uint8)
            image[:, 0, 0] = 255  # top-left pixel as stored (upside down)
            obs.create_dataset("agentview_rgb", data=image)
            obs.create_dataset("eye_in_hand_rgb", data=image)
    return path


def test_reads_demos_with_state_actions_and_upright_images(tmp_path):
    path = write_tiny_libero_file(tmp_path / "put_the_bowl_on_the_plate_demo.hdf5")
    episodes = read_libero_hdf5(path)
    assert [e.length for e in episodes] == [4, 3]
    with h5py.File(path) as f:
        demo = f["data/demo_1"]
        expected_state = np.concatenate(
            [demo["obs/ee_states"][:], demo["obs/gripper_states"][:]], 1
        )
        np.testing.assert_allclose(episodes[1].state, expected_state, rtol=1e-6)
        np.testing.assert_allclose(episodes[1].action, demo["actions"][:], rtol=1e-6)
    first = episodes[0]
    assert first.task == "put the bowl on the plate" and first.success
    assert first.state.shape == (4, 8) and first.state.dtype == np.float32
    assert set(first.images) == {"agentview", "wrist"}
    # rotated by 180 degrees, as the libero benchmarks rotate camera frames
    assert (
        first.images["agentview"][0, -1, -1, 0] == 255
        and first.images["agentview"][0, 0, 0, 0] == 0
    )


def test_round_trips_into_a_lerobot_dataset(tmp_path):
    from vla_rl.data.lerobot_dataset import LeRobotDataset, write_dataset

    episodes = read_libero_hdf5(write_tiny_libero_file(tmp_path / "demo.hdf5", size=16))
    write_dataset(tmp_path / "ds", episodes, fps=20, robot_type="libero")
    loaded = list(LeRobotDataset(tmp_path / "ds"))
    for a, b in zip(episodes, loaded):
        np.testing.assert_array_equal(a.state, b.state)
        np.testing.assert_array_equal(a.action, b.action)
        assert b.images["agentview"].shape == a.images["agentview"].shape


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such LIBERO"):
        read_libero_hdf5(tmp_path / "missing.hdf5")
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.create_group("something")
    with pytest.raises(ValueError, match="no 'data' group"):
        read_libero_hdf5(tmp_path / "other.hdf5")
