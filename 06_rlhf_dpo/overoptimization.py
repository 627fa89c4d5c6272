"""The reward over-optimization lab: optimize against a proxy reward model, watch the gold reward.

    python 06_rlhf_dpo/overoptimization.py --run runs/tiny          # after reward_model.py and ppo.py
    python 06_rlhf_dpo/overoptimization.py --run runs/tiny --samples 64

Reads runs/<name>/sft/ (05), rm/ (the proxy, reward_model.py), ppo/outcome.json (the gold and proxy
reward of each PPO checkpoint, ppo.py) and data/tasks/preference_heldout.jsonl (01); writes
runs/<name>/overopt/: outcome.json, table.md, overopt.png, manifest.json.

Gao, Schulman and Hilton (2022) asked what happens to the *true* reward when a policy is optimized
against a *learned* one. Here the world knows the truth (gold_reward.py): the gold reward is the rule
judge (the answer states the fact, politely, concisely); the proxy is the reward model, trained on a
few hundred preference pairs. Two optimizers push the proxy, each measured by its KL from the SFT model:

- best-of-n: sample `samples` answers per held-out prompt from the SFT model (T = 1) once; for every
  n = 1, 2, 4, ... the expected gold and proxy reward of the proxy's favourite among n (gold_reward.
  best_of_n, unbiased), at KL_bon = log n − (n − 1)/n;
- PPO: its checkpoints (ppo.py evaluates each on the same held-out prompts: sampled answers, KL from SFT
  estimated on them).

Beside them, the cheapest optimizer with no reward model at all: the **length rule**, the shortest of n
of the same samples (`length_rule_curve`, the same estimator with −length as the score). The gold
reward counts concision, so a proxy that had only learnt "shorter is better" would climb the gold as
far as the rule does; best-of-n is worth its reward model only where it beats the rule at the same n.

The table and the plot put gold and proxy against √KL. The anchor: the proxy keeps rising with KL while
the gold reward rises, peaks and falls - the policy has found what the reward model likes and the rule
does not. Whether it falls in the budget here is measured, not assumed: "falls" means best-of-N's gold
minus the peak's is below 0 with a paired 95 % interval over the prompts.

The bar: the proxy is worth optimizing at all - best-of-n's gold at the largest n minus each of two
baselines, paired over the held-out prompts: the SFT model's own samples (n = 1) and the length rule's
shortest of the same n. Both intervals must lie above 0; the bar shows the one nearer to failing. A
proxy that ranked answers at random would leave the gold where it is and fail; one that only preferred
short answers would tie the length rule and fail.

Interview questions it answers:
- What is Goodhart's law in RLHF? (a reward model is right only near the data it was trained on; push
  the policy far enough and it exploits the model's errors: proxy up, true quality down)
- Why measure optimization in KL rather than steps? (steps, n and learning rates are not comparable
  across methods; KL from the starting policy is how far the distribution moved, for any optimizer)
- What defends against over-optimization? (a KL penalty or early stopping at the gold peak, a larger
  reward model or more preference data, ensembles of reward models, fresh labels on the policy's own
  outputs as in iterated RLHF)
"""

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, check_config, command_line, option, parse_config, run_cli
from common.devices import resolve_device
from common.files import atomic_write_text, pyplot, read_json, save_figure, write_json
from common.layout import RunLayout, task_file
from common.outcome import make_bar
from common.runs import check_artifact, fresh_output, write_manifest
from common.stats import paired_bootstrap_interval

from alignment_bars import short_answers
from gold_reward import best_of_n, bon_kl, gold_scores, prompt_groups, sampled_answers
from policy_io import frozen, load_sft_policy
from preference_data import encode_response, pad_id_of, read_preference_pairs
from reward_scoring import load_reward_model, reward_of_responses
from rollouts import check_rollout_fits, decode_responses


@dataclass
class OveroptConfig:
    run: str = option("", "run folder runs/<name>: reads sft/, rm/, ppo/ and data/tasks/")
    out: str = option("", "output folder; empty = <run>/overopt")
    reward_model: str = option("", "the proxy: a reward-model checkpoint; empty = <run>/rm/rm.pt")
    ppo: list = option(
        [],
        "ppo.py output folders whose checkpoints join the table; empty = <run>/ppo/, 'none' = skip",
        sep=",",
    )
    heldout_file: str = option("", "prompts; empty = <run>/data/tasks/preference_heldout.jsonl")
    eval_limit: int = option(200, "held-out prompts (0 = all)", min=0)
    samples: int = option(32, "N: answers sampled per prompt from the SFT model; best-of-n for n ≤ N", min=2)
    max_new_tokens: int = option(24, "longest answer", min=1)
    seed: int = option(1337, "seed of the sampling")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(eval_limit=4, samples=4, max_new_tokens=6)}


