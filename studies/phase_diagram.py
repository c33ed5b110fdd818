"""A phase diagram with a resolved boundary (issue 17): 13 beta x 24 sigma^2 on the
default data, trained adaptively (slots that retire settled points).

    python studies/phase_diagram.py

Writes results/phase_diagram/ (the run, its analysis and figures, summary.json).
"""

from study import run_variant, write_summary

if __name__ == "__main__":
    write_summary(
        "phase_diagram", run_variant("phase_diagram", "run", "phase_diagram.toml")
    )
