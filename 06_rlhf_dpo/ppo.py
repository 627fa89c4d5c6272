"""RLHF with PPO, as InstructGPT does it: sample, score with the reward model, penalize the KL, clip, repeat.

    python 06_rlhf_dpo/ppo.py --run runs/tiny                  # needs runs/tiny/rm/ (reward_model.py)
    python 06_rlhf_dpo/ppo.py --run runs/tiny --kl-coef 0      # no KL penalty: watch the reward model get hacked
    python 06_rlhf_dpo/ppo.py --run runs/tiny --resume         # continue a killed run, bit-exact

Reads runs/<name>/sft/ (05), rm/ (reward_model.py) and the prompts of data/tasks/preference_*.jsonl (01);
writes runs/<name>/ppo/: ckpt.pt, outcome.json, metrics.jsonl, ppo.png, manifest.json. Every
--eval-interval iterations the training state (policy and value weights, their AdamW moments, the prompt
order's RNG and the sampling generator, the log, the evaluated checkpoints' gold rewards and the best
one's weights) goes to runs/<name>/.ppo.resume.pt: `--resume` continues a killed run from there, bit-exactly.

Four networks: the policy π_θ (from SFT, trained), the reference π_ref (SFT, frozen), the reward model r_φ
(frozen) and the value model V_ψ (initialized from the reward model, trained: InstructGPT's choice; it
already reads responses the way the reward does). Each iteration, in the loop of `train_ppo` below:

1. Rollouts: one response y per prompt x, sampled from π_old = π_θ at temperature 1 (03's sampler).
2. Per-token rewards: the KL penalty on every response token, the reward model's score on the last one,
       r_t = −β · (log π_old(y_t) − log π_ref(y_t)) + [t = last] · r_φ(x, y)
3. GAE (`gae`): δ_t = r_t + γ V(s_{t+1}) − V(s_t),  A_t = δ_t + γλ A_{t+1}  (V = 0 after the last token),
   returns R_t = A_t + V(s_t); the advantages are whitened over the batch's response tokens.
4. `ppo_epochs` passes over the rollouts in minibatches, each minimizing per response token
       L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)                       (policy, rl_common)
           + c_V · ½ max((V_t − R_t)², (V_old + clip(V_t − V_old, −ε_V, ε_V) − R_t)²)   (value, clipped)
           − c_H · H(π(· | s_t))                                              (entropy bonus, 0 by default)
   and logging what CleanRL logs: clip fraction, approx KL(π_old ‖ π_θ) (k3), entropy, value loss.

Measured against the truth, never against the reward model it optimized (that would grade itself):
every `eval_interval` iterations (and before the first: the SFT model) `evaluate` samples answers at
T = 1 and records the **gold** reward (rule_judge.gold_score: fact, polite, concise), the **proxy**
reward (the reward model) and the KL from SFT - the PPO curve of overoptimization.py. The result is
the checkpoint with the highest gold reward on *training* prompts (never chosen on the held-out ones).
The bar (alignment_bars.paired_bar): its held-out gold reward minus the stronger of SFT's and the
majority answer's, paired over the prompts, 95 % interval above 0; beside it (outcome "bars") the same
for the greedy answer accepted under every rule.

What was wrong before, measured on the tiny run (runs/tiny, the LoRA SFT model of commit 09dceb1):
- the SFT model puts 0.6 % on <|end|> after its answer sentence, so nearly every T = 1 rollout rambles
  to max_new_tokens: PPO's rollouts are junk the reward model scores near 0, and greedy decoding (the
  old bar) hides the policy PPO actually changes;
- lr 1e-5 moves little (clip fraction 0.004, KL ~1 nat in 20 iterations); lr 1e-4 breaks the policy
  (clip fraction 0.15, KL 7.4 nats in 10 iterations, the rollouts' proxy score falls, entropy rises);
- the proxy knows facts barely (held-out correct_fact pair accuracy 0.579 [0.478, 0.673]), so the
  proxy it climbs is mostly "stop early and be polite": the gold moves little (see the README's lab).

Interview questions it answers:
- Why a KL penalty to the SFT model? (the reward model is only right near the text it was trained on; the
  penalty keeps π where r_φ can be trusted, and is what makes the optimum π_ref·exp(r/β) well defined)
- Why GAE? (λ trades bias for variance: λ = 1 is the Monte-Carlo return minus V (unbiased, noisy),
  λ = 0 is the one-step TD error (low variance, biased by V's errors))
- Why clip the value loss too? (a value update as large as the policy's would make the next
  advantages noisy; the clipped version limits how far V moves from the values used for A)
- What is the clip fraction telling you? (the share of tokens whose ratio left [1 − ε, 1 + ε] in the
  direction the advantage wanted: near 0 the updates are timid, near 0.3+ the step is too large)
- Why is PPO for LLMs expensive? (four models in memory, and generation - sequential - inside the loop)
"""

