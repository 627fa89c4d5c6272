"""LoRA: fine-tune a frozen model through low-rank updates of chosen linear layers.

A frozen weight W (out × in) is used as W + ΔW with ΔW = (α/r) · B · A, A (r × in), B (out × r),
r ≪ min(in, out). Only A and B train: r·(in + out) numbers per layer instead of in·out.

    y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ          (the low-rank path costs 2·r·(in+out) FLOPs/token)

- A starts kaiming-uniform and B at zero, so ΔW = 0 and the wrapped model is exactly the base model
  at step 0; the first gradient reaches B (∂L/∂B = (α/r)·gᵀ·(xAᵀ) ≠ 0), then A.
- α/r: α is fixed once (often 2r of the first r tried) and r varied; the 1/r keeps the update's
  size roughly steady across ranks, so the learning rate need not be retuned (Hu et al. 2021, §4.1).
- Dropout is on the LoRA input only; the frozen path sees x unchanged.
- Merge: W ← W + Σ_a w_a·(α/r)·B_a·A_a, after which inference costs exactly the base model's;
  unmerge subtracts the same product (exact up to float rounding, ~1e-7 relative).
- Several named adapters can sit on one base; `set_adapter(model, "qa")` switches, and
  `set_adapter(model, {"qa": 0.5, "chat": 0.5})` combines them: ΔW = Σ_a w_a ΔW_a (a weighted
  sum of low-rank updates is itself a valid update of rank <= Σ r_a).
- The adapter file holds A and B alone (kilobytes) plus the base's config and its hash; loading it
  onto a base of another shape or config is refused instead of silently producing garbage.

- With `token_ids` (sft.py passes the chat markers unless --no-marker-rows) the adapter also trains
  those rows of the tied embedding (LoRARows, below): n·d more numbers, merged as exactly as ΔW.

The same file format and the parameter count are shared with prefix.py and adapter.py.

    from lora import inject_lora, save_lora, load_lora, merge_lora, set_adapter
    inject_lora(model, ["wq", "wv"], r=8, alpha=16)      # freezes the base, wraps blocks.*.attn.wq/wv
    python 05_sft_lora/lora.py --base runs/tiny/pretrain/best.pt --adapter runs/tiny/sft/adapter.pt \\
        --out runs/tiny/sft_merged                       # a plain checkpoint with the adapter merged in

Interview questions it answers:
- Why is B zero and not A? (one factor must be zero so that ΔW = 0 at init; then only the other
  gets a gradient at step 0: ∂L/∂B = (α/r)·gᵀ(xAᵀ) ≠ 0 while ∂L/∂A = (α/r)·Bᵀ… = 0. Either works;
  zeroing B keeps xAᵀ a well-scaled random projection of the input from the first step)
- How many parameters does LoRA train? (r·(in+out) per adapted matrix; see the printed count)
- Why is a merged LoRA model as fast as the base? (W + ΔW is one matrix of the original shape)
- Why does LoRA forget less than full fine-tuning? (the update is confined to a rank-r subspace of
  a few matrices; most directions of W, and the embeddings, cannot move)
- Why can a LoRA fine-tune fail to stop, and what fixes it? (tokens the base never saw, <|end|> among
  them, get identical embedding rows in a long pretraining; with tied embeddings their logits are then
  equal whatever the hidden state, so no low-rank change of the linear layers can prefer <|end|>; train
  those few rows too, as PEFT's trainable_token_indices does: LoRARows)
"""

import dataclasses
import fnmatch
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError, command_line, option, parse_config, run_cli
from common.layout import RunLayout
from common.runs import check_artifact, claim_output, run_lock, staged_dir, write_manifest
from checkpoint_io import config_differences, load_checkpoint, save_checkpoint, tokenizer_dir  # 03_model
from gpt import GPT  # 03_model

