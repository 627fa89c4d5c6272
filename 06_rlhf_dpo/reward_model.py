"""A reward model: the SFT network with a scalar head, trained on preference pairs (Bradley–Terry).

    python 06_rlhf_dpo/reward_model.py --run runs/tiny
    python 06_rlhf_dpo/reward_model.py --run runs/tiny --steps 300 --hh-file none
    python 06_rlhf_dpo/reward_model.py --run runs/tiny --resume     # continue a killed run, bit-exact

Reads runs/<name>/sft/ (05) and data/tasks/preference_{train,heldout}.jsonl (01); writes
runs/<name>/rm/: rm.pt, outcome.json, metrics.jsonl, rm.png, manifest.json. Every --eval-interval
steps the training state (weights, AdamW moments, the pair order and its RNG, the log) goes to
runs/<name>/.rm.resume.pt: `--resume` continues a killed run from there, bit-exactly.

The model: 05's SFT GPT with its LM head replaced by a linear map to one number, read at the last
non-pad token of prompt + response (the response's closing <|end|>, which has attended to everything):

    r(x, y) = wᵀ h_L(x, y)[last] + b                   h_L: the final-norm hidden state (B, T, d)

The loss (Bradley–Terry: P(y_w ≻ y_l) = σ(r_w − r_l)), averaged over a batch of pairs:

    L = −log σ(r(x, y_w) − r(x, y_l))   = softplus(r_l − r_w)

Only differences of rewards are trained, so r is defined up to a constant. The head starts at zero:
every response scores 0 and the first loss is exactly log 2.

Measured: pairwise accuracy (r_chosen > r_rejected; a tie counts 1/2, never as wrong) on the held-out
pairs (subjects never trained on, rejected replies from pools never trained on), overall and per rule,
beside two baselines: "prefer the shorter response" and an untrained network. The bar: the accuracy's
95 % Wilson interval lies wholly above the stronger of the two (and above chance); the same bar per rule
in outcome.json "bars" (`per_rule_bars`: which rules the reward model learned beyond what length or an
untrained network already tell); and on Anthropic's HH-RLHF harmless pairs from ../shared/data/preference/ when
present (conversations cut to their last user turn when longer than the context) - out of domain for a
model that has only seen the synthetic world, so near chance is the honest expectation there.

Interview questions it answers:
- Why read the reward at the last token? (in a causal model only the last position has seen the whole
  prompt and response; earlier positions cannot know how the response ends)
- Why a pairwise loss rather than regressing a score? (people agree far more on which of two answers
  is better than on an absolute score; Bradley–Terry turns comparisons into a scalar reward)
- What does the reward model learn easily and what not? (surface rules - rudeness, length - at once;
  facts only as far as the SFT body knows them: the per-rule accuracies show the split)
- Why initialize the reward model from the SFT model? (it must read the same distribution of text the
  policy will produce, and it starts with the policy's knowledge; InstructGPT did the same)
"""

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

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
from common.outcome import make_bar
from common.files import pyplot, save_figure, write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.runs import write_manifest
from common.devices import resolve_device
from divergence import DivergenceGuard  # 03_model
from train_state import RunState  # 04_pretrain
from gpt import GPT  # 03_model
from optimizers import clip_grad_norm, make_optimizer, param_groups  # 04_pretrain

from policy_io import load_sft_policy
from preference_data import encode_pairs, pad_id_of, read_hh_pairs
from reward_scoring import (
    RewardModel,
    length_rule_scores,
    load_pairs,
    pair_rewards,
    pairwise_accuracy,
    save_reward_model,
    summarize_scores,
)

HH_DEFAULT = REPO.parent / "shared" / "data" / "preference" / "hh_rlhf_harmless_test.jsonl"