import copy
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import (
    UserError,
    check_config,
    command_line,
    option,
    parse_config,
    run_cli,
    set_interrupt_hint,
)
from common.files import write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.runs import check_artifact, write_manifest
from common.stats import paired_bootstrap_interval
from common.devices import resolve_device
from train_state import RunState  # 04_pretrain
from divergence import DivergenceGuard  # 03_model
from optimizers import clip_grad_norm, make_optimizer  # 04_pretrain

from policy_io import check_finite, frozen, load_reference, load_sft_policy, method_headline, save_policy
from preference_data import encode_response, pad_id_of, read_preference_pairs
from reward_scoring import load_reward_model
from rl_common import (
    clipped_policy_loss,
    k3_kl,
    masked_mean,
    masked_whiten,
    microbatch_train_step,
    response_log_probs,
)
from rollouts import check_rollout_fits, rollout_batch, sample_responses, truncated
from alignment_bars import (
    gold_acceptance,
    majority_replies,
    short_answers,
    user_question,
)
from policy_io import sequence_kl
from gold_reward import gold_scores, policy_rewards, prompt_groups
from ppo_outcome import greedy_reward, plot, ppo_bars, report


@dataclass
class PPOConfig:
    run: str = option("", "run folder runs/<name>: reads sft/, rm/ and data/tasks/")
    out: str = option("", "output folder; empty = <run>/ppo")
    reward_model: str = option("", "reward model checkpoint; empty = <run>/rm/rm.pt")
    reference: str = option("", "π_ref checkpoint; empty = a frozen copy of the SFT model")
    prompts_file: str = option(
        "", "preference JSONL whose prompts are used; empty = <run>/data/tasks/preference_train.jsonl"
    )
    heldout_file: str = option(
        "", "prompts for the before/after score; empty = <run>/data/tasks/preference_heldout.jsonl"
    )
    steps: int = option(30, "PPO iterations (rollouts, then ppo_epochs of updates)", min=1)
    rollouts: int = option(32, "prompts (one response each) per iteration", min=1)
    max_new_tokens: int = option(24, "longest response", min=1)
    temperature: float = option(1.0, "sampling temperature of the rollouts", min=0.0)
    kl_coef: float = option(0.05, "β: per-token KL penalty in the reward", min=0.0)
    gamma: float = option(1.0, "discount γ", min=0.0, max=1.0)
    lam: float = option(0.95, "GAE λ", min=0.0, max=1.0)
    ppo_epochs: int = option(4, "passes over each batch of rollouts", min=1)
    minibatch: int = option(16, "rollouts per gradient step", min=1)
    clip_eps: float = option(0.2, "policy clip range ε", min=0.0)
    value_clip: float = option(0.2, "value clip range ε_V", min=0.0)
    vf_coef: float = option(0.5, "c_V: weight of the value loss", min=0.0)
    ent_coef: float = option(0.0, "c_H: entropy bonus", min=0.0)
    lr: float = option(1e-5, "AdamW learning rate of the policy", min=0.0)
    value_lr: float = option(1e-4, "AdamW learning rate of the value model", min=0.0)
    eval_limit: int = option(200, "held-out prompts scored before and after (0 = all)", min=0)
    eval_interval: int = option(
        10, "iterations between checkpoint evaluations (gold and proxy reward, KL from SFT)", min=1
    )
    eval_samples: int = option(4, "answers sampled per prompt to estimate a checkpoint's rewards", min=1)
    select_prompts: int = option(
        32, "training prompts whose gold reward picks the best checkpoint (never the held-out ones)", min=1
    )
    seed: int = option(1337, "seed for the prompt order and the sampling")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")
    resume: bool = option(
        False, "continue an interrupted run from its last state (saved every --eval-interval)"
    )


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(
        steps=2,
        rollouts=4,
        max_new_tokens=4,
        ppo_epochs=1,
        minibatch=4,
        eval_limit=4,
        eval_interval=1,
        eval_samples=2,
        select_prompts=4,
    ),
}


def check_ppo_config(cfg: PPOConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 05_sft_lora wrote sft/ into)")


# ----------------------------------------------------------------------------- GAE


