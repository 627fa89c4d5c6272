"""DPO and its family (IPO, SimPO): learn from preference pairs directly, with no reward model and no sampling.

    python 06_rlhf_dpo/dpo.py --run runs/tiny                   # DPO, writes runs/tiny/dpo/
    python 06_rlhf_dpo/dpo.py --run runs/tiny --loss ipo        # writes runs/tiny/ipo/
    python 06_rlhf_dpo/dpo.py --run runs/tiny --loss simpo      # writes runs/tiny/simpo/

Reads runs/<name>/sft/ (05) and data/tasks/preference_{train,heldout}.jsonl (01); writes
runs/<name>/<loss>/: ckpt.pt, outcome.json, metrics.jsonl, <loss>.png, manifest.json.

With π_θ the policy, π_ref the frozen SFT model, y_w ≻ y_l a pair and log π(y) = Σ_t log π(y_t | x, y_<t)
(05's masked_logprob_sum over the response and its <|end|>):

    DPO    L = −log σ(β[(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))])
    IPO    L = (h − 1/(2β))²,   h = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))
    SimPO  L = −log σ(β/|y_w| · log π_θ(y_w) − β/|y_l| · log π_θ(y_l) − γ)     (no reference; per-token mean)

DPO's implicit reward is r(x, y) = β log π_θ(y)/π_ref(y) (SimPO's: β/|y| log π_θ(y)); the logged reward
margin is r(y_w) − r(y_l) and the reward accuracy P(r(y_w) > r(y_l)). π_ref never changes, so its
log-probs are computed once for every pair and cached (preference_data.cached_log_probs).

The bar (outcome.json "bar", alignment_bars.py): pair accuracy (log π(y_w) > log π(y_l), ties 1/2) on the
held-out pairs that carry information - correct_fact, where chosen and rejected differ only in the fact;
an SFT model already ranks nearly every rude or rambling reply below its own kind of answer - after
training minus the stronger of SFT's and the length rule's, paired, 95 % interval above 0. The implicit-
reward accuracy starts at 1/2 because every pair ties (π = π_ref; a tie counts 1/2); it is logged, not judged.

Interview questions it answers:
- Which preference pairs carry information? (those the starting model does not already rank right)
- Where does DPO come from? (the KL-regularized RL objective max E[r] − β KL(π‖π_ref) has the closed-form
  optimum π* ∝ π_ref·exp(r/β), so r = β log π*/π_ref + const; putting that r into Bradley–Terry gives a
  loss on π alone, the constant cancelling in the difference)
- What is DPO's loss when π_θ = π_ref? (−log σ(0) = log 2, for every pair: `preference_loss`)
- Why IPO? (DPO keeps pushing h → ∞ on pairs it already ranks right - with deterministic preferences it
  overfits and drifts far from π_ref; IPO regresses h to a finite target 1/(2β))
- What does SimPO change? (no reference model: the length-normalized log-prob is the reward, which
  removes DPO's bias towards longer responses, and a margin γ asks for a clear gap)
- Why can DPO lower the chosen response's log-prob too? (only the difference is trained; both often
  fall, the rejected faster: the logged chosen/rejected rewards show it)
"""

import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

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
from common.files import pyplot, save_figure, write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.runs import fresh_output, write_manifest
from common.devices import resolve_device
from divergence import DivergenceGuard  # 03_model
from optimizers import clip_grad_norm, make_optimizer, param_groups  # 04_pretrain

from policy_io import load_reference, load_sft_policy, method_headline, save_policy
from preference_data import cached_log_probs, encode_pairs, pad_id_of, pair_batch, sequence_log_probs
from reward_scoring import length_rule_scores, load_pairs, tie_scores
from alignment_bars import INFORMATIVE_RULES, informative, paired_bar

LOSSES = ("dpo", "ipo", "simpo")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0}


@dataclass
class DPOConfig:
    run: str = option("", "run folder runs/<name>: reads sft/ (05) and data/tasks/ (01)")
    out: str = option("", "output folder; empty = <run>/<loss>")
    loss: str = option("dpo", "which member of the family", choices=LOSSES)
    train_file: str = option("", "preference JSONL; empty = <run>/data/tasks/preference_train.jsonl")
    heldout_file: str = option("", "held-out pairs; empty = <run>/data/tasks/preference_heldout.jsonl")
    reference: str = option("", "π_ref checkpoint; empty = a frozen copy of the SFT model")
    beta: float = option(
        0.0, "β; 0 = the loss's default " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_BETA.items()), min=0.0
    )
    simpo_gamma: float = option(1.0, "SimPO's target reward margin γ", min=0.0)
    steps: int = option(60, "optimizer steps", min=1)
    batch_size: int = option(16, "pairs per step", min=1)
    lr: float = option(5e-5, "AdamW learning rate", min=0.0)
    eval_interval: int = option(20, "steps between held-out evaluations (and checkpoints)", min=1)
    seed: int = option(1337, "seed for the pair order")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {"tiny": {}, "micro": dict(steps=3, batch_size=4, eval_interval=3)}


