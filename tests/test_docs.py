"""The documentation: the site builds with warnings as errors, its spec reference is
the spec's own definitions, and the tutorial's code blocks run in order."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from phasevae.spec import CHOICES, SECTIONS

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"


def test_the_site_builds_strict_with_the_generated_spec_reference(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr
    assert "not included in the" not in done.stderr  # every page is in the nav
    specs = (site / "specs" / "index.html").read_text()
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in specs
        for f in dataclasses.fields(cls):
            assert f"<code>{f.name}</code>" in specs, (section, f.name)
    for choices in CHOICES.values():
        for choice in choices:
            assert f"<code>{choice}</code>" in specs, choice
    api = (site / "api" / "index.html").read_text()
    for name in ("phasevae.api.run", "phasevae.api.Run", "phasevae.report.trackers"):
        assert name in api, name
    # the results the pages show are published with them
    assert (site / "results" / "screenshots" / "report.png").exists()


def tutorial_blocks() -> list[tuple[str, str]]:
    """(language, code) of every bash and python block but the install line."""
    blocks = re.findall(r"```(bash|python)\n(.*?)```", TUTORIAL.read_text(), re.S)
    return [(lang, code) for lang, code in blocks if not code.startswith("pip install")]


@pytest.mark.slow
def test_the_tutorial_runs_as_written(tmp_path):
    blocks = tutorial_blocks()
    assert [lang for lang, _ in blocks] == ["python", "bash", "bash", "bash"] + [
        "bash",
        "bash",
        "python",
    ]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    printed = []
    for lang, code in blocks:
        cmd = ["bash", "-e", "-c", code] if lang == "bash" else [sys.executable, "-c"]
        if lang == "python":
            cmd.append(code)
        done = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{code}\n{done.stdout}\n{done.stderr}"
        printed.append(done.stdout)
    run = tmp_path / "runs" / "mine"
    assert (run / "analysis.json").exists() and (run / "report.html").exists()
    assert (run / "figures" / "phase_diagram.png").exists()
    assert (run / "locate" / "locate.json").exists()  # the advice, followed
    assert len(re.findall(r"beta [\d.]+: sigma2_c = ", printed[4])) == 3
    # what the tutorial says the theory prints, and the transitions it reads back
    assert re.search(r"lambda_max = 9\.\d+", printed[1])
    assert len(re.findall(r"beta [\d.]+: sigma2_c = ", printed[-1])) == 3


def test_the_code_layout_page_names_every_module():
    page = (ROOT / "docs" / "layout.md").read_text()
    package = ROOT / "phasevae"
    modules = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py"))
    # a package's __init__ that only says what it owns is its row in the table
    named = {
        f"{m.split('/')[0]}/__init__.py"
        for m in modules
        if f"`{m.split('/')[0]}/`" in page
    }
    missing = [
        m
        for m in modules
        if m not in ("__init__.py", "_version.py")
        and f" {m} " not in page
        and not (m in named and len((package / m).read_text().splitlines()) < 20)
    ]
    assert missing == []


def test_every_install_line_works_from_a_clone():
    """phasevae is not on a package registry: an install line names the clone
    (``.``, ``-e .``, ``".[extra]"``) with an extra that exists, never
    ``phasevae[...]`` or ``pip install phasevae``."""
    import re
    import tomllib

    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]
    )
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages += sorted((ROOT / "phasevae").glob("*.py"))
    found = 0
    for page in pages:
        for line in re.findall(r"pip install[^`\n]*", page.read_text()):
            found += 1
            assert not re.search(r"pip install (-U )?['\"]?phasevae\b", line), (
                page,
                line,
            )
            for extra in re.findall(r"\.\[(\w+)\]", line):
                assert extra in extras, (page, line)
    assert found > 5


@pytest.mark.slow
def test_the_tutorials_install_line_runs_as_written(tmp_path):
    """The tutorial's install line, run in the clone with ``--dry-run`` (nothing is
    installed; pip still builds the package's metadata and resolves the extra)."""
    import shlex

    (line,) = re.findall(
        r"^pip install [^#\n]*", (ROOT / "docs/tutorial.md").read_text(), re.M
    )
    args = shlex.split(line)[2:]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "-q", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
