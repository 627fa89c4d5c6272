"""DPO, IPO and SimPO as functions: the three losses, one batch's loss, the training loop, its evaluation.

    from preference_training import dpo_loss, train_preference
    losses, r_chosen, r_rejected = dpo_loss(0.1, policy_c, policy_r, ref_c, ref_r)      # (B,) each

dpo.py (the command) and rlaif.py train with `train_preference`; this module has no command line.

With π_θ the policy, π_ref the frozen SFT model, y_w ≻ y_l a pair and log π(y) = Σ_t log π(y_t | x, y_<t)
(05's masked_logprob_sum over the response and its <|end|>), h_w = log π_θ(y_w) − log π_ref(y_w),
h_l likewise:

    DPO    L = −log σ(β (h_w − h_l))                                        (Rafailov et al. 2023)
    IPO    L = (h_w − h_l − 1/(2β))²                                        (Azar et al. 2023)
    SimPO  L = −log σ(β/|y_w| · log π_θ(y_w) − β/|y_l| · log π_θ(y_l) − γ)  (Meng et al. 2024; no π_ref)

The NLL term (RPO, Pang et al. 2024 "Iterative Reasoning Preference Optimization"; Llama 3's recipe),
`nll_coef` = α > 0, for any of the three:

    L = L_pref + α · NLL(y_w)/|y_w|,   NLL(y_w)/|y_w| = −(1/|y_w|) Σ_t log π_θ(y_w,t | x, y_w,<t)

L_pref only sees the difference h_w − h_l, so it falls just as well when log π_θ(y_w) falls slowly and
log π_θ(y_l) fast. When y_w and y_l share all but a few tokens (" Kado's pet is a goat." vs "... an
owl."), the shared tokens' gradients cancel and the push-down of y_l's token spreads its probability to
every other token, y_w's included or not; and one pair's rejected "owl" is another person's chosen one.
Both log-probs fall (likelihood displacement; on the tiny run's factual pairs −0.13 and −1.09 nats in
the last 10 of 60 steps). The NLL term is SFT's loss on the chosen answer: it holds log π_θ(y_w) up
(+0.23 there), so the margin has to come from y_l.

DPO's implicit reward is r(x, y) = β log π_θ(y)/π_ref(y) (SimPO's: β/|y| log π_θ(y)); the logged reward
margin is r(y_w) − r(y_l) and the reward accuracy P(r(y_w) > r(y_l)), a tie counting 1/2 (it starts at
1/2: π = π_ref ties every pair). π_ref never changes, so its log-probs are computed once for every pair
and cached (preference_data.cached_log_probs); SimPO never reads them.

Interview questions it answers:
- What is DPO's loss when π_θ = π_ref? (−log σ(0) = log 2, for every pair: `dpo_loss`)
- Why IPO? (DPO keeps pushing h_w − h_l → ∞ on pairs it already ranks right - with deterministic
  preferences it overfits and drifts far from π_ref; IPO regresses the gap to a finite target 1/(2β))
- What does SimPO change? (no reference model: the length-normalized log-prob is the reward, which
  removes DPO's bias towards longer responses, and a margin γ asks for a clear gap)
- Why does DPO lower the chosen answer's likelihood, and what fixes it? (only the difference h_w − h_l
  is trained, and the push-down of y_l's token moves probability to other tokens, not only to y_w's;
  on pairs that differ in a few tokens both fall, the rejected faster - the logged chosen_logp_change
  and rejected_logp_change show it. An NLL term on y_w (RPO, `nll_coef`) holds the chosen answer up)
"""

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain")]
from common.cli import set_interrupt_hint
from common.files import pyplot, save_figure
from divergence import DivergenceGuard  # 03_model
from optimizers import clip_grad_norm, make_optimizer, param_groups  # 04_pretrain

from policy_io import save_policy
from preference_data import cached_log_probs, encode_pairs, pad_id_of, pair_batch, sequence_log_probs

LOSSES = ("dpo", "ipo", "simpo")
# IPO's 0.5 (target gap 1/(2β) = 1 nat): at 0.1 its 5-nat target pushes hardest of the three; on the
# factual pairs it raised the validation people's greedy error 0.011 -> 0.067, at 0.5 to 0.022 (issue 23)
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.5, "simpo": 2.0}


def beta_of(cfg) -> float:
    return cfg.beta or DEFAULT_BETA[cfg.loss]


# ----------------------------------------------------------------------------- the losses


