"""What the real-checkpoint VLA families (openvla, openvla-oft, pi0, smolvla) share: reading a
checkpoint directory, loading a state dict with a clear report of missing and unexpected names,
choosing the dataset statistics by key, the compute dtype, and image preprocessing.

Everything here works on the published on-disk formats (config.json, model.safetensors or a
sharded model-*.safetensors + model.safetensors.index.json) and never reaches the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla_rl.core.policy import (
    PolicyCheckpointError,
    check_fields,
    check_state,
    json_type,
    read_json_object,
    read_safetensors,
    unreadable_as_one_line,
)
from vla_rl.io.atomic import atomic_directory

INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"


def read_config(directory: str | Path, family: str) -> dict[str, Any]:
    """config.json of a checkpoint directory, or an error naming what is missing."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"--base {family}: {directory} is not a {family} checkpoint directory (no config.json)"
        )
    return read_json_object(path)


def load_safetensors_dir(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint: model.safetensors, or the shards its index file lists,
    each parsed by `read_safetensors` (a pickle, empty or truncated file refused in one line)."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        state.update(read_safetensors(path))
    return state


def scan_weight_files(directory: str | Path) -> None:
    """Check every weights file of a checkpoint the way `read_safetensors` and `check_state`
    would (parses as safetensors, no pickle, every floating tensor finite), reading one tensor
    at a time: for a family whose loader reads the files itself (transformers'
    from_pretrained), which checks none of this, without a second GB-sized copy in memory."""
    from safetensors import safe_open

    for path in weight_files(directory):
        with unreadable_as_one_line(path), safe_open(str(path), "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                one = {name: f.get_tensor(name)}
                check_state(one, one, path, "its own names")  # finiteness only


def check_loading_info(info: dict[str, Any], directory: Path, family: str) -> None:
    """Refuse what transformers' from_pretrained(output_loading_info=True,
    ignore_mismatched_sizes=True) only warns about: tensors the architecture has and the file
    lacks (left at random init), names it does not know, shapes that differ. One line."""
    parts = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected")):
        names = sorted(info.get(key) or ())
        if names:
            parts.append(f"{len(names)} {what} tensor(s) (e.g. {', '.join(names[:3])})")
    wrong = list(info.get("mismatched_keys") or ())
    if wrong:
        name, got, want = wrong[0]
        parts.append(f"{len(wrong)} of the wrong shape (e.g. {name}: {tuple(got)} in the file, "
                     f"{tuple(want)} expected)")  # fmt: skip
    if parts:
        raise PolicyCheckpointError(
            f"{directory}: the {family} checkpoint does not match the {family} architecture its "
            "config.json describes: " + "; ".join(parts)
        )


def weight_files(directory: str | Path) -> list[Path]:
    """model.safetensors, or the shards model.safetensors.index.json lists (each must exist)."""
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    if (directory / INDEX_FILE).is_file():
        index = read_json_object(directory / INDEX_FILE)
        weight_map = index.get("weight_map")
        shards = weight_map.values() if isinstance(weight_map, dict) else None
        if shards is None or not all(isinstance(v, str) for v in shards):
            raise PolicyCheckpointError(
                f"{directory / INDEX_FILE}: no 'weight_map' object of tensor name -> shard file"
            )
        for shard in sorted(set(shards)):
            if not (directory / shard).is_file():
                raise PolicyCheckpointError(
                    f"{directory / shard}: missing; {INDEX_FILE} lists it as a weight shard"
                )
        return [directory / shard for shard in sorted(set(shards))]
    raise FileNotFoundError(f"{directory} holds no {WEIGHTS_FILE} and no {INDEX_FILE}")


NORMALISER_KEYS = ("observation.state.mean", "observation.state.std", "action.mean", "action.std")


def read_normaliser(path: Path) -> dict[str, torch.Tensor]:
    """lerobot's normaliser statistics file (policy_preprocessor_step_*_normalizer_processor.
    safetensors), checked: it parses, holds the four MEAN_STD tensors, all finite."""
    stats = read_safetensors(path)
    missing = [k for k in NORMALISER_KEYS if k not in stats]
    if missing:
        raise PolicyCheckpointError(
            f"{path}: no {', '.join(missing)}; expected the MEAN_STD statistics "
            f"{', '.join(NORMALISER_KEYS)}"
        )
    stats = {k: stats[k] for k in NORMALISER_KEYS}
    check_state(stats, stats, path, "the normaliser statistics")  # finiteness only
    return stats


def load_checked(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    family: str,
    allow_missing: Iterable[str] = (),
) -> None:
    """load_state_dict, checked first (`check_state`): one line naming the first missing,
    unexpected and wrongly shaped tensors when the checkpoint does not match (another family,
    version or size) and the first tensor holding NaN/inf, instead of a wall of text.
    allow_missing: name suffixes the published checkpoints do not store (unused buffers)."""
    check_state(module.state_dict(), state, f"the {family} checkpoint",
                f"the {family} architecture", tuple(allow_missing))  # fmt: skip
    module.load_state_dict(state, strict=False)


def select_stats(stats: dict[str, Any], key: str | None, what: str = "norm_stats") -> Any:
    """stats[key]; with key None the only entry. The error lists the valid keys."""
    keys = sorted(stats)
    if key is None:
        if len(keys) == 1:
            return stats[keys[0]]
        raise ValueError(
            f"this checkpoint's {what} hold {len(keys)} datasets; pick one with "
            f"--base-load.unnorm-key (valid choices: {', '.join(keys)})"
        )
    if key not in stats:
        raise ValueError(f"unknown unnorm_key {key!r}; valid choices: {', '.join(keys)}")
    return stats[key]


def compute_dtype(name: str) -> torch.dtype:
    """auto: bfloat16 on a GPU that supports it, else float32 (CPU bf16 matmuls are slow)."""
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if name == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if name not in choices:
        raise ValueError(f"unknown dtype {name!r}; valid choices: auto, {', '.join(choices)}")
    return choices[name]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pil_resize(
    images: np.ndarray, size: tuple[int, int], resample: str = "bicubic"
) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> float (N, 3, h, w) in [0, 1], resized with PIL (what the
    reference processors do: PIL resize on PIL images), size = (h, w)."""
    from PIL import Image

    mode = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[resample]
    out = np.stack(
        [
            np.asarray(Image.fromarray(img).resize((size[1], size[0]), resample=mode))
            for img in images
        ]
    )
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div(255)


def resize_with_pad(images: torch.Tensor, height: int, width: int, pad_value: float = 0.0):
    """(N, 3, H, W) in [0, 1] -> (N, 3, height, width): resized keeping the aspect ratio
    (bilinear), then padded on the left and top (lerobot's pi0 / SmolVLA `resize_with_pad`)."""
    h, w = images.shape[-2:]
    ratio = max(w / width, h / height)
    new_h, new_w = int(h / ratio), int(w / ratio)
    resized = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return F.pad(resized, (width - new_w, 0, height - new_h, 0), value=pad_value)


def pad_last_dim(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last dim to `size` (pi0 / SmolVLA pad states and actions to 32)."""
    if x.shape[-1] > size:
        raise ValueError(f"dimension {x.shape[-1]} exceeds the checkpoint's maximum {size}")
    return F.pad(x, (0, size - x.shape[-1]))


@contextmanager
def new_checkpoint_directory(directory: str | Path) -> Iterator[Path]:
    """A temporary directory that becomes `directory` in one rename when the block succeeds
    (removed when it fails). An existing `directory` is refused: a tiny checkpoint never
    replaces anything."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} exists; choose a new directory")
    with atomic_directory(directory) as tmp:
        yield tmp


def check_benchmark_dims(family: str, action_dim: int, benchmark: Any) -> None:
    """A real checkpoint's action space is fixed by its training data: refuse a benchmark whose
    action dim differs instead of executing wrong-sized actions."""
    if benchmark is not None and getattr(benchmark, "action_dim", action_dim) != action_dim:
        raise ValueError(
            f"the {family} checkpoint outputs {action_dim}-D actions but benchmark "
            f"{benchmark.name!r} takes {benchmark.action_dim}-D actions; fine-tune the "
            "checkpoint for this action space first"
        )


class RealCheckpoint:
    """The loading entry points every real-VLA family shares (mixed into its BasePolicy).

    A family sets `load_options` to its own options dataclass, declared beside its loader (the
    fields `--base-load.*` may set for it, vla_rl.core.load_options), and its constructor takes
    `(directory, options)`. `from_checkpoint(dir, benchmark, options)`: a published checkpoint
    (`--base-path`), its action space checked against the benchmark's. `save_pretrained` (per
    family) writes the family's own format again plus `vla_rl.json` (policy type and the loading
    options), which `from_pretrained` / `load_policy` read back; the family's own files stay
    untouched. `write_tiny_checkpoint`: a tiny random-weight directory in the published format
    (`vla-rl tiny-checkpoint`, the tests), loaded with `tiny_options`."""

    action_dim = 0
    load_options: ClassVar[type]
    tiny_options: ClassVar[dict[str, Any]] = {}
    """The options the family's tiny checkpoint loads with (e.g. which of its made-up datasets'
    statistics), for the policy contract test."""

    def loading_options(self) -> dict[str, Any]:
        """The options to load a saved copy with (get_config by default)."""
        return self.get_config()  # type: ignore[attr-defined]

    @classmethod
    def from_checkpoint(cls, directory: str | Path, benchmark: Any = None, options: Any = None):
        policy = cls(directory, options)  # type: ignore[call-arg]
        check_benchmark_dims(cls.policy_type, policy.action_dim, benchmark)  # type: ignore[attr-defined]
        return policy

    @classmethod
    def from_pretrained(cls, directory: str | Path):
        """A copy we saved: the family's own files, loaded with the options vla_rl.json records
        (checked against the family's options dataclass first)."""
        path = Path(directory) / "vla_rl.json"
        options = read_json_object(path).get("options", {})
        if not isinstance(options, dict):
            raise PolicyCheckpointError(
                f"{path}: 'options' is {json_type(options)}; expected an object of load options"
            )
        check_fields(cls.load_options, options, path,
                     what=f"the {cls.policy_type} load options")  # type: ignore[attr-defined]  # fmt: skip
        return cls(directory, cls.load_options(**options))  # type: ignore[call-arg]

    def write_vla_rl_file(self, directory: Path) -> None:
        record = {"policy_type": self.policy_type, "options": self.loading_options()}  # type: ignore[attr-defined]
        (directory / "vla_rl.json").write_text(json.dumps(record, indent=2) + "\n")

    @classmethod
    def write_tiny_checkpoint(cls, directory: str | Path, action_dim: int, state_dim: int) -> Path:
        """Write a tiny random-weight checkpoint of this family, in its published format, to
        `directory` (atomically; it must not exist yet). Da / Ds: the made-up statistics' sizes."""
        raise NotImplementedError(f"{cls.policy_type} has no tiny checkpoint writer")  # type: ignore[attr-defined]

    @classmethod
    def contract_instance(cls, benchmark: Any, directory: Path):
        """The policy contract test's instance: the family's tiny checkpoint for `benchmark`'s
        action and state sizes, loaded as a published one."""
        path = cls.write_tiny_checkpoint(Path(directory) / "tiny", benchmark.action_dim,
                                         benchmark.state_dim)  # fmt: skip
        return cls.from_checkpoint(path, benchmark, cls.load_options(**cls.tiny_options))
