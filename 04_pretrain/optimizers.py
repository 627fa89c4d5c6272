"""Optimizers, learning-rate schedules, gradient clipping and the fp16 loss scaler, written out.

Everything `pretrain.py` needs to turn gradients into a weight update, in the order one training
step uses it:

    groups = param_groups(model, weight_decay=0.1)      # decay matrices only (rule below)
    opt = AdamW(groups, lr=3e-4, betas=(0.9, 0.95))      # or LAMB(...)
    set_lr(opt, lr_at(step, cfg))                        # warmup + cosine, or warmup-stable-decay
    found_inf = scaler.unscale_(params)                  # fp16 only: undo the loss scale, look for inf
    norm = clip_grad_norm(params, max_norm=1.0)          # global L2 norm over all gradients
    scaler.step(opt, found_inf)                          # opt.step() unless fp16 overflowed

Both optimizers subclass `torch.optim.Optimizer` only to inherit its bookkeeping (param groups,
`state_dict`, `zero_grad`); the update rule itself is the few lines in `step`. They work unchanged
on FSDP2's sharded parameters (DTensors): every op is elementwise, and the two norms LAMB needs are
summed across ranks by `global_norm`.

Interview questions it answers:
- What is in AdamW's state? (per parameter: the step count, the first moment m and the second
  moment v, so 2 extra floats per weight: with fp32 master weights and grads that is the "16 bytes
  per parameter" of mixed-precision Adam.)
- Why bias correction? (m and v start at 0, so early averages are shrunk toward 0 by (1 - beta^t).)
- Why *decoupled* weight decay? (Adam + L2 adds wd*p to the gradient, which is then divided by
  sqrt(v): weights with large gradients are barely decayed. AdamW shrinks p directly, p -= lr*wd*p,
  so every weight decays at the same rate, independent of its gradient history.)
- Why no decay on norms, biases and embeddings? (gains and biases are 1-D and scale-like, pulling
  them to 0 hurts; embeddings are looked up sparsely, decay would shrink rare tokens' rows.)
- What does LAMB add? (a per-layer trust ratio ||p|| / ||update|| so that every layer moves by the
  same *relative* amount, which keeps large-batch training stable.)
- Why warmup? Why WSD? (Adam's v is noisy in the first steps, small lr there avoids blow-ups; WSD
  keeps lr flat so a run can be extended or branched, and decays only at the end.)
- Why does fp16 need a loss scaler and bf16 not? (fp16 has 5 exponent bits: small gradients
  underflow to 0, so the loss is multiplied by S before backward and grads divided by S after;
  bf16 has fp32's 8 exponent bits.)
"""

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist


# ----------------------------------------------------------------------------------------------
# Parameter groups: which weights get weight decay


def param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    """Two groups: decay on matrices (ndim >= 2) except embeddings; no decay on 1-D params and `emb`.

    Tied weights (lm_head = tok_emb) appear once in named_parameters, under the embedding's name.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "emb" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------
# Norms that also work on FSDP2-sharded tensors


def _local(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` this rank holds (a DTensor's local shard, or `t` itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


def global_norm(tensors) -> torch.Tensor:
    """sqrt(sum of squares) over all `tensors`, summing shard contributions across ranks.

    FSDP2 shards each parameter along dim 0 (Shard(0)), so every element lives on exactly one rank:
    the global sum of squares is the all-reduce (SUM) of the local sums.
    """
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(())
    sq = torch.stack([_local(t).detach().float().pow(2).sum() for t in tensors]).sum()
    if any(hasattr(t, "to_local") for t in tensors) and dist.is_initialized():
        dist.all_reduce(sq)
    return sq.sqrt()


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Scale all gradients by min(1, max_norm / ||g||), ||g|| the L2 norm of all grads as one vector.

    Returns the norm before clipping (inf/nan if a gradient overflowed; then nothing is scaled).
    Same result as torch.nn.utils.clip_grad_norm_ (which adds 1e-6 to the denominator too).
    """
    # >>> exercise: ||g|| = global_norm(grads); if finite, g *= min(1, max_norm / (||g|| + 1e-6)); return ||g||
    grads = [p.grad for p in params if p.grad is not None]
    total = global_norm(grads)
    if max_norm > 0 and grads:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        # An inf/nan norm leaves the grads alone (the step is skipped or stopped). torch.where instead
        # of `if torch.isfinite(total)` keeps the check on the device: no host sync here.
        coef = torch.where(torch.isfinite(total), coef, torch.ones_like(coef))
        for g in grads:
            g.mul_(coef.to(g.dtype) if not hasattr(g, "to_local") else coef.item())
    return total
    # <<< exercise


