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


# -- lesson 2: learning from rewards -------------------------------------------------------------


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


# -- lesson 5: the reward model ------------------------------------------------------------------


def reward_curves(history: Sequence[dict], title: str = "Training the reward model") -> go.Figure:
    """Three panels from a reward model's training history: the loss, the pairwise accuracy and
    the margin r_chosen − r_rejected, on the training batches (a line) and held out (markers).

    The loss panel marks ln 2 (a model that cannot tell the sides apart), the accuracy panel 0.5.
    """
    from plotly.subplots import make_subplots

    panels = (("loss", ("loss/train", "loss/eval"), 0.6931),
              ("pairwise accuracy", ("reward/accuracy", "reward/eval_accuracy"), 0.5),
              ("margin r(chosen) − r(rejected)", ("reward/margin",), 0.0))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[name for name, _, _ in panels],
                        horizontal_spacing=0.08)
    shown = set()
    for col, (_, keys, guide) in enumerate(panels, start=1):
        for key in keys:
            points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
            held_out = "eval" in key
            name = "held-out pairs" if held_out else "training batches"
            fig.add_scatter(x=[p[0] for p in points], y=[round(p[1], 4) for p in points], name=name,
                            mode="lines+markers" if held_out else "lines", legendgroup=name,
                            showlegend=name not in shown, row=1, col=col,
                            line_color="#d62728" if held_out else "#1f77b4")
            shown.add(name)
        fig.add_hline(y=guide, line_dash="dot", line_color="grey", row=1, col=col)
    fig.update_xaxes(title_text="optimiser step")
    fig.update_layout(template=TEMPLATE, title=title, height=360)
    return fig


def score_histograms(chosen_scores: Sequence[float], rejected_scores: Sequence[float],
                     title: str = "Reward-model scores of held-out pairs", bins: int = 40) -> go.Figure:
    """Overlaid histograms of the scores of the chosen and of the rejected sides of some pairs."""
    fig = go.Figure()
    values = [round(v, 4) for v in (*chosen_scores, *rejected_scores)]
    low, high = min(values), max(values)
    size = round((high - low) / bins, 4) or 1.0
    for name, scores, color in (("chosen", chosen_scores, "#2ca02c"), ("rejected", rejected_scores, "#d62728")):
        fig.add_histogram(x=[round(v, 4) for v in scores], name=name, opacity=0.55, marker_color=color,
                          xbins={"start": low, "end": high + size, "size": size})
    fig.update_layout(template=TEMPLATE, title=title, barmode="overlay", xaxis_title="score r(x, y)",
                      yaxis_title="completions", height=340)
    return fig


def calibration(table: Sequence[dict], title: str = "Calibration on held-out pairs") -> go.Figure:
    """Predicted probability against how often the prediction came true, one point per bin.

    ``table`` is ``reward.calibration_bins``' list of bins; empty bins are left out. A calibrated
    model's points lie on the diagonal; each point is labelled with its number of pairs.
    """
    rows = [row for row in table if row["count"]]
    fig = go.Figure()
    fig.add_scatter(x=[0.5, 1.0], y=[0.5, 1.0], mode="lines", name="calibrated",
                    line={"dash": "dot", "color": "grey"})
    fig.add_scatter(x=[round(r["predicted"], 4) for r in rows], y=[round(r["observed"], 4) for r in rows],
                    mode="lines+markers+text", name="reward model", text=[f"{r['count']}" for r in rows],
                    textposition="top left", marker={"size": 9})
    fig.update_layout(template=TEMPLATE, title=title, height=360, width=480,
                      xaxis_title="predicted: σ(|r_a − r_b|)", yaxis_title="observed: share right",
                      xaxis_range=[0.48, 1.02], yaxis_range=[0.3, 1.02])
    return fig


# -- lesson 6: PPO --------------------------------------------------------------------------------

PPO_PANELS = (("ppo/score", "reward-model score"), ("ppo/kl", "KL to the SFT model (nats)"),
              ("ppo/rubric_score", "rubric score (never trained on)"))
"""The three curves of a PPO run: what it optimises, what it pays for it, and what it should mean."""

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def ppo_curves(histories: dict[str, Sequence[dict]], panels: Sequence[tuple[str, str]] = PPO_PANELS,
               title: str = "PPO, batch by batch", x: str = "batch") -> go.Figure:
    """Side-by-side panels, one per metric (default: reward-model score, KL, rubric score), one
    line per named run in the same colour in every panel. A run may be empty (a live figure
    before its first batch)."""
    from plotly.subplots import make_subplots

    # Four panels leave each title about a quarter of the width: long titles are broken onto two
    # lines and set a little smaller, so that neighbouring titles never run into each other.
    titles = [_two_lines(label) if len(panels) > 3 else label for _, label in panels]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles,
                        horizontal_spacing=0.07 if len(panels) <= 3 else 0.06)
    fig.update_annotations(font_size=13)
    for i, (name, history) in enumerate(histories.items()):
        colour = COLOURS[i % len(COLOURS)]
        for col, (key, _) in enumerate(panels, 1):
            points = [(h[x], h[key]) for h in history if key in h]
            fig.add_scatter(x=[p[0] for p in points], y=[round(p[1], 4) for p in points], mode="lines",
                            name=name, legendgroup=name, showlegend=col == 1, line={"color": colour},
                            row=1, col=col)
            fig.update_xaxes(title_text=x, row=1, col=col)
    fig.update_layout(template=TEMPLATE, title=title, height=360 if len(panels) > 3 else 340,
                      legend={"orientation": "h", "y": -0.25},
                      margin={"t": 110} if len(panels) > 3 else None)
    return fig


