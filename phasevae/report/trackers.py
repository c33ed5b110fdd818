"""Experiment trackers for a sweep, fed through the API's ``on_chunk`` callback:
TensorBoard event files written locally, and adapters for Weights & Biases and
MLflow (the ``[trackers]`` extra). Each tracker is a callable ``(frame, meta)`` that
logs every evaluation of the chunk, one series per grid point and metric, named
``METRIC/beta_B/sigma2_S/seed_K`` (plus the other axes where they are off their
defaults), at the point's own training step::

    import phasevae as pv
    from phasevae.report.trackers import TensorBoard

    with TensorBoard("runs/default/tensorboard") as tb:
        pv.run("sweeps/default.toml", on_chunk=tb)

On the command line: ``phasevae sweep --track tensorboard`` (RUN_DIR/tensorboard),
``--track wandb:PROJECT``, ``--track mlflow:TRACKING_URI``. A resumed sweep logs
the chunks after its checkpoint again; the trackers show both copies of those steps.

When the sweep is complete, ``sweep --track`` analyses it and logs the analysis as each
tracker's summary (:meth:`Tracker.summarize`): per curve ``analysis/CURVE/sigma2_c``,
``ci_low``, ``ci_high``, ``theory_sigma2_c``, ``rel_error`` and the verdict (W&B:
the run's summary; MLflow: metrics and tags; TensorBoard: scalars at the final step,
a text table, and the HParams view with one row per grid point and its final KL,
ELBO, I(x; z) and active units). From the API::

    run = pv.run(spec, on_chunk=tb)
    tb.summarize(run.analyze(), run.metrics)
"""

from __future__ import annotations

import os
import queue
import re
import threading
import uuid
import warnings
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd

from phasevae.errors import BadInput, optional
from phasevae.spec import LATER_AXES, Spec, spec_to_dict
from phasevae.store.records import Analysis
from phasevae.store.runmeta import RunMeta

METRICS = ("kl", "elbo", "mi", "active_units", "active_directions")
KINDS = ("tensorboard", "wandb", "mlflow")


SUMMARY = ("sigma2_c", "ci_low", "ci_high", "theory_sigma2_c", "rel_error")


def series(row) -> str:
    """The series name of a metrics row's grid point."""
    return _name(row, point=True)


def curve(values: dict) -> str:
    """The name of an analysis curve from its axis values (all but sigma^2 and
    seed)."""
    return _name(values, point=False)


def _name(row, point: bool) -> str:
    parts = [f"beta_{row['beta']:g}"]
    if point:
        parts += [f"sigma2_{row['sigma2']:.4g}", f"seed_{int(row['seed'])}"]
    parts += [f"{k}_{row[k]:g}" for k, d in LATER_AXES.items() if row.get(k, d) != d]
    parts += [f"{k}_{row[k]}" for k in ("decoder", "skip") if k in row]
    # the characters every tracker accepts in a name (MLflow's set is the smallest)
    return re.sub(r"[^\w.:/-]", "_", "/".join(parts))


def summary(analysis: Analysis) -> tuple[dict[str, float], dict[str, str]]:
    """The analysis as ({name: number}, {name: text}): per curve
    ``analysis/CURVE/`` + each of ``SUMMARY`` (where known) and ``verdict``."""
    numbers, texts = {}, {}
    for t in analysis.transitions:
        name = f"analysis/{curve(t.curve)}"
        ci = t.ci or [None, None]
        values = dict(t.to_json(), ci_low=ci[0], ci_high=ci[1])
        for key in SUMMARY:
            v = values.get(key)
            if v is not None and np.isfinite(v):
                numbers[f"{name}/{key}"] = float(v)
        texts[f"{name}/verdict"] = str(t.verdict)
    return numbers, texts


def final_rows(metrics: pd.DataFrame) -> list[tuple[dict, dict[str, float]]]:
    """Per grid point that did not diverge, (its axes, its last evaluation's
    ``hparam/METRIC`` values): the rows of TensorBoard's HParams view."""
    if "diverged" in metrics:
        bad = metrics.loc[metrics["diverged"], "point_id"].unique()
        metrics = metrics[~metrics["point_id"].isin(bad)]
    last = metrics.sort_values("step").groupby("point_id").tail(1)
    rows = []
    for _, row in last.sort_values(["beta", "sigma2", "seed"]).iterrows():
        axes = {"beta": float(row["beta"]), "sigma2": float(row["sigma2"])}
        axes["seed"] = int(row["seed"])
        axes.update(
            {k: float(row[k]) for k, d in LATER_AXES.items() if row.get(k, d) != d}
        )
        values = {
            f"hparam/{m}": float(row[m])
            for m in METRICS
            if m in row and pd.notna(row[m])
        }
        rows.append((axes, values))
    return rows


