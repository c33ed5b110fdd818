import sys

import numpy as np
import pandas as pd
import pytest

from phasevae.cli import main
from phasevae.data import (
    DataError,
    _read_source,
    covariance_spectrum,
    load_array,
    load_dataset,
    synthetic,
)
from phasevae.spec import DataSpec


@pytest.mark.parametrize("dist", ["gaussian", "laplace", "uniform", "bimodal"])
def test_synthetic_spectrum_matches_the_requested_eigenvalues(dist):
    lam = [8.0, 2.0, 0.5, 0.1]
    x = synthetic(lam, 40000, seed=3, distribution=dist)
    assert x.dtype == np.float32 and x.shape == (40000, 4)
    # sampling error of an eigenvalue is ~ lambda * sqrt(2/n) = 0.7 % (Gaussian)
    np.testing.assert_allclose(covariance_spectrum(x), lam, rtol=0.04)
    # a random rotation: the data is not axis-aligned
    assert np.abs(np.cov(x.T) - np.diag(np.diag(np.cov(x.T)))).max() > 0.1


def test_dataset_spectrum_is_of_the_data_as_the_model_sees_it():
    ds = load_dataset(
        DataSpec(eigenvalues=(3.0, 1.0), samples=1000, normalize="standardize")
    )
    assert np.allclose(ds.x.std(axis=0), 1.0, atol=1e-5)
    direct = np.linalg.eigvalsh(np.cov(ds.x.T.astype(np.float64), bias=True))[::-1]
    np.testing.assert_allclose(ds.eigenvalues, direct, rtol=1e-6)
    assert ds.spectrum()["lambda_max"] == pytest.approx(direct[0])
    assert ds.eval_x.shape == (1000, 2)  # eval_samples capped at n


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_array_files_load(tmp_path, suffix):
    a = np.arange(12, dtype=np.float64).reshape(6, 2) ** 1.5
    p = tmp_path / f"d{suffix}"
    if suffix == ".npy":
        np.save(p, a)
    elif suffix == ".npz":
        np.savez(p, train=a)
    else:
        np.savetxt(p, a, delimiter=",", header="a,b", comments="")
    ds = load_dataset(DataSpec(source="array", path=str(p), normalize="center"))
    np.testing.assert_allclose(ds.x, a - a.mean(0), rtol=1e-5, atol=1e-5)


def test_npz_with_several_arrays_needs_a_key(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, a=np.ones((3, 2)), b=np.zeros((4, 2)))
    with pytest.raises(DataError, match="data.key .* a, b"):
        load_array(p)
    assert load_array(p, "b").shape == (4, 2)


