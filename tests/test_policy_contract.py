"""The policy contract, checked on every registered policy family (POLICIES), as
test_benchmark_contract.py does for benchmarks: a family added to the registry is tested here
without editing this file.

Each family is built by its registry entry's `contract_instance(benchmark, directory)` hook
(BasePolicy's default: `for_benchmark`; native families: a tiny constructor; real VLA families:
a tiny checkpoint in their published format, loaded as a published one; bundled checkpoints:
themselves) for its `contract_benchmark` (the toy benchmark unless it names a registered one).
A family that cannot be built fails. On observations of that benchmark's env, taken through
`policy.wrap_env` as every caller runs a policy:
* sample_actions gives actions (B, Ta, Da), finite, inside the env's action box (unless the
  family declares `bounded_actions = False`);
* log_prob re-scores the sample to the log-prob recorded while sampling (a family that records
  none has no log_prob and says so);
* sample_candidates gives B * K rows, observation-major, their log-probs re-scored the same way;
* save_pretrained + load_policy give the same family, the same deterministic actions and the
  same log_prob of a stored sample.
And the `--base-load.*` view (vla_rl/core/load_options.py) is exactly the union of the real
families' own option fields.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from toy_benchmark import ToyBenchmark

from vla_rl.core.benchmark import EnvConfig, EpisodeSpec, apply_policy_observation, get_benchmark
from vla_rl.core.load_options import BaseLoadConfig, LoadOptionError, real_families
from vla_rl.core.policy import load_policy
from vla_rl.core.registry import POLICIES
from vla_rl.core.types import index_obs

B, K = 3, 2  # observations per batch, candidates per observation

# Re-scoring repeats the sampling computation in another order (one teacher-forced pass against
# a KV cache, B * K rows against B), so the float32 sums differ by rounding. Measured on these
# instances: at most 1.2e-4 (pi0 and SmolVLA, |log p| ~ 450, a sum of 3 steps x 4 actions x 32
# padded dims of chain terms), 2e-5 for the bundled policies, 0 to 1e-6 for the others. The bound,
# 1e-3 + 1e-5 |log p|, is 40x the largest of them: loose enough for rounding, no looser.
LOG_PROB_TOL = {"rtol": 1e-5, "atol": 1e-3}


def build(name, benchmark, directory):
    entry = POLICIES.get(name)
    return entry.contract_instance(benchmark, directory)


def policy_params():
    """Every registered policy; one built for a LIBERO suite needs the [libero] extra."""
    import importlib.util

    has_libero = importlib.util.find_spec("libero") is not None
    for name in POLICIES.names():
        bench = POLICIES.get(name).contract_benchmark
        marks = []
        if bench is not None and bench.startswith("libero"):
            skip = pytest.mark.skipif(not has_libero, reason="needs the [libero] extra")
            marks = [pytest.mark.libero, skip]
        yield pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module", params=list(policy_params()))
def family(request, tmp_path_factory):
    """The family's contract instance and B observations of its benchmark (through its
    wrap_env), with the env's action box."""
    name = request.param
    entry = POLICIES.get(name)
    toy = entry.contract_benchmark is None
    bench = ToyBenchmark() if toy else get_benchmark(entry.contract_benchmark)
    torch.manual_seed(0)
    policy = build(name, bench, tmp_path_factory.mktemp(f"contract-{name}"))
    policy.eval()
    # The toy env draws a camera cheaply; a simulator renders none (the families that exist
    # for one simulator, Meta-World's experts and bundled policies, read the state only).
    cfg = EnvConfig(num_envs=B, num_workers=0, images=toy, image_size=20, video_size=0)
    cfg = apply_policy_observation(bench, cfg, policy)  # e.g. a LIBERO object-state base
    tasks = bench.tasks("train")[:B]
    episodes = [EpisodeSpec(tasks[i % len(tasks)], tasks[i % len(tasks)].init_ids[i])
                for i in range(B)]  # fmt: skip
    venv = policy.wrap_env(bench.make_env(tasks, cfg))
    try:
        venv.reset_slots(range(B), episodes)
        obs = venv.observe(range(B))
        box = venv.single_action_space
    finally:
        venv.close()
    yield SimpleNamespace(name=name, policy=policy, obs=obs, bench=bench,
                          low=torch.as_tensor(box.low), high=torch.as_tensor(box.high))  # fmt: skip


def check_actions(family, actions, rows):
    policy = family.policy
    assert actions.shape == (rows, policy.chunk_size, family.bench.action_dim)
    assert torch.isfinite(actions).all()
    if type(policy).bounded_actions:
        assert (actions >= family.low - 1e-6).all() and (actions <= family.high + 1e-6).all()


def test_samples_have_the_chunk_shape_and_stay_in_the_action_box(family):
    with torch.no_grad():
        for deterministic in (False, True):
            sample = family.policy.sample_actions(family.obs, deterministic)
            check_actions(family, sample.actions, B)


def test_log_prob_rescores_the_recorded_sample(family):
    policy = family.policy
    torch.manual_seed(1)
    with torch.no_grad():
        sample = policy.sample_actions(family.obs)
        if sample.log_prob is None:  # nothing recorded: no likelihood, and a clear error
            with pytest.raises(NotImplementedError, match="log-likelihood"):
                policy.log_prob(family.obs, sample)
            return
        assert sample.log_prob.shape == (B,) and torch.isfinite(sample.log_prob).all()
        rescored = policy.log_prob(family.obs, sample)
    torch.testing.assert_close(rescored, sample.log_prob, **LOG_PROB_TOL)


