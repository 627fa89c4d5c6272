"""Attention: the naive reference and the one dispatch function model code calls.

(The Triton FlashAttention-2 kernel and the tiled PyTorch reference are being added beside these.)

    from attention import attention
    y = attention(q, k, v, causal=True)   # q (B, H, T, D); k, v (B, Hkv, T, D); H % Hkv == 0
"""
import math

import torch
import torch.nn.functional as F


def attention_naive(q, k, v, causal=True, scale=None):
    """softmax(Q Kᵀ · scale + mask) V, materializing the (T, T) score matrix. The ground truth."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    if H != Hkv:  # GQA/MQA: each group of H/Hkv query heads shares one K/V head
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    att = (q.float() @ k.float().transpose(-2, -1)) * scale       # (B, H, T, S)
    if causal:
        S = k.shape[2]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        att = att.masked_fill(~mask, float("-inf"))
    att = att.softmax(dim=-1)
    return (att @ v.float()).to(q.dtype)                          # (B, H, T, D)


def attention(q, k, v, causal=True, scale=None, backend="auto"):
    """Dispatch: "auto" (Triton on CUDA, naive elsewhere), "triton", "torch" (naive), "sdpa"."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
    return attention_naive(q, k, v, causal, scale)
