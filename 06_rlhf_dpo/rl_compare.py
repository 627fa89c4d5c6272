"""The outcome table of the stage: every tuned policy against the SFT model, on the same held-out prompts.

    python 06_rlhf_dpo/rl_compare.py --run runs/tiny                 # after the methods below have run
    python 06_rlhf_dpo/rl_compare.py --run runs/tiny --limit 50      # fewer held-out prompts, faster
    python 06_rlhf_dpo/rl_compare.py --run runs/tiny --world-limit 100   # fewer of GRPO's questions

Reads runs/<name>/sft/ (05) and whichever of ppo/, dpo/, ipo/, simpo/, grpo/, rlaif/ exist (a missing one
is named with the command that makes it), rm/ when present (the reward-model column), and the held-out
preference pairs, the held-out half's questions and arithmetic problems (01), and the world's fact and
best-friend questions (fact_task.py, hop_task.py). Writes runs/<name>/rl_compare/: compare.json, compare.md,
compare.png, manifest.json.

Every model answers the same prompts greedily (temperature 0), so a difference in the table is the
model's, not the sampler's. The columns:

    win vs SFT     the method's answer against SFT's answer to the same held-out preference prompt, judged
                   by the pairs' ground-truth rules (rule_judge.py; a tie counts ½), with the Wilson 95 %
                   interval (common.stats.win_rate_with_ties) and the wins/losses/ties
    RM score       the reward model's mean score of the answers (rm/; it is what PPO maximizes, so it is
                   PPO's own metric, and RLAIF's judge)
    KL to SFT      Σ_t log π(y_t) − log π_SFT(y_t) over one sampled answer per prompt, averaged (nats/answer)
    pair acc       share of the informative held-out pairs (correct_fact: chosen and rejected differ only in
                   the fact) with log π(y_w) > log π(y_l), ties 1/2 (summed log-probs; SimPO's row uses its
                   per-token mean, the score it trains): what DPO/IPO/SimPO optimize
    fact acc       held-out half answer accuracy: greedy answers to questions about the people SFT never saw a
                   QA of (their facts are in pretraining only as biographies), as 05 and dpo.py score them
    fact pass@1    greedy answers to GRPO's held-out fact questions (new wordings, new people; fact_task.py)
    hop pass@1     greedy answers to GRPO's held-out best-friend questions (hop_task.py), asked in the form
                   GRPO trained on: "X and Y are best friends. In which city does the best friend of X
                   live?" (--task hop-given, the default, and whenever GRPO ran no hop task), the friend
                   left out with --task hop; prompt and reward are grpo.py's (hop_task.question_task)
    pass@1         greedy arithmetic answers that are right (grpo.py --task arithmetic's prompt with its
                   solved example)
    [95% CI]       Wilson intervals over the questions, beside gold, fact acc and the three pass@1
    length         mean tokens of the answers to the preference prompts
    train s        the method's own training time from its outcome.json (a shared CPU: compare, don't quote)

    gold           the share of prompts whose greedy answer the rule judge accepts under every rule the
                   prompt's pairs state (alignment_bars.gold_acceptance)

"own metric" is, for each method, what its own stage judges it by: gold acceptance for PPO and RLAIF
(never the reward model they optimized), held-out fact accuracy for DPO/IPO/SimPO (they train on
factual pairs), pass@1 on the task GRPO trained on (its manifest says which: hop pass@1 for hop-given,
the default, and hop; fact pass@1 for facts; pass@1 for arithmetic).
"beats baselines" is that method's bar (alignment_bars.paired_bar): its score minus the strongest of SFT
and the metric's cheap baseline (majority answer; for pair accuracy "prefer the shorter response"),
paired over the items, with a 95 % bootstrap interval wholly above 0. Win rates count a tie as 1/2 and
are computed per prompt (the sign of the verdicts summed over its rules), with the decisive pairs and a
sign test printed beside them. Nothing is tuned towards the table: when a method does not beat its
baselines it says so.

Interview questions it answers:
- How do you compare RLHF methods fairly? (the same prompts, the same decoding, a judge that none of them
  trained on, and the cost beside the gain: KL to the start, time)
- Why report the KL to the SFT model beside the reward? (a higher reward bought with a large KL is often
  reward hacking: the policy left the region where the reward model is right)
- Why can a method win on its own metric and lose on the win rate? (its metric is a proxy: the reward
  model's score, the implicit reward, a format check; the rule is the ground truth)
"""