@dataclass
class RMConfig:
    run: str = option("", "run folder runs/<name>: reads sft/ (05) and data/tasks/ (01)")
    out: str = option("", "output folder; empty = <run>/rm")
    train_file: str = option("", "preference JSONL; empty = <run>/data/tasks/preference_train.jsonl")
    heldout_file: str = option("", "held-out pairs; empty = <run>/data/tasks/preference_heldout.jsonl")
    hh_file: str = option(
        "", "HH-RLHF pairs to test on; empty = ../shared/data/preference/ when present, 'none' = skip"
    )
    hh_limit: int = option(300, "HH pairs read at most", min=1)
    steps: int = option(150, "optimizer steps", min=1)
    batch_size: int = option(16, "pairs per step", min=1)
    lr: float = option(1e-4, "AdamW learning rate", min=0.0)
    weight_decay: float = option(0.0, "AdamW weight decay on matrices", min=0.0)
    eval_interval: int = option(50, "steps between held-out accuracies", min=1)
    seed: int = option(1337, "seed for the pair order")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")
    resume: bool = option(
        False, "continue an interrupted run from its last state (saved every --eval-interval)"
    )


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(hh_file="none", steps=3, batch_size=4, eval_interval=3)}


def check_rm_config(cfg: RMConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 05_sft_lora wrote sft/ into)")


# ----------------------------------------------------------------------------- the model and its loss


def bradley_terry_loss(r_chosen, r_rejected):
    """−log σ(r_w − r_l), averaged over the pairs; softplus(−z) = −log σ(z) without overflow."""
    # >>> exercise: Bradley-Terry: mean over pairs of -log sigma(r_chosen - r_rejected), computed without overflow
    return F.softplus(-(r_chosen - r_rejected)).mean()
    # <<< exercise


def untrained_reward_model(cfg, seed, device) -> RewardModel:
    """A freshly initialized GPT with a random (not zero) scalar head: what pair accuracy means by chance,
    including whatever a random network picks up from length or shared words."""
    torch.manual_seed(seed)
    rm = RewardModel(GPT(cfg)).to(device)
    nn.init.normal_(rm.head.weight, std=0.02)
    return rm


def reward_model_bar(rm_eval: dict, baselines: dict) -> dict:
    """The bar: held-out pair accuracy (ties 1/2), its Wilson interval wholly above the strongest baseline.

    baselines: name -> summarize_scores dict (the length rule, an untrained model, ...); chance is 0.5."""
    name, best = max(baselines.items(), key=lambda kv: kv[1]["accuracy"])
    threshold = max(0.5, best["accuracy"])
    return make_bar(
        "held-out pair accuracy (ties 1/2)",
        rm_eval["accuracy"],
        threshold=threshold,
        direction="higher",
        baseline=best["accuracy"],
        baseline_name=name if best["accuracy"] >= 0.5 else "chance (0.5)",
        interval=rm_eval["interval"],
        n=rm_eval["n"],
        note="held-out rejected replies come from pools disjoint from training; the per-rule bars are in "
        "outcome.json 'bars'",
    )


def per_rule_bars(rm_eval: dict, baselines: dict) -> list:
    """One reward_model_bar per rule: the rule's held-out pairs only, against the baselines on the same pairs.

    A rule the length rule already ranks perfectly (concise vs rambling) cannot be passed: equal to the
    baseline is not better. That is the honest answer - length is all that rule needs."""
    bars = []
    for rule, acc in rm_eval["per_rule"].items():
        bar = reward_model_bar(acc, {k: b["per_rule"][rule] for k, b in baselines.items()})
        bars.append({**bar, "metric": f"{bar['metric']}, rule {rule}"})
    return bars


