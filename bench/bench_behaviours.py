"""Does RLHF learn what the demonstrations could not, in the behaviour world? Measured per seed.

For each training seed, from the shipped base model: SFT on the writers' demonstrations
(``demonstrations.build_demonstrations``), rankings of the SFT model's completions by the simulated
labeler (noise calibrated to 73 % agreement on those completions), a reward model, and PPO on
every weight with a KL penalty. Then, on the held-out tasks (people, unknown names and templates
that no training task uses), each judged by the noise-free rubric:

* the reward model's pairwise accuracy on pairs of SFT replies, by kind of pair (differing only in
  behaviour points, only in truth points, or in both; ``reward_eval.accuracy_by_pair_kind``), on
  every pair and on pairs of two well-formed replies (``behaviours.well_formed``);
* the rubric score of SFT at each temperature, of best-of-4 by the reward model, and of PPO, with
  the 95 % interval of PPO's paired difference to each baseline (over held-out tasks);
* PPO against SFT (temperature 1) pair by pair: wins, ties, losses, the win rate of the decided
  pairs and the preference rate with ties counted half; PPO's KL to SFT per reply;
* the share of replies showing each behaviour.

    python bench/bench_behaviours.py --seeds 0 1 2 --out /tmp/behaviours.json

Prints one table per figure: each seed, then the mean and spread (min to max) over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rlhf_kit.alternatives import (DPOConfig, GRPOConfig, reward_model_reward, rubric_reward, train_dpo,
                                   train_grpo)
from rlhf_kit.artifacts import embedded_folder
from rlhf_kit.behaviours import BehaviourWorld, behaviour_rates, sample_tasks, well_formed
from rlhf_kit.demonstrations import build_demonstrations
from rlhf_kit.evaluate import first_line, mean_interval, reply_kl, win_share
from rlhf_kit.feedback import Item, SimulatedLabeler, calibrate_noise
from rlhf_kit.models import load_model, load_tokenizer
from rlhf_kit.pairs import split_by_prompt
from rlhf_kit.ppo import PPOConfig, rubric_watch, train_ppo
from rlhf_kit.reward import RewardConfig, rank_sets, sample_completions, train
from rlhf_kit.reward_eval import accuracy_by_pair_kind, score
from rlhf_kit.runtime import seed_everything
from rlhf_kit.sampling import generate
from rlhf_kit.sft import SFTConfig, pretraining_text, train_sft
from rlhf_kit.tokenizer import chat_prompt

TEMPERATURES = (0.1, 0.3, 0.5, 0.7, 1.0)


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95 % normal interval (``evaluate.mean_interval``)."""
    return (statistics.fmean(values), *mean_interval(values))


