"""How GRPO is measured: pass@1 and pass@k from k samples per held-out question, and the bar on them.

    rates = pass_rates(policy, tok, prompts, is_correct, k=8, max_new_tokens=12)
    texts, right = greedy_correct(policy, tok, prompts, is_correct)  # the greedy answers alone
    rates["pass@1"], rates["pass@8"], rates["greedy"]          # shares over the questions
    bar = sharpening_bar(before["per_item"], after["per_item"])  # ≥ 2×, ≥ +0.15, intervals apart
    curve_point = evaluate(policy, tok, task, heldout, cfg)        # what grpo.py records every eval_interval

pass@k is the chance that at least one of k answers sampled at temperature 1 is right. From n ≥ k samples
of which c are right, the unbiased estimate (Chen et al. 2021, 05's metrics.pass_at_k) is
    pass@k = 1 − C(n − c, k) / C(n, k)         (pass@1 = c / n)
pass@k − pass@1 is what RL can harvest: answers the model already finds, but not first. RL that works
raises pass@1 towards pass@k; it rarely raises pass@k itself (DeepSeekMath §5.2.2).

The bar (SCHEMA.md, common.outcome.make_bar) is the issue's goal, stated before the run: held-out pass@1
after GRPO at least 2× the starting model's AND at least +0.15 AND above the majority answer, and the two
95 % intervals (bootstrap over the questions) do not overlap. A model that did not move fails it, a
model that only moved within the noise fails it, and the majority answer fails it.

Interview questions it answers:
- pass@1 greedy or sampled? (sampled at temperature 1, estimated from k samples, is what the policy *is*;
  greedy is one deterministic answer: both are reported, the bar uses the sampled one)
- Why can pass@k fall while pass@1 rises? (sharpening: mass moves onto the answer the policy prefers,
  so on questions it gets wrong it stops sampling the right answer at all: less exploration)
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "05_sft_lora")]
from common.files import pyplot, save_figure
from common.outcome import make_bar
from common.stats import bootstrap_interval
from metrics import pass_at_k  # 05_sft_lora

from rollouts import decode_responses, sample_responses


@torch.no_grad()
def pass_rates(model, tok, prompts, is_correct, k=8, max_new_tokens=12, seed=0) -> dict:
    """{"pass@1", "pass@k" (k samples at temperature 1 per prompt), "greedy" (share right), "per_item"
    (each prompt's sampled pass@1 = c/k), "greedy_correct" (0/1 per prompt), "k", "n", "examples"}.
    is_correct(prompt_index, text) -> bool."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    sampled = decode_responses(tok, sample_responses(model, tok, prompts, k, max_new_tokens, 1.0, g))
    greedy, right = greedy_correct(model, tok, prompts, is_correct, max_new_tokens)
    counts = [sum(is_correct(i, sampled[i * k + j]) for j in range(k)) for i in range(len(prompts))]
    n = len(prompts)
    return {
        "pass@1": sum(pass_at_k(k, c, 1) for c in counts) / n,
        f"pass@{k}": sum(pass_at_k(k, c, k) for c in counts) / n,
        "greedy": sum(right) / n,
        "per_item": [c / k for c in counts],
        "greedy_correct": right,
        "k": k,
        "n": n,
        "examples": [{"greedy": greedy[i], "sampled": sampled[i * k : i * k + 3]} for i in range(min(n, 3))],
    }


@torch.no_grad()
def greedy_correct(model, tok, prompts, is_correct, max_new_tokens=12) -> tuple:
    """(texts, right): each prompt's greedy answer (temperature 0) and 1.0 where is_correct(i, text), else
    0.0. pass_rates' greedy column, and rl_compare.py's pass@1 columns for every method."""
    texts = decode_responses(tok, sample_responses(model, tok, prompts, 1, max_new_tokens, temperature=0))
    return texts, [float(is_correct(i, t)) for i, t in enumerate(texts)]


def interval(values) -> list:
    """95 % bootstrap interval of the mean of per-question scores."""
    return [round(x, 4) for x in bootstrap_interval(values)]


def sharpening_bar(before, after, majority=0.0, what="held-out pass@1 (sampled)") -> dict:
    """The goal as a bar: mean(after) ≥ max(2·mean(before), mean(before) + 0.15, majority) and the 95 %
    intervals of before and after do not overlap. before/after: per-question pass@1 on the same questions."""
    b, a = sum(before) / len(before), sum(after) / len(after)
    lo_b, hi_b = interval(before)
    lo_a, hi_a = interval(after)
    threshold = max(2 * b, b + 0.15, majority)
    bar = make_bar(
        f"{what} after GRPO (goal: >= 2x the start, >= +0.15, intervals apart)",
        a,
        threshold=round(threshold, 4),
        direction="higher",
        baseline=b,
        baseline_name="the model GRPO started from",
        interval=None,
        n=len(after),
        inclusive=True,
        note=(
            f"start {b:.3f} [{lo_b:.3f}, {hi_b:.3f}] -> GRPO {a:.3f} [{lo_a:.3f}, {hi_a:.3f}]; "
            f"majority answer {majority:.3f}; intervals {'apart' if lo_a > hi_b else 'overlap'}"
        ),
    )
    bar["interval"] = [lo_a, hi_a]
    bar["passed"] = bool(bar["passed"] and lo_a > hi_b)
    return bar


def evaluate(policy, tok, task, heldout, cfg) -> dict:
    """grpo_eval.pass_rates over the held-out questions, with the keys rl_compare and the report read."""
    prompts = [task["prompt"](p) for p in heldout]
    r = pass_rates(
        policy,
        tok,
        prompts,
        lambda i, text: task["correct"](heldout[i], text),
        cfg.eval_samples,
        cfg.max_new_tokens,
        cfg.seed,
    )
    k = cfg.eval_samples
    return {
        "pass@1_sampled": r["pass@1"],
        "pass@1_sampled_interval": interval(r["per_item"]),
        f"pass@{k}": r[f"pass@{k}"],
        "pass@1_greedy": r["greedy"],
        "pass@1_greedy_interval": interval(r["greedy_correct"]),
        "per_item": r["per_item"],
        "greedy_correct": r["greedy_correct"],
        "n": r["n"],
        "examples": [
            {"question": p["prompt"], "answer": p["answer"], **e} for p, e in zip(heldout, r["examples"])
        ],
    }


def plot(records, curve, k, path, ablation=None):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in records]
    ax1.plot(steps, [r["reward_mean"] for r in records], lw=1, label="mean reward of the rollouts (train)")
    ax1.plot(steps, [r["kl"] for r in records], lw=1, label="k3 KL to the reference (per token)")
    ax1.plot(
        steps,
        [1 - r["frac_zero_std_groups"] for r in records],
        lw=1,
        alpha=0.6,
        label="share of groups with a nonzero advantage",
    )
    ax1.set(xlabel="step", title="GRPO on the training questions")
    ax1.legend()
    xs = [c["step"] for c in curve]
    for key, style in (("pass@1_sampled", "o-"), (f"pass@{k}", "s--"), ("pass@1_greedy", "^:")):
        ax2.plot(xs, [c[key] for c in curve], style, label=key.replace("_sampled", " (sampled)"))
    lo, hi = zip(*(c["pass@1_sampled_interval"] for c in curve))
    ax2.fill_between(xs, lo, hi, alpha=0.2)
    for name, c in (ablation or {}).items():
        ax2.plot(
            [p["step"] for p in c], [p["pass@1_sampled"] for p in c], lw=1, alpha=0.6, label=f"pass@1, {name}"
        )
    ax2.set(
        xlabel="step", ylabel="share of held-out questions", ylim=(0, 1), title="held-out pass@1 and pass@k"
    )
    ax2.legend(fontsize=8)
    save_figure(fig, path)


def ablation_table(rows, k) -> str:
    """Markdown: one row per variant, pass@1 at the start and the end with intervals, pass@k, KL."""
    lines = [
        f"| variant | β_KL | ε | pass@1 start | pass@1 end [95 %] | pass@{k} end | greedy end | KL/token (last step) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lo, hi = r["end"]["pass@1_sampled_interval"]
        lines.append(
            f"| {name} | {r['kl_coef']:g} | {r['clip_eps']:g} | {r['start']['pass@1_sampled']:.3f} | "
            f"{r['end']['pass@1_sampled']:.3f} [{lo:.3f}, {hi:.3f}] | {r['end'][f'pass@{k}']:.3f} | "
            f"{r['end']['pass@1_greedy']:.3f} | {r['kl']:.3f} |"
        )
    return "\n".join(lines) + "\n"
