"""Headless rendering defaults."""

from __future__ import annotations

import os
import sys


def ensure_headless_gl() -> None:
    """On Linux with no display, default MuJoCo to EGL (Mesa's llvmpipe renders on the CPU; no
    apt install needed on Debian 12). Must run before `mujoco` is imported; an explicit
    MUJOCO_GL set by the user always wins."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
