"""The models every 06 command starts from and writes: the SFT policy, its frozen reference, tuned checkpoints.

    policy, tok = load_sft_policy("runs/tiny")           # 05's SFT model as a plain GPT (LoRA merged in)
    reference = load_reference("", policy, tok)          # a frozen copy: π_ref, never trained
    save_policy(out / "ckpt.pt", policy, tok_dir, step=40, method="dpo")
    model, tok = load_policy(out / "ckpt.pt")

Every method here measures itself against π_ref (the KL penalty of PPO and GRPO, the log-ratios of DPO),
so the reference must be the same network with the same tokenizer as the policy: `check_same_model`
refuses a pair that differs in any config field or in the tokenizer (a different vocabulary would make
log π(y) − log π_ref(y) compare the probabilities of different strings).

Also here: `check_finite`, the guard the RL loops run on their rewards (a nan reward stops the run with
one line; the command's `fresh_output` then discards the run and the previous result stays). Losses and
gradient norms go through 03's `DivergenceGuard`, as in every trainer.

Interview questions it answers:
- Why keep a frozen copy of the SFT model? (the KL term to it stops the policy drifting into text the
  reward model never saw and scores wrongly; DPO's implicit reward is β·log π/π_ref, so π_ref defines it)
- Why must policy and reference share the tokenizer? (a log-prob ratio is only meaningful for the same
  token sequence under both models)
"""

import copy
import dataclasses
import os
import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "05_sft_lora")]
from common.cli import UserError
from common.layout import RunLayout
from common.runs import check_artifact
from checkpoint_io import config_differences, load_checkpoint, save_checkpoint  # 03_model
from gpt import GPT  # 03_model
from sample_text import load_tokenizer  # 03_model
from lora import merged_plain_model  # 05_sft_lora
from finetuned import load_finetuned  # 05_sft_lora
from preference_data import pad_id_of
from rl_common import response_log_probs
from rollouts import rollout_batch, sample_responses

RUNTIME_FIELDS = ("attn_backend",)  # how attention is computed, not what the model is


def sft_made_by(run) -> str:
    return f"python 05_sft_lora/sft.py --run {run} --method full"


def load_sft_policy(run, device="cpu"):
    """(policy GPT, tokenizer) from runs/<name>/sft/: a full fine-tune as it is, a LoRA fine-tune with its
    adapter merged into the weights (so every parameter can train, as in the full case)."""
    sft_dir = RunLayout(run).sft
    check_artifact(sft_dir, made_by=sft_made_by(run))
    model, tok, peft = load_finetuned(sft_dir, device)
    if isinstance(peft, str):  # LoRA: W ← W + (α/r)·B·A (and the marker rows), then a plain GPT
        model = merged_plain_model(model)
    elif peft is not None:
        raise UserError(
            f"{sft_dir} holds a {type(peft).__name__} fine-tune, whose extra modules live beside "
            f"the model; 06 trains whole models: rerun `{sft_made_by(run)}` (or --method lora)"
        )
    return model, tok


