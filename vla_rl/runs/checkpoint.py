"""One checkpoint mechanism for every training loop (pretrain, residual, the on-policy loop).

A checkpoint is a directory, published atomically (`atomic_directory`: a kill at any moment
leaves the previous checkpoint or the new one, never a mix):

    checkpoint/
      tensors.safetensors   every tensor of `tree` (weights, optimizer moments, torch RNG state),
                            under its path in the tree ("policy/net.0.weight",
                            "optimizer/state/3/exp_avg", "torch_rng")
      tree.json             the rest of `tree`: its nesting and every non-tensor leaf (optimizer
                            hyperparameters, step counts), tensors marked by their key
      state.json            the loop's counters, curve and numpy RNG state (plain JSON)
      ...                   whatever `write_extra` adds (a policy directory, a replay buffer)

Nothing is unpickled on the way back: safetensors holds raw tensors and JSON holds the rest, so
a crafted checkpoint cannot run code (torch.load of a pickle could). Checkpoints written by
earlier versions (learner.pt / trainer.pt, pickles) are refused with a message that says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vla_rl.io.atomic import atomic_directory

FORMAT = "vla-rl-checkpoint/1"
TENSORS_FILE = "tensors.safetensors"
TREE_FILE = "tree.json"
STATE_FILE = "state.json"
PICKLED_FILES = ("learner.pt", "trainer.pt")  # what versions before this format wrote
_TENSOR = "__tensor__"  # tree.json's marker for a leaf stored in tensors.safetensors
_TUPLE = "__tuple__"  # JSON has no tuples; optimizer state dicts hold some (Adam's betas)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message says why and what to do."""


def flatten_tree(tree: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested dict/list/tuple of tensors and JSON values into (skeleton, tensors).

    The skeleton is `tree` with every tensor replaced by {"__tensor__": key}; `tensors` maps
    each key (the leaf's path, "/"-joined) to the tensor. Dict keys become strings (optimizer
    state dicts key their per-parameter state by int; `unflatten_tree` turns them back).
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous()
            return {_TENSOR: path}
        if isinstance(node, dict):
            keys = [str(k) for k in node]
            if len(set(keys)) != len(keys):
                raise ValueError(f"checkpoint tree at {path!r}: keys collide as strings")
            out = {str(k): walk(v, f"{path}/{k}" if path else str(k)) for k, v in node.items()}
            if any(isinstance(k, int) for k in node):
                out["__int_keys__"] = True
            return out
        if isinstance(node, (list, tuple)):
            items = [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
            return {_TUPLE: items} if isinstance(node, tuple) else items
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"checkpoint tree at {path!r}: {type(node).__name__} is not storable")

    return walk(tree, prefix), tensors


def unflatten_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `flatten_tree`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        if set(skeleton) == {_TUPLE}:
            return tuple(unflatten_tree(v, tensors) for v in skeleton[_TUPLE])
        int_keys = skeleton.get("__int_keys__", False)
        return {
            (int(k) if int_keys and k.lstrip("-").isdigit() else k): unflatten_tree(v, tensors)
            for k, v in skeleton.items()
            if k != "__int_keys__"
        }
    if isinstance(skeleton, list):
        return [unflatten_tree(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(
    directory: str | Path,
    tree: dict[str, Any],
    state: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
) -> None:
    """Write `tree` (state dicts, optimizer states, RNG tensors) and `state` (JSON) to
    `directory` in one atomic publish; `write_extra(tmp)` adds files into the same directory."""
    from safetensors.torch import save_file

    skeleton, tensors = flatten_tree(tree)
    with atomic_directory(directory) as tmp:
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / TREE_FILE).write_text(json.dumps({"format": FORMAT, "tree": skeleton}) + "\n")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
        if write_extra is not None:
            write_extra(tmp)


def find_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint directory to resume from, or None when there is none. A kill inside
    `atomic_directory`'s two renames leaves only the previous checkpoint, moved aside as
    `.<name>.old`: that one is complete, so it is used."""
    directory = Path(directory)
    if directory.is_dir():
        return directory
    old = directory.with_name(f".{directory.name}.old")
    return old if old.is_dir() else None


def load_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tree, state) as saved; tensors on the CPU. Raises CheckpointError for a checkpoint of an
    older format or a damaged one, naming the directory."""
    from vla_rl.core.policy import read_safetensors  # refuses pickles unread, one-line errors

    directory = Path(directory)
    if not (directory / TREE_FILE).is_file():
        if any((directory / name).is_file() for name in PICKLED_FILES):
            raise CheckpointError(
                f"{directory} was written by an older vla-rl (pickled learner.pt/trainer.pt, "
                "which could run code when loaded); it cannot be resumed: start a new run, or "
                "resume it with the vla-rl version that wrote it"
            )
        raise CheckpointError(f"{directory} is not a vla-rl checkpoint (no {TREE_FILE})")
    try:
        meta = json.loads((directory / TREE_FILE).read_text())
        state = json.loads((directory / STATE_FILE).read_text())
        tensors = read_safetensors(directory / TENSORS_FILE)
    except (OSError, ValueError) as err:  # json's errors and read_safetensors' are ValueErrors
        raise CheckpointError(f"{directory}: damaged checkpoint ({err})") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{directory}: checkpoint format {meta.get('format')!r}, this vla-rl reads {FORMAT!r}"
        )
    return unflatten_tree(meta["tree"], tensors), state
