"""Batches for SFT: several short examples packed into one sequence, or one example per padded row.

SFT examples are short (the task sets: ~25 tokens) and the context is long (128+), so padding each
example to the longest in its batch wastes most of every row. Packing puts examples side by side:

    row:      [BOS u u u A A A E][BOS u u A A E][BOS u u u u A A A A E][pad pad]
    segment:   0 0 0 0 0 0 0 0   1 1 1 1 1 1   2 2 2 2 2 2 2 2 2 2   -1  -1

Packed naively, example 1 would attend to example 0 and be read at positions 8..13 instead of
0..5, so its loss would depend on what happens to sit before it. Here nothing leaks, by doing both:
- a block-diagonal causal mask: token t sees key s only if s <= t and segment[s] == segment[t];
- positions restarting at 0 in every segment (t - start of its segment).
The mask alone would suffice for RoPE (scores depend only on t - s), not for learned or sinusoidal
absolute positions, and the model must see each example exactly as it would alone: then packed and
padded batches give the same per-example loss (tested), and packing is purely a speed-up.
The cost: the explicit-mask attention path (no fused causal kernel); on a CPU and at these lengths
that is cheaper than the padding it saves.

How the mask reaches the model: GPT.forward takes `segments` (B, T), the example index of each
token, and builds the position ids and the boolean mask (B, 1, T, T) with 03's
`segment_positions_and_mask`, the same function its pretraining document masking uses.

Every example is shifted on its own (x = ids[:-1], y = labels[1:]), so no target crosses from one
example into the next.

Interview questions it answers:
- What leaks across packed examples, and how do you stop it? (attention and absolute positions;
  a block-diagonal mask plus per-example position ids; FlashAttention's varlen API does the same
  with cumulative sequence lengths instead of a mask)
- Packing vs padding: same gradients? (the same per-example losses; the batch mean differs only
  in which examples share a step)
"""

import torch

from chat_template import IGNORE, token_logprobs  # 05_sft_lora (this folder)


def shifted(example):
    """(x, y) of one example: the model reads ids[:-1] and is scored on labels[1:]."""
    return example["input_ids"][:-1], example["labels"][1:]


def pack_rows(examples, block_size) -> list:
    """Next-fit packing in the given order (so a curriculum order is kept): a list of rows, each a
    list of examples whose shifted lengths sum to <= block_size."""
    rows, row, used = [], [], 0
    for ex in examples:
        n = len(ex["input_ids"]) - 1
        if row and used + n > block_size:
            rows.append(row)
            row, used = [], 0
        row.append(ex)
        used += n
    if row:
        rows.append(row)
    return rows


def collate_packed(rows, pad_id, device=None):
    """(x, y, segment) tensors (B, T), T = the longest row; segment -1 on padding."""
    # >>> exercise: lay each row's shifted examples side by side: x, y (-100 on padding), segment = example index (-1 on padding)
    T = max(sum(len(ex["input_ids"]) - 1 for ex in row) for row in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    seg = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for i, ex in enumerate(row):
            xi, yi = shifted(ex)
            x[b, t : t + len(xi)], y[b, t : t + len(yi)], seg[b, t : t + len(xi)] = (
                torch.tensor(xi),
                torch.tensor(yi),
                i,
            )
            t += len(xi)
    return x.to(device), y.to(device), seg.to(device)
    # <<< exercise


def collate_padded(examples, pad_id, device=None):
    """(x, y) (B, T): one example per row, right-padded. With causal attention a real token never
    sees the padding after it, and its positions are 0..n-1: no mask is needed."""
    T = max(len(ex["input_ids"]) - 1 for ex in examples)
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, ex in enumerate(examples):
        xi, yi = shifted(ex)
        x[b, : len(xi)], y[b, : len(yi)] = torch.tensor(xi), torch.tensor(yi)
    return x.to(device), y.to(device)


def forward_packed(model, x, segment, targets=None):
    """model(x, targets) with packed examples kept apart (module docstring): 03's GPT takes the
    segment ids and builds the block-diagonal causal mask and per-segment positions itself."""
    return model(x, targets, segments=segment)


def per_example_loss(logits, y, segment=None):
    """Mean NLL over the trained tokens of each example: a list, in row order then segment order.
    segment None = one example per row (the padded path)."""
    nll, keep = -token_logprobs(logits, y), (y != IGNORE)
    if segment is None:
        return (nll.sum(1) / keep.sum(1).clamp(min=1)).tolist()
    out = []
    for b in range(y.shape[0]):
        for s in range(int(segment[b].max()) + 1):
            here = segment[b] == s
            out.append((nll[b][here].sum() / keep[b][here].sum().clamp(min=1)).item())
    return out
