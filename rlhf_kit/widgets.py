"""The course's widgets: rank completions best to worst, compare two of them blind, chat.

``RankingWidget`` shows a prompt and its K completions in a shuffled order (the order is stored
with the ranking, so position bias can be studied later). The learner clicks the completions
from best to worst; each gets a numbered badge. "= tie" joins the next click to the previous one
as equally good; Undo and Reset take clicks back; Skip moves on without ranking. Submit validates
the ranking and stores it durably *before* the next prompt appears, so a crash, a rerun of the
cell or a second notebook on the same store resumes where the learner left off (and says how many
are done). Given a simulated labeler (``fill_in``), a "Done" button lets it rank only the prompts the
learner skipped or left (``fill_in_the_rest``).

``ComparisonWidget`` shows two completions of one prompt as A and B, without saying which model
wrote which, and records which is better, or a tie (lesson 7 compares models with it).

``ChatWidget`` (lesson 7) talks to any stage's model in turns, over a ``chat.Chat``.

ipywidgets swallows the exceptions raised in button callbacks (they go to the log console, which
nobody reads), so every callback here catches its errors and shows them in the widget, in one
sentence. The same actions are plain methods (``pick``, ``submit``, ``submit_ranking``,
``choose``...) that return whether they worked, so tests and notebooks can drive the widgets
without clicks. All text is deterministic, so a notebook that displays a widget passes nbval.
"""

from __future__ import annotations

import html
import sqlite3
import warnings
from collections.abc import Callable, Iterable

import ipywidgets as widgets

from .feedback import (
    Comparison,
    Item,
    InvalidRanking,
    Ranking,
    RankingError,
    RankingStore,
    as_comparison_item,
    as_item,
    check_labeler_kind,
    check_text,
    shuffled_order,
)

ERROR_STYLE = "color: #b00020; font-weight: bold"
OK_STYLE = "color: #1b5e20"
TEXT_STYLE = "white-space: pre-wrap; line-height: 1.4"


def _html(text: str, style: str = TEXT_STYLE) -> str:
    return f'<div style="{style}">{html.escape(text)}</div>'


class _LabelingWidget(widgets.VBox):
    """What both widgets share: a progress line, the prompt, a message line, safe callbacks."""

    table = "rankings"  # where this widget's records go (for the progress count)

    def __init__(self, store: RankingStore, items: list, labeler: str, labeler_kind: str):
        super().__init__()
        if not isinstance(store, RankingStore):
            raise TypeError(f"store must be a RankingStore, not {type(store).__name__}.")
        self.store = store
        self.labeler = check_text("labeler", labeler)
        self.labeler_kind = check_labeler_kind(labeler_kind)
        self.items = list(dict.fromkeys(items))  # a repeated item would be shown (and counted) twice
        self.message = ""  # the text of the message line (read it in tests)
        self._bar = widgets.IntProgress(min=0, max=len(self.items), layout={"width": "240px"})
        self._progress = widgets.HTML()
        self._prompt = widgets.HTML()
        self._message = widgets.HTML()
        self._progress.add_class("rlhf-progress")
        self._prompt.add_class("rlhf-prompt")
        self._message.add_class("rlhf-message")

    def _say(self, text: str, style: str = OK_STYLE) -> None:
        self.message = text
        self._message.value = _html(text, style) if text else ""

    def skip(self) -> bool:
        """Move on without labelling this prompt (remembered in the store, so it stays skipped)."""
        if self.current is None:
            return False
        self.store.skip(self.current, self.labeler)
        self._next("Skipped.")
        return True

    def _store(self, make: Callable[[], object], add: Callable[[object], bool], done: str) -> bool:
        """Make a record and store it with ``add``, then show the next item. A record that cannot
        be made or stored shows its error in the widget and stores nothing. Returns True if stored
        (or already stored, from another notebook)."""
        try:
            added = add(make())
        except Exception as error:  # noqa: BLE001 - shown in the widget, nothing stored
            self._error(_explain(error))
            return False
        self._next("Saved." if added else f"Already {done} (in another notebook?); moving on.")
        return True

    def _error(self, text: str) -> None:
        self._say(text, ERROR_STYLE)

    def _safely(self, action: Callable) -> Callable:
        """A button callback that shows any error in the widget instead of losing it."""

        def callback(*_):
            try:
                action()
            except Exception as error:  # noqa: BLE001 - shown to the learner, never swallowed
                self._error(_explain(error))

        return callback

    def _show_progress(self) -> int:
        """Update the progress line; returns how many items are still to do."""
        done, skipped, total = self.store.progress(self.items, self.labeler, self.table)
        verb = "Ranked" if self.table == "rankings" else "Compared"
        self._bar.value = done + skipped
        self._progress.value = _html(f"{verb} {done} of {total} prompts · {skipped} skipped",
                                     "font-weight: bold")
        return total - done - skipped

    def _show_prompt(self, prompt: str) -> None:
        self._prompt.value = ('<div style="font-weight: bold">Prompt</div>'
                              + _html(prompt, TEXT_STYLE + "; background: #f3f3f3; padding: 6px"))


