import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasevae.models.vae import (
    VAE,
    collapse_eigenvalue,
    collapse_grams,
    example_terms,
    kl_per_dim,
    mutual_information,
    objective,
)


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


def _correlated_data(n_dim, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(n_dim, n_dim))
    return (rng.normal(size=(n, n_dim)) @ mix.T + 3.0).astype(np.float32)


def test_collapse_eigenvalue_of_the_linear_vae_is_lambda_max():
    x = _correlated_data(6)
    top = np.linalg.eigvalsh(np.cov(x.T, bias=True))[-1]
    model = VAE(6, 2, (), ())
    params = model.init(jax.random.key(0), jnp.zeros(6), jnp.zeros(2))
    got = float(collapse_eigenvalue(*collapse_grams(model, params, jnp.asarray(x))))
    assert got == pytest.approx(top, rel=1e-4)


def collapsed(model, params, x, likelihood="gaussian", target=None):
    """The same network with its latent switched off: mean head and decoder z-weights
    0, encoder variance 1, decoder output ``target`` or else the natural parameter
    of the data mean (the mean itself for the Gaussian)."""
    p = jax.tree.map(lambda a: a, params["params"])
    k = model.latent_dim
    head = p["enc"][f"Dense_{len(model.encoder)}"]
    head["kernel"] = jnp.zeros_like(head["kernel"])
    head["bias"] = jnp.zeros_like(head["bias"])
    p["dec"]["Dense_0"]["kernel"] = jnp.zeros_like(p["dec"]["Dense_0"]["kernel"])
    out = p["dec"][f"Dense_{len(model.decoder)}"]
    f0 = model.apply({"params": p}, jnp.zeros(k), method=lambda mod, z: mod.dec(z))
    # what the decoder's z path must output: the mean of x less an autoregressive
    # head's prediction (none without a context)
    ahead = jax.vmap(lambda xi: model.apply({"params": p}, xi, method=VAE.predicted))
    m = jnp.mean(x - ahead(x), axis=0)
    if likelihood == "bernoulli":
        m = jnp.log(m / (1 - m))
    elif likelihood != "gaussian":  # the count likelihoods' log-mean, the
        m = jnp.log(m)  # categorical's logits (softmax(ln m) = m per position)
    out["bias"] = out["bias"] + (m if target is None else target) - f0
    return {"params": p}


def biased(params):
    """``params`` with every bias moved off 0, as a trained network's are."""
    return jax.tree.map(
        lambda a: (
            a + 0.3 * jax.random.normal(jax.random.key(4), a.shape)
            if a.ndim == 1
            else a
        ),
        params,
    )


def collapsed_hessians(
    model, params, x, lam, likelihood="gaussian", dispersion=1.0, categories=0
):
    """{f: the float64 Hessian of the loss at the collapsed state ``params``, in the
    mean head's first row (and bias) and the decoder's z-column, at beta sigma^2 =
    f lambda_c} for f = 0.97, 1.03 (sigma^2 = 1). Noise eps = +-1 has the first two
    moments of N(0, 1), all that a second-order expansion sees. A ``dispersion`` of
    one r per feature is learned: the Hessian's last N rows and columns are then
    in ln r."""
    p = params["params"]
    head = f"Dense_{len(model.encoder)}"
    d_h = p["enc"][head]["kernel"].shape[1]
    d_x = p["dec"]["Dense_0"]["bias"].shape[0]
    learned = np.ndim(dispersion) == 1

    def loss(theta, beta_sigma2, p, x):
        w, w0, a = theta[:d_h], theta[d_h], theta[d_h + 1 : d_h + 1 + d_x]
        r = (
            jnp.exp(jnp.log(dispersion) + theta[d_h + 1 + d_x :])
            if learned
            else dispersion
        )
        kern = p["enc"][head]["kernel"].at[0].set(w)
        bias = p["enc"][head]["bias"].at[0].set(w0)
        dec0 = {**p["dec"]["Dense_0"], "kernel": a[:, None]}
        q = {
            "params": {
                **p,
                "enc": {**p["enc"], head: {"kernel": kern, "bias": bias}},
                "dec": {**p["dec"], "Dense_0": dec0},
            }
        }
        total = 0.0
        for eps in (1.0, -1.0):
            terms = jax.vmap(
                example_terms, (None, None, 0, None, None, None, None, None)
            )(model, q, x, jnp.array([eps]), 1.0, likelihood, r, categories)
            total += jnp.mean(objective(terms, beta_sigma2)) / 2
        return total

    n_theta = d_h + 1 + d_x + (np.size(dispersion) if learned else 0)
    with jax.enable_x64(True):  # dead units leave flat directions: no float32 noise
        p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), p)
        x = jnp.asarray(x, jnp.float64)
        theta = jnp.zeros(n_theta, jnp.float64)
        return {
            f: np.asarray(jax.hessian(loss)(theta, f * lam, p, x)) for f in (0.97, 1.03)
        }


def assert_turns_at_lambda_c(hessians):
    """Negative curvature below lambda_c, none above it."""
    for factor, negative in ((0.97, True), (1.03, False)):
        eig = np.linalg.eigvalsh(hessians[factor])
        assert (eig[0] < -1e-9 * eig[-1]) == negative, (factor, eig[0], eig[-1])


@pytest.mark.slow
@pytest.mark.parametrize("widths", [((16, 8), (5, 12)), ((32,), (32,))])
def test_collapse_eigenvalue_is_where_the_hessian_of_the_collapsed_state_turns(
    widths,
):
    """Brute force: the Hessian of the loss at the collapsed state, in the mean head's
    row and the decoder's z-column, has a negative eigenvalue exactly when
    beta sigma^2 < lambda_c. Noise eps = +-1 has the first two moments of N(0, 1),
    all that a second-order expansion sees, with no sampling error."""
    enc, dec = widths
    x = jnp.asarray(_correlated_data(6, n=500))
    model = VAE(6, 1, enc, dec)
    params = model.init(jax.random.key(3), jnp.zeros(6), jnp.zeros(1))
    params = biased(params)
    params = collapsed(model, params, x)
    lam = float(collapse_eigenvalue(*collapse_grams(model, params, x)))
    assert lam > 0
    assert_turns_at_lambda_c(collapsed_hessians(model, params, x, lam))
