"""GRPO: reinforcement learning with a verifiable reward, the group's mean as the baseline, no value model.

    python 06_rlhf_dpo/grpo.py --run runs/tiny                      # where X's best friend Y lives (hop-given)
    python 06_rlhf_dpo/grpo.py --run runs/tiny --ablate             # + the same run without KL / clip / both
    python 06_rlhf_dpo/grpo.py --run runs/tiny --task facts         # single facts about the world's people
    python 06_rlhf_dpo/grpo.py --run runs/tiny --task arithmetic    # 01's word problems (the tiny model: 0/200)
    python 06_rlhf_dpo/grpo.py --run runs/tiny --group-size 16 --no-std-normalize --length-norm constant   # Dr. GRPO
    python 06_rlhf_dpo/grpo.py --run runs/tiny --resume             # continue a killed run, bit-exact

Reads runs/<name>/sft/ (05) and the task: by default questions about the best friends of the run's
world's people, the friend named (hop_task.py: "X and Y are best friends. In which city does the best
friend of X live?", checked against the world), --task hop the same without the friend named, --task
facts single facts (fact_task.py: "Where does Ansel Roha live?"), --task arithmetic 01's
data/tasks/arithmetic_*.jsonl. Writes
runs/<name>/grpo/: ckpt.pt, outcome.json, metrics.jsonl (one line per step), curve.jsonl (held-out
pass@1 / pass@k over steps), grpo.png (the curves), manifest.json; with --ablate also ablation.md (the
table) and ablation.png. Every --save-interval steps the training state (weights, AdamW moments, the
sampling generator, the question order's RNG, the log and the curve; with --ablate, what the finished
variants produced) goes to runs/<name>/.grpo.resume.pt: `--resume` continues a killed run bit-exactly.

One step, for a batch of questions q (prompts_per_step of them):
1. Rollouts: G answers o_1..o_G per question sampled from π_old (the current policy) at temperature 1.
2. Reward, checked, not learnt: r = 1 if the answer names the right fact and no other (fact_task.fact_reward)
   [arithmetic: 1[last number = answer] + format_weight · 1[o is "The answer is N."]].
3. Advantages within each group (rl_common.group_normalized_advantages): A_i = (r_i − mean r) / (std r + eps),
   the same A_i for every token of o_i. A group whose answers all score the same teaches nothing (A = 0).
4. Loss per token (rl_common), the clipped surrogate plus the k3 KL to the frozen SFT model π_ref:
       ρ_t = π(o_t) / π_old(o_t),   r_t = log π_ref(o_t) − log π(o_t)
       L_t = −min(ρ_t A_i, clip(ρ_t, 1 − ε, 1 + ε) A_i) + β_KL · (e^{r_t} − r_t − 1)
   averaged over each response's tokens (or divided by max_new_tokens: --length-norm constant, Dr. GRPO),
   then over responses; `epochs` passes over the rollouts. The first pass is on-policy (ρ = 1, the clip
   cannot act); from the second on ρ ≠ 1 and the clip stops a token's update once π moved ε from π_old.

Why the task is what it is: RL only sharpens what sampling already finds, and only a skill carries to
new people. On 01's two-digit arithmetic the tiny model scores pass@1 = pass@8 = 0: every group is
all-wrong, every advantage 0 (--task arithmetic). On single facts (--task facts) GRPO sharpens which city
a training person lives in, which no held-out person can use. Two hops from memory (--task hop) start at
pass@1 0.02: the model cannot recall whose best friend is whom. With the friend named in the question
(--task hop-given: "X and Y are best friends. In which city does the best friend of X live?") the skill
is to answer about Y, not X, and it transfers: held-out pass@1 0.030 -> 0.233 at the default 40 steps
(goal 0.180, intervals apart; 0.28 at --steps 80), so it is the default task (README, GRPO).

Measured on held-out questions (held out by wording and by person), at step 0, every eval_interval
steps and at the end (grpo_eval.pass_rates): pass@1 and pass@k from k samples at temperature 1, and the
greedy answer. The bar (grpo_eval.sharpening_bar): sampled pass@1 after GRPO ≥ 2× and ≥ +0.15 over the
start and above the majority answer, with the two 95 % intervals apart. --ablate repeats the run with
β_KL = 0, with no clip (ε = ∞) and with both off, from the same SFT model and seed.

Interview questions it answers:
- Why no value model? (the group mean of G sampled answers to the same prompt is a baseline for free;
  a value network as large as the policy costs memory and is hard to fit for sparse end-of-answer rewards)
- What does dividing by the group's std do? (weights prompts by how unsure the model is; Dr. GRPO argues it
  over-weights very easy and very hard prompts and drops it, `--no-std-normalize`)
- Why the KL term in the loss rather than in the reward (as PPO does)? (it regularizes directly with an
  unbiased, non-negative estimator instead of entering the advantage)
- What do the KL term and the clip each buy? (the ablation table: the KL keeps the policy near π_ref, the
  clip bounds one step's move from π_old; see the README for what this run measured)
- Why can a verifiable reward still be hacked? (a reward that only looks for the right word is met by a
  list of every candidate; fact_reward counts an answer naming two candidates as wrong)
"""

