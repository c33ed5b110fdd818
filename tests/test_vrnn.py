"""The VRNN (phasevae.models.vrnn): its scanned step against the unrolled loop, the
per-step KL against the two-Gaussian closed form, temporal collapse at each step's
innovation variance, sweeps of it, and its spec checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phasevae.analysis import curves as analysis
from phasevae.analysis.theory import reading_thresholds
from phasevae.data import load_for_model
from phasevae.engine import sweep as sweep_mod
from phasevae.models.vae import kl_per_dim
from phasevae.models.vrnn import VRNN, Step
from phasevae.spec import SpecError
from tests.test_train import (
    assert_resume_is_uninterrupted,
    assert_vmapped_equals_alone,
)


def test_the_scanned_steps_equal_the_unrolled_loop():
    model = VRNN(5, 1, 4, (6,), (6,))
    x = jnp.asarray(np.random.default_rng(0).normal(size=5), jnp.float32)
    # the latents' noise, then the state's readings' (as the sweep scales them)
    eps = jnp.asarray(np.random.default_rng(1).normal(size=10), jnp.float32)
    params = model.init(jax.random.key(0), x, eps)
    mu, logvar, xhat = model.apply(params, x, eps)
    step = Step(1, 4, (6,), (6,))
    h, outs = jnp.zeros(4), []
    for t in range(5):
        h, out = step.apply(
            {"params": params["params"]["steps"]},
            h,
            (x[t], eps[t : t + 1], eps[5 + t], jnp.float32(0)),
        )
        outs.append(out)
    for got, want in zip((mu, logvar, xhat), zip(*outs, strict=True), strict=True):
        np.testing.assert_allclose(got, jnp.stack(want).reshape(-1), rtol=1e-5)
    # decode(z, x): every step's latent given, the same recurrence
    z = jnp.asarray(np.random.default_rng(2).normal(size=5), jnp.float32)
    h, want = jnp.zeros(4), []
    for t in range(5):
        h, out = step.apply(
            {"params": params["params"]["steps"]}, h, (x[t], z[t : t + 1], 0.0, 1.0)
        )
        want.append(out[2])
    got = model.apply(params, z, x, method="decode")
    np.testing.assert_allclose(got, jnp.stack(want), rtol=1e-5, atol=1e-6)
    # the state carries the past: x_2 changes its own step (through z_2) and the
    # later ones, not the earlier
    later = model.apply(params, x.at[2].add(1.0), eps)[2]
    assert np.allclose(later[:2], xhat[:2]) and not np.allclose(later[3:], xhat[3:])


def test_the_standardised_posterior_gives_the_kl_to_the_steps_prior():
    rng = np.random.default_rng(0)
    mu_q, mu_p, lv_q, lv_p = rng.normal(size=(4, 6))
    closed = 0.5 * (
        lv_p - lv_q + (np.exp(lv_q) + (mu_q - mu_p) ** 2) / np.exp(lv_p) - 1.0
    )
    mu = (mu_q - mu_p) * np.exp(-0.5 * lv_p)
    got = kl_per_dim(jnp.asarray(mu), jnp.asarray(lv_q - lv_p))
    np.testing.assert_allclose(got, closed, rtol=1e-5)


def _conditional_variance(cov, target, observed):
    """Var(target . w | observed . w) for w ~ N(0, cov); rows are linear maps."""
    if not len(observed):
        return float(target @ cov @ target)
    o = np.asarray(observed)
    cross = o @ cov @ target
    return float(target @ cov @ target - cross @ np.linalg.solve(o @ cov @ o.T, cross))


@pytest.mark.parametrize("noise", [0.0, 0.5, 3.0])
def test_the_reading_criterion_is_the_collapsed_states_second_order_loss(noise):
    """docs/science.md, 'Recurrent latents': with the state reading y = x + sqrt(s) n,
    a step-t latent z = a e_t + xi (e_t: x_t less its prediction from y_1 .. y_{t-1})
    lowers the best squared error of every step j >= t by an amount that, over a^2
    Var(e_t) as a -> 0, is reading_thresholds' theta_t: found here by exact Gaussian
    conditioning on (x, n, xi), not by the derivation's residual algebra."""
    rng = np.random.default_rng(1)
    t_len = 5
    root = rng.normal(size=(t_len, t_len))
    c = root @ root.T / t_len + 0.2 * np.eye(t_len)
    cov = np.zeros((2 * t_len + 1, 2 * t_len + 1))  # (x, n, xi)
    cov[:t_len, :t_len], cov[t_len:, t_len:] = c, np.eye(t_len + 1)

    def x_(j):
        return np.eye(2 * t_len + 1)[j]

    def y_(j):
        return x_(j) + np.sqrt(noise) * x_(t_len + j)

    a = 1e-3
    got = []
    for t in range(t_len):
        past = [y_(i) for i in range(t)]
        if past:
            o = np.asarray(past)
            gain = np.linalg.solve(o @ cov @ o.T, o @ cov @ x_(t))
            e = x_(t) - gain @ o
        else:
            e = x_(t)
        z = a * e + x_(2 * t_len)
        drop = sum(
            _conditional_variance(cov, x_(j), [y_(i) for i in range(j)])
            - _conditional_variance(cov, x_(j), [*(y_(i) for i in range(j)), z])
            for j in range(t, t_len)
        )
        got.append(drop / a**2 / float(e @ cov @ e))
    np.testing.assert_allclose(got, reading_thresholds(c, noise), rtol=1e-4)
    if noise == 0.0:  # the innovations: theta_t = D_t
        d = np.diag(np.linalg.cholesky(c)) ** 2
        np.testing.assert_allclose(reading_thresholds(c, 0.0), d, rtol=1e-9)


