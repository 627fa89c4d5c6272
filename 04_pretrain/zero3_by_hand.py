"""ZeRO-3 by hand: shard the weights too, gather each block just before it runs, free it right after.

ZeRO-1 and -2 (zero_sharding.py) shard AdamW's state and the gradients, but every rank still holds all
the weights. ZeRO-3 (Rajbhandari et al. 2020; torch's FSDP, `fully_shard`) shards them as well. The
model is cut into *units* (here: each transformer block, and a root unit with everything else: the
token embedding = the tied LM head, and the final norm). Each unit's weights live as one flat buffer,
padded to a multiple of N; rank r keeps only its slice of S = P_unit_pad / N values between uses:

    forward, block k     all_gather(shards) -> full weights;  run the block;  free the full weights
    backward, block k    all_gather again (they were freed);  run its backward;
                         reduce_scatter(grads) / N -> this rank's gradient slice;  free grads and weights
    optimizer step       AdamW on the shards only (S values per unit): nothing to gather afterwards

"Free" is `untyped_storage().resize_(0)`: the parameters stay the same tensors (autograd saved them in
forward), their memory goes away; before backward the storage is resized back and the all-gather
refills it in place, so what autograd saved is valid again. FSDP2 does the same.

The root unit is gathered once at the start of forward and kept until backward ends (the embedding is
needed first in forward and last in backward; FSDP2 does not reshard its root after forward either).

Replicated, not sharded: 1-D parameters (norm gains and biases; `is_replicated`). They are ~0.1% of a
GPT's parameters, so sharding them saves nothing worth an extra split, and a replicated parameter is
simply DDP: its gradient is all-reduced and every rank updates all of it (DeepSpeed's ZeRO-3 keeps
parameters below `stage3_param_persistence_threshold` replicated for the same reason). The tests check
one of each: a matrix whose bytes per rank are 1/N of it, and a norm gain held whole and equal on
every rank. torch's FSDP2 instead shards every parameter along dim 0, norms included.

Memory per rank, fp32, P parameters of which R replicated (unit = one block, full while it runs):
    weights 4(P-R)/N + 4R + 4·(largest unit gathered at once)   gradients 4(P-R)/N + 4R   AdamW 8(P-R)/N + 8R
This module counts the bytes it holds as it runs (`peak_gathered_bytes`); the tests compare them with
memory_estimate.py's stage-3 row. Communication per step: two all-gathers of the weights (forward and
backward) and one reduce-scatter of the gradients, 3·(N-1)/N·4P bytes sent per rank: 1.5x DDP.

What is left out (torch's FSDP2 has it): prefetching the next unit's all-gather while this one computes,
mixed precision (gather bf16 weights, reduce in fp32: torch_parallel.wrap_model's `mixed_precision`),
no_sync for gradient accumulation (here every backward reduce-scatters and the shards accumulate), and
units that are not run in sequence (a trainable parameter that gets no gradient would make the ranks
wait forever, as in ddp_by_hand.py).

    python 04_pretrain/zero3_by_hand.py --world 2          # equality with one process and with FSDP2

    model = Zero3ByHand(gpt)                                 # shards every block and the root
    opt = Zero3AdamW(model, weight_decay=0.1, lr=3e-4, betas=(0.9, 0.95))
    loss = model(x, y)[1]; loss.backward()                   # gathers and frees as it goes
    opt.step(); opt.zero_grad()
    full = model.full_parameters()                           # {name: full tensor}, gathered

Interview questions it answers:
- What does ZeRO-3 shard that ZeRO-2 does not, and what does it cost? (the weights: memory 16P -> 16P/N
  plus one gathered unit; traffic 2 -> 3 times (N-1)/N·4P per step, an extra all-gather in backward)
- Why gather the weights twice? (they are freed after forward to save memory; backward needs them again
  for dL/dx = dL/dy·W)
- How can autograd's saved weights survive being freed? (the storage is resized to 0 and refilled in
  place before backward: the tensor objects, and what autograd saved, never change)
- Which parameters are worth not sharding? (tiny ones: norms and biases)
"""

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli

from collectives import DemoModel, demo_batch, demo_model, max_diff, rank_mean, run_demo, storage_bytes
from ddp_by_hand import broadcast_parameters
from optimizers import AdamW, param_groups


