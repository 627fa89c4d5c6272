"""DPO for factuality (and IPO, SimPO): prefer the SFT model's own correct answers over its wrong ones.

    python 06_rlhf_dpo/dpo.py --run runs/tiny                   # DPO, writes runs/tiny/dpo/
    python 06_rlhf_dpo/dpo.py --run runs/tiny --loss ipo        # writes runs/tiny/ipo/
    python 06_rlhf_dpo/dpo.py --run runs/tiny --loss simpo      # writes runs/tiny/simpo/
    python 06_rlhf_dpo/dpo.py --run runs/tiny --pairs style --out runs/tiny/dpo_style   # the old pairs
    python 06_rlhf_dpo/dpo.py --run runs/tiny --resume          # continue a killed run, bit-exact

Reads runs/<name>/sft/ (05) and 01's task files: sft_{train,heldout}.jsonl (questions and the world's
answers) and preference_{train,heldout}.jsonl (templated style pairs); writes runs/<name>/<loss>/:
ckpt.pt, outcome.json, pairs.jsonl (the factual pairs it trained on), answers.jsonl (per held-out
question: the truth, SFT's and the tuned model's greedy answer, each judged), metrics.jsonl, <loss>.png,
manifest.json. Every --eval-interval steps the training state (weights, AdamW moments, the pair order
and its RNG, the log) goes to runs/<name>/.<loss>.resume.pt: `--resume` continues a killed run from there,
bit-exactly (04's train_state.RunState).

The recipe of Tian et al. (2023), "Fine-tuning Language Models for Factuality":
1. pairs (factual_pairs.py): for each TRAINING-half question, sample --samples answers from the SFT
   model at --temperature, judge each against the task file's answer, pair a correct with a wrong one;
2. train the policy (a copy of the SFT model) on them with DPO, IPO or SimPO (preference_training.py,
   the math there), the frozen SFT model as π_ref, plus --nll-coef α = 1 times the chosen answer's
   per-token NLL (RPO; the default for these pairs, off for --pairs style): without it both answers of
   a pair lose probability (tiny run, last 10 steps: chosen −0.13, rejected −1.09 nats from π_ref; with
   it +0.23 and −0.74) and the KL from SFT is larger;
3. judge on the HELD-OUT half (people whose QA was never trained on): greedy answers, error rate
   1 − answer accuracy (the fact is stated; the bar) and 1 − exact match (reported beside it).

The bar (factuality.py): the held-out error rate's relative reduction against the stronger of the SFT
model and the majority answer, ≥ 0.30 with a paired 95 % bootstrap interval wholly above 0. Beside it,
measured and reported, never judged: the KL from SFT on held-out questions (policy_io.sequence_kl, nats
per sampled answer), the training half's error rate, and a sanity check - pair accuracy on the
held-out style pairs (rude, rambling), length-balanced so "prefer the shorter" scores exactly 1/2.

--pairs style trains on the templated style pairs instead (the pipeline's old DPO): a control for the
factual bar, which it should not pass.

Interview questions it answers:
- Which preference pairs carry information? (those the starting model does not already rank right: the
  templated rude/rambling pairs start at 0.99 pair accuracy after SFT; the model's own wrong answers are
  exactly where it is unsure)
- Where does DPO come from? (the KL-regularized RL objective max E[r] − β KL(π‖π_ref) has the closed-form
  optimum π* ∝ π_ref·exp(r/β), so r = β log π*/π_ref + const; putting that r into Bradley–Terry gives a
  loss on π alone, the constant cancelling in the difference)
- How can preference tuning make a model more factual without new facts? (it moves probability towards
  answers the model already gives sometimes: sharpening knowledge stored in pretraining; a fact never
  sampled right gives no pair)
- Why does DPO lower the chosen answer's likelihood, and what fixes it? (the loss sees only the gap
  h_w − h_l; pushing y_l's fact token down spreads its probability anywhere, and one person's rejected
  "owl" is another's chosen, so both sides fall (logged as chosen/rejected_logp_change). An NLL term on
  y_w, --nll-coef, holds it up: the margin must then come from y_l)
- Why keep the sample's leading space? (" Noin" and "Noin" are different tokens: the stripped answer is
  a sequence the model never samples, log π −19 instead of −0.2, so the "on-policy" pairs were not)
- Why measure the KL from SFT? (DPO's optimum stays close to π_ref only through β; a large KL with a small
  gain means the policy drifted, e.g. into shorter or degenerate answers)
"""

