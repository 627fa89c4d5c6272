"""Serving many requests with one model: one at a time, static batches, continuous batching.

    from batching import Engine
    from serve_request import Request, SamplingParams      # one request: settings, state, text stream
    engine = Engine(model, tok, policy="continuous", max_batch=8)
    req = engine.submit(Request(prompt_ids, SamplingParams(max_tokens=32, temperature=0)))
    engine.run_until_idle()                    # or engine.start(): a background thread (serve.py)
    req.text, req.output_ids, req.finish_reason, req.first_token_at - req.arrival

    python 07_distill_quant/bench_serve.py     # the three policies on one Poisson stream of requests

Why batching pays: decode is memory-bandwidth-bound. Generating one token of one sequence multiplies
a (1, d) vector by every weight matrix: about 2 FLOPs per weight, while every weight (2 bytes in
bf16) is read from memory once: ~1 FLOP per byte. An H100 does ~990 TFLOP/s of bf16 math but reads
~3.35 TB/s, so it needs ~300 FLOPs per byte to keep its arithmetic busy; at batch 1 it computes well
under 1 % of the time and waits on memory the rest. The weights are read once per step however many
sequences use them, so B sequences decode in about the time of one, until B nears that ratio or the
per-sequence KV-cache reads dominate. Prefill is the opposite case: a T-token prompt does T tokens
of math per weight read, so it is compute-bound and one long prompt can fill the machine alone.
On a CPU the ratio is smaller (tens of FLOPs per byte), but the effect is the same (bench_serve.py).

The three policies (`Engine.schedule` is the only place they differ):
- sequential: one request at a time (batch 1): every weight read serves one token.
- static: take up to max_batch waiting requests, run them together until the longest finishes.
  Rows that finished early keep computing padding, and a request that arrives meanwhile waits for
  the whole batch: its time to first token includes the longest member of the batch before it.
- continuous (Orca, Yu et al. 2022, "iteration-level scheduling"): the schedule is decided again at
  every decode step. A finished row leaves at once and a waiting request takes its slot at the next
  step: its prompt is prefilled in that step and it then decodes with the others. Under load the
  batch stays full of useful rows, and nobody waits for a stranger's long answer.

The KV cache is `SlotCache` (slot_cache.py): one row per slot and one shared write column, the
layout 03's GPT.forward already decodes, so 03's model needs no change; why, what it costs, and what
paged attention would buy instead are told there.

What keeps a step cheap (the engine must beat 03's padded GPT.generate, which does nothing per
request): every request's sampling settings live in per-slot tensors (`batch_sampling.py`) and a
step samples all rows in one vectorized call (sorting only the rows that use top-k or top-p: a sort
of the batch cost more than the rest of the sampler); the rows' last tokens stay in a tensor; under
continuous batching a finished row's slot is filled by moving the highest running row down
(`Engine.compact`), so a decode step computes only running rows, where generate computes every row
until the longest answer ends; the step runs in torch.inference_mode; and the decode and prefill
forwards are the engine's own (decode_runner.py: fused QKV and gate-up products, a RoPE table, no
per-step mask building, the prefill's LM head at the last prompt token only), with the same logits as
03's forward, which the engine keeps for models the fused step does not cover (LoRA, adapters,
quantized layers). Per request, Python only appends the token and checks for
the end (and, with a tokenizer, the stop strings).

Interview questions it answers:
- Why is decode memory-bound and prefill compute-bound? (FLOPs per byte of weights read: ~1 per
  sequence in decode, ~T in prefill; the GPU needs ~300)
- What does continuous batching change over static batching? (the batch is re-formed at every
  decode step: finished rows leave, waiting requests join, no padding to the longest member)
- Throughput or latency? (a bigger batch raises tokens/s, but each step is slower, so every
  request's tokens come a little later; servers cap the batch to bound the latency)
- How is a batch of prompts of different lengths prefilled at once? (pad them to one length with a
  mask; positions count real tokens only, so each is computed as if alone: `Engine.prefill`)
- Where does a batching engine beat a plain padded generate? (finished rows leave the batch instead of
  computing padding, and new requests join without waiting; with equal answer lengths both run the
  same forward passes, and only a cheaper decode step helps: decode_runner.py)
"""

import collections
import math
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError
from common.devices import decoding_threads
from decoding import KVCache, check_sampling_args  # 03_model