def gae(rewards, values, mask, gamma, lam):
    """Generalized advantage estimation over each row's response tokens: rewards, values, mask (B, T),
    the response a contiguous run of mask = 1. Returns (advantages, returns), (B, T), 0 off the mask.

        δ_t = r_t + γ V_{t+1} m_{t+1} − V_t        (V after the last response token is 0: the episode ended)
        A_t = δ_t + γλ m_{t+1} A_{t+1}             computed backwards from the end
        R_t = A_t + V_t                            (the value model's regression target)"""
    # >>> exercise: GAE backwards in t (delta_t, then A_t = delta_t + gamma·lambda·A_{t+1}); returns A and A + V
    B, T = rewards.shape
    mask = mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        running = delta + gamma * lam * next_mask * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask
    # <<< exercise


def token_rewards(score, log_probs, ref_log_probs, mask, kl_coef):
    """r_t (B, T): −β (log π_old − log π_ref) on every response token, plus the reward-model score (B,)
    on the last one. Also returns the per-token log-ratio (the KL estimate that is logged)."""
    log_ratio = (log_probs - ref_log_probs) * mask
    rewards = -kl_coef * log_ratio
    last = mask.long().cumsum(1).argmax(1)  # index of each row's last response token
    rewards[torch.arange(len(score)), last] += score
    return rewards, log_ratio


# ----------------------------------------------------------------------------- training


