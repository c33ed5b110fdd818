"""A seeded fuzzer over everything a user or a failing machine can hand phasevae:
spec overrides, spec files, data files, run-directory corruptions and command lines.

Every case must end in a value or a BadInput (exit 2 at the CLI): never another
exception, a hang or a silent change; a damaged run-directory file read back either
is refused or reads exactly as the intact one. ``CASES`` scales the run (a few hundred
by default, well under two minutes); the counts per category and outcome are printed
(``pytest -s``) for the record.
"""

import collections
import math
import os
import random
import shutil

import numpy as np
import pandas as pd
import pytest
import tomli_w

from phasevae.cli import main
from phasevae.data import load_dataset
from phasevae.errors import BadInput
from phasevae.spec import DataSpec, load_spec
from phasevae.store import RunDir
from tests.conftest import tiny_dict

CASES = int(os.environ.get("PHASEVAE_FUZZ_CASES", "300"))  # per category
TALLY: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

KEYS = [
    "data.source", "data.eigenvalues", "data.samples", "data.seed", "data.path",
    "data.normalize", "data.eval_samples", "data.key", "data.distribution",
    "model.latent_dim", "model.encoder", "model.decoder", "model.sigma2", "model.skip",
    "train.steps", "train.batch_size", "train.learning_rate", "train.eval_every",
    "train.seed", "train.optimizer", "train.slots", "train.retire", "train.min_steps",
    "train.hysteresis", "train.until", "train.max_steps", "grid.sigma2", "grid.beta",
    "grid.seeds", "grid.learning_rate", "grid.kl_warmup_steps",
    "grid.decoder_init_scale", "grid.decoder", "grid.skip",
    "grid.sigma2.num", "grid.sigma2.min", "grid.sigma2.refine", "grid.nope", "nope.x",
    "train", "", "data..path", "grid.sigma2.num.x",
]  # fmt: skip


def _value(rng: random.Random, depth: int = 0) -> str:
    """A TOML-ish value text, often hostile."""
    kind = rng.randrange(16)
    if kind == 0:
        return str(rng.choice([0, 1, -1, 2**31, 2**63, -(2**70), 10**48, 7]))
    if kind == 1:
        return rng.choice(["nan", "inf", "-inf", "1e400", "-0.0", "1e-320", "0.5"])
    if kind == 2:
        return rng.choice(["true", "false"])
    if kind == 3:
        return repr(rng.choice(["adam", "gaussian", "array", "x" * 5000, "", "\u00e9"]))
    if kind == 4:
        return (
            "'" + rng.choice(["\\x00", "../../etc/passwd", "/dev/zero", "a\\nb"]) + "'"
        )
    if kind == 5 and depth < 3:
        return (
            "["
            + ", ".join(_value(rng, depth + 1) for _ in range(rng.randrange(4)))
            + "]"
        )
    if kind == 6:
        n = rng.choice([3, 50, 3000])
        return "[" * n + "]" * n
    if kind == 7:
        lo, hi = rng.uniform(-2, 5), rng.uniform(-2, 5)
        num = rng.choice([0, 1, 3, 10**6, -2, 2.5])
        return f"{{min={lo}, max={hi}, num={num}}}"
    if kind == 8:
        return rng.choice(["{", "[1,", "'unterminated", "= =", "\udcff", "1 2"])
    if kind == 9:
        return str([rng.randrange(-3, 40) for _ in range(rng.randrange(4))])
    if kind == 10:
        return rng.choice(["{rounds=2, points=3}", "{rounds=0}", "{x=1}", "[[8], []]"])
    return repr(rng.uniform(-10, 10))


def _tally(category: str, outcome: str) -> None:
    TALLY[category][outcome] += 1


def test_fuzzed_overrides_give_a_spec_or_a_spec_error():
    rng = random.Random(1)
    for _ in range(3 * CASES):
        sets = [
            f"{rng.choice(KEYS)}={_value(rng)}" if rng.random() > 0.05 else "novalue"
            for _ in range(rng.randrange(1, 4))
        ]
        try:
            spec = load_spec(None, sets)
        except BadInput as e:
            assert len(str(e)) < 1000 and "\n" not in str(e).strip(), str(e)[:300]
            _tally("overrides", "refused")
            continue
        assert spec.train.steps >= 1 and spec.train.steps % spec.train.eval_every == 0
        assert all(math.isfinite(v) for v in spec.axes()["sigma2"])
        _tally("overrides", "accepted")


