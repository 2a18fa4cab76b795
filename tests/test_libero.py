"""LIBERO smoke tests: one env per suite, stepped, and the real BDDL success predicate checked by
placing the goal objects where the task wants them. Needs the [libero] extra (~5 s per env)."""

import importlib.util
import os

import numpy as np
import pytest

pytestmark = [
    pytest.mark.libero,
    pytest.mark.skipif(
        importlib.util.find_spec("libero") is None,
        reason="LIBERO not installed: pip install -e '.[libero]'",
    ),
]

SUITES = ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"]


def placement_task(bench):
    """The first task whose goals are all (On obj target) / (In obj region), outside cabinets and
    caddies (whose closed or narrow compartments an object cannot be dropped into)."""
    from libero.libero import get_libero_path
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    suite = bench._suite
    for i in range(suite.get_num_tasks()):
        task = suite.get_task(i)
        path = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        goals = robosuite_parse_problem(path)["goal_state"]
        if all(g[0] in ("on", "in") and not any(w in g[2] for w in ("cabinet", "caddy"))
               for g in goals):  # fmt: skip
            return task.name, goals
    raise AssertionError(f"no placement task in {bench.name}")


@pytest.mark.parametrize("suite", SUITES)
def test_success_predicate_becomes_true_when_objects_are_placed(suite):
    from vla_rl.benchmarks.libero import HORIZONS, NOOP_ACTION
    from vla_rl.core.benchmark import EnvConfig, get_benchmark

    bench = get_benchmark(suite)
    name, goals = placement_task(bench)
    task = bench.tasks("eval", [name])[0]
    assert task.max_steps == HORIZONS[suite]
    env = bench.env_factory(EnvConfig(video_size=0))()
    try:
        obs, info = env.reset(options={"task": task, "init_id": task.init_ids[0]})
        assert obs["state"].shape == (8,) and not info["success"]
        noop = np.asarray(NOOP_ACTION)
        for _ in range(3):
            obs, _, _, _, info = env.step(noop)
        assert not info["success"]
        sim = env._env.env.sim
        robosuite_env = env._env.env
        for k, (_, obj, target) in enumerate(goals):
            target_pos = robosuite_env.object_states_dict[target].get_geom_state()["pos"]
            start, _ = sim.model.get_joint_qpos_addr(f"{obj}_joint0")
            # Drop each object just above its target (stagger several in one container).
            sim.data.qpos[start : start + 3] = target_pos + np.array([0.03 * k, 0, 0.05 + 0.05 * k])
        sim.data.qvel[:] = 0
        sim.forward()
        for _ in range(40):  # let the objects settle
            obs, _, terminated, truncated, info = env.step(noop)
        assert info["success"], f"{suite}/{name}: goal {goals} not detected"
    finally:
        env.close()


def test_images_from_both_cameras():
    from vla_rl.core.benchmark import EnvConfig, get_benchmark

    bench = get_benchmark("libero_spatial")
    task = bench.tasks("eval")[0]
    env = bench.env_factory(EnvConfig(images=True, image_size=64, video_size=0))()
    try:
        obs, _ = env.reset(options={"task": task, "init_id": 0})
        assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
        assert obs["image"][0].std() > 0 and obs["image"][1].std() > 0
    finally:
        env.close()


def test_train_and_eval_init_states_are_disjoint():
    from vla_rl.core.benchmark import check_disjoint, get_benchmark

    bench = get_benchmark("libero_goal")
    train, eval_ = bench.tasks("train"), bench.tasks("eval")
    check_disjoint(train, eval_)
    assert len(eval_[0].init_ids) == 25 and len(train[0].init_ids) == 25


def test_import_writes_nothing_to_home(tmp_path, monkeypatch):
    import subprocess
    import sys

    env = dict(os.environ, HOME=str(tmp_path))
    code = "import vla_rl.benchmarks.libero as m; m.LIBERO_SPATIAL().tasks('eval')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, stdin=subprocess.DEVNULL,
                   capture_output=True)  # fmt: skip
    written = [p for p in tmp_path.rglob("*") if ".cache" not in p.parts]
    assert written == [], f"import wrote to HOME: {written}"


@pytest.mark.parametrize(
    "suite, task_index",
    [
        ("libero_spatial", 4),  # a bowl from the top drawer
        ("libero_object", 0),  # into the basket
        ("libero_goal", 8),  # onto the plate
        ("libero_goal", 0),  # open the middle drawer (~80 steps)
        ("libero_goal", 7),  # turn on the stove (~90 steps)
    ],
)
def test_scripted_expert_episode_reaches_the_bddl_goal(suite, task_index):
    """One expert episode per suite, from an eval initial state, reaches LIBERO's own success
    predicate (libero_spatial task 4 starts the bowl inside the top drawer)."""
    from vla_rl.benchmarks.libero_scene import PRIVILEGED_DIM
    from vla_rl.core.benchmark import EnvConfig, get_benchmark
    from vla_rl.core.types import stack_obs
    from vla_rl.policies.scripted import ScriptedPolicy

    bench = get_benchmark(suite)
    task = bench.tasks("eval")[task_index]
    policy = ScriptedPolicy.for_benchmark(bench)
    env = bench.env_factory(EnvConfig(video_size=0))()
    try:
        obs, info = env.reset(options={"task": task, "init_id": task.init_ids[0]})
        assert obs["privileged"].shape == (PRIVILEGED_DIM,) and not info["success"]
        for _ in range(task.max_steps):
            batch = stack_obs([dict(obs, task=task.name, instruction=task.instruction)])
            action = policy.sample_actions(batch, deterministic=True).actions[0, 0].numpy()
            obs, _, _, truncated, info = env.step(action)
            if info["success"] or truncated:
                break
        assert info["success"], f"{suite}/{task.name}: the expert did not reach the goal"
    finally:
        env.close()


