"""Autoregressive decoders (model.context, model.recurrent, model.mask): the linear
head is causal and banded, the GRU head causal, the masked convolution reads its
mask and nothing else, the innovations matrices are exact, the collapse
criterion beta sigma^2 = lambda_max of the innovations' covariance (docs/science.md,
'Autoregressive decoders') holds against the linear VAE's probe and the float64
Hessian of the collapsed state (for the GRU head: of its own innovations), and a
vmapped sweep of each head equals its models run alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
import tomli_w
from jax import Array

from phasevae.cli import main
from phasevae.data import (
    head_whitening,
    innovations,
    load_dataset,
    load_for_model,
    masked_innovations,
    masked_weights,
    whitened,
    whitening,
)
from phasevae.data.glm import context_fit, fit, lagged, masked_fit, neighbours
from phasevae.errors import DataError
from phasevae.models.conv import ConvVAE
from phasevae.models.vae import VAE, collapse_eigenvalue, collapse_grams
from phasevae.spec import SpecError, mask_offsets, spec_from_dict, stack_offsets
from tests.conftest import tiny_dict
from tests.test_cli import write_spec
from tests.test_model import (
    assert_turns_at_lambda_c,
    biased,
    collapsed,
    collapsed_hessians,
)
from tests.test_train import assert_vmapped_equals_alone

PHI = 0.9  # the AR(1) process's coefficient


def ar1_windows(n: int = 800, dim: int = 6, seed: int = 0) -> np.ndarray:
    """``n`` windows of ``dim`` consecutive values of a stationary AR(1) process
    x_t = PHI x_{t-1} + e_t, e_t ~ N(0, 1): the first value of a window has
    variance 1 / (1 - PHI^2) = 5.26, each later one 1 given its predecessor."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim))
    x[:, 0] = rng.normal(size=n) / np.sqrt(1 - PHI**2)
    for t in range(1, dim):
        x[:, t] = PHI * x[:, t - 1] + rng.normal(size=n)
    return x.astype(np.float32)


def top(c: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(c)[-1])


def with_head(model: VAE, params, x: np.ndarray) -> dict:
    """``params`` with the head's weights at the least-squares prediction of each
    feature from its ``model.context`` predecessors (the collapsed state's)."""
    m = innovations(x, model.context)
    ar = np.zeros((model.data_dim, model.context), np.float32)
    for i in range(model.data_dim):
        for j in range(min(model.context, i)):
            ar[i, j] = -m[i - 1 - j, i]
    return {"params": {**params["params"], "ar": jnp.asarray(ar)}}


def test_the_head_is_causal_and_banded():
    model = VAE(6, 2, (8,), (8,), context=2)
    params = model.init(jax.random.key(0), jnp.zeros(6), jnp.zeros(2))
    params = {"params": {**params["params"], "ar": jnp.ones((6, 2))}}
    jac = jax.jacfwd(lambda x: model.apply(params, jnp.zeros(2), x, method=VAE.decode))(
        jnp.arange(6.0)
    )
    i, j = np.indices((6, 6))
    assert np.array_equal(np.asarray(jac) != 0, (j < i) & (j >= i - 2))


def gru_params(model: VAE, seed: int = 0) -> dict:
    """A GRU head's parameters, its readout moved off 0 (it starts there)."""
    params = model.init(jax.random.key(seed), jnp.zeros(model.data_dim), jnp.zeros(1))
    readout = params["params"]["readout"]
    kernel = 0.5 * jax.random.normal(jax.random.key(seed + 1), readout["kernel"].shape)
    return {"params": {**params["params"], "readout": {**readout, "kernel": kernel}}}


def test_the_gru_head_is_causal_and_sees_the_whole_past():
    model = VAE(6, 1, (8,), (8,), recurrent=4)
    params = gru_params(model)
    jac = jax.jacfwd(lambda x: model.apply(params, jnp.zeros(1), x, method=VAE.decode))(
        jnp.arange(6.0) / 6
    )
    i, j = np.indices((6, 6))
    assert np.all(np.asarray(jac)[j >= i] == 0)  # nothing from x[i] on
    assert np.all(np.abs(np.asarray(jac)[j < i]) > 1e-6)  # every predecessor


IMAGE = (3, 4)  # the masked head's test images


def ar1_images(n: int = 400) -> np.ndarray:
    """(n, 12) rows of 3 x 4 images: AR(1) windows of 12 values, read row by row (so
    each pixel is correlated with its left and upper neighbours)."""
    return ar1_windows(n=n, dim=12)


def test_the_masked_head_reads_its_mask_and_nothing_else():
    model = VAE(12, 1, (8,), (8,), mask=1, image=IMAGE)
    params = model.init(jax.random.key(0), jnp.zeros(12), jnp.zeros(1))
    weights = jnp.arange(1.0, len(mask_offsets(1)) + 1)
    params = {"params": {**params["params"], "masked": weights}}
    jac = jax.jacfwd(lambda x: model.apply(params, jnp.zeros(1), x, method=VAE.decode))(
        jnp.arange(12.0)
    )
    h, w = IMAGE
    want = np.zeros((12, 12))
    for r in range(h):
        for c in range(w):
            for (dy, dx), weight in zip(mask_offsets(1), weights, strict=True):
                if 0 <= r + dy and 0 <= c + dx < w:
                    want[r * w + c, (r + dy) * w + c + dx] = weight
    np.testing.assert_array_equal(np.asarray(jac), want)
    # causal in raster order: nothing from pixel p itself or after it
    assert np.all(np.triu(want) == 0)