def check_overopt_config(cfg: OveroptConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder reward_model.py wrote rm/ into)")


def n_values(samples: int) -> list:
    """1, 2, 4, ... up to `samples`, and `samples` itself."""
    ns = [1]
    while ns[-1] * 2 <= samples:
        ns.append(ns[-1] * 2)
    return ns + ([samples] if ns[-1] != samples else [])


def per_prompt_best_of_n(proxy, gold, n) -> list:
    """best_of_n for each prompt on its own (its row), for paired intervals over prompts."""
    return [best_of_n(proxy[i : i + 1], gold[i : i + 1], n) for i in range(len(proxy))]


def best_of_n_curve(proxy, gold, score=None, method="best-of-n") -> list:
    """Rows {"method", "n", "kl", "sqrt_kl", "proxy", "gold", "per_prompt_gold"} for n in n_values: the
    answer that `score` (default: the proxy itself) ranks highest among n, its proxy and gold reward."""
    score = proxy if score is None else score
    rows = []
    for n in n_values(proxy.shape[1]):
        kl = bon_kl(n)
        rows.append(
            {
                "method": method,
                "n": n,
                "kl": kl,
                "sqrt_kl": kl**0.5,
                "proxy": best_of_n(score, proxy, n),
                "gold": best_of_n(score, gold, n),
                "per_prompt_gold": per_prompt_best_of_n(score, gold, n),
            }
        )
    return rows


def length_rule_curve(proxy, gold, lengths) -> list:
    """The length rule's rows: the shortest answer (in tokens) among n of the same samples, for each n.
    Equal lengths are ordered by sample index, an order independent of the answers (they are i.i.d.), so
    the estimator stays unbiased; KL_bon is then the KL of that strict order's best-of-n, as for the proxy."""
    return best_of_n_curve(
        proxy, gold, score=-np.asarray(lengths, dtype=float), method="length rule (shortest of n)"
    )


def peak_and_fall(rows) -> dict:
    """Where the gold peaks along the best-of-n curve, and whether it falls after: the last n's gold
    minus the peak's, paired over prompts with a 95 % interval ("falls" when wholly below 0)."""
    peak = max(rows, key=lambda r: r["gold"])
    last = rows[-1]
    diff = np.mean(last["per_prompt_gold"]) - np.mean(peak["per_prompt_gold"])
    lo, hi = paired_bootstrap_interval(last["per_prompt_gold"], peak["per_prompt_gold"])
    proxy_rises = all(b["proxy"] >= a["proxy"] for a, b in zip(rows, rows[1:]))
    return {
        "peak_n": peak["n"],
        "peak_gold": peak["gold"],
        "peak_sqrt_kl": peak["sqrt_kl"],
        "last_n": last["n"],
        "last_minus_peak": float(diff),
        "interval": [lo, hi],
        "falls": bool(hi < 0),
        "proxy_rises": proxy_rises,
    }


def overopt_bar(rows, length_rows) -> dict:
    """Best-of-n's gold at the largest n minus each baseline's, paired over the held-out prompts: the SFT
    samples (n = 1) and the length rule's shortest of the same n. It passes only when both intervals lie
    above 0; the bar reports the baseline whose interval's lower end is lowest (the one nearer to failing),
    every comparison in "against". The n is fixed in advance, not the best on these prompts: picking the
    best of five n on the prompts that judge it would report the luckiest."""
    best, n = rows[-1], rows[-1]["n"]
    rule = next(r for r in length_rows if r["n"] == n)
    baselines = {"SFT samples (best-of-1)": rows[0], f"length rule (shortest of {n})": rule}
    against = {
        name: {
            "gold": b["gold"],
            "value": best["gold"] - b["gold"],
            "interval": list(paired_bootstrap_interval(best["per_prompt_gold"], b["per_prompt_gold"])),
        }
        for name, b in baselines.items()
    }
    hardest = min(against, key=lambda k: against[k]["interval"][0])
    others = "; ".join(
        f"minus {k} {v['value']:+.3f} [{v['interval'][0]:+.3f}, {v['interval'][1]:+.3f}]"
        for k, v in against.items()
    )
    bar = make_bar(
        f"held-out gold reward: best-of-{n} against the proxy minus the SFT samples and the length rule's "
        f"shortest of {n} (paired; both must be above 0)",
        against[hardest]["value"],
        threshold=0.0,
        direction="higher",
        baseline=against[hardest]["gold"],
        baseline_name=hardest,
        interval=against[hardest]["interval"],
        n=len(best["per_prompt_gold"]),
        note=f"{others}; the largest n of the curve (fixed in advance; the whole curve is in the outcome); "
        "gold = rule judge (fact, politeness, concision), proxy = reward model",
    )
    return {**bar, "against": against}


