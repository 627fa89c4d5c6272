"""Pruning: zero the smallest weights, or remove whole attention heads and MLP neurons, and measure both.

    python 07_distill_quant/prune.py --run runs/tiny                   # 30/50/70 % magnitude, 1 head, 25 % neurons
    python 07_distill_quant/prune.py --run runs/tiny --scope layer --heads 2 --head-score ablation
    python 07_distill_quant/prune.py --run runs/tiny --fractions 0.9 --heads 0 --neuron-fraction 0 --recovery-steps 200
    python 07_distill_quant/prune.py --run runs/tiny --resume          # continue a killed run, bit-exact

Unstructured (magnitude) pruning sets the fraction f of the block matrices' weights with the smallest
|w| to zero: ranked over all of them together (--scope global) or within each matrix (--scope layer).
The zeros are a mask that must survive further training: AdamW moves a zeroed weight again (its
gradient and its moments are not zero), so `apply_masks` runs after every optimizer step. A mask
shrinks nothing: the matrix is still dense, the file the same size, a dense matmul the same cost. It
pays only with a sparse format or sparse kernels (the table's CSR column computes what CSR would
store: 4-byte values + 4-byte column indices, so below ~50 % sparsity it is larger than dense) or with
hardware's 2:4 pattern.

Structured pruning removes whole attention heads (or GQA groups) and MLP neurons, chosen by gate
importance scores, so the model really gets smaller and faster: structured_pruning.py holds how.

Every variant is measured before and after the same short recovery fine-tune (masks kept), next to
the unpruned model fine-tuned the same way (a control: the teacher was not trained to convergence,
so some "recovery" is just more training). Writes runs/<name>/prune/: <variant>.pt (03's checkpoint
format), outcome.json, prune.png, manifest.json. Every --save-interval recovery steps the training state
(the variant being fine-tuned, AdamW moments, RNG; the variants already recovered) goes to
runs/<name>/.prune.resume.pt: `--resume` continues a killed run from there, bit-exactly (04's
train_state.RunState; a variant's pruning and its measurements are recomputed, they are deterministic).

The bar (outcome.json "bar"): recovery must remove more val loss from a pruned variant than the same
steps remove from the dense control, paired over val windows with a 95 % bootstrap interval; the
worst variant among those pruning damaged decides (per-variant bars in "bars"). The measured numbers
of the current code are in the report card, not here.

Interview questions it answers:
- Does 50 % unstructured sparsity make a model 2x smaller or faster? (no: without a sparse format or
  kernel the zeros are stored and multiplied like any number; CSR at 50 % stores about as many bytes)
- Why is structured pruning easier to deploy? (the result is a smaller dense model: same kernels,
  a smaller file and matmuls, and, for heads, a smaller KV cache)
- Why re-apply the mask after each step? (AdamW's update of a zero weight is not zero: its gradient,
  its moments and the decay all move it)
- How do you choose which heads to remove? (the loss change when the head is masked, measured or
  estimated to first order by gate gradients; many heads can go at little cost, Michel et al. 2019)
- Why compare recovery with the dense model given the same steps? (an undertrained model improves with
  any extra training; only the gain beyond the control's is the pruned model recovering)
- GQA and head pruning? (query heads share K/V heads in groups; remove whole groups to shrink the KV
  cache, or the same number of query heads per group to keep the grouping regular)
"""

import copy
import math
import sys
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
from common.outcome import make_bar
from common.stats import bootstrap_interval
from common.files import markdown_table, pyplot, save_figure, write_json
from common.layout import RunLayout
from common.runs import write_manifest
from common.devices import resolve_device
from divergence import DivergenceGuard  # 03_model
from gpt import GPT  # 03_model
from batches import batch_starts, get_batch, load_shards  # 04_pretrain
from optimizers import clip_grad_norm, make_optimizer, param_groups  # 04_pretrain
from train_state import RunState  # 04_pretrain

from structured_pruning import head_scores, heads_to_keep, neuron_scores, neurons_to_keep, remove_units
from compress_eval import (
    TEACHER_HELP,
    checkpoint_kib,
    count_params,
    load_teacher,
    nonzero_params,
    window_losses,
)


