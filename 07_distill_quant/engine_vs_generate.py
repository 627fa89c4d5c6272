"""The serving engine against 03's padded GPT.generate on one fixed batch: is the engine's bookkeeping free?

    from engine_vs_generate import fixed_batch_rows
    rows = fixed_batch_rows(model, cfg)      # one row per batch kind: tok/s of each, their ratio, same tokens

bench_serve.py prints these rows as its first table (`python 07_distill_quant/bench_serve.py`).

A fixed batch of --max-batch requests, all there at once, three kinds: equal answers, greedy; equal
answers sampled at T = 1 (the OpenAI default); answers spread over 4-80 tokens. Padded generate runs
every row until the longest answer ends; the engine drops a finished row from the step. With equal
answers both run the same forward passes, so the engine can at best tie, plus what its inference mode
and vectorized sampler save; with spread answers it computes fewer rows. Each contender runs in turn,
interleaved, and the table gives the ratio of their minimum times and the paired per-run ratios'
geometric mean with a t interval (issue 29's goal: the engine >= 1.2x generate).

Interview question it answers:
- Where does a batching engine beat a plain padded generate? (finished rows leave the batch instead of
  computing padding, and new requests join without waiting; with equal answer lengths both run the
  same forward passes, so the engine can at best tie)
"""

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model")]
from common.stats import t_interval
from decoding import generate, left_pad  # 03_model

from batching import Engine  # this stage
from serve_request import Request, SamplingParams  # this stage
from serve_workload import workload  # this stage


def fixed_batches(c, vocab) -> dict:
    """{name: (prompts, answer lengths, temperature)}: max_batch prompts of the workload's lengths,
    answered with `fixed_tokens` tokens each ("equal": the batch generate was made for), greedy and
    sampled at temperature 1 (the OpenAI default: no top-k, no top-p), or with lengths spread evenly
    from the shortest short answer to the longest long one ("spread": what a batch of requests asks)."""
    items = workload(dataclasses.replace(c, requests=c.max_batch, rate=1.0), vocab)  # arrivals unused
    prompts = [prompt for _, prompt, _ in items]
    spread = np.linspace(c.short_min, c.long_max, len(prompts)).round().astype(int).tolist()
    return {
        "equal answers": (prompts, [c.fixed_tokens] * len(prompts), 0.0),
        "equal answers, sampled (T=1)": (prompts, [c.fixed_tokens] * len(prompts), 1.0),
        "spread answers": (prompts, spread, 0.0),
    }


def time_generate(model, prompts, lengths, temperature=0.0) -> tuple:
    """(seconds, ids of each answer): 03's padded GPT generate, every row to the longest answer (it
    has one max_new_tokens); each row's answer is cut to its own length."""
    idx, mask = left_pad(prompts, device=next(model.parameters()).device)
    t = time.perf_counter()
    out = generate(model, idx, max(lengths), temperature=temperature, attention_mask=mask)
    seconds = time.perf_counter() - t
    return seconds, [row[idx.shape[1] : idx.shape[1] + n] for row, n in zip(out.tolist(), lengths)]


def time_engine(model, prompts, lengths, temperature=0.0) -> tuple:
    """(seconds, ids of each answer): the continuous engine, every request submitted at once."""
    engine = Engine(model, None, "continuous", len(prompts))
    params = [SamplingParams(max_tokens=n, temperature=temperature, ignore_eos=True) for n in lengths]
    reqs = [engine.submit(Request(p, sp)) for p, sp in zip(prompts, params)]
    t = time.perf_counter()
    engine.run_until_idle()
    return time.perf_counter() - t, [r.output_ids for r in reqs]


def fixed_batch_rows(model, c) -> list:
    """Engine vs padded generate on each fixed batch: interleaved max(repeats, 3) times (the order
    swapped every time); the ratio of the min times, and the paired ratios' geometric mean with a
    t interval (each pair ran back to back, so it cancels most of the machine's load of the moment)."""
    rows = []
    for name, (prompts, lengths, temperature) in fixed_batches(c, model.cfg.vocab_size).items():
        times = {"generate": [], "engine": []}
        for rep in range(max(c.repeats, 3)):
            for side in ("generate", "engine") if rep % 2 == 0 else ("engine", "generate"):
                timer = time_generate if side == "generate" else time_engine
                seconds, ids = timer(model, prompts, lengths, temperature)
                times[side].append(seconds)
                if side == "generate":
                    want = ids
                else:
                    got = ids
        tokens = sum(lengths)
        gen, eng = min(times["generate"]), min(times["engine"])
        logs = [math.log(g / e) for g, e in zip(times["generate"], times["engine"])]
        lo, hi = t_interval(logs)
        rows.append(
            {
                "batch": name,
                "requests": len(prompts),
                "answer tokens": f"{min(lengths)}-{max(lengths)}",
                "generate tok/s": f"{tokens / gen:.0f}",
                "engine tok/s": f"{tokens / eng:.0f}",
                "engine / generate": f"{gen / eng:.2f}x",
                "paired [95% interval]": f"{math.exp(sum(logs) / len(logs)):.2f}x "
                f"[{math.exp(lo):.2f}, {math.exp(hi):.2f}]",
                # sampled: each side draws its own random numbers, so only greedy ids can be compared
                "same tokens": "n/a (sampled)" if temperature else ("yes" if got == want else "NO"),
                "ratio": gen / eng,
            }
        )
        print(f"fixed batch, {name}: engine {gen / eng:.2f}x padded generate", flush=True)
    return rows


FIXED_COLUMNS = (
    "batch",
    "requests",
    "answer tokens",
    "generate tok/s",
    "engine tok/s",
    "engine / generate",
    "paired [95% interval]",
    "same tokens",
)
