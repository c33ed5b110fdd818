"""The criterion on real data that ships offline: scikit-learn's digits.

python analysis/digits.py
"""

from study import run_variant, write_summary

if __name__ == "__main__":
    write_summary("digits", run_variant("digits", "digits", "digits.toml"))