def is_replicated(p: torch.Tensor) -> bool:
    """Norm gains and biases stay whole on every rank; matrices are sharded."""
    return p.ndim < 2


class Unit:
    """The parameters gathered together: one flat buffer `full` (N·S values, freed between uses) whose
    slices are the sharded parameters' data, this rank's `shard` of it (S values), and the replicated
    parameters, which are ordinary tensors."""

    def __init__(self, name: str, params: list, rank: int, world: int):
        self.name = name
        self.sharded = [p for p in params if not is_replicated(p)]
        self.replicated = [p for p in params if is_replicated(p)]
        self.trainable = [p for p in params if p.requires_grad]
        self.sizes = [p.numel() for p in self.sharded]
        self.offsets = [0, *torch.tensor(self.sizes, dtype=torch.long).cumsum(0).tolist()]
        self.shard_size = math.ceil(self.offsets[-1] / world)
        self.lo, self.hi = rank * self.shard_size, (rank + 1) * self.shard_size
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self.sharded] + [torch.zeros(0)])
            self.full = torch.cat([flat, flat.new_zeros(world * self.shard_size - flat.numel())])
            self.shard = self.full[self.lo : self.hi].clone()
        for p, a, n in zip(self.sharded, self.offsets, self.sizes):
            p.data = self.full[a : a + n].view_as(p)  # the parameter now lives in the flat buffer
        self.nbytes = self.full.untyped_storage().nbytes()
        self.gathered = True
        self.ready = 0  # trainable parameters whose gradient this backward has produced
        self.grad_shard = None  # the reduce-scattered gradient slice (S values), summed over backwards


