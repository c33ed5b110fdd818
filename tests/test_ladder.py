"""The ladder latent (phasevae.models.ladder): its top-down merge and per-layer KLs
against closed forms and Monte Carlo, the derived second-order form of the top
layer's collapse against the model's own float64 Hessian, trained sweeps, and its
spec checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasevae.analysis import curves as analysis
from phasevae.data import load_for_model
from phasevae.engine import sweep as sweep_mod
from phasevae.models.ladder import LadderVAE
from phasevae.models.vae import example_terms, objective
from phasevae.spec import SpecError
from tests.test_train import (
    assert_resume_is_uninterrupted,
    assert_vmapped_equals_alone,
)


def _linear_ladder(top_skip=False):
    model = LadderVAE(1, 1, 1, (), (), top_skip)
    params = model.init(jax.random.key(0), jnp.zeros(1), jnp.zeros(2))
    return model, params


def _with(params, enc_kernel, enc_bias, down, dec):
    """The linear ladder's parameters: encoder rows (mu_hat, ln s_hat^2, mu2,
    ln s2^2) = kernel x + bias; m(z2) = down z2; f(z1) = dec z1."""
    p = params["params"]
    return {
        "params": {
            **p,
            "enc": {"Dense_0": {"kernel": enc_kernel, "bias": enc_bias}},
            "down": {"kernel": jnp.reshape(down, (1, 1)), "bias": jnp.zeros(1)},
            "dec": {
                "Dense_0": {"kernel": jnp.reshape(dec, (1, 1)), "bias": jnp.zeros(1)}
            },
        }
    }


def test_the_merge_is_the_precision_weighted_posterior_and_the_kls_are_each_layers():
    model, params = _linear_ladder()
    mu_hat, s_hat2, mu2, s22, b = 0.7, 0.5, -0.4, 0.3, 1.5
    x = 2.0
    p = _with(
        params,
        jnp.array([[mu_hat / x], [0.0], [mu2 / x], [0.0]]),
        jnp.array([0.0, math.log(s_hat2), 0.0, math.log(s22)]),
        b,
        1.0,
    )
    eps = jnp.array([0.3, -1.1])
    mu, logvar, xhat = model.apply(p, jnp.array([x]), eps)
    z2 = mu2 + math.sqrt(s22) * eps[1]
    m = b * z2
    v = 1 / (1 / s_hat2 + 1)  # the product of N(mu_hat, s_hat^2) and N(m, 1)
    mu1 = v * (mu_hat / s_hat2 + m)
    np.testing.assert_allclose(mu, [mu1 - m, mu2], rtol=1e-5)
    np.testing.assert_allclose(np.exp(logvar), [v, s22], rtol=1e-5)
    np.testing.assert_allclose(xhat, [mu1 + math.sqrt(v) * eps[0]], rtol=1e-5)
    # the per-dim KLs are KL(q(z1|x,z2) || N(m(z2), 1)) and KL(q(z2|x) || N(0, 1)),
    # against Monte Carlo
    kl = np.asarray(example_terms(model, p, jnp.array([x]), eps, 1.0).kl_dim)
    rng = np.random.default_rng(0)
    z1 = mu1 + math.sqrt(v) * rng.normal(size=400_000)
    mc1 = np.mean(-0.5 * (z1 - mu1) ** 2 / v - 0.5 * math.log(v) + 0.5 * (z1 - m) ** 2)
    z = mu2 + math.sqrt(s22) * rng.normal(size=400_000)
    mc2 = np.mean(-0.5 * (z - mu2) ** 2 / s22 - 0.5 * math.log(s22) + 0.5 * z**2)
    np.testing.assert_allclose(kl, [mc1, mc2], atol=5e-3)


@pytest.mark.parametrize("kappa", [0.8, 1.25])
def test_the_top_layers_collapse_has_the_derived_second_order_form(kappa):
    """docs/science.md, 'Hierarchical latents': with layer 1 of the linear ladder at
    its one-layer optimum (A^2 = lambda - beta sigma^2, c = A / lambda, v = beta
    sigma^2 / lambda) and the top layer collapsed, the objective's Hessian in the
    top layer's encoder weight w and top-down weight B is [[kappa beta lambda,
    -beta A], [-beta A, beta A^2 / lambda]]: indefinite iff kappa < 1. The
    expectation over the noise is exact (Gauss-Hermite, the loss is quadratic in
    it); the data are +-sqrt(lambda)."""
    lam, sigma2, beta = 3.0, 0.8, 1.25
    a = math.sqrt(lam - beta * sigma2)
    c, v = a / lam, beta * sigma2 / lam
    s_hat2 = v / (1 - v)  # sigmoid(ln s_hat^2) = v
    model, params = _linear_ladder()
    nodes, weights = np.polynomial.hermite_e.hermegauss(3)
    weights = weights / weights.sum()
    e1, e2 = (g.ravel() for g in np.meshgrid(nodes, nodes, indexing="ij"))
    wq = np.outer(weights, weights).ravel()
    with jax.enable_x64(True):
        xs = jnp.array([[math.sqrt(lam)], [-math.sqrt(lam)]])
        eps = jnp.stack([jnp.asarray(e1), jnp.asarray(e2)], axis=-1)

        def loss(theta):
            w, b = theta
            kernel = jnp.stack([c / (1 - v), 0.0, w, 0.0])[:, None]
            bias = jnp.array([0.0, math.log(s_hat2), 0.0, 0.0])
            p = _with(params, kernel, bias, b, a)

            def one(x, e):
                t = example_terms(model, p, x, e, sigma2)
                return objective(t, beta, jnp.array([1.0, kappa]))

            per = jax.vmap(lambda x: jax.vmap(lambda e: one(x, e))(eps))(xs)
            return jnp.mean(per @ jnp.asarray(wq))

        hessian = np.asarray(jax.jit(jax.hessian(loss))(jnp.zeros(2)))
    derived = np.array(
        [[kappa * beta * lam, -beta * a], [-beta * a, beta * a**2 / lam]]
    )
    np.testing.assert_allclose(hessian, derived, rtol=1e-6, atol=1e-9)
    assert (np.linalg.eigvalsh(hessian)[0] < 0) == (kappa < 1)


LADDER = {
    "latent": "ladder",
    "latent_dim": 1,
    "top_dim": 1,
    "encoder": [],
    "decoder": [],
}


def test_the_information_goes_to_the_layer_of_cheapest_kl(tmp_path, tiny_spec):
    """kappa = 0.5: the top layer takes the information and keeps it beyond the
    one-layer VAE's lambda_max / beta (its KL costs half); kappa = 2: the top layer
    is dead everywhere and layer 1 collapses at lambda_max / beta."""
    lam = 4.0
    spec = tiny_spec(
        data={"eigenvalues": [lam, 1.0, 0.5], "samples": 1024},
        model=LADDER,
        train={
            "steps": 3000,
            "eval_every": 3000,
            "batch_size": 128,
            "learning_rate": 0.01,
        },
        grid={
            "sigma2": [0.5 * lam, 1.4 * lam],
            "beta": [1.0],
            "top_kl_weight": [0.5, 2.0],
        },
    )
    m = sweep_mod.run_sweep(spec, tmp_path / "run").metrics
    m = m.set_index(["top_kl_weight", "sigma2"])
    half, double = m.loc[0.5], m.loc[2.0]
    assert half.loc[1.4 * lam, "kl_layer_1"] > 0.02  # alive past lambda_max / beta
    assert half.loc[0.5 * lam, "kl_layer_1"] > 2 * half.loc[0.5 * lam, "kl_layer_0"]
    assert (double["kl_layer_1"] < 0.01).all()
    assert double.loc[0.5 * lam, "kl_layer_0"] > 0.1
    assert double.loc[1.4 * lam, "kl_layer_0"] < 0.01


@pytest.mark.slow
def test_a_ladder_sweep_is_vmapped_exactly_analysed_per_layer_and_resumes(
    tmp_path, tiny_spec, monkeypatch
):
    spec = tiny_spec(
        model={
            **LADDER,
            "top_dim": 2,
            "encoder": [8],
            "decoder": [8],
            "top_skip": True,
        },
        train={"steps": 60, "eval_every": 20},
        grid={
            "sigma2": [0.3, 1.0, 3.0, 10.0, 30.0],
            "beta": [1.0],
            "top_kl_weight": [0.5, 1.0],
        },
    )
    assert_vmapped_equals_alone(spec, load_for_model(spec))
    full = sweep_mod.run_sweep(spec, tmp_path / "full")
    m = full.metrics
    assert full.meta.compiles == 1
    kl_dims = m[["kl_dim_0", "kl_dim_1", "kl_dim_2"]].sum(axis=1)
    np.testing.assert_allclose(m["kl_layer_0"] + m["kl_layer_1"], kl_dims, rtol=1e-5)
    np.testing.assert_allclose(m["kl"], kl_dims, rtol=1e-5)
    assert np.all(np.isfinite(m[["decoder_gain_2", "mi"]]))  # the skip reads z2
    for t in analysis.analyze_run(tmp_path / "full").transitions:
        layers = t.information["layers"]
        assert [layer["layer"] for layer in layers] == [0, 1]

    assert_resume_is_uninterrupted(spec, tmp_path / "cut", m, monkeypatch)


@pytest.mark.parametrize(
    "model, grid, message",
    [
        ({"latent": "ladder"}, {}, "needs model.top_dim"),
        (
            {**LADDER, "kind": "conv", "encoder": [64, 32], "decoder": [32, 64]},
            {},
            "MLP",
        ),
        ({**LADDER, "likelihood": "poisson"}, {}, '"gaussian" or "bernoulli"'),
        ({**LADDER, "context": 1}, {}, "no autoregressive head"),
        ({"top_dim": 2}, {}, 'apply to model.latent = "ladder"'),
        ({"top_skip": True}, {}, 'apply to model.latent = "ladder"'),
        ({}, {"top_kl_weight": [0.5]}, 'apply to model.latent = "ladder"'),
        (LADDER, {"top_kl_weight": [-1.0]}, "impossible"),
    ],
)
def test_impossible_ladder_specs_are_refused(tiny_spec, model, grid, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(model=model, grid=grid)