DEFAULT_TARGETS = ["wq", "wk", "wv", "wo", "up", "gate", "down"]  # attention q/k/v/o and the MLP


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus named low-rank updates. It holds the wrapped layer's own `weight` and
    `bias` parameters, so the base's state-dict keys (`...wq.weight`) stay what they were."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.ParameterDict()  # name -> (r, in)
        self.lora_B = nn.ParameterDict()  # name -> (out, r)
        self.lora_dropout = nn.ModuleDict()
        self.scale = {}  # name -> α / r
        self.active = {}  # name -> weight in the combination
        self.merged = {}  # name -> weight already added into self.weight

    def add_adapter(self, name, r, alpha, dropout=0.0):
        A = torch.empty(r, self.in_features, device=self.weight.device)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # nn.Linear's own init, fan_in = in
        self.lora_A[name] = nn.Parameter(A)
        self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, r, device=self.weight.device))
        self.lora_dropout[name] = nn.Dropout(dropout)
        self.scale[name] = alpha / r

    def adapter_params(self, name) -> list:
        return [self.lora_A[name], self.lora_B[name]]

    def delta_weight(self, name) -> torch.Tensor:
        """ΔW = (α/r) · B · A, (out, in)."""
        return self.scale[name] * (self.lora_B[name] @ self.lora_A[name])

    def forward(self, x):
        # >>> exercise: y = x Wᵀ + b + Σ_active w·(α/r)·dropout(x) Aᵀ Bᵀ, skipping adapters already merged into W
        y = F.linear(x, self.weight, self.bias)
        for name, w in self.active.items():
            if name in self.merged:
                continue  # already inside self.weight
            h = self.lora_dropout[name](x) @ self.lora_A[name].t()  # (..., r): small
            y = y + (h * (w * self.scale[name])) @ self.lora_B[name].t()  # scale the small tensor
        return y
        # <<< exercise

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, adapters={ {n: A.shape[0] for n, A in self.lora_A.items()} }"


class LoRARows(nn.Module):
    """The token embedding plus named trainable deltas of a few of its rows (the chat markers).

    A LoRA update of a linear layer cannot give a token the base never saw a usable row: with tied
    embeddings that row is both the token's input vector and its output direction. A base pretrained
    on plain text never sees <|end|> (nor the control bytes its corpus lacks), so all of them receive the
    same push-down gradient and their rows converge (cosine 1.000 after 4,000 tiny steps). Their logits
    are then equal for every hidden state and a fine-tune that cannot move the row cannot make <|end|>
    win: the answer runs on through a control byte. So, as PEFT's trainable_token_indices does, those n
    rows train too, as one delta per adapter shared by both roles of the tied matrix E (V, d):

        embedding(i) = E[i] + w·δ[i]        logit_i = h · (E[i] + w·δ[i])        for i in token_ids
        ΔE = scatter(token_ids, δ): zero except n rows; n·d numbers (512 for 4 markers at d = 128)

    Because δ is shared, merging is exact (E ← E + w·ΔE changes the input and the output together,
    exactly as a full fine-tune of those rows would). It keeps the embedding's `weight` parameter (tied to
    lm_head), so the base's state-dict key `tok_emb.weight` is unchanged; the output side is a forward
    hook on lm_head (inject_lora registers it)."""

    def __init__(self, base: nn.Embedding, token_ids):
        super().__init__()
        self.weight = base.weight
        self.register_buffer("lora_token_ids", torch.tensor(sorted(set(token_ids)), dtype=torch.long))
        self.lora_rows = nn.ParameterDict()  # name -> δ (n, d)
        self.active = {}
        self.merged = {}

    def add_adapter(self, name):
        n, d = len(self.lora_token_ids), self.weight.shape[1]
        self.lora_rows[name] = nn.Parameter(torch.zeros(n, d, device=self.weight.device))

    def adapter_params(self, name) -> list:
        return [self.lora_rows[name]]

    def delta_weight(self, name) -> torch.Tensor:
        """ΔE (V, d): δ in the marker rows, zero elsewhere."""
        return torch.zeros_like(self.weight).index_add(0, self.lora_token_ids, self.lora_rows[name])

    def unmerged_delta(self):
        """Σ w·δ of the active adapters not yet merged, (n, d); None when there is none."""
        parts = [w * self.lora_rows[a] for a, w in self.active.items() if a not in self.merged]
        return sum(parts) if parts else None

    def forward(self, idx):
        x = F.embedding(idx, self.weight)  # (B, T, d)
        delta = self.unmerged_delta()
        if delta is None:
            return x
        onehot = (idx.unsqueeze(-1) == self.lora_token_ids).to(x.dtype)  # (B, T, n)
        return x + onehot @ delta.to(x.dtype)

    def logits_hook(self, module, inputs, logits):
        """Forward hook on the tied lm_head: the marker columns of logits (B, T, V) get + h · w·δᵀ."""
        delta = self.unmerged_delta()
        if delta is None:
            return logits
        add = inputs[0] @ delta.to(inputs[0].dtype).t()  # (B, T, n)
        return logits.index_add(-1, self.lora_token_ids, add.to(logits.dtype))

    def extra_repr(self):
        return f"token_ids={self.lora_token_ids.tolist()}, adapters={list(self.lora_rows)}"


