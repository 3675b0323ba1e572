"""The shared figure helpers (sharpgaps.report.plotting) that decide how a figure reads: axis scales, wrapped titles,
the note above a figure, restricted curves since the branch. Fast: no workflow, no notebook."""

import numpy as np
import pandas as pd
import pytest

from sharpgaps.report import evidence, plotting

DATA = pd.Series([0.3, 0.6, 0.95])  # removal fractions ~0.1-1
RANDOM = pd.Series([1e-5, 2e-4, 3e-4])  # a random subspace's removal, ~2m/d


def axis():
    fig, axes = plotting.panels(1)
    ax = axes[0, 0]
    ax.set(xlabel="local step", ylabel="removal fraction")
    return ax


def test_a_baseline_far_below_the_data_is_recognised():
    assert plotting.baseline_far_below(pd.concat([DATA, RANDOM]), RANDOM)
    assert not plotting.baseline_far_below(DATA, pd.Series([0.05, 0.2]))  # a visible baseline
    assert not plotting.baseline_far_below(DATA, pd.Series([], dtype=float))  # none drawn


def test_fraction_axis_goes_log_when_a_random_baseline_would_sit_on_the_zero_line():
    ax = axis()
    assert plotting.fraction_axis(ax, pd.concat([DATA, RANDOM]), baseline=RANDOM) == "log"
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    lo, hi = ax.get_ylim()
    assert lo <= RANDOM.min() and hi >= 1.0  # the baseline and the fraction's top (1) both inside


def test_fraction_axis_stays_linear_without_a_hidden_baseline():
    for baseline in (None, pd.Series([0.05, 0.2])):
        ax = axis()
        assert plotting.fraction_axis(ax, DATA, baseline=baseline) == "linear"
        assert ax.get_yscale() == "linear" and ax.get_ylim() == (-0.05, 1.05)


def test_fraction_axis_notes_the_baseline_where_a_log_axis_cannot_hold_the_data():
    values = pd.concat([DATA, RANDOM, pd.Series([-0.02])])  # a removal fraction can be < 0: no log axis
    ax = axis()
    assert plotting.fraction_axis(ax, values, baseline=RANDOM) == "note"
    assert ax.get_yscale() == "linear"
    assert "random subspace" in ax.get_xlabel() and "1.0e-05 to 3.0e-04" in ax.get_xlabel()
    ax = axis()  # the caller may keep a panel linear
    assert plotting.fraction_axis(ax, pd.concat([DATA, RANDOM]), baseline=RANDOM, log=False) == "note"


@pytest.mark.parametrize("placement", ["below_axis", "fixed"])
def test_a_panel_legend_sits_below_its_x_label_however_many_lines_it_has(placement):
    """Fig 9: a panel's own legend under a multi-line x label (fraction_axis's note on the random subspace) must
    not overlap it; the fixed offset it replaced (bbox_to_anchor=(0.5, -0.2)) did."""
    from matplotlib.lines import Line2D

    fig, axes = plotting.panels(3, height=3.9, nrows=2)
    ax = axes[1, 0]
    ax.set(xlabel="gap-subspace dimension $m$", ylabel="removal fraction (raw)")
    assert plotting.fraction_axis(ax, pd.concat([DATA, RANDOM, pd.Series([-0.02])]), baseline=RANDOM) == "note"
    handles = [Line2D([], [], label=f"step {s}") for s in (32, 344, 8000)] + [Line2D([], [], ls=":", label="random")]
    if placement == "below_axis":
        legend = plotting.legend_below_axis(ax, handles, ncol=3)
    else:
        legend = ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    fig.canvas.draw()  # runs the constrained layout
    renderer = fig.canvas.get_renderer()
    clear = legend.get_window_extent(renderer).y1 <= ax.xaxis.label.get_window_extent(renderer).y0
    assert clear == (placement == "below_axis")


def test_fraction_axis_by_span_is_linear_for_fractions_within_a_decade_and_notes_the_baseline():
    """Figs 10-18's summary panels: removal 0.35-0.9 and chi_k ~0.97 on a linear axis (a log axis squashed them into
    one decade), the random subspace's ~1e-4 given in the x label."""
    ax = axis()
    lines = pd.Series([0.35, 0.5, 0.9, 0.97])
    assert plotting.decades(lines) < plotting.LOG_DECADES
    assert plotting.fraction_axis_by_span(ax, lines, baseline=RANDOM) == "note"
    assert ax.get_yscale() == "linear" and "log" not in ax.get_ylabel()
    assert "random subspace" in ax.get_xlabel()
    ax = axis()
    assert plotting.fraction_axis_by_span(ax, lines) == "linear" and ax.get_ylim() == (-0.05, 1.05)


