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


# the functions longer than FUNCTION_LINES, each to be split when it is next changed
LONG_FUNCTIONS = {
    "cliargs.build_parser",  # one argparse declaration per subcommand
    "estimate.estimate_transition",
    "plotbase.analysis_problem",
    "cli.cmd_sweep",
    "sweep.merge_runs",
    "sweep.run_sweep",
    "validate.run_case",
    "plots.kl_figure",
    "validate.table",
}
FUNCTION_LINES = 80


def test_every_function_stays_readable_in_one_sitting():
    """A function reads in one screen or two: at most FUNCTION_LINES lines, but for
    the allow-listed few (issue 29: the cap on functions replaces the cap on
    modules, which was met by splits that followed line counts, not jobs)."""
    long = {}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long[f"{path.stem}.{node.name}"] = lines
    assert set(long) <= LONG_FUNCTIONS, {
        k: v for k, v in long.items() if k not in LONG_FUNCTIONS
    }


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
