"""Reading the user's array files (``data.source = "array"``): .npy, .npz, .csv and
.parquet, checked before they are read: a regular file, the format's first bytes, and
a size that fits in memory (from the header alone where the format has one). Pickled
objects are never loaded.
"""

from __future__ import annotations

import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from phasevae import safeio
from phasevae.errors import DataError
from phasevae.safeio import brief, check_file

MEMORY_FRACTION = 0.5  # refuse data whose float32 copies need more of the free RAM


def load_array(path: Path, key: str = "") -> np.ndarray:
    """Read a numeric array from ``.npy``, ``.npz`` (array ``key``), ``.csv`` or
    ``.parquet``. Pickled objects are never loaded. A CSV may have one header line.
    Arrays larger than memory allows are refused before they are read."""
    check_file(path, "data file (data.path)", error=DataError)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:
                _expect_magic(f, b"\x93NUMPY", path, "an .npy file")
                check_memory(_npy_header_size(f), path)
            # mapped, not read: the float32 copy is made a chunk at a time
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with open(path, "rb") as f:
                _expect_magic(f, b"PK", path, "an .npz (zip) archive")
                with np.load(f, allow_pickle=False) as archive:
                    names = list(archive.files)
                    if not key and len(names) == 1:
                        key = names[0]
                    if key not in names:
                        listed = ", ".join(n[:40] for n in names[:20]) or "(none)"
                        raise DataError(
                            f"{path}: set data.key to one of the arrays in the "
                            f"archive: {listed}{' ...' if len(names) > 20 else ''}"
                        )
                    with archive.zip.open(f"{key}.npy") as member:
                        check_memory(_npy_header_size(member), path)
                    return archive[key]
        if suffix == ".csv":
            check_memory(path.stat().st_size // 2, path)  # >= 2 characters per value
            return _load_csv(path)
        if suffix == ".parquet":
            return _load_parquet(path)
    except DataError:
        raise
    except (
        ValueError,
        TypeError,
        SyntaxError,  # numpy parses a damaged .npy header as Python
        tokenize.TokenError,
        RecursionError,
        OSError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
        zlib.error,
    ) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"{path}: cannot read as {suffix} ({brief(first, 200)})"
        ) from None
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; use .npy, .npz, .csv or .parquet"
    )


def _expect_magic(f, magic: bytes, path: Path, what: str) -> None:
    if f.read(len(magic)) != magic:
        raise DataError(f"{path}: not {what} (its first bytes say otherwise)")
    f.seek(0)


def _npy_header_size(f) -> int:
    """Number of values in an .npy stream, from its header alone."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, _ = read(f)
    return int(np.prod(shape, dtype=np.int64))


def refuse_beyond_memory(need: int, what: str, remedy: str) -> None:
    """Refuse work that needs ``need`` bytes when that is more than
    MEMORY_FRACTION of the available RAM: better a message than swapping or a
    MemoryError.

    Raises:
      DataError: "{what} need about N GiB, more than half of ...; {remedy}".
    """
    avail = safeio.available_memory()
    if avail is not None and need > MEMORY_FRACTION * avail:
        raise DataError(
            f"{what} need about {need / 2**30:.1f} GiB, more than half of the "
            f"{avail / 2**30:.1f} GiB of free memory; {remedy}"
        )


def check_memory(values: int, path: Path) -> None:
    """Refuse data whose float32 copies (the normalised data, its copy for the
    device, and the raw values of formats that cannot be memory-mapped) would not
    fit in memory."""
    refuse_beyond_memory(
        3 * 4 * values,
        f"{path}: {values:,} values as float32 copies",
        "subsample the data first",
    )


def _load_csv(path: Path) -> np.ndarray:
    """A CSV of numbers, with one header line only when every cell of the first
    line is a name (no cell a number): a rule that cannot take a data row for a
    header. A first line that is neither is refused by its cells; a UTF-8
    byte-order mark is not part of the first cell."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    cells = [c.strip() for c in first.rstrip("\r\n").split(",")]
    numeric = [_is_number(c) for c in cells]
    if not all(numeric) and any(numeric):
        bad = next(i for i, ok in enumerate(numeric) if not ok)
        raise DataError(
            f"{path}: line 1 is neither a header (every cell a name) nor a data row "
            f"(every cell a number): cell {bad + 1} is {brief(cells[bad], 40)} "
            f"and cell {numeric.index(True) + 1} is a number"
        )
    try:
        with warnings.catch_warnings():  # "input contained no data"
            warnings.simplefilter("ignore")
            x = np.loadtxt(
                path,
                delimiter=",",
                ndmin=2,
                skiprows=0 if all(numeric) else 1,
                encoding="utf-8-sig",
            )
    except ValueError as e:
        line = (str(e).strip().splitlines() or ["?"])[0]
        raise DataError(
            f"{path}: the CSV holds a non-numeric value ({brief(line, 200)})"
        ) from None
    if x.size == 0:
        raise DataError(f"{path}: the CSV holds no data rows")
    return x


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_parquet(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    check_memory(meta.num_rows * meta.num_columns, path)
    table = pq.read_table(path).to_pandas()
    bad = [c for c in table.columns if table[c].dtype.kind not in "fiub"]
    if bad:
        raise DataError(f"{path}: non-numeric columns {bad}; keep only numeric columns")
    # float64 whatever the mix (bool with float columns would be object) and NaN for
    # a nullable column's missing values, which the data checks then name
    return table.to_numpy(dtype=np.float64, na_value=np.nan)
