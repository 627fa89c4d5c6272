"""Structured pruning: score every attention head and MLP neuron, then cut the weakest out of the model.

    from structured_pruning import head_scores, heads_to_keep, neuron_scores, neurons_to_keep, remove_units
    q_keep, kv_keep = heads_to_keep(head_scores(model, batches, "taylor"), n_remove=1, n_kv_head=4, unit="group")
    small = remove_units(model, q_keep, kv_keep)        # a new, smaller dense GPT; `model` is unchanged

prune.py runs it (`python 07_distill_quant/prune.py --run runs/tiny --heads 1 --neuron-fraction 0.25`)
beside magnitude pruning, and measures both after the same recovery fine-tune.

Structured pruning removes whole rows/columns, so the model really gets smaller and faster:
- attention heads: a head is wq's and wk/wv's rows h·hd..(h+1)·hd-1 and wo's matching columns. With
  GQA (n_kv_head < n_head) g = n_head / n_kv_head query heads share one key/value head: removing a
  whole group (--gqa-unit group) also removes its K/V rows and shrinks the KV cache; removing query
  heads from every group alike (--gqa-unit query) keeps all K/V heads. Every layer loses the same
  number, so the result is one GPTConfig (head_size and mlp_hidden set explicitly) that every stage loads.
- MLP neurons: hidden unit j is row j of up (and gate) and column j of down.
Which ones: the importance score (Michel et al. 2019; Molchanov et al. 2017) of a gate ξ = 1 placed on
each head's output (or neuron's activation): I = E_batches |∂L/∂ξ| = |Σ_tokens a·∂L/∂a|, the
first-order (Taylor) estimate of the loss change when the unit is removed, for all units from one
backward pass per batch (--head-score taylor). --head-score ablation measures that change exactly,
one forward per head with its gate at 0: exact, but L·H forwards. The lowest-scoring units go.

Interview questions it answers:
- How do you choose which heads to remove? (the loss change when the head is masked, measured or
  estimated to first order by gate gradients; many heads can go at little cost, Michel et al. 2019)
- Why is structured pruning easier to deploy? (the result is a smaller dense model: same kernels,
  a smaller file and matmuls, and, for heads, a smaller KV cache)
- GQA and head pruning? (query heads share K/V heads in groups; remove whole groups to shrink the KV
  cache, or the same number of query heads per group to keep the grouping regular)
"""

import contextlib
import dataclasses
import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError
from gpt import GPT  # 03_model


# ----------------------------------------------------------------------------- importance by gates


@contextlib.contextmanager
def gates(model, head_gates=None, neuron_gates=None):
    """Multiply each head's output (the input of attn.wo, viewed (B, T, H, hd)) by head_gates[layer]
    (H,) and each MLP activation (the input of ffn.down) by neuron_gates[layer] (hidden,). Pre-hooks:
    03's model is unchanged; gates of ones leave its output as it is."""
    hooks = []
    for i, block in enumerate(model.blocks):
        if head_gates is not None:
            hd = model.cfg.head_dim
            hooks.append(
                block.attn.wo.register_forward_pre_hook(
                    lambda m, args, g=head_gates[i]: (args[0] * g.repeat_interleave(hd).to(args[0].dtype),)
                )
            )
        if neuron_gates is not None:
            hooks.append(
                block.ffn.down.register_forward_pre_hook(
                    lambda m, args, g=neuron_gates[i]: (args[0] * g.to(args[0].dtype),)
                )
            )
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def taylor_scores(model, batches, shape, kind: str) -> torch.Tensor:
    """E_batches |∂L/∂ξ| for gates ξ = 1 of the given (L, units) shape; kind: heads | neurons."""
    # >>> exercise: gates ξ = 1 on every unit; average |∂L/∂ξ| over the batches (one backward each)
    device = next(model.parameters()).device
    xi = torch.ones(shape, device=device, requires_grad=True)
    score = torch.zeros(shape, device=device)
    with gates(model, **{("head_gates" if kind == "heads" else "neuron_gates"): xi}):
        for x, y in batches:
            loss = model(x, y)[1]
            score += torch.autograd.grad(loss, xi)[0].abs()
    return score / len(batches)
    # <<< exercise


