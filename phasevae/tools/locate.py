"""``phasevae locate``: one command from a data file, a spec or a finished sweep to a
located collapse transition, in one resumable run directory.

It chains what a user would otherwise do by hand, curve by curve (one per beta):

1. **coarse**: ``COARSE`` sigma^2 spread evenly in ln sigma^2 over ``SPAN`` x
   lambda_max / beta (the theory's transition, from the data's spectrum, wide
   enough for a transition well off it), trained ``train.steps`` steps. A finished
   sweep given instead is this stage as it is.
2. **widen** while the transition is outside the grid: ``WIDEN`` more sigma^2 above
   the grid (the top dim's KL still falls at its largest sigma^2) or below it (it
   is already collapsed at its smallest), at most ``MAX_WIDEN`` times.
3. **refine** while the statistical part of the interval exceeds half the target:
   ``REFINE`` sigma^2 strictly inside the interval
   (:func:`phasevae.analysis.estimate.interval_values`), trained as long as the curve's
   points that set the kink.
4. **longer** while the verdict is ``train longer``: the points that set the kink
   and have not relaxed (the estimate's ``train_longer`` range) continue from their
   checkpoints to twice their length (the stage forks them from the stage they
   trained in: their state, optimizer and metrics are copied, so the continuation is
   the one a longer run would have trained).
5. stop when the verdict is ``trusted`` and the whole 95 % interval is within the
   target, or when the next stage would spend more than the budget (model-steps,
   default ``BUDGET_POINTS`` x ``train.steps`` x seeds x curves: twice a plain
   24-point sweep of each curve), saying what it would have cost to go on.

Every stage is an ordinary sweep run directory under ``OUT/stages/`` (each one
resumable on its own: a stage interrupted by a kill resumes from its checkpoint).
``OUT/locate.json`` records the stages and why each was chosen, written before a
stage starts; a rerun finishes the recorded stages, then decides again from their
results, which are the same, so it reaches the answer an uninterrupted run reaches.
After every stage ``OUT/metrics.parquet`` and ``OUT/meta.json`` hold every stage's
evaluations joined (a point continued in a ``longer`` stage has its early rows from
the stage it forked from), so ``phasevae analyze``, ``plot`` and ``report`` read OUT
as any run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from phasevae.analysis import estimate
from phasevae.analysis.constants import COLLAPSED_KL
from phasevae.errors import stop_if_terminated
from phasevae.safeio import atomic_write_text, read_text
from phasevae.spec import Spec, SpecError, spec_from_dict, spec_to_dict, spec_to_toml
from phasevae.store import RunDir, RunDirError
from phasevae.store.records import Estimate
from phasevae.store.runmeta import COMPLETE, RUNNING, RunMeta

COARSE = 10  # sigma^2 of the first grid
SPAN = (0.3, 2.5)  # the first grid's range, x lambda_max / beta
WIDEN = 5  # sigma^2 added beyond the grid when the transition is outside it
MAX_WIDEN = 2
REFINE = 6  # sigma^2 added inside the interval per refinement
STALL = 0.75  # a refinement that left the statistical part above this x what it was
# has stalled (SGD noise, not the grid, sets it): no more refinement
BUDGET_POINTS = 48  # default budget per curve: this many points x train.steps x seeds
TARGET = 0.02  # default: the 95 % interval within +-2 % of sigma_c^2
RECORD = "locate.json"
FORMAT = 1

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a curve: a plain sweep of ``sigma2`` (every seed) at ``beta``
    trained to ``steps``; a ``longer`` stage continues the models of the stages
    ``parents`` from step ``start``."""

    name: str  # its folder under OUT/stages
    kind: str  # coarse, given, widen, refine, longer
    beta: float
    sigma2: tuple[float, ...]
    steps: int
    why: str
    parents: tuple[str, ...] = ()
    start: int = 0
    stat: float | None = None  # a refinement's: the statistical part that asked for it

    def cost(self, seeds: int) -> int:
        """Model-steps this stage trains."""
        return (
            0
            if self.kind == "given"
            else len(self.sigma2) * seeds * (self.steps - self.start)
        )


