"""RLAIF measured against the truth: an AI judge labels the SFT model's own answers, DPO learns from them,
and the world's gold judge says what that was worth.

    python 06_rlhf_dpo/rlaif.py --run runs/tiny                         # judge: the pretrained model
    python 06_rlhf_dpo/rlaif.py --run runs/tiny --judge runs/tiny/sft/ckpt.pt
    python 06_rlhf_dpo/rlaif.py --run runs/tiny --resume            # continue a killed run, bit-exact

Reads runs/<name>/sft/ (05), the judge (a language-model checkpoint; default runs/<name>/pretrain/
best.pt, 04), the prompts of data/tasks/preference_train.jsonl and the held-out prompts (01), the sft
files' short answers (the gold judge's facts) and, when present, rm/ (reward_model.py, for comparison);
writes runs/<name>/rlaif/: ckpt.pt (the policy trained on the AI judge's labels), gold_labels.pt (the
one trained on gold labels), pairs.jsonl, outcome.json, metrics.jsonl, rlaif.png, manifest.json. Every
--eval-interval DPO steps the training state (the policy being trained, AdamW moments, the pair order
and its RNG, the log; once the gold-labelled policy is done, its weights, log and gold reward) goes to
runs/<name>/.rlaif.resume.pt: `--resume` continues a killed run from there, bit-exactly.

1. Two answers per training prompt, sampled from the SFT model at temperature 1 (pairs whose two
   answers are identical are dropped and counted).
2. The gold label (rule_judge.judge): which answer is better under the rule of the prompt's pair (states
   the fact, polite, concise); pairs the rule cannot tell apart are left out - they carry no truth.
3. The AI label: a **language model asked which answer is more likely right** - the judge scores each
   answer by its log-likelihood given the question, Σ_t log p_judge(y_t | x, y_<t), and prefers the
   higher. RLAIF as published prompts a large LM "which answer is better?"; the models of this pipeline
   (a few million parameters, trained on a synthetic world) cannot follow that instruction, but they
   can say how probable an answer is: what the judge knows (facts, the shape of a polite, concise
   answer) shows in its likelihood. Two cheap judges sit beside it on the same pairs: "prefer the
   shorter answer" and the reward model (trained on human-style labels; the judge of the old RLAIF).
4. The judge's agreement with the gold labels (Wilson 95 % interval): the ceiling on what DPO can learn
   from its labels. Its bar: above the length rule's agreement on the same pairs.
5. DPO (preference_training.py's train_preference, reference = the SFT model) twice on the same pairs, once with the AI
   judge's labels, once with the gold labels; both policies and SFT are then scored by the gold judge
   on held-out prompts (gold_reward.policy_rewards: sampled answers, the policy's expected gold reward).
   RLAIF's bar: its gold minus SFT's, paired over the prompts, interval above 0; the gold-labelled
   policy's gold minus RLAIF's is what the judge's errors cost.

Interview questions it answers:
- What does AI feedback replace, and what does it not? (the human labeller of each comparison; not the
  need for a judge that is better than the policy at telling answers apart - its errors become labels)
- How would you check an AI judge? (agreement with a trusted judge on a sample, against a trivial judge
  such as answer length, before trusting its labels; then train on both and compare the policies)
- Why on-policy pairs? (offline pairs show the policy contrasts it would never produce; pairs sampled
  from the policy itself are about the mistakes it actually makes)
"""

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import UserError, check_config, command_line, option, parse_config, run_cli
from common.devices import resolve_device
from common.files import pyplot, save_figure, write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.outcome import make_bar
from common.runs import check_artifact, write_manifest
from common.stats import paired_bootstrap_interval, wilson_interval
from checkpoint_io import load_checkpoint  # 03_model
from train_state import RunState  # 04_pretrain

from alignment_bars import paired_bar, short_answers, user_question
from preference_training import PreferenceSettings, train_preference
from gold_reward import policy_rewards, prompt_groups
from policy_io import frozen, load_policy, load_reference, load_sft_policy, save_policy
from preference_data import encode_response, pad_id_of, read_preference_pairs
from reward_scoring import load_pairs, load_reward_model, reward_of_responses
from rl_common import response_log_probs
from rollouts import check_rollout_fits, decode_responses, rollout_batch, sample_responses
from rule_judge import RULES, judge


