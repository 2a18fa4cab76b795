"""Scripted experts for LIBERO (`--policy scripted` on the LIBERO suites).

Each is a waypoint machine planned from the simulator's privileged object boxes
(`obs["privileged"]`, benchmarks/libero_scene.py) and executed with LIBERO's OSC_POSE controller
(7-D: xyz delta, axis-angle delta, gripper). The goal's steps come from the task's BDDL file:

* on / in (pick and place): approach above the grasp point, descend, close, lift, carry above
  the target, lower, release, retreat. The grasp point is the top of the object's box, or for a
  bowl a point on its rim (a bowl is wider than the open gripper).

Not covered, with the reason (`uncovered_reason`; the experts raise a one-line error on these
tasks, so evaluate the others with `--tasks`):

* open / close (drawers) and turnon / turnoff (the stove's knob): they need a handle grasp and
  a pull along the joint, or a knob turn; not written yet (libero_goal tasks 0, 3, 7).
* moving a plate (libero_goal "push the plate to the front of the stove"): wider than the open
  gripper both ways, so it needs a push; a straight push from behind the plate was tried and
  drove the hand into the cabinet beside it.

The phase of each episode lives in the policy, keyed by `obs["episode"]` (a random id the env
draws at every reset), so any batching of slots gives the same actions. Demonstrations vary
through seeded per-episode waypoint offsets (`waypoint_noise`, keyed by the task and the reset
position of the object, so an episode's offsets do not depend on what ran before) and optional
Gaussian action noise (`action_noise`). Closed-loop: Ta = 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import torch

from vla_rl.benchmarks.libero_scene import GoalStep, goal_steps
from vla_rl.core.policy import BasePolicy
from vla_rl.core.types import ActionSample, Observation

GAIN = 20.0
"""Action per metre of position error. At action 1 the OSC_POSE controller moved the hand about
1 cm per env step (measured on libero_spatial), so the hand closes a 5 cm gap at full speed and
slows inside it."""
APPROACH_HEIGHT = 0.10  # m above the grasp point before descending onto it
LIFT_CLEARANCE = 0.10  # m the carried object's bottom clears the target's top while carrying
PLACE_CLEARANCE = 0.02  # m between the object's bottom and the target's top when released
CLOSE_TICKS = 10  # env steps the gripper takes to close on an object
RELEASE_TICKS = 8
TOLERANCE = 0.01  # m: a waypoint counts as reached
RIM_INSET = 0.008  # m from a bowl's outer edge to the fingertips' centre on its rim
ROT_GAIN = 4.0  # rotation action per radian of orientation error (action 1 = 0.5 rad)


@cache
def task_goal(task_name: str) -> tuple[GoalStep, ...]:
    """The goal steps of a LIBERO task, parsed from its BDDL file (found by the task's name in
    the installed package's bddl folders)."""
    from pathlib import Path

    from libero.libero import get_libero_path
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    root = Path(get_libero_path("bddl_files"))
    for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"):
        path = root / suite / f"{task_name}.bddl"
        if path.is_file():
            return tuple(goal_steps(robosuite_parse_problem(str(path))["goal_state"]))
    matches = sorted(root.glob(f"*/{task_name}.bddl"))
    if not matches:
        raise ValueError(f"no BDDL file for LIBERO task {task_name!r}")
    return tuple(goal_steps(robosuite_parse_problem(str(matches[0]))["goal_state"]))


def uncovered_reason(task_name: str, goal: tuple[GoalStep, ...] | None = None) -> str | None:
    """Why the experts cannot do this task's goal (default: `task_goal`), or None."""
    for step in goal if goal is not None else task_goal(task_name):
        if step.kind not in ("on", "in"):
            return f"its goal has a {step.kind!r} step; the experts do on / in (pick and place)"
        if step.subject.startswith("plate"):
            return (
                "it moves a plate, wider than the open gripper both ways (it needs a push; "
                "a push from behind was tried on libero_goal and drove the hand into the cabinet)"
            )
    return None


def check_covered(task_name: str, goal: tuple[GoalStep, ...] | None = None) -> None:
    """Raise a one-line ValueError when the experts cannot do this task."""
    reason = uncovered_reason(task_name, goal)
    if reason is not None:
        raise ValueError(f"no scripted LIBERO expert for task {task_name!r}: {reason}")


@dataclass
class _Episode:
    """What the expert remembers about one episode."""

    noise: np.ndarray  # (4,): grasp dx, dy, carry dz, place dxy scale, in metres
    step: int = -1
    phase: str = "approach"
    ticks: int = 0
    grasp: np.ndarray | None = None  # the grasp point fixed when the descent starts
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))  # grasp - object bottom
    carry_z: float = 0.0
    start_rot: np.ndarray | None = None

    def go(self, phase: str) -> None:
        self.phase, self.ticks = phase, 0


