"""GRPO: reinforcement learning with a verifiable reward, the group's mean as the baseline, no value model.

    python 06_rlhf_dpo/grpo.py --run runs/tiny
    python 06_rlhf_dpo/grpo.py --run runs/tiny --group-size 16 --no-std-normalize --length-norm constant   # Dr. GRPO

Reads runs/<name>/sft/ (05) and data/tasks/arithmetic_{train,heldout}.jsonl (01); writes runs/<name>/grpo/:
ckpt.pt, outcome.json, metrics.jsonl, grpo.png (the reward curve), manifest.json.

One step, for a batch of word problems (prompts) q:
1. Rollouts: G answers o_1..o_G per prompt sampled from π_old (the current policy) at temperature 1.
2. Reward, checked, not learnt: r = 1[last number in o = answer] + format_weight · 1[o is "The answer is N."].
3. Advantages within each group (rl_common.group_normalized_advantages): A_i = (r_i − mean r) / (std r + eps),
   the same A_i for every token of o_i. A group whose answers all score the same teaches nothing (A = 0).
4. Loss per token (rl_common): the clipped surrogate plus the k3 KL to the frozen SFT model,
       L_t = −min(ρ_t A_i, clip(ρ_t, 1 − ε, 1 + ε) A_i) + β_KL · (e^{r_t} − r_t − 1),   r_t = log π_ref − log π
   averaged over each response's tokens (or divided by max_new_tokens: --length-norm constant, Dr. GRPO),
   then over responses; `epochs` passes over the rollouts (ρ ≠ 1 from the second on, where clipping acts).

The prompt shows `shots` solved problems first ("The answer is N." as the assistant's reply): 05's SFT
data has no arithmetic, so without one example of the format the SFT model would never produce it, every
group would score 0 and there would be nothing to learn from. The same prompt is used before and after,
and in rl_compare.py, for every model.

Measured on held-out problems (held out by wording and number range, 01's tasks.py), before and after:
pass@1 (greedy answer correct, with its Wilson interval) and pass@1 estimated from `eval_samples`
samples at temperature 1 (05's unbiased pass_at_k with k = 1), the mean reward and the share of answers
in the format. The bar (outcome.json "bar", alignment_bars.paired_bar): greedy pass@1 after GRPO minus
the stronger of SFT's and the majority answer's, paired over the problems, 95 % interval above 0.

Interview questions it answers:
- Why no value model? (the group mean of G sampled answers to the same prompt is a baseline for free;
  a value network as large as the policy costs memory and is hard to fit for sparse end-of-answer rewards)
- What does dividing by the group's std do? (weights prompts by how unsure the model is; Dr. GRPO argues it
  over-weights very easy and very hard prompts and drops it, `--no-std-normalize`)
- Why the KL term in the loss rather than in the reward (as PPO does)? (it regularizes directly with an
  unbiased, non-negative estimator instead of entering the advantage)
- Why can a verifiable reward still be hacked? (a format reward alone is learnt first; the last-number rule
  is met by any text ending in the right number; the reward says what it checks, nothing more)
"""

import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain"), str(REPO / "05_sft_lora")]
from common.cli import (
    UserError,
    check_config,
    command_line,
    option,
    parse_config,
    run_cli,
    set_interrupt_hint,
)
from common.files import pyplot, save_figure, write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.runs import fresh_output, write_manifest
from common.devices import resolve_device
from divergence import DivergenceGuard  # 03_model
from optimizers import clip_grad_norm, make_optimizer, param_groups  # 04_pretrain

from policy_io import check_finite, load_reference, load_sft_policy, method_headline, save_policy
from preference_data import pad_id_of
from rl_common import (
    PG_LOSSES,
    group_normalized_advantages,
    k3_kl,
    masked_mean,
    microbatch_train_step,
    policy_gradient_loss,
    response_log_probs,
)
from rollouts import check_rollout_fits, rollout_batch, sample_responses, truncated
from alignment_bars import paired_bar
from arithmetic_task import arithmetic_eval, arithmetic_reward, problem_prompt, read_problems