import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "05_sft_lora")]
from common.cli import UserError, check_config, command_line, option, parse_config, run_cli
from common.files import atomic_write_text, markdown_table, pyplot, read_json, save_figure, write_json
from common.layout import RunLayout, task_file
from common.runs import check_artifact, fresh_output, write_manifest
from common.devices import resolve_device
from common.outcome import make_bar
from common.stats import wilson_interval, win_rate_with_ties

from arithmetic_task import arithmetic_eval, read_problems
from fact_task import world_seed_of
from factual_pairs import qa_records
from factuality import fact_scores, majority_scores
from grpo_eval import greedy_correct
from hop_task import question_task
from policy_io import check_same_model, frozen, load_policy, load_sft_policy
from policy_io import sequence_kl
from reward_scoring import reward_of_responses
from preference_data import cached_log_probs, encode_pairs, pad_id_of, read_preference_pairs
from reward_scoring import length_rule_scores, load_reward_model, tie_scores
from rollouts import check_rollout_fits, decode_responses, sample_responses
from rule_judge import judge
from alignment_bars import (
    gold_acceptance,
    informative,
    majority_replies,
    paired_bar,
    short_answers,
    user_question,
    win_bar,
)

# method folder -> ((the registry folder whose stage makes it, the flags it adds), the column it optimizes)
# (PPO's and RLAIF's objective is the reward model's score; they are judged by the gold rule judge instead)
METHODS = {
    "ppo": (("ppo", ""), "gold"),
    "dpo": (("dpo", ""), "fact_acc"),
    "ipo": (("dpo", "--loss ipo"), "fact_acc"),
    "simpo": (("dpo", "--loss simpo"), "fact_acc"),
    "grpo": (("grpo", ""), "hop_pass@1"),  # the column of the task it ran (own_metric, GRPO_TASK_METRIC)
    "rlaif": (("rlaif", ""), "gold"),
}
# metric -> (what it measures, the cheap baseline beside SFT)
METRICS = {
    "gold": ("held-out gold rule-judge acceptance (greedy)", "majority answer"),
    "pair_acc": ("held-out pair accuracy on the informative pairs (ties 1/2)", "prefer the shorter response"),
    "fact_acc": ("held-out half answer accuracy (greedy)", "majority answer"),
    "fact_pass@1": ("held-out fact-question pass@1 (greedy; new wordings and people)", "majority answer"),
    "hop_pass@1": (
        "held-out best-friend question pass@1 (greedy; new wordings and people)",
        "majority answer",
    ),
    "pass@1": ("held-out arithmetic pass@1 (greedy)", "majority answer"),
}
# grpo.py --task -> the column GRPO is judged by (its own stage's metric, greedy here)
GRPO_TASK_METRIC = {
    "hop-given": "hop_pass@1",
    "hop": "hop_pass@1",
    "facts": "fact_pass@1",
    "arithmetic": "pass@1",
}
COLUMNS = [
    "method",
    "win vs SFT [95% CI] (W/L/T)",
    "gold [95% CI]",
    "RM score",
    "KL to SFT",
    "pair acc",
    "fact acc [95% CI]",
    "fact pass@1 [95% CI]",
    "hop pass@1 [95% CI]",
    "pass@1",
    "length",
    "train s",
    "own metric",
    "SFT on it",
    "minus best baseline [95% CI]",
    "beats baselines",
]


