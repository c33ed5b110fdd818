"""Shared fixtures: strict JAX settings and tiny specs that compile in seconds."""

import copy
import os
import sys

import jax
import pytest

from phasevae.spec import spec_from_dict

jax.config.update("jax_numpy_rank_promotion", "raise")
# no persistent compile cache in the tests (and their subprocesses): every test
# compiles what it checks; the cache's own test turns it on in its subprocesses
os.environ["PHASEVAE_COMPILE_CACHE"] = "0"
# start the backend now, on one CPU device, whatever the order of the tests: the API
# splits the CPU into devices when it is the first to start JAX (tests of the split
# and of several devices run in subprocesses)
jax.devices()

TINY = {
    "data": {
        "source": "synthetic",
        "eigenvalues": [4.0, 1.0, 0.25, 0.05],
        "samples": 512,
        "eval_samples": 256,
    },
    "model": {"latent_dim": 2, "encoder": [8], "decoder": [8]},
    "train": {"steps": 20, "batch_size": 16, "eval_every": 10, "learning_rate": 1e-2},
    "grid": {"sigma2": [0.5, 8.0], "beta": [0.5, 1.0], "seeds": [0]},
}


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every figure a test left open (``Run.plot()`` returns open figures): a
    worker that runs many tests would otherwise pass matplotlib's limit of 20 open
    figures, whose warning the suite turns into an error."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def tiny_dict(**sections):
    """TINY with keys replaced, per section: tiny_dict(train={"steps": 30})."""
    raw = copy.deepcopy(TINY)
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return raw


@pytest.fixture
def tiny_spec():
    return lambda **sections: spec_from_dict(tiny_dict(**sections), "tiny")
