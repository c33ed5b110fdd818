"""Which callables a spec may name as a model (``model.module = "pkg.mod:name"``): a
flax ``Module`` class, or a factory that declares itself one, with the
:func:`model_factory` decorator or as an entry point of the ``phasevae.models``
group (as plugin systems do). Anything else a spec names is refused before it is
called: a spec is data that people send each other, and ``model.module =
"os:system"`` with a command in ``model.options`` ran it. Importing the module a spec
names still runs that module's code (that is how a model is found); only
``sweep``, ``locate`` and ``validate`` import it, never ``analyze``, ``plot``,
``report``, ``status``, ``theory`` or ``merge``. No JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

GROUP = "phasevae.models"
_MARK = "__phasevae_model_factory__"


def model_factory(fn: Callable) -> Callable:
    """Declare ``fn`` a model factory that a spec may name: it returns a flax
    module and is called with ``model.options`` (and ``data_shape``,
    ``latent_dim`` where it takes them)::

        import phasevae

        @phasevae.model_factory
        def make(data_shape, latent_dim, width=64):
            return MyVAE(data_shape, latent_dim, width)
    """
    setattr(fn, _MARK, True)
    return fn


def declared(obj, label: str) -> bool:
    """Whether ``obj`` (what ``label`` names) may be used: a flax Module class or
    instance, a function marked by :func:`model_factory`, or the object of an
    entry point of the ``phasevae.models`` group whose value is ``label``."""
    import flax.linen as nn

    if isinstance(obj, nn.Module):
        return True
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return True
    if getattr(obj, _MARK, False) is True:
        return True
    return any(ep.value == label for ep in metadata.entry_points(group=GROUP))
