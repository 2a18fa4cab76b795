"""The one checkpoint mechanism (`vla_rl.runs.checkpoint`): tensor trees round-trip exactly and an
optimizer resumes as if never stopped; old pickled checkpoints are refused with a reason; a kill
between the atomic renames leaves a checkpoint that resume finds; and nothing in the package
unpickles (the point of the format)."""

import ast
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vla_rl.runs.checkpoint import (
    CheckpointError,
    find_checkpoint,
    flatten_tree,
    load_checkpoint,
    save_checkpoint,
    unflatten_tree,
)
from vla_rl.runs.run import load_state

ROOT = Path(__file__).resolve().parents[1]


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))


def adam_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    """n steps on inputs drawn from the torch RNG, so the RNG state matters as well."""
    for _ in range(n):
        loss = model(torch.randn(16, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_tree_round_trip_keeps_structure_and_types():
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    adam_steps(model, opt, 1)
    tree = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "torch_rng": torch.random.get_rng_state(),
            "misc": [1, 2.5, None, "x", (3, 4)]}  # fmt: skip
    skeleton, tensors = flatten_tree(tree)
    back = unflatten_tree(skeleton, tensors)
    assert set(back["optimizer"]["state"]) == set(opt.state_dict()["state"])  # int keys again
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)  # a tuple again
    assert back["misc"] == [1, 2.5, None, "x", (3, 4)]
    for key, value in tree["model"].items():
        assert torch.equal(back["model"][key], value)
    assert torch.equal(back["torch_rng"], tree["torch_rng"])


def test_adam_resumes_exactly_after_a_checkpoint(tmp_path):
    """Two Adam steps after save + load into fresh objects equal two steps without the break:
    weights, optimizer moments and the torch and numpy RNG streams all continue."""
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    adam_steps(model, opt, 2)
    rng.random(3)
    tree = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "torch_rng": torch.random.get_rng_state()}  # fmt: skip
    save_checkpoint(
        tmp_path / "checkpoint", tree, {"step": 2, "numpy_rng": rng.bit_generator.state}
    )
    adam_steps(model, opt, 2)
    expected_draw = rng.random()

    torch.manual_seed(123)  # different init and RNG position: everything must come from the file
    model2 = make_model()
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    loaded, state = load_checkpoint(tmp_path / "checkpoint")
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    torch.random.set_rng_state(loaded["torch_rng"])
    rng2 = np.random.default_rng(99)
    rng2.bit_generator.state = state.pop("numpy_rng")
    adam_steps(model2, opt2, 2)
    assert state == {"step": 2} and rng2.random() == expected_draw
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value), key
    for pid, moments in opt.state_dict()["state"].items():
        for name, value in moments.items():
            assert torch.equal(opt2.state_dict()["state"][pid][name], value), (pid, name)


def test_extra_files_travel_in_the_same_publish(tmp_path):
    save_checkpoint(tmp_path / "ck", {"x": torch.ones(2)}, {"n": 1},
                    lambda tmp: (tmp / "extra.txt").write_text("hi"))  # fmt: skip
    assert (tmp_path / "ck" / "extra.txt").read_text() == "hi"
    assert not list(tmp_path.glob(".ck*"))  # nothing left beside it


@pytest.mark.parametrize("name", ["learner.pt", "trainer.pt"])
def test_old_pickled_checkpoint_is_refused_with_the_reason(tmp_path, name):
    old = tmp_path / "run" / "checkpoint"
    old.mkdir(parents=True)
    (old / name).write_bytes(b"\x80\x04not really a pickle")
    (old / "state.json").write_text('{"env_steps": 5}')  # what the old format wrote beside it
    with pytest.raises(CheckpointError, match="older vla-rl.*pickled") as err:
        load_state(tmp_path / "run")
    assert isinstance(err.value, ValueError)  # so the CLI prints one line and exits 2
    with pytest.raises(CheckpointError, match="not a vla-rl checkpoint"):
        load_checkpoint(tmp_path)  # neither format


def test_cli_resume_of_an_old_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    from vla_rl.cli import main

    old = tmp_path / "run" / "checkpoint"
    old.mkdir(parents=True)
    (old / "learner.pt").write_bytes(b"\x80\x04")
    code = main(["finetune", "--resume", "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "pickled" in err and "Traceback" not in err


def test_kill_between_the_two_renames_leaves_a_findable_checkpoint(tmp_path, monkeypatch):
    """atomic_directory moves the old checkpoint to .checkpoint.old, then the new one into
    place; a kill in between leaves only .checkpoint.old, which resume must use."""
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoint", {"w": torch.zeros(3)}, {"env_steps": 100})
    atomic = sys.modules[save_checkpoint.__globals__["atomic_directory"].__module__]
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the second rename: the new checkpoint into place
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run / "checkpoint", {"w": torch.ones(3)}, {"env_steps": 200})
    monkeypatch.undo()
    assert not (run / "checkpoint").exists() and (run / ".checkpoint.old").is_dir()
    assert find_checkpoint(run / "checkpoint") == run / ".checkpoint.old"
    directory, tree, state = load_state(run)
    assert directory == run / ".checkpoint.old" and state == {"env_steps": 100}
    assert torch.equal(tree["w"], torch.zeros(3))  # the previous checkpoint, complete
    # The next save publishes normally and clears the leftover.
    save_checkpoint(run / "checkpoint", {"w": torch.ones(3)}, {"env_steps": 300})
    assert find_checkpoint(run / "checkpoint") == run / "checkpoint"
    assert not (run / ".checkpoint.old").exists()
    assert find_checkpoint(tmp_path / "none") is None and load_state(tmp_path / "none") is None


def unpickling_calls(tree: ast.AST) -> list[str]:
    """What in one module could unpickle: pickle-family imports, np.load(..., allow_pickle=True),
    and torch.load without weights_only=True (its default unpickles arbitrary objects; with
    weights_only=True it only rebuilds tensors and plain containers)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found += [f"import {n}" for n in names if n and n.split(".")[0] in PICKLERS]
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                found += ["from torch import load" for a in node.names if a.name == "load"]
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        if (
            isinstance(keywords.get("allow_pickle"), ast.Constant)
            and keywords["allow_pickle"].value
        ):
            found.append("allow_pickle=True")
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "load" and _is_torch(func.value):
            safe = keywords.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append("torch.load without weights_only=True")
    return found


PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}


def _is_torch(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "torch"


def test_nothing_under_vla_rl_or_policies_unpickles():
    files = sorted((ROOT / "vla_rl").rglob("*.py")) + sorted((ROOT / "policies").rglob("*.py"))
    assert len(files) > 20
    offenders = {}
    for path in files:
        if "__pycache__" in path.parts:
            continue
        if found := unpickling_calls(ast.parse(path.read_text(), str(path))):
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, offenders


def test_the_unpickling_check_catches_what_it_should():
    src = ("import pickle\nfrom torch import load\nimport torch, numpy as np\ntorch.load(p)\n"
           "torch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
           "torch.load(p, weights_only=True)\nnp.load(p)\n")  # fmt: skip
    assert unpickling_calls(ast.parse(src)) == [
        "import pickle", "from torch import load", "torch.load without weights_only=True",
        "torch.load without weights_only=True", "allow_pickle=True",
    ]  # fmt: skip