import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "04_pretrain"), str(REPO / "05_sft_lora")]
from common.cli import UserError, check_config, command_line, option, parse_config, run_cli
from common.devices import resolve_device
from common.files import write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.runs import write_manifest
from train_state import RunState  # 04_pretrain
from chat_template import encode_prompt  # 05_sft_lora
from feedback_data import feedback_pairs, read_feedback  # 05_sft_lora

from alignment_bars import INFORMATIVE_RULES
from factual_pairs import length_balanced, on_policy_pairs, qa_records, question_of
from factuality import GOAL, error_summary, fact_scores, majority_scores, reduction_bar
from policy_io import load_reference, load_sft_policy, sequence_kl
from preference_data import cached_log_probs, encode_pairs, pad_id_of
from preference_training import (  # noqa: F401 (rlaif.py and the tests read them from here)
    DEFAULT_BETA,
    LOSSES,
    beta_of,
    one_example_loss,
    plot,
    preference_loss,
    train_preference,
)
from reward_scoring import length_rule_scores, load_pairs, tie_scores

PAIR_SOURCES = ("factual", "style")
# --nll-coef -1 (auto): the factual pairs are the model's own tokens, so the NLL term holds up answers it
# gives; the style pairs (01's file) are written without the leading space SFT's answers start with, so
# it would train a spelling the model never produces (measured: held-out error 0.246 -> 0.696, KL 11.4)
AUTO_NLL = {"factual": 1.0, "style": 0.0}


@dataclass
class DPOConfig:
    run: str = option("", "run folder runs/<name>: reads sft/ (05) and data/tasks/ (01)")
    out: str = option("", "output folder; empty = <run>/<loss>")
    loss: str = option("dpo", "which member of the family", choices=LOSSES)
    pairs: str = option(
        "factual",
        "training pairs: factual = the SFT model's own answers to training-half questions, correct ≻ wrong; "
        "style = the templated pairs of --train-file (a control)",
        choices=PAIR_SOURCES,
    )
    qa_train_file: str = option(
        "", "questions + answers to sample pairs for; empty = <run>/data/tasks/sft_train.jsonl"
    )
    qa_heldout_file: str = option(
        "", "held-out questions (the bar); empty = <run>/data/tasks/sft_heldout.jsonl"
    )
    train_file: str = option(
        "", "style pairs JSONL (given: trains on it, as --pairs style); empty = preference_train.jsonl"
    )
    heldout_file: str = option(
        "", "held-out style pairs (the sanity check); empty = preference_heldout.jsonl"
    )
    feedback: str = option(
        "",
        "ratings from the chat page / terminal chat (<run>/feedback/feedback.jsonl): each down-rated answer "
        "with a better one joins the training pairs, the better one chosen (05's feedback_data.py)",
    )
    samples: int = option(8, "answers sampled per training question", min=2)
    temperature: float = option(1.0, "sampling temperature of those answers (> 0)", min=0.01)
    pairs_per_prompt: int = option(4, "most pairs kept per question", min=1)
    max_new_tokens: int = option(16, "longest sampled or greedy answer", min=1)
    limit: int = option(0, "training questions sampled (0 = all)", min=0)
    gold_chosen: bool = option(
        False, "a question with no correct sample pairs the task file's answer with a wrong one (off-policy)"
    )
    reference: str = option("", "π_ref checkpoint; empty = a frozen copy of the SFT model")
    beta: float = option(
        0.0, "β; 0 = the loss's default " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_BETA.items()), min=0.0
    )
    simpo_gamma: float = option(1.0, "SimPO's target reward margin γ", min=0.0)
    nll_coef: float = option(
        -1.0,
        "α: add α · NLL(chosen)/|chosen| to the loss (RPO, 'DPO + SFT loss': it holds the chosen answer's "
        "likelihood up); 0 = the plain loss; -1 = auto: 1 for --pairs factual, 0 for style",
        min=-1.0,
    )
    steps: int = option(60, "optimizer steps", min=1)
    batch_size: int = option(16, "pairs per step", min=1)
    lr: float = option(5e-5, "AdamW learning rate", min=0.0)
    eval_interval: int = option(20, "steps between held-out evaluations (and checkpoints)", min=1)
    seed: int = option(1337, "seed for the samples and the pair order")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")
    resume: bool = option(
        False, "continue an interrupted run from its last state (saved every --eval-interval)"
    )


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(
        steps=3, batch_size=4, eval_interval=3, samples=2, max_new_tokens=8, limit=8, gold_chosen=True
    ),
}


