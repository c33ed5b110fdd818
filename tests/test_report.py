"""``phasevae report``: one self-contained HTML page per analysed run, opened in a
real headless browser (Chromium, driven by Playwright) where one is installed;
``.ci/run`` installs it and sets PHASEVAE_REQUIRE_BROWSER so that CI cannot skip."""

import json
import os
import re
import shutil

import pytest

from phasevae.analysis.curves import analyze_run
from phasevae.cli import main
from phasevae.report import figures as plots
from phasevae.store import RunDir
from phasevae.store.runmeta import WallTimes
from tests.test_analysis import run_dir, synthetic_metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def analysed(tmp_path):
    """A finished, analysed run (synthetic curves) with one diverged point."""
    run = run_dir(tmp_path, beta=[0.5, 1.0, 2.0])
    metrics = synthetic_metrics([0.5, 1.0, 2.0])
    run.write_metrics(metrics)
    points = dict.fromkeys(metrics["point_id"].unique(), "ok")
    points["b1.0s0p3"] = "diverged"
    meta = run.meta().replace(
        points=points,
        grid_size=len(points),
        steps=600,
        wall_times=WallTimes(compile_s=2.5, train_s=9.0),
        platform="cpu",
        devices=("cpu",) * 8,
        cores=2,
        processes=1,
        data={"sha256": "ab" * 32, "shape": [512, 4], "dtype": "float32"},
    )
    run.write_meta(meta)
    analyze_run(run.path)
    return run.path


@pytest.mark.slow
def test_the_report_is_one_self_contained_page(analysed, capsys):
    assert main(["report", str(analysed)]) == 0
    page = analysed / "report.html"
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_text()
    # nothing fetched: no script, no external source or stylesheet
    assert "<script" not in text
    assert not re.search(r'(src|href)="(?!data:)', text)
    names = list(plots.figures(analysed))
    shown = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', text)
    assert shown == names
    assert text.count("train longer") + text.count("trusted") >= 3  # the verdicts
    assert "1 of 120 models diverged" in text and "b1.0s0p3" in text  # the warnings
    assert "[grid]" in text and "latent_dim" in text  # the spec
    assert "2.5 s" in text and "9.0 s" in text  # the timings
    assert "data: sha256 abababababababab..., shape [512, 4]" in text
    assert "cpu, 8 XLA devices on 2 cores, 1 process" in text
    assert not list(analysed.glob(".*tmp*"))
    # every figure says what to read in it, with the run's numbers where it has them
    captions = re.findall(r"<figcaption><b>[^<]+</b> ([^<]+)</figcaption>", text)
    assert len(captions) == len(names) and all(len(c) > 60 for c in captions)
    assert "Measured sigma_c^2 here: beta 0.5:" in text
    # the verdicts are explained, and a warning carries its next command
    assert "Nothing to do" in text or "still moving when training stopped" in text
    if "train longer" in text:
        assert "; next: phasevae " in text
    from phasevae.report.html import _count

    assert _count(1) == "1 compile of the training program" and "compiles)" not in text


@pytest.mark.slow
def test_report_errors_exit_2_and_write_nothing(tmp_path, analysed, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert (
        main(["report", str(analysed), "-o", str(tmp_path / "no/such/dir.html")]) == 2
    )
    err = capsys.readouterr().err
    assert "does not exist" in err and "existing directory" in err
    assert "Traceback" not in err
    assert not (analysed / "report.html").exists()
    # a run without its analysis is analysed on demand, to the same document
    before = json.loads((analysed / "analysis.json").read_text())
    (analysed / "analysis.json").unlink()
    assert main(["report", str(analysed)]) == 0
    assert json.loads((analysed / "analysis.json").read_text()) == before
    assert (analysed / "report.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("PHASEVAE_REQUIRE_BROWSER"),
    reason="no Chromium here (.ci/run installs it)",
)
def test_the_report_opens_in_a_headless_browser(analysed, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    assert CHROMIUM is not None, "PHASEVAE_REQUIRE_BROWSER is set but no chromium"
    assert main(["report", str(analysed)]) == 0
    messages, errors = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: messages.append((m.type, m.text)))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((analysed / "report.html").as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])"
        )
        verdicts = page.locator("td.verdict").all_inner_texts()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert [name for name, _, _ in images] == list(plots.figures(analysed))
    assert all(done and width > 100 for _, done, width in images), images
    assert len(verdicts) == 3 and set(verdicts) <= {"trusted", "train longer"}
    assert errors == [] and [m for m in messages if m[0] == "error"] == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, said",
    [
        ('{"transitions": [', "is damaged"),
        ("[]", "is damaged (its digest is missing)"),
        ('{"spectrum": {}, "transitions": []}', "spectrum lacks eigenvalues"),
        ('{"format_version": 9}', "has format_version 9; this phasevae reads"),
        (
            '{"spectrum": {"lambda_max": 4, "eigenvalues": [4]}, "latent_dim": 1,'
            ' "settings": {}, "transitions": [], "hysteresis": [], "boundary": {},'
            ' "boundary_by": [], "scaling": null, "scaling_by": [], "points": [],'
            ' "skipped": [{"reason": "fewer than 4 sigma^2 values"}]}',
            "no curve of",
        ),
    ],
)
def test_a_damaged_analysis_is_bad_input_for_report_and_plot(
    analysed, capsys, damage, said
):
    """Broken JSON is refused by its digest; a sealed document that lacks what the
    figures read (as a defect in phasevae could write) by the schema."""

    try:
        doc = json.loads(damage)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        RunDir(analysed).write_analysis(doc)
    else:
        (analysed / "analysis.json").write_text(damage)
    for command in ("report", "plot"):
        assert main([command, str(analysed)]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err


@pytest.mark.slow
def test_edited_analyses_never_crash_the_report(analysed, capsys):
    """Values swapped for the wrong type, NaN or huge numbers, keys deleted, anywhere
    in a real analysis: the report is written (exit 0) or refused (exit 2)."""
    import random

    base = json.loads((analysed / "analysis.json").read_text())

    def paths(o, p=()):
        yield p
        if isinstance(o, dict | list):
            for k, v in o.items() if isinstance(o, dict) else enumerate(o[:2]):
                yield from paths(v, (*p, k))

    where = [p for p in paths(base) if p and p[0] in ("transitions", "boundary")]
    rng = random.Random(0)
    swaps = [None, "x", -1, 1e308, [], {}, [1], True, [1, 2], {"a": 1}]
    outcomes = set()
    for _ in range(6):
        doc = json.loads(json.dumps(base))
        p = rng.choice(where)
        parent = doc
        for k in p[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and rng.random() < 0.3:
            del parent[p[-1]]
        else:
            parent[p[-1]] = rng.choice(swaps)
        RunDir(analysed).write_analysis(doc)  # sealed: the schema is what is tested
        outcomes.add(main(["report", str(analysed)]))
        assert "Traceback" not in capsys.readouterr().err
    assert outcomes <= {0, 2} and 2 in outcomes