@dataclass
class RLCompareConfig:
    run: str = option("", "run folder runs/<name> holding sft/ and the method folders")
    out: str = option("", "output folder; empty = <run>/rl_compare")
    methods: list = option(list(METHODS), f"method folders to compare, from {','.join(METHODS)}", sep=",")
    limit: int = option(
        100,
        "held-out preference prompts, held-out half questions and arithmetic problems used, each (0 = all)",
        min=0,
    )
    # 0, not --limit: GRPO's held-out questions are the set grpo.py judges itself on (201 hop questions);
    # cut to 100, the same gain (0.04 -> 0.29) had an interval reaching 0 over the majority answer
    world_limit: int = option(0, "GRPO's held-out fact and hop questions used, each (0 = all)", min=0)
    shots: int = option(1, "solved arithmetic examples before each problem (as grpo.py --shots)", min=0)
    max_new_tokens: int = option(24, "longest answer to a preference prompt or a held-out question", min=1)
    fact_tokens: int = option(
        12, "longest answer to a GRPO fact or hop question (as grpo.py --max-new-tokens)", min=1
    )
    arith_tokens: int = option(
        10, "longest answer to an arithmetic problem (as grpo.py --max-new-tokens)", min=1
    )
    seed: int = option(1337, "seed of the sampled answers the KL is measured on")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the table already in the output folder")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(limit=4, world_limit=4, shots=0, max_new_tokens=4, arith_tokens=4, fact_tokens=4),
}


def check_rl_compare_config(cfg: RLCompareConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder holding sft/ and the 06 method folders)")
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)}; choose from {','.join(METHODS)}")


# ----------------------------------------------------------------------------- the held-out set


def heldout_set(run, tok, cfg, block_size) -> dict:
    """The prompts every model answers: held-out preference pairs (with their rule and short answer),
    arithmetic problems, cut to cfg.limit, GRPO's fact and hop questions, cut to cfg.world_limit, plus the
    shots grpo.py shows."""
    pairs, _ = read_preference_pairs(task_file(run, "", "preference_heldout.jsonl"))
    kept = [
        (p, enc[0]) for p in pairs for enc in [encode_pairs(tok, [p], block_size)[0]] if enc
    ]  # fits the context
    groups = {}  # question -> [(pair, encoded)]: the held-out file states every rule for each question
    for p, e in kept:
        groups.setdefault(user_question(p["prompt"]), []).append((p, e))
    questions = list(groups)[: cfg.limit] if cfg.limit else list(groups)
    kept = [pe for q in questions for pe in groups[q]]
    pairs, encoded = [p for p, _ in kept], [e for _, e in kept]
    prompts = [groups[q][0][1]["prompt_ids"] for q in questions]  # one greedy answer per question
    check_rollout_fits(prompts, cfg.max_new_tokens, block_size)
    train = read_problems(task_file(run, "", "arithmetic_train.jsonl"))
    problems = read_problems(task_file(run, "", "arithmetic_heldout.jsonl"))
    problems = problems[: cfg.limit] if cfg.limit else problems
    common = Counter(p["answer"] for p in train).most_common(1)[0][0]
    majority = majority_replies(questions, run)
    cut = lambda xs: xs[: cfg.limit] if cfg.limit else xs
    qa_train = qa_records(task_file(run, "", "sft_train.jsonl"))
    qa_held = cut(qa_records(task_file(run, "", "sft_heldout.jsonl")))
    seed, hop = world_seed_of(run), hop_form(RunLayout(run).grpo)
    cut_world = lambda xs: xs[: cfg.world_limit] if cfg.world_limit else xs
    return {
        "questions": questions,
        "groups": [[p for p, _ in groups[q]] for q in questions],
        "pairs": pairs,
        "encoded": encoded,
        "prompts": prompts,
        "answers": short_answers(run),
        "shots": train[: cfg.shots],
        "problems": problems,
        "informative": informative(pairs),
        "majority_texts": majority,
        "majority_common_answer": common,
        "qa_held": qa_held,
        "qa_majority": majority_scores(qa_held, qa_train)["answer_acc"],
        "world": {  # column -> GRPO's held-out questions of that task
            "fact_pass@1": world_questions("facts", seed, tok, cut_world),
            "hop_pass@1": world_questions(hop, seed, tok, cut_world),
        },
    }


