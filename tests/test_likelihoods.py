"""Decoder likelihoods other than the Gaussian (model.likelihood): their densities
against scipy, the collapse criterion beta sigma^2 = lambda_max of the covariance
whitened by the likelihood's variances (docs/science.md, 'Other likelihoods') against
the float64 Hessian of the loss at a constructed collapsed state, the data checks,
and a sweep of each, vmapped equal to looped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from phasevae.api import open_run
from phasevae.cli import main
from phasevae.data import (
    load_dataset,
    load_for_model,
    marginal_dispersion,
    one_hot,
    whitened,
    whitening,
)
from phasevae.models.vae import (
    VAE,
    collapse_eigenvalue,
    collapse_grams,
    example_terms,
    nll,
)
from phasevae.spec import MAX_DISPERSION, SpecError, spec_from_dict
from tests.conftest import tiny_dict
from tests.test_cli import write_spec
from tests.test_model import (
    assert_turns_at_lambda_c,
    biased,
    collapsed,
    collapsed_hessians,
)
from tests.test_train import assert_vmapped_equals_alone

LIKELIHOODS = ("bernoulli", "poisson", "negative_binomial", "categorical")
R = 2.5  # the negative binomial's dispersion in these tests
K = 3  # the categorical's categories per position (2 positions: 6 one-hot features)


def low_rank_tokens(n: int = 600, seed: int = 0) -> np.ndarray:
    """Token ids (n, 2) of two correlated positions, each from a softmax of a rank-2
    natural parameter."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, 2)) @ rng.normal(size=(2, 2 * K)) * 1.2).reshape(
        n, 2, K
    )
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    u = rng.random((n, 2, 1))
    return (u > np.cumsum(p, axis=-1)).sum(-1).astype(np.float32)


def low_rank_data(likelihood: str, n: int = 600, dim: int = 6, seed: int = 0):
    """Binary, count or one-hot data from a rank-2 natural parameter (correlated
    features; the categorical's 6 features are 2 positions of K = 3)."""
    rng = np.random.default_rng(seed)
    eta = rng.normal(size=(n, 2)) @ rng.normal(size=(2, dim)) * 0.8
    if likelihood == "categorical":
        return one_hot(low_rank_tokens(n, seed), K, "test")
    if likelihood == "bernoulli":
        return (rng.random((n, dim)) < 1 / (1 + np.exp(-eta))).astype(np.float32)
    if likelihood == "negative_binomial":
        mean = np.exp(eta + 0.5)
        return rng.negative_binomial(R, R / (R + mean)).astype(np.float32)
    return rng.poisson(np.exp(eta + 0.5)).astype(np.float32)


def whitened_top(x, likelihood):
    w = whitening(x, likelihood, "test", R, K)
    return np.linalg.eigvalsh(np.cov(whitened(x, w).T, bias=True))[-1]


@pytest.mark.parametrize("likelihood", LIKELIHOODS + ("gaussian",))
def test_each_negative_log_likelihood_is_scipys(likelihood):
    rng = np.random.default_rng(1)
    eta = rng.normal(size=7)
    if likelihood == "bernoulli":
        x = (rng.random(7) < 0.5).astype(float)
        want = -stats.bernoulli.logpmf(x, 1 / (1 + np.exp(-eta))).sum()
    elif likelihood == "poisson":
        x = rng.poisson(3.0, size=7).astype(float)
        want = -stats.poisson.logpmf(x, np.exp(eta)).sum()
    elif likelihood == "negative_binomial":
        x = rng.poisson(3.0, size=7).astype(float)
        mean = np.exp(eta)
        want = -stats.nbinom.logpmf(x, R, R / (R + mean)).sum()
    elif likelihood == "categorical":  # 3 positions of K = 3 logits
        eta = rng.normal(size=3 * K)
        x = one_hot(rng.integers(0, K, size=(1, 3)), K, "test")[0].astype(float)
        p = np.exp(eta.reshape(3, K))
        p /= p.sum(-1, keepdims=True)
        want = -sum(
            stats.multinomial.logpmf(xb, 1, pb)
            for xb, pb in zip(x.reshape(3, K), p, strict=True)
        )
    else:
        x = rng.normal(size=7)
        want = -stats.norm.logpdf(x, eta, 1.0).sum()
    with jax.enable_x64(True):
        got = float(nll(jnp.asarray(x), jnp.asarray(eta), likelihood, R, K))
    assert got == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sigma2_is_the_temperature_of_the_likelihood(likelihood):
    x = jnp.asarray(low_rank_data(likelihood)[0])
    model = VAE(6, 2, (8,), (8,))
    params = model.init(jax.random.key(0), jnp.zeros(6), jnp.zeros(2))
    eps = jnp.array([0.3, -1.0])
    one = example_terms(model, params, x, eps, 1.0, likelihood, R, K)
    hot = example_terms(model, params, x, eps, 4.0, likelihood, R, K)
    assert float(hot.recon) == pytest.approx(float(one.recon) / 4.0, rel=1e-6)
    _, _, eta = model.apply(params, x, eps)
    assert float(one.recon) == pytest.approx(
        float(nll(x, eta, likelihood, R, K)), rel=1e-6
    )


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_the_linear_vaes_collapse_eigenvalue_is_the_whitened_lambda_max(likelihood):
    x = low_rank_data(likelihood)
    model = VAE(6, 2, (), ())
    params = model.init(jax.random.key(0), jnp.zeros(6), jnp.zeros(2))
    params = collapsed(model, params, jnp.asarray(x), likelihood)
    grams = collapse_grams(model, params, jnp.asarray(x), likelihood, R, K)
    got = float(collapse_eigenvalue(*grams))
    want = whitened_top(x, likelihood)
    plain = np.linalg.eigvalsh(np.cov(x.T, bias=True))[-1]
    assert got == pytest.approx(want, rel=1e-4)
    assert abs(want / plain - 1) > 0.2  # the whitening matters on this data