def add_token_rows(model, token_ids, name):
    """Wrap model.tok_emb in LoRARows (once) and give it a zero δ named `name` for `token_ids`."""
    rows = model.tok_emb
    if not isinstance(rows, LoRARows):
        if not model.cfg.tie_weights:
            raise UserError(
                "trainable marker rows need tied embeddings (one matrix for input and output); "
                "this base has an untied LM head: train it with --no-marker-rows or --method full"
            )
        rows = LoRARows(model.tok_emb, token_ids)
        model.tok_emb = rows
        model.lm_head.register_forward_hook(rows.logits_hook)
    elif rows.lora_token_ids.tolist() != sorted(set(token_ids)):
        raise UserError(
            f"adapter {name!r} trains rows {sorted(set(token_ids))}, but the model's other adapters train "
            f"{rows.lora_token_ids.tolist()}; adapters on one base must come from the same tokenizer"
        )
    rows.add_adapter(name)


# ----------------------------------------------------------------------------- injection by name


def linear_names(model) -> list:
    """Names of the nn.Linear (or already LoRA-wrapped) modules, with layer numbers folded into `*`."""
    names = {
        re.sub(r"\.\d+\.", ".*.", n)
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, LoRALinear))
    }
    return sorted(names)


def matches(name, patterns) -> bool:
    """A pattern matches a module's full name or its tail: 'wq' and 'attn.wq' match 'blocks.3.attn.wq';
    shell wildcards work ('blocks.0.*', 'attn.w?')."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p) for p in patterns)


def check_lora_args(r, alpha, dropout=0.0):
    if r < 1:
        raise UserError(f"LoRA rank r={r} must be >= 1; typical values are 4 to 64")
    if alpha <= 0:
        raise UserError(f"LoRA alpha={alpha} must be > 0 (the update is scaled by alpha/r)")
    if not 0 <= dropout < 1:
        raise UserError(f"LoRA dropout={dropout} must be in [0, 1)")


def find_targets(model, targets, name="default") -> list:
    """Names of the linear layers `targets` selects, after checking that adapter `name` can go on
    each of them; a UserError listing the layers there are when nothing matches. sft.py calls it
    before anything slow, inject_lora before changing anything."""
    shared = {}
    for _, m in model.named_modules(remove_duplicate=False):  # tied weights: lm_head is tok_emb
        for p in m.parameters(recurse=False):
            shared[id(p)] = shared.get(id(p), 0) + 1
    chosen = [
        n for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear)) and matches(n, targets)
    ]
    if not chosen:
        raise UserError(
            f"LoRA targets {','.join(targets)} match no linear layer; the model has "
            f"{', '.join(linear_names(model))}"
        )
    for n in chosen:
        module = model.get_submodule(n)
        if shared[id(module.weight)] > 1:
            raise UserError(
                f"{n} shares its weight with another layer (tied embeddings); merging LoRA "
                "into it would change both, so leave it out of the targets"
            )
        if isinstance(module, LoRALinear) and name in module.lora_A:
            raise UserError(f"{n} already has a LoRA adapter named {name!r}; pick another name")
    return chosen


def inject_lora(
    model, targets=DEFAULT_TARGETS, r=8, alpha=16.0, dropout=0.0, name="default", token_ids=()
) -> list:
    """Add adapter `name` to every nn.Linear whose name matches `targets` (and, with `token_ids`, a
    trainable delta of those rows of the tied embedding: LoRARows), freeze everything else, make it the
    active adapter; returns the wrapped linear layers' names. A second call with another name adds a
    second adapter to the same layers (the first one is frozen)."""
    check_lora_args(r, alpha, dropout)
    chosen = find_targets(model, targets, name)
    for p in model.parameters():
        p.requires_grad_(False)
    for n in chosen:
        module = model.get_submodule(n)
        if not isinstance(module, LoRALinear):
            parent, _, child = n.rpartition(".")
            module = LoRALinear(module)
            setattr(model.get_submodule(parent) if parent else model, child, module)
        module.add_adapter(name, r, alpha, dropout)
    if len(token_ids):
        add_token_rows(model, token_ids, name)
    set_adapter(model, name)
    return chosen


def lora_modules(model) -> dict:
    """Every module that holds LoRA updates: the wrapped linear layers, and the embedding's LoRARows."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (LoRALinear, LoRARows))}


