"""The Python API: what a notebook uses, and exactly what the ``phasevae`` command
calls.

    import phasevae as pv

    run = pv.run("sweeps/default.toml", out="runs/default")  # or a dict, a Spec
    run.metrics              # the metrics table (pandas), one row per point and eval
    result = run.analyze()   # the analysis (also written to RUN_DIR/analysis.json)
    figures = run.plot()     # {name: matplotlib Figure}, for inline display
    run = pv.open_run("runs/default")   # an existing run directory, the same object

A sweep trains on every CPU core as the command line does: before JAX starts, the CPU
is split into several XLA devices
(:func:`phasevae.engine.devices.split_cpu_into_devices`), so import and call phasevae
before anything else starts JAX in the process.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from phasevae.engine.devices import (
    compile_cache,
    scans_a_gru,
    split_cpu_into_devices,
)
from phasevae.engine.loop import ChunkFn, ProgressFn
from phasevae.errors import BadInput, SingleDeviceWarning, stop_if_terminated
from phasevae.spec import (
    LATER_AXES,
    Spec,
    SpecError,
    load_spec,
    spec_from_dict,
    spec_to_dict,
)
from phasevae.store import RunDir, RunDirError
from phasevae.store.records import Analysis
from phasevae.store.runmeta import RUNNING, RunMeta

SpecLike = Spec | dict | str | Path | None


def as_spec(spec: SpecLike = None, overrides: Sequence[str] = ()) -> Spec:
    """A Spec from a spec file's path, a dict of sections (as the TOML file has
    them), a Spec, or None (the built-in default); ``overrides`` are ``--set``
    items (``"grid.beta=[0.5, 1.0]"``)."""
    if isinstance(spec, Spec):
        if overrides:
            raise SpecError("overrides apply to a spec file or a dict, not to a Spec")
        return spec
    if isinstance(spec, dict):
        if overrides:
            raise SpecError("pass a dict with the values already set, not overrides")
        return spec_from_dict(spec, "<dict>")
    if spec is None or isinstance(spec, str | Path):
        return load_spec(spec, list(overrides))
    raise SpecError(f"a spec is a path, a dict or a Spec, not {type(spec).__name__}")


def with_model(spec: Spec, model: Any) -> Spec:
    """``spec`` training ``model`` (a flax module following the protocol of
    :mod:`phasevae.models.vae`, or a factory returning one; ``model.options`` go to a
    factory): ``model.kind = "module"`` with the object's label
    (:func:`phasevae.models.registry.register`). None leaves the spec as it is."""
    if model is None:
        return spec
    from phasevae.models.registry import register

    changed = dataclasses.replace(spec.model, kind="module", module=register(model))
    return spec_from_dict(
        spec_to_dict(dataclasses.replace(spec, model=changed)), "<model>"
    )


def default_out(spec: SpecLike) -> Path:
    """runs/<spec file's stem>, or runs/default."""
    name = Path(spec).stem if isinstance(spec, str | Path) else "default"
    return Path("runs") / name


def _start_devices(spec: Spec | None = None) -> None:
    split_cpu_into_devices(scanned_gru=spec is not None and scans_a_gru(spec))
    compile_cache()
    import jax

    if jax.default_backend() == "cpu" and jax.device_count() == 1:
        import os

        if len(os.sched_getaffinity(0)) > 1:
            warnings.warn(
                SingleDeviceWarning(
                    "JAX started before phasevae could split the CPU into devices, so "
                    "the sweep trains on one CPU device (slower); call phasevae first "
                    "in a fresh process, or set XLA_FLAGS="
                    "--xla_force_host_platform_device_count=N"
                ),
                stacklevel=3,
            )


def run(
    spec: SpecLike = None,
    out: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    progress: ProgressFn | None = None,
    on_chunk: ChunkFn | None = None,
    checkpoint_seconds: float | None = None,
    shard: tuple[int, int] | None = None,
    model: Any = None,
    preflight=None,
) -> Run:
    """Train the grid of ``spec`` into run directory ``out`` (default
    runs/<name>), or continue it there; see :func:`phasevae.engine.sweep.run_sweep`.

    ``progress(done, total, elapsed_s)`` and ``on_chunk(frame, meta)`` are called
    after every chunk; ``frame`` holds that chunk's metrics rows. A diverged model
    does not raise: it is listed in ``Run.diverged``. Raises BadInput (a SpecError,
    DataError, RunDirError, ...) for a spec, data or run directory that cannot be
    used, before anything is written; ``Preempted`` on SIGTERM (saved, resumable).
    ``model``: your own flax module (or a factory) in place of the spec's
    (:func:`with_model`); such a run resumes only from Python with it passed again.
    ``preflight(lines)`` gets, before anything compiles, the betas whose transition
    the sigma^2 grid may miss (:func:`phasevae.analysis.theory.grid_misses`).
    """
    from phasevae.engine.sweep import run_sweep

    s = with_model(as_spec(spec, overrides), model)
    stop_if_terminated()
    _start_devices(s)
    where = Path(out) if out is not None else default_out(spec)
    result = run_sweep(
        s,
        where,
        progress,
        checkpoint_seconds,
        shard,
        on_chunk=on_chunk,
        preflight=preflight,
    )
    return Run(result.run.path, _metrics=result.metrics, _meta=result.meta)