VRNN_MODEL = {
    "kind": "vrnn",
    "latent_dim": 1,
    "state": 8,
    "encoder": [16],
    "decoder": [16],
}
DATA = {"eigenvalues": [4.0, 2.0, 1.0, 0.5, 0.25, 0.12], "samples": 2048}
# long enough for each step's latent to settle
TRAINED = {"steps": 3000, "eval_every": 3000, "batch_size": 128, "learning_rate": 0.005}


@pytest.mark.slow  # 3,000 training steps: 30-45 s
def test_each_step_collapses_at_its_innovation_variance(tmp_path, tiny_spec):
    """docs/science.md, 'Recurrent latents': step t's latent is alive where beta
    sigma^2 is well below D_t, the variance of x_t given x_1 .. x_{t-1}, and dead
    well above it; the spectrum a run stores is the D_t."""
    spec = tiny_spec(
        data=DATA,
        model=VRNN_MODEL,
        train=TRAINED,
        grid={"sigma2": [0.3, 0.8, 3.0], "beta": [1.0]},
    )
    x = load_for_model(spec).x
    d = np.diag(np.linalg.cholesky(np.cov(x.T, bias=True))) ** 2  # D_t
    result = sweep_mod.run_sweep(spec, tmp_path / "run")
    stored = result.meta.spectrum["eigenvalues"]
    np.testing.assert_allclose(stored, np.sort(d)[::-1], rtol=1e-3)
    for _, row in result.metrics.iterrows():
        s2 = row["sigma2"]
        for t, dt in enumerate(d):
            kl = row[f"kl_dim_{t}"]
            if dt > 1.3 * s2:
                assert kl > 0.02, (s2, t, dt, kl)
            if dt < 0.75 * s2:
                assert kl < 0.02, (s2, t, dt, kl)


