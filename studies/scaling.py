"""The scaling curve of ``phasevae bench`` (issue 32, item 5): model-steps per second,
fraction of the matmul peak, compile time and memory per model against the model
count M, from the JSON that

    phasevae bench --models 64 256 1024 --json > results/speed/scaling_cpu.json

writes (rows of several such files joined in one list). Plots it:

    python studies/scaling.py results/speed/scaling_cpu.json [EARLIER.json]

writes results/speed/scaling_cpu.png beside the first JSON; an earlier curve's rate
(``EARLIER.json``: the models vmapped on each device, before 2026-12-06) is drawn
beside it, dotted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path: str, earlier: str | None = None) -> None:
    rows = json.loads(Path(path).read_text())
    m = [r["models"] for r in rows]
    fig, (rate, cost) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    rate.plot(m, [r["model_steps_per_s"] for r in rows], "o-", label="phasevae")
    rate.plot(
        m,
        [r["baseline_model_steps_per_s"] for r in rows],
        "s--",
        label="a loop of jitted single-model steps",
    )
    if earlier:
        old = json.loads(Path(earlier).read_text())
        rate.plot(
            [r["models"] for r in old],
            [r["model_steps_per_s"] for r in old],
            "o:",
            color="grey",
            label="before: each device's models vmapped",
        )
    rate.set(
        xscale="log",
        xlabel="models M",
        ylabel="model-steps / s",
        ylim=(0, 1.15 * max(r["model_steps_per_s"] for r in rows)),
        title=f"{rows[0]['device']}: training rate",
    )
    rate.set_xticks(m, [str(v) for v in m])
    for r in rows:
        rate.annotate(
            f"{100 * r['fraction_of_peak']:.0f} % of peak",
            (r["models"], r["model_steps_per_s"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    rate.margins(x=0.12)
    rate.legend(fontsize=8, loc="lower left")
    cost.plot(m, [r["compile_s"] for r in rows], "o-", label="compile (s)")
    cost.plot(
        m,
        [r["program_bytes_per_model"] / 2**20 for r in rows],
        "s-",
        label="program memory per model (MiB)",
    )
    cost.set(xscale="log", xlabel="models M", ylim=(0, None), title="fixed costs")
    cost.set_xticks(m, [str(v) for v in m])
    cost.legend(fontsize=8, loc="lower left")
    fig.savefig(Path(path).with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
