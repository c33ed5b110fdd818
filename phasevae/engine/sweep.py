"""A sweep end to end: spec + data -> run directory. :func:`run_sweep` plans the grid
(:mod:`phasevae.engine.grid`), places and compiles it (:mod:`phasevae.engine.devices`)
and runs the chunk loop (:mod:`phasevae.engine.loop`) or the adaptive scheduler
(:mod:`phasevae.engine.schedule`); static axes run as groups joined at the end.
``--shard I/N`` trains a share of the grid; :func:`merge_runs` puts the shares back
together.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from phasevae.analysis.constants import COLLAPSED_KL
from phasevae.analysis.theory import curve_eigenvalues, grid_misses, weight
from phasevae.data import DataError, load_for_model
from phasevae.engine.devices import Program, any_process, plan
from phasevae.engine.grid import grid_table, point_id, select_shard
from phasevae.engine.loop import (
    CHECKPOINT_SECONDS,
    ChunkFn,
    ProgressFn,
    SweepResult,
    make_result,
    sigterm_flag,
    train,
)
from phasevae.engine.schedule import chains
from phasevae.errors import BadInput, stop_if_terminated
from phasevae.models.registry import verify
from phasevae.spec import LATER_AXES, Spec, SpecError, spec_to_dict
from phasevae.store import RunDir, RunDirError
from phasevae.store.runmeta import COMPLETE, RunMeta


def run_sweep(
    spec: Spec,
    out: str | Path,
    progress: ProgressFn | None = None,
    checkpoint_seconds: float | None = None,
    shard: tuple[int, int] | None = None,
    dry_run: bool = False,
    on_chunk: ChunkFn | None = None,
    preflight: Callable[[list[str]], None] | None = None,
) -> SweepResult | dict:
    """Train the whole grid of ``spec`` into run directory ``out`` (or continue it).

    Holds a lock on ``out`` while it runs. On SIGTERM it finishes the current chunk,
    checkpoints and raises :class:`Preempted`.

    Args:
      checkpoint_seconds: least time between checkpoints (default CHECKPOINT_SECONDS);
        0 checkpoints after every chunk.
      shard: (i, n) trains only shard i of n (:func:`select_shard`), for array jobs
        whose run directories ``phasevae merge`` combines.
      dry_run: compile, time one chunk and return the plan (:meth:`Program.plan`)
        without writing anything.
      on_chunk: called on process 0 after every chunk with that chunk's metrics rows
        and the run's meta (progress displays, trackers).
      preflight: called once the data is loaded, before anything is compiled, with
        the lines of :func:`phasevae.analysis.theory.grid_misses` (betas whose
        transition the sigma^2 grid may miss; [] when it holds every one); it may raise
        BadInput to refuse the sweep.

    Raises:
      BadInput (SpecError, DataError, RunDirError, TooLarge): before anything is
        written to ``out`` when the spec or the data is bad, when the sweep would not
        fit in device memory, or when ``out`` is in use.
    """
    if spec.static_groups():
        return _run_static_groups(
            spec, out, progress, checkpoint_seconds, shard, dry_run, on_chunk, preflight
        )
    data = _checked_data(spec, preflight)
    grid = select_shard(grid_table(spec), shard)
    if grid.empty:
        raise SpecError(f"shard {shard[0]}/{shard[1]} holds no grid points")
    run = RunDir(out).check_links()
    same_data(run, data, spec)
    if checkpoint_seconds is None:
        checkpoint_seconds = CHECKPOINT_SECONDS
    if not dry_run and _finished(run, spec, shard):
        return make_result(run, [run.metrics()], run.meta())
    rows, per_model = _slot_rows(spec, grid, shard)
    if dry_run:
        planned = plan(spec, data, rows, per_model)
        if spec.adaptive():  # the grid, every point trained the full length in turn
            planned["estimated_train_s"] *= math.ceil(len(grid) / len(rows))
            planned["grid_size"] = len(grid)
        return planned
    program = Program(spec, data, rows, step_per_model=per_model)
    stop_if_terminated()
    primary = jax.process_index() == 0  # the one process that writes
    with run.lock() if primary else contextlib.nullcontext(), sigterm_flag() as stop:
        _claim(run, spec, shard, primary)
        return train(
            program,
            spec,
            data,
            grid,
            run,
            stop,
            shard,
            checkpoint_seconds,
            progress,
            on_chunk,
        )


def _checked_data(spec: Spec, preflight):
    """The spec's data, once the preflight has seen the grid against its spectrum
    and the model has been checked to fit it (BadInput otherwise)."""
    data = load_for_model(spec)
    stop_if_terminated()
    if preflight is not None:
        axes = spec.axes()
        preflight(grid_misses(data.eigenvalues[0], axes["sigma2"], axes["beta"]))
    dims = spec.model.latent_dim + spec.model.top_dim
    if dims > data.x.shape[1]:
        raise DataError(
            f"model.latent_dim{' + model.top_dim' if spec.model.top_dim else ''} = "
            f"{dims} exceeds the data dimension {data.x.shape[1]}"
        )
    verify(spec, data.x, data.image_shape)
    return data


def _slot_rows(spec: Spec, grid: pd.DataFrame, shard) -> tuple[pd.DataFrame, bool]:
    """The rows the program trains side by side, and whether each has its own step:
    the grid, or for an adaptive sweep one row per slot (filled as it runs)."""
    if not spec.adaptive():
        return grid, False
    if shard is not None:
        raise SpecError(
            "--shard splits a fixed grid; an adaptive sweep (train.slots, "
            "train.retire, grid.sigma2.refine) decides its points as it runs"
        )
    slots = spec.train.slots or len(chains(grid) if spec.train.hysteresis else grid)
    return grid.iloc[np.arange(slots) % len(grid)].reset_index(drop=True), True


def _claim(run: RunDir, spec: Spec, shard, primary: bool) -> None:
    """Process 0 claims ``run`` for ``spec`` (and the same shard as before); every
    process raises if it refused, so that none trains alone."""
    error = None
    if primary:
        try:
            run.claim(spec, extendable=not spec.adaptive())
            had = run.meta()
            old = had.shard if had else None
            if had and old != (tuple(shard) if shard else None):
                raise RunDirError(
                    f"{run.path} holds shard {old} of this spec, not {shard}; "
                    "choose another --out"
                )
        except BadInput as e:
            error = e
    if any_process(error is not None):  # the others must not train alone
        raise error or RunDirError(f"process 0 refused {run.path}; see its message")


def same_data(run: RunDir, data, spec: Spec) -> None:
    """Refuse (RunDirError) to resume, extend or reuse ``run`` on data other than
    the data it was started on: its recorded fingerprint against ``data``'s."""
    meta = run.meta()
    had = meta.data if meta else None
    now = data.fingerprint()
    if had is not None and had != now:
        where = f" ({spec.data.path})" if spec.data.path else ""
        raise RunDirError(
            f"{run.path} was trained on other data than the data{where} now gives: "
            f"sha256 {had['sha256'][:16]}..., shape {had['shape']}, lambda_max "
            f"{had['lambda_max']:.6g} there; sha256 {now['sha256'][:16]}..., shape "
            f"{now['shape']}, lambda_max {now['lambda_max']:.6g} now. Results of "
            "two data sets are never mixed: restore the data, or train it in a new "
            "--out"
        )