def ppo_rows(folder) -> list:
    """PPO's checkpoints from <folder>/outcome.json: rows like best_of_n_curve's (no per-prompt gold),
    the method named by its learning rate and KL coefficient (from the manifest's config)."""
    path = Path(folder) / "outcome.json"
    o = read_json(path)
    config = read_json(Path(folder) / "manifest.json").get("config", {})
    name = (
        f"PPO (lr {config['lr']:g}, β {config['kl_coef']:g})" if {"lr", "kl_coef"} <= set(config) else "PPO"
    )
    if "curve" not in o:
        raise UserError(f"{path}: no 'curve' of checkpoints (an older ppo.py); rerun 06_rlhf_dpo/ppo.py")
    return [
        {
            "method": name,
            "n": f"step {r['step']}",
            "kl": r["kl_sft"],
            "sqrt_kl": max(r["kl_sft"], 0.0) ** 0.5,
            "proxy": r["proxy"],
            "gold": r["gold"],
        }
        for r in o["curve"]
    ]


def table(rows) -> str:
    lines = [
        "| method | n / step | KL from SFT (nats) | √KL | proxy (reward model) | gold (rule judge) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['n']} | {r['kl']:.3f} | {r['sqrt_kl']:.3f} | {r['proxy']:+.3f} | {r['gold']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows, path):
    plt = pyplot()
    fig, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(11, 4))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method, marker in zip(methods, ["o-", "s--", "^--", "v--", "d--"]):
        rs = [r for r in rows if r["method"] == method]
        if rs:
            x = [r["sqrt_kl"] for r in rs]
            ax_gold.plot(x, [r["gold"] for r in rs], marker, label=method)
            ax_proxy.plot(x, [r["proxy"] for r in rs], marker, label=method)
    for r in rows:
        if r["method"] == "best-of-n":
            ax_gold.annotate(f"n={r['n']}", (r["sqrt_kl"], r["gold"]), fontsize=7)
    ax_gold.set(
        xlabel="√KL from SFT (√nats)", ylabel="gold reward (rule judge)", title="gold (never optimized)"
    )
    ax_proxy.set(
        xlabel="√KL from SFT (√nats)", ylabel="proxy score (reward model)", title="proxy (optimized)"
    )
    ax_gold.legend()
    ax_proxy.legend()
    save_figure(fig, path)


def sampled_rewards(policy, rm, tok, prompts, question_groups, answers, cfg, device) -> tuple:
    """(proxy, gold, lengths), each (prompts, N): cfg.samples answers per prompt from the SFT model at T = 1,
    scored by the reward model and by the rule judge, and their lengths in tokens (the length rule's score)."""
    N = cfg.samples
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    responses = sampled_answers(policy, tok, prompts, N, cfg.max_new_tokens, g)
    rows = [p for p in prompts for _ in range(N)]
    proxy = reward_of_responses(rm, rows, responses, pad_id_of(tok), device).numpy().reshape(-1, N)
    groups = [grp for grp in question_groups for _ in range(N)]
    gold = np.array(gold_scores(decode_responses(tok, responses), groups, answers)).reshape(-1, N)
    return proxy, gold, np.array([len(r) for r in responses]).reshape(-1, N)


