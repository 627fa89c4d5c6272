"""One request to the serving engine: its sampling settings, its state, and its text as it streams.

    from serve_request import Request, SamplingParams
    req = engine.submit(Request(prompt_ids, SamplingParams(max_tokens=32, temperature=0.7, stop=("\n",))))
    for piece in req.stream():                # text as soon as it is final, then the end
        print(piece, end="")
    req.finish_reason, req.output_ids, req.first_token_at - req.arrival

batching.Engine runs requests (`python 07_distill_quant/bench_serve.py`); serve.py turns each HTTP
call into one (openai_api.py maps OpenAI's fields onto SamplingParams).

Streaming text is the subtle part. A token can end inside a UTF-8 character (a Chinese character is
3 bytes, and a byte-level BPE token may hold only some of them: the decoded tail is U+FFFD until the
next token completes it), or inside a stop string (the answer must end *before* "\nUser:", but the
first tokens of it look like ordinary text). So the engine never sends text it might take back:
`held_back` says how many trailing characters to keep until the next token, and `cut_at_stop` ends
the answer at the first stop string.

Interview questions it answers:
- How do you stream text when a token can end in half a UTF-8 character, or in the first half of a
  stop string? (hold back a trailing U+FFFD and the longest tail that begins a stop string:
  `held_back`; never send text you might have to take back)
- What happens when a client disconnects? (`Request.cancel`; the engine frees its slot at the next
  step, so a dead client stops costing compute)
"""

import itertools
import queue
import threading
from dataclasses import dataclass

import torch


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


# A repetition penalty far from 1 has no float32-safe limit: Engine.submit refuses it.
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