@dataclass
class RLAIFConfig:
    run: str = option("", "run folder runs/<name>: reads sft/, pretrain/ and data/tasks/")
    out: str = option("", "output folder; empty = <run>/rlaif")
    judge: str = option("", "the AI judge: a language-model checkpoint; empty = <run>/pretrain/best.pt")
    reference: str = option("", "π_ref checkpoint; empty = a frozen copy of the SFT model")
    prompts_file: str = option(
        "", "preference JSONL whose prompts are answered; empty = <run>/data/tasks/preference_train.jsonl"
    )
    heldout_file: str = option("", "held-out prompts; empty = <run>/data/tasks/preference_heldout.jsonl")
    n_prompts: int = option(256, "prompts answered twice", min=1)
    max_new_tokens: int = option(24, "longest answer", min=1)
    temperature: float = option(1.0, "sampling temperature of the two answers", min=0.0)
    beta: float = option(0.1, "DPO's β", min=0.0)
    steps: int = option(60, "DPO steps (each of the two policies)", min=1)
    batch_size: int = option(16, "pairs per DPO step", min=1)
    lr: float = option(5e-5, "AdamW learning rate", min=0.0)
    eval_interval: int = option(20, "steps between held-out pair evaluations", min=1)
    eval_limit: int = option(200, "held-out prompts scored by the gold judge (0 = all)", min=0)
    eval_samples: int = option(4, "answers sampled per held-out prompt", min=1)
    seed: int = option(1337, "seed for the prompts, the sampling and the pair order")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")
    resume: bool = option(
        False, "continue an interrupted run from its last state (saved every --eval-interval)"
    )


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(n_prompts=8, max_new_tokens=8, steps=2, batch_size=4, eval_limit=4, eval_samples=2),
}


def check_rlaif_config(cfg: RLAIFConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 05_sft_lora wrote sft/ into)")


# ----------------------------------------------------------------------------- labels


@torch.no_grad()
def likelihood_scores(judge_model, judge_tok, prompts, texts, batch_size=64) -> torch.Tensor:
    """The AI judge's score of each answer: Σ_t log p_judge(y_t | x, y_<t) over the answer's tokens and its
    closing <|end|>, encoded with the judge's own tokenizer (it may differ from the policy's). (N,)"""
    device = next(judge_model.parameters()).device
    encoded = [encode_response(judge_tok, p, t) for p, t in zip(prompts, texts, strict=True)]
    out = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        b = rollout_batch([c[0] for c in chunk], [c[1] for c in chunk], pad_id_of(judge_tok), device)
        lp = response_log_probs(judge_model, b["x"], b["y"])["log_probs"]
        out.append((lp * b["mask"]).sum(1).cpu())
    return torch.cat(out)


def check_judge(path):
    """The AI judge must be a language model: a missing file or a reward model is one line, not a traceback."""
    if not Path(path).is_file():
        raise UserError(
            f"--judge {path}: no such checkpoint; pass a language model such as <run>/pretrain/best.pt"
        )
    if load_checkpoint(path, "cpu").get("kind") == "reward_model":
        raise UserError(
            f"--judge {path} is a reward model (a scalar head, no next-token probabilities); the AI judge is a "
            "language model: pass <run>/pretrain/best.pt or a 05/06 checkpoint"
        )


def sign(a, b) -> int:
    return (a > b) - (a < b)


def agreement(labels: list, gold: list) -> dict:
    """How often a judge's labels (+1 first better, −1, 0 no preference) match the gold ones (±1) on the
    pairs gold decides; a tie counts 1/2 (no preference is not a wrong one). Wilson 95 % interval."""
    scores = [1.0 if j == g else 0.5 if j == 0 else 0.0 for j, g in zip(labels, gold, strict=True)]
    n = len(scores)
    return {
        "agreement": sum(scores) / n if n else None,
        "interval": list(wilson_interval(sum(scores), n)) if n else None,
        "n": n,
        "scores": scores,
    }


