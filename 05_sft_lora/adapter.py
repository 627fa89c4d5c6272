"""Bottleneck adapters (Houlsby et al. 2019): a small residual MLP after each attention and each
feed-forward sublayer of a frozen model.

    h ↦ h + W_up · act(W_down · h + b_down) + b_up      W_down (m × d), W_up (d × m), m ≪ d

Per adapter 2·d·m + m + d parameters; two per layer. W_up and b_up start at zero, so every adapter
is the identity and the adapted model is exactly the base model at step 0 (the near-identity
initialisation Houlsby et al. ask for, taken to its limit as LoRA does with B = 0); W_down starts
as nn.Linear does, so the first gradient step moves W_up and the next ones both.

Placement: on the sublayer's output, before it is added to the residual stream, as in the paper:
    x ← x + adapter(attn(norm₁(x)));   x ← x + adapter(ffn(norm₂(x)))        (pre-LN block)

How it reaches the model without copying 03's block code: a forward hook on `block.attn` and on
`block.ffn` (torch calls hook(module, inputs, output) after the module's forward and uses what it
returns as the output). Hooks leave the module tree and the state-dict keys of the base unchanged,
and removing them (`detach()`) gives the base model back bit for bit (tested). Unlike LoRA the
adapters cannot be merged into the weights: the nonlinearity sits between W_down and W_up, so they
cost extra compute at inference (2·2·d·m FLOPs per token per adapter).

    from adapter import BottleneckAdapters
    adapters = BottleneckAdapters(model.cfg, dim=16); adapters.attach(model)

Interview questions it answers:
- Adapters vs LoRA? (both train ~1% of the weights; LoRA's update is linear and merges into W, so
  it is free at inference; an adapter adds serial layers and latency, but can express nonlinear
  changes of a sublayer's output)
- Why a bottleneck? (m ≪ d keeps the count at 2·d·m per adapter, and the low rank limits how far
  the frozen model can be pushed, the same trade-off as LoRA's r)
"""

import functools
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError
from lora import LoRARows, add_token_rows, load_peft, save_peft, set_adapter  # 05_sft_lora (this folder)


class Adapter(nn.Module):
    """h -> h + up(gelu(down(h))): the identity at init (up is zero)."""

    def __init__(self, d, m):
        super().__init__()
        self.down = nn.Linear(d, m)
        self.up = nn.Linear(m, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(F.gelu(self.down(h)))


def adapt_output(adapter, module, inputs, output):
    """The forward hook: attention returns a tensor, a mixture-of-experts ffn (out, aux loss)."""
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


class BottleneckAdapters(nn.Module):
    """One adapter after the attention and one after the feed-forward of every layer."""

    def __init__(self, cfg, dim=16):
        super().__init__()
        if dim < 1:
            raise UserError(f"adapter bottleneck dim={dim} must be >= 1")
        self.dim = dim
        self.attn = nn.ModuleList(Adapter(cfg.n_embd, dim) for _ in range(cfg.n_layer))
        self.ffn = nn.ModuleList(Adapter(cfg.n_embd, dim) for _ in range(cfg.n_layer))
        self.handles = []

    def attach(self, model):
        """Freeze the base model and hook the adapters in (the adapters stay outside the model)."""
        if self.handles:
            raise UserError("these adapters are already attached; detach() them first")
        for p in model.parameters():
            p.requires_grad_(False)
        for block, a_attn, a_ffn in zip(model.blocks, self.attn, self.ffn):
            self.handles.append(block.attn.register_forward_hook(functools.partial(adapt_output, a_attn)))
            self.handles.append(block.ffn.register_forward_hook(functools.partial(adapt_output, a_ffn)))

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def train_marker_rows(model, token_ids):
    """The chat markers' embedding rows train beside the adapters (lora.LoRARows explains why an adapter
    alone cannot make <|end|> win over a twin row); call after attach()."""
    add_token_rows(model, token_ids, "adapter")
    set_adapter(model, "adapter")


def save_adapters(adapters: BottleneckAdapters, model, path):
    """The adapters' weights, and the marker rows' δ and ids when they trained."""
    state, meta = dict(adapters.state_dict()), {}
    if isinstance(model.tok_emb, LoRARows) and "adapter" in model.tok_emb.lora_rows:
        state["tok_emb.rows"] = model.tok_emb.lora_rows["adapter"]
        meta["token_ids"] = model.tok_emb.lora_token_ids.tolist()
    save_peft(path, model, "adapter", state, dim=adapters.dim, **meta)


def load_adapters(model, path) -> BottleneckAdapters:
    """BottleneckAdapters from `path`, checked against `model`'s config and attached to it."""
    state, meta = load_peft(path, model, "adapter")
    rows = state.pop("tok_emb.rows", None)
    adapters = BottleneckAdapters(model.cfg, meta["dim"])
    adapters.load_state_dict(state)
    adapters.to(next(model.parameters()).device).attach(model)
    if rows is not None:
        train_marker_rows(model, meta["token_ids"])
        with torch.no_grad():
            model.tok_emb.lora_rows["adapter"].copy_(rows)
    return adapters
