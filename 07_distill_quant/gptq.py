"""GPTQ: quantize a layer's weight one column at a time, letting the columns not yet quantized absorb the error.

    python 07_distill_quant/quantize.py --run runs/tiny --method gptq      # the whole model (quantize.py)

    from gptq import HessianCollector, gptq_quantize, output_error
    with HessianCollector({"fc": layer}) as hc:  # H = 2/n · Σ x xᵀ over the inputs x the layer sees
        model(calibration_batch)
    qw = gptq_quantize(layer.weight, hc.hessians()["fc"], bits=4, group_size=32)  # a QuantizedWeight
    output_error(layer.weight, dequantize(qw), H)                                # vs round-to-nearest's

Why: round-to-nearest (RTN) makes each weight as close as it can be on its own. What matters is the layer's
*output* on the inputs it really gets. With X (n, K) the calibration inputs and w a row of W (one output):
    E(ŵ) = ‖X wᵀ - X ŵᵀ‖² = (w - ŵ) XᵀX (w - ŵ)ᵀ = ½ (w - ŵ) H (w - ŵ)ᵀ,        H = 2 XᵀX  (K, K)
Every row has the same H, so W's rows are N independent problems sharing one matrix (H uses 2/n instead of 2,
an average, which moves no minimum). Correlated input features make H far from diagonal: an error in weight k
can be cancelled by changing weights j that see a similar input. Optimal Brain Surgeon's answer for one weight:
fix w_k at its quantized value ŵ_k; the change of the remaining weights that minimizes E is
    δ = -(w_k - ŵ_k) / [H⁻¹]_kk · H⁻¹[k, :]          (H⁻¹ over the weights not yet fixed)
then drop k from H⁻¹ (one step of Gaussian elimination) and go on with the next weight.

GPTQ (Frantar et al., 2022) makes that exact greedy procedure fast:
  1. The same column order for every row: one sequence of H⁻¹'s serves all N rows, and step k updates the
     whole block W[:, k+1:] at once with an outer product.
  2. That sequence needs no elimination: with H⁻¹ = UᵀU (U upper triangular, Cholesky), row k of U is row k of
     the eliminated H⁻¹ divided by sqrt of its diagonal, so the update is
         e = (W[:, k] - Ŵ[:, k]) / U_kk          W[:, k+1:] -= e ⊗ U[k, k+1:]
  3. Damping, H + λ·mean(diag H)·I with λ ≈ 0.01, keeps the Cholesky factorization stable when X is low-rank
     (few calibration tokens, or features that are always 0; those "dead" inputs get weight 0).
Group-wise scales are chosen when the loop enters a group, from the weights as updated so far, so the scale
fits the values that are actually rounded. Left out, as optional refinements: lazy batches (apply the update
in blocks of 128 columns: the same numbers, fewer passes over W on a GPU) and act-order (largest H_kk first).

Interview questions it answers:
- What does GPTQ minimize, and why is that better than minimizing ‖W - Ŵ‖? (the layer's output error on real
  inputs, ‖XWᵀ - XŴᵀ‖²; errors along directions the inputs never take cost nothing)
- Why is it called second-order? (H = 2XᵀX is the Hessian of that squared error with respect to a row of W)
- What is the calibration set for, and how big? (it estimates H; a few hundred sequences of real text, no
  labels; here 32 windows of the training split)
- GPTQ vs AWQ? (GPTQ changes the not-yet-quantized weights to compensate rounding; AWQ rescales input
  channels by activation size before plain rounding, so salient weights round with relatively less error)
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "kernels")]
from common.cli import UserError
from quant_matmul import (
    QuantizedWeight,
    asymmetric_scale_zero,
    check_quant_settings,
    pack_int4,  # kernels
    quantize_asymmetric,
    quantize_symmetric,
    symmetric_scale,
)


class HessianCollector:
    """Accumulates H = 2/n · Σ x xᵀ over every input row x (K,) of the given nn.Linear modules (forward pre-hooks).

    Used as a context manager around calibration forwards; the hooks are removed on exit."""

    def __init__(self, modules: dict):
        self.sums, self.counts = {}, {}
        self.handles = [
            m.register_forward_pre_hook(lambda m, args, name=name: self.add(name, args[0]))
            for name, m in modules.items()
        ]

    def add(self, name, x):
        """Add the inputs x (..., K) of layer `name`: Σ x xᵀ over its rows (in fp64: no drift over many batches)."""
        # >>> exercise: flatten x to (rows, K), add xᵀx (K, K) to the layer's sum and the row count to its count
        x = x.detach().reshape(-1, x.shape[-1]).double()  # (rows, K)
        self.sums[name] = self.sums.get(name, 0) + x.T @ x  # Σ x xᵀ (K, K)
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]
        # <<< exercise

    def hessians(self) -> dict:
        return {name: (2 * s / self.counts[name]).float() for name, s in self.sums.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def inverse_hessian_cholesky(H, damp=0.01):
    """U, upper triangular with UᵀU = (H + damp · mean(diag H) · I)⁻¹, for H (K, K)."""
    # >>> exercise: damp the diagonal (on a copy), invert through a Cholesky factor, return H⁻¹'s upper Cholesky factor
    H = H.clone()
    H.diagonal().add_(damp * H.diagonal().mean().clamp(min=1e-8))
    H_inv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(H_inv, upper=True)
    # <<< exercise


def grid(w, bits, symmetric):
    """(scale, zero or None) of the rows of w (N, G): the stored fp16 values (kernels/quant_matmul.py)."""
    return (symmetric_scale(w, bits), None) if symmetric else asymmetric_scale_zero(w, bits)


def round_to_grid(w, scale, zero, bits):
    """(codes, ŵ) of a column w (N,) on each row's grid: q = round(w/s) [+ z], ŵ = (q - z)·s."""
    if zero is None:
        q = quantize_symmetric(w[:, None], scale, bits)[:, 0]
        return q, q.float() * scale.float()
    q = quantize_asymmetric(w[:, None], scale, zero, bits)[:, 0]
    return q, (q.float() - zero.float()) * scale.float()


