"""The categorical latent (phasevae.models.discrete): its KL, entropies and draws
against closed forms, the relaxation's factor rho on the criterion against the
linearised training dynamics, sweeps of it, and its spec checks."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasevae.analysis import curves as analysis
from phasevae.data import load_for_model
from phasevae.data.relaxation import latent_factor, moments
from phasevae.engine import sweep as sweep_mod
from phasevae.engine.step import Point, Static, Trainer
from phasevae.models.discrete import code_kl, entropy, relaxed, usage_entropy
from phasevae.spec import SpecError
from tests.test_train import (
    assert_resume_is_uninterrupted,
    assert_vmapped_equals_alone,
)


def test_the_kl_and_entropies_match_their_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 2, 4)) * 2.0
    q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    kl = np.sum(q * np.log(4 * q), axis=-1)
    np.testing.assert_allclose(code_kl(jnp.asarray(logits)), kl, rtol=1e-5)
    h = -np.sum(q * np.log(q), axis=-1)
    np.testing.assert_allclose(entropy(jnp.asarray(logits)), h, rtol=1e-5)
    assert np.allclose(h + kl, math.log(4))  # H + KL to the uniform = ln K
    mean = q.mean(axis=0)
    usage = -np.sum(mean * np.log(mean), axis=-1)
    np.testing.assert_allclose(usage_entropy(jnp.asarray(logits)), usage, rtol=1e-5)
    # the prior: KL 0, entropy ln K; a one-hot posterior: KL ln K
    assert float(code_kl(jnp.zeros((1, 4)))[0]) == pytest.approx(0.0, abs=1e-6)
    sharp = jnp.asarray([[60.0, 0.0, 0.0, 0.0]])
    assert float(code_kl(sharp)[0]) == pytest.approx(math.log(4), rel=1e-5)


def test_draws_follow_the_posterior_and_straight_through_is_one_hot():
    logits = jnp.asarray([[1.0, 0.0, -1.0]])
    g = jax.random.gumbel(jax.random.key(0), (200_000, 1, 3))
    hard = relaxed(logits[None], g, 0.5, hard=True)
    assert set(np.unique(np.asarray(hard))) == {0.0, 1.0}  # exactly one-hot
    q = np.asarray(jax.nn.softmax(logits[0]))
    freq = np.asarray(hard[:, 0].mean(axis=0))
    np.testing.assert_allclose(freq, q, atol=4 * math.sqrt(0.25 / 200_000))

    # straight-through's gradient is the relaxation's
    def value(hard_draw):
        def f(lg):
            return jnp.sum(relaxed(lg[None], g[:8], 0.5, hard_draw) @ jnp.arange(3.0))

        return f

    np.testing.assert_allclose(
        jax.grad(value(True))(logits), jax.grad(value(False))(logits), rtol=1e-6
    )


def test_the_relaxation_moments_match_the_closed_form_for_two_values():
    # K = 2, tau = 1: y_1 = sigmoid(L), L logistic; E[y_1 y_2] = int sigmoid'^2 = 1/6,
    # so alpha = 2 E[y_1 y_2] = 1/3, gamma = 1/6, rho = 4/3 (relaxed), 2/3 (ST)
    alpha, gamma = moments(2, 1.0)
    assert alpha == pytest.approx(1 / 3, rel=2e-3)
    assert gamma == pytest.approx(1 / 6, rel=2e-3)
    assert latent_factor("categorical", 2, "gumbel", 1.0) == pytest.approx(4 / 3, 3e-3)
    rho_st = latent_factor("categorical", 2, "straight_through", 1.0)
    assert rho_st == pytest.approx(2 / 3, rel=3e-3)
    # as tau -> 0 the draw is exact and both factors tend to 1
    for estimator in ("gumbel", "straight_through"):
        assert latent_factor("categorical", 3, estimator, 0.1) == pytest.approx(1, 0.1)
    assert latent_factor("gaussian", 0, "gumbel", 1.0) == 1.0


def _collapse_field(x, g, sigma2, beta, tau, hard):
    """The gradient field of a linear categorical VAE (logits W x, decoder
    A (y - 1/K), the optimal bias at collapse), its training objective averaged over
    the examples x and the draws g, as a function of the flat (W, A). With ``hard``
    (straight-through) A's gradient is the expectation over the exact draws, whose
    probabilities are softmax(W x) (Gumbel-max): a fixed set of one-hot draws is a
    step function of W, and only fresh draws at every step make it smooth."""
    n_feat, k = x.shape[1], g.shape[-1]
    centred = jnp.eye(k) - 1.0 / k  # row c: the one-hot e_c less 1/K

    def split(theta):
        w, a = theta[: k * n_feat].reshape(k, n_feat), theta[k * n_feat :]
        return w, a.reshape(n_feat, k)

    def loss(theta):
        w, a = split(theta)
        logits = x @ w.T  # (n, K)
        y = relaxed(logits[:, None, :], g[None], tau, hard) - 1.0 / k  # (n, S, K)
        err = x[:, None, :] - y @ a.T
        recon = jnp.mean(jnp.sum(err**2, axis=-1)) / (2 * sigma2)
        return recon + beta * jnp.mean(code_kl(logits))

    def exact(theta):  # the expected reconstruction over exact draws
        w, a = split(theta)
        q = jax.nn.softmax(x @ w.T, axis=-1)  # (n, K)
        err = x[:, None, :] - (centred @ a.T)[None]  # (n, K, N)
        return jnp.mean(jnp.sum(q * jnp.sum(err**2, axis=-1), axis=-1)) / (2 * sigma2)

    def field(theta):
        grad = jax.grad(loss)(theta)
        if not hard:
            return grad
        exact_grad = jax.grad(exact)(theta)
        return jnp.concatenate([grad[: k * n_feat], exact_grad[k * n_feat :]])

    return field


@pytest.mark.parametrize("estimator", ["gumbel", "straight_through"])
def test_collapse_turns_unstable_at_rho_lambda_max(estimator):
    """The derivation of rho (docs/science.md, 'Discrete latents'): linearise the
    training dynamics at collapse and find where an eigenvalue crosses 0. With the
    draws symmetrised over the K! orderings of the values, the sample moments are
    exact multiples of P and the crossing is at rho-hat lambda_max exactly, rho-hat
    from the same draws' Q."""
    k, tau, lam = 3, 0.7, np.array([2.0, 1.0, 0.5])
    with jax.enable_x64(True):
        x = np.concatenate([np.diag(np.sqrt(3 * lam)), -np.diag(np.sqrt(3 * lam))])
        raw = np.random.default_rng(1).gumbel(size=(2000, k))
        g = np.concatenate([raw[:, list(p)] for p in itertools.permutations(range(k))])
        y = np.exp(g / tau) / np.exp(g / tau).sum(-1, keepdims=True)
        q = np.mean(np.sum(y**2, axis=-1))
        alpha, gamma = (1 - q) / ((k - 1) * tau), (k * q - 1) / (k * (k - 1))
        rho = k * alpha if estimator == "straight_through" else k * alpha**2 / gamma
        hard = estimator == "straight_through"

        def growth(beta):  # the largest real part of the linearised flow's rates
            field = _collapse_field(
                jnp.asarray(x), jnp.asarray(g), 1.0, beta, tau, hard
            )
            jac = jax.jacfwd(field)(jnp.zeros(2 * k * 3))
            return float(np.max(np.linalg.eigvals(-np.asarray(jac)).real))

        assert growth(0.97 * rho * lam[0]) > 1e-4
        assert growth(1.03 * rho * lam[0]) < 1e-9
    assert rho == pytest.approx(
        latent_factor("categorical", k, estimator, tau), rel=0.06
    )


