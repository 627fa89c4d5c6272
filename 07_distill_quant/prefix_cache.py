"""Prefix caching: requests that share a prompt prefix reuse its keys/values instead of recomputing them.

    cache = PrefixCache(model, n_blocks=256, block=16)
    n_cached, kv = cache.lookup(prompt_ids)        # the longest cached prefix, whole blocks; kv (2L, Hkv, n, hd)
    cache.insert(prompt_ids, k_rows, v_rows)       # after a prefill: remember its whole blocks

Why it is exact. A token's key and value at layer l depend only on the tokens up to it (causal
attention) and its position. So the keys/values of the first 16·b tokens of a prompt are a function of
those tokens alone, and any prompt that starts with the same 16·b tokens has the same ones. A block is
stored under the tuple of *all* tokens up to its end (what vLLM's chained block hash stands for; the tuple
itself compares exactly, so no hash collision can hand a request a stranger's keys).

What it saves: a chat server's requests start with the same system prompt and template, few-shot
evaluation repeats its examples, and every turn of a conversation repeats the turns before. Prefill of
the shared part is skipped; only the suffix runs through the model, attending to the cached keys.

How it differs from vLLM / nano-vllm. There the KV cache itself is a pool of blocks and a sequence's
block table points at shared blocks (no copy, reference counts, copy-on-write for a partial block).
Our engine's cache is one contiguous row per slot (slot_cache.SlotCache), so a hit is *copied* from this
store into the row: a memory copy of n·2L·Hkv·hd numbers instead of the model's FLOPs over n tokens.
Only whole blocks are cached, and at least one prompt token is always recomputed (its logits give the
first answer token). Eviction is least-recently-used over blocks; a block is only useful with all
blocks before it, so a lookup stops at the first miss.

Interview questions it answers:
- Why may two requests share KV-cache entries at all? (causal attention: a prefix's keys/values do not
  depend on what follows it)
- Why key a block by the whole prefix and not by its own 16 tokens? (the same 16 tokens after a
  different history have different keys/values)
- What does the hit rate buy? (prefill FLOPs ~ 2·params·tokens: the cached share of prompt tokens is
  skipped; time to first token falls most for long shared prompts)
"""

import collections

import torch


class PrefixCache:
    """Whole blocks of prompt keys/values, keyed by the tuple of every token up to the block's end."""

    def __init__(self, n_blocks=256, block=16):
        self.n_blocks, self.block = n_blocks, block
        self.blocks = collections.OrderedDict()  # tuple(prompt[:end]) -> (2L, Hkv, block, hd), LRU order
        self.looked_up = 0  # prompt tokens asked about
        self.hits = 0  # of them, served from the cache

    def cached_length(self, prompt) -> int:
        """Tokens of the longest prefix held in whole blocks, leaving at least one token to compute."""
        n = 0
        while n + self.block < len(prompt) and tuple(prompt[: n + self.block]) in self.blocks:
            n += self.block
        return n

    def lookup(self, prompt) -> tuple:
        """(n, kv (2L, Hkv, n, hd) or None): the cached keys/values (layers' k then v) of prompt[:n]."""
        n = self.cached_length(prompt)
        self.looked_up += len(prompt)
        self.hits += n
        if n == 0:
            return 0, None
        keys = [tuple(prompt[:end]) for end in range(self.block, n + 1, self.block)]
        for key in reversed(keys):  # the first block last: a block is useless once one before it is gone
            self.blocks.move_to_end(key)  # recently used: evicted last
        return n, torch.cat([self.blocks[key] for key in keys], dim=2)

    def insert(self, prompt, k_rows, v_rows):
        """Remember the whole blocks of a prefilled prompt: k_rows, v_rows per layer (Hkv, len(prompt), hd)."""
        for end in range(len(prompt) // self.block * self.block, 0, -self.block):  # last block first
            key = tuple(prompt[:end])
            if key in self.blocks:
                self.blocks.move_to_end(key)
                continue
            cols = slice(end - self.block, end)
            self.blocks[key] = torch.stack([k[:, cols] for k in k_rows] + [v[:, cols] for v in v_rows])
        while len(self.blocks) > self.n_blocks:
            self.blocks.popitem(last=False)  # the least recently used

    def hit_rate(self) -> float:
        return self.hits / max(self.looked_up, 1)
