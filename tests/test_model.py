import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasevae.model import VAE, example_terms, kl_per_dim, mutual_information, objective


def numpy_mlp(layers, x):
    """Dense layers as the model stores them (kernel (out, in), bias), ReLU between."""
    for i, layer in enumerate(layers):
        x = x @ np.asarray(layer["kernel"], np.float64).T + np.asarray(layer["bias"])
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def test_loss_of_one_example_matches_a_hand_computation():
    n, k, s2, beta = 5, 2, 0.7, 1.8
    model = VAE(n, k, (6, 4), (3,))
    params = model.init(jax.random.key(0), jnp.zeros(n), jnp.zeros(k))
    x = np.random.default_rng(0).normal(size=n).astype(np.float32)
    eps = np.array([0.3, -1.2], np.float32)

    terms = example_terms(model, params, jnp.asarray(x), jnp.asarray(eps), s2)
    loss = objective(terms, beta)

    p = params["params"]
    enc = [p["enc"][f"Dense_{i}"] for i in range(3)]
    dec = [p["dec"][f"Dense_{i}"] for i in range(2)]
    h = numpy_mlp(enc, x)
    mu, logvar = h[:k], h[k:]
    z = mu + np.exp(0.5 * logvar) * eps
    xhat = numpy_mlp(dec, z)
    sq = np.sum((x - xhat) ** 2)
    recon = sq / (2 * s2) + n / 2 * math.log(2 * math.pi * s2)
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar)

    np.testing.assert_allclose(terms.sq_err, sq, rtol=1e-5)
    np.testing.assert_allclose(terms.recon, recon, rtol=1e-5)
    np.testing.assert_allclose(terms.kl_dim, kl, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(terms.var_dim, np.exp(logvar), rtol=1e-5)
    np.testing.assert_allclose(loss, recon + beta * kl.sum(), rtol=1e-5)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    assert np.allclose(kl_per_dim(jnp.zeros(3), jnp.zeros(3)), 0.0)
    # KL(N(1, e^-1) || N(0,1)) = 1/2 (1 + e^-1 - 1 + 1)
    val = kl_per_dim(jnp.array([1.0]), jnp.array([-1.0]))
    assert float(val[0]) == pytest.approx(0.5 * (1 + math.exp(-1)), rel=1e-6)


def test_no_hidden_layers_is_linear():
    model = VAE(3, 2, (), ())
    params = model.init(jax.random.key(1), jnp.zeros(3), jnp.zeros(2))
    z1, z2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
    f = lambda z: model.apply(params, z, method=VAE.decode)  # noqa: E731
    np.testing.assert_allclose(
        f(z1 + z2) - f(jnp.zeros(2)),
        (f(z1) - f(jnp.zeros(2))) + (f(z2) - f(jnp.zeros(2))),
        rtol=1e-5,
        atol=1e-6,
    )


def test_mutual_information_estimate():
    rng = np.random.default_rng(0)
    n, k = 400, 2
    eps = jnp.asarray(rng.standard_normal((n, k)), jnp.float32)
    # q(z|x) = prior for every x: z says nothing about x
    zero = mutual_information(jnp.zeros((n, k)), jnp.ones((n, k)), eps)
    assert abs(float(zero)) < 0.02
    # q(z|x) = N(x, v), x ~ N(0, 1): z = x + noise, I = k/2 ln(1 + 1/v)
    v = 0.25
    mu = jnp.asarray(rng.standard_normal((n, k)), jnp.float32)
    est = mutual_information(mu, jnp.full((n, k), v), eps)
    assert float(est) == pytest.approx(k / 2 * math.log(1 + 1 / v), rel=0.1)
    # never above its ceiling ln n
    sharp = mutual_information(mu, jnp.full((n, k), 1e-6), eps)
    assert float(sharp) <= math.log(n) + 1e-4