def source_spec(source: str | Path, overrides: list[str]) -> tuple[Spec, Path | None]:
    """The base spec of ``source`` and, when it is a finished sweep's run directory,
    that directory: a data file (.csv, .npy, .npz, .parquet) gets the defaults of
    :func:`data_file_spec`; a TOML file is loaded with ``overrides``.

    Raises:
      SpecError: a source that is none of these.
    """
    from phasevae.spec import load_spec

    path = Path(source)
    if path.is_dir():
        if overrides:
            raise SpecError("--set applies to a spec or a data file, not to a run")
        return RunDir(path).spec(), path
    if path.suffix == ".toml":
        return load_spec(path, overrides), None
    if path.suffix in (".csv", ".npy", ".npz", ".parquet"):
        return data_file_spec(path, overrides), None
    raise SpecError(
        f"{source}: give a data file (.csv, .npy, .npz, .parquet), a spec (.toml) or "
        "a finished sweep's run directory"
    )


def data_file_spec(path: Path, overrides: list[str]) -> Spec:
    """The spec ``locate`` uses for a data file alone: the array source, centred;
    a 2-dim latent (1 for one feature) and the default MLP and training; beta = 1,
    one seed. The sigma^2 grid is locate's own."""
    from phasevae.spec import apply_overrides

    raw = {
        "data": {"source": "array", "path": str(path), "normalize": "center"},
        "model": {"latent_dim": 2},
        "train": {},
        "grid": {"sigma2": [1.0], "beta": [1.0], "seeds": [0]},
    }
    apply_overrides(raw, overrides, path)
    return spec_from_dict(raw, f"{path} (locate's defaults)")


def check_base(spec: Spec, given: Path | None) -> None:
    """Refuse what locate cannot chain: several values of an axis other than
    sigma^2, beta and seed, static axes, hysteresis, and a given run that is not a
    finished plain sweep."""
    axes = spec.axes()
    many = [
        a for a, v in axes.items() if a not in ("sigma2", "beta", "seed") and len(v) > 1
    ]
    if many or spec.static_groups():
        raise SpecError(
            f"locate follows one curve per beta; the spec varies "
            f"{', '.join(many) or 'a static axis'}: run one locate per setting"
        )
    if spec.train.hysteresis:
        raise SpecError("locate trains cold starts; drop train.hysteresis")
    if given is not None:
        meta = RunDir(given).meta()
        if meta is None or not meta.complete:
            raise RunDirError(f"{given} is unfinished: run its sweep again first")
        if spec.adaptive():
            raise RunDirError(
                f"{given} is an adaptive sweep (slots, retire, refine or until): its "
                "finished points' states are gone, so locate cannot continue them; "
                "give locate its spec instead"
            )


def plain(spec: Spec) -> Spec:
    """``spec`` as a plain sweep: no adaptive scheduling."""
    train = dataclasses.replace(
        spec.train, slots=0, retire=False, until="steps", max_steps=0, warm_start=False
    )
    return dataclasses.replace(spec, train=train)


def stage_spec(base: Spec, stage: Stage) -> Spec:
    raw = spec_to_dict(plain(base))
    raw["train"]["steps"] = stage.steps
    raw["grid"]["sigma2"] = list(stage.sigma2)
    raw["grid"]["beta"] = [stage.beta]
    return spec_from_dict(raw, f"locate stage {stage.name}")


def coarse_values(lambda_max: float, beta: float) -> tuple[float, ...]:
    centre = lambda_max / beta
    grid = np.geomspace(SPAN[0] * centre, SPAN[1] * centre, COARSE)
    return tuple(round(float(v), 12) for v in grid)


