"""Does the criterion hold for non-Gaussian data with the same covariance?
Two variants: two clusters per axis (bimodal) and heavy tails (laplace).

    python studies/non_gaussian.py
"""

from study import run_variant, write_summary

if __name__ == "__main__":
    rows = []
    for dist in ("bimodal", "laplace"):
        over = [f"data.distribution={dist}"]
        rows += run_variant("non_gaussian", dist, "non_gaussian.toml", over)
    write_summary("non_gaussian", rows)