def train_ppo(
    policy,
    reference,
    rm,
    value_model,
    tok,
    prompts,
    cfg: PPOConfig,
    device,
    evaluate=None,
    log=print,
    state=None,
    evaluated=None,
) -> list:
    """The PPO loop (module docstring, steps 1-4). prompts: token-id lists. Returns per-iteration records.

    evaluate(step) -> dict, when given, is called before the first iteration (step 0: the SFT model) and
    every cfg.eval_interval iterations; what it returns joins that iteration's record.
    state: the run's RunState, continued from and saved every cfg.eval_interval iterations; evaluated:
    {name: dict} that `evaluate` fills, saved with it and refilled on resume."""
    pad = pad_id_of(tok)
    opt = make_optimizer(
        "adamw",
        [
            {
                "params": [p for p in policy.parameters() if p.requires_grad],
                "lr": cfg.lr,
                "weight_decay": 0.0,
            },
            {
                "params": [p for p in value_model.parameters() if p.requires_grad],
                "lr": cfg.value_lr,
                "weight_decay": 0.0,
            },
        ],
        cfg.lr,
        (0.9, 0.95),
    )
    params = [p for group in opt.param_groups for p in group["params"]]
    rng = random.Random(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    objects = (
        {"policy": policy, "value": value_model},
        {"adamw": opt},
        {"order": rng, "sampling": generator},
    )
    start, records, extra = state.restore("ppo", *objects) if state else (0, [], {})
    for name, saved in extra.get("evaluated", {}).items():
        evaluated[name].clear()
        evaluated[name].update(saved)
    t0 = time.time()
    if evaluate and not start:
        records.append({"step": 0, **evaluate(0)})
    for step in range(start + 1, cfg.steps + 1):
        set_interrupt_hint(f"at step {step}; nothing was written (the previous result, if any, is kept)")
        # 1. rollouts: one sampled response per prompt from π_old
        batch_prompts = [prompts[i] for i in rng.sample(range(len(prompts)), min(cfg.rollouts, len(prompts)))]
        responses = sample_responses(
            policy, tok, batch_prompts, 1, cfg.max_new_tokens, cfg.temperature, generator
        )
        b = rollout_batch(batch_prompts, responses, pad, device)
        x, y, mask = b["x"], b["y"], b["mask"]
        with torch.no_grad():
            old_log_probs = response_log_probs(policy, x, y)["log_probs"]  # (B, T)
            ref_log_probs = response_log_probs(reference, x, y)["log_probs"]
            old_values = value_model.values(x) * mask  # V(s_t), (B, T)
            score = rm(b["ids"], b["lengths"])  # r_φ(x, y), (B,)
        check_finite(score, "a reward-model score", step)
        # 2. per-token rewards: KL penalty everywhere, the score at the end
        rewards, log_ratio = token_rewards(score, old_log_probs, ref_log_probs, mask, cfg.kl_coef)
        # 3. GAE advantages and returns; advantages whitened over the batch's response tokens
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        # 4. several epochs of minibatch updates on the same rollouts
        stats = {"clip_fraction": [], "approx_kl": [], "entropy": [], "value_loss": [], "policy_loss": []}
        policy.train()
        value_model.train()
        for _ in range(cfg.ppo_epochs):
            for idx in torch.randperm(len(responses), generator=generator, device=device).split(
                cfg.minibatch
            ):
                m = mask[idx]
                new = response_log_probs(policy, x[idx], y[idx], with_entropy=True)
                pg_loss, meta = clipped_policy_loss(
                    advantages[idx], new["log_probs"], old_log_probs[idx], cfg.clip_eps
                )
                # value loss, clipped around the values the advantages were computed with
                v = value_model.values(x[idx])
                v_clipped = old_values[idx] + (v - old_values[idx]).clamp(-cfg.value_clip, cfg.value_clip)
                v_loss = 0.5 * torch.maximum((v - returns[idx]) ** 2, (v_clipped - returns[idx]) ** 2)
                loss, _ = microbatch_train_step(
                    pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * new["entropy"], m, 1
                )
                grad_norm = clip_grad_norm(params, 1.0)
                DivergenceGuard(lower=f"--lr (now {cfg.lr:g})").check(step, loss, grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                stats["clip_fraction"].append(masked_mean(meta["clipped"].float(), m).item())
                stats["approx_kl"].append(
                    masked_mean(k3_kl(old_log_probs[idx], new["log_probs"].detach()), m).item()
                )
                stats["entropy"].append(masked_mean(new["entropy"].detach(), m).item())
                stats["value_loss"].append(masked_mean(v_loss.detach(), m).item())
                stats["policy_loss"].append(masked_mean(pg_loss.detach(), m).item())
        policy.eval()
        value_model.eval()
        rec = {
            "step": step,
            "reward": score.mean().item(),
            "kl": log_ratio.sum(1).mean().item(),
            "response_tokens": mask.sum(1).float().mean().item(),
            "truncated": truncated(responses, tok) / len(responses),
            **{k: sum(v) / len(v) for k, v in stats.items()},
        }
        records.append(rec)
        if step % cfg.eval_interval == 0 or step == cfg.steps:
            if evaluate:
                rec.update(evaluate(step))
            log(
                f"step {step}/{cfg.steps} | reward {rec['reward']:+.3f} | kl {rec['kl']:.3f} | clip {rec['clip_fraction']:.3f} | "
                f"entropy {rec['entropy']:.2f} | value loss {rec['value_loss']:.4f} | {time.time() - t0:.0f}s"
                + (
                    f" | held-out gold {rec['gold']:.3f} proxy {rec['proxy']:+.3f} KL {rec['kl_sft']:.2f}"
                    if "gold" in rec
                    else ""
                )
            )
        if state and state.due(step) and step < cfg.steps:
            state.save("ppo", step, *objects, records=records, extra={"evaluated": evaluated or {}})
    return records


# ----------------------------------------------------------------------------- the run


def train_ppo_run(cfg: PPOConfig, argv=None) -> dict:
    """Train with PPO and write <out>/ (module docstring); returns the outcome."""
    check_ppo_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else RunLayout(run).ppo
    policy, tok = load_sft_policy(run, device)
    reference = load_reference(cfg.reference, policy, tok, device)
    if cfg.reward_model:
        rm_path = Path(cfg.reward_model)
    else:
        check_artifact(RunLayout(run).rm, made_by=RunLayout(run).made_by("rm"))
        rm_path = RunLayout(run).rm / "rm.pt"
    rm = frozen(load_reward_model(rm_path, tok, device))
    value_model = load_reward_model(rm_path, tok, device)  # V_ψ starts as the reward model
    value_model.requires_grad_(True)
    prompts_path = task_file(run, cfg.prompts_file, "preference_train.jsonl")
    held_path = task_file(run, cfg.heldout_file, "preference_heldout.jsonl")
    train_pairs = read_preference_pairs(prompts_path)[0]
    prompts = [encode_response(tok, p, "")[0] for p in prompt_groups(train_pairs)[0]]
    held_prompts, groups = prompt_groups(read_preference_pairs(held_path)[0], cfg.eval_limit)
    sel_prompts, sel_groups = prompt_groups(train_pairs, cfg.select_prompts)
    held = [encode_response(tok, p, "")[0] for p in held_prompts]
    sel = [encode_response(tok, p, "")[0] for p in sel_prompts]
    answers = short_answers(run)
    check_rollout_fits(prompts + held, cfg.max_new_tokens, policy.cfg.block_size)
    torch.manual_seed(cfg.seed)
    per_prompt, best = {}, {}

    def evaluate(step):
        """Gold and proxy of this checkpoint on held-out prompts (the curve) and on training prompts (the
        choice of checkpoint); the best-so-far weights are kept in memory."""
        h, s = (
            policy_rewards(
                policy, reference, rm, tok, ps, gs, answers, cfg.eval_samples, cfg.max_new_tokens, cfg.seed
            )
            for ps, gs in ((held, groups), (sel, sel_groups))
        )
        per_prompt[step] = h["gold"]
        point = {
            "gold": h["gold_mean"],
            "proxy": h["proxy_mean"],
            "kl_sft": h["kl"],
            "samples": h["samples"],
            "select_gold": s["gold_mean"],
            "select_proxy": s["proxy_mean"],
        }
        if not best or s["gold_mean"] > best["select_gold"]:
            best.update(step=step, **point, state=copy.deepcopy(policy.state_dict()))
        return point

    state = RunState(out, cfg, cfg.eval_interval, RunLayout(run).made_by("ppo"))
    with state.claimed(cfg.overwrite) as tmp:  # the old run stays until this one succeeds
        before = greedy_reward(policy, rm, tok, held, cfg.max_new_tokens)
        print(
            f"before: held-out greedy reward-model score {before['reward']:+.3f}, {before['response_tokens']:.1f} tokens"
        )
        t0 = time.time()
        records = train_ppo(
            policy,
            reference,
            rm,
            value_model,
            tok,
            prompts,
            cfg,
            device,
            evaluate,
            state=state,
            evaluated={"per_prompt": per_prompt, "best": best},
        )
        train_s = time.time() - t0
        final_step = cfg.steps
        policy.load_state_dict(best.pop("state"))  # the selected checkpoint is the result
        after = {
            **greedy_reward(policy, rm, tok, held, cfg.max_new_tokens),
            **sequence_kl(policy, reference, tok, held, cfg.max_new_tokens, cfg.seed),
        }
        greedy = {
            "PPO": gold_acceptance(after.pop("answers"), groups, answers),
            "SFT": gold_acceptance(before.pop("answers"), groups, answers),
        }
        before["gold_acceptance"], after["gold_acceptance"] = (
            sum(greedy[k]) / len(greedy[k]) for k in ("SFT", "PPO")
        )
        curve = [r for r in records if "gold" in r]
        before["gold_sampled"], after["gold_sampled"] = curve[0]["gold"], best["gold"]
        majority_texts = majority_replies([user_question(p) for p in held_prompts], run)
        majority = {
            "gold": gold_scores(majority_texts, groups, answers),
            "acceptance": gold_acceptance(majority_texts, groups, answers),
        }
        bars = ppo_bars(curve, best, per_prompt, greedy, majority)
        outcome = {
            "bar": bars[0],
            "bars": bars,
            "best_step": best["step"],
            "gold_minus_sft": {  # against SFT alone (the bar is against the stronger baseline)
                "value": best["gold"] - curve[0]["gold"],
                "interval": list(paired_bootstrap_interval(per_prompt[best["step"]], per_prompt[0])),
                "n": len(held),
            },
            "curve": [
                {k: r[k] for k in ("step", "gold", "proxy", "kl_sft", "select_gold", "select_proxy")}
                for r in curve
            ],
            "heldout_before": before,
            "heldout_after": after,
            "steps": cfg.steps,
            "train_s": train_s,
            "prompts": len(prompts),
            "device": device,
            "reward_model": os.path.relpath(rm_path, out),
            "tokenizer": os.path.relpath(RunLayout(run).tokenizer, out),
        }
        save_policy(tmp / "ckpt.pt", policy, RunLayout(run).tokenizer, step=best["step"], method="ppo")
        write_jsonl(tmp / "metrics.jsonl", records)
        outcome["headline"] = method_headline("ppo", outcome)  # leads with the bar, paired_bar's
        write_json(tmp / "outcome.json", outcome)
        plot(records, tmp / "ppo.png")
        inputs = [
            RunLayout(run).sft,
            rm_path if cfg.reward_model else RunLayout(run).rm,
            *[
                p if given else RunLayout(run).data
                for p, given in ((prompts_path, cfg.prompts_file), (held_path, cfg.heldout_file))
            ],
        ]
        write_manifest(
            tmp,
            stage="06_rlhf_dpo",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=inputs + ([Path(cfg.reference)] if cfg.reference else []),
        )
    report(outcome, final_step, out)
    return outcome


def main(argv=None):
    cfg, _ = parse_config(PPOConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    train_ppo_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
