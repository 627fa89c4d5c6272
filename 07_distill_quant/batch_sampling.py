"""Sampling every row of a serving batch in one vectorized call, each row with its own settings.

    sampler = BatchSampler(n_slots, vocab_size, device)
    sampler.place(slot, req)                       # when a request takes a KV-cache row
    tokens, bad = sampler.sample(slots, logits, uniforms)   # (n,) ids; bad: rows with non-finite logits
    sampler.record(slots, tokens)                  # the counts the penalties read

Why: the engine used to call 03's sampler once per request per token, a Python loop of ~10 tensor
calls per row; at batch 8 that loop cost more than the model's forward pass. Here every setting is
a tensor with one entry per KV-cache row (slot), written once when a request takes its slot, and
one step of the whole batch is ~15 tensor calls whatever its size. Per row, the arithmetic is
exactly the per-request reference's (`reference_probs`, tested equal):

    x = logits                                         (the model's row, float32)
    x = x / r  if x > 0 else x * r    for tokens in prompt + answer     (CTRL repetition penalty r)
    x = x - frequency·count - presence·[count > 0]    counts of the answer only (OpenAI's penalties)
    x = x + logit_bias                                 (dense: 0 where the request gave none)
    greedy (T < MIN_TEMPERATURE): argmax x
    else:  z = x / T;  keep the k largest (top-k);  keep the smallest most likely set of mass >= p
           (top-p, computed after top-k, as 03's sample_next);  token ~ softmax(z)

A setting that is off leaves the row bit-for-bit unchanged (r = 1 divides by 1, a zero penalty or bias
subtracts 0), so rows without it need no branch. The draw is by inverse CDF: one uniform u per row,
token = the first token whose cumulative probability exceeds u. Each seeded request draws its u
from its own generator, so its tokens are the same whoever shares its batch (the order of the other
rows changes nothing: every operation above is along the row).

Only top-k and top-p need the tokens in order of probability, and a sort of a (8, 2048) batch costs
~0.8 ms on one CPU thread, more than the rest of the sampler and a third of the tiny model's whole
decode step. So a row that samples without them (the OpenAI default: temperature 1, top_p 1) takes
its cumulative probabilities in vocabulary order (`plain_probs`), and only rows with a filter are
sorted (`sorted_probs`). Either way the distribution is softmax(z) over the kept tokens; which path a
row takes depends on its own settings only, so a seeded row still draws the same token in any batch.

Interview questions it answers:
- How do you sample a batch whose rows have different temperature, top-k and top-p? (sort each row
  once; top-k is a threshold at the k-th sorted value, top-p a threshold on the running mass, both
  per-row tensors; then one inverse-CDF draw per row)
- How can a seeded request give the same tokens in any batch? (its own random stream: one uniform per
  token from its generator, and only row-wise operations between logits and token)
"""

import math
import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from decoding import apply_repetition_penalty, top_k_filter, top_p_filter  # 03_model

# Settings whose float32 arithmetic breaks the sampler are mapped to their limit before sampling:
# logits / 1e-300 overflow to inf (and inf - inf = NaN in softmax), and top_p = 1e-300 is 0 in float32,
# which drops every token. T -> 0 is greedy and p -> 0 keeps the most likely token alone, so the limits
# are exact. A repetition penalty far from 1 has no such limit: Engine.submit refuses it.
MIN_TEMPERATURE = 1e-4  # below: greedy
MIN_TOP_P = 1e-6  # below: the most likely token alone


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


def reference_probs(params, prompt_ids, output_ids, logits):
    """The readable per-request version: one row (V,) -> its sampling distribution (V,) with 03's
    filters, one setting at a time. The batched sampler must give the same (tests)."""
    x = logits[None].float()
    if params.repetition_penalty != 1.0:
        seen = torch.tensor([prompt_ids + output_ids])
        x = apply_repetition_penalty(x, seen, params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and output_ids:
        x = apply_presence_frequency(x, output_ids, params.presence_penalty, params.frequency_penalty)
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias))
        x = x.index_add(1, ids, torch.tensor([list(params.logit_bias.values())], dtype=x.dtype))
    if params.temperature < MIN_TEMPERATURE:
        return torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1])[0].float()
    x = x / params.temperature
    if params.top_k:
        x = top_k_filter(x, params.top_k)
    top_p = max(params.top_p, MIN_TOP_P) if params.top_p is not None else 1.0
    if top_p < 1.0:
        x = top_p_filter(x, top_p)
    return x.softmax(-1)[0]