def bad_file(tmp_path, kind):
    p = tmp_path / f"bad_{kind}"
    if kind == "missing":
        return tmp_path / "nope.npy"
    if kind == "5d":
        np.save(p.with_suffix(".npy"), np.ones((4, 2, 2, 2, 2)))
    elif kind == "one_sample":
        np.save(p.with_suffix(".npy"), np.ones((1, 3)))
    elif kind == "nan":
        a = np.ones((5, 3))
        a[2, 1] = np.nan
        np.save(p.with_suffix(".npy"), a)
    elif kind == "inf":
        a = np.ones((5, 3))
        a[4, 0] = np.inf
        np.save(p.with_suffix(".npy"), a)
    elif kind == "pickle":
        np.save(p.with_suffix(".npy"), np.array([{"a": 1}, None], dtype=object))
    elif kind == "text_csv":
        p.with_suffix(".csv").write_text("a,b\n1,2\nx,4\n")
        return p.with_suffix(".csv")
    elif kind == "garbage_npy":
        p.with_suffix(".npy").write_bytes(b"not an npy file at all")
    elif kind == "strings":
        np.save(p.with_suffix(".npy"), np.array([["a", "b"], ["c", "d"]]))
    elif kind == "txt":
        p.with_suffix(".txt").write_text("1 2\n3 4\n")
        return p.with_suffix(".txt")
    elif kind == "npz_truncated":
        np.savez(p.with_suffix(".npz"), x=np.ones((50, 3)))
        raw = p.with_suffix(".npz").read_bytes()
        p.with_suffix(".npz").write_bytes(raw[: len(raw) // 2])
        return p.with_suffix(".npz")
    elif kind == "npy_named_npz":
        np.save(p.with_suffix(".npy"), np.ones((5, 3)))
        p.with_suffix(".npy").rename(p.with_suffix(".npz"))
        return p.with_suffix(".npz")
    elif kind in ("empty_csv", "header_csv"):
        p.with_suffix(".csv").write_text("" if kind == "empty_csv" else "a,b\n")
        return p.with_suffix(".csv")
    elif kind == "link_to_zero":
        p.with_suffix(".npy").symlink_to("/dev/zero")
    elif kind == "fifo":
        import os

        os.mkfifo(p.with_suffix(".npy"))
    elif kind == "directory":
        p.with_suffix(".npy").mkdir()
    elif kind == "huge_values":
        np.save(p.with_suffix(".npy"), np.full((5, 3), 1e30) * np.arange(1, 4))
    elif kind == "huge_int64":
        np.save(
            p.with_suffix(".npy"), np.arange(15, dtype=np.int64).reshape(5, 3) << 60
        )
    elif kind == "identical_rows":
        np.save(p.with_suffix(".npy"), np.tile([[0.3, -2.0, 7.0]], (50, 1)))
    elif kind == "tiny_scale":  # squared errors underflow float32 (lambda_max 1e-60)
        np.save(
            p.with_suffix(".npy"), np.random.default_rng(0).normal(size=(50, 3)) * 1e-30
        )
    elif kind == "npz_big_header":
        with open(p.with_suffix(".npy"), "wb") as f:
            f.write(b"\x93NUMPY\x01\x00" + (60000).to_bytes(2, "little") + b" " * 60000)
    return p.with_suffix(".npy")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("5d", "must be 2-D"),
        ("one_sample", "at least 2 samples"),
        ("nan", "NaN or inf .* row 2, column 1"),
        ("inf", "NaN or inf .* row 4, column 0"),
        ("pickle", "cannot read"),
        ("text_csv", "non-numeric"),
        ("garbage_npy", "not an .npy file"),
        ("strings", "must be numeric"),
        ("txt", "unsupported file type"),
        ("npz_truncated", "cannot read as .npz"),
        ("npy_named_npz", "not an .npz"),
        ("empty_csv", "no data rows"),
        ("header_csv", "no data rows"),
        ("link_to_zero", "character device, not a regular file"),
        ("fifo", "FIFO"),
        ("directory", "directory"),
        ("huge_values", "normalize = 'standardize'"),
        ("huge_int64", "normalize = 'standardize'"),
        ("npz_big_header", "cannot read as .npy"),
        ("identical_rows", "hardly vary .* eigenvalue 0 .* identical rows"),
        ("tiny_scale", "hardly vary .* eigenvalue 1.*e-60 .* 'standardize'"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path, kind, message, recwarn):
    path = bad_file(tmp_path, kind)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(DataSpec(source="array", path=str(path), normalize="none"))
    assert "\n" not in str(err.value) and len(str(err.value)) < 600
    assert not recwarn.list  # nothing printed before the message


def test_too_many_features_for_the_spectrum_are_refused(tmp_path, monkeypatch):
    import phasevae.safeio as safeio

    # wide data needs only the n x n Gram matrix: refused when n and N are large
    np.save(tmp_path / "wide.npy", np.ones((3000, 3000), np.float32))
    monkeypatch.setattr(safeio, "available_memory", lambda: 2**28)
    with pytest.raises(DataError, match="3,000 x 3,000 spectrum"):
        load_dataset(DataSpec(source="array", path=str(tmp_path / "wide.npy")))


@pytest.mark.parametrize("source", ["synthetic", "text", "series"])
def test_more_generated_rows_than_memory_holds_are_refused(monkeypatch, source):
    """A generated source with a huge data.samples is a DataError (exit 2) before
    anything is drawn, not a MemoryError; one that fits is made."""
    import phasevae.safeio as safeio

    monkeypatch.setattr(safeio, "available_memory", lambda: 2 * 20 * 8 * 1000 - 1)
    with pytest.raises(DataError, match="data.samples = 1,000 rows of 8 values"):
        load_dataset(DataSpec(source=source, samples=1000))
    monkeypatch.setattr(safeio, "available_memory", lambda: 2 * 20 * 8 * 1000)
    assert _read_source(DataSpec(source=source, samples=1000))[0].shape == (1000, 8)


def test_non_gaussian_components_are_what_they_claim():
    lam = [1.0]
    kurt = {}
    for dist in ("gaussian", "laplace", "uniform", "bimodal"):
        s = synthetic(lam, 100000, seed=0, distribution=dist)[:, 0].astype(np.float64)
        kurt[dist] = np.mean(s**4) / np.mean(s**2) ** 2
    assert kurt["gaussian"] == pytest.approx(3.0, abs=0.1)
    assert kurt["laplace"] == pytest.approx(6.0, abs=0.5)
    assert kurt["uniform"] == pytest.approx(1.8, abs=0.05)
    m, v = 0.95, 1 - 0.95**2  # two clusters: E s^4 = m^4 + 6 m^2 v + 3 v^2
    assert kurt["bimodal"] == pytest.approx(m**4 + 6 * m**2 * v + 3 * v**2, abs=0.03)


def test_digits_spectrum_against_numpy():
    from sklearn.datasets import load_digits

    ds = load_dataset(DataSpec(source="digits"))
    raw = load_digits().data / 16.0
    direct = np.linalg.eigvalsh(np.cov(raw.T, bias=True))[::-1]
    assert ds.x.shape == (1797, 64)
    np.testing.assert_allclose(ds.eigenvalues[:10], direct[:10], rtol=1e-4)


@pytest.mark.parametrize("shape", [(6, 4, 5), (6, 4, 5, 3)])
def test_image_arrays_are_flattened_and_uint8_unit_maps_pixels(tmp_path, shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape).astype(np.uint8)
    img.flat[0], img.flat[1] = 0, 255
    np.save(tmp_path / "im.npy", img)
    ds = load_dataset(
        DataSpec(source="array", path=str(tmp_path / "im.npy"), normalize="unit")
    )
    assert ds.x.shape == (6, int(np.prod(shape[1:])))
    np.testing.assert_allclose(ds.x, img.reshape(6, -1) / 127.5 - 1.0, atol=1e-6)
    assert ds.image_shape == (4, 5)
    assert ds.spectrum()["image_shape"] == [4, 5]


def test_parquet_and_global_normalisation(tmp_path):
    a = np.random.default_rng(1).normal(3.0, 2.0, (50, 3))
    pd.DataFrame(a, columns=["x", "y", "z"]).to_parquet(tmp_path / "d.parquet")
    ds = load_dataset(
        DataSpec(source="array", path=str(tmp_path / "d.parquet"), normalize="global")
    )
    np.testing.assert_allclose(ds.x, (a - a.mean()) / a.std(), rtol=1e-5, atol=1e-5)
    # a bool column beside float ones is data (it was refused as dtype object); a
    # nullable integer column's missing values are named as NaN
    flags = pd.DataFrame({"x": a[:, 0], "b": a[:, 1] > 3.0})
    flags.to_parquet(tmp_path / "b.parquet")
    ds = load_dataset(DataSpec(source="array", path=str(tmp_path / "b.parquet")))
    np.testing.assert_allclose(ds.x, flags.to_numpy(float), rtol=1e-6)
    gaps = pd.DataFrame({"x": a[:4, 0], "i": pd.array([1, None, 2, 3], dtype="Int64")})
    gaps.to_parquet(tmp_path / "i.parquet")
    with pytest.raises(DataError, match="1 NaN or inf values .* row 1, column 1"):
        load_dataset(DataSpec(source="array", path=str(tmp_path / "i.parquet")))
    pd.DataFrame({"x": [1.0, 2.0], "s": ["a", "b"]}).to_parquet(tmp_path / "s.parquet")
    with pytest.raises(DataError, match="non-numeric columns"):
        load_dataset(DataSpec(source="array", path=str(tmp_path / "s.parquet")))


def test_data_larger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    import phasevae.safeio as safeio

    data = np.random.default_rng(0).normal(size=(1000, 100)).astype(np.float32)
    np.save(tmp_path / "big.npy", data)
    monkeypatch.setattr(safeio, "available_memory", lambda: 2 * 3 * 4 * 1000 * 100 - 1)
    with pytest.raises(DataError, match="free memory; subsample"):
        load_dataset(DataSpec(source="array", path=str(tmp_path / "big.npy")))
    monkeypatch.setattr(safeio, "available_memory", lambda: 2 * 3 * 4 * 1000 * 100 + 8)
    assert load_dataset(
        DataSpec(source="array", path=str(tmp_path / "big.npy"))
    ).x.shape == (1000, 100)


def test_patches_spectrum_against_numpy():
    from phasevae.data import PATCH_IMAGES, luma

    ds = load_dataset(DataSpec(source="patches", samples=3000, normalize="unit"))
    assert ds.x.shape == (3000, 256) and ds.image_shape == (16, 16)
    assert -1.0 <= ds.x.min() and ds.x.max() <= 1.0
    # independently: cut one image's patches by hand and check they are in the set
    import skimage.data

    cam = np.asarray(skimage.data.camera(), np.float32)
    first = cam[:16, :16].reshape(-1) / 127.5 - 1.0
    assert "camera" in PATCH_IMAGES
    direct = np.linalg.eigvalsh(np.cov(ds.x.T.astype(np.float64), bias=True))[::-1]
    np.testing.assert_allclose(ds.eigenvalues[:10], direct[:10], rtol=1e-6)
    full = load_dataset(DataSpec(source="patches", samples=10**7, normalize="unit"))
    assert np.any(np.all(np.isclose(full.x, first, atol=1e-5), axis=1))
    astro = luma(np.asarray(skimage.data.astronaut(), np.float32))[:16, :16]
    assert np.any(
        np.all(np.isclose(full.x, astro.reshape(-1) / 127.5 - 1, atol=1e-4), axis=1)
    )


@pytest.mark.parametrize(
    "source, module, package",
    [
        ("digits", "sklearn.datasets", "scikit-learn"),
        ("patches", "skimage.data", "scikit-image"),
    ],
)
def test_a_missing_datasets_extra_is_a_message(
    tmp_path, capsys, monkeypatch, source, module, package
):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    spec = tmp_path / "s.toml"
    spec.write_text(f'[data]\nsource = "{source}"\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert package in err and ".[datasets]" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "first, rows, error",
    [
        ("a,b,c", 200, None),  # a header: every cell a name
        ("1.5,2,3", 201, None),  # a data row: kept
        ("\ufeff1.5,2,3", 201, None),  # a byte-order mark is not a cell
        ("\ufeffa,b,c", 200, None),
        ("1.5,x,3", None, "cell 2 is 'x'"),  # neither: refused, never eaten
        ("1.5,,3", None, "cell 2 is ''"),
    ],
)
def test_a_csv_first_line_is_a_header_only_when_every_cell_is_a_name(
    tmp_path, first, rows, error
):
    """A first row with a byte-order mark, or with one bad or empty cell, was taken
    as a header and the run trained on 199 of 200 rows, saying nothing."""
    body = "\n".join(",".join(f"{v:.3f}" for v in r) for r in np.ones((200, 3)))
    path = tmp_path / "x.csv"
    path.write_text(f"{first}\n{body}\n", encoding="utf-8")
    if error is None:
        assert load_array(path).shape == (rows, 3)
    else:
        with pytest.raises(DataError, match=f"line 1 is neither.*{error}"):
            load_array(path)


def test_wide_data_gets_its_spectrum_from_the_gram_matrix(tmp_path):
    """3 rows x 20,000 columns went past 6 GB (the 20,000 x 20,000 covariance);
    n < N: the nonzero eigenvalues are the n x n Gram matrix's, in seconds."""

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 300))
    from phasevae.data import covariance_eig, top_eigenvalue

    values, vectors = covariance_eig(x)
    direct = np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1]
    np.testing.assert_allclose(values, direct.clip(min=0), atol=1e-9)
    cov = np.cov(x.T, bias=True)
    v = vectors[:, 0]  # the top eigenvector, unit length
    np.testing.assert_allclose(cov @ v, values[0] * v, atol=1e-9)
    assert top_eigenvalue(x) == pytest.approx(values[0])
    path = tmp_path / "wide.csv"
    np.savetxt(path, rng.normal(size=(5, 20_000)), delimiter=",")
    ds = load_dataset(DataSpec(source="array", path=str(path), eval_samples=5))
    assert ds.eigenvalues.shape == (20_000,)
    assert ds.eigenvalues[4:].max() < 1e-9 * ds.eigenvalues[0]  # rank n - 1


