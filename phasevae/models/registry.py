"""Which flax module a sweep trains, and the protocol check (:mod:`phasevae.models.vae`)
every module passes with one example before anything compiles.

``model.kind = "mlp"`` is the built-in MLP VAE (built by the trainer from the widths),
``"conv"`` the convolutional VAE of :mod:`phasevae.models.conv`, ``"module"`` a user's:
``model.module = "package.module:factory"``, an importable callable returning a flax
module, called with ``model.options`` as keyword arguments (and ``data_shape``,
``latent_dim`` where it declares them). From Python, :func:`register` gives a module
object (or a factory) a label that stands in ``model.module`` (``python:...``); such a
run resumes only from Python, with the same object passed again.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from phasevae.errors import BadInput
from phasevae.models.conv import ConvVAE
from phasevae.models.plugins import GROUP, declared
from phasevae.models.vrnn import VRNN
from phasevae.spec import ModelSpec, Spec, axis_values

_OBJECTS: dict[str, nn.Module | Callable] = {}  # labels of register()


_TRACING = (  # a module that works on concrete arrays only
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


class ModelError(BadInput):
    """A model that cannot be built or does not follow the protocol."""


def register(obj: nn.Module | Callable) -> str:
    """The ``model.module`` label of a module object or factory given from Python.
    The label names the class (and, for a module, a hash of its fields' repr), so a
    resumed run with a different module is refused as a different spec."""
    if isinstance(obj, nn.Module):
        kind = type(obj)
        tag = "#" + hashlib.sha1(repr(obj).encode()).hexdigest()[:10]
    elif callable(obj):
        kind, tag = obj, ""
    else:
        raise ModelError(
            f"model = {type(obj).__name__}: expected a flax module or a callable "
            "returning one"
        )
    label = f"python:{kind.__module__}.{kind.__qualname__}{tag}"
    _OBJECTS[label] = obj
    return label


def example_shape(
    kind: str, data_dim: int, image_shape: tuple[int, ...] | None
) -> tuple[int, ...]:
    """The shape one example reaches the model in: flat (N,) for the MLP and for
    tables, (h, w, c) for images otherwise."""
    if kind not in ("mlp", "vrnn") and image_shape:
        h, w = image_shape[:2]
        return (h, w, data_dim // (h * w))
    if kind == "conv":
        raise ModelError(
            'model.kind = "conv" needs image data: data.source = "digits", '
            '"patches", "cifar10", or an array of images (n, h, w) or (n, h, w, c)'
        )
    return (data_dim,)


def build(
    m: ModelSpec, shape: tuple[int, ...], compute_dtype: Any = None
) -> nn.Module | None:
    """The module of ``m`` for examples of ``shape``, its products' operands cast to
    ``compute_dtype`` (``train.precision``; a user's module is built as it is);
    None for the MLP, which the trainer builds from its widths."""
    if m.kind == "mlp":
        return None
    if m.kind == "vrnn":
        return VRNN(
            shape[0], m.latent_dim, m.state, m.encoder, m.decoder, compute_dtype
        )
    if m.kind == "conv":
        side = min(shape[:2])
        if 2 ** len(m.channels) > side or m.kernel > side:
            raise ModelError(
                f"model.channels = {list(m.channels)} and model.kernel = {m.kernel} "
                f"do not fit images of {shape[0]} x {shape[1]}: each layer halves the "
                f"image (at most {int(math.log2(side))} layers here) and a kernel "
                f"spans at most the image ({side})"
            )
        return ConvVAE(
            m.latent_dim,
            shape,
            tuple(m.channels),
            m.kernel,
            compute_dtype,
            m.mask,
            m.mask_layers,
            m.mask_channels,
        )
    made = _factory(m.module)
    if isinstance(made, nn.Module):
        if m.options:
            raise ModelError(
                f"model.options applies to a factory; {m.module} is a module object"
            )
        return made
    kwargs = dict(m.options)
    params = inspect.signature(made).parameters
    for name, value in (("data_shape", shape), ("latent_dim", m.latent_dim)):
        if name in params and name not in kwargs:
            kwargs[name] = value
    try:
        module = made(**kwargs)
    except Exception as e:  # the user's code: any failure is their input's
        raise ModelError(
            f"model.module {m.module}: the factory raised {_short(e)}"
        ) from None
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"model.module {m.module}: the factory returned a "
            f"{type(module).__name__}, not a flax linen Module"
        )
    return module


def footprint(module: nn.Module, shape: tuple[int, ...], k: int) -> tuple[int, int]:
    """(parameters, activations per example) of ``module``, from shapes alone: the
    sizes of its parameters and of every submodule's output (flax's intermediates),
    for the memory estimate made before anything is allocated."""
    x, eps = jnp.zeros(shape), jnp.zeros((k,))
    if hasattr(module, "latent_noise"):  # a built-in latent with its own noise
        eps = jnp.zeros(module.latent_noise(jax.random.key(0), 1).shape[1:])
    params = jax.eval_shape(module.init, jax.random.key(0), x, eps)

    def run(p):
        return module.apply(p, x, eps, capture_intermediates=True, mutable=True)[1]

    acts = jax.eval_shape(run, params)
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    units = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(acts))
    return count, units


def verify(spec: Spec, x: np.ndarray, image_shape: tuple[int, ...] | None) -> None:
    """Build the module of ``spec`` for data ``x`` (n, N) and, for a user's module,
    :func:`check` it on the first example (the built-in models are checked by the
    test suite; for them this only checks that the data suits the kind)."""
    m = spec.model
    shape = example_shape(m.kind, x.shape[1], image_shape)
    module = build(m, shape)
    if m.kind == "module":
        scaled = axis_values(spec.grid.decoder_init_scale) != (1.0,)
        check(
            module,
            f"model.module {m.module}",
            x[0].reshape(shape),
            m.latent_dim,
            scaled,
        )


def check(
    module: nn.Module,
    name: str,
    x: np.ndarray,
    latent_dim: int,
    scaled: bool,
) -> None:
    """The protocol, checked on one example ``x`` (in the module's example shape)
    eagerly, then traced under both vmaps (examples, models) without running.

    Raises:
      ModelError: init or apply fails; outputs are not (mu (k,), logvar (k,), xhat of
        x's shape); NaN or inf in the initial parameters or the outputs; state other
        than ``params`` (batch statistics: the sweep trains ``params`` only); no
        ``output_layer`` kernel while ``scaled`` (grid.decoder_init_scale != 1);
        the module cannot be traced under jax.vmap.
    """
    x = jnp.asarray(x, jnp.float32)
    eps = jnp.zeros((latent_dim,), jnp.float32)
    where = f"{name} on one example of shape {tuple(x.shape)}"
    params = _traced(module.init, "init", where)(jax.random.key(0), x, eps)
    if set(params) != {"params"}:
        raise ModelError(
            f"{where}: the module keeps state besides params ({sorted(params)}); the "
            "sweep trains params only (no batch statistics: use LayerNorm or none)"
        )
    out = _traced(module.apply, "apply", where)(params, x, eps)
    if not (isinstance(out, tuple | list) and len(out) == 3):
        raise ModelError(f"{where}: __call__(x, eps) must return (mu, logvar, xhat)")
    want = ((latent_dim,), (latent_dim,), tuple(x.shape))
    got = tuple(tuple(np.shape(o)) for o in out)
    if got != want:
        raise ModelError(
            f"{where}: (mu, logvar, xhat) have shapes {got}; the protocol needs "
            f"{want} (latent_dim = {latent_dim}, xhat of x's shape)"
        )
    leaves = [*jax.tree.leaves(params), *out]
    if not all(np.isfinite(np.asarray(a)).all() for a in leaves):
        raise ModelError(f"{where}: NaN or inf in the initial parameters or outputs")
    if scaled:
        _check_output_layer(module, params, where)

    def one(p, xi, ei):
        return module.apply(p, xi, ei)

    def two(a):  # the shape of two of a (models, or examples)
        return jax.ShapeDtypeStruct((2, *np.shape(a)), a.dtype)

    try:
        jax.eval_shape(
            jax.vmap(jax.vmap(one, (None, 0, 0)), (0, None, None)),
            jax.tree.map(two, params),
            two(x),
            two(eps),
        )
    except Exception as e:
        raise ModelError(
            f"{name}: cannot be traced under jax.vmap: {_short(e)}"
        ) from None


def _traced(fn: Callable, what: str, where: str) -> Callable:
    """``fn`` jitted (one compile, where eager execution compiles every operation:
    seconds for a conv), its failures as ModelError naming ``what`` failed."""

    def call(*args):
        try:
            return jax.jit(fn)(*args)
        except _TRACING as e:
            raise ModelError(
                f"{where}: cannot be traced (jit, vmap): {_short(e)}"
            ) from None
        except Exception as e:
            raise ModelError(f"{where}: {what} failed: {_short(e)}") from None

    return call


def _check_output_layer(module: nn.Module, params, where: str) -> None:
    path = getattr(module, "output_layer", None)
    node = params["params"]
    for key in path or ():
        node = node.get(key) if isinstance(node, dict) else None
    if not path or not isinstance(node, dict) or "kernel" not in node:
        raise ModelError(
            f"{where}: grid.decoder_init_scale needs the module's output_layer (the "
            f"path in params of the decoder's last layer, with a kernel); it has "
            f"{path!r}"
        )


def _factory(label: str):
    """The object ``model.module`` names."""
    if label.startswith("python:"):
        if label not in _OBJECTS:
            raise ModelError(
                f"model.module = {label!r} was a Python object given to the API "
                "(pv.run(..., model=...)); continue this run from Python, passing "
                "the same module again"
            )
        return _OBJECTS[label]
    path, _, attr = label.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` would: the working directory
        sys.path.append(os.getcwd())
    try:
        obj = importlib.import_module(path)
    except Exception as e:
        raise ModelError(
            f"model.module {label}: cannot import {path}: {_short(e)}"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model.module {label}: {path} has no {attr}")
        obj = getattr(obj, part)
    if not declared(obj, label):
        what = "a class" if isinstance(obj, type) else type(obj).__name__
        raise ModelError(
            f"model.module {label} names {what}, neither a flax Module class nor a "
            "factory declared as one (decorate it with @phasevae.model_factory, or "
            f"list it in the {GROUP!r} entry points): a spec may not call anything "
            "else. It was not called"
        )
    return obj


def _short(e: Exception) -> str:
    """One line of an exception: its type and the first line of its message."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"
