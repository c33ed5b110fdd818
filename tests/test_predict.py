"""bench --predict: the cost of a model-step from XLA's cost analysis, and the roofline
built on it (phasevae.tools.predict)."""

import dataclasses

import pytest

from phasevae.cli import main
from phasevae.errors import BadInput
from phasevae.tools import bench, predict


@pytest.mark.slow
def test_the_step_cost_is_positive_per_model_and_matches_the_hand_count():
    """The per-model cost does not depend on M (the work scales linearly with M) and
    one step's FLOPs are the hand count of bench.py plus the element-wise work."""
    four, eight = predict.step_cost(4), predict.step_cost(8)
    for a, b in ((four.flops, eight.flops), (four.bytes, eight.bytes)):
        assert a > 0 and b == pytest.approx(a, rel=0.02)
    assert four.eval_flops > 0 and four.program_bytes > 0
    hand = bench.flops_per_model_step("mlp")
    assert hand <= eight.flops <= 1.05 * hand


def test_the_roofline_takes_the_slower_bound_and_the_memory_that_fits():
    cost = predict.StepCost(1e8, 1e7, 0.0, 0.0, 1e6)
    fast = dataclasses.replace(predict.DEVICES["h100"], bandwidth=1e20)
    (row,) = predict.roofline(cost, fast, "float32", [64])
    assert row["bound"] == "compute"
    assert row["fraction_of_peak_low"] == pytest.approx(1.0)
    high = fast.float32 / 1e8
    assert row["model_steps_per_s_low"] == row["model_steps_per_s_high"] == high
    slow = dataclasses.replace(fast, bandwidth=1e9, memory=1e8)
    small, big = predict.roofline(cost, slow, "float32", [64, 128])
    assert small["bound"] == "memory" and small["model_steps_per_s_low"] == 100.0
    assert small["model_steps_per_s_high"] == pytest.approx(high)
    assert small["fits"] and not big["fits"] and small["largest_models"] == 90


@pytest.mark.slow
def test_predict_from_the_command_line(capsys):
    assert main(["bench", "--predict", "h100", "--models", "64", "100000"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA H100 SXM" in out and "roofline range" in out
    assert "no (at most" in out  # 100,000 models do not fit in 80 GB
    with pytest.raises(BadInput, match="choose one of"):
        predict.device("b200")
