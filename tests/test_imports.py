"""The import graph of ldm/: every module imports on its own in a fresh interpreter, ldm.cli pulls in no torch (so
``--help`` answers at once), and no module reaches back to one that reaches it, even through an import written
inside a function (the way a cycle hides)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LDM = ROOT / "ldm"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in LDM.rglob("*.py") if p.name != "__main__.py")


def ldm_imports(path: Path) -> set[str]:
    """Every ldm module that ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ldm")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ldm") and node.level == 0:
            for alias in node.names:                               # `from ldm import io` imports the module ldm.io
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {name for name in found if name in MODULES and name != "ldm"}


def test_no_import_cycle():
    graph = {module_name(p): ldm_imports(p) for p in LDM.rglob("*.py") if p.name != "__main__.py"}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == "open":
                cycle = path[path.index(dep):] + [dep] if dep in path else [name, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_cli_imports_no_torch_and_no_other_ldm_module():
    code = ("import sys, ldm.cli; "
            "print(sorted(m for m in sys.modules if m == 'torch' or (m.startswith('ldm') and m not in ('ldm', 'ldm.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import ldm.cli also imported {out.strip()}"


def test_every_module_imports_on_its_own():
    """Each module first, in one interpreter: the ldm modules are dropped from sys.modules before each import
    (torch stays loaded, which keeps this fast), so a module that only imports after another one fails here."""
    code = ("import importlib, sys\n"
            f"for name in {MODULES!r}:\n"
            "    for loaded in [m for m in sys.modules if m == 'ldm' or m.startswith('ldm.')]:\n"
            "        del sys.modules[loaded]\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as error:\n"
            "        print(f'{name}: {type(error).__name__}: {error}')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr[-2000:]