def dpo_loss(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """DPO per pair (B,), and the implicit rewards r = β·(log π_θ − log π_ref) of chosen and rejected.

    L = −log σ(r_w − r_l) = −log σ(β[(log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))]):
    Bradley–Terry with the reward the KL-regularized optimum implies; log 2 when π_θ = π_ref.
    Inputs: summed response log-probs, (B,) each."""
    # >>> exercise: r = beta·(log pi − log pi_ref) for chosen and rejected; loss −log σ(r_c − r_r); return loss, r_c, r_r (detached)
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
    # <<< exercise


def ipo_loss(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """IPO per pair (B,), and the same implicit rewards as DPO (logged only).

    h = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l)),  L = (h − 1/(2β))²:
    a regression of the log-ratio gap to the finite target 1/(2β) (= 1 at β = 0.5, 5 at β = 0.1), so a pair ranked
    right is not pushed further. 1/(4β²) when π_θ = π_ref."""
    # >>> exercise: h = (log pi_c − log ref_c) − (log pi_r − log ref_r); loss (h − 1/(2 beta))²; rewards beta·(log pi − log ref), detached
    chosen_logratio, rejected_logratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    losses = (chosen_logratio - rejected_logratio - 1 / (2 * beta)) ** 2
    return losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()
    # <<< exercise


def simpo_loss(beta, policy_chosen_mean, policy_rejected_mean, gamma):
    """SimPO per pair (B,), and its rewards r = β·(1/|y|) log π_θ(y): no reference model.

    L = −log σ(r_w − r_l − γ); inputs are per-token mean log-probs (masked_logprob_mean), (B,) each, so a
    longer answer does not win by having more tokens; γ > 0 asks for a margin, not only the right order."""
    # >>> exercise: r = beta·(mean log pi) for chosen and rejected; loss −log σ(r_c − r_r − gamma); return loss, r_c, r_r (detached)
    chosen_rewards, rejected_rewards = beta * policy_chosen_mean, beta * policy_rejected_mean
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
    # <<< exercise


def preference_loss(
    loss_type, beta, policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, gamma=0.0
):
    """The loss `loss_type` names (dpo, ipo: summed log-probs and the reference's; simpo: per-token means,
    no reference): (per-pair losses (B,), chosen rewards (B,), rejected rewards (B,))."""
    if loss_type == "simpo":
        return simpo_loss(beta, policy_chosen, policy_rejected, gamma)
    if loss_type in ("dpo", "ipo"):
        loss = dpo_loss if loss_type == "dpo" else ipo_loss
        return loss(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    raise ValueError(f"unknown preference loss {loss_type!r}; one of {LOSSES}")


def chosen_nll(policy_chosen_mean):
    """RPO's extra term per pair (B,): the chosen response's per-token negative log-likelihood
    −log π_θ(y_w)/|y_w| (its masked_logprob_mean, <|end|> included), SFT's loss on the preferred answer."""
    return -policy_chosen_mean


def batch_loss(policy, encoded, ref, cfg, pad_id, device):
    """(mean loss, chosen rewards, rejected rewards, policy sums, terms) for encoded pairs; `ref` holds
    their cached reference log-probs ("chosen_sum", "rejected_sum"). With cfg.nll_coef = α > 0 the loss
    is L_pref + α · NLL(y_w)/|y_w| (module docstring, "the NLL term"); terms = {"preference": mean L_pref
    (log 2 for DPO at π = π_ref), "nll": mean NLL(y_w)/|y_w|}, floats, for the log."""
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
    nll = chosen_nll(means[:B])
    terms = {"preference": losses.mean().item(), "nll": nll.mean().item()}
    alpha = getattr(cfg, "nll_coef", 0.0)
    if alpha < 0:  # dpo.py's "auto" (-1) is resolved by the command, never trained with
        raise ValueError(
            f"nll_coef {alpha} < 0: pass the α to use (dpo.py resolves its auto -1 per pair source)"
        )
    if alpha:
        losses = losses + alpha * nll
    return losses.mean(), rc, rr, sums.detach(), terms


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
    losses, nlls, rc_all, rr_all, sums = [], [], [], [], []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        part = {k: v[i : i + batch_size] for k, v in ref.items()}
        _, rc, rr, s, terms = batch_loss(policy, chunk, part, cfg, pad_id, device)
        losses.append(terms["preference"] * len(chunk))
        nlls.append(terms["nll"] * len(chunk))
        rc_all.append(rc.cpu())
        rr_all.append(rr.cpu())
        sums.append(torch.stack([s[: len(chunk)], s[len(chunk) :]], 1).cpu())
    policy.train(was)
    rc, rr, s = torch.cat(rc_all), torch.cat(rr_all), torch.cat(sums)
    # log π_θ(y) − log π_ref(y) per pair, for every loss (SimPO's rewards are not log-ratios): the
    # likelihood-displacement check - both below 0 means probability left both answers
    d_chosen, d_rejected = s[:, 0] - ref["chosen_sum"], s[:, 1] - ref["rejected_sum"]
    return {
        "loss": sum(losses) / len(encoded),  # the preference loss alone (log 2 for DPO at the start)
        "chosen_nll": sum(nlls) / len(encoded),  # per token
        "reward_accuracy": tie_share(rc, rr),  # 1/2 at the start: π = π_ref ties every pair
        "reward_margin": (rc - rr).mean().item(),
        "chosen_reward": rc.mean().item(),
        "rejected_reward": rr.mean().item(),
        "logp_margin": (s[:, 0] - s[:, 1]).mean().item(),
        "ranks_chosen": tie_share(s[:, 0], s[:, 1]),
        "chosen_logp_change": d_chosen.mean().item(),
        "rejected_logp_change": d_rejected.mean().item(),
        "chosen_logp_fell": (d_chosen < 0).float().mean().item(),
        "n": len(encoded),
    }


def reference_cache(reference, encoded, cfg, pad_id, device) -> dict:
    """The reference log-probs of every pair, once (SimPO's loss never reads them; its log is the
    log-prob change from π_ref, measured for every loss)."""
    cache = cached_log_probs(reference, encoded, pad_id, device=device)
    return {"chosen_sum": cache["chosen_sum"], "rejected_sum": cache["rejected_sum"]}


@dataclass
class PreferenceSettings:
    """What train_preference reads from its config: dpo.py's DPOConfig has these fields (and more);
    rlaif.py, which trains DPO without dpo.py's command line, builds one of these."""

    loss: str = "dpo"  # dpo | ipo | simpo
    beta: float = 0.1
    simpo_gamma: float = 1.0
    steps: int = 60
    batch_size: int = 16
    lr: float = 5e-5
    eval_interval: int = 20
    seed: int = 1337
    nll_coef: float = 0.0  # α of the NLL term on the chosen answer (RPO); 0 = the plain loss


def train_preference(
    policy,
    reference,
    train,
    heldout,
    cfg,
    pad_id,
    device,
    out=None,
    tokenizer_dir=None,
    log=print,
    state=None,
    unit="policy",
) -> list:
    """DPO/IPO/SimPO steps on encoded pairs (cfg: a PreferenceSettings, or dpo.py's DPOConfig: loss, beta,
    simpo_gamma, steps, batch_size, lr, eval_interval, seed); every eval_interval steps a held-out evaluation and (with `out`)
    a checkpoint out/ckpt.pt. Returns the log records.
    state: the run's RunState (04's train_state), whose `unit` it continues and saves every few steps;
    the data order's RNG and the indices left in the epoch are part of it."""
    ref_train = reference_cache(reference, train, cfg, pad_id, device)
    ref_held = reference_cache(reference, heldout, cfg, pad_id, device)
    opt = make_optimizer("adamw", param_groups(policy, 0.0), cfg.lr, (0.9, 0.95))
    rng = random.Random(cfg.seed)
    guard = DivergenceGuard(lower=f"--lr (now {cfg.lr:g})")
    objects = ({"policy": policy}, {"adamw": opt}, {"order": rng}, guard)
    start, records, extra = state.restore(unit, *objects) if state else (0, [], {})
    order, t0 = extra.get("order", []), time.time()
    ckpt = Path(out) / "ckpt.pt" if out else None
    if not start:
        ev = preference_eval(policy, heldout, ref_held, cfg, pad_id, device)
        records.append({"step": 0, **{f"heldout_{k}": v for k, v in ev.items()}})
    policy.train()
    for step in range(start + 1, cfg.steps + 1):
        set_interrupt_hint(f"at step {step}; the previous result, if any, is kept")
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(train)), len(train))
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        ref_batch = {k: v[idx] for k, v in ref_train.items()}
        loss, rc, rr, sums, terms = batch_loss(
            policy, [train[i] for i in idx], ref_batch, cfg, pad_id, device
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
                "preference_loss": terms["preference"],
                "chosen_nll": terms["nll"],
                "reward_accuracy": tie_share(rc, rr),
                "reward_margin": (rc - rr).mean().item(),
                "chosen_reward": rc.mean().item(),
                "rejected_reward": rr.mean().item(),
                "chosen_logp_change": (sums[: len(idx)].cpu() - ref_batch["chosen_sum"]).mean().item(),
                "rejected_logp_change": (sums[len(idx) :].cpu() - ref_batch["rejected_sum"]).mean().item(),
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
        if state and state.due(step) and step < cfg.steps:
            state.save(unit, step, *objects, records=records, extra={"order": order})
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