def _run_static_groups(
    spec, out, progress, checkpoint_seconds, shard, dry_run, on_chunk, preflight
):
    """One sweep per option of the static axes, each compiled once, in sequence, into
    ``out/groups/<label>`` (each resumable on its own); then their tables are joined
    into ``out`` with a column per static axis and ids that include it."""
    groups = [
        ("__".join(labels.values()), labels, g) for labels, g in spec.static_groups()
    ]
    run = RunDir(out).check_links()
    if dry_run:
        return _plan_groups(run, groups, shard, preflight)
    if _finished(run, spec, shard):
        name, _, first = groups[0]  # the groups share the data
        same_data(
            RunDir(run.path / "groups" / name),
            load_for_model(first),
            spec,
        )
        return make_result(run, [run.metrics()], run.meta())
    primary = jax.process_index() == 0
    with run.lock() if primary else contextlib.nullcontext():
        if primary:
            run.claim(spec, extendable=not spec.adaptive())
        results = [
            (
                name,
                labels,
                run_sweep(
                    g,
                    run.path / "groups" / name,
                    progress,
                    checkpoint_seconds,
                    shard,
                    on_chunk=_labelled(on_chunk, labels),
                    preflight=preflight if i == 0 else None,  # the groups share a grid
                ),
            )
            for i, (name, labels, g) in enumerate(groups)
        ]
        frames = [_with_labels(r.metrics, labels) for _, labels, r in results]
        metas = [  # each group's, its points named as the joined table names them
            r.meta.replace(points={_named(p, at): v for p, v in r.meta.points.items()})
            for _, at, r in results
        ]
        meta = RunMeta.joined(
            metas,
            parallel=False,
            spec=spec_to_dict(spec),
            grid_size=sum(m.grid_size for m in metas),
            static_groups=tuple(name for name, _, _ in results),
            compiles=sum(m.compiles or 0 for m in metas),
            shard=tuple(shard) if shard else None,
            status=COMPLETE,
            model_steps=(
                sum(m.model_steps for m in metas) if metas[0].adaptive else None
            ),
        )
        if primary:
            run.write_metrics(pd.concat(frames, ignore_index=True))
            run.write_meta(meta)
    return make_result(run, frames, meta)


