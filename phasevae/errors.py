"""The exceptions the command line turns into exit statuses: BadInput (2) and
Terminated (143)."""

import threading


class BadInput(Exception):
    """Bad input: a spec, a data file or an argument that cannot be used as given.

    The message is shown to the user as it is, so it names what is wrong and what is
    allowed.
    """


class DataError(BadInput):
    """A data file or data setting that cannot be used."""


def optional(
    module: str, package: str, needed_for: str, extra: str = "datasets", error=DataError
):
    """Import ``module`` from the ``[extra]`` extra, or raise ``error`` saying how to
    install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(
            f"{needed_for} needs {package}, which is not installed: "
            f"pip install '.[{extra}]' in a clone of phasevae (or pip install "
            f"{package})"
        ) from None


class Terminated(BaseException):
    """SIGTERM arrived before training started. A BaseException, as
    KeyboardInterrupt, so that no ``except Exception`` eats it."""


class SingleDeviceWarning(UserWarning):
    """JAX started before phasevae could split the CPU into devices: the sweep
    trains on one CPU device, slower than the command line."""


TERM_REQUESTED = threading.Event()  # set by the command line's SIGTERM handler


def stop_if_terminated() -> None:
    """Raise :class:`Terminated` if SIGTERM arrived (checked between start-up
    phases: loading data, compiling; training then stops at a chunk boundary)."""
    if TERM_REQUESTED.is_set():
        raise Terminated