def world_questions(task, world_seed, tok, cut) -> dict:
    """GRPO's held-out questions of one task, with grpo.py's prompt, reward and majority answer
    (hop_task.question_task), cut by `cut` (--world-limit): {"task", "problems", "prompts",
    "correct": (i, text) -> bool,
    "majority": the majority answer's 0/1 per problem}."""
    t = question_task(task, world_seed, tok)
    problems = cut(t["heldout"])
    return {
        "task": task,
        "problems": problems,
        "prompts": [t["prompt"](p) for p in problems],
        "correct": lambda i, text: t["correct"](problems[i], text),
        "majority": t["majority"](problems),
    }


def grpo_task(folder):
    """The --task GRPO trained with (its manifest's config), None when it has not run."""
    path = Path(folder) / "manifest.json"
    return (read_json(path).get("config") or {}).get("task") if path.is_file() else None


def hop_form(folder) -> str:
    """Which best-friend questions the hop column asks: GRPO's own hop task, else hop-given (the default)."""
    task = grpo_task(folder)
    return task if task in ("hop", "hop-given") else "hop-given"


def baseline_scores(held) -> dict:
    """The cheap baselines' per-item scores: the majority answer (gold acceptance, pass@1) and the
    length rule (pair accuracy)."""
    pick = lambda xs: [xs[i] for i in held["informative"]]
    common = held["majority_common_answer"]
    return {
        "gold": gold_acceptance(held["majority_texts"], held["groups"], held["answers"]),
        "pair_acc": pick(length_rule_scores(held["encoded"])),
        "pass@1": [float(p["answer"] == common) for p in held["problems"]],
        "fact_acc": held["qa_majority"],
        **{column: w["majority"] for column, w in held["world"].items()},  # fact and hop pass@1
    }


# ----------------------------------------------------------------------------- one model's numbers


@torch.no_grad()
def evaluate(model, sft, rm, tok, held, cfg, sft_texts=None, mean_logprob=False) -> dict:
    """Every column for one model (see the module docstring); sft_texts: SFT's greedy answers, for the win rate
    (None: this is SFT). Returns the numbers and this model's greedy answers."""
    t0 = time.time()
    device, pad = next(model.parameters()).device, pad_id_of(tok)
    responses = sample_responses(model, tok, held["prompts"], 1, cfg.max_new_tokens, temperature=0)
    texts = decode_responses(tok, responses)
    row = {"length": sum(map(len, responses)) / len(responses)}
    scores = {"gold": gold_acceptance(texts, held["groups"], held["answers"])}
    if sft_texts is not None:
        # per question: the sign of the rule judge's verdicts summed over the rules its pairs state
        verdicts = []
        for group, a, b in zip(held["groups"], texts, sft_texts):
            answer = held["answers"].get(user_question(group[0]["prompt"]))
            total = sum(judge(p["rule"], a, b, p, answer) for p in group)
            verdicts.append((total > 0) - (total < 0))
        row["win"] = win_rate_with_ties(verdicts.count(1), verdicts.count(-1), verdicts.count(0))
        row["verdicts"] = verdicts
        row["kl"] = sequence_kl(model, sft, tok, held["prompts"], cfg.max_new_tokens, cfg.seed)[
            "kl_per_response"
        ]
    if rm is not None:
        row["rm_score"] = reward_of_responses(rm, held["prompts"], responses, pad, device).mean().item()
    lp = cached_log_probs(model, held["encoded"], pad, device=device)
    key = "mean" if mean_logprob else "sum"
    ranks = tie_scores(lp[f"chosen_{key}"].tolist(), lp[f"rejected_{key}"].tolist())
    scores["pair_acc"] = [ranks[i] for i in held["informative"]]
    arith = arithmetic_eval(
        model, tok, held["problems"], held["shots"], cfg.arith_tokens, n_samples=1, seed=cfg.seed
    )
    scores["pass@1"] = arith["greedy_correct"]
    scores["fact_acc"] = fact_scores(model, tok, held["qa_held"], cfg.max_new_tokens)["answer_acc"]
    for column, w in held["world"].items():  # fact and hop pass@1: GRPO's greedy check (grpo_eval.py)
        scores[column] = greedy_correct(model, tok, w["prompts"], w["correct"], cfg.fact_tokens)[1]
    row.update({k: sum(v) / len(v) for k, v in scores.items()})
    row["scores"] = scores  # per item, for the paired bars
    row["eval_s"] = time.time() - t0
    return row, texts


