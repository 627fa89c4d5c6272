"""How one weight becomes a few bits, and why the set of weights that shares a scale matters.

    from quant_granularity import fake_quantize, weight_stats
    w_hat = fake_quantize(w, bits=4, per=32)             # quantize-dequantize in fp32, one scale per 32 inputs
    rows = weight_stats(model, ["wq", "wv"])              # max|w|/mean|w| and the error of each granularity

07_distill_quant/quantize.py prints `weight_stats` of the run's model as its outlier table
(`python 07_distill_quant/quantize.py --run runs/tiny`). The real quantized layers and their stored
format are quant_linear.py's; this file is the "simulated" quantization of QAT papers, any granularity.

## One number
    symmetric    s = max|w| / qmax (qmax = 2^(b-1) - 1)     q = clamp(round(w / s), -qmax, qmax)        ŵ = q·s
    asymmetric   s = (max w - min w) / (2^b - 1)   z = round(-min w / s)   q = clamp(round(w/s) + z, 0, 2^b - 1)
                 ŵ = (q - z)·s    (min and max widened to include 0, so a 0 weight stays exactly 0)
Rounding to nearest moves each weight by at most s/2, and no weight is clipped (s comes from the max). For a
layer y = x·Ŵᵀ that bounds the error of every output exactly:
    |y_n - ŷ_n| = |Σ_k x_k (W_nk - Ŵ_nk)| ≤ Σ_k |x_k| · s(n, k) / 2      (what tests/test_07_quant.py checks)
The symmetric grid wastes one side when a set is skewed (all weights > 0: half the codes unused); the zero point
uses all 2^b levels for [min, max] at the price of one more number per set and a subtraction.

## Who shares a scale: the tensor, an output channel, a group
The largest |w| of a set sets the step for every weight in it, so the typical error, ~s/√12 ∝ max|w| / qmax,
is large relative to a typical |w| when max|w| / mean|w| is large (an outlier).
    per tensor    one s for all N·K weights: one outlier coarsens the grid of the whole matrix;
    per channel   one s per output row n: a large row hurts only itself, and s_n factors out of the dot product
                  (y_n = s_n · Σ_k x_k q_nk): one multiply per output;
    per group     one s per G consecutive inputs k of a row: an outlier *input* feature (the same k in every row,
                  the pattern LLM weights show) is confined to one group per row. INT4 needs it: 15 levels are too
                  few for a whole row. It costs 2 bytes per G weights (G = 128: 0.016 bytes/weight).
`weight_stats` shows max|w| / mean|w| and the error of each granularity for every layer of the model
(`fake_quantize`: quantize-dequantize in fp32, any granularity, the "simulated" quantization of QAT papers).

Interview questions it answers:
- Symmetric or asymmetric, per tensor, channel or group: what does each cost and buy? (sections above)
- Why do outliers hurt per-tensor scales? (the max sets the step for all; see max|w|/mean|w| in the table)
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "kernels")]
from quant_linear import target_layers  # 07 (here)


def fake_quantize(w, bits, per, symmetric=True):
    """Ŵ (N, K): w quantized and dequantized in fp32 with one scale (and zero point) per `per`: "tensor",
    "channel" (a row of W) or an int G (G consecutive inputs of a row; G divides K)."""
    # >>> exercise: group w into sets by `per`, then per set: symmetric s = max|w| / (2^(b-1) - 1); asymmetric: widen [min, max] to hold 0, s = range / (2^b - 1)
    N, K = w.shape
    w = w.float()
    sets = w.reshape(1, N * K) if per == "tensor" else w if per == "channel" else w.reshape(N, K // per, per)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = (sets.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=1e-12)
        w_hat = torch.round(sets / s).clamp(-qmax, qmax) * s
    else:
        lo = sets.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = sets.amax(dim=-1, keepdim=True).clamp(min=0)
        s = ((hi - lo) / (2**bits - 1)).clamp(min=1e-12)
        z = torch.round(-lo / s)
        w_hat = ((torch.round(sets / s) + z).clamp(0, 2**bits - 1) - z) * s
    return w_hat.reshape(N, K)
    # <<< exercise


def relative_error(w, w_hat) -> float:
    return float((w_hat - w.float()).norm() / w.float().norm())


STAT_COLUMNS = {
    "int8_tensor": (8, "tensor", True),
    "int8_channel": (8, "channel", True),
    "int4_channel": (4, "channel", True),
    "int4_g32": (4, 32, True),
    "int4_g32_asym": (4, 32, False),
}


@torch.no_grad()
def weight_stats(model, targets) -> list:
    """One row per target layer: max|w| / mean|w| and the relative error ‖Ŵ - W‖ / ‖W‖ per scale granularity."""
    rows = []
    for name in target_layers(model, targets):
        w = model.get_submodule(name).weight.detach().float()
        row = {"layer": name, "shape": list(w.shape), "max_over_mean": float(w.abs().max() / w.abs().mean())}
        for column, (bits, per, symmetric) in STAT_COLUMNS.items():
            fits = isinstance(per, str) or w.shape[1] % per == 0
            row[column] = relative_error(w, fake_quantize(w, bits, per, symmetric)) if fits else None
        rows.append(row)
    return rows