def gptq_columns(W, U, bits, G, symmetric):
    """(codes (N, K), scales (N, K/G), zeros (N, K/G) or None): GPTQ's loop over the columns of W (N, K).

    Entering a group of G columns, its grid (scale, zero) is chosen from the weights as updated so far; then each
    column k is rounded to the grid and its error, divided by U_kk, is spread over the columns not yet rounded:
        e = (W[:, k] - Ŵ[:, k]) / U_kk          W[:, k+1:] -= e ⊗ U[k, k+1:]
    G = K gives one grid per row (INT8, per output channel)."""
    N, K = W.shape
    W = W.clone()
    codes = torch.empty(N, K, dtype=torch.int8 if symmetric else torch.uint8, device=W.device)
    scales, zeros = [], []
    # >>> exercise: for each column k: new group -> grid from the current W; round; err = (w - ŵ) / U[k, k]; W[:, k+1:] -= err·U[k, k+1:]
    for k in range(K):
        if k % G == 0:
            scale, zero = grid(W[:, k : k + G], bits, symmetric)
            scales.append(scale)
            zeros.append(zero)
        codes[:, k], w_hat = round_to_grid(W[:, k], scale, zero, bits)
        err = (W[:, k] - w_hat) / U[k, k]  # (N,)
        W[:, k + 1 :] -= err[:, None] * U[k, k + 1 :][None, :]  # the OBS update, all rows at once
    return codes, torch.stack(scales, 1), None if symmetric else torch.stack(zeros, 1)
    # <<< exercise


def gptq_quantize(W, H, bits=4, group_size=128, symmetric=True, damp=0.01) -> QuantizedWeight:
    """Quantize W (N, K) with GPTQ given the Hessian H (K, K) of its inputs: the same formats as
    quant_matmul.quantize (INT8 per output channel, INT4 in groups along K), other codes."""
    check_quant_settings(bits, group_size if bits == 4 else None, W.shape[1])
    if bits == 8 and not symmetric:
        raise UserError(
            "INT8 here is symmetric only (one scale per output channel); use symmetric, or bits=4 for zero points"
        )
    W = W.detach().float().clone()
    N, K = W.shape
    dead = H.diagonal() == 0  # an input that was always 0: its weights cannot matter
    H = H.clone()
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    G = K if bits == 8 else group_size
    codes, scales, zeros = gptq_columns(W, inverse_hessian_cholesky(H, damp), bits, G, symmetric)
    if bits == 8:
        return QuantizedWeight(codes, scales[:, 0], None, 8, None, K)
    return QuantizedWeight(pack_int4(codes, signed=symmetric), scales, zeros, 4, G, K)


def output_error(W, W_hat, H) -> float:
    """Relative output error on the calibration inputs, from H alone (no need to keep X):
    ‖X(W - Ŵ)ᵀ‖_F / ‖XWᵀ‖_F = sqrt(tr(ΔHΔᵀ) / tr(WHWᵀ)), Δ = W - Ŵ, since H ∝ XᵀX."""
    # >>> exercise: both traces in fp64 (Σ over rows of Δ H Δᵀ's diagonal), then the square root of their ratio
    W, delta = W.double(), (W.double() - W_hat.double())
    H = H.double()
    return float(torch.sqrt(((delta @ H) * delta).sum() / ((W @ H) * W).sum().clamp(min=1e-30)))
    # <<< exercise
