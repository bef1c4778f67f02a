"""Plots for the marketer reports: one look for every chart, drawn as inline SVG so a report is one offline file.

Every chart starts with `figure(title, x_label, y_label)`: a title and both axis labels are required (with the unit
in the label, e.g. "Customers (count)"), so no chart needs explaining. Colours come from the Okabe-Ito palette,
which stays distinguishable with the common colour-vision deficiencies, and each means one thing on every chart
(POSITIVE a gain, NEGATIVE a loss, MAIN the subject, NEUTRAL the reference; `effect_colours`, `difference_colours`).
`svg(fig)` returns the chart as an `<svg>` element to paste into HTML: text stays text (crisp at any zoom,
searchable), nothing refers to a file or the network.

Figures are made with `matplotlib.figure.Figure`, not pyplot: no global figure registry to leak into and no GUI
backend; they render with Agg's machinery, whatever backend the process chose.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from html import escape

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

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
