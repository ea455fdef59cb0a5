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