def scalars(frame: pd.DataFrame) -> dict[int, dict[str, float]]:
    """{step: {METRIC/series: value}} of a chunk's metrics rows (diverged rows
    left out: their values are the frozen ones), plus per step the chunk's counts
    ``sweep/points_evaluated`` and ``sweep/diverged``."""
    out: dict[int, dict[str, float]] = {}
    for _, row in frame.iterrows():
        step = out.setdefault(int(row["step"]), {})
        step["sweep/points_evaluated"] = step.get("sweep/points_evaluated", 0) + 1
        diverged = bool(row.get("diverged", False))
        step["sweep/diverged"] = step.get("sweep/diverged", 0) + int(diverged)
        if diverged:
            continue
        name = series(row)
        for m in METRICS:
            if m in row and pd.notna(row[m]):
                step[f"{m}/{name}"] = float(row[m])
    return out


class TrackerWarning(UserWarning):
    """A tracker failed to open, log or close; the sweep carried on without it."""


class Tracker(ABC):
    """A chunk callback. The package is imported when the tracker is made (a
    missing one is bad input before training); the tracker's run opens at the
    first chunk (a sweep refused at start-up leaves no run behind) and closes on
    exit (``with``) or ``close()``. Logging runs on a thread of its own, so a
    tracker never holds training up (an unreachable MLflow server stalled a sweep
    for minutes); ``close()`` waits for it at most ``CLOSE_TIMEOUT`` seconds. A
    tracker that fails (its server down, its store unwritable) warns once
    (:class:`TrackerWarning`, on the caller's thread) and stops; the sweep goes
    on."""

    CLOSE_TIMEOUT = 30.0

    def __init__(self, spec: Spec | None = None):
        self.spec = spec
        self.started = self.failed = False
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._problem: str | None = None  # set by the worker, warned by the caller

    def __call__(self, frame: pd.DataFrame, meta: RunMeta) -> None:
        self._put(frame.copy())

    def summarize(self, analysis: Analysis, metrics: pd.DataFrame) -> None:
        """Log a complete run's analysis (analysis.json's content) and its points'
        final values (``metrics``, the run's table) as the tracker run's summary."""
        step = int(metrics["step"].max())
        self._put((summary(analysis), final_rows(metrics), step))

    def _put(self, item) -> None:
        self._warn()
        if self.failed:
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, daemon=True)
            self._worker.start()
        self._queue.put(item)

    def _work(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:  # close(): finish the tracker's run
                if self.started:
                    self.started = False
                    try:
                        self.finish()
                    except Exception as e:
                        self._problem = f"{type(self).__name__} did not close: {e}"
                return
            if self.failed:
                continue
            try:
                if not self.started:
                    self.start()
                    self.started = True
                if isinstance(frame, tuple):  # summarize()
                    self.write_summary(*frame)
                    continue
                for step, values in sorted(scalars(frame).items()):
                    self.log(step, values)
            except Exception as e:  # its server or store, not the sweep, failed
                self.failed = True
                self._problem = (
                    f"{type(self).__name__} stopped logging ({type(e).__name__}: "
                    f"{e}); the sweep carries on, its metrics.parquet has every row"
                )

    def _warn(self) -> None:
        if self._problem is not None:
            problem, self._problem = self._problem, None
            warnings.warn(TrackerWarning(problem), stacklevel=3)

    @abstractmethod
    def start(self) -> None:
        """Open the tracker's run (and record the spec there)."""

    @abstractmethod
    def log(self, step: int, values: dict[str, float]) -> None:
        """Write ``values`` ({name: value}) at training step ``step``."""

    @abstractmethod
    def finish(self) -> None:
        """Flush and close the tracker's run."""

    @abstractmethod
    def write_summary(self, values, rows, step: int) -> None:
        """Write :func:`summary`'s ``values`` (and, where the tracker has a view
        for them, :func:`final_rows`' ``rows``) after the last step ``step``."""

    def close(self) -> None:
        """Finish the tracker's run, waiting for its thread at most
        ``CLOSE_TIMEOUT`` seconds (a server that does not answer is left behind)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            self._queue.put(None)
            worker.join(self.CLOSE_TIMEOUT)
            if worker.is_alive():
                self._problem = self._problem or (
                    f"{type(self).__name__} did not finish within "
                    f"{self.CLOSE_TIMEOUT:g} s (its server does not answer); left "
                    "behind: the sweep's metrics.parquet has every row"
                )
        self._warn()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoard(Tracker):
    """Event files in ``logdir`` (tensorboardX): ``tensorboard --logdir LOGDIR``."""

    def __init__(self, logdir: str | Path, spec: Spec | None = None):
        super().__init__(spec)
        self.tbx = optional(
            "tensorboardX", "tensorboardX", "TensorBoard logging", "trackers", BadInput
        )
        self.logdir = Path(logdir)

    def start(self) -> None:
        # tensorboardX names an event file by the second and the host alone: a
        # second writer in the same second (a resume right after a short run) would
        # truncate the first's file, so each writer's file gets its own suffix
        suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.writer = self.tbx.SummaryWriter(str(self.logdir), filename_suffix=suffix)
        if self.spec is not None:
            self.writer.add_text("spec", _spec_text(self.spec))

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def write_summary(self, values, rows, step: int) -> None:
        numbers, texts = values
        self.log(step, numbers)
        table = ["| curve | sigma2_c | 95 % interval | verdict |", "|---|---|---|---|"]
        for name, verdict in texts.items():
            curve_ = name.removesuffix("/verdict")
            c = [
                numbers.get(f"{curve_}/{k}") for k in ("sigma2_c", "ci_low", "ci_high")
            ]
            est = "-" if c[0] is None else f"{c[0]:.4g}"
            ci = "-" if None in c[1:] else f"[{c[1]:.4g}, {c[2]:.4g}]"
            table.append(
                f"| {curve_.removeprefix('analysis/')} | {est} | {ci} | {verdict} |"
            )
        self.writer.add_text("analysis", "\n".join(table), step)
        for axes, final in rows:  # one HParams session per grid point
            name = "hparams/" + series(axes).replace("/", ",")
            self.writer.add_hparams(axes, final, name=name, global_step=step)

    def finish(self) -> None:
        self.writer.close()


class Wandb(Tracker):
    """A W&B run in ``project`` (``init``: more of ``wandb.init``'s arguments;
    offline with WANDB_MODE=offline). The x axis of every series is the metric
    ``step``, the point's training step."""

    def __init__(self, project: str, spec: Spec | None = None, **init):
        super().__init__(spec)
        self.wandb = optional("wandb", "wandb", "W&B logging", "trackers", BadInput)
        self.project, self.init = project, init

    def start(self) -> None:
        config = spec_to_dict(self.spec) if self.spec is not None else None
        self.run = self.wandb.init(project=self.project, config=config, **self.init)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({"step": step, **values})

    def write_summary(self, values, rows, step: int) -> None:
        numbers, texts = values
        self.run.summary.update({**numbers, **texts})

    def finish(self) -> None:
        self.run.finish()


class Mlflow(Tracker):
    """An MLflow run in ``experiment`` at ``uri`` (a tracking server or store;
    None: MLflow's default), the spec as its parameters."""

    def __init__(
        self, uri: str | None, spec: Spec | None = None, experiment: str = "phasevae"
    ):
        super().__init__(spec)
        self.mlflow = optional(
            "mlflow", "mlflow", "MLflow logging", "trackers", BadInput
        )
        self.uri, self.experiment = uri, experiment

    def start(self) -> None:
        if self.uri:
            self.mlflow.set_tracking_uri(self.uri)
        self.mlflow.set_experiment(self.experiment)
        self.run = self.mlflow.start_run()
        if self.spec is not None:
            self.mlflow.log_params(
                {
                    f"{section}.{key}": str(value)[:500]
                    for section, table in spec_to_dict(self.spec).items()
                    for key, value in table.items()
                }
            )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics(values, step=step)

    def write_summary(self, values, rows, step: int) -> None:
        numbers, texts = values
        self.mlflow.log_metrics(numbers, step=step)
        self.mlflow.set_tags(texts)

    def finish(self) -> None:
        self.mlflow.end_run()


def from_option(option: str, run_dir: Path, spec: Spec) -> Tracker:
    """The tracker of a ``--track`` value: ``tensorboard[:LOGDIR]`` (default
    RUN_DIR/tensorboard), ``wandb[:PROJECT]`` (default phasevae) or
    ``mlflow[:TRACKING_URI]``."""
    kind, _, where = option.partition(":")
    if kind == "tensorboard":
        return TensorBoard(where or run_dir / "tensorboard", spec)
    if kind == "wandb":
        return Wandb(where or "phasevae", spec)
    if kind == "mlflow":
        return Mlflow(where or None, spec)
    raise BadInput(f"--track {option!r}: choose one of {', '.join(KINDS)}")


def chained(*callbacks):
    """One chunk callback calling each of ``callbacks`` (None left out) in turn."""
    live = [c for c in callbacks if c is not None]

    def call(frame: pd.DataFrame, meta: RunMeta) -> None:
        for c in live:
            c(frame, meta)

    return call


def _spec_text(spec: Spec) -> str:
    import tomli_w

    return "```\n" + tomli_w.dumps(spec_to_dict(spec)) + "```"