class Zero3ByHand(nn.Module):
    """Wraps a GPT (a module with `.blocks`): the same forward, with each unit's weights gathered when
    it runs and freed after, and gradients reduce-scattered into per-unit shards (module docstring)."""

    def __init__(self, module: nn.Module, group=None):
        super().__init__()
        self.module, self.group = module, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        broadcast_parameters(module)  # same starting weights on every rank, then shard them
        claimed, self.units = set(), []
        for i, block in enumerate(module.blocks):
            params = [p for p in block.parameters() if p not in claimed]
            claimed.update(params)
            self.units.append(Unit(f"blocks.{i}", params, self.rank, self.world))
        self.root = Unit("root", [p for p in module.parameters() if p not in claimed], self.rank, self.world)
        self.units.append(self.root)
        self.unit_of = {p: u for u in self.units for p in u.sharded + u.replicated}
        self.gathers, self.live_bytes, self.peak_gathered_bytes = 0, 0, 0
        self.live_bytes = sum(u.nbytes for u in self.units)
        for u in self.units:
            self._free(u)
        self.callback_queued = False
        for block, unit in zip(module.blocks, self.units):
            block.register_forward_pre_hook(lambda mod, args, u=unit: self._gather(u))
            block.register_forward_hook(lambda mod, args, out, u=unit: self._after_forward(u, out))
        for u in self.units:
            for p in u.trainable:
                p.register_post_accumulate_grad_hook(lambda p, u=u: self._grad_ready(u))

    def forward(self, *args, **kwargs):
        if getattr(self.module, "grad_checkpointing", False) and torch.is_grad_enabled():
            raise UserError(
                "ZeRO-3 by hand frees each block after its forward, so the recomputation of activation "
                "checkpointing would free it again inside backward; turn grad_checkpointing off"
            )
        self._gather(self.root)
        out = self.module(*args, **kwargs)
        if not torch.is_grad_enabled():
            self._free(self.root)  # evaluation: no backward will need it
        return out

    # --- gather and free -----------------------------------------------------------------------

    @torch.no_grad()
    def _gather(self, u: Unit):
        if u.gathered:
            return
        u.full.untyped_storage().resize_(u.nbytes)
        dist.all_gather_single(u.full, u.shard, group=self.group)
        u.gathered = True
        self.gathers += 1
        self.live_bytes += u.nbytes
        self.peak_gathered_bytes = max(self.peak_gathered_bytes, self.live_bytes)

    def _free(self, u: Unit):
        if u.gathered:
            u.full.untyped_storage().resize_(0)
            u.gathered = False
            self.live_bytes -= u.nbytes

    def _after_forward(self, u: Unit, out):
        self._free(u)
        x = out[0] if isinstance(out, tuple) else out
        if torch.is_grad_enabled() and x.requires_grad:
            x.register_hook(lambda grad, u=u: self._before_backward(u))

    def _before_backward(self, u: Unit):
        """dL/d(block output) is ready, so the block's backward is next: gather its weights. Blocks run
        in sequence, so every later block's backward has finished: free those."""
        self._queue_end_of_backward()
        k = self.units.index(u)
        for later in self.units[k + 1 : -1]:
            self._free(later)
        self._gather(u)

    # --- gradients ------------------------------------------------------------------------------

    def _queue_end_of_backward(self):
        if not self.callback_queued:
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            self.callback_queued = True

    @torch.no_grad()
    def _grad_ready(self, u: Unit):
        """Every trainable parameter of the unit has its gradient: reduce-scatter the sharded ones into
        u.grad_shard (averaged over ranks, added to what earlier backwards left), all-reduce the
        replicated ones, and drop the full gradients."""
        self._queue_end_of_backward()
        u.ready += 1
        if u.ready < len(u.trainable):
            return
        u.ready = 0
        if u.sharded:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in u.sharded]
            flat = torch.cat([g.reshape(-1) for g in grads])
            flat = torch.cat([flat, flat.new_zeros(self.world * u.shard_size - flat.numel())]).div_(
                self.world
            )
            mine = torch.empty_like(u.shard)
            dist.reduce_scatter_single(mine, flat, group=self.group)
            u.grad_shard = mine if u.grad_shard is None else u.grad_shard.add_(mine)
            for p in u.sharded:
                p.grad = None
        reps = [p for p in u.replicated if p.requires_grad]
        if reps:
            flat = torch.cat([p.grad.reshape(-1) for p in reps]).div_(self.world)
            dist.all_reduce(flat, group=self.group)
            for p, g in zip(reps, flat.split([p.numel() for p in reps])):
                p.grad.copy_(g.view_as(p))

    def _end_of_backward(self):
        self.callback_queued = False
        for u in self.units:
            self._free(u)
            if u.ready:
                raise RuntimeError(
                    f"unit {u.name}: {u.ready} of {len(u.trainable)} trainable parameters got a gradient "
                    "in this backward; ZeRO-3 by hand needs all of them (unused parameters are not supported)"
                )

    # --- reading the weights back -----------------------------------------------------------------

    @torch.no_grad()
    def full_parameters(self) -> dict:
        """{name: full tensor} of every parameter, gathered into new tensors (the units stay freed)."""
        out = {}
        for name, p in self.module.named_parameters():
            u = self.unit_of[p]
            if is_replicated(p):  # (not `p in u.replicated`: `in` on a list compares tensors by value)
                out[name] = p.detach().clone()
                continue
            full = u.shard.new_empty(self.world * u.shard_size)
            dist.all_gather_single(full, u.shard, group=self.group)
            i = next(j for j, q in enumerate(u.sharded) if q is p)
            out[name] = full[u.offsets[i] : u.offsets[i + 1]].view_as(p).clone()
        return out

    def held_bytes(self) -> dict:
        """Bytes this rank holds between steps: weight shards (+ replicated weights) and gradient shards."""
        reps = [p for u in self.units for p in u.replicated]
        return {
            "weights": sum(4 * u.shard_size for u in self.units) + storage_bytes(reps),
            "gradients": sum(4 * u.shard_size for u in self.units if u.grad_shard is not None)
            + storage_bytes([p.grad for p in reps]),
            "largest_unit": max(u.nbytes for u in self.units),
        }


