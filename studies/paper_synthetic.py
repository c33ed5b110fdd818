"""Reproduce the paper's synthetic experiment (its architecture, beta = 1, sigma^2
swept finely through the transition): KL, ELBO against the collapse line, and the
latent variances (paper Fig. 2).

    python studies/paper_synthetic.py
"""

from study import run_variant, write_summary

if __name__ == "__main__":
    write_summary(
        "paper_synthetic",
        run_variant("paper_synthetic", "paper", "paper_synthetic.toml"),
    )
