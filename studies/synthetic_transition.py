"""Locate the collapse transition on synthetic Gaussian data (issue 3's end-to-end
check): measured sigma_c^2 against lambda_max / beta for beta = 0.5, 1, 2.

    python studies/synthetic_transition.py
"""

from study import run_variant, write_summary

if __name__ == "__main__":
    write_summary(
        "synthetic_transition",
        run_variant("synthetic_transition", "gaussian", "synthetic_transition.toml"),
    )
