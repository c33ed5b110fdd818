"""What the command line prints besides plain lines and the analysis: the progress
display, the hint after a divergence and the checkpoint timing of ``phasevae
bench``."""

from __future__ import annotations

from phasevae.analysis.constants import COLLAPSED_KL


class Progress:
    """Training progress for the command line, through rich: on a terminal a bar
    with done / total, elapsed time and ETA, and a live one-line summary of the last
    chunk (:meth:`chunk`: points evaluated, diverged, and per beta the first grid
    sigma^2 whose KL is below 0.01 nats, which brackets the transition from above);
    with ``quiet``, or when the stream is not a terminal (a batch job's log), one
    line at the end instead. Call ``close()`` when training stops early."""

    def __init__(self, unit: str = "chunks", quiet: bool = False, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.unit, self.quiet = unit, quiet
        self.bar = None
        self.summary = ""
        if not quiet and self.console.is_terminal:
            from rich import progress as rp

            self.bar = rp.Progress(
                rp.TextColumn("training"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TextColumn(unit),
                rp.TimeElapsedColumn(),
                rp.TextColumn("ETA"),
                rp.TimeRemainingColumn(),
                rp.TextColumn("{task.fields[summary]}"),
                console=self.console,
                transient=False,
            )
            self.task = None

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        if self.bar is not None:
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task("", total=total, summary="")
            self.bar.update(
                self.task, completed=done, total=total, summary=self.summary
            )
            if done >= total:
                self.close()
        elif done >= total and not self.quiet:
            self.console.print(
                f"trained {done}/{total} {self.unit} in {elapsed:.1f} s",
                highlight=False,
            )

    def chunk(self, frame, meta) -> None:
        """The API's ``on_chunk``: summarise the chunk's metrics rows."""
        diverged = int(frame["diverged"].sum()) if "diverged" in frame else 0
        parts = [f"{len(frame)} evaluated", f"{diverged} diverged"]
        ok = frame[~frame["diverged"]] if "diverged" in frame else frame
        for beta, g in ok.groupby("beta"):
            kl = g.groupby("sigma2")["kl"].mean()
            low = kl.index[kl.to_numpy() < COLLAPSED_KL]
            if len(low):
                parts.append(f"beta {beta:g}: collapsed from {low[0]:.3g}")
        self.summary = ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.stop()
            self.task = None


def divergence_hint(spectrum: dict, spec) -> str:
    """What to change: the data's scale when it is far from 1, else the step size."""
    if spectrum["lambda_max"] > 1e3 and spec.data.normalize in ("none", "center"):
        return (
            f"The data's largest variance is {spectrum['lambda_max']:.3g} with "
            f"normalize = '{spec.data.normalize}': set data.normalize = 'standardize' "
            "(tables) or 'unit' (images) to train on a workable scale."
        )
    return "Lower the learning rate or remove those grid points."


def checkpoint_line(r: dict) -> str:
    """``phasevae bench --checkpoint``'s result
    (:func:`phasevae.tools.bench.checkpoint_time`) as one line."""
    return (
        f"checkpoint of {r['models']} models ({r['bytes'] / 2**20:.0f} MiB), "
        f"{r['train_s']:.2f} s of training per chunk: training waited "
        f"{r['save_blocking_s']:.3f} s per save, a save cost "
        f"{r['save_cost_s']:.2f} s of wall time with its background write "
        f"({100 * r['overhead_every_chunk']:.1f} % of training when saving "
        f"after every chunk, {100 * r['overhead_at_interval']:.2f} % at the "
        f"default of at most one save per 30 s); restore {r['restore_s']:.2f} s"
    )
