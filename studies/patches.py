"""The criterion on natural images that ship offline: 16x16 grayscale patches of the
photographs inside scikit-image.

    python studies/patches.py
"""

from study import run_variant, write_summary

if __name__ == "__main__":
    write_summary("patches", run_variant("patches", "patches", "patches.toml"))
