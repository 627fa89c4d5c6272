"""The outcome table of the stage: every tuned policy against the SFT model, on the same held-out prompts.

    python 06_rlhf_dpo/rl_compare.py --run runs/tiny                 # after the methods below have run
    python 06_rlhf_dpo/rl_compare.py --run runs/tiny --limit 50      # fewer held-out prompts, faster

Reads runs/<name>/sft/ (05) and whichever of ppo/, dpo/, ipo/, simpo/, grpo/, rlaif/ exist (a missing one
is named with the command that makes it), rm/ when present (the reward-model column), and the held-out
preference pairs and arithmetic problems (01). Writes runs/<name>/rl_compare/: compare.json, compare.md,
compare.png, manifest.json.

Every model answers the same prompts greedily (temperature 0), so a difference in the table is the
model's, not the sampler's. The columns:

    win vs SFT     the method's answer against SFT's answer to the same held-out preference prompt, judged
                   by the pair's ground-truth rule (rule_judge.py; a tie counts ½), with the Wilson 95 %
                   interval (05's metrics.win_rate) and the wins/losses/ties
    RM score       the reward model's mean score of the answers (rm/; it is what PPO maximizes, so it is
                   PPO's own metric, and RLAIF's judge)
    KL to SFT      Σ_t log π(y_t) − log π_SFT(y_t) over one sampled answer per prompt, averaged (nats/answer)
    pair acc       share of held-out pairs with log π(y_w) > log π(y_l) (summed log-probs; SimPO's row uses
                   its per-token mean, the score it trains): what DPO/IPO/SimPO optimize
    pass@1         greedy arithmetic answers that are right (grpo.py's prompt with its solved example)
    length         mean tokens of the answers to the preference prompts
    train s        the method's own training time from its outcome.json (a shared CPU: compare, don't quote)

"own metric" picks, for each method, the column it optimizes, and "beats SFT" says whether it moved it the
right way. Nothing is tuned towards the table: when a method does not beat SFT it says so.

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
from metrics import win_rate  # 05_sft_lora
from sft_data import read_conversations  # 05_sft_lora

from grpo import arithmetic_eval, read_problems
from policy_io import check_same_model, frozen, load_policy, load_sft_policy
from ppo import reward_of_responses, sequence_kl
from preference_data import cached_log_probs, encode_pairs, pad_id_of, read_preference_pairs
from reward_model import load_reward_model
from rollouts import check_rollout_fits, decode_responses, sample_responses
from rule_judge import answers_by_question, judge

# method folder -> (the command that makes it, the column it optimizes)
METHODS = {
    "ppo": ("06_rlhf_dpo/ppo.py --run {run}", "rm_score"),
    "dpo": ("06_rlhf_dpo/dpo.py --run {run}", "pair_acc"),
    "ipo": ("06_rlhf_dpo/dpo.py --run {run} --loss ipo", "pair_acc"),
    "simpo": ("06_rlhf_dpo/dpo.py --run {run} --loss simpo", "pair_acc"),
    "grpo": ("06_rlhf_dpo/grpo.py --run {run}", "pass@1"),
    "rlaif": ("06_rlhf_dpo/rlaif.py --run {run}", "rm_score"),
}
COLUMNS = [
    "method",
    "win vs SFT [95% CI] (W/L/T)",
    "RM score",
    "KL to SFT",
    "pair acc",
    "pass@1",
    "length",
    "train s",
    "own metric",
    "SFT on it",
    "beats SFT",
]


@dataclass
class RLCompareConfig:
    run: str = option("", "run folder runs/<name> holding sft/ and the method folders")
    out: str = option("", "output folder; empty = <run>/rl_compare")
    methods: list = option(list(METHODS), f"method folders to compare, from {','.join(METHODS)}", sep=",")
    limit: int = option(100, "held-out preference pairs and arithmetic problems used (0 = all)", min=0)
    shots: int = option(1, "solved arithmetic examples before each problem (as grpo.py --shots)", min=0)
    max_new_tokens: int = option(24, "longest answer to a preference prompt", min=1)
    arith_tokens: int = option(
        10, "longest answer to an arithmetic problem (as grpo.py --max-new-tokens)", min=1
    )
    seed: int = option(1337, "seed of the sampled answers the KL is measured on")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the table already in the output folder")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(limit=4, shots=0, max_new_tokens=4, arith_tokens=4)}


def check_rl_compare_config(cfg: RLCompareConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder holding sft/ and the 06 method folders)")
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)}; choose from {','.join(METHODS)}")


# ----------------------------------------------------------------------------- the held-out set


def heldout_set(run, tok, cfg, block_size) -> dict:
    """The prompts every model answers: held-out preference pairs (with their rule and short answer) and
    arithmetic problems, cut to cfg.limit, plus the shots grpo.py shows."""
    pairs, _ = read_preference_pairs(task_file(run, "", "preference_heldout.jsonl"))
    kept = [
        (p, enc[0]) for p in pairs for enc in [encode_pairs(tok, [p], block_size)[0]] if enc
    ]  # fits the context
    kept = kept[: cfg.limit] if cfg.limit else kept
    pairs, encoded = [p for p, _ in kept], [e for _, e in kept]
    prompts = [e["prompt_ids"] for e in encoded]
    check_rollout_fits(prompts, cfg.max_new_tokens, block_size)
    sft_files = [RunLayout(run).tasks / f"sft_{part}.jsonl" for part in ("train", "heldout")]
    answers = answers_by_question([r for f in sft_files if f.is_file() for r in read_conversations(f)])
    train = read_problems(task_file(run, "", "arithmetic_train.jsonl"))
    problems = read_problems(task_file(run, "", "arithmetic_heldout.jsonl"))
    return {
        "pairs": pairs,
        "encoded": encoded,
        "prompts": prompts,
        "answers": answers,
        "shots": train[: cfg.shots],
        "problems": problems[: cfg.limit] if cfg.limit else problems,
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
    if sft_texts is not None:
        verdicts = [
            judge(p["rule"], a, b, p, held["answers"].get(p["prompt"][-1]["content"]))
            for p, a, b in zip(held["pairs"], texts, sft_texts)
        ]
        counts = {"wins": verdicts.count(1), "losses": verdicts.count(-1), "ties": verdicts.count(0)}
        row["win"] = {**win_rate(counts["wins"], counts["losses"], counts["ties"]), **counts}
        row["kl"] = sequence_kl(model, sft, tok, held["prompts"], cfg.max_new_tokens, cfg.seed)[
            "kl_per_response"
        ]
    if rm is not None:
        row["rm_score"] = reward_of_responses(rm, held["prompts"], responses, pad, device).mean().item()
    lp = cached_log_probs(model, held["encoded"], pad, device=device)
    key = "mean" if mean_logprob else "sum"
    row["pair_acc"] = (lp[f"chosen_{key}"] > lp[f"rejected_{key}"]).float().mean().item()
    arith = arithmetic_eval(
        model, tok, held["problems"], held["shots"], cfg.arith_tokens, n_samples=1, seed=cfg.seed
    )
    row["pass@1"] = arith["pass@1_greedy"]
    row["eval_s"] = time.time() - t0
    return row, texts


def table_row(name, r, sft_row, train_s) -> dict:
    """One markdown row: the numbers rounded, and the method's own metric against SFT's."""
    fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"
    win = r.get("win")
    row = {
        "method": name,
        "win vs SFT [95% CI] (W/L/T)": "-"
        if win is None
        else f"{win['win_rate']:.3f} [{win['low']:.2f}, {win['high']:.2f}] ({win['wins']}/{win['losses']}/{win['ties']})",
        "RM score": fmt(r.get("rm_score")),
        "KL to SFT": fmt(r.get("kl"), 2),
        "pair acc": fmt(r["pair_acc"]),
        "pass@1": fmt(r["pass@1"]),
        "length": fmt(r["length"], 1),
        "train s": fmt(train_s, 0),
    }
    if name in METHODS:
        own = METHODS[name][1]
        mine, base = r.get(own), sft_row.get(f"{own}_own_{name}", sft_row.get(own))
        row.update(
            {
                "own metric": own,
                "SFT on it": fmt(base),
                "beats SFT": "-" if mine is None or base is None else ("yes" if mine > base else "no"),
            }
        )
    return row


def plot(results, path):
    plt = pyplot()
    names = list(results)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    tuned = [n for n in names if "win" in results[n]]
    w = [results[n]["win"] for n in tuned]
    axes[0].bar(
        tuned,
        [x["win_rate"] for x in w],
        yerr=[[x["win_rate"] - x["low"] for x in w], [x["high"] - x["win_rate"] for x in w]],
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
        (axes[3], "pass@1", "arithmetic pass@1 (greedy)", "share solved"),
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
            check_artifact(folder, made_by="python " + METHODS[name][0].format(run=run))
            present[name] = folder
        else:
            missing.append(f"{name}: not run (`python {METHODS[name][0].format(run=run)}`)")
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
        sft_row["pair_acc_own_simpo"] = evaluate_pair_mean(sft, tok, held)
        results, train_s = {"sft": sft_row}, {"sft": None}
        for name, folder in present.items():
            model, model_tok = load_policy(folder / "ckpt.pt", device)
            check_same_model(sft, tok, model, model_tok, f"{folder}/ckpt.pt")
            results[name], _ = evaluate(
                model.eval(), sft, rm, tok, held, cfg, sft_texts, mean_logprob=name == "simpo"
            )
            train_s[name] = read_json(folder / "outcome.json").get("train_s")
            print(f"{name}: evaluated in {results[name]['eval_s']:.0f}s", flush=True)
        rows = [table_row(n, r, sft_row, train_s[n]) for n, r in results.items()]
        table = markdown_table(rows, COLUMNS)
        write_json(
            tmp / "compare.json",
            {
                "rows": rows,
                "results": results,
                "missing": missing,
                "n_pairs": len(held["pairs"]),
                "n_problems": len(held["problems"]),
                "config": asdict(cfg),
            },
        )
        write_json(tmp / "outcome.json", outcome_block(rows))
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
        f"held-out: {len(held['pairs'])} preference prompts, {len(held['problems'])} arithmetic problems; greedy answers"
    )
    print(table)
    for line in missing:
        print(line)
    print(f"wrote {out}/ (compare.json, compare.md, compare.png)")
    return {"rows": rows, "results": results, "missing": missing}


@torch.no_grad()
def evaluate_pair_mean(model, tok, held) -> float:
    """Pair accuracy by the per-token mean log-prob (SimPO's score), for SFT's entry in SimPO's row."""
    lp = cached_log_probs(model, held["encoded"], pad_id_of(tok), device=next(model.parameters()).device)
    return (lp["chosen_mean"] > lp["rejected_mean"]).float().mean().item()


def outcome_block(rows) -> dict:
    """{"headline", "bar"} of outcome.json (common/outcome.py): each method beats SFT on the metric it
    optimizes; the bar's value is the share of methods that do (all of them must)."""
    methods = [r for r in rows if r.get("beats SFT") in ("yes", "no")]
    wins = [r["method"] for r in methods if r["beats SFT"] == "yes"]
    headline = f"{len(wins)} of {len(methods)} methods beat SFT on their own metric" + (
        f" ({', '.join(wins)})" if wins else ""
    )
    bar = make_bar(
        "share of methods that beat SFT on the held-out metric they optimize",
        len(wins) / len(methods) if methods else None,
        threshold=1.0,
        direction="higher",
        inclusive=True,
        n=len(methods),
        baseline_name="the SFT policy",
        note="each method beats SFT on the metric it optimizes",
    )
    return {"headline": headline, "bar": bar}


def main(argv=None):
    cfg, _ = parse_config(RLCompareConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    compare_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
