"""The ``phasevae`` command. Thin: parses arguments, calls the library, prints.

Exit status: 0 success; 2 bad input (spec, data, arguments) with a one-paragraph
message and no traceback, and a sweep that completed with some models diverged (another
status with ``sweep --diverged-status``); 130 Ctrl-C and 143 SIGTERM (saved,
resumable); 141 a closed stdout pipe; 1 anything else.

The package (``args``: the parser; ``progress``: the progress display and the lines
besides the analysis) may import every other package; it imports JAX only after a
spec has been checked.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from phasevae.cli.args import build_parser
from phasevae.cli.progress import Progress, checkpoint_line, divergence_hint
from phasevae.errors import TERM_REQUESTED, BadInput, Terminated, stop_if_terminated
from phasevae.report.text import boundary_lines, transition_table
from phasevae.safeio import check_out_dir


def cmd_sweep(args: argparse.Namespace) -> int:
    from phasevae.spec import load_spec

    spec = load_spec(args.spec, args.set)  # a spec error is told before JAX loads
    from phasevae import api
    from phasevae.engine.devices import (
        compile_cache,
        init_distributed,
        scans_a_gru,
        split_cpu_into_devices,
    )
    from phasevae.engine.loop import Preempted
    from phasevae.report import trackers

    stop_if_terminated()
    split_cpu_into_devices(scanned_gru=scans_a_gru(spec))
    compile_cache()
    primary = init_distributed(args)
    out = check_out_dir(
        args.out if args.out is not None else api.default_out(args.spec)
    )
    if not 0 <= args.diverged_status <= 125:
        raise BadInput(f"--diverged-status {args.diverged_status}: give 0 .. 125")
    if args.checkpoint_every is not None and not (
        math.isfinite(args.checkpoint_every) and args.checkpoint_every >= 0
    ):
        raise BadInput(
            f"--checkpoint-every {args.checkpoint_every}: give a number of seconds >= 0"
        )
    t0 = time.perf_counter()
    preflight = _preflight(args.strict_grid)
    if args.dry_run:
        _print_plan(
            api.dry_run(spec, shard=_shard(args.shard), preflight=preflight), spec
        )
        return 0
    unit = "points finished" if spec.adaptive() else "chunks"
    for option in args.track:  # a bad --track is bad input before anything runs
        if option.partition(":")[0] not in trackers.KINDS:
            raise BadInput(
                f"--track {option!r}: choose one of "
                f"{', '.join(trackers.KINDS)}, e.g. --track tensorboard"
            )
    if primary:
        _say_where(out, spec)
    show = Progress(unit=unit, quiet=args.quiet)
    logs = []
    try:
        if primary:  # on_chunk runs on process 0 only
            logs = [trackers.from_option(o, out, spec) for o in args.track]
        result = api.run(
            spec,
            out,
            progress=show,
            on_chunk=trackers.chained(show.chunk, *logs),
            checkpoint_seconds=args.checkpoint_every,
            shard=_shard(args.shard),
            preflight=preflight,
        )
        if logs and result.complete:
            _summarize(out, result, logs)
    except Preempted as e:
        print(f"phasevae: {e}", file=sys.stderr)
        return e.status  # 128 + the signal, as if it had ended the process
    finally:
        show.close()  # a live display left running would keep the cursor hidden
        for log in logs:
            log.close()
    if not primary:
        return args.diverged_status if result.diverged else 0
    return _print_result(result, spec, out, args.diverged_status, t0)


def _print_plan(plan: dict, spec) -> None:
    """A dry run's plan: the grid, the memory per device, the compile and the
    timed chunk, and the training time they predict."""
    need, have = plan["bytes_per_device"], plan["device_memory"]
    print(
        f"grid: {plan['grid_size']} points in {plan['static_groups']} static "
        f"group(s), on {plan['devices']} device(s) "
        f"(padded to {plan['padded_size']})"
    )
    if need is not None:
        avail = "unknown" if have is None else f"{have / 2**30:.2f} GiB"
        print(f"memory per device: {need / 2**30:.3f} GiB (available: {avail})")
    if plan["step_s"] is None:
        timed = f"one chunk ({spec.train.eval_every} steps) took"
    else:
        timed = (
            f"timed {plan['step_s'] * 1e3:.1f} ms per step and "
            f"{plan['eval_s']:.2f} s per evaluation, so one chunk "
            f"({spec.train.eval_every} steps) takes about"
        )
    print(
        f"compile {plan['compile_s']:.1f} s; {timed} {plan['chunk_s']:.2f} s, "
        f"so training should take about {plan['estimated_train_s']:.0f} s. "
        "Nothing was written."
    )


def _print_result(result, spec, out, diverged_status: int, t0: float) -> int:
    """A finished sweep: its data, its work and times, the final KL per curve and
    the diverged models; the exit status (``diverged_status`` when some diverged)."""
    meta, spectrum = result.meta, result.meta.spectrum
    wall = meta.wall_times
    print(f"run directory: {out}")
    print(f"data: {spectrum['description']}")
    top = ", ".join(
        f"{v:.4g}" for v in spectrum["eigenvalues"][: spec.model.latent_dim]
    )
    print(f"lambda_max = {spectrum['lambda_max']:.4g}; top eigenvalues {top}")
    if meta.adaptive:  # points trained for different lengths
        work = (
            f"{meta.grid_size} grid points ({meta.rounds} refinement rounds), "
            f"{meta.model_steps:,} model-steps (at most {meta.steps} each)"
        )
    else:
        work = f"{meta.grid_size} grid points x {meta.steps} steps"
    cache = meta.compile_cache or {}
    hits, looked = cache.get("hits", 0), cache.get("hits", 0) + cache.get("misses", 0)
    cached = f" ({hits} of {looked} programs from the compile cache)" if hits else ""
    print(
        f"{work}; compile {_fmt_s(wall.compile_s)}{cached}, training "
        f"{_fmt_s(wall.train_s)} in all, {time.perf_counter() - t0:.1f} s this call"
    )
    table = result.summary()
    print(
        "final KL (nats, mean over seeds); predicted sigma2_c: each curve's "
        "criterion (phasevae theory)"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if result.diverged:
        others = (
            "No model trained."
            if len(result.diverged) == meta.grid_size
            else "The other models trained normally."
        )
        print(
            f"phasevae: error: {len(result.diverged)} of {meta.grid_size} models "
            f"diverged (a NaN or inf appeared) and were frozen there: "
            f"{', '.join(result.diverged[:8])}"
            f"{' ...' if len(result.diverged) > 8 else ''}."
            f" They are flagged in the 'diverged' column of "
            f"{result.store.metrics_file}; "
            f"{others} {divergence_hint(spectrum, spec)}",
            file=sys.stderr,
        )
        return diverged_status
    print(f"next: phasevae analyze {out}")
    return 0


def _summarize(out, result, logs) -> None:
    """Analyse the complete run and log the analysis as each tracker's summary."""
    from phasevae.analysis.curves import analyze_run
    from phasevae.store import RunDirError

    try:
        analysis = analyze_run(out)
    except (RunDirError, BadInput) as e:
        print(f"phasevae: the trackers get no analysis summary: {e}", file=sys.stderr)
        return
    for log in logs:
        log.summarize(analysis, result.metrics)
    print(f"analysis logged to the trackers (and written to {out / 'analysis.json'})")