@dataclass
class PruneConfig:
    run: str = option("", "run folder runs/<name>: reads pretrain/ (or sft/), tokenizer/, tokens/")
    teacher: str = option("pretrain", "the model to prune: " + TEACHER_HELP)
    out: str = option("", "output folder; empty = <run>/prune")
    fractions: list = option(
        [0.3, 0.5, 0.7], "magnitude pruning: fractions of block weights set to 0, each in [0, 1)", sep=","
    )
    scope: str = option(
        "global", "rank |w| over all block matrices, or within each", choices=("global", "layer")
    )
    heads: int = option(1, "attention heads removed from every layer (0 = skip)", min=0)
    gqa_unit: str = option(
        "group",
        "with GQA: remove whole K/V groups, or query heads from each group alike",
        choices=("group", "query"),
    )
    head_score: str = option(
        "taylor",
        "importance: gate-gradient estimate, or the measured loss change",
        choices=("taylor", "ablation"),
    )
    neuron_fraction: float = option(
        0.25, "fraction of MLP hidden neurons removed from every layer (0 = skip), in [0, 1)"
    )
    score_batches: int = option(4, "train batches the importance scores average over", min=1)
    recovery_steps: int = option(30, "fine-tuning steps after pruning (masks kept; 0 = none)", min=0)
    lr: float = option(3e-4, "recovery fine-tune learning rate (constant)", min=0.0)
    batch_size: int = option(16, "sequences per step (scores and recovery)", min=1)
    eval_windows: int = option(64, "val windows for the perplexity (the same for every variant)", min=1)
    seed: int = option(7, "data order of the scores and the recovery fine-tune", min=0)
    save_interval: int = option(
        10, "recovery steps between saved training states (what --resume continues)", min=1
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")
    resume: bool = option(
        False, "continue an interrupted run from its last state (saved every --save-interval)"
    )


# `tiny` is the dataclass defaults; `micro` runs in seconds, for the smoke test (run_all.py --preset micro).
PRESETS = {
    "tiny": {},
    "micro": dict(
        fractions=[0.5],
        heads=0,
        neuron_fraction=0.0,
        score_batches=1,
        recovery_steps=2,
        batch_size=4,
        eval_windows=2,
    ),
}


def check_prune_config(cfg: PruneConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 04_pretrain wrote pretrain/ into)")
    for f in [*cfg.fractions, cfg.neuron_fraction]:
        if not 0 <= f < 1:
            raise UserError(
                f"pruning fraction {f} is outside [0, 1): 0 prunes nothing, 1 would remove every weight"
            )


def check_heads(model_cfg, n_remove: int, unit: str):
    """A UserError unless n_remove query heads can go from every layer (at least one must stay; with GQA
    the count must fit the groups)."""
    H, Hkv = model_cfg.n_head, model_cfg.n_kv_head
    g = H // Hkv
    unit = "group" if g == 1 else unit  # MHA: a group is one head
    if n_remove >= H:
        raise UserError(
            f"--heads {n_remove}: a layer has {H} heads and at least one must stay; use at most {H - 1}"
        )
    if unit == "group" and n_remove % g:
        raise UserError(
            f"--heads {n_remove}: with GQA, {g} query heads share each K/V head; remove a multiple of "
            f"{g} (whole groups) or pass --gqa-unit query"
        )
    if unit == "query" and n_remove % Hkv:
        raise UserError(
            f"--heads {n_remove}: --gqa-unit query removes the same number from each of the {Hkv} "
            f"K/V groups; use a multiple of {Hkv}"
        )


# ----------------------------------------------------------------------------- unstructured


def prunable_weights(model) -> dict:
    """{name: weight} of the matrices inside the blocks (attention and MLP). Embeddings (tied to the LM
    head), norms and biases stay dense: they are a small share here and the most sensitive."""
    return {n: p for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2}


def magnitude_masks(model, fraction: float, scope="global") -> dict:
    """{name: bool mask, True = kept} zeroing exactly floor(fraction·n) weights of smallest |w|: over all
    prunable matrices together (global) or floor(fraction·n_matrix) in each (layer). Ties are broken
    by position (a stable sort), so the count is exact."""
    # >>> exercise: masks zeroing exactly floor(f·n) smallest |w|, over all matrices (global) or each (layer)
    weights = prunable_weights(model)

    def keep_mask(values, n_drop):
        mask = torch.ones(values.numel(), dtype=torch.bool, device=values.device)
        mask[values.abs().flatten().argsort(stable=True)[:n_drop]] = False
        return mask

    if scope == "layer":
        return {n: keep_mask(w.detach(), int(fraction * w.numel())).view_as(w) for n, w in weights.items()}
    flat = torch.cat([w.detach().flatten() for w in weights.values()])
    mask, masks, i = keep_mask(flat, int(fraction * flat.numel())), {}, 0
    for n, w in weights.items():
        masks[n] = mask[i : i + w.numel()].view_as(w)
        i += w.numel()
    return masks
    # <<< exercise


@torch.no_grad()
def apply_masks(model, masks: dict):
    params = dict(model.named_parameters())
    for n, m in masks.items():
        params[n].mul_(m)


def csr_kib(model, masks: dict) -> float:
    """KiB the model would take with the masked matrices in CSR (fp32 values, int32 column indices,
    int32 row pointers) and everything else dense fp32: what a mask could save with a sparse format."""
    dense = sum(p.numel() for n, p in model.named_parameters() if n not in masks)
    csr = sum(int(m.sum()) * 8 + (m.shape[0] + 1) * 4 for m in masks.values())
    return (4 * dense + csr) / 1024


# ----------------------------------------------------------------------------- recovery and measurement


def train_batches(train, block_size, cfg: PruneConfig, n, device, offset=0) -> list:
    return [
        get_batch(
            train,
            batch_starts(len(train), block_size, cfg.batch_size, cfg.seed, offset + i),
            block_size,
            device,
        )
        for i in range(n)
    ]


def recovery_finetune(model: GPT, train, cfg: PruneConfig, device, masks=None, label="", state=None):
    """cfg.recovery_steps of AdamW on the LM loss (constant lr, no weight decay), the masks re-applied
    after every step so pruned weights stay exactly zero. state: the run's RunState, whose unit `label`
    is continued (or, recovered before the interrupt, taken from its carry) and saved every
    cfg.save_interval steps."""
    if not cfg.recovery_steps:
        return
    if state and label in state.carry:  # recovered before the run was interrupted
        model.load_state_dict(state.carry[label])
        return
    for p in model.parameters():
        p.requires_grad_(True)
    opt = make_optimizer("adamw", param_groups(model, 0.0), cfg.lr, (0.9, 0.95))
    model.train()
    T = model.cfg.block_size
    guard = DivergenceGuard(lower=f"--lr (now {cfg.lr:g})", vocab_size=model.cfg.vocab_size)
    objects = ({"model": model}, {"adamw": opt}, {}, guard)
    start, _, _ = state.restore(label, *objects) if state else (0, [], {})
    for step in range(start, cfg.recovery_steps):
        set_interrupt_hint(f"at recovery step {step} of {label}; nothing was written; rerun to start again")
        x, y = get_batch(train, batch_starts(len(train), T, cfg.batch_size, cfg.seed + 1, step), T, device)
        loss = model(x, y)[1]
        loss.backward()
        guard.check(step + 1, loss, clip_grad_norm(list(model.parameters()), 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if masks:
            apply_masks(model, masks)
        if state and state.due(step + 1) and step + 1 < cfg.recovery_steps:
            state.save(label, step + 1, *objects)
    model.eval()
    if state:  # what a resumed run takes instead of fine-tuning it again
        state.carry = {**state.carry, label: model.state_dict()}


def variants(teacher: GPT, train, cfg: PruneConfig, device):
    """(name, what, model, masks) for every pruning the config asks for, before any recovery."""
    T = teacher.cfg.block_size
    yield "dense", "nothing (control)", copy.deepcopy(teacher), None
    for f in cfg.fractions:
        model = copy.deepcopy(teacher)
        masks = magnitude_masks(model, f, cfg.scope)
        apply_masks(model, masks)
        yield (
            f"magnitude_{round(100 * f)}",
            f"{f:.0%} of block weights zeroed ({cfg.scope}; a mask)",
            model,
            masks,
        )
    scoring = train_batches(train, T, cfg, cfg.score_batches, device)
    if cfg.heads:
        q_keep, kv_keep = heads_to_keep(
            head_scores(teacher, scoring, cfg.head_score), cfg.heads, teacher.cfg.n_kv_head, cfg.gqa_unit
        )
        yield (
            f"heads_{cfg.heads}",
            f"{cfg.heads} of {teacher.cfg.n_head} heads per layer removed ({cfg.head_score})",
            remove_units(teacher, q_keep, kv_keep),
            None,
        )
    if cfg.neuron_fraction:
        keep = neurons_to_keep(neuron_scores(teacher, scoring), cfg.neuron_fraction)
        yield (
            f"neurons_{round(100 * cfg.neuron_fraction)}",
            f"{teacher.cfg.ffn_hidden - len(keep[0])} of {teacher.cfg.ffn_hidden} MLP neurons per layer removed",
            remove_units(teacher, neuron_keep=keep),
            None,
        )


def prune_bars(losses: dict) -> tuple:
    """(bar, bars): per pruned variant, the val loss recovery fine-tuning removes beyond what the same
    steps remove from the dense control, paired over val windows:
        d_i = (L_pruned,i - L_recovered,i) - (L_dense,i - L_dense recovered,i)
    with a 95 % bootstrap interval (passes wholly above 0). The stage's bar is the worst one among the
    variants that pruning damaged (pruned loss above the dense model's, interval above 0); a variant
    pruning did not hurt has nothing to recover, so its bar is reported but does not decide."""
    dense_before, dense_after = losses["dense"]
    bars, damaged = {}, {}
    for name, (before, after) in losses.items():
        if name == "dense":
            continue
        d = (before - after) - (dense_before - dense_after)
        bars[name] = make_bar(
            f"{name}: val loss removed by recovery beyond the dense control's (nats/token, paired over windows)",
            float(d.mean()),
            threshold=0.0,
            direction="higher",
            baseline=float((dense_before - dense_after).mean()),
            baseline_name="dense model, the same recovery steps",
            interval=bootstrap_interval(d),
            n=len(d),
        )
        if bootstrap_interval(before - dense_before)[0] > 0:
            damaged[name] = bars[name]
    if not damaged:
        return make_bar(
            "val loss removed by recovery beyond the dense control's (worst damaged variant)",
            None,
            threshold=0.0,
            direction="higher",
            note="no variant's pruning raised the val loss beyond its interval: nothing to recover",
        ), bars
    worst = min(damaged, key=lambda k: damaged[k]["interval"][0])
    bar = dict(damaged[worst])
    bar["note"] = f"worst of the damaged variants ({', '.join(damaged)}): {worst}"
    return bar, bars


def prune(cfg: PruneConfig, argv=None) -> dict:
    check_prune_config(cfg)
    device = resolve_device(cfg.device)
    run = Path(cfg.run)
    out = Path(cfg.out) if cfg.out else run / "prune"
    teacher, _, source = load_teacher(run, cfg.teacher, device)
    if cfg.heads:
        check_heads(teacher.cfg, cfg.heads, cfg.gqa_unit)
    T = teacher.cfg.block_size
    train, val, _ = load_shards(run, T)
    rows, losses = [], {}
    state = RunState(out, cfg, cfg.save_interval, RunLayout(run).made_by("prune"))
    with state.claimed(cfg.overwrite) as tmp:  # refused now, not after training; built beside <out>
        print(
            f"pruning {source} ({count_params(teacher):,} params); recovery: {cfg.recovery_steps} steps at lr {cfg.lr:g}",
            flush=True,
        )
        for name, what, model, masks in variants(teacher, train, cfg, device):
            before = window_losses(model, val, cfg.eval_windows, device)
            row = {
                "variant": name,
                "removed": what,
                "params": count_params(model),
                "nonzero_params": nonzero_params(model),
                "ppl_pruned": math.exp(before.mean()),
            }
            recovery_finetune(model, train, cfg, device, masks, name, state)
            after = window_losses(model, val, cfg.eval_windows, device)
            losses[name] = (before, after)
            row["ppl_recovered"] = math.exp(after.mean())
            row["nonzero_after_recovery"] = nonzero_params(model)
            row["file_kib"] = checkpoint_kib(model, tmp / f"{name}.pt")
            row["csr_kib"] = csr_kib(model, masks) if masks else None
            rows.append(row)
            print(
                f"{name:<14} params {row['params']:>9,} nonzero {row['nonzero_params']:>9,} | val ppl "
                f"{row['ppl_pruned']:8.2f} -> {row['ppl_recovered']:8.2f} after recovery | {row['file_kib']:.0f} KiB",
                flush=True,
            )
        bar, bars = prune_bars(losses)
        for row in rows:
            if row["variant"] in bars:
                row["recovery_beyond_dense"] = bars[row["variant"]]["value"]
                row["recovery_beyond_dense_interval"] = bars[row["variant"]]["interval"]
        outcome = {
            "model": str(source),
            "config": asdict(cfg),
            "device": device,
            "rows": rows,
            "bar": bar,
            "bars": list(bars.values()),
        }
        outcome["headline"] = outcome_block(rows)["headline"]
        write_json(tmp / "outcome.json", outcome)
        plot(rows, tmp / "prune.png")
        write_manifest(
            tmp,
            stage="07_distill_quant/prune",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=[source, RunLayout(run).tokens],
        )
    report(outcome, out)
    return outcome


COLUMNS = [
    "variant", "params", "nonzero", "file KiB", "CSR KiB", "ppl pruned", "ppl recovered",
    "recovery beyond dense [95% CI]", "removed",
]  # fmt: skip


def table_rows(o: dict) -> list:
    return [
        {
            "variant": r["variant"],
            "params": f"{r['params']:,}",
            "nonzero": f"{r['nonzero_params']:,}",
            "file KiB": f"{r['file_kib']:.0f}",
            "CSR KiB": f"{r['csr_kib']:.0f}" if r["csr_kib"] else "-",
            "ppl pruned": f"{r['ppl_pruned']:.2f}",
            "ppl recovered": f"{r['ppl_recovered']:.2f}",
            "recovery beyond dense [95% CI]": "-"
            if "recovery_beyond_dense" not in r
            else f"{r['recovery_beyond_dense']:+.4f} [{r['recovery_beyond_dense_interval'][0]:+.4f}, "
            f"{r['recovery_beyond_dense_interval'][1]:+.4f}]",
            "removed": r["removed"],
        }
        for r in o["rows"]
    ]


def report(o, out):
    print(markdown_table(table_rows(o), COLUMNS))
    print(
        "a mask shrinks nothing: magnitude rows keep every parameter and the file size; CSR KiB is what a "
        "sparse format would store (computed); recovery beyond dense: nats/token that recovery removes beyond "
        "what the same steps remove from the dense model"
    )
    b = o["bar"]
    print(f"bar: {b['note']}; {'PASS' if b['passed'] else 'FAIL'}; wrote {out}/")


def plot(rows, path):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    names = [r["variant"] for r in rows]
    x = torch.arange(len(rows)).numpy()
    ax1.bar(x - 0.2, [r["ppl_pruned"] for r in rows], 0.4, label="after pruning")
    ax1.bar(x + 0.2, [r["ppl_recovered"] for r in rows], 0.4, label="after recovery fine-tune")
    ax1.set(xticks=x, xticklabels=names, ylabel="val perplexity", yscale="log", title="what pruning costs")
    ax1.tick_params(axis="x", rotation=30)
    ax1.legend()
    ax2.bar(x - 0.2, [r["params"] / 1e6 for r in rows], 0.4, label="stored parameters (M)")
    ax2.bar(x + 0.2, [r["nonzero_params"] / 1e6 for r in rows], 0.4, label="nonzero parameters (M)")
    ax2.set(xticks=x, xticklabels=names, ylabel="millions", title="what it saves (a mask stores every zero)")
    ax2.tick_params(axis="x", rotation=30)
    ax2.legend()
    save_figure(fig, path)


def outcome_block(rows) -> dict:
    """{"headline", "bar"} of outcome.json (common/outcome.py): recovery fine-tuning lowers every pruned
    variant's perplexity; the bar's value is the largest change (recovered - pruned), which must be <= 0."""
    headline = "; ".join(
        f"{r['variant']} ppl {r['ppl_pruned']:.1f} -> {r['ppl_recovered']:.1f}" for r in rows[:3]
    )
    bar = make_bar(
        "largest val perplexity change from recovery fine-tuning (recovered - pruned)",
        max((r["ppl_recovered"] - r["ppl_pruned"] for r in rows), default=0.0),
        threshold=0.0,
        direction="lower",
        inclusive=True,
        n=len(rows),
        note="recovery fine-tuning lowers every pruned variant's perplexity",
    )
    return {"headline": headline, "bar": bar}


def main(argv=None):
    cfg, _ = parse_config(PruneConfig, argv, doc=__doc__, presets=PRESETS, default_preset="tiny")
    prune(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