def narrowed(big: VAE, params: dict, k: int) -> tuple[VAE, dict]:
    """The head of reach ``k`` (grid.context) inside ``big``'s, as a model of its
    own: the same VAE with ``k`` predecessors, a radius-``k`` mask or a GRU of ``k``
    units, whose parameters are ``big``'s that reach it."""
    p = dict(params)
    if big.context:
        p["ar"] = params["ar"][:, :k]
        return big.clone(context=k), p
    if big.recurrent:
        p["gru"] = {
            name: {
                "kernel": v["kernel"][:k, :k] if name[0] == "h" else v["kernel"][:, :k],
                **({"bias": v["bias"][:k]} if "bias" in v else {}),
            }
            for name, v in params["gru"].items()
        }
        p["readout"] = {**params["readout"], "kernel": params["readout"]["kernel"][:k]}
        return big.clone(recurrent=k), p
    a_big, a_small = mask_offsets(big.mask), mask_offsets(k)

    def rows(offsets: list, within: list, channels: int) -> list[int]:
        picked = [within.index(o) for o in offsets]
        return [i * channels + c for i in picked for c in range(channels)]

    if big.mask_layers == 1:
        p["masked"] = params["masked"][jnp.asarray(rows(a_small, a_big, 1))]
        return big.clone(mask=k), p
    b_rows = rows([*a_small, (0, 0)], [*a_big, (0, 0)], big.mask_channels)
    for i in range(big.mask_layers):
        layer = params[f"stack_{i}"]
        keep = jnp.asarray(b_rows if i else rows(a_small, a_big, 1))
        p[f"stack_{i}"] = {**layer, "kernel": layer["kernel"][keep]}
    return big.clone(mask=k), p


def random_head(kind: str, h: int, w: int, **head) -> tuple[VAE | ConvVAE, dict]:
    """An MLP or conv VAE on (h, w) images with ``head``, and its parameters, every
    weight moved off its (possibly zero) start."""
    if kind == "conv":
        model = ConvVAE(1, (h, w, 1), (4,), 3, **head)
        x = jnp.zeros((h, w, 1))
    else:
        model, x = VAE(h * w, 1, (8,), (8,), image=(h, w), **head), jnp.zeros(h * w)
    params = model.init(jax.random.key(0), x, jnp.zeros(1))["params"]
    return model, jax.tree.map(
        lambda v: v + jax.random.normal(jax.random.key(v.size), v.shape), params
    )


def predicted(model: VAE | ConvVAE, p: dict, x: Array) -> Array:
    """The head's part of the output for x (N,) (0 without a head)."""
    return model.apply({"params": p}, x, method=type(model).predicted)


@pytest.mark.parametrize(
    "kind, head, reach",
    [
        ("mlp", {"context": 4}, 2),
        ("mlp", {"recurrent": 5}, 2),
        ("mlp", {"mask": 2}, 1),
        ("mlp", {"mask": 3, "mask_layers": 3, "mask_channels": 4}, 2),
        ("conv", {"mask": 2}, 1),
        ("conv", {"mask": 3, "mask_layers": 2, "mask_channels": 4}, 2),
    ],
)
def test_a_head_held_to_a_reach_is_the_head_of_that_reach(kind, head, reach):
    """A grid.context point's model (``within_reach``) predicts as the
    smaller head built for its reach with the weights that reach it; at reach 0
    it predicts nothing (0, as no head)."""
    h, w = 5, 6
    big, params = random_head(kind, h, w, **head)
    x = jax.random.normal(jax.random.key(1), (h * w,))

    small, small_params = narrowed(big, params, reach)
    want = predicted(small, small_params, x)
    got = predicted(big, big.within_reach(params, reach), x)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert not np.allclose(got, predicted(big, params, x), atol=1e-3)  # it reached
    none = predicted(big, big.within_reach(params, 0), x)
    np.testing.assert_array_equal(np.asarray(none), 0.0)


@pytest.mark.parametrize("head", [{"context": 2}, {"recurrent": 2}, {"mask": 1}])
def test_only_a_masked_head_goes_on_the_conv_vae(head):
    raw = tiny_dict(data={"source": "digits"}, model={"kind": "conv", **head})
    del raw["model"]["encoder"], raw["model"]["decoder"]
    if "mask" in head:
        assert spec_from_dict(raw).model.mask == 1
    else:
        with pytest.raises(SpecError, match="a masked head also on the conv VAE"):
            spec_from_dict(raw)