def check_dpo_config(cfg: DPOConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 05_sft_lora wrote sft/ into)")


def beta_of(cfg) -> float:
    return cfg.beta or DEFAULT_BETA[cfg.loss]


# ----------------------------------------------------------------------------- the loss


def preference_loss(
    loss_type, beta, policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, gamma=0.0
):
    """Per-pair losses (B,) and implicit rewards (chosen (B,), rejected (B,)), formulas in the docstring.

    dpo, ipo: policy_*/ref_* are summed log-probs log π(y | x). simpo: policy_* are per-token means
    (masked_logprob_mean) and the reference is not used."""
    # >>> exercise: r = beta·(log pi − log pi_ref); DPO −log σ(r_c − r_r); IPO (h − 1/(2 beta))² on the log-ratios h; SimPO −log σ(r_c − r_r − gamma), r = beta·mean log pi
    if loss_type == "simpo":
        chosen_rewards, rejected_rewards = beta * policy_chosen, beta * policy_rejected
        losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    else:
        chosen_logratio, rejected_logratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
        chosen_rewards, rejected_rewards = beta * chosen_logratio, beta * rejected_logratio
        if loss_type == "dpo":
            losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
        elif loss_type == "ipo":
            losses = (chosen_logratio - rejected_logratio - 1 / (2 * beta)) ** 2
        else:
            raise ValueError(f"unknown preference loss {loss_type!r}; one of {LOSSES}")
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
    # <<< exercise


def batch_loss(policy, encoded, ref, cfg, pad_id, device):
    """(mean loss, chosen rewards, rejected rewards, policy sums) for encoded pairs; `ref` holds their
    cached reference log-probs ("chosen_sum", "rejected_sum")."""
    x, y, _, _ = pair_batch(encoded, pad_id, device)
    sums, means = sequence_log_probs(policy, x, y)
    B = len(encoded)
    if cfg.loss == "simpo":
        losses, rc, rr = preference_loss("simpo", beta_of(cfg), means[:B], means[B:], gamma=cfg.simpo_gamma)
    else:
        losses, rc, rr = preference_loss(
            cfg.loss,
            beta_of(cfg),
            sums[:B],
            sums[B:],
            ref["chosen_sum"].to(device),
            ref["rejected_sum"].to(device),
        )
    return losses.mean(), rc, rr, sums.detach()


def one_example_loss(
    policy, reference, tok, beta, prompt, chosen, rejected, loss_type="dpo", gamma=0.0
) -> dict:
    """The loss of one pair, every intermediate number shown, for checking a single example by hand:

        one_example_loss(policy, reference, tok, 0.1, "Where does Noin Marora live?",
                         "Noin Marora lives in Calinwi.", "Ugh, stop bothering me with this.")
    prompt: a string (one user turn) or chat turns."""
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    (enc,), _ = encode_pairs(
        tok, [{"prompt": prompt, "chosen": chosen, "rejected": rejected, "rule": "-"}], float("inf")
    )
    device = next(policy.parameters()).device
    x, y, _, _ = pair_batch([enc], pad_id_of(tok), device)
    with torch.no_grad():
        ps, pm = sequence_log_probs(policy, x, y)
        rs, rm = sequence_log_probs(reference, x, y)
    if loss_type == "simpo":
        loss, rc, rr = preference_loss("simpo", beta, pm[:1], pm[1:], gamma=gamma)
    else:
        loss, rc, rr = preference_loss(loss_type, beta, ps[:1], ps[1:], rs[:1], rs[1:])
    return {
        "loss": loss.item(),
        "policy_chosen": ps[0].item(),
        "policy_rejected": ps[1].item(),
        "reference_chosen": rs[0].item(),
        "reference_rejected": rs[1].item(),
        "policy_chosen_mean": pm[0].item(),
        "policy_rejected_mean": pm[1].item(),
        "chosen_reward": rc.item(),
        "rejected_reward": rr.item(),
        "reward_margin": (rc - rr).item(),
    }


# ----------------------------------------------------------------------------- training and evaluation


def tie_share(better, worse) -> float:
    """Share of pairs with better > worse, a tie counting 1/2 (no preference is not a wrong one)."""
    return ((better > worse).float() + 0.5 * (better == worse).float()).mean().item()


