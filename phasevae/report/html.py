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

from phasevae.errors import BadInput
from phasevae.report.figbase import PlotError, load
from phasevae.report.figures import figures
from phasevae.report.text import boundary_lines, transition_frame, transition_notes
from phasevae.safeio import atomic_write_text
from phasevae.store import RunDir
from phasevae.store.records import Analysis
from phasevae.store.runmeta import RunMeta

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
    pictures, failed = _pictures(run_dir, rd)
    body = [
        f"<h1>{_e(rd.name)}</h1>",
        f'<p class="sub">{_e(rd.meta.spectrum["description"])}</p>',
        _glance(rd),
        "<h2>Transitions</h2>",
        _transitions(rd.analysis),
        _verdicts(rd.analysis),
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


def _version(meta: RunMeta) -> str:
    return meta.versions.get("phasevae") or "?"


def _glance(rd) -> str:
    meta, analysis = rd.meta, rd.analysis
    size, steps = meta.grid_size, meta.steps
    verdicts = {}
    for t in analysis.transitions:
        v = t.verdict or "no verdict (an older analysis)"
        verdicts[v] = verdicts.get(v, 0) + 1
    items = [
        f"status: {meta.status}",
        f"{size} grid points, {steps} steps each (at most)",
        f"lambda_max = {meta.spectrum['lambda_max']:.4g}: the linear theory puts "
        "collapse at beta sigma^2 = lambda_max",
        "verdicts: "
        + (", ".join(f"{n} {v}" for v, n in verdicts.items()) or "no curve fitted"),
    ]
    items += [f"boundary over beta: {line}" for line in boundary_lines(analysis)]
    data = meta.data  # the fingerprint of the data the models saw
    if isinstance(data, dict) and isinstance(data.get("sha256"), str):
        items.append(
            f"data: sha256 {data['sha256'][:16]}..., shape {data.get('shape')}, "
            f"{data.get('dtype')}; the run refuses any other data"
        )
    return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _transitions(analysis: Analysis) -> str:
    if not analysis.transitions:
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
    diverged = meta.diverged
    if diverged:
        out.append(
            f"{len(diverged)} of {meta.grid_size} models diverged and were "
            f"frozen: {', '.join(diverged[:8])}{' ...' if len(diverged) > 8 else ''}"
        )
    if not meta.complete:
        out.append(f"the run is not complete (status {meta.status!r})")
    for curve in analysis.skipped:
        out.append(f"not fitted ({_curve(curve)}): {curve['reason']}")
    for t in analysis.transitions:
        if (t.verdict or "trusted") != "trusted":
            advice = t.advice or {}
            todo = f"; next: {advice['command']}" if advice.get("command") else ""
            out.append(f"{_curve(t.curve)}: verdict '{t.verdict}'{todo}")
        if t.off_theory:
            off = t.off_theory
            out.append(
                f"{_curve(t.curve)}: the transition is off the linear theory by "
                f"{100 * off['shift']:+.1f} % (evidence: {off['evidence']})"
            )
    for name, why in failed.items():
        out.append(f"figure {name} could not be drawn: {why}")
    if not out:
        return "<p>None.</p>"
    return '<ul class="warnings">' + "".join(f"<li>{_e(w)}</li>" for w in out) + "</ul>"


def _curve(values: dict) -> str:
    """A curve's beta and learning rate (of a transition or a skipped curve)."""
    return ", ".join(
        f"{k} = {values[k]:g}"
        for k in ("beta", "learning_rate")
        if isinstance(values.get(k), int | float)
    )


def _pictures(run_dir, rd) -> tuple[list[str], dict[str, str]]:
    """Every figure of the run as an <img> of inline PNG data, with a caption that
    says what to read in it; a figure that cannot be drawn is a warning, not a
    failed report."""
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
            f"<figcaption><b>{_e(name.replace('_', ' '))}.</b> "
            f"{_e(caption(name, rd))}</figcaption></figure>"
        )
    return out, failed


def _spectrum(rd) -> str:
    s = rd.meta.spectrum
    ev = s["eigenvalues"]
    k = rd.k
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


def _timings(meta: RunMeta) -> str:
    wall = meta.wall_times
    facts = {
        "compile": f"{wall.compile_s or 0:.1f} s ({_count(meta.compiles)})",
        "training": f"{wall.train_s:.1f} s",
        "platform": _machine(meta),
        "git revision": meta.git_revision or "-",
        "versions": json.dumps(meta.versions),
    }
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items()
    )
    return f"<table>{rows}</table>"


def _machine(meta: RunMeta) -> str:
    """ "cpu, 8 XLA devices on 2 cores, 1 process" (cores where the run recorded
    them: the CPU is split into more devices than it has cores)."""
    n, cores = len(meta.devices), meta.cores
    devices = f"{n} XLA device{'s' if n != 1 else ''}"
    if meta.platform == "cpu" and isinstance(cores, int):
        devices += f" on {cores} core{'s' if cores != 1 else ''}"
    procs = meta.processes or 1
    return f"{meta.platform or '?'}, {devices}, {procs} process" + (
        "es" if procs != 1 else ""
    )