def _two_lines(label: str, width: int = 18) -> str:
    """A subplot title longer than ``width`` characters, broken at the space nearest its middle."""
    spaces = [i for i, c in enumerate(label) if c == " "]
    if len(label) <= width or not spaces:
        return label
    cut = min(spaces, key=lambda i: abs(i - len(label) / 2))
    return f"{label[:cut]}<br>{label[cut + 1:]}"


def mimebundle(fig: go.Figure) -> dict:
    """The figure as the JSON mimetype JupyterLab renders (what ``use_notebook_renderer`` stores)."""
    import plotly.io as pio

    return pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())


def show_live(fig: go.Figure):
    """Display a figure that can be redrawn in place as a run goes on; returns its display handle.

    A plotly figure displays itself without a display id, so each redraw would add a new figure
    below the last; displayed as a raw mimebundle it keeps one place, and ``redraw`` replaces it.
    """
    from IPython.display import display

    return display(mimebundle(fig), raw=True, display_id=True)


def redraw(handle, fig: go.Figure) -> None:
    """Replace the figure shown by ``show_live`` with ``fig``."""
    handle.update(mimebundle(fig), raw=True)


# -- lesson 7: every stage side by side ----------------------------------------------------------

COURSE_PANELS = (("answer rate", "answer rate ↑"), ("false-statement rate", "false-statement rate ↓"),
                 ("rudeness rate", "rudeness rate ↓"), ("rubric score", "rubric score ↑"),
                 ("reward-model score", "reward-model score"))
"""The scoreboard's five measures; arrows say which way is better (the reward model's is a proxy)."""


def course_scoreboard(rows: Sequence[dict], panels: Sequence[tuple[str, str]] = COURSE_PANELS,
                      title: str = "Every stage on the held-out questions") -> go.Figure:
    """One panel per measure, one bar per model in the same colour everywhere, with 95 % intervals.

    ``rows`` are scoreboard rows (``pipeline.scoreboard``): ``row["intervals"][measure]`` holds
    (low, high) where known.
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[label for _, label in panels],
                        horizontal_spacing=0.04)
    for i, row in enumerate(rows):
        colour = COLOURS[i % len(COLOURS)] if i < len(COLOURS) else None
        for col, (key, _) in enumerate(panels, 1):
            value = row[key]
            low, high = row.get("intervals", {}).get(key, (value, value))
            fig.add_bar(x=[row["model"]], y=[round(value, 4)], name=row["model"], legendgroup=row["model"],
                        showlegend=col == 1, marker_color=colour, row=1, col=col,
                        error_y={"type": "data", "symmetric": False, "array": [round(high - value, 4)],
                                 "arrayminus": [round(value - low, 4)]})
            fig.update_xaxes(showticklabels=False, row=1, col=col)
    for col in (1, 2, 3):
        fig.update_yaxes(range=[0, 1], row=1, col=col)
    fig.update_layout(template=TEMPLATE, title=title, height=380, bargap=0.15,
                      legend={"orientation": "h", "y": -0.1})
    return fig


def win_rates(rows: Sequence[dict], title: str = "Win rate", threshold: float = 0.5) -> go.Figure:
    """Horizontal bars of win rates (``compare.WinRate.row()``) with their 95 % intervals, and a
    line at ``threshold`` (0.5: no better, no worse)."""
    labels = [f"{r['judge']} ({r['pairs']} pairs)" for r in rows]
    fig = go.Figure(go.Bar(
        y=labels, x=[round(r["win rate"], 4) for r in rows], orientation="h",
        error_x={"type": "data", "symmetric": False,
                 "array": [round(r["high"] - r["win rate"], 4) for r in rows],
                 "arrayminus": [round(r["win rate"] - r["low"], 4) for r in rows]},
        marker_color=[COLOURS[i % len(COLOURS)] for i in range(len(rows))]))
    fig.add_vline(x=threshold, line_dash="dash", line_color="#555")
    fig.update_layout(template=TEMPLATE, title=title, xaxis_range=[0, 1], xaxis_title="win rate (a tie counts half)",
                      yaxis_autorange="reversed", height=80 + 45 * len(rows), margin={"l": 10})
    return fig