def _explain(error: Exception) -> str:
    """One sentence for the learner: what went wrong, and what to do."""
    if isinstance(error, RankingError):
        return error.sentence
    if isinstance(error, (sqlite3.Error, OSError)):
        return f"Could not save ({error}); nothing was stored, so submit again."
    return f"Something went wrong ({type(error).__name__}: {error}); nothing was stored."


class RankingWidget(_LabelingWidget):
    """Rank the completions of each item best to worst; every submission is stored at once.

    ``items`` are ``Item``s or tuples ``(prompt, completions, model)``; they are validated here, so a
    bad item raises in the cell that builds the widget, where the learner sees it.

    ``fill_in`` (a ``feedback.SimulatedLabeler``) adds a "Done" button: when the learner says they are
    done, it ranks only the prompts they skipped or left, once (``fill_in_the_rest``, which a notebook
    can also call in the next cell). ``rankings()`` is then one ranking per prompt, the learner's where
    they ranked it. A widget built on a store that already holds some of the learner's rankings (a
    rerun of its cell) resumes at the first prompt left, and says how many are done.
    """

    def __init__(self, store: RankingStore, items: Iterable, labeler: str = "you",
                 labeler_kind: str = "person", fill_in=None):
        super().__init__(store, [as_item(i) for i in items], labeler, labeler_kind)
        if fill_in is not None and not callable(getattr(fill_in, "label", None)):
            raise TypeError(f"fill_in must be a feedback.SimulatedLabeler, not {type(fill_in).__name__}.")
        self.fill_in = fill_in  # ranks what the learner skipped or left, when they say they are done
        self.current: Item | None = None  # the item on screen; None when all are done
        self.order: tuple[int, ...] = ()  # completion indices, top of the screen first
        self.picks: list[int] = []  # completion indices clicked so far, best first
        self.ties: list[tuple[int, int]] = []  # (previous pick, pick) marked equally good
        self._rows = widgets.VBox()
        self._tie = widgets.ToggleButton(description="= tie",
                                         tooltip="The next click is as good as the previous one")
        self._undo = widgets.Button(description="Undo", tooltip="Take back the last click")
        self._reset = widgets.Button(description="Reset", tooltip="Take back every click")
        self._skip = widgets.Button(description="Skip prompt", tooltip="Move on without ranking")
        self._submit = widgets.Button(description="Submit ranking", button_style="primary")
        self._done = widgets.Button(description="Done: fill in the rest", button_style="warning",
                                    tooltip="The simulated labeler ranks every prompt you skipped or left")
        for name in ("tie", "undo", "reset", "skip", "submit", "done"):
            button = getattr(self, f"_{name}")
            button.add_class(f"rlhf-{name}")
            button.layout = widgets.Layout(width="auto", min_width="max-content")  # never cut a label
        self._undo.on_click(self._safely(self.undo))
        self._reset.on_click(self._safely(self.reset))
        self._skip.on_click(self._safely(self.skip))
        self._submit.on_click(self._safely(self.submit))
        self._done.on_click(self._safely(self.fill_in_the_rest))
        self._tie.observe(self._safely(self._check_tie), names="value")
        help_text = ("Click the completions from best to worst. Press '= tie' before a click to "
                     "mark it as good as the previous one, then submit.")
        if fill_in is not None:
            help_text += (" Rank as many prompts as you like, then press Done: the simulated labeler "
                          "ranks the ones you skipped or left.")
        help_line = widgets.HTML(_html(help_text, "color: #555"))
        help_line.add_class("rlhf-help")
        buttons = [self._tie, self._undo, self._reset, self._skip, self._submit]
        buttons += [self._done] if fill_in is not None else []
        self.children = (widgets.HBox([self._bar, self._progress]), self._prompt, help_line, self._rows,
                         widgets.HBox(buttons, layout={"flex_flow": "row wrap"}), self._message)
        self.add_class("rlhf-ranking")
        done, skipped, total = self.store.progress(self.items, self.labeler)
        self._next(f"Welcome back: {done} of {total} ranked, {skipped} skipped; carry on where you "
                   "stopped." if done + skipped and done + skipped < total else "")

    def __repr__(self) -> str:  # the text/plain output nbval compares: no ids, no paths
        return f"RankingWidget(prompts={len(self.items)}, labeler={self.labeler!r})"

    # -- when the learner is done ---------------------------------------------------------------

    def fill_in_the_rest(self) -> list[Ranking]:
        """The learner is done: the simulated labeler ranks every prompt they skipped or left
        (each once, however often this is called), and this returns ``rankings()``."""
        if self.fill_in is None:
            raise ValueError("This widget has no simulated labeler; build it with "
                             "RankingWidget(..., fill_in=feedback.SimulatedLabeler(world)).")
        left = self.store.pending(self.items, self.labeler, include_skipped=True)
        added = self.fill_in.label(self.store, left)
        self._show_progress()
        ranked = len(self.items) - len(left)
        self._say(f"Done: you ranked {ranked} of {len(self.items)} prompts; {self.fill_in.name} ranked "
                  f"the {len(left)} you left ({added} new). Run the next cell. Rank more here, then run "
                  "the next cell again: your rankings replace its own." if left else
                  f"Done: you ranked all {len(self.items)} prompts. Run the next cell.")
        return self.rankings()

    def rankings(self) -> list[Ranking]:
        """One stored ranking per prompt, in the widget's order: the learner's where they ranked it,
        else the simulated labeler's (``fill_in``); a prompt ranked by neither is left out."""
        names = [self.labeler] + ([self.fill_in.name] if self.fill_in is not None else [])
        stored = {r.key: r for r in self.store.rankings()}
        found = [next((stored[i.key(n)] for n in names if i.key(n) in stored), None) for i in self.items]
        return [r for r in found if r is not None]

    # -- what the learner does (each is also a plain method) ------------------------------------

    def pick(self, index: int, tie: bool | None = None) -> bool:
        """Rank completion ``index`` next (tied with the previous pick if ``tie``, or if the
        "= tie" button is down); returns False, with a message, when that is not possible."""
        tie = self._tie.value if tie is None else tie
        if self.current is None:
            self._error("Every prompt is done; there is nothing left to rank.")
            return False
        if index in self.picks:
            self._error(f"That completion is already ranked #{self._badges()[index]}; "
                        "use Undo or Reset to change it.")
            return False
        if tie and not self.picks:
            self._error("Pick the best completion first; a tie joins a click to the previous one.")
            return False
        if tie:
            self.ties.append((self.picks[-1], index))
        self.picks.append(index)
        self._tie.value = False  # a tie applies to one click only
        left = len(self.order) - len(self.picks)
        self._say(f"{left} left to rank." if left else "All ranked: submit, or undo to change.")
        self._show_badges()
        return True

    def undo(self) -> None:
        """Take back the last click (and its tie)."""
        if self.picks:
            last = self.picks.pop()
            self.ties = [t for t in self.ties if last not in t]
        self._say("")
        self._show_badges()

    def reset(self) -> None:
        """Take back every click on this prompt."""
        self.picks, self.ties = [], []
        self._tie.value = False
        self._say("")
        self._show_badges()

    def submit(self) -> bool:
        """Validate and store the clicked ranking; returns True when it was stored."""
        if self.current is not None and len(self.picks) < len(self.order):
            left = len(self.order) - len(self.picks)
            # The same typed error as any incomplete ranking, with a sentence about clicks.
            self._error(InvalidRanking("ranking", f"{left} of {len(self.order)} completions are not "
                                       "ranked yet; click every completion from best to worst, "
                                       "then submit.").sentence)
            return False
        return self.submit_ranking(self.picks, self.ties)

    def submit_ranking(self, ranking, ties=()) -> bool:
        """Validate and store ``ranking`` (completion indices, best first) for the current item.

        An invalid ranking shows its error in the widget and stores nothing; a valid one is on
        disk before the next prompt is shown. Returns True when the ranking was stored.
        """
        item = self.current
        if item is None:
            self._error("Every prompt is done; there is nothing left to submit.")
            return False
        return self._store(lambda: Ranking(item.prompt, item.completions, ranking, ties,
                                           shown_order=self.order, model=item.model,
                                           labeler=self.labeler, labeler_kind=self.labeler_kind),
                           self.store.add, "ranked")

    # -- drawing --------------------------------------------------------------------------------

    def _check_tie(self) -> None:
        if self._tie.value and not self.picks:
            self._tie.value = False
            self._error("Pick the best completion first; a tie joins a click to the previous one.")

    def _next(self, message: str = "") -> None:
        """Show the first item not yet ranked or skipped, as the store says (another notebook
        may have ranked some meanwhile)."""
        left = self._show_progress()
        pending = self.store.pending(self.items, self.labeler) if left else []
        self.current = pending[0] if pending else None
        self.picks, self.ties = [], []
        if self.current is None:
            self.order = ()
            self._prompt.value = _html(f"All {len(self.items)} prompts are done. Thank you!"
                                       + (" Press Done." if self.fill_in is not None else ""),
                                       "font-weight: bold")
            self._rows.children = ()
            for button in (self._tie, self._undo, self._reset, self._skip, self._submit):
                button.disabled = True
        else:
            self.order = shuffled_order(self.current.key(self.labeler), len(self.current.completions))
            self._show_prompt(self.current.prompt)
            self._rows.children = [self._row(p, index) for p, index in enumerate(self.order)]
            self._show_badges()
        self._say(message)

    def _show_progress(self) -> int:
        """The shared progress line, plus how many prompts the simulated labeler filled in."""
        left = super()._show_progress()
        if self.fill_in is not None:
            stored = {r.key for r in self.store.rankings()}
            filled = sum(i.key(self.fill_in.name) in stored and i.key(self.labeler) not in stored
                         for i in self.items)
            if filled:
                self._progress.value = self._progress.value.replace(
                    "</div>", html.escape(f" · {filled} filled in by {self.fill_in.name}") + "</div>")
        return left

    def _row(self, position: int, index: int) -> widgets.HBox:
        badge = widgets.Button(description="rank", layout={"width": "64px", "min_width": "64px"},
                               tooltip="Click: this is the next best")
        badge.add_class("rlhf-pick")
        badge.add_class(f"rlhf-pick-{position}")  # for browser tests: position on screen
        badge.on_click(self._safely(lambda: self.pick(index)))
        text = widgets.HTML(_html(self.current.completions[index]), layout={"width": "100%"})
        return widgets.HBox([badge, text], layout={"align_items": "center"})

    def _badges(self) -> dict[int, str]:
        """Completion index -> badge text: its rank, "=" when tied with the one above."""
        badges, rank = {}, 0
        tied = {b for _, b in self.ties}
        for index in self.picks:
            rank += index not in tied
            badges[index] = f"{rank}=" if index in tied else str(rank)
        return badges

    def _show_badges(self) -> None:
        badges = self._badges()
        for position, row in enumerate(self._rows.children):
            index, badge = self.order[position], row.children[0]
            badge.description = f"#{badges[index]}" if index in badges else "rank"
            badge.button_style = "success" if index in badges else ""
        busy = self.current is not None
        self._undo.disabled = self._reset.disabled = not (busy and self.picks)
        self._tie.disabled = not (busy and self.picks and len(self.picks) < len(self.order))


