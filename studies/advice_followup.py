"""Does following the printed advice work (issue 26)? On the validation suite's
coarse runs: the estimate at T; where it says ``train longer`` to N steps (rounded
to what the spec accepts), the estimate at N, and its advice N'. The suite's runs
trained 4 T and a point's training depends on its own step only, so a run extended
to N <= 4 T (``phasevae sweep RUN/spec.toml --out RUN --set train.steps=N``, exact:
tests/test_cli.py) is the first N steps of those runs. With ``--train``, advice
beyond 4 T (up to ``CAP`` steps) is followed too: the case's grid is trained to N
steps from the start into ``results/validation/advice/CASE`` (equal to extending the
run at T to N, by the same test), and read at N; otherwise it is reported as not
followed (a complete run trained there earlier is reused). Each advice is followed
once: the advice read at N is reported, with its
growth N' / N.

    python studies/advice_followup.py [--train]

writes ``results/validation/advice.md`` and ``advice.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from phasevae.analysis import estimate
from phasevae.analysis.advice import round_steps
from phasevae.spec import spec_from_dict, spec_to_dict
from phasevae.store import RunDir
from phasevae.tools.cases import CASES

ROOT = Path(__file__).resolve().parent.parent / "results" / "validation"
CAP = 50_000  # steps: advice beyond this is not followed (--train)


def at(metrics, steps, case, spectrum) -> dict:
    return estimate.estimate_transition(
        metrics[metrics["step"] <= steps],
        case.latent_dim,
        spectrum["lambda_max"],
        spectrum.get("lambda_max_eval"),
    )


def trained_to(case, steps: int):
    """The case's run (its spec, with train.steps = ``steps``) trained from the
    start into a run directory of its own."""
    from phasevae.engine.sweep import run_sweep

    raw = spec_to_dict(RunDir(ROOT / "runs" / case.name).spec())
    raw["train"]["steps"] = steps
    spec = spec_from_dict(raw, where=f"{case.name}-advice")
    return run_sweep(spec, ROOT / "advice" / case.name).metrics


def followed(case, steps: int):
    """The metrics of the case's run trained to ``steps`` by an earlier ``--train``,
    or None."""
    run = RunDir(ROOT / "advice" / case.name)
    if not run.spec_file.exists():
        return None
    meta = run.meta()
    if meta is None or not meta.complete or run.spec().train.steps != steps:
        return None
    return run.metrics()


def follow(case, train: bool = False) -> dict:
    run = RunDir(ROOT / "runs" / case.name)
    metrics, spectrum = run.metrics(), run.meta().spectrum
    row = {"case": case.name, "T": case.steps}
    steps, chain = case.steps, []
    while len(chain) < 2:  # T, then its advice followed once
        t = at(metrics, steps, case, spectrum)
        advice = t.train_longer
        chain.append(
            {
                "steps": steps,
                "verdict": t.verdict,
                "holds_for_steps": t.holds_for_steps,
                "sigma2_c": t.sigma2_c,
                "ci": t.ci,
                "advised": round_steps(advice.steps, case.eval_every)
                if advice
                else None,
            }
        )
        nxt = chain[-1]["advised"]
        if nxt is None:
            break
        if nxt > metrics["step"].max():
            done = followed(case, nxt)
            if done is None and (not train or nxt > CAP):
                break
            metrics = done if done is not None else trained_to(case, nxt)
            row["trained"] = nxt
        steps = nxt
    row["chain"] = chain
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| case | at T | advised | at the advised length | advised then | growth |",
        "|---|---|---|---|---|---|",
    ]
    followed = turned = 0
    growths = []
    for r in rows:
        c = r["chain"]
        first = c[0]
        cells = [r["case"], first["verdict"], first["advised"] or "-"]
        if len(c) > 1:
            second = c[1]
            followed += 1
            turned += second["verdict"] == estimate.TRUSTED
            growth = second["advised"] / first["advised"] if second["advised"] else None
            if growth is not None:
                growths.append(growth)
            ci = second["ci"] or [float("nan")] * 2
            held = second["holds_for_steps"]
            cells += [
                f"{second['verdict']}{f' (for {held} steps)' if held else ''}: "
                f"{second['sigma2_c']:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]",
                second["advised"] or "-",
                "-" if growth is None else f"{growth:.2f}",
            ]
        else:
            beyond = first["advised"] is not None
            beyond = "not followed (no run trained there)" if beyond else "-"
            cells += [beyond, "-", "-"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    longer = sum(r["chain"][0]["verdict"] == estimate.LONGER for r in rows)
    lines += [
        "",
        f"'train longer' at T: {longer} of {len(rows)}; advice followed: "
        f"{followed}; trusted after following it once: {turned} of {followed}",
        "advised steps, growth between consecutive follow-ups: "
        + (f"largest {max(growths):.2f}x" if growths else "no second advice"),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = [follow(case, train="--train" in sys.argv[1:]) for case in CASES]
    (ROOT / "advice.json").write_text(json.dumps(rows, indent=1))
    (ROOT / "advice.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
