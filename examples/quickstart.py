"""phasevae from Python, as a notebook would use it: train a small sweep, watch it
chunk by chunk, locate the collapse transition and hold it against the theory.

    python examples/quickstart.py [RUN_DIR]

About a minute on a 2-core CPU. Each block below is a notebook cell; in a notebook,
``run.plot()`` shows the figures inline.
"""

import sys

import phasevae as pv

# %% A sweep, given as a dict with the sections of a spec file. 8-dim Gaussian data with
# covariance eigenvalues 8, 2, 0.5, ...: the theory puts the transition at
# beta * sigma^2 = lambda_max = 8.
spec = {
    "data": {"source": "synthetic", "eigenvalues": [8.0, 2.0, 0.5, 0.125]},
    "model": {"latent_dim": 2, "encoder": [32], "decoder": [32]},
    "train": {"steps": 1500, "eval_every": 250, "batch_size": 128},
    "grid": {
        "sigma2": {"min": 2.0, "max": 32.0, "num": 12, "scale": "log"},
        "beta": [1.0],
        "seeds": [0],
    },
}
print(pv.predict(spec)["predictions"])  # what the linear theory expects, no training


# %% Train: one compiled program for the whole grid. on_chunk sees each chunk's rows.
def on_chunk(frame, meta):
    step = int(frame["step"].max())
    collapsed = int((frame["kl"] < 0.01).sum())
    print(f"step {step:5d}: {collapsed} of {len(frame)} models collapsed")


out = sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart"
run = pv.run(spec, out, on_chunk=on_chunk)
print(run.summary().to_string(index=False))

# %% The metrics table: one row per grid point and evaluation.
last = run.metrics[run.metrics["step"] == run.spec.train.steps]
print(last[["sigma2", "kl", "kl_dim_0", "kl_dim_1"]].round(3).to_string(index=False))

# %% Where is the transition, and how sure are we?
result = run.analyze()
t = result.transitions[0]  # a typed record; result.to_json() is analysis.json
low, high = t.ci
print(
    f"sigma2_c = {t.sigma2_c:.3g} [{low:.3g}, {high:.3g}] ({t.verdict}); "
    f"theory lambda_max / beta = {t.theory_sigma2_c:.3g}"
)

# %% Figures as matplotlib Figure objects (inline in a notebook); or
# run.plot(save="png") writes them to RUN_DIR/figures/.
figures = run.plot()
print(sorted(figures))

# %% Later, or in another session: the same run, from its directory.
again = pv.open_run(out)
assert again.metrics.equals(run.metrics)
