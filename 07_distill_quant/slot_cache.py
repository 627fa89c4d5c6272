"""The serving engine's KV cache: one row per slot, one shared write column, and the moves it costs.

    from slot_cache import SlotCache
    cache = SlotCache(model, n_slots=8)
    cache.claim(slot, n_prompt); cache.write_prompt(slot, k_rows, v_rows)   # a prefilled prompt joins
    logits = cache.decode(model, last_tokens, active_rows)                  # one step for every row

batching.Engine owns one (`python 07_distill_quant/bench_serve.py` runs it under load).

The KV cache, and why 03's model needs no change. 03's GPT.forward already decodes a batch of
left-padded rows that all write their next token into one shared column (`KVCache.pos`), with a
mask saying which columns hold each row's tokens, and positions counted from that mask. `SlotCache`
keeps exactly that layout: one cache row per slot, one shared write column. The prompts that join
in a step are prefilled together in one forward pass (right-padded, with a mask: `Engine.prefill`),
and each one's keys/values are copied into its row so that it ends at the shared column:
right-aligned, where left padding would have put it; the columns before it are masked out. The price of a shared column: (1) rows attend over masked "dead" columns (what
finished requests left, and the columns before a short row), (2) when the write column reaches the
end of the cache, every live row is moved left past the dead columns (a copy, `SlotCache.make_room`;
it always frees a column, because a row starting at column 0 would already be at its length limit),
and (3) every slot reserves a full block_size row of memory.

Paged attention (vLLM, Kwon et al. 2023) removes all three: the cache is a pool of fixed-size blocks
(e.g. 16 tokens), each sequence has a block table from its positions to blocks, and the attention
kernel gathers through the table. Each sequence then has its own length (no shared column, no dead
columns, no moves), memory grows with the sequence instead of a full context row being reserved per
slot (vLLM reports near-zero waste and 2-4x more sequences in the same memory), and requests sharing a
prompt prefix share its blocks. Here the whole cache is max_batch x block_size positions of a
1M-parameter model, a few MB: the waste is not worth a custom kernel. Shared prefixes are still
reused, by copy: `prefix_cache.py` keeps whole 16-token blocks of prompt keys/values, and a prompt
that starts with cached blocks has only its suffix prefilled (Engine(..., prefix_blocks=N)).

Interview questions it answers:
- How big is the KV cache? (2 · layers · kv heads · head dim · context · slots · bytes: every slot
  reserves a whole context row here; 03_model/model_memory.py computes it)
- What does paged attention buy? (KV memory in blocks through a block table: no reservation for
  max_tokens, no fragmentation, no column moves, shared prefixes; more sequences fit, so larger batches)
"""

import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from decoding import KVCache  # 03_model


class SlotCache:
    """03's KVCache with one row per slot and one shared write column `pos` (module docstring).

    k, v per layer: (n_slots, Hkv, block_size, hd). mask (n_slots, block_size): column c of row s holds
    one of its request's tokens. A live row's tokens are the columns [start[s], pos): every step writes
    each running row's new token at `pos`. start[s] is None when the slot holds no live request."""

    def __init__(self, model, n_slots):
        cfg, p = model.cfg, next(model.parameters())
        self.max_len = cfg.block_size
        self.kv = KVCache(cfg.n_layer, cfg.block_size)
        shape = (n_slots, cfg.n_kv_head, cfg.block_size, cfg.head_dim)
        self.kv.k = [p.new_zeros(shape) for _ in range(cfg.n_layer)]
        self.kv.v = [p.new_zeros(shape) for _ in range(cfg.n_layer)]
        self.mask = torch.zeros(n_slots, cfg.block_size, dtype=torch.bool, device=p.device)
        self.start = [None] * n_slots
        self.moves = 0  # column moves done: the price of the shared write column

    @property
    def pos(self) -> int:
        return self.kv.pos

    def left(self) -> int:
        """The first column any live row uses; everything before it is dead."""
        return min((s for s in self.start if s is not None), default=self.pos)

    def claim(self, slot, n_prompt):
        """Give row `slot` the n_prompt columns just before the write column (right-aligned, as left
        padding would place it). When fewer columns are there, every live row moves right to make room."""
        if self.pos < n_prompt:
            self.move_columns(n_prompt - self.pos)
        self.start[slot] = self.pos - n_prompt
        self.mask[slot] = False
        self.mask[slot, self.start[slot] : self.pos] = True

    def make_room(self):
        """Before a decode step at the last column: move every live row left past the dead columns.
        Always frees a column: a live row starting at column 0 would be block_size tokens long, its limit,
        and so finished already."""
        if self.pos == self.max_len:
            self.move_columns(-self.left())

    def move_columns(self, shift):
        """Move the live columns [left, pos) of every row by `shift` (negative = left). Positions are
        counted from the mask, so the model sees the same sequences afterwards."""
        # >>> exercise: move columns [left, pos) of every k/v buffer and the mask by shift; start[] and kv.pos too
        lo, hi = self.left(), self.pos
        for buf in self.kv.k + self.kv.v:  # (n_slots, Hkv, L, hd)
            buf[:, :, lo + shift : hi + shift] = buf[:, :, lo:hi].clone()
        moved = self.mask[:, lo:hi].clone()
        self.mask[:] = False
        self.mask[:, lo + shift : hi + shift] = moved
        self.start = [None if s is None else s + shift for s in self.start]
        self.kv.pos += shift
        self.moves += 1
        # <<< exercise

    def write_prompt(self, slot, k_rows, v_rows):
        """Copy a prefilled prompt's keys/values, per layer (Hkv, n, hd), into the columns claimed for it."""
        for layer, (k, v) in enumerate(zip(k_rows, v_rows)):
            n = k.shape[1]
            self.kv.k[layer][slot, :, self.pos - n : self.pos] = k
            self.kv.v[layer][slot, :, self.pos - n : self.pos] = v

    def release(self, slot):
        self.mask[slot] = False
        self.start[slot] = None

    def move_row(self, src, dst):
        """Move a live row's keys/values and mask from slot src to the free slot dst (Engine.compact)."""
        cols = slice(self.start[src], self.pos)
        for buf in self.kv.k + self.kv.v:  # (n_slots, Hkv, L, hd)
            buf[dst, :, cols] = buf[src, :, cols]
        self.mask[dst] = self.mask[src]
        self.release(src)
        self.start[dst] = cols.start

    def decode(self, model, idx, active):
        """One step for rows [0, B): idx (B, 1) holds each row's last token; rows in `active` keep
        theirs (mask 1 at the write column), the others compute padding. Returns logits (B, V)."""
        # >>> exercise: write column live for `active` rows only; the model on rows [0, B) through a KVCache view
        self.make_room()
        B = idx.shape[0]
        self.mask[:B, self.pos] = False
        self.mask[active, self.pos] = True
        rows = KVCache(len(self.kv.k), self.max_len)  # a view of rows [0, B): writes land in ours
        rows.k, rows.v, rows.pos = [k[:B] for k in self.kv.k], [v[:B] for v in self.kv.v], self.pos
        logits, _ = model(idx, attention_mask=self.mask[:B, : self.pos + 1], cache=rows)
        self.kv.pos = rows.pos
        return logits[:, -1]
        # <<< exercise
