"""What LIBERO's simulator knows about a scene, as plain arrays: the BDDL goal as a list of steps,
world-frame boxes of objects, fixtures and regions, and the privileged observation that the
scripted experts (`policies/scripted_libero.py`) plan from.

The privileged observation (`obs["privileged"]`, float32 (PRIVILEGED_DIM,)) describes the goal's
current step: the first of its predicates, in BDDL order, that does not hold yet (all of them
hold at success). Layout, every position in world metres:

    0:3   lo, 3:6 hi   the axis-aligned box of what the step moves (the object to pick and place;
                       the drawer or the knob of an articulated step), from its collision geoms
    6:9   lo, 9:12 hi  the box of where it goes (an object's box, or a region site's extent);
                       zeros for an articulated step
    12:15              the moved thing's box centre at the reset (constant over an episode)
    15                 the step's index in the goal; 16: the goal's number of steps
    17                 the articulation's joint position (m or rad; 0 for pick and place,
                       unless 26 is 1, as for 18:26)
    18:21              the articulation's joint axis in the world frame (0 for pick and place)
    21:24              where the hand takes an articulated step's body (0 for pick and place):
                       for a slide joint (a drawer) the centre of the body's collision geom that
                       reaches farthest along the opening direction (the handle bar); for a hinge
                       (the stove's knob) the centre of its topmost collision geom (the knob's
                       fin), moved onto the joint's axis line
    24                 the yaw (rad about world z, in [-pi/2, pi/2)) of that geom's longest
                       horizontal axis (the handle bar's, the knob fin's)
    25                 the joint position at which the step holds: the middle of LIBERO's range
                       for the predicate (e.g. -0.15 for opening a wooden cabinet's drawer, 1.3
                       for turning the flat stove on)
    26                 1 when the step puts something into a drawer (a region of a fixture with
                       a joint) that is not open (its Open predicate does not hold): 17:26 then
                       describe that drawer's joint as for an `open` step, which the expert does
                       first (libero_goal's "open the top drawer and put the bowl inside" has only
                       the In predicate); else 0

The current step is the first predicate that does not hold, except that closing a drawer waits
while something still has to go into it (libero_10's goal lists the Close before the In).

It is the simulator's ground truth, never what a learned policy on the standard protocol sees;
learned policies ignore the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PRIVILEGED_DIM = 27
OBJECT_SLOTS = 4
"""Objects of interest in the object-state observation: the BDDL's `obj_of_interest`, in its
order, zero-padded (libero_10's two-object tasks name 3; no task of the 5 suites names more than
4, checked by tests/test_libero.py)."""
POSE_DIM = 7  # position (3) + orientation quaternion (4, w x y z)

PLACE_PREDICATES = ("on", "in")  # move an object onto / into a target
ARTICULATED_PREDICATES = ("open", "close", "turnon", "turnoff")


@dataclass(frozen=True)
class GoalStep:
    """One predicate of a BDDL goal: `kind` (on, in, open, close, turnon, turnoff), the thing it
    moves (`subject`: an object; or for open/close a region of a fixture, e.g.
    wooden_cabinet_1_top_region; for turnon/turnoff a fixture) and, for on/in, the `target`
    (an object or a region site)."""

    kind: str
    subject: str
    target: str | None = None


def goal_steps(goal_state: list[list[str]]) -> list[GoalStep]:
    """LIBERO's parsed goal (`parsed_problem["goal_state"]`, e.g. [["on", "bowl_1", "plate_1"]])
    as GoalSteps, in the file's order."""
    steps = []
    for pred in goal_state:
        kind = pred[0].lower()
        if kind in PLACE_PREDICATES and len(pred) == 3:
            steps.append(GoalStep(kind, pred[1], pred[2]))
        elif kind in ARTICULATED_PREDICATES and len(pred) == 2:
            steps.append(GoalStep(kind, pred[1]))
        else:
            steps.append(GoalStep(kind, pred[1] if len(pred) > 1 else "", None))
    return steps


def farthest_along(lo: np.ndarray, hi: np.ndarray, direction: np.ndarray) -> int:
    """Index of the box (rows of lo, hi: (n, 3)) whose corner reaches farthest along
    `direction`."""
    reach = np.where(direction > 0, hi, lo) @ direction
    return int(np.argmax(reach))


def long_axis_yaw(rot: np.ndarray, half: np.ndarray) -> float:
    """Yaw (rad about world z, wrapped to [-pi/2, pi/2): an axis has no sign) of the longest
    horizontal axis of a box with world rotation `rot` (its columns are the box's axes) and
    half-sizes `half`."""
    horizontal = rot[:2, :] * half  # each axis's horizontal part, scaled by its half-size
    i = int(np.argmax(np.linalg.norm(horizontal, axis=0)))
    yaw = float(np.arctan2(horizontal[1, i], horizontal[0, i]))
    return (yaw + np.pi / 2) % np.pi - np.pi / 2


