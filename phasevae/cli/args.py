"""The command line's arguments: the parser of every ``phasevae`` subcommand."""

from __future__ import annotations

import argparse


def version_text() -> str:
    from importlib import metadata

    try:
        return f"phasevae {metadata.version('phasevae')}"
    except metadata.PackageNotFoundError:
        return "phasevae (not installed: no version)"


EXAMPLES = {
    "sweep": """examples:
  phasevae sweep                                   # the built-in default, runs/default
  phasevae sweep sweeps/digits.toml --out runs/digits --set grid.seeds=[0,1,2]
  phasevae sweep my.toml --set data.path="x.npy" --dry-run   # plan, nothing written
  phasevae sweep my.toml --shard 0/4 --out runs/s0  # one of 4 array jobs
  phasevae sweep --track tensorboard   # then: tensorboard --logdir runs/default""",
    "locate": """examples:
  phasevae locate mydata.csv                    # data alone: runs/mydata-locate
  phasevae locate sweeps/default.toml --set grid.beta=[1.0] --target 0.02
  phasevae locate runs/mine                     # continue a finished sweep
  phasevae locate mydata.npy --budget 200000    # model-steps at most""",
    "bench": """examples:
  phasevae bench --models 1 64 256
  phasevae bench --model conv --models 1 16 64
  phasevae bench --models 1000 --checkpoint --json
  phasevae bench --locate sweeps/locate_2d.toml""",
    "status": "examples:\n  phasevae status runs/default\n"
    "  phasevae status            # every run under runs/",
    "merge": "example:\n  phasevae merge runs/s0 runs/s1 runs/s2 --out runs/all",
    "analyze": "example:\n  phasevae analyze runs/default   # writes analysis.json",
    "spec": "examples:\n  phasevae spec sweeps/digits.toml --set grid.beta=[1.0]\n"
    "  phasevae spec > my.toml     # the built-in default, every key",
    "upgrade": "example:\n  phasevae upgrade runs/old   # a run of an earlier phasevae",
    "plot": "examples:\n  phasevae plot runs/default\n"
    "  phasevae plot runs/remedy --x sigma2 --y kl_warmup_steps --format pdf",
    "report": "examples:\n  phasevae report runs/default   # runs/default/report.html\n"
    "  phasevae report runs/default -o ~/to_send.html",
    "theory": "examples:\n  phasevae theory sweeps/default.toml\n"
    "  phasevae theory runs/default --json",
    "validate": "examples:\n  phasevae validate --quick --out /tmp/v\n"
    "  phasevae validate --case wine",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phasevae",
        description="Phase diagrams of posterior collapse in VAEs: train grids of "
        "VAEs in one vmapped JAX program and locate the collapse transition.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    def add(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, epilog=EXAMPLES[name], formatter_class=raw, **kw)

    p = add("sweep", help="train a grid of VAEs and write a run directory")
    p.add_argument(
        "spec", nargs="?", help="sweep spec (TOML); default: built-in default"
    )
    p.add_argument("--out", help="run directory (default: runs/<spec name>)")
    p.add_argument(
        "--strict-grid",
        action="store_true",
        help="refuse a sigma^2 grid that may miss a beta's predicted transition "
        "(by default a warning, before anything is compiled)",
    )
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
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress display (off anyway when stderr is not a terminal)",
    )
    p.add_argument(
        "--track",
        action="append",
        default=[],
        metavar="KIND[:WHERE]",
        help="log every evaluation to a tracker: tensorboard[:LOGDIR] (default "
        "RUN_DIR/tensorboard), wandb[:PROJECT] or mlflow[:TRACKING_URI] (the "
        "[trackers] extra); may be repeated",
    )

    p = add("bench", help="training throughput against the hardware")
    p.add_argument(
        "--models", type=int, nargs="+", help="model counts M (default 1 8 64 256)"
    )
    p.add_argument("--json", action="store_true", help="print JSON, one object per M")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed chunks per M after a warm-up one, the best kept (default 3; 1 "
        "makes M = 4096 about half as long)",
    )
    p.add_argument(
        "--model",
        choices=(
            "mlp",
            "conv",
            "ar",
            "gru",
            "pixelcnn",
            "categorical",
            "ladder",
            "vrnn",
        ),
        default="mlp",
        help="the paper's MLP (default), the convolutional VAE on image patches, "
        "the MLP with an autoregressive decoder (model.context = 4) or a GRU head "
        "(model.recurrent = 32), with a PixelCNN head on 16x16 patches (three "
        "masked layers of 16 channels), with a categorical latent (2 codes of 4) or "
        "with a two-layer ladder latent, or the VRNN over the 8 features as steps",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "tf32", "bfloat16"),
        default="float32",
        help="the matmuls' precision (train.precision; default float32)",
    )
    p.add_argument(
        "--predict",
        metavar="DEVICE",
        help="predict an accelerator on paper (roofline from XLA's cost analysis): "
        "h100, h200, a100, l4, tpu-v5e, or 'this' (this device, measured) for the "
        "--models counts (default 64 ... 16384)",
    )
    p.add_argument(
        "--checkpoint",
        action="store_true",
        help="time saving and restoring the state of the last --models M instead",
    )
    p.add_argument(
        "--locate",
        nargs="?",
        const="",
        default=None,
        metavar="SPEC",
        help="time locating sigma_c^2 against uniform grids, on sweeps/locate.toml "
        "or SPEC (several betas: a phase diagram's boundary, e.g. "
        "sweeps/locate_2d.toml)",
    )

    p = add("status", help="progress of a run directory (all under runs/ without one)")
    p.add_argument("run_dir", nargs="?", help="a run directory (default: list runs/)")

    p = add("spec", help="print the resolved spec (defaults and --set applied)")
    p.add_argument("spec", nargs="?", help="a spec file (default: the built-in one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = add("merge", help="combine the run directories of a sharded sweep")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="the merged run directory")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out if it exists (never one of the shards)",
    )

    p = add(
        "upgrade",
        help="rewrite runs of an earlier phasevae in the current format "
        "(it vouches for their files as they are: only runs you trust)",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")

    p = add("analyze", help="locate the transitions of a finished sweep")
    p.add_argument("run_dir", help="a run directory written by phasevae sweep")

    p = add("plot", help="draw the figures of an analysed run")
    p.add_argument("run_dir", help="a run directory with analysis.json")
    p.add_argument("--format", default="png", help="png (default), pdf or svg")
    p.add_argument("--x", default="sigma2", help="phase diagram x axis (a grid axis)")
    p.add_argument("--y", default="beta", help="phase diagram y axis (a grid axis)")

    p = add("report", help="one self-contained HTML page of an analysed run")
    p.add_argument("run_dir", help="a run directory with analysis.json")
    p.add_argument("-o", "--out", help="the page (default RUN_DIR/report.html)")
    p = add(
        "locate",
        help="from data, a spec or a finished sweep to a trusted, sharp transition",
    )
    p.add_argument(
        "source",
        metavar="DATA|SPEC|RUN_DIR",
        help="a data file (.csv, .npy, .npz, .parquet), a spec, or a finished sweep",
    )
    p.add_argument(
        "--out", help="run directory (default: runs/<name>-locate, RUN_DIR/locate)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--budget",
        type=int,
        help="most model-steps to spend (default: twice a plain 24-point sweep of "
        "each curve at train.steps)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=0.02,
        help="relative half-width of the 95 %% interval to reach (default 0.02)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = add("theory", help="spectrum and predicted transitions, no training")
    p.add_argument("target", metavar="SPEC|RUN_DIR")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add(
        "validate",
        help="the transition estimate against long training on the validation suite",
    )
    p.add_argument(
        "--out", default="results/validation", help="where runs and tables go"
    )
    p.add_argument("--quick", action="store_true", help="the two test-sized cases")
    p.add_argument(
        "--case",
        action="append",
        default=[],
        help="only this case (repeatable); the other cases' rows are kept from "
        "OUT/validation.json",
    )
    return parser