@dataclass
class GRPOConfig:
    run: str = option("", "run folder runs/<name>: reads sft/ (05) and data/tasks/arithmetic_*.jsonl (01)")
    out: str = option("", "output folder; empty = <run>/grpo")
    train_file: str = option(
        "", "problems JSONL {prompt, answer}; empty = <run>/data/tasks/arithmetic_train.jsonl"
    )
    heldout_file: str = option("", "held-out problems; empty = <run>/data/tasks/arithmetic_heldout.jsonl")
    reference: str = option("", "π_ref checkpoint; empty = a frozen copy of the SFT model")
    shots: int = option(1, "solved problems shown before each question (taken from the train file)", min=0)
    steps: int = option(25, "GRPO steps (each: rollouts, then `epochs` passes of updates)", min=1)
    prompts_per_step: int = option(8, "problems per step", min=1)
    group_size: int = option(8, "answers sampled per problem, G (>= 2)", min=0)
    max_new_tokens: int = option(10, "longest answer", min=1)
    temperature: float = option(1.0, "sampling temperature of the rollouts", min=0.0)
    loss_type: str = option("grpo_clip", "per-token policy-gradient loss", choices=PG_LOSSES)
    std_normalize: bool = option(True, "divide advantages by the group's std (--no-std-normalize: Dr. GRPO)")
    length_norm: str = option(
        "mean",
        "per response: mean over its tokens, or sum / max_new_tokens (Dr. GRPO)",
        choices=("mean", "constant"),
    )
    clip_eps: float = option(0.2, "clip range ε of the ratio", min=0.0)
    kl_coef: float = option(0.04, "β_KL: weight of the k3 KL to the reference", min=0.0)
    epochs: int = option(2, "passes over each step's rollouts", min=1)
    micro_batch: int = option(
        32, "responses per forward/backward (gradient accumulation over the rest)", min=1
    )
    lr: float = option(2e-5, "AdamW learning rate", min=0.0)
    format_weight: float = option(0.5, "reward for answering exactly 'The answer is N.'", min=0.0)
    eval_limit: int = option(200, "held-out problems evaluated (0 = all)", min=0)
    eval_samples: int = option(4, "samples per held-out problem for the sampled pass@1", min=1)
    save_interval: int = option(10, "steps between checkpoints", min=1)
    seed: int = option(1337, "seed for the problem order and the sampling")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(
        shots=0,
        steps=2,
        prompts_per_step=2,
        group_size=2,
        max_new_tokens=4,
        micro_batch=4,
        eval_limit=4,
        eval_samples=1,
        save_interval=1,
    ),
}


def check_grpo_config(cfg: GRPOConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 05_sft_lora wrote sft/ into)")
    if cfg.group_size < 2:
        raise UserError(
            f"--group-size {cfg.group_size}: GRPO's baseline is the mean of the other answers to the "
            "same problem, so it needs at least 2; pass --group-size 2 or more (8 is usual)"
        )


# ----------------------------------------------------------------------------- the verifiable reward


# ----------------------------------------------------------------------------- one GRPO step