CATEGORICAL = {
    "latent": "categorical",
    "latent_categories": 3,
    "latent_dim": 1,
    "encoder": [],
    "decoder": [],
}


@pytest.mark.parametrize("estimator", ["gumbel", "straight_through"])
def test_a_linear_categorical_vae_collapses_on_the_side_rho_predicts(
    tmp_path, tiny_spec, estimator
):
    rho = latent_factor("categorical", 3, estimator, 1.0)
    lam = 4.0
    spec = tiny_spec(
        data={"eigenvalues": [lam, 1.0, 0.5], "samples": 1024},
        model={**CATEGORICAL, "estimator": estimator},
        train={
            "steps": 1500,
            "eval_every": 1500,
            "batch_size": 128,
            "learning_rate": 0.01,
        },
        grid={"sigma2": [0.6 * rho * lam, 1.6 * rho * lam], "beta": [1.0]},
    )
    result = sweep_mod.run_sweep(spec, tmp_path / estimator)
    assert result.meta.spectrum["lambda_max"] == pytest.approx(rho * lam, rel=0.02)
    kl = result.metrics.sort_values("sigma2")["kl"].to_numpy()
    assert kl[0] > 0.05 and kl[1] < 0.005
    usage = result.metrics["usage_dim_0"]
    assert usage.between(1.0, 3.0 + 1e-4).all()


