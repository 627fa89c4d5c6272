"""Memory a GPT needs beyond its weights: the KV cache when generating, saved activations when training.

    from model_memory import kv_cache_bytes, activation_bytes_per_layer
    kv_cache_bytes(cfg, batch=8, seq_len=4096)                          # bf16 cache of a batch
    activation_bytes_per_layer(cfg, batch=8, seq_len=1024, dtype=torch.bfloat16)

Both are formulas over the config, written to match what this repository's code keeps, term by
term (the tests compare them with what autograd actually saves and, on a GPU, with the allocator).

Interview questions it answers:
- How big is the KV cache? (2 · layers · kv heads · head dim · tokens · batch · bytes per number)
- What does training keep in memory per layer, and what do flash attention and activation
  checkpointing remove? (the B·H·T² probabilities; everything but each block's input)
- Why does activation memory, not weights, limit the batch at long context? (it grows with B·T and,
  without flash attention, with B·T²; weights and optimizer state do not grow at all)
"""

import torch


def kv_cache_bytes(cfg, batch, seq_len, bytes_per_value=2) -> int:
    """Keys and values of every layer for `batch` sequences of `seq_len` tokens:
    2 (k and v) · n_layer · n_kv_head · head_dim · seq_len · batch · bytes_per_value (2 for bf16)."""
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * seq_len * batch * bytes_per_value


def rmsnorm_saved_bytes(rows, dim, e) -> int:
    """gpt.RMSNorm keeps its input in fp32 (rows·dim·4: the input itself when it is fp32, else the
    upcast copy), 1/rms per row in fp32 (rows·4) and the normalized x before the weight (rows·dim·e)."""
    return rows * dim * 4 + rows * 4 + rows * dim * e


def activation_bytes_per_layer(
    cfg, batch, seq_len, dtype=torch.bfloat16, attention="flash", checkpointing=False, device="cuda"
) -> int:
    """Bytes one transformer block keeps for its backward pass, for a dense GPTConfig (no MoE, no
    dropout, no document masking), weights and activations in `dtype` (no autocast).

    attention: "flash" (the default backend: our Triton kernel on CUDA, SDPA on CPU) or "naive"
    (backend "torch"). checkpointing: GPT.grad_checkpointing, which keeps only each block's input and
    recomputes the rest during backward (so one block's full amount is live again at a time).
    device: "cuda" or "cpu", which differ in two details noted below.

    With N = batch·seq_len tokens, d = n_embd, H / Hkv heads of size hd, e = bytes per element:
      norms (x2)     LayerNorm: input N·d·e + mean and 1/std 2·N·s (s = 4 on a GPU, e on a CPU)
                     RMSNorm: rmsnorm_saved_bytes(N, d, e)
      layer inputs   the normalized x read by wq, wk, wv and the one read by the MLP: 2·N·d·e
      QK-norm        rmsnorm_saved_bytes on N·H rows of q and N·Hkv rows of k, each of size hd
      RoPE           nothing: it multiplies by cos/sin tables that need no gradient
      flash          q, k, v: N·(H + 2·Hkv)·hd·e; output o: N·d·e; LSE: batch·H·seq_len·4.
                     Our kernel writes o as (B, T, H, hd), so wo reads it without a copy; SDPA's CPU
                     kernel writes o in q's layout, (B, H, T, hd) once RoPE has made q a new tensor:
                     with RoPE on a CPU add one N·d·e copy
      naive          q, k, v upcast to fp32 and expanded to H heads: 3·N·H·hd·4; probabilities
                     batch·H·seq_len²·4; the causal mask seq_len²·1; o merged for wo: N·d·e
      MLP            GELU: input and output of the activation, 2·N·4d·e; ReLU: its output only (it is
                     also wo's input), N·4d·e; SwiGLU: gate, up, silu(gate), product: 4·N·F·e
    RoPE's cos/sin tables are computed once per forward and shared by all layers (not counted).
    In 16-bit for GPT-2 with flash this is 32·N·d bytes plus the statistics: Korthikanti et al.
    (2022)'s 34·s·b·h less its two dropout masks (s·b·h bytes each; no dropout here)."""
    if cfg.n_experts or cfg.dropout or cfg.doc_boundary_id >= 0:
        raise ValueError(
            "activation_bytes_per_layer covers dense blocks without dropout or document "
            "masking; measure the others with torch.autograd.graph.saved_tensors_hooks"
        )
    if attention not in ("flash", "naive"):
        raise ValueError(f"attention={attention!r}: choose flash or naive")
    e = torch.empty((), dtype=dtype).element_size()
    N, d, H, Hkv, hd, T = batch * seq_len, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, seq_len
    if checkpointing:
        return N * d * e
    if cfg.norm == "rmsnorm":
        norm = rmsnorm_saved_bytes(N, d, e)
    else:
        norm = N * d * e + 2 * N * (4 if device == "cuda" or e == 4 else e)
    total = 2 * norm + 2 * N * d * e  # norms, attention and MLP inputs
    if cfg.qk_norm:
        total += rmsnorm_saved_bytes(N * H, hd, e) + rmsnorm_saved_bytes(N * Hkv, hd, e)
    if attention == "flash":
        total += N * (H + 2 * Hkv) * hd * e + N * d * e + batch * H * T * 4
        if device == "cpu" and cfg.pos_emb == "rope":
            total += N * d * e  # SDPA's o, merged by a copy
    else:
        total += 3 * N * H * hd * 4 + batch * H * T * T * 4 + T * T + N * d * e
    if cfg.mlp == "swiglu":
        total += 4 * N * cfg.ffn_hidden * e  # gpt.swiglu_hidden(d) (or a pruned model's own size)
    else:
        total += (2 if cfg.mlp == "gelu" else 1) * N * 4 * d * e
    return total