def grpo_step(policy, reference, opt, tok, prompts, reward_fn, cfg, generator, step=0) -> dict:
    """Rollouts, rewards, group advantages and `cfg.epochs` clipped updates for one batch of prompts.

    prompts: token-id lists; reward_fn(prompt_index, response_ids) -> float. Returns the step's statistics."""
    G = cfg.group_size
    # 1. rollouts from π_old (the policy as it is now), G per prompt
    responses = sample_responses(policy, tok, prompts, G, cfg.max_new_tokens, cfg.temperature, generator)
    # 2. rewards; a nan/inf stops the run with the last checkpoint kept
    rewards = torch.tensor([reward_fn(i // G, r) for i, r in enumerate(responses)], dtype=torch.float32)
    check_finite(rewards, "a reward", step)
    # 3. advantages within each group, one number per response, broadcast over its tokens
    advantages, raw, stats = group_normalized_advantages(rewards, G, normalize_by_std=cfg.std_normalize)
    device = next(policy.parameters()).device
    b = rollout_batch([p for p in prompts for _ in range(G)], responses, pad_id_of(tok), device)
    advantages, raw = advantages.to(device)[:, None], raw.to(device)[:, None]  # (N, 1)
    # 4. log π_old and log π_ref of the sampled tokens, fixed for this step
    with torch.no_grad():
        old_log_probs = response_log_probs(policy, b["x"], b["y"])["log_probs"]
        ref_log_probs = response_log_probs(reference, b["x"], b["y"])["log_probs"]
    # 5. epochs of updates; the micro-batches of one epoch accumulate into one optimizer step
    N, mb = len(responses), cfg.micro_batch
    n_micro = (N + mb - 1) // mb
    constant = cfg.max_new_tokens if cfg.length_norm == "constant" else None
    clip_fracs, kls, entropies, losses = [], [], [], []
    policy.train()
    for _ in range(cfg.epochs):
        for s in range(0, N, mb):
            sl, mask = slice(s, s + mb), b["mask"][s : s + mb]
            out = response_log_probs(policy, b["x"][sl], b["y"][sl], with_entropy=True)
            pg, meta = policy_gradient_loss(
                cfg.loss_type,
                out["log_probs"],
                rewards=raw[sl],
                advantages=advantages[sl],
                old_log_probs=old_log_probs[sl],
                clip_eps=cfg.clip_eps,
            )
            kl = k3_kl(out["log_probs"], ref_log_probs[sl])  # (mb, T)
            loss, _ = microbatch_train_step(pg + cfg.kl_coef * kl, mask, n_micro, constant)
            losses.append(loss.item())
            clip_fracs.append(masked_mean(meta["clipped"].float(), mask).item() if "clipped" in meta else 0.0)
            kls.append(masked_mean(kl.detach(), mask).item())
            entropies.append(masked_mean(out["entropy"].detach(), mask).item())
        grad_norm = clip_grad_norm([p for p in policy.parameters() if p.requires_grad], 1.0)
        DivergenceGuard(lower=f"--lr (now {cfg.lr:g})").check(step, sum(losses), grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    policy.eval()
    lengths = b["mask"].sum(1).float()
    return {
        **stats,
        "kl": sum(kls) / len(kls),
        "clip_fraction": sum(clip_fracs) / len(clip_fracs),
        "entropy": sum(entropies) / len(entropies),
        "response_tokens": lengths.mean().item(),
        "truncated": truncated(responses, tok) / N,
    }


# ----------------------------------------------------------------------------- the run


def plot(records, before, after, path):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in records]
    ax1.plot(steps, [r["reward_mean"] for r in records], lw=1, label="mean reward of the rollouts")
    ax1.plot(steps, [r["kl"] for r in records], lw=1, label="k3 KL to the reference (per token)")
    ax1.set(xlabel="step", title="GRPO reward curve (train problems)")
    ax1.legend()
    keys = ["pass@1_greedy", "pass@1_sampled", "mean_reward", "format_rate"]
    xs = range(len(keys))
    ax2.bar([x - 0.2 for x in xs], [before[k] for k in keys], 0.4, label="before (SFT)")
    ax2.bar([x + 0.2 for x in xs], [after[k] for k in keys], 0.4, label="after GRPO")
    ax2.set(xticks=list(xs), title="held-out problems")
    ax2.set_xticklabels(keys, rotation=10)
    ax2.legend()
    save_figure(fig, path)


def train_grpo_run(cfg: GRPOConfig, argv=None) -> dict:
    """Train with GRPO and write <out>/ (module docstring); returns the outcome."""
    check_grpo_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else RunLayout(run).grpo
    policy, tok = load_sft_policy(run, device)
    reference = load_reference(cfg.reference, policy, tok, device)
    train_path = task_file(run, cfg.train_file, "arithmetic_train.jsonl")
    held_path = task_file(run, cfg.heldout_file, "arithmetic_heldout.jsonl")
    train, heldout = read_problems(train_path), read_problems(held_path)
    shots, train = train[: cfg.shots], train[cfg.shots :]
    if not train:
        raise UserError(f"{train_path}: no problems left after the {cfg.shots} shown as examples")
    heldout = heldout[: cfg.eval_limit] if cfg.eval_limit else heldout
    prompts = [problem_prompt(tok, p["prompt"], shots) for p in train]
    check_rollout_fits(
        prompts + [problem_prompt(tok, p["prompt"], shots) for p in heldout],
        cfg.max_new_tokens,
        policy.cfg.block_size,
    )
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    with fresh_output(out, cfg.overwrite) as tmp:  # the old run stays until this one succeeds
        ev = lambda m: arithmetic_eval(
            m, tok, heldout, shots, cfg.max_new_tokens, cfg.eval_samples, cfg.format_weight, cfg.seed
        )
        before = ev(policy)
        print(
            f"before: held-out pass@1 greedy {before['pass@1_greedy']:.3f}, sampled {before['pass@1_sampled']:.3f}, "
            f"mean reward {before['mean_reward']:.3f}, format {before['format_rate']:.3f}"
        )
        opt = make_optimizer("adamw", param_groups(policy, 0.0), cfg.lr, (0.9, 0.95))
        records, t0 = [], time.time()
        for step in range(1, cfg.steps + 1):
            set_interrupt_hint(f"at step {step}; nothing was written (the previous result, if any, is kept)")
            batch = rng.sample(range(len(train)), cfg.prompts_per_step)
            reward_fn = lambda i, resp: arithmetic_reward(
                tok.decode(resp[:-1] if resp[-1:] == [tok.special_tokens["<|end|>"]] else resp),
                train[batch[i]]["answer"],
                cfg.format_weight,
            )["reward"]
            stats = grpo_step(
                policy,
                reference,
                opt,
                tok,
                [prompts[i] for i in batch],
                reward_fn,
                cfg,
                generator,
                step,
            )
            records.append({"step": step, **stats})
            if step % cfg.save_interval == 0 or step == cfg.steps:
                save_policy(tmp / "ckpt.pt", policy, RunLayout(run).tokenizer, step=step, method="grpo")
                print(
                    f"step {step}/{cfg.steps} | reward {stats['reward_mean']:.3f} | kl {stats['kl']:.4f} | "
                    f"clip {stats['clip_fraction']:.3f} | entropy {stats['entropy']:.2f} | {time.time() - t0:.0f}s",
                    flush=True,
                )
        train_s = time.time() - t0
        after = ev(policy)
        common = Counter(p["answer"] for p in train).most_common(1)[0][0]
        outcome = {
            "bar": paired_bar(
                "held-out arithmetic pass@1 (greedy)",
                "GRPO",
                after["greedy_correct"],
                {
                    "SFT (before GRPO)": before["greedy_correct"],
                    f"majority answer ({common})": [float(p["answer"] == common) for p in heldout],
                },
                note="held out by wording and number range (01_data/tasks.py)",
            ),
            "heldout_before": before,
            "heldout_after": after,
            "steps": cfg.steps,
            "train_s": train_s,
            "rollouts_per_step": cfg.prompts_per_step * cfg.group_size,
            "device": device,
            "tokenizer": os.path.relpath(RunLayout(run).tokenizer, out),
        }
        write_jsonl(tmp / "metrics.jsonl", records)
        outcome["headline"] = method_headline("grpo", outcome)  # leads with the bar, paired_bar's
        write_json(tmp / "outcome.json", outcome)
        plot(records, before, after, tmp / "grpo.png")
        inputs = [
            RunLayout(run).sft,
            *[
                p if given else RunLayout(run).data
                for p, given in ((train_path, cfg.train_file), (held_path, cfg.heldout_file))
            ],
        ]
        write_manifest(
            tmp,
            stage="06_rlhf_dpo",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=inputs + ([Path(cfg.reference)] if cfg.reference else []),
        )
    print(
        f"after:  held-out pass@1 greedy {after['pass@1_greedy']:.3f}, sampled {after['pass@1_sampled']:.3f}, "
        f"mean reward {after['mean_reward']:.3f}, format {after['format_rate']:.3f}"
    )
    b = outcome["bar"]
    print(
        f"bar: pass@1 {b['note'].split('; held out')[0]}; GRPO minus {b['baseline_name']} {b['value']:+.3f} "
        f"[{b['interval'][0]:+.3f}, {b['interval'][1]:+.3f}] (paired, n={b['n']}): {'PASS' if b['passed'] else 'FAIL'}"
    )
    flat = sum(r["frac_zero_std_groups"] for r in records) / len(records)
    if flat > 0.9:  # A = 0 for a group whose answers all score the same: no gradient from it
        print(
            f"note: {flat:.0%} of the groups scored all alike (mostly all 0), so their advantages were 0 and GRPO "
            "had almost nothing to learn from; the SFT model must sometimes earn the reward (more --shots, "
            "arithmetic in the SFT data, a larger --group-size)"
        )
    print(f"grpo: {cfg.steps} steps in {train_s:.0f}s; wrote {out}/")
    return outcome


def main(argv=None):
    cfg, _ = parse_config(GRPOConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    train_grpo_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
