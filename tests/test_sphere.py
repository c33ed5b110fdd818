"""The hyperspherical latent (issue 16 item 4): the power-spherical posterior's
closed forms against sampling and quadrature, its reparameterised gradient, and sweeps
that train it, analyse it and resume."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammainc

from phasevae.analysis import curves as analysis
from phasevae.engine import sweep as sweep_mod
from phasevae.engine.step import Point, Static, Trainer, active_directions
from phasevae.models.sphere import (
    GAMMA_NOISE,
    SphereVAE,
    gamma,
    kappa_to_spread,
    kl_to_uniform,
    log_area,
    log_density,
    noise_size,
    sample,
)
from phasevae.spec import SpecError
from tests.test_train import assert_resume_is_uninterrupted

DRAWS = 100_000


def _normals(n, size, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, size))


def _draws(m, kappa, n=DRAWS):
    noise = _normals(n, noise_size(len(m)))
    return jax.jit(jax.vmap(sample, (0, None, None)))(noise, jnp.asarray(m), kappa)


@pytest.mark.parametrize("k, kappa", [(2, 0.7), (3, 2.5), (8, 10.0), (5, 0.0)])
def test_kl_and_mean_against_sampling(k, kappa):
    m = jnp.ones(k) / math.sqrt(k)
    z = _draws(m, kappa)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    # E[m^T z] = kappa / (kappa + k - 1); its Monte Carlo error is < 1e-2 here
    np.testing.assert_allclose(np.mean(z @ m), kappa / (kappa + k - 1), atol=1e-2)
    # KL = E_q[ln q(z)] + ln |S^{k-1}|
    log_q = jax.vmap(log_density, (0, None, None))(z, m, kappa)
    mc = float(np.mean(log_q)) + log_area(k)
    assert float(kl_to_uniform(kappa, k)) == pytest.approx(mc, abs=0.01)
    assert kl_to_uniform(0.0, k) == pytest.approx(0.0, abs=1e-5)


def test_the_density_integrates_to_one_on_the_circle():
    theta = np.linspace(0.0, 2 * np.pi, 100_001)[:-1]
    z = jnp.asarray(np.stack([np.cos(theta), np.sin(theta)], axis=1))
    m = jnp.asarray([0.6, 0.8])
    for kappa in (0.0, 1.0, 30.0):
        p = np.exp(np.asarray(jax.vmap(log_density, (0, None, None))(z, m, kappa)))
        assert p.mean() * 2 * np.pi == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("a", [0.5, 1.0, 4.0, 60.0])
def test_the_loop_free_gamma_draws_have_the_right_law_and_gradient(a):
    noise = _normals(DRAWS, GAMMA_NOISE, seed=1)
    g = np.asarray(jax.jit(jax.vmap(gamma, (0, None)))(noise, a))
    se = math.sqrt(a / DRAWS)
    assert abs(g.mean() - a) < 5 * se and g.var() == pytest.approx(a, rel=0.03)
    # the empirical CDF against the regularised incomplete gamma function, within 5
    # standard errors of a proportion
    for x in a * np.array([0.05, 0.3, 1.0, 2.0]):
        p = float(gammainc(a, x))
        assert np.mean(g <= x) == pytest.approx(p, abs=5 * math.sqrt(p / DRAWS))
    # pathwise: d E[g] / d a = 1
    dg = jax.jit(jax.vmap(jax.grad(gamma, 1), (0, None)))(noise, a)
    assert float(np.mean(dg)) == pytest.approx(1.0, abs=0.02)


@pytest.mark.slow
def test_the_gradient_reaches_the_concentration():
    """d E[m^T z] / d kappa = (k - 1) / (kappa + k - 1)^2, pathwise through the
    reparameterised draw."""
    k, kappa = 4, 2.0
    m = jnp.ones(k) / 2.0
    noise = _normals(DRAWS, noise_size(k), seed=3)

    def mean_t(c):
        return jnp.mean(jax.vmap(sample, (0, None, None))(noise, m, c) @ m)

    got = float(jax.grad(mean_t)(kappa))
    assert got == pytest.approx((k - 1) / (kappa + k - 1) ** 2, rel=0.05)


@pytest.mark.slow
def test_the_information_estimate_on_known_cases():
    """Two antipodal clusters of sharp posteriors carry ln 2 nats; the uniform
    posterior none; compiled and eager agree at n = 512 (a nested-vmap form did not,
    under XLA's CPU fusion)."""
    k, n = 3, 512
    vae = SphereVAE(4, k, (), ())
    m = jnp.zeros((n, k)).at[:, 0].set(jnp.where(jnp.arange(n) < n // 2, 1.0, -1.0))
    noise = _normals(n, noise_size(k))

    def mi(kappa):
        spread = jnp.exp(kappa_to_spread(jnp.full((n,), kappa), k))
        return vae.latent_mi(m, jnp.repeat(spread[:, None], k, axis=1), noise)

    assert float(jax.jit(mi)(200.0)) == pytest.approx(math.log(2), abs=1e-3)
    assert float(jax.jit(mi)(0.0)) == pytest.approx(0.0, abs=1e-5)
    rng = np.random.default_rng(0)
    mixed = jnp.asarray(rng.normal(size=(n, k)), jnp.float32)
    mixed = mixed / jnp.linalg.norm(mixed, axis=1, keepdims=True)
    spread = jnp.exp(kappa_to_spread(jnp.asarray(rng.uniform(1, 20, n)), k))
    var = jnp.repeat(spread[:, None], k, axis=1).astype(jnp.float32)
    eager = float(vae.latent_mi(mixed, var, noise))
    assert float(jax.jit(vae.latent_mi)(mixed, var, noise)) == pytest.approx(
        eager, abs=1e-4
    )
    assert 0 < eager < math.log(n)


def test_active_directions_count_the_spread_of_the_posterior_means():
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(4000, 3)) * [1.0, 1.0, 0.0]
    line = rng.normal(size=(4000, 3)) * [0.0, 0.0, 2.0]
    assert float(active_directions(jnp.asarray(flat))) == pytest.approx(2.0, rel=0.02)
    assert float(active_directions(jnp.asarray(line))) == pytest.approx(1.0, rel=1e-6)
    assert float(active_directions(jnp.asarray(line * 0.01))) == 0.0  # too small
    assert float(active_directions(jnp.ones((10, 3)))) == 0.0


def test_a_fixed_concentration_makes_the_kl_a_constant():
    trainer = Trainer(Static(4, 3, (8,), (8,), 16, 1, latent="sphere", concentration=5))
    point = Point.one(sigma2=1.0, beta=1.0, learning_rate=1e-3, seed=0)
    params = trainer._init_one(point).params
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)), jnp.float32)
    noise = trainer.noise(jax.random.key(0), 16)
    t = jax.jit(trainer._terms)(params, point, x, noise)
    kl = np.asarray(t.kl_dim)
    np.testing.assert_allclose(kl[:, 0], float(kl_to_uniform(5.0, 3)), rtol=1e-4)
    assert np.all(kl[:, 1:] == 0)