class BatchSampler:
    """Per-slot sampling settings and answer counts as tensors; `sample` draws a token for many rows.

    temperature, top_p, repetition (n_slots,) float; top_k (n_slots,) long (V = off);
    presence, frequency (n_slots,); bias (n_slots, V); seen (n_slots, V) bool: tokens of prompt and
    answer (the repetition penalty's set); counts (n_slots, V): tokens of the answer only."""

    def __init__(self, n_slots, vocab_size, device):
        self.V = vocab_size
        f = dict(device=device)
        self.temperature = torch.ones(n_slots, **f)
        self.greedy = torch.ones(n_slots, dtype=torch.bool, **f)
        self.top_k = torch.full((n_slots,), vocab_size, dtype=torch.long, **f)
        self.top_p = torch.full((n_slots,), 2.0, **f)  # >= 1: off (2, not 1: a running mass can round to 1)
        self.repetition = torch.ones(n_slots, **f)
        self.presence = torch.zeros(n_slots, **f)
        self.frequency = torch.zeros(n_slots, **f)
        self.bias = torch.zeros(n_slots, vocab_size, **f)
        self.seen = torch.zeros(n_slots, vocab_size, dtype=torch.bool, **f)
        self.counts = torch.zeros(n_slots, vocab_size, **f)
        # Which optional steps any slot needs: the rest are skipped for the whole batch.
        self.uses = {
            "repetition": [False] * n_slots,
            "penalties": [False] * n_slots,
            "bias": [False] * n_slots,
        }
        self.samples = [False] * n_slots  # the slot's request samples (not greedy)
        self.filters = [False] * n_slots  # ... with top-k or top-p: its draw needs a sort

    def place(self, slot, req):
        """Write a request's settings into its slot's row (once per request, not per token)."""
        p = req.params
        greedy = p.temperature < MIN_TEMPERATURE
        self.greedy[slot] = greedy
        self.temperature[slot] = 1.0 if greedy else p.temperature
        self.top_k[slot] = min(p.top_k, self.V) if p.top_k else self.V
        self.top_p[slot] = 2.0 if p.top_p is None or p.top_p >= 1.0 else max(p.top_p, MIN_TOP_P)
        self.repetition[slot] = p.repetition_penalty
        self.presence[slot], self.frequency[slot] = p.presence_penalty, p.frequency_penalty
        self.bias[slot] = 0.0
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), device=self.bias.device)
            self.bias[slot].index_add_(
                0, ids, torch.tensor(list(p.logit_bias.values()), device=self.bias.device)
            )
        self.seen[slot] = False
        self.seen[slot, torch.tensor(req.prompt_ids, device=self.seen.device)] = True
        self.counts[slot] = 0.0
        self.uses["repetition"][slot] = p.repetition_penalty != 1.0
        self.uses["penalties"][slot] = bool(p.presence_penalty or p.frequency_penalty)
        self.uses["bias"][slot] = bool(p.logit_bias)
        self.samples[slot] = not greedy
        top_k_on = bool(p.top_k) and p.top_k < self.V
        self.filters[slot] = not greedy and (top_k_on or (p.top_p is not None and p.top_p < 1.0))

    def move_row(self, src, dst):
        """Slot src's settings and counts now belong to slot dst (the engine moved its request)."""
        for t in (
            self.temperature,
            self.greedy,
            self.top_k,
            self.top_p,
            self.repetition,
            self.presence,
            self.frequency,
            self.bias,
            self.seen,
            self.counts,
        ):
            t[dst] = t[src]
        for flags in (*self.uses.values(), self.samples, self.filters):
            flags[dst] = flags[src]

    def record(self, slots, tokens, idx=None):
        """The tokens (n,) just generated in `slots` (n,) count toward the penalties from now on.
        idx: slots as a list, when the caller has it (spares a device sync)."""
        idx = slots.tolist() if idx is None else idx
        if any(self.uses["repetition"][i] or self.uses["penalties"][i] for i in idx):
            self.counts[slots, tokens] += 1.0
            self.seen[slots, tokens] = True

    def needs_uniforms(self, idx) -> bool:
        """Whether any of these slots (a list) samples (a greedy batch draws no random numbers)."""
        return any(self.samples[i] for i in idx)

    def adjusted_logits(self, slots, logits, used):
        """The penalties and logit bias of each row, as tensors (module docstring)."""
        x = logits.float()
        if any(used["repetition"]):
            r = self.repetition[slots, None]
            x = torch.where(self.seen[slots], torch.where(x > 0, x / r, x * r), x)
        if any(used["penalties"]):
            c = self.counts[slots]
            x = x - self.frequency[slots, None] * c - self.presence[slots, None] * (c > 0).to(x.dtype)
        if any(used["bias"]):
            x = x + self.bias[slots]
        return x

    def plain_probs(self, slots, x):
        """(probabilities of z = x / T, None: vocabulary order) (n, V): rows without top-k or top-p."""
        return (x / self.temperature[slots, None]).softmax(dim=-1), None

    def sorted_probs(self, slots, x):
        """(probabilities in descending order of z = x / T after top-k and top-p, that order) (n, V)."""
        z, order = (x / self.temperature[slots, None]).sort(dim=-1, descending=True)
        kth = z.gather(1, self.top_k[slots, None] - 1)  # (n, 1): the k-th largest
        z = z.masked_fill(z < kth, float("-inf"))  # ties with the k-th stay, as in top_k_filter
        probs = z.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # drop a token once those before it reach p
        z = z.masked_fill(mass_before >= self.top_p[slots, None], float("-inf"))
        return z.softmax(dim=-1), order

    def draw(self, probs, order, uniforms):
        """Inverse CDF: per row the first token (in `order`, None = vocabulary order) whose cumulative
        probability exceeds u·total (the total is 1 up to rounding). probs (n, V), uniforms (n,)."""
        cdf = probs.cumsum(dim=-1)  # (n, V)
        u = uniforms.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
        j = torch.searchsorted(cdf, u, right=True).clamp(max=self.V - 1)  # first cdf > u
        return j[:, 0] if order is None else order.gather(1, j)[:, 0]

    def sample(self, slots, logits, uniforms, idx=None):
        """(tokens (n,), [whether each row's logits were not finite]) for logits (n, V) of `slots` (n,);
        uniforms (n,) in [0, 1): each row's draw; idx: slots as a list when the caller has it.
        Non-finite rows get token 0 and must be failed."""
        idx = slots.tolist() if idx is None else idx
        used = {k: [v[i] for i in idx] for k, v in self.uses.items()}
        x = self.adjusted_logits(slots, logits, used)
        # a row is finite when its largest and smallest entries are (amax and amin propagate NaN):
        # the same test as isfinite(x).all(-1), at a tenth of its cost on a CPU
        extremes = zip(x.amax(dim=-1).tolist(), x.amin(dim=-1).tolist())
        bad = [not (math.isfinite(hi) and math.isfinite(lo)) for hi, lo in extremes]
        if any(bad):
            finite = torch.tensor([not b for b in bad], device=x.device)
            x = torch.where(finite[:, None], x, torch.zeros_like(x))  # keep the other rows' arithmetic finite
        tokens = x.argmax(dim=-1)
        if any(self.samples[i] for i in idx):
            filtered = [self.filters[i] for i in idx]
            if all(filtered):
                drawn = self.draw(*self.sorted_probs(slots, x), uniforms)
            else:
                drawn = self.draw(*self.plain_probs(slots, x), uniforms)
                if any(filtered):  # those rows again, sorted: each row's path depends on its settings only
                    keep = [j for j, f in enumerate(filtered) if f]
                    rows = torch.tensor(keep, device=x.device)
                    drawn[rows] = self.draw(*self.sorted_probs(slots[rows], x[rows]), uniforms[keep])
            tokens = torch.where(self.greedy[slots], tokens, drawn)
        return tokens, bad