def axis_angle_to_matrix(v: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: the rotation matrix of the axis-angle 3-vector v."""
    angle = float(np.linalg.norm(v))
    if angle < 1e-9:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def matrix_to_axis_angle(r: np.ndarray) -> np.ndarray:
    """The axis-angle 3-vector of rotation matrix r (angle in [0, pi])."""
    cos = np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)
    angle = float(np.arccos(cos))
    if angle < 1e-9:
        return np.zeros(3)
    if np.pi - angle < 1e-6:  # near pi: the axis from the symmetric part
        k = np.sqrt(np.maximum((np.diag(r) + 1) / 2, 0))
        k *= np.sign(np.r_[1.0, r[0, 1] + 1e-12, r[0, 2] + 1e-12])
        return k / np.linalg.norm(k) * angle
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return w / (2 * np.sin(angle)) * angle


def _bottom_centre(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])


def grasp_point(subject: str, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, float]:
    """Where the fingertips close on an object with box (lo, hi), and the hand's yaw (rad, about
    world z from its pose at the reset): the middle of the object's top at yaw 0 (the fingers
    close along world y), or for a bowl, which is wider than the open gripper, the point of its
    rim that faces the robot (-x) with the hand turned by 90 degrees so the fingers straddle the
    wall there. The far (+y) rim was tried first: it failed in libero_spatial's top drawer,
    whose side wall stops the fingers."""
    centre = (lo + hi) / 2
    size = hi - lo
    if "bowl" in subject:
        return np.array([lo[0] + RIM_INSET, centre[1], hi[2] - 0.02]), np.pi / 2
    depth = min(0.03, 0.5 * size[2])
    return np.array([centre[0], centre[1], max(hi[2] - depth, lo[2] + 0.01)]), 0.0


class ScriptedLiberoPolicy(BasePolicy):
    policy_type = "scripted"
    chunk_size = 1
    contract_benchmark = "libero_spatial"

    def __init__(
        self,
        action_noise: float = 0.0,
        waypoint_noise: float = 0.005,
        seed: int = 0,
        goals: Callable[[str], tuple[GoalStep, ...]] | None = None,
    ):
        """action_noise: std of Gaussian noise on every action (clipped to [-1, 1]); 0 = none.
        waypoint_noise: half-width (m) of the uniform per-episode offsets of the grasp and place
        points (the carry height varies by 4x it); 0 = the same plan for the same state.
        seed: keys those offsets. goals: a task's goal steps (the suite's `goal`, so a LIBERO-PRO
        task gets its own goal); None looks the task's BDDL file up by name (`task_goal`)."""
        super().__init__()
        self._goals = goals or task_goal
        self.action_noise = action_noise
        self.waypoint_noise = waypoint_noise
        self.seed = seed
        self._episodes: dict[int, _Episode] = {}

    @classmethod
    def for_benchmark(cls, benchmark: Any) -> ScriptedLiberoPolicy:
        return cls(goals=getattr(benchmark, "goal", None))

    def get_config(self) -> dict[str, Any]:
        return {
            "action_noise": self.action_noise,
            "waypoint_noise": self.waypoint_noise,
            "seed": self.seed,
        }

    def _episode(self, key: int, task: str, start: np.ndarray) -> _Episode:
        ep = self._episodes.get(key)
        if ep is None:
            if len(self._episodes) > 4096:  # finished episodes are never seen again
                self._episodes.clear()
            digest = hashlib.sha256(f"{self.seed}|{task}|{np.round(start, 4).tolist()}".encode())
            rng = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little"))
            noise = rng.uniform(-1.0, 1.0, 4) * self.waypoint_noise
            ep = self._episodes[key] = _Episode(noise=noise)
        return ep

    def sample_actions(self, obs: Observation, deterministic: bool = False) -> ActionSample:
        if "privileged" not in obs:
            raise ValueError("the scripted LIBERO experts need obs['privileged'] (LIBERO envs)")
        actions = np.zeros((len(obs["task"]), 7), np.float32)
        for b, task in enumerate(obs["task"]):
            goal = self._goals(task)
            check_covered(task, goal)
            priv = np.asarray(obs["privileged"][b], np.float64)
            ep = self._episode(int(obs["episode"][b]), task, priv[12:15])
            step = goal[int(priv[15])]
            state = np.asarray(obs["state"][b], np.float64)
            if ep.start_rot is None:
                ep.start_rot = axis_angle_to_matrix(state[3:6])
            actions[b] = self._pick_place(ep, step, priv, state)
        acts = torch.as_tensor(actions)[:, None]  # (B, Ta=1, Da)
        if self.action_noise > 0 and not deterministic:
            acts = acts + self.action_noise * torch.randn_like(acts)
        return ActionSample(actions=acts.clamp(-1.0, 1.0), log_prob=None)

    def _pick_place(
        self, ep: _Episode, step: GoalStep, priv: np.ndarray, state: np.ndarray
    ) -> np.ndarray:
        """One action of the pick-and-place machine for one episode."""
        eef = state[:3]
        lo, hi, tlo, thi = priv[0:3], priv[3:6], priv[6:9], priv[9:12]
        start_centre = priv[12:15]
        if int(priv[15]) != ep.step:  # a new goal step (or the first): plan it afresh
            ep.step = int(priv[15])
            ep.go("approach")
        ep.ticks += 1
        grip = -1.0
        target = eef.copy()
        obj_bottom = _bottom_centre(lo, hi)
        tcentre = (tlo + thi) / 2
        place = np.array([tcentre[0], tcentre[1], thi[2]]) + np.r_[ep.noise[3], -ep.noise[3], 0]

        _, yaw = grasp_point(step.subject, lo, hi)
        if ep.phase == "approach":
            g = grasp_point(step.subject, lo, hi)[0] + np.r_[ep.noise[0], ep.noise[1], 0.0]
            target = g + [0.0, 0.0, APPROACH_HEIGHT]
            err = target - eef
            if (np.linalg.norm(err[:2]) < TOLERANCE and abs(err[2]) < 2 * TOLERANCE) or (
                ep.ticks > 60
            ):
                ep.grasp = g
                ep.go("descend")
        elif ep.phase == "descend":
            target = ep.grasp
            if np.linalg.norm(target - eef) < TOLERANCE or ep.ticks > 40:
                ep.go("close")
        elif ep.phase == "close":
            target, grip = ep.grasp, 1.0
            if ep.ticks >= CLOSE_TICKS:
                ep.offset = ep.grasp - obj_bottom
                ep.carry_z = max(eef[2], thi[2] + ep.offset[2]) + LIFT_CLEARANCE + 4 * ep.noise[2]
                ep.go("lift")
        elif ep.phase == "lift":
            target, grip = np.array([eef[0], eef[1], ep.carry_z]), 1.0
            if eef[2] > ep.carry_z - 2 * TOLERANCE or ep.ticks > 50:
                lifted = (lo[2] + hi[2]) / 2 > start_centre[2] + 0.03
                ep.go("carry" if lifted else "approach")
        elif ep.phase in ("carry", "lower"):
            grip = 1.0
            if np.linalg.norm((eef - ep.offset) - obj_bottom) > 0.05:  # dropped it
                ep.go("approach")
                return self._action(ep, eef, eef, -1.0, yaw, state)
            if ep.phase == "carry":
                target = np.array([place[0] + ep.offset[0], place[1] + ep.offset[1], ep.carry_z])
                if np.linalg.norm((target - eef)[:2]) < TOLERANCE or ep.ticks > 80:
                    ep.go("lower")
            else:
                target = place + ep.offset + [0.0, 0.0, PLACE_CLEARANCE]
                if np.linalg.norm(target - eef) < TOLERANCE or ep.ticks > 40:
                    ep.go("release")
        elif ep.phase == "release":
            target = eef
            if ep.ticks >= RELEASE_TICKS:
                ep.go("retreat")
        elif ep.phase == "retreat":
            target = np.array([eef[0], eef[1], ep.carry_z])
            if ep.ticks > 30:  # the step still does not hold (else a new step began): retry
                ep.go("approach")
        return self._action(ep, target, eef, grip, yaw, state)

    @staticmethod
    def _action(
        ep: _Episode, target: np.ndarray, eef: np.ndarray, grip: float, yaw: float,
        state: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        """Position by a P-controller to `target`; orientation held at the reset pose turned by
        `yaw` about world z (OSC_POSE's rotation action is a world-frame axis-angle delta)."""
        c, s = np.cos(yaw), np.sin(yaw)
        want = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ ep.start_rot
        err = matrix_to_axis_angle(want @ axis_angle_to_matrix(state[3:6]).T)
        out = np.zeros(7)
        out[:3] = np.clip((target - eef) * GAIN, -1.0, 1.0)
        out[3:6] = np.clip(err * ROT_GAIN, -1.0, 1.0)
        out[6] = grip
        return out