def check_dpo_config(cfg: DPOConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 05_sft_lora wrote sft/ into)")


# ----------------------------------------------------------------------------- the pairs


def factual_training_pairs(policy, tok, questions, held, cfg, block_size) -> dict:
    """On-policy factual pairs for the training questions (and, to log the implicit reward on, for the
    held-out ones: never trained on), encoded; a UserError when no training question yields one."""
    t0 = time.time()
    pairs, stats = on_policy_pairs(policy, tok, questions, cfg, cfg.seed, cfg.gold_chosen)
    held_pairs, held_stats = on_policy_pairs(policy, tok, held, cfg, cfg.seed + 1, cfg.gold_chosen)
    train, too_long = encode_pairs(tok, pairs, block_size)
    heldout, _ = encode_pairs(tok, held_pairs, block_size)
    if not train:
        raise UserError(
            f"no training question yielded a correct and a wrong answer ({stats['with_pair']} of "
            f"{stats['questions']}: {stats['all_correct']} all correct, {stats['all_wrong']} all wrong); "
            "raise --samples or --temperature, or pass --gold-chosen"
        )
    stats.update(too_long=too_long, seconds=time.time() - t0)
    return {"train": train, "texts": pairs, "stats": stats, "heldout": heldout, "heldout_stats": held_stats}


def feedback_training_pairs(tok, path, block_size, n_train) -> list:
    """Users' corrections as encoded pairs (the better answer over the model's own): on-policy by
    construction, since the rejected side is what a served model said."""
    pairs = feedback_pairs(read_feedback(path))
    if not pairs:
        raise UserError(
            f"--feedback {path}: no down-rated answer in it has a better answer, so it makes no pair; "
            "give better answers in the chat, or leave --feedback out"
        )
    encoded, too_long = encode_pairs(tok, pairs, block_size)
    print(
        f"--feedback: {len(encoded)} pairs from users' ratings join the {n_train} training pairs"
        + (f" ({too_long} longer than the context skipped)" if too_long else "")
    )
    return encoded


def sanity_pairs(style_heldout, seed) -> list:
    """The held-out style pairs (every rule but the fact's), length-balanced by tokens."""
    style = [e for e in style_heldout if e["rule"] not in INFORMATIVE_RULES]
    return length_balanced(style, "chosen_ids", "rejected_ids", seed)


def pair_ranks(model, encoded, key, pad, device) -> list:
    """Per pair 1 / 1/2 / 0 as the model scores chosen >, =, < rejected (key: "sum" or "mean" log-prob)."""
    if not encoded:
        return []
    lp = cached_log_probs(model, encoded, pad, device=device)
    return tie_scores(lp[f"chosen_{key}"].tolist(), lp[f"rejected_{key}"].tolist())


def share(xs):
    return sum(xs) / len(xs) if xs else float("nan")


# ----------------------------------------------------------------------------- the run