class SceneGeometry:
    """World-frame boxes and joints of one built LIBERO env (its robosuite `env.env`); the
    lookups are cached per name, the positions read live from the simulator."""

    def __init__(self, robosuite_env: Any):
        import mujoco

        self._mj = mujoco
        self.env = robosuite_env
        self.model = robosuite_env.sim.model._model
        self.data = robosuite_env.sim.data._data
        self._geoms: dict[str, np.ndarray] = {}

    def _body_geoms(self, name: str) -> np.ndarray:
        """Collision geoms of every body named `<name>_...` (robosuite prefixes an object's
        bodies with its name)."""
        if name not in self._geoms:
            m = self.model
            bodies = {i for i in range(m.nbody) if m.body(i).name.startswith(name + "_")}
            geoms = [
                g
                for g in range(m.ngeom)
                if m.geom_bodyid[g] in bodies and (m.geom_contype[g] or m.geom_conaffinity[g])
            ]
            if not geoms:
                raise KeyError(f"no collision geoms for {name!r} in this scene")
            self._geoms[name] = np.asarray(geoms)
        return self._geoms[name]

    def _geom_boxes(self, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per geom of `geoms`: the world centre (G, 3) and half-extent (G, 3) of its
        axis-aligned bounding box, and its world rotation (G, 3, 3)."""
        m, d = self.model, self.data
        rot = d.geom_xmat[geoms].reshape(-1, 3, 3)
        centre = d.geom_xpos[geoms] + np.einsum("gij,gj->gi", rot, m.geom_aabb[geoms, :3])
        half = np.einsum("gij,gj->gi", np.abs(rot), m.geom_aabb[geoms, 3:])
        return centre, half, rot

    def box(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of the axis-aligned world box around `name`: an object or fixture (its
        collision geoms) or a site (its position +- its size)."""
        m, d = self.model, self.data
        site = self._mj.mj_name2id(m, self._mj.mjtObj.mjOBJ_SITE, name)
        if site >= 0 and not name.endswith("_default_site") and name not in self.env.objects_dict:
            half = np.abs(d.site_xmat[site].reshape(3, 3)) @ m.site_size[site]
            return d.site_xpos[site] - half, d.site_xpos[site] + half
        centre, half, _ = self._geom_boxes(self._body_geoms(name))
        return (centre - half).min(0), (centre + half).max(0)

    def orientation(self, name: str) -> np.ndarray:
        """World orientation (w x y z) of an object's root body `<name>_main`; identity for
        anything else (a site, a fixture region)."""
        bid = self._mj.mj_name2id(self.model, self._mj.mjtObj.mjOBJ_BODY, name + "_main")
        if bid < 0 or name not in self.env.objects_dict:
            return np.array([1.0, 0.0, 0.0, 0.0])
        return np.asarray(self.data.xquat[bid], np.float64)

    def joint(self, subject: str) -> tuple[float, np.ndarray, str]:
        """(position, world axis, body) of the joint an articulated step moves: a cabinet
        region `<fixture>_<level>_region` -> joint `<fixture>_<level>_level`; a fixture with one
        joint (the stove's knob) -> that joint."""
        m, d = self.model, self.data
        jid = self._joint_id(subject)
        body = int(m.jnt_bodyid[jid])
        axis = d.xmat[body].reshape(3, 3) @ m.jnt_axis[jid]
        return float(d.qpos[m.jnt_qposadr[jid]]), axis, m.body(body).name

    def _joint_id(self, subject: str) -> int:
        m = self.model
        name = subject
        if subject.endswith("_region"):
            fixture_level = subject.removesuffix("_region")
            name = fixture_level + "_level"
        jid = self._mj.mj_name2id(m, self._mj.mjtObj.mjOBJ_JOINT, name)
        if jid < 0:
            candidates = [
                j
                for j in range(m.njnt)
                if m.joint(j).name.startswith(subject + "_") and m.jnt_type[j] in (2, 3)
            ]
            if len(candidates) != 1:
                raise KeyError(f"no single joint for {subject!r} in this scene")
            jid = candidates[0]
        return int(jid)

    def _articulation(self, subject: str) -> dict[str, Any]:
        """LIBERO's articulation properties (the predicates' joint ranges) of the fixture that
        `subject` (a fixture, or a region of one) belongs to."""
        state = self.env.object_states_dict[subject]
        fixture = getattr(state, "parent_name", None) or subject
        return self.env.get_object(fixture).object_properties["articulation"]

    def goal_position(self, kind: str, subject: str) -> float:
        """The joint position at which an articulated step holds: the middle of LIBERO's range
        for the predicate (`default_<kind>_ranges`)."""
        return float(np.mean(self._articulation(subject)[f"default_{kind}_ranges"]))

    def handle(self, subject: str) -> tuple[np.ndarray, float]:
        """(point, yaw) where the hand takes the body an articulated step moves (see the module
        docstring, privileged 21:25)."""
        m, d = self.model, self.data
        jid = self._joint_id(subject)
        key = f"joint:{jid}"
        if key not in self._geoms:
            bid = m.jnt_bodyid[jid]
            self._geoms[key] = np.asarray(
                [
                    g
                    for g in range(m.ngeom)
                    if m.geom_bodyid[g] == bid and (m.geom_contype[g] or m.geom_conaffinity[g])
                ]
            )
        geoms = self._geoms[key]
        centre, half, rot = self._geom_boxes(geoms)
        axis = d.xaxis[jid].copy()
        if m.jnt_type[jid] == self._mj.mjtJoint.mjJNT_SLIDE:
            props = self._articulation(subject)
            opening = np.mean(props["default_open_ranges"]) - np.mean(props["default_close_ranges"])
            direction = np.sign(opening) * axis
        else:  # a hinge (a knob): its top, at the turning axis
            direction = axis if axis[2] >= 0 else -axis
        k = farthest_along(centre - half, centre + half, direction)
        point = centre[k]
        if m.jnt_type[jid] != self._mj.mjtJoint.mjJNT_SLIDE:
            anchor = d.xanchor[jid]
            point = anchor + axis * float((point - anchor) @ axis)
        return point, long_axis_yaw(rot[k], m.geom_aabb[geoms[k], 3:])

    def body_box(self, body_name: str) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of all of one body's geoms, visual ones included (a drawer, a knob)."""
        m = self.model
        bid = self._mj.mj_name2id(m, self._mj.mjtObj.mjOBJ_BODY, body_name)
        key = "body:" + body_name
        if key not in self._geoms:
            self._geoms[key] = np.asarray([g for g in range(m.ngeom) if m.geom_bodyid[g] == bid])
        centre, half, _ = self._geom_boxes(self._geoms[key])
        return (centre - half).min(0), (centre + half).max(0)


class PrivilegedView:
    """Computes `obs["privileged"]` for one episode of one env (see the module docstring)."""

    def __init__(self, robosuite_env: Any):
        self.env = robosuite_env
        self.geometry = SceneGeometry(robosuite_env)
        self.steps = goal_steps(robosuite_env.parsed_problem["goal_state"])
        self._start_centres: dict[int, np.ndarray] = {}

    def current_step(self) -> int:
        """Index of the first goal predicate that does not hold (len(steps) when all do)."""
        goal = self.env.parsed_problem["goal_state"]
        pending = [i for i, pred in enumerate(goal) if not self.env._eval_predicate(pred)]
        for i in pending:
            step = self.steps[i]
            fills = [
                j
                for j in pending
                if self.steps[j].kind in PLACE_PREDICATES and self.steps[j].target == step.subject
            ]
            if step.kind != "close" or not fills:
                return i
        return pending[0] if pending else len(goal)

    def _closed_drawer(self, region: str | None) -> bool:
        """Whether `region` is the inside of a drawer (a fixture region with a joint) that is
        not open."""
        site = self.env.object_sites_dict.get(region) if region else None
        if site is None or not getattr(site, "joints", None):
            return False
        return not self.env.object_states_dict[region].is_open()

    def reset(self) -> None:
        """Call after the episode's initial state is set: records the reset boxes."""
        self._start_centres = {}
        for i in range(len(self.steps)):
            lo, hi = self._moved_box(i)
            self._start_centres[i] = (lo + hi) / 2

    def _moved_box(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        step = self.steps[i]
        if step.kind in PLACE_PREDICATES:
            return self.geometry.box(step.subject)
        _, _, body = self.geometry.joint(step.subject)
        return self.geometry.body_box(body)

    def object_poses(self) -> np.ndarray:
        """(OBJECT_SLOTS * POSE_DIM,) float32: for each of the task's objects of interest, the
        centre of its world box and its orientation (w x y z; identity for a region, e.g. a
        drawer's inside, whose box moves with the drawer); zeros for unused slots."""
        out = np.zeros((OBJECT_SLOTS, POSE_DIM), np.float32)
        for k, name in enumerate(self.env.obj_of_interest[:OBJECT_SLOTS]):
            lo, hi = self.geometry.box(name)
            out[k, :3] = (lo + hi) / 2
            out[k, 3:] = self.geometry.orientation(name)
        return out.reshape(-1)

    def __call__(self) -> np.ndarray:
        out = np.zeros(PRIVILEGED_DIM, np.float32)
        i = min(self.current_step(), len(self.steps) - 1)
        step = self.steps[i]
        lo, hi = self._moved_box(i)
        out[0:3], out[3:6] = lo, hi
        if step.kind in PLACE_PREDICATES and step.target is not None:
            tlo, thi = self.geometry.box(step.target)
            out[6:9], out[9:12] = tlo, thi
        joint = None
        if step.kind in ARTICULATED_PREDICATES:
            joint = step.kind, step.subject
        elif step.kind in PLACE_PREDICATES and self._closed_drawer(step.target):
            joint = "open", step.target
            out[26] = 1.0
        if joint is not None:
            qpos, axis, _ = self.geometry.joint(joint[1])
            out[17] = qpos
            out[18:21] = axis
            out[21:24], out[24] = self.geometry.handle(joint[1])
            out[25] = self.geometry.goal_position(*joint)
        out[12:15] = self._start_centres.get(i, (lo + hi) / 2)
        out[15] = i
        out[16] = len(self.steps)
        return out
