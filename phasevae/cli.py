"""The ``phasevae`` command. Thin: parses arguments, calls the library, prints.

Exit status: 0 success; 2 bad input (spec, data, arguments) with a one-paragraph
message and no traceback, and a sweep that completed with some models diverged (another
status with ``sweep --diverged-status``); 130 Ctrl-C and 143 SIGTERM (saved,
resumable); 1 anything else.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import signal
import sys
import time
from pathlib import Path

from phasevae.errors import TERM_REQUESTED, BadInput, Terminated, stop_if_terminated
from phasevae.safeio import check_out_dir


class ProgressBar:
    """One line per chunk on a terminal (redrawn in place), ~20 lines otherwise."""

    def __init__(self, stream=sys.stderr, width: int = 30, unit: str = "chunks"):
        self.stream, self.width, self.unit = stream, width, unit
        self.tty = stream.isatty()
        self.last_shown = -1.0

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        frac = done / total
        if not self.tty and done < total and frac - self.last_shown < 0.05:
            return
        self.last_shown = frac
        fill = round(self.width * frac)
        eta = f"{elapsed / done * (total - done):6.1f} s" if done else "     ?"
        line = (
            f"[{'#' * fill}{'.' * (self.width - fill)}] {done}/{total} {self.unit}  "
            f"{elapsed:6.1f} s elapsed  ETA {eta}"
        )
        end = "\n" if done == total or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def cmd_sweep(args: argparse.Namespace) -> int:
    from phasevae import api
    from phasevae.loop import Preempted
    from phasevae.placement import split_cpu_into_devices
    from phasevae.schedule import adaptive

    spec = api.as_spec(args.spec, args.set)
    stop_if_terminated()
    split_cpu_into_devices()
    primary = _init_distributed(args)
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
    if args.dry_run:
        plan = api.dry_run(spec, shard=_shard(args.shard))
        need, have = plan["bytes_per_device"], plan["device_memory"]
        print(
            f"grid: {plan['grid_size']} points in {plan['static_groups']} static "
            f"group(s), on {plan['devices']} device(s) "
            f"(padded to {plan['padded_size']})"
        )
        if need is not None:
            avail = "unknown" if have is None else f"{have / 2**30:.2f} GiB"
            print(f"memory per device: {need / 2**30:.3f} GiB (available: {avail})")
        print(
            f"compile {plan['compile_s']:.1f} s; one chunk ({spec.train.eval_every} "
            f"steps) took {plan['chunk_s']:.2f} s, so training should take about "
            f"{plan['estimated_train_s']:.0f} s. Nothing was written."
        )
        return 0
    try:
        unit = "points finished" if adaptive(spec) else "chunks"
        result = api.run(
            spec,
            out,
            progress=ProgressBar(unit=unit),
            checkpoint_seconds=args.checkpoint_every,
            shard=_shard(args.shard),
        )
    except Preempted as e:
        print(f"phasevae: {e}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as if the signal had ended the process
    if not primary:
        return args.diverged_status if result.diverged else 0
    meta, spectrum = result.meta, result.meta["spectrum"]
    wall = meta["wall_times"]
    print(f"run directory: {out}")
    print(f"data: {spectrum['description']}")
    top = ", ".join(
        f"{v:.4g}" for v in spectrum["eigenvalues"][: spec.model.latent_dim]
    )
    print(f"lambda_max = {spectrum['lambda_max']:.4g}; top eigenvalues {top}")
    if "model_steps" in meta:  # adaptive: points trained for different lengths
        work = (
            f"{meta['grid_size']} grid points ({meta['rounds']} refinement rounds), "
            f"{meta['model_steps']:,} model-steps (at most {meta['steps']} each)"
        )
    else:
        work = f"{meta['grid_size']} grid points x {meta['steps']} steps"
    print(
        f"{work}; compile {_fmt_s(wall['compile_s'])}, training "
        f"{_fmt_s(wall['train_s'])} in all, {time.perf_counter() - t0:.1f} s this call"
    )
    table = result.summary()
    print("final KL (nats, mean over seeds); predicted sigma2_c = lambda_max / beta")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if result.diverged:
        others = (
            "No model trained."
            if len(result.diverged) == meta["grid_size"]
            else "The other models trained normally."
        )
        print(
            f"phasevae: error: {len(result.diverged)} of {meta['grid_size']} models "
            f"diverged (a NaN or inf appeared) and were frozen there: "
            f"{', '.join(result.diverged[:8])}"
            f"{' ...' if len(result.diverged) > 8 else ''}."
            f" They are flagged in the 'diverged' column of "
            f"{result.store.metrics_file}; "
            f"{others} {_divergence_hint(spectrum, spec)}",
            file=sys.stderr,
        )
        return args.diverged_status
    return 0


def _divergence_hint(spectrum: dict, spec) -> str:
    """What to change: the data's scale when it is far from 1, else the step size."""
    if spectrum["lambda_max"] > 1e3 and spec.data.normalize in ("none", "center"):
        return (
            f"The data's largest variance is {spectrum['lambda_max']:.3g} with "
            f"normalize = '{spec.data.normalize}': set data.normalize = 'standardize' "
            "(tables) or 'unit' (images) to train on a workable scale."
        )
    return "Lower the learning rate or remove those grid points."


