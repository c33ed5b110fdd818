"""The package's imports run one way: no cycle, and no module imports another's
private names (imports inside functions included)."""

import ast
from pathlib import Path

import phasevae

PACKAGE = Path(phasevae.__file__).parent


def imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, name)} for every phasevae import in it."""
    out = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "phasevae"
            ):
                parts = node.module.split(".")
                for alias in node.names:
                    target = parts[1] if len(parts) > 1 else alias.name
                    found.add((target, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("phasevae."):
                        found.add((alias.name.split(".")[1], ""))
        out[path.stem] = found
    return out


def test_no_import_cycle():
    graph = {m: {t for t, _ in deps if t != m} for m, deps in imports().items()}
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError(
                "import cycle: " + " -> ".join(path[path.index(m) :] + [m])
            )
        if m in done:
            return
        path.append(m)
        for dep in sorted(graph.get(m, ())):
            visit(dep)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_no_module_imports_a_private_name_of_another():
    private = [
        f"{m} imports {name} from {t}"
        for m, deps in imports().items()
        for t, name in deps
        if t != m and name.startswith("_") and t != "__init__"
    ]
    assert not private, private


def test_every_module_stays_readable_in_one_sitting():
    """One stage per module, each about 400 lines at most (issue 14)."""
    sizes = {p.stem: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda kv: -kv[1])


def test_the_study_scripts_import_names_that_exist():
    """analysis/*.py are not run by the suite (they train for minutes): at least
    every name they import from phasevae must exist (a module split once broke one)."""
    import importlib

    root = Path(phasevae.__file__).resolve().parent.parent
    missing = []
    for script in sorted((root / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module or "").startswith(
                "phasevae"
            ):
                continue
            module = importlib.import_module(node.module)
            for a in node.names:
                if not hasattr(module, a.name):
                    try:  # a submodule: from phasevae import analysis
                        importlib.import_module(f"{node.module}.{a.name}")
                    except ImportError:
                        missing.append(f"{script.name}: {node.module}.{a.name}")
    assert not missing