class ComparisonWidget(_LabelingWidget):
    """Blind side-by-side comparison: which of two completions is better, or a tie.

    ``items`` are ``ComparisonItem``s or tuples ``(prompt, (completion_0, completion_1),
    (model_0, model_1))``. Which completion is shown as A is shuffled per item and stored, and the
    model names are never shown.

    The widget counts what it shows: "prompts" when every item has a prompt of its own (lesson 7),
    "pairs" when items share a prompt (lesson 2 shows every pair of six replies to one question).
    """

    table = "comparisons"

    def __init__(self, store: RankingStore, items: Iterable, labeler: str = "you",
                 labeler_kind: str = "person"):
        super().__init__(store, [as_comparison_item(i) for i in items], labeler, labeler_kind)
        prompts = {item.prompt for item in self.items}
        self.unit = "pairs" if len(prompts) < len(self.items) else "prompts"  # what one item is, to the learner
        self.current = None
        self.order: tuple[int, ...] = ()  # self.order[0] is shown as A, self.order[1] as B
        self._texts = [widgets.HTML(layout={"width": "50%", "margin": "0 6px"}) for _ in range(2)]
        self._buttons = {"A": widgets.Button(description="A is better"),
                         "tie": widgets.Button(description="Tie"),
                         "B": widgets.Button(description="B is better")}
        self._skip = widgets.Button(description="Skip pair" if self.unit == "pairs" else "Skip prompt")
        for choice, button in self._buttons.items():
            button.add_class(f"rlhf-choose-{choice.lower()}")
            button.on_click(self._safely(lambda choice=choice: self.choose(choice)))
        self._skip.add_class("rlhf-skip")
        self._skip.on_click(self._safely(self.skip))
        self.children = (widgets.HBox([self._bar, self._progress]), self._prompt,
                         widgets.HBox(self._texts),
                         widgets.HBox([*self._buttons.values(), self._skip]), self._message)
        self.add_class("rlhf-comparison")
        self._next()

    def __repr__(self) -> str:
        return f"ComparisonWidget({self.unit}={len(self.items)}, labeler={self.labeler!r})"

    def _show_progress(self) -> int:
        """Update the progress line, counting pairs or prompts; returns how many are still to do."""
        done, skipped, total = self.store.progress(self.items, self.labeler, self.table)
        self._bar.value = done + skipped
        self._progress.value = _html(f"Compared {done} of {total} {self.unit} · {skipped} skipped",
                                     "font-weight: bold")
        return total - done - skipped

    def choose(self, choice: str) -> bool:
        """Record "A", "B" or "tie" for the current item; returns True when stored."""
        if self.current is None:
            self._error(f"Every one of the {self.unit} is done; there is nothing left to compare.")
            return False
        if choice not in ("A", "B", "tie"):
            self._error(f"{choice!r} is not a choice; choose 'A', 'B' or 'tie'.")
            return False
        winner = None if choice == "tie" else self.order["AB".index(choice)]
        item = self.current
        return self._store(lambda: Comparison(item.prompt, item.completions, item.models, winner,
                                              shown_order=self.order, labeler=self.labeler,
                                              labeler_kind=self.labeler_kind),
                           self.store.add_comparison, "compared")

    def _next(self, message: str = "") -> None:
        left = self._show_progress()
        pending = self.store.pending_comparisons(self.items, self.labeler) if left else []
        self.current = pending[0] if pending else None
        if self.current is None:
            self.order = ()
            self._prompt.value = _html(f"All {len(self.items)} {self.unit} are done. Thank you!",
                                       "font-weight: bold")
            for text in self._texts:
                text.value = ""
            for button in (*self._buttons.values(), self._skip):
                button.disabled = True
        else:
            self.order = shuffled_order(self.current.key(self.labeler), 2)
            self._show_prompt(self.current.prompt)
            for side, (text, index) in enumerate(zip(self._texts, self.order)):
                text.value = ('<div style="font-weight: bold">' + "AB"[side] + "</div>"
                              + _html(self.current.completions[index]))
        self._say(message)