def replies(model, tokenizer, tasks, temperature: float, seed: int, n: int = 1, max_new_tokens: int = 32):
    asked = [t for t in tasks for _ in range(n)]
    out = generate(model, tokenizer, [chat_prompt(tokenizer, t.text) for t in asked],
                   max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return asked, [first_line(c) for c in out.completions], out


def per_task(world, asked, texts, n: int) -> list[float]:
    """The mean rubric score of each task's ``n`` replies (tasks in order)."""
    scores = [world.judge(t, r).score for t, r in zip(asked, texts)]
    return [statistics.fmean(scores[i : i + n]) for i in range(0, len(scores), n)]


def evaluate_baselines(world, sft, rm, tokenizer, heldout, seed: int, n: int) -> dict:
    """SFT at each temperature and best-of-4 by the reward model, on the held-out tasks."""
    by_temp = {}
    for temp in TEMPERATURES:
        a, t, _ = replies(sft, tokenizer, heldout, temp, seed + 11, n)
        by_temp[temp] = per_task(world, a, t, n)
    best_temp = max(TEMPERATURES, key=lambda k: statistics.fmean(by_temp[k]))
    best_of = {}
    for temp in sorted({1.0, best_temp}):  # best-of-4 at temperature 1, and at SFT's best one
        a4, t4, _ = replies(sft, tokenizer, heldout, temp, seed + 13, 4 * n)
        s4 = score(rm, tokenizer, [t.text for t in a4], t4).tolist()
        picked = [max(range(i, i + 4), key=lambda k: s4[k]) for i in range(0, len(a4), 4)]
        best_of[temp] = ([a4[j] for j in picked], [t4[j] for j in picked])
    best_asked, best_texts = best_of[1.0]
    best_of_4_low = per_task(world, *best_of[best_temp], n)
    sa, st, _ = replies(sft, tokenizer, heldout, 1.0, seed + 17, n)
    ab, tb, _ = replies(sft, tokenizer, heldout, best_temp, seed + 11, n)
    out = {"sft_by_temperature": {str(k): statistics.fmean(v) for k, v in by_temp.items()},
           "best_temperature": best_temp,
           "rubric": {"SFT T=1": statistics.fmean(by_temp[1.0]),
                      "SFT best T": statistics.fmean(by_temp[best_temp]),
                      "best-of-4": statistics.fmean(per_task(world, best_asked, best_texts, n)),
                      "best-of-4 at best T": statistics.fmean(best_of_4_low)},
           "behaviours": {"SFT T=1": behaviour_rates(world, sa, st),
                          "SFT best T": behaviour_rates(world, ab, tb),
                          "best-of-4": behaviour_rates(world, best_asked, best_texts)}}
    return {"out": out, "best": by_temp[best_temp], "best_of_4": per_task(world, best_asked, best_texts, n),
            "best_of_4_low": best_of_4_low,
            "sft_replies": (sa, st)}


def run_ppo(world, folder, rm, tokenizer, heldout, seed, n, lr, kl_coef, args, base_eval) -> dict:
    """PPO on every weight from the SFT model in ``folder``; its held-out figures."""
    t0 = time.perf_counter()
    config = PPOConfig(seed=seed, train="all", lr=lr, kl_coef=kl_coef, batches=args.batches,
                       batch_size=args.batch_size, max_new_tokens=32, log_samples=0)
    policy, ref = load_model(folder), load_model(folder)
    value = load_model(folder, kind="reward")
    value.load_state_dict(rm.state_dict())
    prompts = [t.text for t in sample_tasks(world, 2000, "train", seed + 1)]
    history = train_ppo(policy, ref, rm, value, tokenizer, prompts, config,
                        watch_fn=rubric_watch(world), progress=False)
    found = evaluate_policy(world, policy, ref, tokenizer, heldout, seed, n, base_eval,
                            time.perf_counter() - t0)
    found["curve"] = [{k: v for k, v in h.items() if isinstance(v, (int, float))}
                      for h in history[:: max(1, len(history) // 8)]]
    return found


def run_dpo(world, folder, tokenizer, train_rows, heldout, seed, n, base_eval) -> dict:
    """DPO (TRL's DPOTrainer, the kit's defaults) on the reward model's training pairs."""
    t0 = time.perf_counter()
    policy, ref = load_model(folder), load_model(folder)
    rows = [r for r in train_rows if r["chosen"].strip() != r["rejected"].strip()]
    train_dpo(policy, ref, tokenizer, rows, DPOConfig(seed=seed, max_length=128), progress=False)
    return evaluate_policy(world, policy, ref, tokenizer, heldout, seed, n, base_eval,
                           time.perf_counter() - t0)


def run_grpo(world, folder, rm, tokenizer, heldout, seed, n, base_eval) -> dict:
    """GRPO (TRL's GRPOTrainer, the kit's defaults but 32 new tokens) against the reward model."""
    t0 = time.perf_counter()
    policy, ref = load_model(folder), load_model(folder)
    prompts = sorted({t.text for t in sample_tasks(world, 2000, "train", seed + 1)})
    train_grpo(policy, tokenizer, prompts, [reward_model_reward(rm, tokenizer), rubric_reward(world)],
               GRPOConfig(seed=seed, max_new_tokens=32), progress=False)
    return evaluate_policy(world, policy, ref, tokenizer, heldout, seed, n, base_eval,
                           time.perf_counter() - t0)


def evaluate_policy(world, policy, ref, tokenizer, heldout, seed, n, base_eval, seconds) -> dict:
    """A trained policy on the held-out tasks, against the SFT baselines of ``evaluate_baselines``."""
    policy.eval()
    pa, pt, pgen = replies(policy, tokenizer, heldout, 1.0, seed + 17, n)
    ppo_scores = per_task(world, pa, pt, n)
    by_temp = {}
    for temp in TEMPERATURES:
        a, t, _ = replies(policy, tokenizer, heldout, temp, seed + 11, n)
        by_temp[temp] = (per_task(world, a, t, n), behaviour_rates(world, a, t))
    best_temp = max(TEMPERATURES, key=lambda k: statistics.fmean(by_temp[k][0]))
    best_scores = by_temp[best_temp][0]
    sa, st = base_eval["sft_replies"]
    wins = ties = losses = 0
    for task, r_ppo, r_sft in zip(pa, pt, st):
        a_, b_ = world.judge(task, r_ppo).score, world.judge(task, r_sft).score
        wins, ties, losses = wins + (a_ > b_), ties + (a_ == b_), losses + (a_ < b_)
    summary = {"rubric": statistics.fmean(ppo_scores), "best T": best_temp,
               "rubric at best T": statistics.fmean(best_scores),
               "best T diff vs SFT best T": interval([p - b for p, b in zip(best_scores, base_eval["best"])]),
               "best T diff vs best-of-4": interval([p - b for p, b in zip(best_scores, base_eval["best_of_4"])]),
               "best T diff vs best-of-4 at best T": interval([p - b for p, b in zip(best_scores, base_eval["best_of_4_low"])]),
               "diff vs best T": interval([p - b for p, b in zip(ppo_scores, base_eval["best"])]),
               "diff vs best-of-4": interval([p - b for p, b in zip(ppo_scores, base_eval["best_of_4"])]),
               "decided win rate": wins / max(1, wins + losses), "tie share": ties / (wins + ties + losses),
               "preference rate": win_share(wins, ties, losses),
               "kl": reply_kl(policy, ref, tokenizer, pgen).mean().item(), "seconds": seconds}
    return {"summary": summary, "wins": wins, "ties": ties, "losses": losses,
            "behaviours": behaviour_rates(world, pa, pt), "behaviours at best T": by_temp[best_temp][1],
            "by temperature": {str(k): statistics.fmean(v[0]) for k, v in by_temp.items()},
            "examples": [(t.text, r) for t, r in list(zip(pa, pt))[:: max(1, len(pa) // 12)]]}


def run_seed(seed: int, args) -> dict:
    world = BehaviourWorld(seed=0)
    base = embedded_folder("base")  # the installed base model, or the one shipped in the package
    out: dict = {"seed": seed}
    t0 = time.perf_counter()

    # 1. SFT on the writers' demonstrations
    tokenizer = load_tokenizer(base)
    sft = load_model(base)
    sft_config = SFTConfig(seed=seed, n_conversations=args.demonstrations, n_eval=0)
    demos = build_demonstrations(world, sft_config.n_conversations, seed=seed)
    train_sft(sft, tokenizer, demos, sft_config, progress=False,
              pretrain_text=pretraining_text(world, tokenizer))
    out["sft_seconds"] = time.perf_counter() - t0

    # 2. rankings of the SFT model's completions, by the simulated labeler
    t1 = time.perf_counter()
    rconfig = RewardConfig(seed=seed, max_new_tokens=32, epochs=args.rm_epochs)
    prompts = [t.text for t in sample_tasks(world, args.rankings, "train", seed)]
    sets = sample_completions(sft, tokenizer, prompts, rconfig.k, 32, 1.0, seed)
    items = [Item(p, tuple(c), "sft") for p, c in zip(prompts, sets) if len(c) >= 2]
    noise = calibrate_noise(world, items)
    rankings = rank_sets(SimulatedLabeler(world, noise=noise, seed=seed), prompts, sets, "sft")
    out["noise"] = noise
    print(f"seed {seed}: SFT {out['sft_seconds']:.0f} s, labeler noise {noise:.2f}", flush=True)
    train_rows, heldout_rows = split_by_prompt(rankings, rconfig.heldout_share, seed)
    seed_everything(seed)
    # the reward model's body is the SFT model's: save and reload it as a classifier
    folder = Path(args.work) / f"sft-{seed}"
    sft.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rm = load_model(folder, kind="reward")
    history = train(rm, tokenizer, train_rows, rconfig, heldout_rows, progress=False)
    rm.eval()
    rm.save_pretrained(Path(args.work) / f"reward-{seed}")
    out["rm_seconds"] = time.perf_counter() - t1
    out["rm_eval_vs_labeler"] = [h.get("reward/eval_accuracy") for h in history if "reward/eval_accuracy" in h][-1:]

    # 3. the reward model on held-out tasks, by kind of pair (reward_eval.rubric_parts splits each
    #    reply's rubric score exactly into truth and behaviour points), on all pairs and on pairs of
    #    two well-formed replies (behaviours.well_formed), as lesson 5 measures it
    heldout = world.questions("heldout")
    asked, texts, _ = replies(sft, tokenizer, heldout, 1.0, seed + 7, n=8)
    out["well_formed_share"] = sum(map(well_formed, texts)) / len(texts)
    out["rm_accuracy"] = {}
    for pairs_of in ("all", "well-formed"):
        for row in accuracy_by_pair_kind(rm, tokenizer, world, asked, texts, pairs_of):
            out["rm_accuracy"][f"{row['pairs']} ({pairs_of})"] = (row["accuracy"], row["count"])
    print(f"seed {seed}: reward model {out['rm_seconds']:.0f} s, {out['rm_accuracy']}", flush=True)

    # 4. PPO on every weight, with the KL penalty against the SFT model: one run per variant
    n = args.samples
    heldout_eval = evaluate_baselines(world, sft, rm, tokenizer, heldout, seed, n)
    out.update(heldout_eval["out"])
    out["ppo"] = {}
    for variant in args.ppo:
        lr, kl_coef = (float(x) for x in variant.split(":"))
        out["ppo"][variant] = run_ppo(world, folder, rm, tokenizer, heldout, seed, n, lr, kl_coef, args,
                                      heldout_eval)
        print(f"seed {seed} PPO {variant}: {json.dumps(out['ppo'][variant]['summary'])}", flush=True)
    if args.alternatives:
        out["dpo"] = run_dpo(world, folder, tokenizer, train_rows, heldout, seed, n, heldout_eval)
        print(f"seed {seed} DPO: {json.dumps(out['dpo']['summary'])}", flush=True)
        out["grpo"] = run_grpo(world, folder, rm, tokenizer, heldout, seed, n, heldout_eval)
        print(f"seed {seed} GRPO: {json.dumps(out['grpo']['summary'])}", flush=True)
    out["seconds"] = time.perf_counter() - t0
    return out


def _spread(values: list[float], digits: int = 2) -> str:
    """Mean over seeds, then (min to max)."""
    f = f"{{:.{digits}f}}"
    if len(values) == 1:
        return f.format(values[0])
    return f"{f.format(statistics.fmean(values))} ({f.format(min(values))} to {f.format(max(values))})"


def summarise(results: list[dict]) -> None:
    """Markdown tables: each figure as the mean over seeds, with min to max."""
    seeds = [r["seed"] for r in results]
    variant = next(iter(results[0]["ppo"]), None)
    print(f"Seeds {seeds}; PPO lr:kl_coef = {variant}; held-out tasks scored by the noise-free rubric.\n")
    print(f"Well-formed SFT replies at temperature 1 (behaviours.well_formed): "
          f"{_spread([r['well_formed_share'] for r in results])}.\n")
    print("| reward model: pairwise accuracy on held-out pairs | accuracy | pairs per seed |\n|---|---|---|")
    kinds = list(dict.fromkeys(k for r in results for k in r["rm_accuracy"]))
    for kind in kinds:
        found = [r["rm_accuracy"][kind] for r in results if kind in r["rm_accuracy"]]
        print(f"| {kind} | {_spread([f[0] for f in found])} | {_spread([f[1] for f in found], 0)} |")
    if variant is None:
        return
    ppo = [r["ppo"][variant] for r in results]
    print("\n| model | rubric score |\n|---|---|")
    for temp in TEMPERATURES:
        print(f"| SFT, T={temp} | {_spread([r['sft_by_temperature'][str(temp)] for r in results])} |")
    print(f"| best-of-4 by the reward model, T=1 | {_spread([r['rubric']['best-of-4'] for r in results])} |")
    print(f"| best-of-4 at SFT's best T | {_spread([r['rubric']['best-of-4 at best T'] for r in results])} |")
    for temp in TEMPERATURES:
        print(f"| PPO, T={temp} | {_spread([p['by temperature'][str(temp)] for p in ppo])} |")
    print(f"\nBest temperature: SFT {[r['best_temperature'] for r in results]}, "
          f"PPO {[p['summary']['best T'] for p in ppo]}.\n")
    print("| paired difference, PPO at its best T minus | mean | 95 % interval, per seed |\n|---|---|---|")
    for label, key in (("SFT at its best T", "best T diff vs SFT best T"),
                       ("best-of-4, T=1", "best T diff vs best-of-4"),
                       ("best-of-4 at SFT's best T", "best T diff vs best-of-4 at best T")):
        diffs = [p["summary"][key] for p in ppo]
        print(f"| {label} | {_spread([d[0] for d in diffs])} | "
              + "; ".join(f"{d[1]:.2f} to {d[2]:.2f}" for d in diffs) + " |")
    print("\n| PPO against SFT, both at T=1 | value |\n|---|---|")
    for label, key in (("decided pairs PPO wins", "decided win rate"), ("ties", "tie share"),
                       ("preference rate (ties half)", "preference rate"), ("KL to SFT (nats per reply)", "kl"),
                       ("PPO seconds", "seconds")):
        print(f"| {label} | {_spread([p['summary'][key] for p in ppo])} |")
    others = [k for k in ("dpo", "grpo") if all(k in r for r in results)]
    if others:
        print("\n| after SFT, from the same rankings | rubric at best T | minus SFT at its best T | "
              "decided pairs won against SFT (T=1) | ties | KL to SFT | seconds |\n|---|---|---|---|---|---|---|")
        for label, runs in [("PPO", ppo)] + [(k.upper(), [r[k] for r in results]) for k in others]:
            sm = [x["summary"] for x in runs]
            print(f"| {label} | {_spread([x['rubric at best T'] for x in sm])} | "
                  f"{_spread([x['best T diff vs SFT best T'][0] for x in sm])} | "
                  f"{_spread([x['decided win rate'] for x in sm])} | {_spread([x['tie share'] for x in sm])} | "
                  f"{_spread([x['kl'] for x in sm])} | {_spread([x['seconds'] for x in sm], 0)} |")
    print("\n| share of replies showing each behaviour | " + " | ".join(results[0]["behaviours"]["SFT T=1"])
          + " |\n|---|" + "---|" * len(results[0]["behaviours"]["SFT T=1"]))
    rows = [("SFT, T=1", [r["behaviours"]["SFT T=1"] for r in results]),
            ("SFT at its best T", [r["behaviours"]["SFT best T"] for r in results]),
            ("best-of-4, T=1", [r["behaviours"]["best-of-4"] for r in results]),
            ("PPO, T=1", [p["behaviours"] for p in ppo]),
            ("PPO at its best T", [p["behaviours at best T"] for p in ppo])]
    rows += [(f"{k.upper()} at its best T", [r[k]["behaviours at best T"] for r in results]) for k in others]
    for label, dicts in rows:
        print(f"| {label} | " + " | ".join(_spread([d[b] for d in dicts]) for b in dicts[0]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--demonstrations", type=int, default=600)
    parser.add_argument("--rankings", type=int, default=1152)
    parser.add_argument("--rm-epochs", type=float, default=4.0)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ppo", nargs="*", default=["1e-5:0.05"], help="PPO variants, lr:kl_coef")
    parser.add_argument("--alternatives", action="store_true", help="also DPO and GRPO, from the same SFT "
                        "model and rankings")
    parser.add_argument("--summarise", default=None, help="only print the tables of a saved --out file")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--work", default="/tmp/behaviours-work")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.summarise:
        summarise(json.loads(Path(args.summarise).read_text()))
        return
    results = []
    for seed in args.seeds:
        r = run_seed(seed, args)
        results.append(r)
        print(json.dumps(r, indent=1, default=str))
        sys.stdout.flush()
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    summarise(json.loads(json.dumps(results, default=str)))


if __name__ == "__main__":
    main()