@torch.no_grad()
def preference_eval(policy, encoded, ref, cfg, pad_id, device, batch_size=64) -> dict:
    """Mean loss, implicit reward accuracy and margin, mean chosen/rejected rewards, and how often the
    policy itself gives the chosen response the higher log-prob (log π(y_w) > log π(y_l)), on `encoded`."""
    was = policy.training
    policy.eval()
    losses, rc_all, rr_all, sums = [], [], [], []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        part = {k: v[i : i + batch_size] for k, v in ref.items()}
        loss, rc, rr, s = batch_loss(policy, chunk, part, cfg, pad_id, device)
        losses.append(loss.item() * len(chunk))
        rc_all.append(rc.cpu())
        rr_all.append(rr.cpu())
        sums.append(torch.stack([s[: len(chunk)], s[len(chunk) :]], 1).cpu())
    policy.train(was)
    rc, rr, s = torch.cat(rc_all), torch.cat(rr_all), torch.cat(sums)
    return {
        "loss": sum(losses) / len(encoded),
        "reward_accuracy": tie_share(rc, rr),  # 1/2 at the start: π = π_ref ties every pair
        "reward_margin": (rc - rr).mean().item(),
        "chosen_reward": rc.mean().item(),
        "rejected_reward": rr.mean().item(),
        "logp_margin": (s[:, 0] - s[:, 1]).mean().item(),
        "ranks_chosen": tie_share(s[:, 0], s[:, 1]),
        "n": len(encoded),
    }


def reference_cache(reference, encoded, cfg, pad_id, device) -> dict:
    """The reference log-probs of every pair, once (SimPO has no reference: zeros, never read)."""
    if cfg.loss == "simpo":
        zeros = torch.zeros(len(encoded))
        return {"chosen_sum": zeros, "rejected_sum": zeros}
    cache = cached_log_probs(reference, encoded, pad_id, device=device)
    return {"chosen_sum": cache["chosen_sum"], "rejected_sum": cache["rejected_sum"]}


def train_preference(
    policy, reference, train, heldout, cfg: DPOConfig, pad_id, device, out=None, tokenizer_dir=None, log=print
) -> list:
    """DPO/IPO/SimPO steps on encoded pairs; every eval_interval steps a held-out evaluation and (with `out`)
    a checkpoint out/ckpt.pt. Returns the log records."""
    ref_train = reference_cache(reference, train, cfg, pad_id, device)
    ref_held = reference_cache(reference, heldout, cfg, pad_id, device)
    opt = make_optimizer("adamw", param_groups(policy, 0.0), cfg.lr, (0.9, 0.95))
    rng = random.Random(cfg.seed)
    order, records, t0 = [], [], time.time()
    ckpt = Path(out) / "ckpt.pt" if out else None
    records.append(
        {
            "step": 0,
            **{
                f"heldout_{k}": v
                for k, v in preference_eval(policy, heldout, ref_held, cfg, pad_id, device).items()
            },
        }
    )
    policy.train()
    guard = DivergenceGuard(lower=f"--lr (now {cfg.lr:g})")
    for step in range(1, cfg.steps + 1):
        set_interrupt_hint(f"at step {step}; nothing was written (the previous result, if any, is kept)")
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(train)), len(train))
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        loss, rc, rr, _ = batch_loss(
            policy, [train[i] for i in idx], {k: v[idx] for k, v in ref_train.items()}, cfg, pad_id, device
        )
        loss.backward()
        grad_norm = clip_grad_norm([p for p in policy.parameters() if p.requires_grad], 1.0)
        guard.check(step, loss, grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        records.append(
            {
                "step": step,
                "loss": loss.item(),
                "reward_accuracy": tie_share(rc, rr),
                "reward_margin": (rc - rr).mean().item(),
                "chosen_reward": rc.mean().item(),
                "rejected_reward": rr.mean().item(),
                "grad_norm": float(grad_norm),
            }
        )
        if step % cfg.eval_interval == 0 or step == cfg.steps:
            ev = preference_eval(policy, heldout, ref_held, cfg, pad_id, device)
            records.append({"step": step, **{f"heldout_{k}": v for k, v in ev.items()}})
            log(
                f"step {step}/{cfg.steps} | loss {loss.item():.4f} | held-out reward accuracy {ev['reward_accuracy']:.3f} "
                f"margin {ev['reward_margin']:+.3f} | {time.time() - t0:.0f}s"
            )
            if ckpt:
                save_policy(ckpt, policy, tokenizer_dir, step=step, method=cfg.loss)
    policy.eval()
    return records


def plot(records, cfg, path):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    tr = [r for r in records if "loss" in r]
    ax1.plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=1, label="train loss")
    ax1.set(xlabel="step", ylabel="loss", title=f"{cfg.loss.upper()} (β={beta_of(cfg):g})")
    ax1.legend()
    ev = [r for r in records if "heldout_reward_margin" in r]
    steps = [r["step"] for r in ev]
    ax2.plot(steps, [r["heldout_chosen_reward"] for r in ev], "o-", label="chosen reward")
    ax2.plot(steps, [r["heldout_rejected_reward"] for r in ev], "o-", label="rejected reward")
    ax2.plot(steps, [r["heldout_reward_margin"] for r in ev], "o-", label="margin")
    ax2.set(xlabel="step", ylabel="implicit reward (held-out mean)", title="held-out pairs")
    ax2.legend()
    save_figure(fig, path)


