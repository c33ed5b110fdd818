"""The typed, versioned records of analysis.json (phasevae.store.records): every
committed analysis parses (older versions through their migration) and writes back
the same values; a fresh analysis round-trips; a document that is not what
``phasevae analyze`` writes is a RecordError naming the field, never a crash."""

import copy
import json
from pathlib import Path

import pytest

from phasevae.analysis import curves
from phasevae.store import RunDir
from phasevae.store.records import (
    FORMAT_VERSION,
    MIGRATIONS,
    Analysis,
    RecordError,
    Transition,
)
from tests.test_analysis import EV, K, synthetic_metrics

RESULTS = Path(__file__).parent.parent / "results"
DATA = Path(__file__).parent / "data"


def test_every_committed_analysis_parses_and_writes_back_its_values():
    files = sorted(RESULTS.rglob("analysis.json"))
    assert len(files) > 30
    versions = set()
    for path in files:
        doc = json.loads(path.read_text())
        version = doc.get("format_version", 0)
        versions.add(version)
        want = doc
        for v in range(version, FORMAT_VERSION):
            want = MIGRATIONS[v](want)
        record = RunDir(path.parent).analysis()  # digest, identity, then the parser
        want = {k: v for k, v in want.items() if k not in ("run", "digest")}
        assert record.to_json() == want, path
    assert versions == {FORMAT_VERSION}


def test_a_version_0_file_as_written_then_parses_to_the_same_transitions():
    """tests/data/analysis_v0.json is the default run's analysis.json as committed
    before records had a version (753c410). Through the migration it parses, and its
    transitions are today's apart from what changed since on purpose (the advice,
    and the train-longer range, since the relaxed-point rule)."""
    old = Analysis.from_json(json.loads((DATA / "analysis_v0.json").read_text()))
    now = RunDir(RESULTS / "default" / "default").analysis()
    assert len(old.transitions) == len(now.transitions) == 3
    for a, b in zip(old.transitions, now.transitions, strict=True):
        assert (a.sigma2_c, a.ci, a.verdict, a.curve) == (
            b.sigma2_c,
            b.ci,
            b.verdict,
            b.curve,
        )


def test_a_fresh_analysis_round_trips_and_carries_the_version():
    result = curves.analyze(synthetic_metrics([0.5, 1.0]), {"eigenvalues": EV}, K)
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["format_version"] == FORMAT_VERSION
    assert Analysis.from_json(doc) == result
    t = result.transitions[0]
    assert Transition.from_json(t.to_json()) == t
    # the curve's axes are written under their own names, beside the fields
    assert doc["transitions"][0]["beta"] == 0.5 and "curve" not in doc["transitions"][0]


def test_version_0_gets_the_later_keys_as_not_computed():
    doc = curves.analyze(synthetic_metrics([1.0]), {"eigenvalues": EV}, K).to_json()
    old = copy.deepcopy(doc)
    del old["format_version"]
    for key in ("advice", "holds_for_steps", "drift_per_doubling", "verdict"):
        del old["transitions"][0][key]
    (t,) = Analysis.from_json(old).transitions
    assert t.advice is None and t.holds_for_steps is None and t.verdict is None
    with pytest.raises(RecordError, match="format_version 2"):
        Analysis.from_json({**doc, "format_version": FORMAT_VERSION + 1})


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("sigma2_c", "x", "sigma2_c is not a number"),
        ("ci", [1.0], "ci does not have 2 values"),
        ("ci", [1.0, True], r"ci\[1\] is not a number"),
        ("steps", 1.5, "steps is not an integer"),
        ("verdict", 3, "verdict is not a str"),
        ("train_longer", {"sigma2": [1.0, 2.0]}, "train_longer lacks steps"),
        ("fit", {"ln_sigma2": [0.0, 1e308], "kl": [1.0, 0.0]}, "not finite"),
        ("fit", {"ln_sigma2": [0.0, 1.0], "kl": [1.0]}, "same length"),
        ("slopes_ln", [], "one slope per segment"),
        ("per_dim", [{"dim": 0}], r"per_dim\[0\] lacks sigma2_c"),
        ("probe", {"collapsed": "x"}, "probe is malformed"),
        ("off_theory", {"shift": 0.1, "evidence": "probe"}, "off_theory is malformed"),
        ("beta", "x", "a grid axis value is not a number"),
    ],
)
def test_a_wrong_field_is_named(one_curve, field, value, said):
    doc = copy.deepcopy(one_curve)
    doc["transitions"][0][field] = value
    with pytest.raises(RecordError, match=said):
        Analysis.from_json(doc)
    doc = copy.deepcopy(one_curve)
    del doc["transitions"][0][field]
    if field != "beta":  # a curve axis may be absent (older runs lack some)
        with pytest.raises(RecordError, match=rf"transitions\[0\] lacks {field}"):
            Analysis.from_json(doc)


@pytest.fixture(scope="module")
def one_curve() -> dict:
    return curves.analyze(synthetic_metrics([1.0]), {"eigenvalues": EV}, K).to_json()