@pytest.mark.parametrize("layers", [1, 2])
def test_the_conv_vaes_masked_head_adds_a_causal_prediction(layers):
    """The conv VAE's decoder output with a masked head is the conv decoder's plus
    the head's prediction, which reads only pixels before each one in raster
    order."""
    h, w = 4, 5
    channels = {"mask_channels": 3} if layers > 1 else {}
    model, params = random_head("conv", h, w, mask=1, mask_layers=layers, **channels)
    x = jax.random.normal(jax.random.key(2), (h, w, 1))
    z = jnp.ones(1)

    def decode(x: Array) -> Array:
        return model.apply({"params": params}, z, x, method=ConvVAE.decode)

    def head(x: Array) -> Array:
        return predicted(model, params, x.reshape(-1)).reshape(h, w, 1)

    zero = jnp.zeros_like(x)  # a stack's biases predict even from 0
    np.testing.assert_allclose(
        decode(x) - decode(zero), head(x) - head(zero), atol=1e-5
    )
    jac = np.asarray(jax.jacrev(decode)(x)).reshape(h * w, h * w)
    assert np.all(np.triu(jac) == 0) and np.any(jac != 0)


def stack_params(model: VAE, seed: int = 0, bias: float | None = None) -> dict:
    """A PixelCNN stack's parameters, its last layer moved off 0 (it starts
    there); with ``bias``, every hidden layer's bias set to it (large: every ReLU
    open on inputs in [0, 1], so the stack is a generic linear map)."""
    params = model.init(jax.random.key(seed), jnp.zeros(model.data_dim), jnp.zeros(1))
    p = dict(params["params"])
    last = f"stack_{model.mask_layers - 1}"
    shape = p[last]["kernel"].shape
    p[last] = {"kernel": 0.5 * jax.random.normal(jax.random.key(seed + 1), shape)}
    if bias is not None:
        for i in range(model.mask_layers - 1):
            p[f"stack_{i}"] = {
                **p[f"stack_{i}"],
                "bias": jnp.full_like(p[f"stack_{i}"]["bias"], bias),
            }
    return {"params": p}


def test_a_stacks_receptive_field_has_pixelcnns_blind_spot():
    assert stack_offsets(2, 1) == sorted(mask_offsets(2))
    field = set(stack_offsets(1, 2))
    assert {(-2, -2), (-2, 2), (-1, -2), (0, -2), (-1, 1)} <= field
    assert (-1, 2) not in field  # the blind spot, up and to the right
    assert all(dy < 0 or (dy == 0 and dx < 0) for dy, dx in stack_offsets(2, 4))
    assert len(stack_offsets(1, 3)) > len(field) > len(mask_offsets(1))


@pytest.mark.parametrize("layers", [2, 3])
def test_the_pixelcnn_stack_reads_its_receptive_field_and_nothing_else(layers):
    """With every ReLU open the stack is a linear map: its Jacobian is nonzero
    exactly on each pixel's receptive field (:func:`stack_offsets`) within the
    image, so it is causal in raster order and has the blind spot."""
    h, w = 4, 5
    model = VAE(
        h * w, 1, (8,), (8,), mask=1, image=(h, w), mask_layers=layers, mask_channels=6
    )
    params = stack_params(model, bias=10.0)
    x = jax.random.uniform(jax.random.key(2), (h * w,))
    jac = jax.jacfwd(lambda x: model.apply(params, jnp.zeros(1), x, method=VAE.decode))(
        x
    )
    want = np.zeros((h * w, h * w), bool)
    for r in range(h):
        for c in range(w):
            for dy, dx in stack_offsets(1, layers):
                if 0 <= r + dy and 0 <= c + dx < w:
                    want[r * w + c, (r + dy) * w + c + dx] = True
    np.testing.assert_array_equal(np.abs(np.asarray(jac)) > 1e-7, want)
    assert not np.any(np.triu(want))


def with_masked_head(model: VAE, params, x: np.ndarray) -> dict:
    """``params`` with the masked head at its pooled least-squares weights."""
    weights = masked_weights(x, model.image, mask_offsets(model.mask)).astype(
        np.float32
    )
    return {"params": {**params["params"], "masked": jnp.asarray(weights, jnp.float32)}}


def test_the_linear_vaes_collapse_eigenvalue_is_the_masked_innovations_lambda_max():
    """With the masked head at its least-squares weights the linear VAE's probe
    eigenvalue is lambda_max of the masked innovations' covariance, below C's."""
    x = ar1_images()
    model = VAE(12, 2, (), (), mask=1, image=IMAGE)
    params = model.init(jax.random.key(0), jnp.zeros(12), jnp.zeros(2))
    params = collapsed(model, with_masked_head(model, params, x), jnp.asarray(x))
    lam = float(collapse_eigenvalue(*collapse_grams(model, params, jnp.asarray(x))))
    ce = np.cov(
        whitened(x, masked_innovations(x, IMAGE, mask_offsets(1))),
        rowvar=False,
        bias=True,
    )
    assert lam == pytest.approx(top(ce), rel=1e-4)
    assert top(ce) < 0.5 * top(np.cov(x, rowvar=False, bias=True))