def _preflight(strict: bool):
    """Print the betas whose transition the grid may miss (an error if strict)."""

    def check(lines: list[str]) -> None:
        if lines and strict:
            raise BadInput("--strict-grid: " + "; ".join(lines))
        for line in lines:
            print(f"phasevae: warning: {line}", file=sys.stderr)

    return check


def cmd_locate(args: argparse.Namespace) -> int:
    from phasevae import api
    from phasevae.engine.loop import Preempted

    try:
        result = api.locate(
            args.source,
            args.out,
            overrides=args.set,
            budget=args.budget,
            target=args.target,
            say=lambda line: print(line, file=sys.stderr if args.json else sys.stdout),
        )
    except Preempted as e:  # its stage saved; a rerun continues locate there
        print(f"phasevae: {e}", file=sys.stderr)
        return e.status
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for c in result["curves"]:
        found = "no transition located"
        if c["sigma2_c"] is not None:
            lo, hi = c["ci"] or (math.nan, math.nan)
            found = f"sigma2_c = {c['sigma2_c']:.4g} [{lo:.4g}, {hi:.4g}]"
        print(f"beta {c['beta']:g}: {found}, {c['verdict']}; {c['stopped']}")
    print(f"{result['model_steps']} model-steps of the budget {result['budget']}")
    print(f"next: phasevae report {result['out']}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from phasevae import api
    from phasevae.analysis.curves import curve_label

    result = api.Run(Path(args.run_dir)).analyze()
    print(f"wrote {Path(args.run_dir) / 'analysis.json'}")
    print(f"lambda_max = {result.spectrum.lambda_max:.4g}")
    print(transition_table(result))
    for curve in result.skipped:
        print(f"not fitted ({curve_label(curve)}): {curve['reason']}")
    for line in boundary_lines(result):
        print(line)
    if result.scaling and result.scaling.get("rms_spread") is not None:
        s = result.scaling
        print(
            f"beta*sigma^2 scaling: KL curves of all beta differ by "
            f"{s['rms_spread']:.3g} nats RMS ({100 * s['relative_spread']:.1f} % of KL)"
        )
    print(
        "what the columns and words mean (verdicts, interval parts, dead and trapped "
        "units, lambda_c): docs/analysis.md, 'Reading the analysis'"
    )
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from phasevae.store.upgrade import upgrade

    for path in args.run_dirs:
        vouched = upgrade(path)
        if vouched is None:
            print(f"{path}: already of the current format")
        else:
            taken = f" (taken as they were: {', '.join(vouched)})" if vouched else ""
            print(f"{path}: upgraded{taken}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from phasevae import api

    run = api.Run(Path(args.run_dir))
    for path in run.plot(save=args.format, x=args.x, y=args.y).values():
        print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from phasevae import api

    print(f"wrote {api.Run(Path(args.run_dir)).report(args.out)}")
    return 0


def cmd_theory(args: argparse.Namespace) -> int:
    from phasevae import api

    doc = api.predict(Path(args.target), args.set)
    spectrum, predictions = doc, doc["predictions"]
    k, ev = doc["latent_dim"], doc["eigenvalues"]
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"data: {spectrum['description']}")
    n, dim, trace = spectrum["samples"], spectrum["dim"], spectrum["trace"]
    print(f"N = {dim}, n = {n}, trace = {trace:.4g}")
    top = ", ".join(f"{v:.4g}" for v in ev[: max(k, 8)])
    print(f"eigenvalues (descending): {top}{' ...' if len(ev) > max(k, 8) else ''}")
    own = [a for a in api.CRITERION_AXES[1:] if any(a in p for p in predictions)]
    if own:  # the spectrum is one curve's; each curve has its own criterion
        print(
            f"lambda_max = {ev[0]:.4g} of the spectrum above; the criterion depends "
            f"on {', '.join(own)}: each curve's sigma2_c is its own, below"
        )
    else:
        print(f"lambda_max = {ev[0]:.4g}: collapse when beta * sigma^2 > lambda_max")
    for p in predictions:
        dims = ", ".join(f"{t:.4g}" for t in p["thresholds"] or [])
        s2c = "never (beta = 0)" if p["sigma2_c"] is None else f"{p['sigma2_c']:.4g}"
        cell = p.get("cell_half_width")
        where = (
            "" if cell is None else f"; the grid's cell there is +-{100 * cell:.0f} %"
        )
        curve = ", ".join(f"{a} = {p[a]:g}" for a in api.CRITERION_AXES if a in p)
        print(f"  {curve}: sigma2_c = {s2c}; latent dims die at {dims}{where}")
    for line in doc["misses"]:
        print(f"warning: {line}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from phasevae.engine.devices import compile_cache, split_cpu_into_devices
    from phasevae.tools.validate import run_suite

    split_cpu_into_devices()
    compile_cache()

    def progress(case):
        print(f"case {case.name}: {case.description}", file=sys.stderr, flush=True)

    from phasevae.engine.loop import Preempted

    try:
        run_suite(check_out_dir(args.out), args.quick, args.case, progress)
    except Preempted as e:
        print(f"phasevae: {e}", file=sys.stderr)
        return e.status
    print((Path(args.out) / "table.md").read_text(), end="")
    print(f"wrote {Path(args.out) / 'validation.json'}")
    return 0


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise BadInput(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def cmd_merge(args: argparse.Namespace) -> int:
    from phasevae import api

    report = api.merge(args.run_dirs, check_out_dir(args.out), force=args.force)
    print(f"merged {report['points']} grid points into {args.out}")
    if report["duplicated"]:
        dup = report["duplicated"]
        print(f"{len(dup)} points were in several shards (equal results, kept once)")
    return 0


def locate_text(r: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(r, indent=1))
        return 0

    def found(c: dict, prefix: str) -> str:
        if c[f"{prefix}sigma2_c"] is None:
            return "no transition found"
        ci, half = c[f"{prefix}ci"], c[f"{prefix}half_width"]
        interval = (
            "no interval"
            if not ci
            else f"95 % interval {ci[0]:.4g} .. {ci[1]:.4g} (+-{100 * half:.1f} %)"
        )
        return (
            f"sigma2_c = {c[f'{prefix}sigma2_c']:.4g}, "
            f"{100 * c[f'{prefix}rel_error']:+.2f} % from lambda_max / beta, "
            f"{interval}, {c[f'{prefix}verdict']}"
        )

    def width(half: float) -> str:
        return f"+-{100 * half:.1f} %" if math.isfinite(half) else "no interval"

    betas = len(r["curves"])
    print(
        f"phasevae locate (cold start, {betas} beta): {r['locate_wall_s']:.1f} s "
        f"wall with compilation, {r['locate_model_steps']:,} model-steps, median "
        f"half-width {width(r['locate_half_width'])}"
    )
    reach = "reach that width" if r["uniform_reached"] else "do NOT reach it"
    print(
        f"uniform grids of {r['uniform_points']} sigma^2 per beta {reach}: "
        f"{r['uniform_model_steps']:,} model-steps, median half-width "
        f"{width(r['uniform_half_width'])}"
    )
    for c in r["curves"]:
        print(f"  beta {c['beta']:g}: locate {found(c, '')}")
        print(f"  beta {c['beta']:g}: uniform {found(c, 'uniform_')}")
    ratio = r["model_steps_ratio_vs_uniform"]
    print(f"model-steps, uniform / locate: {ratio:.1f}x")
    return 0


def predict_text(args: argparse.Namespace) -> int:
    """``bench --predict``: the roofline table for one device."""
    from phasevae.tools import predict

    where = predict.device(args.predict)
    cost = predict.step_cost(64, args.model, args.precision)
    rows = predict.roofline(cost, where, args.precision, args.models or predict.MODELS)
    if args.json:
        print(json.dumps({"cost": dataclasses.asdict(cost), "rows": rows}, indent=1))
        return 0
    peak = where.peak(args.precision)
    print(
        f"{where.name} ({where.source}): {peak:.3g} FLOP/s at {args.precision}, "
        f"{where.bandwidth:.3g} B/s, {where.memory / 2**30:.0f} GiB"
    )
    print(
        f"{args.model} model-step (XLA's cost analysis): {cost.flops:.3g} FLOP, "
        f"{cost.bytes:.3g} bytes; {cost.program_bytes / 2**20:.2f} MiB per model"
    )
    print("models  model-steps/s (low - high)  of peak at low  fits")
    for r in rows:
        print(
            f"{r['models']:>6} {r['model_steps_per_s_low']:>12.4g} - "
            f"{r['model_steps_per_s_high']:<12.4g} "
            f"{100 * r['fraction_of_peak_low']:>8.1f} %   "
            f"{'yes' if r['fits'] else 'no'} (at most {r['largest_models']:,})"
        )
    print(
        "a roofline range, not a measurement: low if every byte XLA counts went to "
        "memory, high at the compute peak; it leaves out each step's fixed cost "
        "(which dominates at small M on a GPU); docs/speed.md"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from phasevae.engine.devices import compile_cache, split_cpu_into_devices
    from phasevae.tools import bench

    split_cpu_into_devices(scanned_gru=args.model in ("gru", "vrnn"))
    compile_cache()
    if args.locate is not None:
        return locate_text(bench.locate(args.locate or None), args.json)
    if args.predict:
        return predict_text(args)
    models = args.models or [1, 8, 64, 256]
    if any(m < 1 for m in models):
        raise BadInput("--models: every model count must be >= 1")
    if args.repeats < 1:
        raise BadInput(f"--repeats {args.repeats}: give 1 or more timed chunks")
    if args.checkpoint:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            r = bench.checkpoint_time(models[-1], tmp)
        if args.json:
            print(json.dumps(r, indent=1))
        else:
            print(checkpoint_line(r))
        return 0
    results = bench.run(
        models, model=args.model, precision=args.precision, repeats=args.repeats
    )
    if args.json:
        print(json.dumps(bench.as_dicts(results), indent=1))
        return 0
    peak = results[0].matmul_peak_flops_per_s
    print(
        f"{args.model} ({args.precision}): "
        f"{bench.flops_per_model_step(args.model):.3g} FLOP per "
        "model-step; "
        "the models axis is sharded over the devices listed per row"
    )
    print(f"matmul peak (float32, 2048^3 product): {peak:.3g} FLOP/s")
    rows = [
        f"{r.models:>6} {r.model_steps_per_s:>14.4g} {r.flops_per_s:>12.3g} "
        f"{100 * r.fraction_of_peak:>7.1f} % {r.compile_s:>9.2f} "
        f"{r.state_bytes_per_model:>12,} {r.program_bytes_per_model:>12,} "
        f"{r.speedup_over_baseline:>9.1f}x  {r.device}"
        for r in results
    ]
    print(
        f"{'models':>6} {'model-steps/s':>14} {'FLOP/s':>12} {'of peak':>9} "
        f"{'compile s':>9} {'state B/model':>12} {'step B/model':>12} "
        f"{'vs loop':>10}  devices"
    )
    print("\n".join(rows))
    print(
        f"baseline (Python loop over models, jitted step): "
        f"{results[0].baseline_model_steps_per_s:.4g} model-steps/s"
    )
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    from phasevae.spec import load_spec, spec_to_toml

    print(spec_to_toml(load_spec(args.spec, args.set)), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from phasevae import api

    if args.run_dir is None:
        return _list_runs(Path("runs"))
    st = api.open_run(args.run_dir).status()
    print(f"run directory: {args.run_dir} ({st['status']})")
    if st["shard"]:
        print(f"shard {st['shard'][0]}/{st['shard'][1]} of the grid")
    if st["data"]:
        d = st["data"]
        print(
            f"data: sha256 {d['sha256'][:16]}..., shape {d['shape']}, "
            f"lambda_max {d['lambda_max']:.6g}"
        )
    size, diverged, done = st["grid_size"], st["diverged"], st["steps_done"]
    if st["schedule"] is not None:  # adaptive: points train for different lengths
        n = st["schedule"]
        print(
            f"grid points so far: {size} ({st['rounds']} refinement rounds); "
            f"finished {n['finished']}, training {n['training']}, pending "
            f"{n['pending']}, diverged {diverged}; {done:,} model-steps trained"
        )
        return 0
    finished = size if st["status"] == "complete" else 0
    print(
        f"grid points: {size}; done {finished}, pending {size - finished}, "
        f"diverged {diverged}; steps {done} of {st['steps']} (all points advance "
        "together)"
    )
    if st["checkpoint_age_s"] is not None:
        print(f"last checkpoint: step {done}, {st['checkpoint_age_s']:.0f} s ago")
    if st["eta_s"] is not None:
        print(f"ETA: {st['eta_s']:.0f} s of training left")
    return 0


def _say_where(out: Path, spec) -> None:
    """Say whether this sweep starts, resumes, extends or finds a complete run."""
    from phasevae.store import RunDir

    run = RunDir(out)
    try:
        meta = run.meta() if run.spec_file.exists() else None
        stored = run.spec() if meta else None
    except BadInput:
        return  # the sweep itself refuses it, with the message
    if stored is None:
        return
    done = meta.steps_done
    if stored.train.steps < spec.train.steps:
        print(
            f"extending {out} from {stored.train.steps} to {spec.train.steps} steps "
            "(its models continue from their last save)",
            file=sys.stderr,
        )
    elif meta.complete:
        print(f"{out} is complete: nothing to train; its summary:", file=sys.stderr)
    elif meta.adaptive or spec.adaptive():
        print(
            f"resuming {out} from its last save ({done:,} model-steps trained)",
            file=sys.stderr,
        )
    else:
        print(
            f"resuming {out} from its last save, step {done} of {spec.train.steps}",
            file=sys.stderr,
        )


def _list_runs(root: Path) -> int:
    """One line per run directory under ``root``: state, points, steps, last write."""
    from phasevae import api

    runs = sorted(p.parent for p in root.glob("*/spec.toml")) if root.is_dir() else []
    if not runs:
        print(f"no runs under {root}/ (phasevae sweep writes runs/<spec name>)")
        return 0
    rows = []
    for path in runs:
        meta = path / "meta.json"
        when = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.stat().st_mtime))
            if meta.exists()
            else "-"
        )
        try:
            st = api.open_run(path).status()
        except BadInput as e:  # an older format, a damaged file: say which
            why = f"phasevae upgrade {path}" if "earlier phasevae" in str(e) else e
            rows.append((str(path), "unreadable", "-", "-", when, str(why)[:100]))
            continue
        steps = f"{st['steps_done']} of {st['steps']}"
        if st["schedule"] is not None:
            steps = f"{st['steps_done']:,} model-steps"
        rows.append((str(path), st["status"], str(st["grid_size"]), steps, when, ""))
    head = ("run", "state", "points", "steps", "last write", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for row in [head, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[5]]).rstrip())
    return 0


def _fmt_s(seconds: float | None) -> str:
    return "n/a (already done)" if seconds is None else f"{seconds:.1f} s"


# write and read failures that come from the user's environment (exit 2), not from
# phasevae itself
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.EEXIST,
    errno.ENOTEMPTY,
    errno.ELOOP,
    errno.EXDEV,
    errno.EBUSY,
    errno.EMFILE,
}


COMMANDS = {
    "sweep": cmd_sweep,
    "analyze": cmd_analyze,
    "upgrade": cmd_upgrade,
    "plot": cmd_plot,
    "report": cmd_report,
    "theory": cmd_theory,
    "validate": cmd_validate,
    "merge": cmd_merge,
    "locate": cmd_locate,
    "bench": cmd_bench,
    "status": cmd_status,
    "spec": cmd_spec,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files, never a window

    trains = args.command in ("sweep", "validate", "locate")
    # a flag, not an exception (raised in the handler it could land in a callback
    # that swallows it, as XLA's garbage-collection hook does): start-up checks it
    # between phases, training at its chunks, bench between its timed runs. The
    # other commands write nothing but whole files and are quick: they stop now
    flag_only = trains or args.command == "bench"

    def on_sigterm(*_):
        TERM_REQUESTED.set()
        if not flag_only:
            raise Terminated

    TERM_REQUESTED.clear()
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return status
    except BadInput as e:
        print(f"phasevae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback
        print(
            "phasevae: interrupted; rerun the same command to resume", file=sys.stderr
        )
        return 130
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(
            "phasevae: stopped by SIGTERM before training started; rerun the same "
            "command to start"
            if trains
            else f"phasevae: {args.command} stopped by SIGTERM",
            file=sys.stderr,
        )
        return 143
    except BrokenPipeError:
        # stdout's reader went away (`phasevae analyze RUN | head`): files written
        # are whole; end quietly, as a Unix tool killed by SIGPIPE would
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        hint = (
            "; what was saved before is intact: free space and rerun to resume"
            if e.errno in (errno.ENOSPC, errno.EDQUOT)
            else ""
        )
        print(f"phasevae: error: {e.strerror}{where}{hint}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, old)