def lora_linears(model) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def set_adapter(model, adapters):
    """Activate one adapter by name, or a weighted combination {name: weight}; {} = the base alone.
    Only the named adapters' parameters are trainable afterwards."""
    weights = {adapters: 1.0} if isinstance(adapters, str) else dict(adapters)
    for n, m in lora_modules(model).items():
        if m.merged:
            raise UserError(f"{n} has merged adapters; call unmerge_lora before switching")
        names = m.lora_rows if isinstance(m, LoRARows) else m.lora_A
        unknown = set(weights) - set(names)
        # every adapter has its linear layers; the marker rows only if it was trained with them
        if unknown and not isinstance(m, LoRARows):
            raise UserError(f"no LoRA adapter named {sorted(unknown)[0]!r}; this model has {sorted(names)}")
        m.active = {a: w for a, w in weights.items() if a in names}
        for a in names:
            for p in m.adapter_params(a):
                p.requires_grad_(a in weights)


@torch.no_grad()
def merge_lora(model):
    """W ← W + Σ_a w_a ΔW_a for the active adapters; the forward then skips their low-rank path."""
    # >>> exercise: W ← W + w·(α/r)·B·A for each active adapter not yet merged; remember what was added
    for m in lora_modules(model).values():
        for name, w in m.active.items():
            if name not in m.merged:
                m.weight += w * m.delta_weight(name)
                m.merged[name] = w
    # <<< exercise


@torch.no_grad()
def unmerge_lora(model):
    """Subtract exactly what merge_lora added (the same products, recomputed)."""
    for m in lora_modules(model).values():
        for name, w in m.merged.items():
            m.weight -= w * m.delta_weight(name)
        m.merged = {}


def merged_base_state(model) -> dict:
    """The state dict of a plain 03 GPT with the active adapters merged in: merge_lora, then the base's
    own keys only (the lora_A/lora_B tensors are already inside W), ready for save_checkpoint."""
    merge_lora(model)
    return {k: v for k, v in model.state_dict().items() if ".lora_" not in k}


def merged_plain_model(model) -> GPT:
    """A plain 03 GPT (no wrappers, no hooks) holding the base with the active adapters merged in: what
    06 trains further and 07 compresses."""
    plain = GPT(model.cfg).to(next(model.parameters()).device)
    plain.load_state_dict(merged_base_state(model), strict=True)
    return plain


# ----------------------------------------------------------------------------- parameter counts


def count_params(model, *extra_modules) -> dict:
    """{"trainable", "total", "percent"}: the base model plus any PEFT modules kept beside it
    (prefix.py and adapter.py keep theirs outside the model); a parameter is counted once."""
    params = {id(p): p for m in (model, *extra_modules) for p in m.parameters()}.values()
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}


def describe_params(counts) -> str:
    return f"trainable params: {counts['trainable']:,} of {counts['total']:,} ({counts['percent']:.2f}%)"


# ----------------------------------------------------------------------------- adapter files

RUNTIME_FIELDS = ("attn_backend", "dropout")  # change how the model runs, not what its weights mean