def cmd_analyze(args: argparse.Namespace) -> int:
    from phasevae import api
    from phasevae.analysis import curve_label

    result = api.Run(Path(args.run_dir)).analyze()
    print(f"wrote {Path(args.run_dir) / 'analysis.json'}")
    print(f"lambda_max = {result['spectrum']['lambda_max']:.4g}")
    print(_transition_table(result))
    for curve in result["skipped"]:
        print(f"not fitted ({curve_label(curve)}): {curve['reason']}")
    b = result["boundary"]
    if b["theta_c"] is not None:
        lo, hi = b["ci"]
        print(
            f"theta_c = beta * sigma_c^2 = {b['theta_c']:.4g} [{lo:.4g}, {hi:.4g}]"
            f" (theory lambda_max = {b['theory_theta_c']:.4g},"
            f" {100 * b['rel_error']:+.1f} %)"
        )
    if result["scaling"] and result["scaling"].get("rms_spread") is not None:
        s = result["scaling"]
        print(
            f"beta*sigma^2 scaling: KL curves of all beta differ by "
            f"{s['rms_spread']:.3g} nats RMS ({100 * s['relative_spread']:.1f} % of KL)"
        )
    return 0


def _transition_table(result: dict) -> str:
    import pandas as pd

    rows = []
    for t in result["transitions"]:
        axes = {k: t[k] for k in ("beta", "learning_rate") if k in t}
        later = {"kl_warmup_steps": 0.0, "decoder_init_scale": 1.0}
        axes.update({k: t[k] for k, d in later.items() if t.get(k, d) != d})
        axes.update({k: t[k] for k in ("direction", "decoder", "skip") if k in t})
        ci = t["ci"] or [float("nan")] * 2
        rows.append(
            {
                **axes,
                "sigma2_c": t["sigma2_c"],
                "ci_low": ci[0],
                "ci_high": ci[1],
                "predicted": t["theory_sigma2_c"],
                "rel_err_%": None if t["rel_error"] is None else 100 * t["rel_error"],
                "verdict": t["verdict"],
                "dims_c": " ".join(
                    "-" if d["sigma2_c"] is None else f"{d['sigma2_c']:.3g}"
                    for d in t["per_dim"]
                ),
                "dims_theory": " ".join(f"{d['theory']:.3g}" for d in t["per_dim"]),
            }
        )
    table = pd.DataFrame(rows).to_string(
        index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"
    )
    notes = [
        f"  {t.get('beta', 1.0):g}: train longer over sigma^2 in "
        f"[{t['train_longer']['sigma2'][0]:.4g}, {t['train_longer']['sigma2'][1]:.4g}]"
        f", to about {t['train_longer']['steps']} steps"
        for t in result["transitions"]
        if t["train_longer"]
    ]
    parts = [
        f"  {t.get('beta', 1.0):g}: interval = statistical "
        f"-{t['ci_statistical'][0]:.3f} / +{t['ci_statistical'][1]:.3f} and "
        f"finite-training -{t['ci_finite_training'][0]:.3f} / "
        f"+{t['ci_finite_training'][1]:.3f} (in ln sigma^2)"
        for t in result["transitions"]
        if t["ci_statistical"] and t["ci_finite_training"] is not None
    ]
    probes = [_probe_line(t) for t in result["transitions"] if t["probe"]]
    extra = ["interval parts, per beta:", *parts] if parts else []
    extra += ["stability probe of the collapsed points, per beta:", *probes]
    extra += ["verdict 'train longer', per beta:", *notes] if notes else []
    return "\n".join([table, *extra])