def table_row(name, r, train_s, bar=None) -> dict:
    """One markdown row: the numbers rounded, and the method's bar on its own metric."""
    fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"
    win = r.get("win")
    row = {
        "method": name,
        "win vs SFT [95% CI] (W/L/T)": "-"
        if win is None
        else f"{win['win_rate']:.3f} [{win['interval'][0]:.2f}, {win['interval'][1]:.2f}] ({win['wins']}/{win['losses']}/{win['ties']})",
        "gold [95% CI]": with_interval(r["scores"]["gold"]),
        "RM score": fmt(r.get("rm_score")),
        "KL to SFT": fmt(r.get("kl"), 2),
        "pair acc": fmt(r["pair_acc"]),
        "fact acc [95% CI]": with_interval(r["scores"]["fact_acc"]),
        "fact pass@1 [95% CI]": with_interval(r["scores"]["fact_pass@1"]),
        "hop pass@1 [95% CI]": with_interval(r["scores"]["hop_pass@1"]),
        "pass@1": with_interval(r["scores"]["pass@1"]),
        "length": fmt(r["length"], 1),
        "train s": fmt(train_s, 0),
    }
    if bar is not None:
        sft = next((v for k, v in bar["contenders"].items() if k == "SFT"), None)
        row.update(
            {
                "own metric": bar["own"],
                "SFT on it": fmt(sft),
                "minus best baseline [95% CI]": f"{bar['value']:+.3f} [{bar['interval'][0]:+.3f}, "
                f"{bar['interval'][1]:+.3f}] vs {bar['baseline_name']}",
                "beats baselines": "yes" if bar["passed"] else "no",
            }
        )
    return row


def with_interval(scores) -> str:
    """'0.145 [0.10, 0.20]': the share of 1.0 scores with its Wilson 95 % interval ('-' with no items)."""
    if not scores:
        return "-"
    lo, hi = wilson_interval(sum(scores), len(scores))
    return f"{sum(scores) / len(scores):.3f} [{lo:.2f}, {hi:.2f}]"


def own_metric(name, folder) -> str:
    """The column a method is judged by: METHODS' entry, except GRPO's, which is the column of the task
    it trained on (its manifest's config says which: GRPO_TASK_METRIC)."""
    if name == "grpo" and folder is not None:
        return GRPO_TASK_METRIC.get(grpo_task(folder), METHODS[name][1])
    return METHODS[name][1]


def method_bar(name, r, sft_row, baselines, own=None) -> dict:
    """The method's bar on its own metric: paired against SFT and the metric's cheap baseline."""
    own = own or METHODS[name][1]
    sft_scores = (
        sft_row["scores"]["pair_acc_mean"]
        if own == "pair_acc" and name == "simpo"
        else sft_row["scores"][own]
    )
    contenders = {"SFT": sft_scores, METRICS[own][1]: baselines[own]}
    bar = paired_bar(METRICS[own][0], name, r["scores"][own], contenders)
    return bar | {"own": own, "contenders": {k: sum(v) / len(v) for k, v in contenders.items()}}


# Why this stage writes no verdict of its own (issue 22): each row's bar is the same metric, paired on
# the same held-out items against the same baselines, that ppo.py, dpo.py and grpo.py already write as
# their stage's bar; a second verdict would count each method twice on the report card, and "k of 3
# methods" is a count with no interval. The table's own columns (win rate vs SFT with its Wilson
# interval, KL, length, time) are for reading across methods, not for a pass.
TABLE_ONLY = (
    "a comparison table: each method's bar is its own stage's (ppo, dpo, grpo: same metric, items and "
    "baselines); no second verdict"
)


def stage_bar(bars: dict) -> dict:
    """The stage's verdict: every method beats SFT and the cheap baseline on its own metric."""
    wins = [k for k, b in bars.items() if b["passed"]]
    return make_bar(
        "methods beating SFT and the cheap baseline on their own metric (paired 95 % interval above 0)",
        len(wins),
        threshold=len(bars),
        direction="higher",
        inclusive=True,
        baseline=0,
        baseline_name="SFT",
        n=len(bars),
        note=f"pass: {', '.join(wins) or 'none'}; fail: {', '.join(k for k in bars if k not in wins) or 'none'}",
    ) | {"inclusive": True}