def test_the_entropy_target_adds_its_weight_times_the_shortfall():
    static = Static(
        3, 2, (), (), 64, 1, latent="categorical", latent_categories=4,
        entropy_term=True,
    )  # fmt: skip
    trainer = Trainer(static)
    point = Point.one(
        sigma2=1.0, beta=2.0, learning_rate=1e-3, seed=0, decoder_init_scale=1.0
    )
    params = trainer._init_one(point).params
    # inputs that make the logits large: the usage entropy well below ln 4
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 3)) * 30, jnp.float32)
    eps = trainer.noise(jax.random.key(1), 64)
    step = jnp.int32(0)
    base = trainer.batch_loss(params, point, x, eps, step)
    logits = np.asarray(trainer._terms(params, point, x, eps).mu).reshape(64, 2, 4)
    usage = np.asarray(usage_entropy(jnp.asarray(logits)))
    target = float(np.max(usage)) + 0.1
    shortfall = np.sum(np.maximum(target - usage, 0))
    for weight in (3.0, 30.0):  # not beta's (2): it must act at small beta too
        aimed = point._replace(
            entropy_target=jnp.float32(target), entropy_weight=jnp.float32(weight)
        )
        with_target = trainer.batch_loss(params, aimed, x, eps, step)
        # float32: the loss is large beside the shortfall
        tolerance = 4 * float(np.finfo(np.float32).eps) * abs(float(base))
        assert float(with_target - base) == pytest.approx(
            weight * shortfall, abs=tolerance
        )


@pytest.mark.slow
def test_a_categorical_sweep_is_vmapped_exactly_and_resumes(
    tmp_path, tiny_spec, monkeypatch
):
    spec = tiny_spec(
        model={**CATEGORICAL, "latent_dim": 2, "encoder": [8], "decoder": [8]},
        train={"steps": 60, "eval_every": 20},
        grid={
            "sigma2": [0.3, 1.0, 3.0, 10.0, 30.0],
            "beta": [1.0],
            "entropy_target": [0.0, 0.5],
        },
    )
    assert_vmapped_equals_alone(spec, load_for_model(spec))
    full = sweep_mod.run_sweep(spec, tmp_path / "full")
    m = full.metrics
    assert full.meta.compiles == 1
    assert m["collapse_eigenvalue"].isna().all()  # the probe is the Gaussian MLP's
    assert np.all(np.isfinite(m[["kl", "mi", "usage_dim_1", "decoder_gain_1"]]))
    assert analysis.analyze_run(tmp_path / "full").transitions

    assert_resume_is_uninterrupted(spec, tmp_path / "cut", m, monkeypatch)


@pytest.mark.parametrize(
    "model, grid, message",
    [
        ({"latent": "categorical"}, {}, "latent_categories = K, 2 .."),
        ({**CATEGORICAL, "latent_categories": 1}, {}, "2 .. 256"),
        ({**CATEGORICAL, "temperature": 0.01}, {}, "0.1 .. 10"),
        ({**CATEGORICAL, "estimator": "reinforce"}, {}, "choose one of"),
        ({**CATEGORICAL, "skip": "plain"}, {}, "built on the MLP"),
        ({**CATEGORICAL, "likelihood": "poisson"}, {}, '"gaussian" or "bernoulli"'),
        ({**CATEGORICAL, "context": 1}, {}, "no autoregressive head"),
        (CATEGORICAL, {"entropy_target": [2.0]}, "exceeds ln K"),
        ({"latent_categories": 3}, {}, 'apply to model.latent = "categorical"'),
        ({"temperature": 0.5}, {}, 'apply to model.latent = "categorical"'),
        ({}, {"entropy_target": [0.5]}, 'apply to model.latent = "categorical"'),
        ({}, {"entropy_weight": [3.0]}, 'apply to model.latent = "categorical"'),
        (CATEGORICAL, {"entropy_target": [-1.0]}, "impossible"),
    ],
)
def test_impossible_categorical_specs_are_refused(tiny_spec, model, grid, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(model=model, grid=grid)
