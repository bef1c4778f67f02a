"""Every chart of the product, drawn once, in one look: the marketer reports (inline SVG) and the data scientists'
MLflow runs (PNG) call the same functions.

The look: every chart starts with `figure(title, x_label, y_label)`: a title and both axis labels are required
(with the unit in the label, e.g. "Customers (count)"), so no chart needs explaining. Colours come from the
Okabe-Ito palette, which stays distinguishable with the common colour-vision deficiencies, and each means one
thing on every chart (POSITIVE a gain, NEGATIVE a loss, MAIN the subject, NEUTRAL the reference; `effect_colours`,
`difference_colours`). `svg(fig)` returns a chart as an `<svg>` element to paste into HTML: text stays text,
nothing refers to a file or the network.

Figures are made with `matplotlib.figure.Figure`, not pyplot: no global figure registry to leak into and no GUI
backend. The exception is the `shap` library's plots (beeswarm, dependence, waterfall), which draw on pyplot's
current figure; `shap_figures` hands them back as Figures and unregisters them.

Charts: model evaluation (calibration, lift, gains, amount calibration, look-alike reach, cluster sizes and
profiles, k selection, SHAP summaries) from the tables every training run logs (long format: one row per bin or
decile and `scorer`, "model" first, then the baselines).
"""

from __future__ import annotations

import io
import re
import sys
import warnings
from collections.abc import Sequence
from html import escape

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from features.catalog import FEATURES_BY_NAME
from training.grading import BASELINE_NAMES

# Okabe & Ito (2008), "Color Universal Design": safe for protanopia, deuteranopia and tritanopia.
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "bluish_green": "#009E73",
    "vermillion": "#D55E00",
    "sky_blue": "#56B4E9",
    "reddish_purple": "#CC79A7",
    "yellow": "#F0E442",
    "black": "#000000",
}
# One meaning per colour, on every chart of every page (the customer page included):
POSITIVE = OKABE_ITO["bluish_green"]  # a gain: members entering; an effect lowering churn risk or raising another score
NEGATIVE = OKABE_ITO["vermillion"]  # a loss: members leaving; an effect raising churn risk or lowering another score
MAIN = OKABE_ITO["blue"]  # the subject: this model, the segment's or cluster's members (higher than everyone), sizes
NEUTRAL = "#7a7a7a"  # the reference: all customers (members lower than them), random targeting, zero lines
ACCENT = OKABE_ITO["orange"]  # a summary over the subject (average per band over customers' dots), a first baseline
# Series without a meaning (baselines side by side), in order: never green or vermillion, which carry one.
SERIES = [MAIN, ACCENT, OKABE_ITO["reddish_purple"], OKABE_ITO["sky_blue"], OKABE_ITO["yellow"]]

TEXT_COLOUR = "#1f2328"
GRID_COLOUR = "#d8dee4"
FONT_FAMILY = ["DejaVu Sans", "Liberation Sans", "Arial", "sans-serif"]

STYLE = {
    "axes.prop_cycle": matplotlib.cycler(color=SERIES),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#57606a",
    "axes.labelcolor": TEXT_COLOUR,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 10,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": GRID_COLOUR,
    "grid.linewidth": 0.7,
    "xtick.color": "#57606a",
    "ytick.color": "#57606a",
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "xtick.labelcolor": TEXT_COLOUR,
    "ytick.labelcolor": TEXT_COLOUR,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "font.family": "sans-serif",
    "font.sans-serif": FONT_FAMILY,
    "lines.linewidth": 2.0,
    "lines.markersize": 5,
    "svg.fonttype": "none",  # text as <text>: crisp, selectable, small; the page's font stack renders it
    "svg.hashsalt": None,  # random ids: several charts in one page never share a clip-path id
}
_SVG_START = re.compile(r"<svg\b")
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)  # RDF boilerplate naming external vocabularies