# ----------------------------------------------------------------------------------------------
# AdamW and LAMB


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), bias-corrected.

    For each parameter p with gradient g, at step t (starting at 1):
        p   <- p - lr * wd * p                        decoupled decay (before the Adam step)
        m   <- b1 * m + (1 - b1) * g                  first moment (mean of g)
        v   <- b2 * v + (1 - b2) * g^2                second moment (mean of g^2)
        m^  =  m / (1 - b1^t);  v^ = v / (1 - b2^t)   bias correction
        p   <- p - lr * m^ / (sqrt(v^) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.foreach = foreach

    def _state(self, p):
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)  # m
            state["exp_avg_sq"] = torch.zeros_like(p)  # v
        return state

    @torch.no_grad()
    def step(self, closure=None):
        if self.foreach:
            return self._step_foreach()
        # >>> exercise: p *= 1 - lr·wd; m.lerp_(g, 1 - b1), v EMA of g²; bias-correct; p -= lr·m̂ / (√v̂ + eps), torch's op order (graded bit-exact)
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                state["step"] += 1
                t = state["step"].item()
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - b1)  # m + (1 - b1)(g - m) = b1·m + (1 - b1)·g, rounded as torch rounds it
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                # torch.optim.AdamW's ops in its order, so the two are bit-equal (tests: torch.equal over
                # 100 steps): lr * m^ / (sqrt(v^) + eps) = (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps).
                # Mathematically equal forms round differently: m.mul_(b1).add_(g, alpha=1 - b1) is off
                # by up to 3e-7 per step, and that drift then grows through 1/sqrt(v).
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                denom = (v.sqrt() / bc2**0.5).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bc1)
        # <<< exercise

    @torch.no_grad()
    def _step_foreach(self):
        """The same update on lists of tensors: each line is one fused multi-tensor op, so a GPU runs
        ~10 kernels per group instead of ~10 per parameter (GPT-2 has ~150 parameter tensors)."""
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state(p) for p in params]
            grads = [p.grad for p in params]
            ms, vs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            for s in states:
                s["step"] += 1
            ts = [s["step"].item() for s in states]
            torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_lerp_(ms, grads, 1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, [(1 - b2**t) ** 0.5 for t in ts])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, ms, denom, [-lr / (1 - b1**t) for t in ts])


class LAMB(torch.optim.Optimizer):
    """Layer-wise Adaptive Moments (You et al. 2020): Adam's direction, rescaled per parameter tensor.

    u = m^ / (sqrt(v^) + eps) + wd * p            the AdamW update, decay included
    r = ||p|| / ||u||   (1 if either norm is 0)   trust ratio
    p <- p - lr * r * u
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
                if wd:
                    update = update + wd * p
                w_norm, u_norm = global_norm([p]).item(), global_norm([update]).item()
                trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                p.add_(update, alpha=-lr * trust)


def make_optimizer(name: str, groups, lr, betas, eps=1e-8, foreach=False):
    if name == "adamw":
        return AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=foreach)
    if name == "lamb":
        return LAMB(groups, lr=lr, betas=betas, eps=max(eps, 1e-6))
    raise ValueError(f"unknown optimizer {name!r}")


# ----------------------------------------------------------------------------------------------
# Learning-rate schedules


@dataclass
class Schedule:
    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # floor at the end of the decay
    warmup_steps: int = 100
    max_steps: int = 1000
    kind: str = "cosine"  # "cosine" (warmup + cosine decay) or "wsd" (warmup-stable-decay)
    decay_frac: float = 0.2  # WSD: the last fraction of steps that decays to min_lr


def lr_at(step: int, s: Schedule) -> float:
    """Learning rate for 0-based `step`.

    warmup  : lr * (step + 1) / warmup_steps                      steps [0, warmup)
    cosine  : min + (lr - min) * 0.5 * (1 + cos(pi * progress))   progress 0 -> 1 over [warmup, max)
    wsd     : lr flat, then linear to min_lr over the last decay_frac of max_steps
    """
    # >>> exercise: warmup lr·(s+1)/W; cosine min + (lr - min)·½(1 + cos π·progress); wsd flat, then linear
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.kind == "cosine":
        progress = min(1.0, (step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps))
        return s.min_lr + (s.lr - s.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    if s.kind == "wsd":
        decay_steps = max(1, int(s.decay_frac * s.max_steps))
        decay_start = s.max_steps - decay_steps
        if step < decay_start:
            return s.lr
        progress = min(1.0, (step - decay_start) / decay_steps)
        return s.lr + (s.min_lr - s.lr) * progress
    raise ValueError(f"unknown schedule {s.kind!r}")
    # <<< exercise


def set_lr(opt: torch.optim.Optimizer, lr: float):
    for group in opt.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------------------------
# Dynamic loss scaling for fp16


class DynamicLossScaler:
    """Multiply the loss by `scale` before backward; after backward divide grads by it.

    If any gradient is inf/nan the scale was too large: skip this optimizer step and halve the
    scale. After `growth_interval` good steps in a row, double it (to use fp16's range again).
    Disabled (scale 1, never skips) when `enabled` is False, so the loop has one code path.
    """

    def __init__(self, enabled=True, init_scale=2.0**16, growth_interval=2000, backoff=0.5, growth=2.0):
        self.enabled = enabled
        self.scale = init_scale if enabled else 1.0
        self.growth_interval, self.backoff, self.growth = growth_interval, backoff, growth
        self.good_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale_(self, params) -> bool:
        """Divide every grad by the scale in place; return True if any grad is inf/nan."""
        if not self.enabled:
            return False
        grads = [p.grad for p in params if p.grad is not None]
        for g in grads:
            g.div_(self.scale)
        found = torch.stack([(~torch.isfinite(_local(g))).any().float() for g in grads]).sum()
        if any(hasattr(g, "to_local") for g in grads) and dist.is_initialized():
            dist.all_reduce(found)
        return bool(found.item() > 0)

    def update(self, found_inf: bool):
        # >>> exercise: overflow: scale *= backoff, count 0; growth_interval good steps in a row: scale *= growth
        if not self.enabled:
            return
        if found_inf:
            self.scale *= self.backoff
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= self.growth
                self.good_steps = 0
        # <<< exercise

    def step(self, opt: torch.optim.Optimizer, found_inf: bool):
        """The optimizer step, unless the gradients overflowed; then adapt the scale."""
        if not found_inf:
            opt.step()
        self.update(found_inf)

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, d: dict):
        """Continue a saved fp16 run's scale; a scaler saved disabled (fp32/bf16) has none to give."""
        if self.enabled and d.get("enabled", True):
            self.scale, self.good_steps = float(d["scale"]), int(d["good_steps"])
