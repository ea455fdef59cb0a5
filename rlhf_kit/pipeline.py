"""The whole recipe without Jupyter: every stage, the scoreboard, and a report folder.

::

    rlhf-kit run                            the embedded model: pretraining, SFT, reward model, PPO
    rlhf-kit run --model gpt2 --out runs/gpt2
                                            a hub model (or a saved folder) as the base instead

``run`` takes the stages in order, each from its predecessor's folder:

    base    the embedded GPT pretrained on the toy world's internet (lesson 1); with ``--model``
            the named model itself, which is not trained further here
    sft     fine-tuned on the writers' demonstrations (lesson 3)
    reward  its body with a scalar head, trained on simulated rankings (lessons 4 and 5)
    ppo     the SFT model after PPO against the reward model (lesson 6)
    dpo     the SFT model after DPO on the reward model's own preference pairs (lesson 7)
    grpo    the SFT model after GRPO against the reward model (lesson 7)

A stage whose folder is complete is reused, so a run that was interrupted resumes at the stage it
stopped in (a stage is written into a temporary folder and renamed into place when it is whole:
an interrupted stage starts again from its predecessor). Then every model answers the held-out
tasks, each at its best sampling temperature, and ``OUT`` receives:

    report.html       the scoreboard and every stage's curves, one self-contained page
    scoreboard.json   base, SFT, reward-model best-of-n, PPO, DPO and GRPO: rates, the share of
                      replies showing each behaviour, rubric score and reward-model score,
                      each with a 95 % interval, the temperature, and each stage's build time
    stages.json       each stage's folder, whether this run built it, and how long it took
    stages/           the stage folders (copies of the embedded ones; the built ones for a hub model)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .artifacts import build_folder, is_ready, read_metadata, stage_dir
from .behaviours import BehaviourWorld
from .evaluate import CHAT, PLAIN, Report, ask, fault_rates, judge_replies, mean_interval
from .models import EMBEDDED, load_model, load_tokenizer
from .reward_eval import score
from .stages import RECIPE, build_stage, ensure_stage

@dataclass
class StageRun:
    """One stage of a pipeline run: where its model is, and whether this run had to build it."""

    stage: str
    folder: str
    built: bool
    seconds: float


def run_stages(model: str = EMBEDDED, out: str | Path | None = None, configs: dict | None = None,
               progress: bool = True) -> list[StageRun]:
    """Every stage, in order, each built only if its folder is missing.

    The stages are ``stages.RECIPE``, each built from the folders of those it needs (the table in
    ``stages.py``). ``model="embedded"`` uses the kit's cached stages (``stages.ensure_stage``,
    default configurations). Any other model (a hub id or a folder) is the base; its later stages are
    built into ``out/stages/`` with ``configs`` (``{"sft": SFTConfig(...), ...}``; missing: defaults).
    """
    configs = configs or {}
    if model != EMBEDDED and out is None:
        raise ValueError("A model other than the embedded one needs an output folder (out=...) "
                         "for its stages.")
    runs: list[StageRun] = []
    folders: dict[str, Path] = {}
    for stage in RECIPE:
        started = time.perf_counter()
        if model == EMBEDDED:
            if configs.get(stage) is not None:
                raise ValueError("The embedded stages use their default configurations; to change "
                                 "one, build from a model folder instead (model=...).")
            built = not is_ready(stage)
            folder = ensure_stage(stage)
        elif stage == "base":
            built, folder = False, model
        else:
            folder = Path(out) / "stages" / stage
            built = build_folder(folder, lambda tmp: build_stage(stage, tmp, folders, configs.get(stage),
                                                                 progress), stage)
        folders[stage] = folder
        runs.append(StageRun(stage, str(folder), built, time.perf_counter() - started))
        if progress:
            state = f"built in {runs[-1].seconds:.0f} s" if built else "already built"
            print(f"{stage}: {state} ({folder})", flush=True)
    return runs


# ----------------------------------------------------------------------------------------------
# The scoreboard: every stage on the same held-out questions
# ----------------------------------------------------------------------------------------------


TEMPERATURES = (0.1, 0.3, 0.5, 0.7, 1.0)
"""The sampling temperatures the scoreboard tries for every model: each is scored at its best."""


def at_best_temperature(model, tokenizer, world, questions, style: str, name: str,
                        temperatures=TEMPERATURES, max_new_tokens: int = 32,
                        seed: int = 0) -> tuple[Report, float, dict[float, float]]:
    """The model's replies judged at each temperature; the report at the best one (by mean rubric
    score), that temperature, and the mean rubric score at every temperature tried.

    A lower temperature makes a model pick its most likely tokens: it cannot find a reply the model
    rarely writes, but it does remove the garbling that sampling at temperature 1 adds. Scoring
    every model at its own best temperature compares what each model learned, not how it is sampled.
    """
    reports = {t: fault_rates(model, tokenizer, world, questions, style=style, name=name, temperature=t,
                              max_new_tokens=max_new_tokens, seed=seed) for t in temperatures}
    best = max(temperatures, key=lambda t: reports[t].rubric_score)
    return reports[best], best, {t: r.rubric_score for t, r in reports.items()}


def best_of_n(policy, reward_model, tokenizer, reward_tokenizer, questions, n: int,
              max_new_tokens: int, seed: int, temperature: float = 1.0) -> tuple[list[str], list[float]]:
    """For each question, n replies of the policy; keep the one the reward model scores highest."""
    asked = [q for q in questions for _ in range(n)]
    replies = ask(policy, tokenizer, asked, CHAT, temperature, max_new_tokens, seed)
    scores = score(reward_model, reward_tokenizer, [q.text for q in asked], replies).tolist()
    best, best_scores = [], []
    for i in range(0, len(asked), n):
        j = max(range(i, i + n), key=lambda k: scores[k])
        best.append(replies[j])
        best_scores.append(scores[j])
    return best, best_scores


def scoreboard(folders: dict[str, str | Path], samples_per_question: int = 4, n: int = 4,
               max_new_tokens: int = 32, seed: int = 0, temperatures=TEMPERATURES) -> list[dict]:
    """Base, SFT, best-of-n, PPO, DPO and GRPO on the world's held-out tasks, judged by its rubric.

    The held-out tasks are about people, unknown names and question templates that no
    demonstration, ranking or PPO prompt used (``behaviours.SPLITS``). Each is asked
    ``samples_per_question`` times, the base models in plain text as in lesson 1, the others
    through the chat template, at every temperature of ``temperatures``; each model's row is at
    its best temperature (``at_best_temperature``), so that no model wins by how it is sampled.
    Best-of-n is the SFT model sampled ``n`` times at its best temperature, the reward model
    picking. Every reply is also scored by the reward model. Rows hold the rates, the share of
    replies showing each behaviour, both mean scores, 95 % intervals of each, the temperature, the
    rubric score at every temperature, and the seconds the model's stage took to build (``None``
    for best-of-n, which trains nothing, and for a hub model used as it is). A stage missing from
    ``folders`` has no row; ``folders["big-base"]``, when given, adds the bigger base model of
    lesson 7 as "big base".
    """
    sft_dir = Path(folders["sft"])
    world = BehaviourWorld(seed=read_metadata(sft_dir).get("seed", 0))
    questions = [q for q in world.questions("heldout") for _ in range(samples_per_question)]
    reward_model = load_model(folders["reward"], kind="reward")
    reward_tokenizer = load_tokenizer(folders["reward"])
    rows = []

    def add(report: Report, temperature: float, by_temperature: dict | None, stage: str | None,
            scores: list[float] | None = None) -> None:
        if scores is None:
            scores = score(reward_model, reward_tokenizer, [q.text for q, _, _ in report.samples],
                           [r for _, r, _ in report.samples]).tolist()
        seconds = read_metadata(folders[stage]).get("seconds") if stage else None
        rows.append({**report.row(), "reward-model score": sum(scores) / len(scores),
                     "temperature": temperature, "build seconds": seconds,
                     "by temperature": by_temperature,
                     "intervals": {**report.intervals, "reward-model score": mean_interval(scores)}})

    for name, stage, style in (("base", "base", PLAIN), ("SFT", "sft", CHAT), ("PPO", "ppo", CHAT),
                               ("DPO", "dpo", CHAT), ("GRPO", "grpo", CHAT), ("big base", "big-base", PLAIN)):
        if stage not in folders:
            continue
        tokenizer = load_tokenizer(folders[stage])
        model = load_model(folders[stage])
        report, temperature, by_temperature = at_best_temperature(
            model, tokenizer, world, questions, style, name, temperatures, max_new_tokens, seed)
        add(report, temperature, by_temperature, stage)
        if stage == "sft":  # best-of-n: the SFT model, n tries at its best temperature, the reward model picks
            replies, scores = best_of_n(model, reward_model, tokenizer, reward_tokenizer,
                                        questions, n, max_new_tokens, seed + 1, temperature)
            add(judge_replies(world, questions, replies, f"best-of-{n}"), temperature, None, None, scores)
    order = {"base": 0, "SFT": 1, f"best-of-{n}": 2, "PPO": 3, "DPO": 4, "GRPO": 5, "big base": 6}
    return sorted(rows, key=lambda r: order[r["model"]])


# ----------------------------------------------------------------------------------------------
# The report folder
# ----------------------------------------------------------------------------------------------


def stage_figures(folders: dict[str, str | Path]) -> list:
    """Each stage's training curves, from the history in its metadata (a hub base has none)."""
    from . import plots

    figures = []
    histories = {stage: read_metadata(folder).get("history") for stage, folder in folders.items()}
    if histories.get("base"):
        figures.append(plots.curves(histories["base"], ["loss/train"], title="Pretraining: next-token loss"))
    if histories.get("sft"):
        figures.append(plots.curves(histories["sft"], ["loss/train", "loss/eval"],
                                    title="SFT: loss on the assistant's tokens"))
    if histories.get("reward"):
        figures.append(plots.reward_curves(histories["reward"]))
    if histories.get("ppo"):
        figures.append(plots.ppo_curves({"PPO": histories["ppo"]}))
    if histories.get("dpo"):
        figures.append(plots.curves(histories["dpo"], ["loss/train", "dpo/accuracy", "dpo/margin"],
                                    title="DPO: loss, and the implicit reward's accuracy and margin"))
    if histories.get("grpo"):
        figures.append(plots.curves(histories["grpo"], ["grpo/reward_model_score", "grpo/rubric_score", "grpo/kl"],
                                    title="GRPO: reward-model score, rubric score (watched) and KL"))
    return figures