def plot(results, path):
    plt = pyplot()
    names = list(results)
    # six panels in two rows: one row of six would leave each too narrow to read the method names
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    axes = axes.ravel()
    tuned = [n for n in names if "win" in results[n]]
    w = [results[n]["win"] for n in tuned]
    axes[0].bar(
        tuned,
        [x["win_rate"] for x in w],
        yerr=[[x["win_rate"] - x["interval"][0] for x in w], [x["interval"][1] - x["win_rate"] for x in w]],
        capsize=4,
    )
    axes[0].axhline(0.5, ls=":", c="grey")
    axes[0].set(
        ylim=(0, 1),
        ylabel="share of held-out prompts won (ties = ½)",
        title="win rate vs SFT (ground-truth rule, 95% CI)",
    )
    for ax, key, title, unit in (
        (axes[1], "rm_score", "reward-model score", "mean reward (RM units)"),
        (axes[2], "pair_acc", "pair accuracy", "share of held-out pairs"),
        (axes[3], "fact_acc", "held-out half fact accuracy (greedy)", "share answered right"),
        (axes[4], "fact_pass@1", "fact-question pass@1 (greedy)", "share answered right"),
        (axes[5], "hop_pass@1", "best-friend question pass@1 (greedy)", "share answered right"),
    ):
        values = [results[n].get(key) or 0.0 for n in names]
        ax.bar(names, values, color=["C7"] + ["C0"] * (len(names) - 1))
        low, high = min(0.0, *values), max(0.0, *values)  # the axis includes 0 (RM scores may be < 0)
        ax.set(title=title, ylabel=unit, ylim=(1.1 * low, 1.1 * high if high > low else low + 1.0))
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- the run


def available_methods(run, methods) -> tuple:
    """(present: {name: folder}, missing: [lines naming the command that makes each])."""
    present, missing = {}, []
    for name in methods:
        folder = Path(run) / name
        if (folder / "manifest.json").is_file():
            check_artifact(folder, made_by=RunLayout(run).made_by(*METHODS[name][0]))
            present[name] = folder
        else:
            missing.append(f"{name}: not run (`{RunLayout(run).made_by(*METHODS[name][0])}`)")
    return present, missing


