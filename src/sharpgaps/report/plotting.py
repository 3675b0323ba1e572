"""What every figure notebook (notebooks/*.ipynb) shares: its caption, reading a tidy table down to the rows a
figure draws, seed-averaged lines in a grid of panels, and writing the figure with the data behind it.

Importing it selects the Agg backend and the house style: the notebooks write files and never open a window.
"""

from __future__ import annotations

import io
import itertools
import sys
import textwrap
from pathlib import Path

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from IPython.display import Image, Markdown, display  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox, ScaledTranslation  # noqa: E402

from ..core import atomic  # noqa: E402
from .evidence import branch_fallbacks, k_by_setting, late_rounds  # noqa: E402

sns.set_theme(context="paper", style="whitegrid", font_scale=1.15)
plt.rcParams.update({"axes.titlesize": 11, "legend.fontsize": 9, "legend.title_fontsize": 9})

# What makes two rows the same run configuration: seeds of one are averaged, different ones never mixed.
RUN_KEYS = ["K", "tau", "b", "lr", "loss", "window"]
# What a sweep's `match` changes along with the swept value (gap_vectors: W ~ 1/(K-1); epochs: the local steps,
# which are no run key here): one sweep configuration leaves these free too.
MATCH_VARIES = {"gap_vectors": ["window"], "epochs": [], "none": []}


def sweep_run_keys(axis: str, match: str) -> list[str]:
    """The run keys that fix one configuration of a sweep over ``axis`` (load's ``run_keys``)."""
    return [k for k in RUN_KEYS if k != axis and k not in MATCH_VARIES.get(match, [])]

# A restricted branch's parent configuration: its seeds may branch at different rounds (branch_scope "seed" reads
# each seed's own chi_k), so their curves are aligned on the local steps since the branch (column since_branch).
BRANCH_KEYS = ["K", "tau", "b", "lr"]

# Restricted training (Figs 5-8, X1): mode -> (legend label, colour, line style); a gap mode takes its Hessian
# twin's hue family, dashed.
MODES = {
    "none": ("Local SGD", "0.15", "-"),
    "dom": ("Dom", "tab:red", "-"),
    "bulk": ("Bulk", "tab:blue", "-"),
    "gapdom": ("gap-Dom", "tab:orange", "--"),
    "gapbulk": ("gap-Bulk", "tab:cyan", "--"),
    "randdom": ("random-Dom", "tab:brown", ":"),
    "randbulk": ("random-Bulk", "tab:purple", ":"),
    "graddom": ("gradhist-Dom", "tab:pink", "-."),
    "gradbulk": ("gradhist-Bulk", "tab:olive", "-."),
}
# The restricted modes by the subspace they restrict to (Fig X1: one panel each): family -> (panel title, its
# modes). Plain Local SGD ("none") belongs to none: it is the reference drawn in every family's panel.
MODE_FAMILIES = {
    "hessian": ("Hessian eigenspace $V_k$", ("dom", "bulk")),
    "gap": ("worker-gap subspace $U_m$", ("gapdom", "gapbulk")),
    "gradhist": ("gradient history", ("graddom", "gradbulk")),
    "random": ("random subspace", ("randdom", "randbulk")),
}
REFERENCE_MODE = "none"


def mode_families(modes) -> dict[str, list[str]]:
    """The families of :data:`MODE_FAMILIES` that have any of ``modes``, in that order, each as the modes to draw
    in its panel: the reference (plain Local SGD) first, if it is among ``modes``, then the family's own."""
    modes = set(modes)
    reference = [REFERENCE_MODE] if REFERENCE_MODE in modes else []
    return {family: reference + [m for m in own if m in modes]
            for family, (_, own) in MODE_FAMILIES.items() if modes & set(own)}


def mode_family(mode: str) -> str:
    """The family of a restricted mode ("reference" for plain Local SGD)."""
    if mode == REFERENCE_MODE:
        return "reference"
    return next(family for family, (_, own) in MODE_FAMILIES.items() if mode in own)


QUANTITIES = {"train_loss": "training loss", "train_acc": "training accuracy",
              "test_loss": "test loss", "test_acc": "test accuracy"}


