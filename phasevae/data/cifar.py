"""Read the official CIFAR-10 archives in place, without extracting or trusting them.

Two official formats are accepted, told apart by their member names:

* ``cifar-10-binary.tar.gz``: ``cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin``,
  records of 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B, row-major),
  parsed as raw bytes;
* ``cifar-10-python.tar.gz``: ``cifar-10-batches-py/{data_batch_1..5,test_batch}``,
  Python pickles of a dict with ``b"data"`` (n, 3072) uint8. They are read with a
  restricted unpickler that builds nothing but dicts, lists, strings, bytes, numbers
  and numpy arrays: a pickle that asks for any other class or function is refused,
  since unpickling it would run arbitrary code.

Members are read from the tar stream; only the expected names are opened, and a name
that is absolute or climbs out with ``..`` is refused. Sizes are checked from each
member's header before anything is read: no member may exceed ``MAX_MEMBER`` (an
official batch of 10,000 images is 30.7 MB as records, 31.0 MB as a pickle) and an
archive may hold at most ``MAX_MEMBERS`` entries, so a small archive that inflates to
gigabytes is refused, not read.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from phasevae.errors import BadInput
from phasevae.safeio import brief, check_file

RECORD = 1 + 3 * 32 * 32
MAX_MEMBER = 40 * 2**20  # bytes of one member: an official batch is ~31 MB
MAX_MEMBERS = 1000  # entries in one archive: the official ones hold 9 or 10
_BATCHES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
_FORMATS = {
    "binary": ("cifar-10-batches-bin", ".bin"),
    "python": ("cifar-10-batches-py", ""),
}
# what numpy needs to rebuild an array from a pickle, and the str -> bytes conversion
# Python 3 writes for bytes in protocol 2; nothing else is built
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class CifarError(BadInput):
    """A CIFAR-10 archive that is missing, truncated, malformed or unsafe."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise CifarError(
            f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only dicts, "
            "lists, strings, bytes, numbers and numpy arrays (anything else could run "
            "code)"
        )


def load_cifar10(
    path: str | Path, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of ``split`` ("train", "test" or "all").

    Returns:
      images (n, 32, 32, 3) uint8 RGB, labels (n,) uint8.

    Raises:
      CifarError: missing file, not a tar archive, truncated, unexpected layout, or a
        pickle that asks for anything but plain data.
    """
    path = Path(path)
    check_file(path, "CIFAR-10 archive (data.path)", error=CifarError)
    wanted = _BATCHES["train"] + _BATCHES["test"] if split == "all" else _BATCHES[split]
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fmt = None
    try:
        with tarfile.open(path, "r:*") as tar:
            for count, m in enumerate(tar, 1):
                name = PurePosixPath(m.name)
                if name.is_absolute() or ".." in name.parts:
                    raise CifarError(
                        f"{path}: refusing unsafe member name {brief(m.name)}"
                    )
                if count > MAX_MEMBERS:
                    raise CifarError(
                        f"{path}: more than {MAX_MEMBERS} entries; not an official "
                        "CIFAR-10 archive"
                    )
                if m.size > MAX_MEMBER:
                    raise CifarError(
                        f"{path}: member {brief(m.name)} is {m.size:,} bytes; a "
                        f"CIFAR-10 member is at most {MAX_MEMBER:,}"
                    )
                batch, kind = _batch_of(m.name)
                if batch not in wanted or not m.isfile():
                    continue
                if fmt is not None and kind != fmt:
                    raise CifarError(f"{path}: holds batches of both formats")
                fmt = kind
                raw = tar.extractfile(m).read()
                read = _read_binary if kind == "binary" else _read_python
                found[batch] = read(raw, f"{path}:{m.name}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise CifarError(
            f"{path}: not a readable tar.gz archive, or truncated ({e})"
        ) from None
    if fmt is None:
        raise CifarError(
            f"{path}: not an official CIFAR-10 archive (no cifar-10-batches-bin/ or "
            "cifar-10-batches-py/ batches inside)"
        )
    folder, suffix = _FORMATS[fmt]
    missing = [f"{folder}/{b}{suffix}" for b in wanted if b not in found]
    if missing:
        raise CifarError(f"{path}: member {missing[0]} is missing")
    images = [found[b][0] for b in wanted]
    labels = [found[b][1] for b in wanted]
    return np.concatenate(images), np.concatenate(labels)


def _batch_of(name: str) -> tuple[str | None, str | None]:
    """(batch name, format) of an official member name, else (None, None)."""
    for fmt, (folder, suffix) in _FORMATS.items():
        for batch in _BATCHES["train"] + _BATCHES["test"]:
            if name == f"{folder}/{batch}{suffix}":
                return batch, fmt
    return None, None


def _read_binary(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) == 0 or len(raw) % RECORD:
        raise CifarError(f"{where}: {len(raw)} bytes is not a whole number of records")
    rec = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
    return rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[:, 0].copy()


def _read_python(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except CifarError as e:
        raise CifarError(f"{where}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise CifarError(f"{where}: not a readable CIFAR-10 batch ({e})") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise CifarError(
            f"{where}: expected a dict with b'data', a (n, 3072) uint8 array"
        )
    if data.shape[1] != 3072:
        raise CifarError(f"{where}: b'data' has {data.shape[1]} columns, not 3072")
    labels = np.asarray(batch.get(b"labels", np.zeros(len(data))), np.uint8)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels
