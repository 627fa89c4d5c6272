"""A stream of requests for a serving benchmark, replayed in real time, and the rule for its arrival rate.

    from serve_workload import at_rate, judged_rate, serve
    items = at_rate(cfg, vocab, rate=30.0)        # [(arrival s, prompt ids, answer length)], seeded
    reqs = serve(engine, items)                   # submitted at their arrival times; the engine steps meanwhile

bench_serve.py measures the engine's policies on it (`python 07_distill_quant/bench_serve.py`).

The workload is fixed by --seed: request i arrives at the i-th event of a Poisson process of --rate
requests per second (exponential gaps between arrivals), with a prompt of random tokens, its length
uniform in [--prompt-min, --prompt-max], and an answer of exactly n tokens (ignore_eos), n uniform in
[--short-min, --short-max] or, for a --long-frac share of requests, in [--long-min, --long-max]. That
mix of answer lengths is what static batching pays for: each batch runs as long as its longest member.
At any rate the prompts and answer lengths are the same; only the arrival times scale (1 / rate).

Why the judged rate follows a rule (judged_rate): tokens/s over the span measures a policy's capacity
only when requests wait for it. Below its capacity mu a policy serves requests as they come, and its
tokens/s is the offered load, whatever it could do. With arrivals at lambda > mu, the i-th request
starts after about i / mu and arrived at i / lambda, so it waits i (1/mu - 1/lambda): time to first
token is a queueing number that grows with the queue. At lambda = 2 mu_c (twice the continuous
engine's capacity) both policies queue, and the static / continuous TTFT ratio is
(1/mu_s - 1/(2 mu_c)) / (1/(2 mu_c)) = 2 mu_c / mu_s - 1: 2x the capacity is 3x the time to first token.

Interview questions it answers:
- Why Poisson arrivals? (independent users: exponential gaps, bursts included; a fixed gap would hide
  the queueing that bursts cause)
- At which arrival rate do you compare serving policies? (above the capacity of every policy
  compared: below it tokens/s is just the offered load)
- Why is time to first token under overload a queueing number? (the i-th request waits about
  i (1/mu - 1/lambda): compare policies on the same stream, never one TTFT against another run's)
"""

import dataclasses
import math
import random
import time

from serve_request import Request, SamplingParams  # this stage


def workload(c, vocab) -> list:
    """[(arrival second, prompt ids, answer length)] in arrival order; the same for every policy."""
    # >>> exercise: seeded Poisson arrivals (exponential gaps of mean 1/rate), uniform lengths, long_frac long
    rng = random.Random(c.seed)
    t, items = 0.0, []
    for _ in range(c.requests):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(c.prompt_min, c.prompt_max))]
        n_out = (
            rng.randint(c.long_min, c.long_max)
            if rng.random() < c.long_frac
            else rng.randint(c.short_min, c.short_max)
        )
        items.append((t, prompt, n_out))
        t += rng.expovariate(c.rate)
    return items
    # <<< exercise


def serve(engine, items) -> list:
    """Replay the workload in real time: submit each request at its arrival, step the engine meanwhile."""
    reqs = [
        Request(prompt, SamplingParams(max_tokens=n_out, temperature=0, ignore_eos=True))
        for _, prompt, n_out in items
    ]
    start, nxt = time.perf_counter(), 0
    while nxt < len(reqs) or engine.busy():
        now = time.perf_counter() - start
        while nxt < len(reqs) and items[nxt][0] <= now:
            reqs[nxt].arrival = start + items[nxt][0]
            engine.submit(reqs[nxt])
            nxt += 1
        if not engine.step() and nxt < len(reqs):  # idle until the next arrival
            time.sleep(max(0.0, items[nxt][0] - (time.perf_counter() - start)))
    return reqs


def at_rate(c, vocab, rate) -> list:
    """The workload with Poisson arrivals at `rate` per second; rate inf: every request at 0.
    The prompts and answer lengths are the same at every rate (workload draws them in the same order)."""
    if math.isinf(rate):
        return [(0.0, prompt, n) for _, prompt, n in workload(dataclasses.replace(c, rate=1.0), vocab)]
    return workload(dataclasses.replace(c, rate=rate), vocab)


def prefix_workload(c, vocab, rate) -> list:
    """The Poisson stream of `workload` at `rate`, every prompt starting with one shared system prompt
    of `shared_prefix` tokens, then 4-16 tokens of its own; short answers only."""
    rng = random.Random(c.seed + 1)
    system = [rng.randrange(vocab) for _ in range(c.shared_prefix)]
    items = workload(dataclasses.replace(c, long_frac=0.0, rate=rate), vocab)
    return [(t, system + [rng.randrange(vocab) for _ in range(rng.randint(4, 16))], n) for t, _, n in items]


def judged_rate(c, capacity: dict) -> float:
    """--rate, or (0) twice the continuous policy's requests/s with every request there at once."""
    return c.rate or 2.0 * capacity["continuous"][0]["requests_per_s"]