def test_fraction_axis_by_span_goes_log_only_when_the_lines_span_more_than_one_and_a_half_decades():
    ax = axis()
    lines = pd.Series([0.004, 0.05, 0.7, 0.9])  # e.g. removal at K = 2 against K = 16
    assert plotting.decades(lines) > plotting.LOG_DECADES
    assert plotting.fraction_axis_by_span(ax, lines, baseline=RANDOM) == "log"
    assert ax.get_yscale() == "log" and ax.get_ylabel().endswith("(log scale)")
    lo, hi = ax.get_ylim()
    assert lo <= RANDOM.min() and hi >= 1.0  # the baseline is on the log axis too
    ax = axis()  # a value <= 0 has no place on a log axis
    assert plotting.fraction_axis_by_span(ax, pd.concat([lines, pd.Series([-0.01])]), baseline=RANDOM) == "note"
    assert ax.get_yscale() == "linear"


@pytest.mark.parametrize("xlabel, ylabel, overlap", [
    ("b, examples per local batch (log scale)", "removal fraction or $\\chi_k$ (log scale)", True),  # as it was
    ("b, examples per local batch\n(log scale)", "removal fraction or $\\chi_k$\n(log scale)", False),
])
def test_overlapping_text_finds_an_x_label_running_into_the_next_panels_y_label(xlabel, ylabel, overlap):
    """Fig 16: the layout engine reserves an x label's height, not its width, so a label wider than its panel ran
    into the next panel's y label (taller than its panel); the sweep notebook breaks both, and save() warns of any
    such overlap."""
    fig, axes = plotting.panels(2, width=3.0, height=2.4)  # narrow, short panels: as the sweep figures' were
    for ax in axes[0]:
        ax.set(xlabel=xlabel, ylabel=ylabel)
    found = plotting.overlapping_text(fig)
    assert bool(found) == overlap
    assert all(" x label 'b, examples" in pair and " y label 'removal fraction" in pair for pair in found)


def test_restricted_modes_fall_into_four_families_each_drawn_with_plain_local_sgd():
    """Fig X1's panels: one per subspace family (Hessian, gap, gradient history, random), plain Local SGD in each."""
    families = plotting.mode_families(plotting.MODES)
    assert list(families) == ["hessian", "gap", "gradhist", "random"]
    assert all(modes[0] == "none" and len(modes) == 3 for modes in families.values())
    assert sorted(m for modes in families.values() for m in modes[1:]) == sorted(set(plotting.MODES) - {"none"})
    assert plotting.mode_families(["none", "dom", "bulk", "gapdom", "gapbulk"]) == {
        "hessian": ["none", "dom", "bulk"], "gap": ["none", "gapdom", "gapbulk"]}
    assert {plotting.mode_family(m) for m in plotting.MODES} == {"reference", *families}


def test_titles_are_wrapped_to_their_panel():
    fig, axes = plotting.panels(4, width=3.0)
    long = "mean over the last third of checkpoints (mean of 2 seeds, band: min–max over seeds)"
    plotting.title(axes[0, 0], long)
    lines = axes[0, 0].get_title().split("\n")
    assert len(lines) > 1 and " ".join(lines) == long
    inches = axes[0, 0].get_position().width * fig.get_figwidth()  # the panel's width
    assert max(map(len, lines)) * 0.58 * 11 / 72 <= inches  # an 11 pt character is about 0.58 x 11 pt wide


@pytest.mark.parametrize("note, expected", [
    ("lines", "lines: mean of 2 seeds, band: min–max over seeds"),
    ("points: every checkpoint and seed", "points: every checkpoint and seed"),
    (None, None),
])
def test_save_writes_the_note_it_is_given(tmp_path, note, expected):
    pytest.importorskip("IPython")
    fig, axes = plotting.panels(1)
    data = pd.DataFrame({"setting": "s", "seed": [0, 1], "value": [0.1, 0.2]})
    plotting.save(fig, data, tmp_path / "f.pdf", tmp_path / "f.png", tmp_path / "f.csv", dpi=50, note=note)
    texts = [t.get_text() for t in fig.texts]
    assert texts == ([expected] if expected else [])


def test_change_since_branch_starts_each_seed_at_zero():
    df = pd.DataFrame({"mode": ["dom"] * 4, "seed": [0, 0, 1, 1], "value": [2.0, 1.5, 3.0, 2.0]})
    assert np.allclose(plotting.change_since_branch(df, ["mode", "seed"]), [0.0, -0.5, 0.0, -1.0])


