from pathlib import Path

import numpy as np
import pytest

from phasevae.analysis.curves import analyze_run
from phasevae.cli import main
from phasevae.engine.sweep import run_sweep
from phasevae.report import figures as plots
from tests.test_analysis import EV, K, run_dir, synthetic_metrics

NAMES = [
    "kl_vs_sigma2",
    "elbo_vs_sigma2",
    "latent_variance",
    "decoder_gains",
    "scaling",
    "training_curves",
    "spectrum",
    "phase_diagram",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real (tiny) sweep, analysed: 5 sigma^2 x 2 beta, 4 evaluations."""
    from phasevae.spec import spec_from_dict
    from tests.conftest import tiny_dict

    grid = {"sigma2": {"min": 0.3, "max": 30.0, "num": 5}, "beta": [0.5, 2.0]}
    spec = spec_from_dict(tiny_dict(grid=grid, train={"steps": 40, "eval_every": 10}))
    out = tmp_path_factory.mktemp("plots") / "run"
    run_sweep(spec, out)
    analyze_run(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_every_figure_is_drawn_from_a_stored_run(tiny_run, capsys, fmt):
    assert main(["plot", str(tiny_run), "--format", fmt]) == 0
    printed = capsys.readouterr().out.split()
    for name in NAMES:
        path = tiny_run / "figures" / f"{name}.{fmt}"
        assert path.stat().st_size > 1000, name
        assert str(path) in printed
    assert not list((tiny_run / "figures").glob(".*tmp*"))


@pytest.mark.slow
def test_the_plotted_boundary_is_the_one_in_analysis_json(tmp_path):
    run = run_dir(tmp_path, beta=[0.5, 1.0, 2.0])
    run.write_metrics(synthetic_metrics([0.5, 1.0, 2.0]))
    doc = analyze_run(run.path)
    fig = plots.phase_diagram(plots.load(run.path))
    (line,) = [a for a in fig.axes[0].lines if a.get_gid() == "measured-boundary"]
    want = [(t.sigma2_c, t.beta) for t in doc.transitions]
    np.testing.assert_allclose(np.c_[line.get_xdata(), line.get_ydata()], want)
    # swapped axes draw the same boundary transposed
    fig = plots.phase_diagram(plots.load(run.path), x="beta", y="sigma2")
    (line,) = [a for a in fig.axes[0].lines if a.get_gid() == "measured-boundary"]
    np.testing.assert_allclose(np.c_[line.get_ydata(), line.get_xdata()], want)
    # a kink read in a learned variance's starts or at a free-bits floor is no
    # collapse: the map leaves it out, as the pooled boundary does
    from phasevae.analysis.estimate import HELD, LEARNED

    raw = doc.to_json()
    raw["transitions"][0]["verdict"], raw["transitions"][2]["verdict"] = LEARNED, HELD
    run.write_analysis(raw)
    fig = plots.phase_diagram(plots.load(run.path))
    (line,) = [a for a in fig.axes[0].lines if a.get_gid() == "measured-boundary"]
    np.testing.assert_allclose(np.c_[line.get_xdata(), line.get_ydata()], want[1:2])
    # the KL figure's fitted curve is the stored fit, exactly
    fig = plots.kl_figure(plots.load(run.path))
    fitted = [a for a in fig.axes[0].lines if a.get_label() == "fit, active"][0]
    t = doc.transitions[0]
    u = np.log(fitted.get_xdata())
    np.testing.assert_allclose(
        fitted.get_ydata(), np.interp(u, t.fit.ln_sigma2, t.fit.kl)
    )


@pytest.mark.parametrize(
    "args, words",
    [
        (["--x", "width"], "not a grid axis"),
        (["--y", "seed"], "single seed value"),
        (["--x", "beta", "--y", "beta"], "must be different"),
        (["--format", "gif"], "choose png, pdf or svg"),
    ],
)
def test_bad_plot_arguments_exit_2(tiny_run, capsys, args, words):
    assert main(["plot", str(tiny_run), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


@pytest.mark.slow
def test_a_run_without_analysis_is_analysed_on_demand(tmp_path, capsys):
    """plot on a finished run without analysis.json analyses it first; an unfinished
    one is refused with what to do."""
    run = run_dir(tmp_path)
    run.write_metrics(synthetic_metrics([1.0]))
    assert main(["plot", str(run.path)]) == 0
    assert run.analysis() == analyze_run(run.path)
    assert main(["plot", str(tmp_path / "nope")]) == 2
    unfinished = run_dir(tmp_path / "u", status="running")
    unfinished.write_metrics(synthetic_metrics([1.0]))
    assert main(["plot", str(unfinished.path)]) == 2
    assert "unfinished" in capsys.readouterr().err
    assert not (unfinished.path / "analysis.json").exists()


@pytest.mark.slow
def test_remedy_hysteresis_and_learned_variance_figures(tmp_path):
    """A learned-variance hysteresis sweep over a remedy axis draws the remedy's
    theta_c figure and phase diagram, the up/down curves and the sigma^2 curves, and
    the remedy figure plots analysis.json's theta_c."""
    from phasevae.spec import spec_from_dict
    from tests.conftest import tiny_dict

    grid = {
        "sigma2": {"min": 0.3, "max": 30.0, "num": 5},
        "beta": [1.0],
        "decoder_init_scale": [0.1, 1.0],
    }
    spec = spec_from_dict(
        tiny_dict(
            grid=grid,
            model={"sigma2": "learned"},
            train={"steps": 40, "eval_every": 10, "hysteresis": True},
        )
    )
    out = tmp_path / "run"
    run_sweep(spec, out)
    doc = analyze_run(out)
    assert main(["plot", str(out)]) == 0
    for name in (
        "remedy_decoder_init_scale",
        "phase_diagram_decoder_init_scale",
        "hysteresis",
        "learned_variance",
    ):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    rd = plots.load(out)
    fig = plots.remedy_figure(rd, "decoder_init_scale")
    drawn = sorted(
        float(y)
        for line in fig.axes[0].get_lines()
        if line.get_marker() == "o"
        for y in line.get_ydata()
    )
    expect = sorted(t.sigma2_c * t.beta for t in doc.transitions if t.sigma2_c)
    np.testing.assert_allclose(drawn, expect)


@pytest.mark.parametrize(
    "run",
    [
        "default/default",
        pytest.param("conv/digits_conv", marks=pytest.mark.slow),
        pytest.param("remedies/hysteresis", marks=pytest.mark.slow),
    ],
)
def test_no_title_or_label_is_clipped_in_any_figure(run):
    """Every text a figure draws (tick labels of the ticks in view) lies inside the
    figure: a long data description in a title is wrapped, never cut (the default
    run's spectrum title lost two of its eigenvalues at the edge)."""
    import matplotlib.pyplot as plt

    from phasevae.report.figbase import drawn_texts

    path = Path(__file__).parent.parent / "results" / run
    for name, make in plots.figures(path).items():
        fig = make()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        width, height = fig.bbox.width, fig.bbox.height
        for text in drawn_texts(fig):
            e = text.get_window_extent(renderer)
            inside = e.x0 >= -1 and e.y0 >= -1 and e.x1 <= width + 1
            assert inside and e.y1 <= height + 1, (name, text.get_text(), e)
        plt.close(fig)


def test_the_kl_figure_draws_unsettled_points_hollow_and_says_so():
    """Points still trending at the end (left out of the fit) are drawn hollow with
    their own legend entry; every other point is filled (a committed run where
    each beta has some)."""
    path = Path(__file__).parent.parent / "results" / "conv" / "digits_mlp"
    rd = plots.load(path)
    fig = plots.kl_figure(rd)
    for col, t in enumerate(rd.analysis.transitions):
        ax = [a for a in fig.axes if a.get_ylabel() == "KL (nats)"][col]
        hollow, filled = [], []
        for line in ax.get_lines():
            if line.get_marker() == "o":
                (hollow if line.get_markerfacecolor() == "white" else filled).append(
                    line
                )
        (h,) = hollow
        want = sorted(t.unsettled_sigma2)
        assert want and sorted(h.get_xdata()) == pytest.approx(want)
        names = ax.get_legend_handles_labels()[1]
        assert "not settled: still trending (left out of the fit)" in names
        drawn = {float(x) for line in filled for x in line.get_xdata()}
        assert not drawn & set(want) and len(drawn) + len(want) == len(
            rd.curve(t)["sigma2"].unique()
        )


def test_the_gains_figure_draws_what_the_run_logged_and_only_then(tmp_path):
    """A run whose metrics hold the decoder's gains gets the decoder_gains figure,
    each gain's curve its seed mean per sigma^2; a run made before them (the
    committed default run) does not."""
    import matplotlib.pyplot as plt

    run = run_dir(tmp_path)
    metrics = synthetic_metrics([1.0], seeds=(0, 1))
    for j in range(K):
        fall = np.clip(1.0 - metrics["sigma2"] / EV[j], 0.0, None)
        metrics[f"decoder_gain_{j}"] = np.sqrt(fall) * (1.0 + 0.1 * metrics["seed"])
    run.write_metrics(metrics)
    analyze_run(run.path)
    made = plots.figures(run.path)
    assert "decoder_gains" in made
    fig = made["decoder_gains"]()
    top = fig.axes[0].get_lines()[0]  # gain 1, then its threshold's line
    want = metrics.groupby("sigma2")["decoder_gain_0"].mean()
    np.testing.assert_allclose(top.get_xdata(), want.index)
    np.testing.assert_allclose(top.get_ydata(), want.to_numpy())
    plt.close(fig)
    committed = Path(__file__).parent.parent / "results" / "default" / "default"
    assert "decoder_gains" not in plots.figures(committed)