def test_candidates_are_observation_major_rows(family):
    policy, obs = family.policy, family.obs
    rows = np.arange(B).repeat(K)  # row b * K + k belongs to observation b
    torch.manual_seed(2)
    with torch.no_grad():
        sample = policy.sample_candidates(obs, K)
        check_actions(family, sample.actions, B * K)
        if sample.log_prob is not None:
            rescored = policy.log_prob(index_obs(obs, rows), sample)
            torch.testing.assert_close(rescored, sample.log_prob, **LOG_PROB_TOL)
        greedy = policy.sample_candidates(obs, K, deterministic=True).actions
        check_actions(family, greedy, B * K)
        if policy.deterministic_candidates_differ:  # K noise-free chains from K noises
            assert not torch.allclose(greedy[0::K], greedy[1::K])
        else:  # K copies of each observation's deterministic action, in observation order
            alone = policy.sample_actions(obs, deterministic=True).actions
            torch.testing.assert_close(greedy, alone[rows], rtol=1e-4, atol=1e-4)


def test_save_and_load_give_the_same_policy(family, tmp_path):
    policy, obs = family.policy, family.obs
    torch.manual_seed(3)
    with torch.no_grad():
        sample = policy.sample_actions(obs)
    policy.save_pretrained(tmp_path / "saved")
    loaded = load_policy(str(tmp_path / "saved"))
    loaded.eval()
    assert type(loaded) is type(policy)
    with torch.no_grad():
        torch.manual_seed(4)  # chain families draw their initial noise even when deterministic
        before = policy.sample_actions(obs, deterministic=True).actions
        torch.manual_seed(4)
        after = loaded.sample_actions(obs, deterministic=True).actions
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
        if sample.log_prob is not None:  # also the parts deterministic actions skip
            torch.testing.assert_close(  # (OpenVLA-OFT's scale head, a chain's noise std)
                loaded.log_prob(obs, sample), policy.log_prob(obs, sample), rtol=1e-5, atol=1e-5
            )


# ---- `--base-load.*`: one view of the families' own options -----------------------------------
def field_docstrings(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (what tyro shows as the flag's help)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        node.target.id: nxt.value.value
        for node, nxt in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign)
        and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant)
        and isinstance(nxt.value.value, str)
    }


def test_base_load_view_is_the_union_of_the_families_options():
    options = {name: POLICIES.get(name).load_options for name in real_families()}
    assert {"openvla", "openvla-oft", "pi0", "smolvla"} <= set(options)
    view = {f.name: f for f in dataclasses.fields(BaseLoadConfig)}
    view_types = typing.get_type_hints(BaseLoadConfig)
    takers: dict[str, list[str]] = {}
    for family, cls in options.items():
        types = typing.get_type_hints(cls)
        own_docs = {}
        for base in reversed(cls.__mro__[:-1]):  # inherited fields keep their docstrings
            own_docs.update(field_docstrings(base))
        for f in dataclasses.fields(cls):
            assert f.name in own_docs, f"{cls.__name__}.{f.name} has no docstring"
            assert f.name in view, (
                f"{family}'s option {f.name!r} is missing from BaseLoadConfig "
                "(vla_rl/core/load_options.py)"
            )
            assert view_types[f.name] in (types[f.name], types[f.name] | None), f.name
            takers.setdefault(f.name, []).append(family)
    assert set(view) == set(takers), f"fields no family takes: {sorted(set(view) - set(takers))}"
    docs = field_docstrings(BaseLoadConfig)
    for name, families in takers.items():
        defaults = [getattr(options[family](), name) for family in families]
        shared = defaults[0] if all(d == defaults[0] for d in defaults) else None
        assert view[name].default == shared, (
            f"BaseLoadConfig.{name} must default to {shared!r}: the default of "
            f"{', '.join(families)} (None where they differ)"
        )
        assert docs[name].split(":", 1)[0].split(", ") == families, (
            f"BaseLoadConfig.{name}'s docstring must start with the families that take it: "
            f"{', '.join(families)}:"
        )


def test_a_flag_the_family_does_not_take_is_an_error_naming_its_options():
    pi0 = POLICIES.get("pi0").load_options
    oft = POLICIES.get("openvla-oft").load_options
    assert BaseLoadConfig().for_family("pi0", pi0) == pi0()
    chosen = BaseLoadConfig(unnorm_key="libero_10_no_noops", num_images=2, chunk_size=None)
    assert chosen.for_family("openvla-oft", oft) == oft(unnorm_key="libero_10_no_noops",
                                                        num_images=2)  # fmt: skip
    with pytest.raises(LoadOptionError) as err:
        chosen.for_family("pi0", pi0)
    assert str(err.value) == (
        "--base-load.unnorm-key, --base-load.num-images: not an option of pi0; pi0 takes "
        "--base-load.dtype, --base-load.tokenizer, --base-load.chain-std, --base-load.num-steps"
    )
    with pytest.raises(TypeError, match="Pi0LoadOptions or BaseLoadConfig"):
        load_policy("pi0", None, ".", oft())