class Locator:
    """The stages of one ``locate`` run directory and the decisions between them."""

    def __init__(
        self,
        source: str | Path,
        out: str | Path,
        overrides: list[str] = (),
        budget: int | None = None,
        target: float = TARGET,
        say: Say = print,
    ):
        if not 0 < target < 1:
            raise SpecError(f"--target = {target}: a relative half-width in (0, 1)")
        if budget is not None and budget <= 0:
            raise SpecError(f"--budget = {budget}: a positive number of model-steps")
        self.base, self.given = source_spec(source, list(overrides))
        check_base(self.base, self.given)
        self.out = RunDir(out)
        self.target, self.say = target, say
        self.seeds = len(self.base.grid.seeds)
        curves = len(set(self.base.axes()["beta"]))
        self.budget = budget or (
            BUDGET_POINTS * self.base.train.steps * self.seeds * curves
        )
        self.source = str(source)
        self.stages: dict[float, list[Stage]] = {}
        self.spectrum: dict | None = None

    # -- the record ----------------------------------------------------------------

    def _load_record(self) -> None:
        path = self.out.path / RECORD
        if not path.exists():
            return
        try:
            doc = json.loads(read_text(path, "locate record", 1 << 22, RunDirError))
            if doc["format"] != FORMAT:
                raise ValueError(f"format {doc['format']}")
            # the budget and the target may change: the stages so far stand; the
            # stored spec is read as a spec, so that a key added to phasevae since
            # (at its default) is no difference
            same = doc["source"] == self.source and (
                spec_from_dict(doc["base"], "the stored spec") == self.base
            )
            stages = [
                Stage(
                    **{
                        **s,
                        "sigma2": tuple(s["sigma2"]),
                        "parents": tuple(s["parents"]),
                    }
                )
                for s in doc["stages"]
            ]
        except (ValueError, KeyError, TypeError, SpecError) as e:
            raise RunDirError(f"{path} is damaged ({e}); use a new --out") from None
        if not same:
            raise RunDirError(
                f"{self.out.path} holds a locate run of another source or spec; "
                "rerun it as it was started (a new --budget or --target may be "
                "given), or use a new --out"
            )
        for s in stages:
            self.stages.setdefault(s.beta, []).append(s)

    def _save_record(self, result: dict | None = None) -> None:
        doc = {
            "format": FORMAT,
            "source": self.source,
            "base": spec_to_dict(self.base),
            "target": self.target,
            "budget": self.budget,
            "stages": [
                {
                    **dataclasses.asdict(s),
                    "sigma2": list(s.sigma2),
                    "parents": list(s.parents),
                }
                for stages in self.stages.values()
                for s in stages
            ],
            "result": result,
        }
        atomic_write_text(self.out.path / RECORD, json.dumps(doc, indent=1))

    # -- stages ----------------------------------------------------------------------

    def _dir(self, stage: Stage) -> Path:
        if stage.kind == "given":
            return self.given
        return self.out.path / "stages" / f"beta-{stage.beta:g}" / stage.name

    def _run_stage(self, stage: Stage) -> pd.DataFrame:
        """Train ``stage`` (or finish it) and return its metrics rows of its beta."""
        from phasevae.engine.sweep import run_sweep

        where = self._dir(stage)
        run = RunDir(where)
        if stage.kind != "given":
            spec = stage_spec(self.base, stage)
            if stage.parents and not run.spec_file.exists():
                self._fork(stage, spec, where)
            meta = run.meta() if run.spec_file.exists() else None
            finished = meta is not None and meta.complete
            if not (finished and run.spec() == spec):
                self.say(f"beta {stage.beta:g}, stage {stage.name}: {stage.why}")
                run_sweep(spec, where)
        metrics = run.metrics()
        return metrics[np.isclose(metrics["beta"], stage.beta)]

    def _fork(self, stage: Stage, spec: Spec, where: Path) -> None:
        """Start ``stage``'s run directory as its parents' models at ``stage.start``:
        each point's state (from the final checkpoint of the parent that holds it)
        and its metrics rows, as if a run of ``spec`` had been stopped there. Built
        beside ``where`` and moved into place whole."""
        from phasevae.engine.devices import Placement
        from phasevae.engine.grid import grid_table

        ids = list(grid_table(spec)["point_id"])
        rows, frames = {}, []
        for name in stage.parents:
            parent = RunDir(self._dir(self._stage(stage.beta, name)))
            saved = parent.load_checkpoint()
            if saved is None or saved["step"] != stage.start:
                raise RunDirError(
                    f"{parent.path} has no checkpoint at step {stage.start} to continue"
                )
            mine = [i for i in ids if i in saved["ids"] and i not in rows]
            for i in mine:
                rows[i] = [a[saved["ids"].index(i)] for a in saved["leaves"]]
            m = parent.metrics()
            frames.append(m[m["point_id"].isin(mine) & (m["step"] <= stage.start)])
        missing = [i for i in ids if i not in rows]
        if missing:
            raise RunDirError(f"no parent of {stage.name} holds point {missing[0]}")
        leaves = [np.stack(leaf) for leaf in zip(*(rows[i] for i in ids), strict=True)]
        metrics = pd.concat(frames, ignore_index=True)
        where.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{where.name}.fork-", dir=where.parent))
        try:
            child = RunDir(build)
            child.claim(spec)
            child.write_metrics(
                metrics.sort_values(["step", "point_id"], ignore_index=True)
            )
            place = Placement.create(len(ids))
            child.save_checkpoint(place.models(leaves), len(ids), stage.start, ids)
            child.wait_for_checkpoint()
            build.rename(where)
        finally:
            shutil.rmtree(build, ignore_errors=True)

    def _checkpoint_at(self, beta: float, name: str, step: int) -> bool:
        """Whether stage ``name`` kept its models' state at ``step`` (its final)."""
        stage = self._stage(beta, name)
        run = RunDir(self._dir(stage))
        return run.checkpoints.exists() and stage.steps == step

    def _stage(self, beta: float, name: str) -> Stage:
        return next(s for s in self.stages[beta] if s.name == name)

    # -- decisions -------------------------------------------------------------------

    def _curve_rows(self, beta: float) -> tuple[pd.DataFrame, dict[str, str]]:
        """Every stage's rows of the curve at ``beta`` (a continued point's rows from
        its stages in order, each step once) and the stage holding each point's
        newest state."""
        frames, owner = [], {}
        for s in self.stages[beta]:
            rows = self._run_stage(s)
            frames.append(rows)
            owner.update(dict.fromkeys(rows["point_id"].unique(), s.name))
        joined = pd.concat(frames, ignore_index=True)
        joined = joined.drop_duplicates(["point_id", "step"], keep="last")
        return joined.reset_index(drop=True), owner

    def _next(self, beta: float, rows: pd.DataFrame, owner: dict, est: Estimate):
        """The next stage for the curve, or None when it is done; and the reason."""
        reach = rows.groupby("point_id").agg(
            step=("step", "max"), s2=("sigma2", "first")
        )
        if est.sigma2_c is None:
            if est.verdict != estimate.NONE:  # a floor or a learned variance
                return None, f"no collapse to locate ({est.verdict})"
            return self._widen(beta, rows, reach)
        stat, whole = (
            max(est.ci_statistical),
            estimate.half_width(est.sigma2_c, est.ci),
        )
        goal = math.log1p(self.target)
        if est.verdict == estimate.TRUSTED and whole <= goal:
            return None, (
                f"trusted, the interval within +-{100 * whole:.1f} % "
                f"(target {100 * self.target:g} %)"
            )
        last = self.stages[beta][-1]
        stalled = last.kind == "refine" and stat > STALL * (last.stat or math.inf)
        finite = max(est.ci_finite_training or [0.0])
        # the larger part first: more sigma^2 narrow the statistical part, longer
        # training the finite-training part (and the verdict)
        longer_first = est.train_longer is not None and finite > stat
        if stat > goal / 2 and not stalled and not longer_first:
            new = estimate.interval_values(
                est, np.sort(rows["sigma2"].unique()), REFINE
            )
            if new:
                near = reach[(reach["s2"] >= min(new)) & (reach["s2"] <= max(new))]
                steps = int((near if len(near) else reach)["step"].min())
                why = (
                    f"the statistical part (+-{100 * stat:.1f} %) exceeds half the "
                    f"target: {len(new)} sigma^2 inside the interval"
                )
                n = len(self.stages[beta])
                stage = Stage(
                    f"{n:02d}-refine", "refine", beta, _vals(new), steps, why, stat=stat
                )
                return stage, why
        if est.train_longer is None:
            why = "" if not stalled else "; more sigma^2 no longer narrow it"
            return None, (
                f"{est.verdict}, the interval +-{100 * whole:.1f} %, its "
                f"statistical part +-{100 * stat:.1f} %{why} (SGD noise: more seeds "
                "or longer training narrow it)"
            )
        return self._longer(beta, est, reach, owner)

    def _widen(self, beta: float, rows: pd.DataFrame, reach: pd.DataFrame):
        """``WIDEN`` sigma^2 beyond the grid, on the side the transition is."""
        stages = self.stages[beta]
        if sum(s.kind == "widen" for s in stages) >= MAX_WIDEN:
            return None, f"no transition found after widening the grid {MAX_WIDEN}x"
        sigma2 = np.sort(rows["sigma2"].unique())
        last = rows.sort_values("step").groupby("point_id").tail(1)
        dims = [c for c in last if c.startswith("kl_dim_")]
        kl = last.groupby("sigma2")[dims].mean().max(axis=1).sort_index()
        step = math.log(sigma2[-1] / sigma2[0]) / max(len(sigma2) - 1, 1)
        if kl.iloc[-1] >= COLLAPSED_KL:  # still active at the top: go up
            new, where = sigma2[-1] * np.exp(step * np.arange(1, WIDEN + 1)), "above"
        else:
            new, where = sigma2[0] * np.exp(-step * np.arange(WIDEN, 0, -1)), "below"
        why = f"no transition in the grid: {WIDEN} sigma^2 {where} it"
        steps = int(reach["step"].max())
        name = f"{len(stages):02d}-widen"
        return Stage(name, "widen", beta, _vals(new), steps, why), why

    def _longer(self, beta: float, est: Estimate, reach: pd.DataFrame, owner: dict):
        """The points that set the kink (the estimate's ``train_longer`` range), the
        least trained first, continued to twice their length from the stage holding
        them (trained anew where that stage kept no checkpoint)."""
        lo, hi = est.train_longer.sigma2
        inside = reach[(reach["s2"] >= lo) & (reach["s2"] <= hi)]
        if inside.empty:
            return None, f"{est.verdict}: no point in the range to train longer"
        base = int(inside["step"].min())
        short = inside[inside["step"] == base]
        owners = sorted(set(short.index.map(owner)))
        kept = [o for o in owners if self._checkpoint_at(beta, o, base)]
        if kept:  # those whose stage kept their state continue from it
            parents = tuple(kept)
            short = short[short.index.map(owner).isin(kept)]
        else:
            parents = ()
        chosen = np.sort(short["s2"].unique())
        finite = max(est.ci_finite_training or [math.nan])
        how = "" if parents else f" (anew: {', '.join(owners)} kept no checkpoint)"
        why = (
            f"train longer (finite-training part +-{100 * finite:.1f} %): the "
            f"{len(chosen)} sigma^2 that set the kink, from {base} to {2 * base} "
            f"steps{how}"
        )
        name = f"{len(self.stages[beta]):02d}-longer"
        stage = Stage(
            name,
            "longer",
            beta,
            _vals(chosen, None),
            2 * base,
            why,
            parents=parents,
            start=base if parents else 0,
        )
        return stage, why

    # -- the run -----------------------------------------------------------------------

    def run(self) -> dict:
        """Run (or continue) every curve to its answer; returns the result record
        (also in OUT/locate.json) and writes OUT's joined metrics and meta."""
        stop_if_terminated()
        with self.out.lock():
            self._load_record()
            if not self.stages:
                self._first_stages()
                first = next(iter(self.stages.values()))[0]
                spec = (
                    self.base if first.kind == "given" else stage_spec(self.base, first)
                )
                self.say(f"the spec of the first stage:\n{spec_to_toml(spec)}")
                self.out.claim(spec)
                self._save_record()
            result = {"curves": []}
            for beta in sorted(self.stages):
                result["curves"].append(self._curve(beta))
                self._join()
            result["model_steps"] = self.spent()
            result["budget"] = self.budget
            self._join(complete=True, result=result)
            self._save_record(result)
        return result

    def _first_stages(self) -> None:
        from phasevae.data import load_for_model

        betas = sorted(set(self.base.axes()["beta"]))
        if any(b <= 0 for b in betas):
            raise SpecError(
                "locate needs beta > 0 (the transition is at sigma^2 = lambda_max / "
                "beta)"
            )
        if self.given is not None:
            spectrum = RunDir(self.given).meta().spectrum
            given = self.base.axes()["sigma2"]
            for b in betas:
                why = f"the finished sweep {self.given}"
                self.stages[b] = [
                    Stage("00-given", "given", b, given, self.base.train.steps, why)
                ]
            self.spectrum = spectrum
            return
        lam = load_for_model(self.base).eigenvalues[0]
        for b in betas:
            why = (
                f"{COARSE} sigma^2 over {SPAN[0]:g}-{SPAN[1]:g} x lambda_max / beta "
                f"= {lam / b:.4g}"
            )
            values, steps = coarse_values(lam, b), self.base.train.steps
            self.stages[b] = [Stage("00-coarse", "coarse", b, values, steps, why)]

    def spent(self, beta: float | None = None) -> int:
        betas = [beta] if beta is not None else list(self.stages)
        return sum(s.cost(self.seeds) for b in betas for s in self.stages[b])

    def _curve(self, beta: float) -> dict:
        while True:
            rows, owner = self._curve_rows(beta)
            spectrum = self._spectrum()
            est = estimate.estimate_transition(
                rows,
                self.base.model.kl_dims(spectrum.get("dim", 0)),
                spectrum["lambda_max"],
                spectrum.get("lambda_max_eval"),
            )
            nxt, why = self._next(beta, rows, owner, est)
            done = {
                "beta": beta,
                "sigma2_c": est.sigma2_c,
                "ci": list(est.ci) if est.ci else None,
                "verdict": est.verdict,
                "half_width": estimate.half_width(est.sigma2_c, est.ci)
                if est.ci
                else None,
                "model_steps": self.spent(beta),
                "stages": len(self.stages[beta]),
            }
            if nxt is None:
                self.say(f"beta {beta:g}: {why}")
                return {**done, "stopped": why}
            cost, share = nxt.cost(self.seeds), self.budget // len(self.stages)
            if self.spent(beta) + cost > share:
                why = (
                    f"budget spent: next would be {nxt.kind} ({why}), "
                    f"{cost} model-steps more, {self.spent(beta) + cost} in all "
                    f"against this curve's share {share} of the budget (--budget)"
                )
                self.say(f"beta {beta:g}: {why}")
                return {**done, "stopped": why, "next": dataclasses.asdict(nxt)}
            self.stages[beta].append(nxt)
            self._save_record()

    def _spectrum(self) -> dict:
        if self.spectrum is None:
            first = next(iter(self.stages.values()))[0]
            self.spectrum = RunDir(self._dir(first)).meta().spectrum
        return self.spectrum

    def _join(self, complete: bool = False, result: dict | None = None) -> None:
        """OUT's metrics (every stage, each point's steps once) and meta (the
        stages', joined: every point's status, the time they took together)."""
        frames, metas = [], {}
        for stages in self.stages.values():
            for s in stages:
                if (self._dir(s) / "metrics.parquet").exists():
                    run = RunDir(self._dir(s))
                    m = run.metrics()
                    frames.append(m[np.isclose(m["beta"], s.beta)])
                    metas[run.path] = run.meta()  # a stage several betas share: once
        metas = [m for m in metas.values() if m is not None]
        if not metas:  # nothing saved yet
            return
        joined = pd.concat(frames, ignore_index=True)
        joined = joined.drop_duplicates(["point_id", "step"], keep="last")
        joined = joined.sort_values(["step", "point_id"], ignore_index=True)
        meta = RunMeta.joined(
            metas,
            parallel=False,
            grid_size=int(joined["point_id"].nunique()),
            model_steps=self.spent(),
            status=COMPLETE if complete else RUNNING,
            locate={"record": RECORD, "source": self.source, "result": result},
        )
        self.out.write_metrics(joined)
        self.out.write_meta(meta)


def _vals(values, digits: int | None = 12) -> tuple[float, ...]:
    """As a stage's sigma^2: new values rounded, those of existing points (whose
    ids hash their exact values) as they are (``digits`` None)."""
    return tuple(
        float(v) if digits is None else round(float(v), digits) for v in values
    )


def locate(
    source: str | Path,
    out: str | Path,
    overrides: list[str] = (),
    budget: int | None = None,
    target: float = TARGET,
    say: Say = print,
) -> dict:
    """Locate the collapse transition of ``source`` into ``out`` (or continue
    there); see the module docstring. Raises BadInput for a source, spec or run
    directory that cannot be used."""
    return Locator(source, out, overrides, budget, target, say).run()
