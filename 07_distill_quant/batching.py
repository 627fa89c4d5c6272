"""Serving many requests with one model: one at a time, static batches, continuous batching.

    from batching import Engine, Request, SamplingParams
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

The KV cache, and why 03's model needs no change. 03's GPT.forward already decodes a batch of
left-padded rows that all write their next token into one shared column (`KVCache.pos`), with a
mask saying which columns hold each row's tokens, and positions counted from that mask. `SlotCache`
keeps exactly that layout: one cache row per slot, one shared write column. A new request's prompt
is prefilled alone, as GPT.generate would, and its keys/values are copied into its row so that it
ends at the shared column: right-aligned, where left padding would have put it; the columns before
it are masked out. The price of a shared column: (1) rows attend over masked "dead" columns (what
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
1M-parameter model, a few MB: the waste is not worth a custom kernel.

Interview questions it answers:
- Why is decode memory-bound and prefill compute-bound? (FLOPs per byte of weights read: ~1 per
  sequence in decode, ~T in prefill; the GPU needs ~300)
- What does continuous batching change over static batching? (the batch is re-formed at every
  decode step: finished rows leave, waiting requests join, no padding to the longest member)
- What does paged attention buy? (KV memory in blocks through a block table: no reservation for
  max_tokens, no fragmentation, shared prefixes; more sequences fit, so larger batches)
- Throughput or latency? (a bigger batch raises tokens/s, but each step is slower, so every
  request's tokens come a little later; servers cap the batch to bound the latency)
- How do you stream text when a token can end in half a UTF-8 character, or in the first half of a
  stop string? (hold back a trailing U+FFFD and the longest tail that begins a stop string:
  `held_back`; never send text you might have to take back)
- What happens when a client disconnects? (`Request.cancel`; the engine frees its slot at the next
  step, so a dead client stops costing compute)
"""

import collections
import itertools
import math
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.cli import UserError
from common.devices import decoding_threads
from decoding import KVCache, apply_repetition_penalty, check_sampling_args, sample_next  # 03_model

POLICIES = ("sequential", "static", "continuous")


@dataclass
class SamplingParams:
    """One request's settings (OpenAI's names where OpenAI has them)."""

    max_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0  # 1 = off
    stop: tuple = ()  # stop strings: the text ends before the first one found
    seed: int | None = None  # a generator of its own: the same draws however it is batched
    ignore_eos: bool = False  # run to max_tokens whatever is generated (benchmarks)
    presence_penalty: float = 0.0  # OpenAI's: minus this from every token generated at least once
    frequency_penalty: float = 0.0  # OpenAI's: minus this times how often the token was generated
    logit_bias: dict | None = None  # {token id: added to its logit}, -100 bans, +100 forces
    logprobs: int | None = None  # record each token's log-probability and this many alternatives


# Settings whose float32 arithmetic breaks the sampler are mapped to their limit before sampling:
# logits / 1e-300 overflow to inf (and inf - inf = NaN in softmax), and top_p = 1e-300 is 0 in float32,
# which drops every token. T -> 0 is greedy and p -> 0 keeps the most likely token alone, so the limits
# are exact. A repetition penalty far from 1 has no such limit: Engine.submit refuses it.
MIN_TEMPERATURE = 1e-4  # below: greedy
MIN_TOP_P = 1e-6  # below: the most likely token alone
PENALTY_RANGE = (1e-2, 1e2)  # repetition_penalty outside it multiplies logits toward 0 or inf


