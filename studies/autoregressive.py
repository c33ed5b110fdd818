"""Autoregressive decoders (issue 30): does a decoder that sees x's predecessors
collapse where the derived criterion puts it, lambda_max of the innovations'
covariance (docs/science.md, 'Autoregressive decoders'), and not at lambda_max of
the data's? Windows of 8 values of a stationary autoregressive process are made
here, and ``phasevae locate`` (beta = 1, 3000 steps) finds the transition for each
context k.

* ``ar1``: x_t = 0.9 x_{t-1} + e_t, the default MLP, 1 seed, k = 0, 1, 4. The
  criterion falls from about 32 (k = 0) to the first value's variance, about 5.3,
  for every k >= 1 (the later values are predicted from the one before).
* ``membrane`` and ``eeg``: windows of 8 of the real recordings that ship inside
  matplotlib (``data.source = "series"``, 3,000 windows, scaled globally), the
  default MLP, 3 seeds, k = 0, 1, 2, 4.
* ``ar2``: x_t = 0.2 x_{t-1} + 0.7 x_{t-2} + e_t, 3 seeds, k = 0, 1, 2, 4, for the
  linear VAE (no hidden layers: the exact oracle) and the default MLP, on the data
  scaled to unit variance (``data.normalize = "global"``, which keeps its
  covariance's shape: unscaled, one seed of the linear VAE started with a posterior
  variance near 190 and took over 6000 steps to shed it). Here each k up to the
  process's order moves the criterion: in the data's units about 20.8, 6.71, 3.44
  and 3.44, scaled 5.84, 1.88, 0.963 and 0.963. Also the MLP with a GRU head
  (``model.recurrent`` = 1, 2, 4, 16), which sees the whole past: its derived
  criterion is that of the best linear prediction from the whole past (0.963; for
  Gaussian data no head does better), and the probe reads its own residuals.

    python studies/autoregressive.py [--budget MODEL_STEPS] [PROCESS:ARCH:HEAD ...]

(e.g. ``ar2:linear:2`` for a context of 2, ``ar2:mlp:gru4`` for a GRU of width 4;
none: every ``ar2`` run; ``--budget``: locate's budget per curve, with which a
finished run continues) writes results/autoregressive/
<name>/ (the located run), table.md, table.json (the rows not named are kept from
table.json) and context.png (located against derived, per context).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tomli_w
from sklearn.datasets import load_digits

from phasevae.api import locate, open_run
from phasevae.data import covariance_eig
from phasevae.data.series import series_windows

ROOT = Path(__file__).resolve().parent.parent / "results" / "autoregressive"
WINDOW, SAMPLES, BURN = 8, 4000, 200
PROCESSES = {"ar1": (0.9,), "ar2": (0.2, 0.7)}  # the coefficients phi_1, phi_2, ...
ARCHS = {"mlp": {}, "linear": {"encoder": [], "decoder": []}}
SERIES = ("membrane", "eeg")  # real series that ship inside matplotlib
SEEDS = {"ar1": [0], "ar2": [0, 1, 2], "digits": [0, 1, 2]} | dict.fromkeys(
    SERIES, [0, 1, 2]
)
NORMALIZE = {"ar1": {}, "ar2": {"normalize": "global"}, "digits": {}} | dict.fromkeys(
    SERIES, {"normalize": "global"}
)
RUNS = [("ar2", arch, str(k)) for arch in ("linear", "mlp") for k in (0, 1, 2, 4)]
RUNS += [("ar2", "mlp", f"gru{h}") for h in (1, 2, 4, 16)]  # model.recurrent = h
# scikit-learn's digits with a masked-convolution head (model.mask = r), and a
# PixelCNN stack of L masked layers of radius 1 (model.mask_layers = L)
RUNS += [("digits", arch, f"mask{r}") for arch in ("linear", "mlp") for r in (1, 2)]
RUNS += [("digits", arch, f"pixelcnn{n}") for arch in ("linear", "mlp") for n in (2, 3)]
# windows of 8 of real recordings (data.source = "series"), the MLP, k = 0, 1, 2, 4
RUNS += [(series, "mlp", str(k)) for series in SERIES for k in (0, 1, 2, 4)]


def windows(process: str) -> np.ndarray:
    """``SAMPLES`` windows of ``WINDOW`` consecutive values of x_t = sum_j phi_j
    x_{t-j} + e_t, e_t ~ N(0, 1): AR(1) stationary from its first value, higher
    orders after ``BURN`` values."""
    phis = PROCESSES[process]
    rng = np.random.default_rng(0)
    if len(phis) == 1:
        x = np.empty((SAMPLES, WINDOW))
        x[:, 0] = rng.normal(size=SAMPLES) / np.sqrt(1 - phis[0] ** 2)
        for t in range(1, WINDOW):
            x[:, t] = phis[0] * x[:, t - 1] + rng.normal(size=SAMPLES)
        return x.astype(np.float32)
    x = np.zeros((SAMPLES, BURN + WINDOW))
    for t in range(x.shape[1]):
        past = sum(p * x[:, t - 1 - j] for j, p in enumerate(phis) if t - 1 - j >= 0)
        x[:, t] = past + rng.normal(size=SAMPLES)
    return x[:, BURN:].astype(np.float32)


HEADS = {"gru": "recurrent", "mask": "mask"}  # a head's prefix: its [model] key


def head_of(head: str) -> dict:
    """The [model] keys of a head: "k", a linear head of context k; "gruH", a GRU
    head of width H; "maskR", a masked convolution of radius R; "pixelcnnL", a
    stack of L masked layers of radius 1, 16 channels wide."""
    if head.startswith("pixelcnn"):
        return {"mask": 1, "mask_layers": int(head[len("pixelcnn") :])}
    for prefix, key in HEADS.items():
        if head.startswith(prefix):
            return {key: int(head[len(prefix) :])}
    return {"context": int(head)}


def name(process: str, arch: str, head: str) -> str:
    """The run's folder: ``context-<k>`` for the first study's (AR(1), MLP) runs."""
    if (process, arch) == ("ar1", "mlp"):
        return f"context-{head}"
    if head.startswith("pixelcnn"):
        return f"{process}-{arch}-{head}"
    for prefix in HEADS:
        if head.startswith(prefix):
            return f"{process}-{arch}-{prefix}-{head[len(prefix) :]}"
    return f"{process}-{arch}-context-{head}"


def run(process: str, arch: str, head: str, budget: int | None = None) -> dict:
    if process == "digits":  # the images as the digits source gives them
        x, source = load_digits().data / 16.0, {"source": "digits"}
    elif process in SERIES:  # as the series source gives them (3,172 EEG windows)
        n = min(SAMPLES, 3000)
        x = series_windows(process, WINDOW, n, 0)[0].astype(np.float64)
        source = {"source": "series", "series": process, "samples": n}
    else:
        data = ROOT / "data" / f"{process}.npy"
        data.parent.mkdir(parents=True, exist_ok=True)
        x = windows(process)
        np.save(data, x)
        source = {"source": "array", "path": str(data)}
    spec = {
        "data": source | NORMALIZE[process],
        "model": head_of(head) | ARCHS[arch],
        "train": {"steps": 3000},
        "grid": {"beta": [1.0], "seeds": SEEDS[process]},
    }
    path = ROOT / f"{name(process, arch, head)}.toml"
    path.write_text(tomli_w.dumps(spec))
    result = locate(path, ROOT / name(process, arch, head), budget=budget)
    (curve,) = result["curves"]
    located = open_run(ROOT / name(process, arch, head))
    derived = located.meta.spectrum["lambda_max"]
    if NORMALIZE[process]:  # the units the run trained in (global: one scale)
        x = (x - x.mean(dtype=np.float64)) / x.std(dtype=np.float64)
    plain = float(covariance_eig(x - x.mean(axis=0))[0][0])
    (t,) = located.analyze().transitions  # the probe's reading, and off_theory
    return {
        "process": process,
        "arch": arch,
        **head_of(head),  # "context", "recurrent" or "mask" (and "mask_layers")
        "lambda_max_data": plain,
        "derived": derived,
        "sigma2_c": curve["sigma2_c"],
        "ci": curve["ci"],
        "verdict": curve["verdict"],
        "rel_error": None
        if curve["sigma2_c"] is None
        else curve["sigma2_c"] / derived - 1,
        "model_steps": curve["model_steps"],
        "lambda_c_ratio": t.probe and t.probe["lambda_c_ratio"],
        "stable_below": (t.off_theory or {}).get("evidence") == "probe",
    }


def head_label(r: dict) -> tuple[str, str, int]:
    """A row's head: (as the command line names it, as the table does, its size)."""
    if r.get("mask_layers", 1) > 1:
        n = r["mask_layers"]
        return f"pixelcnn{n}", f"PixelCNN {n} layers", 10 + n
    for prefix, k in HEADS.items():
        if k in r:
            return f"{prefix}{r[k]}", f"{prefix.upper()} {r[k]}", r[k]
    return str(r["context"]), f"k = {r['context']}", r["context"]