def test_the_categorical_criterion_reads_dependence_between_positions():
    """docs/science.md: one position's whitened covariance is a projection
    (lambda_max = 1 whatever its frequencies); independent positions stay at 1 up to
    sampling; two positions that always agree reach 2, the number of positions."""
    rng = np.random.default_rng(5)
    skewed = rng.choice(4, size=(5000, 1), p=[0.7, 0.2, 0.08, 0.02])
    one = one_hot(skewed.astype(np.float32), 4, "test")
    w = whitening(one, "categorical", "test", categories=4)
    top = np.linalg.eigvalsh(np.cov(whitened(one, w).T, bias=True))[-1]
    assert top == pytest.approx(1.0, abs=1e-4)
    free = one_hot(rng.integers(0, 4, size=(20000, 3)).astype(np.float32), 4, "t")
    w = whitening(free, "categorical", "test", categories=4)
    top = np.linalg.eigvalsh(np.cov(whitened(free, w).T, bias=True))[-1]
    assert 1.0 < top < 1.05
    same = one_hot(np.repeat(skewed, 2, axis=1).astype(np.float32), 4, "test")
    w = whitening(same, "categorical", "test", categories=4)
    top = np.linalg.eigvalsh(np.cov(whitened(same, w).T, bias=True))[-1]
    assert top == pytest.approx(2.0, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("widths", [((), ()), ((16, 8), (5, 12))])
def test_the_collapsed_states_hessian_turns_at_the_collapse_eigenvalue(
    likelihood, widths
):
    """Brute force, as for the Gaussian (tests/test_model.py): the float64 Hessian
    of the loss at the collapsed state, in the mean head's row and the decoder's
    z-column, has a negative eigenvalue exactly when beta sigma^2 < lambda_c; with a
    linear decoder lambda_c is the whitened lambda_max of the data."""
    enc, dec = widths
    x = jnp.asarray(low_rank_data(likelihood, n=400))
    model = VAE(6, 1, enc, dec)
    params = model.init(jax.random.key(3), jnp.zeros(6), jnp.zeros(1))
    params = biased(params)
    params = collapsed(model, params, x, likelihood)
    grams = collapse_grams(model, params, x, likelihood, R, K)
    lam = float(collapse_eigenvalue(*grams))
    if not enc and not dec:
        assert lam == pytest.approx(whitened_top(np.asarray(x), likelihood), rel=1e-4)
    assert_turns_at_lambda_c(
        collapsed_hessians(model, params, x, lam, likelihood, R, K)
    )


def test_a_negative_binomial_with_one_r_per_feature_is_scipys():
    rng = np.random.default_rng(2)
    eta, r = rng.normal(size=7), rng.uniform(0.3, 9.0, size=7)
    x = rng.poisson(3.0, size=7).astype(float)
    want = -stats.nbinom.logpmf(x, r, r / (r + np.exp(eta))).sum()
    with jax.enable_x64(True):
        got = nll(jnp.asarray(x), jnp.asarray(eta), "negative_binomial", jnp.asarray(r))
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_the_marginal_dispersion_is_the_maximum_likelihood_r_at_the_mean():
    """Each feature's r maximises the negative binomial's likelihood with its mean
    at the feature's mean (the float64 gradient in ln r is 0 there); on data drawn
    with r = 2.5 and 0.7 it finds them; Poisson data (no overdispersion) and a
    constant feature get MAX_DISPERSION."""
    rng = np.random.default_rng(0)
    n = 20000
    x = np.stack(
        [
            rng.negative_binomial(2.5, 2.5 / (2.5 + 4.0), n),
            rng.negative_binomial(0.7, 0.7 / (0.7 + 1.5), n),
            rng.poisson(3.0, n),
            np.full(n, 2),
            low_rank_data("negative_binomial", n=n)[:, 0],
        ],
        axis=1,
    ).astype(np.float32)
    r = marginal_dispersion(x)
    assert r[0] == pytest.approx(2.5, rel=0.05)
    assert r[1] == pytest.approx(0.7, rel=0.05)
    assert r[2] == r[3] == MAX_DISPERSION
    assert r[4] < R  # its rank-2 natural parameter adds overdispersion

    def total(log_r):
        eta = jnp.log(jnp.mean(x64, axis=0))
        per = jax.vmap(
            lambda xi: nll(xi, eta[sel], "negative_binomial", jnp.exp(log_r))
        )
        return jnp.sum(per(x64[:, sel]))

    sel = np.array([0, 1, 4])
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)
        grad = jax.grad(total)(jnp.log(jnp.asarray(r[sel], jnp.float64)))
    np.testing.assert_allclose(np.asarray(grad) / n, 0.0, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("widths", [((), ()), ((16, 8), (5, 12))])
def test_a_learned_dispersions_collapse_is_at_its_marginal_r(widths):
    """The derivation (docs/science.md, 'Other likelihoods'): with r learned, the
    collapsed state has r at each feature's marginal maximum-likelihood value, ln r
    does not couple to the latent's directions there (z -> -z leaves the loss
    unchanged), so the float64 Hessian of the loss in the mean head's row, the
    decoder's z-column and ln r turns exactly at lambda_c taken at that r, the
    whitened lambda_max of the linear decoder; which is not where a fixed r of the
    data's own generation (2.5) puts it."""
    enc, dec = widths
    x = jnp.asarray(low_rank_data("negative_binomial", n=400))
    r = marginal_dispersion(np.asarray(x))
    model = VAE(6, 1, enc, dec)
    params = biased(model.init(jax.random.key(3), jnp.zeros(6), jnp.zeros(1)))
    params = collapsed(model, params, x, "negative_binomial")
    lam = float(
        collapse_eigenvalue(*collapse_grams(model, params, x, "negative_binomial", r))
    )
    fixed = float(
        collapse_eigenvalue(*collapse_grams(model, params, x, "negative_binomial", R))
    )
    assert abs(lam / fixed - 1) > 0.05
    if not enc and not dec:
        w = whitening(np.asarray(x), "negative_binomial", "test", r)
        want = np.linalg.eigvalsh(np.cov(whitened(np.asarray(x), w).T, bias=True))[-1]
        assert lam == pytest.approx(want, rel=1e-4)
    hessians = collapsed_hessians(model, params, x, lam, "negative_binomial", r)
    for h in hessians.values():  # ln r: curved upwards, uncoupled to the latent
        np.testing.assert_allclose(h[-6:, :-6], 0.0, atol=1e-9 * np.abs(h).max())
        assert np.linalg.eigvalsh(h[-6:, -6:])[0] > 0
    assert_turns_at_lambda_c(hessians)


@pytest.mark.parametrize(
    "likelihood, values, words",
    [
        ("bernoulli", [0.0, 1.0, 0.5], "needs 0s and 1s; row 0, column 2 is 0.5"),
        ("poisson", [0.0, 2.0, -1.0], "needs counts (integers >= 0)"),
        ("poisson", [0.0, 2.5, 1.0], "column 1 is 2.5"),
        ("negative_binomial", [0.0, 2.0, -1.0], "needs counts (integers >= 0)"),
        ("categorical", [0.0, 2.0, 3.0], "needs token ids 0 .. 2"),
        ("categorical", [0.0, 1.5, 1.0], "column 1 is 1.5"),
    ],
)
def test_data_a_likelihood_cannot_take_is_exit_2(
    tmp_path, capsys, likelihood, values, words
):
    data = np.tile(np.asarray(values, np.float32), (40, 1))
    data[1:] = 1.0  # only the first row is wrong
    np.save(tmp_path / "x.npy", data)
    spec = write_spec(
        tmp_path,
        data={"source": "array", "path": str(tmp_path / "x.npy")},
        model={
            "likelihood": likelihood,
            "dispersion": R * (likelihood == "negative_binomial"),
            "categories": K * (likelihood == "categorical"),
        },
    )
    for command in (
        ["sweep", str(spec), "--out", str(tmp_path / "run")],
        ["theory", str(spec)],
    ):
        assert main(command) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "model, data, words",
    [
        (
            {"likelihood": "bernoulli", "sigma2": "learned"},
            {},
            'needs model.sigma2 = "fixed"',
        ),
        (
            {"likelihood": "poisson"},
            {"normalize": "standardize"},
            'needs data.normalize = "none"',
        ),
        ({"likelihood": "student"}, {}, "model.likelihood"),
        ({"likelihood": "negative_binomial"}, {}, "needs model.dispersion > 0"),
        (
            {"likelihood": "poisson", "dispersion": 2.0},
            {},
            "needs model.dispersion > 0",
        ),
        ({"likelihood": "poisson", "latent": "sphere"}, {}, "built on the MLP VAE"),
        (
            {"likelihood": "poisson", "learned_dispersion": True},
            {},
            "applies to the negative binomial only",
        ),
        ({"likelihood": "categorical"}, {}, "needs model.categories >= 2"),
        ({"likelihood": "bernoulli", "categories": 3}, {}, "applies to it only"),
        ({"likelihood": "categorical", "categories": 1}, {}, "must be 2 .. 4096"),
        (
            {"likelihood": "categorical", "categories": 3, "latent": "sphere"},
            {},
            "built on the MLP VAE",
        ),
        ({}, {"source": "text"}, "model.categories = 11"),
        (
            {"likelihood": "categorical", "categories": 4},
            {"source": "text", "alphabet": "ab"},
            r"model.categories = 3 \(len\(data.alphabet\) \+ 1",
        ),
        (
            {"likelihood": "categorical", "categories": 3},
            {"source": "text", "alphabet": "aa"},
            "each once",
        ),
        (
            {"likelihood": "categorical", "categories": 3},
            {"source": "text", "alphabet": "ab", "window": 0},
            "data.window",
        ),
    ],
)
def test_a_likelihood_with_settings_it_cannot_use_is_a_spec_error(model, data, words):
    with pytest.raises(SpecError, match=words):
        spec_from_dict(tiny_dict(model=model, data=data))


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", LIKELIHOODS + ("negative_binomial learned",))
def test_a_vmapped_sweep_of_each_likelihood_equals_its_models_run_alone(
    tmp_path, likelihood
):
    likelihood, _, learned = likelihood.partition(" ")
    categorical = likelihood == "categorical"  # its file holds token ids
    np.save(
        tmp_path / "x.npy",
        low_rank_tokens(256) if categorical else low_rank_data(likelihood, n=256),
    )
    spec = spec_from_dict(
        tiny_dict(
            data={"source": "array", "path": str(tmp_path / "x.npy")},
            model={
                "likelihood": likelihood,
                "dispersion": R * (likelihood == "negative_binomial"),
                "learned_dispersion": bool(learned),
                "categories": K * categorical,
            },
            grid={"sigma2": [0.5, 2.0, 8.0], "beta": [1.0], "seeds": [0]},
            train={"steps": 5, "eval_every": 5},
        )
    )
    data = load_dataset(spec.data, likelihood, spec.model.dispersion, K * categorical)
    if learned:
        data = load_for_model(spec)
    if categorical:  # the model sees the one-hot codes
        assert data.x.shape == (256, 2 * K) and np.all(data.x.sum(1) == 2)
    if not learned:
        assert data.eigenvalues[0] == pytest.approx(
            whitened_top(data.x, likelihood), rel=1e-4
        )
    assert_vmapped_equals_alone(spec, data)


