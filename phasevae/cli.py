"""The ``phasevae`` command. Thin: parses arguments, calls the library, prints.

Exit status: 0 success; 2 bad input (spec, data, arguments, a diverged model) with a
one-paragraph message and no traceback; 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from phasevae.errors import BadInput


class ProgressBar:
    """One line per chunk on a terminal (redrawn in place), ~20 lines otherwise."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width
        self.tty = stream.isatty()
        self.last_shown = -1.0

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        frac = done / total
        if not self.tty and done < total and frac - self.last_shown < 0.05:
            return
        self.last_shown = frac
        fill = round(self.width * frac)
        eta = elapsed / done * (total - done)
        line = (
            f"[{'#' * fill}{'.' * (self.width - fill)}] {done}/{total} chunks  "
            f"{elapsed:6.1f} s elapsed  ETA {eta:6.1f} s"
        )
        end = "\n" if done == total or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def cmd_sweep(args: argparse.Namespace) -> int:
    from phasevae.spec import load_spec
    from phasevae.sweep import run_sweep, summary_table

    spec = load_spec(args.spec, args.set)
    name = Path(args.spec).stem if args.spec else "default"
    out = Path(args.out) if args.out else Path("runs") / name
    t0 = time.perf_counter()
    result = run_sweep(spec, out, progress=ProgressBar())
    meta, spectrum = result.meta, result.meta["spectrum"]
    wall = meta["wall_times"]
    print(f"run directory: {out}")
    print(f"data: {spectrum['description']}")
    top = ", ".join(
        f"{v:.4g}" for v in spectrum["eigenvalues"][: spec.model.latent_dim]
    )
    print(f"lambda_max = {spectrum['lambda_max']:.4g}; top eigenvalues {top}")
    print(
        f"{meta['grid_size']} grid points x {meta['steps']} steps; compile "
        f"{_fmt_s(wall['compile_s'])}, training {_fmt_s(wall['train_s'])} in all, "
        f"{time.perf_counter() - t0:.1f} s this call"
    )
    table = summary_table(result.metrics, spectrum["lambda_max"])
    print("final KL (nats, mean over seeds); predicted sigma2_c = lambda_max / beta")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if result.diverged:
        print(
            f"phasevae: error: {len(result.diverged)} of {meta['grid_size']} models "
            f"diverged (a NaN or inf appeared) and were frozen there: "
            f"{', '.join(result.diverged[:8])}"
            f"{' ...' if len(result.diverged) > 8 else ''}."
            f" They are flagged in the 'diverged' column of {result.run.metrics_file}; "
            f"the other models trained normally. Lower the learning rate or remove "
            f"those grid points.",
            file=sys.stderr,
        )
        return 2
    return 0


def _fmt_s(seconds: float | None) -> str:
    return "n/a (already done)" if seconds is None else f"{seconds:.1f} s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phasevae",
        description="Phase diagrams of posterior collapse in VAEs: train grids of "
        "VAEs in one vmapped JAX program and locate the collapse transition.",
    )
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
    p.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BadInput as e:
        print(f"phasevae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phasevae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