def compare_run(cfg: RLCompareConfig, argv=None) -> dict:
    """Evaluate SFT and every present method and write <out>/ (module docstring); returns the results."""
    check_rl_compare_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else run / "rl_compare"
    sft, tok = load_sft_policy(run, device)
    sft = frozen(sft)
    present, missing = available_methods(run, cfg.methods)
    if not present:
        raise UserError(
            f"{run}: none of {', '.join(cfg.methods)} has run yet; train one first, e.g. "
            f"`python 06_rlhf_dpo/dpo.py --run {run}`"
        )
    with fresh_output(out, cfg.overwrite) as tmp:  # refused or locked before the evaluations
        rm = None
        if (RunLayout(run).rm / "manifest.json").is_file():
            check_artifact(RunLayout(run).rm, made_by=RunLayout(run).made_by("rm"))
            rm = frozen(load_reward_model(RunLayout(run).rm / "rm.pt", tok, device))
        held = heldout_set(run, tok, cfg, sft.cfg.block_size)
        torch.manual_seed(cfg.seed)
        sft_row, sft_texts = evaluate(sft, sft, rm, tok, held, cfg)
        sft_row["scores"]["pair_acc_mean"] = evaluate_pair_mean(sft, tok, held)
        baselines = baseline_scores(held)
        results, train_s = {"sft": sft_row}, {"sft": None}
        for name, folder in present.items():
            model, model_tok = load_policy(folder / "ckpt.pt", device)
            check_same_model(sft, tok, model, model_tok, f"{folder}/ckpt.pt")
            results[name], _ = evaluate(
                model.eval(), sft, rm, tok, held, cfg, sft_texts, mean_logprob=name == "simpo"
            )
            train_s[name] = read_json(folder / "outcome.json").get("train_s")
            print(f"{name}: evaluated in {results[name]['eval_s']:.0f}s", flush=True)
        bars = {
            n: method_bar(n, r, sft_row, baselines, own_metric(n, present[n]))
            for n, r in results.items()
            if n != "sft"
        }
        win_bars = {n: win_bar(r["verdicts"], n) for n, r in results.items() if n != "sft"}
        rows = [table_row(n, r, train_s[n], bars.get(n)) for n, r in results.items()]
        mean = lambda k: f"{sum(baselines[k]) / len(baselines[k]):.3f}"
        rows.append(
            {
                "method": "majority answer",
                "gold [95% CI]": with_interval(baselines["gold"]),
                "fact acc [95% CI]": with_interval(baselines["fact_acc"]),
                "fact pass@1 [95% CI]": with_interval(baselines["fact_pass@1"]),
                "hop pass@1 [95% CI]": with_interval(baselines["hop_pass@1"]),
                "pass@1": with_interval(baselines["pass@1"]),
            }
        )
        rows.append({"method": "prefer the shorter response", "pair acc": mean("pair_acc")})
        table = markdown_table(rows, COLUMNS)
        write_json(
            tmp / "compare.json",
            {
                "bar": stage_bar(bars),
                "bars": list(bars.values()),
                "win_bars": win_bars,
                "rows": rows,
                "results": results,
                "missing": missing,
                "n_pairs": len(held["pairs"]),
                "n_problems": len(held["problems"]),
                "n_fact_questions": len(held["qa_held"]),
                "n_fact_problems": len(held["world"]["fact_pass@1"]["problems"]),
                "n_hop_problems": len(held["world"]["hop_pass@1"]["problems"]),
                "hop_task": held["world"]["hop_pass@1"]["task"],
                "config": asdict(cfg),
            },
        )
        write_json(
            tmp / "outcome.json",
            {
                "headline": f"{sum(b['passed'] for b in bars.values())} of {len(bars)} methods beat SFT and "
                f"the cheap baseline on their own metric ({stage_bar(bars)['note']})",
                "bar": None,  # a table: the verdicts are the methods' own stages' (TABLE_ONLY)
                "verdict": "n/a",
                "table_only": TABLE_ONLY,
                "bars": list(bars.values()),
            },
        )
        atomic_write_text(tmp / "compare.md", table + "\n")
        plot(results, tmp / "compare.png")
        write_manifest(
            tmp,
            stage="06_rlhf_dpo",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=[
                RunLayout(run).sft,
                RunLayout(run).data,
                *present.values(),
                *([RunLayout(run).rm] if rm is not None else []),
            ],
        )
    print(
        f"held-out: {len(held['pairs'])} preference prompts, {len(held['qa_held'])} held-out-half questions, "
        f"{len(held['world']['fact_pass@1']['problems'])} fact questions, "
        f"{len(held['world']['hop_pass@1']['problems'])} {held['world']['hop_pass@1']['task']} questions, "
        f"{len(held['problems'])} arithmetic problems; greedy answers"
    )
    print(table)
    for line in missing:
        print(line)
    for name, b in win_bars.items():
        print(
            f"{name}: win rate against SFT {b['value']:.3f} [{b['interval'][0]:.3f}, {b['interval'][1]:.3f}]; {b['note']}"
        )
    print(f"wrote {out}/ (compare.json, compare.md, compare.png)")
    return {"rows": rows, "results": results, "missing": missing, "bars": bars}


@torch.no_grad()
def evaluate_pair_mean(model, tok, held) -> list:
    """Per informative pair, ranked right by the per-token mean log-prob (SimPO's score): SFT's entry in SimPO's row."""
    lp = cached_log_probs(model, held["encoded"], pad_id_of(tok), device=next(model.parameters()).device)
    ranks = tie_scores(lp["chosen_mean"].tolist(), lp["rejected_mean"].tolist())
    return [ranks[i] for i in held["informative"]]


def main(argv=None):
    cfg, _ = parse_config(RLCompareConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    compare_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