class Zero3AdamW(AdamW):
    """optimizers.AdamW on the shards: one view per sharded parameter overlapping this rank's slice of
    its unit (frozen parameters have none), plus the replicated parameters whole. Weight decay follows
    optimizers.param_groups (matrices decay, embeddings, norms and biases do not)."""

    def __init__(self, model: Zero3ByHand, weight_decay=0.1, **adamw):
        decay = {p for p in param_groups(model.module, weight_decay)[0]["params"]}
        self.model, self.pieces = model, []  # (unit, start in the shard, view)
        groups = [{"params": [], "weight_decay": weight_decay}, {"params": [], "weight_decay": 0.0}]
        for u in model.units:
            for p, a, b in zip(u.sharded, u.offsets, u.offsets[1:]):
                lo, hi = max(a, u.lo), min(b, u.hi)
                if p.requires_grad and lo < hi:
                    view = u.shard[lo - u.lo : hi - u.lo]
                    self.pieces.append((u, lo - u.lo, view))
                    groups[0 if p in decay else 1]["params"].append(view)
            for p in u.replicated:
                if p.requires_grad:
                    groups[0 if p in decay else 1]["params"].append(p)
        super().__init__(groups, **adamw)

    @torch.no_grad()
    def step(self, closure=None):
        for u, start, view in self.pieces:  # no backward since zero_grad: no gradient, no update
            view.grad = None if u.grad_shard is None else u.grad_shard[start : start + view.numel()]
        super().step()
        for _, _, view in self.pieces:
            view.grad = None

    def zero_grad(self, set_to_none=True):
        super().zero_grad(set_to_none)
        for u in self.model.units:
            u.grad_shard = None


# ----------------------------------------------------------------------------------------------
# The check: ZeRO-3 by hand against one process and against torch's FSDP2


@dataclass
class Zero3Config(DemoModel):
    steps: int = option(4, "optimizer steps compared", min=1)
    lr: float = option(1e-2, "AdamW learning rate", min=0)
    freeze: str = option(
        "blocks.0.ffn.up.weight,blocks.1.norm1.weight",
        "comma-separated parameters to freeze (a sharded and a replicated one: neither may change)",
    )
    out: str = option("", "folder to write zero3_by_hand.json into (empty: print only)")


def freeze(model: nn.Module, names: str) -> nn.Module:
    params = dict(model.named_parameters())
    for name in filter(None, names.split(",")):
        if name not in params:
            raise UserError(f"--freeze: no parameter {name!r}; names look like blocks.0.ffn.up.weight")
        params[name].requires_grad_(False)
    return model


def fsdp2(model: nn.Module) -> nn.Module:
    """torch's ZeRO-3, wrapped as torch_parallel.wrap_model does: one unit per block, then the root."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    return fully_shard(model)


def full_state(model) -> dict:
    """{name: full tensor} of a plain module, an FSDP2 module (DTensors) or a Zero3ByHand."""
    if isinstance(model, Zero3ByHand):
        return model.full_parameters()
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for n, p in model.named_parameters()
    }


def _local_numel(model: Zero3ByHand, p: torch.Tensor) -> int:
    """Values of sharded parameter p that this rank's shard holds."""
    u = model.unit_of[p]
    i = next(j for j, q in enumerate(u.sharded) if q is p)
    return max(0, min(u.offsets[i + 1], u.hi) - max(u.offsets[i], u.lo))