def _plan_groups(run: RunDir, groups: list, shard, preflight) -> dict:
    """The dry-run plan of every static group, added up."""
    plans = [
        run_sweep(
            g,
            run.path / "groups" / name,
            dry_run=True,
            shard=shard,
            preflight=preflight if i == 0 else None,  # the groups share a grid
        )
        for i, (name, _, g) in enumerate(groups)
    ]
    return {
        **plans[0],
        "grid_size": sum(p["grid_size"] for p in plans),
        "static_groups": len(plans),
        "compile_s": sum(p["compile_s"] for p in plans),
        "estimated_train_s": sum(p["estimated_train_s"] for p in plans),
    }


def _with_labels(df: pd.DataFrame, labels: dict) -> pd.DataFrame:
    """A group's rows as the joined table has them: a column per static axis and
    ids that include it."""
    df = df.assign(**labels)
    ids = {p: _named(p, labels) for p in df["point_id"].unique()}
    df["point_id"] = df["point_id"].map(ids)
    return df


def _named(point: str, labels: dict) -> str:
    """A group's point id as the joined run names it."""
    return point_id({"point": point, **labels})


def _labelled(on_chunk: ChunkFn | None, labels: dict) -> ChunkFn | None:
    if on_chunk is None:
        return None
    return lambda frame, meta: on_chunk(_with_labels(frame, labels), meta)


def _finished(run: RunDir, spec: Spec, shard) -> bool:
    """A complete run of this very spec and shard: nothing to compile or train."""
    meta = run.meta() if run.spec_file.exists() else None
    if meta is None or not meta.complete:
        return False
    same_shard = meta.shard == (tuple(shard) if shard else None)
    return same_shard and run.spec() == spec


def merge_runs(
    run_dirs: list[str | Path], out: str | Path, force: bool = False
) -> dict:
    """Combine the run directories of one spec's shards into ``out``.

    Refuses (RunDirError, nothing written) an ``out`` that is one of the shards, an
    ``out`` that exists and is not empty unless ``force`` (which then replaces it
    whole, at once, after the merge is complete), shards of different specs,
    unfinished shards, points missing from the grid, and a point run twice with
    different results; a point run twice with equal results is kept once and
    reported. The shards are only read.

    Returns:
      report: ``points``, ``duplicated`` (ids found in several shards).
    """
    runs = [RunDir(p) for p in run_dirs]
    dest_path = Path(out)
    spec, metas = _shards(runs, dest_path, force)
    full = grid_table(spec)
    keep, seen, duplicated = _points(runs)
    missing = sorted(set(full["point_id"]) - set(seen))
    if missing:
        raise RunDirError(
            f"{len(missing)} of {len(full)} grid points are in none of the shards "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})"
        )
    # built beside ``out`` and moved into place whole: a failure leaves ``out`` as it
    # was, and --force replaces it only once the merged run is complete
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    build = Path(
        tempfile.mkdtemp(prefix=f".{dest_path.name}.merge-", dir=dest_path.parent)
    )
    build.chmod(0o777 & ~_umask())  # mkdtemp's 0700 is for its own use, not a run's
    try:
        dest = RunDir(build)
        dest.claim(spec)
        merged = pd.concat(keep, ignore_index=True)
        dest.write_metrics(merged.sort_values(["step", "point_id"], ignore_index=True))
        meta = RunMeta.joined(
            metas,
            parallel=True,
            grid_size=len(full),
            shard=None,
            merged_from=tuple(str(r.path) for r in runs),
            status=COMPLETE,
        )
        dest.write_meta(meta)
        with RunDir(dest_path).lock():  # not while a sweep runs in it
            _replace_dir(build, dest_path)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return {"points": len(seen), "duplicated": sorted(set(duplicated))}