@pytest.mark.slow
def test_a_sweep_learns_one_dispersion_per_feature_from_its_start(tmp_path):
    """``model.learned_dispersion``: meta.json's spectrum is of the covariance
    whitened at each feature's marginal r, the metrics carry the learned r's
    geometric mean, which moves from ``model.dispersion`` toward the data's."""
    np.save(tmp_path / "x.npy", low_rank_data("negative_binomial", n=256))
    model = {"likelihood": "negative_binomial", "dispersion": 20.0}
    spec = write_spec(
        tmp_path,
        data={"source": "array", "path": str(tmp_path / "x.npy")},
        model=model | {"learned_dispersion": True},
        train={"steps": 40, "eval_every": 20, "learning_rate": 0.05},
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 0
    run = open_run(tmp_path / "run")
    x = np.load(tmp_path / "x.npy")
    w = whitening(x, "negative_binomial", "test", marginal_dispersion(x))
    want = np.linalg.eigvalsh(np.cov(whitened(x, w).T, bias=True))[-1]
    assert run.meta.spectrum["lambda_max"] == pytest.approx(want, rel=1e-5)
    assert "r learned" in run.meta.spectrum["description"]
    r = run.metrics.pivot(index="step", columns="point_id", values="dispersion")
    assert list(r.index) == [20, 40] and np.isfinite(r.to_numpy()).all()
    # from 20 toward the data's (geometric mean 0.6), every model
    assert (r.loc[40] < r.loc[20]).all() and (r.loc[20] < 20.0).all()


def test_each_validation_case_of_a_decoder_is_valid_data_with_its_criterion(tmp_path):
    """The validation cases of the likelihoods and the autoregressive decoder make
    data their model accepts, and the suite centres their grid on the derived
    criterion (the whitened covariance's, at r-hat for a learned dispersion, or the
    innovations' lambda_max), not on the raw covariance's."""
    from phasevae.data import covariance_spectrum, innovations
    from phasevae.tools.cases import CASES
    from phasevae.tools.validate import case_data

    decoders = [c for c in CASES if {"likelihood", "context"} & set(dict(c.model))]
    got = {dict(c.model).get("likelihood", "gaussian") for c in decoders}
    assert got == {"gaussian", *LIKELIHOODS}  # every likelihood, and a context
    for case in decoders:
        model = dict(case.model)
        x, _, lam = case_data(case, tmp_path)
        if "context" in model:
            expect = covariance_spectrum(x @ innovations(x, model["context"]))[0]
        else:
            lik = model["likelihood"]
            if lik == "categorical":
                x = one_hot(x, model["categories"], "case")
            r = model.get("dispersion", 0.0)
            if model.get("learned_dispersion"):  # each feature's r-hat
                r = marginal_dispersion(x)
            w = whitening(x, lik, "case", r, model.get("categories", 0))
            expect = covariance_spectrum(whitened(x, w))[0]
        assert lam == pytest.approx(expect, rel=1e-4)
        assert abs(lam / covariance_spectrum(x)[0] - 1) > 0.05  # not the raw one


def test_each_validation_case_of_a_structured_latent_has_its_criterion(tmp_path):
    """The validation cases of a categorical latent, a ladder and a VRNN: the suite
    centres their grid on rho lambda_max (the relaxation's factor), lambda_max (a
    ladder at kappa = 1) and max_t D_t (the Cholesky conditional variances)."""
    from phasevae.data import covariance_spectrum
    from phasevae.data.relaxation import latent_factor
    from phasevae.tools.cases import CASES
    from phasevae.tools.validate import case_data

    found = set()
    for case in CASES:
        model = dict(case.model)
        family = model.get("latent", model.get("kind"))
        if family not in ("categorical", "ladder", "vrnn"):
            continue
        found.add(family)
        x, _, lam = case_data(case, tmp_path)
        if family == "vrnn":
            cov = np.cov(x.T.astype(np.float64), bias=True)
            expect = float(np.max(np.diag(np.linalg.cholesky(cov)) ** 2))
        else:
            expect = covariance_spectrum(x)[0]
        if family == "categorical":
            k = model["latent_categories"]
            expect *= latent_factor("categorical", k, "gumbel", 1.0)
        assert lam == pytest.approx(expect, rel=2e-3), case.name
    assert found == {"categorical", "ladder", "vrnn"}


def test_text_windows_are_the_corpus_read_through_the_alphabet():
    """Each window, its ids read back through the alphabet (the last id: any other
    character), is a stretch of the docstring corpus; the offsets follow the seed;
    a sweep's data are the one-hot codes of those ids."""
    from phasevae.data.text import corpus, text_windows

    alphabet = " etaoinshr"
    text = "".join(c if c in alphabet else "?" for c in corpus())
    x, what = text_windows(alphabet, 12, 50, seed=3)
    assert x.shape == (50, 12) and "Python" in what
    for row in x.astype(int):
        assert "".join((alphabet + "?")[i] for i in row) in text
    assert np.array_equal(x, text_windows(alphabet, 12, 50, seed=3)[0])
    assert not np.array_equal(x, text_windows(alphabet, 12, 50, seed=4)[0])
    spec = spec_from_dict(
        tiny_dict(
            model={"likelihood": "categorical", "categories": 3},
            data={"source": "text", "alphabet": "e ", "window": 5, "samples": 40},
        )
    )
    data = load_dataset(spec.data, "categorical", categories=3)
    ids = text_windows("e ", 5, 40, 0)[0]
    assert np.array_equal(data.x, one_hot(ids, 3, "text"))
