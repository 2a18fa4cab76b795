"""The package's import graph, read from the source with ast (no third-party tool): no import
cycle anywhere, and the core never imports an adapter, a method or a command.

Every import statement counts for cycles, also those inside functions and under TYPE_CHECKING:
those are exactly where the two cycles this layout removed used to hide. Names reach adapters
lazily through the registries ("module:attr" strings), which are not imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject.toml [tool.setuptools.package-dir]).
ROOTS = {
    "vla_rl": "vla_rl",
    "policies": "vla_rl.policies",
    "benchmarks": "vla_rl.benchmarks",
    "world_models": "vla_rl.world_models",
}
# What vla_rl/core/ may not import at module level (DESIGN.md: the core imports no adapter).
ABOVE_CORE = ("vla_rl.policies", "vla_rl.benchmarks", "vla_rl.methods", "vla_rl.commands")


def module_files(repo: Path, roots: dict[str, str]) -> dict[str, Path]:
    """Module name -> file, for every .py under the roots (a package is its __init__.py)."""
    out = {}
    for folder, package in roots.items():
        for path in sorted((repo / folder).rglob("*.py")):
            parts = path.relative_to(repo / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def imported_modules(path: Path, name: str, modules: set[str], top_level_only: bool = False):
    """The known modules `path` (module `name`) imports: `import a.b`, `from a import b` (b a
    module or a name in a), relative imports. top_level_only: only statements at module level
    (including `if TYPE_CHECKING:` blocks), not those inside functions or classes."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = ast.walk(tree) if not top_level_only else _module_level(tree.body)
    found = set()
    for node in nodes:
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in modules:  # a name inside a module -> the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _module_level(body):
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):  # if TYPE_CHECKING:, try/except ImportError
            for child in ("body", "orelse", "finalbody"):
                yield from _module_level(getattr(node, child, []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)


def import_graph(repo: Path = REPO, roots: dict[str, str] = ROOTS) -> dict[str, set[str]]:
    files = module_files(repo, roots)
    names = set(files)
    return {name: imported_modules(path, name, names) for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def core_violations(repo: Path = REPO, roots: dict[str, str] = ROOTS) -> list[str]:
    files = module_files(repo, roots)
    out = []
    for name, path in files.items():
        if not (name == "vla_rl.core" or name.startswith("vla_rl.core.")):
            continue
        for target in imported_modules(path, name, set(files), top_level_only=True):
            if target.startswith(ABOVE_CORE):
                out.append(f"{name} imports {target}")
    return sorted(out)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 60  # the walk found the package (core, rollout, methods, adapters, ...)
    assert find_cycles(graph) == []


def test_the_core_imports_no_adapter_method_or_command():
    assert core_violations() == []


# The packages' layers (docs/ARCHITECTURE.md): a module imports its own package or lower layers.
LAYERS = [
    {"io"},
    {"core"},
    {"rollout", "rl", "data"},
    {"evaluation", "rewards"},
    {"runs"},
    {"methods"},
    {"commands", "cli"},
]
ADAPTERS = {"policies", "benchmarks", "world_models"}  # above the core's lower layers, not runs


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vla_rl"


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    layer = {pkg: i for i, pkgs in enumerate(LAYERS) for pkg in pkgs}
    adapter_floor = layer["data"]  # adapters may use core, rollout, rl, data and io
    out = []
    for name, targets in graph.items():
        src = package_of(name)
        for target in targets:
            dst = package_of(target)
            if dst in (src, "vla_rl"):
                continue
            if src in ADAPTERS:
                ok = dst in ADAPTERS or layer.get(dst, 99) <= adapter_floor
            elif dst in ADAPTERS:
                ok = src in ("commands", "cli")  # everything else reaches adapters by name
            else:
                ok = layer[dst] < layer[src]
            if not ok:
                out.append(f"{name} imports {target}")
    return sorted(out)


def test_every_import_goes_down_the_layers_even_lazily():
    # Stricter than the module-level core rule: also imports inside functions count.
    assert layering_violations(import_graph()) == []


def test_a_layer_violation_is_found():
    graph = {"vla_rl.core.policy": {"vla_rl.runs.run"}, "vla_rl.runs.run": {"vla_rl.core.x"}}
    assert layering_violations(graph) == ["vla_rl.core.policy imports vla_rl.runs.run"]


# ---- the checks themselves fail on what they are meant to catch ---------------------------------
@pytest.fixture
def fake_repo(tmp_path):
    (tmp_path / "vla_rl" / "core").mkdir(parents=True)
    (tmp_path / "policies").mkdir()
    for init in ("vla_rl/__init__.py", "vla_rl/core/__init__.py", "policies/__init__.py"):
        (tmp_path / init).write_text("")
    return tmp_path


def test_a_cycle_hidden_in_a_function_or_type_checking_is_found(fake_repo):
    core = fake_repo / "vla_rl" / "core"
    (core / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vla_rl.core.b import X\n"
    )
    (core / "b.py").write_text("def f():\n    from . import c\n")
    (core / "c.py").write_text("import vla_rl.core.a as a\n")
    (core / "d.py").write_text("from vla_rl.core import a\n")  # not on the cycle
    graph = import_graph(fake_repo, {"vla_rl": "vla_rl", "policies": "vla_rl.policies"})
    assert find_cycles(graph) == [["vla_rl.core.a", "vla_rl.core.b", "vla_rl.core.c"]]


def test_a_core_module_importing_an_adapter_is_found(fake_repo):
    (fake_repo / "policies" / "flow.py").write_text("X = 1\n")
    (fake_repo / "vla_rl" / "core" / "bad.py").write_text(
        "from vla_rl.policies.flow import X\n\ndef ok():\n    import vla_rl.policies.flow\n"
    )
    roots = {"vla_rl": "vla_rl", "policies": "vla_rl.policies"}
    assert core_violations(fake_repo, roots) == ["vla_rl.core.bad imports vla_rl.policies.flow"]


# ---- optional extras stay optional -------------------------------------------------------------
def importers_of(package: str, repo: Path = REPO, roots: dict[str, str] = ROOTS) -> dict:
    """Modules that import the third-party `package` -> whether one of those imports is at module
    level (see `_module_level`)."""
    out = {}
    for name, path in module_files(repo, roots).items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(node) for node in _module_level(tree.body)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            else:
                continue
            if any(t == package or t.startswith(f"{package}.") for t in targets):
                out[name] = out.get(name, False) or id(node) in top
    return out


def test_ray_is_imported_by_the_ray_backend_only_and_lazily():
    """The [ray] extra is optional: the rollout backend and the Ray Train launcher import it,
    inside functions only."""
    assert importers_of("ray") == {"vla_rl.rollout.ray_backend": False,
                                   "vla_rl.runs.ray_train": False}  # fmt: skip


def test_the_package_and_the_cli_load_no_ray():
    """Also what the package's imports import: `import vla_rl`, the CLI and the local backend
    never load Ray, installed or not."""
    import subprocess
    import sys

    code = ("import sys, vla_rl, vla_rl.cli, vla_rl.rollout.local, vla_rl.rollout.engine\n"
            "import vla_rl.commands.finetune\n"
            "from vla_rl.core.registry import BACKENDS\n"
            "BACKENDS.get('local')\n"
            "print('ray' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