def test_fuzzed_spec_files_give_a_spec_or_a_spec_error(tmp_path):
    rng = random.Random(2)
    good = tomli_w.dumps(tiny_dict()).encode()
    for i in range(CASES):
        path = tmp_path / f"s{i}.toml"
        kind = rng.randrange(5)
        if kind == 0:
            data = bytearray(good)
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            path.write_bytes(bytes(data))
        elif kind == 1:
            path.write_bytes(good[: rng.randrange(len(good))])
        elif kind == 2:
            path.write_bytes(rng.randbytes(rng.randrange(1, 400)))
        elif kind == 3:
            key = rng.choice(KEYS).split(".")
            path.write_text(
                f"[{key[0]}]\n{key[-1]} = {_value(rng)}\n".replace("\udcff", "?")
            )
        else:
            path.write_text("# " + "x" * rng.choice([10, 2 * 2**20]))
        try:
            load_spec(path)
            _tally("spec files", "accepted")
        except BadInput:
            _tally("spec files", "refused")


def _data_file(rng: random.Random, tmp_path, i: int):
    good = np.random.default_rng(i).normal(size=(40, 5)).astype(np.float32)
    suffix = rng.choice([".npy", ".npz", ".csv", ".parquet", ".txt", ""])
    path = tmp_path / f"d{i}{suffix}"
    kind = rng.randrange(7)
    if suffix == ".npy":
        np.save(path, good)
    elif suffix == ".npz":
        np.savez(path, x=good, y=good[:3])
    elif suffix == ".csv":
        path.write_text("\n".join(",".join(map(str, r)) for r in good) + "\n")
    elif suffix == ".parquet":
        pd.DataFrame(good).rename(columns=str).to_parquet(path)
    else:
        path.write_bytes(rng.randbytes(100))
    raw = bytearray(path.read_bytes())
    if kind == 0 and raw:
        for _ in range(rng.randrange(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        raw = raw[: rng.randrange(len(raw) + 1)]
    elif kind == 2:
        raw = bytearray(rng.randbytes(rng.randrange(0, 300)))
    elif kind == 3 and suffix == ".npy":
        bad = good.copy()
        bad[rng.randrange(40), rng.randrange(5)] = rng.choice([np.nan, np.inf, 1e30])
        np.save(path, bad)
        raw = bytearray(path.read_bytes())
    elif kind == 4:
        path.unlink()
        target = rng.choice(["/dev/zero", "/nonexistent", str(tmp_path)])
        path.symlink_to(target)
        return path
    path.write_bytes(bytes(raw))
    return path


def test_fuzzed_data_files_give_data_or_a_data_error(tmp_path):
    rng = random.Random(3)
    for i in range(CASES):
        path = _data_file(rng, tmp_path, i)
        spec = DataSpec(source="array", path=str(path), key=rng.choice(["", "x", "zz"]))
        try:
            data = load_dataset(spec)
        except BadInput as e:
            assert "\n" not in str(e).strip(), str(e)[:300]
            _tally("data files", "refused")
            continue
        assert np.isfinite(data.x).all() and data.x.ndim == 2
        _tally("data files", "accepted")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzrun")
    spec = root / "s.toml"
    grid = {"sigma2": [0.5, 1.0, 2.0, 4.0], "beta": [1.0]}
    spec.write_text(tomli_w.dumps(tiny_dict(grid=grid)))
    assert main(["sweep", str(spec), "--out", str(root / "run")]) == 0
    return root / "run"


def _read_all(run: RunDir):
    return (
        run.spec(),
        run.meta(),
        run.metrics(),
        run.load_checkpoint(),
    )


def _same(a, b) -> bool:
    spec_a, meta_a, metrics_a, ck_a = a
    spec_b, meta_b, metrics_b, ck_b = b
    if spec_a != spec_b or meta_a != meta_b:
        return False
    plain = ("step", "ids", "schedule")
    if (
        any(ck_a[k] != ck_b[k] for k in plain)
        or ck_a["extra"].keys() != ck_b["extra"].keys()
    ):
        return False
    arrays = [*zip(ck_a["leaves"], ck_b["leaves"], strict=True)]
    arrays += [(ck_a["extra"][k], ck_b["extra"][k]) for k in ck_a["extra"]]
    if not all(np.array_equal(x, y) for x, y in arrays):
        return False
    return metrics_a.equals(metrics_b)


@pytest.mark.slow
def test_fuzzed_run_directory_damage_is_refused_or_harmless(finished_run, tmp_path):
    """Bit flips, truncations, garbage, deletions and swaps in a finished run: every
    read either refuses (naming the file) or returns exactly the intact content."""
    rng = random.Random(4)
    intact = _read_all(RunDir(finished_run))
    files = sorted(p.relative_to(finished_run) for p in finished_run.rglob("*"))
    files = [f for f in files if (finished_run / f).is_file() and f.name != ".lock"]
    for i in range(CASES):
        run = tmp_path / f"r{i}"
        shutil.copytree(finished_run, run)
        target = run / rng.choice(files)
        raw = bytearray(target.read_bytes())
        kind = rng.randrange(5)
        if kind == 0:
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            raw = raw[: rng.randrange(len(raw))]
        elif kind == 2:
            raw = bytearray(rng.randbytes(len(raw)))
        elif kind == 3:
            raw = bytearray()
        target.write_bytes(bytes(raw))
        if kind == 4:
            target.unlink()
        try:
            got = _read_all(RunDir(run))
        except BadInput as e:
            assert "\n" not in str(e).strip()
            _tally("run directories", "refused")
        else:
            if kind == 4 and target.name == "meta.json":
                # as if the first save had not finished: the run reads as unstarted
                # (status and analyze say so; a sweep resumes from the checkpoint)
                assert got[1] is None
                got = (got[0], intact[1], *got[2:])
            if (
                kind == 4
                and "checkpoints" in target.parts
                and (got[3] is None or got[3]["step"] < intact[3]["step"])
            ):
                # a save without its digest or orbax's commit record is skipped for
                # the complete one before it (as after a kill during the last
                # save: a resume retrains from there, its later rows dropped), or
                # reads as no checkpoint (a finished run does not need one)
                assert target.name == "_CHECKPOINT_METADATA" or target.name.endswith(
                    ".sha256"
                ), target
                assert got[3] is None or got[3]["ids"] == intact[3]["ids"]
                got = (*got[:3], intact[3])
            assert _same(got, intact), f"silent change: {target.name}, kind {kind}"
            _tally("run directories", "read intact")
        shutil.rmtree(run)


def test_fuzzed_command_lines_exit_0_or_2(finished_run, tmp_path, capsys):
    rng = random.Random(5)
    paths = [str(finished_run), str(tmp_path / "none"), "", "/dev/null", "/proc/x"]
    for _ in range(CASES // 4):
        command = rng.choice(
            ["status", "analyze", "merge", "plot", "sweep", "validate"]
        )
        argv = [command]
        if command == "merge":
            argv += [rng.choice(paths), "--out", str(tmp_path / f"m{rng.random()}")]
        elif command == "sweep":
            argv += ["--dry-run", "--out", rng.choice(paths) or "",
                     "--set", f"{rng.choice(KEYS)}={_value(rng)}"]  # fmt: skip
        elif command == "validate":
            argv += ["--case", rng.choice(["nope", "x" * 300]), "--out", str(tmp_path)]
        else:
            argv += [rng.choice(paths)]
        if rng.random() < 0.2:
            argv += [rng.choice(["--bogus", "--format=jpg", "--x", "nope"])]
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: usage error
            code = e.code
        err = capsys.readouterr().err
        assert code in (0, 2), (argv, err[-500:])
        assert "Traceback" not in err
        _tally("command lines", f"exit {code}")


CALLABLES = [
    "os:system", "os:remove", "os:mkdir", "os:makedirs", "os:rename", "os:unlink",
    "shutil:rmtree", "shutil:copy", "subprocess:call", "subprocess:run",
    "subprocess:Popen", "builtins:open", "builtins:exec", "builtins:eval",
    "builtins:dict", "pathlib:Path", "importlib:import_module", "sys:exit",
    "os.path:join", "tests.user_models:TinyVAE.__call__",
]  # fmt: skip


def test_fuzzed_spec_named_callables_are_never_called(tmp_path, capsys):
    """model.module names any importable callable, model.options aims it at a
    canary file: only Module classes and declared factories may be called, so the
    canary stays and no marker appears; every case exits 2."""
    rng = random.Random(6)
    canary, marker = tmp_path / "canary", tmp_path / "marker"
    canary.write_text("alive")
    options = {
        "command": f"touch {marker}", "args": ["touch", str(marker)],
        "path": str(canary), "name": str(marker), "src": str(canary),
        "dst": str(marker), "file": str(marker), "mode": "w", "source": "1/0",
        "code": 3, "exist_ok": True,
    }  # fmt: skip
    spec = tmp_path / "spec.toml"
    for _ in range(CASES // 10):
        keys = rng.sample(sorted(options), rng.randrange(0, 4))
        raw = tiny_dict(
            model={
                "kind": "module",
                "module": rng.choice(CALLABLES),
                "options": {k: options[k] for k in keys},
            }
        )
        del raw["model"]["encoder"], raw["model"]["decoder"]
        spec.write_text(tomli_w.dumps(raw))
        dry = ["--dry-run"] if rng.random() < 0.5 else []
        code = main(["sweep", str(spec), "--out", str(tmp_path / "run"), *dry])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err[-300:]
        assert canary.read_text() == "alive" and not marker.exists()
        _tally("spec-named callables", "refused")


@pytest.mark.slow
def test_fuzzed_data_swaps_under_a_run_are_refused(tmp_path, capsys):
    """A finished run on a CSV, its file then changed in a random way (a value, a
    row, the scale, the order, the columns): rerunning it is refused, unless the
    data the models see are byte for byte the same (extending it: test_cli)."""
    rng = random.Random(7)
    x = np.random.default_rng(0).normal(size=(200, 4)) * [2.0, 1.0, 0.5, 0.2]
    path = tmp_path / "x.csv"
    np.savetxt(path, x, delimiter=",")
    raw = tiny_dict(data={"source": "array", "path": str(path), "normalize": "none"})
    del raw["data"]["eigenvalues"], raw["data"]["samples"]
    spec = tmp_path / "s.toml"
    spec.write_text(tomli_w.dumps(raw))
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    capsys.readouterr()
    for _ in range(CASES // 10):
        y = x.copy()
        how = rng.choice(["value", "row", "scale", "order", "columns", "same"])
        if how == "value":
            y[rng.randrange(200), rng.randrange(4)] += rng.choice([1e-3, 1.0, -5.0])
        elif how == "row":
            y = np.delete(y, rng.randrange(200), axis=0)
        elif how == "scale":
            y = y * rng.choice([1.01, 2.0])
        elif how == "order":
            y = y[::-1]
        elif how == "columns":
            y = y[:, [1, 0, 2, 3]]
        np.savetxt(path, y, delimiter=",")
        code = main(["sweep", str(spec), "--out", str(out)])
        err = capsys.readouterr().err
        if how == "same":
            assert code == 0, err[-300:]
            _tally("data swaps", "same data: accepted")
            continue
        assert code == 2 and "trained on other data" in err, (how, err[-300:])
        _tally("data swaps", "refused")
    np.savetxt(path, x, delimiter=",")


@pytest.fixture(scope="module", autouse=True)
def _print_the_tally():
    """After this module's tests in a process (one per xdist worker): the outcomes
    of each fuzz category, for the closing figures (``pytest -s``)."""
    yield
    for category, counts in TALLY.items():
        print(f"fuzz {category}: {dict(counts)}")