def train_dpo_run(cfg: DPOConfig, argv=None) -> dict:
    """Build the pairs, train one of DPO/IPO/SimPO, measure, write <out>/ (module docstring); returns the outcome."""
    check_dpo_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else run / cfg.loss
    source = "style" if cfg.train_file else cfg.pairs
    if cfg.nll_coef < 0:
        cfg = replace(cfg, nll_coef=AUTO_NLL[source])
    policy, tok = load_sft_policy(run, device)
    reference = load_reference(cfg.reference, policy, tok, device)
    pad, block = pad_id_of(tok), policy.cfg.block_size
    qa_train_path = task_file(run, cfg.qa_train_file, "sft_train.jsonl")
    qa_held_path = task_file(run, cfg.qa_heldout_file, "sft_heldout.jsonl")
    held_path = task_file(run, cfg.heldout_file, "preference_heldout.jsonl")
    qa_train, qa_held = qa_records(qa_train_path), qa_records(qa_held_path)
    questions = qa_train[: cfg.limit] if cfg.limit else qa_train
    style_held = load_pairs(tok, held_path, block, "held-out style")
    sanity = sanity_pairs(style_held, cfg.seed)
    state = RunState(out, cfg, cfg.eval_interval, RunLayout(run).made_by("dpo", f"--loss {cfg.loss}"))
    # claimed before any sampling: a folder holding a run is refused (or locked) before minutes of work
    with state.claimed(cfg.overwrite) as tmp:  # the old run stays until this one succeeds
        torch.manual_seed(cfg.seed)
        policy.eval()
        if source == "factual":
            made = factual_training_pairs(policy, tok, questions, qa_held, cfg, block)
            train, texts, pair_stats = made["train"], made["texts"], made["stats"]
            log_pairs = made["heldout"] or sanity or style_held  # what the training log evaluates
            print(
                f"factual pairs: {pair_stats['with_pair']} of {pair_stats['questions']} training questions yield "
                f"a pair ({pair_stats['all_correct']} all correct, {pair_stats['all_wrong']} all wrong, "
                f"{pair_stats['gold_chosen']} of those paired with the task file's answer), "
                f"{len(train)} pairs; sample accuracy {pair_stats['sample_accuracy']:.3f}; "
                f"{pair_stats['seconds']:.0f}s"
            )
            train_path = None
        else:
            train_path = task_file(run, cfg.train_file, "preference_train.jsonl")
            train, texts, pair_stats = load_pairs(tok, train_path, block, "train"), None, None
            log_pairs = style_held
        if cfg.feedback:
            train = train + feedback_training_pairs(tok, cfg.feedback, block, len(train))
        key = "mean" if cfg.loss == "simpo" else "sum"  # the score the loss trains
        sft_held = fact_scores(policy, tok, qa_held, cfg.max_new_tokens)  # the policy is still the SFT model
        sft_train = fact_scores(policy, tok, questions, cfg.max_new_tokens)
        majority = majority_scores(qa_held, qa_train)
        sanity_before = pair_ranks(policy, sanity, key, pad, device)
        t0 = time.time()
        records = train_preference(
            policy, reference, train, log_pairs, cfg, pad, device, tmp, RunLayout(run).tokenizer, state=state
        )
        train_s = time.time() - t0
        name = cfg.loss.upper()
        tuned_held = fact_scores(policy, tok, qa_held, cfg.max_new_tokens)
        tuned_train = fact_scores(policy, tok, questions, cfg.max_new_tokens)
        prompts = [encode_prompt(tok, question_of(r)) for r in qa_held]
        kl = sequence_kl(policy, reference, tok, prompts, cfg.max_new_tokens, seed=cfg.seed)
        bars = [
            reduction_bar(
                METRIC_NAMES[m],
                name,
                tuned_held[m],
                {"SFT": sft_held[m], "majority answer": majority[m]},
                note=f"{source} pairs; KL from SFT {kl['kl_per_response']:.3f} nats per answer",
            )
            for m in ("answer_acc", "exact_match")
        ]
        ev = [r for r in records if "heldout_loss" in r]
        outcome = {
            "bar": bars[0],
            "bars": bars,
            "pairs": source,
            "loss": cfg.loss,
            "beta": beta_of(cfg),
            "nll_coef": cfg.nll_coef,
            "goal": GOAL,
            "heldout_error": {
                who: {METRIC_NAMES[m]: error_summary(s[m]) for m in METRIC_NAMES}
                for who, s in (("SFT", sft_held), ("majority answer", majority), (name, tuned_held))
            },
            "train_half_error": {
                who: {METRIC_NAMES[m]: error_summary(s[m]) for m in METRIC_NAMES}
                for who, s in (("SFT", sft_train), (name, tuned_train))
            },
            "kl_from_sft": kl,
            "pair_stats": pair_stats,
            "heldout_pair_stats": made["heldout_stats"] if source == "factual" else None,
            "sanity_style_pairs": {
                "what": "held-out style pairs (rude, rambling), length-balanced: pair accuracy by "
                f"{key} log-prob, ties 1/2; a sanity check, not the bar",
                "n": len(sanity),
                "prefer the shorter response": share(length_rule_scores(sanity)),
                "SFT": share(sanity_before),
                name: share(pair_ranks(policy, sanity, key, pad, device)),
            },
            "heldout_before": ev[0],
            "heldout_after": ev[-1],
            "train_pairs": len(train),
            "steps": cfg.steps,
            "train_s": train_s,
            "device": device,
            "tokenizer": os.path.relpath(RunLayout(run).tokenizer, out),
        }
        outcome["headline"] = headline(outcome, name)
        write_jsonl(tmp / "metrics.jsonl", records)
        write_jsonl(tmp / "answers.jsonl", answer_rows(qa_held, sft_held, tuned_held, name))
        if texts is not None:
            write_jsonl(tmp / "pairs.jsonl", texts)
        write_json(tmp / "outcome.json", outcome)
        plot(records, cfg, tmp / f"{cfg.loss}.png")
        given = [(p, g) for p, g in ((qa_train_path, cfg.qa_train_file), (qa_held_path, cfg.qa_heldout_file))]
        given += [(held_path, cfg.heldout_file)] + ([(train_path, cfg.train_file)] if train_path else [])
        given += [(Path(cfg.feedback), True)] if cfg.feedback else []
        inputs = [RunLayout(run).sft] + sorted({str(p if g else RunLayout(run).data) for p, g in given})
        write_manifest(
            tmp,
            stage="06_rlhf_dpo",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=[Path(p) for p in inputs] + ([Path(cfg.reference)] if cfg.reference else []),
        )
    report(outcome, out)
    return outcome


