"""Issue 15's study: does the collapse criterion beta * sigma^2 = lambda_max hold for
a convolutional VAE? The built-in conv VAE against the default MLP on scikit-learn's
digits and on the shipped image patches, beta in {0.5, 1, 2}, 3 seeds, each with the
analysis's interval and verdict (results/conv/summary.json, table in
results/README.md).

python studies/conv_study.py
"""

from study import run_variant, write_summary

PATCHES = [
    'data.source="patches"',
    "data.samples=5000",
    "data.eval_samples=256",
    "train.steps=1000",
    "grid.sigma2.min=3.0",
    "grid.sigma2.max=200.0",
]
MLP = ['model.kind="mlp"']

if __name__ == "__main__":
    rows = run_variant("conv", "digits_conv", "conv_digits.toml")
    rows += run_variant("conv", "digits_mlp", "conv_digits.toml", MLP)
    rows += run_variant("conv", "patches_conv", "conv_digits.toml", PATCHES)
    rows += run_variant("conv", "patches_mlp", "conv_digits.toml", PATCHES + MLP)
    write_summary("conv", rows)