@pytest.mark.parametrize("how", ["none", "center", "standardize", "global", "unit"])
def test_large_data_is_read_mapped_and_normalised_a_chunk_at_a_time(
    tmp_path, monkeypatch, how
):
    """An .npy is memory-mapped and converted, checked and normalised a chunk of
    rows at a time in float64 (a 1.9 GB file peaked at 11.8 GB with whole-array
    float64 copies, 4.5 GB so): with chunks of 64 values the data, its spectrum and
    the first bad value's position are those of the whole-array computation."""
    import phasevae.data as data_module

    rng = np.random.default_rng(1)
    x = rng.normal(size=(203, 6)) * np.arange(1, 7) + 3.0
    np.save(tmp_path / "x.npy", x)
    assert isinstance(load_array(tmp_path / "x.npy"), np.memmap)
    spec = DataSpec(source="array", path=str(tmp_path / "x.npy"), normalize=how)
    whole = load_dataset(spec)
    monkeypatch.setattr(data_module, "CHUNK_VALUES", 64)
    assert len(list(data_module.row_chunks(whole.x))) == 21
    chunked = load_dataset(spec)
    np.testing.assert_allclose(chunked.x, whole.x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(chunked.eigenvalues, whole.eigenvalues, rtol=1e-9)
    x[150, 4] = np.nan
    x[190, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match=r"2 NaN or inf values \(first at row 150, "):
        load_dataset(spec)