def figure(title: str, x_label: str, y_label: str, *, width: float = 7.0, height: float = 3.2,
           subtitle: str | None = None) -> tuple[Figure, Axes]:
    """A figure with one axes, styled, titled and labelled.

    Args:
        title: what the chart shows, in a marketer's words ("Members of VIP over time").
        x_label, y_label: axis labels with the unit ("Date", "Customers (count)", "Share of customers (%)").
        width, height: inches at 100 dpi in the SVG (the page scales it to the column width).
        subtitle: an optional second line under the title (e.g. the period or the baseline).

    Raises ValueError when the title or a label is empty: an unlabelled chart needs explaining.
    """
    for what, text in (("title", title), ("x_label", x_label), ("y_label", y_label)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"figure needs a non-empty {what} (charts must read without explanation), "
                             f"got {text!r}")
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        ax.set_title(title if subtitle is None else f"{title}\n", loc="left")
        if subtitle is not None:
            ax.text(0, 1.02, subtitle, transform=ax.transAxes, fontsize=9, color="#57606a", va="bottom")
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
    return fig, ax


def svg(fig: Figure, description: str | None = None) -> str:
    """The figure as an inline `<svg>` element (no XML prolog, scales to its container), then closes the figure.

    `description` becomes the element's accessible name (aria-label); by default the figure's first title.
    """
    label = description or _first_title(fig)
    buffer = io.StringIO()
    with matplotlib.rc_context(STYLE):
        # constrained layout already fits the labels: no second, "tight" drawing pass
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    close(fig)
    text = buffer.getvalue()
    text = _METADATA.sub("", text[text.index("<svg"):])  # <?xml ...?> and the DOCTYPE are invalid inside HTML
    attributes = f'<svg class="chart" role="img" aria-label="{escape(label, quote=True)}"'
    return _SVG_START.sub(attributes, text, count=1)


def close(fig: Figure) -> None:
    """Free a figure: also unregister it from pyplot when a caller made it there."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()


def _first_title(fig: Figure) -> str:
    for ax in fig.axes:
        if ax.get_title(loc="left").strip():
            return ax.get_title(loc="left").strip()
        if ax.get_title().strip():
            return ax.get_title().strip()
    return "chart"


# ---------------------------------------------------------------------------------------------------------------
# Axis helpers


def date_axis(ax: Axes) -> None:
    """Dates on the x axis, as short as they can be without ambiguity ("Jul", "2026-07-01" where the year changes)."""
    locator = AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def count_axis(ax: Axes, axis: str = "y") -> None:
    """Whole numbers with thousands separators on `axis`, starting at zero."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(MaxNLocator(integer=True, min_n_ticks=3))
    target.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    if axis == "y":
        ax.set_ylim(bottom=0)
    else:
        ax.set_xlim(left=0)