from batch_sampling import (
    MIN_TEMPERATURE,
    MIN_TOP_P,
    BatchSampler,
    apply_presence_frequency,
    token_logprobs,
)  # this stage
from decode_runner import DecodeRunner, unsupported  # this stage
from prefix_cache import PrefixCache  # this stage
from serve_request import PENALTY_RANGE, QueueFull, Request, cut_at_stop, held_back  # this stage
from slot_cache import SlotCache  # this stage

__all__ = ["apply_presence_frequency", "MIN_TEMPERATURE", "MIN_TOP_P"]  # re-exported for serve.py and tests

POLICIES = ("sequential", "static", "continuous")


# ----------------------------------------------------------------------------- the engine


class Engine:
    """A scheduler over one model, one SlotCache and one waiting queue.

    Each `step()`: `schedule()` says which requests prefill now and which decode; then each new prompt
    is prefilled (it gets its first token), and one decode step gives every running request its next
    token. Thread-safe where it must be: `submit` and `Request.cancel` may be called from any thread
    while one thread (yours, or `start()`'s) runs the steps."""

    def __init__(
        self,
        model,
        tokenizer=None,
        policy="continuous",
        max_batch=8,
        max_waiting=256,
        prefix_blocks=0,
        decode_runner=True,
    ):
        if policy not in POLICIES:
            raise UserError(f"policy {policy!r} unknown; use one of {', '.join(POLICIES)}")
        if max_batch < 1 or max_waiting < 0 or prefix_blocks < 0:
            raise UserError(
                f"max_batch={max_batch} must be >= 1, max_waiting={max_waiting} and "
                f"prefix_blocks={prefix_blocks} >= 0"
            )
        self.model = model.eval()
        self.decode_text = tokenizer.decode if tokenizer is not None else None
        self.policy = policy
        self.slots = [None] * (1 if policy == "sequential" else max_batch)  # the Request in each row
        self.cache = SlotCache(model, len(self.slots))
        # the fused decode step (decode_runner.py) where it computes exactly what 03's forward does
        self.runner = DecodeRunner(model) if decode_runner and unsupported(model) is None else None
        self.device = next(model.parameters()).device
        self.sampler = BatchSampler(len(self.slots), model.cfg.vocab_size, self.device)
        self.last = torch.zeros(
            len(self.slots), dtype=torch.long, device=self.device
        )  # each row's last token
        self.slot_list = list(range(len(self.slots)))
        self.slot_ids = torch.arange(len(self.slots), device=self.device)
        self.prefix_cache = PrefixCache(prefix_blocks) if prefix_blocks else None
        self.waiting = collections.deque()
        self.max_waiting = max_waiting
        self.cond = threading.Condition()  # guards `waiting`; wakes the background thread
        self.stats = collections.Counter()  # prefills, decode_steps/rows/useful, finished_<reason>
        self.thread, self.stopping = None, False

    # -------- requests in

    def submit(self, req: Request) -> Request:
        """Queue a request; a UserError if it can never run, QueueFull if the queue is full."""
        p, n, ctx = req.params, len(req.prompt_ids), self.model.cfg.block_size
        check_sampling_args(p.max_tokens, p.temperature, p.top_k, p.top_p, p.repetition_penalty)
        if not all(math.isfinite(x) for x in (p.temperature, p.top_p or 1.0, p.repetition_penalty)):
            raise UserError(f"temperature, top_p and repetition_penalty must be finite numbers, got {p}")
        lo, hi = PENALTY_RANGE
        if not lo <= p.repetition_penalty <= hi:
            raise UserError(
                f"repetition_penalty={p.repetition_penalty} must be between {lo} and {hi} (1 = off)"
            )
        if n == 0:
            raise UserError("the prompt is empty; give at least one token")
        if n + p.max_tokens > ctx:
            raise UserError(
                f"the prompt ({n} tokens) + max_tokens ({p.max_tokens}) = {n + p.max_tokens} "
                f"exceeds the model's context of {ctx} tokens; shorten one of them"
            )
        with self.cond:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are waiting already")
            if req.arrival is None:
                req.arrival = time.perf_counter()
            self.waiting.append(req)
            self.cond.notify()
        return req

    def busy(self) -> bool:
        return bool(self.waiting) or any(r is not None for r in self.slots)

    # -------- the policy

    def schedule(self) -> tuple:
        """(prefill, decode): the requests whose prompts run now, and those that get one more token."""
        self.drop_cancelled()
        self.free_finished()
        # >>> exercise: refill free slots from the queue (continuous: every step; others: between batches)
        prefill = []
        batch_running = any(r is not None for r in self.slots)
        if self.policy == "continuous" or not batch_running:  # static, sequential: only between batches
            with self.cond:
                while self.waiting and None in self.slots:
                    req = self.waiting.popleft()
                    req.slot = self.slots.index(None)  # the lowest free row: running rows stay near the top
                    self.slots[req.slot] = req
                    self.cache.claim(req.slot, len(req.prompt_ids))
                    prefill.append(req)
        decode = [r for r in self.slots if r is not None and r.finish_reason is None]
        return prefill, decode
        # <<< exercise

    def drop_cancelled(self):
        for req in self.slots:
            if req is not None and req.cancelled and req.finish_reason is None:
                self.finish(req, "cancelled")
        with self.cond:
            for req in [r for r in self.waiting if r.cancelled]:
                self.waiting.remove(req)
                self.finish(req, "cancelled")

    def free_finished(self):
        """Empty the slots of finished requests. Static batching keeps them until the whole batch is
        done: their rows go on computing padding, which is the waste continuous batching removes."""
        # >>> exercise: free finished slots, except under static batching while its batch still runs
        occupied = [r for r in self.slots if r is not None]
        if self.policy == "static" and any(r.finish_reason is None for r in occupied):
            return
        self.slots = [None if r is None or r.finish_reason else r for r in self.slots]
        # <<< exercise

    def compact(self):
        """Continuous batching: move the highest running rows down into free slots, so that a decode
        step computes exactly the running rows [0, B) and no padding row. A move copies one row of
        the cache (its live columns); a padding row would cost a row of every step's arithmetic
        until the rows above it finish. Static batching keeps its finished rows by definition."""
        if self.policy != "continuous":
            return
        while None in self.slots:
            hole = self.slots.index(None)
            top = max((i for i, r in enumerate(self.slots) if r is not None), default=-1)
            if top < hole:
                return
            req = self.slots[top]
            if self.cache.start[top] is not None:
                self.cache.move_row(top, hole)
            self.sampler.move_row(top, hole)
            self.last[hole] = self.last[top]
            self.slots[hole], self.slots[top], req.slot = req, None, hole
            self.stats["row_moves"] += 1

    # -------- one step

    def step(self) -> bool:
        """Run one scheduling step; False when there was nothing to do."""
        prefill, decode = self.schedule()
        self.compact()
        # a handful of rows per step: one thread (common/devices.py says why); inference_mode, not
        # no_grad: no autograd bookkeeping (version counters, view tracking) on any of its ~100 tensor
        # calls per step, which at this size cost as much as the arithmetic
        with decoding_threads(), torch.inference_mode():
            if prefill:
                self.prefill(prefill)
            # a prefill may have finished one; compact() may have moved some: rows in slot order
            decode = sorted((r for r in decode if r.finish_reason is None), key=lambda r: r.slot)
            if decode:
                self.decode(decode)
        return bool(prefill or decode)

    def prefill(self, reqs):
        """Every new prompt through the model in one forward pass, their keys/values into their cache
        rows, and each one's first token from its last position's logits.

        Layout of the pass (one row per request): the cached prefix of P_i tokens (prefix_cache.py;
        P_i = 0 without one) is copied in right-aligned before column Lp = max P_i, and the S_i
        remaining tokens follow from column Lp, right-padded to T = max S_i:

            row i:  [ masked | prefix (P_i) ][ suffix (S_i) | padding ]      mask True on the real ones
                    0        Lp - P_i      Lp              Lp + S_i     Lp + T

        Positions are counted from the mask (03's rule), so every row is seen exactly as its prompt
        alone; padding after a row's end is never attended to by its real tokens (causality)."""
        t0 = time.perf_counter()
        for req in reqs:
            self.sampler.place(req.slot, req)
        hits = [self.prefix_cache.lookup(r.prompt_ids) if self.prefix_cache else (0, None) for r in reqs]
        P = [n for n, _ in hits]
        S = [len(r.prompt_ids) - n for r, n in zip(reqs, P)]
        Lp, T = max(P), max(S)
        idx, mask = self.prefill_inputs(reqs, P, S, Lp, T)
        run = KVCache(len(self.cache.kv.k), Lp + T)
        shape = (len(reqs), self.model.cfg.n_kv_head, Lp + T, self.model.cfg.head_dim)
        run.k = [self.cache.kv.k[0].new_zeros(shape) for _ in run.k]
        run.v = [self.cache.kv.v[0].new_zeros(shape) for _ in run.v]
        n_layer = len(run.k)
        for i, (n, kv) in enumerate(hits):
            if n:  # kv (2L, Hkv, n, hd): layers' keys, then values
                for layer in range(n_layer):
                    run.k[layer][i, :, Lp - n : Lp] = kv[layer]
                    run.v[layer][i, :, Lp - n : Lp] = kv[n_layer + layer]
        run.pos = Lp
        ends = torch.tensor(S, device=self.device) - 1  # each prompt's last token
        if self.runner is not None:  # the fused pass (decode_runner.py), logits of the last tokens only
            last = self.runner.prefill(idx, mask, run, ends)  # (n, V)
        else:
            logits, _ = self.model(idx, attention_mask=mask, cache=run)  # (n, T, V)
            last = logits[torch.arange(len(reqs), device=self.device), ends]
        for i, req in enumerate(reqs):
            cols = slice(Lp - P[i], Lp + S[i])  # the prompt's columns in this pass
            k_rows = [k[i, :, cols] for k in run.k]
            v_rows = [v[i, :, cols] for v in run.v]
            self.cache.write_prompt(req.slot, k_rows, v_rows)
            if self.prefix_cache is not None:
                self.prefix_cache.insert(req.prompt_ids, k_rows, v_rows)
        self.stats["prefills"] += len(reqs)
        self.stats["prefill_passes"] += 1
        self.stats["prefill_tokens"] += sum(S)  # computed; sum(P) came from the prefix cache
        self.stats["prefix_hit_tokens"] += sum(P)
        self.stats["prefill_s"] += time.perf_counter() - t0
        self.sample(reqs, last)

    def prefill_inputs(self, reqs, P, S, Lp, T) -> tuple:
        """(idx (n, T) of the uncached suffixes, left-aligned; mask (n, Lp + T)): the layout above."""
        idx = torch.zeros(len(reqs), T, dtype=torch.long)
        mask = torch.zeros(len(reqs), Lp + T, dtype=torch.bool)
        for i, req in enumerate(reqs):
            idx[i, : S[i]] = torch.tensor(req.prompt_ids[P[i] :])
            mask[i, Lp - P[i] : Lp + S[i]] = True
        return idx.to(self.device), mask.to(self.device)

    def decode(self, reqs):
        """One token for each running request, all in one forward pass over rows [0, B)."""
        B = 1 + max(i for i, r in enumerate(self.slots) if r is not None)
        every = len(reqs) == B  # rows [0, B) all running, in order (the usual case under compact())
        active = slice(0, B) if every else torch.tensor([r.slot for r in reqs], device=self.device)
        idx = self.last[:B, None]  # (B, 1); rows computing padding feed whatever they held last
        if self.runner is not None:
            logits = self.runner.decode(self.cache, idx, active)  # (B, V)
        else:
            logits = self.cache.decode(self.model, idx, active)
        self.stats["decode_steps"] += 1
        self.stats["decode_rows"] += B  # rows computed, padding included
        self.stats["decode_useful"] += len(reqs)  # rows whose token is kept
        self.sample(reqs, logits if every else logits[active])

    def uniforms(self, reqs):
        """One uniform in [0, 1) per request: from its own generator when seeded (the same draws
        however it is batched), else all from torch's global generator in one call."""
        u = torch.rand(len(reqs))
        for i, req in enumerate(reqs):
            if req.generator is not None:
                u[i] = torch.rand((), generator=req.generator)
        return u

    def sample(self, reqs, logits):
        """The next token of every request in `reqs` from its row of logits (n, V), in one vectorized
        call (batch_sampling.py); then each request's own bookkeeping. A row whose logits are not
        finite fails alone; if the batched call itself raises, each row is sampled alone (`alone`),
        so one request's unforeseen setting cannot fail the others."""
        idx = [r.slot for r in reqs]
        n = len(idx)
        # rows [0, n) in order (the usual decode step under compact()): a view of a ready index tensor
        slots = self.slot_ids[:n] if idx == self.slot_list[:n] else torch.tensor(idx, device=self.device)
        u = self.uniforms(reqs) if self.sampler.needs_uniforms(idx) else torch.zeros(n)
        try:
            tokens, bad = self.sampler.sample(slots, logits, u, idx)
        except Exception:
            traceback.print_exc()
            for i, req in enumerate(reqs):
                self.alone(self.sample_one, req, slots[i : i + 1], logits[i : i + 1], u[i : i + 1])
            return
        self.take(reqs, slots, logits, tokens, bad, idx)

    def sample_one(self, req, slot, logits, u):
        tokens, bad = self.sampler.sample(slot, logits, u)
        self.take([req], slot, logits, tokens, bad)

    def take(self, reqs, slots, logits, tokens, bad, idx=None):
        """Record the sampled tokens (n,) (tensors first, for the whole batch), then append each."""
        self.last[slots] = tokens
        self.sampler.record(slots, tokens, idx)
        for i, (req, token, broken) in enumerate(zip(reqs, tokens.tolist(), bad)):
            if broken:  # multinomial would have raised (CPU) or asserted (CUDA): this row alone fails
                print(
                    f"request {req.id}: non-finite logits; its settings or the model are broken",
                    file=sys.stderr,
                )
                self.finish(req, "error")
                continue
            if req.params.logprobs is not None:
                req.logprobs.append(token_logprobs(logits[i], token, req.params.logprobs))
            self.alone(self.append, req, token)

    def alone(self, work, req: Request, *args):
        """work(req, *args), where a failure ends this request alone (finish_reason "error") and the
        others go on: one client's odd settings or a token its tokenizer cannot decode must not fail
        every stream in the batch. A failure of the shared decode pass still fails them all (`loop`)."""
        try:
            work(req, *args)
        except Exception:
            traceback.print_exc()
            if req.finish_reason is None:
                self.finish(req, "error")

    def append(self, req: Request, token: int):
        """Add a generated token: update the text, stream what is final, finish on stop or length."""
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        req.output_ids.append(token)
        p = req.params
        hit_stop_id = token in req.stop_ids and not p.ignore_eos
        if self.decode_text is None:  # ids only (benchmarks, tests): no text to cut or stream
            text, hit_stop_str = "", False
        else:
            text, hit_stop_str = cut_at_stop(
                self.decode_text(req.output_ids[:-1] if hit_stop_id else req.output_ids), p.stop
            )
        req.text = text
        if hit_stop_id or hit_stop_str:
            self.finish(req, "stop")
        elif len(req.output_ids) >= p.max_tokens:
            self.finish(req, "length")
        else:
            self.send(req, len(text) - held_back(text, p.stop))

    def send(self, req: Request, upto: int):
        if upto > req.streamed:
            req.deltas.put(req.text[req.streamed : upto])
            req.streamed = upto

    def finish(self, req: Request, reason: str):
        req.finish_reason = reason
        req.finished_at = time.perf_counter()
        if req.slot is not None:
            self.cache.release(req.slot)
        self.send(req, len(req.text))
        req.deltas.put(None)
        req.done.set()
        self.stats[f"finished_{reason}"] += 1

    # -------- driving it

    def run_until_idle(self):
        """Step until every submitted request has finished (tests, benchmarks, chat.py)."""
        while self.busy():
            self.step()

    def start(self):
        """Run the steps in a background thread (serve.py); it sleeps while there is nothing to do."""
        self.stopping = False
        self.thread = threading.Thread(target=self.loop, name="engine", daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stopping:
            with self.cond:
                while not self.busy() and not self.stopping:
                    self.cond.wait()
            try:
                self.step()
            except Exception:  # a bug: fail what is running, keep the server alive
                traceback.print_exc()
                self.fail_all("error")

    def stop(self):
        """Stop the background thread and end every request still queued or running."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join()
        self.fail_all("cancelled")

    def fail_all(self, reason):
        with self.cond:
            pending = list(self.waiting)
            self.waiting.clear()
        for req in pending + [r for r in self.slots if r is not None]:
            if req.finish_reason is None:
                self.finish(req, reason)
        self.slots = [None] * len(self.slots)
