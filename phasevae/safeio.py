"""Safe file I/O. Every read of a user's file or a run directory's file is checked
first: that the path is a regular file (not a directory, FIFO, device or socket, even
behind a symlink), that it fits the size allowed for what it is, and that its text
decodes. A problem is a :class:`~phasevae.errors.BadInput` whose message names the
file; nothing is read past the limit and nothing blocks (a FIFO is never opened).
Every write is atomic (:func:`atomic_write`): a kill leaves the old file or the new
one, never half of one.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from phasevae.errors import BadInput

KIB, MIB, GIB = 2**10, 2**20, 2**30
SPEC_BYTES = 1 * MIB  # a spec file, or a run's spec.toml
META_BYTES = 64 * MIB  # a run's meta.json (a point status per grid point)

_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def check_file(
    path: str | Path, what: str, max_bytes: int | None = None, error=BadInput
) -> int:
    """The size of ``path`` after checking it is a regular file of at most
    ``max_bytes``. ``what`` names it in messages ("spec file", "data file (data.path)").

    Raises:
      ``error`` (a BadInput): missing, not a regular file, too large or unreadable.
    """
    path = Path(path)
    try:
        st = path.stat()  # follows symlinks: a link to /dev/zero is a device
    except FileNotFoundError:
        if path.is_symlink():
            raise error(f"{what} {path} is a symlink to nothing") from None
        tried = "" if path.is_absolute() else f" (tried {os.path.abspath(path)})"
        raise error(f"{what} {path} does not exist{tried}") from None
    except (OSError, ValueError) as e:
        raise error(f"{what} {brief(str(path))}: cannot be read ({e})") from None
    for test, kind in _KINDS.items():
        if test(st.st_mode):
            raise error(f"{what} {path} is {kind}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(
            f"{what} {path} is {st.st_size:,} bytes; a {what} may be at most "
            f"{max_bytes:,} bytes"
        )
    if not os.access(path, os.R_OK):
        raise error(f"{what} {path} is not readable (permission denied)")
    return st.st_size


def read_bytes(path: str | Path, what: str, max_bytes: int, error=BadInput) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked again while
    reading: a file that grows is cut off and refused)."""
    check_file(path, what, max_bytes, error)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path} grew past {max_bytes:,} bytes while being read")
    return data


def read_text(path: str | Path, what: str, max_bytes: int, error=BadInput) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``."""
    data = read_bytes(path, what, max_bytes, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def brief(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for a message."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}... ({len(text):,} characters)"


def check_out_dir(path: str | Path) -> Path:
    """An output directory that can be created or written, checked before any work:
    not empty, not a file, under a directory, writable.

    Raises:
      BadInput: saying which of these fails.
    """
    if not str(path).strip():
        raise BadInput("--out is empty; give a directory")
    if "\x00" in str(path):
        raise BadInput("--out contains a NUL character")
    path = Path(path)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"--out {brief(str(path))} is not UTF-8 text") from None
    if path.exists() and not path.is_dir():
        raise BadInput(f"--out {path} exists and is not a directory")
    ancestor = path
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise BadInput(f"--out {path}: {ancestor} is a symlink to nothing")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BadInput(f"--out {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise BadInput(f"--out {path}: {ancestor} is not writable")
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name (not mkstemp, whose 0600 mode would ignore the umask)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