def _probe_line(t: dict) -> str:
    p, beta = t["probe"], t.get("beta", 1.0)
    line = (
        f"  {beta:g}: {p['collapsed']} collapsed, {len(p['unstable_sigma2'])} "
        f"unstable (trapped), {len(p['dead_sigma2'])} dead; lambda_c / lambda_max "
        f"= {p['lambda_c_ratio']:.3f} near the kink"
    )
    off = t["off_theory"]
    if off and off["evidence"] == "probe":
        line += (
            f"; collapse is stable below lambda_max/beta (from sigma^2 = "
            f"{off['stable_sigma2'][0]:.4g}): the transition is off the theory by "
            f"{100 * off['shift']:+.1f} %"
        )
    if t["trapped"]:
        line += "; the estimate moved to the probe's threshold"
    return line


def cmd_plot(args: argparse.Namespace) -> int:
    from phasevae import api

    run = api.Run(Path(args.run_dir))
    for path in run.plot(save=args.format, x=args.x, y=args.y).values():
        print(f"wrote {path}")
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
    print(f"lambda_max = {ev[0]:.4g}: collapse when beta * sigma^2 > lambda_max")
    for p in predictions:
        dims = ", ".join(f"{t:.4g}" for t in p["thresholds"] or [])
        s2c = "never (beta = 0)" if p["sigma2_c"] is None else f"{p['sigma2_c']:.4g}"
        print(f"  beta = {p['beta']:g}: sigma2_c = {s2c}; latent dims die at {dims}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from phasevae.placement import split_cpu_into_devices
    from phasevae.validate import run_suite

    split_cpu_into_devices()

    def progress(case):
        print(f"case {case.name}: {case.description}", file=sys.stderr, flush=True)

    run_suite(check_out_dir(args.out), args.quick, args.case, progress)
    print((Path(args.out) / "table.md").read_text(), end="")
    print(f"wrote {Path(args.out) / 'validation.json'}")
    return 0


def _init_distributed(args: argparse.Namespace) -> bool:
    """Join a multi-process JAX job if asked to; True for the process that writes."""
    if args.num_processes is None and not args.distributed:
        return True
    import jax

    # CPU processes talk through gloo; accelerators use their own collectives
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes is None:  # auto-detect (TPU pods, SLURM, ...)
        jax.distributed.initialize()
    else:
        if args.coordinator is None or args.process_id is None:
            raise BadInput("--num-processes needs --coordinator and --process-id too")
        if not 0 <= args.process_id < args.num_processes:
            raise BadInput("--process-id must be in 0 .. --num-processes - 1")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    return jax.process_index() == 0


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


def _print_locate(r: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(r, indent=1))
        return 0

    def found(err, ci):
        if err is None:
            return "no transition found"
        interval = f"95 % interval {ci[0]:.4g} .. {ci[1]:.4g}"
        return f"sigma2_c {100 * err:+.2f} % off ({interval})"

    print(
        f"locate (sweeps/locate.toml, cold start): {r['locate_wall_s']:.1f} s wall "
        f"with compilation, {r['locate_model_steps']:,} model-steps, "
        + found(r["locate_rel_error"], r["locate_ci"])
    )
    reach = "reaches that interval" if r["uniform_reached"] else "does NOT reach it"
    print(
        f"uniform grid of {r['uniform_points']} sigma^2 points {reach}: "
        f"{r['uniform_model_steps']:,} model-steps, "
        + found(r["uniform_rel_error"], r["uniform_ci"])
    )
    ratio = r["model_steps_ratio_vs_uniform"]
    print(f"model-steps, uniform / locate: {ratio:.1f}x")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from phasevae import bench
    from phasevae.placement import split_cpu_into_devices

    split_cpu_into_devices()
    if args.locate:
        return _print_locate(bench.locate(), args.json)
    models = args.models or [1, 8, 64, 256]
    if any(m < 1 for m in models):
        raise BadInput("--models: every model count must be >= 1")
    if args.checkpoint:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            r = bench.checkpoint_time(models[-1], tmp)
        if args.json:
            print(json.dumps(r, indent=1))
        else:
            print(
                f"checkpoint of {r['models']} models ({r['bytes'] / 2**20:.0f} MiB): "
                f"save {r['save_s']:.2f} s, restore {r['restore_s']:.2f} s"
            )
        return 0
    results = bench.run(models)
    if args.json:
        print(json.dumps(bench.as_dicts(results), indent=1))
        return 0
    peak = results[0].matmul_peak_flops_per_s
    print(
        f"{bench.flops_per_model_step():.3g} FLOP per model-step; "
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


def cmd_status(args: argparse.Namespace) -> int:
    from phasevae import api

    st = api.open_run(args.run_dir).status()
    print(f"run directory: {args.run_dir} ({st['status']})")
    if st["shard"]:
        print(f"shard {st['shard'][0]}/{st['shard'][1]} of the grid")
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


def _fmt_s(seconds: float | None) -> str:
    return "n/a (already done)" if seconds is None else f"{seconds:.1f} s"


def _version() -> str:
    from importlib import metadata

    try:
        return f"phasevae {metadata.version('phasevae')}"
    except metadata.PackageNotFoundError:
        return "phasevae (not installed: no version)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phasevae",
        description="Phase diagrams of posterior collapse in VAEs: train grids of "
        "VAEs in one vmapped JAX program and locate the collapse transition.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep", help="train a grid of VAEs and write a run directory")
    p.add_argument(
        "spec", nargs="?", help="sweep spec (TOML); default: built-in default"
    )
    p.add_argument("--out", help="run directory (default: runs/<spec name>)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key with a TOML value, e.g. --set grid.beta=[0.5,1.0]",
    )
    p.add_argument(
        "--diverged-status",
        type=int,
        default=2,
        metavar="CODE",
        help="exit status of a run that completed with some models diverged "
        "(default 2, as for bad input; a scheduler that must tell the two apart can "
        "ask for another, e.g. 3, or 0)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="least time between checkpoints (default 30; 0: after every chunk)",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="train only shard I of N of the grid (by point id), e.g. for array jobs",
    )
    g = p.add_argument_group("multi-process JAX (TPU pods, multi-GPU hosts)")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process job, its settings detected (TPU, SLURM, ...)",
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    g.add_argument("--num-processes", type=int, metavar="N")
    g.add_argument("--process-id", type=int, metavar="I")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print grid size, memory per device and a timed estimate; train nothing",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("bench", help="training throughput against the hardware")
    p.add_argument(
        "--models", type=int, nargs="+", help="model counts M (default 1 8 64 256)"
    )
    p.add_argument("--json", action="store_true", help="print JSON, one object per M")
    p.add_argument(
        "--checkpoint",
        action="store_true",
        help="time saving and restoring the state of the last --models M instead",
    )
    p.add_argument(
        "--locate",
        action="store_true",
        help="time locating sigma_c^2 (sweeps/locate.toml) against uniform grids",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("status", help="progress of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("merge", help="combine the run directories of a sharded sweep")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="the merged run directory")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out if it exists (never one of the shards)",
    )
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("analyze", help="locate the transitions of a finished sweep")
    p.add_argument("run_dir", help="a run directory written by phasevae sweep")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("plot", help="draw the figures of an analysed run")
    p.add_argument("run_dir", help="a run directory with analysis.json")
    p.add_argument("--format", default="png", help="png (default), pdf or svg")
    p.add_argument("--x", default="sigma2", help="phase diagram x axis (a grid axis)")
    p.add_argument("--y", default="beta", help="phase diagram y axis (a grid axis)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("theory", help="spectrum and predicted transitions, no training")
    p.add_argument("target", metavar="SPEC|RUN_DIR")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_theory)

    p = sub.add_parser(
        "validate",
        help="the transition estimate against long training on the validation suite",
    )
    p.add_argument(
        "--out", default="results/validation", help="where runs and tables go"
    )
    p.add_argument("--quick", action="store_true", help="the two test-sized cases")
    p.add_argument("--case", action="append", default=[], help="only this case")
    p.set_defaults(func=cmd_validate)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def on_sigterm(*_):
        # a flag, not an exception: raised here it could land in a callback that
        # swallows it; start-up checks it between phases, training at its chunks
        TERM_REQUESTED.set()

    TERM_REQUESTED.clear()
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return args.func(args)
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
            "command to start",
            file=sys.stderr,
        )
        return 143
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


if __name__ == "__main__":
    sys.exit(main())
