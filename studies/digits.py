"""The criterion on real data that ships offline: scikit-learn's digits, trained for
6000 steps and, to see how much of the offset is unfinished training, for 24000.

python studies/digits.py
"""

from study import run_variant, write_summary

if __name__ == "__main__":
    rows = run_variant("digits", "digits", "digits.toml")
    # 4x the training: does the offset shrink as slow points near lambda_max relax?
    long = ["train.steps=24000", "train.eval_every=2000"]
    rows += run_variant("digits", "digits_long", "digits.toml", long)
    write_summary("digits", rows)