class ChatWidget(widgets.VBox):
    """Talk to any stage's model in turns (lesson 7), with the generation settings at hand.

    The dropdown picks who writes the next reply; switching between turns is allowed, and each
    reply is labelled with its model. The sliders set temperature, top-p and the reply's length.
    Send (or Enter in the text box) adds your message and the reply; Clear starts over. When the
    oldest turns no longer fit in the model's context, the message line says how many it no longer
    reads. ``send(text)`` and ``clear()`` do the same without clicks; ``chat.history`` is the
    conversation.
    """

    def __init__(self, chat, model: str | None = None):
        from .chat import Chat  # the conversation itself, kept free of ipywidgets

        super().__init__()
        if not isinstance(chat, Chat):
            raise TypeError(f"chat must be a rlhf_kit.chat.Chat, not {type(chat).__name__}.")
        self.chat = chat
        self.message = ""
        names = list(chat.models)
        LABEL = {"description_width": "initial"}  # a label as wide as its text: the default cuts "Temperature"
        self._picker = widgets.Dropdown(options=names, value=model or names[-1], description="Model", style=LABEL)
        self._temperature = widgets.FloatSlider(value=chat.temperature, min=0.0, max=1.5, step=0.1,
                                                description="Temperature", readout_format=".1f",
                                                style=LABEL)
        self._top_p = widgets.FloatSlider(value=chat.top_p, min=0.1, max=1.0, step=0.05,
                                          description="Top-p", readout_format=".2f", style=LABEL)
        self._length = widgets.IntSlider(value=chat.max_new_tokens, min=4, max=64, step=4,
                                         description="Reply tokens", style=LABEL)
        self._history = widgets.HTML(layout={"width": "100%"})
        # continuous_update: the typed text reaches the kernel at each keystroke, so that Enter's
        # "submit" (sent before the text box's change event) finds the text already there.
        self._input = widgets.Text(placeholder="Ask something, e.g. Where does Pavel live?",
                                   layout={"width": "60%"}, continuous_update=True)
        self._send_button = widgets.Button(description="Send", button_style="primary")
        self._clear_button = widgets.Button(description="Clear")
        self._message = widgets.HTML()
        for name, part in (("model", self._picker), ("history", self._history), ("input", self._input),
                           ("send", self._send_button), ("clear", self._clear_button), ("message", self._message)):
            part.add_class(f"rlhf-chat-{name}")
        self._send_button.on_click(lambda _: self.send(self._input.value))
        with warnings.catch_warnings():  # Enter sends; ipywidgets 8 deprecates on_submit but has no
            warnings.simplefilter("ignore", DeprecationWarning)  # other way that ignores losing focus
            self._input.on_submit(lambda _: self.send(self._input.value))
        self._clear_button.on_click(lambda _: self.clear())
        self.children = (widgets.HBox([self._picker, self._length]),
                         widgets.HBox([self._temperature, self._top_p]), self._history,
                         widgets.HBox([self._input, self._send_button, self._clear_button]), self._message)
        self.add_class("rlhf-chat")
        self._show_history()

    def __repr__(self) -> str:
        return f"ChatWidget(models={list(self.chat.models)}, turns={len(self.chat.history)})"

    def _say(self, text: str, style: str = OK_STYLE) -> None:
        self.message = text
        self._message.value = _html(text, style) if text else ""

    def send(self, text: str, model: str | None = None) -> bool:
        """Your message and the chosen model's reply; returns True when both were added.

        On any error the history and the typed text stay as they were, and the message line says
        what to do.
        """
        if model is not None:
            self._picker.value = model
        self.chat.temperature = self._temperature.value
        self.chat.top_p = self._top_p.value
        self.chat.max_new_tokens = self._length.value
        try:
            reply = self.chat.ask(text, self._picker.value)
        except Exception as error:  # noqa: BLE001 - shown to the learner, never swallowed
            self._say(str(error) if isinstance(error, (ValueError, KeyError)) else
                      f"Something went wrong ({type(error).__name__}: {error}); nothing was added.",
                      ERROR_STYLE)
            return False
        self._input.value = ""
        self._show_history()
        note = ""
        if reply.left_out:
            context = self.chat.model(reply.model).context
            note = (f"{reply.model} reads at most {context} tokens, so it no longer sees the first "
                    f"{reply.left_out} messages.")
        self._say(note)
        return True

    def clear(self) -> None:
        """Forget the conversation."""
        self.chat.clear()
        self._show_history()
        self._say("")

    def _show_history(self) -> None:
        if not self.chat.history:
            self._history.value = _html("No messages yet.", "color: #666")
            return
        bubbles = []
        for turn in self.chat.history:
            if turn["role"] == "user":
                who, style = "You", "background: #e3f2fd; margin: 4px 20% 4px 0"
            else:
                who, style = turn.get("model", "assistant"), "background: #f1f8e9; margin: 4px 0 4px 20%"
            bubbles.append(f'<div style="{style}; padding: 6px; border-radius: 6px">'
                           f'<div style="font-weight: bold">{html.escape(who)}</div>'
                           + _html(turn["content"] or "(an empty reply)") + "</div>")
        self._history.value = "".join(bubbles)
