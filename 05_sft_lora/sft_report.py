"""How an SFT run is judged and shown: the baselines' answers, the held-out bars, the Chinese table,
the printed report, outcome.json's headline and the plot.

sft.py trains; this file says what the training bought, on the held-out half of the world (people
whose facts the model saw in pretraining only as biographies, never in a question):

    base_eval, baselines, shots = baseline_answers(model, tok, held, train_records, cfg, device)
    ...                                                    # sft.py trains the model
    goals, paired, contenders = heldout_bars(tuned_answers, baselines, held, "SFT (lora)")

- the baselines (sft_baselines.py explains each): the base model zero-shot and with `shots` training
  conversations in its prompt, and the majority answer per question form;
- the bars: issue 23's goals, held-out answer accuracy >= 0.8 and exact match >= 0.7, each with its
  95 % Wilson interval wholly at or above the goal and the strongest baseline; and SFT's exact match
  minus the strongest baseline's, paired over the questions (sft_baselines.sft_bar);
- per attribute, and for Chinese questions about the held-out half, split by whether the person also
  had Chinese biographies (does knowledge cross languages?).

Run it through sft.py (`python 05_sft_lora/sft.py --run runs/tiny`); nothing here is a command.

Interview questions it answers:
- Why measure on people never seen in a question? (a model can memorize question -> answer pairs; only
  people whose facts it read in other words show whether SFT taught it to *extract* what it stored)
- Why several baselines? (the base model zero-shot scores 0 by construction, since it never learnt the
  format; the few-shot base and the majority answer are what SFT must beat for a claim to mean much)
"""

import sys
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from common.files import pyplot, save_figure
from common.layout import RunLayout

from chat_template import encode_prompt
from finetuned import generate_answers, score
from sft_baselines import (
    acc_scores,
    answer_correct,
    answer_span,
    em_scores,
    few_shot_conversations,
    goal_bar,
    majority_answers,
    majority_short_answers,
    sft_bar,
    summary,
)
from sft_data import read_conversations


def baseline_answers(model, tok, held, train_records, cfg, device) -> tuple:
    """(base_eval, baselines, shots) before any training: the base model's scores on the held-out
    questions (None with --no-eval-base), {name: answers} of every baseline, and the few-shot count used."""
    base_eval, baselines, shots = None, {}, 0
    if cfg.eval_base:
        base_answers = generate_answers(model, tok, [r["messages"] for r in held], cfg.max_new_tokens, device)
        base_eval = score(base_answers, held)
        baselines["base, zero-shot"] = base_answers
        shots, few_shot = fitting_few_shot(tok, held, train_records, cfg, model.cfg.block_size)
        if shots:
            baselines[f"base, {shots}-shot"] = generate_answers(
                model, tok, few_shot, cfg.max_new_tokens, device
            )
    baselines["majority answer"] = majority_answers(held, train_records)
    return base_eval, baselines, shots


def heldout_bars(answers, baselines, held, what) -> tuple:
    """(goals, paired, contenders) of the tuned model's held-out answers: the two goal bars, the paired
    exact-match bar against the strongest baseline, and per contender (SFT and each baseline) its exact
    match and answer accuracy with Wilson intervals."""
    paired, contenders = sft_bar(answers, baselines, held, what)
    accuracy = {k: summary(acc_scores(a, held)) for k, a in {**baselines, what: answers}.items()}
    for k in contenders:
        contenders[k] = {"exact_match": contenders[k], "answer_acc": accuracy[k]}
    return goal_bars(answers, baselines, held), paired, contenders


def fitting_few_shot(tok, held, train_records, cfg, block_size) -> tuple:
    """(shots, conversations): the few-shot prompts with the most shots (at most cfg.shots) that leave
    room for a max_new_tokens answer in the context; (0, []) when not even one shot fits."""
    for k in range(cfg.shots, 0, -1):
        convs = few_shot_conversations(held, train_records, k, cfg.seed)
        if max(len(encode_prompt(tok, c)) for c in convs) + cfg.max_new_tokens <= block_size:
            return k, convs
    return 0, []


