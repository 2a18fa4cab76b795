"""The LIBERO scene helpers' pure parts (no simulator): goal parsing and the rotations the
scripted experts' orientation control uses, checked by hand."""

import numpy as np

from vla_rl.benchmarks.libero_scene import GoalStep, goal_steps


def test_goal_steps_keep_the_bddl_order_and_kinds():
    steps = goal_steps([["Open", "cabinet_1_top_region"], ["in", "bowl_1", "cabinet_1_top_region"]])
    assert steps == [
        GoalStep("open", "cabinet_1_top_region"),
        GoalStep("in", "bowl_1", "cabinet_1_top_region"),
    ]


def test_axis_angle_round_trip_and_a_hand_checked_quarter_turn():
    from vla_rl.policies.scripted_libero import axis_angle_to_matrix, matrix_to_axis_angle

    quarter = axis_angle_to_matrix(np.array([0.0, 0.0, np.pi / 2]))  # 90 degrees about z
    np.testing.assert_allclose(quarter, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(quarter @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(size=3)
        v *= rng.uniform(0.01, 3.1) / np.linalg.norm(v)
        np.testing.assert_allclose(matrix_to_axis_angle(axis_angle_to_matrix(v)), v, atol=1e-9)
    # A half turn (LIBERO's hand points down: 180 degrees about x) keeps its axis.
    half = matrix_to_axis_angle(axis_angle_to_matrix(np.array([np.pi, 0.0, 0.0])))
    np.testing.assert_allclose(np.abs(half), [np.pi, 0.0, 0.0], atol=1e-6)


def test_handle_geometry_picks_the_farthest_box_and_its_long_horizontal_axis():
    from vla_rl.benchmarks.libero_scene import farthest_along, long_axis_yaw

    # A drawer's face (y -0.17..-0.166), two posts (to -0.15) and the bar (to -0.135): the bar
    # reaches farthest along +y, the back wall farthest along -y.
    lo = np.array([[-0.08, -0.17, 0.98], [0.0, -0.171, 1.01], [-0.01, -0.15, 1.007], [0, -0.34, 1]])
    hi = np.array([[0.13, -0.166, 1.05], [0.01, -0.15, 1.02], [0.08, -0.135, 1.024], [0, -0.33, 1]])
    assert farthest_along(lo, hi, np.array([0.0, 1.0, 0.0])) == 2
    assert farthest_along(lo, hi, np.array([0.0, -1.0, 0.0])) == 3
    assert farthest_along(lo, hi, np.array([0.0, 0.0, 1.0])) == 0  # the face's top, z 1.05
    # A bar 0.088 long along its local x: yaw 0 unrotated, -pi/2 turned a quarter about z (an
    # axis has no sign: +pi/2 wraps to -pi/2), pi/4 turned an eighth.
    half = np.array([0.044, 0.008, 0.008])
    assert long_axis_yaw(np.eye(3), half) == 0.0
    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert np.isclose(long_axis_yaw(quarter, half), -np.pi / 2)
    c = np.sqrt(0.5)
    eighth = np.array([[c, -c, 0.0], [c, c, 0.0], [0.0, 0.0, 1.0]])
    assert np.isclose(long_axis_yaw(eighth, half), np.pi / 4)
    # The stove knob's fin: its longest axis is local z, lying along world x (measured).
    fin = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns: local axes
    assert np.isclose(long_axis_yaw(fin, np.array([0.012, 0.024, 0.035])), 0.0)


def test_finger_yaw_and_facing_a_drawer_by_hand():
    from vla_rl.policies.scripted_libero import facing, finger_yaw, yaw_matrix

    # The fingers close along world y at yaw 0; along x a quarter turn away (wrapped to -pi/2).
    assert finger_yaw(np.array([0.0, 1.0, 0.0])) == 0.0
    assert np.isclose(finger_yaw(np.array([1.0, 0.0, 0.0])), -np.pi / 2)
    assert np.isclose(finger_yaw(np.array([0.0, -1.0, 0.0])), 0.0)  # a direction has no sign
    d = np.array([-1.0, 1.0, 0.0]) / np.sqrt(2)
    assert np.isclose(finger_yaw(d), np.pi / 4)
    np.testing.assert_allclose(yaw_matrix(np.pi / 4) @ [0.0, 1.0, 0.0], d, atol=1e-12)
    # A drawer opening along +y (libero_goal's cabinet): a quarter turn about -x points the
    # down-pointing hand along -y, into the drawer, and fingers closing along y close along z.
    r = facing(np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(r, [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-12)
    np.testing.assert_allclose(r @ [0.0, 0.0, -1.0], [0.0, -1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(r @ [0.0, 1.0, 0.0], [0.0, 0.0, -1.0], atol=1e-12)
    # Turned with the cabinet (opening along -x): the hand points along +x.
    np.testing.assert_allclose(
        facing(np.array([-1.0, 0.0, 0.0])) @ [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], atol=1e-12
    )