def key(r: dict) -> tuple:
    """(process, decoder, head) of a row, the head as the command line names it."""
    return r.get("process", "ar1"), r.get("arch", "mlp"), head_label(r)[0]


def order(r: dict) -> tuple:
    """Rows by process and decoder, the linear heads by context, then the others."""
    name, _, size = head_label(r)
    return key(r)[:2] + (not name[0].isdigit(), name.rstrip("0123456789"), size)


def table(rows: list[dict]) -> str:
    lines = [
        "| process | decoder | head | lambda_max(C) | derived sigma2_c "
        "(innovations) | located [95 %] | error | verdict | model-steps | probe: "
        "lambda_c/lambda_max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=order):
        process, arch, _ = key(r)
        head = head_label(r)[1]
        ci = "-" if not r["ci"] else f"[{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]"
        s2c = "-" if r["sigma2_c"] is None else f"{r['sigma2_c']:.4g}"
        err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
        lines.append(
            f"| {process.upper()} | {arch} | {head} | {r['lambda_max_data']:.4g} | "
            f"{r['derived']:.4g} | {s2c} {ci} | {err} | {r['verdict']} | "
            f"{r['model_steps']:,} | {_probe(r)} |"
        )
    return "\n".join(lines) + "\n"


def _probe(r: dict) -> str:
    """The probe's lambda_c / lambda_max near the kink (0: dead units), and whether
    it shows collapse stable below the criterion."""
    ratio = r.get("lambda_c_ratio")
    if ratio is None:
        return "-"
    return f"{ratio:.2f}" + (", stable below" if r.get("stable_below") else "")


def figure(rows: list[dict], path: Path) -> None:
    """Located sigma_c^2 (with its interval) over the context k, beside the derived
    criterion, one panel per process (each in its data's units, log scale); the
    linear heads' rows only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "context" in r]
    processes = sorted({key(r)[0] for r in rows})
    fig, axes = plt.subplots(
        1, len(processes), figsize=(4.2 * len(processes), 3.4), squeeze=False
    )
    for ax, process in zip(axes[0], processes, strict=True):
        mine = sorted((r for r in rows if key(r)[0] == process), key=key)
        for i, arch in enumerate(sorted({key(r)[1] for r in mine})):
            got = [r for r in mine if key(r)[1] == arch and r["sigma2_c"] is not None]
            k = np.array([r["context"] for r in got]) + 0.08 * (i - 0.5)
            y = np.array([r["sigma2_c"] for r in got])
            ci = np.array([r["ci"] or (r["sigma2_c"],) * 2 for r in got])
            lo, hi = y - ci[:, 0], ci[:, 1] - y
            ax.errorbar(k, y, yerr=[lo, hi], fmt="o", ms=4, label=f"located, {arch}")
        ks = sorted({r["context"] for r in mine})
        derived = {r["context"]: r["derived"] for r in mine}
        ax.plot(ks, [derived[c] for c in ks], "k_", ms=18, mew=1.5, label="derived")
        ax.set(
            xlabel="context k (predecessors the decoder sees)",
            ylabel=r"$\sigma_c^2$ at $\beta$ = 1",
            yscale="log",
            title=f"{process.upper()} windows of {WINDOW}",
            xticks=ks,
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    args = sys.argv[1:]
    budget = None
    if "--budget" in args:  # model-steps per curve; a finished run continues
        i = args.index("--budget")
        budget = int(args[i + 1])
        args = args[:i] + args[i + 2 :]
    named = [a.split(":") for a in args]
    runs = [(p, a, h) for p, a, h in named] or RUNS
    path = ROOT / "table.json"
    kept = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in kept if key(r) not in runs]
    rows += [run(*r, budget=budget) for r in runs]
    path.write_text(json.dumps(rows, indent=1))
    (ROOT / "table.md").write_text(table(rows))
    figure(rows, ROOT / "context.png")
    print(table(rows))
