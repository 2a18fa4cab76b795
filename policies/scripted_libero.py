"""Scripted experts for LIBERO (`--policy scripted` on the LIBERO suites).

Each is a waypoint machine planned from the simulator's privileged object boxes
(`obs["privileged"]`, benchmarks/libero_scene.py) and executed with LIBERO's OSC_POSE controller
(7-D: xyz delta, axis-angle delta, gripper). The goal's steps come from the task's BDDL file:

* on / in (pick and place): approach above the grasp point, descend, close, lift, carry above
  the target, lower, release, retreat. The grasp point is the top of the object's box, or for a
  bowl a point on its rim (a bowl is wider than the open gripper). An in step into a closed
  drawer (libero_goal "open the top drawer and put the bowl inside", whose goal is only the In
  predicate) opens it first (privileged[26]); after that the pick leans the hand's top away from
  the open drawer and lifts out from under it (upright, or straight up, it pushed the drawer
  shut or hit its floor and lost the bowl).
* open (a drawer, a slide joint): the hand turns to point into the drawer (against its opening
  direction, taken from the joint axis, never from a world axis) with its fingers closing
  vertically, goes to a point above and then PREGRASP in front of the handle (the turned hand is
  20 cm tall: turning low, its lower half swept the bowl and plate in front of the cabinet),
  reaches the handle bar, closes on it, pulls it along the axis to the joint limit, lets go,
  backs off and returns to the reset pose before the next step.
* turnon (the stove's knob, a hinge): above the knob's turning axis with the fingers across its
  fin, descend, close, turn the hand about the joint axis (at most TURN_MAX a grasp), let go,
  rise; again while the knob is not on.

Measured on libero_goal's eval split (3 episodes each, `vla-rl eval --policy scripted`):
task 0 (open the middle drawer) 3/3 in ~80 steps, task 3 (open the top drawer and put the bowl
inside) 3/3 in ~225 of its 300 steps, task 7 (turn on the stove) 3/3 in ~90 steps; task 0 on 6
train-split episodes 6/6.

Not covered, with the reason (`uncovered_reason`; the experts raise a one-line error on these
tasks, so evaluate the others with `--tasks`):

* close (a drawer): the turned hand of `open` could not reach libero_10's bottom-drawer handle
  over the table; a push with the closed fingers pointing down (tried on libero_10 "put the
  black bowl in the bottom drawer of the cabinet and close it") moved the drawer most of the way
  but stalled with the bowl against the cabinet's frame, and the hand, after placing the bowl,
  stuck under the middle drawer.
* turnoff (a knob): not tried; no libero_goal or libero_10 task turns a knob off.
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
from vla_rl.core import noise
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
PREGRASP = 0.10  # m in front of a drawer's handle (along the opening direction) before reaching
SLIDE_OVERSHOOT = 0.03  # m the hand aims past the drawer's goal position while pulling / pushing
KNOB_RAISE = 0.01  # m above the knob fin's centre that the fingertips close at (clear its disc)
TURN_MAX = 1.2  # rad the hand turns a knob per grasp at most
TURN_OVERSHOOT = 0.1  # rad past the knob's goal position
HOLD_TICKS = 8  # env steps a drawer's pull goes on after the step holds (to its joint limit)
LIFT_OUT = 0.07  # m a lift by an open drawer moves out along its opening direction
LEAN = 0.35  # rad a pick leans the hand's top away from a drawer opened in the episode


COVERED_KINDS = ("on", "in", "open", "turnon")
UNCOVERED_KINDS = {
    "close": "a push closing libero_10's bottom drawer stalled on the bowl placed in it",
    "turnoff": "not tried: no libero_goal / libero_10 task turns a knob off",
}


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
        if step.kind not in COVERED_KINDS:
            return (
                f"its goal has a {step.kind!r} step; the experts do "
                + ", ".join(COVERED_KINDS)
                + (f" ({UNCOVERED_KINDS[step.kind]})" if step.kind in UNCOVERED_KINDS else "")
            )
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
    stage: tuple[int, int] = (-1, -1)  # (goal step, 1 while opening the drawer it fills)
    phase: str = "approach"
    ticks: int = 0
    grasp: np.ndarray | None = None  # the grasp point fixed when the descent starts
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))  # grasp - object bottom
    carry_z: float = 0.0
    start_rot: np.ndarray | None = None
    home: np.ndarray | None = None  # the hand's position at the reset
    want: np.ndarray | None = None  # the last orientation target (held while letting go)
    knob_rot: np.ndarray | None = None  # the hand's orientation when it closed on a knob
    on_fixture: bool = False  # the hand is at (or holds) a handle or knob
    turn: float = 0.0  # rad the current knob grasp turns by
    back_off: np.ndarray | None = None  # where the hand goes after letting go of a fixture
    pull: np.ndarray | None = None  # the hand's last target while moving a drawer
    lean: np.ndarray | None = None  # the opening direction of a drawer opened in the episode

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


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation by `yaw` about world z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def finger_yaw(direction: np.ndarray) -> float:
    """The hand's yaw (rad about world z from its reset pose, in [-pi/2, pi/2)) at which its
    fingers, which close along world y at yaw 0, close along the horizontal `direction`."""
    yaw = float(np.arctan2(-direction[0], direction[1]))
    return (yaw + np.pi / 2) % np.pi - np.pi / 2


def facing(outward: np.ndarray) -> np.ndarray:
    """The world rotation that turns the down-pointing hand to point horizontally against
    `outward` (into a drawer whose opening direction it is), a quarter turn about z x outward;
    fingers that closed along `outward` then close vertically, across a horizontal handle bar."""
    d = np.array([outward[0], outward[1], 0.0])
    d /= np.linalg.norm(d)
    return axis_angle_to_matrix(np.cross([0.0, 0.0, 1.0], d) * (np.pi / 2))


def _rotation_error(want: np.ndarray, state: np.ndarray) -> float:
    """Angle (rad) between the hand's orientation (state[3:6], axis-angle) and `want`."""
    return float(np.linalg.norm(matrix_to_axis_angle(want @ axis_angle_to_matrix(state[3:6]).T)))


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
                ep.home = state[:3].copy()
            actions[b] = self._act(ep, step, priv, state)
        acts = torch.as_tensor(actions)[:, None]  # (B, Ta=1, Da)
        if self.action_noise > 0 and not deterministic:
            # Each row's own stream (vla_rl.core.noise): the same demo whatever the batch.
            draw = noise.standard_normal(
                noise.noise_keys(obs), len(acts), acts.shape[1:], "scripted"
            )
            acts = acts + self.action_noise * draw
        return ActionSample(actions=acts.clamp(-1.0, 1.0), log_prob=None)

    def _act(self, ep: _Episode, step: GoalStep, priv: np.ndarray, state: np.ndarray) -> np.ndarray:
        """One action for one episode: the machine of the current stage (a goal step, or the
        opening of the drawer it fills), after letting go of a fixture the last stage held."""
        opening = priv[26] > 0.5
        stage = (int(priv[15]), int(opening))
        if stage != ep.stage:  # a new stage (or the first): plan it afresh
            ep.stage = stage
            if not ep.on_fixture:
                ep.go("approach")
            else:  # a drawer goes on to its limit (let go just past the threshold, it drifted
                ep.go("hold" if ep.phase == "move" else "let_go")  # back over it)
        if ep.phase in ("hold", "let_go", "back_off", "recover"):
            return self._leave(ep, state)
        if opening or step.kind == "open":
            return self._slide(ep, "open", priv, state)
        if step.kind in ("turnon", "turnoff"):
            return self._hinge(ep, priv, state)
        return self._pick_place(ep, step, priv, state)

    def _leave(self, ep: _Episode, state: np.ndarray) -> np.ndarray:
        """Let go of a handle or knob, back off from it (`ep.back_off`) keeping the hand's
        orientation, then return to the reset pose (`ep.home`, reset orientation): a pick's
        approach straight from a hand pointing into a drawer flipped the wrist into the
        cabinet, and turning back in front of the drawer stalled the stretched-out arm at a
        joint limit. Then the stage's own machine starts."""
        eef = state[:3]
        ep.ticks += 1
        want = ep.want if ep.want is not None else ep.start_rot
        target = ep.back_off if ep.back_off is not None else eef
        if ep.phase == "hold":
            if ep.ticks >= HOLD_TICKS:
                ep.go("let_go")
            return self._action(ep.pull if ep.pull is not None else eef, eef, 1.0, want, state)
        if ep.phase == "let_go":
            if ep.ticks >= RELEASE_TICKS:
                ep.go("back_off")
            return self._action(eef, eef, -1.0, want, state)
        if ep.phase == "back_off":
            if np.linalg.norm(target - eef) < 2 * TOLERANCE or ep.ticks > 30:
                ep.go("recover")
            return self._action(target, eef, -1.0, want, state)
        target = ep.home if ep.home is not None else eef
        if (
            _rotation_error(ep.start_rot, state) < 0.1 and np.linalg.norm(target - eef) < 0.03
        ) or ep.ticks > 50:
            ep.on_fixture = False
            ep.want = None
            ep.go("approach")
        return self._action(target, eef, -1.0, ep.start_rot, state)

    def _slide(self, ep: _Episode, kind: str, priv: np.ndarray, state: np.ndarray) -> np.ndarray:
        """One action of the drawer machine (an open step, or the opening before an in step;
        `kind` "close" would push the same way, but close is refused, see the module docstring):
        the hand turns to point into the drawer (against its opening direction) with its fingers
        closing vertically, above and then PREGRASP in front of the handle, reaches it, closes
        on the bar, and moves it along the joint axis past the goal position (on to the joint
        limit for HOLD_TICKS once the step holds, `_act`); a slip (the hand off the handle) or a
        timeout lets go and starts again."""
        eef = state[:3]
        q, axis, handle, goal = priv[17], priv[18:21], priv[21:24], priv[25]
        sign = 1.0 if goal > q else -1.0
        outward = sign * axis if kind == "open" else -sign * axis  # the opening direction
        outward = np.array([outward[0], outward[1], 0.0]) / max(np.linalg.norm(outward[:2]), 1e-9)
        want = facing(outward) @ yaw_matrix(finger_yaw(outward)) @ ep.start_rot
        ep.want = want
        if kind == "open":
            ep.lean = outward
        ep.back_off = None
        ep.ticks += 1
        grip = -1.0
        if ep.phase == "approach":  # above PREGRASP in front of the handle, turning the hand
            target = handle + outward * PREGRASP + [0.0, 0.0, APPROACH_HEIGHT]
            rot_err = _rotation_error(want, state)
            if (np.linalg.norm(target - eef) < 2 * TOLERANCE and rot_err < 0.1) or ep.ticks > 60:
                ep.go("lower")
        elif ep.phase == "lower":  # down to PREGRASP (the turned hand is tall: turning low, its
            target = handle + outward * PREGRASP  # lower half swept the objects on the table)
            if np.linalg.norm(target - eef) < 1.5 * TOLERANCE or ep.ticks > 30:
                ep.go("reach")
        elif ep.phase == "reach":
            target = handle
            ep.on_fixture = True
            if np.linalg.norm(target - eef) < TOLERANCE or ep.ticks > 40:
                ep.go("grasp")
        elif ep.phase == "grasp":
            target, grip = handle, 1.0
            if ep.ticks >= CLOSE_TICKS:
                ep.go("move")
        else:  # move: the handle along the axis, past the goal position
            grip = 1.0
            target = ep.pull = handle + (goal - q + sign * SLIDE_OVERSHOOT) * axis
            if np.linalg.norm(handle - eef) > 0.04 or ep.ticks > 80:  # slipped, or stuck
                ep.back_off = handle + outward * PREGRASP
                ep.go("let_go")
        if ep.on_fixture and ep.back_off is None:
            ep.back_off = handle + outward * PREGRASP
        return self._action(target, eef, grip, want, state)

    def _hinge(self, ep: _Episode, priv: np.ndarray, state: np.ndarray) -> np.ndarray:
        """One action of the knob machine (turnon / turnoff): above the knob's turning axis
        with the fingers across its fin, descend, close, turn the hand about the joint axis
        towards the goal position (at most TURN_MAX per grasp), let go and rise; again while
        the step does not hold."""
        eef = state[:3]
        q, axis, point, fin_yaw, goal = priv[17], priv[18:21], priv[21:24], priv[24], priv[25]
        sign = 1.0 if goal > q else -1.0
        grasp_rot = yaw_matrix(fin_yaw) @ ep.start_rot  # fingers close across the fin
        want = grasp_rot
        ep.ticks += 1
        grip = -1.0
        if ep.phase == "approach":
            g = point + [0.0, 0.0, KNOB_RAISE]
            target = g + [0.0, 0.0, APPROACH_HEIGHT]
            err = target - eef
            rot_err = _rotation_error(want, state)
            if (
                np.linalg.norm(err[:2]) < TOLERANCE
                and abs(err[2]) < 2 * TOLERANCE
                and rot_err < 0.1
            ) or ep.ticks > 60:
                ep.grasp, ep.knob_rot = g, grasp_rot
                ep.go("descend")
        elif ep.phase == "descend":
            target, want = ep.grasp, ep.knob_rot
            ep.on_fixture = True
            if np.linalg.norm(target - eef) < TOLERANCE or ep.ticks > 40:
                ep.go("close")
        elif ep.phase == "close":
            target, want, grip = ep.grasp, ep.knob_rot, 1.0
            if ep.ticks >= CLOSE_TICKS:
                ep.turn = sign * min(abs(goal - q) + TURN_OVERSHOOT, TURN_MAX)
                ep.go("turn")
        else:  # turn
            grip = 1.0
            target = ep.grasp
            want = axis_angle_to_matrix(axis * ep.turn) @ ep.knob_rot
            rot_err = _rotation_error(want, state)
            if rot_err < 0.05 or ep.ticks > 40:
                ep.go("let_go")
        ep.want = want
        if ep.on_fixture:
            ep.back_off = ep.grasp + [0.0, 0.0, APPROACH_HEIGHT]
        return self._action(target, eef, grip, want, state)

    def _pick_place(
        self, ep: _Episode, step: GoalStep, priv: np.ndarray, state: np.ndarray
    ) -> np.ndarray:
        """One action of the pick-and-place machine for one episode."""
        eef = state[:3]
        lo, hi, tlo, thi = priv[0:3], priv[3:6], priv[6:9], priv[9:12]
        start_centre = priv[12:15]
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
            turning = ep.lean is not None and _rotation_error(self._pick_rot(ep, yaw), state) > 0.3
            if turning:  # by an open drawer: turn first (turning on the way hit the drawer)
                target = eef
            err = target - eef
            if (
                not turning and np.linalg.norm(err[:2]) < TOLERANCE and abs(err[2]) < 2 * TOLERANCE
            ) or ep.ticks > 60:
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
            if ep.lean is not None:  # out from under the open drawer (straight up hit its floor)
                target[:2] = ep.grasp[:2] + LIFT_OUT * ep.lean[:2]
            if eef[2] > ep.carry_z - 2 * TOLERANCE or ep.ticks > 50:
                lifted = (lo[2] + hi[2]) / 2 > start_centre[2] + 0.03
                ep.go("carry" if lifted else "approach")
        elif ep.phase in ("carry", "lower"):
            grip = 1.0
            if np.linalg.norm((eef - ep.offset) - obj_bottom) > 0.05:  # dropped it
                ep.go("approach")
                return self._action(eef, eef, -1.0, self._pick_rot(ep, yaw), state)
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
        return self._action(target, eef, grip, self._pick_rot(ep, yaw), state)

    @staticmethod
    def _pick_rot(ep: _Episode, yaw: float) -> np.ndarray:
        """The hand's orientation in a pick and place: the reset pose turned by `yaw` about
        world z; after opening a drawer, its top leant by LEAN away from the drawer (an upright
        hand picking a bowl in front of libero_goal's open top drawer pushed the drawer shut)."""
        want = yaw_matrix(yaw) @ ep.start_rot
        if ep.lean is None:
            return want
        return axis_angle_to_matrix(np.cross([0.0, 0.0, 1.0], ep.lean) * LEAN) @ want

    @staticmethod
    def _action(
        target: np.ndarray, eef: np.ndarray, grip: float, want: np.ndarray, state: np.ndarray
    ) -> np.ndarray:
        """Position by a P-controller to `target`; orientation to the world rotation `want`
        (OSC_POSE's rotation action is a world-frame axis-angle delta)."""
        err = matrix_to_axis_angle(want @ axis_angle_to_matrix(state[3:6]).T)
        out = np.zeros(7)
        out[:3] = np.clip((target - eef) * GAIN, -1.0, 1.0)
        out[3:6] = np.clip(err * ROT_GAIN, -1.0, 1.0)
        out[6] = grip
        return out