def caption_text(path, namespace: dict) -> str:
    """The figure's report caption (a Jinja template, workflow/report/*.rst) rendered as the report renders it:
    ``snakemake.params.parameters.<name>`` is the notebook's parameter <name> (from ``namespace``, its globals)
    and ``snakemake.wildcards.fig`` the figure's stem. A name the notebook lacks is an error, not a blank."""
    snakemake = {"params": {"parameters": namespace}, "wildcards": {"fig": Path(namespace["out_png"]).stem}}
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(Path(path).read_text())
    return template.render(snakemake=snakemake)


def show_caption(path, namespace: dict) -> None:
    """Show :func:`caption_text` in the notebook, and which interpreter runs its kernel."""
    display(Markdown(caption_text(path, namespace)))
    print("kernel python:", sys.executable)


def load(table, column: str, values, settings, run_keys=RUN_KEYS) -> tuple[pd.DataFrame, list[str]]:
    """The rows of ``table`` whose ``column`` is one of ``values``, for the settings asked for (in that order;
    none: every setting the table has), keeping one run configuration (``run_keys``) per setting.
    Returns (rows, the settings that have any)."""
    df = atomic.read_frame(table)
    df = df[df[column].isin(values)]
    have = list(dict.fromkeys(df["setting"]))
    wanted = list(settings) or have
    missing = [s for s in wanted if s not in have]
    if missing:
        print(f"WARNING: {table} has no rows of {column} {list(values)} for {missing}: their panels are left out")
    use = [s for s in wanted if s in have]
    parts = []
    for s in use:
        g = df[df["setting"] == s]
        combos = g[run_keys].drop_duplicates().sort_values(run_keys)
        if len(combos) > 1:
            print(f"WARNING: {s} has {len(combos)} run configurations; drawing {combos.iloc[0].to_dict()}")
            g = g.merge(combos.iloc[[0]], on=run_keys)
        lacking = [v for v in values if v not in set(g[column])]
        if lacking:
            print(f"WARNING: {s} has no rows of {column} {lacking}")
        parts.append(g)
    return (pd.concat(parts, ignore_index=True) if parts else df.iloc[:0]), use


