"""The serving engine against 03's padded GPT.generate on one fixed batch: what do its scheduler and its
decode step each buy?

    from engine_vs_generate import fixed_batch_rows
    rows = fixed_batch_rows(model, cfg)      # one row per batch kind: tok/s of each, their ratio, same tokens

bench_serve.py prints these rows as its first table (`python 07_distill_quant/bench_serve.py`).

A fixed batch of --max-batch requests, all there at once, three kinds: equal answers, greedy; equal
answers sampled at T = 1 (the OpenAI default); answers spread over 4-80 tokens. Three contenders, run
in turn, interleaved (the order rotated every repeat):
- generate: padded generate runs every row until the longest answer ends, through 03's forward;
- engine: the continuous engine with its fused decode step (decode_runner.py);
- engine, 03's forward: the same engine decoding through 03's forward (`decode_runner=False`).
The engine drops a finished row from the step, so with spread answers it computes fewer rows; with
equal answers both run the same forward passes, and the scheduler alone can at best tie (the third
contender shows it): what the engine gains there is its decode step. The table gives the ratio of the
minimum times and the paired per-run ratios' geometric mean with a t interval (issue 29's goal: the
engine >= 1.2x generate).

Interview question it answers:
- Where does a batching engine beat a plain padded generate? (finished rows leave the batch instead of
  computing padding, and new requests join without waiting; with equal answer lengths both run the
  same number of forward passes, so the difference is how cheap the engine makes each one: a decode
  step written for inference, decode_runner.py)
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


def time_engine(model, prompts, lengths, temperature=0.0, decode_runner=True) -> tuple:
    """(seconds, ids of each answer): the continuous engine, every request submitted at once; with
    decode_runner=False it decodes through 03's forward instead of its fused step."""
    engine = Engine(model, None, "continuous", len(prompts), decode_runner=decode_runner)
    params = [SamplingParams(max_tokens=n, temperature=temperature, ignore_eos=True) for n in lengths]
    reqs = [engine.submit(Request(p, sp)) for p, sp in zip(prompts, params)]
    t = time.perf_counter()
    engine.run_until_idle()
    return time.perf_counter() - t, [r.output_ids for r in reqs]


def time_plain_engine(model, prompts, lengths, temperature=0.0) -> tuple:
    return time_engine(model, prompts, lengths, temperature, decode_runner=False)


CONTENDERS = {"generate": time_generate, "engine": time_engine, "engine, 03's forward": time_plain_engine}


def fixed_batch_rows(model, c) -> list:
    """The contenders on each fixed batch: interleaved c.fixed_repeats times (the order rotated every
    time); the ratio of the min times, and the paired ratios' geometric mean with a t interval (each
    pair ran back to back, so it cancels most of the machine's load of the moment)."""
    rows, names = [], list(CONTENDERS)
    for name, (prompts, lengths, temperature) in fixed_batches(c, model.cfg.vocab_size).items():
        times, ids = {side: [] for side in names}, {}
        for rep in range(c.fixed_repeats):
            for side in names[rep % 3 :] + names[: rep % 3]:
                seconds, ids[side] = CONTENDERS[side](model, prompts, lengths, temperature)
                times[side].append(seconds)
        tokens = sum(lengths)
        gen, eng, plain = (min(times[side]) for side in names)
        logs = [math.log(g / e) for g, e in zip(times["generate"], times["engine"])]
        lo, hi = t_interval(logs)
        same = ids["engine"] == ids["generate"] == ids["engine, 03's forward"]
        rows.append(
            {
                "batch": name,
                "requests": len(prompts),
                "answer tokens": f"{min(lengths)}-{max(lengths)}",
                "generate tok/s": f"{tokens / gen:.0f}",
                "engine tok/s": f"{tokens / eng:.0f}",
                "engine, 03's forward tok/s": f"{tokens / plain:.0f}",
                "engine / generate": f"{gen / eng:.2f}x",
                "paired [95% interval]": f"{math.exp(sum(logs) / len(logs)):.2f}x "
                f"[{math.exp(lo):.2f}, {math.exp(hi):.2f}]",
                # sampled: each side draws its own random numbers, so only greedy ids can be compared
                "same tokens": "n/a (sampled)" if temperature else ("yes" if same else "NO"),
                "ratio": gen / eng,
                "paired": math.exp(sum(logs) / len(logs)),
                "paired_interval": [math.exp(lo), math.exp(hi)],
                "runs": len(logs),
            }
        )
        print(
            f"fixed batch, {name}: engine {gen / eng:.2f}x padded generate "
            f"(with 03's forward {gen / plain:.2f}x)",
            flush=True,
        )
    return rows


FIXED_COLUMNS = (
    "batch",
    "requests",
    "answer tokens",
    "generate tok/s",
    "engine tok/s",
    "engine, 03's forward tok/s",
    "engine / generate",
    "paired [95% interval]",
    "same tokens",
)