def test_innovations_are_the_conditional_residuals():
    """With the whole past as context the innovations are uncorrelated, with the
    conditional variances of C = L D L^T (Cholesky) as their variances; with a
    context of 1 on an AR(1) window they are too, up to sampling, and the first
    value's variance (5.26) is the top eigenvalue, far below C's."""
    x = ar1_windows()
    c = np.cov(x, rowvar=False, dtype=np.float64)
    ce = np.cov(whitened(x, innovations(x, 5)), rowvar=False, dtype=np.float64)
    chol = np.linalg.cholesky(c)
    assert np.allclose(ce, np.diag(np.diag(chol) ** 2), atol=1e-8)
    ce1 = np.cov(whitened(x, innovations(x, 1)), rowvar=False, dtype=np.float64)
    assert top(ce1) == pytest.approx(c[0, 0], rel=0.01)
    assert top(ce1) < 0.3 * top(c)
    with pytest.raises(DataError, match="must be below the data's 6 features"):
        innovations(x, 6)


@pytest.mark.parametrize("context", [1, 3])
def test_the_linear_vaes_collapse_eigenvalue_is_the_innovations_lambda_max(context):
    x = ar1_windows()
    model = VAE(6, 2, (), (), context=context)
    params = model.init(jax.random.key(0), jnp.zeros(6), jnp.zeros(2))
    params = collapsed(model, with_head(model, params, x), jnp.asarray(x))
    lam = float(collapse_eigenvalue(*collapse_grams(model, params, jnp.asarray(x))))
    ce = np.cov(whitened(x, innovations(x, context)), rowvar=False, bias=True)
    assert lam == pytest.approx(top(ce), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("widths", [((), ()), ((16, 8), (5, 12))])
def test_the_collapsed_states_hessian_turns_at_the_collapse_eigenvalue(widths):
    """The float64 Hessian of the loss at the collapsed state (the head at its
    least-squares weights), in the mean head's row and the decoder's z-column, has a
    negative eigenvalue exactly when beta sigma^2 < lambda_c."""
    enc, dec = widths
    x = ar1_windows(n=400)
    model = VAE(6, 1, enc, dec, context=2)
    params = model.init(jax.random.key(3), jnp.zeros(6), jnp.zeros(1))
    params = biased(params)
    params = collapsed(model, with_head(model, params, x), jnp.asarray(x))
    lam = float(collapse_eigenvalue(*collapse_grams(model, params, jnp.asarray(x))))
    if not enc:
        ce = np.cov(whitened(x, innovations(x, 2)), rowvar=False, bias=True)
        assert lam == pytest.approx(top(ce), rel=1e-4)
    assert_turns_at_lambda_c(collapsed_hessians(model, params, x, lam))


def residual_covariances(model, params, x):
    """(C_rx C_xx^-1 C_rx^T, C_rr): the covariance of the part of the head's
    residuals r = x - prediction that is linear in x, and of r itself."""
    ahead = jax.vmap(lambda xi: model.apply(params, xi, method=VAE.predicted))
    r = np.asarray(x - ahead(jnp.asarray(x)), np.float64)
    d = x.shape[1]
    c = np.cov(np.hstack([r, x]), rowvar=False, bias=True)
    c_rx, c_xx = c[:d, d:], c[d:, d:]
    return c_rx @ np.linalg.solve(c_xx, c_rx.T), c[:d, :d]


@pytest.mark.slow
@pytest.mark.parametrize("widths", [((), ()), ((16, 8), (5, 12))])
def test_the_gru_heads_collapsed_state_turns_at_its_own_innovations(widths):
    """With a GRU head (random weights) the probe reads x less the head's own
    prediction, and the float64 Hessian of the collapsed state turns there, for a
    linear and a deep network. For the linear VAE lambda_c is the top eigenvalue of
    the covariance of those residuals' best linear prediction from x (C_rx C_xx^-1
    C_xr): a linear encoder reaches only the part of r linear in x, all of r for a
    linear head, less for a nonlinear one."""
    enc, dec = widths
    x = ar1_windows(n=400)
    model = VAE(6, 1, enc, dec, recurrent=3)
    params = collapsed(model, biased(gru_params(model, 3)), jnp.asarray(x))
    lam = float(collapse_eigenvalue(*collapse_grams(model, params, jnp.asarray(x))))
    if not enc:
        linear, whole = residual_covariances(model, params, x)
        assert lam == pytest.approx(top(linear), rel=1e-4)
        assert top(linear) < top(whole) * (1 - 1e-3)  # r is not linear in x
    assert_turns_at_lambda_c(collapsed_hessians(model, params, x, lam))


@pytest.mark.slow
def test_the_masked_heads_collapsed_state_turns_at_the_collapse_eigenvalue():
    """The float64 Hessian of the collapsed state with the masked head at its
    least-squares weights, for a deep network, turns at the probe's lambda_c."""
    x = ar1_images()
    model = VAE(12, 1, (16, 8), (5, 12), mask=1, image=IMAGE)
    params = model.init(jax.random.key(3), jnp.zeros(12), jnp.zeros(1))
    params = with_masked_head(model, biased(params), x)
    params = collapsed(model, params, jnp.asarray(x))
    lam = float(collapse_eigenvalue(*collapse_grams(model, params, jnp.asarray(x))))
    assert_turns_at_lambda_c(collapsed_hessians(model, params, x, lam))


@pytest.mark.slow
@pytest.mark.parametrize("widths", [((), ()), ((16, 8), (5, 12))])
def test_the_pixelcnn_heads_collapsed_state_turns_at_its_own_innovations(widths):
    """With a PixelCNN stack (random weights, ReLUs part open) the float64 Hessian
    of the collapsed state turns at the probe's lambda_c, computed from the
    stack's own residuals, for a linear and a deep network; for the linear VAE
    that is lambda_max of their best linear prediction from x."""
    enc, dec = widths
    x = ar1_images()
    model = VAE(12, 1, enc, dec, mask=1, image=IMAGE, mask_layers=2, mask_channels=4)
    params = collapsed(model, biased(stack_params(model, 3)), jnp.asarray(x))
    lam = float(collapse_eigenvalue(*collapse_grams(model, params, jnp.asarray(x))))
    if not enc:
        linear, _ = residual_covariances(model, params, x)
        assert lam == pytest.approx(top(linear), rel=1e-4)
    assert_turns_at_lambda_c(collapsed_hessians(model, params, x, lam))


def ar1_counts(likelihood: str, n: int = 1500, dim: int = 6) -> np.ndarray:
    """Windows of binary values (the sign of the AR(1) windows) or counts (Poisson
    or negative binomial, r = 3, of log-mean 0.4 times them): each value depends on
    the ones before it."""
    z = ar1_windows(n=n, dim=dim, seed=1) * np.sqrt(1 - PHI**2)
    if likelihood == "bernoulli":
        return (z > 0).astype(np.float32)
    rng = np.random.default_rng(2)
    mean = np.exp(0.4 * z)
    if likelihood == "negative_binomial":
        mean = rng.gamma(R_COUNTS, mean / R_COUNTS)
    return rng.poisson(mean).astype(np.float32)


R_COUNTS = 3.0  # the negative-binomial test data's dispersion


@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson", "negative_binomial"])
def test_the_masked_glm_fit_is_the_one_hot_designs_fit(likelihood):
    """The masked head's fit, formed blockwise, is the fit of the whole design
    (a one-hot intercept column per pixel, then the neighbours) made explicit:
    the same coefficients to 1e-8, a radius-1 stack of 2 layers on 3 x 4 images."""
    x = ar1_counts(likelihood, n=300, dim=12).astype(np.float64)
    reach = stack_offsets(1, 2)
    bias, weights = masked_fit(x, IMAGE, reach, likelihood, R_COUNTS)
    views = neighbours(x, IMAGE, reach).reshape(-1, len(reach))
    design = np.hstack([np.tile(np.eye(12), (300, 1)), views])
    want = fit(lambda lo, hi: design[lo:hi], x.reshape(-1), likelihood, R_COUNTS)
    np.testing.assert_allclose(np.r_[bias, weights], want, rtol=1e-8, atol=1e-8)
    assert np.abs(weights).max() > 0.05  # the neighbours predict


def scipy_nll(likelihood: str, x: np.ndarray, eta: np.ndarray) -> float:
    """-ln p(x | eta) summed, from scipy.stats."""
    if likelihood == "bernoulli":
        return -scipy.stats.bernoulli.logpmf(x, scipy.special.expit(eta)).sum()
    if likelihood == "poisson":
        return -scipy.stats.poisson.logpmf(x, np.exp(eta)).sum()
    m = np.exp(eta)
    return -scipy.stats.nbinom.logpmf(x, R_COUNTS, R_COUNTS / (R_COUNTS + m)).sum()


@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson", "negative_binomial"])
def test_a_glm_heads_fit_is_the_likelihoods_optimum(likelihood):
    """The head at collapse (intercept and weights per feature) minimises the
    negative log-likelihood from scipy.stats: its coefficients match scipy's
    optimiser on feature 3 (to 1e-3), and every feature's fit predicts better than
    its intercept alone."""
    x = ar1_counts(likelihood).astype(np.float64)
    bias, weights = context_fit(x, 2, likelihood, R_COUNTS)
    cols = np.stack([np.ones(len(x)), x[:, 2], x[:, 1]], axis=1)
    best = scipy.optimize.minimize(
        lambda w: scipy_nll(likelihood, x[:, 3], cols @ w),
        np.zeros(3),
        method="BFGS",
        options={"gtol": 1e-8},
    ).x
    np.testing.assert_allclose([bias[3], *weights[3]], best, atol=1e-3)
    eta = bias + np.einsum("nik,ik->ni", lagged(x, 2), weights)
    link = scipy.special.logit if likelihood == "bernoulli" else np.log
    alone = link(x.mean(axis=0))
    for i in range(1, 6):
        fitted = scipy_nll(likelihood, x[:, i], eta[:, i])
        assert fitted < scipy_nll(likelihood, x[:, i], np.full(len(x), alone[i]))


def glm_headed(model: VAE, params, x: np.ndarray, likelihood: str) -> dict:
    """``params`` collapsed with the linear head and the decoder's output at the
    head's fit (:func:`phasevae.data.glm.context_fit`)."""
    bias, weights = context_fit(
        x.astype(np.float64), model.context, likelihood, R_COUNTS
    )
    p = {"params": {**params["params"], "ar": jnp.asarray(weights, jnp.float32)}}
    return collapsed(
        model, p, jnp.asarray(x), likelihood, jnp.asarray(bias, jnp.float32)
    )


@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson", "negative_binomial"])
def test_the_linear_vaes_probe_with_a_glm_head_is_the_printed_criterion(likelihood):
    """With the head at its fit, the linear VAE's probe (the score and curvature
    at each example's own output) equals lambda_max of the data's spectrum as
    ``phasevae theory`` prints it, and the head moves it below the headless
    (whitened) criterion."""
    x = ar1_counts(likelihood)
    model = VAE(6, 2, (), (), context=2)
    params = model.init(jax.random.key(0), jnp.zeros(6), jnp.zeros(2))
    params = glm_headed(model, params, x, likelihood)
    grams = collapse_grams(model, params, jnp.asarray(x), likelihood, R_COUNTS)
    lam = float(collapse_eigenvalue(*grams))
    whiten, _ = head_whitening(x, likelihood, R_COUNTS, 2, 0, 1, None, "x")
    printed = top(np.cov(whitened(x, whiten), rowvar=False, bias=True))
    assert lam == pytest.approx(printed, rel=1e-4)
    plain = whitening(x, likelihood, "x", R_COUNTS)
    assert printed < 0.9 * top(np.cov(whitened(x, plain), rowvar=False, bias=True))


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson"])
def test_a_glm_heads_collapsed_state_turns_at_the_collapse_eigenvalue(likelihood):
    """The float64 Hessian of the collapsed state with the head at its fit, for a
    deep network, turns at the probe's lambda_c."""
    x = ar1_counts(likelihood, n=600)
    model = VAE(6, 1, (16, 8), (5, 12), context=2)
    params = model.init(jax.random.key(3), jnp.zeros(6), jnp.zeros(1))
    params = glm_headed(model, biased(params), x, likelihood)
    grams = collapse_grams(model, params, jnp.asarray(x), likelihood)
    lam = float(collapse_eigenvalue(*grams))
    assert_turns_at_lambda_c(collapsed_hessians(model, params, x, lam, likelihood))


@pytest.mark.slow
@pytest.mark.parametrize(
    "head",
    [
        {"context": 2},
        {"recurrent": 3},
        {"mask": 1},
        {"mask": 1, "mask_layers": 2, "mask_channels": 3},
        {"context": 2, "likelihood": "bernoulli"},
        {"mask": 1, "likelihood": "poisson"},
        {"mask": 1, "kind": "conv", "channels": [4], "kernel": 2},
    ],
)
def test_a_vmapped_sweep_of_each_head_equals_its_models_run_alone(tmp_path, head):
    likelihood = head.get("likelihood", "gaussian")
    x = (
        ar1_windows(n=256, dim=6)
        if likelihood == "gaussian"
        else ar1_counts(likelihood, n=256)
    )
    np.save(tmp_path / "x.npy", x.reshape(256, 2, 3) if "mask" in head else x)
    raw = tiny_dict(
        data={"source": "array", "path": str(tmp_path / "x.npy")}
        | ({} if likelihood == "gaussian" else {"normalize": "none"}),
        model=head,
        grid={"sigma2": [0.5, 2.0, 8.0], "beta": [1.0], "seeds": [0]},
        train={"steps": 5, "eval_every": 5},
    )
    if "kind" in head:  # the conv VAE takes no MLP widths
        del raw["model"]["encoder"], raw["model"]["decoder"]
    spec = spec_from_dict(raw)
    assert_vmapped_equals_alone(spec, load_for_model(spec))


@pytest.mark.parametrize(
    "model, words",
    [
        ({"context": 2, "recurrent": 4}, "set one"),
        ({"mask": 1, "recurrent": 4}, "set one"),
        ({"mask": 1}, "needs image data"),
        ({"mask_layers": 2}, "apply to model.mask > 0"),
        ({"mask": 1, "mask_channels": 8}, "applies to model.mask_layers > 1"),
        ({"mask": 1, "mask_layers": 17}, "too deep; at most 16"),
        ({"recurrent": 4, "skip": "gated"}, "model.recurrent .* without a skip path"),
        (
            {"context": 2, "likelihood": "categorical", "categories": 3},
            "other than categorical",
        ),
        (
            {
                "context": 2,
                "likelihood": "negative_binomial",
                "dispersion": 1.0,
                "learned_dispersion": True,
            },
            "takes a fixed model.dispersion",
        ),
        ({"context": 2, "skip": "plain"}, "without a skip path"),
        ({"context": 4}, "must be below the data's 4 features"),
    ],
)
def test_a_context_the_model_cannot_use_is_a_spec_error(model, words):
    data = {"normalize": "none"} if "likelihood" in model else {}
    with pytest.raises(SpecError, match=words):
        spec_from_dict(tiny_dict(model=model, data=data))


def test_a_sweep_with_a_context_compares_with_the_innovations(tmp_path, capsys):
    x = ar1_windows(n=400, dim=5)
    np.save(tmp_path / "ar.npy", x)
    spec = write_spec(
        tmp_path,
        data={"source": "array", "path": str(tmp_path / "ar.npy"), "normalize": "none"},
        model={"context": 1, "encoder": [8], "decoder": [8]},
        grid={"sigma2": [0.5, 2.0, 5.0, 12.0], "beta": [1.0]},
    )
    assert main(["theory", str(spec)]) == 0
    printed = capsys.readouterr().out
    ce = np.cov(whitened(x, innovations(x, 1)), rowvar=False, bias=True)
    assert f"{top(ce):.4g}" in printed and "innovations" in printed
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    meta = (out / "meta.json").read_text()
    assert "innovations given 1 predecessors" in meta
    too_long = write_spec(
        tmp_path,
        data={"source": "array", "path": str(tmp_path / "ar.npy"), "normalize": "none"},
        model={"context": 5},
    )
    assert main(["sweep", str(too_long), "--out", str(tmp_path / "bad")]) == 2
    assert "must be below the data's 5 features" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    table = write_spec(  # a masked convolution on rows that are not images
        tmp_path,
        data={"source": "array", "path": str(tmp_path / "ar.npy"), "normalize": "none"},
        model={"mask": 1},
    )
    assert main(["sweep", str(table), "--out", str(tmp_path / "bad")]) == 2
    assert "needs images of one channel" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def context_axis_spec(path, **grid) -> dict:
    """A spec over grid.context on the AR(1) windows saved at ``path``."""
    return tiny_dict(
        data={"source": "array", "path": str(path), "normalize": "none"},
        model={"encoder": [8], "decoder": [8], "latent_dim": 2},
        train={"steps": 5, "eval_every": 5, "batch_size": 32},
        grid={"sigma2": [0.5, 1.0, 2.0, 4.0], "beta": [1.0], "seeds": [0], **grid},
    )


@pytest.mark.slow
@pytest.mark.parametrize("head", ["context", "mask", "recurrent"])
def test_a_context_axis_trains_each_point_as_a_model_of_its_context(tmp_path, head):
    """Each point of grid.context = [0, 1, 2] trains as the model whose head
    (linear, or a masked convolution) has that reach, run alone. A GRU of k state
    units alone draws its initial weights in another shape, so of a GRU head's
    points only reach 0 (no head) trains as the model alone; that the held GRU
    predicts as the k-unit GRU is tested above."""
    from phasevae import api

    x = ar1_windows(n=256, dim=12 if head == "mask" else 5)
    np.save(tmp_path / "ar.npy", x.reshape(256, *IMAGE) if head == "mask" else x)
    raw = context_axis_spec(tmp_path / "ar.npy", context=[0, 1, 2])
    raw["model"][head] = 2
    assert getattr(spec_from_dict(raw).model, head) == 2  # the head is the widest
    axis = api.run(raw, tmp_path / "axis").metrics
    keys = ["kl", "loss", "mse", "mi"]
    for k in (0,) if head == "recurrent" else (0, 1, 2):
        alone = context_axis_spec(tmp_path / "ar.npy")
        alone["model"][head] = k
        got = api.run(alone, tmp_path / f"alone{k}").metrics.sort_values("sigma2")
        mine = axis[axis["context"] == k].sort_values("sigma2")
        np.testing.assert_allclose(mine[keys].values, got[keys].values, rtol=1e-5)
    doc = api.open_run(tmp_path / "axis").analyze()
    spectrum = api.predict(tmp_path / "axis")
    by_context = {p["context"]: p["sigma2_c"] for p in spectrum["predictions"]}
    assert sorted(by_context) == [0.0, 1.0, 2.0]
    for t in doc.transitions:  # each curve against its own context's criterion
        assert t.theory_sigma2_c == pytest.approx(by_context[t.curve["context"]])
    from phasevae.report.figures import write_figures

    assert "phase_diagram_context" in write_figures(tmp_path / "axis")


def test_each_contexts_criterion_is_its_innovations_lambda_max(tmp_path):
    from phasevae import api
    from phasevae.analysis.theory import curve_eigenvalues
    from phasevae.data import load_for_model

    x = ar1_windows(n=500, dim=6, seed=3)
    x[:, 2:] += 0.5 * x[:, :-2].copy()  # a second lag, so contexts 1 and 2 differ
    np.save(tmp_path / "ar.npy", x)
    raw = context_axis_spec(tmp_path / "ar.npy", context=[0, 1, 2, 4])
    spectrum = load_for_model(spec_from_dict(raw)).spectrum()
    predicted = {p["context"]: p["sigma2_c"] for p in api.predict(raw)["predictions"]}
    tops = []
    for k in (0, 1, 2, 4):
        data = load_dataset(spec_from_dict(raw).data, context=k)
        own = curve_eigenvalues(spectrum, {"context": k})
        np.testing.assert_allclose(own, data.eigenvalues, rtol=1e-6, atol=1e-9)
        assert predicted[k] == pytest.approx(data.eigenvalues[0], rel=1e-6)
        tops.append(data.eigenvalues[0])
    assert tops[0] > tops[1] > tops[2]  # the longer the context, the less for z


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("head", [{"mask": 2}, {"mask": 1, "mask_layers": 2}])
def test_each_radius_criterion_is_its_masked_heads(tmp_path, head, likelihood):
    """Over a masked head's radius (grid.context) each curve's criterion is that of
    the head of its radius alone (radius 0: no head), for the Gaussian and the
    Bernoulli (whose score the best generalised linear prediction leaves)."""
    from phasevae.analysis.theory import curve_eigenvalues

    x = ar1_windows(n=300, dim=20, seed=4).reshape(300, 4, 5)
    data = {"source": "array", "path": str(tmp_path / "x.npy")}
    if likelihood == "bernoulli":
        x, data = (x > 0).astype(np.float32), data | {"normalize": "none"}
    np.save(tmp_path / "x.npy", x)
    reaches = list(range(head["mask"] + 1))
    model = head | {"likelihood": likelihood}
    spec = spec_from_dict(tiny_dict(data=data, model=model, grid={"context": reaches}))
    spectrum = load_for_model(spec).spectrum()
    tops = []
    for k in reaches:
        alone = {**model, "mask": k} if k else {"likelihood": likelihood}
        own = load_for_model(spec_from_dict(tiny_dict(data=data, model=alone)))
        got = curve_eigenvalues(spectrum, {"context": float(k)})
        np.testing.assert_allclose(got, own.eigenvalues, rtol=1e-6, atol=1e-9)
        tops.append(own.eigenvalues[0])
    assert tops[0] > tops[-1]  # a head leaves less for z


def test_theory_says_each_context_has_its_own_criterion(tmp_path, capsys):
    """`phasevae theory` of a context axis does not present the spectrum's top
    eigenvalue as the run's criterion: it names the axis, and each curve's."""
    np.save(tmp_path / "ar.npy", ar1_windows(n=300, dim=5))
    path = tmp_path / "ctx.toml"
    path.write_text(
        tomli_w.dumps(context_axis_spec(tmp_path / "ar.npy", context=[0, 2]))
    )
    assert main(["theory", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the criterion depends on context" in out
    assert "collapse when beta * sigma^2 > lambda_max" not in out
    assert "context = 0: sigma2_c" in out and "context = 2: sigma2_c" in out


@pytest.mark.parametrize(
    "grid, model, words",
    [
        ({"context": [0, 1.5]}, {}, "whole numbers"),
        ({"context": [-2, 1]}, {}, "whole numbers"),
        ({"context": [0]}, {}, "no value above 0"),
        ({"context": [1, 2]}, {"context": 3}, "needs model.context = 2"),
        ({"context": [1, 2]}, {"recurrent": 4}, "needs model.recurrent = 2"),
        ({"context": [1, 2]}, {"recurrent": 2, "context": 2}, "set one"),
        ({"context": [1, 4]}, {}, "must be below the data's 4 features"),
        ({"context": [1, 2]}, {"skip": "plain"}, "grid.context .*without a skip"),
    ],
)
def test_a_context_axis_the_model_cannot_use_is_a_spec_error(grid, model, words):
    data = {"normalize": "none"} if "likelihood" in model else {}
    with pytest.raises(SpecError, match=words):
        spec_from_dict(tiny_dict(grid=grid, model=model, data=data))


def test_series_windows_are_consecutive_values_of_the_recording():
    """Each window is ``window`` consecutive values of one channel of matplotlib's
    recording, drawn from the seed; the EEG's windows never cross channels."""
    from phasevae.data.series import segments, series_windows

    (membrane,) = segments("membrane")
    assert membrane.shape == (12000,) and np.isfinite(membrane).all()
    x, what = series_windows("membrane", 6, 200, seed=1)
    assert x.shape == (200, 6) and "membrane.dat" in what
    windows = np.lib.stride_tricks.sliding_window_view(membrane.astype(np.float32), 6)
    assert {tuple(row) for row in x} <= {tuple(w) for w in windows}
    assert np.array_equal(x, series_windows("membrane", 6, 200, seed=1)[0])
    assert not np.array_equal(x, series_windows("membrane", 6, 200, seed=2)[0])
    channels = segments("eeg")
    assert len(channels) == 4 and all(c.shape == (800,) for c in channels)
    x, what = series_windows("eeg", 8, 4000, seed=0)
    windows = {
        tuple(w)
        for c in channels
        for w in np.lib.stride_tricks.sliding_window_view(c.astype(np.float32), 8)
    }
    assert all(tuple(row) in windows for row in x)
    assert "with replacement from the 3,172" in what


def test_a_series_spec_is_globally_scaled_and_its_criterion_the_innovations():
    spec = spec_from_dict(
        {"data": {"source": "series", "series": "eeg", "samples": 1000}}
        | {"model": {"context": 2}}
    )
    assert spec.data.normalize == "global"
    data = load_for_model(spec)
    x = data.x.astype(np.float64)
    assert abs(x.mean()) < 1e-6 and x.std() == pytest.approx(1.0, rel=1e-5)
    ce = np.cov(whitened(x, innovations(x, 2)), rowvar=False, bias=True)
    assert data.eigenvalues[0] == pytest.approx(top(ce), rel=1e-6)
    with pytest.raises(SpecError, match="data.series = 'ecg' is not allowed"):
        spec_from_dict({"data": {"source": "series", "series": "ecg"}})