def stack(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """The tidy data of a figure: ``parts`` one below the other, in ``columns`` (empty, with them, if none)."""
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def last_rounds(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of each group of ``keys`` (one run) at its last round."""
    return df[df["round"] == df.groupby(keys)["round"].transform("max")]


def late_means(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each group of ``keys`` (one run and quantity) averaged over the last third of its checkpoints (one row per
    group, at its last round): the trajectory, where one checkpoint is noisy."""
    late = df[df["round"] >= df.groupby(keys)["round"].transform(lambda r: late_rounds(r)[0])]
    out = last_rounds(late, keys).copy()
    out["value"] = out.set_index(keys).index.map(late.groupby(keys)["value"].mean()).to_numpy()
    return out


def band_note(df: pd.DataFrame) -> str:
    """What a line and its band are: the mean over the seeds in ``df`` (per setting, if it has several), band
    min..max over them (none for one seed)."""
    if "seed" not in df or not len(df):
        return "no seeds"
    per = df.groupby("setting")["seed"].nunique() if "setting" in df else pd.Series([df["seed"].nunique()])
    lo, hi = int(per.min()), int(per.max())
    n = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"mean of {n} seed{'s' if hi > 1 else ''}" + (" per setting" if lo != hi else "") + \
        (", band: min–max over seeds" if hi > 1 else ", no band")


def checkpoint_round(spec, rounds) -> int:
    """'first' | 'mid' | 'last' | a round number (the nearest checkpoint round)."""
    rounds = sorted(int(r) for r in rounds)
    if spec == "first":
        return rounds[0]
    if spec == "last":
        return rounds[-1]
    if spec == "mid":
        return rounds[(len(rounds) - 1) // 2]
    return min(rounds, key=lambda r: (abs(r - int(spec)), r))


def pick_m(spec, available) -> list[int]:
    """The m of ``spec`` this setting has ('rank' = its largest m); all of them if none matches."""
    avail = sorted(int(m) for m in available)
    out = sorted({avail[-1] if m == "rank" else int(m) for m in spec} & set(avail))
    if not out:
        print(f"WARNING: none of m={list(spec)} evaluated (have {avail}); showing all")
    return out or avail


def common_m(g: pd.DataFrame, by: str) -> tuple[int | None, str | None]:
    """The m at which runs that differ in ``by`` are compared at equal dimension, and its legend label: k (the
    classes, the columns of sqcos) if every run evaluated it, otherwise the largest m every run evaluated that
    is not already every run's rank; (None, None) when there is none."""
    runs = [r["m"].dropna().astype(int) for _, r in g[g["metric"] == "removal"].groupby(by)]
    common = set.intersection(*map(set, runs)) if runs else set()
    ranks = {int(m.max()) for m in runs}

    k = next(iter(k_by_setting(g).values()), None)  # g holds one setting
    if k in common:
        return k, f"m = k = {k}"
    cand = sorted(m for m in common if not (len(ranks) == 1 and m in ranks))
    if not cand:
        return None, None
    return cand[-1], f"m = {cand[-1]}" + (f" (k = {k} not evaluated)" if k else "")


def run_title(label: str, g: pd.DataFrame) -> str:
    """Panel title: the setting's label and the run configuration of ``g``."""
    r = g.iloc[0]
    return f"{label}\nK={r.K}, τ={r.tau}, b={r.b}, η={r.lr:g}"


def since_branch(df: pd.DataFrame) -> pd.DataFrame:
    """Restricted-training rows with ``since_branch``: local steps per worker since the run left its parent."""
    return df.assign(since_branch=df["round"] * df["tau"])


def change_since_branch(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each row's ``value`` minus its group's first (``keys``: one seed's curve of one mode and quantity, sorted
    by step): seeds branch at different checkpoints, so the restricted figures draw each seed's change since
    its own branch and the band shows how the modes' progress varies, not where the seeds started."""
    return df["value"] - df.groupby(keys)["value"].transform("first")


def branch_title(label: str, g: pd.DataFrame) -> str:
    """Panel title of restricted runs: :func:`run_title`, the local step(s) its seeds branch at and which seeds
    branched by the rule's fallback (the chi_k criterion never held)."""
    steps = sorted(int(s) for s in g["branch_round"].unique() * int(g["tau"].iloc[0]))
    where = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]} (by seed)"
    fell = sorted(int(s) for s in g.loc[branch_fallbacks(g), "seed"].unique())
    if fell:
        every = len(fell) == g["seed"].nunique()
        where += " (FALLBACK: chi_k rule never met" + ("" if every else f"; seeds {', '.join(map(str, fell))}") + ")"
    return f"{run_title(label, g)}\nbranch at {where}"


def value_colors(values) -> dict:
    """One viridis colour per distinct value (m, tau, K, b), dark to light in increasing order."""
    cmap = plt.get_cmap("viridis")
    values = sorted(set(values))
    return {v: cmap(x) for v, x in zip(values, np.linspace(0.0, 0.85, max(len(values), 1)))}


def mode_handles(modes) -> list[Line2D]:
    """Legend entries of restricted-training modes."""
    return [Line2D([], [], color=MODES[m][1], ls=MODES[m][2], lw=2, marker="o", markersize=3.5, label=MODES[m][0])
            for m in modes]


def panels(n: int, width=4.2, height=3.4, nrows=1, **kw):
    """A figure of ``nrows`` x ``n`` panels of the given size each; ``axes`` is always 2-D."""
    fig, axes = plt.subplots(nrows, n, figsize=(width * n, height * nrows), squeeze=False, layout="constrained", **kw)
    return fig, axes


def draw_line(ax, sub: pd.DataFrame, x: str, color, y="value", **kw) -> None:
    """Mean over seeds (band = min..max when there are several); markers so one point still shows."""
    agg = sub.groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index().sort_values(x)
    kw.setdefault("marker", "o")
    kw.setdefault("markersize", 3.5)
    ax.plot(agg[x], agg["mean"], color=color, **kw)
    if (agg["count"] > 1).any():
        ax.fill_between(agg[x], agg["min"], agg["max"], color=color, alpha=0.15, lw=0)


# The removal fraction's axis label: what 1 means.
REMOVAL_LABEL = "removal fraction\n(1 = all of $g_{\\mathrm{dom}}$ removed)"


def baseline_far_below(values, baseline, factor: float = 100.0) -> bool:
    """Whether a reference drawn with the data (``baseline``, e.g. a random subspace's removal fraction, ~2m/d)
    is so far below the data (``values``: everything drawn) that a linear axis puts it on the zero line: its
    largest magnitude under 1/``factor`` of the largest value drawn."""
    base = np.abs(pd.Series(baseline, dtype=float).dropna())
    top = pd.Series(values, dtype=float).dropna()
    return bool(len(base) and len(top) and top.max() > 0 and base.max() < top.max() / factor)


def fraction_axis(ax, values, baseline=None, log: bool = True) -> str:
    """y axis of a fraction (``values``: everything drawn on it). Linear by default: a zero line and room from
    below the smallest value (at least -0.05) to 1.05.

    When ``baseline`` (a reference drawn on the same axis) sits far below the data (:func:`baseline_far_below`),
    a linear axis would hide it on the zero line: then, if ``log`` and every value is positive, the axis is log
    (a decade below the smallest value to 1.5) and the y label says so; otherwise (a value <= 0 has no place
    on a log axis, or the caller keeps the panel linear) the x label gets a note with the baseline's range.
    Call after setting the labels. Returns "log", "note" or "linear"."""
    values = pd.Series(values, dtype=float).dropna()
    if baseline is not None and baseline_far_below(values, baseline):
        if log and len(values) and (values > 0).all():
            ax.set_yscale("log")
            ax.set_ylim(10 ** np.floor(np.log10(values.min())), 1.5)
            ax.set_ylabel(f"{ax.get_ylabel()} (log scale)".lstrip())
            return "log"
        base = pd.Series(baseline, dtype=float).dropna()
        note = f"random subspace: {base.min():.1e} to {base.max():.1e}\n(on the zero line)"  # short lines: no overlap
        ax.set_xlabel(f"{ax.get_xlabel()}\n{note}".lstrip("\n"))
        mode = "note"
    else:
        mode = "linear"
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.set_ylim(min(-0.05, values.min() - 0.05) if len(values) else -0.05, 1.05)
    return mode


# A fraction axis against a swept value is log only when the lines on it span more decades than this.
LOG_DECADES = 1.5


def decades(values) -> float:
    """How many decades ``values`` span, log10(max / min); NaN when there are none or one is <= 0 (no log axis)."""
    v = pd.Series(values, dtype=float).dropna()
    return float(np.log10(v.max() / v.min())) if len(v) and (v > 0).all() else float("nan")


def short_log_axes(ax, max_decades: float = 2.0) -> None:
    """Plain-number labels on every log axis of ``ax`` that spans under ``max_decades``: with only the powers of
    ten labelled, such an axis shows one label or none, and its default minor labels crowd. Under one decade the
    ticks are a few round numbers, else 1, 2 and 5 per decade."""
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() == "log" and lo > 0 and np.log10(hi / lo) < max_decades:
            axis.set_major_locator(MaxNLocator(nbins=4) if np.log10(hi / lo) < 1
                                   else LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            axis.set_minor_formatter(NullFormatter())


def fraction_axis_by_span(ax, values, baseline=None, log_decades: float = LOG_DECADES) -> str:
    """y axis of fractions in [0, 1] (removal, overlap, chi_k) decided by the data: linear, so that values such as
    0.35-0.9 stay apart, unless the lines (``values``, without the reference ``baseline``) themselves span more
    than ``log_decades`` decades; then log, from a decade below the smallest value drawn (the baseline's too) to
    1.5, and the y label says so on a line of its own. On a linear axis a ``baseline`` far below the data gets
    its range in the x label (:func:`fraction_axis`). Call after setting the labels. Returns "log", "note" or
    "linear"."""
    values = pd.Series(values, dtype=float).dropna()
    base = pd.Series([] if baseline is None else baseline, dtype=float).dropna()
    if decades(values) > log_decades and (base > 0).all():
        every = pd.concat([values, base])
        ax.set_yscale("log")
        ax.set_ylim(10 ** np.floor(np.log10(every.min())), 1.5)
        ax.set_ylabel(f"{ax.get_ylabel()}\n(log scale)".lstrip())
        return "log"
    return fraction_axis(ax, pd.concat([values, base]), baseline=base if len(base) else None, log=False)


def overlapping_text(fig) -> list[str]:
    """The pieces of text that overlap once ``fig`` is laid out, as "A / B": any two of the panels' axis labels,
    titles and legends and the figure's legends, except two labels of one panel (matplotlib places those). An
    empty list is a figure whose labels all read."""
    fig.canvas.draw()  # runs the layout engine
    renderer = fig.canvas.get_renderer()
    items = []
    for n, ax in enumerate(fig.axes, 1):
        if not ax.get_visible() or not ax.axison:
            continue
        for what, artist in (("x label", ax.xaxis.label), ("y label", ax.yaxis.label), ("title", ax.title),
                             ("legend", ax.get_legend())):
            if artist is None or not artist.get_visible() or (hasattr(artist, "get_text") and not artist.get_text()):
                continue
            text = artist.get_text() if hasattr(artist, "get_text") else ""
            items.append((n, f"panel {n} {what}" + (f" {text.splitlines()[0]!r}" if text else ""),
                          artist.get_window_extent(renderer)))
    items += [(None, "figure legend", legend.get_window_extent(renderer)) for legend in fig.legends]
    out = []
    for (i, a, box_a), (j, b, box_b) in itertools.combinations(items, 2):
        if i == j and "legend" not in a + b:
            continue
        common = Bbox.intersection(box_a, box_b)
        if common is not None and common.width > 1 and common.height > 1:  # pixels: touching is not overlapping
            out.append(f"{a} / {b}")
    return out


def wrap(text: str, width: int) -> str:
    """``text`` with every line wrapped at ``width`` characters (titles that must not run into their neighbours);
    a line with mathtext ($...$) is left whole, since a break inside it would break the formula."""
    return "\n".join(line if not line or "$" in line else textwrap.fill(line, width) for line in text.split("\n"))


def title(ax, text: str, fontsize: float | None = None, **kw) -> None:
    """Set ``ax``'s title, each line wrapped to about the panel's width so neighbouring titles do not overlap."""
    size = fontsize or plt.rcParams["axes.titlesize"]
    size = size if isinstance(size, (int, float)) else 11
    inches = ax.get_position().width * ax.figure.get_figwidth()
    ax.set_title(wrap(text, max(12, int(inches * 72 / (0.58 * size)))), fontsize=fontsize, **kw)


def value_axis(ax, values, log=True) -> None:
    """x axis of a discrete quantity (m, or a swept parameter): a tick at each value, log2-spaced if ``log``."""
    if log:
        ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()


def legend_below(fig, handles, **kw) -> None:
    """The figure's legend below its panels, in one row where that fits the figure's width, else in as few rows as
    fit (a one-panel figure is narrower than a long row, which would widen the saved image and shrink the panel);
    ``kw`` overrides, e.g. ncol or title."""
    kw = {"ncol": legend_columns(fig, [h.get_label() for h in handles]), **kw}
    rows = -(-len(handles) // kw["ncol"])
    if rows > 1:  # the figure grows by the legend's extra rows, so its panels keep their height
        fig.set_figheight(fig.get_figheight() + (rows - 1) * (1 + plt.rcParams["legend.labelspacing"]) * _legend_em())
    fig.legend(handles=handles, loc="outside lower center", frameon=False, **kw)


def _legend_em() -> float:
    """The legend font's em, in inches."""
    return FontProperties(size=plt.rcParams["legend.fontsize"]).get_size_in_points() / 72


def legend_columns(fig, labels: list[str]) -> int:
    """The most legend columns whose entries fit side by side in ``fig``'s width: each entry is its handle, the pad
    and its label, at about 0.55 em per character of the legend's font."""
    em = _legend_em()
    entry = sorted((2.0 + 0.8 + 2.0 + 0.55 * len(label)) * em for label in labels)  # handle, pad, column spacing
    for ncol in range(len(labels), 1, -1):
        if sum(entry[-ncol:]) <= fig.get_figwidth():  # the widest entries, one per column
            return ncol
    return 1


def legend_below_axis(ax, handles, gap: float = 0.06, **kw):
    """``ax``'s own legend just below everything under the panel: its tick labels and every line of its x label,
    however many (:func:`fraction_axis` adds a note there), so the two never overlap. The offset is measured in
    inches, which the layout engine does not change. Call once the x label and x ticks are final. ``kw`` goes
    to ``ax.legend`` (e.g. ncol)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    under = ax.get_window_extent(renderer).y0 - ax.xaxis.get_tightbbox(renderer).y0  # pixels below the panel
    below = ScaledTranslation(0, -(under / fig.dpi + gap), fig.dpi_scale_trans)
    return ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                     bbox_transform=ax.transAxes + below, frameon=False, borderaxespad=0, **kw)


def no_data(message: str):
    """A small figure that says what is missing, drawn instead of empty panels."""
    print("WARNING:", message)
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return fig


def empty_panels(fig) -> list[str]:
    """The panels of ``fig`` with axes drawn but nothing in them ("panel <n> '<title>'"): a setting or series the
    figure made room for and then had no data for. Panels with their axes off (legends, notes) do not count."""
    return [f"panel {n} {ax.get_title()!r}" for n, ax in enumerate(fig.axes, 1)
            if ax.get_visible() and ax.axison and not ax.has_data()]


def _rendered(fig, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, bbox_inches="tight", **kw)
    return buf.getvalue()


def save(fig, data: pd.DataFrame, out_pdf, out_png, out_csv, dpi: int, note: str | None = "lines") -> None:
    """Write the tidy data drawn (CSV) and the figure (PDF, PNG) with the package's atomic writers, so a killed
    job never leaves a file that looks finished; then show the PNG in the notebook.

    ``note``: the line written above the figure's top-left corner. "lines" (default, for figures of seed-averaged
    lines with bands): "lines: <band_note(data)>", only if ``data`` has seeds; any other text: written as it is
    (a scatter of every seed is not a mean with a band, and must not say so); None: no note. Text that overlaps
    other text (:func:`overlapping_text`) and panels with nothing in them (:func:`empty_panels`) are printed as
    WARNINGs."""
    if note == "lines":  # every figure of lines over seeds says how many, and what its bands are
        note = f"lines: {band_note(data)}" if "seed" in data and len(data) else None
    if note:
        fig.text(0.0, 1.0, note, ha="left", va="bottom", fontsize=8, color="0.35")
    for pair in overlapping_text(fig):  # the figure tests read these from the executed notebook
        print(f"WARNING: overlapping text: {pair}")
    for panel in empty_panels(fig):
        print(f"WARNING: empty panel: {panel}")
    atomic.save_frame(data, out_csv)
    atomic.write_bytes(_rendered(fig, "pdf", metadata={"CreationDate": None}), out_pdf)  # same bytes on a rerun
    atomic.write_bytes(_rendered(fig, "png", dpi=dpi), out_png)
    plt.close(fig)
    print(f"wrote {out_pdf}, {out_png}, {out_csv} ({len(data)} rows)")
    display(Image(filename=out_png))


# Cheap estimators of V_k (Fig X3): estimator -> (legend label, colour, marker, line style). The
# Hessian-free ones are solid, the Hessian-based (Krylov, oracle) dashed, the floor dotted.
ESTIMATOR_STYLES = {
    "gap": ("gap subspace", "tab:orange", "o", "-"),
    "update": ("update history", "tab:green", "s", "-"),
    "gradhist": ("gradient history", "tab:blue", "^", "-"),
    "noise": ("noise PCA", "tab:purple", "v", "-"),
    "krylov": ("Krylov (random start)", "tab:red", "D", "--"),
    "krylovgap": ("Krylov (gap start)", "tab:brown", "P", "--"),
    "random": ("random", "0.55", "x", ":"),
    "oracle": ("Hessian oracle", "0.1", "*", "--"),
}


def estimator_handles(estimators) -> list[Line2D]:
    """Legend entries of subspace estimators."""
    return [Line2D([], [], color=ESTIMATOR_STYLES[e][1], marker=ESTIMATOR_STYLES[e][2], ls=ESTIMATOR_STYLES[e][3],
                   lw=1.8, markersize=5, label=ESTIMATOR_STYLES[e][0]) for e in estimators]


# The block Krylov estimators of the estimator table (sharpgaps.studies.estimators): random start, gap start.
