"""``phasevae report``: an analysed run as one self-contained HTML page, the thing a
researcher sends to a colleague. Figures are embedded as PNG data, styles inline, no
script and nothing fetched: the page reads the same offline, in a mail client or from
an archive. No JAX, no training.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt

from phasevae.cliprint import boundary_lines, transition_frame, transition_notes
from phasevae.errors import BadInput
from phasevae.plotbase import PlotError, load
from phasevae.plots import figures
from phasevae.safeio import atomic_write_text
from phasevae.store import RunDir

DPI = 110  # embedded figures: sharp on screen, a page of a few MB at most

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.verdict { text-align: left; font-weight: 600; }
.trusted { color: #17693a; } .longer { color: #9a5b00; } .none { color: #666; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
ul.warnings li { color: #8a1c1c; }
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of an analysed run (default RUN_DIR/report.html, atomically)
    and return its path.

    Raises:
      PlotError / RunDirError / BadInput: no run there, not analysed yet, or an
        ``out`` that cannot be written.
    """
    page = report_html(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    if path.is_dir() or not path.parent.is_dir():
        raise BadInput(f"--out {path}: give a file in an existing directory")
    atomic_write_text(path, page)
    return path


def report_html(run_dir: str | Path) -> str:
    """The report page's HTML: the run at a glance, its transitions with verdicts,
    the warnings, every figure, the spectrum, the spec and the timings."""
    rd = load(run_dir)
    pictures, failed = _pictures(run_dir)
    body = [
        f"<h1>{_e(rd.name)}</h1>",
        f'<p class="sub">{_e(rd.meta["spectrum"]["description"])}</p>',
        _glance(rd),
        "<h2>Transitions</h2>",
        _transitions(rd.analysis),
        "<h2>Warnings</h2>",
        _warnings(rd, failed),
        "<h2>Figures</h2>",
        *pictures,
        "<h2>Spectrum</h2>",
        _spectrum(rd),
        "<h2>Spec</h2>",
        f"<pre>{_e(RunDir(run_dir).spec_file.read_text())}</pre>",
        "<h2>Timings and machine</h2>",
        _timings(rd.meta),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>phasevae report: {_e(rd.name)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + f'\n<p class="sub">written by phasevae {_e(_version(rd.meta))} on '
        f"{time.strftime('%Y-%m-%d %H:%M')}</p>\n</body></html>\n"
    )


def _e(value) -> str:
    return html.escape(str(value))


def _version(meta: dict) -> str:
    return meta.get("versions", {}).get("phasevae", "?")


def _glance(rd) -> str:
    meta, analysis = rd.meta, rd.analysis
    size, steps = meta.get("grid_size", len(rd.points)), meta.get("steps", "?")
    verdicts = {}
    for t in analysis["transitions"]:
        v = t.get("verdict", "no verdict (an older analysis)")
        verdicts[v] = verdicts.get(v, 0) + 1
    items = [
        f"status: {meta.get('status', '?')}",
        f"{size} grid points, {steps} steps each (at most)",
        f"lambda_max = {meta['spectrum']['lambda_max']:.4g}: the linear theory puts "
        "collapse at beta sigma^2 = lambda_max",
        "verdicts: "
        + (", ".join(f"{n} {v}" for v, n in verdicts.items()) or "no curve fitted"),
    ]
    items += [f"boundary over beta: {line}" for line in boundary_lines(analysis)]
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _transitions(analysis: dict) -> str:
    if not analysis["transitions"]:
        return "<p>No curve had a transition to fit.</p>"
    frame = transition_frame(analysis)
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for col, v in row.items():
            if col == "verdict":
                kind = {"trusted": "trusted", "train longer": "longer"}.get(v, "none")
                cells.append(f'<td class="verdict {kind}">{_e(v)}</td>')
            else:
                cells.append(f"<td>{_e(_fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    notes = transition_notes(analysis)
    table = f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    return table + (f"<pre>{_e(chr(10).join(notes))}</pre>" if notes else "")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _warnings(rd, failed: dict[str, str]) -> str:
    meta, analysis = rd.meta, rd.analysis
    out = []
    diverged = [p for p, s in meta.get("points", {}).items() if s == "diverged"]
    if diverged:
        out.append(
            f"{len(diverged)} of {meta.get('grid_size', '?')} models diverged and were "
            f"frozen: {', '.join(diverged[:8])}{' ...' if len(diverged) > 8 else ''}"
        )
    if meta.get("status") != "complete":
        out.append(f"the run is not complete (status {meta.get('status')!r})")
    for curve in analysis.get("skipped", []):
        out.append(f"not fitted ({_curve(curve)}): {curve['reason']}")
    for t in analysis["transitions"]:
        if t.get("verdict", "trusted") != "trusted":
            out.append(f"{_curve(t)}: verdict '{t['verdict']}'")
        if t.get("off_theory"):
            off = t["off_theory"]
            out.append(
                f"{_curve(t)}: the transition is off the linear theory by "
                f"{100 * off['shift']:+.1f} % (evidence: {off['evidence']})"
            )
    for name, why in failed.items():
        out.append(f"figure {name} could not be drawn: {why}")
    if not out:
        return "<p>None.</p>"
    return '<ul class="warnings">' + "".join(f"<li>{_e(w)}</li>" for w in out) + "</ul>"


def _curve(t: dict) -> str:
    return ", ".join(
        f"{k} = {t[k]:g}"
        for k in ("beta", "learning_rate")
        if isinstance(t.get(k), int | float)
    )


def _pictures(run_dir) -> tuple[list[str], dict[str, str]]:
    """Every figure of the run as an <img> of inline PNG data; a figure that cannot
    be drawn is a warning, not a failed report."""
    out, failed = [], {}
    for name, make in figures(run_dir).items():
        try:
            fig = make()
        except (PlotError, ValueError, KeyError) as e:
            failed[name] = str(e)
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        out.append(
            f'<figure id="fig-{_e(name)}"><img alt="{_e(name)}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(name.replace('_', ' '))}</figcaption></figure>"
        )
    return out, failed


def _spectrum(rd) -> str:
    s = rd.meta["spectrum"]
    ev = s["eigenvalues"]
    k = rd.spec.model.latent_dim
    betas = sorted(rd.points["beta"].unique())
    head = "<tr><th>i</th><th>lambda_i</th>" + "".join(
        f"<th>sigma^2 at beta {b:g}</th>" for b in betas
    )
    rows = [
        f"<tr><td>{i + 1}</td><td>{v:.4g}</td>"
        + "".join(f"<td>{v / b:.4g}</td>" for b in betas)
        + "</tr>"
        for i, v in enumerate(ev[: max(k, 4)])
    ]
    sizes = ", ".join(
        f"{name} = {s[key]:.4g}"
        for name, key in (("N", "dim"), ("n", "samples"), ("trace", "trace"))
        if key in s
    )
    facts = (
        f"{sizes}; the top "
        f"{k} eigenvalues (the latent dims) set the kinks, at sigma^2 = lambda_i / beta"
    )
    return f"<p>{_e(facts)}</p><table>{head}</tr>{''.join(rows)}</table>"


def _timings(meta: dict) -> str:
    wall = meta.get("wall_times", {})
    facts = {
        "compile": f"{wall.get('compile_s', 0):.1f} s ({meta.get('compiles', '?')} "
        "compiles)",
        "training": f"{wall.get('train_s', 0):.1f} s",
        "platform": f"{meta.get('platform', '?')}, {len(meta.get('devices', []))} "
        f"device(s), {meta.get('processes', 1)} process(es)",
        "git revision": meta.get("git_revision") or "-",
        "versions": json.dumps(meta.get("versions", {})),
    }
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items()
    )
    return f"<table>{rows}</table>"