def label_pairs(policy, tok, judge_model, judge_tok, rm, records, cfg, answers, device) -> tuple:
    """(rows, stats): two sampled answers per prompt; each decided pair with its gold label and the labels
    of the AI judge, the length rule and (rm not None) the reward model, +1 when the first answer wins."""
    prompts = [encode_response(tok, r["prompt"], "")[0] for r in records]
    check_rollout_fits(prompts, cfg.max_new_tokens, policy.cfg.block_size)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    responses = sample_responses(policy, tok, prompts, 2, cfg.max_new_tokens, cfg.temperature, g)
    texts = decode_responses(tok, responses)
    chats = [r["prompt"] for r in records for _ in range(2)]
    ai = likelihood_scores(judge_model, judge_tok, chats, texts)
    proxy = (
        reward_of_responses(rm, [p for p in prompts for _ in range(2)], responses, pad_id_of(tok), device)
        if rm is not None
        else None
    )
    rows, identical, undecided = [], 0, 0
    for i, rec in enumerate(records):
        a, b = 2 * i, 2 * i + 1
        if responses[a] == responses[b]:
            identical += 1
            continue
        truth = 0
        if rec["rule"] in RULES:
            truth = judge(rec["rule"], texts[a], texts[b], rec, answers.get(user_question(rec["prompt"])))
        if not truth:
            undecided += 1
            continue
        rows.append(
            {
                "prompt": rec["prompt"],
                "first": texts[a],
                "second": texts[b],
                "ids": (prompts[i], responses[a], responses[b]),
                "rule": rec["rule"],
                "gold": truth,
                "ai": sign(ai[a].item(), ai[b].item()),
                "length": sign(len(responses[b]), len(responses[a])),  # the shorter one wins
                "reward_model": sign(proxy[a].item(), proxy[b].item()) if proxy is not None else None,
            }
        )
    judges = {"AI judge (language model)": "ai", "prefer the shorter answer": "length"}
    if rm is not None:
        judges["reward model"] = "reward_model"
    gold = [r["gold"] for r in rows]
    stats = {
        "prompts": len(records),
        "identical_skipped": identical,
        "undecided_by_gold": undecided,
        "decided_pairs": len(rows),
        "agreement": {name: agreement([r[key] for r in rows], gold) for name, key in judges.items()},
    }
    return rows, stats


def encoded_pairs(rows, key) -> list:
    """DPO pairs from the labelled rows by the labels in `key` (a 0 label carries no preference: dropped)."""
    out = []
    for r in rows:
        if not r[key]:
            continue
        prompt, first, second = r["ids"]
        chosen, rejected = (first, second) if r[key] > 0 else (second, first)
        out.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "rule": r["rule"]})
    return out


def judge_bar(stats) -> dict:
    """The AI judge's agreement with gold, its Wilson interval wholly above the length rule's agreement."""
    ai = stats["agreement"]["AI judge (language model)"]
    base = stats["agreement"]["prefer the shorter answer"]
    return make_bar(
        "agreement of the AI judge's labels with the gold rule judge (on-policy pairs gold decides; ties 1/2)",
        ai["agreement"] if ai["n"] else 0.0,
        threshold=max(0.5, base["agreement"] or 0.0),
        direction="higher",
        baseline=base["agreement"],
        baseline_name="prefer the shorter answer",
        interval=ai["interval"],
        n=ai["n"],
        note="the stronger of the length rule and chance (0.5) is the threshold",
    )


# ----------------------------------------------------------------------------- the run


def plot(result, path):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ag = result["labelling"]["agreement"]
    names = list(ag)
    ax1.bar(
        range(len(names)), [ag[k]["agreement"] or 0 for k in names], color=["C0", "C7", "C1"][: len(names)]
    )
    for i, k in enumerate(names):
        if ag[k]["interval"]:
            lo, hi = ag[k]["interval"]
            ax1.plot([i, i], [lo, hi], c="k")
    ax1.axhline(0.5, ls=":", c="grey")
    ax1.set(xticks=range(len(names)), ylim=(0, 1), title="agreement with the gold labels")
    ax1.set_xticklabels(names, rotation=10, fontsize=8)
    gold = result["heldout_gold"]
    names = list(gold)
    ax2.bar(range(len(names)), [gold[k]["mean"] for k in names], color=["C7", "C0", "C2"])
    for i, k in enumerate(names):
        lo, hi = gold[k]["interval"]
        ax2.plot([i, i], [lo, hi], c="k")
    ax2.set(xticks=range(len(names)), title="held-out gold reward (sampled, T = 1)")
    ax2.set_xticklabels(names, fontsize=8)
    save_figure(fig, path)