def train_reward_model(
    rm, train, heldout, cfg: RMConfig, pad_id, device, ckpt_path=None, log=print, state=None
) -> list:
    """Bradley–Terry training on encoded pairs (random order, epoch after epoch); returns the log records.
    state: the run's RunState, continued from and saved every cfg.eval_interval steps."""
    opt = make_optimizer("adamw", param_groups(rm, cfg.weight_decay), cfg.lr, (0.9, 0.95))
    rng = random.Random(cfg.seed)
    guard = DivergenceGuard(lower=f"--lr (now {cfg.lr:g})")
    objects = ({"rm": rm}, {"adamw": opt}, {"order": rng}, guard)
    start, records, extra = state.restore("rm", *objects) if state else (0, [], {})
    order, t0 = extra.get("order", []), time.time()
    rm.train()
    for step in range(start + 1, cfg.steps + 1):
        set_interrupt_hint(f"at step {step}; nothing was written (the previous result, if any, is kept)")
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(train)), len(train))
        batch = [train[i] for i in order[: cfg.batch_size]]
        del order[: cfg.batch_size]
        rc, rr = pair_rewards(rm, batch, pad_id, device)
        loss = bradley_terry_loss(rc, rr)
        loss.backward()
        grad_norm = clip_grad_norm([p for p in rm.parameters() if p.requires_grad], 1.0)
        guard.check(step, loss, grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        records.append(
            {
                "step": step,
                "loss": loss.item(),
                "train_accuracy": (rc > rr).float().mean().item(),
                "grad_norm": float(grad_norm),
            }
        )
        if step % cfg.eval_interval == 0 or step == cfg.steps:
            acc = pairwise_accuracy(rm, heldout, pad_id, device)
            records.append({"step": step, "heldout_accuracy": acc["accuracy"], "per_rule": acc["per_rule"]})
            log(
                f"step {step}/{cfg.steps} | loss {loss.item():.4f} | held-out accuracy {acc['accuracy']:.3f} | "
                f"{time.time() - t0:.0f}s"
            )
        if state and state.due(step) and step < cfg.steps:
            state.save("rm", step, *objects, records=records, extra={"order": order})
    rm.eval()
    return records


# ----------------------------------------------------------------------------- the run


def hh_accuracy(rm, tok, cfg, pad_id, device):
    """Pairwise accuracy on HH-RLHF pairs, or None when no file is given or found."""
    path = (
        None
        if cfg.hh_file == "none"
        else Path(cfg.hh_file)
        if cfg.hh_file
        else HH_DEFAULT
        if HH_DEFAULT.is_file()
        else None
    )
    if path is None:
        return None
    pairs, skipped = read_hh_pairs(path, cfg.hh_limit)
    encoded, too_long = encode_pairs(tok, pairs, rm.cfg.block_size, shorten_prompt=True)
    if not encoded:
        return {"file": str(path), "n": 0, "skipped": skipped, "too_long": too_long}
    return {
        "file": str(path),
        **pairwise_accuracy(rm, encoded, pad_id, device),
        "skipped": skipped,
        "too_long": too_long,
    }


def plot(records, outcome, path):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(
        [r["step"] for r in records if "loss" in r],
        [r["loss"] for r in records if "loss" in r],
        lw=1,
        label="train loss",
    )
    ax1.axhline(math.log(2), ls=":", c="grey", label="log 2 (no preference)")
    ev = [r for r in records if "heldout_accuracy" in r]
    ax1b = ax1.twinx()
    ax1b.plot(
        [r["step"] for r in ev], [r["heldout_accuracy"] for r in ev], "o-", c="C1", label="held-out accuracy"
    )
    ax1b.set(ylim=(0, 1), ylabel="accuracy")
    ax1.set(xlabel="step", ylabel="Bradley–Terry loss", title="reward model training")
    ax1.legend(loc="center left")
    per = {k: v["accuracy"] for k, v in outcome["heldout"]["per_rule"].items()}
    names = list(per) + ["all"] + (["HH"] if outcome.get("hh") and outcome["hh"].get("n") else [])
    vals = (
        list(per.values())
        + [outcome["heldout"]["accuracy"]]
        + ([outcome["hh"]["accuracy"]] if "HH" in names else [])
    )
    ax2.bar(range(len(names)), vals, color=["C0"] * len(per) + ["C2"] + ["C3"] * ("HH" in names))
    ax2.axhline(0.5, ls=":", c="grey")
    ax2.set(xticks=range(len(names)), ylim=(0, 1), title="held-out pairwise accuracy")
    ax2.set_xticklabels(names, rotation=15)
    save_figure(fig, path)


def train_rm_run(cfg: RMConfig, argv=None) -> dict:
    """Train and evaluate a reward model and write <out>/ (module docstring); returns the outcome."""
    check_rm_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else RunLayout(run).rm
    policy, tok = load_sft_policy(run, device)
    pad = pad_id_of(tok)
    train_path = task_file(run, cfg.train_file, "preference_train.jsonl")
    held_path = task_file(run, cfg.heldout_file, "preference_heldout.jsonl")
    train = load_pairs(tok, train_path, policy.cfg.block_size, "train")
    heldout = load_pairs(tok, held_path, policy.cfg.block_size, "held-out")
    torch.manual_seed(cfg.seed)
    rm = RewardModel(policy).to(device)
    state = RunState(out, cfg, cfg.eval_interval, RunLayout(run).made_by("rm"))
    with state.claimed(cfg.overwrite) as tmp:  # the old run stays until this one succeeds
        before = pairwise_accuracy(rm, heldout, pad, device)
        t0 = time.time()
        records = train_reward_model(rm, train, heldout, cfg, pad, device, tmp / "rm.pt", state=state)
        train_s = time.time() - t0
        after = pairwise_accuracy(rm, heldout, pad, device)
        baselines = {
            "prefer the shorter response": summarize_scores(length_rule_scores(heldout), heldout),
            "untrained model (random weights)": pairwise_accuracy(
                untrained_reward_model(policy.cfg, cfg.seed, device), heldout, pad, device
            ),
        }
        outcome = {
            "bar": reward_model_bar(after, baselines),
            "bars": [reward_model_bar(after, baselines), *per_rule_bars(after, baselines)],
            "heldout": after,
            "heldout_at_init": before,
            "baselines": baselines,
            "hh": hh_accuracy(rm, tok, cfg, pad, device),
            "train_pairs": len(train),
            "steps": cfg.steps,
            "train_s": train_s,
            "device": device,
            "tokenizer": os.path.relpath(RunLayout(run).tokenizer, out),
        }
        save_reward_model(tmp / "rm.pt", rm, RunLayout(run).tokenizer, step=cfg.steps)
        write_jsonl(tmp / "metrics.jsonl", records)
        outcome["headline"] = outcome_block(outcome)["headline"]  # the bar is reward_model_bar's
        write_json(tmp / "outcome.json", outcome)
        plot(records, outcome, tmp / "rm.png")
        write_manifest(
            tmp,
            stage="06_rlhf_dpo",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=[
                RunLayout(run).sft,
                *[
                    p if given else RunLayout(run).data
                    for p, given in ((train_path, cfg.train_file), (held_path, cfg.heldout_file))
                ],
            ],
        )
    report(outcome, out)
    return outcome


def report(o, out):
    h, b = o["heldout"], o["bar"]
    print(f"held-out pair accuracy per rule (ties 1/2; n={h['n']}):")
    verdicts = {b["metric"].split("rule ")[-1]: b["passed"] for b in o["bars"][1:]}
    for rule, v in h["per_rule"].items():
        base = " | ".join(f"{k} {bl['per_rule'][rule]['accuracy']:.3f}" for k, bl in o["baselines"].items())
        lo, hi = v["interval"]
        print(
            f"  {rule:20s} reward model {v['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] (n={v['n']}) | {base} | "
            f"{'PASS' if verdicts[rule] else 'FAIL'}"
        )
    print(
        f"bar: {b['value']:.3f} [{b['interval'][0]:.3f}, {b['interval'][1]:.3f}] vs {b['baseline_name']} "
        f"{b['baseline']:.3f}: {'PASS' if b['passed'] else 'FAIL'}"
    )
    if o["hh"]:
        hh = o["hh"]
        print(
            "HH-RLHF harmless pairs: "
            + (
                f"accuracy {hh['accuracy']:.3f} (n={hh['n']}, {hh['too_long']} too long "
                f"even cut to the last turn)"
                if hh["n"]
                else "none fit the context"
            )
        )
    print(f"{o['steps']} steps in {o['train_s']:.0f}s; wrote {out}/")


def outcome_block(o: dict) -> dict:
    """{"headline", "bar"} of outcome.json (common/outcome.py): held-out pairwise accuracy above chance."""
    h = o["heldout"]
    headline = f"held-out pairwise accuracy {h['accuracy']:.3f} (n={h['n']}; at init {o['heldout_at_init']['accuracy']:.3f})"
    bar = make_bar(
        "held-out pairwise accuracy",
        h["accuracy"],
        threshold=0.5,
        direction="higher",
        baseline=0.5,
        baseline_name="chance",
        n=h["n"],
        note="held-out pairwise accuracy above 0.5 (chance)",
    )
    return {"headline": headline, "bar": bar}


def main(argv=None):
    cfg, _ = parse_config(RMConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    train_rm_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
