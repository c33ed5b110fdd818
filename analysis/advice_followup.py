"""Does following the printed advice work (issue 26)? On the validation suite's
coarse runs: the estimate at T; where it says ``train longer`` to N steps (rounded
to what the spec accepts), the estimate at N, and its advice N'. The suite's runs
trained 4 T and a point's training depends on its own step only, so a run extended
to N <= 4 T (``phasevae sweep RUN/spec.toml --out RUN --set train.steps=N``, exact:
tests/test_cli.py) is the first N steps of those runs. Advice beyond 4 T is
reported as not followed.

    python analysis/advice_followup.py

writes ``results/validation/advice.md`` and ``advice.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from phasevae import estimate
from phasevae.advice import round_steps
from phasevae.cases import CASES
from phasevae.store import RunDir
from phasevae.validate import LONG

ROOT = Path(__file__).resolve().parent.parent / "results" / "validation"


def at(metrics, steps, case, spectrum) -> dict:
    return estimate.estimate_transition(
        metrics[metrics["step"] <= steps],
        case.latent_dim,
        spectrum["lambda_max"],
        spectrum.get("lambda_max_eval"),
    )


def follow(case) -> dict:
    run = RunDir(ROOT / "runs" / case.name)
    metrics, spectrum = run.metrics(), run.meta()["spectrum"]
    row = {"case": case.name, "T": case.steps}
    steps, chain = case.steps, []
    for _ in range(3):  # T, then each advice followed while the runs reach it
        t = at(metrics, steps, case, spectrum)
        advice = t["train_longer"]
        chain.append(
            {
                "steps": steps,
                "verdict": t["verdict"],
                "holds_for_steps": t["holds_for_steps"],
                "sigma2_c": t["sigma2_c"],
                "ci": t["ci"],
                "advised": round_steps(advice["steps"], case.eval_every)
                if advice
                else None,
            }
        )
        nxt = chain[-1]["advised"]
        if nxt is None or nxt > LONG * case.steps:
            break
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
            cells += [
                second["verdict"],
                second["advised"] or "-",
                "-" if growth is None else f"{growth:.2f}",
            ]
        else:
            beyond = first["advised"] is not None
            cells += ["beyond 4 T: not followed" if beyond else "-", "-", "-"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    longer = sum(r["chain"][0]["verdict"] == estimate.LONGER for r in rows)
    lines += [
        "",
        f"'train longer' at T: {longer} of {len(rows)}; advice followed (within 4 T): "
        f"{followed}; trusted after following it once: {turned} of {followed}",
        "advised steps, growth between consecutive follow-ups: "
        + (f"largest {max(growths):.2f}x" if growths else "no second advice"),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = [follow(case) for case in CASES]
    (ROOT / "advice.json").write_text(json.dumps(rows, indent=1))
    (ROOT / "advice.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
