"""Plots: the course's figures, as plotly figures built from plain data.

Every function takes the data a lesson already has (a history list, a list of (token,
probability) pairs, scoreboard rows) and returns a ``plotly.graph_objects.Figure``; nothing is
shown or saved here. Figures use ``go.Figure`` (not ``FigureWidget``) so that notebooks store
them as plain JSON, which nbval can compare and GitHub can render.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

TEMPLATE = "plotly_white"


def use_notebook_renderer() -> None:
    """Store figures as plotly's JSON mimetype: no random div ids, small notebooks."""
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype"


def token_probabilities(top: Sequence[tuple[str, float]], title: str = "Next-token probabilities") -> go.Figure:
    """A bar chart of (token, probability) pairs, most likely first; spaces shown as '␣'."""
    labels = [repr(tok.replace(" ", "␣"))[1:-1] for tok, _ in top]
    fig = go.Figure(go.Bar(x=labels, y=[round(p, 4) for _, p in top]))
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title="next token", yaxis_title="probability",
                      yaxis_range=[0, 1], height=320)
    return fig


def distributions(rows: dict[str, Sequence[tuple[str, float]]], title: str) -> go.Figure:
    """Several next-token distributions side by side (e.g. one per temperature)."""
    fig = go.Figure()
    for name, top in rows.items():
        fig.add_bar(name=name, x=[repr(t.replace(" ", "␣"))[1:-1] for t, _ in top], y=[round(p, 4) for _, p in top])
    fig.update_layout(template=TEMPLATE, title=title, barmode="group", yaxis_range=[0, 1], height=340,
                      xaxis_title="next token", yaxis_title="probability")
    return fig


def curves(history: Sequence[dict], keys: Sequence[str], x: str = "step", title: str = "") -> go.Figure:
    """Line plot of metric ``keys`` from a training history (a list of metric dicts)."""
    fig = go.Figure()
    for key in keys:
        points = [(h[x], h[key]) for h in history if key in h]
        fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines", name=key)
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title=x, height=340)
    return fig


RATE_COLUMNS = ("answer rate", "false-statement rate", "rudeness rate")


def scoreboard(rows: Sequence[dict], intervals: Sequence[dict] | None = None,
               title: str = "Scoreboard on held-out questions") -> go.Figure:
    """Grouped bars: one group per rate, one bar per model, with 95 % intervals if given."""
    fig = go.Figure()
    for i, row in enumerate(rows):
        error = None
        if intervals is not None:
            lo_hi = [intervals[i][c] for c in RATE_COLUMNS]
            error = {"type": "data", "symmetric": False,
                     "array": [round(hi - row[c], 4) for c, (lo, hi) in zip(RATE_COLUMNS, lo_hi)],
                     "arrayminus": [round(row[c] - lo, 4) for c, (lo, hi) in zip(RATE_COLUMNS, lo_hi)]}
        fig.add_bar(name=row["model"], x=list(RATE_COLUMNS), y=[round(row[c], 4) for c in RATE_COLUMNS],
                    error_y=error)
    fig.update_layout(template=TEMPLATE, title=title, barmode="group", yaxis_range=[0, 1],
                      yaxis_title="share of replies", height=360)
    return fig


# -- lesson 5: learning from rewards -------------------------------------------------------------


def compare_runs(histories: dict[str, Sequence[dict]], key: str, title: str = "",
                 yaxis_title: str | None = None, x: str = "step",
                 yaxis_range: Sequence[float] | None = None, every: int = 1) -> go.Figure:
    """One line per named history, all showing metric ``key`` (e.g. one line per ε); ``every``
    keeps one point in so many (and the last), which keeps long runs small in a notebook."""
    fig = go.Figure()
    for name, history in histories.items():
        kept = [h for i, h in enumerate(history) if i % every == every - 1 or i == len(history) - 1]
        points = [(h[x], h[key]) for h in kept if key in h]
        fig.add_scatter(x=[p[0] for p in points], y=[round(p[1], 4) for p in points], mode="lines", name=name)
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title=x, yaxis_title=yaxis_title or key,
                      height=340, yaxis_range=yaxis_range)
    return fig


def reward_distributions(samples: dict[str, Sequence[float]], title: str = "",
                         yaxis_title: str = "reward") -> go.Figure:
    """One violin per action: the rewards it paid (Sutton & Barto's figure 2.1)."""
    fig = go.Figure()
    for name, values in samples.items():
        fig.add_violin(y=[round(v, 4) for v in values], name=name, box_visible=True,
                       meanline_visible=True, points=False)
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title="action", yaxis_title=yaxis_title,
                      showlegend=False, height=340)
    return fig


def grouped_bars(columns: dict[str, Sequence[float]], labels: Sequence[str], title: str = "",
                 yaxis_title: str = "") -> go.Figure:
    """Grouped bars: one group per label, one bar per column (e.g. true and learned scores)."""
    fig = go.Figure()
    for name, values in columns.items():
        fig.add_bar(name=name, x=list(labels), y=[round(v, 4) for v in values])
    fig.update_layout(template=TEMPLATE, title=title, barmode="group", yaxis_title=yaxis_title, height=340)
    return fig
