"""How a PPO run is judged: by the gold reward of its answers to held-out prompts, never by the proxy.

    from ppo_outcome import greedy_reward, ppo_bars, plot, report

PPO maximizes a reward model's score (the *proxy*), so that score says nothing about whether the policy
got better: it can only rise. The world knows the truth, so each evaluated checkpoint is also scored by
the rule judge (the *gold* reward: right fact, polite, concise; gold_reward.py), on held-out prompts.
The bars are the gold reward of the checkpoint chosen on *training* prompts minus the strongest
baseline's (SFT before PPO, the majority answer), paired over the held-out prompts; the proxy is
printed beside it, never judged. The plot puts both against √KL from SFT, the view of Gao, Schulman and
Hilton (2022) in which the proxy keeps rising while the gold reward peaks and falls.

Run it through ppo.py (`python 06_rlhf_dpo/ppo.py --run runs/tiny`); nothing here is a command.

Interview questions it answers:
- Why is "the reward went up" no evidence that RLHF worked? (the policy is optimized against that very
  model; only a reward it was not trained on, here the rule judge, can fail)
- How do you choose the checkpoint without peeking at the test set? (by the gold reward on training
  prompts; the held-out prompts are scored once, for the chosen step and the baselines)
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.files import pyplot, save_figure

from alignment_bars import paired_bar
from preference_data import pad_id_of
from reward_scoring import reward_of_responses
from rollouts import decode_responses, sample_responses


@torch.no_grad()
def greedy_reward(policy, rm, tok, prompts, max_new_tokens) -> dict:
    """Mean reward-model score and length of the greedy responses to `prompts` (token-id lists)."""
    device = next(policy.parameters()).device
    responses = sample_responses(policy, tok, prompts, 1, max_new_tokens, temperature=0)
    scores = reward_of_responses(rm, prompts, responses, pad_id_of(tok), device)
    return {
        "reward": scores.mean().item(),
        "response_tokens": sum(map(len, responses)) / len(responses),
        "answers": decode_responses(tok, responses),  # for the gold judge; not written to the outcome
    }


def plot(records, path):
    """Left: the rollouts' proxy score and KL; middle: the optimizer's health; right: held-out gold and
    proxy reward of each evaluated checkpoint against its KL from SFT (the over-optimization view)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    train = [r for r in records if r["step"] > 0]
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["reward"] for r in train], label="proxy score of the rollouts")
    axes[0].plot(steps, [r["kl"] for r in train], label="KL to π_ref of the rollouts (nats)")
    axes[0].set(xlabel="iteration", title="PPO rollouts")
    axes[0].legend()
    for key in ("clip_fraction", "approx_kl", "value_loss"):
        axes[1].plot(steps, [r[key] for r in train], label=key)
    axes[1].set(xlabel="iteration", title="optimization")
    axes[1].legend()
    ev = [r for r in records if "gold" in r]
    x = [max(r["kl_sft"], 0.0) ** 0.5 for r in ev]
    axes[2].plot(x, [r["gold"] for r in ev], "o-", c="C2", label="gold (rule judge)")
    twin = axes[2].twinx()
    twin.plot(x, [r["proxy"] for r in ev], "s--", c="C1", label="proxy (reward model)")
    twin.set_ylabel("proxy score")
    axes[2].set(xlabel="√KL from SFT (√nats)", ylabel="gold reward", title="held-out, sampled (T = 1)")
    axes[2].legend(loc="upper left")
    twin.legend(loc="lower right")
    save_figure(fig, path)


def ppo_bars(curve, best, per_prompt, greedy, majority) -> list:
    """[main bar, greedy bar]: the GOLD reward of the selected checkpoint minus the strongest baseline's,
    paired over the held-out prompts. Main: the graded gold reward of sampled answers (the policy's
    expected gold reward, the quantity PPO's objective is about); second: the greedy answer accepted under
    every rule (a different decoding, reported beside). per_prompt: step -> per-prompt gold; greedy:
    {"PPO", "SFT"} -> per-prompt acceptance; majority: {"gold", "acceptance"} of the majority answer."""
    name = f"PPO (step {best['step']})"
    note = (
        f"checkpoint chosen by the gold reward on training prompts (step {best['step']} of "
        f"{[r['step'] for r in curve]}), never by the held-out prompts; the proxy (reward model) score "
        "is reported beside it, never judged"
    )
    sampled = paired_bar(
        f"held-out gold reward (rule judge of fact, politeness, concision; {curve[0]['samples']} answers "
        "per prompt sampled at T = 1)",
        name,
        per_prompt[best["step"]],
        {"SFT (before PPO)": per_prompt[0], "majority answer": majority["gold"]},
        note=note,
    )
    greedy_bar = paired_bar(
        "held-out gold rule-judge acceptance (greedy)",
        name,
        greedy["PPO"],
        {"SFT (before PPO)": greedy["SFT"], "majority answer": majority["acceptance"]},
        note=note,
    )
    return [sampled, greedy_bar]


def report(o, final_step, out):
    print(
        "held-out rewards of each evaluated checkpoint (sampled at T = 1; the curve of overoptimization.py):"
    )
    print("  step | √KL from SFT | proxy (reward model) | gold (rule judge) | gold on training prompts")
    for r in o["curve"]:
        star = " <- chosen" if r["step"] == o["best_step"] else ""
        print(
            f"  {r['step']:4d} | {max(r['kl_sft'], 0) ** 0.5:12.2f} | {r['proxy']:+20.3f} | {r['gold']:17.3f} | "
            f"{r['select_gold']:.3f}{star}"
        )
    b, a = o["heldout_before"], o["heldout_after"]
    print(
        f"greedy: reward-model score {b['reward']:+.3f} -> {a['reward']:+.3f}, {a['response_tokens']:.1f} tokens, "
        f"KL to SFT {a['kl_per_response']:.3f} nats per response"
    )
    d = o["gold_minus_sft"]
    print(
        f"held-out gold reward (sampled): PPO minus SFT {d['value']:+.3f} "
        f"[{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}] (paired, n={d['n']})"
    )
    for bar in o["bars"]:
        lo, hi = bar["interval"]
        print(
            f"bar: {bar['metric'].split(':')[0]}: PPO minus {bar['baseline_name']} {bar['value']:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}] (paired, n={bar['n']}): {'PASS' if bar['passed'] else 'FAIL'}"
        )
    print(
        f"ppo: {final_step} iterations in {o['train_s']:.0f}s (checkpoint of step {o['best_step']}); wrote {out}/"
    )