def locate(
    source: str | Path,
    out: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    budget: int | None = None,
    target: float = 0.02,
    say=print,
) -> dict:
    """Locate the collapse transition of ``source`` (a data file, a spec file or a
    finished sweep's run directory) into ``out`` (default runs/<name>-locate, or
    RUN_DIR/locate), or continue it there: :mod:`phasevae.tools.locate`. Returns the
    result, one entry per curve, with ``out``; ``say`` gets the progress lines."""
    from phasevae.tools.locate import locate as run_locate
    from phasevae.tools.locate import source_spec

    stop_if_terminated()
    _start_devices(source_spec(source, list(overrides))[0])  # a GRU head's flag
    src = Path(source)
    if out is None:
        out = src / "locate" if src.is_dir() else Path("runs") / f"{src.stem}-locate"
    result = run_locate(src, out, list(overrides), budget, target, say)
    return {**result, "out": str(out)}


def dry_run(
    spec: SpecLike = None,
    *,
    overrides: Sequence[str] = (),
    shard: tuple[int, int] | None = None,
    model: Any = None,
    preflight=None,
) -> dict:
    """Compile the sweep and time one chunk without writing anything: grid size,
    static groups, devices, memory per device, compile and estimated train time;
    ``preflight`` as in :func:`run`."""
    from phasevae.engine.sweep import run_sweep

    s = with_model(as_spec(spec, overrides), model)
    _start_devices(s)
    return run_sweep(
        s, default_out(spec), shard=shard, dry_run=True, preflight=preflight
    )


def open_run(path: str | Path) -> Run:
    """An existing run directory (finished or not)."""
    found = Run(Path(path))
    if not found.store.spec_file.exists():
        raise RunDirError(f"{found.path} is not a phasevae run (no spec.toml)")
    return found