class Request:
    """One generation: prompt ids and settings in; ids, text and timings out, streamed as produced.

    `deltas` receives each piece of text as soon as it is final, then None; `done` is set at the end.
    Times are time.perf_counter() seconds; `arrival` defaults to the moment of submit."""

    _ids = itertools.count()

    def __init__(self, prompt_ids, params: SamplingParams | None = None, stop_ids=(), arrival=None):
        self.id = next(Request._ids)
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.params = params or SamplingParams()
        self.stop_ids = set(stop_ids)  # token ids that end the answer (03's stop_tokens)
        self.output_ids = []  # generated ids; a final stop id is kept, as in GPT.generate
        self.text = ""  # the answer: stop id and stop string cut off
        self.streamed = 0  # characters of `text` already put on `deltas`
        self.finish_reason = None  # "stop" | "length" | "cancelled" | "error"
        self.deltas = queue.Queue()
        self.done = threading.Event()
        self.cancelled = False
        self.slot = None  # its row in the KV cache while it runs
        self.logprobs = []  # with params.logprobs: (log p of each token, [(alternative id, log p), ...])
        self.generator = None if self.params.seed is None else torch.Generator().manual_seed(self.params.seed)
        self.arrival, self.first_token_at, self.finished_at = arrival, None, None

    def cancel(self):
        """Ask the engine to drop this request (its client went away); its slot is freed at the next step."""
        self.cancelled = True

    def stream(self):
        """The text pieces, blocking until each is produced."""
        while (piece := self.deltas.get()) is not None:
            yield piece


class QueueFull(Exception):
    """The waiting queue holds max_waiting requests already (serve.py answers 503 + Retry-After)."""


# ----------------------------------------------------------------------------- streaming text


def cut_at_stop(text: str, stops) -> tuple:
    """(text before the earliest stop string, whether one was found)."""
    # >>> exercise: the text before the earliest occurrence of any stop string, and whether one occurred
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)
    # <<< exercise


def held_back(text: str, stops) -> int:
    """How many trailing characters must not be sent yet: U+FFFD at the end (a token ended inside a
    UTF-8 character; the next token completes it) and the longest tail that is the start of a stop
    string (the next token may complete the stop, and then that tail is not part of the answer)."""
    # >>> exercise: trailing U+FFFDs vs the longest tail that is a proper prefix of a stop string: the larger
    n = len(text) - len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    return n
    # <<< exercise


# ----------------------------------------------------------------------------- sampling, one request at a time


def apply_presence_frequency(logits, output_ids, presence, frequency):
    """OpenAI's penalties on the tokens generated so far: logit[j] -= frequency·count[j] +
    presence·[count[j] > 0]. logits (1, V). Unlike CTRL's repetition penalty they subtract (so they
    treat positive and negative logits alike) and count only the answer, not the prompt."""
    counts = torch.bincount(torch.tensor(output_ids, device=logits.device), minlength=logits.shape[-1])
    counts = counts[: logits.shape[-1]].to(logits.dtype)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def token_logprobs(logits, token, k) -> tuple:
    """(log p of `token`, [(id, log p) of the k likeliest tokens]) under the model's own distribution
    log_softmax(logits) (before temperature, penalties and filters: what the model believes)."""
    logp = logits.float().log_softmax(dim=-1)
    top = logp.topk(min(k, logp.shape[-1])) if k else None
    return float(logp[token]), [] if top is None else list(zip(top.indices.tolist(), top.values.tolist()))


def sample_token(req: Request, logits) -> int:
    """03's sampler on one row (logits (V,)) with this request's own settings and generator: the
    penalties and logit bias first (out of place: the model's row stays as it was), then
    temperature, top-k and top-p at their float32-safe limits."""
    p = req.params
    logits = logits[None].float()  # (1, V)
    if p.repetition_penalty != 1.0:
        seen = torch.tensor([req.prompt_ids + req.output_ids], device=logits.device)
        logits = apply_repetition_penalty(logits, seen, p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and req.output_ids:
        logits = apply_presence_frequency(logits, req.output_ids, p.presence_penalty, p.frequency_penalty)
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), device=logits.device)
        bias = torch.tensor([list(p.logit_bias.values())], device=logits.device)  # (1, k)
        logits = logits.index_add(1, ids, bias)
    if not torch.isfinite(logits).all():  # multinomial would raise (CPU) or assert (CUDA)
        raise ValueError(f"request {req.id}: non-finite logits; its settings or the model are broken")
    gen = req.generator
    if gen is not None and gen.device != logits.device:
        gen = req.generator = torch.Generator(device=logits.device).manual_seed(p.seed)
    temperature = 0.0 if p.temperature < MIN_TEMPERATURE else p.temperature
    top_p = None if p.top_p is None else max(p.top_p, MIN_TOP_P)
    return int(sample_next(logits, temperature, p.top_k, top_p, gen)[0])