def _count(compiles) -> str:
    if not isinstance(compiles, int):
        return "compiles not recorded"
    return f"{compiles} compile{'s' if compiles != 1 else ''} of the training program"


VERDICTS = {  # what a verdict means, and what to do about it
    "trusted": "the interval holds the transition at this training length: the "
    "points near the kink have settled and the finite-training part is at most 1 % "
    "of sigma^2. Nothing to do; a narrower interval needs more sigma^2 inside it "
    "(phasevae locate RUN).",
    "train longer": "the points near the kink were still moving when training "
    "stopped, so the kink may still shift: the interval includes that part. Run the "
    "command given for the curve (it continues this run), or phasevae locate RUN.",
    "no transition in grid": "the top latent dim's KL still falls at the largest "
    "sigma^2: the transition lies beyond the grid. Extend grid.sigma2 upwards, or let "
    "phasevae locate place the grid.",
    "held at the free-bits floor": "free bits keep the KL at its floor: no collapse; "
    "sigma2_c is only where the KL meets the floor.",
    "sigma^2 learned: the grid holds its starts": "the decoder learned its variance, "
    "so sigma2_c is a kink against the starting sigma^2, not a collapse threshold.",
}


def _verdicts(analysis: Analysis) -> str:
    """What each verdict in the table means, and what to do (docs: Reading the
    analysis)."""
    seen = dict.fromkeys(t.verdict for t in analysis.transitions)
    items = [
        f"<li><b>{_e(v)}</b>: {_e(VERDICTS[v])}</li>" for v in seen if v in VERDICTS
    ]
    return f"<ul>{''.join(items)}</ul>" if items else ""


def caption(name: str, rd) -> str:
    """One or two sentences on what to read in figure ``name``, with the run's own
    numbers."""
    found = [t for t in rd.analysis.transitions if t.sigma2_c is not None]
    lam = rd.meta.spectrum["lambda_max"]
    where = "; ".join(
        f"beta {t.beta:g}: {t.sigma2_c:.3g} (theory {lam / t.beta:.3g})"
        for t in found[:4]
    )
    where = f" Measured sigma_c^2 here: {where}." if where else ""
    k = rd.k
    text = {
        "kl_vs_sigma2": "KL against sigma^2 (top), its first and second derivatives "
        "below, one column per curve. Collapse is where the KL reaches ~0 and the "
        "derivatives jump; the red line is the measured sigma_c^2 with its 95 % "
        f"interval shaded.{where}",
        "elbo_vs_sigma2": "The trained models' ELBO against sigma^2 with the "
        "linear-VAE optimum and the collapse line (every dim collapsed): from the "
        "transition on, the trained ELBO lies on the collapse line.",
        "latent_variance": "Each latent dim's mean encoder variance, ranked by KL: a "
        "dim has collapsed where its variance reaches 1 (the prior), each at its own "
        "threshold lambda_i / beta.",
        "scaling": "KL against theta = beta sigma^2 for every beta: with a fixed-"
        "variance Gaussian decoder only the product matters, so the curves fall on "
        f"one line that reaches 0 at lambda_max = {lam:.4g}.",
        "training_curves": "KL during training at the sigma^2 values nearest the "
        "transition: a curve still moving at the end is a point that has not settled "
        "(critical slowing down), and training longer sharpens the answer.",
        "spectrum": f"The data's covariance eigenvalues: the top {k} (one per latent "
        "dim) set the kinks at beta sigma^2 = lambda_i; the band is the beta sigma^2 "
        "range the grid covers.",
        "phase_diagram": "KL over (sigma^2, beta): the collapsed region (dark) should "
        f"begin at the predicted line beta sigma^2 = lambda_max = {lam:.4g} (white "
        "dashes); the red points are the measured boundary with 95 % intervals.",
        "components": "The leading principal components of the data as images, with "
        "their eigenvalues: the directions the latent dims encode first.",
        "hysteresis": "KL with sigma^2 swept up and down, each point starting from "
        "its neighbour: where the two curves part, the state depends on its history.",
        "learned_variance": "The learned decoder variance and the KL during training, "
        "one colour per starting sigma^2: a variance that grows while the KL falls is "
        "the self-deafening loop.",
    }.get(name)
    if text is None and name.startswith("remedy_"):
        text = (
            f"theta_c = beta sigma_c^2 against {name[7:]}: a remedy that moves the "
            f"transition moves these points off lambda_max = {lam:.4g}."
        )
    if text is None and name.startswith("phase_diagram_"):
        text = (
            f"KL over (sigma^2, {name[14:]}): where the collapsed region begins at "
            "each strength of the remedy."
        )
    return text or ""