@torch.no_grad()
def ablation_scores(model, batches) -> torch.Tensor:
    """(L, H): the loss increase when head h of layer l alone is switched off (its gate set to 0)."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    device = next(model.parameters()).device
    mean_loss = lambda: sum(model(x, y)[1].item() for x, y in batches) / len(batches)
    base, score = mean_loss(), torch.zeros(L, H)
    for layer in range(L):
        for h in range(H):
            xi = torch.ones(L, H, device=device)
            xi[layer, h] = 0
            with gates(model, head_gates=xi):
                score[layer, h] = mean_loss() - base
    return score


def head_scores(model, batches, method: str) -> torch.Tensor:
    """(L, H) importance of every query head (module docstring: which score and why)."""
    was = model.training
    model.eval()
    if method == "ablation":
        s = ablation_scores(model, batches)
    else:
        s = taylor_scores(model, batches, (model.cfg.n_layer, model.cfg.n_head), "heads")
    model.train(was)
    return s.cpu()


def neuron_scores(model, batches) -> torch.Tensor:
    was = model.training
    model.eval()
    s = taylor_scores(model, batches, (model.cfg.n_layer, model.cfg.ffn_hidden), "neurons")
    model.train(was)
    return s.cpu()


# ----------------------------------------------------------------------------- structured removal


def heads_to_keep(scores: torch.Tensor, n_remove: int, n_kv_head: int, unit: str) -> tuple:
    """(query heads kept, K/V heads kept) per layer, sorted, from (L, H) scores. Query head h uses K/V
    head h // g (03's repeat_interleave), so the kept heads stay in order, group by group."""
    L, H = scores.shape
    g = H // n_kv_head
    unit = "group" if g == 1 else unit  # MHA: a group is one head
    q_keep, kv_keep = [], []
    for s in scores:
        groups = s.view(n_kv_head, g)  # (Hkv, g): row j = group j's heads
        if unit == "group":
            kept_groups = groups.sum(1).argsort(descending=True)[: n_kv_head - n_remove // g].sort().values
            kv_keep.append(kept_groups.tolist())
            q_keep.append([j * g + i for j in kept_groups.tolist() for i in range(g)])
        else:
            per_group = (
                groups.argsort(dim=1, descending=True)[:, : g - n_remove // n_kv_head].sort(dim=1).values
            )
            kv_keep.append(list(range(n_kv_head)))
            q_keep.append([j * g + int(i) for j in range(n_kv_head) for i in per_group[j]])
    return q_keep, kv_keep


def rows_of(heads, hd: int) -> torch.Tensor:
    """Row indices of the given heads in a (heads·hd, d) projection."""
    return torch.tensor([h * hd + i for h in heads for i in range(hd)], dtype=torch.long)


def remove_units(model: GPT, q_keep=None, kv_keep=None, neuron_keep=None) -> GPT:
    """A new, smaller GPT holding only the kept heads (per layer lists, the same count in each) and/or
    the kept MLP neurons; every other weight copied. Its config says the new sizes explicitly."""
    cfg = model.cfg
    if cfg.n_experts:
        raise UserError(
            "structured pruning of a mixture-of-experts model is not implemented; use --heads 0 "
            "--neuron-fraction 0 (magnitude pruning works)"
        )
    hd = cfg.head_dim
    new_cfg = dataclasses.replace(
        cfg,
        head_size=hd,
        n_head=len(q_keep[0]) if q_keep else cfg.n_head,
        n_kv_head=len(kv_keep[0]) if kv_keep else cfg.n_kv_head,
        mlp_hidden=len(neuron_keep[0]) if neuron_keep else cfg.ffn_hidden,
    )
    state = dict(model.state_dict())
    pick = lambda key, idx, dim: state.__setitem__(
        key, state[key].index_select(dim, idx.to(state[key].device))
    )
    for layer in range(cfg.n_layer):
        a, f = f"blocks.{layer}.attn.", f"blocks.{layer}.ffn."
        if q_keep:
            q_rows, kv_rows = rows_of(q_keep[layer], hd), rows_of(kv_keep[layer], hd)
            for name, rows in (("wq", q_rows), ("wk", kv_rows), ("wv", kv_rows)):
                pick(a + name + ".weight", rows, 0)
                if cfg.bias:
                    pick(a + name + ".bias", rows, 0)
            pick(a + "wo.weight", q_rows, 1)
        if neuron_keep:
            idx = torch.tensor(neuron_keep[layer], dtype=torch.long)
            for name in ("up", "gate") if cfg.mlp == "swiglu" else ("up",):
                pick(f + name + ".weight", idx, 0)
                if cfg.bias:
                    pick(f + name + ".bias", idx, 0)
            pick(f + "down.weight", idx, 1)
    small = GPT(new_cfg).to(next(model.parameters()).device)
    small.load_state_dict(state)
    return small


def neurons_to_keep(scores: torch.Tensor, fraction: float) -> list:
    """Per layer, the indices (sorted) of the highest-scoring 1 - fraction of the hidden units."""
    n_keep = scores.shape[1] - int(fraction * scores.shape[1])
    return [s.argsort(descending=True)[:n_keep].sort().values.tolist() for s in scores]