def train_rlaif_run(cfg: RLAIFConfig, argv=None) -> dict:
    """Sample, label twice, train DPO twice, score with the gold judge, write <out>/; returns the outcome."""
    check_rlaif_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else run / "rlaif"
    policy, tok = load_sft_policy(run, device)
    reference = load_reference(cfg.reference, policy, tok, device)
    if cfg.judge:
        judge_path = Path(cfg.judge)
    else:
        check_artifact(RunLayout(run).pretrain, made_by=RunLayout(run).made_by("pretrain"))
        judge_path = RunLayout(run).pretrain / "best.pt"
    check_judge(judge_path)
    judge_model, judge_tok = load_policy(judge_path, device)
    judge_model = frozen(judge_model)
    rm_path = RunLayout(run).rm / "rm.pt"
    rm = frozen(load_reward_model(rm_path, tok, device)) if rm_path.is_file() else None
    prompts_path = task_file(run, cfg.prompts_file, "preference_train.jsonl")
    held_path = task_file(run, cfg.heldout_file, "preference_heldout.jsonl")
    records = read_preference_pairs(prompts_path)[0]
    pick = torch.randperm(len(records), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.n_prompts]
    records = [records[i] for i in pick.tolist()]
    held_pairs = read_preference_pairs(held_path)[0]
    heldout = load_pairs(tok, held_path, policy.cfg.block_size, "held-out")
    chats, groups = prompt_groups(held_pairs, cfg.eval_limit)
    held = [encode_response(tok, c, "")[0] for c in chats]
    answers = short_answers(run)
    torch.manual_seed(cfg.seed)
    state = RunState(out, cfg, cfg.eval_interval, RunLayout(run).made_by("rlaif"))
    with state.claimed(cfg.overwrite) as tmp:  # the old run stays until this one succeeds
        t0 = time.time()
        rows, stats = label_pairs(policy, tok, judge_model, judge_tok, rm, records, cfg, answers, device)
        for name, a in stats["agreement"].items():
            if a["n"]:
                print(
                    f"{name}: agrees with gold on {a['agreement']:.3f} [{a['interval'][0]:.3f}, "
                    f"{a['interval'][1]:.3f}] of {a['n']} pairs"
                )
        ai_pairs, gold_pairs = encoded_pairs(rows, "ai"), encoded_pairs(rows, "gold")
        if not ai_pairs or not gold_pairs:  # said, and the bar fails: the policies stay the SFT model
            print(
                f"warning: of {stats['prompts']} prompts' answer pairs the gold judge decided "
                f"{stats['decided_pairs']} and the AI judge labelled {len(ai_pairs)}: nothing to train on "
                "(raise --n-prompts); both policies stay the SFT model"
            )
        dpo_cfg = PreferenceSettings(
            loss="dpo",
            beta=cfg.beta,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            eval_interval=cfg.eval_interval,
            seed=cfg.seed,
        )
        pad = pad_id_of(tok)
        sft_state = {k: v.clone() for k, v in policy.state_dict().items()}

        def held_gold():  # the policy's gold reward on the held-out prompts, the same samples' seed each time
            return policy_rewards(
                policy,
                reference,
                None,
                tok,
                held,
                groups,
                answers,
                cfg.eval_samples,
                cfg.max_new_tokens,
                cfg.seed,
            )

        sft_eval = held_gold()
        if "gold" in state.carry:  # trained before the run was interrupted
            done = state.carry["gold"]
            policy.load_state_dict(done["policy"])
            log_gold, gold_eval = done["records"], done["eval"]
        else:
            log_gold = (
                train_preference(
                    policy, reference, gold_pairs, heldout, dpo_cfg, pad, device, state=state, unit="gold"
                )
                if gold_pairs
                else []
            )
            gold_eval = held_gold()
            state.carry = {"gold": {"policy": policy.state_dict(), "records": log_gold, "eval": gold_eval}}
        save_policy(tmp / "gold_labels.pt", policy, RunLayout(run).tokenizer, steps=cfg.steps, labels="gold")
        policy.load_state_dict(sft_state)
        log_ai = (
            train_preference(
                policy, reference, ai_pairs, heldout, dpo_cfg, pad, device, state=state, unit="ai"
            )
            if ai_pairs
            else []
        )
        ai_eval = held_gold()
        save_policy(tmp / "ckpt.pt", policy, RunLayout(run).tokenizer, steps=cfg.steps, method="rlaif")
        train_s = time.time() - t0
        per_prompt = {
            "SFT": sft_eval["gold"],
            "RLAIF (AI labels)": ai_eval["gold"],
            "gold labels": gold_eval["gold"],
        }
        lo, hi = paired_bootstrap_interval(gold_eval["gold"], ai_eval["gold"])
        ev_ai = [r for r in log_ai if "heldout_loss" in r]
        outcome = {
            "bar": paired_bar(
                f"held-out gold reward (rule judge; {cfg.eval_samples} answers per prompt sampled at T = 1)",
                "RLAIF (AI labels)",
                ai_eval["gold"],
                {"SFT": sft_eval["gold"]},
                note="DPO on the AI judge's labels of the SFT model's own answer pairs",
            ),
            "bars": [],
            "judge": os.path.relpath(judge_path, out),
            "labelling": {
                **stats,
                "agreement": {
                    k: {kk: vv for kk, vv in v.items() if kk != "scores"}
                    for k, v in stats["agreement"].items()
                },
                "ai_pairs": len(ai_pairs),
                "gold_pairs": len(gold_pairs),
            },
            "heldout_gold": {
                k: {"mean": sum(v) / len(v), "interval": list(wilson_interval(sum(v), len(v))), "n": len(v)}
                for k, v in per_prompt.items()
            },
            "kl_from_sft": {"RLAIF (AI labels)": ai_eval["kl"], "gold labels": gold_eval["kl"]},
            "gold_labels_minus_rlaif": {
                "value": gold_eval["gold_mean"] - ai_eval["gold_mean"],
                "interval": [lo, hi],
                "n": len(held),
            },
            "heldout_before": ev_ai[0] if ev_ai else None,  # dpo.py's held-out pair metrics, AI labels
            "heldout_after": ev_ai[-1] if ev_ai else None,
            "steps": cfg.steps,
            "train_s": train_s,
            "device": device,
            "tokenizer": os.path.relpath(RunLayout(run).tokenizer, out),
        }
        outcome["bars"] = [outcome["bar"], judge_bar(stats)]
        outcome["headline"] = headline(outcome)
        write_jsonl(tmp / "pairs.jsonl", [{k: v for k, v in r.items() if k != "ids"} for r in rows])
        write_jsonl(
            tmp / "metrics.jsonl",
            [{"labels": "ai", **r} for r in log_ai] + [{"labels": "gold", **r} for r in log_gold],
        )
        write_json(tmp / "outcome.json", outcome)
        plot(outcome, tmp / "rlaif.png")
        inputs = [
            RunLayout(run).sft,
            judge_path if cfg.judge else RunLayout(run).pretrain,
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
    report(outcome, cfg, out)
    return outcome


def headline(o) -> str:
    ag = o["labelling"]["agreement"]["AI judge (language model)"]
    b, g = o["bar"], o["heldout_gold"]
    lo, hi = b["interval"]
    length = o["labelling"]["agreement"]["prefer the shorter answer"]
    agree = f"{ag['agreement']:.3f}" if ag["n"] else "n/a"
    length = f"{length['agreement']:.3f}" if length["n"] else "n/a"
    return (
        f"AI judge agrees with gold on {agree} of {ag['n']} pairs (length rule {length}); held-out gold: SFT "
        f"{g['SFT']['mean']:.3f}, RLAIF {g['RLAIF (AI labels)']['mean']:.3f} ({b['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]), "
        f"gold labels {g['gold labels']['mean']:.3f}"
    )


def report(o, cfg, out):
    lab = o["labelling"]
    print(
        f"{lab['prompts']} prompts: {lab['identical_skipped']} identical answer pairs, {lab['undecided_by_gold']} the "
        f"gold judge cannot tell apart, {lab['decided_pairs']} decided"
    )
    print("held-out gold reward (sampled):")
    for k, v in o["heldout_gold"].items():
        print(f"  {k:18s} {v['mean']:.3f} [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}] (n={v['n']})")
    d = o["gold_labels_minus_rlaif"]
    print(
        f"gold labels minus RLAIF: {d['value']:+.3f} [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}] "
        "(what the judge's errors cost)"
    )
    for b in o["bars"]:
        interval = "[{:+.3f}, {:+.3f}]".format(*b["interval"]) if b["interval"] else "(no pairs, no interval)"
        print(
            f"bar: {b['metric']}: {b['value']:+.3f} {interval} (n={b['n']}): {'PASS' if b['passed'] else 'FAIL'}"
        )
    print(
        f"rlaif: 2 x {cfg.steps} DPO steps, {o['train_s']:.0f}s with the sampling and scoring; wrote {out}/"
    )


def main(argv=None):
    cfg, _ = parse_config(RLAIFConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    train_rlaif_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