@dataclass
class Run:
    """A run directory: its spec, meta and metrics, its analysis and figures."""

    path: Path
    _metrics: pd.DataFrame | None = None
    _meta: RunMeta | None = None

    @property
    def store(self) -> RunDir:
        return RunDir(self.path)

    @property
    def spec(self) -> Spec:
        return self.store.spec()

    @property
    def meta(self) -> RunMeta | None:
        """meta.json, parsed (None before the run's first save)."""
        if self._meta is None:
            self._meta = self.store.meta()
        return self._meta

    @property
    def metrics(self) -> pd.DataFrame:
        """Every evaluation of every point (long format, as metrics.parquet)."""
        if self._metrics is None:
            self._metrics = self.store.metrics()
        return self._metrics

    @property
    def complete(self) -> bool:
        return self.meta is not None and self.meta.complete

    @property
    def diverged(self) -> list[str]:
        """Ids of the points that diverged (flagged, frozen; the others trained)."""
        return self.meta.diverged if self.meta else []

    def summary(self) -> pd.DataFrame:
        """Per curve: KL at the ends of the sigma^2 range, the first collapsed grid
        sigma^2 and the prediction lambda_max / beta."""
        from phasevae.engine.sweep import summary_table

        return summary_table(self.metrics, self.meta.spectrum)

    def analyze(self) -> Analysis:
        """The analysis (:func:`phasevae.analysis.curves.analyze`), written to
        RUN_DIR/analysis.json; the run must be complete."""
        from phasevae.analysis.curves import analyze_run

        return analyze_run(self.path)

    def analysed(self) -> Analysis:
        """The run's analysis: :meth:`analyze` now when it has no analysis.json,
        else analysis.json verified (one of another run, out of date or damaged is
        refused: RunDirError that says to analyze again)."""
        if not (self.path / "analysis.json").exists():
            return self.analyze()
        return self.store.analysis()

    def plot(
        self, save: str | None = None, x: str = "sigma2", y: str = "beta"
    ) -> dict[str, Any]:
        """Every figure of the run (analysed first when it has no analysis) as
        {name: matplotlib Figure}; ``save`` = "png", "pdf" or "svg" writes them to
        RUN_DIR/figures/ instead and returns {name: path}."""
        from phasevae.report.figures import figures, write_figures

        self.analysed()
        if save is not None:
            return write_figures(self.path, save, x, y)
        return {name: make() for name, make in figures(self.path, x, y).items()}

    def report(self, out: str | Path | None = None) -> Path:
        """Write the run's report, one self-contained HTML page
        (:func:`phasevae.report.html.write_report`; default RUN_DIR/report.html),
        analysing the run first when it has no analysis, and return its path."""
        from phasevae.report.html import write_report

        self.analysed()
        return write_report(self.path, out)

    def status(self) -> dict:
        """Progress of the run from its meta: status, grid points, steps, diverged,
        the last checkpoint's age and an ETA while it trains."""
        meta, store = self.meta, self.store
        status = meta.status if meta else "not started"
        if status == RUNNING and not store.in_use():
            status = "interrupted"  # no process trains it: a rerun resumes it
        out = {
            "status": status,
            "shard": list(meta.shard) if meta and meta.shard else None,
            "grid_size": meta.grid_size if meta else 0,
            "diverged": len(meta.diverged) if meta else 0,
            "steps": self.spec.train.steps,
            "steps_done": meta.steps_done if meta else 0,
            "schedule": meta and meta.schedule,  # adaptive: per-point progress
            "rounds": (meta and meta.rounds) or 0,
            "data": meta and meta.data,  # the fingerprint of the data it trains on
            "checkpoint_age_s": None,
            "eta_s": None,
        }
        sealed = store.checkpoints.sealed_at()
        if sealed is not None:
            out["checkpoint_age_s"] = time.time() - sealed
        done, steps = out["steps_done"], out["steps"]
        train_s = meta.wall_times.train_s if meta else 0.0
        training = status == "running" and out["schedule"] is None
        if training and 0 < done < steps and train_s > 0:
            out["eta_s"] = train_s / done * (steps - done)
        return out


# the grid axes the criterion depends on (phasevae.analysis.theory.weight and
# curve_eigenvalues)
CRITERION_AXES = ("beta", "top_kl_weight", "state_noise", "context")


def predict(target: SpecLike, overrides: Sequence[str] = ()) -> dict:
    """The data's spectrum and the theory's predictions per beta (and per ladder
    kappa and VRNN state noise where they vary), from a spec (path, dict, Spec) or
    a run directory; no training."""
    from phasevae.analysis import theory as th
    from phasevae.data import load_for_model

    if isinstance(target, str | Path) and Path(target).is_dir():
        if overrides:
            raise BadInput("--set applies to a spec file, not to a run directory")
        run = RunDir(target)
        spec = run.spec()
        meta = run.meta()
        spectrum = meta.spectrum if meta else load_for_model(spec).spectrum()
    else:
        spec = as_spec(target, overrides)
        spectrum = load_for_model(spec).spectrum()
    k, ev = spec.model.kl_dims(spectrum["dim"]), spectrum["eigenvalues"]
    axes = spec.axes()
    # the axes that move the criterion: beta, and a ladder's kappa and a VRNN's
    # state noise where they vary from their defaults
    moving = [a for a in CRITERION_AXES if a == "beta" or axes[a] != (LATER_AXES[a],)]
    predictions = []
    for values in itertools.product(*(axes[a] for a in moving)):
        curve = dict(zip(moving, values, strict=True))
        weight = th.weight(curve)
        own = th.curve_eigenvalues(spectrum, curve)
        predictions.append(
            {
                **curve,
                "sigma2_c": float(own[0] / weight) if weight > 0 else None,
                "thresholds": [float(t) for t in th.thresholds(own, weight, k)]
                if weight > 0
                else None,
            }
        )
    for p in predictions:
        p["cell_half_width"] = p["sigma2_c"] and th.cell_half_width(
            axes["sigma2"], p["sigma2_c"]
        )
    misses = th.grid_misses(ev[0], axes["sigma2"], axes["beta"])
    return {**spectrum, "latent_dim": k, "predictions": predictions, "misses": misses}


def merge(run_dirs: Sequence[str | Path], out: str | Path, force: bool = False):
    """Combine the run directories of one spec's shards into ``out``
    (:func:`phasevae.engine.sweep.merge_runs`); returns its report."""
    from phasevae.engine.sweep import merge_runs

    return merge_runs(list(run_dirs), out, force=force)