# ----------------------------------------------------------------------------- the KV cache


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

    def write_prompt(self, slot, prompt_kv: KVCache):
        """Copy a prefilled prompt's keys/values (1, Hkv, n, hd) into the columns claimed for it."""
        n = prompt_kv.pos
        for layer, (k, v) in enumerate(zip(prompt_kv.k, prompt_kv.v)):
            self.kv.k[layer][slot, :, self.pos - n : self.pos] = k[0, :, :n]
            self.kv.v[layer][slot, :, self.pos - n : self.pos] = v[0, :, :n]

    def release(self, slot):
        self.mask[slot] = False
        self.start[slot] = None

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


# ----------------------------------------------------------------------------- the engine


class Engine:
    """A scheduler over one model, one SlotCache and one waiting queue.

    Each `step()`: `schedule()` says which requests prefill now and which decode; then each new prompt
    is prefilled (it gets its first token), and one decode step gives every running request its next
    token. Thread-safe where it must be: `submit` and `Request.cancel` may be called from any thread
    while one thread (yours, or `start()`'s) runs the steps."""

    def __init__(self, model, tokenizer=None, policy="continuous", max_batch=8, max_waiting=256):
        if policy not in POLICIES:
            raise UserError(f"policy {policy!r} unknown; use one of {', '.join(POLICIES)}")
        if max_batch < 1 or max_waiting < 0:
            raise UserError(f"max_batch={max_batch} must be >= 1 and max_waiting={max_waiting} >= 0")
        self.model = model.eval()
        self.decode_text = tokenizer.decode if tokenizer is not None else (lambda ids: "")
        self.policy = policy
        self.slots = [None] * (1 if policy == "sequential" else max_batch)  # the Request in each row
        self.cache = SlotCache(model, len(self.slots))
        self.waiting = collections.deque()
        self.max_waiting = max_waiting
        self.cond = threading.Condition()  # guards `waiting`; wakes the background thread
        self.device = next(model.parameters()).device
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

    # -------- one step

    def step(self) -> bool:
        """Run one scheduling step; False when there was nothing to do."""
        prefill, decode = self.schedule()
        with decoding_threads():  # a handful of rows per step: one thread (common/devices.py says why)
            for req in prefill:
                self.alone(self.prefill, req)
            decode = [r for r in decode if r.finish_reason is None]  # a prefill may have finished one
            if decode:
                self.decode(decode)
        return bool(prefill or decode)

    @torch.no_grad()
    def prefill(self, req: Request):
        """The prompt alone through the model (exactly GPT.generate's first step), its keys/values
        into the request's cache row, and its first token from the last position's logits."""
        prompt_kv = KVCache(len(self.cache.kv.k), len(req.prompt_ids))
        idx = torch.tensor([req.prompt_ids], dtype=torch.long, device=self.device)
        logits, _ = self.model(idx, cache=prompt_kv)  # (1, n, V)
        self.cache.write_prompt(req.slot, prompt_kv)
        self.stats["prefills"] += 1
        self.next_token(req, logits[0, -1])

    @torch.no_grad()
    def decode(self, reqs):
        """One token for each running request, all in one forward pass over rows [0, B)."""
        B = 1 + max(i for i, r in enumerate(self.slots) if r is not None)
        idx = torch.zeros(B, 1, dtype=torch.long, device=self.device)  # padding rows feed token 0
        for r in reqs:
            idx[r.slot, 0] = r.output_ids[-1]
        logits = self.cache.decode(self.model, idx, [r.slot for r in reqs])  # (B, V)
        self.stats["decode_steps"] += 1
        self.stats["decode_rows"] += B  # rows computed, padding included
        self.stats["decode_useful"] += len(reqs)  # rows whose token is kept
        for r in reqs:
            self.alone(self.next_token, r, logits[r.slot])

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

    def next_token(self, req: Request, logits):
        """Sample this request's next token from its row of logits (V,) and append it."""
        token = sample_token(req, logits)
        if req.params.logprobs is not None:
            req.logprobs.append(token_logprobs(logits, token, req.params.logprobs))
        self.append(req, token)

    def append(self, req: Request, token: int):
        """Add a generated token: update the text, stream what is final, finish on stop or length."""
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        req.output_ids.append(token)
        p = req.params
        hit_stop_id = token in req.stop_ids and not p.ignore_eos
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
