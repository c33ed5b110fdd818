"""CIFAR-10 from small archives in both official formats, built here."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from phasevae.cli import main
from phasevae.data import load_dataset
from phasevae.data.cifar import CifarError, load_cifar10
from phasevae.spec import DataSpec

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def add(tar, name, raw):
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tar.addfile(info, io.BytesIO(raw))


def archive(tmp_path, fmt, n=12, seed=0, replace=None):
    """An archive laid out like the official one, with n random images per batch;
    ``replace`` maps a batch name to raw bytes to store instead."""
    rng = np.random.default_rng(seed)
    path = tmp_path / f"cifar-10-{fmt}.tar.gz"
    images = {}
    with tarfile.open(path, "w:gz") as tar:
        for batch in BATCHES:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n, dtype=np.uint8)
            images[batch] = data
            if fmt == "binary":
                name = f"cifar-10-batches-bin/{batch}.bin"
                raw = np.concatenate([labels[:, None], data], axis=1).tobytes()
            else:
                name = f"cifar-10-batches-py/{batch}"
                d = {b"batch_label": b"b", b"labels": labels.tolist(), b"data": data}
                d[b"filenames"] = [b"f.png"] * n
                raw = pickle.dumps(d, protocol=2)
            add(tar, name, (replace or {}).get(batch, raw))
    return path, images


def expected_gray16(data):
    """Luma then 2x2 pooling, written independently of phasevae.data."""
    rgb = data.reshape(-1, 3, 32, 32).astype(np.float64)
    g = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    pooled = (
        g[:, 0::2, 0::2] + g[:, 1::2, 0::2] + g[:, 0::2, 1::2] + g[:, 1::2, 1::2]
    ) / 4
    return pooled.reshape(len(data), 256)


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_both_official_formats_give_the_same_preprocessed_data(tmp_path, fmt):
    path, images = archive(tmp_path, fmt)
    x, labels = load_cifar10(path, "train")
    assert x.shape == (60, 32, 32, 3) and x.dtype == np.uint8 and labels.shape == (60,)
    test, _ = load_cifar10(path, "test")
    assert len(test) == 12 and len(load_cifar10(path, "all")[0]) == 72

    ds = load_dataset(DataSpec(source="cifar10", path=str(path), normalize="unit"))
    train = np.concatenate([images[b] for b in BATCHES[:5]])
    want = expected_gray16(train) / 127.5 - 1.0
    np.testing.assert_allclose(ds.x, want, atol=1e-5)
    # the spectrum the tool reports is that of this preprocessed array
    direct = np.linalg.eigvalsh(np.cov(want.T, bias=True))[::-1]
    np.testing.assert_allclose(ds.eigenvalues[:10], direct[:10], rtol=1e-4)
    assert ds.spectrum()["lambda_max"] == pytest.approx(direct[0], rel=1e-4)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch phasevae-pwned",))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = pickle.dumps({b"data": Evil()}, protocol=2)
    path, _ = archive(tmp_path, "python", replace={"data_batch_1": raw})
    with pytest.raises(CifarError, match="refusing to unpickle (posix|os|nt).system"):
        load_cifar10(path)
    assert not (tmp_path / "phasevae-pwned").exists()


def test_truncated_and_malformed_archives_are_refused(tmp_path):
    path, _ = archive(tmp_path, "binary")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(CifarError, match="truncated"):
        load_cifar10(cut)
    (tmp_path / "o").mkdir()
    odd, _ = archive(tmp_path / "o", "binary", replace={"data_batch_2": b"\x01" * 100})
    with pytest.raises(CifarError, match="whole number of records"):
        load_cifar10(odd)
    with pytest.raises(CifarError, match="does not exist"):
        load_cifar10(tmp_path / "none.tar.gz")
    os.mkfifo(tmp_path / "fifo.tar.gz")  # never opened: it would block
    with pytest.raises(CifarError, match="FIFO"):
        load_cifar10(tmp_path / "fifo.tar.gz")
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        add(tar, "readme.txt", b"hello")
    with pytest.raises(CifarError, match="not an official CIFAR-10 archive"):
        load_cifar10(other)


def test_member_names_that_escape_are_refused(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        add(tar, "../escape", b"x")
        add(tar, "cifar-10-batches-bin/test_batch.bin", b"\x00" * 3073)
    with pytest.raises(CifarError, match="unsafe member name"):
        load_cifar10(bad)


def test_a_member_that_inflates_past_the_format_is_refused_unread(tmp_path):
    """A small .tar.gz whose batch member claims (and holds) 200 MB of zeros: the
    size in its header is refused before a byte of it is read."""
    import resource

    bomb = tmp_path / "bomb.tar.gz"

    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, b):
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k

    size = 200 * 2**20
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros(size)))
    assert bomb.stat().st_size < size / 100
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CifarError, match="at most"):
        load_cifar10(bomb)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50 * 1024  # nothing near the member's 200 MB was held


@pytest.mark.slow
def test_the_cifar10_spec_runs_end_to_end_on_a_small_archive(tmp_path, capsys):
    path, _ = archive(tmp_path, "binary", n=40)
    out = tmp_path / "run"
    args = ["sweep", "sweeps/cifar10_gray16.toml", "--out", str(out)]
    for s in (
        f"data.path={path}",
        "data.eval_samples=64",
        "train.steps=20",
        "train.eval_every=10",
        "train.batch_size=16",
        "grid.sigma2=[10.0, 20.0, 40.0, 80.0]",
    ):
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    assert main(["analyze", str(out)]) == 0
    assert main(["plot", str(out)]) == 0
    assert (out / "figures" / "components.png").stat().st_size > 1000
    assert main(["theory", str(out), "--json"]) == 0
