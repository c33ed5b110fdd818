"""Regenerate the table in results/README.md from every results/*/summary.json.

    python studies/results_table.py

Only the text between the table markers is replaced; the notes around it are kept.
"""

import json

from study import RESULTS

from phasevae.store import atomic_write_text

START, END = "<!-- results table: start -->", "<!-- results table: end -->"


def fmt(v, spec=".4g"):
    return "-" if v is None else format(v, spec)


def table() -> str:
    lines = [
        "| study | variant | beta | measured sigma_c^2 [95 % interval] | predicted "
        "lambda_max/beta | error | per-dim measured / predicted | models | train s "
        "| compile s | machine | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("*/summary.json")):
        for r in json.loads(path.read_text()):
            ci = "" if r["ci"] is None else f" [{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]"
            err = "-" if r["rel_error"] is None else f"{100 * r['rel_error']:+.1f} %"
            dims = ", ".join(
                f"{fmt(m, '.3g')} / {fmt(p, '.3g')}" for m, p in r["per_dim"]
            )
            conv = "" if r["converged"] else " (not all settled)"
            lines.append(
                f"| {r['study']} | {r['variant']} | {r['beta']:g} | "
                f"{fmt(r['sigma2_c'])}{ci}{conv} | {fmt(r['predicted'])} | {err} | "
                f"{dims} | {r['models']} | {r['train_s']:.0f} | {r['compile_s']:.1f} | "
                f"{r['machine']} | `{r['command']}` |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    readme = RESULTS / "README.md"
    text = readme.read_text()
    head, rest = text.split(START)
    _, tail = rest.split(END)
    atomic_write_text(readme, f"{head}{START}\n{table()}\n{END}{tail}")
    print(f"wrote {readme}")
