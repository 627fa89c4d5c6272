"""What serve.py measures about itself, in the Prometheus text format (GET /metrics).

    curl http://127.0.0.1:8000/metrics
    # a Prometheus server scrapes it every few seconds; Grafana plots e.g.
    #   histogram_quantile(0.99, rate(llm_time_to_first_token_seconds_bucket[5m]))   p99 TTFT
    #   sum(rate(llm_http_responses_total{status=~"5.."}[5m])) / sum(rate(llm_http_responses_total[5m]))

The format is plain text, one sample per line: `name{label="value"} number`, after `# HELP` and
`# TYPE` lines. Counters only grow (the scraper takes rates); gauges are the value now; a histogram
is cumulative counts per upper bound `le` plus _sum and _count, from which any quantile can be
estimated later, over any window, and summed across servers (averaged percentiles cannot).

What each number means (the 07 README has the same table):
- llm_http_responses_total{route, status}: answers sent, by route and HTTP status (error rate).
- llm_time_to_first_token_seconds: from a request's arrival to its first token (queueing + prefill).
- llm_time_per_output_token_seconds: per request, (last token - first token) / (tokens - 1): the
  decode pace a streaming user sees.
- llm_request_duration_seconds: arrival to finish, per generated answer.
- llm_generated_tokens_total and llm_generation_tokens_per_second: tokens produced by the engine, and
  their rate since the scrape about a minute earlier (throughput).
- llm_requests_running, llm_requests_waiting (the queue depth), llm_open_connections: now.
- llm_requests_finished_total{reason}: stop, length, cancelled (client left), error.

Interview questions it answers:
- What do you monitor on an LLM server? (latency as TTFT and per-token time, error rate, throughput,
  and saturation: queue depth and running requests; the "four golden signals")
- Why histograms and not averages? (tail latency is what users feel; buckets aggregate across
  servers and time, a mean hides the slow 1 %)
"""

import bisect
import collections
import threading
import time

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RATE_WINDOW = 60.0  # seconds over which tokens/s is averaged


class Histogram:
    """Counts of observations at or below each bound (cumulative, as Prometheus wants), sum, count."""

    def __init__(self, name, help, buckets):
        self.name, self.help, self.bounds = name, help, tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts):
            total += n
            out.append(f'{self.name}_bucket{{le="{bound}"}} {total}')
        return out + [f"{self.name}_sum {self.sum:.6f}", f"{self.name}_count {self.count}"]


class Metrics:
    """The server's counters and histograms; thread-safe (one lock: updates are a few additions)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.responses = collections.Counter()  # (route, status) -> answers sent
        self.ttft = Histogram(
            "llm_time_to_first_token_seconds", "Arrival to first generated token, per answer.", TTFT_BUCKETS
        )
        self.per_token = Histogram(
            "llm_time_per_output_token_seconds",
            "(last token - first token) / (tokens - 1), per answer of at least 2 tokens.",
            TOKEN_BUCKETS,
        )
        self.duration = Histogram(
            "llm_request_duration_seconds", "Arrival to finish, per answer.", DURATION_BUCKETS
        )
        self.snapshots = collections.deque()  # (time, tokens generated) at each scrape, for the rate

    def count_response(self, route, status):
        with self.lock:
            self.responses[route, status] += 1

    def observe(self, req):
        """A finished batching.Request: its latencies (a cancelled one that never started has none)."""
        if req.arrival is None or req.first_token_at is None:
            return
        with self.lock:
            self.ttft.observe(req.first_token_at - req.arrival)
            if len(req.output_ids) >= 2 and req.finished_at is not None:
                self.per_token.observe((req.finished_at - req.first_token_at) / (len(req.output_ids) - 1))
            if req.finished_at is not None:
                self.duration.observe(req.finished_at - req.arrival)

    def tokens_per_second(self, tokens, now) -> float:
        """Tokens/s since the oldest scrape within RATE_WINDOW (0 at the first scrape)."""
        self.snapshots.append((now, tokens))
        while len(self.snapshots) > 2 and now - self.snapshots[1][0] >= RATE_WINDOW:
            self.snapshots.popleft()
        t0, n0 = self.snapshots[0]
        return (tokens - n0) / (now - t0) if now > t0 else 0.0

    def render(self, engines, open_connections) -> str:
        """The whole exposition, the live numbers of the engines (one per model served) read now and
        summed: a scrape sees the server's load, whichever model carries it."""
        stats = {}
        for engine in engines:
            for k, v in dict(engine.stats).items():
                stats[k] = stats.get(k, 0) + v
        tokens = stats.get("prefills", 0) + stats.get("decode_useful", 0)  # each prefill gives a token
        running = sum(r is not None and r.finish_reason is None for e in engines for r in list(e.slots))
        with self.lock:
            rate = self.tokens_per_second(tokens, time.monotonic())
            out = [
                "# HELP llm_http_responses_total HTTP answers sent, by route and status.",
                "# TYPE llm_http_responses_total counter",
                *(
                    f'llm_http_responses_total{{route="{route}",status="{status}"}} {n}'
                    for (route, status), n in sorted(self.responses.items())
                ),
                *self.ttft.lines(),
                *self.per_token.lines(),
                *self.duration.lines(),
            ]
        gauges = [
            ("llm_generated_tokens_total", "counter", "Tokens generated by the engine.", tokens),
            (
                "llm_generation_tokens_per_second",
                "gauge",
                f"Tokens generated per second, averaged since the scrape up to {RATE_WINDOW:.0f} s ago.",
                round(rate, 3),
            ),
            ("llm_requests_running", "gauge", "Answers being generated (KV-cache slots in use).", running),
            (
                "llm_requests_waiting",
                "gauge",
                "Answers queued for a slot (the queue depth).",
                sum(len(e.waiting) for e in engines),
            ),
            (
                "llm_batch_slots",
                "gauge",
                "Answers the engine can generate together (--max-batch).",
                sum(len(e.slots) for e in engines),
            ),
            ("llm_open_connections", "gauge", "HTTP connections being served now.", open_connections),
        ]
        caches = [e.prefix_cache for e in engines if e.prefix_cache is not None]
        if caches:  # hit tokens / prompt tokens is the share of prefill the cache saved
            gauges += [
                (
                    "llm_prefix_cache_prompt_tokens_total",
                    "counter",
                    "Prompt tokens looked up in the prefix cache.",
                    sum(c.looked_up for c in caches),
                ),
                (
                    "llm_prefix_cache_hit_tokens_total",
                    "counter",
                    "Prompt tokens whose keys/values came from the prefix cache (prefill skipped).",
                    sum(c.hits for c in caches),
                ),
            ]
        for name, kind, help, value in gauges:
            out += [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {value}"]
        out += [
            "# HELP llm_requests_finished_total Answers ended, by reason.",
            "# TYPE llm_requests_finished_total counter",
        ]
        for reason in ("stop", "length", "cancelled", "error"):
            out.append(
                f'llm_requests_finished_total{{reason="{reason}"}} {stats.get(f"finished_{reason}", 0)}'
            )
        return "\n".join(out) + "\n"