import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
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
from common.files import write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.runs import write_manifest
from common.devices import resolve_device
from divergence import DivergenceGuard  # 03_model
from optimizers import clip_grad_norm, make_optimizer, param_groups  # 04_pretrain
from train_state import RunState  # 04_pretrain

from policy_io import check_finite, load_reference, load_sft_policy, save_policy
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
from arithmetic_task import arithmetic_reward, problem_prompt, read_problems
from fact_task import world_seed_of
from grpo_eval import ablation_table, evaluate, plot, sharpening_bar
from hop_task import question_task


@dataclass
class GRPOConfig:
    run: str = option("", "run folder runs/<name>: reads sft/ (05) and data/ (01)")
    out: str = option("", "output folder; empty = <run>/grpo")
    task: str = option(
        "hop-given",
        "hop-given: where X's best friend lives, the friend named in the question (hop_task.py); hop: "
        "the friend not named; facts: one fact about a person (fact_task.py); arithmetic: 01's word problems",
        choices=("hop-given", "hop", "facts", "arithmetic"),
    )
    train_file: str = option(
        "", "arithmetic problems JSONL {prompt, answer}; empty = <run>/data/tasks/arithmetic_train.jsonl"
    )
    heldout_file: str = option(
        "", "held-out arithmetic problems; empty = <run>/data/tasks/arithmetic_heldout.jsonl"
    )
    reference: str = option("", "π_ref checkpoint; empty = a frozen copy of the SFT model")
    shots: int = option(
        1, "arithmetic: solved problems shown before each question (from the train file)", min=0
    )
    steps: int = option(40, "GRPO steps (each: rollouts, then `epochs` passes of updates)", min=1)
    prompts_per_step: int = option(8, "questions per step", min=1)
    group_size: int = option(8, "answers sampled per question, G (>= 2)", min=0)
    max_new_tokens: int = option(12, "longest answer", min=1)
    temperature: float = option(1.0, "sampling temperature of the rollouts", min=0.0)
    loss_type: str = option("grpo_clip", "per-token policy-gradient loss", choices=PG_LOSSES)
    std_normalize: bool = option(True, "divide advantages by the group's std (--no-std-normalize: Dr. GRPO)")
    length_norm: str = option(
        "mean",
        "per response: mean over its tokens, or sum / max_new_tokens (Dr. GRPO)",
        choices=("mean", "constant"),
    )
    clip_eps: float = option(0.2, "clip range ε of the ratio (inf = no clip)", min=0.0)
    kl_coef: float = option(0.04, "β_KL: weight of the k3 KL to the reference (0 = no KL)", min=0.0)
    epochs: int = option(2, "passes over each step's rollouts", min=1)
    micro_batch: int = option(
        64, "responses per forward/backward (gradient accumulation over the rest)", min=1
    )
    # 1e-4, not 3e-4: at 3e-4 this 1 M-parameter policy drifts (KL and entropy grow, pass@8 rises,
    # pass@1 does not, on the training questions either); at 1e-3 it collapses (README, GRPO)
    lr: float = option(1e-4, "AdamW learning rate", min=0.0)
    format_weight: float = option(0.5, "arithmetic: reward for answering exactly 'The answer is N.'", min=0.0)
    eval_limit: int = option(
        120,
        "held-out questions evaluated, the first ones (20 people × 3 attributes × 2 wordings; 0 = all)",
        min=0,
    )
    eval_samples: int = option(8, "k: samples per held-out question for pass@1 and pass@k", min=1)
    train_eval: int = option(
        60,
        "training questions (a seeded sample) also evaluated at the start and the end: does GRPO learn "
        "the questions it trains on, and how much of that reaches the held-out people (0 = skip)",
        min=0,
    )
    eval_interval: int = option(10, "steps between held-out evaluations (the curve)", min=1)
    ablate: bool = option(False, "also train without KL, without clip and without both; writes ablation.md")
    save_interval: int = option(10, "steps between saved training states (what --resume continues)", min=1)
    seed: int = option(1337, "seed for the question order and the sampling")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")
    resume: bool = option(
        False, "continue an interrupted run from its last state (saved every --save-interval)"
    )


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
        eval_samples=2,
        train_eval=4,
        eval_interval=1,
        save_interval=1,
    ),
}
ABLATIONS = {  # name -> (kl_coef, clip_eps); None = the run's own value
    "both on": (None, None),
    "no KL": (0.0, None),
    "no clip": (None, math.inf),
    "both off": (0.0, math.inf),
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
    if cfg.task != "arithmetic" and (cfg.train_file or cfg.heldout_file):
        raise UserError("--train-file/--heldout-file are arithmetic problems: add --task arithmetic")


# ----------------------------------------------------------------------------- the task


def load_task(cfg, run, tok) -> dict:
    """{"train", "heldout": problems; "prompt": problem -> ids; "reward": (problem, text) -> float;
    "correct": (problem, text) -> bool; "majority": the majority answer's held-out accuracy, "inputs"}."""
    if cfg.task != "arithmetic":  # questions about the world's people (hop_task.question_task)
        return question_task(cfg.task, world_seed_of(run), tok) | {"inputs": [RunLayout(run).data]}
    train_path = task_file(run, cfg.train_file, "arithmetic_train.jsonl")
    held_path = task_file(run, cfg.heldout_file, "arithmetic_heldout.jsonl")
    train, heldout = read_problems(train_path), read_problems(held_path)
    shots, train = train[: cfg.shots], train[cfg.shots :]
    if not train:
        raise UserError(f"{train_path}: no problems left after the {cfg.shots} shown as examples")
    common = Counter(p["answer"] for p in train).most_common(1)[0][0]
    return {
        "train": train,
        "heldout": heldout,
        "prompt": lambda p: problem_prompt(tok, p["prompt"], shots),
        "reward": lambda p, text: arithmetic_reward(text, p["answer"], cfg.format_weight)["reward"],
        "correct": lambda p, text: arithmetic_reward(text, p["answer"])["correct"],
        "majority": lambda ps: [float(p["answer"] == common) for p in ps],
        "inputs": [train_path if cfg.train_file else RunLayout(run).data]
        + ([held_path] if cfg.heldout_file else []),
        "note": "held out by wording and number range (01_data/tasks.py)",
    }


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


# ----------------------------------------------------------------------------- training and the curve (grpo_eval.py measures it)


def train_policy(cfg, run, device, log=print, state=None, unit="policy") -> tuple:
    """Load the SFT policy and its frozen reference, train cfg.steps GRPO steps; returns (policy, tok,
    records (one per step), curve (held-out pass rates at step 0, every eval_interval and the end),
    task, heldout). state: the run's RunState: `unit` is continued from it (or, finished before the
    interrupt, taken from its carry) and saved every cfg.save_interval steps."""
    policy, tok = load_sft_policy(run, device)
    reference = load_reference(cfg.reference, policy, tok, device)
    task = load_task(cfg, run, tok)
    train, heldout = task["train"], task["heldout"]
    heldout = heldout[: cfg.eval_limit] if cfg.eval_limit else heldout
    prompts = [task["prompt"](p) for p in train]
    check_rollout_fits(
        prompts + [task["prompt"](p) for p in heldout], cfg.max_new_tokens, policy.cfg.block_size
    )
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    end = tok.special_tokens["<|end|>"]
    opt = make_optimizer("adamw", param_groups(policy, 0.0), cfg.lr, (0.9, 0.95))
    k = cfg.eval_samples
    if state and unit in state.carry:  # finished before the run was interrupted
        done = state.carry[unit]
        policy.load_state_dict(done["policy"])
        return policy, tok, done["records"], done["curve"], task, heldout
    objects = ({"policy": policy}, {"adamw": opt}, {"sampling": generator, "order": rng})
    start, records, extra = state.restore(unit, *objects) if state else (0, [], {})

    seen = random.Random(cfg.seed).sample(train, min(cfg.train_eval, len(train)))  # fixed across steps

    def point(step):
        e = evaluate(policy, tok, task, heldout, cfg)
        log(
            f"step {step}: held-out pass@1 {e['pass@1_sampled']:.3f}, pass@{k} {e[f'pass@{k}']:.3f}, "
            f"greedy {e['pass@1_greedy']:.3f}",
            flush=True,
        )
        if seen and step in (0, cfg.steps):  # the same measure on questions GRPO trains on
            t = evaluate(policy, tok, task, seen, cfg)
            e["train"] = {
                key: t[key] for key in ("pass@1_sampled", "pass@1_sampled_interval", f"pass@{k}", "n")
            }
            log(f"step {step}: training questions pass@1 {t['pass@1_sampled']:.3f}", flush=True)
        return {"step": step, **e}

    curve, t0 = extra.get("curve") or [point(0)], time.time()
    for step in range(start + 1, cfg.steps + 1):
        set_interrupt_hint(f"at step {step}; nothing was written (the previous result, if any, is kept)")
        batch = rng.sample(range(len(train)), min(cfg.prompts_per_step, len(train)))
        reward_fn = lambda i, resp: task["reward"](
            train[batch[i]], tok.decode(resp[:-1] if resp[-1:] == [end] else resp)
        )
        stats = grpo_step(
            policy, reference, opt, tok, [prompts[i] for i in batch], reward_fn, cfg, generator, step
        )
        records.append({"step": step, **stats, "seconds": time.time() - t0})
        if step % cfg.eval_interval == 0 or step == cfg.steps:
            log(
                f"step {step}/{cfg.steps} | reward {stats['reward_mean']:.3f} | kl {stats['kl']:.4f} | "
                f"clip {stats['clip_fraction']:.3f} | entropy {stats['entropy']:.2f} | {time.time() - t0:.0f}s",
                flush=True,
            )
            curve.append(point(step))
        if state and state.due(step) and step < cfg.steps:
            state.save(unit, step, *objects, records=records, extra={"curve": curve})
    if state:  # what a resumed run takes instead of training this unit again (the weights: the main run's)
        weights = policy.state_dict() if unit == "policy" else {}
        state.carry = {**state.carry, unit: {"policy": weights, "records": records, "curve": curve}}
    return policy, tok, records, curve, task, heldout


def train_grpo_run(cfg: GRPOConfig, argv=None) -> dict:
    """Train with GRPO and write <out>/ (module docstring); returns the outcome."""
    check_grpo_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else RunLayout(run).grpo
    k = cfg.eval_samples
    state = RunState(out, cfg, cfg.save_interval, RunLayout(run).made_by("grpo"))
    with state.claimed(cfg.overwrite) as tmp:  # the old run stays until this one succeeds
        t0 = time.time()
        policy, tok, records, curve, task, heldout = train_policy(cfg, run, device, state=state)
        train_s = time.time() - t0
        before, after = curve[0], curve[-1]
        save_policy(tmp / "ckpt.pt", policy, RunLayout(run).tokenizer, step=cfg.steps, method="grpo")
        majority = task["majority"](heldout)
        bar = sharpening_bar(before["per_item"], after["per_item"], sum(majority) / len(majority))
        bar["note"] += f"; {task['note']}"
        strip = lambda c: {key: v for key, v in c.items() if key not in ("per_item", "greedy_correct")}
        outcome = {
            "bar": bar,
            "task": cfg.task,
            "heldout_before": before,
            "heldout_after": after,
            "curve": [strip(c) for c in curve],
            "best": strip(max(curve, key=lambda c: c["pass@1_sampled"])),
            "majority_answer": sum(majority) / len(majority),
            "steps": cfg.steps,
            "train_s": train_s,
            "rollouts_per_step": cfg.prompts_per_step * cfg.group_size,
            "device": device,
            "tokenizer": os.path.relpath(RunLayout(run).tokenizer, out),
        }
        ablation = {}
        if cfg.ablate:
            rows = {"both on": None}
            for name, (kl, eps) in list(ABLATIONS.items())[1:]:
                print(f"ablation: {name}")
                variant = replace(
                    cfg,
                    kl_coef=cfg.kl_coef if kl is None else kl,
                    clip_eps=cfg.clip_eps if eps is None else eps,
                )
                _, _, rec, cur, _, _ = train_policy(
                    variant, run, device, log=lambda *a, **kw: None, state=state, unit=name
                )
                rows[name] = {
                    "kl_coef": variant.kl_coef,
                    "clip_eps": variant.clip_eps,
                    "start": cur[0],
                    "end": cur[-1],
                    "kl": rec[-1]["kl"],
                    "curve": cur,
                }
            rows["both on"] = {
                "kl_coef": cfg.kl_coef,
                "clip_eps": cfg.clip_eps,
                "start": before,
                "end": after,
                "kl": records[-1]["kl"],
                "curve": curve,
            }
            (tmp / "ablation.md").write_text(ablation_table(rows, k))
            outcome["ablation"] = {
                name: {
                    "kl_coef": r["kl_coef"],
                    "clip_eps": str(r["clip_eps"]),
                    "end": strip(r["end"]),
                    "kl": r["kl"],
                }
                for name, r in rows.items()
            }
            ablation = {name: r["curve"] for name, r in rows.items() if name != "both on"}
        b = bar
        outcome["headline"] = (
            f"held-out pass@1 (sampled, k = {k}) {before['pass@1_sampled']:.3f} -> {after['pass@1_sampled']:.3f} "
            f"(goal >= {b['threshold']:.3f}, intervals apart: {'PASS' if b['passed'] else 'FAIL'}); "
            f"pass@{k} {before[f'pass@{k}']:.3f} -> {after[f'pass@{k}']:.3f}; greedy "
            f"{before['pass@1_greedy']:.3f} -> {after['pass@1_greedy']:.3f}; {cfg.steps} steps"
        )
        if "train" in before and "train" in after:  # learnt on its own questions, or carried to new people?
            outcome["train_questions"] = {"before": before["train"], "after": after["train"]}
            outcome["headline"] += (
                f"; training questions pass@1 {before['train']['pass@1_sampled']:.3f} -> "
                f"{after['train']['pass@1_sampled']:.3f}"
            )
        write_jsonl(tmp / "metrics.jsonl", records)
        write_jsonl(tmp / "curve.jsonl", outcome["curve"])
        write_json(tmp / "outcome.json", outcome)
        plot(records, curve, k, tmp / "grpo.png", ablation)
        write_manifest(
            tmp,
            stage="06_rlhf_dpo",
            command=command_line(__file__, argv),
            config={**asdict(cfg), "clip_eps": str(cfg.clip_eps)},
            inputs=[RunLayout(run).sft, *task["inputs"]] + ([Path(cfg.reference)] if cfg.reference else []),
        )
    if ablation:
        print((out / "ablation.md").read_text(), end="")
    print(f"bar: {b['metric']}: {b['note']}: {'PASS' if b['passed'] else 'FAIL'}")
    flat = sum(r["frac_zero_std_groups"] for r in records) / len(records)
    if flat > 0.9:  # A = 0 for a group whose answers all score the same: no gradient from it
        print(
            f"note: {flat:.0%} of the groups scored all alike (mostly all 0), so their advantages were 0 and GRPO "
            "had almost nothing to learn from; the starting model must sometimes earn the reward "
            "(an easier task, more --shots, a larger --group-size)"
        )
    print(f"grpo: {cfg.steps} steps in {train_s:.0f}s (with the held-out evaluations); wrote {out}/")
    return outcome


def main(argv=None):
    cfg, _ = parse_config(GRPOConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    train_grpo_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
