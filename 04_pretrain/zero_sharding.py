"""ZeRO-1 and ZeRO-2 by hand: each rank keeps 1/N of AdamW's state and updates 1/N of the weights.

Under plain data parallelism every rank holds the same AdamW state (m and v, 8 bytes per parameter in
fp32) and does the same update: N copies of identical work. ZeRO (Rajbhandari et al. 2020) splits it:

    flat   = concat(every parameter, flattened) + zeros to a multiple of N        (P_pad values)
    rank r owns flat[r·S : (r+1)·S],  S = P_pad / N                               (its "shard")

    ZeRO-1  all_reduce(grads) / N           every rank still holds the full averaged gradient
            AdamW on its shard only         m, v exist for S values, not P
            all_gather(shards) -> weights   every rank has all updated weights again
    ZeRO-2  reduce_scatter(grads) / N       rank r receives only the sum of its own slice and
                                            drops the full gradient: 1/N of the gradient memory
            AdamW on its shard; all_gather  as ZeRO-1

A parameter that got no gradient on any rank (frozen, or unused) is skipped, weight decay included,
as optimizers.AdamW skips it. The update is elementwise, so updating a slice gives exactly the values
the full update would have written there: the result equals unsharded AdamW (checked below to float rounding, the all-reduce
sums in another order). The optimizer really is 04's `optimizers.AdamW`: this file hands it the
shard's pieces (one view per parameter that overlaps the shard, in that parameter's param group, so
weight decay and lr schedules work unchanged).

Memory per rank, fp32 (4 bytes a value), P parameters:
    unsharded AdamW   weights 4P + grads 4P + m, v 8P                     = 16P
    ZeRO-1            weights 4P + grads 4P + (m, v, master shard) 12P/N
    ZeRO-2            weights 4P + grads 4P/N + (m, v, master shard) 12P/N (between steps; see below)
(the shard is this rank's fp32 master copy of its weights; under mixed precision the weights are bf16
and it is the only fp32 copy, saved in checkpoints; here the weights are fp32 already, so it is an extra
4P/N, refreshed from them at every step, and a checkpoint needs only the model and the gathered m, v.)

Honest simplifications. The gradients are reduced after backward, in one flat call, not in buckets
overlapped with backward as ddp_by_hand.py does; so during backward a ZeRO-2 rank still holds the full
gradient for a moment (DeepSpeed reduce-scatters bucket by bucket and frees each, so it never does).
ZeRO-3 (shard the weights too, all-gather each block before use) is zero3_by_hand.py, proven equal to
torch's FSDP2, the production path in torch_parallel.py.

    python 04_pretrain/zero_sharding.py --world 2         # equality with AdamW + state bytes per rank

    opt = ZeroAdamW(param_groups(model, 0.1), stage=2, lr=3e-4, betas=(0.9, 0.95))
    loss.backward()                    # plain model: no communication in backward
    norm = opt.clip_grad_norm(1.0)     # reduces the gradients, global norm over all shards
    opt.step(); opt.zero_grad()        # update the shard, all-gather the weights
    opt.state_dict()                   # gathered: the same dict an unsharded AdamW would save

Interview questions it answers:
- What do ZeRO-1/2/3 shard, and what does each save? (optimizer state / + gradients / + weights:
  16P -> 4P + 4P + 12P/N -> 4P + 16P/N -> 16P/N bytes per rank)
- Why does ZeRO-2 cost no more communication than DDP? (all-reduce = reduce-scatter + all-gather;
  ZeRO-2 does the same two halves with the optimizer step between them, on gradients then weights)
- Why pad the flat buffer? (reduce-scatter and all-gather need equal chunks on every rank)
- How do you checkpoint a sharded optimizer? (gather to the unsharded layout, so it loads on any N)
"""

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
from common.cli import UserError, option, parse_config, run_cli

from collectives import (
    DemoModel,
    demo_batch,
    demo_model,
    max_diff,
    rank_mean,
    ring_bytes,
    run_demo,
    storage_bytes,
)
from optimizers import AdamW, clip_grad_norm, param_groups


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in an optimizer's state (m, v, step counts)."""
    return storage_bytes([t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)])