SPHERE = {"latent": "sphere", "latent_dim": 2, "encoder": [8], "decoder": [8]}


@pytest.mark.slow
def test_a_sphere_sweep_trains_analyses_and_resumes(tmp_path, tiny_spec, monkeypatch):
    spec = tiny_spec(
        model=SPHERE,
        train={"steps": 60, "eval_every": 20},
        grid={"sigma2": [0.3, 1.0, 3.0, 10.0, 30.0], "beta": [1.0]},
    )
    full = sweep_mod.run_sweep(spec, tmp_path / "full")
    assert full.meta.compiles == 1
    m = full.metrics
    assert np.all(m["kl_dim_1"] == 0) and np.all(np.isfinite(m[["kl", "mi"]]))
    assert m["collapse_eigenvalue"].isna().all()  # the probe is the Gaussian MLP's
    assert m["active_directions"].between(0, 2).all()
    last = m[m["step"] == 60].sort_values("sigma2")
    assert last["kl"].iloc[0] > 10 * last["kl"].iloc[-1]  # it collapses at large s2
    (t,) = analysis.analyze_run(tmp_path / "full").transitions
    info = t.information
    assert info["mi_at_min_sigma2"] > info["mi_at_max_sigma2"]
    assert info["directions_at_min_sigma2"] > info["directions_at_max_sigma2"]

    assert_resume_is_uninterrupted(spec, tmp_path / "cut", m, monkeypatch)


@pytest.mark.parametrize(
    "model, grid, message",
    [
        ({"latent": "sphere", "latent_dim": 1}, {}, "latent_dim >= 2"),
        (
            {
                "latent": "sphere",
                "kind": "conv",
                "encoder": [64, 32],
                "decoder": [32, 64],
            },
            {},
            "built on the MLP",
        ),
        ({"latent": "sphere", "skip": "plain"}, {}, "built on the MLP"),
        ({"latent": "sphere"}, {"skip": ["none", "gated"]}, "built on the MLP"),
        ({"concentration": 3.0}, {}, 'applies to model.latent = "sphere"'),
        ({"latent": "sphere", "concentration": 1e9}, {}, "too large"),
        ({"latent": "sphere", "concentration": -1.0}, {}, "impossible"),
        ({"latent": "torus"}, {}, "choose one of"),
    ],
)
def test_impossible_sphere_specs_are_refused(tiny_spec, model, grid, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(model=model, grid=grid)