def test_scripted_experts_refuse_uncovered_tasks_in_one_line():
    from vla_rl.policies.scripted_libero import check_covered, uncovered_reason

    for covered in (
        "put_the_bowl_on_the_plate",
        "open_the_middle_drawer_of_the_cabinet",  # open
        "open_the_top_drawer_and_put_the_bowl_inside",  # in, into a closed drawer
        "turn_on_the_stove",  # turnon
    ):
        assert uncovered_reason(covered) is None, covered
    assert "plate" in uncovered_reason("push_the_plate_to_the_front_of_the_stove")
    close_it = "KITCHEN_SCENE4_put_the_black_bowl_in_the_bottom_drawer_of_the_cabinet_and_close_it"
    assert "'close' step" in uncovered_reason(close_it)
    with pytest.raises(ValueError, match="push_the_plate") as err:
        check_covered("push_the_plate_to_the_front_of_the_stove")
    assert "\n" not in str(err.value)


def test_object_state_observation_contents_and_shapes():
    """--env.object-state: 36-D = the 8-D proprio + 4 x (box centre, w x y z quaternion) of the
    task's objects of interest; the first slot is where the simulator says the object is."""
    from vla_rl.benchmarks.libero import OBJECT_STATE_DIM, STATE_DIM
    from vla_rl.core.benchmark import EnvConfig, get_benchmark

    cfg = EnvConfig(video_size=0, object_state=True)
    bench = get_benchmark("libero_spatial", env=cfg)
    assert bench.state_dim == OBJECT_STATE_DIM == 36
    task = bench.tasks("eval")[0]
    env = bench.env_factory(cfg)()
    try:
        obs, _ = env.reset(options={"task": task, "init_id": task.init_ids[0]})
        assert obs["state"].shape == (36,) and obs["state"].dtype == np.float32
        robosuite_env = env._env.env
        names = robosuite_env.obj_of_interest
        assert names == ["akita_black_bowl_1", "plate_1"]
        poses = obs["state"][STATE_DIM:].reshape(4, 7)
        bowl = robosuite_env.sim.data.body_xpos[
            robosuite_env.sim.model.body_name2id(names[0] + "_main")
        ]
        assert np.linalg.norm(poses[0, :2] - bowl[:2]) < 0.02  # box centre over the body origin
        assert abs(np.linalg.norm(poses[0, 3:]) - 1) < 1e-5 and np.all(poses[2:] == 0)
    finally:
        env.close()
    # No task of the five suites has more objects of interest than the observation's slots.
    import glob

    from libero.libero import get_libero_path
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"):
        for path in glob.glob(os.path.join(get_libero_path("bddl_files"), suite, "*.bddl")):
            assert len(robosuite_parse_problem(path)["obj_of_interest"]) <= 4, path


def test_object_state_follows_from_the_policy_and_is_refused_elsewhere():
    from vla_rl.core.benchmark import EnvConfig, apply_policy_observation, get_benchmark
    from vla_rl.core.config import ConfigError

    class Reads36:
        state_dim = 36

    bench = get_benchmark("libero_spatial")
    cfg = apply_policy_observation(bench, EnvConfig(), Reads36())
    assert cfg.object_state and bench.state_dim == 36

    class Reads8:
        state_dim = 8

    with pytest.raises(ConfigError, match="drop --env.object-state"):
        apply_policy_observation(get_benchmark("libero_spatial", env=cfg), cfg, Reads8())
    with pytest.raises(ConfigError, match="applies to the LIBERO suites"):
        get_benchmark("metaworld", env=EnvConfig(object_state=True))


def test_dataset_round_trip_with_two_cameras_and_frames_rendered_from_sim_states(tmp_path):
    """collect writes both cameras, the proprio and the simulator states; render-dataset turns
    the states back into the same frames (up to MP4 compression; a frame 10 steps off differs
    far more); LeRobotDataset reads it all back."""
    from vla_rl.commands.collect import CollectConfig, collect
    from vla_rl.commands.render_dataset import RenderDatasetConfig, render_dataset
    from vla_rl.core.benchmark import EnvConfig
    from vla_rl.data.lerobot_dataset import LeRobotDataset

    task = "pick_up_the_black_bowl_on_the_ramekin_and_place_it_on_the_plate"
    env = EnvConfig(images=True, num_envs=1, num_workers=0, video_size=0)
    collect(CollectConfig(output=str(tmp_path / "d"), benchmark="libero_spatial", tasks=(task,),
                          episodes=1, progress=False, env=env))  # fmt: skip
    recorded = LeRobotDataset(tmp_path / "d").episode(0)
    assert set(recorded.images) == {"agentview", "wrist"} and recorded.state.shape[1] == 8
    assert recorded.images["wrist"].shape[1:] == (128, 128, 3) and recorded.success
    assert recorded.extras["observation.sim_state"].shape == (recorded.length, 92 + 2 * 7)
    render_dataset(RenderDatasetConfig(dataset=str(tmp_path / "d"), output=str(tmp_path / "r"),
                                       progress=False))  # fmt: skip
    rendered = LeRobotDataset(tmp_path / "r").episode(0)
    np.testing.assert_array_equal(rendered.action, recorded.action)
    for cam in ("agentview", "wrist"):
        a = recorded.images[cam].astype(np.float32)
        b = rendered.images[cam].astype(np.float32)
        same = np.abs(a - b).mean((1, 2, 3))
        shifted = np.abs(a[10:] - b[:-10]).mean((1, 2, 3))
        assert same.max() < 10, (cam, same.max())
        assert shifted.mean() > 2 * same.mean(), (cam, shifted.mean(), same.mean())