def _shards(runs: list[RunDir], out: Path, force: bool) -> tuple[Spec, list]:
    """The shards' spec and metas, once they are checked to be finished shards of one
    spec on one data set, none of them ``out`` or inside it, and ``out`` empty unless
    ``force`` (RunDirError otherwise)."""
    where = out.resolve()
    for r in runs:
        shard = r.path.resolve()
        if where == shard or where in shard.parents or shard in where.parents:
            what = (
                "is one of the shards"
                if where == shard
                else "holds a shard"
                if where in shard.parents
                else "lies inside a shard"
            )
            raise RunDirError(
                f"--out {out} {what} being merged ({r.path}); merge into a new "
                "directory beside them (the shards are only read, whatever --force "
                "says)"
            )
        r.spec()  # a run, its spec intact
    if out.exists() and any(out.iterdir()) and not force:
        raise RunDirError(
            f"--out {out} exists and is not empty; choose a new directory, or add "
            "--force to replace it with the merged run"
        )
    spec = runs[0].spec()
    for r in runs[1:]:
        if r.spec() != spec:
            raise RunDirError(f"{r.path} holds a different spec than {runs[0].path}")
    metas = [r.meta() for r in runs]
    prints = {json.dumps(m.data if m else None, sort_keys=True) for m in metas}
    if len(prints) > 1:
        raise RunDirError(
            "the shards were trained on different data (their meta.json 'data' "
            "fingerprints differ): they are not shares of one run"
        )
    unfinished = [
        str(r.path)
        for r, m in zip(runs, metas, strict=True)
        if m is None or not m.complete
    ]
    if unfinished:
        raise RunDirError(
            f"unfinished shards (resume them first): {', '.join(unfinished)}"
        )
    return spec, metas


def _points(runs: list[RunDir]) -> tuple[list[pd.DataFrame], dict[str, int], list]:
    """Each point's rows once, from the first shard that has it; which shard that
    is, by point id; and the ids found in several shards (RunDirError where their
    results differ)."""
    tables = [r.metrics() for r in runs]
    seen: dict[str, int] = {}
    duplicated, keep = [], []
    for i, t in enumerate(tables):
        for pid, rows in t.groupby("point_id", sort=False):
            if pid in seen:
                first = tables[seen[pid]]
                first = first[first["point_id"] == pid].reset_index(drop=True)
                if not _same_rows(first, rows.reset_index(drop=True)):
                    where = f"{runs[seen[pid]].path} and {runs[i].path}"
                    raise RunDirError(
                        f"point {pid} was run in {where} with different results"
                    )
                duplicated.append(pid)
                continue
            seen[pid] = i
            keep.append(rows)
    return keep, seen, duplicated


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_dir(new: Path, dest: Path) -> None:
    """Move directory ``new`` to ``dest``, replacing what is there (renames only)."""
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rename(dest, old / dest.name)
        os.rename(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, dest)


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Equal up to float32 drift: shards batch points differently."""
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-6)
    except AssertionError:
        return False
    return True


def summary_table(metrics: pd.DataFrame, spectrum: dict) -> pd.DataFrame:
    """Per combination of non-sigma2 axes (seeds averaged): KL at the smallest and
    largest sigma^2 and the first sigma^2 where KL < COLLAPSED_KL, at each point's
    last evaluation, and the curve's predicted sigma_c^2 (its own criterion:
    :func:`phasevae.analysis.theory.curve_eigenvalues` over its weight)."""
    last = metrics.sort_values("step").groupby("point_id").tail(1)
    keys = ["beta"] + [
        k
        for k in ("learning_rate", *LATER_AXES, "decoder", "skip")
        if k in last and last[k].nunique() > 1
    ]
    rows = []
    for key, g in last.groupby(keys):
        curve = g[~g["diverged"]].groupby("sigma2")["kl"].mean().sort_index()
        below = curve[curve < COLLAPSED_KL]
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row.update(
            kl_at_min_sigma2=curve.iloc[0] if len(curve) else np.nan,
            kl_at_max_sigma2=curve.iloc[-1] if len(curve) else np.nan,
            first_sigma2_collapsed=below.index[0] if len(below) else np.nan,
            predicted_sigma2_c=_predicted(spectrum, row),
            diverged=int(g["diverged"].sum()),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _predicted(spectrum: dict, curve: dict) -> float:
    w = weight(curve)
    return float(curve_eigenvalues(spectrum, curve)[0] / w) if w > 0 else np.inf