def percent_axis(ax: Axes, axis: str = "y", fraction: bool = True) -> None:
    """Percent tick labels on `axis`; values are fractions (0.12 -> 12%) unless fraction is False."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(PercentFormatter(1.0 if fraction else 100.0, decimals=None))


# ---------------------------------------------------------------------------------------------------------------
# Colours by meaning


def effect_colours(effects: Sequence[float], risk: bool) -> list[str]:
    """Bars of effects on a score: NEGATIVE where the effect is a loss (raises a risk such as churn, or lowers any
    other score: spend, likeness, membership), POSITIVE where it is a gain."""
    return [NEGATIVE if (effect > 0 if risk else effect < 0) else POSITIVE for effect in effects]


def difference_colours(differences: Sequence[float]) -> list[str]:
    """Bars of members minus all customers: MAIN where the members are higher, NEUTRAL where everyone is."""
    return [MAIN if difference >= 0 else NEUTRAL for difference in differences]


# ---------------------------------------------------------------------------------------------------------------
# Small inline charts drawn without Matplotlib (tables of many segments)


def sparkline(values: Sequence[float], width: int = 120, height: int = 28, label: str = "trend") -> str:
    """A tiny line of `values` in order (no axes) as inline SVG, the last point marked; an empty string for fewer
    than two values. `label` is the accessible name, e.g. "Members at each refresh: 120, 135"."""
    numbers = np.asarray([float(v) for v in values], dtype=float)
    if len(numbers) < 2 or not np.isfinite(numbers).all():
        return ""
    pad = 3.0
    low, high = float(numbers.min()), float(numbers.max())
    span = high - low or 1.0
    xs = pad + np.arange(len(numbers)) * (width - 2 * pad) / (len(numbers) - 1)
    ys = height - pad - (numbers - low) / span * (height - 2 * pad)
    if high == low:
        ys = np.full_like(ys, height / 2)
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    return (f'<svg class="sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(label, quote=True)}"><polyline points="{points}" fill="none" stroke="{MAIN}" '
            f'stroke-width="1.8" stroke-linejoin="round"/><circle cx="{xs[-1]:.1f}" cy="{ys[-1]:.1f}" r="2.6" '
            f'fill="{MAIN}"/></svg>')


# ---------------------------------------------------------------------------------------------------------------
# Model evaluation charts


def series_name(scorer: str) -> str:
    return "this model" if scorer == "model" else f"{BASELINE_NAMES.get(scorer, scorer)} baseline"


def series_colour(i: int) -> str:
    """The i-th series (this model first): colours that carry no meaning of gain or loss."""
    return SERIES[i % len(SERIES)]


def calibration(table: pd.DataFrame, what: str) -> Figure:
    """Reliability diagram from tables/calibration.csv (bin, mean_predicted, observed_rate, n, scorer)."""
    fig, ax = figure(f"Predicted vs observed {what}", f"Predicted {what} (% of customers)",
                     f"Observed {what} (% of customers)", width=6.4, height=4.4,
                     subtitle="Each point is a band of customers; on the dotted line, predictions come true")
    ax.plot([0, 100], [0, 100], color=NEUTRAL, linestyle=":", linewidth=1.2, label="perfectly calibrated")
    for i, (scorer, rows) in enumerate(table.groupby("scorer", sort=False)):
        filled = rows[rows["n"] > 0]
        ax.plot(100 * filled["mean_predicted"], 100 * filled["observed_rate"], marker="o", color=series_colour(i),
                linestyle="-" if scorer == "model" else "--", label=series_name(scorer))
    ax.set(xlim=(0, 100), ylim=(0, 100))
    ax.legend(loc="upper left")
    return fig


def lift(table: pd.DataFrame, what: str) -> Figure:
    """Lift per score decile from tables/lift.csv or deciles.csv (group, lift, scorer): grouped bars."""
    scorers = list(dict.fromkeys(table["scorer"]))
    fig, ax = figure(f"{what.capitalize()} by score decile, relative to average",
                     "Score decile (1 = the 10% with the highest scores)", f"Lift ({what} / average, ×)",
                     width=7.0, height=3.8)
    width = 0.8 / len(scorers)
    for i, scorer in enumerate(scorers):
        rows = table[table["scorer"] == scorer]
        ax.bar(rows["group"] + (i - (len(scorers) - 1) / 2) * width, rows["lift"], width=width, color=series_colour(i),
               label=series_name(scorer))
    ax.axhline(1.0, color=NEUTRAL, linestyle=":", linewidth=1.2, label="average (random targeting)")
    ax.set_xticks(sorted(table["group"].unique()))
    ax.legend(loc="upper right")
    return fig


def amount_calibration(table: pd.DataFrame, what: str) -> Figure:
    """Mean predicted vs mean actual per predicted decile from tables/calibration.csv of the value model."""
    fig, ax = figure(f"Predicted vs actual {what} per decile", f"Mean predicted {what} (currency, log scale)",
                     f"Mean actual {what} (currency, log scale)", width=6.4, height=4.4,
                     subtitle="Each point is a tenth of customers by prediction (those spending next to nothing "
                              "are off the chart)")
    values = table[["mean_predicted", "mean_actual"]].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]  # a scorer's inf is left off, not the chart
    high = (float(finite.max()) if finite.size else 1.0) * 1.5
    low = high / 1e3  # three decades: deciles that buy next to nothing would squash the rest into a corner
    positive = table[(table["mean_predicted"] >= low) & (table["mean_actual"] >= low)]
    ax.plot([low, high], [low, high], color=NEUTRAL, linestyle=":", linewidth=1.2, label="predicted = actual")
    for i, (scorer, rows) in enumerate(positive.groupby("scorer", sort=False)):
        ax.plot(rows["mean_predicted"], rows["mean_actual"], marker="o", color=series_colour(i),
                linestyle="-" if scorer == "model" else "--", label=series_name(scorer))
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high))
    ax.legend(loc="upper left")
    return fig


def reach(table: pd.DataFrame, seed: str) -> Figure:
    """Held-out seed members found against reach, from tables/reach.csv (model, baselines, random)."""
    fig, ax = figure(f"Held-out {seed} found, by reach", "Customers reached (% of customers, best scores first)",
                     "Held-out seed members found (%)", width=7.0, height=4.0)
    ax.plot(table["reach_pct"], 100 * table["recall"], color=MAIN, label="this model")
    others = [c for c in table.columns if c.startswith("recall_")]
    for i, column in enumerate(others, start=1):
        name = column.removeprefix("recall_")
        random = name == "random"
        ax.plot(table["reach_pct"], 100 * table[column], color=NEUTRAL if random else series_colour(i),
                linestyle=":" if random else "--", label=series_name(name))
    ax.set(xlim=(0, 100), ylim=(0, 102))
    ax.legend(loc="lower right")
    return fig


def qini(table: pd.DataFrame) -> Figure:
    """Qini curves from tables/qini_curve.csv (fraction, model, then baselines; "random" dotted): extra buyers per
    audience member when the best-ranked share is contacted."""
    fig, ax = figure("Extra buyers by share contacted (held-out campaigns)", "Audience contacted (%, best first)",
                     "Extra buyers (% of the audience)", width=7.0, height=4.0)
    x = 100 * table["fraction"]
    ax.plot(x, 100 * table["model"], color=MAIN, label="this model")
    for i, column in enumerate([c for c in table.columns if c not in ("fraction", "model")], start=1):
        random = column == "random"
        ax.plot(x, 100 * table[column], color=NEUTRAL if random else series_colour(i),
                linestyle=":" if random else "--", label=series_name(column))
    ax.axhline(0.0, color=NEUTRAL, linewidth=0.8)
    ax.set(xlim=(0, 100))
    ax.legend(loc="lower right")
    return fig


def reach_lift(table: pd.DataFrame, seed: str, up_to: int = 30) -> Figure:
    """Lift (share of held-out seed members found / share of customers reached) for the first `up_to`% reached."""
    head = table[table["reach_pct"] <= up_to]
    fig, ax = figure(f"Lift of look-alike targeting for {seed}", "Customers reached (% of customers)",
                     "Lift (found / reached, ×)", width=7.0, height=3.6)
    ax.plot(head["reach_pct"], head["recall"] / (head["reach_pct"] / 100), marker="o", color=MAIN,
            label="this model")
    for i, column in enumerate([c for c in table.columns if c.startswith("recall_") and c != "recall_random"], 1):
        ax.plot(head["reach_pct"], head[column] / (head["reach_pct"] / 100), marker="o", color=series_colour(i),
                linestyle="--", label=series_name(column.removeprefix("recall_")))
    ax.axhline(1.0, color=NEUTRAL, linestyle=":", linewidth=1.2, label="random targeting")
    ax.set(ylim=(0, None))
    ax.legend(loc="upper right")
    return fig


def cluster_sizes(profiles: pd.DataFrame) -> Figure:
    """Customers per cluster (bars, with their share), from the profiles table."""
    rows = profiles.iloc[::-1]
    fig, ax = figure("Customers per cluster", "Customers (count)", "Cluster", width=7.0,
                     height=0.42 * len(rows) + 1.3)
    ax.barh(rows["cluster_name"], rows["size"], color=MAIN)
    for y, (size, share) in enumerate(zip(rows["size"], rows["share"], strict=True)):
        ax.text(size, y, f" {size:,} ({share:.0%})", va="center", fontsize=9)
    ax.margins(x=0.18)
    ax.grid(axis="y", visible=False)
    return fig


def profile_heatmap(profiles: pd.DataFrame, top: int = 12) -> Figure:
    """Clusters x the most distinguishing features: standardized difference, blue above all customers (the
    members' colour), grey below (the reference's), as on every profile chart."""
    from matplotlib.colors import LinearSegmentedColormap

    columns = [c for c in profiles.columns if c.endswith("__std_diff")]
    diffs = profiles.set_index("cluster_name")[columns]
    strongest = diffs.abs().max().sort_values(ascending=False).index[:top]
    diffs = diffs[strongest]
    labels = [FEATURES_BY_NAME[c.removesuffix("__std_diff")].label for c in strongest]
    fig, ax = figure("Cluster profiles: difference from all customers", "Feature", "Cluster",
                     width=9.0, height=0.5 * len(diffs) + 3.4)
    cmap = LinearSegmentedColormap.from_list("grey_white_blue", [NEUTRAL, "#FFFFFF", MAIN])
    image = ax.imshow(diffs.to_numpy(), cmap=cmap, vmin=-2, vmax=2, aspect="auto")
    for (i, j), value in np.ndenumerate(diffs.to_numpy()):
        ax.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(diffs)), diffs.index, fontsize=9)
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="Difference (standard deviations)")
    return fig


def gains(table: pd.DataFrame, what: str) -> Figure:
    """Cumulative gains from a lift table (group, cumulative_share, cumulative_capture, scorer): share of all
    outcomes captured against share of customers targeted, best scores first."""
    fig, ax = figure(f"{what.capitalize()} captured by targeting the highest scores first",
                     "Customers targeted (% of customers, by score)", f"{what.capitalize()} captured (% of total)",
                     width=6.4, height=4.4)
    ax.plot([0, 100], [0, 100], color=NEUTRAL, linestyle=":", linewidth=1.2, label="random targeting")
    for i, (scorer, rows) in enumerate(table.groupby("scorer", sort=False)):
        x = np.concatenate([[0.0], 100 * rows["cumulative_share"].to_numpy()])
        y = np.concatenate([[0.0], 100 * rows["cumulative_capture"].to_numpy()])
        ax.plot(x, y, marker="o", color=series_colour(i), linestyle="-" if scorer == "model" else "--",
                label=series_name(scorer))
    ax.set(xlim=(0, 100), ylim=(0, 100))
    ax.legend(loc="lower right")
    return fig


def k_selection(k_scores: pd.DataFrame, criterion: str, chosen: int) -> Figure:
    """The clustering criterion for every k tried (k_scores: k and the criterion's column), the chosen k marked."""
    better = "higher is better" if criterion == "silhouette" else "lower is better"
    fig, ax = figure(f"Choosing the number of clusters ({criterion})", "Number of clusters k",
                     f"{criterion.upper() if criterion == 'bic' else criterion.capitalize()} on a fixed sample "
                     f"({better})", width=6.4, height=4.2)
    ax.plot(k_scores["k"], k_scores[criterion], marker="o", color=MAIN, label=criterion)
    ax.axvline(chosen, color=ACCENT, linestyle="--", label=f"chosen k = {chosen}")
    ax.legend(loc="best")
    return fig


def shap_summary(importance: pd.DataFrame, title: str, scale: str, top: int = 15) -> Figure:
    """Horizontal bars of the top inputs by mean |SHAP| (importance: label, group, mean_abs_shap), strongest on
    top, coloured by business attribute."""
    head = importance.head(top).iloc[::-1]
    groups = list(dict.fromkeys(importance["group"]))
    fig, ax = figure(title, f"Mean |SHAP| ({scale})", "Attribute (feature)", width=7.0,
                     height=0.34 * len(head) + 1.6)
    ax.barh(head["label"], head["mean_abs_shap"], color=[series_colour(groups.index(g)) for g in head["group"]])
    for group in dict.fromkeys(head["group"]):
        ax.barh([], [], color=series_colour(groups.index(group)), label=group)
    ax.grid(axis="y", visible=False)
    ax.legend(title="business attribute", loc="lower right")
    return fig


def seed_shap(top_features: pd.DataFrame, seed: str) -> Figure:
    """What seed members have in common: mean |SHAP| over the members of the top inputs (top_features: label,
    mean_shap, mean_abs_shap), coloured by whether they raise (MAIN) or lower (NEUTRAL) the likeness on average."""
    rows = top_features.head(10).iloc[::-1]
    fig, ax = figure(f"What members of {seed} have in common", "Mean |SHAP| over seed members (log-odds)", "Feature",
                     width=7.0, height=0.36 * len(rows) + 1.5,
                     subtitle="blue: on average raises the likeness; grey: lowers it")
    ax.barh(rows["label"], rows["mean_abs_shap"], color=difference_colours(rows["mean_shap"].to_numpy()))
    ax.grid(axis="y", visible=False)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# The `shap` library's plots of a fitted model, for data scientists (MLflow runs, notebooks): beeswarm, dependence
# of its strongest input, waterfall of its highest-scored customer, on the booster the estimator declares
# (`Estimator.explanation()`): the same values the service's reasons sum.

SHAP_SAMPLE = 500  # rows explained for the plots: enough for a beeswarm, ~0.1 s of TreeSHAP


def shap_explanation(model, features: pd.DataFrame, sample: int = SHAP_SAMPLE, seed: int = 0):
    """A `shap.Explanation` of `model`'s explained score on up to `sample` rows of `features` (a seeded sample).

    Inputs are named by their catalog labels; for a softmax model (clusters) each row's own class is explained.
    """
    import shap

    declared = model.explanation()
    rows = features.sample(n=min(sample, len(features)), random_state=seed) if len(features) > sample else features
    X = model.encoder_.matrix(rows)
    if declared.booster is None:  # a textbook candidate: its margin is `extra` alone
        values, base = np.zeros(X.shape), np.zeros(1)
    else:
        explainer = shap.TreeExplainer(declared.booster)
        with warnings.catch_warnings():  # shap's note that binary LightGBM output changed shape: we read the array
            warnings.filterwarnings("ignore", message=".*binary classifier.*", category=UserWarning)
            values = np.asarray(explainer.shap_values(X))
        base = np.asarray(explainer.expected_value, dtype=float)
    if values.ndim == 3:  # (rows, inputs, classes): the own class of each row
        own = declared.own_class(rows, X)
        values, base = values[np.arange(len(X)), :, own], base[own]
    base = np.broadcast_to(base, len(X)).astype(float)
    if declared.extra is not None:  # a margin that is not the trees' alone (churn's textbook term): added
        extra = declared.extra(X)
        values, base = values + extra[:, :-1], base + extra[:, -1]
    names = [FEATURES_BY_NAME[f].label if f in FEATURES_BY_NAME else f for f in model.encoder_.feature_names_]
    return shap.Explanation(values=values, base_values=base, data=X,
                            feature_names=names), declared


def shap_figures(model, features: pd.DataFrame) -> dict[str, Figure]:
    """name -> Figure: shap_beeswarm, shap_dependence (strongest input) and shap_waterfall (highest margin)."""
    import matplotlib.pyplot as plt
    import shap

    explanation, declared = shap_explanation(model, features)
    margin_words = f"{declared.subject} ({declared.scale})"
    figures = {}
    strongest = int(np.abs(explanation.values).mean(axis=0).argmax())
    top = int((explanation.values.sum(axis=1) + explanation.base_values).argmax())
    for name, draw in (("shap_beeswarm", lambda: shap.plots.beeswarm(explanation, max_display=15, show=False)),
                       ("shap_dependence", lambda: shap.plots.scatter(explanation[:, strongest], show=False)),
                       ("shap_waterfall", lambda: shap.plots.waterfall(explanation[top], max_display=12,
                                                                        show=False))):
        before = set(plt.get_fignums())
        plt.figure()
        draw()  # some shap plots open a figure of their own
        figure = plt.gcf()
        figure.suptitle(f"SHAP: {margin_words}", fontsize=10)
        figures[name] = figure
        for number in set(plt.get_fignums()) - before:  # kept as objects; pyplot forgets every one it opened
            plt.close(number)
    return figures