def write_report(out: str | Path, runs: list[StageRun], rows: list[dict], model: str) -> Path:
    """``report.html`` (plotly inlined once, so the page works offline), scoreboard and stage times."""
    from . import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folders = {r.stage: r.folder for r in runs}
    (out / "scoreboard.json").write_text(json.dumps(rows, indent=2))
    (out / "stages.json").write_text(json.dumps([asdict(r) for r in runs], indent=2))
    metrics = [k for k in rows[0] if k not in ("model", "samples", "intervals", "by temperature")] if rows else []

    def cell(key: str, value) -> str:  # a build time in whole seconds, blank where there is none
        if value is None:
            return "<td></td>"
        return f"<td>{value:.0f} s</td>" if key == "build seconds" else f"<td>{value:.3f}</td>"

    table = "".join(f"<tr><td>{r['model']}</td>" + "".join(cell(k, r.get(k)) for k in metrics) + "</tr>"
                    for r in rows)

    def build_time(folder: str) -> str:  # how long the stage took when it was built
        seconds = read_metadata(folder).get("seconds")
        return "" if seconds is None else f"{seconds:.0f} s"

    times = "".join(f"<tr><td>{r.stage}</td><td>{'built now' if r.built else 'reused'}</td>"
                    f"<td>{r.seconds:.1f} s</td><td>{build_time(r.folder)}</td><td>{r.folder}</td></tr>"
                    for r in runs)
    figures = []
    if rows:
        figures.append(plots.scoreboard([{k: r[k] for k in ("model", *metrics[:3])} for r in rows],
                                        [r["intervals"] for r in rows]))
    figures += stage_figures(folders)
    parts = [fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
             for i, fig in enumerate(figures)]
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rlhf-kit report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "td,th{padding:2px 10px;text-align:right}</style></head><body>"
        f"<h1>rlhf-kit: the whole recipe on {model}</h1>"
        "<h2>Stages</h2><table><tr><th>stage</th><th></th><th>this run</th><th>its build</th>"
        "<th>folder</th></tr>"
        f"{times}</table>"
        "<h2>Scoreboard (held-out questions)</h2><table><tr><th>model</th>"
        + "".join(f"<th>{k}</th>" for k in metrics) + f"</tr>{table}</table>"
        + "".join(parts) + "</body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"


def run(out: str | Path = "rlhf-kit-report", model: str = EMBEDDED, configs: dict | None = None,
        samples_per_question: int = 4, progress: bool = True) -> dict:
    """Every stage (resuming where an earlier run stopped), the scoreboard, and the report folder."""
    out = Path(out)
    started = time.perf_counter()
    runs = run_stages(model, out, configs, progress)
    folders = {r.stage: r.folder for r in runs}
    if model == EMBEDDED:  # the report folder holds its models too
        for stage in RECIPE:
            shutil.copytree(stage_dir(stage), out / "stages" / stage, dirs_exist_ok=True)
    evaluated = time.perf_counter()
    rows = scoreboard(folders, samples_per_question)
    if progress:
        print(f"scoreboard: {time.perf_counter() - evaluated:.0f} s", flush=True)
    report = write_report(out, runs, rows, model)
    return {"stages": runs, "scoreboard": rows, "report": report,
            "seconds": time.perf_counter() - started}
