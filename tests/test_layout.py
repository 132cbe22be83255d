"""The package's layout holds: no import circles, no imports of our modules inside functions, no import up
the layers (docs/layout.md describes them).

The import graph is read from the source with ``ast`` (module-level and function-level imports), so
the test needs no import of the package and sees imports that only run in some code paths.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "otf_flows"

#: Layers, top first. A module may import modules of its own layer and of the layers below it.
#: A module is on the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry", ("otf_flows", "otf_flows.cli", "otf_flows.__main__")),
    ("commands", ("otf_flows.commands",)),
    ("managers", ("otf_flows.managers",)),
    ("flows", ("otf_flows.flows",)),
    ("jobs", ("otf_flows.jobs", "otf_flows.fit_export")),
    ("services", ("otf_flows.validation", "otf_flows.report")),
    ("data", ("otf_flows.store", "otf_flows.embedded", "otf_flows.mongo", "otf_flows.data", "otf_flows.frames",
              "otf_flows.trajectory", "otf_flows.structures", "otf_flows.analysis", "otf_flows.lineage")),
    ("engines", ("otf_flows.reference", "otf_flows.ml", "otf_flows.md")),
    ("config", ("otf_flows.campaign",)),
    ("registries", ("otf_flows.reference.registry", "otf_flows.reference.base", "otf_flows.ml.registry",
                    "otf_flows.ml.base")),
    ("settings", ("otf_flows.reference.settings", "otf_flows.reference.cp2k.settings",
                  "otf_flows.reference.vasp.settings", "otf_flows.ml.gap.settings", "otf_flows.ml.mace.settings",
                  "otf_flows.yaml_config", "otf_flows.walkers", "otf_flows.defaults")),
    ("leaf", ("otf_flows.labels", "otf_flows.errors", "otf_flows.settings", "otf_flows.dirs", "otf_flows.faults",
              "otf_flows.progress", "otf_flows.schemas", "otf_flows.schedule", "otf_flows.checks")),
]

#: Modules that import nothing of the package.
LEAVES = ("otf_flows.labels", "otf_flows.errors", "otf_flows.settings")

#: Compatibility modules (old import paths that serialised objects name): outside the layer rules.
COMPAT = ("otf_flows.backends",)

#: (module, imported module) pairs allowed inside a function, with the reason. None today.
FUNCTION_LEVEL_EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module of ours, line, inside a function) of every import in the module ``name``."""
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        found.append((alias.name, child.lineno, inside))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                if target.split(".")[0] == PACKAGE:
                    for alias in child.names:  # ``from pkg import submodule`` imports the submodule
                        sub = f"{target}.{alias.name}"
                        found.append((sub if sub in known else target, child.lineno, inside))
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def layer(name: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            below = prefix != PACKAGE and name.startswith(prefix + ".")  # the package's __init__ only itself
            if (name == prefix or below) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{name} is on no layer: add it to LAYERS (and docs/layout.md)"
    return index


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {target for target, _, _ in imports(name, path, known)} - {name} for name, path in mods.items()}


def test_every_module_is_on_a_layer():
    for name in modules():
        if not name.startswith(COMPAT):
            layer(name)


def test_no_import_circles():
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_no_imports_of_our_modules_inside_functions():
    mods = modules()
    known = set(mods)
    found = sorted({f"{name}:{line} imports {target}" for name, path in mods.items()
                    for target, line, inside in imports(name, path, known)
                    if inside and (name, target) not in FUNCTION_LEVEL_EXCEPTIONS})
    assert not found, "imports inside functions:\n" + "\n".join(found)


def test_no_import_goes_up_the_layers():
    found = []
    for name, targets in graph().items():
        if name.startswith(COMPAT):
            continue
        for target in sorted(targets):
            if target.startswith(COMPAT):
                found.append(f"{name} imports the compatibility module {target}")
            elif layer(target) < layer(name):
                found.append(f"{name} ({LAYERS[layer(name)][0]}) imports {target} ({LAYERS[layer(target)][0]})")
    assert not found, "imports up the layers:\n" + "\n".join(found)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_of_ours(leaf):
    assert graph()[leaf] == set()


def test_the_checks_find_what_they_look_for(tmp_path, monkeypatch):
    """The checks can fail: in a small package, a circle, an import inside a function, an import up the
    layers and a module on no layer are found."""
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "store.py").write_text("from otf_flows.data import x\n")
    (pkg / "data.py").write_text("x = 1\n\ndef f():\n    from otf_flows import store\n    return store\n")
    (pkg / "cli.py").write_text("")
    (pkg / "labels.py").write_text("import otf_flows.cli\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    with pytest.raises(AssertionError, match="otf_flows.data -> otf_flows.store -> otf_flows.data"):
        test_no_import_circles()
    with pytest.raises(AssertionError, match=r"otf_flows.data:4 imports otf_flows.store"):
        test_no_imports_of_our_modules_inside_functions()
    with pytest.raises(AssertionError, match=r"otf_flows.labels \(leaf\) imports otf_flows.cli \(entry\)"):
        test_no_import_goes_up_the_layers()
    test_every_module_is_on_a_layer()
    (pkg / "extra.py").write_text("")
    with pytest.raises(AssertionError, match="otf_flows.extra is on no layer"):
        test_every_module_is_on_a_layer()


def test_settings_follow_otf_run_one_way_down(tmp_path):
    """``scripts/trace_config.py`` follows a campaign's settings through ``otf run``: they stay in at most 14
    modules and climb back up the layers at most 3 times (docs/layout.md, how a campaign's settings travel)."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "trace_config.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    numbers = dict(item.split("=") for item in out.stdout.strip().splitlines()[-1].split())
    assert int(numbers["modules"]) <= 14 and int(numbers["climbs"]) <= 3, numbers
