"""Which device a command runs on: the one function every stage's `--device` flag goes through.

    from common.devices import resolve_device
    device = resolve_device("auto")      # "cuda" when a GPU is visible, else "cpu"

A flag that names a device this machine does not have is bad input, not a bug: it gets the
project's one-line error (`error: --device cuda: ...; use --device cpu`) instead of the
AssertionError torch raises deep inside the first `.to(device)`.

How many CPU threads a workload gets is chosen here too, in one place:

    from common.devices import decoding_threads, set_threads
    set_threads(cfg.threads)              # --threads N pins every workload to N; 0 leaves the choice here
    with decoding_threads():              # GPT.generate, beam search, speculative decoding, the serving engine
        ...                               # one token per row per step: runs on ONE thread

Large matrix work (training, evaluation, long prefills) keeps torch's default, all cores. Decoding
gets one thread because each step is a chain of tiny products ((B, d) x (d, 4d) with B a handful of
rows): split over n threads, each piece is a few microseconds of work followed by a barrier where
the threads spin-wait for each other. On an idle machine that costs little; on a busy one (a browser,
a second experiment) one of the threads is descheduled, and the others spin at every barrier of
every layer of every token until it runs again: decoding slowed 67x under a load of 4 on 2 cores
where training slowed 3-4x (issue 29; the table of 07_distill_quant/bench_contention.py). One thread
has no barrier to wait at, and a tiny product gains almost nothing from a second core anyway.
An explicit choice always wins: `--threads N` (through `set_threads`) or OMP_NUM_THREADS /
MKL_NUM_THREADS in the environment leave the thread count alone everywhere.

Training keeps two threads, and they meet at a barrier after every parallel piece of every matmul.
How a thread waits there is OpenMP's wait policy: by default (libgomp, which torch's CPU build uses) it
spins up to 300,000 rounds before it sleeps. On an idle machine the spin saves a wake-up; on a busy one
it burns the core the late thread needs. Measured with 07_distill_quant/bench_contention.py (a 4-step
pretraining workload, min of 3, quiet vs beside two busy processes, 2026-12-07): spinning went from
1.81 s to 3.40 s, and its three busy runs ranged up to 10.9 s (6x); OMP_WAIT_POLICY=PASSIVE (sleep at
once) 1.88 -> 2.86 s, never above 3.3 s; GOMP_SPINCOUNT=1000 (spin briefly, then sleep) 1.79 -> 2.65 s,
never above 3.5 s: as fast as spinning when quiet, as safe as sleeping when busy. libgomp reads these
variables once, when `import torch` loads it, so no function can change them afterwards:
`common.layout.stage_env` puts GOMP_SPINCOUNT=1000 in the environment of every stage run_all.py starts
(a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins), and a stage run by hand on a busy machine wants
`GOMP_SPINCOUNT=1000 python ...`.

Interview questions it answers:
- Why is "auto" the default? (the same command runs on a laptop and on a GPU node; the fastest
  correct path on each device is chosen at run time, never by editing code)
- What do OMP_WAIT_POLICY and GOMP_SPINCOUNT change? (whether a thread that reaches a barrier first
  spins on its core or sleeps, and for how long; spinning wins microseconds on an idle machine and
  loses whole time slices on a busy one, so a short spin then sleep keeps most of both)
- Why can more threads make decoding slower? (a decoding step is many tiny matmuls, each ending in
  a barrier; with more runnable threads than free cores, the threads that arrive first busy-wait
  for a descheduled one, so the step takes as long as the slowest thread's wait for a core)
"""

import os
from contextlib import contextmanager

import torch

from common.cli import UserError


def resolve_device(name: str = "auto", local_rank: int = 0) -> str:
    """'auto' -> 'cuda:<local_rank>' if CUDA is visible else 'cpu'; an explicit name is checked."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build"
                if torch.version.cuda is None
                else f"CUDA {torch.version.cuda}, no GPU visible"
            )
            raise UserError(
                f"--device {name}: no CUDA device here (torch {torch.__version__}, {build}); "
                "use --device cpu or --device auto"
            )
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(
                f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                f"numbered 0..{torch.cuda.device_count() - 1}"
            )
        return name if index else f"cuda:{local_rank}"
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError("--device mps: Apple's Metal backend is not available here; use --device cpu")
        return "mps"
    raise UserError(f"--device {name!r} unknown; use auto, cpu, cuda, cuda:N or mps")


_pinned_threads = 0  # set by --threads N (set_threads); 0 = not pinned


def set_threads(n: int) -> None:
    """--threads N (N > 0): every workload runs on N threads, decoding included; 0 keeps the
    per-workload choice (all cores for matrix work, one thread for decoding)."""
    global _pinned_threads
    if n:
        torch.set_num_threads(n)
        _pinned_threads = n


def threads_pinned() -> bool:
    """True when the user chose the thread count: --threads, or OMP_NUM_THREADS / MKL_NUM_THREADS."""
    return bool(_pinned_threads) or any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))


@contextmanager
def decoding_threads(n: int = 1):
    """Run the body on n intra-op threads (default one; see the module docstring for why), then restore
    the count it found. A no-op when the user pinned the count, or when it is already <= n (nested use)."""
    before = torch.get_num_threads()
    if threads_pinned() or before <= n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