METRIC_NAMES = {"answer_acc": "answer accuracy", "exact_match": "exact match"}


def answer_rows(held, before, after, name) -> list:
    """One row per held-out question: the truth, SFT's greedy answer and the tuned model's, each judged."""
    return [
        {
            "question": r["messages"][-2]["content"],
            "answer": r["answer"],
            "SFT": before["answers"][i],
            "SFT_correct": before["answer_acc"][i],
            name: after["answers"][i],
            f"{name}_correct": after["answer_acc"][i],
        }
        for i, r in enumerate(held)
    ]


def headline(o, name) -> str:
    b, em = o["bars"]
    lo, hi = b["interval"]
    err = o["heldout_error"]
    return (
        f"held-out answer error rate {err['SFT']['answer accuracy']['error_rate']:.3f} (SFT) -> "
        f"{err[name]['answer accuracy']['error_rate']:.3f} ({name}): relative reduction {b['value']:+.3f} "
        f"[{lo:+.3f}, {hi:+.3f}] against {b['baseline_name']} (goal >= {o['goal']:.2f}, n = {b['n']}); "
        f"exact-match error {err['SFT']['exact match']['error_rate']:.3f} -> "
        f"{err[name]['exact match']['error_rate']:.3f} ({em['value']:+.3f}); KL from SFT "
        f"{o['kl_from_sft']['kl_per_response']:.2f} nats/answer; {o['train_pairs']} {o['pairs']} pairs"
    )


def report(o, out):
    name = o["loss"].upper()
    print(f"{'held-out (n=' + str(o['bar']['n']) + ')':<22} {'answer error':>12} {'exact-match error':>18}")
    for who, e in o["heldout_error"].items():
        print(
            f"{who:<22} {e['answer accuracy']['error_rate']:>12.3f} {e['exact match']['error_rate']:>18.3f}"
        )
    t = o["train_half_error"]
    print(
        f"training half: answer error {t['SFT']['answer accuracy']['error_rate']:.3f} (SFT) -> "
        f"{t[name]['answer accuracy']['error_rate']:.3f} ({name})"
    )
    s = o["sanity_style_pairs"]
    print(
        f"sanity, style pairs (n={s['n']}, length-balanced): pair accuracy SFT {s['SFT']:.3f} -> "
        f"{name} {s[name]:.3f}; length rule {s['prefer the shorter response']:.3f}"
    )
    for bar in o["bars"]:
        lo, hi = bar["interval"]
        print(
            f"{'bar' if bar is o['bars'][0] else 'also'}: {bar['metric']}: {bar['value']:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}] (n={bar['n']}): {'PASS' if bar['passed'] else 'FAIL'}; {bar['note']}"
        )
    print(f"KL from SFT {o['kl_from_sft']['kl_per_response']:.3f} nats/answer")
    print(f"{o['loss']}: {o['steps']} steps on {o['train_pairs']} pairs in {o['train_s']:.0f}s; wrote {out}/")


def main(argv=None):
    cfg, _ = parse_config(DPOConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    train_dpo_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
