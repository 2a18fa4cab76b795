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