def train_dpo_run(cfg: DPOConfig, argv=None) -> dict:
    """Train one of DPO/IPO/SimPO and write <out>/ (module docstring); returns the outcome."""
    check_dpo_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else run / cfg.loss
    policy, tok = load_sft_policy(run, device)
    reference = load_reference(cfg.reference, policy, tok, device)
    pad = pad_id_of(tok)
    train_path = task_file(run, cfg.train_file, "preference_train.jsonl")
    held_path = task_file(run, cfg.heldout_file, "preference_heldout.jsonl")
    train = load_pairs(tok, train_path, policy.cfg.block_size, "train")
    heldout = load_pairs(tok, held_path, policy.cfg.block_size, "held-out")
    torch.manual_seed(cfg.seed)
    with fresh_output(out, cfg.overwrite) as tmp:  # the old run stays until this one succeeds
        key = "mean" if cfg.loss == "simpo" else "sum"  # the score the loss trains
        ranks = lambda m: tie_scores(
            *(
                cached_log_probs(m, heldout, pad, device=device)[f"{w}_{key}"].tolist()
                for w in ("chosen", "rejected")
            )
        )
        before_ranks = ranks(policy)  # the policy is still the SFT model
        t0 = time.time()
        records = train_preference(
            policy, reference, train, heldout, cfg, pad, device, tmp, RunLayout(run).tokenizer
        )
        train_s = time.time() - t0
        ev = [r for r in records if "heldout_loss" in r]
        idx = informative(heldout)
        pick = lambda xs: [xs[i] for i in idx]
        outcome = {
            "bar": paired_bar(
                f"held-out pair accuracy on the informative pairs (log π(y_w) > log π(y_l) by {key}, ties 1/2)",
                cfg.loss.upper(),
                pick(ranks(policy)),
                {
                    "SFT (before training)": pick(before_ranks),
                    "prefer the shorter response": pick(length_rule_scores(heldout)),
                },
                note=f"{len(idx)} of {len(heldout)} held-out pairs carry information (rules "
                f"{', '.join(INFORMATIVE_RULES)}: chosen and rejected differ only in the fact); SFT on all "
                f"pairs: {sum(before_ranks) / len(before_ranks):.3f}",
            ),
            "loss": cfg.loss,
            "beta": beta_of(cfg),
            "heldout_before": ev[0],
            "heldout_after": ev[-1],
            "train_pairs": len(train),
            "steps": cfg.steps,
            "train_s": train_s,
            "device": device,
            "tokenizer": os.path.relpath(RunLayout(run).tokenizer, out),
        }
        write_jsonl(tmp / "metrics.jsonl", records)
        outcome["headline"] = method_headline("dpo", outcome)  # leads with the bar, paired_bar's
        write_json(tmp / "outcome.json", outcome)
        plot(records, cfg, tmp / f"{cfg.loss}.png")
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
    report(outcome, out)
    return outcome


def report(o, out):
    b, a = o["heldout_before"], o["heldout_after"]
    print(
        f"held-out pairs (n={a['heldout_n']}): reward accuracy {b['heldout_reward_accuracy']:.3f} -> "
        f"{a['heldout_reward_accuracy']:.3f}, reward margin {b['heldout_reward_margin']:+.3f} -> "
        f"{a['heldout_reward_margin']:+.3f}, log π(y_w) > log π(y_l) {b['heldout_ranks_chosen']:.3f} -> "
        f"{a['heldout_ranks_chosen']:.3f}"
    )
    bar = o["bar"]
    print(
        f"bar: {bar['metric']}: {bar['value']:+.3f} [{bar['interval'][0]:+.3f}, {bar['interval'][1]:+.3f}] "
        f"vs {bar['baseline_name']} (n={bar['n']}): {'PASS' if bar['passed'] else 'FAIL'}; {bar['note']}"
    )
    print(f"{o['loss']}: {o['steps']} steps in {o['train_s']:.0f}s; wrote {out}/")


def main(argv=None):
    cfg, _ = parse_config(DPOConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    train_dpo_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
