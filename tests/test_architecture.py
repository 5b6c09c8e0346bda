"""The package's shape, as ARCHITECTURE.md states it: stages talk through public names only,
no import cycle, modules a reader can hold in mind, and a workflow parse step without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adseg"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every ``adseg`` import, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adseg"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                # `from adseg.gan import synthesis` imports a module, not a name
                found.append((child, None) if child in MODULES else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.startswith("adseg")]
    return found


def test_no_module_imports_a_private_name_of_another():
    offenders = [
        f"{name}: from {module} import {imported}"
        for name, path in MODULES.items()
        for module, imported in _imports(path)
        if imported
        and imported.startswith("_")
        and not imported.startswith("__")
        and module != name
    ]
    assert not offenders, "\n".join(offenders)


def test_no_import_cycle():
    graph = {
        name: {m for m, _ in _imports(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    # a package's __init__ re-exporting its modules is not a cycle with them unless one of
    # them imports the package back
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short_enough_to_read(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]}: {lines} lines; split it by concern"


def test_every_module_is_on_the_package_map():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    missing = [n for n in MODULES if n not in ("adseg.__main__",) and f"`{n}`" not in text]
    assert not missing, f"ARCHITECTURE.md lacks {missing}"


def test_parsing_the_workflow_imports_no_heavy_library():
    """Every Slurm job parses the Snakefile again: the rule files' imports must stay light."""
    imports = []
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for line in smk.read_text().splitlines():
            if line.startswith(("from adseg", "import adseg")):
                imports.append(line)
    assert imports
    heavy = ("torch", "monai", "mlflow", "SimpleITK", "nibabel", "scipy", "matplotlib")
    code = "\n".join([*imports, "import sys", f"print([m for m in {heavy!r} if m in sys.modules])"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