def frozen(model):
    """A copy in eval mode with no gradients: the reference policy (or a reward model being used)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def tokenizer_differences(a, b) -> list:
    """What differs between two BPE tokenizers (vocabulary, merges, special tokens, pre-token pattern)."""
    return [
        name
        for name in ("vocab", "merges", "special_tokens", "pattern")
        if getattr(a, name) != getattr(b, name)
    ]


def check_same_model(policy, tok, other, other_tok, what="the reference"):
    """A UserError naming every config field and tokenizer part in which `other` differs from the policy."""
    diffs = config_differences(
        dataclasses.asdict(policy.cfg), dataclasses.asdict(other.cfg), ignore=RUNTIME_FIELDS
    )
    diffs += [f"tokenizer {part}" for part in tokenizer_differences(tok, other_tok)]
    if diffs:
        raise UserError(
            f"{what} is not the policy's model ({'; '.join(diffs)}); log π − log π_ref only means "
            "something for the same network and tokenizer: use a checkpoint of the SFT model's family"
        )


def load_reference(path, policy, tok, device="cpu"):
    """π_ref: a frozen copy of the policy (path empty), else the checkpoint at `path`, checked to be the
    same model with the same tokenizer."""
    if not path:
        return frozen(policy)
    ref, ref_tok = load_policy(path, device)
    check_same_model(policy, tok, ref, ref_tok, f"--reference {path}")
    return frozen(ref)


def save_policy(path, model, tokenizer_dir, **extra):
    """A plain 03 checkpoint of `model`; the tokenizer folder is stored relative to the checkpoint's
    folder (the convention sample_text.load_tokenizer reads), so the run folder can move."""
    path = Path(path)
    save_checkpoint(
        path,
        dataclasses.asdict(model.cfg),
        model.state_dict(),
        tokenizer=os.path.relpath(Path(tokenizer_dir).resolve(), path.parent.resolve()),
        **extra,
    )


def load_policy(path, device="cpu"):
    """(GPT, tokenizer) of a checkpoint written by save_policy (or any 03/04/05 full checkpoint)."""
    path = Path(path)
    ckpt = load_checkpoint(path, device)
    return GPT.from_checkpoint(path, map_location=device, ckpt=ckpt), checkpoint_tokenizer(path, ckpt)


def checkpoint_tokenizer(path, ckpt):
    """The tokenizer a loaded checkpoint names (its folder relative to the checkpoint's), checked as an artifact."""
    return load_tokenizer(Path(path), ckpt.get("tokenizer"), "")


def check_finite(values, what, step):
    """Stop the run with one line when `values` hold a nan or inf."""
    values = torch.as_tensor(values)
    if bool(torch.isfinite(values).all()):
        return
    bad = "nan" if bool(torch.isnan(values).any()) else "inf"
    raise UserError(
        f"{what} is {bad} at step {step}; stopped without writing this run (the previous result, if any, "
        "is kept); check the reward model or lower --lr"
    )


# method -> (key in its outcome's heldout_before/after, what the key measures)
METHOD_METRICS = {
    "dpo": ("heldout_ranks_chosen", "share of held-out pairs with log π(y_w) > log π(y_l)"),
    "ppo": ("reward", "held-out greedy reward-model score"),
    "grpo": ("pass@1_greedy", "held-out arithmetic pass@1 (greedy)"),
}


def method_headline(method: str, o: dict) -> str:
    """The report card's line for an alignment method: its bar first (o["bar"], alignment_bars.paired_bar:
    the method minus the strongest cheap baseline, paired, with its 95 % interval), then the metric the
    method optimizes, before and after training (reported, never judged: a method is not graded by
    the quantity it pushed up)."""
    key, what = METHOD_METRICS[method]
    before, after = o["heldout_before"].get(key), o["heldout_after"].get(key)
    b = o["bar"]
    lo, hi = b["interval"] if b.get("interval") else (float("nan"), float("nan"))
    lead = (
        f"{b['metric'].split(':')[0]}: {method.upper()} minus {b['baseline_name']} "
        f"{b['value']:+.3f} [{lo:+.3f}, {hi:+.3f}] (n = {b['n']})"
    )
    return f"{lead}; {what} {before:.3f} -> {after:.3f} in {o['steps']} steps"


@torch.no_grad()
def sequence_kl(policy, reference, tok, prompts, max_new_tokens, seed=0, batch_size=64) -> dict:
    """KL(π ‖ π_ref) per response, estimated from one sample y ~ π per prompt (temperature 1):
    Σ_t log π(y_t) − log π_ref(y_t), averaged over prompts (nats per response), and the same per token."""
    device = next(policy.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    responses = sample_responses(policy, tok, prompts, 1, max_new_tokens, 1.0, g)
    total, tokens = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        b = rollout_batch(prompts[i : i + batch_size], responses[i : i + batch_size], pad_id_of(tok), device)
        lp = response_log_probs(policy, b["x"], b["y"])["log_probs"]
        ref = response_log_probs(reference, b["x"], b["y"])["log_probs"]
        total += ((lp - ref) * b["mask"]).sum().item()
        tokens += int(b["mask"].sum())
    return {"kl_per_response": total / len(prompts), "kl_per_token": total / max(tokens, 1)}