def overopt_run(cfg: OveroptConfig, argv=None) -> dict:
    """Best-of-n against the proxy, PPO's checkpoints beside it; writes <out>/ and returns the outcome."""
    check_overopt_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else RunLayout(run).root / "overopt"
    policy, tok = load_sft_policy(run, device)
    if cfg.reward_model:
        rm_path = Path(cfg.reward_model)
    else:
        check_artifact(RunLayout(run).rm, made_by=RunLayout(run).made_by("rm"))
        rm_path = RunLayout(run).rm / "rm.pt"
    rm = frozen(load_reward_model(rm_path, tok, device))
    ppo_dirs = [] if cfg.ppo == ["none"] else [Path(p) for p in cfg.ppo] or [RunLayout(run).ppo]
    for d in ppo_dirs:
        check_artifact(d, made_by=RunLayout(run).made_by("ppo"))
    held_path = task_file(run, cfg.heldout_file, "preference_heldout.jsonl")
    pairs = read_preference_pairs(held_path)[0]
    chats, question_groups = prompt_groups(pairs, cfg.eval_limit)
    prompts = [encode_response(tok, c, "")[0] for c in chats]
    check_rollout_fits(prompts, cfg.max_new_tokens, policy.cfg.block_size)
    answers = short_answers(run)
    N = cfg.samples
    ppo = [row for d in ppo_dirs for row in ppo_rows(d)]  # read first: a bad file stops before any work
    with fresh_output(out, cfg.overwrite) as tmp:  # claimed before the first sample
        t0 = time.time()
        proxy, gold, lengths = sampled_rewards(
            policy, rm, tok, prompts, question_groups, answers, cfg, device
        )
        rows = best_of_n_curve(proxy, gold)
        length_rows = length_rule_curve(proxy, gold, lengths)
        bar = overopt_bar(rows, length_rows)
        strip = lambda rs: [{k: v for k, v in r.items() if k != "per_prompt_gold"} for r in rs]
        outcome = {
            "bar": bar,
            "best_of_n": strip(rows),
            "length_rule": strip(length_rows),
            "ppo": ppo,
            "shape": peak_and_fall(rows),
            "prompts": len(prompts),
            "samples": N,
            "correlation": float(np.corrcoef(proxy.ravel(), gold.ravel())[0, 1]) if gold.std() > 0 else None,
            "seconds": time.time() - t0,
            "device": device,
            "reward_model": os.path.relpath(rm_path, out),
        }
        outcome["headline"] = headline(outcome)
        md = table(rows + length_rows + ppo)
        atomic_write_text(tmp / "table.md", md)
        write_json(tmp / "outcome.json", outcome)
        plot(rows + length_rows + ppo, tmp / "overopt.png")
        write_manifest(
            tmp,
            stage="06_rlhf_dpo",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=[
                RunLayout(run).sft,
                rm_path if cfg.reward_model else RunLayout(run).rm,
                *ppo_dirs,
                held_path if cfg.heldout_file else RunLayout(run).data,
            ],
        )
    print(md, end="")
    print(words(outcome))
    lo, hi = bar["interval"]
    print(
        f"bar: {bar['metric']}: {bar['value']:+.3f} [{lo:+.3f}, {hi:+.3f}] (n={bar['n']}): "
        f"{'PASS' if bar['passed'] else 'FAIL'}"
    )
    print(
        f"overopt: {len(prompts)} prompts x {N} samples in {outcome['seconds']:.0f}s; wrote {out}/ (overopt.png)"
    )
    return outcome


def words(o) -> str:
    """The plot in a sentence: does the gold peak and fall while the proxy keeps rising?"""
    s = o["shape"]
    lo, hi = s["interval"]
    proxy = "keeps rising" if s["proxy_rises"] else "does not rise monotonically"
    if s["falls"]:
        gold = (
            f"the gold peaks at n={s['peak_n']} (√KL {s['peak_sqrt_kl']:.2f}, {s['peak_gold']:.3f}) and falls by "
            f"n={s['last_n']} ({s['last_minus_peak']:+.3f} [{lo:+.3f}, {hi:+.3f}]): over-optimization"
        )
    elif s["peak_n"] == s["last_n"]:
        gold = f"the gold is highest at the largest n={s['last_n']}: no peak within {s['last_n']} samples"
    else:
        gold = (
            f"the gold is highest at n={s['peak_n']} ({s['peak_gold']:.3f}) but n={s['last_n']} is not "
            f"measurably lower ({s['last_minus_peak']:+.3f} [{lo:+.3f}, {hi:+.3f}]): no significant fall"
        )
    return f"best-of-n against the proxy: the proxy {proxy} with n; {gold}."


def headline(o) -> str:
    b, s = o["bar"], o["shape"]
    vs = "; ".join(
        f"{v['value']:+.3f} [{v['interval'][0]:+.3f}, {v['interval'][1]:+.3f}] over {k}"
        for k, v in b["against"].items()
    )
    return (
        f"best-of-{o['best_of_n'][-1]['n']}: gold {o['best_of_n'][0]['gold']:.3f} -> {o['best_of_n'][-1]['gold']:.3f} "
        f"({vs}): {'PASS' if b['passed'] else 'FAIL'}; gold peaks at n={s['peak_n']}, "
        f"{'falls' if s['falls'] else 'no significant fall'} by n={s['last_n']}"
    )


def main(argv=None):
    cfg, _ = parse_config(OveroptConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    overopt_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