def config_hash(config: dict) -> str:
    """A short fingerprint of what in a model config fixes the weights' shapes and meaning."""
    kept = {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_peft(path, model, kind: str, state: dict, **meta):
    """Write a PEFT file: 03's checkpoint format with the *base's* config, the PEFT tensors as
    "model", and {"kind", "base_config_hash", **meta} as "peft"."""
    base_config = dataclasses.asdict(model.cfg)
    state = {k: v.detach().cpu().clone() for k, v in state.items()}
    save_checkpoint(
        path, base_config, state, peft={"kind": kind, "base_config_hash": config_hash(base_config), **meta}
    )


def load_peft(path, model, kind: str):
    """(tensors, meta) of a PEFT file written by save_peft, after checking it was made for a base of
    this model's config; otherwise a UserError naming the fields that differ."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("peft")
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        found = meta.get("kind") if isinstance(meta, dict) else "a full model checkpoint"
        raise UserError(
            f"{path}: holds {found}, not a {kind} adapter; pass the {kind} file written by sft.py"
        )
    current = dataclasses.asdict(model.cfg)
    if meta.get("base_config_hash") != config_hash(current):
        diffs = config_differences(ckpt["config"], current, ignore=RUNTIME_FIELDS)
        raise UserError(
            f"{path}: adapter was trained on a base of another shape or config "
            f"({'; '.join(diffs) or 'config hash differs'}); load it onto the base it was made for"
        )
    return ckpt["model"], meta


def save_lora(model, path, name="default"):
    """Save adapter `name`: A and B of every wrapped layer, its r, α and layer names, and the marker
    rows' δ and ids when it has them (kilobytes)."""
    mods = {n: m for n, m in lora_linears(model).items() if name in m.lora_A}
    if not mods:
        raise UserError(f"the model has no LoRA adapter named {name!r}")
    state = {}
    for n, m in mods.items():
        state[f"{n}.A"], state[f"{n}.B"] = m.lora_A[name], m.lora_B[name]
    meta = {}
    if isinstance(model.tok_emb, LoRARows) and name in model.tok_emb.lora_rows:
        state["tok_emb.rows"] = model.tok_emb.lora_rows[name]
        meta["token_ids"] = model.tok_emb.lora_token_ids.tolist()
    any_mod = next(iter(mods.values()))
    r = any_mod.lora_A[name].shape[0]
    alpha = any_mod.scale[name] * r
    save_peft(path, model, "lora", state, name=name, r=r, alpha=alpha, layers=sorted(mods), **meta)


def load_lora(model, path, name=None) -> str:
    """Add the adapter saved in `path` to `model` (under `name`, default its saved name), make it the
    active one, and return the name."""
    state, meta = load_peft(path, model, "lora")
    name = name or meta["name"]
    token_ids = meta.get("token_ids", ())  # files from before the marker rows have none
    inject_lora(model, meta["layers"], r=meta["r"], alpha=meta["alpha"], name=name, token_ids=token_ids)
    mods = lora_linears(model)
    with torch.no_grad():
        for n in meta["layers"]:
            mods[n].lora_A[name].copy_(state[f"{n}.A"])
            mods[n].lora_B[name].copy_(state[f"{n}.B"])
        if token_ids:
            model.tok_emb.lora_rows[name].copy_(state["tok_emb.rows"])
    return name


# ----------------------------------------------------------------------------- command line


@dataclass
class MergeConfig:
    base: str = option("", "base checkpoint the adapter was trained on (e.g. runs/tiny/pretrain/best.pt)")
    adapter: str = option("", "LoRA adapter.pt in a folder written by sft.py (e.g. runs/tiny/sft/adapter.pt)")
    out: str = option(
        "",
        "folder for the merged model: ckpt.pt + manifest.json (e.g. runs/tiny/sft_merged); "
        "empty = only describe the adapter",
    )
    overwrite: bool = option(False, "replace the merged model already in --out")


def main(argv=None):
    cfg, _ = parse_config(MergeConfig, argv, doc=__doc__)
    if not cfg.base or not cfg.adapter:
        raise UserError("pass --base <checkpoint> and --adapter <adapter.pt>; see --help")
    base, adapter = Path(cfg.base), Path(cfg.adapter)
    check_artifact(adapter.parent, made_by=RunLayout("runs/<name>").made_by("sft"))
    if not base.is_file():
        raise UserError(f"--base {base}: no such checkpoint; 04_pretrain/pretrain.py makes one")
    model = GPT.from_checkpoint(base)
    base_params = model.num_params(non_embedding=False)
    name = load_lora(model, adapter)
    mods = lora_linears(model)
    n_lora = sum(p.numel() for m in lora_modules(model).values() for p in m.adapter_params(name))
    print(
        f"{adapter}: adapter {name!r}, r={next(iter(mods.values())).lora_A[name].shape[0]}, "
        f"{len(mods)} layers, {n_lora:,} parameters ({100 * n_lora / base_params:.2f}% of the base's "
        f"{base_params:,}), {adapter.stat().st_size / 1024:.1f} KiB"
    )
    if not cfg.out:
        return
    out = Path(cfg.out)
    state = merged_base_state(model)
    tok = tokenizer_dir(base, load_checkpoint(base).get("tokenizer"))
    with run_lock(out):
        claim_output(out, cfg.overwrite, remove=False)
        with staged_dir(out) as tmp:
            save_checkpoint(
                tmp / "ckpt.pt",
                dataclasses.asdict(model.cfg),
                state,
                merged_from={"base": str(base), "adapter": str(adapter)},
                **({"tokenizer": os.path.relpath(tok, out)} if tok else {}),
            )
            write_manifest(
                tmp,
                stage="05_sft_lora",
                command=command_line(__file__, argv),
                config=dataclasses.asdict(cfg),
                inputs=[base, adapter.parent],
            )
    print(
        f"wrote {out}/ckpt.pt: the base with the adapter merged in ({(out / 'ckpt.pt').stat().st_size / 2**20:.2f} MiB)"
    )


if __name__ == "__main__":
    run_cli(main)