def estimator_table(setting, k, ranks):
    """A minimal estimator table: k, the Krylov ranks per budget j (both starts) and an overlap row per estimator."""
    rows = [{"setting": setting, "estimator": "oracle", "metric": "k", "m": np.nan, "j": np.nan, "value": k}]
    for e in evidence.KRYLOV:
        for j, r in ranks.items():
            rows += [{"setting": setting, "estimator": e, "metric": "rank", "m": np.nan, "j": j, "value": r},
                     {"setting": setting, "estimator": e, "metric": "overlap", "m": k, "j": j, "value": 0.5}]
    rows.append({"setting": setting, "estimator": "gap", "metric": "overlap", "m": k, "j": np.nan, "value": 0.3})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("k, ranks, blocks, p, start_only", [
    (10, {10: 10, 20: 20}, None, 10, {10}),  # MNIST, quick: block = k = 10, so j = 10 is the random start block itself
    (10, {10: 10, 15: 15}, None, 5, set()),  # CIFAR, quick: estimators.block 5 (the ranks show it), j = 10 two blocks
    (2, {4: 4, 6: 6}, None, 2, set()),  # SST-2, quick: k = 2
    (10, {4: 4, 8: 8}, None, 4, {4}),  # the smoke config: block capped by the smallest budget
    (10, {10: 10, 15: 10}, None, 10, {10, 15}),  # j = 15 buys no second block of 10 either
    (10, {10: 10, 20: 20}, {"s": 5}, 5, set()),  # the config's block, where the caller knows it
])
def test_krylov_budgets_that_buy_only_the_start_block_are_found(k, ranks, blocks, p, start_only):
    """Fig X3: a Krylov budget j with floor(j / p) <= 1 is the start block itself (random, or the gap subspace's
    first p directions) at a cost; the figure drops those rows."""
    table = estimator_table("s", k, ranks)
    starts = evidence.krylov_start_blocks(table, blocks)
    assert starts == {"s": p}
    flagged = evidence.krylov_start_block_only(table, starts)
    assert set(table.loc[flagged, "j"].astype(int)) == start_only
    assert set(table.loc[flagged, "estimator"]) <= set(evidence.KRYLOV)
    assert not flagged[table["estimator"] == "gap"].any()
    if blocks is None:  # by default the mask reads p from the table itself
        assert (evidence.krylov_start_block_only(table) == flagged).all()



def test_short_log_axes_get_plain_number_labels():
    """A log axis under two decades gets readable labels (several plain numbers); a longer one keeps its
    powers-of-ten labels."""
    import matplotlib.pyplot as plt

    from sharpgaps.report import plotting

    fig, (short, long) = plt.subplots(1, 2)
    short.loglog([27, 42], [0.1, 1.0])
    long.loglog([1e-8, 1e-4], [1e-8, 1e-4])
    for ax in (short, long):
        plotting.short_log_axes(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in short.get_xticklabels() if t.get_text() and 27 <= t.get_position()[0] <= 42]
    assert len(labels) >= 2 and all(label.replace(".", "").isdigit() for label in labels), labels
    assert any("10^{" in t.get_text() for t in long.get_xticklabels())
    plt.close(fig)


def test_a_panel_with_axes_and_nothing_in_it_is_reported_as_empty():
    fig, axes = plotting.panels(3)
    axes[0, 0].plot([0, 1], [0, 1])
    axes[0, 1].set_title("sst2_transformer")  # room made for a setting, then nothing drawn
    axes[0, 2].axis("off")  # a legend or note panel is not empty
    assert plotting.empty_panels(fig) == ["panel 2 'sst2_transformer'"]
    axes[0, 1].axhline(0.5)
    assert plotting.empty_panels(fig) == []


def test_a_long_legend_wraps_to_the_width_of_a_narrow_figure():
    """A one-setting figure is one panel wide: its legend takes as many rows as it needs instead of widening the
    saved image (which shrinks the panel); a wide figure keeps one row."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], label=f"a legend entry {i}") for i in range(9)]
    narrow, wide = plt.figure(figsize=(4.5, 3), layout="constrained"), plt.figure(figsize=(24, 3), layout="constrained")
    for fig in (narrow, wide):
        fig.add_subplot().plot([0, 1])
        plotting.legend_below(fig, handles)
    assert 1 <= plotting.legend_columns(narrow, [h.get_label() for h in handles]) < 9
    assert plotting.legend_columns(wide, [h.get_label() for h in handles]) == 9
    assert narrow.get_figheight() > 3 and wide.get_figheight() == 3  # extra rows add height, not squash the panel
    narrow.canvas.draw()
    legend = narrow.legends[0].get_window_extent()
    assert legend.width <= narrow.bbox.width  # the legend fits inside the figure: bbox_inches="tight" adds nothing
    plt.close("all")