@pytest.mark.slow  # 3,000 training steps: 30-45 s
def test_state_noise_keeps_the_first_latent_alive_to_its_criterion(tmp_path, tiny_spec):
    """The guide's remedy (grid.state_noise): AR(1) data, phi = 0.9, whose first step
    has no past (D_1 = 5.3); a state reading x through noise of variance 20 cannot
    carry x_1 forward, so z_1 is needed for the later steps too and step 1's
    criterion doubles (reading_thresholds: 11.0). At sigma^2 = 7.5 one compiled
    sweep has step 1 dead without the noise and alive with it."""
    rng = np.random.default_rng(0)
    x = np.zeros((2048, 6))
    x[:, 0] = rng.normal(size=2048) / np.sqrt(1 - 0.9**2)
    for t in range(1, 6):
        x[:, t] = 0.9 * x[:, t - 1] + rng.normal(size=2048)
    np.save(tmp_path / "ar.npy", x.astype(np.float32))
    spec = tiny_spec(
        data={"source": "array", "path": str(tmp_path / "ar.npy")},
        model=VRNN_MODEL,
        train=TRAINED,
        grid={"sigma2": [7.5], "beta": [1.0], "state_noise": [0.0, 20.0]},
    )
    result = sweep_mod.run_sweep(spec, tmp_path / "run")
    cov = np.asarray(result.meta.spectrum["covariance"])
    assert reading_thresholds(cov, 0.0)[0] < 0.75 * 7.5
    assert reading_thresholds(cov, 20.0)[0] > 1.3 * 7.5
    kl = result.metrics.set_index("state_noise")["kl_dim_0"]
    assert kl[0.0] < 0.02 and kl[20.0] > 0.1, kl
    mi = result.metrics.set_index("state_noise")["mi_step_0"]
    assert mi[0.0] < 0.02 and mi[20.0] > 0.1, mi


@pytest.mark.slow
def test_a_vrnn_sweep_is_vmapped_exactly_analysed_and_resumes(
    tmp_path, tiny_spec, monkeypatch
):
    spec = tiny_spec(
        data=DATA,
        model={**VRNN_MODEL, "state": 4, "encoder": [8], "decoder": [8]},
        train={"steps": 60, "eval_every": 20},
        grid={
            "sigma2": [0.1, 0.3, 1.0, 3.0, 10.0],
            "beta": [1.0],
            "seeds": [0, 1],
            "state_noise": [0.0, 2.0],
        },
    )
    assert_vmapped_equals_alone(spec, load_for_model(spec))
    full = sweep_mod.run_sweep(spec, tmp_path / "full")
    m = full.metrics
    assert full.meta.compiles == 1
    assert np.all(np.isfinite(m[["kl_dim_5", "mi", "mi_step_5", "decoder_gain_5"]]))
    cov = full.meta.spectrum["covariance"]
    for t in analysis.analyze_run(tmp_path / "full").transitions:
        assert len(t.per_dim) == 6  # one per step
        # each curve's criterion at its own state noise
        want = np.sort(reading_thresholds(cov, t.curve["state_noise"]))[::-1]
        np.testing.assert_allclose(t.theory_thresholds, want, rtol=1e-9)
    assert_resume_is_uninterrupted(spec, tmp_path / "cut", m, monkeypatch)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"kind": "vrnn"}, "needs model.state >= 1"),
        ({"state": 4}, "needs model.state >= 1"),
        ({**VRNN_MODEL, "latent_dim": 2}, "one latent dim per step"),
        ({**VRNN_MODEL, "latent": "sphere"}, "built with a Gaussian latent"),
        ({**VRNN_MODEL, "skip": "plain"}, "built with a Gaussian latent"),
        ({**VRNN_MODEL, "context": 1}, "built with a Gaussian latent"),
        ({**VRNN_MODEL, "state": 5000}, "too wide"),
        ({**VRNN_MODEL, "channels": [4]}, "apply to model.kind"),
    ],
)
def test_impossible_vrnn_specs_are_refused(tiny_spec, model, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(model=model)


@pytest.mark.parametrize(
    "model, noise, message",
    [
        ({}, 1.0, 'grid.state_noise applies to model.kind = "vrnn"'),
        (VRNN_MODEL, -1.0, "grid.state_noise"),
        (VRNN_MODEL, float("inf"), "grid.state_noise"),
    ],
)
def test_impossible_state_noises_are_refused(tiny_spec, model, noise, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(model=model, grid={"state_noise": [noise]})
