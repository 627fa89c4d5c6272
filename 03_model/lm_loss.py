"""The language-model loss written out: log-sum-exp, softmax, cross-entropy and z-loss.

A model's last layer gives logits z (N, V), one score per vocabulary entry per position. Then

    logsumexp(z) = log Σ_j exp(z_j)                       the log of softmax's normalizer
    softmax(z)_i = exp(z_i - m) / Σ_j exp(z_j - m)        probabilities, summing to 1 (m = max z)
    cross_entropy(z, y) = logsumexp(z) - z_y              = -log softmax(z)_y, averaged over positions
    ∂ cross_entropy / ∂z = softmax(z) - onehot(y)          (divided by the number of positions)

**The log-sum-exp trick.** exp(z) overflows float32 for z > 88 and underflows to 0 for z < -103,
so Σ exp(z_j) is inf or 0 and its log is useless. With m = max_j z_j,

    logsumexp(z) = m + log Σ_j exp(z_j - m)

is the same number (exp(m) factors out), and now every exponent is <= 0 with at least one equal to 0:
the sum lies in [1, V], nothing overflows and the largest term is exact. m is a constant as far as
the gradient is concerned (its terms cancel), which is why `logsumexp` detaches it.

**z-loss** (Mesh-TensorFlow, PaLM; `GPTConfig.z_loss_coef`, PaLM used 1e-4): add coef · logsumexp(z)²
to the loss. Softmax ignores a shift of all logits, so nothing in cross-entropy stops them from
drifting up together; large logits make bf16 rounding coarse (8 bits of mantissa: at |z| ~ 256 the
spacing is 2) and the softmax saturates. A *loss spike* is then what the training curve shows: the
loss jumps by a large amount within a few steps (sometimes to many times its value), the gradient
norm jumps with it, and the run either recovers slowly or diverges to NaN. Pulling logsumexp(z)
towards 0 keeps the normalizer near 1 and the logits in a range where bf16 is precise; its gradient,
2·coef·lse·softmax(z), is tiny unless the logits drift.

    from lm_loss import cross_entropy, cross_entropy_and_z
    loss = cross_entropy(logits, targets)            # logits (N, V), targets (N,) with -100 = ignore

Interview questions it answers:
- Why subtract the max before exp in softmax? (see above: same value, no overflow)
- What is the gradient of softmax + cross-entropy with respect to the logits? (p - y; why frameworks
  fuse the two: the gradient is simple even though each piece's Jacobian is not)
- What is z-loss and what does it prevent? (above)
"""

import torch

IGNORE_INDEX = -100  # the target value that contributes nothing (padding, prompt tokens in SFT)


def shifted_exp(x, dim=-1):
    """(m, exp(x - m)) with m = max(x) along `dim`: the two pieces of the log-sum-exp trick.
    Every exponent is <= 0, so nothing overflows; m is a constant for the gradient (its terms cancel)."""
    m = x.amax(dim=dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # a row of all -inf: lse = -inf, not NaN
    return m, (x - m).exp_()  # exp_ in place: one (N, V) buffer, not two


def logsumexp(x, dim=-1, keepdim=False):
    """log Σ exp(x) along `dim`, computed as m + log Σ exp(x - m) (the module docstring's trick)."""
    # >>> exercise: m + log Σ exp(x - m) with m = max(x) (shifted_exp gives both pieces); keepdim as asked
    m, e = shifted_exp(x, dim)
    lse = m + e.sum(dim=dim, keepdim=True).log()
    return lse if keepdim else lse.squeeze(dim)
    # <<< exercise


def softmax(x, dim=-1):
    """exp(x - m) / Σ exp(x - m) with m = max(x): probabilities along `dim`.

    The same value as exp(x - logsumexp(x)), but more accurate: there the subtraction x - lse rounds
    to the spacing of |lse| (at logits ~100, 8e-6 in fp32) and exp turns that into a relative error of
    each probability, so rows sum to 1 ± 3e-6; here x - m is exact for the entries that matter (the
    largest is exactly 0, exp(0) = 1) and the only rounding is one exp and one division per element."""
    _, e = shifted_exp(x, dim)
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax(x, dim=-1):
    """x - logsumexp(x): log-probabilities, exact even where softmax underflows to 0."""
    return x - logsumexp(x, dim, keepdim=True)


class CrossEntropyAndZ(torch.autograd.Function):
    """(mean cross-entropy, mean logsumexp²) over the rows whose target is not ignored, with the
    closed-form gradient instead of autograd's graph of exp, sum and log (fewer passes over (N, V))."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        valid = targets != ignore_index  # (N,)
        n = valid.sum().clamp(min=1)  # no target at all: loss 0 and zero gradients, not 0/0 = NaN
        safe = targets.where(valid, 0)  # any index for ignored rows
        m, e = shifted_exp(logits)  # (N, 1), e = exp(z - m) (N, V)
        sum_e = e.sum(dim=-1)  # (N,), in [1, V]
        lse = m.squeeze(-1) + sum_e.log()  # (N,)
        target_logit = logits.gather(1, safe[:, None]).squeeze(1)  # z_y, (N,)
        ce = ((lse - target_logit) * valid).sum() / n
        z_sq = (lse.square() * valid).sum() / n
        ctx.save_for_backward(e, sum_e, lse, safe, valid, n)  # e, not the logits: softmax = e / sum_e
        return ce, z_sq

    @staticmethod
    def backward(ctx, grad_ce, grad_z):
        # per valid row, with p = softmax(z):  ∂ce/∂z = (p - onehot(y)) / n,  ∂z²/∂z = 2·lse·p / n
        # >>> exercise: p = e / sum_e: dce/dz = (p - onehot(y)) / n, dz²/dz = 2·lse·p / n; ignored rows 0
        e, sum_e, lse, safe, valid, n = ctx.saved_tensors
        row = valid.to(e.dtype) / n  # (N,): 1/n, or 0 if ignored
        grad = e * ((grad_ce + 2 * grad_z * lse) * row / sum_e)[:, None]  # p · (...), one pass, (N, V)
        grad.scatter_add_(1, safe[:, None], (-grad_ce * row)[:, None])  # the -onehot(y) term
        return grad, None, None
        # <<< exercise


def cross_entropy_and_z(logits, targets, ignore_index=IGNORE_INDEX):
    """(mean cross-entropy, mean z²) with z = logsumexp(logits); logits (N, V) float, targets (N,) int64."""
    return CrossEntropyAndZ.apply(logits, targets, ignore_index)


def cross_entropy(logits, targets, ignore_index=IGNORE_INDEX):
    """Mean of logsumexp(z) - z_y over the positions whose target is not `ignore_index`."""
    return cross_entropy_and_z(logits, targets, ignore_index)[0]