def zero3_worker(rank, world, cfg: Zero3Config) -> dict:
    rows = slice(rank * (cfg.batch // world), (rank + 1) * (cfg.batch // world))
    start = freeze(demo_model(cfg), cfg.freeze)
    runs = {}
    for name in ("zero3", "fsdp2", "single"):
        model = copy.deepcopy(start)
        if name == "zero3":
            model = Zero3ByHand(model)
            opt = Zero3AdamW(model, 0.1, lr=cfg.lr, betas=(0.9, 0.95))
        else:
            model = fsdp2(model) if name == "fsdp2" else model
            opt = AdamW(param_groups(model, 0.1), lr=cfg.lr, betas=(0.9, 0.95))
        losses = []
        for step in range(cfg.steps):
            x, y = demo_batch(cfg, step)
            part = slice(None) if name == "single" else rows
            loss = model(x[part], y[part])[1]
            loss.backward()
            if name == "zero3" and step == 0:
                held = model.held_bytes()  # gradient shards exist between backward and step
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(rank_mean(loss, 1 if name == "single" else world))
        runs[name] = {
            "losses": torch.tensor(losses),
            "weights": full_state(model),
            "model": model,
            "opt": opt,
        }
    ref, z = runs["single"]["weights"], runs["zero3"]
    with torch.no_grad():  # an evaluation forward: every unit gathered for it and freed after
        x, y = demo_batch(cfg, cfg.steps)
        eval_diff = abs(z["model"](x, y)[1].item() - runs["single"]["model"](x, y)[1].item())
    names = list(ref)
    m = z["model"]
    frozen = [n for n in cfg.freeze.split(",") if n]
    state = [t for s in z["opt"].state.values() for k, t in s.items() if k != "step"]
    local = {n: p for n, p in m.module.named_parameters()}
    return {
        "params": sum(p.numel() for p in start.parameters()),
        "max_diff_loss": max_diff(z["losses"], runs["single"]["losses"]),
        "max_diff_weight": max_diff([z["weights"][n] for n in names], [ref[n] for n in names]),
        "max_diff_weight_vs_fsdp2": max_diff(
            [z["weights"][n] for n in names], [runs["fsdp2"]["weights"][n] for n in names]
        ),
        "fsdp2_max_diff_weight": max_diff(
            [runs["fsdp2"]["weights"][n] for n in names], [ref[n] for n in names]
        ),
        "frozen_unchanged": all(
            torch.equal(z["weights"][n], dict(start.named_parameters())[n]) for n in frozen
        ),
        "gathers_per_step": (m.gathers - len(m.units)) / cfg.steps,  # the evaluation gathered each once
        "eval_loss_diff": eval_diff,
        "gathered_after_eval": m.live_bytes,
        "units": len(m.units),
        "peak_gathered_bytes": m.peak_gathered_bytes,
        "held": held,
        "state_bytes": storage_bytes(state),
        # one sharded and one replicated parameter: what this rank holds of each
        "sharded_param": "blocks.0.attn.wq.weight",
        "sharded_param_numel": local["blocks.0.attn.wq.weight"].numel(),
        "sharded_param_local_numel": _local_numel(m, local["blocks.0.attn.wq.weight"]),
        "replicated_param_storage_bytes": local["blocks.0.norm1.weight"].untyped_storage().nbytes(),
        "replicated_norm": local["blocks.0.norm1.weight"].tolist(),
        "shard_numel": [u.shard_size for u in m.units],
        "unit_numel": [u.offsets[-1] for u in m.units],
    }


def report(r: dict, cfg: Zero3Config) -> str:
    P, N, h = r["params"], cfg.world, r["held"]
    lines = [
        f"ZeRO-3 by hand, {N} ranks, {cfg.steps} AdamW steps of lr {cfg.lr}, {P:,} params, {r['units']} units",
        f"  frozen: {cfg.freeze or 'none'}; unchanged after training: {r['frozen_unchanged']}",
        f"  vs one process on the whole batch: max |loss diff| {r['max_diff_loss']:.1e}, "
        + f"max |weight diff| {r['max_diff_weight']:.1e}",
        f"  vs torch FSDP2 (fully_shard): max |weight diff| {r['max_diff_weight_vs_fsdp2']:.1e} "
        + f"(FSDP2 vs one process {r['fsdp2_max_diff_weight']:.1e})",
        f"  all-gathers per step {r['gathers_per_step']:.0f} (2 per block + 1 for the root)",
        "",
        f"bytes per rank (rank 0, fp32): weight shards + replicated {h['weights']:,}, gradient shards "
        + f"{h['gradients']:,}, AdamW m+v {r['state_bytes']:,}; all weights unsharded {4 * P:,}",
        f"  peak of gathered (full) weights {r['peak_gathered_bytes']:,} = root unit + one block "
        + f"(largest unit {h['largest_unit']:,})",
    ]
    return "\n".join(lines)


def main(argv=None):
    cfg, _ = parse_config(Zero3Config, argv, doc=__doc__)
    if cfg.world < 2 or cfg.batch % cfg.world:
        raise UserError(f"--world must be >= 2 and divide --batch {cfg.batch}; e.g. --world 2 --batch 8")
    freeze(demo_model(cfg), cfg.freeze)  # a wrong name fails here, not inside the spawned ranks
    run_demo(zero3_worker, cfg, report, "zero3_by_hand")


if __name__ == "__main__":
    run_cli(main)