def plot(records, base_eval, tuned_eval, path, title):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    tr = [(r["step"], r["loss"]) for r in records if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if tr:
        ax1.plot(*zip(*tr), lw=1, label="train (assistant tokens)")
    if va:
        ax1.plot(*zip(*va), "o-", label="validation subjects")
    ax1.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    ax1.legend()
    keys = [k for k in ("exact_match", "token_f1", "rouge_l", "answer_acc") if k in tuned_eval]
    xs = np.arange(len(keys))
    if base_eval:
        ax2.bar(xs - 0.2, [base_eval[k] for k in keys], 0.4, label="base + template")
    ax2.bar(xs + 0.2, [tuned_eval[k] for k in keys], 0.4, label="fine-tuned")
    ax2.set(xticks=xs, xticklabels=keys, ylim=(0, 1), title="held-out subjects, greedy answers")
    ax2.legend()
    save_figure(fig, path)


def goal_bars(answers, baselines, held) -> list:
    """[answer accuracy bar, exact match bar]: issue 23's goals on the held-out half (>= 0.8, >= 0.7),
    each with its Wilson interval wholly at or above the goal and the strongest baseline."""
    acc = {k: acc_scores(a, held) for k, a in baselines.items()}
    em = {k: em_scores(a, held) for k, a in baselines.items()}
    return [
        goal_bar("held-out answer accuracy (the short answer stated)", acc_scores(answers, held), 0.8, acc),
        goal_bar("held-out exact match of the answer sentence", em_scores(answers, held), 0.7, em),
    ]


def by_attribute(answers, held) -> dict:
    """attribute -> {"answer_acc", "exact_match", "n"} of the held-out answers (records with "attribute")."""
    groups = {}
    for a, r in zip(answers, held):
        g = groups.setdefault(r.get("attribute", "-"), {"answer_acc": [], "exact_match": []})
        g["answer_acc"].append(answer_correct(a, r["answer"]) if r.get("answer") is not None else 0.0)
        g["exact_match"].append(em_scores([a], [r])[0])
    return {
        k: {m: sum(v) / len(v) for m, v in g.items()} | {"n": len(g["exact_match"])}
        for k, g in sorted(groups.items())
    }


def chinese_table(model, tok, cfg, train_records, device) -> dict:
    """Chinese questions about the held-out half, per biography language ("en+zh": the person also had
    Chinese biographies; "en only": asked in Chinese about facts stored in English, the cross-language
    case): answer accuracy and exact match with Wilson intervals, beside the majority short answer of
    the attribute among the training half's Chinese questions. {} when there is no such file."""
    if cfg.zh_heldout_file == "none":
        return {}
    path = (
        Path(cfg.zh_heldout_file)
        if cfg.zh_heldout_file
        else RunLayout(cfg.run).tasks / "sft_zh_heldout.jsonl"
    )
    if not path.is_file():
        if cfg.zh_heldout_file:
            raise UserError(f"--zh-heldout-file {path}: no such file; 01_data/prepare.py writes it")
        return {}
    records = read_conversations(path)
    table = {}
    for group in sorted({r.get("bios", "all") for r in records}):
        rows = [r for r in records if r.get("bios", "all") == group]
        rows = rows[: cfg.eval_limit // 2] if cfg.eval_limit else rows
        answers = generate_answers(model, tok, [r["messages"] for r in rows], cfg.max_new_tokens, device)
        majority = [
            answer_correct(m, r["answer"]) for m, r in zip(majority_short_answers(rows, train_records), rows)
        ]
        table[group] = {
            "answer_acc": summary(acc_scores(answers, rows)),
            "exact_match": summary(em_scores(answers, rows)),
            "majority answer": summary(majority),
            "examples": [[r["messages"][-2]["content"], answer_span(a)] for r, a in zip(rows[:3], answers)],
        }
    return table


def report(o, out):
    base, tuned, f = o["heldout_base"], o["heldout_tuned"], o["corpus_val_loss"]
    keys = ("exact_match", "token_f1", "rouge_l", "answer_acc")
    line = lambda e: (
        " ".join(f"{k} {e[k]:.3f}" for k in keys if k in e)
        + (f" bleu {e['bleu']:.1f}" if "bleu" in e else "")
    )
    if base:
        print(f"held-out, base model + template: {line(base)}")
    print(f"held-out, after SFT ({o['method']}):   {line(tuned)}")
    print("held-out half, 95 % Wilson intervals:")
    fmt = lambda v: f"{v['mean']:.3f} [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]"
    for name, c in o["contenders"].items():
        print(f"  {name:<18} answer accuracy {fmt(c['answer_acc'])}   exact match {fmt(c['exact_match'])}")
    for b in o["bars"]:
        lo, hi = b["interval"]
        verdict = "PASS" if b["passed"] else "FAIL"
        print(
            f"bar: {b['metric']} = {b['value']:+.3f} [{lo:+.3f}, {hi:+.3f}] vs {b['threshold']:.3f} "
            f"({b['baseline_name']} {b['baseline']:.3f}, n={b['n']}): {verdict}"
        )
    if o.get("by_attribute"):
        print(
            "per attribute (answer accuracy): "
            + ", ".join(f"{k} {v['answer_acc']:.2f}" for k, v in o["by_attribute"].items())
        )
    for group, t in o.get("chinese", {}).items():
        print(
            f"asked in Chinese, biographies {group}: answer accuracy {fmt(t['answer_acc'])}, exact match "
            f"{fmt(t['exact_match'])}, majority answer {t['majority answer']['mean']:.3f} (n={t['answer_acc']['n']})"
        )
    print(
        f"pretraining val loss {f['before']:.4f} -> {f['after']:.4f} ({f['change']:+.4f}, forgetting if > 0)"
    )
    print(
        f"{o['steps']} steps in {o['train_s']:.0f}s ({o['train_cpu_s']:.0f} CPU s); {o['file']} {o['file_kib']:.1f} KiB; wrote {out}/"
    )


def outcome_block(o: dict) -> dict:
    """{"headline", "bar"} of outcome.json (common/outcome.py): the bar is issue 23's goal, held-out answer
    accuracy >= 0.8 (Wilson interval, and above the strongest baseline); "bars" adds exact match >= 0.7
    and the paired exact-match difference to the strongest baseline (sft_baselines.sft_bar)."""
    t, b = o["heldout_tuned"], o["bar"]
    zh = "".join(
        f"; asked in Chinese ({g}) {v['answer_acc']['mean']:.2f}" for g, v in o.get("chinese", {}).items()
    )
    headline = (
        f"{o['method']}: held-out answer accuracy {t.get('answer_acc', 0):.3f}, exact match "
        f"{t['exact_match']:.3f} vs {b['baseline_name']} {b['baseline']:.3f} on {t['n']} questions{zh}; "
        f"forgetting {o['corpus_val_loss']['change']:+.3f} nats"
    )
    return {"headline": headline, "bar": b}