class ZeroAdamW(torch.optim.Optimizer):
    """optimizers.AdamW on this rank's 1/N of the flattened parameters; stage 1 or 2 (module docstring).

    `param_groups` are the full parameters, as for any optimizer (set_lr works unchanged); the shard's
    AdamW is `self.shard_opt`, and `self.state` is its state (this rank's slices only)."""

    def __init__(self, params, stage=1, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, group=None):
        if stage not in (1, 2):
            raise UserError(
                f"ZeRO stage {stage} is not implemented here; choose 1 or 2 (stage 3: zero3_by_hand.py)"
            )
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.stage, self.group = stage, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.params = [p for g in self.param_groups for p in g["params"]]
        self.sizes = [p.numel() for p in self.params]
        self.offsets = [0] + torch.tensor(self.sizes).cumsum(
            0
        ).tolist()  # param i is flat[offsets[i]:offsets[i+1]]
        self.shard_size = math.ceil(self.offsets[-1] / self.world)
        lo = self.rank * self.shard_size
        self.lo, self.hi = lo, lo + self.shard_size
        with torch.no_grad():
            self.weight_shard = self.flatten([p.detach() for p in self.params])[self.lo : self.hi].clone()
        self.grad_shard = torch.zeros_like(self.weight_shard)  # ZeRO-1 points it into the full gradient
        # One piece per parameter that overlaps [lo, hi): a view into the shard, in the parameter's group.
        self.pieces = []  # (param index, start in the flat buffer, view)
        groups, i = [], 0
        for g in self.param_groups:
            views = []
            for _ in g["params"]:
                a, b = max(self.offsets[i], self.lo), min(self.offsets[i + 1], self.hi)
                if a < b:
                    view = self.weight_shard[a - self.lo : b - self.lo]
                    self.pieces.append((i, a, view))
                    views.append(view)
                i += 1
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": views})
        self.shard_opt = AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.state = self.shard_opt.state
        self.reduced = False

    def flatten(self, tensors) -> torch.Tensor:
        """One flat fp32 vector of `tensors`, zero-padded to N·S values."""
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        return torch.cat([flat, flat.new_zeros(self.world * self.shard_size - flat.numel())])

    @torch.no_grad()
    def reduce_gradients(self):
        """Average the gradients over the ranks into grad_shard (ZeRO-1: also into every .grad;
        ZeRO-2: every .grad is dropped, the rank keeps its slice only). Once per step."""
        if self.reduced:
            return
        # A parameter with no gradient on any rank (frozen, or unused this step) is skipped by AdamW,
        # weight decay included, exactly as optimizers.AdamW skips it; one that got a gradient on some
        # rank only counts as zero on the others (what DDP's average would say). Hence one small MAX.
        has_grad = torch.tensor(
            [p.grad is not None for p in self.params], dtype=torch.uint8, device=self.weight_shard.device
        )
        dist.all_reduce(has_grad, op=dist.ReduceOp.MAX, group=self.group)
        self.has_grad = has_grad.bool().tolist()
        flat = self.flatten([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])
        flat.div_(self.world)
        if self.stage == 1:
            dist.all_reduce(flat, group=self.group)
            for p, g, has in zip(self.params, flat[: self.offsets[-1]].split(self.sizes), self.has_grad):
                p.grad = g.view_as(p) if has else None  # views: the full gradient is held once
            self.grad_shard = flat[self.lo : self.hi]
        else:
            dist.reduce_scatter_single(self.grad_shard, flat, group=self.group)
            for p in self.params:
                p.grad = None
        for i, a, view in self.pieces:  # what the shard's AdamW reads as gradients (None: skipped)
            grad = self.grad_shard[a - self.lo : a - self.lo + view.numel()]
            view.grad = grad if self.has_grad[i] else None
        self.reduced = True

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Global L2 norm of the averaged gradient (sum of every shard's squares), clipped like
        optimizers.clip_grad_norm: scale by min(1, max_norm / (norm + 1e-6)) when finite."""
        self.reduce_gradients()
        sq = self.grad_shard.double().pow(2).sum()
        dist.all_reduce(sq, group=self.group)  # the shards partition the flat gradient
        total = sq.sqrt().float()
        if max_norm > 0 and torch.isfinite(total):
            self.grad_shard.mul_((max_norm / (total + 1e-6)).clamp(max=1.0))
        return total

    @torch.no_grad()
    def step(self, closure=None):
        self.reduce_gradients()
        for i, a, view in self.pieces:  # the fp32 weights are the truth here: pick up any
            start = a - self.offsets[i]  # change made to them (a loaded checkpoint)
            view.copy_(self.params[i].detach().reshape(-1)[start : start + view.numel()])
        for outer, inner in zip(self.param_groups, self.shard_opt.param_groups):
            inner.update({k: v for k, v in outer.items() if k != "params"})  # lr set by the schedule
        self.shard_opt.step()  # AdamW on S values, not P
        for _, _, view in self.pieces:  # ZeRO-1: let the full gradient be freed by zero_grad
            view.grad = None
        full = self.weight_shard.new_empty(self.world * self.shard_size)
        dist.all_gather_single(full, self.weight_shard, group=self.group)
        for p, w in zip(self.params, full[: self.offsets[-1]].split(self.sizes)):
            p.copy_(w.view_as(p))
        self.reduced = False

    # ------------------------------------------------------------------------------------------
    # Checkpoints: the unsharded optimizers.AdamW layout, so a file loads on any number of ranks

    def _gathered(self, key: str) -> torch.Tensor:
        """The full flat vector of state `key` (exp_avg or exp_avg_sq), gathered from all shards."""
        local = torch.zeros_like(self.weight_shard)
        for _, a, view in self.pieces:
            if view in self.state:
                local[a - self.lo : a - self.lo + view.numel()] = self.state[view][key]
        full = local.new_empty(self.world * self.shard_size)
        dist.all_gather_single(full, local, group=self.group)
        return full

    def state_dict(self) -> dict:
        """What optimizers.AdamW(...).state_dict() would return for the full parameters."""
        steps = torch.tensor(
            max([float(s["step"]) for s in self.state.values()], default=0.0), device=self.weight_shard.device
        )
        dist.all_reduce(steps, op=dist.ReduceOp.MAX, group=self.group)  # a rank may own no piece
        m, v = self._gathered("exp_avg"), self._gathered("exp_avg_sq")
        state = {}
        if steps > 0:
            for i, p in enumerate(self.params):
                a, b = self.offsets[i], self.offsets[i + 1]
                state[i] = {
                    "step": steps.cpu().float(),
                    "exp_avg": m[a:b].view_as(p).clone(),
                    "exp_avg_sq": v[a:b].view_as(p).clone(),
                }
        groups, start = [], 0
        for g in self.param_groups:
            groups.append(
                {
                    **{k: v for k, v in g.items() if k != "params"},
                    "params": list(range(start, start + len(g["params"]))),
                }
            )
            start += len(g["params"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict):
        """Take this rank's slices of a full (unsharded-layout) AdamW state dict. As in torch.optim, the
        saved groups' "params" lists give each parameter's key by position (an index, or a name when
        torch.distributed.checkpoint.state_dict converted it)."""
        keys = [k for g in state_dict["param_groups"] for k in g["params"]]
        if len(keys) != len(self.params):
            raise UserError(
                f"the optimizer state holds {len(keys)} parameters, this model {len(self.params)}; "
                "it was saved from another model"
            )
        for g, saved in zip(self.param_groups, state_dict["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        self.state.clear()
        for i, a, view in self.pieces:
            saved = state_dict["state"].get(keys[i])
            if saved is None:
                continue
            start = a - self.offsets[i]
            self.state[view] = {
                "step": torch.as_tensor(saved["step"], dtype=torch.float32).clone(),
                **{
                    k: saved[k].reshape(-1)[start : start + view.numel()].to(view).clone()
                    for k in ("exp_avg", "exp_avg_sq")
                },
            }


# ----------------------------------------------------------------------------------------------
# The check: ZeRO-1 and ZeRO-2 against unsharded AdamW in one process on the whole batch


@dataclass
class ZeroConfig(DemoModel):
    steps: int = option(4, "optimizer steps compared", min=1)
    lr: float = option(1e-2, "AdamW learning rate", min=0)
    grad_clip: float = option(0.05, "global-norm clip (small, so that clipping is exercised; 0 = off)", min=0)
    out: str = option("", "folder to write zero_sharding.json into (empty: print only)")


def zero_worker(rank, world, cfg: ZeroConfig) -> dict:
    """ZeRO-1 and ZeRO-2 against two unsharded references: DDP (the same averaged gradients, plain
    AdamW: only the sharding differs) and one process on the whole batch (also the summation order)."""
    rows = slice(rank * (cfg.batch // world), (rank + 1) * (cfg.batch // world))
    out = {"params": sum(p.numel() for p in demo_model(cfg).parameters())}
    runs = {}
    for name in ("zero1", "zero2", "ddp", "single"):
        model = demo_model(cfg)
        groups = param_groups(model, 0.1)
        opt = (
            ZeroAdamW(groups, stage=int(name[-1]), lr=cfg.lr, betas=(0.9, 0.95))
            if name.startswith("zero")
            else AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
        )
        losses = []
        for step in range(cfg.steps):
            x, y = demo_batch(cfg, step)
            part = slice(None) if name == "single" else rows
            _, loss = model(x[part], y[part])
            loss.backward()
            if name == "ddp":
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= world
            if name.startswith("zero"):
                opt.clip_grad_norm(cfg.grad_clip)
                grad_bytes = storage_bytes([p.grad for p in model.parameters()] + [opt.grad_shard])
            else:
                clip_grad_norm(list(model.parameters()), cfg.grad_clip)
                grad_bytes = storage_bytes([p.grad for p in model.parameters()])
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(rank_mean(loss, 1 if name == "single" else world))
        runs[name] = {
            "losses": torch.tensor(losses),
            "weights": [p.detach() for p in model.parameters()],
            "state_dict": opt.state_dict(),
            "state_bytes": state_bytes(opt),
            "grad_bytes": grad_bytes,
            "shard_bytes": 4 * opt.shard_size if name.startswith("zero") else 0,
        }
    ref = runs["single"]["state_dict"]
    for name in ("zero1", "zero2"):
        r = runs[name]
        out[name] = {
            "max_diff_loss": max_diff(r["losses"], runs["single"]["losses"]),
            "max_diff_weight": max_diff(r["weights"], runs["single"]["weights"]),
            "max_diff_weight_vs_ddp": max_diff(r["weights"], runs["ddp"]["weights"]),
            "max_diff_state_dict": max(
                max_diff(r["state_dict"]["state"][i][k], ref["state"][i][k])
                for i in ref["state"]
                for k in ("exp_avg", "exp_avg_sq")
            ),
            "same_state_keys": sorted(r["state_dict"]["state"]) == sorted(ref["state"]),
            "state_bytes": r["state_bytes"],
            "grad_bytes": r["grad_bytes"],
            "master_shard_bytes": r["shard_bytes"],
            "losses": r["losses"].tolist(),
        }
    out["unsharded_state_bytes"] = runs["single"]["state_bytes"]
    out["ref_losses"] = runs["single"]["losses"].tolist()
    return out


def report(r: dict, cfg: ZeroConfig) -> str:
    N, P = cfg.world, r["params"]
    lines = [
        f"ZeRO by hand vs unsharded AdamW in one process, {N} ranks, {cfg.steps} steps, {P:,} params, "
        f"clip {cfg.grad_clip}"
    ]
    for s in (1, 2):
        z = r[f"zero{s}"]
        lines.append(
            f"  ZeRO-{s}: max |loss diff| {z['max_diff_loss']:.1e}   max |weight diff| "
            f"{z['max_diff_weight']:.1e} "
            f"(vs DDP + AdamW, same gradients: {z['max_diff_weight_vs_ddp']:.1e})   gathered state_dict "
            f"vs AdamW's {z['max_diff_state_dict']:.1e}"
        )
    u = r["unsharded_state_bytes"]
    lines += [
        "",
        "bytes per rank (rank 0), fp32",
        f"{'':<18}{'AdamW state (m, v)':>20}{'master shard':>14}{'gradients':>12}{'state / unsharded':>20}",
        f"{'unsharded AdamW':<18}{u:>20,}{0:>14,}{4 * P:>12,}{1:>20.3f}",
    ]
    for s in (1, 2):
        z = r[f"zero{s}"]
        lines.append(
            f"{'ZeRO-' + str(s):<18}{z['state_bytes']:>20,}{z['master_shard_bytes']:>14,}"
            f"{z['grad_bytes']:>12,}{z['state_bytes'] / u:>20.3f}"
        )
    sent1 = ring_bytes("all_reduce", 4 * P, N) + ring_bytes("all_gather", 4 * P, N)
    sent2 = ring_bytes("reduce_scatter", 4 * P, N) + ring_bytes("all_gather", 4 * P, N)
    lines += [
        f"(1/N = {1 / N:.3f}; the state holds m, v and a step count per piece)",
        f"sent per rank per step on a ring: ZeRO-1 {sent1:,.0f} bytes (all-reduce + all-gather), "
        f"ZeRO-2 {sent2:,.0f} (reduce-scatter + all-gather) = DDP's {ring_bytes('all_reduce', 4 * P, N):,.0f}",
    ]
    return "\n".join(lines)


def main(argv=None):
    cfg, _ = parse_config(ZeroConfig, argv, doc=__doc__)
    if cfg.world < 2 or cfg.batch % cfg.world:
        raise UserError(f"--world must be >= 2 and divide --batch {cfg.batch}; e.g. --world 2 --batch 8")
    run_demo(zero_worker, cfg, report, "zero_sharding")


if __name__ == "__main__":
    run_cli(main)
